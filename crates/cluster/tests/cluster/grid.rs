//! The grid: three (or more) real `Cluster`s on the in-memory network, and on real TCP over
//! loopback, with short timings. Every test names the rule it checks; no timing is asserted
//! (waits are generous and only bound how long a test may hang).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{
    serve_rpc, ClaimOutcome, Cluster, ClusterConfig, DiscoveryHandle, ElectionConfig, Grid,
    GridConfig, GridValue, LeaseBackend, ManualClock, MembershipConfig, MemoryLease, MemoryNetwork,
    NodeInfo, PartitionTable, RpcConfig, RpcStats, TcpTransport,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SECRET: &str = "0123456789abcdef-grid-secret";

/// A symbolication-like value: found, or a negative entry with a TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Sym {
    Found(String),
    Missing,
}

impl GridValue for Sym {
    fn size_bytes(&self) -> usize {
        match self {
            Sym::Found(s) => 32 + s.capacity(),
            Sym::Missing => 32,
        }
    }
    fn ttl(&self) -> Option<Duration> {
        match self {
            Sym::Found(_) => None,
            Sym::Missing => Some(Duration::from_secs(60)),
        }
    }
}

type G = Grid<String, Sym>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn key(i: usize) -> String {
    format!("debug-id-{:04}:0x{:x}", i % 37, i * 16)
}

fn value(k: &str) -> Sym {
    Sym::Found(format!("symbol for {k}"))
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(key).collect()
}

fn cluster_config(me: NodeInfo) -> ClusterConfig {
    let mut c = ClusterConfig::new(me);
    c.membership = MembershipConfig {
        heartbeat_interval: ms(50),
        failure_timeout: ms(300),
    };
    c.election = ElectionConfig {
        lease_duration: ms(600),
        renew_deadline: ms(400),
        retry_period: ms(100),
    };
    c.rpc_timeout = ms(200);
    c
}

fn grid_config() -> GridConfig {
    GridConfig {
        rpc_timeout: ms(300),
        claim_timeout: Duration::from_secs(3),
        leave_timeout: Duration::from_secs(5),
        handoff_grace: Duration::from_secs(3),
        ..GridConfig::default()
    }
}

/// A compute function that counts how often each key is computed.
#[derive(Clone, Default)]
struct Counter {
    calls: Arc<AtomicUsize>,
    per_key: Arc<Mutex<HashMap<String, usize>>>,
}

impl Counter {
    fn compute(
        &self,
        delay: Duration,
    ) -> impl Fn(Vec<String>) -> futures_util::future::BoxFuture<'static, Vec<Option<Sym>>> + '_
    {
        move |ks: Vec<String>| {
            self.calls.fetch_add(1, Ordering::SeqCst);
            {
                let mut m = self.per_key.lock();
                for k in &ks {
                    *m.entry(k.clone()).or_default() += 1;
                }
            }
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                ks.iter().map(|k| Some(value(k))).collect()
            })
        }
    }

    fn total(&self) -> usize {
        self.per_key.lock().values().sum()
    }
}

struct Node {
    cluster: Cluster,
    grid: G,
    stop: Option<oneshot::Sender<()>>,
}

enum Net {
    Memory(MemoryNetwork),
    Tcp,
}

struct Sim {
    net: Net,
    lease: MemoryLease,
    clock: Arc<ManualClock>,
    config: GridConfig,
    nodes: Vec<Node>,
    next_id: u8,
    peers: BTreeSet<SocketAddr>,
}

impl Sim {
    async fn memory(n: usize) -> Sim {
        Self::with(Net::Memory(MemoryNetwork::new()), n, grid_config()).await
    }

    async fn tcp(n: usize) -> Sim {
        Self::with(Net::Tcp, n, grid_config()).await
    }

