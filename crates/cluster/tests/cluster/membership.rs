//! Membership: the state machine on explicit instants, then the runtime (membership +
//! election + fencing) over the in-memory network with cut links.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{
    encode_json, Cluster, ClusterConfig, ClusterEvent, DiscoveryHandle, ElectionConfig, Heartbeat,
    LeaseBackend, Membership, MembershipConfig, MemoryLease, MemoryNetwork, NodeInfo,
    HEARTBEAT_METHOD,
};

fn node(i: u8, incarnation: u64) -> NodeInfo {
    NodeInfo::new(
        format!("pod-{i}"),
        SocketAddr::from(([10, 0, 0, i], 7946)),
        incarnation,
    )
}

fn hb(n: &NodeInfo) -> Heartbeat {
    Heartbeat {
        from: n.clone(),
        leaving: false,
        leader_epoch: None,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------------------

#[test]
fn discovered_peers_are_pinged_at_once_then_every_interval() {
    let t0 = Instant::now();
    let mut m = Membership::new(node(1, 1), MembershipConfig::default());
    let peers: BTreeSet<SocketAddr> = [node(1, 1).addr, node(2, 1).addr, node(3, 1).addr].into();
    m.set_discovered(&peers, t0);
    // Our own address is never pinged.
    assert_eq!(m.due(t0), vec![node(2, 1).addr, node(3, 1).addr]);
    assert!(m.due(t0 + ms(499)).is_empty());
    assert_eq!(m.due(t0 + ms(500)).len(), 2);
    // Discovered but never answered: not a member.
    assert_eq!(m.list().ids(), vec!["pod-1"]);
}

#[test]
fn a_peer_is_a_member_while_heard_from_within_the_failure_timeout() {
    let t0 = Instant::now();
    let mut m = Membership::new(node(1, 1), MembershipConfig::default());
    m.set_discovered(&[node(2, 1).addr].into(), t0);
    let v0 = m.list().version;
    m.on_answer(node(2, 1).addr, Ok(hb(&node(2, 1))), t0);
    assert_eq!(m.list().ids(), vec!["pod-1", "pod-2"]);
    assert_eq!(m.list().version, v0 + 1);
    // Failed heartbeats alone change nothing before the timeout (one lost answer never evicts).
    m.on_answer(node(2, 1).addr, Err(()), t0 + ms(500));
    assert!(m.tick(t0 + ms(1999)).is_none());
    // Silent for failure_timeout: gone, and the version moves.
    let list = m.tick(t0 + ms(2000)).expect("changed").clone();
    assert_eq!(list.ids(), vec!["pod-1"]);
    assert_eq!(list.version, v0 + 2);
    // Answers again (SIGCONT): back.
    m.on_answer(node(2, 1).addr, Ok(hb(&node(2, 1))), t0 + ms(5000));
    assert_eq!(m.list().ids(), vec!["pod-1", "pod-2"]);
}

#[test]
fn a_peer_that_pings_us_joins_without_being_discovered_and_is_forgotten_when_silent() {
    let t0 = Instant::now();
    let mut m = Membership::new(node(1, 1), MembershipConfig::default());
    let answer = m.on_heartbeat(hb(&node(4, 9)), t0);
    assert_eq!(answer.from, node(1, 1));
    assert_eq!(m.list().ids(), vec!["pod-1", "pod-4"]);
    // We ping it back from then on.
    assert_eq!(m.due(t0 + ms(500)), vec![node(4, 9).addr]);
    m.tick(t0 + ms(2500));
    assert_eq!(m.list().ids(), vec!["pod-1"]);
    // Not discovered and silent: no longer pinged either.
    assert!(m.due(t0 + ms(10_000)).is_empty());
}

#[test]
fn a_leaving_peer_is_dropped_at_once_until_a_new_incarnation_appears() {
    let t0 = Instant::now();
    let mut m = Membership::new(node(1, 1), MembershipConfig::default());
    m.set_discovered(&[node(2, 1).addr].into(), t0);
    m.on_answer(node(2, 1).addr, Ok(hb(&node(2, 1))), t0);
    let mut leaving = hb(&node(2, 1));
    leaving.leaving = true;
    m.on_heartbeat(leaving, t0 + ms(100));
    assert_eq!(m.list().ids(), vec!["pod-1"]);
    // Discovery still lists it and it still answers (handing off): stays out.
    m.on_answer(node(2, 1).addr, Ok(hb(&node(2, 1))), t0 + ms(600));
    assert_eq!(m.list().ids(), vec!["pod-1"]);
    // The pod restarted at the same address: a new incarnation is a new member.
    m.on_answer(node(2, 2).addr, Ok(hb(&node(2, 2))), t0 + ms(1100));
    assert_eq!(m.list().ids(), vec!["pod-1", "pod-2"]);
    assert_eq!(m.list().get("pod-2").unwrap().info.incarnation, 2);
}

#[test]
fn one_id_at_two_addresses_keeps_the_newer_incarnation() {
    let t0 = Instant::now();
    let mut m = Membership::new(node(1, 1), MembershipConfig::default());
    let old = node(2, 1);
    let mut new = node(2, 5);
    new.addr = SocketAddr::from(([10, 0, 0, 99], 7946));
    m.on_heartbeat(hb(&old), t0);
    m.on_heartbeat(hb(&new), t0 + ms(10));
    assert_eq!(m.list().members.len(), 2);
    assert_eq!(m.list().get("pod-2").unwrap().info, new);
}

#[test]
fn config_rejects_a_failure_timeout_within_two_heartbeats() {
    let c = MembershipConfig {
        heartbeat_interval: ms(500),
        failure_timeout: ms(1000),
    };
    assert!(c.validate().is_err());
    assert!(MembershipConfig::default().validate().is_ok());
}

// ---------------------------------------------------------------------------------------------
// The runtime over the in-memory network (real tokio time, short timings)
// ---------------------------------------------------------------------------------------------

fn fast_config(me: NodeInfo) -> ClusterConfig {
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

struct Sim {
    net: MemoryNetwork,
    lease: MemoryLease,
    nodes: Vec<Cluster>,
}

impl Sim {
    fn start(n: u8) -> Sim {
        let net = MemoryNetwork::new();
        let lease = MemoryLease::new();
        let all: BTreeSet<SocketAddr> = (1..=n).map(|i| node(i, 1).addr).collect();
        let nodes = (1..=n)
            .map(|i| Self::node(&net, &lease, &all, node(i, 1)))
            .collect();
        Sim { net, lease, nodes }
    }

    fn node(
        net: &MemoryNetwork,
        lease: &MemoryLease,
        peers: &BTreeSet<SocketAddr>,
        me: NodeInfo,
    ) -> Cluster {
        let addr = me.addr;
        let backend: Arc<dyn LeaseBackend> = Arc::new(lease.new_client());
        let c = Cluster::start(
            fast_config(me),
            Arc::new(net.transport(addr)),
            DiscoveryHandle::fixed(peers.clone()),
            Some(backend),
        )
        .unwrap();
        net.register(addr, c.handler());
        c
    }

    async fn until(&self, what: &str, f: impl Fn(&Sim) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(ms(20)).await;
        }
    }
}

fn ids(c: &Cluster) -> Vec<String> {
    c.state()
        .members
        .ids()
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn leaders(nodes: &[Cluster]) -> Vec<String> {
    nodes
        .iter()
        .filter(|c| c.state().is_leader)
        .map(|c| c.me().id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_on_members_and_one_leader_everyone_agrees_on() {
    let sim = Sim::start(3);
    sim.until("full membership and one leader everyone names", |s| {
        s.nodes.iter().all(|c| ids(c).len() == 3)
            && leaders(&s.nodes).len() == 1
            && s.nodes
                .iter()
                .all(|c| c.state().leader.as_deref() == Some(leaders(&s.nodes)[0].as_str()))
    })
    .await;
    let leader = leaders(&sim.nodes)[0].clone();
    for c in &sim.nodes {
        let st = c.state();
        let addr = sim
            .nodes
            .iter()
            .find(|n| n.me().id == leader)
            .unwrap()
            .me()
            .addr;
        assert_eq!(
            st.leader_addr,
            Some(addr),
            "leader address resolved through membership"
        );
        // client-go: the first holder creates the lease with leaseTransitions 0.
        assert_eq!(st.epoch, 0);
        assert!(st
            .transitions
            .iter()
            .any(|t| t.leader.as_deref() == Some(&leader)));
    }
    // Both kinds of events are broadcast: the leader leaves, and a follower hears of the new
    // member list and of the new leader.
    let follower = sim.nodes.iter().find(|c| c.me().id != leader).unwrap();
    let mut events = follower.events();
    let li = sim.nodes.iter().position(|c| c.me().id == leader).unwrap();
    sim.nodes[li].shutdown().await;
    let (mut members, mut leader_changed) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(members && leader_changed) {
        assert!(
            Instant::now() < deadline,
            "events: members {members}, leader {leader_changed}"
        );
        match tokio::time::timeout(ms(100), events.recv()).await {
            Ok(Ok(ClusterEvent::MembersChanged(list))) => {
                members |= !list.ids().contains(&leader.as_str())
            }
            Ok(Ok(ClusterEvent::LeaderChanged { leader: l, .. })) => {
                leader_changed |= l.as_deref() != Some(leader.as_str())
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_drops_the_member_at_once_and_hands_the_lease_over() {
    let sim = Sim::start(3);
    sim.until("converged", |s| {
        s.nodes.iter().all(|c| ids(c).len() == 3) && leaders(&s.nodes).len() == 1
    })
    .await;
    let li = sim.nodes.iter().position(|c| c.state().is_leader).unwrap();
    let leaving = sim.nodes[li].clone();
    let gone = leaving.me().id.clone();
    let started = Instant::now();
    leaving.shutdown().await;
    let rest: Vec<Cluster> = sim
        .nodes
        .iter()
        .filter(|c| c.me().id != gone)
        .cloned()
        .collect();
    // Dropped by the others without waiting for the failure timeout, while it still answers.
    sim.until("the others drop the leaving node", |_| {
        rest.iter().all(|c| !ids(c).contains(&gone))
    })
    .await;
    sim.until("a new leader", |_| leaders(&rest).len() == 1)
        .await;
    // Released lease: a standby takes over at its next retry, well before lease_duration.
    assert!(started.elapsed() < ms(600), "{:?}", started.elapsed());
    let (record, _) = sim.lease.snapshot().unwrap();
    assert_eq!(record.lease_transitions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_drops_out_and_rejoins_when_healed() {
    let sim = Sim::start(3);
    sim.until("converged", |s| s.nodes.iter().all(|c| ids(c).len() == 3))
        .await;
    let victim = sim.nodes[2].me().clone();
    sim.net.isolate(victim.addr);
    sim.until("the others drop the isolated node", |s| {
        s.nodes[..2].iter().all(|c| !ids(c).contains(&victim.id))
            && ids(&s.nodes[2]) == vec![victim.id.clone()]
    })
    .await;
    sim.net.heal();
    sim.until("rejoined", |s| s.nodes.iter().all(|c| ids(c).len() == 3))
        .await;
    // Joining again moved the version forward, never back.
    assert!(sim.nodes[0].state().members.version >= 4);
}

/// Fencing (DESIGN: "every leader-originated message carries its epoch; receivers reject lower
/// epochs and count the rejections"): a claim under a stale epoch is rejected and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_claim_is_rejected_and_counted() {
    let sim = Sim::start(2);
    sim.until("a leader", |s| leaders(&s.nodes).len() == 1)
        .await;
    // Force a second term: the leader steps down, the other takes over at epoch 1.
    let li = sim.nodes.iter().position(|c| c.state().is_leader).unwrap();
    let follower = sim.nodes[1 - li].clone();
    sim.nodes[li].step_down().await;
    sim.until("epoch 1 observed", |_| {
        follower.state().is_leader && follower.fence().highest() == 1
    })
    .await;
    // A heartbeat claiming leadership at epoch 0 (as a paused old leader would send it).
    let stale = Heartbeat {
        from: sim.nodes[li].me().clone(),
        leaving: false,
        leader_epoch: Some(0),
    };
    let before = follower.fence().rejected();
    follower
        .handler()
        .handle(HEARTBEAT_METHOD, encode_json(&stale).unwrap())
        .await
        .unwrap();
    assert_eq!(follower.fence().rejected(), before + 1);
    sim.until("rejection in the published state", |_| {
        follower.state().stale_epoch_rejections == before + 1
    })
    .await;
    // The current epoch passes.
    let current = Heartbeat {
        leader_epoch: Some(1),
        ..stale
    };
    follower
        .handler()
        .handle(HEARTBEAT_METHOD, encode_json(&current).unwrap())
        .await
        .unwrap();
    assert_eq!(follower.fence().rejected(), before + 1);
}

#[tokio::test]
async fn unknown_methods_are_refused_and_registered_services_are_routed_by_prefix() {
    let sim = Sim::start(1);
    let c = &sim.nodes[0];
    let h = c.handler();
    assert_eq!(
        h.handle("stats.partials", vec![]).await,
        Err(cluster::RpcError::NoSuchMethod("stats.partials".into()))
    );
    let echo: Arc<dyn cluster::Handler> = Arc::new(
        |m: &str, b: Vec<u8>| -> cluster::BoxFuture<'static, Result<Vec<u8>, cluster::RpcError>> {
            let m = m.to_string();
            Box::pin(async move { Ok([m.as_bytes(), &b].concat()) })
        },
    );
    c.register("stats", echo);
    assert_eq!(
        h.handle("stats.partials", b"!".to_vec()).await,
        Ok(b"stats.partials!".to_vec())
    );
    // Garbage heartbeats are refused with a clear error, not a panic.
    assert!(matches!(
        h.handle(HEARTBEAT_METHOD, b"not json".to_vec()).await,
        Err(cluster::RpcError::Remote(_))
    ));
}

/// A node that stepped down (it no longer competes nor reads the lease) still learns the new
/// leader from the leader's heartbeat claims: it must hand its last data to someone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stepped_down_follows_the_new_leader_through_heartbeats() {
    let sim = Sim::start(3);
    sim.until("a leader", |s| leaders(&s.nodes).len() == 1)
        .await;
    let li = sim.nodes.iter().position(|c| c.state().is_leader).unwrap();
    let old = sim.nodes[li].clone();
    old.step_down().await;
    sim.until("the old leader names the new one", |s| {
        let l = leaders(&s.nodes);
        let st = old.state();
        l.len() == 1
            && l[0] != old.me().id
            && st.leader.as_deref() == Some(l[0].as_str())
            && st.epoch == 1
            && !st.is_leader
    })
    .await;
    let new = leaders(&sim.nodes)[0].clone();
    let addr = sim
        .nodes
        .iter()
        .find(|c| c.me().id == new)
        .unwrap()
        .me()
        .addr;
    assert_eq!(old.state().leader_addr, Some(addr));
}
