//! Distributed 5-minute statistics with real processes: pods map, the leader reduces, every
//! pod serves the leader's snapshot; exact against the load generator's ground truth, across
//! kill -9 of a follower and of the leader, and fenced against a resumed old leader.

use std::time::{Duration, Instant};

use crashgrid::loadgen::{self, LoadgenConfig};
use crashgrid::up::DEMO_IN_APP;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::Value;
use stats::Snapshot;

use crate::procs::{ProcCluster, LEASE_MS, RETRY_MS};

/// Waits until node `i` serves a snapshot with `total` crashes and a cluster-wide backlog of 0
/// (computed by node `by`, when given).
async fn until_total_by(
    c: &ProcCluster,
    i: usize,
    total: u64,
    by: Option<&str>,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = c.stats_of(i).await {
            if v["stats"]["total"] == total
                && v["backlog"]["unacked"] == 0
                && by.is_none_or(|b| v["node"] == b)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never served total {total}: last {} (unacked {}); logs:\n{}",
                v["stats"]["total"],
                v["backlog"]["unacked"],
                c.logs()
            );
        } else {
            assert!(Instant::now() < deadline, "node {i} does not answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_total(c: &ProcCluster, i: usize, total: u64, within: Duration) -> Value {
    until_total_by(c, i, total, None, within).await
}

fn assert_matches_truth(v: &Value, truth: &crashgrid::demo::Truth, who: &str) {
    let snap: Snapshot = serde_json::from_value(v["stats"].clone()).unwrap();
    let mismatches = truth.mismatches(&snap, 0.05);
    assert!(mismatches.is_empty(), "{who}: {mismatches:#?}");
}

/// Runs the demo traffic against every node of `c` (round-robin, as a Service would).
async fn load(c: &ProcCluster, rate: u32, secs: u64) -> loadgen::LoadgenReport {
    let urls: Vec<&str> = c.nodes.iter().map(|n| n.url.as_str()).collect();
    let report = loadgen::run(
        LoadgenConfig {
            url: urls.join(","),
            rate,
            duration: Duration::from_secs(secs),
            batch: 20,
            concurrency: 3,
            seed: 11,
            upload: true,
            gzip: true,
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(
        report.accepted, report.sent,
        "every batch accepted: {report}"
    );
    report
}

/// Snapshot totals and breakdowns equal the truth on every pod; a WebSocket on a follower
/// gets the cluster-wide snapshot; kill -9 of a follower keeps every acknowledged crash; kill
/// -9 of the leader: the new leader's totals equal the truth again within the failover time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_count_exactly_through_the_loss_of_a_follower_and_of_the_leader() {
    let in_app = DEMO_IN_APP.join(",");
    let mut c = ProcCluster::start(3, &["--in-app", &in_app]).await;
    let (leader, _) = c.converged(3, Duration::from_secs(30)).await;
    let report = load(&c, 300, 4).await;
    let truth = report.truth.clone();
    assert!(truth.total > 1000);
    for i in 0..3 {
        let v = until_total(&c, i, truth.total, Duration::from_secs(30)).await;
        assert_matches_truth(&v, &truth, &c.nodes[i].id);
        // Every pod serves the leader's snapshot.
        assert_eq!(v["node"], leader.as_str());
    }
    // Every pod took part in the map: each processed a share.
    for n in &c.nodes {
        let m = c
            .client
            .get(format!("{}/metrics", n.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let processed: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("crashgrid_crashes_processed_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(processed > truth.total / 10, "{}: {processed}", n.id);
    }

    // A dashboard on a follower: cluster-wide snapshots over WebSocket.
    let li = c.index_of(&leader);
    let fi = (0..3).find(|&i| i != li).unwrap();
    let ws_url = format!(
        "{}/api/v1/stats/live",
        c.nodes[fi].url.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a snapshot within 10 s")
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["stats"]["total"], truth.total);
    assert_eq!(v["node"], leader.as_str(), "computed by the leader");
    drop(ws);

    // kill -9 of a follower: its acknowledged contributions stay counted.
    c.nodes[fi].kill9();
    c.converged(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let v = until_total(&c, li, truth.total, Duration::from_secs(10)).await;
    assert_matches_truth(&v, &truth, "leader after the follower's death");

    // kill -9 of the leader: the last pod leads and restores the exact totals from its own
    // window and the replica it kept as standby.
    c.nodes[li].kill9();
    let killed = Instant::now();
    let si = (0..3).find(|&i| i != li && i != fi).unwrap();
    let survivor = c.nodes[si].id.clone();
    let v = until_total_by(
        &c,
        si,
        truth.total,
        Some(&survivor),
        Duration::from_secs(30),
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(
        v["node"],
        c.nodes[si].id.as_str(),
        "the survivor now computes the snapshot"
    );
    assert_matches_truth(&v, &truth, "new leader");
    // Within the failover time (lease expiry + retry) plus two publish rounds and polling.
    let bound = Duration::from_millis(LEASE_MS + RETRY_MS * 2 + 1500);
    assert!(took <= bound, "exact again after {took:?}, bound {bound:?}");
}

/// An old leader stopped past its lease and resumed cannot publish a snapshot that pods
/// accept: every pod keeps serving the new leader's snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_old_leader_cannot_publish_snapshots_that_pods_accept() {
    let in_app = DEMO_IN_APP.join(",");
    let c = ProcCluster::start(3, &["--in-app", &in_app]).await;
    let (old, _) = c.converged(3, Duration::from_secs(30)).await;
    let report = load(&c, 200, 2).await;
    let li = c.index_of(&old);
    for i in 0..3 {
        until_total(&c, i, report.truth.total, Duration::from_secs(30)).await;
    }
    let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    c.nodes[li].signal(Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        if let Some((l, _)) = c.agreed_leader_of(&others).await.filter(|(l, _)| *l != old) {
            break l;
        }
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for &i in &others {
        until_total_by(
            &c,
            i,
            report.truth.total,
            Some(&new),
            Duration::from_secs(15),
        )
        .await;
    }
    c.nodes[li].signal(Signal::SIGCONT);
    // For three seconds after the resume, the followers serve only the new leader's
    // snapshots, with the exact totals.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for &i in &others {
            let v = c.stats_of(i).await.expect("answers");
            assert_eq!(
                v["node"],
                new.as_str(),
                "node {i} served a snapshot of {}",
                v["node"]
            );
            assert_eq!(v["stats"]["total"], report.truth.total);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the old leader itself now serves the new leader's snapshot too.
    until_total_by(
        &c,
        li,
        report.truth.total,
        Some(&new),
        Duration::from_secs(10),
    )
    .await;
}

/// Rule (acknowledged means counted): `POST /api/v1/crashes?wait=counted` answers 200 only
/// once the leader accepted the events, so killing the pod that took them (kill -9, right
/// after the answer) loses none of them. Unknown or invalid query parameters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_waits_until_counted_survives_the_loss_of_its_pod() {
    let mut c = ProcCluster::start(3, &[]).await;
    let (leader, _) = c.converged(3, Duration::from_secs(30)).await;
    let follower = (0..3).find(|i| c.nodes[*i].id != leader).unwrap();
    let events: Vec<Value> = (0..40)
        .map(|i| {
            serde_json::json!({
                "event_id": format!("waited-{i}"),
                "timestamp": 1_795_598_000 + i,
                "app": {"id": "com.example.game", "version": "2.4.1"},
                "platform": "android",
                "os": {"name": "Android", "version": "14"},
                "device": {"model": "Pixel 8"},
                "user": {"id": format!("user-{}", i % 9)},
                "exception": {"type": "SIGSEGV"},
                "modules": [],
                "threads": [{"crashed": true, "frames": [{"instruction_addr": "0x1234"}]}]
            })
        })
        .collect();
    let url = format!("{}/api/v1/crashes", c.nodes[follower].url);
    for bad in ["?wait=forever", "?hurry=1"] {
        let r = c
            .client
            .post(format!("{url}{bad}"))
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter", "{bad}: {body}");
    }
    let r = c
        .client
        .post(format!("{url}?wait=counted"))
        .timeout(Duration::from_secs(40))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 40);
    assert_eq!(body["counted"], true);
    c.nodes[follower].kill9();
    let survivor = (0..3).find(|i| *i != follower).unwrap();
    until_total(&c, survivor, 40, Duration::from_secs(20)).await;
}