    async fn with(net: Net, n: usize, config: GridConfig) -> Sim {
        let mut sim = Sim {
            net,
            lease: MemoryLease::new(),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            config,
            nodes: Vec::new(),
            next_id: 1,
            peers: BTreeSet::new(),
        };
        // Addresses first, so the first nodes discover each other.
        let mut pending = Vec::new();
        for _ in 0..n {
            pending.push(sim.reserve().await);
        }
        for (id, addr, listener) in pending {
            sim.start(id, addr, listener);
        }
        sim
    }

    async fn reserve(&mut self) -> (u8, SocketAddr, Option<TcpListener>) {
        let id = self.next_id;
        self.next_id += 1;
        let (addr, listener) = match &self.net {
            Net::Memory(_) => (SocketAddr::from(([10, 0, 1, id], 7946)), None),
            Net::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                (l.local_addr().unwrap(), Some(l))
            }
        };
        self.peers.insert(addr);
        (id, addr, listener)
    }

    fn start(&mut self, id: u8, addr: SocketAddr, listener: Option<TcpListener>) {
        let me = NodeInfo::new(format!("pod-{id}"), addr, id as u64);
        let backend: Arc<dyn LeaseBackend> = Arc::new(self.lease.new_client());
        let transport: Arc<dyn cluster::Transport> = match &self.net {
            Net::Memory(net) => Arc::new(net.transport(addr)),
            Net::Tcp => Arc::new(TcpTransport::new(RpcConfig::new(SECRET)).unwrap()),
        };
        let cluster = Cluster::start(
            cluster_config(me),
            transport,
            DiscoveryHandle::fixed(self.peers.clone()),
            Some(backend),
        )
        .unwrap();
        let grid = Grid::start_with_clock(cluster.clone(), self.config.clone(), self.clock.clone())
            .unwrap();
        let stop = match (&self.net, listener) {
            (Net::Memory(net), _) => {
                net.register(addr, cluster.handler());
                None
            }
            (Net::Tcp, Some(listener)) => {
                let (tx, rx) = oneshot::channel::<()>();
                tokio::spawn(serve_rpc(
                    listener,
                    RpcConfig::new(SECRET),
                    cluster.handler(),
                    Arc::new(RpcStats::default()),
                    async move {
                        let _ = rx.await;
                    },
                ));
                Some(tx)
            }
            (Net::Tcp, None) => unreachable!(),
        };
        self.nodes.push(Node {
            cluster,
            grid,
            stop,
        });
    }

    /// A new node joins.
    async fn add(&mut self) -> usize {
        let (id, addr, listener) = self.reserve().await;
        self.start(id, addr, listener);
        self.nodes.len() - 1
    }

    /// The process dies: unreachable at once, nothing handed off.
    fn kill(&mut self, i: usize) -> String {
        let node = self.nodes.remove(i);
        let id = node.cluster.me().id.clone();
        match &self.net {
            Net::Memory(net) => net.unregister(node.cluster.me().addr),
            Net::Tcp => {
                let _ = node.stop.map(|s| s.send(()));
            }
        }
        id
    }

    /// Graceful shutdown as the binary orders it: grid hand-off, lease release, leave, exit.
    async fn leave(&mut self, i: usize) -> cluster::LeaveReport {
        let report = self.nodes[i].grid.leave().await;
        self.nodes[i].cluster.shutdown().await;
        self.kill(i);
        report
    }

    fn grids(&self) -> Vec<G> {
        self.nodes.iter().map(|n| n.grid.clone()).collect()
    }

    async fn until(&self, what: &str, f: impl Fn(&Sim) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(ms(20)).await;
        }
    }

    /// Every node has the same table, computed from exactly the live nodes, and is safe.
    fn converged(&self) -> bool {
        let ids: Vec<String> = {
            let mut v: Vec<String> = self
                .nodes
                .iter()
                .map(|n| n.cluster.me().id.clone())
                .collect();
            v.sort();
            v
        };
        let tables: Vec<Option<Arc<PartitionTable>>> =
            self.nodes.iter().map(|n| n.grid.table()).collect();
        let Some(Some(first)) = tables.first() else {
            return false;
        };
        tables.iter().all(|t| {
            t.as_ref().is_some_and(|t| {
                t.version == first.version
                    && t.epoch == first.epoch
                    && t.members.iter().map(|m| m.id.clone()).collect::<Vec<_>>() == ids
            })
        }) && self.nodes.iter().all(|n| n.grid.cluster_safe())
    }

    async fn converge(&self) {
        self.until(
            "the grid converges on the live nodes and is safe",
            Sim::converged,
        )
        .await;
    }
}

