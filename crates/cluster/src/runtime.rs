//! The cluster runtime: discovery + membership heartbeats + lease election + the RPC
//! dispatcher, driven by one task and published as a [`ClusterState`] on a `watch` channel.
//!
//! The logic lives in the state machines ([`Membership`], [`Elector`](crate::Elector)); this
//! module only moves messages and time between them and the network:
//!
//! - every `heartbeat_interval` it sends a [`Heartbeat`] to each peer that is due (discovered
//!   or learned) over the [`Transport`], and feeds answers back to [`Membership`];
//! - it serves `cluster.heartbeat` for peers, and routes every other method to the service
//!   registered for its prefix (`stats.partials` → the `stats` service);
//! - a leader puts its epoch in its heartbeats; receivers check it with the [`EpochFence`], so a
//!   deposed leader's claims are rejected and counted;
//! - it logs `The cluster has a new leader: <id>` and
//!   `The list of cluster members has changed: [<ids>]`, and broadcasts [`ClusterEvent`]s.
//!
//! Shutdown comes in two steps the binary orders: [`Cluster::step_down`] releases the lease (a
//! standby takes over at its next retry, not after the lease expires), and [`Cluster::leave`]
//! tells every member this node leaves, so they drop it at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::discovery::DiscoveryHandle;
use crate::election::{
    spawn_elector, BoxFuture, ElectionConfig, ElectorHandle, EpochFence, Leadership, LeaseBackend,
    LeaseError,
};
use crate::membership::{Heartbeat, MemberList, Membership, MembershipConfig, NodeInfo};
use crate::rpc::{decode_json, encode_json, Handler, RetryPolicy, RpcError, Transport};

/// The RPC method of heartbeats.
pub const HEARTBEAT_METHOD: &str = "cluster.heartbeat";

/// How many leader transitions [`ClusterState::transitions`] keeps.
pub const TRANSITIONS_KEPT: usize = 20;

/// Errors of the cluster runtime's setup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Invalid configuration.
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// The election could not start.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node.
    pub me: NodeInfo,
    /// Heartbeat timings.
    pub membership: MembershipConfig,
    /// Lease timings (used when a lease backend is given).
    pub election: ElectionConfig,
    /// Timeout of one heartbeat or leave call: 1 s (an answer normally takes well under a
    /// millisecond; a peer slower than that for `failure_timeout` is gone anyway).
    pub rpc_timeout: Duration,
    /// Retries of [`Cluster::call`].
    pub retry: RetryPolicy,
}

impl ClusterConfig {
    /// Defaults for node `me`.
    pub fn new(me: NodeInfo) -> Self {
        ClusterConfig {
            me,
            membership: MembershipConfig::default(),
            election: ElectionConfig::default(),
            rpc_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
        }
    }

    /// Checks the rules between fields.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.me.id.is_empty() {
            return Err(ClusterError::Config("the node id must not be empty".into()));
        }
        self.membership.validate().map_err(ClusterError::Config)?;
        self.election.validate()?;
        Ok(())
    }
}

/// A change of leader, as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When this node noticed, Unix milliseconds.
    pub at_ms: u64,
    /// The new leader (`None`: no leader known).
    pub leader: Option<String>,
    /// Its epoch.
    pub epoch: u64,
}

/// Lease timings, shown by `/api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimings {
    /// `leaseDurationSeconds`, in milliseconds.
    pub lease_duration_ms: u64,
    /// Renew deadline, milliseconds.
    pub renew_deadline_ms: u64,
    /// Retry period, milliseconds.
    pub retry_period_ms: u64,
}

/// What this node knows of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// This node.
    pub me: NodeInfo,
    /// The live member list.
    pub members: MemberList,
    /// The leader's id.
    pub leader: Option<String>,
    /// The leader's RPC address, when it is a member.
    pub leader_addr: Option<SocketAddr>,
    /// The leader's fencing epoch.
    pub epoch: u64,
    /// Whether this node leads now.
    pub is_leader: bool,
    /// Recent leader changes, oldest first.
    pub transitions: Vec<Transition>,
    /// Lease timings; `None` when running without a lease (a single node leading itself).
    pub lease: Option<LeaseTimings>,
    /// This node is leaving (graceful shutdown under way).
    pub leaving: bool,
    /// Leader claims rejected for a stale epoch.
    pub stale_epoch_rejections: u64,
    /// Discovered RPC addresses that do not answer heartbeats.
    pub unreachable: Vec<SocketAddr>,
}

/// Something that changed, as broadcast by [`Cluster::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The member list changed.
    MembersChanged(MemberList),
    /// The leader changed.
    LeaderChanged {
        /// The new leader.
        leader: Option<String>,
        /// Its epoch.
        epoch: u64,
    },
}

