//! The public HTTP API, the WebSocket feed and the embedded dashboard.
//!
//! | route | |
//! |---|---|
//! | `POST /api/v1/crashes` | one event or an array (JSON; `Content-Encoding: gzip` accepted) → 202 `{"accepted": n}` |
//! | `PUT /api/v1/debug-files/{name}` | a debug file as the raw body → 201 with the stored objects |
//! | `GET /api/v1/stats` | the current snapshot |
//! | `GET /api/v1/stats/live` | WebSocket: a snapshot on connect, then every published one |
//! | `GET /api/v1/groups/{id}` | a crash group with its latest symbolicated example |
//! | `GET /metrics`, `/healthz`, `/readyz` | Prometheus text; liveness; readiness |
//!
//! Every rejection is JSON: `{"error": {"code": "...", "message": "...", "field": "..."}}`
//! with 400 (bad JSON or event; `field` names the offending field, prefixed `[i]` in a batch),
//! 413 (body over the limit, compressed or not), 415 (not `application/json`, or an unknown
//! content encoding), 429 (queue full, with `Retry-After`). A batch is accepted whole or not at
//! all, so a client can simply resend it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use symbolicate::{CrashEvent, StoreError};
use tokio::sync::Semaphore;

use crate::node::Node;

mod conn;

pub use conn::{bind, raise_fd_limit, run, FD_RESERVE, LISTEN_BACKLOG};

/// Limits of the HTTP API. Each bounds what one client can make the pod hold or wait for;
/// see `docs/architecture.md` ("Bounds") for the memory they add up to.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest crash request body, compressed and decompressed alike. 4 MiB holds a batch of
    /// several hundred 40-frame events; one event is a few KiB.
    pub max_body_bytes: usize,
    /// Largest debug file upload (decompressed). 512 MiB: large game binaries with full DWARF
    /// get there. The file is held in memory while it is parsed, so this plus the SymCache
    /// built from it must fit the pod's memory limit; uploads are received one at a time
    /// ([`max_concurrent_uploads`](Self::max_concurrent_uploads)).
    pub max_debug_file_bytes: usize,
    /// Debug-file uploads received at once; more answer 503 with `Retry-After`. 1: each may
    /// hold [`max_debug_file_bytes`](Self::max_debug_file_bytes), and uploads are rare (a CI
    /// step per build), so one at a time bounds their memory to one file.
    pub max_concurrent_uploads: usize,
    /// Largest decompressed/compressed size ratio of a gzip body once it passes 1 MiB
    /// decompressed: 100. Crash JSON and debug files compress 3–20×; a gzip bomb is ~1000×.
    /// The body is decompressed as it arrives, so a bomb is cut off after 100× its size.
    pub max_decompression_ratio: u64,
    /// Longest a `POST /api/v1/crashes?wait=counted` waits for its events to be counted for
    /// good before answering 202 anyway: 30 s. Counting takes a publish period or two; a
    /// leader failover adds the lease duration (15 s on Kubernetes) on top.
    pub counted_wait: Duration,
    /// How long a connection may take to send a request head, and how long a kept-alive
    /// connection may stay idle between requests (hyper runs one timer for both): 15 s.
    /// Real clients send a head in one packet; a socket that sends nothing is closed.
    pub header_timeout: Duration,
    /// How long a crash request body may take to arrive: 30 s (4 MiB at ~1 Mbit/s). Slower
    /// bodies answer 408 and the connection closes.
    pub body_timeout: Duration,
    /// How long a debug-file upload body may take to arrive: 10 min (512 MiB at ~7 Mbit/s).
    pub upload_timeout: Duration,
    /// Open HTTP connections at most: 4096. At the cap new connections wait in the kernel's
    /// accept queue until one closes (idle ones close after `header_timeout`). Lowered at start
    /// to fit the file-descriptor limit.
    pub max_connections: usize,
    /// Open WebSocket subscribers (`/api/v1/stats/live`) at most: 1000; more answer 503. Each
    /// costs a socket and one shared snapshot reference, not a copy.
    pub max_ws_subscribers: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_debug_file_bytes: 512 << 20,
            max_concurrent_uploads: 1,
            max_decompression_ratio: 100,
            counted_wait: Duration::from_secs(30),
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(600),
            max_connections: 4096,
            max_ws_subscribers: 1000,
        }
    }
}

