//! The TCP transport and server (framing and handshake are described in the parent module).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Handler, RpcConfig, RpcError, RpcStats, Transport};
use crate::election::BoxFuture;

const MAGIC: &[u8; 6] = b"CGRPC1";
const CONTEXT: &[u8] = b"crashgrid-rpc-v1";
const KIND_REQUEST: u8 = 0;
const KIND_RESPONSE: u8 = 1;
const KIND_ERROR: u8 = 2;
const ACCEPTED: u8 = 0;
const REJECTED: u8 = 1;

fn answer_for(secret: &[u8], challenge: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(CONTEXT);
    mac.update(challenge);
    mac
}

fn frame(id: u64, kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 9 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn error_frame(id: u64, error: &RpcError) -> Vec<u8> {
    frame(
        id,
        KIND_ERROR,
        &[&[error.code()], error.message().as_bytes()],
    )
}

/// Reads one frame: (id, kind, payload). `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<(u64, u8, Vec<u8>)>, RpcError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(RpcError::Unavailable(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(RpcError::TooLarge(len));
    }
    if len < 9 {
        return Err(RpcError::Protocol(format!(
            "frame of {len} bytes is too short"
        )));
    }
    let mut buf = vec![0u8; len];
    reader
        .read_exact(&mut buf)
        .await
        .map_err(|e| RpcError::Unavailable(e.to_string()))?;
    let id = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
    let kind = buf[8];
    buf.drain(..9);
    Ok(Some((id, kind, buf)))
}