struct Inner {
    config: ClusterConfig,
    transport: Arc<dyn Transport>,
    membership: Mutex<Membership>,
    services: RwLock<BTreeMap<String, Arc<dyn Handler>>>,
    fence: EpochFence,
    leadership: watch::Receiver<Leadership>,
    elector: tokio::sync::Mutex<Option<ElectorHandle>>,
    state: watch::Sender<ClusterState>,
    events: broadcast::Sender<ClusterEvent>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    lease_timings: Option<LeaseTimings>,
    /// Set by [`Cluster::step_down`]: leadership then comes from heartbeat claims.
    stepped_down: std::sync::atomic::AtomicBool,
    /// The newest accepted leader claim heard in a heartbeat: (epoch, leader id).
    claim: Mutex<Option<(u64, String)>>,
}

/// A running cluster member. Cheap to clone; dropping the last clone stops its tasks (call
/// [`shutdown`](Self::shutdown) for a graceful exit).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.inner.config.me)
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Cluster {
    /// Starts membership over `transport` with peers from `discovery`, and the election on
    /// `lease` (`None`: this node leads alone at epoch 0 — a single-node setup). Call within
    /// a tokio runtime; serve [`handler`](Self::handler) on the node's RPC port.
    pub fn start(
        config: ClusterConfig,
        transport: Arc<dyn Transport>,
        discovery: DiscoveryHandle,
        lease: Option<Arc<dyn LeaseBackend>>,
    ) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let me = config.me.clone();
        let (elector, leadership, lease_timings) = match lease {
            Some(backend) => {
                let handle = spawn_elector(backend, me.id.clone(), config.election)?;
                let rx = handle.leadership();
                let e = &config.election;
                let timings = LeaseTimings {
                    lease_duration_ms: e.lease_duration.as_millis() as u64,
                    renew_deadline_ms: e.renew_deadline.as_millis() as u64,
                    retry_period_ms: e.retry_period.as_millis() as u64,
                };
                (Some(handle), rx, Some(timings))
            }
            None => {
                let (tx, rx) = watch::channel(Leadership {
                    leader: Some(me.id.clone()),
                    epoch: 0,
                    is_leader: true,
                });
                // Keep the sender alive for the process: the value never changes.
                std::mem::forget(tx);
                (None, rx, None)
            }
        };
        let membership = Membership::new(me.clone(), config.membership.clone());
        let initial = ClusterState {
            me: me.clone(),
            members: membership.list().clone(),
            leader: None,
            leader_addr: None,
            epoch: 0,
            is_leader: false,
            transitions: Vec::new(),
            lease: lease_timings.clone(),
            leaving: false,
            stale_epoch_rejections: 0,
            unreachable: Vec::new(),
        };
        let (state, _) = watch::channel(initial);
        let (events, _) = broadcast::channel(64);
        let inner = Arc::new(Inner {
            config,
            transport,
            membership: Mutex::new(membership),
            services: RwLock::new(BTreeMap::new()),
            fence: EpochFence::new(),
            leadership,
            elector: tokio::sync::Mutex::new(elector),
            state,
            events,
            tasks: Mutex::new(Vec::new()),
            lease_timings,
            stepped_down: std::sync::atomic::AtomicBool::new(false),
            claim: Mutex::new(None),
        });
        inner.refresh();
        let task = tokio::spawn(run(Arc::downgrade(&inner), discovery));
        inner.tasks.lock().push(task);
        Ok(Cluster { inner })
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.inner.config.me
    }

    /// The current state.
    pub fn state(&self) -> ClusterState {
        self.inner.state.borrow().clone()
    }

    /// Receives every new state.
    pub fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.inner.state.subscribe()
    }

    /// Receives membership and leader changes.
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.inner.events.subscribe()
    }

    /// This node's leadership, as published by its elector.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    /// The fence for leader-originated messages: services check the epoch of every message
    /// from a leader with it (heartbeat leader claims already are).
    pub fn fence(&self) -> &EpochFence {
        &self.inner.fence
    }

    /// The transport, for services that send.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// One call with the configured timeout and retries.
    pub async fn call(
        &self,
        to: SocketAddr,
        method: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, RpcError> {
        let c = &self.inner.config;
        crate::rpc::call_with_retry(
            &*self.inner.transport,
            to,
            method,
            body,
            c.rpc_timeout,
            &c.retry,
        )
        .await
    }

    /// Routes methods named `<prefix>.<name>` to `handler`.
    pub fn register(&self, prefix: &str, handler: Arc<dyn Handler>) {
        self.inner
            .services
            .write()
            .insert(prefix.to_string(), handler);
    }

    /// The handler to serve on this node's RPC port: heartbeats plus registered services.
    pub fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(Dispatcher {
            inner: Arc::downgrade(&self.inner),
        })
    }

    /// Releases the lease if held (a standby takes over at its next retry) and stops
    /// competing for it. Idempotent.
    pub async fn step_down(&self) {
        let elector = self.inner.elector.lock().await.take();
        if let Some(e) = elector {
            self.inner
                .stepped_down
                .store(true, std::sync::atomic::Ordering::Release);
            e.shutdown().await;
            self.inner.refresh();
            tracing::info!(node = %self.inner.config.me.id, "left the leader election");
        }
    }

    /// Tells every member this node leaves, so they drop it at once; afterwards it answers
    /// heartbeats as leaving. Best effort, bounded by the RPC timeout.
    pub async fn leave(&self) {
        let (hb, peers) = {
            let mut m = self.inner.membership.lock();
            m.leave();
            let peers: Vec<SocketAddr> = m
                .list()
                .members
                .iter()
                .filter(|x| !x.is_self)
                .map(|x| x.info.addr)
                .collect();
            (m.heartbeat(), peers)
        };
        self.inner.refresh();
        let body = encode_json(&hb).expect("heartbeats encode");
        let mut set = tokio::task::JoinSet::new();
        for addr in peers {
            let t = self.inner.transport.clone();
            let body = body.clone();
            let timeout = self.inner.config.rpc_timeout;
            set.spawn(async move { t.call(addr, HEARTBEAT_METHOD, body, timeout).await });
        }
        while set.join_next().await.is_some() {}
    }

    /// [`step_down`](Self::step_down), then [`leave`](Self::leave), then stops the tasks.
    pub async fn shutdown(&self) {
        self.step_down().await;
        self.leave().await;
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
    }
}

