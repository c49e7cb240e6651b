//! Lease election: the state machine on controllable clocks, backend conformance for
//! `MemoryLease` and `FileLease`, fencing, and the async driver on tokio's paused time.
//!
//! Each test names the rule it checks (client-go `leaderelection` semantics unless noted).

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster::{
    spawn_elector, spawn_elector_with, Action, ElectionConfig, Elector, EpochFence, FileLease,
    Leadership, LeaseBackend, LeaseError, LeaseRecord, MemoryFault, MemoryLease, MicroTime,
    StaleEpoch, Version,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Harness: nodes with their own clocks over one backend, stepped in global time order.
// ---------------------------------------------------------------------------------------------

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

/// A wall clock set to 1971: any lease renewTime looks decades old to it.
fn far_past() -> SystemTime {
    UNIX_EPOCH + hours(24 * 365)
}

/// A wall clock set to the year 2300.
fn far_future() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(10_413_792_000)
}

/// Polls a future that must be ready at once (every `MemoryLease` future is).
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a MemoryLease future was pending"),
    }
}

/// One elector with its own monotonic clock (`mono` at global time zero) and wall clock.
struct Node<B> {
    el: Elector,
    backend: B,
    mono: Instant,
    wall: SystemTime,
    /// Global time of its next poll; `None` once stopped.
    wake: Option<Duration>,
    /// A paused node is not stepped, but still believes what it believed (a frozen process).
    paused: bool,
    /// Every I/O action it performed, with the global time.
    log: Vec<(Duration, Action)>,
}

impl<B: LeaseBackend> Node<B> {
    fn leads(&self, t: Duration) -> bool {
        self.el.is_leader(self.mono + t)
    }

    fn leadership(&self, t: Duration) -> Leadership {
        self.el.leadership(self.mono + t)
    }

    /// Polls at global time `t`, performing I/O at once, until the elector sleeps or stops.
    async fn step(&mut self, t: Duration) {
        let now = self.mono + t;
        let wall = self.wall + t;
        for _ in 0..10 {
            let action = self.el.poll(now, wall);
            match action.clone() {
                Action::Read => {
                    let result = self.backend.get().await;
                    self.el.on_read(now, result);
                }
                Action::Create(record) => {
                    let result = self.backend.create(record).await;
                    self.el.on_write(now, result);
                }
                Action::Update { record, expected } => {
                    let result = self.backend.update(record, &expected).await;
                    self.el.on_write(now, result);
                }
                Action::SleepUntil(at) => {
                    assert!(at > now, "sleep until a past instant");
                    self.wake = Some(at.duration_since(self.mono));
                    return;
                }
                Action::Stopped => {
                    self.wake = None;
                    return;
                }
            }
            self.log.push((t, action));
        }
        panic!("elector did more than 10 calls without sleeping at {t:?}");
    }

    /// Global times of its writes (creates and updates).
    fn writes(&self) -> Vec<Duration> {
        self.log
            .iter()
            .filter(|(_, a)| !matches!(a, Action::Read))
            .map(|(t, _)| *t)
            .collect()
    }
}

/// Nodes stepped in the order of their wake-up times; after every step, asserts that at most
/// one node considers itself leader at that moment.
struct World<B> {
    base: Instant,
    nodes: Vec<Node<B>>,
    t: Duration,
}

impl<B: LeaseBackend> World<B> {
    fn new() -> Self {
        World {
            base: Instant::now(),
            nodes: Vec::new(),
            t: Duration::ZERO,
        }
    }