async fn put_all(grid: &G, n: usize) {
    let entries: Vec<(String, Sym)> = keys(n)
        .into_iter()
        .map(|k| (k.clone(), value(&k)))
        .collect();
    for chunk in entries.chunks(100) {
        grid.put_many(chunk.to_vec()).await;
    }
}

/// How many of the first `n` keys `grid` reads, in batches of 50.
async fn readable(grid: &G, n: usize) -> usize {
    let ks = keys(n);
    let mut found = 0;
    for chunk in ks.chunks(50) {
        let got = grid.get_many(chunk).await;
        for (k, v) in chunk.iter().zip(got) {
            if let Some(v) = v {
                assert_eq!(v, value(k), "a wrong value for {k}");
                found += 1;
            }
        }
    }
    found
}

// -------------------------------------------------------------------------------------------
// Routing and coalescing
// -------------------------------------------------------------------------------------------

/// Rule (routing): a value computed and put through node A is read through node B without a
/// second computation — B finds it on the owner (or its own replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_put_on_one_node_is_read_on_another_without_recomputing() {
    let sim = Sim::memory(3).await;
    sim.converge().await;
    let counter = Counter::default();
    let ks = keys(200);
    let a = &sim.nodes[0].grid;
    let got = a.get_or_compute_many(&ks, counter.compute(ms(0))).await;
    assert!(got
        .iter()
        .zip(&ks)
        .all(|(v, k)| v.as_ref() == Some(&value(k))));
    assert_eq!(counter.total(), 200);
    assert_eq!(
        counter.calls.load(Ordering::SeqCst),
        1,
        "one compute call for the batch"
    );
    for b in &sim.nodes[1..] {
        let got = b
            .grid
            .get_or_compute_many(&ks, counter.compute(ms(0)))
            .await;
        assert!(got
            .iter()
            .zip(&ks)
            .all(|(v, k)| v.as_ref() == Some(&value(k))));
        let s = b.grid.stats();
        assert_eq!(s.hits_local + s.hits_remote, 200, "{s:?}");
        assert!(
            s.hits_remote > 0 && s.hits_local > 0,
            "both tiers serve: {s:?}"
        );
    }
    assert_eq!(counter.total(), 200, "nothing was computed twice");
    // Writes reached owner and backup: every entry is held by two nodes.
    for k in &ks {
        let holders = sim
            .nodes
            .iter()
            .filter(|n| n.grid.get_local(k).is_some())
            .count();
        assert!(holders >= 2, "{k} is held by {holders} node(s)");
    }
}

