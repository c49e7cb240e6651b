//! The grid runtime of one node: routing, the RPC service, the leader's table publication,
//! migration, load coalescing and the graceful leave (the design is in the module docs).

mod coalesce;
mod migration;
mod tables;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::GridConfig;
use super::hash::{key_hash, partition_of, GridKey, GridValue};
use super::plan::{plan_leave, plan_migration};
use super::stats::{load, GridStats, GridStatsSnapshot};
use super::store::{Clock, Cursor, Store, SystemClock, WireEntry, ENTRY_OVERHEAD};
use super::table::PartitionTable;
use super::wire::{
    self, ClaimAnswer, ClaimReq, GetReq, KeysReq, LeaveReq, PullReq, PullResp, PushReq, PutReq,
    TableAck,
};
use crate::election::{BoxFuture, StaleEpoch};
use crate::membership::NodeInfo;
use crate::rpc::{Handler, RpcError};
use crate::runtime::{Cluster, ClusterState};

/// Errors of [`Grid::start`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GridError {
    /// Invalid configuration.
    #[error("invalid grid configuration: {0}")]
    Config(String),
}

/// Why the grid is or is not safe (see [`Grid::cluster_safe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Safety {
    /// A table has been received.
    pub has_table: bool,
    /// The table was computed from the current member list (no recomputation pending, no
    /// member handing off).
    pub table_current: bool,
    /// Partitions none of whose replicas is a current member.
    pub partitions_without_live_replica: u32,
    /// Partitions this node is receiving now.
    pub migrations_running: u32,
}

impl Safety {
    /// Every partition has a live replica, the table is current and nothing migrates here.
    pub fn is_safe(&self) -> bool {
        self.has_table
            && self.table_current
            && self.partitions_without_live_replica == 0
            && self.migrations_running == 0
    }
}

/// What [`Grid::leave`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaveReport {
    /// The leader acknowledged the leave with a table without this node.
    pub leader_acknowledged: bool,
    /// Partitions that had no other live copy, pushed to their new replicas.
    pub partitions_pushed: usize,
    /// Entries pushed (to each target).
    pub entries_pushed: u64,
    /// Whether every push reached every target before `leave_timeout`.
    pub completed: bool,
    /// Time taken.
    pub elapsed: Duration,
}

struct Migration {
    token: u64,
    /// Planned without a previous table (this node's first): the sources are the other
    /// current replicas, which may be as new as this node.
    fresh: bool,
    /// Pull sources, in order (reads fall through to them meanwhile).
    sources: Vec<String>,
    /// Leaving members expected to push the partition.
    push_from: Vec<String>,
}

/// How one pull ended.
enum Pulled {
    /// The partition arrived (or the migration was superseded meanwhile).
    Done,
    /// The source has no complete copy; `receiving`: it is receiving one.
    NotHeld { receiving: bool },
}

#[derive(Clone)]
enum PartState {
    /// Not held.
    Absent,
    /// Held completely (a replica).
    Held,
    /// Being received.
    Migrating(Arc<Migration>),
    /// No longer a replica; kept until `until` to serve pullers and stale callers.
    Retained { until: Instant },
}

impl PartState {
    fn serves_locally(&self) -> bool {
        matches!(self, PartState::Held | PartState::Retained { .. })
    }
}

struct Routing {
    table: Option<Arc<PartitionTable>>,
    states: Vec<PartState>,
    /// Partitions whose leave push completed before the table that expects it arrived.
    early_pushes: HashSet<u32>,
}

struct ClaimSlot {
    deadline: Instant,
    done: watch::Sender<bool>,
    /// The member holding the claim, and since when.
    claimant: String,
    since: Instant,
}

/// A claim whose claimant the coordinator has not listed as a member for this long after it
/// was made is dropped: membership admits a joining pod within a heartbeat (500 ms) and drops a
/// dead one after its failure timeout, so by then the claimant has left or died and its
/// computation (or its events) will not come.
const ORPHAN_CLAIM_GRACE: Duration = Duration::from_secs(2);

