//! A **test double** of the Kubernetes API server, for testing code that talks to Kubernetes
//! through kube-rs where no real API server can run.
//!
//! It serves plain http on 127.0.0.1 and implements the documented API semantics (the
//! "Kubernetes API Concepts" page and the registry behaviour of each resource) of **exactly
//! three namespaced resources** and nothing else:
//!
//! | resource | paths | verbs |
//! |---|---|---|
//! | `coordination.k8s.io/v1` Lease | `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]` | get, list, watch, create, update, delete |
//! | `discovery.k8s.io/v1` EndpointSlice | `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices[/{name}]` | same |
//! | core `v1` Pod | `/api/v1/namespaces/{ns}/pods[/{name}]` | same |
//!
//! What it implements, as the real server does:
//!
//! - **One global `resourceVersion` counter** (etcd's revision): every write of any object
//!   bumps it, and the written object carries it in `metadata.resourceVersion`.
//!   `metadata.uid` and `metadata.creationTimestamp` are set on create and kept on update.
//! - **Writes.** POST of an existing name: 409 `AlreadyExists`. PUT: a `metadata.uid` in the
//!   body is a precondition (409 `Conflict` when the stored object has another uid, or is
//!   missing); a `metadata.resourceVersion` other than the stored one: 409 `Conflict`. Per
//!   resource strategy, as in the Kubernetes registry: a Lease PUT *without*
//!   resourceVersion is 422 `Invalid` (`AllowUnconditionalUpdate` is false), and a Lease PUT of
//!   a *missing* name creates it (`AllowCreateOnUpdate` is true; EndpointSlices and Pods answer
//!   404 `NotFound`). GET of a missing name: 404 `NotFound`. DELETE honours
//!   `preconditions.uid/resourceVersion`. Errors are `Status` objects with `code`, `reason`,
//!   `message` and `details`.
//! - **List** returns a `{Kind}List` whose `metadata.resourceVersion` is the current counter;
//!   `labelSelector` (`k=v`, `k==v`, `k!=v`, `k in (..)`, `k notin (..)`, `k`, `!k`,
//!   comma-joined) and `fieldSelector` (`metadata.name`, `metadata.namespace`) filter it.
//!   `limit` is accepted and ignored: a server may return the whole list in one page (the
//!   `ListOptions.limit` documentation allows it), so no `continue` token is ever returned.
//!   `resourceVersionMatch=Exact` other than the current version: 410 `Expired` (history of
//!   states is not kept); a `resourceVersion` newer than the counter: 504 `Timeout` ("Too
//!   large resource version").
//! - **Watch** (`?watch=true`): a chunked stream of JSON lines
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}`.
//!   `resourceVersion` unset or `"0"`: synthetic ADDED events for the current objects, then
//!   changes. `resourceVersion=N`: every change after N, from a bounded history; if changes
//!   after N were already dropped, the stream carries one ERROR event with a 410 `Expired`
//!   Status and ends, as the real watch cache answers (HTTP 200, error in the stream).
//!   `sendInitialEvents=true` (streaming lists; needs `resourceVersionMatch=NotOlderThan` and
//!   `allowWatchBookmarks=true`, else 422) sends the current objects, then a BOOKMARK
//!   annotated `k8s.io/initial-events-end: "true"`. With a label selector, an object that
//!   starts matching arrives as ADDED and one that stops matching as DELETED.
//!   `allowWatchBookmarks=true` gets a BOOKMARK with the current version every
//!   [`TestApiServerBuilder::bookmark_interval`]; `timeoutSeconds` ends the stream.
//!
//! What it does **not** do: authentication and RBAC (every request is allowed), admission,
//! defaulting and validation of object contents, graceful deletion (a deleted Pod is gone at
//! once; set `metadata.deletionTimestamp` with [`TestApiServer::apply_pod`] to model a
//! terminating pod), PATCH, server-side apply, subresources (`/status`), cluster-scoped
//! lists, table output, protobuf, discovery documents (`/api`, `/apis`).
//!
//! For tests it adds: [`TestApiServer::client`] (a `kube::Client` for it),
//! [`TestApiServer::write_kubeconfig`] (for child processes, `KUBECONFIG=path`), direct reads
//! and writes of stored objects (writes bump the version and emit watch events like API
//! writes), counters of requests per (verb, resource) so a test can tell a watch from
//! polling, and fault injection ([`TestApiServer::set_unavailable`],
//! [`TestApiServer::close_watches`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod selector;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use selector::{FieldSelector, LabelSelector};
pub use store::Resource;
use store::{ApiError, ChangeKind, Store};

/// Builder for a [`TestApiServer`] with non-default history size or bookmark interval.
#[derive(Debug, Clone)]
pub struct TestApiServerBuilder {
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Default for TestApiServerBuilder {
    fn default() -> Self {
        TestApiServerBuilder {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

impl TestApiServerBuilder {
    /// How many changes (of all resources) watches can replay; a watch from an older version
    /// gets 410 Expired. Default 1000.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes.max(1);
        self
    }

    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK. Default 1 s (the
    /// real server sends them about once a minute; only the frequency differs).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Binds 127.0.0.1 on a free port and serves until the server is dropped.
    pub async fn start(self) -> TestApiServer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (changed, _) = watch::channel(0u64);
        let (disconnect, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(self.history_limit)),
            changed,
            disconnect,
            unavailable: AtomicBool::new(false),
            counters: Mutex::new(BTreeMap::new()),
            open_watches: AtomicUsize::new(0),
            bookmark_interval: self.bookmark_interval,
        });
        let mut app = Router::new();
        for resource in Resource::ALL {
            let ctx = Ctx {
                shared: shared.clone(),
                resource,
            };
            let collection = resource.collection_route();
            let item = format!("{collection}/{{name}}");
            app = app.merge(
                Router::new()
                    .route(&collection, get(list_or_watch).post(create))
                    .route(&item, get(get_one).put(replace).delete(delete))
                    .with_state(ctx),
            );
        }
        let app = app.fallback(|| async {
            error_response(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource (this test server serves \
                 only leases, endpointslices and pods)",
            ))
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("kube-testserver: {e}");
            }
        });
        TestApiServer { addr, shared, task }
    }
}

/// A running test API server; see the [crate documentation](crate) for what it implements.
/// Dropping it stops serving and ends every open watch.
pub struct TestApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion; watches wait on it.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch (fault injection, shutdown).
    disconnect: watch::Sender<u64>,
    unavailable: AtomicBool,
    counters: Mutex<BTreeMap<(String, String), u64>>,
    open_watches: AtomicUsize,
    bookmark_interval: Duration,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }

    fn disconnect_all(&self) {
        self.disconnect.send_modify(|g| *g += 1);
    }

    /// Counts a request and refuses it while the server is "unavailable".
    fn begin(&self, verb: &str, resource: Resource) -> Result<(), ApiError> {
        *self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((verb.to_string(), resource.plural().to_string()))
            .or_default() += 1;
        if self.unavailable.load(Ordering::SeqCst) {
            Err(ApiError::unavailable())
        } else {
            Ok(())
        }
    }

    fn apply(&self, resource: Resource, ns: &str, object: Value) -> Value {
        let (stored, rv) = {
            let mut store = self.store();
            let stored = store.apply(resource, ns, object);
            (stored, store.rv)
        };
        self.notify(rv);
        (*stored).clone()
    }

    fn remove(&self, resource: Resource, ns: &str, name: &str) -> bool {
        let (deleted, rv) = {
            let mut store = self.store();
            let deleted = store.delete(resource, ns, name, None, None).is_ok();
            (deleted, store.rv)
        };
        self.notify(rv);
        deleted
    }

    fn read(&self, resource: Resource, ns: &str, name: &str) -> Option<Value> {
        self.store().get(resource, ns, name).map(|v| (*v).clone())
    }
}

impl TestApiServer {
    /// Starts a server with default settings on 127.0.0.1 and a free port.
    pub async fn start() -> TestApiServer {
        TestApiServerBuilder::default().start().await
    }

    /// A builder for non-default settings.
    pub fn builder() -> TestApiServerBuilder {
        TestApiServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `kube::Config` for this server (default namespace `default`, kube-rs defaults
    /// otherwise), to adjust before building a client (e.g. `default_retry = false`).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("a valid URL"))
    }

    /// A `kube::Client` for this server with kube-rs's defaults, as `Client::try_default()`
    /// builds in a pod: among them kube's retry layer, which retries 429/503/504 answers (up
    /// to 15 times, 5 ms doubling), so a request to an unavailable server takes minutes to
    /// fail. Needs a tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a kube client for the test server")
    }

    /// A `kube::Client` without kube's retry layer: 503 and friends are returned at once.
    pub fn client_without_retries(&self) -> kube::Client {
        let mut config = self.config();
        config.default_retry = false;
        kube::Client::try_from(config).expect("a kube client for the test server")
    }

    /// Writes a kubeconfig pointing at this server (context `kube-testserver`, namespace
    /// `default`, no credentials), for child processes started with `KUBECONFIG=path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: kube-testserver\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: kube-testserver\n  user: {{}}\n\
             contexts:\n\
             - name: kube-testserver\n  context:\n    cluster: kube-testserver\n    user: kube-testserver\n    namespace: default\n\
             current-context: kube-testserver\n",
            url = self.url()
        );
        std::fs::write(path, text)
    }

    /// The stored Lease as the API would return it (`kubectl get lease NAME -o json`).
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.read(Resource::Lease, namespace, name)
    }

    /// The stored EndpointSlice.
    pub fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.read(Resource::EndpointSlice, namespace, name)
    }

    /// The stored Pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.read(Resource::Pod, namespace, name)
    }

    /// Creates or replaces (unconditionally) a Lease, as an outside writer would; returns the
    /// stored object.
    pub fn apply_lease(&self, namespace: &str, object: impl Serialize) -> Value {
        self.shared
            .apply(Resource::Lease, namespace, to_value(object))
    }

    /// Deletes a Lease; false if there was none.
    pub fn delete_lease(&self, namespace: &str, name: &str) -> bool {
        self.shared.remove(Resource::Lease, namespace, name)
    }

    /// Creates or replaces an EndpointSlice (as the EndpointSlice controller does), bumping
    /// the resourceVersion and emitting a watch event; returns the stored object.
    ///
    /// Panics if `object` has no `metadata.name`.
    pub fn apply_endpoint_slice(&self, namespace: &str, object: impl Serialize) -> Value {
        self.shared
            .apply(Resource::EndpointSlice, namespace, to_value(object))
    }

    /// Deletes an EndpointSlice, emitting DELETED; false if there was none.
    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) -> bool {
        self.shared.remove(Resource::EndpointSlice, namespace, name)
    }

    /// Creates or replaces a Pod (as the kubelet updating its status would); returns the
    /// stored object. Panics if `object` has no `metadata.name`.
    pub fn apply_pod(&self, namespace: &str, object: impl Serialize) -> Value {
        self.shared
            .apply(Resource::Pod, namespace, to_value(object))
    }

    /// Deletes a Pod at once (no grace period), emitting DELETED; false if there was none.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.shared.remove(Resource::Pod, namespace, name)
    }

    /// The current value of the global resourceVersion counter.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    /// How many requests of `verb` (`get`, `list`, `watch`, `create`, `update`, `delete`, the
    /// RBAC verb names) on `resource` (`leases`, `endpointslices`, `pods`) were received,
    /// refused ones included.
    pub fn requests(&self, verb: &str, resource: &str) -> u64 {
        self.shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every request counter, keyed by (verb, resource).
    pub fn request_counts(&self) -> BTreeMap<(String, String), u64> {
        self.shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Number of watch streams open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Fault injection: while true, every request gets 503 `ServiceUnavailable`, and turning
    /// it on ends every open watch stream (as an API server restart does).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
        if unavailable {
            self.shared.disconnect_all();
        }
    }

    /// Ends every open watch stream cleanly (as a watch timeout or a load balancer does);
    /// clients are expected to resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.shared.disconnect_all();
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.shared.disconnect_all();
        self.task.abort();
    }
}