/// Rule (load coalescing): N concurrent callers on 3 nodes asking for the same missing keys
/// compute each key once cluster-wide; the others wait for the first claimant's put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_on_three_nodes_compute_each_key_once() {
    let sim = Sim::memory(3).await;
    sim.converge().await;
    let counter = Counter::default();
    let hot: Vec<String> = (0..20).map(|i| format!("hot-{i}")).collect();
    let mut tasks = Vec::new();
    for caller in 0..12 {
        let grid = sim.nodes[caller % 3].grid.clone();
        let (counter, hot) = (counter.clone(), hot.clone());
        tasks.push(tokio::spawn(async move {
            // Each caller asks for all hot keys plus one of its own, in its own order.
            let mut ks = hot.clone();
            ks.rotate_left(caller);
            ks.push(format!("own-{caller}"));
            let got = grid
                .get_or_compute_many(&ks, counter.compute(ms(150)))
                .await;
            for (k, v) in ks.iter().zip(got) {
                assert_eq!(v, Some(value(k)));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_key = counter.per_key.lock().clone();
    for k in &hot {
        assert_eq!(
            per_key.get(k),
            Some(&1),
            "{k} computed {:?} times",
            per_key.get(k)
        );
    }
    assert_eq!(per_key.len(), 32);
    let waits: u64 = sim
        .nodes
        .iter()
        .map(|n| n.grid.stats().coalesced_waits)
        .sum();
    let fallbacks: u64 = sim
        .nodes
        .iter()
        .map(|n| n.grid.stats().coalesce_fallbacks)
        .sum();
    assert!(waits > 0, "concurrent callers waited for the claimant");
    assert_eq!(fallbacks, 0);
}

/// Rule (coalescing fallback): keys `compute` could not produce are released, so waiters
/// stop waiting and compute themselves; nothing is cached for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_computation_releases_its_claims() {
    let sim = Sim::memory(3).await;
    sim.converge().await;
    let failing = |ks: Vec<String>| async move {
        tokio::time::sleep(ms(100)).await;
        ks.iter().map(|_| None).collect::<Vec<Option<Sym>>>()
    };
    let counter = Counter::default();
    let k = vec!["unlucky".to_string()];
    let (a, b) = (sim.nodes[0].grid.clone(), sim.nodes[1].grid.clone());
    let k2 = k.clone();
    let first = tokio::spawn(async move { a.get_or_compute_many(&k2, failing).await });
    tokio::time::sleep(ms(30)).await;
    let started = Instant::now();
    let second = b.get_or_compute_many(&k, counter.compute(ms(0))).await;
    assert_eq!(first.await.unwrap(), vec![None]);
    assert_eq!(second, vec![Some(value("unlucky"))]);
    assert_eq!(counter.total(), 1);
    // Released, not timed out (the claim lasts 3 s).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Rule (claims without computing): `claim_many` is first-come cluster-wide — the first
/// member to claim an absent key holds it, others see it pending; a put ends the claim (then
/// everyone finds the value) and a release makes the key claimable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_first_come_cluster_wide_and_end_with_a_put_or_a_release() {
    let sim = Sim::memory(3).await;
    sim.converge().await;
    let (a, b, c) = (
        sim.nodes[0].grid.clone(),
        sim.nodes[1].grid.clone(),
        sim.nodes[2].grid.clone(),
    );
    let ks = keys(40);
    let outcomes = a.claim_many(&ks).await;
    assert!(
        outcomes.iter().all(|o| *o == ClaimOutcome::Claimed),
        "{outcomes:?}"
    );
    // The same keys from the other two nodes (whatever node coordinates each): pending.
    for g in [&b, &c] {
        let outcomes = g.claim_many(&ks).await;
        assert!(
            outcomes.iter().all(|o| *o == ClaimOutcome::Pending),
            "{outcomes:?}"
        );
    }
    // A key given twice is claimed once.
    let twice = vec!["twice".to_string(), "twice".to_string()];
    assert_eq!(
        b.claim_many(&twice).await,
        vec![ClaimOutcome::Claimed, ClaimOutcome::Claimed]
    );
    // A puts half, releases the other half.
    let (put, released) = ks.split_at(20);
    a.put_many(put.iter().map(|k| (k.clone(), value(k))).collect())
        .await;
    a.release_many(released).await;
    let outcomes = c.claim_many(&ks).await;
    for (k, o) in put.iter().zip(&outcomes) {
        assert_eq!(*o, ClaimOutcome::Found(value(k)));
    }
    assert!(
        outcomes[20..].iter().all(|o| *o == ClaimOutcome::Claimed),
        "{outcomes:?}"
    );
    // Now C holds the released ones.
    let outcomes = a.claim_many(released).await;
    assert!(
        outcomes.iter().all(|o| *o == ClaimOutcome::Pending),
        "{outcomes:?}"
    );
}

/// Rule (claims see values through failures): after the member that put values dies, a
/// claim of those keys from any survivor finds them (on a backup, or through the partition's
/// new replicas while they migrate) — never claims them as absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_find_values_put_by_a_member_that_died() {
    let mut sim = Sim::memory(3).await;
    sim.converge().await;
    let ks: Vec<String> = (0..200).map(|i| format!("accepted-{i}")).collect();
    sim.nodes[0]
        .grid
        .put_many(ks.iter().map(|k| (k.clone(), value(k))).collect())
        .await;
    sim.kill(0);
    // While the table changes and partitions migrate, and after.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut rounds = 0;
    while Instant::now() < deadline {
        for g in sim.grids() {
            let outcomes = g.claim_many(&ks).await;
            for (k, o) in ks.iter().zip(&outcomes) {
                assert_eq!(*o, ClaimOutcome::Found(value(k)), "round {rounds}: {k}");
            }
        }
        rounds += 1;
        tokio::time::sleep(ms(50)).await;
    }
}

/// Rule (orphaned claims): a coordinator drops the claims of a member that left the
/// membership (dead: it will never put nor release), long before `claim_timeout`, so another
/// member can claim the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_members_claims_are_dropped_by_their_coordinators() {
    let config = GridConfig {
        claim_timeout: Duration::from_secs(600),
        ..grid_config()
    };
    let mut sim = Sim::with(Net::Memory(MemoryNetwork::new()), 3, config).await;
    sim.converge().await;
    let doomed_id = sim.nodes[2].cluster.me().id.clone();
    let table = sim.nodes[0].grid.table().unwrap();
    // Keys coordinated by the survivors (the dead node is no replica of them).
    let ks: Vec<String> = (0..400)
        .map(|i| format!("event-{i}"))
        .filter(|k| {
            let p = table.partition_of(cluster::key_hash(k));
            !table.is_replica(p, &doomed_id)
        })
        .take(30)
        .collect();
    assert_eq!(ks.len(), 30);
    let outcomes = sim.nodes[2].grid.claim_many(&ks).await;
    assert!(
        outcomes.iter().all(|o| *o == ClaimOutcome::Claimed),
        "{outcomes:?}"
    );
    let survivor = sim.nodes[0].grid.clone();
    assert!(survivor
        .claim_many(&ks)
        .await
        .iter()
        .all(|o| *o == ClaimOutcome::Pending));
    sim.kill(2);
    // The two coordinators notice the death at their own instants, so keys free up in two
    // waves: each key is Pending until its coordinator drops the dead claim, then Claimed by
    // the survivor exactly once (a key it holds itself is Pending again, so it leaves the set).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut waiting = ks.clone();
    while !waiting.is_empty() {
        let outcomes = survivor.claim_many(&waiting).await;
        let mut still = Vec::new();
        for (k, o) in waiting.iter().zip(&outcomes) {
            match o {
                ClaimOutcome::Claimed => {}
                ClaimOutcome::Pending => still.push(k.clone()),
                other => panic!("{k}: {other:?} while the dead member's claim was held"),
            }
        }
        waiting = still;
        assert!(
            Instant::now() < deadline,
            "the dead member's claims on {waiting:?} were never dropped"
        );
        tokio::time::sleep(ms(100)).await;
    }
    // Every key is now held by the survivor: nobody else may claim it.
    assert!(sim.nodes[1]
        .grid
        .claim_many(&ks)
        .await
        .iter()
        .all(|o| *o == ClaimOutcome::Pending));
}

// -------------------------------------------------------------------------------------------
// Failures, joins, leaves
// -------------------------------------------------------------------------------------------

/// Rule (backups): killing a node loses no entry — its backups serve at once — and once the
/// table changes the lost copies are re-created, so losing a second node loses nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_loses_no_entry_and_backups_are_recreated() {
    let mut sim = Sim::memory(3).await;
    sim.converge().await;
    put_all(&sim.nodes[0].grid, 600).await;
    let victim = sim.kill(1);
    // Before the table changes: callers fail over to the backups.
    for n in &sim.nodes {
        assert_eq!(
            readable(&n.grid, 600).await,
            600,
            "read through {}",
            n.cluster.me().id
        );
    }
    sim.converge().await;
    for n in &sim.nodes {
        let t = n.grid.table().unwrap();
        assert!(!t.is_member(&victim));
    }
    // Both survivors hold every partition now (2 members, 1 backup).
    let counter = Counter::default();
    sim.kill(0);
    sim.converge().await;
    let last = &sim.nodes[0].grid;
    let before = last.stats().hits_local;
    let got = last
        .get_or_compute_many(&keys(600), counter.compute(ms(0)))
        .await;
    assert!(got.iter().all(Option::is_some));
    assert_eq!(counter.total(), 0, "no entry was lost");
    assert_eq!(
        last.stats().hits_local - before,
        600,
        "all local on the last node"
    );
}