impl HttpConfig {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("max_body_bytes", self.max_body_bytes == 0),
            ("max_debug_file_bytes", self.max_debug_file_bytes == 0),
            ("max_concurrent_uploads", self.max_concurrent_uploads == 0),
            ("max_decompression_ratio", self.max_decompression_ratio == 0),
            ("header_timeout", self.header_timeout.is_zero()),
            ("body_timeout", self.body_timeout.is_zero()),
            ("upload_timeout", self.upload_timeout.is_zero()),
            ("max_connections", self.max_connections == 0),
        ];
        match zero.iter().find(|(_, is_zero)| *is_zero) {
            Some((name, _)) => Err(format!("http.{name} must be greater than zero")),
            None => Ok(()),
        }
    }
}

/// What a body reader allows.
struct BodyLimits {
    max_bytes: usize,
    max_ratio: u64,
    timeout: Duration,
}

#[derive(Clone)]
struct AppState {
    node: Node,
    config: Arc<HttpConfig>,
    ready: Arc<AtomicBool>,
    uploads: Arc<Semaphore>,
    ws_slots: Arc<Semaphore>,
    snapshots: Arc<SnapshotCache>,
}

/// An API error: status, machine-readable code, message, and the offending field if any.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<u64>,
    /// Answered before the body was read: the connection closes (`Connection: close`), so
    /// the client does not send its next request on a connection with a body still in it.
    close: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            close: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = Value::String(field);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.close {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Builds the router for `node`. `ready` drives `/readyz`.
pub fn router(node: Node, config: HttpConfig, ready: Arc<AtomicBool>) -> Router {
    let state = AppState {
        node,
        uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
        ws_slots: Arc::new(Semaphore::new(config.max_ws_subscribers)),
        snapshots: Arc::default(),
        config: Arc::new(config),
        ready,
    };
    Router::new()
        .route("/", get(dashboard_index))
        .route("/app.js", get(dashboard_js))
        .route("/style.css", get(dashboard_css))
        .route("/api/v1/crashes", post(post_crashes))
        .route("/api/v1/debug-files/{name}", put(put_debug_file))
        .route("/api/v1/stats", get(get_stats))
        .route("/api/v1/stats/live", get(stats_live))
        .route("/api/v1/groups/{id}", get(get_group))
        .route("/api/v1/cluster", get(get_cluster))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

async fn dashboard_index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn dashboard_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn dashboard_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}

fn too_large(what: &str, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("{what} exceeds the limit of {limit} bytes"),
    )
}

/// Where decompressed bytes go: refuses to grow past the size limit or the ratio limit
/// (`compressed` is updated by the reader before each chunk is fed in).
struct CappedSink {
    out: Vec<u8>,
    compressed: u64,
    max_bytes: usize,
    max_ratio: u64,
    refused: Option<Refusal>,
}

/// Which limit a gzip body ran into.
#[derive(Clone, Copy)]
enum Refusal {
    Size,
    Ratio,
}

/// Below this many decompressed bytes no ratio is checked (small bodies compress well).
const RATIO_FREE_BYTES: u64 = 1 << 20;

impl std::io::Write for CappedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let after = (self.out.len() + buf.len()) as u64;
        let by_ratio = self
            .compressed
            .saturating_mul(self.max_ratio)
            .max(RATIO_FREE_BYTES);
        if after > self.max_bytes as u64 {
            self.refused = Some(Refusal::Size);
        } else if after > by_ratio {
            self.refused = Some(Refusal::Ratio);
        }
        if self.refused.is_some() {
            return Err(std::io::Error::other("decompression limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The body's content encoding, or 415.
fn encoding_of(headers: &HeaderMap) -> Result<bool, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(false),
        Some("gzip") | Some("x-gzip") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("content encoding {other:?} is not supported (use gzip or none)"),
        )),
    }
}

