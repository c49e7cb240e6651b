//! The Kubernetes backends: lease election on a `coordination.k8s.io/v1` Lease, and discovery
//! from EndpointSlices or Pods, through kube-rs.
//!
//! # Lease election: [`KubeLease`]
//!
//! One Lease object (namespace + name, e.g. `crashgrid-leader`) holds the [`LeaseRecord`]
//! in its spec, field for field (`holderIdentity`, `leaseDurationSeconds`, `acquireTime`,
//! `renewTime` as `MicroTime` with microseconds, `leaseTransitions`), so
//! `kubectl get lease crashgrid-leader -o yaml` shows the holder and the fencing epoch exactly
//! as client-go's leader election would write them. [`Version`] is `metadata.resourceVersion`.
//!
//! | [`LeaseBackend`] call | API request | success | definitive failures |
//! |---|---|---|---|
//! | `get` | `GET .../leases/{name}` | the spec and resourceVersion | 404 → `Ok(None)` |
//! | `create` | `POST .../leases` | 201 | 409 → [`LeaseError::AlreadyExists`] |
//! | `update` | `PUT .../leases/{name}` with `metadata.resourceVersion` = expected | 200 | 409 → [`LeaseError::Conflict`], missing → [`LeaseError::NotFound`] |
//!
//! Every other failure (connection, timeout, 403, 5xx, ...) is [`LeaseError::Unavailable`]
//! with the server's message: ambiguous, so the elector reads the lease back.
//!
//! **Update never creates.** The API server's Lease strategy allows *create on update*: a
//! PUT of a missing Lease creates it, whatever resourceVersion it carries. The backend contract
//! wants `NotFound` there, so the PUT also carries `metadata.uid` of the object seen at the
//! expected version, which the server treats as a precondition: on a missing (or deleted and
//! re-created) Lease it answers 409, never creates. The PUT reuses the whole metadata of that
//! object (labels and annotations others set survive), as client-go's `LeaseLock` does. When
//! this client has not itself seen the expected version (another client's version), `update`
//! first GETs the Lease: missing → `NotFound`, another version → `Conflict`, else its uid.
//!
//! **No client-side retries.** kube-rs 5's default client carries a retry layer that replays
//! requests answered 429/503/504 (15 times, 5 ms doubling: minutes in all).
//! [`KubeLease::from_config`] builds its client with `default_retry = false`: a lease call
//! must fail fast (the elector retries on its own cadence and must step down by its renew
//! deadline), and a PUT replayed after a 504 whose first try was applied would come back 409
//! and be misreported as a definitive `Conflict`.
//!
//! RBAC: `leases`: `get`, `create`, `update` in the Lease's namespace (a `Role` with
//! `resourceNames: [crashgrid-leader]` for get/update; create cannot be limited by name).
//!
//! # Discovery: [`kubernetes_peers`]
//!
//! A task runs kube-rs's `watcher` (list, then watch from the list's resourceVersion with
//! `allowWatchBookmarks=true`; it resumes from the last seen version after a dropped stream and
//! re-lists only after 410 Gone) and publishes the [`PeerSet`] on the [`DiscoveryHandle`]'s
//! `watch` channel after every change. It never polls. On errors it keeps the last good set
//! and retries with a capped exponential backoff (250 ms doubling to 8 s).
//!
//! - [`KubeSource::EndpointSlices`]: the EndpointSlices labelled
//!   `kubernetes.io/service-name=<service>` (`GET /apis/discovery.k8s.io/v1/namespaces/{ns}/
//!   endpointslices?labelSelector=...`, then `&watch=true`). A peer is every address of every
//!   endpoint whose `conditions.ready` is true or absent (the API documents an absent value
//!   as "unknown, interpret as ready"), with the port of the slice's port entry named
//!   `port_name` (slices without such a port contribute nothing; FQDN addresses are skipped).
//!   RBAC: `endpointslices`: `get`, `list`, `watch`. The Service must select the crashgrid
//!   pods and name the RPC port (`rpc`); it may be headless.
//! - [`KubeSource::Pods`]: the Pods matching `label_selector`, `GET /api/v1/namespaces/{ns}/
//!   pods?labelSelector=...` then watch. A peer is `status.podIP:port` of every pod in phase
//!   `Running` with condition `Ready=True` and no `metadata.deletionTimestamp`. RBAC: `pods`:
//!   `get`, `list`, `watch`. Needs no Service, but reads whole Pod objects (larger events).
//!
//! Discovery works with kube's default client (retry layer on): a request answered 503 is
//! then held by the retry layer instead of failing, which only delays recovery a little. A
//! client with `default_retry = false` lets the watcher's own backoff do the retrying.
//!
//! [`kubernetes_peers`] waits (up to 10 s) for the first complete list, so the handle starts
//! with what the API knows. A first failure that configuration must fix (401, 403: RBAC
//! missing; 404: the API group is not served) is returned as [`DiscoveryError::Kubernetes`];
//! anything else starts with an empty set and keeps retrying.
//!
//! # Namespace
//!
//! [`namespace_from_env`]: `POD_NAMESPACE` (set from the downward API,
//! `fieldRef: metadata.namespace`), else the service account's namespace file.
//!
//! [`LeaseRecord`]: crate::LeaseRecord
//! [`Version`]: crate::Version
//! [`LeaseBackend`]: crate::LeaseBackend
//! [`LeaseError::AlreadyExists`]: crate::LeaseError::AlreadyExists
//! [`LeaseError::Conflict`]: crate::LeaseError::Conflict
//! [`LeaseError::NotFound`]: crate::LeaseError::NotFound
//! [`LeaseError::Unavailable`]: crate::LeaseError::Unavailable
//! [`PeerSet`]: crate::discovery::PeerSet
//! [`DiscoveryHandle`]: crate::discovery::DiscoveryHandle
//! [`DiscoveryError::Kubernetes`]: crate::discovery::DiscoveryError::Kubernetes

mod discovery;
mod lease;

pub use discovery::{kubernetes_peers, KubeDiscoveryConfig, KubeSource};
pub use lease::KubeLease;

/// Where a pod's service account namespace is mounted.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The namespace this pod runs in: the `POD_NAMESPACE` environment variable if set and
/// non-empty, else the content of [`SERVICE_ACCOUNT_NAMESPACE_FILE`]; `None` outside a pod.
pub fn namespace_from_env() -> Option<String> {
    let from_env = std::env::var("POD_NAMESPACE").ok();
    let from_file = || std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
    namespace_from(from_env, from_file)
}

fn namespace_from(env: Option<String>, file: impl FnOnce() -> Option<String>) -> Option<String> {
    let clean = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    env.and_then(clean).or_else(|| file().and_then(clean))
}

/// A readable message of a kube-rs error: the API's `Status` when there is one.
fn describe(error: &::kube::Error) -> String {
    match error {
        ::kube::Error::Api(status) => format!(
            "{} {}: {}",
            status.code,
            if status.reason.is_empty() {
                "(no reason)"
            } else {
                &status.reason
            },
            status.message
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_prefers_the_environment_then_the_service_account_file() {
        let file = || Some("from-file\n".to_string());
        assert_eq!(
            namespace_from(Some("prod".into()), file).as_deref(),
            Some("prod")
        );
        assert_eq!(
            namespace_from(Some("  ".into()), file).as_deref(),
            Some("from-file")
        );
        assert_eq!(namespace_from(None, file).as_deref(), Some("from-file"));
        assert_eq!(namespace_from(None, || None), None);
        assert_eq!(namespace_from(None, || Some(String::new())), None);
    }
}