    /// Adds a node whose monotonic clock reads `base + clock_offset` at global time zero and
    /// whose wall clock reads `wall` then; it first polls at the current global time.
    fn add(
        &mut self,
        identity: &str,
        backend: B,
        clock_offset: Duration,
        wall: SystemTime,
    ) -> usize {
        let seed = self.nodes.len() as u64 + 1;
        self.nodes.push(Node {
            el: Elector::new(identity, ElectionConfig::default())
                .unwrap()
                .with_seed(seed),
            backend,
            mono: self.base + clock_offset,
            wall,
            wake: Some(self.t),
            paused: false,
            log: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn leaders(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.leads(self.t))
            .map(|n| n.el.identity())
            .collect()
    }

    fn assert_at_most_one_leader(&self) {
        let leaders = self.leaders();
        assert!(
            leaders.len() <= 1,
            "two leaders at {:?}: {leaders:?}",
            self.t
        );
    }

    /// Requests a graceful shutdown of node `i`, processed at once.
    fn shutdown(&mut self, i: usize) {
        self.nodes[i].el.shutdown();
        self.nodes[i].wake = Some(self.t);
    }

    async fn run_until(&mut self, end: Duration) {
        loop {
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| !n.paused)
                .filter_map(|(i, n)| n.wake.map(|w| (w, i)))
                .filter(|(w, _)| *w <= end)
                .min();
            let Some((wake, i)) = next else { break };
            self.t = self.t.max(wake);
            let t = self.t;
            self.nodes[i].step(t).await;
            self.assert_at_most_one_leader();
        }
        self.t = end;
        self.assert_at_most_one_leader();
    }
}

fn record(holder: Option<&str>, transitions: u64, renew: SystemTime) -> LeaseRecord {
    LeaseRecord {
        holder_identity: holder.map(str::to_owned),
        lease_duration_seconds: 15,
        acquire_time: Some(MicroTime::from_system_time(renew)),
        renew_time: Some(MicroTime::from_system_time(renew)),
        lease_transitions: transitions,
    }
}

// ---------------------------------------------------------------------------------------------
// State machine rules
// ---------------------------------------------------------------------------------------------

/// client-go: a candidate takes over only when `observedTime + leaseDuration` has passed, where
/// observedTime is when *it* first saw the current record; `renewTime` is never compared with
/// its clock. Checked with the holder's renewTime decades in the past and centuries ahead.
#[tokio::test]
async fn takeover_only_after_lease_duration_unchanged_on_the_candidates_own_clock() {
    for ghost_wall in [far_past(), far_future()] {
        let lease = MemoryLease::new();
        lease
            .create(record(Some("ghost"), 4, ghost_wall))
            .await
            .unwrap();
        let mut world = World::new();
        let b = world.add("b", lease.new_client(), hours(7), SystemTime::now());

        // Seen unchanged since t = 0; the holder renews at t = 10 s, just before expiry.
        world.run_until(secs(10.0)).await;
        let (current, version) = lease.get().await.unwrap().unwrap();
        let renewed = LeaseRecord {
            renew_time: Some(MicroTime::from_system_time(ghost_wall + secs(10.0))),
            ..current
        };
        let renewed_version = lease.update(renewed, &version).await.unwrap();

        // The candidate first sees the new version at its next read, o in (10 s, 12.4 s].
        world.run_until(secs(40.0)).await;
        let node = &world.nodes[b];
        let o = node
            .log
            .iter()
            .find(|(t, a)| *t > secs(10.0) && *a == Action::Read)
            .map(|(t, _)| *t)
            .unwrap();
        assert!(o <= secs(12.4), "reads every ≤ 1.2 × retry_period: {o:?}");
        // No write before the takeover, exactly lease_duration after that observation
        // (renewals follow every retry_period).
        assert_eq!(
            node.writes()[0],
            o + secs(15.0),
            "wall clock {ghost_wall:?}"
        );
        let (_, takeover) = node.log.iter().find(|(_, a)| *a != Action::Read).unwrap();
        let Action::Update { record, expected } = takeover else {
            panic!("takeover must be a compare-and-swap update, got {takeover:?}")
        };
        assert_eq!(*expected, renewed_version);
        assert_eq!(record.holder(), Some("b"));
        assert_eq!(record.lease_transitions, 5, "a takeover starts a new epoch");
        // Leadership comes only from a successful write, so b did not lead before it.
        assert_eq!(
            node.leadership(world.t),
            Leadership {
                leader: Some("b".into()),
                epoch: 5,
                is_leader: true
            }
        );
    }
}

/// Rule: clock offsets between pods cannot yield two leaders. Three electors whose monotonic
/// clocks are hours apart and whose wall clocks read 1971, 2300 and today share one
/// MemoryLease; a seeded random schedule interleaves their steps with request latency, partitions,
/// lost responses, crashes, restarts and graceful shutdowns. After every step at most one
/// node may consider itself leader, and each new leadership term has a higher epoch.
#[test]
fn clock_offsets_and_random_interleavings_never_yield_two_leaders() {
    let mut terms_total = 0;
    for seed in 0..12 {
        let stats = simulate(seed);
        eprintln!("seed {seed}: {stats:?}");
        assert!(
            stats.leader_ticks * 2 > stats.ticks,
            "seed {seed}: a leader most of the time: {stats:?}"
        );
        assert!(
            stats.terms >= 2,
            "seed {seed}: leadership changed hands: {stats:?}"
        );
        terms_total += stats.terms;
    }
    assert!(terms_total >= 40, "{terms_total} leadership terms in all");
}

#[derive(Debug, Default)]
struct SimStats {
    ticks: u64,
    leader_ticks: u64,
    terms: u64,
}

enum SimResult {
    Read(Result<Option<(LeaseRecord, Version)>, LeaseError>),
    Write(Result<Version, LeaseError>),
}

enum SimState {
    Idle {
        wake: Duration,
    },
    Sent {
        action: Action,
        apply_at: Duration,
    },
    Applied {
        result: SimResult,
        deliver_at: Duration,
    },
    Down {
        until: Duration,
    },
}

struct SimNode {
    identity: String,
    el: Elector,
    client: MemoryLease,
    mono: Instant,
    wall: SystemTime,
    state: SimState,
    fault_until: Duration,
    incarnation: u64,
}

impl SimNode {
    fn up(&self) -> bool {
        !matches!(self.state, SimState::Down { .. })
    }