impl Inner {
    /// Recomputes the published state from membership and leadership; emits events and logs
    /// what changed.
    fn refresh(&self) {
        let leadership = self.current_leadership();
        self.fence.observe(leadership.epoch);
        let (members, leaving, unreachable) = {
            let m = self.membership.lock();
            (
                m.list().clone(),
                m.is_leaving(),
                m.unreachable(Instant::now()),
            )
        };
        let leader_addr = leadership.leader.as_deref().and_then(|id| {
            if id == self.config.me.id {
                Some(self.config.me.addr)
            } else {
                members.get(id).map(|m| m.info.addr)
            }
        });
        let mut events = Vec::new();
        self.state.send_if_modified(|s| {
            let mut changed = false;
            if s.members != members {
                events.push(ClusterEvent::MembersChanged(members.clone()));
                tracing::info!(
                    node = %self.config.me.id,
                    version = members.version,
                    "The list of cluster members has changed: [{}]",
                    members.ids().join(", ")
                );
                s.members = members;
                changed = true;
            }
            if s.leader != leadership.leader || s.epoch != leadership.epoch {
                events.push(ClusterEvent::LeaderChanged {
                    leader: leadership.leader.clone(),
                    epoch: leadership.epoch,
                });
                match &leadership.leader {
                    Some(l) => tracing::info!(
                        node = %self.config.me.id,
                        epoch = leadership.epoch,
                        "The cluster has a new leader: {l}"
                    ),
                    None => tracing::info!(node = %self.config.me.id, "The cluster has no leader"),
                }
                s.transitions.push(Transition {
                    at_ms: unix_ms(),
                    leader: leadership.leader.clone(),
                    epoch: leadership.epoch,
                });
                if s.transitions.len() > TRANSITIONS_KEPT {
                    s.transitions.remove(0);
                }
                s.leader = leadership.leader.clone();
                s.epoch = leadership.epoch;
                changed = true;
            }
            let rejected = self.fence.rejected();
            let next = (
                leader_addr,
                leadership.is_leader,
                leaving,
                rejected,
                self.lease_timings.clone(),
            );
            let now = (
                s.leader_addr,
                s.is_leader,
                s.leaving,
                s.stale_epoch_rejections,
                s.lease.clone(),
            );
            if next != now {
                (
                    s.leader_addr,
                    s.is_leader,
                    s.leaving,
                    s.stale_epoch_rejections,
                    s.lease,
                ) = next;
                changed = true;
            }
            if s.unreachable != unreachable {
                s.unreachable = unreachable;
                changed = true;
            }
            changed
        });
        for e in events {
            let _ = self.events.send(e);
        }
    }