fn to_value(object: impl Serialize) -> Value {
    serde_json::to_value(object).expect("a JSON-serializable object")
}

// ---------------------------------------------------------------------------------------------
// HTTP handlers
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    resource: Resource,
}

fn error_response(error: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.status(),
    )
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| error_response(&e))
}

async fn get_one(
    State(ctx): State<Ctx>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    respond((|| {
        ctx.shared.begin("get", ctx.resource)?;
        let object = ctx
            .shared
            .store()
            .get(ctx.resource, &ns, &name)
            .ok_or_else(|| ApiError::not_found(ctx.resource, &name))?;
        Ok(json_response(StatusCode::OK, &object))
    })())
}

async fn create(State(ctx): State<Ctx>, UrlPath(ns): UrlPath<String>, body: Bytes) -> Response {
    respond((|| {
        ctx.shared.begin("create", ctx.resource)?;
        let body = parse_body(&body)?;
        let (object, rv) = {
            let mut store = ctx.shared.store();
            let object = store.create(ctx.resource, &ns, body)?;
            (object, store.rv)
        };
        ctx.shared.notify(rv);
        Ok(json_response(StatusCode::CREATED, &object))
    })())
}

async fn replace(
    State(ctx): State<Ctx>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    respond((|| {
        ctx.shared.begin("update", ctx.resource)?;
        let body = parse_body(&body)?;
        let (object, created, rv) = {
            let mut store = ctx.shared.store();
            let (object, created) = store.replace(ctx.resource, &ns, &name, body)?;
            (object, created, store.rv)
        };
        ctx.shared.notify(rv);
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json_response(code, &object))
    })())
}