    fn fresh_elector(identity: &str, seed: u64) -> Elector {
        Elector::new(identity, ElectionConfig::default())
            .unwrap()
            .with_seed(seed)
    }

    /// Moves the node along at global time `t`: poll, apply a request to the store (after
    /// latency), deliver its result (after more latency).
    fn advance(&mut self, t: Duration, rng: &mut StdRng) {
        let latency = |rng: &mut StdRng| Duration::from_millis(rng.gen_range(0..50));
        loop {
            let now = self.mono + t;
            match &self.state {
                SimState::Idle { wake } if t >= *wake => match self.el.poll(now, self.wall + t) {
                    Action::SleepUntil(at) => {
                        self.state = SimState::Idle {
                            wake: at.duration_since(self.mono),
                        };
                        return;
                    }
                    Action::Stopped => {
                        self.state = SimState::Down {
                            until: t + Duration::from_millis(rng.gen_range(0..10_000)),
                        };
                        return;
                    }
                    action => {
                        self.state = SimState::Sent {
                            action,
                            apply_at: t + latency(rng),
                        }
                    }
                },
                SimState::Sent { action, apply_at } if t >= *apply_at => {
                    let result = match action.clone() {
                        Action::Read => SimResult::Read(ready(self.client.get())),
                        Action::Create(record) => {
                            SimResult::Write(ready(self.client.create(record)))
                        }
                        Action::Update { record, expected } => {
                            SimResult::Write(ready(self.client.update(record, &expected)))
                        }
                        other => unreachable!("{other:?}"),
                    };
                    self.state = SimState::Applied {
                        result,
                        deliver_at: t + latency(rng),
                    };
                }
                SimState::Applied { deliver_at, .. } if t >= *deliver_at => {
                    let SimState::Applied { result, .. } =
                        std::mem::replace(&mut self.state, SimState::Idle { wake: t })
                    else {
                        unreachable!()
                    };
                    match result {
                        SimResult::Read(r) => self.el.on_read(now, r),
                        SimResult::Write(r) => self.el.on_write(now, r),
                    }
                }
                _ => return,
            }
        }
    }
}

fn simulate(seed: u64) -> SimStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = Instant::now();
    let lease = MemoryLease::new();
    let clocks = [
        ("a", Duration::ZERO, far_past()),
        ("b", hours(5), far_future()),
        ("c", hours(11), SystemTime::now()),
    ];
    let mut nodes: Vec<SimNode> = clocks
        .iter()
        .enumerate()
        .map(|(i, (id, offset, wall))| SimNode {
            identity: (*id).to_owned(),
            el: SimNode::fresh_elector(id, seed * 100 + i as u64),
            client: lease.new_client(),
            mono: base + *offset,
            wall: *wall,
            state: SimState::Idle {
                wake: Duration::from_millis(rng.gen_range(0..3000)),
            },
            fault_until: Duration::ZERO,
            incarnation: 0,
        })
        .collect();
    let faults = [MemoryFault::Unreachable, MemoryFault::LoseResponses];
    let tick = Duration::from_millis(5);
    let end = Duration::from_secs(600);
    let mut stats = SimStats::default();
    let mut last_term: Option<(String, u64, u64)> = None;
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    let mut t = Duration::ZERO;
    while t < end {
        t += tick;
        order.shuffle(&mut rng);
        for &i in &order {
            let node = &mut nodes[i];
            if t >= node.fault_until && node.client.fault() != MemoryFault::None {
                node.client.set_fault(MemoryFault::None);
            }
            if node.client.fault() == MemoryFault::None && rng.gen_bool(0.0001) {
                node.client.set_fault(*faults.choose(&mut rng).unwrap());
                node.fault_until = t + Duration::from_millis(rng.gen_range(100..20_000));
            }
            match node.state {
                SimState::Down { until } if t >= until => {
                    node.incarnation += 1;
                    node.el = SimNode::fresh_elector(&node.identity, rng.gen());
                    node.state = SimState::Idle { wake: t };
                }
                SimState::Down { .. } => continue,
                _ if rng.gen_bool(0.00002) => {
                    // Crash: gone at once, the lease stays as it was.
                    node.state = SimState::Down {
                        until: t + Duration::from_millis(rng.gen_range(0..30_000)),
                    };
                    continue;
                }
                SimState::Idle { .. } if rng.gen_bool(0.00002) => {
                    node.el.shutdown();
                    node.state = SimState::Idle { wake: t };
                }
                _ => {}
            }
            node.advance(t, &mut rng);

            let leaders: Vec<(String, u64, u64)> = nodes
                .iter()
                .filter(|n| n.up() && n.el.is_leader(n.mono + t))
                .map(|n| {
                    let l = n.el.leadership(n.mono + t);
                    (n.identity.clone(), l.epoch, n.incarnation)
                })
                .collect();
            assert!(
                leaders.len() <= 1,
                "seed {seed}: two leaders at {t:?}: {leaders:?}"
            );
            if let Some(term) = leaders.into_iter().next() {
                if let Some(last) = &last_term {
                    if *last != term {
                        assert!(
                            term.1 > last.1,
                            "seed {seed}: term {term:?} after {last:?} must have a higher epoch"
                        );
                    }
                }
                if last_term.as_ref() != Some(&term) {
                    stats.terms += 1;
                    last_term = Some(term);
                }
            }
        }
        stats.ticks += 1;
        if nodes.iter().any(|n| n.up() && n.el.is_leader(n.mono + t)) {
            stats.leader_ticks += 1;
        }
    }
    stats
}