/// The outcome of [`Grid::claim_many`] for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome<V> {
    /// The key has a value.
    Found(V),
    /// The key is absent and now claimed by this node: put a value (which ends the claim) or
    /// [`release`](Grid::release_many) it. Also the answer when no replica of the key's
    /// partition could be reached (then nobody coordinates the key).
    Claimed,
    /// The key is absent and another member's claim on it is live.
    Pending,
}

#[derive(Default)]
struct LeaderState {
    /// Members handing off (excluded from tables), by id.
    leaving: HashMap<String, NodeInfo>,
    /// A member list waiting for the debounce, and since when.
    pending: Option<(Vec<NodeInfo>, Instant)>,
    /// (epoch, version) each member acknowledged.
    acked: HashMap<String, (u64, u64)>,
    last_resend: Option<Instant>,
    /// Since when this node leads without a table (it first asks the members for theirs).
    bootstrap_since: Option<Instant>,
    last_bootstrap_ask: Option<Instant>,
    /// Follower: the (leader, epoch) whose table was pulled last, and when a pull last started.
    pulled_from: Option<(String, u64)>,
    last_pull: Option<Instant>,
}

struct Methods {
    get: String,
    put: String,
    claim: String,
    wait: String,
    release: String,
    pull: String,
    push: String,
    table: String,
    table_get: String,
    leave: String,
}

impl Methods {
    fn new(name: &str) -> Methods {
        let m = |op: &str| format!("{name}.{op}");
        Methods {
            get: m("get"),
            put: m("put"),
            claim: m("claim"),
            wait: m("wait"),
            release: m("release"),
            pull: m("pull"),
            push: m("push"),
            table: m("table"),
            table_get: m("table_get"),
            leave: m("leave"),
        }
    }
}

struct Inner<K, V> {
    cluster: Cluster,
    me: NodeInfo,
    config: GridConfig,
    clock: Arc<dyn Clock>,
    methods: Methods,
    store: Mutex<Store<K, V>>,
    routing: RwLock<Routing>,
    claims: Mutex<HashMap<K, ClaimSlot>>,
    stats: GridStats,
    safe: watch::Sender<bool>,
    leader: Mutex<LeaderState>,
    leaving: AtomicBool,
    stopped: AtomicBool,
    migrations: Arc<Semaphore>,
    next_token: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A partitioned map over the cluster (see the module docs). Cheap to clone; dropping the last
/// clone stops the node's grid tasks (call [`leave`](Self::leave) first for a graceful exit).
pub struct Grid<K: GridKey, V: GridValue> {
    handle: Arc<GridHandle<K, V>>,
}

impl<K: GridKey, V: GridValue> Clone for Grid<K, V> {
    fn clone(&self) -> Self {
        Grid {
            handle: self.handle.clone(),
        }
    }
}

impl<K: GridKey, V: GridValue> std::fmt::Debug for Grid<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grid")
            .field("me", &self.handle.inner.me.id)
            .field("name", &self.handle.inner.config.name)
            .finish_non_exhaustive()
    }
}

struct GridHandle<K: GridKey, V: GridValue> {
    inner: Arc<Inner<K, V>>,
}

impl<K: GridKey, V: GridValue> Drop for GridHandle<K, V> {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

fn elapsed_micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

impl<K: GridKey, V: GridValue> Grid<K, V> {
    /// Starts the grid on `cluster` with the system clock: registers the `<name>.*` RPC
    /// service and the table/migration task. Call within a tokio runtime.
    pub fn start(cluster: Cluster, config: GridConfig) -> Result<Self, GridError> {
        Self::start_with_clock(cluster, config, Arc::new(SystemClock))
    }

