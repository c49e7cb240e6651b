//! The grid runtime of one node: routing, the RPC service, the leader's table publication,
//! migration, load coalescing and the graceful leave (the design is in the module docs).

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
use super::store::{Clock, Cursor, Inserted, Store, SystemClock, WireEntry, ENTRY_OVERHEAD};
use super::table::PartitionTable;
use super::wire::{
    self, ClaimAnswer, GetReq, KeysReq, LeaveReq, PullReq, PullResp, PushReq, PutReq, TableAck,
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
    /// Whether every push finished before `leave_timeout`.
    pub completed: bool,
    /// Time taken.
    pub elapsed: Duration,
}

struct Migration {
    token: u64,
    /// Pull sources, in order (reads fall through to them meanwhile).
    sources: Vec<String>,
    /// Leaving members expected to push the partition.
    push_from: Vec<String>,
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

    /// Graceful hand-off before [`Cluster::leave`]: asks the leader for a table without this
    /// node, pushes every partition of which this node holds the only live copy to its new
    /// replicas, and returns when done or after `leave_timeout`. Reads and writes keep being
    /// served meanwhile.
    pub async fn leave(&self) -> LeaveReport {
        self.inner().clone().leave().await
    }
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
            self.store_local(local.iter().map(|i| &entries[*i]), false);
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
                    let _: Result<(), _> =
                        self.call(a, &self.methods.put, &req, self.config.rpc_timeout, true).await;
                }
            }
        });
        join_all(calls).await;
    }

    /// Stores entries in the local store and wakes the waiters of their claims.
    fn store_local<'a>(&self, entries: impl Iterator<Item = &'a WireEntry<K, V>>, if_absent: bool)
    where
        K: 'a,
        V: 'a,
    {
        let now = self.now_ms();
        let mut stored = Vec::new();
        {
            let mut store = self.store.lock();
            for (k, v, e) in entries {
                let (h, p) = self.part(k);
                if store.insert(k.clone(), h, p, v.clone(), *e, now, if_absent) != Inserted::Rejected
                {
                    stored.push(k);
                }
            }
        }
        let mut claims = self.claims.lock();
        if !claims.is_empty() {
            for k in stored {
                if let Some(c) = claims.remove(k) {
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
        self.store_local(mine.iter(), false);
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
    // Load coalescing
    // -----------------------------------------------------------------------------------------

    /// Serves `claim`: per key, its value, or a new claim for the caller, or `Pending` when
    /// another caller's claim is live.
    async fn serve_claim(&self, keys: Vec<K>) -> Vec<ClaimAnswer<V>> {
        let values = self.serve_get(keys.clone(), true).await;
        let now = Instant::now();
        let mut claims = self.claims.lock();
        keys.into_iter()
            .zip(values)
            .map(|(k, v)| match v {
                Some(v) => ClaimAnswer::Hit(v),
                None => match claims.get(&k) {
                    Some(c) if c.deadline > now => ClaimAnswer::Pending,
                    _ => {
                        let (done, _) = watch::channel(false);
                        let deadline = now + self.config.claim_timeout;
                        claims.insert(k, ClaimSlot { deadline, done });
                        ClaimAnswer::Claimed
                    }
                },
            })
            .collect()
    }

    /// Serves `wait`: per key, its value once the claimant put it, or `None` when the claim
    /// ends without one (released, expired).
    async fn serve_wait(&self, keys: Vec<K>) -> Vec<Option<V>> {
        let waits = keys.into_iter().map(|k| {
            let slot = {
                let claims = self.claims.lock();
                claims
                    .get(&k)
                    .map(|c| (c.done.subscribe(), c.deadline))
            };
            async move {
                if let Some((mut rx, deadline)) = slot {
                    let _ = tokio::time::timeout_at(deadline, rx.wait_for(|d| *d)).await;
                }
                self.serve_get(vec![k], false).await.pop().flatten()
            }
        });
        join_all(waits).await
    }

    fn serve_release(&self, keys: Vec<K>) {
        let mut claims = self.claims.lock();
        for k in keys {
            if let Some(c) = claims.remove(&k) {
                let _ = c.done.send(true);
            }
        }
    }

    async fn get_or_compute_many<F, Fut>(&self, keys: &[K], compute: F) -> Vec<Option<V>>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Vec<Option<V>>>,
    {
        // Unique keys; `slot[i]` maps each input position to its unique key.
        let mut unique_keys: Vec<K> = Vec::new();
        let mut slot = Vec::with_capacity(keys.len());
        {
            let mut seen: HashMap<&K, usize> = HashMap::new();
            for k in keys {
                let i = *seen.entry(k).or_insert_with(|| {
                    unique_keys.push(k.clone());
                    unique_keys.len() - 1
                });
                slot.push(i);
            }
        }
        let unique: &[K] = &unique_keys;
        let n = unique.len();
        let mut out: Vec<Option<V>> = vec![None; n];
        let table = self.routing.read().table.clone();
        // Phase 1: local hits; claims at each key's coordinator (its first reachable replica;
        // this node's own partitions are claimed in-process).
        let mut local_hits = 0;
        let mut remote_hits = 0;
        // (key index, coordinator: None = uncoordinated)
        let mut to_compute: Vec<(usize, Option<String>)> = Vec::new();
        let mut to_wait: Vec<(usize, String)> = Vec::new();
        if let Some(table) = &table {
            let mut todo: Vec<(usize, Vec<String>)> = Vec::new();
            {
                let r = self.routing.read();
                let now = self.now_ms();
                let mut store = self.store.lock();
                for (i, k) in unique.iter().enumerate() {
                    let (_, p) = self.part(k);
                    if !matches!(r.states[p as usize], PartState::Absent) {
                        if let Some(v) = store.get(k, now) {
                            out[i] = Some(v);
                            local_hits += 1;
                            continue;
                        }
                    }
                    todo.push((i, table.replicas(p).to_vec()));
                }
            }
            let mut attempt = vec![0usize; todo.len()];
            let mut active: Vec<usize> = (0..todo.len()).collect();
            while !active.is_empty() {
                let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
                for t in &active {
                    match todo[*t].1.get(attempt[*t]) {
                        Some(c) => match groups.iter_mut().find(|(g, _)| *g == c.as_str()) {
                            Some((_, v)) => v.push(*t),
                            None => groups.push((c.as_str(), vec![*t])),
                        },
                        None => to_compute.push((todo[*t].0, None)),
                    }
                }
                let calls = groups.into_iter().map(|(id, ts)| {
                    let ks: Vec<&K> = ts.iter().map(|t| &unique[todo[*t].0]).collect();
                    async move {
                        let r: Result<Vec<ClaimAnswer<V>>, RpcError> = if id == self.me.id {
                            Ok(self.serve_claim(ks.into_iter().cloned().collect()).await)
                        } else {
                            match Self::addr_of(table, id) {
                                Some(a) => {
                                    let req = KeysReq { keys: ks };
                                    self.call(
                                        a,
                                        &self.methods.claim,
                                        &req,
                                        self.config.rpc_timeout,
                                        true,
                                    )
                                    .await
                                }
                                None => Err(RpcError::Unavailable(id.to_string())),
                            }
                        };
                        (id, ts, r)
                    }
                });
                let mut next = Vec::new();
                for (id, ts, r) in join_all(calls).await {
                    match r {
                        Ok(answers) if answers.len() == ts.len() => {
                            for (t, a) in ts.into_iter().zip(answers) {
                                let i = todo[t].0;
                                match a {
                                    ClaimAnswer::Hit(v) => {
                                        out[i] = Some(v);
                                        remote_hits += 1;
                                    }
                                    ClaimAnswer::Claimed => to_compute.push((i, Some(id.into()))),
                                    ClaimAnswer::Pending => to_wait.push((i, id.into())),
                                }
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
        } else {
            to_compute.extend((0..n).map(|i| (i, None)));
        }
        GridStats::add(&self.stats.hits_local, local_hits);
        GridStats::add(&self.stats.hits_remote, remote_hits);
        GridStats::add(&self.stats.misses, to_compute.len() as u64);

        // Phase 2: compute what we claimed while waiting for what others claimed.
        let computing = async {
            if to_compute.is_empty() {
                return Vec::new();
            }
            let ks: Vec<K> = to_compute.iter().map(|(i, _)| unique[*i].clone()).collect();
            GridStats::add(&self.stats.computations, ks.len() as u64);
            let values = compute(ks).await;
            let mut puts = Vec::new();
            let mut release: Vec<(&str, &K)> = Vec::new();
            let mut results = Vec::new();
            for (j, (i, coord)) in to_compute.iter().enumerate() {
                let v = values.get(j).cloned().flatten();
                match &v {
                    Some(v) => puts.push((unique[*i].clone(), v.clone())),
                    None => {
                        if let Some(c) = coord {
                            release.push((c.as_str(), &unique[*i]));
                        }
                    }
                }
                results.push((*i, v));
            }
            self.put_with_ttl(puts).await;
            self.release(table.as_deref(), release).await;
            results
        };
        let waiting = async {
            let Some(table) = &table else {
                return Vec::new();
            };
            let groups = group(to_wait.iter().map(|(i, c)| (*i, c.as_str())));
            let calls = groups.into_iter().map(|(id, idx)| async move {
                let ks: Vec<&K> = idx.iter().map(|i| &unique[*i]).collect();
                let r: Vec<Option<V>> = if id == self.me.id {
                    self.serve_wait(ks.into_iter().cloned().collect()).await
                } else {
                    let timeout = self.config.claim_timeout + self.config.rpc_timeout;
                    match Self::addr_of(table, id) {
                        Some(a) => self
                            .call(a, &self.methods.wait, &KeysReq { keys: ks }, timeout, true)
                            .await
                            .unwrap_or_default(),
                        None => Vec::new(),
                    }
                };
                (idx, r)
            });
            join_all(calls).await
        };
        let (computed, waited) = tokio::join!(computing, waiting);
        for (i, v) in computed {
            out[i] = v;
        }
        let mut leftovers = Vec::new();
        for (idx, vals) in waited {
            for (j, i) in idx.into_iter().enumerate() {
                match vals.get(j).cloned().flatten() {
                    Some(v) => {
                        out[i] = Some(v);
                        GridStats::add(&self.stats.coalesced_waits, 1);
                    }
                    None => leftovers.push(i),
                }
            }
        }
        // Phase 3: the claimant did not deliver in time: compute ourselves.
        if !leftovers.is_empty() {
            GridStats::add(&self.stats.coalesce_fallbacks, leftovers.len() as u64);
            GridStats::add(&self.stats.computations, leftovers.len() as u64);
            let ks: Vec<K> = leftovers.iter().map(|i| unique[*i].clone()).collect();
            let values = compute(ks).await;
            let mut puts = Vec::new();
            for (j, i) in leftovers.iter().enumerate() {
                if let Some(v) = values.get(j).cloned().flatten() {
                    puts.push((unique[*i].clone(), v.clone()));
                    out[*i] = Some(v);
                }
            }
            self.put_with_ttl(puts).await;
        }
        slot.into_iter().map(|i| out[i].clone()).collect()
    }

    async fn put_with_ttl(&self, entries: Vec<(K, V)>) {
        if entries.is_empty() {
            return;
        }
        let now = self.now_ms();
        let entries = entries
            .into_iter()
            .map(|(k, v)| {
                let exp = v.ttl().map(|t| now.saturating_add(t.as_millis() as u64));
                (k, v, exp)
            })
            .collect();
        self.put_many(entries).await;
    }

    async fn release(&self, table: Option<&PartitionTable>, keys: Vec<(&str, &K)>) {
        let Some(table) = table else { return };
        let mut groups: Vec<(&str, Vec<&K>)> = Vec::new();
        for (c, k) in keys {
            match groups.iter_mut().find(|(g, _)| *g == c) {
                Some((_, v)) => v.push(k),
                None => groups.push((c, vec![k])),
            }
        }
        let calls = groups.into_iter().map(|(id, ks)| async move {
            if id == self.me.id {
                self.serve_release(ks.into_iter().cloned().collect());
            } else if let Some(a) = Self::addr_of(table, id) {
                let _: Result<(), _> = self
                    .call(a, &self.methods.release, &KeysReq { keys: ks }, self.config.rpc_timeout, false)
                    .await;
            }
        });
        join_all(calls).await;
    }

    // -----------------------------------------------------------------------------------------
    // Tables
    // -----------------------------------------------------------------------------------------

    /// Accepts `t` if its epoch passes the fence and it supersedes the current table; then
    /// starts the migrations it implies. `Ok(false)`: not newer, ignored.
    fn apply_table(self: &Arc<Self>, t: PartitionTable) -> Result<bool, StaleEpoch> {
        if let Err(stale) = self.cluster.fence().check(t.epoch) {
            GridStats::add(&self.stats.stale_tables_rejected, 1);
            tracing::warn!(node = %self.me.id, %stale, version = t.version, "rejected a partition table from a deposed leader");
            return Err(stale);
        }
        if t.partitions() != self.config.partitions {
            tracing::error!(
                node = %self.me.id,
                theirs = t.partitions(),
                ours = self.config.partitions,
                "ignored a partition table with another partition count (mixed configurations?)"
            );
            return Ok(false);
        }
        let mut started = Vec::new();
        {
            let mut r = self.routing.write();
            if r.table.as_ref().is_some_and(|cur| !t.supersedes(cur)) {
                return Ok(false);
            }
            let old = r.table.clone();
            let plan = plan_migration(old.as_deref(), &t, &self.me.id);
            let grace = Instant::now() + self.config.handoff_grace;
            let mut transfers: HashMap<u32, (Vec<String>, Vec<String>)> = plan
                .pull
                .into_iter()
                .map(|x| (x.partition, (x.sources, x.push_from)))
                .collect();
            let early = std::mem::take(&mut r.early_pushes);
            let mut drop_data = Vec::new();
            for p in 0..t.partitions() {
                let i = p as usize;
                let replica = t.is_replica(p, &self.me.id);
                let next = match (&r.states[i], replica) {
                    (PartState::Held | PartState::Retained { .. }, true) => PartState::Held,
                    (PartState::Migrating(m), true) => PartState::Migrating(m.clone()),
                    (PartState::Absent, true) => {
                        let (sources, push_from) = transfers.remove(&p).unwrap_or_else(|| {
                            let others = t
                                .replicas(p)
                                .iter()
                                .filter(|id| **id != self.me.id)
                                .cloned()
                                .collect();
                            (others, Vec::new())
                        });
                        if !push_from.is_empty() && early.contains(&p) {
                            GridStats::add(&self.stats.migrations_done, 1);
                            PartState::Held
                        } else {
                            let m = Arc::new(Migration {
                                token: self.next_token.fetch_add(1, Ordering::Relaxed),
                                sources,
                                push_from,
                            });
                            started.push((p, m.clone()));
                            PartState::Migrating(m)
                        }
                    }
                    (PartState::Held, false) => PartState::Retained { until: grace },
                    (PartState::Retained { until }, false) => PartState::Retained { until: *until },
                    (PartState::Migrating(_), false) => {
                        drop_data.push(p);
                        PartState::Absent
                    }
                    (PartState::Absent, false) => PartState::Absent,
                };
                r.states[i] = next;
            }
            if !drop_data.is_empty() {
                let mut store = self.store.lock();
                for p in drop_data {
                    store.drop_partition(p);
                }
            }
            tracing::info!(
                node = %self.me.id,
                version = t.version,
                epoch = t.epoch,
                owned = t.owned_by(&self.me.id),
                backups = t.backed_up_by(&self.me.id),
                receiving = started.len(),
                "applied partition table"
            );
            r.table = Some(Arc::new(t));
        }
        GridStats::add(&self.stats.tables_applied, 1);
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        for (p, m) in started {
            tasks.push(tokio::spawn(self.clone().migrate(p, m)));
        }
        drop(tasks);
        self.update_safe(&self.cluster.state());
        Ok(true)
    }

    fn desired_members(&self, st: &ClusterState, leaving: &HashMap<String, NodeInfo>) -> Vec<NodeInfo> {
        let mut m: Vec<NodeInfo> = st
            .members
            .members
            .iter()
            .map(|m| m.info.clone())
            .filter(|i| leaving.get(&i.id) != Some(i))
            .collect();
        m.sort_by(|a, b| a.id.cmp(&b.id));
        m
    }

    /// Leader: computes the next table from `members` and the current one, applies and
    /// publishes it.
    fn publish(self: &Arc<Self>, members: Vec<NodeInfo>, epoch: u64, leader: &mut LeaderState) -> Option<PartitionTable> {
        let current = self.routing.read().table.clone();
        let version = current.as_ref().map_or(0, |t| t.version) + 1;
        let mut t = PartitionTable::compute(
            &members,
            current.as_deref(),
            self.config.partitions,
            self.config.backup_count,
            version,
            epoch,
        );
        t.leaving = leader.leaving.values().cloned().collect();
        t.leaving.sort_by(|a, b| a.id.cmp(&b.id));
        match self.apply_table(t.clone()) {
            Ok(true) => {}
            _ => return None,
        }
        tracing::info!(
            node = %self.me.id,
            version,
            epoch,
            members = ?t.members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            "published a new partition table"
        );
        leader.acked.clear();
        leader.acked.insert(self.me.id.clone(), (epoch, version));
        leader.last_resend = Some(Instant::now());
        self.send_table(&t, &leader.acked);
        Some(t)
    }

    /// Sends `t` to every node of it that has not acknowledged it (in the background).
    fn send_table(self: &Arc<Self>, t: &PartitionTable, acked: &HashMap<String, (u64, u64)>) {
        let t = Arc::new(t.clone());
        for n in t.members.iter().chain(&t.leaving) {
            if acked.get(&n.id) == Some(&(t.epoch, t.version)) || n.id == self.me.id {
                continue;
            }
            let (inner, t, n) = (Arc::downgrade(self), t.clone(), n.clone());
            tokio::spawn(async move {
                let Some(inner) = inner.upgrade() else { return };
                let r: Result<TableAck, _> = inner
                    .call(n.addr, &inner.methods.table, &*t, inner.config.rpc_timeout, false)
                    .await;
                if r.is_ok() {
                    inner.leader.lock().acked.insert(n.id, (t.epoch, t.version));
                }
            });
        }
    }

    /// One step of the table duties (every 50 ms and on every cluster change).
    fn tick(self: &Arc<Self>, st: &ClusterState) {
        let now = Instant::now();
        let table = self.routing.read().table.clone();
        let mut leader = self.leader.lock();
        if st.is_leader {
            leader.pulled_from = None;
            let ids: HashSet<&NodeInfo> = st.members.members.iter().map(|m| &m.info).collect();
            leader.leaving.retain(|_, n| ids.contains(n));
            let desired = self.desired_members(st, &leader.leaving);
            let Some(current) = table else {
                // A new leader without a table first asks the members for theirs (a restart
                // must not reshuffle the cluster), then starts afresh.
                let since = *leader.bootstrap_since.get_or_insert(now);
                let alone = st.members.members.len() <= 1;
                let patience = self.config.table_debounce * if alone { 1 } else { 3 };
                if now - since < patience {
                    let due = leader
                        .last_bootstrap_ask
                        .is_none_or(|t| now - t >= Duration::from_millis(250));
                    if due && !alone {
                        leader.last_bootstrap_ask = Some(now);
                        self.ask_for_tables(st);
                    }
                    return;
                }
                self.publish(desired, st.epoch, &mut leader);
                return;
            };
            leader.bootstrap_since = None;
            let changed = current.members != desired || current.epoch != st.epoch;
            if !changed {
                leader.pending = None;
                if leader.last_resend.is_none_or(|t| now - t >= Duration::from_millis(500)) {
                    leader.last_resend = Some(now);
                    let acked = leader.acked.clone();
                    self.send_table(&current, &acked);
                }
                return;
            }
            match &leader.pending {
                Some((m, since)) if *m == desired => {
                    if now - *since >= self.config.table_debounce {
                        leader.pending = None;
                        self.publish(desired, st.epoch, &mut leader);
                    }
                }
                _ => leader.pending = Some((desired, now)),
            }
        } else {
            leader.bootstrap_since = None;
            leader.pending = None;
            let (Some(id), Some(addr)) = (st.leader.clone(), st.leader_addr) else {
                return;
            };
            if id == self.me.id {
                return;
            }
            let want = (id.clone(), st.epoch);
            let stale = table.as_ref().is_none_or(|t| t.epoch < st.epoch);
            if leader.pulled_from.as_ref() == Some(&want) && !stale {
                return;
            }
            if leader.last_pull.is_some_and(|t| now - t < Duration::from_millis(200)) {
                return;
            }
            leader.last_pull = Some(now);
            let inner = Arc::downgrade(self);
            tokio::spawn(async move {
                let Some(inner) = inner.upgrade() else { return };
                let r: Result<Option<PartitionTable>, _> = inner
                    .call(addr, &inner.methods.table_get, &(), inner.config.rpc_timeout, false)
                    .await;
                if let Ok(Some(t)) = r {
                    if t.epoch >= want.1 && inner.apply_table(t).is_ok() {
                        inner.leader.lock().pulled_from = Some(want);
                    }
                }
            });
        }
    }

    /// New leader without a table: asks every member for its table and adopts the newest.
    fn ask_for_tables(self: &Arc<Self>, st: &ClusterState) {
        for m in st.members.members.iter().filter(|m| !m.is_self) {
            let (inner, addr) = (Arc::downgrade(self), m.info.addr);
            tokio::spawn(async move {
                let Some(inner) = inner.upgrade() else { return };
                let r: Result<Option<PartitionTable>, _> = inner
                    .call(addr, &inner.methods.table_get, &(), inner.config.rpc_timeout, false)
                    .await;
                if let Ok(Some(t)) = r {
                    let _ = inner.apply_table(t);
                }
            });
        }
    }

    /// Leader: a member hands off. Excludes it at once (no debounce) and publishes.
    fn on_leave_request(self: &Arc<Self>, node: NodeInfo) -> Result<PartitionTable, RpcError> {
        let st = self.cluster.state();
        if !st.is_leader {
            return Err(RpcError::Remote("not the leader".into()));
        }
        let mut leader = self.leader.lock();
        leader.leaving.insert(node.id.clone(), node.clone());
        let desired = self.desired_members(&st, &leader.leaving);
        if let Some(t) = self.routing.read().table.clone() {
            if t.members == desired && t.epoch == st.epoch && t.leaving.contains(&node) {
                return Ok((*t).clone());
            }
        }
        leader.pending = None;
        self.publish(desired, st.epoch, &mut leader)
            .ok_or_else(|| RpcError::Remote("could not publish a table".into()))
    }

    // -----------------------------------------------------------------------------------------
    // Migration
    // -----------------------------------------------------------------------------------------

    fn migrating(&self, p: u32, token: u64) -> bool {
        matches!(&self.routing.read().states[p as usize], PartState::Migrating(m) if m.token == token)
    }

    fn finish(&self, p: u32, token: u64, ok: bool) {
        let mut r = self.routing.write();
        if matches!(&r.states[p as usize], PartState::Migrating(m) if m.token == token) {
            r.states[p as usize] = PartState::Held;
            drop(r);
            if ok {
                GridStats::add(&self.stats.migrations_done, 1);
            } else {
                GridStats::add(&self.stats.migrations_failed, 1);
            }
        }
    }

    async fn migrate(self: Arc<Self>, p: u32, m: Arc<Migration>) {
        let mut sources = m.sources.clone();
        if !m.push_from.is_empty() {
            // Await the leaving member's push; pull from it if none came in time.
            let deadline = Instant::now() + self.config.leave_timeout;
            while Instant::now() < deadline {
                if !self.migrating(p, m.token) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sources.extend(m.push_from.iter().cloned());
        }
        let Ok(_permit) = self.migrations.clone().acquire_owned().await else {
            return;
        };
        let mut answered = false;
        for round in 0..4u32 {
            let mut all_answered = true;
            for src in &sources {
                if !self.migrating(p, m.token) {
                    return;
                }
                let addr = self.routing.read().table.as_ref().and_then(|t| Self::addr_of(t, src));
                let Some(addr) = addr else {
                    all_answered = false;
                    continue;
                };
                match self.pull(addr, p, m.token).await {
                    Ok(true) => {
                        self.finish(p, m.token, true);
                        return;
                    }
                    Ok(false) => answered = true,
                    Err(e) => {
                        all_answered = false;
                        tracing::debug!(node = %self.me.id, partition = p, from = %src, error = %e, "pull failed");
                    }
                }
            }
            if sources.is_empty() || (answered && all_answered && round >= 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 << round)).await;
        }
        // Nobody holds it: a new cluster (nothing to receive), or every holder died.
        self.finish(p, m.token, sources.is_empty() || answered);
    }

    /// Pulls partition `p` from `addr` chunk by chunk. `Ok(false)`: the source does not hold it.
    async fn pull(&self, addr: SocketAddr, p: u32, token: u64) -> Result<bool, RpcError> {
        let mut cursor: Option<Cursor> = None;
        loop {
            let req = PullReq {
                partition: p,
                cursor,
                max_entries: self.config.migration_chunk_entries,
                max_bytes: self.config.migration_chunk_bytes,
            };
            let resp: PullResp<WireEntry<K, V>> = self
                .call(addr, &self.methods.pull, &req, self.config.transfer_timeout, false)
                .await?;
            if !resp.held {
                return Ok(false);
            }
            if !self.migrating(p, token) {
                return Ok(true);
            }
            self.receive(&resp.entries);
            match resp.next {
                Some(c) => cursor = Some(c),
                None => return Ok(true),
            }
        }
    }

    fn receive(&self, entries: &[WireEntry<K, V>]) {
        let bytes: usize = entries
            .iter()
            .map(|(k, v, _)| k.size_bytes() + v.size_bytes() + ENTRY_OVERHEAD)
            .sum();
        GridStats::add(&self.stats.migration_entries, entries.len() as u64);
        GridStats::add(&self.stats.migration_bytes, bytes as u64);
        // Entries written since the table changed are newer than migrated ones: keep them.
        self.store_local(entries.iter(), true);
    }

    fn serve_pull(&self, req: PullReq) -> PullResp<WireEntry<K, V>> {
        let r = self.routing.read();
        let held = r
            .states
            .get(req.partition as usize)
            .is_some_and(PartState::serves_locally);
        if !held {
            return PullResp {
                held: false,
                entries: Vec::new(),
                next: None,
            };
        }
        let (entries, next) = self.store.lock().partition_chunk(
            req.partition,
            req.cursor,
            req.max_entries.min(self.config.migration_chunk_entries),
            req.max_bytes.min(self.config.migration_chunk_bytes),
            self.now_ms(),
        );
        PullResp {
            held: true,
            entries,
            next,
        }
    }

    fn serve_push(&self, req: PushReq<WireEntry<K, V>>) {
        if req.partition >= self.config.partitions {
            return;
        }
        self.receive(&req.entries);
        if req.done {
            let mut r = self.routing.write();
            match &r.states[req.partition as usize] {
                PartState::Migrating(_) => {
                    r.states[req.partition as usize] = PartState::Held;
                    GridStats::add(&self.stats.migrations_done, 1);
                }
                PartState::Absent => {
                    r.early_pushes.insert(req.partition);
                }
                _ => {}
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Leave
    // -----------------------------------------------------------------------------------------

    async fn leave(self: Arc<Self>) -> LeaveReport {
        let started = Instant::now();
        let deadline = started + self.config.leave_timeout;
        self.leaving.store(true, Ordering::SeqCst);
        let mut report = LeaveReport::default();
        let Some(current) = self.routing.read().table.clone() else {
            report.completed = true;
            report.elapsed = started.elapsed();
            return report;
        };
        // 1. The leader publishes a table without us (a few tries, within half the budget).
        let ask_until = started + self.config.leave_timeout / 2;
        let mut next: Option<PartitionTable> = None;
        while next.is_none() && Instant::now() < ask_until {
            let st = self.cluster.state();
            if st.is_leader {
                next = self.on_leave_request(self.me.clone()).ok();
            } else if let Some(addr) = st.leader_addr {
                let req = LeaveReq {
                    node: self.me.clone(),
                };
                if let Ok(t) = self
                    .call::<_, PartitionTable>(addr, &self.methods.leave, &req, self.config.rpc_timeout, false)
                    .await
                {
                    let _ = self.apply_table(t.clone());
                    next = Some(t);
                }
            }
            if next.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        report.leader_acknowledged = next.is_some();
        // Without the leader, push along the table it will compute once we are gone.
        let next = match next {
            Some(t) => t,
            None => {
                let st = self.cluster.state();
                let members: Vec<NodeInfo> = st
                    .members
                    .members
                    .iter()
                    .map(|m| m.info.clone())
                    .filter(|i| i.id != self.me.id)
                    .collect();
                let mut t = PartitionTable::compute(
                    &members,
                    Some(&current),
                    self.config.partitions,
                    self.config.backup_count,
                    current.version + 1,
                    current.epoch,
                );
                t.leaving = vec![self.me.clone()];
                t
            }
        };
        // 2. Push what only we hold.
        let pushes = plan_leave(&current, &next, &self.me.id);
        report.partitions_pushed = pushes.len();
        let entries_pushed = AtomicU64::new(0);
        let limit = Arc::new(Semaphore::new(self.config.migration_parallelism));
        let work = join_all(pushes.iter().map(|push| {
            let (limit, next, entries_pushed) = (limit.clone(), &next, &entries_pushed);
            let this = &self;
            async move {
                let Ok(_permit) = limit.acquire().await else { return };
                let targets: Vec<SocketAddr> = push
                    .targets
                    .iter()
                    .filter_map(|id| Self::addr_of(next, id))
                    .collect();
                let mut cursor = None;
                loop {
                    let (entries, more) = this.store.lock().partition_chunk(
                        push.partition,
                        cursor,
                        this.config.migration_chunk_entries,
                        this.config.migration_chunk_bytes,
                        this.now_ms(),
                    );
                    let bytes: usize = entries
                        .iter()
                        .map(|(k, v, _)| k.size_bytes() + v.size_bytes() + ENTRY_OVERHEAD)
                        .sum();
                    let req = PushReq {
                        partition: push.partition,
                        entries,
                        done: more.is_none(),
                    };
                    let sends = targets.iter().map(|a| {
                        this.call::<_, ()>(*a, &this.methods.push, &req, this.config.transfer_timeout, false)
                    });
                    let ok = join_all(sends).await.iter().filter(|r| r.is_ok()).count();
                    entries_pushed.fetch_add((req.entries.len() * ok) as u64, Ordering::Relaxed);
                    GridStats::add(&this.stats.pushed_bytes, (bytes * ok) as u64);
                    match more {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
            }
        }));
        report.completed = tokio::time::timeout_at(deadline, work).await.is_ok();
        report.entries_pushed = entries_pushed.load(Ordering::Relaxed);
        report.elapsed = started.elapsed();
        tracing::info!(
            node = %self.me.id,
            pushed = report.partitions_pushed,
            entries = report.entries_pushed,
            completed = report.completed,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "grid hand-off finished"
        );
        report
    }

    // -----------------------------------------------------------------------------------------
    // Safety, maintenance, stats
    // -----------------------------------------------------------------------------------------

    fn safety(&self, st: &ClusterState) -> Safety {
        let r = self.routing.read();
        let Some(t) = &r.table else {
            return Safety::default();
        };
        let live: HashSet<&str> = st.members.members.iter().map(|m| m.info.id.as_str()).collect();
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

    /// Drops partitions retained past their grace, and expired claims.
    fn maintain(&self) {
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
        self.claims.lock().retain(|_, c| c.deadline > now);
    }

    fn snapshot(&self) -> GridStatsSnapshot {
        let s = &self.stats;
        let (entries, bytes, max_bytes, evictions, expired) = {
            let st = self.store.lock();
            (st.len(), st.bytes(), st.max_bytes(), st.evictions(), st.expired())
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
            inner.maintain();
        }
    }
}

/// The RPC service `<name>.*`.
struct Service<K: GridKey, V: GridValue> {
    inner: Weak<Inner<K, V>>,
}

impl<K: GridKey, V: GridValue> Handler for Service<K, V> {
    fn handle(&self, method: &str, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
        let Some(inner) = self.inner.upgrade().filter(|i| !i.stopped.load(Ordering::SeqCst)) else {
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
                    let req: KeysReq<K> = wire::decode(&body)?;
                    wire::encode(&inner.serve_claim(req.keys).await)
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
                    let (epoch, version) = r.table.as_ref().map_or((0, 0), |t| (t.epoch, t.version));
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
                _ => Err(RpcError::NoSuchMethod(method_name(&inner.config.name, &op))),
            }
        })
    }
}

fn method_name(name: &str, op: &str) -> String {
    format!("{name}.{op}")
}