/// client-go: a leader that cannot renew within renewDeadline stops leading; since
/// renew_deadline < lease_duration, it does so before any candidate may take over.
#[tokio::test]
async fn partitioned_leader_steps_down_at_the_renew_deadline_before_anyone_takes_over() {
    let lease = MemoryLease::new();
    let mut world = World::new();
    let a = world.add("a", lease.new_client(), Duration::ZERO, SystemTime::now());
    let b = world.add("b", lease.new_client(), hours(3), far_past());
    world.run_until(secs(3.0)).await;
    assert_eq!(world.leaders(), ["a"]);
    assert_eq!(
        world.nodes[a].writes(),
        [secs(0.0), secs(2.0)],
        "create, then renew"
    );

    // Partition a at 3 s: its last successful renewal was sent at 2 s.
    world.nodes[a].backend.set_fault(MemoryFault::Unreachable);
    world.run_until(secs(12.0) - Duration::from_nanos(1)).await;
    assert_eq!(
        world.leaders(),
        ["a"],
        "still leader just before 2 s + renew_deadline"
    );
    world.run_until(secs(12.0)).await;
    assert!(
        world.leaders().is_empty(),
        "not leader from 2 s + renew_deadline on"
    );
    world.run_until(secs(40.0)).await;
    let nb = &world.nodes[b];
    let takeover = nb.writes()[0];
    assert!(
        takeover >= secs(2.0 + 15.0),
        "b takes over only lease_duration after it saw the 2 s renewal: {takeover:?}"
    );
    assert!(takeover <= secs(2.0 + 2.4 + 15.0), "{takeover:?}");
    assert!(nb.leads(takeover));
    assert!(
        takeover - secs(12.0) >= secs(5.0),
        "margin lease_duration - renew_deadline"
    );

    // After healing, a's renewal attempts conflict: it follows b (epoch 1).
    world.nodes[a].backend.set_fault(MemoryFault::None);
    world.run_until(secs(60.0)).await;
    assert_eq!(world.leaders(), ["b"]);
    assert_eq!(
        world.nodes[a].leadership(secs(60.0)),
        Leadership {
            leader: Some("b".into()),
            epoch: 1,
            is_leader: false
        }
    );
}