    /// [`start`](Self::start) with an injected wall clock (expiry of entries).
    pub fn start_with_clock(
        cluster: Cluster,
        config: GridConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, GridError> {
        config.validate().map_err(GridError::Config)?;
        let me = cluster.me().clone();
        let (safe, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            me,
            methods: Methods::new(&config.name),
            store: Mutex::new(Store::new(config.partitions, config.max_bytes)),
            routing: RwLock::new(Routing {
                table: None,
                states: vec![PartState::Absent; config.partitions as usize],
                early_pushes: HashSet::new(),
            }),
            claims: Mutex::new(HashMap::new()),
            stats: GridStats::default(),
            safe,
            leader: Mutex::new(LeaderState::default()),
            leaving: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            migrations: Arc::new(Semaphore::new(config.migration_parallelism)),
            next_token: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
            clock,
            config,
            cluster,
        });
        let service: Arc<dyn Handler> = Arc::new(Service {
            inner: Arc::downgrade(&inner),
        });
        inner.cluster.register(&inner.config.name, service);
        let task = tokio::spawn(coordinate(Arc::downgrade(&inner)));
        inner.tasks.lock().push(task);
        Ok(Grid {
            handle: Arc::new(GridHandle { inner }),
        })
    }

    fn inner(&self) -> &Arc<Inner<K, V>> {
        &self.handle.inner
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.inner().me
    }

    /// The configuration.
    pub fn config(&self) -> &GridConfig {
        &self.inner().config
    }

    /// The current partition table (`None` until one arrived).
    pub fn table(&self) -> Option<Arc<PartitionTable>> {
        self.inner().routing.read().table.clone()
    }

    /// The live counters.
    pub fn counters(&self) -> &GridStats {
        &self.inner().stats
    }

    /// A snapshot of counters and gauges.
    pub fn stats(&self) -> GridStatsSnapshot {
        self.inner().snapshot()
    }

    /// The parts of [`cluster_safe`](Self::cluster_safe).
    pub fn safety(&self) -> Safety {
        self.inner().safety(&self.inner().cluster.state())
    }

    /// Every partition has at least one replica on a current member, the table reflects the
    /// current member list, and this node receives no partition. Drives readiness.
    pub fn cluster_safe(&self) -> bool {
        self.safety().is_safe()
    }

    /// [`cluster_safe`](Self::cluster_safe) as a watch (re-evaluated at least every 50 ms).
    pub fn safe_watch(&self) -> watch::Receiver<bool> {
        self.inner().safe.subscribe()
    }

    /// The value of `key` if a partition held by this node has it (no RPC).
    pub fn get_local(&self, key: &K) -> Option<V> {
        let inner = self.inner();
        let h = key_hash(key);
        let p = partition_of(h, inner.config.partitions);
        let r = inner.routing.read();
        if matches!(r.states[p as usize], PartState::Absent) {
            return None;
        }
        let v = inner.store.lock().get(key, inner.clock.now_ms());
        drop(r);
        if v.is_some() {
            GridStats::add(&inner.stats.hits_local, 1);
        }
        v
    }

    /// The values of `keys`, in order (`None`: absent everywhere, or unreachable). Keys held by
    /// this node are served in-process; the rest with one RPC per owner, in parallel, falling
    /// back to a backup when an owner fails.
    pub async fn get_many(&self, keys: &[K]) -> Vec<Option<V>> {
        self.inner().get_many(keys).await
    }

    /// Stores entries on their owners and backups (one RPC per node, in parallel). An entry's
    /// expiry is now + [`GridValue::ttl`]. Failures are counted, not returned: the grid is a
    /// cache.
    pub async fn put_many(&self, entries: Vec<(K, V)>) {
        let now = self.inner().clock.now_ms();
        let entries = entries
            .into_iter()
            .map(|(k, v)| {
                let exp = v.ttl().map(|t| now.saturating_add(t.as_millis() as u64));
                (k, v, exp)
            })
            .collect();
        self.inner().put_many(entries).await
    }

    /// The values of `keys`, computing the missing ones **once cluster-wide**: each missing
    /// key is claimed at its owner; the first claimant computes (all its claimed keys in one
    /// `compute` call) and puts, concurrent claimants wait for that put (up to
    /// `claim_timeout`) and compute themselves only if it does not come. `compute` returns one
    /// value per key given, `None` for a key it could not compute (not cached, and its claim
    /// is released so waiters stop waiting). Duplicate keys are computed once.
    pub async fn get_or_compute_many<F, Fut>(&self, keys: &[K], compute: F) -> Vec<Option<V>>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Vec<Option<V>>>,
    {
        self.inner().get_or_compute_many(keys, compute).await
    }