async fn delete(
    State(ctx): State<Ctx>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    respond((|| {
        ctx.shared.begin("delete", ctx.resource)?;
        // DeleteOptions is optional; only its preconditions matter here.
        let options = if body.is_empty() {
            Value::Null
        } else {
            parse_body(&body)?
        };
        let uid = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str);
        let rv = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str);
        let (object, now) = {
            let mut store = ctx.shared.store();
            let object = store.delete(ctx.resource, &ns, &name, uid, rv)?;
            (object, store.rv)
        };
        ctx.shared.notify(now);
        // Resources without graceful deletion or finalizers answer with the deleted object.
        Ok(json_response(StatusCode::OK, &object))
    })())
}

/// Query parameters of list and watch, parsed and checked.
struct Request {
    labels: LabelSelector,
    fields: FieldSelector,
    resource_version: Option<u64>,
    version_match: Option<String>,
    watch: bool,
    bookmarks: bool,
    send_initial_events: bool,
    timeout: Option<Duration>,
}

fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") | Some("") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid boolean {other:?} for {name}"
        ))),
    }
}

fn parse_request(q: &HashMap<String, String>) -> Result<Request, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let resource_version = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {rv:?}: not a version"))
        })?),
    };
    let version_match = q.get("resourceVersionMatch").cloned();
    if let Some(m) = &version_match {
        if m != "NotOlderThan" && m != "Exact" {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("resourceVersionMatch: Unsupported value: {m:?}"),
            ));
        }
    }
    let timeout = match q.get("timeoutSeconds") {
        None => None,
        Some(t) => Some(Duration::from_secs(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
        })?)),
    };
    Ok(Request {
        labels,
        fields,
        resource_version,
        version_match,
        watch: flag(q, "watch")?,
        bookmarks: flag(q, "allowWatchBookmarks")?,
        send_initial_events: flag(q, "sendInitialEvents")?,
        timeout,
    })
}