/// Rule (join): a node joining takes about 1/N of the partitions, receives them by
/// migration, and right after reads all entries — those of its partitions locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_moves_about_one_nth_and_serves_its_partitions_locally() {
    let mut sim = Sim::memory(3).await;
    sim.converge().await;
    put_all(&sim.nodes[0].grid, 1000).await;
    let before = sim.nodes[0].grid.table().unwrap();
    let i = sim.add().await;
    sim.converge().await;
    let after = sim.nodes[0].grid.table().unwrap();
    let moved = (0..271)
        .filter(|p| before.owner(*p) != after.owner(*p))
        .count();
    // About 271 / 4 = 68 owners move; the newcomer owns its quota, floor or ceil of 271 / 4.
    assert!((55..=85).contains(&moved), "{moved} owners moved");
    let new = &sim.nodes[i];
    let me = new.cluster.me().id.clone();
    assert!(
        (67..=68).contains(&after.owned_by(&me)),
        "{}",
        after.owned_by(&me)
    );
    let s = new.grid.stats();
    assert!(s.migration_entries > 0 && s.migrations_done > 0, "{s:?}");
    assert_eq!(s.migrations_running, 0);
    // Every entry is readable from the newcomer; the keys of its partitions locally.
    assert_eq!(readable(&new.grid, 1000).await, 1000);
    let mine = keys(1000)
        .iter()
        .filter(|k| after.is_replica(after.partition_of(cluster::key_hash(*k)), &me))
        .count();
    let s = new.grid.stats();
    assert_eq!(s.hits_local as usize, mine, "{s:?}");
    assert!(
        mine >= 350,
        "the newcomer holds about half the keys: {mine}"
    );
    assert_eq!(s.misses, 0);
}