/// Reads a body within `limits`: 413 past `max_bytes` (compressed or not), or when a gzip
/// body decompresses past `max_ratio` times its size; 408 when it does not arrive within
/// `timeout`. A gzip body is decompressed chunk by chunk as it arrives, so memory never holds
/// more than the limits allow, whatever the body claims.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
    metrics: &crate::metrics::Metrics,
) -> Result<Bytes, ApiError> {
    let gzip = encoding_of(headers)?;
    let max = limits.max_bytes;
    let read = async {
        let mut body = body;
        let mut raw = Vec::new();
        let mut inflate = gzip.then(|| {
            flate2::write::GzDecoder::new(CappedSink {
                out: Vec::new(),
                compressed: 0,
                max_bytes: max,
                max_ratio: limits.max_ratio,
                refused: None,
            })
        });
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("cannot read the request body: {e}"),
                )
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers
            };
            match inflate.as_mut() {
                None => {
                    if raw.len() + chunk.len() > max {
                        return Err(too_large("request body", max));
                    }
                    raw.extend_from_slice(&chunk);
                }
                Some(decoder) => {
                    let sink = decoder.get_mut();
                    sink.compressed += chunk.len() as u64;
                    if sink.compressed > max as u64 {
                        return Err(too_large("request body", max));
                    }
                    if let Err(e) = std::io::Write::write_all(decoder, &chunk) {
                        return Err(decode_error(decoder.get_ref(), e, &limits));
                    }
                }
            }
        }
        match inflate {
            None => Ok(Bytes::from(raw)),
            Some(mut decoder) => match decoder.try_finish() {
                Ok(()) => Ok(Bytes::from(std::mem::take(&mut decoder.get_mut().out))),
                Err(e) => Err(decode_error(decoder.get_ref(), e, &limits)),
            },
        }
    };
    let result = match tokio::time::timeout(limits.timeout, read).await {
        Ok(result) => result,
        Err(_) => {
            metrics.http_body_timeouts.inc();
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    limits.timeout.as_secs()
                ),
            ))
        }
    };
    result.map_err(|e| ApiError { close: true, ..e })
}

fn decode_error(sink: &CappedSink, e: std::io::Error, limits: &BodyLimits) -> ApiError {
    match sink.refused {
        Some(Refusal::Ratio) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the gzip body decompresses to more than {} times its size",
                limits.max_ratio
            ),
        ),
        Some(Refusal::Size) => too_large("decompressed body", limits.max_bytes),
        None => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_encoding",
            format!("the gzip body cannot be decompressed: {e}"),
        ),
    }
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "expected Content-Type application/json, found {:?}",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        ))
    }
}

fn parse_events(body: &[u8]) -> Result<Vec<CrashEvent>, ApiError> {
    CrashEvent::parse_batch(body).map_err(|e| {
        let (code, message) = if e.is_syntax() {
            (
                "invalid_json",
                format!("the body is not valid JSON: {}", e.problem),
            )
        } else {
            ("invalid_event", e.to_string())
        };
        ApiError {
            field: Some(e.field.clone()),
            ..ApiError::new(StatusCode::BAD_REQUEST, code, message)
        }
    })
}

/// Whether a crash POST asks to wait until its events are counted (`?wait=counted`).
fn wants_counted(query: Option<&str>) -> Result<bool, ApiError> {
    let mut counted = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("wait", "counted") => counted = true,
            ("wait", other) => {
                return Err(ApiError {
                    field: Some("wait".into()),
                    ..ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_parameter",
                        format!("wait must be \"counted\", not {other:?}"),
                    )
                })
            }
            (name, _) => {
                return Err(ApiError {
                    field: Some(name.to_string()),
                    ..ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_parameter",
                        format!("unknown query parameter {name:?}"),
                    )
                })
            }
        }
    }
    Ok(counted)
}