    /// Claims the absent keys without computing anything: per key, its value, or a claim now
    /// held by this node, or *pending* when another member holds one. A claim lasts until a
    /// value is put for the key, [`release_many`](Self::release_many), `claim_timeout`, or its
    /// holder leaving the membership. One RPC per coordinator (the key's first reachable
    /// replica), as in [`get_or_compute_many`](Self::get_or_compute_many). Used as a
    /// cluster-wide "first one wins" (e.g. recognising an event id seen by another pod).
    pub async fn claim_many(&self, keys: &[K]) -> Vec<ClaimOutcome<V>> {
        self.inner().claim_many(keys).await
    }

    /// Withdraws this node's claims on `keys` (at every replica of their partitions; a replica
    /// without the claim ignores it). Values are untouched.
    pub async fn release_many(&self, keys: &[K]) {
        let inner = self.inner();
        let table = inner.routing.read().table.clone();
        let Some(table) = table else { return };
        let mut targets: Vec<(&str, &K)> = Vec::new();
        for k in keys {
            let (_, p) = inner.part(k);
            for id in table.replicas(p) {
                targets.push((id.as_str(), k));
            }
        }
        inner.release(Some(&table), targets).await;
    }

    /// Graceful hand-off before [`Cluster::leave`]: asks the leader for a table without this
    /// node, pushes every partition of which this node holds the only live copy to its new
    /// replicas, and returns when done or after `leave_timeout`. Reads and writes keep being
    /// served meanwhile.
    pub async fn leave(&self) -> LeaveReport {
        self.inner().clone().leave().await
    }
}

/// The ids of the current members.
fn live_ids(st: &ClusterState) -> HashSet<&str> {
    st.members
        .members
        .iter()
        .map(|m| m.info.id.as_str())
        .collect()
}

/// Groups item indices by a string key, keeping first-seen order of keys.
fn group<'a>(items: impl Iterator<Item = (usize, &'a str)>) -> Vec<(&'a str, Vec<usize>)> {
    let mut out: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, k) in items {
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(i),
            None => out.push((k, vec![i])),
        }
    }
    out
}

impl<K: GridKey, V: GridValue> Inner<K, V> {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn part(&self, key: &K) -> (u64, u32) {
        let h = key_hash(key);
        (h, partition_of(h, self.config.partitions))
    }

    fn addr_of(table: &PartitionTable, id: &str) -> Option<SocketAddr> {
        table.node(id).map(|n| n.addr)
    }

