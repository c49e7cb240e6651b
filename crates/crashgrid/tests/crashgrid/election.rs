//! Cluster core with real processes on loopback: election, failover by SIGKILL, handover by
//! SIGTERM, self-demotion after SIGSTOP, membership after leave and join, `crashgrid status`.
//!
//! Timings: lease 2 s, renew deadline 1.5 s, retry 0.25 s, heartbeats 0.2 s (procs.rs).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::procs::{ProcCluster, LEASE_MS, RETRY_MS};

/// Polls until `f` gives `Some`, or fails with `what` after `within`.
async fn until<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// client-go: a candidate takes over only after the record stayed unchanged for leaseDuration
/// on its own clock, retrying every retryPeriod (with up to 1.2× jitter); so after SIGKILL of
/// the leader another node leads within leaseDuration + 1.2 × retryPeriod of the last renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_elects_another_within_lease_duration_plus_retry_period() {
    let mut c = ProcCluster::start(3, &[]).await;
    let (old, epoch) = c.converged(3, Duration::from_secs(30)).await;
    let li = c.index_of(&old);
    c.nodes[li].kill9();
    let killed = Instant::now();
    let (new, new_epoch) = until(Duration::from_secs(20), "a new leader", || async {
        c.agreed_leader().await.filter(|(l, _)| *l != old)
    })
    .await;
    let took = killed.elapsed();
    // Bound from the algorithm, plus 0.5 s for process scheduling and this test's polling.
    let bound = Duration::from_millis(LEASE_MS + RETRY_MS * 12 / 10 + 500);
    assert!(took <= bound, "failover took {took:?}, bound {bound:?}");
    assert_eq!(new_epoch, epoch + 1, "leaseTransitions counts the takeover");
    assert_ne!(new, old);
    // The survivors drop the dead node from their member list.
    c.converged(2, Duration::from_secs(10)).await;
    let ni = c.index_of(&new);
    assert!(c.nodes[ni]
        .log()
        .contains(&format!("The cluster has a new leader: {new}")));
}

/// On graceful shutdown the leader releases the lease, so a standby takes over at its next
/// retry instead of after leaseDuration (Camel/client-go ReleaseOnCancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_over_in_under_a_second() {
    let mut c = ProcCluster::start(3, &[]).await;
    let (old, epoch) = c.converged(3, Duration::from_secs(30)).await;
    let li = c.index_of(&old);
    let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    c.nodes[li].signal(Signal::SIGTERM);
    let sent = Instant::now();
    let (new, new_epoch) = until(Duration::from_secs(10), "a new leader", || async {
        c.agreed_leader_of(&others).await.filter(|(l, _)| *l != old)
    })
    .await;
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(1), "handover took {took:?}");
    assert_eq!(new_epoch, epoch + 1);
    assert_ne!(new, old);
    let status = c.nodes[li].terminate();
    assert!(status.success(), "graceful exit, got {status}");
    // It left: the others drop it without waiting for the failure timeout.
    c.converged(2, Duration::from_secs(5)).await;
}

