//! The statistics exchange protocol ([`stats::Exchange`]) across pods, in process: an in-memory
//! network that delivers synchronously (every message and answer through its JSON wire form),
//! cuts links, loses answers and kills pods, and a manual clock. Every test names the rule it
//! checks; none sleeps.
//!
//! Each pod's crashes carry the pod's name as app version, so the leader's breakdown by app
//! version is a per-pod count: "acknowledged means kept" is checked pod by pod.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use stats::{
    Exchange, Message, Outgoing, Partial, PodBacklog, Refusal, Reply, View, WindowConfig, STANDBYS,
};

use super::{partial_of, random_rec, T};

/// What the leader publishes in these tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pushed {
    by: u32,
    total: u64,
}

type Pod = Exchange<u32, u64, Pushed>;

struct Member {
    ex: Pod,
    alive: bool,
    /// Crashes recorded, per work item.
    items: BTreeMap<u64, u64>,
    released: BTreeSet<u64>,
    expired: BTreeSet<u64>,
}

/// Pods on an in-memory network.
struct Sim {
    pods: BTreeMap<u32, Member>,
    /// Links that lose every request (both directions).
    cut: BTreeSet<(u32, u32)>,
    /// Links that deliver requests but lose the answers (both directions).
    lose_answers: BTreeSet<(u32, u32)>,
    /// The manual clock: unix second.
    now: u64,
    next_item: u64,
    rng: StdRng,
    /// Messages delivered, by kind.
    delivered: BTreeMap<&'static str, u64>,
}

fn name(pod: u32) -> String {
    format!("pod-{pod}")
}

