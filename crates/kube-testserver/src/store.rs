//! The object store: one global resourceVersion counter, compare-and-swap writes, and a
//! bounded history of changes that watches replay from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// The resource types this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `coordination.k8s.io/v1` `leases`.
    Lease,
    /// `discovery.k8s.io/v1` `endpointslices`.
    EndpointSlice,
    /// core `v1` `pods`.
    Pod,
}

impl Resource {
    /// Every resource, in routing order.
    pub const ALL: [Resource; 3] = [Resource::Lease, Resource::EndpointSlice, Resource::Pod];

    /// The URL segment and RBAC resource name (`leases`, `endpointslices`, `pods`).
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Lease => "leases",
            Resource::EndpointSlice => "endpointslices",
            Resource::Pod => "pods",
        }
    }

    /// The object kind.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Lease => "Lease",
            Resource::EndpointSlice => "EndpointSlice",
            Resource::Pod => "Pod",
        }
    }

    /// The API group ("" for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Resource::Lease => "coordination.k8s.io",
            Resource::EndpointSlice => "discovery.k8s.io",
            Resource::Pod => "",
        }
    }

    /// `apiVersion` of the objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Lease => "coordination.k8s.io/v1",
            Resource::EndpointSlice => "discovery.k8s.io/v1",
            Resource::Pod => "v1",
        }
    }

    /// The path of the namespaced collection, with `{ns}` for axum.
    pub(crate) fn collection_route(self) -> String {
        match self {
            Resource::Pod => "/api/v1/namespaces/{ns}/pods".to_string(),
            _ => format!(
                "/apis/{}/namespaces/{{ns}}/{}",
                self.api_version(),
                self.plural()
            ),
        }
    }

    /// `leases.coordination.k8s.io`, `pods`: how the API server names a resource in messages.
    pub(crate) fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }

    /// PUT of a missing object creates it (the registry strategy's `AllowCreateOnUpdate`):
    /// true for Leases, false for EndpointSlices and Pods.
    pub(crate) fn allow_create_on_update(self) -> bool {
        matches!(self, Resource::Lease)
    }

    /// PUT without `metadata.resourceVersion` overwrites whatever is stored
    /// (`AllowUnconditionalUpdate`): false for Leases, true for EndpointSlices and Pods.
    pub(crate) fn allow_unconditional_update(self) -> bool {
        !matches!(self, Resource::Lease)
    }
}

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    /// Name of the object concerned, for `details`.
    pub(crate) name: Option<String>,
    pub(crate) resource: Option<Resource>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            name: None,
            resource: None,
        }
    }

    fn about(mut self, resource: Resource, name: &str) -> Self {
        self.resource = Some(resource);
        self.name = Some(name.to_string());
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(resource: Resource, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified()),
        )
        .about(resource, name)
    }

    fn already_exists(resource: Resource, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified()),
        )
        .about(resource, name)
    }

    fn conflict(resource: Resource, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource.qualified()
            ),
        )
        .about(resource, name)
    }

    fn invalid(resource: Resource, name: &str, why: &str) -> Self {
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {why}", resource.kind()),
        )
        .about(resource, name)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub(crate) fn unavailable() -> Self {
        ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request (fault injected by the test)",
        )
    }

    /// The `Status` object of this error.
    pub(crate) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(resource), Some(name)) = (self.resource, &self.name) {
            let mut details = json!({"name": name, "kind": resource.plural()});
            if !resource.group().is_empty() {
                details["group"] = json!(resource.group());
            }
            status["details"] = details;
        }
        status
    }
}

const OPTIMISTIC_LOCK: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// What happened to an object, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, kept in the history for watches.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) resource: Resource,
    pub(crate) namespace: String,
    pub(crate) kind: ChangeKind,
    /// The object after the change (for a deletion: its last state, at the deletion's version).
    pub(crate) object: Arc<Value>,
    /// The object before the change (modifications and deletions), so a selector-filtered
    /// watch can tell "started matching" (ADDED) from "stopped matching" (DELETED).
    pub(crate) previous: Option<Arc<Value>>,
}

type Key = (Resource, String, String);

pub(crate) struct Store {
    /// The last resourceVersion handed out; one counter for every resource, as etcd's revision.
    pub(crate) rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Every change with `rv > floor` is still in `history`.
    floor: u64,
    created: u64,
    seed: u64,
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Store {
            // etcd never starts at zero, and "0" means "any version" in queries.
            rv: 100,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            floor: 100,
            created: 0,
            seed,
        }
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn get(&self, resource: Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(resource, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The objects of one resource in one namespace, sorted by name.
    pub(crate) fn list(&self, resource: Resource, ns: &str) -> Vec<Arc<Value>> {
        let from = (resource, ns.to_string(), String::new());
        self.objects
            .range(from..)
            .take_while(|((r, n, _), _)| *r == resource && n == ns)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes with `rv > after`, or `None` if some of them were already dropped.
    pub(crate) fn changes_after(&self, after: u64) -> Option<Vec<Change>> {
        if after < self.floor {
            return None;
        }
        let skip = self.history.partition_point(|c| c.rv <= after);
        Some(self.history.iter().skip(skip).cloned().collect())
    }

    fn record(&mut self, change: Change) {
        if self.history.len() >= self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = dropped.rv;
            }
        }
        self.history.push_back(change);
    }

    fn next_uid(&mut self) -> String {
        self.created += 1;
        let a = self.seed ^ self.created.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            (self.created >> 48) as u16 & 0xfff,
            self.created & 0xffff_ffff_ffff
        )
    }