/// client-go `ReleaseOnCancel`: a released lease (empty holder) is taken at the standby's next
/// retry, not after lease_duration; lease_transitions counts each change of holder and is the
/// epoch; a release keeps it.
#[tokio::test]
async fn release_on_shutdown_hands_over_at_the_next_retry_and_counts_transitions() {
    let lease = MemoryLease::new();
    let mut world = World::new();
    let a = world.add("a", lease.new_client(), Duration::ZERO, SystemTime::now());
    let b = world.add("b", lease.new_client(), hours(2), far_future());
    world.run_until(secs(5.0)).await;
    assert_eq!(world.leaders(), ["a"]);
    assert_eq!(
        world.nodes[b].leadership(secs(5.0)).leader.as_deref(),
        Some("a")
    );

    world.shutdown(a);
    world.run_until(secs(5.0)).await;
    assert!(!world.nodes[a].leads(secs(5.0)));
    assert_eq!(world.nodes[a].wake, None, "stopped after releasing");
    let (released, _) = lease.snapshot().unwrap();
    assert_eq!(released.holder(), None);
    assert_eq!(released.lease_transitions, 0, "a release keeps the epoch");

    world.run_until(secs(30.0)).await;
    let took_over = world.nodes[b].writes()[0];
    assert!(
        took_over > secs(5.0) && took_over <= secs(5.0 + 2.4),
        "at b's next poll, not after lease_duration: {took_over:?}"
    );
    assert_eq!(lease.snapshot().unwrap().0.lease_transitions, 1);
    assert_eq!(world.nodes[b].leadership(secs(30.0)).epoch, 1);

    // A new incarnation of a joins; b hands over to it the same way.
    let a2 = world.add("a", lease.new_client(), hours(9), far_past());
    world.run_until(secs(40.0)).await;
    assert_eq!(world.leaders(), ["b"]);
    world.shutdown(b);
    world.run_until(secs(40.0 + 2.4)).await;
    assert_eq!(world.leaders(), ["a"]);
    let (now_held, _) = lease.snapshot().unwrap();
    assert_eq!(now_held.holder(), Some("a"));
    assert_eq!(now_held.lease_transitions, 2);
    assert_eq!(world.nodes[a2].leadership(secs(42.4)).epoch, 2);
}

/// A renewal that takes effect but whose response is lost (an ambiguous failure) is recognised
/// when the lease is read back: the leader keeps leading in the same epoch instead of treating
/// its own write as someone else's.
#[tokio::test]
async fn leader_whose_renewal_response_was_lost_keeps_its_epoch() {
    let lease = MemoryLease::new();
    let mut world = World::new();
    let a = world.add("a", lease.new_client(), Duration::ZERO, SystemTime::now());
    let b = world.add("b", lease.new_client(), hours(1), far_past());
    world.run_until(secs(3.0)).await;
    // The renewal at 4 s lands, but a hears only an error.
    world.nodes[a].backend.set_fault(MemoryFault::LoseResponses);
    world.run_until(secs(5.0)).await;
    assert_eq!(
        lease.snapshot().unwrap().1.as_str(),
        "3",
        "create, renew at 2 s and 4 s"
    );
    world.nodes[a].backend.set_fault(MemoryFault::None);
    for second in 6..=40 {
        world.run_until(secs(f64::from(second))).await;
        assert_eq!(world.leaders(), ["a"], "at {second} s");
    }
    assert_eq!(lease.snapshot().unwrap().0.lease_transitions, 0);
    assert!(world.nodes[b].writes().is_empty());
}

/// The leader renews every retry_period without changing the epoch (client-go: renewals keep
/// leaderTransitions and acquireTime).
#[tokio::test]
async fn renewals_keep_epoch_and_acquire_time() {
    let lease = MemoryLease::new();
    let mut world = World::new();
    let a = world.add("a", lease.new_client(), Duration::ZERO, SystemTime::now());
    world.run_until(secs(0.0)).await;
    let (first, _) = lease.snapshot().unwrap();
    world.run_until(secs(9.0)).await;
    assert_eq!(
        world.nodes[a].writes(),
        [0.0, 2.0, 4.0, 6.0, 8.0].map(secs),
        "one renewal per retry_period"
    );
    let (later, version) = lease.snapshot().unwrap();
    assert_eq!(version.as_str(), "5");
    assert_eq!(later.lease_transitions, 0);
    assert_eq!(later.acquire_time, first.acquire_time);
    assert_ne!(later.renew_time, first.renew_time);
}