async fn post_crashes(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let metrics = state.node.metrics();
    let mut wait_counted = false;
    let result = async {
        wait_counted = wants_counted(query.as_deref())?;
        require_json(&headers)?;
        let limits = BodyLimits {
            max_bytes: state.config.max_body_bytes,
            max_ratio: state.config.max_decompression_ratio,
            timeout: state.config.body_timeout,
        };
        let body = read_body(&headers, body, limits, metrics).await?;
        // Parsing and validation are CPU work proportional to the body: off the I/O threads.
        tokio::task::spawn_blocking(move || parse_events(&body))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
    }
    .await;
    let events = match result {
        Ok(events) => events,
        Err(e) => {
            metrics.rejected.add(e.code, 1);
            return Err(e);
        }
    };
    metrics.received.add(events.len() as u64);
    let (counted_tx, counted_rx) = tokio::sync::oneshot::channel::<crate::node::Outcome>();
    let submitted = if wait_counted {
        let on_ack: crate::node::AckCallback = Box::new(move |outcome| {
            let _ = counted_tx.send(outcome);
        });
        state.node.submit_with_ack(events, on_ack)
    } else {
        state.node.submit(events)
    };
    match submitted {
        Ok(n) if wait_counted => {
            // 200 once the events are counted for good (merged, or accepted by the cluster's
            // leader); 202 when that takes longer than `counted_wait` (they stay admitted and
            // will be counted: retrying would count them twice).
            let counted = tokio::time::timeout(state.config.counted_wait, counted_rx)
                .await
                .is_ok_and(|r| r == Ok(crate::node::Outcome::Counted));
            let status = if counted {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok((status, Json(json!({ "accepted": n, "counted": counted }))).into_response())
        }
        Ok(n) => Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": n }))).into_response()),
        Err(overloaded) => Err(ApiError {
            retry_after: Some(overloaded.retry_after.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the ingest queue is full; retry later",
            )
        }),
    }
}

async fn put_debug_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let metrics = state.node.metrics();
    let Ok(_receiving) = state.uploads.clone().try_acquire_owned() else {
        metrics.rejected.add("uploads_busy", 1);
        return Err(ApiError {
            retry_after: Some(5),
            close: true,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "uploads_busy",
                format!(
                    "{} debug-file upload(s) are being received; retry later",
                    state.config.max_concurrent_uploads
                ),
            )
        });
    };
    let limits = BodyLimits {
        max_bytes: state.config.max_debug_file_bytes,
        max_ratio: state.config.max_decompression_ratio,
        timeout: state.config.upload_timeout,
    };
    let data = read_body(&headers, body, limits, metrics)
        .await
        .inspect_err(|e| metrics.rejected.add(e.code, 1))?;
    let node = state.node.clone();
    // Stored, and what was concluded without the file forgotten (SymCaches, remembered
    // failures, shared-cache values from before: see `symbolicate`'s `shared.rs`).
    let stored =
        tokio::task::spawn_blocking(move || node.symbolicator().store_debug_file(&name, &data))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
    match stored {
        Ok(stored) => {
            state.node.metrics().debug_files_stored.inc();
            Ok((StatusCode::CREATED, Json(json!({ "stored": stored }))).into_response())
        }
        Err(e @ (StoreError::Refused { .. } | StoreError::InvalidName(_))) => {
            state.node.metrics().debug_files_refused.inc();
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_debug_file",
                e.to_string(),
            ))
        }
        Err(e) => {
            // The full error names server paths: it goes to the log, not to the client.
            tracing::error!(error = %e, "storing an uploaded debug file failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_failed",
                "the debug file could not be stored; the node's log has the cause",
            ))
        }
    }
}

/// The snapshot served to `GET /api/v1/stats`, computed at most once at a time and shared.
///
/// A `GET` needs a snapshot computed after it arrived (it must see what was counted before
/// it asked). Callers queue on one lock: the first computes; each later one takes the cached
/// result if that computation started after the caller arrived, else computes anew. A burst
/// of any size thus costs about two computations and holds one serialized copy, whose bytes
/// every response shares.
#[derive(Default)]
struct SnapshotCache(tokio::sync::Mutex<Option<(Instant, Bytes)>>);

