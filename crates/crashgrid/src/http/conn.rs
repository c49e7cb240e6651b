//! The HTTP accept loop: connection cap, header and idle timeouts, graceful drain.
//!
//! `axum::serve` has none of these, and a pod on a shared network must survive clients that
//! open sockets and never finish a request. So the port is served here with hyper directly:
//!
//! * **Connection cap** ([`HttpConfig::max_connections`]): the loop takes a permit before it
//!   accepts, so at the cap new connections wait in the kernel's accept queue instead of
//!   taking file descriptors; a permit comes back when a connection closes (or is upgraded to
//!   a WebSocket, which has its own cap). The cap is lowered at start to fit the process's
//!   file-descriptor limit (see [`HttpConfig::fit_to_fd_limit`]), so `accept` never fails with "Too many
//!   open files" because of HTTP alone.
//! * **Header timeout** ([`HttpConfig::header_timeout`]): hyper's header timer runs whenever a
//!   connection waits for a request head: for the first request, and on a kept-alive
//!   connection from the end of one response to the next request. It is therefore also the
//!   idle keep-alive timeout: a socket that sends nothing is closed after it.
//! * **Body timeout**: enforced by the handlers that read bodies (see `read_body`), because
//!   only they know how large a body may be.
//! * **Accept errors** (resource exhaustion) are counted and logged at most once a second,
//!   and the loop backs off briefly instead of spinning.
//!
//! On shutdown the listener is closed first, then every open connection finishes its current
//! request and closes (hyper's graceful shutdown); `run` returns when all have closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::HttpConfig;
use crate::node::Node;

/// File descriptors kept free for everything that is not an HTTP connection: the RPC
/// transport's peers, the NATS connection, debug files being read, log and sink files.
pub const FD_RESERVE: u64 = 256;

impl HttpConfig {
    /// Lowers the connection and WebSocket caps so that both, plus [`FD_RESERVE`], fit
    /// `fd_limit` (the soft `RLIMIT_NOFILE`): when they do not, HTTP connections get three
    /// quarters of what is left and WebSocket subscribers a quarter. Returns whether it
    /// lowered anything.
    pub fn fit_to_fd_limit(&mut self, fd_limit: u64) -> bool {
        let room = fd_limit.saturating_sub(FD_RESERVE).max(4) as usize;
        if self.max_connections.saturating_add(self.max_ws_subscribers) <= room {
            return false;
        }
        self.max_connections = self.max_connections.min(room / 4 * 3).max(1);
        self.max_ws_subscribers = self.max_ws_subscribers.min(room / 4).max(1);
        true
    }
}

/// Connections the kernel holds for the HTTP port while the node is at its connection cap:
/// 4096 (the kernel lowers it to `net.core.somaxconn`). The default of 128 overflows in a
/// burst, and a connection dropped from a full queue looks established to a client that
/// sends nothing, so it is never told.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the HTTP port with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft file-descriptor limit to the hard one (as Go's runtime does; container
/// runtimes often set a soft limit of 1024 and a hard one far higher) and returns the soft
/// limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes open requests, with
/// the connection cap and timeouts of `config` (see the module docs).
pub async fn run(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cap = config.max_connections;
    let metrics = node.metrics();
    metrics.http_connection_cap.set(cap as u64);
    let permits = Arc::new(Semaphore::new(cap));
    let (draining_tx, draining) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(64 << 10);
    let accept_log = cluster::LogEvery::new(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    metrics.http_accept_errors.inc();
                    if let Some(suppressed) = accept_log.allow(tokio::time::Instant::now()) {
                        tracing::warn!(error = %e, suppressed, "HTTP accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let node = node.clone();
        let mut draining = draining.clone();
        metrics.http_connections.inc();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = async { draining.wait_for(|d| *d).await.map(|_| ()) } => {
                    // Finish the request in progress (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            let metrics = node.metrics();
            metrics.http_connections.dec();
            if let Err(e) = result {
                let reason = if e.is_timeout() {
                    "header_timeout"
                } else if e.is_incomplete_message() || e.is_closed() {
                    "client_closed"
                } else {
                    "error"
                };
                metrics.http_connections_failed.add(reason, 1);
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = draining_tx.send(true);
    // Every connection holds a permit until it closes: all of them back means all drained.
    let _ = permits.acquire_many(cap as u32).await;
    Ok(())
}