// ---------------------------------------------------------------------------------------------
// Backend conformance: the same suite for MemoryLease and FileLease
// ---------------------------------------------------------------------------------------------

/// LeaseBackend contract: create / get / compare-and-swap update, seen by two clients.
pub(crate) async fn conformance_cas<B: LeaseBackend>(a: B, b: B) {
    let t = SystemTime::now();
    assert!(a.get().await.unwrap().is_none());
    let missing = a.update(record(Some("a"), 0, t), &Version::new("1")).await;
    assert!(matches!(missing, Err(LeaseError::NotFound)), "{missing:?}");

    let v1 = a.create(record(Some("a"), 0, t)).await.unwrap();
    assert_eq!(
        b.get().await.unwrap(),
        Some((record(Some("a"), 0, t), v1.clone()))
    );

    // Create on an existing lease: AlreadyExists, nothing changes.
    let again = b.create(record(Some("b"), 0, t)).await;
    assert!(matches!(again, Err(LeaseError::AlreadyExists)), "{again:?}");
    assert_eq!(a.get().await.unwrap().unwrap().1, v1);

    // CAS at the current version succeeds with a new version.
    let v2 = b.update(record(Some("b"), 1, t), &v1).await.unwrap();
    assert_ne!(v2, v1);

    // A stale version gets Conflict and changes nothing.
    let stale = a.update(record(Some("a"), 2, t), &v1).await;
    assert!(
        matches!(&stale, Err(LeaseError::Conflict { expected }) if *expected == v1),
        "{stale:?}"
    );
    assert!(stale.unwrap_err().is_lost_race());
    assert_eq!(
        a.get().await.unwrap(),
        Some((record(Some("b"), 1, t), v2.clone()))
    );

    let v3 = a.update(record(None, 1, t), &v2).await.unwrap();
    assert!(v3 != v1 && v3 != v2, "versions are never reused");
    assert_eq!(b.get().await.unwrap(), Some((record(None, 1, t), v3)));
}

/// A two-elector election over the backend: first come leads; release hands over at the next
/// poll; a frozen leader is outwaited (lease_duration after the last version seen) and never
/// overlaps with its successor.
pub(crate) async fn conformance_election<B: LeaseBackend>(mut client: impl FnMut() -> B) {
    let mut world = World::new();
    let a = world.add("a", client(), Duration::ZERO, SystemTime::now());
    let b = world.add("b", client(), hours(4), far_future());
    world.run_until(secs(1.0)).await;
    assert_eq!(world.leaders(), ["a"]);

    world.shutdown(a);
    world.run_until(secs(1.0 + 2.4)).await;
    assert_eq!(world.leaders(), ["b"]);
    assert_eq!(world.nodes[b].leadership(world.t).epoch, 1);

    // b freezes at 10 s (it still believes it leads until its renew deadline); a2 arrives.
    world.run_until(secs(10.0)).await;
    let last_renewal = *world.nodes[b].writes().last().unwrap();
    world.nodes[b].paused = true;
    let a2 = world.add("a", client(), hours(6), far_past());
    world.run_until(secs(40.0)).await;
    let takeover = world.nodes[a2].writes()[0];
    // a2 first read the lease at 10 s and saw b's last renewal unchanged from then on.
    assert_eq!(takeover, secs(10.0 + 15.0));
    assert!(
        !world.nodes[b].leads(takeover),
        "b stepped down at {last_renewal:?} + 10 s"
    );
    assert_eq!(world.leaders(), ["a"]);
    assert_eq!(world.nodes[a2].leadership(world.t).epoch, 2);
}

#[tokio::test]
async fn memory_lease_conformance() {
    let lease = MemoryLease::new();
    conformance_cas(lease.clone(), lease.new_client()).await;
    let lease = MemoryLease::new();
    conformance_election(|| lease.new_client()).await;
}

#[tokio::test]
async fn file_lease_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cas.json");
    conformance_cas(FileLease::new(&path), FileLease::new(&path)).await;
    let path = dir.path().join("election/leader.json");
    conformance_election(|| FileLease::new(&path)).await;
}