async fn list_or_watch(
    State(ctx): State<Ctx>,
    UrlPath(ns): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let watching = flag(&query, "watch").unwrap_or(false);
    respond((|| {
        ctx.shared
            .begin(if watching { "watch" } else { "list" }, ctx.resource)?;
        let request = parse_request(&query)?;
        if request.watch {
            start_watch(&ctx, ns, request)
        } else {
            list(&ctx, &ns, &request)
        }
    })())
}

fn list(ctx: &Ctx, ns: &str, request: &Request) -> Result<Response, ApiError> {
    let store = ctx.shared.store();
    if let Some(rv) = request.resource_version {
        if rv > store.rv {
            return Err(ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {rv}, current: {}", store.rv),
            ));
        }
        if request.version_match.as_deref() == Some("Exact") && rv != store.rv {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                store.rv
            )));
        }
    }
    let items: Vec<Value> = store
        .list(ctx.resource, ns)
        .into_iter()
        .filter(|o| request.labels.matches(o) && request.fields.matches(o))
        .map(|o| (*o).clone())
        .collect();
    let body = json!({
        "kind": format!("{}List", ctx.resource.kind()),
        "apiVersion": ctx.resource.api_version(),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// Where a watch starts.
enum Start {
    /// Synthetic ADDED events for the current state, then changes; with an initial-events-end
    /// BOOKMARK after the initial events (streaming lists).
    Current { end_bookmark: bool },
    /// Changes after this version.
    After(u64),
}

fn start_watch(ctx: &Ctx, ns: String, request: Request) -> Result<Response, ApiError> {
    let start = if request.send_initial_events {
        if request.version_match.as_deref() != Some("NotOlderThan") || !request.bookmarks {
            return Err(ApiError::new(
                422,
                "Invalid",
                "sendInitialEvents: Forbidden: sendInitialEvents requires setting \
                 resourceVersionMatch to NotOlderThan and allowWatchBookmarks to true",
            ));
        }
        Start::Current { end_bookmark: true }
    } else {
        match request.resource_version {
            None | Some(0) => Start::Current {
                end_bookmark: false,
            },
            Some(rv) => Start::After(rv),
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let watch = Watch {
        shared: ctx.shared.clone(),
        resource: ctx.resource,
        namespace: ns,
        labels: request.labels,
        fields: request.fields,
        bookmarks: request.bookmarks,
        tx,
    };
    ctx.shared.open_watches.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(watch.run(start, request.timeout));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

struct Watch {
    shared: Arc<Shared>,
    resource: Resource,
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    tx: mpsc::Sender<Bytes>,
}

impl Watch {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    async fn send(&self, kind: &str, object: &Value) -> bool {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    fn bookmark_object(&self, rv: u64, initial_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({
            "kind": self.resource.kind(),
            "apiVersion": self.resource.api_version(),
            "metadata": metadata,
        })
    }

    async fn expired(&self, rv: u64, floor: u64) {
        let status =
            ApiError::expired(format!("too old resource version: {rv} ({floor})")).status();
        self.send("ERROR", &status).await;
    }

    async fn run(self, start: Start, timeout: Option<Duration>) {
        self.stream(start, timeout).await;
        self.shared.open_watches.fetch_sub(1, Ordering::SeqCst);
    }

    async fn stream(&self, start: Start, timeout: Option<Duration>) {
        let mut changed = self.shared.changed.subscribe();
        let mut disconnect = self.shared.disconnect.subscribe();
        disconnect.borrow_and_update();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut cursor = match start {
            Start::Current { end_bookmark } => {
                let (objects, rv) = {
                    let store = self.shared.store();
                    (store.list(self.resource, &self.namespace), store.rv)
                };
                changed.borrow_and_update();
                for object in objects.iter().filter(|o| self.matches(o)) {
                    if !self.send("ADDED", object).await {
                        return;
                    }
                }
                if end_bookmark && !self.send("BOOKMARK", &self.bookmark_object(rv, true)).await {
                    return;
                }
                rv
            }
            Start::After(rv) => rv,
        };
        let mut ticker = tokio::time::interval(self.shared.bookmark_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset();
        loop {
            changed.borrow_and_update();
            let (changes, now, floor) = {
                let store = self.shared.store();
                (store.changes_after(cursor), store.rv, store.floor())
            };
            let Some(changes) = changes else {
                self.expired(cursor, floor).await;
                return;
            };
            for change in changes {
                if change.resource != self.resource || change.namespace != self.namespace {
                    continue;
                }
                let now_matches =
                    change.kind != ChangeKind::Deleted && self.matches(&change.object);
                let was_matching = change.previous.as_deref().is_some_and(|p| self.matches(p));
                let kind = match (change.kind, was_matching, now_matches) {
                    (ChangeKind::Deleted, true, _) => "DELETED",
                    (ChangeKind::Deleted, false, _) => continue,
                    (_, false, true) => "ADDED",
                    (_, true, true) => "MODIFIED",
                    (_, true, false) => "DELETED",
                    (_, false, false) => continue,
                };
                if !self.send(kind, &change.object).await {
                    return;
                }
            }
            cursor = cursor.max(now);
            let timed_out = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // A disconnect wins over pending changes: nothing is sent after it.
                biased;
                _ = disconnect.changed() => return,
                _ = self.tx.closed() => return,
                _ = timed_out => return,
                _ = changed.changed() => {}
                _ = ticker.tick() => {
                    if self.bookmarks
                        && !self.send("BOOKMARK", &self.bookmark_object(cursor, false)).await
                    {
                        return;
                    }
                }
            }
        }
    }
}