    /// One RPC with JSON bodies; data-path calls are timed into the stats.
    async fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        to: SocketAddr,
        method: &str,
        req: &Req,
        timeout: Duration,
        data_path: bool,
    ) -> Result<Resp, RpcError> {
        let body = wire::encode(req)?;
        let started = Instant::now();
        let result = self
            .cluster
            .transport()
            .call(to, method, body, timeout)
            .await
            .and_then(|b| wire::decode(&b));
        if data_path {
            self.stats.rpc(elapsed_micros(started), result.is_ok());
        }
        result
    }

    // -----------------------------------------------------------------------------------------
    // Reads
    // -----------------------------------------------------------------------------------------

    async fn get_many(&self, keys: &[K]) -> Vec<Option<V>> {
        let mut out: Vec<Option<V>> = vec![None; keys.len()];
        let now = self.now_ms();
        let table;
        let mut todo: Vec<(usize, Vec<String>, bool)> = Vec::new();
        let mut local_hits = 0;
        let mut misses = 0;
        {
            let r = self.routing.read();
            let Some(t) = r.table.clone() else {
                GridStats::add(&self.stats.misses, keys.len() as u64);
                return out;
            };
            table = t;
            let mut store = self.store.lock();
            for (i, k) in keys.iter().enumerate() {
                let (_, p) = self.part(k);
                let state = &r.states[p as usize];
                if !matches!(state, PartState::Absent) {
                    if let Some(v) = store.get(k, now) {
                        out[i] = Some(v);
                        local_hits += 1;
                        continue;
                    }
                }
                let owner = table.owner(p) == Some(self.me.id.as_str());
                match state {
                    // The owner's own copy is authoritative.
                    PartState::Held if owner => misses += 1,
                    // Still receiving it: ask where it comes from.
                    PartState::Migrating(m) if owner => {
                        let c: Vec<String> =
                            m.sources.iter().chain(&m.push_from).cloned().collect();
                        todo.push((i, c, false));
                    }
                    _ => {
                        let c: Vec<String> = table
                            .replicas(p)
                            .iter()
                            .filter(|id| **id != self.me.id)
                            .cloned()
                            .collect();
                        todo.push((i, c, true));
                    }
                }
            }
        }
        GridStats::add(&self.stats.hits_local, local_hits);
        let asked = todo.len() as u64;
        let found = self.fetch(&table, keys, todo, &mut out).await;
        GridStats::add(&self.stats.hits_remote, found);
        GridStats::add(&self.stats.misses, misses + asked - found);
        out
    }

    /// Asks other nodes for keys: `todo` holds (key index, candidate ids in order, forward).
    /// One RPC per node per round, rounds in parallel; a failed node's keys go to their next
    /// candidate. Fills `out`; returns how many were found.
    async fn fetch(
        &self,
        table: &PartitionTable,
        keys: &[K],
        todo: Vec<(usize, Vec<String>, bool)>,
        out: &mut [Option<V>],
    ) -> u64 {
        let mut attempt = vec![0usize; todo.len()];
        let mut active: Vec<usize> = (0..todo.len()).collect();
        let mut found = 0;
        while !active.is_empty() {
            let items = active.iter().filter_map(|t| {
                let (_, cands, fwd) = &todo[*t];
                cands.get(attempt[*t]).map(|c| (*t, c.as_str(), *fwd))
            });
            let mut groups: Vec<((&str, bool), Vec<usize>)> = Vec::new();
            for (t, c, fwd) in items {
                match groups.iter_mut().find(|(g, _)| *g == (c, fwd)) {
                    Some((_, v)) => v.push(t),
                    None => groups.push(((c, fwd), vec![t])),
                }
            }
            let calls = groups.into_iter().map(|((id, forward), ts)| {
                let req = GetReq {
                    keys: ts.iter().map(|t| &keys[todo[*t].0]).collect::<Vec<&K>>(),
                    forward,
                };
                async move {
                    let r: Result<Vec<Option<V>>, RpcError> = match Self::addr_of(table, id) {
                        Some(a) => {
                            self.call(a, &self.methods.get, &req, self.config.rpc_timeout, true)
                                .await
                        }
                        None => Err(RpcError::Unavailable(format!("{id} is not in the table"))),
                    };
                    (ts, r)
                }
            });
            let mut next = Vec::new();
            for (ts, r) in join_all(calls).await {
                match r {
                    Ok(vals) if vals.len() == ts.len() => {
                        for (t, v) in ts.into_iter().zip(vals) {
                            if v.is_some() {
                                found += 1;
                            }
                            out[todo[t].0] = v;
                        }
                    }
                    _ => {
                        for t in ts {
                            attempt[t] += 1;
                            next.push(t);
                        }
                    }
                }
            }
            active = next;
        }
        found
    }

    /// Serves `get`: local values, and (if `forward`) the misses of partitions this node is
    /// receiving or does not hold, asked once more elsewhere.
    async fn serve_get(&self, keys: Vec<K>, forward: bool) -> Vec<Option<V>> {
        let mut out: Vec<Option<V>> = vec![None; keys.len()];
        let now = self.now_ms();
        let mut todo = Vec::new();
        let table;
        {
            let r = self.routing.read();
            table = r.table.clone();
            let mut store = self.store.lock();
            for (i, k) in keys.iter().enumerate() {
                let (_, p) = self.part(k);
                let state = &r.states[p as usize];
                if !matches!(state, PartState::Absent) {
                    out[i] = store.get(k, now);
                }
                if out[i].is_some() || !forward {
                    continue;
                }
                match (state, &table) {
                    (PartState::Migrating(m), _) => {
                        let c: Vec<String> =
                            m.sources.iter().chain(&m.push_from).cloned().collect();
                        todo.push((i, c, false));
                    }
                    (PartState::Absent, Some(t)) => {
                        let c: Vec<String> = t
                            .replicas(p)
                            .iter()
                            .filter(|id| **id != self.me.id)
                            .cloned()
                            .collect();
                        todo.push((i, c, false));
                    }
                    _ => {}
                }
            }
        }
        if let (false, Some(t)) = (todo.is_empty(), table) {
            GridStats::add(&self.stats.forwarded_reads, todo.len() as u64);
            self.fetch(&t, &keys, todo, &mut out).await;
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Writes
    // -----------------------------------------------------------------------------------------

    async fn put_many(&self, entries: Vec<WireEntry<K, V>>) {
        GridStats::add(&self.stats.puts, entries.len() as u64);
        let Some(table) = self.routing.read().table.clone() else {
            return;
        };
        let mut local = Vec::new();
        let mut targets: Vec<(usize, &str)> = Vec::new();
        for (i, (k, _, _)) in entries.iter().enumerate() {
            let (_, p) = self.part(k);
            for id in table.replicas(p) {
                if *id == self.me.id {
                    local.push(i);
                } else {
                    targets.push((i, id.as_str()));
                }
            }
        }
        if !local.is_empty() {
            self.store_local(local.iter().map(|i| entries[*i].clone()).collect(), false);
        }
        let calls = group(targets.into_iter()).into_iter().map(|(id, idx)| {
            let req = PutReq {
                entries: idx
                    .iter()
                    .map(|i| {
                        let (k, v, e) = &entries[*i];
                        (k, v, *e)
                    })
                    .collect::<Vec<_>>(),
                forward: true,
            };
            let table = &table;
            async move {
                if let Some(a) = Self::addr_of(table, id) {
                    let _: Result<(), _> = self
                        .call(a, &self.methods.put, &req, self.config.rpc_timeout, true)
                        .await;
                }
            }
        });
        join_all(calls).await;
    }

    /// Stores entries in the local store and ends the claims on their keys (waking waiters,
    /// who then read the value, or compute it themselves if it was refused).
    fn store_local(&self, entries: Vec<WireEntry<K, V>>, if_absent: bool) {
        let now = self.now_ms();
        let claimed: Vec<K> = {
            let claims = self.claims.lock();
            if claims.is_empty() {
                Vec::new()
            } else {
                entries
                    .iter()
                    .filter(|e| claims.contains_key(&e.0))
                    .map(|e| e.0.clone())
                    .collect()
            }
        };
        {
            let mut store = self.store.lock();
            for (k, v, e) in entries {
                let (h, p) = self.part(&k);
                store.insert(k, h, p, v, e, now, if_absent);
            }
        }
        if !claimed.is_empty() {
            let mut claims = self.claims.lock();
            for k in claimed {
                if let Some(c) = claims.remove(&k) {
                    let _ = c.done.send(true);
                }
            }
        }
    }

    /// Serves `put`: stores entries of partitions this node holds or receives; with `forward`,
    /// passes those of partitions it does not hold to the replicas it knows of.
    async fn serve_put(&self, entries: Vec<WireEntry<K, V>>, forward: bool) {
        let (mut mine, mut others) = (Vec::new(), Vec::new());
        {
            let r = self.routing.read();
            for e in entries {
                let (_, p) = self.part(&e.0);
                if matches!(r.states[p as usize], PartState::Absent) && r.table.is_some() {
                    others.push(e);
                } else {
                    mine.push(e);
                }
            }
        }
        self.store_local(mine, false);
        if forward && !others.is_empty() {
            let Some(table) = self.routing.read().table.clone() else {
                return;
            };
            let mut targets = Vec::new();
            for (i, (k, _, _)) in others.iter().enumerate() {
                let (_, p) = self.part(k);
                for id in table.replicas(p).iter().filter(|id| **id != self.me.id) {
                    targets.push((i, id.as_str()));
                }
            }
            let calls = group(targets.into_iter()).into_iter().map(|(id, idx)| {
                let req = PutReq {
                    entries: idx.iter().map(|i| &others[*i]).collect::<Vec<_>>(),
                    forward: false,
                };
                let table = &table;
                async move {
                    if let Some(a) = Self::addr_of(table, id) {
                        let _: Result<(), _> = self
                            .call(a, &self.methods.put, &req, self.config.rpc_timeout, false)
                            .await;
                    }
                }
            });
            join_all(calls).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Safety, maintenance, stats
    // -----------------------------------------------------------------------------------------

    fn safety(&self, st: &ClusterState) -> Safety {
        let r = self.routing.read();
        let Some(t) = &r.table else {
            return Safety::default();
        };
        let live = live_ids(st);
        let mut members: Vec<&NodeInfo> = st.members.members.iter().map(|m| &m.info).collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let table_current = t.members.iter().collect::<Vec<_>>() == members;
        let without = t
            .owners
            .iter()
            .filter(|rs| !rs.iter().any(|id| live.contains(id.as_str())))
            .count() as u32;
        let running = r
            .states
            .iter()
            .filter(|s| matches!(s, PartState::Migrating(_)))
            .count() as u32;
        Safety {
            has_table: true,
            table_current,
            partitions_without_live_replica: without,
            migrations_running: running,
        }
    }

    fn update_safe(&self, st: &ClusterState) {
        let safe = self.safety(st).is_safe();
        self.safe.send_if_modified(|s| {
            let changed = *s != safe;
            *s = safe;
            changed
        });
    }

    /// Drops partitions retained past their grace, expired claims, and claims of claimants that
    /// are no longer members (see [`ORPHAN_CLAIM_GRACE`]).
    fn maintain(&self, st: &ClusterState) {
        let now = Instant::now();
        let mut dropped = Vec::new();
        {
            let mut r = self.routing.write();
            for (p, s) in r.states.iter_mut().enumerate() {
                if let PartState::Retained { until } = s {
                    if *until <= now {
                        *s = PartState::Absent;
                        dropped.push(p as u32);
                    }
                }
            }
            if !dropped.is_empty() {
                let mut store = self.store.lock();
                for p in &dropped {
                    store.drop_partition(*p);
                }
            }
        }
        let live = live_ids(st);
        self.claims.lock().retain(|_, c| {
            let orphan = c.claimant != self.me.id
                && !live.contains(c.claimant.as_str())
                && now.duration_since(c.since) >= ORPHAN_CLAIM_GRACE;
            let keep = c.deadline > now && !orphan;
            if !keep {
                let _ = c.done.send(true);
            }
            keep
        });
    }

    fn snapshot(&self) -> GridStatsSnapshot {
        let s = &self.stats;
        let (entries, bytes, max_bytes, evictions, expired) = {
            let st = self.store.lock();
            (
                st.len(),
                st.bytes(),
                st.max_bytes(),
                st.evictions(),
                st.expired(),
            )
        };
        let (owned, backup, running, version, epoch) = {
            let r = self.routing.read();
            let running = r
                .states
                .iter()
                .filter(|s| matches!(s, PartState::Migrating(_)))
                .count();
            match &r.table {
                Some(t) => (
                    t.owned_by(&self.me.id),
                    t.backed_up_by(&self.me.id),
                    running,
                    t.version,
                    t.epoch,
                ),
                None => (0, 0, running, 0, 0),
            }
        };
        GridStatsSnapshot {
            hits_local: load(&s.hits_local),
            hits_remote: load(&s.hits_remote),
            misses: load(&s.misses),
            computations: load(&s.computations),
            coalesced_waits: load(&s.coalesced_waits),
            coalesce_fallbacks: load(&s.coalesce_fallbacks),
            puts: load(&s.puts),
            forwarded_reads: load(&s.forwarded_reads),
            rpc_calls: load(&s.rpc_calls),
            rpc_errors: load(&s.rpc_errors),
            rpc_micros: load(&s.rpc_micros),
            rpc_p50_micros: s.rpc_latency.quantile(0.5),
            rpc_p99_micros: s.rpc_latency.quantile(0.99),
            entries: entries as u64,
            bytes: bytes as u64,
            max_bytes: max_bytes as u64,
            evictions,
            expired,
            partitions_owned: owned as u64,
            partitions_backup: backup as u64,
            migrations_running: running as u64,
            migrations_done: load(&s.migrations_done),
            migrations_failed: load(&s.migrations_failed),
            migration_bytes: load(&s.migration_bytes),
            migration_entries: load(&s.migration_entries),
            pushed_bytes: load(&s.pushed_bytes),
            table_version: version,
            table_epoch: epoch,
            tables_applied: load(&s.tables_applied),
            stale_tables_rejected: load(&s.stale_tables_rejected),
            cluster_safe: *self.safe.borrow(),
        }
    }
}

/// The table duties, safety updates and maintenance of one node, until the grid is dropped.
async fn coordinate<K: GridKey, V: GridValue>(inner: Weak<Inner<K, V>>) {
    let mut state = match inner.upgrade() {
        Some(i) => i.cluster.subscribe(),
        None => return,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_maintain = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = state.changed() => if r.is_err() { return },
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let st = state.borrow_and_update().clone();
        inner.tick(&st);
        inner.update_safe(&st);
        if last_maintain.elapsed() >= Duration::from_secs(1) {
            last_maintain = Instant::now();
            inner.maintain(&st);
        }
    }
}

/// The RPC service `<name>.*`.
struct Service<K: GridKey, V: GridValue> {
    inner: Weak<Inner<K, V>>,
}

impl<K: GridKey, V: GridValue> Handler for Service<K, V> {
    fn handle(&self, method: &str, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
        let Some(inner) = self
            .inner
            .upgrade()
            .filter(|i| !i.stopped.load(Ordering::SeqCst))
        else {
            return Box::pin(async { Err(RpcError::Unavailable("grid stopped".into())) });
        };
        let op = method
            .strip_prefix(inner.config.name.as_str())
            .and_then(|m| m.strip_prefix('.'))
            .unwrap_or("")
            .to_string();
        Box::pin(async move {
            match op.as_str() {
                "get" => {
                    let req: GetReq<K> = wire::decode(&body)?;
                    wire::encode(&inner.serve_get(req.keys, req.forward).await)
                }
                "put" => {
                    let req: PutReq<WireEntry<K, V>> = wire::decode(&body)?;
                    inner.serve_put(req.entries, req.forward).await;
                    wire::encode(&())
                }
                "claim" => {
                    let req: ClaimReq<K> = wire::decode(&body)?;
                    wire::encode(&inner.serve_claim(req.keys, req.claimant).await)
                }
                "wait" => {
                    let req: KeysReq<K> = wire::decode(&body)?;
                    wire::encode(&inner.serve_wait(req.keys).await)
                }
                "release" => {
                    let req: KeysReq<K> = wire::decode(&body)?;
                    inner.serve_release(req.keys);
                    wire::encode(&())
                }
                "pull" => {
                    let req: PullReq = wire::decode(&body)?;
                    wire::encode(&inner.serve_pull(req))
                }
                "push" => {
                    let req: PushReq<WireEntry<K, V>> = wire::decode(&body)?;
                    inner.serve_push(req);
                    wire::encode(&())
                }
                "table" => {
                    let t: PartitionTable = wire::decode(&body)?;
                    inner
                        .apply_table(t)
                        .map_err(|stale| RpcError::Remote(stale.to_string()))?;
                    let r = inner.routing.read();
                    let (epoch, version) =
                        r.table.as_ref().map_or((0, 0), |t| (t.epoch, t.version));
                    wire::encode(&TableAck { epoch, version })
                }
                "table_get" => {
                    let t = inner.routing.read().table.clone();
                    wire::encode(&t.as_deref())
                }
                "leave" => {
                    let req: LeaveReq = wire::decode(&body)?;
                    wire::encode(&inner.on_leave_request(req.node)?)
                }
                _ => Err(RpcError::NoSuchMethod(format!(
                    "{}.{op}",
                    inner.config.name
                ))),
            }
        })
    }
}