/// Rule (rolling update): restarting all three nodes one at a time (graceful leave, then a
/// fresh node joins) keeps every entry, and readers keep a hit ratio above 80 % throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_every_entry_and_the_hit_ratio_high() {
    let mut sim = Sim::memory(3).await;
    sim.converge().await;
    const N: usize = 600;
    put_all(&sim.nodes[0].grid, N).await;
    // A reader hammering whichever nodes are up, round by round.
    let readers: Arc<Mutex<Vec<G>>> = Arc::new(Mutex::new(sim.grids()));
    let rounds: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let stop = Arc::new(AtomicU64::new(0));
    let reader = {
        let (readers, rounds, stop) = (readers.clone(), rounds.clone(), stop.clone());
        tokio::spawn(async move {
            let ks = keys(N);
            let mut turn = 0usize;
            while stop.load(Ordering::SeqCst) == 0 {
                let grid = {
                    let r = readers.lock();
                    r[turn % r.len()].clone()
                };
                turn += 1;
                let mut hits = 0;
                for chunk in ks.chunks(40) {
                    hits += grid
                        .get_many(chunk)
                        .await
                        .iter()
                        .filter(|v| v.is_some())
                        .count();
                }
                drop(grid);
                rounds.lock().push((hits, N));
                tokio::time::sleep(ms(5)).await;
            }
        })
    };
    for step in 0..3 {
        // The oldest node leaves gracefully...
        let old = sim.nodes[0].cluster.me().id.clone();
        readers.lock().retain(|g| g.me().id != old);
        let report = sim.leave(0).await;
        assert!(
            report.completed && report.leader_acknowledged,
            "step {step}: {report:?}"
        );
        sim.converge().await;
        // ... and a fresh one joins.
        let i = sim.add().await;
        sim.converge().await;
        readers.lock().push(sim.nodes[i].grid.clone());
        for n in &sim.nodes {
            assert_eq!(readable(&n.grid, N).await, N, "step {step}: entries lost");
        }
    }
    stop.store(1, Ordering::SeqCst);
    reader.await.unwrap();
    let rounds = rounds.lock().clone();
    assert!(rounds.len() >= 3, "{} rounds", rounds.len());
    for (i, (hits, all)) in rounds.iter().enumerate() {
        assert!(*hits * 10 > all * 8, "round {i}: hit ratio {hits}/{all}");
    }
    // None of the original nodes is left, yet no computation was needed.
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.cluster.me().id.as_str() >= "pod-4"));
}