    /// POST: creates `body` in `ns`. AlreadyExists if the name is taken.
    pub(crate) fn create(
        &mut self,
        resource: Resource,
        ns: &str,
        body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let mut object = check_body(resource, ns, body)?;
        let meta = object["metadata"].as_object_mut().expect("checked");
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            // What etcd storage answers; clients must not send a version on create.
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let suffix = self.next_uid();
                    format!("{prefix}{}", &suffix[..5])
                }
                _ => {
                    return Err(ApiError::invalid(
                        resource,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        if self.get(resource, ns, &name).is_some() {
            return Err(ApiError::already_exists(resource, &name));
        }
        Ok(self.insert_new(resource, ns, &name, object))
    }

    fn insert_new(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        mut object: Value,
    ) -> Arc<Value> {
        let uid = self.next_uid();
        self.rv += 1;
        let meta = object["metadata"].as_object_mut().expect("checked");
        meta.insert("name".into(), json!(name));
        meta.insert("namespace".into(), json!(ns));
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(rfc3339_now()));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        let object = Arc::new(object);
        self.objects
            .insert((resource, ns.to_string(), name.to_string()), object.clone());
        self.record(Change {
            rv: self.rv,
            resource,
            namespace: ns.to_string(),
            kind: ChangeKind::Added,
            object: object.clone(),
            previous: None,
        });
        object
    }

    /// PUT: replaces `name`, with the API server's checks in its order: a `metadata.uid` in
    /// the body is a precondition (409 Conflict if the stored object has another uid or none);
    /// a missing object is created if the resource allows create-on-update, else 404; a
    /// `metadata.resourceVersion` must equal the stored one (409 Conflict); an absent one is
    /// 422 Invalid unless the resource allows unconditional updates.
    ///
    /// Returns the stored object and whether it was created.
    pub(crate) fn replace(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        body: Value,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let mut object = check_body(resource, ns, body)?;
        let meta = object["metadata"].as_object_mut().expect("checked");
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            None => {
                meta.insert("name".into(), json!(name));
            }
        }
        let body_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let body_uid = meta
            .get("uid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let existing = self.get(resource, ns, name);
        let Some(existing) = existing else {
            if !resource.allow_create_on_update() {
                return Err(ApiError::not_found(resource, name));
            }
            if let Some(uid) = body_uid {
                return Err(ApiError::conflict(
                    resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: "
                    ),
                ));
            }
            meta.remove("resourceVersion");
            return Ok((self.insert_new(resource, ns, name, object), true));
        };
        let stored_uid = existing
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(uid) = body_uid {
            if uid != stored_uid {
                return Err(ApiError::conflict(
                    resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: \
                         {stored_uid}"
                    ),
                ));
            }
        }
        let stored_rv = existing
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        match body_rv {
            None if !resource.allow_unconditional_update() => {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ))
            }
            Some(rv) if rv != stored_rv => {
                return Err(ApiError::conflict(resource, name, OPTIMISTIC_LOCK))
            }
            _ => {}
        }
        // The system fields stay as they were (uid, creationTimestamp); the version moves.
        for field in ["uid", "creationTimestamp"] {
            if let Some(v) = existing.pointer(&format!("/metadata/{field}")) {
                meta.insert(field.into(), v.clone());
            }
        }
        meta.insert("namespace".into(), json!(ns));
        self.rv += 1;
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        let object = Arc::new(object);
        self.objects
            .insert((resource, ns.to_string(), name.to_string()), object.clone());
        self.record(Change {
            rv: self.rv,
            resource,
            namespace: ns.to_string(),
            kind: ChangeKind::Modified,
            object: object.clone(),
            previous: Some(existing),
        });
        Ok((object, false))
    }

    /// Create-or-replace without version checks (the test's own writes).
    pub(crate) fn apply(&mut self, resource: Resource, ns: &str, body: Value) -> Arc<Value> {
        let mut body = body;
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("uid");
        }
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .expect("applied objects need metadata.name")
            .to_string();
        if self.get(resource, ns, &name).is_some() {
            self.replace(resource, ns, &name, body)
                .expect("unconditional replace")
                .0
        } else {
            self.create(resource, ns, body)
                .expect("create of a new name")
        }
    }

    /// DELETE, with optional uid / resourceVersion preconditions (409 Conflict if unmet).
    pub(crate) fn delete(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
    ) -> Result<Arc<Value>, ApiError> {
        let key = (resource, ns.to_string(), name.to_string());
        let Some(existing) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, name));
        };
        let field = |f: &str| {
            existing
                .pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        if let Some(uid) = precondition_uid {
            if uid != field("uid") {
                return Err(ApiError::conflict(
                    resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        field("uid")
                    ),
                ));
            }
        }
        if let Some(rv) = precondition_rv {
            if rv != field("resourceVersion") {
                return Err(ApiError::conflict(
                    resource,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, \
                         ResourceVersion in object meta: {}",
                        field("resourceVersion")
                    ),
                ));
            }
        }
        self.objects.remove(&key);
        self.rv += 1;
        let mut last = (*existing).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let last = Arc::new(last);
        self.record(Change {
            rv: self.rv,
            resource,
            namespace: ns.to_string(),
            kind: ChangeKind::Deleted,
            object: last.clone(),
            previous: Some(existing),
        });
        Ok(last)
    }
}