fn link(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(n: u32) -> Sim {
        let pods = (1..=n)
            .map(|id| {
                let ex = Exchange::new(name(id), WindowConfig::default(), T).unwrap();
                (
                    id,
                    Member {
                        ex,
                        alive: true,
                        items: BTreeMap::new(),
                        released: BTreeSet::new(),
                        expired: BTreeSet::new(),
                    },
                )
            })
            .collect();
        Sim {
            pods,
            cut: BTreeSet::new(),
            lose_answers: BTreeSet::new(),
            now: T,
            next_item: 0,
            rng: StdRng::seed_from_u64(7),
            delivered: BTreeMap::new(),
        }
    }

    fn pod(&mut self, id: u32) -> &mut Member {
        self.pods.get_mut(&id).unwrap()
    }

    fn alive(&self) -> Vec<u32> {
        self.pods
            .iter()
            .filter(|(_, m)| m.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    /// `pod` processes one item of `crashes` crashes at the current second.
    fn crash(&mut self, pod: u32, crashes: u64) -> u64 {
        self.next_item += 1;
        let item = self.next_item;
        let mut recs = Vec::new();
        for _ in 0..crashes {
            let mut r = random_rec(&mut self.rng, self.now..=self.now, 1000);
            r.app_version = name(pod);
            recs.push(r);
        }
        let partial: Partial = partial_of(&recs);
        let now = self.now;
        let m = self.pod(pod);
        m.ex.record(now, &partial, item);
        m.items.insert(item, crashes);
        item
    }

    /// Every live pod's view: `leader` leads `epoch`; members are the live pods.
    fn elect(&mut self, leader: u32, epoch: u64) {
        for id in self.alive() {
            self.view(id, leader, epoch);
        }
    }

    /// One pod's view (a pod may be left with an old one: a deposed leader that missed it).
    fn view(&mut self, id: u32, leader: u32, epoch: u64) {
        let peers = self.alive().into_iter().filter(|p| *p != id).collect();
        self.pod(id).ex.set_view(View {
            epoch,
            leading: id == leader,
            leader: (id != leader).then_some(leader),
            peers,
            highest_epoch: epoch,
        });
    }

    fn kill(&mut self, id: u32) {
        self.pod(id).alive = false;
    }

    /// One exchange round on every live pod, the leader(s) first: a leader that has to
    /// collect its term's windows does so before the followers send.
    fn round(&mut self) {
        let mut order = self.alive();
        order.sort_by_key(|id| !self.pods[id].ex.view().leading);
        for id in order {
            self.tick(id);
        }
    }

    fn tick(&mut self, id: u32) {
        let now = self.now;
        let backlog = self.backlog(id);
        self.pod(id).ex.tick(now, backlog);
        self.settle(id);
    }

    fn backlog(&self, id: u32) -> PodBacklog {
        let m = &self.pods[&id];
        PodBacklog {
            unacked: (m.items.len() - m.released.len() - m.expired.len()) as u64,
            oldest_unacked_age_ms: 0,
        }
    }

    /// The leader publishes a snapshot of its statistics to every member.
    fn publish(&mut self, leader: u32) {
        let now = self.now;
        let m = self.pod(leader);
        let total = m.ex.statistics(now).map(|s| s.total).unwrap_or(0);
        m.ex.broadcast(Pushed { by: leader, total });
        self.settle(leader);
    }

    /// Performs what `from` has to do, and what that causes, until nothing is left.
    fn settle(&mut self, from: u32) {
        let mut work = VecDeque::from([from]);
        while let Some(id) = work.pop_front() {
            let ready = self.pod(id).ex.take_ready();
            let m = self.pod(id);
            m.released.extend(ready.released);
            m.expired.extend(ready.expired);
            for out in ready.sends {
                self.deliver(id, out, &mut work);
            }
        }
    }

    fn deliver(&mut self, from: u32, out: Outgoing<u32, Pushed>, work: &mut VecDeque<u32>) {
        let now = self.now;
        // The wire: one serialisation per message, whatever the number of recipients.
        let wire = serde_json::to_vec(&out.message).unwrap();
        *self.delivered.entry(out.message.kind()).or_default() += 1;
        for (id, to) in out.to {
            let reachable = self.pods[&from].alive
                && self.pods.get(&to).is_some_and(|m| m.alive)
                && !self.cut.contains(&link(from, to));
            if !reachable {
                self.pod(from).ex.on_failure(id, now);
                continue;
            }
            let message: Message<Pushed> = serde_json::from_slice(&wire).unwrap();
            let reply = self.pod(to).ex.on_request(message, now);
            work.push_back(to);
            if self.lose_answers.contains(&link(from, to)) {
                self.pod(from).ex.on_failure(id, now);
                continue;
            }
            let reply: Reply =
                serde_json::from_slice(&serde_json::to_vec(&reply).unwrap()).unwrap();
            self.pod(from).ex.on_reply(id, reply, now);
        }
        work.push_back(from);
    }

    /// Crashes the leader counts, per pod.
    fn counted(&mut self, leader: u32) -> BTreeMap<u32, u64> {
        let now = self.now;
        let snap = self
            .pod(leader)
            .ex
            .statistics(now)
            .expect("the pod leads a collected term");
        let mut per_pod = BTreeMap::new();
        for v in &snap.breakdowns.app_version {
            let id: u32 = v.value.trim_start_matches("pod-").parse().unwrap();
            per_pod.insert(id, v.count);
        }
        assert_eq!(per_pod.values().sum::<u64>(), snap.total);
        per_pod
    }

    fn crashes_of(&self, pod: u32, items: &BTreeSet<u64>) -> u64 {
        let m = &self.pods[&pod];
        items.iter().map(|i| m.items[i]).sum()
    }

    fn recorded(&self, pod: u32) -> u64 {
        self.pods[&pod].items.values().sum()
    }

    fn released(&self, pod: u32) -> u64 {
        self.crashes_of(pod, &self.pods[&pod].released)
    }

    /// "Acknowledged means kept": every crash a pod released is counted by `leader`, and
    /// nothing is counted twice (no pod counts more than it recorded).
    fn assert_acknowledged_are_counted(&mut self, leader: u32) {
        let counted = self.counted(leader);
        for (&id, _) in self.pods.iter() {
            let c = counted.get(&id).copied().unwrap_or(0);
            assert!(
                c >= self.released(id),
                "pod {id}: {c} counted, {} acknowledged",
                self.released(id)
            );
            assert!(
                c <= self.recorded(id),
                "pod {id}: {c} counted, only {} recorded",
                self.recorded(id)
            );
        }
    }

    fn pending(&self, pod: u32) -> usize {
        self.pods[&pod].ex.pending_items()
    }
}

/// "Alone, a pod is the leader of epoch 0 and its items are acknowledged in the same round."
#[test]
fn exchange_alone_a_pod_leads_epoch_zero_and_releases_at_once() {
    let mut sim = Sim::new(1);
    sim.crash(1, 3);
    sim.round();
    assert!(sim.pods[&1].ex.leads());
    assert_eq!(sim.released(1), 3);
    assert_eq!(sim.counted(1)[&1], 3);
    assert!(sim.delivered.is_empty(), "nothing goes over the network");
}

/// "A follower's items are released only when the leader's answer says it holds them; a
/// follower cut off from the leader keeps them and resends them."
#[test]
fn exchange_follower_items_are_released_only_on_the_leaders_answer() {
    let mut sim = Sim::new(3);
    sim.elect(1, 1);
    sim.round();
    sim.cut.insert(link(2, 1));
    sim.crash(2, 4);
    sim.round();
    assert_eq!(sim.released(2), 0);
    assert_eq!(sim.pods[&2].ex.counters().partials_failed, 1);
    assert_eq!(sim.counted(1).get(&2), None);
    sim.cut.clear();
    sim.now += 1;
    sim.round();
    assert_eq!(sim.released(2), 4);
    assert_eq!(sim.counted(1)[&2], 4);
}

/// "A lost answer makes the pod resend: the leader replaces by version, so the crash is
/// counted once."
#[test]
fn exchange_a_lost_answer_is_resent_and_counted_once() {
    let mut sim = Sim::new(3);
    sim.elect(1, 1);
    sim.round();
    sim.lose_answers.insert(link(3, 1));
    sim.crash(3, 5);
    sim.round();
    assert_eq!(sim.released(3), 0, "no answer, no release");
    assert_eq!(sim.counted(1)[&3], 5, "the leader has it");
    sim.lose_answers.clear();
    for _ in 0..3 {
        sim.now += 1;
        sim.round();
    }
    assert_eq!(sim.released(3), 5);
    assert_eq!(sim.counted(1)[&3], 5, "resent, replaced, not added");
}

/// "The leader releases its own items only once both standbys hold a replica."
#[test]
fn exchange_the_leader_releases_its_own_items_only_when_both_standbys_hold_them() {
    assert_eq!(STANDBYS, 2);
    let mut sim = Sim::new(4);
    sim.elect(1, 1);
    sim.round();
    // Standbys of pod 1 are pods 2 and 3 (member order); pod 4 is not one.
    sim.cut.insert(link(1, 3));
    sim.crash(1, 2);
    sim.round();
    assert_eq!(sim.released(1), 0, "standby 3 holds no replica");
    assert!(sim.pods[&1].ex.counters().replica_failed >= 1);
    sim.cut.clear();
    sim.cut.insert(link(1, 4));
    sim.now += 1;
    sim.round();
    assert_eq!(sim.released(1), 2, "pod 4 is not a standby");
}

/// "A leader killed right after acknowledging loses nothing: the standby that takes over
/// collects its replica and every member's window before its first snapshot."
#[test]
fn exchange_leader_kill_then_standby_promotion_keeps_every_acknowledged_crash() {
    let mut sim = Sim::new(4);
    sim.elect(1, 1);
    for s in 0..10 {
        for pod in 1..=4 {
            sim.crash(pod, 1 + u64::from(pod) + s % 3);
        }
        sim.round();
        sim.publish(1);
        sim.now += 1;
    }
    let before = sim.counted(1);
    for pod in 1..=4 {
        assert_eq!(sim.released(pod), sim.recorded(pod));
    }
    sim.kill(1);
    sim.elect(2, 2);
    sim.round();
    assert!(sim.pods[&2].ex.leads());
    assert_eq!(
        sim.counted(2),
        before,
        "exact after the failover, pod 1 included"
    );
    assert_eq!(sim.pods[&2].ex.counters().collected, 2);
    sim.assert_acknowledged_are_counted(2);
}

/// "Two failures in a row lose nothing acknowledged: the leader dies, then its successor
/// dies within the same round, before it re-replicated; the second standby still holds the
/// first leader's own partials."
#[test]
fn exchange_double_failure_leader_then_successor_within_one_round() {
    let mut sim = Sim::new(4);
    sim.elect(1, 1);
    for _ in 0..5 {
        for pod in 1..=4 {
            sim.crash(pod, 2);
        }
        sim.round();
        sim.now += 1;
    }
    assert_eq!(
        sim.released(1),
        10,
        "the leader's own items are acknowledged"
    );
    sim.kill(1);
    // Pod 2 starts its term and dies before it runs a single round of its own.
    sim.elect(2, 2);
    sim.kill(2);
    sim.elect(3, 3);
    sim.round();
    assert!(sim.pods[&3].ex.leads());
    let counted = sim.counted(3);
    assert_eq!(
        counted[&1], 10,
        "pod 1's own partials survived on pod 3's replica"
    );
    assert_eq!(counted[&2], 10, "pod 2's partials too");
    sim.assert_acknowledged_are_counted(3);
}

/// "A deposed leader's snapshot is refused by every pod that knows the newer epoch."
#[test]
fn exchange_a_stale_epoch_snapshot_is_refused() {
    let mut sim = Sim::new(3);
    sim.elect(1, 1);
    sim.crash(2, 1);
    sim.round();
    sim.publish(1);
    assert_eq!(sim.pods[&3].ex.latest().unwrap().by, 1);
    // Pod 1 is paused (cut off) while pod 2 takes the lease at epoch 2; it wakes up still
    // believing it leads epoch 1 and pushes its snapshot.
    sim.cut.insert(link(1, 2));
    sim.cut.insert(link(1, 3));
    for id in [2, 3] {
        sim.view(id, 2, 2);
    }
    sim.now += 1;
    sim.round();
    sim.publish(2);
    assert_eq!(sim.pods[&3].ex.latest().unwrap().by, 2);
    assert_eq!(sim.pods[&2].ex.counters().collect_failed, 1);
    sim.cut.clear();
    assert!(sim.pods[&1].ex.leads());
    sim.publish(1);
    assert_eq!(
        sim.pods[&3].ex.latest().unwrap().by,
        2,
        "the new leader's stays"
    );
    assert_eq!(sim.pods[&3].ex.counters().snapshots_rejected, 1);
    assert_eq!(sim.pods[&2].ex.counters().snapshots_rejected, 1);
    assert!(
        !sim.pods[&1].ex.leads(),
        "told of epoch 2, the deposed leader stops leading"
    );
    // The deposed leader's replica and collection messages are fenced the same way.
    let reply = sim.pods.get_mut(&3).unwrap().ex.on_request(
        Message::Replica {
            epoch: 1,
            messages: vec![],
        },
        T,
    );
    assert_eq!(
        reply,
        Reply::Refused(Refusal::StaleEpoch {
            epoch: 1,
            highest: 2
        })
    );
    let reply = sim.pod(3).ex.on_request(Message::Collect { epoch: 1 }, T);
    assert!(matches!(reply, Reply::Refused(Refusal::StaleEpoch { .. })));
}

/// "Partials sent to a pod that stepped down are refused, stay unacknowledged, and reach
/// the new leader whole: counted once."
#[test]
fn exchange_partials_after_step_down_are_refused_and_go_to_the_new_leader() {
    let mut sim = Sim::new(3);
    sim.elect(1, 1);
    sim.round();
    sim.crash(3, 6);
    // Pod 1 steps down (it learnt of epoch 2); pod 3 has not heard yet.
    sim.view(1, 2, 2);
    sim.view(2, 2, 2);
    sim.tick(3);
    assert_eq!(sim.released(3), 0);
    assert_eq!(sim.pods[&3].ex.counters().partials_refused, 1);
    // Pod 2 starts its term; a stale view's partials are refused for their epoch too.
    sim.tick(2);
    let stale = {
        let m = sim.pod(3);
        m.ex.tick(T, PodBacklog::default());
        m.ex.take_ready()
    };
    let Message::Partials(partials) = &stale.sends[0].message else {
        panic!("a follower sends partials");
    };
    assert_eq!(partials.epoch, 1);
    let reply = sim
        .pod(2)
        .ex
        .on_request(Message::Partials(partials.clone()), T);
    assert_eq!(
        reply,
        Reply::Refused(Refusal::WrongEpoch {
            got: 1,
            expected: 2
        })
    );
    let id = stale.sends[0].to[0].0;
    sim.pod(3).ex.on_reply(id, reply, T);
    sim.view(3, 2, 2);
    sim.now += 1;
    sim.round();
    assert_eq!(sim.released(3), 6);
    assert_eq!(sim.counted(2)[&3], 6);
}

/// "A new leader accepts nothing before it collected its term's windows: partials that
/// arrive meanwhile are refused (and resent)."
#[test]
fn exchange_a_collecting_leader_refuses_partials_until_its_windows_are_in() {
    let mut sim = Sim::new(3);
    sim.elect(1, 1);
    sim.crash(2, 1);
    sim.round();
    sim.kill(1);
    sim.elect(2, 2);
    // Pod 2 starts its term; its collection from pod 3 has not been answered yet.
    let now = sim.now;
    let m = sim.pod(2);
    m.ex.tick(now, PodBacklog::default());
    let ready = m.ex.take_ready();
    assert!(!m.ex.leads());
    let m3 = sim.pod(3);
    m3.ex.tick(now, PodBacklog::default());
    let follower = m3.ex.take_ready();
    let Message::Partials(p) = &follower.sends[0].message else {
        panic!("partials");
    };
    let reply = sim.pod(2).ex.on_request(Message::Partials(p.clone()), now);
    assert_eq!(reply, Reply::Refused(Refusal::NotLeading));
    // The collection answer arrives: pod 2 leads.
    let Outgoing { to, message } = &ready.sends[0];
    assert_eq!(message, &Message::Collect { epoch: 2 });
    let answer = sim.pod(3).ex.on_request(message.clone(), now);
    sim.pod(2).ex.on_reply(to[0].0, answer, now);
    assert!(sim.pods[&2].ex.leads());
}

/// "Items no leader accepted within the window expire: handed back and counted, not kept
/// forever."
#[test]
fn exchange_items_no_leader_accepts_within_the_window_expire() {
    let mut sim = Sim::new(2);
    sim.elect(1, 1);
    sim.round();
    sim.cut.insert(link(1, 2));
    let item = sim.crash(2, 1);
    for _ in 0..299 {
        sim.now += 1;
        sim.round();
    }
    assert!(sim.pods[&2].expired.is_empty(), "still inside the window");
    sim.now += 1;
    sim.round();
    assert_eq!(sim.pods[&2].expired, BTreeSet::from([item]));
    assert_eq!(sim.pods[&2].ex.counters().expired_unacknowledged, 1);
    assert_eq!(sim.pending(2), 0);
}

/// "A follower keeps the leader's snapshot as a value; a leader ignores pushed snapshots."
#[test]
fn exchange_followers_keep_the_pushed_snapshot_and_leaders_publish_their_own() {
    let mut sim = Sim::new(3);
    sim.elect(1, 1);
    sim.crash(2, 3);
    sim.round();
    sim.publish(1);
    assert_eq!(sim.pods[&2].ex.latest(), Some(&Pushed { by: 1, total: 3 }));
    assert_eq!(sim.pods[&3].ex.counters().snapshots_received, 1);
    let reply = sim.pod(1).ex.on_request(
        Message::Snapshot {
            epoch: 1,
            snapshot: Pushed { by: 9, total: 0 },
        },
        T,
    );
    assert_eq!(reply, Reply::Taken);
    assert_eq!(sim.pods[&1].ex.latest().unwrap().by, 1);
    assert_eq!(
        sim.delivered.get("snapshot"),
        Some(&1),
        "one message, serialised once, for both members"
    );
}

/// "Under random kills, cuts and lost answers, for minutes of rounds: every crash a pod
/// released is counted by the current leader, none twice; once links heal, every live pod's
/// items are released."
#[test]
fn exchange_random_failures_never_lose_an_acknowledged_crash() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::new(5);
        let mut epoch = 1;
        let mut leader = 1;
        sim.elect(leader, epoch);
        for _ in 0..180 {
            for pod in sim.alive() {
                if rng.gen_bool(0.7) {
                    sim.crash(pod, rng.gen_range(1..4));
                }
            }
            sim.cut.clear();
            sim.lose_answers.clear();
            let alive = sim.alive();
            if rng.gen_bool(0.2) {
                let a = alive[rng.gen_range(0..alive.len())];
                let b = alive[rng.gen_range(0..alive.len())];
                if a != b {
                    if rng.gen_bool(0.5) {
                        sim.cut.insert(link(a, b));
                    } else {
                        sim.lose_answers.insert(link(a, b));
                    }
                }
            }
            if rng.gen_bool(0.03) && alive.len() > 3 {
                // The leader dies (keeping at least three pods); the first live pod takes over.
                sim.kill(leader);
                epoch += 1;
                leader = sim.alive()[0];
                sim.elect(leader, epoch);
            }
            sim.round();
            sim.publish(leader);
            if sim.pods[&leader].ex.leads() {
                sim.assert_acknowledged_are_counted(leader);
            }
            sim.now += 1;
        }
        sim.cut.clear();
        sim.lose_answers.clear();
        for _ in 0..3 {
            sim.round();
            sim.now += 1;
        }
        sim.assert_acknowledged_are_counted(leader);
        let counted = sim.counted(leader);
        for pod in sim.alive() {
            assert_eq!(sim.pending(pod), 0, "seed {seed}: pod {pod} all released");
            assert_eq!(counted.get(&pod).copied().unwrap_or(0), sim.recorded(pod));
        }
    }
}