    /// The heartbeat this node sends now, with its epoch while it leads.
    fn heartbeat(&self) -> Heartbeat {
        let mut hb = self.membership.lock().heartbeat();
        let l = self.leadership.borrow();
        if l.is_leader && !hb.leaving {
            hb.leader_epoch = Some(l.epoch);
        }
        hb
    }

    /// Fences a leader claim carried by a heartbeat.
    fn check_claim(&self, hb: &Heartbeat) {
        if let Some(epoch) = hb.leader_epoch {
            match self.fence.check(epoch) {
                Ok(()) => {
                    let mut claim = self.claim.lock();
                    if claim.as_ref().is_none_or(|(e, _)| *e <= epoch) {
                        *claim = Some((epoch, hb.from.id.clone()));
                    }
                }
                Err(stale) => tracing::warn!(
                    node = %self.config.me.id,
                    from = %hb.from.id,
                    %stale,
                    "rejected a leader claim from a deposed leader"
                ),
            }
        }
    }

    /// The leadership to publish: the elector's while this node takes part in the election;
    /// after [`Cluster::step_down`], the newest leader claim heard in heartbeats (a node that
    /// stopped competing still has to find the new leader, e.g. to hand over its last
    /// statistics).
    fn current_leadership(&self) -> Leadership {
        let own = self.leadership.borrow().clone();
        if !self.stepped_down.load(std::sync::atomic::Ordering::Acquire) {
            return own;
        }
        match self.claim.lock().clone() {
            Some((epoch, id)) if epoch >= own.epoch => Leadership {
                leader: Some(id),
                epoch,
                is_leader: false,
            },
            _ => Leadership {
                is_leader: false,
                ..own
            },
        }
    }

    fn on_heartbeat(&self, hb: Heartbeat) -> Heartbeat {
        self.check_claim(&hb);
        self.membership.lock().on_heartbeat(hb, Instant::now());
        self.refresh();
        self.heartbeat()
    }

    async fn ping(self: Arc<Self>, addr: SocketAddr) {
        let body = encode_json(&self.heartbeat()).expect("heartbeats encode");
        let answer = self
            .transport
            .call(addr, HEARTBEAT_METHOD, body, self.config.rpc_timeout)
            .await
            .and_then(|b| decode_json::<Heartbeat>(&b));
        let answer = match answer {
            Ok(hb) => {
                self.check_claim(&hb);
                Ok(hb)
            }
            Err(e) => {
                tracing::trace!(%addr, error = %e, "heartbeat failed");
                Err(())
            }
        };
        self.membership
            .lock()
            .on_answer(addr, answer, Instant::now());
        self.refresh();
    }
}

async fn run(inner: std::sync::Weak<Inner>, discovery: DiscoveryHandle) {
    let mut peers = discovery.subscribe();
    let (mut leadership, tick) = match inner.upgrade() {
        Some(i) => (
            i.leadership.clone(),
            i.config.membership.heartbeat_interval / 2,
        ),
        None => return,
    };
    let mut interval = tokio::time::interval(tick.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut peers_open, mut leadership_open, mut rediscover) = (true, true, true);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            r = peers.changed(), if peers_open => match r {
                Ok(()) => rediscover = true,
                // A fixed set has no sender: nothing will change.
                Err(_) => peers_open = false,
            },
            // The elector stopped (step_down); its last value stays readable.
            r = leadership.changed(), if leadership_open => leadership_open = r.is_ok(),
        }
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let due = {
            let mut m = inner.membership.lock();
            if rediscover {
                m.set_discovered(&peers.borrow_and_update(), now);
                rediscover = false;
            }
            m.tick(now);
            if m.is_leaving() {
                Vec::new()
            } else {
                m.due(now)
            }
        };
        for addr in due {
            tokio::spawn(inner.clone().ping(addr));
        }
        inner.refresh();
    }
}

/// Serves `cluster.heartbeat` and routes other methods by prefix.
struct Dispatcher {
    inner: std::sync::Weak<Inner>,
}

impl Handler for Dispatcher {
    fn handle(&self, method: &str, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
        let Some(inner) = self.inner.upgrade() else {
            return Box::pin(async { Err(RpcError::Unavailable("node stopping".into())) });
        };
        if method == HEARTBEAT_METHOD {
            let answer = decode_json::<Heartbeat>(&body)
                .map(|hb| inner.on_heartbeat(hb))
                .and_then(|hb| encode_json(&hb));
            return Box::pin(async move { answer });
        }
        let prefix = method.split_once('.').map(|(p, _)| p).unwrap_or(method);
        let service = inner.services.read().get(prefix).cloned();
        match service {
            Some(s) => s.handle(method, body),
            None => {
                let m = method.to_string();
                Box::pin(async move { Err(RpcError::NoSuchMethod(m)) })
            }
        }
    }
}
