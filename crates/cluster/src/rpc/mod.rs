//! Pod-to-pod RPC: request/response over one multiplexed TCP connection per peer, authenticated
//! with a shared cluster secret.
//!
//! # Why our own framing
//!
//! The messages are few and internal (heartbeats, partial aggregates, cache batches); gRPC
//! would need protoc at build time, and HTTP/1.1 would need a connection per in-flight request
//! or head-of-line blocking. A frame here is
//!
//! ```text
//! u32 length of the rest | u64 request id | u8 kind | payload
//! kind 0 request:  u16 method length | method (UTF-8) | body
//! kind 1 response: body
//! kind 2 error:    u8 code | message (UTF-8)
//! ```
//!
//! all integers big-endian. Many requests are in flight on one connection; responses carry
//! the request id and may come back in any order. Bodies are opaque bytes; [`call_json`]
//! adds serde on top. A frame is at most [`RpcConfig::max_frame_bytes`].
//!
//! # Authentication
//!
//! The server opens every connection with a 32-byte random challenge; the client answers with
//! HMAC-SHA256(secret, `"crashgrid-rpc-v1" || challenge`) and the server checks it in constant
//! time. The secret never crosses the wire and a recorded answer is useless for another
//! connection. A wrong or missing answer gets a rejection byte, the connection is closed and
//! [`RpcStats::rejected_unauthenticated`] counts it. (Confidentiality is not the aim: traffic
//! stays on the pod network, which a NetworkPolicy restricts to crashgrid pods.)
//!
//! # Transports
//!
//! [`Transport`] is what callers use; [`TcpTransport`] is the real one and
//! [`MemoryNetwork`] an in-memory one that can cut links and isolate nodes, so cluster logic
//! is tested without sockets. The conformance suite in `tests/cluster/rpc.rs` runs against
//! both. Timeouts bound each call; [`call_with_retry`] retries the retryable failures
//! (unreachable, timed out) with exponential backoff and jitter.

mod memory;
mod tcp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use memory::{MemoryNetwork, MemoryTransport};
pub use tcp::{serve, LogEvery, TcpTransport};

use crate::election::BoxFuture;

/// Everything an RPC can fail with. Plain data (`Clone + PartialEq`): callers keep and compare
/// outcomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The peer could not be reached, or the connection broke before the answer.
    #[error("peer unavailable: {0}")]
    Unavailable(String),
    /// No answer within the call's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer refused our cluster secret (or we refused theirs).
    #[error("rejected: wrong or missing cluster secret")]
    Unauthenticated,
    /// The peer serves no such method.
    #[error("no such method: {0}")]
    NoSuchMethod(String),
    /// The peer's handler failed; its message.
    #[error("remote error: {0}")]
    Remote(String),
    /// A frame over the size limit.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The peer spoke something else than this protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The configuration is unusable.
    #[error("invalid RPC configuration: {0}")]
    Config(String),
}

impl RpcError {
    /// Whether a retry may succeed: the peer was unreachable or slow. Application errors
    /// (no such method, a handler's error, authentication) are answers, not retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RpcError::Unavailable(_) | RpcError::Timeout(_))
    }

    fn code(&self) -> u8 {
        match self {
            RpcError::NoSuchMethod(_) => 1,
            RpcError::Remote(_) => 2,
            RpcError::TooLarge(_) => 3,
            RpcError::Unauthenticated => 4,
            _ => 5,
        }
    }

    fn from_code(code: u8, message: String) -> Self {
        match code {
            1 => RpcError::NoSuchMethod(message),
            2 => RpcError::Remote(message),
            3 => RpcError::TooLarge(message.parse().unwrap_or(0)),
            4 => RpcError::Unauthenticated,
            _ => RpcError::Protocol(message),
        }
    }

    fn message(&self) -> String {
        match self {
            RpcError::NoSuchMethod(m) | RpcError::Remote(m) => m.clone(),
            RpcError::TooLarge(n) => n.to_string(),
            other => other.to_string(),
        }
    }
}

/// Serves requests: `method` names the operation, `body` is its argument.
///
/// Implemented for closures `Fn(&str, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>>`.
/// Unknown methods should answer [`RpcError::NoSuchMethod`]; other failures
/// [`RpcError::Remote`].
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, method: &str, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>>;
}