impl SnapshotCache {
    async fn get(&self, node: &Node) -> Result<Bytes, ApiError> {
        let arrived = Instant::now();
        let mut cached = self.0.lock().await;
        if let Some((started, bytes)) = cached.as_ref() {
            if *started >= arrived {
                return Ok(bytes.clone());
            }
        }
        let started = Instant::now();
        let node = node.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            Bytes::from(serde_json::to_vec(&node.snapshot()).expect("snapshots serialize"))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        *cached = Some((started, bytes.clone()));
        Ok(bytes)
    }
}

/// The latest published snapshot (what every subscriber is sent), else, before the first
/// publish, the one `GET` serves.
async fn published_snapshot(state: &AppState) -> Result<Bytes, ApiError> {
    let published = state.node.subscribe().borrow().clone();
    if published.len() > 2 {
        return Ok(shared_text(published));
    }
    state.snapshots.get(&state.node).await
}

/// `Bytes` over a shared snapshot text, without copying it.
fn shared_text(text: Arc<str>) -> Bytes {
    struct Shared(Arc<str>);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    Bytes::from_owner(Shared(text))
}

async fn get_stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = state.snapshots.get(&state.node).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response())
}

async fn get_cluster(State(state): State<AppState>) -> Json<Value> {
    Json(serde_json::to_value(state.node.cluster()).expect("cluster view serializes"))
}

async fn get_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.node.group(&id) {
        Some(group) => Ok(Json(group).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no crash group {id:?} on this node"),
        )),
    }
}

async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let node = state.node.clone();
    let text = tokio::task::spawn_blocking(move || node.render_metrics())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Ready while the node serves (not shutting down) and, in a cluster with the shared
/// symbolication cache, once its grid has been cluster safe: a new pod holds its share of the
/// cache before it takes traffic, and a rolling update waits for that before stopping the next
/// old pod. A pod that was ready stays ready when a peer leaves or dies (see
/// [`crate::shared_cache`] for why). A single node without cluster is ready at once.
async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response()
    };
    if !state.ready.load(Ordering::Acquire) {
        return not_ready("shutting down".into());
    }
    if !state.node.shared_cache_ready() {
        let safety = state
            .node
            .shared_cache()
            .map(|c| c.grid().safety())
            .unwrap_or_default();
        return not_ready(format!(
            "the shared symbolication cache is not cluster safe yet (table: {}, current: {}, \
             partitions without a live replica: {}, partitions being received: {})",
            safety.has_table,
            safety.table_current,
            safety.partitions_without_live_replica,
            safety.migrations_running
        ));
    }
    Json(json!({"status": "ready"})).into_response()
}

async fn stats_live(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let metrics = state.node.metrics();
    let Ok(slot) = state.ws_slots.clone().try_acquire_owned() else {
        metrics.ws_refused.inc();
        return ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_subscribers",
                format!(
                    "this node serves {} WebSocket subscribers already; retry later or use another node",
                    state.config.max_ws_subscribers
                ),
            )
        }
        .into_response();
    };
    ws.on_upgrade(move |socket| async move {
        let metrics = state.node.metrics();
        metrics.ws_subscribers.inc();
        live_feed(&state, socket).await;
        metrics.ws_subscribers.dec();
        drop(slot);
    })
}

/// A subscriber whose socket accepts no snapshot for this long is dropped: it is stalled, and
/// its socket buffers would otherwise stay allocated.
const WS_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the current snapshot, then every published one. A slow subscriber skips snapshots
/// rather than queueing them: the feed holds only the newest (a `watch`), shared by all.
async fn live_feed(state: &AppState, mut socket: WebSocket) {
    let node = &state.node;
    let mut snapshots = node.subscribe();
    snapshots.mark_unchanged();
    let Ok(first) = published_snapshot(state).await else {
        return;
    };
    let mut next = Some(first);
    loop {
        if let Some(text) = next.take() {
            let Ok(text) = Utf8Bytes::try_from(text) else {
                break;
            };
            match tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Text(text))).await {
                Ok(Ok(())) => node.metrics().ws_messages.inc(),
                _ => break,
            }
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() { break; }
                next = Some(shared_text(snapshots.borrow_and_update().clone()));
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
}
