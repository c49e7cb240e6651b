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

use std::future::Future;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use symbolicate::{CrashEvent, StoreError};
use tokio::net::TcpListener;

use crate::node::Node;

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest crash request body, compressed and decompressed alike. 4 MiB holds a batch of
    /// several hundred 40-frame events; one event is a few KiB.
    pub max_body_bytes: usize,
    /// Largest debug file upload. 512 MiB: large game binaries with full DWARF get there.
    pub max_debug_file_bytes: usize,
    /// Longest a `POST /api/v1/crashes?wait=counted` waits for its events to be counted for
    /// good before answering 202 anyway: 30 s. Counting takes a publish period or two; a
    /// leader failover adds the lease duration (15 s on Kubernetes) on top.
    pub counted_wait: std::time::Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_debug_file_bytes: 512 << 20,
            counted_wait: std::time::Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
struct AppState {
    node: Node,
    config: Arc<HttpConfig>,
    ready: Arc<AtomicBool>,
}

/// An API error: status, machine-readable code, message, and the offending field if any.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
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

/// Serves `router` on `listener` until `shutdown` resolves, then finishes open requests.
pub async fn run(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
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

/// Reads a body up to `limit` bytes, answering 413 beyond.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the request body: {e}"),
        )),
    }
}

fn decode(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            let mut reader = flate2::read::GzDecoder::new(&raw[..]).take(limit as u64 + 1);
            reader.read_to_end(&mut out).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_encoding",
                    format!("the gzip body cannot be decompressed: {e}"),
                )
            })?;
            if out.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("decompressed body exceeds the limit of {limit} bytes"),
                ));
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("content encoding {other:?} is not supported (use gzip or none)"),
        )),
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
        let limit = state.config.max_body_bytes;
        let raw = read_limited(body, limit).await?;
        let body = decode(&headers, raw, limit)?;
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
    let limit = state.config.max_debug_file_bytes;
    let raw = read_limited(body, limit).await?;
    let data = decode(&headers, raw, limit)?;
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
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_failed",
            e.to_string(),
        )),
    }
}

async fn get_stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let snap = tokio::task::spawn_blocking(move || node.snapshot())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(snap).into_response())
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
    ws.on_upgrade(move |socket| live_feed(state.node, socket))
}

async fn live_feed(node: Node, mut socket: WebSocket) {
    let mut snapshots = node.subscribe();
    let first = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            serde_json::to_string(&node.snapshot()).expect("serializes")
        })
        .await
        .unwrap_or_default()
    };
    if socket.send(Message::Text(first.into())).await.is_err() {
        return;
    }
    node.metrics().ws_messages.inc();
    snapshots.mark_unchanged();
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() { break; }
                let text = snapshots.borrow_and_update().clone();
                if socket.send(Message::Text(text.to_string().into())).await.is_err() { break; }
                node.metrics().ws_messages.inc();
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
}