/// A leader paused past its lease (SIGSTOP) is replaced; when it resumes (SIGCONT) it finds a
/// newer record, demotes itself, and the others never go back to its epoch: the fence keeps
/// the highest epoch and rejects lower ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_leader_demotes_itself_after_sigcont_and_its_old_epoch_is_not_accepted() {
    let c = ProcCluster::start(3, &[]).await;
    let (old, epoch) = c.converged(3, Duration::from_secs(30)).await;
    let li = c.index_of(&old);
    let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    c.nodes[li].signal(Signal::SIGSTOP);
    let (new, new_epoch) = until(Duration::from_secs(20), "a new leader", || async {
        c.agreed_leader_of(&others).await.filter(|(l, _)| *l != old)
    })
    .await;
    assert_eq!(new_epoch, epoch + 1);
    c.nodes[li].signal(Signal::SIGCONT);
    // The old leader demotes itself and follows the new one.
    let v: Value = until(Duration::from_secs(10), "old leader demoted", || async {
        c.view(li)
            .await
            .filter(|v| v["is_leader"] == Value::Bool(false) && v["leader"] == new.as_str())
    })
    .await;
    assert_eq!(v["epoch"], new_epoch);
    // For a while after the resume, every node names the new leader at the new epoch, and no
    // follower recorded the old leader at any epoch after the takeover.
    for _ in 0..20 {
        for i in 0..3 {
            let v = c.view(i).await.expect("answers");
            assert_eq!(v["leader"], new.as_str(), "node {i}: {v}");
            assert_eq!(v["epoch"], new_epoch, "node {i}: {v}");
            let transitions = v["transitions"].as_array().unwrap();
            let takeover = transitions
                .iter()
                .position(|t| t["epoch"] == new_epoch)
                .expect("the takeover is recorded");
            assert!(
                transitions[takeover..]
                    .iter()
                    .all(|t| t["epoch"].as_u64() >= Some(new_epoch)),
                "node {i} went back to an older epoch: {transitions:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.converged(3, Duration::from_secs(10)).await;
}

/// Membership: a node that leaves is dropped by the others; when it comes back (a new
/// incarnation at the same address) everyone lists it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_converges_after_a_node_leaves_and_joins() {
    let mut c = ProcCluster::start(3, &[]).await;
    let v0 = c.view(0).await.unwrap()["membership_version"]
        .as_u64()
        .unwrap();
    // Stop a follower (not the leader, so the leader stays put).
    let (leader, _) = c.converged(3, Duration::from_secs(30)).await;
    let fi = (0..3).find(|&i| c.nodes[i].id != leader).unwrap();
    let incarnation_before = member_incarnation(&c, leader.as_str(), &c.nodes[fi].id).await;
    assert!(c.nodes[fi].terminate().success());
    c.converged(2, Duration::from_secs(10)).await;
    c.restart(fi);
    c.converged(3, Duration::from_secs(30)).await;
    let incarnation_after = member_incarnation(&c, leader.as_str(), &c.nodes[fi].id).await;
    assert!(
        incarnation_after > incarnation_before,
        "a restart is a new incarnation"
    );
    let li = c.index_of(&leader);
    let v1 = c.view(li).await.unwrap()["membership_version"]
        .as_u64()
        .unwrap();
    assert!(
        v1 >= v0 + 2,
        "leave and join each moved the version: {v0} -> {v1}"
    );
    assert!(c.nodes[li]
        .log()
        .contains("The list of cluster members has changed: [node-1, node-2, node-3]"));
}

async fn member_incarnation(c: &ProcCluster, at: &str, id: &str) -> u64 {
    let v = c.view(c.index_of(at)).await.unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["incarnation"].as_u64())
        .unwrap()
}

/// `crashgrid status --url` prints the members, the leader and the lease timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_the_cluster_table() {
    let c = ProcCluster::start(3, &[]).await;
    let (leader, epoch) = c.converged(3, Duration::from_secs(30)).await;
    let url = c.nodes[0].url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_crashgrid"))
            .args(["status", "--url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("3 live member(s)"), "{text}");
    assert!(
        text.contains(&format!("leader {leader} at epoch {epoch}")),
        "{text}"
    );
    assert!(
        text.contains("lease: duration 2s, renew deadline 1.5s, retry period 0.25s"),
        "{text}"
    );
    for n in &c.nodes {
        let row = text
            .lines()
            .find(|l| l.starts_with(&n.id))
            .unwrap_or_else(|| panic!("no row for {}: {text}", n.id));
        assert!(row.contains("healthy") && row.contains(&format!("127.0.0.1:{}", n.http_port)));
        assert_eq!(row.contains("leader"), n.id == leader, "{row}");
    }
    // A wrong URL is a clear error, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crashgrid"))
        .args(["status", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("asking http://127.0.0.1:1"));
}

/// An RPC connection without the cluster secret is refused and counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_without_the_cluster_secret_is_rejected_and_counted() {
    let c = ProcCluster::start(1, &[]).await;
    let addr = format!("127.0.0.1:{}", c.nodes[0].rpc_port)
        .parse()
        .unwrap();
    let intruder =
        cluster::TcpTransport::new(cluster::RpcConfig::new("not-the-cluster-secret")).unwrap();
    let got = cluster::Transport::call(
        &intruder,
        addr,
        cluster::HEARTBEAT_METHOD,
        b"{}".to_vec(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(got, Err(cluster::RpcError::Unauthenticated));
    let metrics = c
        .client
        .get(format!("{}/metrics", c.nodes[0].url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("crashgrid_rpc_rejected_unauthenticated_total 1"),
        "{metrics}"
    );
}

/// `crashgrid up` (the README's first command) starts three node processes by default, which
/// elect a leader, take the demo traffic and stop cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_three_node_cluster_with_demo_traffic() {
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_crashgrid"))
            .args(["up", "--port", "0", "--rate", "50", "--duration", "6"])
            .env("CRASHGRID_LOG", "info")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("crashgrid is up: 3 nodes"), "{stdout}");
    for id in ["node-1", "node-2", "node-3"] {
        assert!(
            stdout.contains(&format!("  {id}: dashboard http://127.0.0.1:")),
            "{stdout}"
        );
    }
    assert!(
        stderr.contains("The cluster has a new leader: node-"),
        "{stderr}"
    );
    assert!(
        stderr.contains("The list of cluster members has changed: [node-1, node-2, node-3]"),
        "{stderr}"
    );
    let accepted: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("accepted"))
        .and_then(|v| v.trim().parse().ok())
        .expect("the loadgen report");
    assert!(accepted > 0, "{stdout}");
}