/// Rule (hand-off): without backups a leaving node is the only holder of its partitions; it
/// pushes them to their new owners before it goes, so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_pushes_what_only_it_holds() {
    let config = GridConfig {
        backup_count: 0,
        ..grid_config()
    };
    let mut sim = Sim::with(Net::Memory(MemoryNetwork::new()), 3, config).await;
    sim.converge().await;
    put_all(&sim.nodes[0].grid, 600).await;
    let leaving_entries = sim.nodes[2].grid.stats().entries;
    assert!(leaving_entries > 0);
    let report = sim.leave(2).await;
    assert!(report.completed && report.leader_acknowledged, "{report:?}");
    assert!(report.partitions_pushed > 0);
    assert_eq!(report.entries_pushed, leaving_entries);
    sim.converge().await;
    for n in &sim.nodes {
        assert_eq!(readable(&n.grid, 600).await, 600);
    }
}

// -------------------------------------------------------------------------------------------
// Expiry, memory bound, fencing
// -------------------------------------------------------------------------------------------

/// Rule (TTL): negative entries carry an expiry; on the injected clock they are served until
/// it passes and are absent after (so the next caller computes again); other entries stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_entries_expire_on_the_injected_clock() {
    let sim = Sim::memory(3).await;
    sim.converge().await;
    let (a, b) = (&sim.nodes[0].grid, &sim.nodes[1].grid);
    a.put_many(vec![
        ("no-such-file".into(), Sym::Missing),
        ("libfoo:0x10".into(), value("libfoo:0x10")),
    ])
    .await;
    let ks = vec!["no-such-file".to_string(), "libfoo:0x10".to_string()];
    assert_eq!(
        b.get_many(&ks).await,
        vec![Some(Sym::Missing), Some(value("libfoo:0x10"))]
    );
    sim.clock.advance(Duration::from_secs(59));
    assert_eq!(b.get_many(&ks).await[0], Some(Sym::Missing));
    sim.clock.advance(Duration::from_secs(2));
    assert_eq!(
        b.get_many(&ks).await,
        vec![None, Some(value("libfoo:0x10"))]
    );
    let counter = Counter::default();
    let got = a.get_or_compute_many(&ks, counter.compute(ms(0))).await;
    assert_eq!(got[0], Some(value("no-such-file")));
    assert_eq!(counter.total(), 1, "only the expired entry is recomputed");
    let expired: u64 = sim.nodes.iter().map(|n| n.grid.stats().expired).sum();
    assert!(expired >= 1);
}