/// FileLease: compare-and-swap is atomic across independent clients (separate open files, as
/// separate processes have): two threads incrementing through CAS lose no update.
#[test]
fn file_lease_cas_from_two_threads_loses_no_update() {
    const PER_THREAD: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.json");
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    };
    runtime()
        .block_on(FileLease::new(&path).create(record(None, 0, SystemTime::now())))
        .unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = ["x", "y"]
        .into_iter()
        .map(|me| {
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let lease = FileLease::new(path);
                barrier.wait();
                runtime().block_on(async {
                    let (mut done, mut conflicts) = (0, 0);
                    while done < PER_THREAD {
                        let (current, version) = lease.get().await.unwrap().unwrap();
                        let next = LeaseRecord {
                            holder_identity: Some(me.into()),
                            lease_transitions: current.lease_transitions + 1,
                            ..current
                        };
                        match lease.update(next, &version).await {
                            Ok(_) => done += 1,
                            Err(LeaseError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    conflicts
                })
            })
        })
        .collect();
    let conflicts: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let (last, version) = runtime()
        .block_on(FileLease::new(&path).get())
        .unwrap()
        .unwrap();
    assert_eq!(
        last.lease_transitions,
        2 * PER_THREAD,
        "{conflicts} conflicts"
    );
    assert_eq!(version.as_str(), (2 * PER_THREAD + 1).to_string());
}

// ---------------------------------------------------------------------------------------------
// Fencing
// ---------------------------------------------------------------------------------------------

/// Fencing (ours): receivers reject epochs lower than the highest seen and count rejections;
/// equal epochs (same leader term) pass.
#[test]
fn epoch_fence_rejects_lower_epochs_and_counts_them() {
    let fence = EpochFence::new();
    assert_eq!(fence.check(3), Ok(()));
    assert_eq!(fence.check(3), Ok(()));
    assert_eq!(
        fence.check(2),
        Err(StaleEpoch {
            epoch: 2,
            highest: 3
        })
    );
    assert_eq!(fence.check(5), Ok(()));
    assert_eq!(
        fence.check(4),
        Err(StaleEpoch {
            epoch: 4,
            highest: 5
        })
    );
    assert_eq!(
        fence.check(0),
        Err(StaleEpoch {
            epoch: 0,
            highest: 5
        })
    );
    assert_eq!(fence.highest(), 5);
    assert_eq!(fence.rejected(), 3);
    assert!(fence
        .check(1)
        .unwrap_err()
        .to_string()
        .contains("stale leader epoch 1"));
}

#[test]
fn epoch_fence_is_consistent_under_concurrent_checks() {
    let fence = Arc::new(EpochFence::new());
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let fence = Arc::clone(&fence);
            std::thread::spawn(move || {
                (0..1000u64)
                    .filter(|i| fence.check(i * 4 + k).is_err())
                    .count() as u64
            })
        })
        .collect();
    let rejected: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(fence.highest(), 3999);
    assert_eq!(fence.rejected(), rejected);
}

// ---------------------------------------------------------------------------------------------
// Async driver
// ---------------------------------------------------------------------------------------------

fn fast() -> ElectionConfig {
    ElectionConfig {
        lease_duration: Duration::from_millis(300),
        renew_deadline: Duration::from_millis(200),
        retry_period: Duration::from_millis(50),
    }
}

fn spawn(lease: &MemoryLease, identity: &str, seed: u64) -> cluster::ElectorHandle {
    let elector = Elector::new(identity, fast()).unwrap().with_seed(seed);
    spawn_elector_with(lease.clone(), elector)
}

