//! The node's side of the distributed statistics (map/reduce over the cluster).
//!
//! Every round (once per publish interval) a node:
//!
//! 1. expires outbox seconds that left the window (their unacknowledged jobs are released
//!    and counted: no leader took them in five minutes);
//! 2. sends its unacknowledged per-second partials to the leader (`stats.partials`), tagged
//!    with the leader's epoch; the answer acknowledges jobs, which is when a source (NATS)
//!    acks its messages. The leader itself accepts its own partials in-process, but releases
//!    its own jobs only once both standbys (the first [`STANDBYS`] other members by id) hold
//!    a replica (`stats.replica`): a leader killed right after acknowledging loses nothing,
//!    and neither does killing the next leader too before it re-replicated what it took over
//!    (with one standby, the dead leader's own partials then had no copy left);
//! 3. if it leads: builds the cluster-wide snapshot from its [`Reducer`] and pushes it, with
//!    its epoch, to every member (`stats.snapshot`); receivers check the epoch with the
//!    cluster's fence, so a deposed leader's snapshot is never accepted.
//!
//! A node that starts leading under a new epoch asks every member for its whole window and
//! its replica (`stats.collect`) before its first snapshot, so statistics after a failover
//! are exact instead of restarting from zero. Without a cluster, the node is its own leader
//! at epoch 0 and the same code runs without any RPC.

use std::sync::Arc;
use std::time::Duration;