/// Checks `kind`, `apiVersion` and `metadata.namespace` of a request body and fills them in.
fn check_body(resource: Resource, ns: &str, body: Value) -> Result<Value, ApiError> {
    let Value::Object(mut object) = body else {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    };
    for (field, want) in [
        ("kind", resource.kind()),
        ("apiVersion", resource.api_version()),
    ] {
        match object.get(field).and_then(Value::as_str) {
            None => {
                object.insert(field.into(), json!(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {got:?} does not match the request's {want:?}"
                )))
            }
        }
    }
    let meta = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata is not an object"));
    };
    match meta.get("namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ))
        }
        _ => {
            meta.insert("namespace".into(), json!(ns));
        }
    }
    Ok(Value::Object(object))
}

/// The current time as `metav1.Time`: RFC 3339, UTC, whole seconds.
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (era-based, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"holderIdentity": "a"}})
    }

    fn rv(v: &Value) -> String {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn lease_put_is_compare_and_swap() {
        let mut s = Store::new(100);
        let created = s.create(Resource::Lease, "ns", lease("l")).unwrap();
        assert_eq!(created["kind"], "Lease");
        assert!(created["metadata"]["uid"].as_str().is_some());
        let again = s.create(Resource::Lease, "ns", lease("l")).unwrap_err();
        assert_eq!((again.code, again.reason), (409, "AlreadyExists"));

        let mut body = lease("l");
        body["metadata"]["resourceVersion"] = json!(rv(&created));
        let (updated, created_now) = s.replace(Resource::Lease, "ns", "l", body.clone()).unwrap();
        assert!(!created_now);
        assert_ne!(rv(&updated), rv(&created));
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        let stale = s.replace(Resource::Lease, "ns", "l", body).unwrap_err();
        assert_eq!((stale.code, stale.reason), (409, "Conflict"));
        let unconditional = s
            .replace(Resource::Lease, "ns", "l", lease("l"))
            .unwrap_err();
        assert_eq!((unconditional.code, unconditional.reason), (422, "Invalid"));
    }

    #[test]
    fn lease_put_of_a_missing_object_creates_it_unless_a_uid_is_given() {
        let mut s = Store::new(100);
        let mut with_uid = lease("l");
        with_uid["metadata"]["uid"] = json!("some-uid");
        with_uid["metadata"]["resourceVersion"] = json!("5");
        let e = s.replace(Resource::Lease, "ns", "l", with_uid).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        let mut body = lease("l");
        body["metadata"]["resourceVersion"] = json!("5");
        let (_, created) = s.replace(Resource::Lease, "ns", "l", body).unwrap();
        assert!(created);
        let e = s
            .replace(Resource::Pod, "ns", "p", json!({"metadata": {"name": "p"}}))
            .unwrap_err();
        assert_eq!((e.code, e.reason), (404, "NotFound"));
    }

    #[test]
    fn history_is_bounded_and_versions_are_global() {
        let mut s = Store::new(2);
        let start = s.rv;
        s.apply(Resource::Pod, "ns", json!({"metadata": {"name": "a"}}));
        s.apply(Resource::Lease, "ns", lease("b"));
        assert_eq!(s.changes_after(start).unwrap().len(), 2);
        s.apply(
            Resource::Pod,
            "ns",
            json!({"metadata": {"name": "a", "labels": {"x": "y"}}}),
        );
        assert!(
            s.changes_after(start).is_none(),
            "the first change was dropped"
        );
        assert_eq!(s.changes_after(start + 1).unwrap().len(), 2);
        let deleted = s.delete(Resource::Pod, "ns", "a", None, None).unwrap();
        assert_eq!(rv(&deleted), s.rv.to_string());
        assert!(s.get(Resource::Pod, "ns", "a").is_none());
    }

    #[test]
    fn time_format() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