async fn sample_exactly_one_leader(handles: &[&cluster::ElectorHandle], samples: usize) {
    for _ in 0..samples {
        let leaders = handles.iter().filter(|h| h.current().is_leader).count();
        assert_eq!(leaders, 1);
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
}

/// Driver: two electors over one lease, exactly one leads; shutting the leader down releases
/// the lease and the other leads within one jittered retry (≤ 60 ms), not after
/// lease_duration (the record says 1 s).
#[tokio::test(start_paused = true)]
async fn driver_exactly_one_leads_and_shutdown_hands_over_quickly() {
    let lease = MemoryLease::new();
    let a = spawn(&lease.new_client(), "a", 1);
    let b = spawn(&lease.new_client(), "b", 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    sample_exactly_one_leader(&[&a, &b], 300).await;

    let (leader, standby) = if a.current().is_leader {
        (a, b)
    } else {
        (b, a)
    };
    let epoch = leader.current().epoch;
    assert_eq!(standby.current().leader.as_deref(), Some(leader.identity()));
    let leader_rx = leader.leadership();
    let mut standby_rx = standby.leadership();
    let started = tokio::time::Instant::now();
    leader.shutdown().await;
    assert!(
        !leader_rx.borrow().is_leader,
        "stopped leader publishes is_leader = false"
    );
    tokio::time::timeout(Duration::from_secs(2), standby_rx.wait_for(|l| l.is_leader))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(61), "hand-over took {took:?}");
    assert_eq!(standby.current().epoch, epoch + 1);
    let (held, _) = lease.snapshot().unwrap();
    assert_eq!(held.holder(), Some(standby.identity()));
    assert_eq!(held.lease_transitions, epoch + 1);
    standby.shutdown().await;
    assert_eq!(lease.snapshot().unwrap().0.holder(), None);
}

/// Driver: dropping the handle also steps down and releases (best effort, in the background).
#[tokio::test(start_paused = true)]
async fn driver_drop_releases_the_lease() {
    let lease = MemoryLease::new();
    let a = spawn(&lease.new_client(), "a", 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(a.current().is_leader);
    let b = spawn(&lease.new_client(), "b", 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut rx = b.leadership();
    drop(a);
    tokio::time::timeout(Duration::from_millis(70), rx.wait_for(|l| l.is_leader))
        .await
        .expect("b leads within one retry after a's handle was dropped")
        .unwrap();
}

/// Driver: a partitioned leader publishes is_leader = false by its renew deadline (200 ms after
/// its last renewal), and only after that does the standby take over (≥ lease_duration after
/// it last saw the lease change; the record's 1 s rounds the 300 ms up).
#[tokio::test(start_paused = true)]
async fn driver_partitioned_leader_steps_down_before_the_standby_takes_over() {
    let lease = MemoryLease::new();
    let (ca, cb) = (lease.new_client(), lease.new_client());
    let a = spawn(&ca, "a", 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = spawn(&cb, "b", 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.current().is_leader && !b.current().is_leader);

    ca.set_fault(MemoryFault::Unreachable);
    let cut = tokio::time::Instant::now();
    let (mut a_rx, mut b_rx) = (a.leadership(), b.leadership());
    a_rx.wait_for(|l| !l.is_leader).await.unwrap();
    let stepped_down = cut.elapsed();
    assert!(b_rx.borrow().leader.as_deref() == Some("a") && !b_rx.borrow().is_leader);
    b_rx.wait_for(|l| l.is_leader).await.unwrap();
    let took_over = cut.elapsed();
    assert!(
        stepped_down <= Duration::from_millis(200),
        "{stepped_down:?}"
    );
    assert!(took_over >= Duration::from_millis(950), "{took_over:?}");
    assert!(took_over <= Duration::from_millis(1100), "{took_over:?}");
    assert_eq!(b.current().epoch, 1);

    // Healed, a finds b's lease and follows.
    ca.set_fault(MemoryFault::None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sample_exactly_one_leader(&[&a, &b], 50).await;
    assert_eq!(a.current().leader.as_deref(), Some("b"));
    assert_eq!(a.current().epoch, 1);
}

/// Driver on FileLease in real time (blocking-pool I/O): one leader; release hands over well
/// before the 3 s a takeover of an unreleased lease would need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_over_file_lease_hands_over_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.json");
    let config = ElectionConfig {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(50),
    };
    let a = spawn_elector(FileLease::new(&path), "a", config).unwrap();
    let mut a_rx = a.leadership();
    tokio::time::timeout(Duration::from_secs(5), a_rx.wait_for(|l| l.is_leader))
        .await
        .unwrap()
        .unwrap();
    let b = spawn_elector(FileLease::new(&path), "b", config).unwrap();
    let mut b_rx = b.leadership();
    tokio::time::timeout(
        Duration::from_secs(5),
        b_rx.wait_for(|l| l.leader.as_deref() == Some("a")),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!b.current().is_leader);
    let started = Instant::now();
    a.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), b_rx.wait_for(|l| l.is_leader))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.current().epoch, 1);
    b.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"holderIdentity\": null"), "{text}");
}

#[test]
fn spawn_rejects_invalid_configuration() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bad = ElectionConfig {
            retry_period: Duration::from_secs(9),
            ..ElectionConfig::default()
        };
        let err = spawn_elector(MemoryLease::new(), "a", bad).unwrap_err();
        assert!(matches!(err, LeaseError::InvalidConfig(_)), "{err}");
    });
}
