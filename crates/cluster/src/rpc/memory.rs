//! An in-memory network for tests and simulations: nodes are handlers keyed by address, and
//! links can be cut (both directions) or a node isolated from everyone.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Handler, RpcError, RpcStats, Transport};
use crate::election::BoxFuture;

#[derive(Default)]
struct State {
    nodes: HashMap<SocketAddr, Arc<dyn Handler>>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
    isolated: HashSet<SocketAddr>,
}

impl State {
    fn linked(&self, a: SocketAddr, b: SocketAddr) -> bool {
        !self.isolated.contains(&a)
            && !self.isolated.contains(&b)
            && !self.cut.contains(&(a.min(b), a.max(b)))
    }
}

/// A network of handlers in one process. Cheap to clone; clones share the network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `handler` at `addr` (replacing what was there).
    pub fn register(&self, addr: SocketAddr, handler: Arc<dyn Handler>) {
        self.state.lock().nodes.insert(addr, handler);
    }

    /// Removes the node at `addr`, as if its process died: calls to it fail as unreachable.
    pub fn unregister(&self, addr: SocketAddr) {
        self.state.lock().nodes.remove(&addr);
    }

    /// A transport sending from `from`.
    pub fn transport(&self, from: SocketAddr) -> MemoryTransport {
        MemoryTransport {
            network: self.clone(),
            from,
            stats: Arc::default(),
        }
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.state.lock().cut.insert((a.min(b), a.max(b)));
    }

    /// Cuts every link of `a`.
    pub fn isolate(&self, a: SocketAddr) {
        self.state.lock().isolated.insert(a);
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut s = self.state.lock();
        s.cut.clear();
        s.isolated.clear();
    }

    fn route(&self, from: SocketAddr, to: SocketAddr) -> Result<Arc<dyn Handler>, RpcError> {
        let s = self.state.lock();
        if !s.linked(from, to) {
            return Err(RpcError::Unavailable(format!("{from} -> {to}: link cut")));
        }
        s.nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| RpcError::Unavailable(format!("{to}: connection refused")))
    }
}

/// The sending side of one node on a [`MemoryNetwork`].
pub struct MemoryTransport {
    network: MemoryNetwork,
    from: SocketAddr,
    stats: Arc<RpcStats>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("from", &self.from)
            .finish()
    }
}

impl Transport for MemoryTransport {
    fn call<'a>(
        &'a self,
        to: SocketAddr,
        method: &'a str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = match self.network.route(self.from, to) {
                Err(e) => Err(e),
                Ok(handler) => {
                    let answer = tokio::time::timeout(timeout, handler.handle(method, body))
                        .await
                        .unwrap_or(Err(RpcError::Timeout(timeout)));
                    // A link cut while the request was in flight loses the answer.
                    match self.network.route(self.from, to) {
                        Ok(_) => answer,
                        Err(e) => Err(e),
                    }
                }
            };
            self.stats.record_call(started, result.is_ok());
            result
        })
    }

    fn stats(&self) -> Arc<RpcStats> {
        self.stats.clone()
    }
}