use cluster::{decode_json, encode_json, BoxFuture, Handler, RpcError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use stats::{Accepted, Outbox, PartialsMessage, PodBacklog, Reducer, WindowConfig};

use super::{Inner, Node, NodeSnapshot};
use crate::metrics::Counter;

/// A pod that has not reported for this long no longer counts in the cluster-wide backlog.
const BACKLOG_FRESH_SECONDS: u64 = 5;

/// Members that keep a replica of the leader's reducer: 2, so that two failures in a row (the
/// leader, then the standby that took over, before it re-replicated) lose nothing the leader
/// acknowledged. Each costs one replica call per partials message.
const STANDBYS: usize = 2;

/// Timeout of the exchange calls: one round must not stall the next.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The exchange state of a node.
pub(super) struct Exchange {
    pub(super) window: WindowConfig,
    pub(super) outbox: Mutex<Outbox<u64>>,
    /// Present while this node leads (or runs alone).
    reducer: Mutex<Option<Reducer>>,
    /// The standby copy of the leader's reducer (kept by every node; filled on the standby).
    replica: Mutex<Reducer>,
    /// Serializes rounds.
    round: tokio::sync::Mutex<()>,
    /// The standbys the replica was fully synchronised to (while leading), with the epoch.
    synced_standbys: Mutex<Vec<(u64, std::net::SocketAddr)>>,
    pub(super) counters: ExchangeCounters,
}

/// Counters of the exchange, rendered in /metrics.
#[derive(Default)]
pub(super) struct ExchangeCounters {
    pub(super) partials_sent: Counter,
    pub(super) partials_failed: Counter,
    pub(super) partials_rejected: Counter,
    pub(super) snapshots_received: Counter,
    pub(super) snapshots_rejected: Counter,
    pub(super) replica_failed: Counter,
    pub(super) replica_refused: Counter,
    pub(super) collected: Counter,
    pub(super) expired_unacknowledged: Counter,
}

/// A snapshot pushed by the leader.
#[derive(Serialize, Deserialize)]
struct SnapshotPush {
    epoch: u64,
    json: String,
}

#[derive(Serialize, Deserialize)]
struct CollectRequest {
    epoch: u64,
}

impl Exchange {
    pub(super) fn new(window: WindowConfig, now: u64) -> anyhow::Result<Self> {
        Ok(Exchange {
            outbox: Mutex::new(Outbox::new(u64::from(window.seconds))),
            reducer: Mutex::new(None),
            replica: Mutex::new(Reducer::new(window.clone(), now, 0)?),
            round: tokio::sync::Mutex::new(()),
            synced_standbys: Mutex::new(Vec::new()),
            window,
            counters: ExchangeCounters::default(),
        })
    }

    /// Whether this node holds the reducer now.
    pub(super) fn leads(&self) -> bool {
        self.reducer.lock().is_some()
    }
}

fn fresh_reducer(window: &WindowConfig, now: u64, epoch: u64) -> Reducer {
    Reducer::new(window.clone(), now, epoch).expect("the window config was validated at start")
}

impl Node {
    fn local_backlog(&self) -> PodBacklog {
        let now = self.inner.clock.now_ms();
        PodBacklog {
            unacked: self.inner.backlog.unacked() as u64,
            oldest_unacked_age_ms: self.inner.backlog.oldest_age_ms(now),
        }
    }

    /// The leader's own backlog in its reducer, as it is after releasing (a pod's report is
    /// otherwise the one it sent with its partials, one round old).
    fn report_own_backlog(&self, now: u64) {
        let backlog = self.local_backlog();
        if let Some(r) = self.inner.exchange.reducer.lock().as_mut() {
            r.report_backlog(&self.inner.config.node_id, backlog, now);
        }
    }

    fn release(&self, jobs: Vec<u64>) {
        for seq in jobs {
            self.inner.backlog.ack(seq);
        }
    }

    /// One exchange round, then (when leading) a snapshot pushed to every member.
    pub(super) async fn exchange_round(&self) {
        let ex = &self.inner.exchange;
        let _serial = ex.round.lock().await;
        let now = self.inner.clock.now_secs();
        let expired = ex.outbox.lock().advance(now);
        if !expired.is_empty() {
            ex.counters.expired_unacknowledged.add(expired.len() as u64);
            tracing::warn!(
                jobs = expired.len(),
                "statistics for jobs older than the window were never accepted by a leader"
            );
            for seq in expired {
                self.inner.backlog.expire(seq);
            }
        }
        let me = self.inner.config.node_id.clone();
        let Some(link) = self.inner.cluster.get() else {
            // Alone: this node is the leader of epoch 0.
            let message = ex.outbox.lock().message(&me, 0, self.local_backlog());
            let accepted = {
                let mut r = ex.reducer.lock();
                let r = r.get_or_insert_with(|| fresh_reducer(&ex.window, now, 0));
                r.accept(message, now)
            };
            if let Ok(a) = accepted {
                let released = ex.outbox.lock().on_accepted(&a);
                self.release(released);
                self.report_own_backlog(now);
            }
            self.publish_local();
            return;
        };
        let state = link.cluster.state();
        if state.is_leader {
            let epoch = state.epoch;
            let new_term = ex.reducer.lock().as_ref().map(Reducer::epoch) != Some(epoch);
            if new_term {
                self.start_term(epoch, now).await;
            }
            let message = ex.outbox.lock().message(&me, epoch, self.local_backlog());
            let accepted = ex
                .reducer
                .lock()
                .as_mut()
                .map(|r| r.accept(message.clone(), now));
            if let Some(Ok(a)) = accepted {
                // Our own jobs are acknowledged once every standby holds a replica too. A new
                // standby (a previous one left or died) first gets the whole reducer.
                let mut replicated = true;
                for addr in standbys(&state) {
                    let synced = ex.synced_standbys.lock().contains(&(epoch, addr));
                    if !synced && self.sync_standby(addr).await {
                        let mut synced = ex.synced_standbys.lock();
                        synced.retain(|(e, _)| *e == epoch);
                        synced.push((epoch, addr));
                    }
                    if !self.replicate(addr, &message).await {
                        ex.counters.replica_failed.inc();
                        replicated = false;
                    }
                }
                if replicated {
                    let released = ex.outbox.lock().on_accepted(&a);
                    self.release(released);
                    self.report_own_backlog(now);
                }
            }
        } else {
            ex.reducer.lock().take();
            let Some(leader) = state.leader_addr else {
                return;
            };
            let message = ex
                .outbox
                .lock()
                .message(&me, state.epoch, self.local_backlog());
            ex.counters.partials_sent.inc();
            let body = encode_json(&message).expect("partials encode");
            match link
                .cluster
                .transport()
                .call(leader, "stats.partials", body, CALL_TIMEOUT)
                .await
            {
                Ok(answer) => match decode_json::<Accepted>(&answer) {
                    Ok(a) => {
                        let released = ex.outbox.lock().on_accepted(&a);
                        self.release(released);
                    }
                    Err(e) => {
                        ex.counters.partials_failed.inc();
                        tracing::warn!(error = %e, "bad answer to stats.partials");
                    }
                },
                Err(RpcError::Remote(e)) => {
                    ex.counters.partials_rejected.inc();
                    tracing::debug!(error = %e, "leader refused partials (leadership moving)");
                }
                Err(e) => {
                    ex.counters.partials_failed.inc();
                    tracing::debug!(error = %e, "sending partials to the leader failed");
                }
            }
        }
    }

    /// Starts a leader term: a fresh reducer filled with every member's window and replica.
    async fn start_term(&self, epoch: u64, now: u64) {
        let ex = &self.inner.exchange;
        let Some(link) = self.inner.cluster.get() else {
            return;
        };
        let mut reducer = fresh_reducer(&ex.window, now, epoch);
        // What this node holds itself: its own window and the replica it kept as standby.
        let me = self.inner.config.node_id.clone();
        reducer.absorb(ex.outbox.lock().full(&me, epoch, self.local_backlog()), now);
        for m in ex.replica.lock().export() {
            reducer.absorb(m, now);
        }
        let members = peers(&link.cluster.state());
        let body = encode_json(&CollectRequest { epoch }).expect("encodes");
        let calls = members.into_iter().map(|addr| {
            let body = body.clone();
            async move {
                link.cluster
                    .transport()
                    .call(addr, "stats.collect", body, CALL_TIMEOUT)
                    .await
                    .and_then(|b| decode_json::<Vec<PartialsMessage>>(&b))
            }
        });
        for answer in futures_util::future::join_all(calls).await {
            match answer {
                Ok(messages) => {
                    for m in messages {
                        reducer.absorb(m, now);
                    }
                    ex.counters.collected.inc();
                }
                Err(e) => tracing::warn!(error = %e, "collecting a member's window failed"),
            }
        }
        tracing::info!(
            epoch,
            partials = reducer.len(),
            "leading the statistics: windows collected from the members"
        );
        *ex.reducer.lock() = Some(reducer);
    }

    /// Sends the whole reducer to a new standby.
    async fn sync_standby(&self, standby: std::net::SocketAddr) -> bool {
        let all = match self.inner.exchange.reducer.lock().as_ref() {
            Some(r) => r.export(),
            None => return false,
        };
        for m in &all {
            if !self.replicate(standby, m).await {
                return false;
            }
        }
        tracing::info!(%standby, pods = all.len(), "statistics replica synchronised");
        true
    }

    async fn replicate(&self, standby: std::net::SocketAddr, message: &PartialsMessage) -> bool {
        let Some(link) = self.inner.cluster.get() else {
            return true;
        };
        let body = encode_json(message).expect("partials encode");
        link.cluster
            .transport()
            .call(standby, "stats.replica", body, CALL_TIMEOUT)
            .await
            .is_ok()
    }

    /// While leading a cluster: builds the snapshot and pushes it to every member. Called a
    /// quarter period after the aligned exchange round, so the partials the pods sent at the
    /// round are in it (see `run_publisher`).
    pub(super) async fn publish_round(&self) {
        let Some(link) = self.inner.cluster.get() else {
            return;
        };
        let state = link.cluster.state();
        if !state.is_leader || !self.inner.exchange.leads() {
            return;
        }
        let node = self.clone();
        let _ = tokio::task::spawn_blocking(move || node.publish_local()).await;
        self.broadcast_snapshot(state.epoch).await;
    }

    /// Builds the snapshot this node serves while it leads, and hands it to subscribers.
    fn publish_local(&self) {
        let json = serde_json::to_string(&self.snapshot()).expect("snapshots serialize");
        self.inner.snapshots.send_replace(Arc::from(json));
    }

    async fn broadcast_snapshot(&self, epoch: u64) {
        let Some(link) = self.inner.cluster.get() else {
            return;
        };
        let json = self.inner.snapshots.borrow().to_string();
        let body = encode_json(&SnapshotPush { epoch, json }).expect("encodes");
        let members = peers(&link.cluster.state());
        let calls = members.into_iter().map(|addr| {
            let body = body.clone();
            async move {
                let _ = link
                    .cluster
                    .transport()
                    .call(addr, "stats.snapshot", body, CALL_TIMEOUT)
                    .await;
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// The snapshot this node serves: computed from its reducer while it leads (or runs
    /// alone), otherwise the newest one its leader pushed (`None` before the first).
    pub(super) fn leader_snapshot(&self) -> Option<stats::Snapshot> {
        let ex = &self.inner.exchange;
        let now = self.inner.clock.now_secs();
        let mut r = ex.reducer.lock();
        let r = r.as_mut()?;
        r.advance(now);
        Some(r.snapshot(now))
    }

    /// The cluster-wide backlog while leading.
    pub(super) fn leader_backlog(&self) -> Option<PodBacklog> {
        let now = self.inner.clock.now_secs();
        self.inner
            .exchange
            .reducer
            .lock()
            .as_ref()
            .map(|r| r.backlog(now, BACKLOG_FRESH_SECONDS))
    }

    /// The newest snapshot pushed by the leader, parsed.
    pub(super) fn pushed_snapshot(&self) -> Option<NodeSnapshot> {
        serde_json::from_str(&self.inner.snapshots.borrow()).ok()
    }

    /// The `stats.*` RPC service of this node.
    pub(super) fn stats_service(&self) -> Arc<dyn Handler> {
        Arc::new(StatsService {
            inner: Arc::downgrade(&self.inner),
        })
    }
}

/// Every other member's RPC address.
fn peers(state: &cluster::ClusterState) -> Vec<std::net::SocketAddr> {
    state
        .members
        .members
        .iter()
        .filter(|m| !m.is_self)
        .map(|m| m.info.addr)
        .collect()
}

/// The standbys: the first [`STANDBYS`] members by id other than the leader itself.
fn standbys(state: &cluster::ClusterState) -> Vec<std::net::SocketAddr> {
    state
        .members
        .members
        .iter()
        .filter(|m| !m.is_self)
        .take(STANDBYS)
        .map(|m| m.info.addr)
        .collect()
}

struct StatsService {
    inner: std::sync::Weak<Inner>,
}

impl StatsService {
    fn serve(node: Node, method: &str, body: &[u8]) -> Result<Vec<u8>, RpcError> {
        let ex = &node.inner.exchange;
        let fence = || node.inner.cluster.get().map(|l| l.cluster.fence());
        let now = node.inner.clock.now_secs();
        match method {
            "stats.partials" => {
                let message: PartialsMessage = decode_json(body)?;
                let accepted = {
                    let mut r = ex.reducer.lock();
                    let r = r
                        .as_mut()
                        .ok_or_else(|| RpcError::Remote("not the leader".into()))?;
                    r.accept(message.clone(), now)
                        .map_err(|e| RpcError::Remote(e.to_string()))?
                };
                // The standbys' replicas follow, off the answer's path (the pod keeps its
                // own window anyway; the replica matters for pods that leave).
                if let Some(state) = node.inner.cluster.get().map(|l| l.cluster.state()) {
                    for addr in standbys(&state) {
                        let n = node.clone();
                        let message = message.clone();
                        tokio::spawn(async move {
                            if !n.replicate(addr, &message).await {
                                n.inner.exchange.counters.replica_failed.inc();
                            }
                        });
                    }
                }
                encode_json(&accepted)
            }
            "stats.replica" => {
                let message: PartialsMessage = decode_json(body)?;
                if let Some(f) = fence() {
                    f.check(message.epoch)
                        .map_err(|e| RpcError::Remote(e.to_string()))?;
                }
                // The leader releases its own jobs on this answer: it must say "held" only
                // for what is held where a failover will find it.
                let slices = message.slices.len();
                let held = ex.replica.lock().absorb(message, now).len();
                if held < slices {
                    ex.counters.replica_refused.add((slices - held) as u64);
                    return Err(RpcError::Remote(format!(
                        "the replica refused {} of {slices} slices (too far ahead of its clock)",
                        slices - held
                    )));
                }
                encode_json(&())
            }
            "stats.collect" => {
                let request: CollectRequest = decode_json(body)?;
                if let Some(f) = fence() {
                    f.check(request.epoch)
                        .map_err(|e| RpcError::Remote(e.to_string()))?;
                }
                let me = node.inner.config.node_id.clone();
                let mut all = vec![ex
                    .outbox
                    .lock()
                    .full(&me, request.epoch, node.local_backlog())];
                all.extend(ex.replica.lock().export());
                encode_json(&all)
            }
            "stats.snapshot" => {
                let push: SnapshotPush = decode_json(body)?;
                if let Some(f) = fence() {
                    if let Err(e) = f.check(push.epoch) {
                        ex.counters.snapshots_rejected.inc();
                        return Err(RpcError::Remote(e.to_string()));
                    }
                }
                if ex.leads() {
                    // A leader publishes its own snapshots.
                    return encode_json(&());
                }
                ex.counters.snapshots_received.inc();
                node.inner.snapshots.send_replace(Arc::from(push.json));
                encode_json(&())
            }
            other => Err(RpcError::NoSuchMethod(other.to_string())),
        }
    }
}

impl Handler for StatsService {
    fn handle(&self, method: &str, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
        let Some(inner) = self.inner.upgrade() else {
            return Box::pin(async { Err(RpcError::Unavailable("node stopping".into())) });
        };
        let node = Node { inner };
        let method = method.to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || StatsService::serve(node, &method, &body))
                .await
                .map_err(|e| RpcError::Remote(e.to_string()))?
        })
    }
}