impl<F> Handler for F
where
    F: Fn(&str, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> + Send + Sync + 'static,
{
    fn handle(&self, method: &str, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
        self(method, body)
    }
}

/// Sends requests to peers by address.
pub trait Transport: Send + Sync + 'static {
    /// One request to `to`, answered within `timeout` or failed with [`RpcError::Timeout`].
    fn call<'a>(
        &'a self,
        to: SocketAddr,
        method: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>>;

    /// Counters of this transport (both directions where it serves too).
    fn stats(&self) -> Arc<RpcStats>;
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn call<'a>(
        &'a self,
        to: SocketAddr,
        method: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>> {
        (**self).call(to, method, body, timeout)
    }

    fn stats(&self) -> Arc<RpcStats> {
        (**self).stats()
    }
}

/// Settings of the RPC layer.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// The shared cluster secret; every pod of a cluster has the same. At least 16 bytes
    /// (a random 32-byte value is what the Kubernetes manifests generate).
    pub secret: Arc<[u8]>,
    /// Time to open a connection and pass the handshake. 1 s: peers are in one cluster
    /// network, where a connection takes well under a millisecond unless the peer is gone.
    pub connect_timeout: Duration,
    /// Largest frame accepted or sent: 16 MiB, far above a 40-frame cache batch (~10 KiB) or
    /// a pod's whole 5-minute window of partials (~1 MiB), yet bounding what a confused peer
    /// can make us buffer.
    pub max_frame_bytes: usize,
}

impl RpcConfig {
    /// A configuration with `secret` and default limits.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        RpcConfig {
            secret: Arc::from(secret.as_ref()),
            connect_timeout: Duration::from_secs(1),
            max_frame_bytes: 16 << 20,
        }
    }

    /// Checks the rules between fields.
    pub fn validate(&self) -> Result<(), RpcError> {
        if self.secret.len() < 16 {
            return Err(RpcError::Config(
                "the cluster secret must be at least 16 bytes".into(),
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(RpcError::Config(
                "max_frame_bytes must be at least 1024".into(),
            ));
        }
        Ok(())
    }
}

/// Counters of one transport or server. Exposed as Prometheus metrics by the binary.
#[derive(Debug, Default)]
pub struct RpcStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed (any [`RpcError`]).
    pub call_failures: AtomicU64,
    /// Sum of call latencies in microseconds (successful and failed).
    pub call_micros: AtomicU64,
    /// Requests served.
    pub served: AtomicU64,
    /// Connections refused for a wrong or missing secret.
    pub rejected_unauthenticated: AtomicU64,
}

impl RpcStats {
    fn record_call(&self, started: std::time::Instant, ok: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.call_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.call_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// How [`call_with_retry`] retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first. 3: a dropped connection or a slow moment is
    /// retried twice; a peer that is really gone fails within about a second.
    pub attempts: u32,
    /// Wait before the second attempt: 50 ms, doubled each time.
    pub initial_backoff: Duration,
    /// Longest wait between attempts: 1 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (1-based; attempt 1 has none): exponential, with
    /// "equal jitter" (half fixed, half random) so peers retrying together spread out.
    pub fn backoff<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << (attempt - 2).min(16))
            .min(self.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(rng.gen::<f64>())
    }
}

/// Calls `to`, retrying retryable failures per `policy`; returns the last error otherwise.
pub async fn call_with_retry<T: Transport + ?Sized>(
    transport: &T,
    to: SocketAddr,
    method: &str,
    body: Vec<u8>,
    timeout: Duration,
    policy: &RetryPolicy,
) -> Result<Vec<u8>, RpcError> {
    let mut attempt = 1;
    loop {
        match transport.call(to, method, body.clone(), timeout).await {
            Err(e) if e.is_retryable() && attempt < policy.attempts => {
                attempt += 1;
                let wait = policy.backoff(attempt, &mut rand::thread_rng());
                tracing::debug!(%to, method, error = %e, ?wait, "rpc retry");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Calls with JSON bodies both ways.
pub async fn call_json<T, Req, Resp>(
    transport: &T,
    to: SocketAddr,
    method: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, RpcError>
where
    T: Transport + ?Sized,
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let body = serde_json::to_vec(request).map_err(|e| RpcError::Protocol(e.to_string()))?;
    let answer = transport.call(to, method, body, timeout).await?;
    serde_json::from_slice(&answer).map_err(|e| RpcError::Protocol(e.to_string()))
}

/// Decodes a JSON request body in a handler ([`RpcError::Remote`] naming the problem).
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    serde_json::from_slice(body).map_err(|e| RpcError::Remote(format!("invalid request: {e}")))
}

/// Encodes a JSON answer in a handler.
pub fn encode_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(value).map_err(|e| RpcError::Remote(e.to_string()))
}