/// Rule (memory bound): a node's store never exceeds `max_bytes`; beyond it the least
/// recently used entries are evicted and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_bound_evicts_least_recently_used_entries_and_counts_them() {
    let config = GridConfig {
        max_bytes: 64 << 10,
        ..grid_config()
    };
    let sim = Sim::with(Net::Memory(MemoryNetwork::new()), 1, config).await;
    sim.converge().await;
    let g = &sim.nodes[0].grid;
    put_all(g, 2000).await;
    let s = g.stats();
    assert!(s.bytes <= 64 << 10, "{s:?}");
    assert!(s.evictions > 0 && s.entries < 2000, "{s:?}");
    assert_eq!(s.entries + s.evictions, 2000);
    // The most recent writes survived, the oldest went first.
    let recent: Vec<String> = (1990..2000).map(key).collect();
    assert!(g.get_many(&recent).await.iter().all(Option::is_some));
    assert!(g.get_many(&[key(0)]).await[0].is_none());
}

/// Rule (fencing): a table published under an epoch lower than one already seen comes from a
/// deposed leader: it is rejected and counted, whatever its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_from_a_deposed_leader_is_rejected() {
    let sim = Sim::memory(2).await;
    sim.converge().await;
    // Force a second leader term: the leader steps down, the other takes over at epoch 1 and
    // republishes the table under it.
    let li = sim
        .nodes
        .iter()
        .position(|n| n.cluster.state().is_leader)
        .unwrap();
    let follower = &sim.nodes[1 - li];
    sim.nodes[li].cluster.step_down().await;
    sim.until("the new leader republished under epoch 1", |_| {
        follower.cluster.state().is_leader && follower.grid.table().is_some_and(|t| t.epoch == 1)
    })
    .await;
    let current = follower.grid.table().unwrap();
    let mut stale = (*current).clone();
    stale.epoch = 0;
    stale.version += 100;
    let h = follower.cluster.handler();
    let rejected = follower.grid.stats().stale_tables_rejected;
    let answer = h
        .handle("grid.table", serde_json::to_vec(&stale).unwrap())
        .await;
    assert!(
        matches!(&answer, Err(cluster::RpcError::Remote(m)) if m.contains("stale leader epoch")),
        "{answer:?}"
    );
    assert_eq!(follower.grid.table().unwrap().version, current.version);
    assert_eq!(follower.grid.stats().stale_tables_rejected, rejected + 1);
    // Same epoch, older version: ignored, not an error.
    let mut older = (*current).clone();
    older.version -= 1;
    assert!(h
        .handle("grid.table", serde_json::to_vec(&older).unwrap())
        .await
        .is_ok());
    assert_eq!(follower.grid.table().unwrap().version, current.version);
}

// -------------------------------------------------------------------------------------------
// Over real TCP
// -------------------------------------------------------------------------------------------

/// Rules (routing, coalescing, backups) over real TCP with the authenticated transport: a
/// value computed on A is read on B and C without recomputation, concurrent callers compute a
/// key once, and a killed node loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_values_are_shared_computed_once_and_survive_a_node() {
    let mut sim = Sim::tcp(3).await;
    sim.converge().await;
    let counter = Counter::default();
    let ks = keys(300);
    sim.nodes[0]
        .grid
        .get_or_compute_many(&ks, counter.compute(ms(0)))
        .await;
    for n in &sim.nodes[1..] {
        let got = n
            .grid
            .get_or_compute_many(&ks, counter.compute(ms(0)))
            .await;
        assert!(got.iter().all(Option::is_some));
    }
    assert_eq!(counter.total(), 300);
    // Concurrent callers, one hot key.
    let mut tasks = Vec::new();
    for caller in 0..9 {
        let (grid, counter) = (sim.nodes[caller % 3].grid.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let got = grid
                .get_or_compute_many(&["hot".to_string()], counter.compute(ms(100)))
                .await;
            assert_eq!(got, vec![Some(value("hot"))]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.per_key.lock().get("hot"), Some(&1));
    // Kill one: the others still read everything, and converge.
    sim.kill(2);
    for n in &sim.nodes {
        assert_eq!(readable(&n.grid, 300).await, 300);
    }
    sim.converge().await;
    for n in &sim.nodes {
        assert_eq!(readable(&n.grid, 300).await, 300);
    }
    let s = sim.nodes[0].grid.stats();
    assert!(s.rpc_calls > 0 && s.rpc_p99_micros > 0, "{s:?}");
}