/// Writes queued frames, flushing whenever the queue runs dry (so a burst goes out in few
/// syscalls and a lone request without delay).
async fn write_loop<W: AsyncWriteExt + Unpin>(writer: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut writer = BufWriter::with_capacity(64 << 10, writer);
    while let Some(frame) = rx.recv().await {
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if writer.write_all(&more).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

/// Serves RPC on `listener` until `shutdown` resolves; then stops accepting and closes open
/// connections. Every connection must pass the handshake with `config.secret` first; refusals
/// are counted in `stats`.
pub async fn serve(
    listener: TcpListener,
    config: RpcConfig,
    handler: Arc<dyn Handler>,
    stats: Arc<RpcStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RpcError> {
    config.validate()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let rejections = Arc::new(LogEvery::new(Duration::from_secs(10)));
    let accept_errors = LogEvery::new(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (config, handler, stats) = (config.clone(), handler.clone(), stats.clone());
                    let rejections = rejections.clone();
                    let mut stop = stop_rx.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => {}
                            r = serve_connection(stream, &config, handler, &stats, &rejections) => {
                                if let Err(e) = r {
                                    tracing::debug!(%peer, error = %e, "rpc connection ended");
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    if let Some(held_back) = accept_errors.allow(tokio::time::Instant::now()) {
                        tracing::warn!(error = %e, held_back, "rpc accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// Allows one log line per `every`, counting the ones held back: a flood of rejected
/// connections (a port scan, a misconfigured pod) must not flood the log. Time is passed in.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    state: parking_lot::Mutex<(Option<tokio::time::Instant>, u64)>,
}

impl LogEvery {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line may be written at `now`.
    pub fn allow(&self, now: tokio::time::Instant) -> Option<u64> {
        let mut state = self.state.lock();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    config: &RpcConfig,
    handler: Arc<dyn Handler>,
    stats: &RpcStats,
    rejections: &LogEvery,
) -> Result<(), RpcError> {
    let mut challenge = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut challenge);
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&challenge);
    let io = |e: std::io::Error| RpcError::Unavailable(e.to_string());
    stream.write_all(&hello).await.map_err(io)?;
    let mut answer = [0u8; 32];
    let got = tokio::time::timeout(config.connect_timeout, stream.read_exact(&mut answer)).await;
    let authentic = matches!(got, Ok(Ok(_)))
        && answer_for(&config.secret, &challenge)
            .verify_slice(&answer)
            .is_ok();
    if !authentic {
        stats
            .rejected_unauthenticated
            .fetch_add(1, Ordering::Relaxed);
        let _ = stream.write_all(&[REJECTED]).await;
        if let Some(held_back) = rejections.allow(tokio::time::Instant::now()) {
            tracing::warn!(
                peer = ?stream.peer_addr().ok(),
                held_back,
                "rpc connection rejected: wrong or missing cluster secret (at most one such \
                 line per 10 s; held_back counts the others, all are in the rejected metric)"
            );
        }
        return Err(RpcError::Unauthenticated);
    }
    stream.write_all(&[ACCEPTED]).await.map_err(io)?;
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_task = tokio::spawn(write_loop(writer, rx));
    let result = loop {
        let (id, kind, payload) = match read_frame(&mut reader, config.max_frame_bytes).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if kind != KIND_REQUEST || payload.len() < 2 {
            let _ = tx.send(error_frame(
                id,
                &RpcError::Protocol("expected a request".into()),
            ));
            continue;
        }
        let mlen = u16::from_be_bytes([payload[0], payload[1]]) as usize;
        let Some(method) = payload
            .get(2..2 + mlen)
            .and_then(|m| std::str::from_utf8(m).ok())
            .map(str::to_owned)
        else {
            let _ = tx.send(error_frame(id, &RpcError::Protocol("bad method".into())));
            continue;
        };
        let body = payload[2 + mlen..].to_vec();
        stats.served.fetch_add(1, Ordering::Relaxed);
        let fut = handler.handle(&method, body);
        let tx = tx.clone();
        let max = config.max_frame_bytes;
        tokio::spawn(async move {
            let out = match fut.await {
                Ok(body) if body.len() + 9 > max => {
                    error_frame(id, &RpcError::TooLarge(body.len()))
                }
                Ok(body) => frame(id, KIND_RESPONSE, &[&body]),
                Err(e) => error_frame(id, &e),
            };
            let _ = tx.send(out);
        });
    };
    drop(tx);
    // In-flight handlers hold senders; the writer ends when the last answer is written.
    let _ = writer_task.await;
    result
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, RpcError>>>>;

/// One authenticated connection to a peer.
struct Connection {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Connection {
    async fn open(to: SocketAddr, config: &RpcConfig) -> Result<Connection, RpcError> {
        let unavailable = |e: std::io::Error| RpcError::Unavailable(format!("{to}: {e}"));
        let mut stream = TcpStream::connect(to).await.map_err(unavailable)?;
        let _ = stream.set_nodelay(true);
        let mut hello = [0u8; 38];
        stream.read_exact(&mut hello).await.map_err(unavailable)?;
        if &hello[..6] != MAGIC {
            return Err(RpcError::Protocol(format!(
                "{to} is not a crashgrid RPC port"
            )));
        }
        let answer = answer_for(&config.secret, &hello[6..])
            .finalize()
            .into_bytes();
        stream.write_all(&answer).await.map_err(unavailable)?;
        let mut verdict = [0u8; 1];
        stream.read_exact(&mut verdict).await.map_err(unavailable)?;
        if verdict[0] != ACCEPTED {
            return Err(RpcError::Unauthenticated);
        }
        let (mut reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, rx));
        let pending: Arc<Pending> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (p, c, max) = (pending.clone(), closed.clone(), config.max_frame_bytes);
        tokio::spawn(async move {
            let why = loop {
                match read_frame(&mut reader, max).await {
                    Ok(Some((id, kind, payload))) => {
                        let result = match kind {
                            KIND_RESPONSE => Ok(payload),
                            KIND_ERROR if !payload.is_empty() => Err(RpcError::from_code(
                                payload[0],
                                String::from_utf8_lossy(&payload[1..]).into_owned(),
                            )),
                            _ => Err(RpcError::Protocol(format!("unexpected frame kind {kind}"))),
                        };
                        if let Some(waiter) = p.lock().remove(&id) {
                            let _ = waiter.send(result);
                        }
                    }
                    Ok(None) => break "connection closed by the peer".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            c.store(true, Ordering::Release);
            for (_, waiter) in p.lock().drain() {
                let _ = waiter.send(Err(RpcError::Unavailable(format!("{to}: {why}"))));
            }
        });
        Ok(Connection {
            tx,
            pending,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    async fn request(&self, method: &str, body: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let _guard = PendingGuard {
            pending: &self.pending,
            id,
        };
        let m = method.as_bytes();
        let frame = frame(
            id,
            KIND_REQUEST,
            &[&(m.len() as u16).to_be_bytes(), m, &body],
        );
        if self.tx.send(frame).is_err() || self.is_closed() {
            return Err(RpcError::Unavailable("connection closed".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(RpcError::Unavailable("connection closed".into())))
    }
}

/// Forgets a request's waiter when the call ends early (timeout, cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// The connection to one peer, opened under its own lock so concurrent first calls share it.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// The real transport: one multiplexed, authenticated connection per peer, opened on first use
/// and reopened after it breaks.
pub struct TcpTransport {
    config: RpcConfig,
    slots: Mutex<HashMap<SocketAddr, Slot>>,
    stats: Arc<RpcStats>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport").finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// A transport authenticating with `config.secret`.
    pub fn new(config: RpcConfig) -> Result<Self, RpcError> {
        config.validate()?;
        Ok(TcpTransport {
            config,
            slots: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        })
    }

    async fn connection(&self, to: SocketAddr) -> Result<Arc<Connection>, RpcError> {
        let slot = self.slots.lock().entry(to).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let c = tokio::time::timeout(
            self.config.connect_timeout,
            Connection::open(to, &self.config),
        )
        .await
        .map_err(|_| RpcError::Unavailable(format!("{to}: connect timed out")))??;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Closes the connection to `to` (the next call reconnects).
    pub fn disconnect(&self, to: SocketAddr) {
        self.slots.lock().remove(&to);
    }
}

impl Transport for TcpTransport {
    fn call<'a>(
        &'a self,
        to: SocketAddr,
        method: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>> {
        Box::pin(async move {
            let started = Instant::now();
            if body.len() + method.len() + 11 > self.config.max_frame_bytes {
                self.stats.record_call(started, false);
                return Err(RpcError::TooLarge(body.len()));
            }
            let result = tokio::time::timeout(timeout, async {
                let conn = self.connection(to).await?;
                conn.request(method, body).await
            })
            .await
            .unwrap_or(Err(RpcError::Timeout(timeout)));
            self.stats.record_call(started, result.is_ok());
            result
        })
    }

    fn stats(&self) -> Arc<RpcStats> {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rule (issue 13): a flood of rejected connections writes one line per period, and the
    /// next line says how many were held back.
    #[test]
    fn log_lines_are_limited_to_one_per_period_and_count_the_rest() {
        let log = LogEvery::new(Duration::from_secs(10));
        let t0 = tokio::time::Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        for i in 1..2000u64 {
            assert_eq!(log.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.allow(t0 + Duration::from_secs(10)), Some(1999));
        assert_eq!(log.allow(t0 + Duration::from_secs(11)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(21)), Some(1));
    }
}
