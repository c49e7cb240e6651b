//! "Acknowledged means kept", with real processes over minutes: clients post
//! `?wait=counted` to every pod and never resend, while the leader, the next leader and a
//! follower are killed with SIGKILL and restarted. Every event answered `counted: true` must
//! be in the cluster-wide snapshot, and nothing may be counted twice.
//!
//! The bug this guards against needed time to show: the standby's replica of the leader's
//! own partials stopped following the clock 30 s (`max_future_seconds`) after the standby
//! started and refused every later second while still answering "held", so the leader
//! acknowledged crashes that a failover then lost. The first run therefore idles 45 s before
//! any traffic and lasts well over two minutes; a second run follows a schedule drawn from a
//! fixed seed and kills a new leader within its first collection round; a third stops the
//! leader and a follower with SIGTERM under load and measures how long each takes to exit.
//!
//! The judge is each client's own log, compared with every pod's cluster-wide snapshot batch
//! by batch (each batch's events have an exception type of their own, so each batch is a
//! crash group of its own in `top_groups`; batches are admitted whole, so this is event by
//! event), and client by client (each client's device model): never the sinks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::harness::wait_until;
use crate::procs::ProcCluster;

/// What one client saw: events answered counted, and events whose fate it cannot know (the
/// pod died mid-request, or answered 202 `counted: false`: admitted, maybe counted later).
#[derive(Default, Clone, Debug)]
struct ClientLog {
    counted: u64,
    uncertain: u64,
    refused: u64,
    /// Every batch sent, in order (batch `n` is `batches[n]`).
    batches: Vec<Answer>,
}

/// What a client was told about one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Counted,
    Uncertain,
    Refused,
}

/// The crash group of batch `n` of client `k`: its events alone have this exception type, so
/// the snapshot's `top_groups` count each batch on its own (the judge is event by event:
/// batches are admitted whole).
fn batch_label(k: usize, n: u64) -> String {
    format!("acked-{k}-{n}")
}

/// Snapshots list this many groups (`--top-groups`): more than the admitted batches of any
/// run here (clients pause 400 ms between batches), which the runs assert.
const TOP_GROUPS: usize = 1000;

const CLIENTS: usize = 3;
const BATCH: usize = 10;

fn batch(client: usize, n: u64) -> Vec<Value> {
    (0..BATCH as u64)
        .map(|i| {
            serde_json::json!({
                "event_id": format!("acked-{client}-{n}-{i}"),
                "timestamp": 1_795_598_000u64 + n,
                "app": {"id": "com.example.game", "version": "2.4.1"},
                "platform": "android",
                "os": {"name": "Android", "version": "14"},
                // The client is the dimension the final snapshot is checked by.
                "device": {"model": format!("client-{client}")},
                "user": {"id": format!("user-{}", (n + i) % 50)},
                "exception": {"type": batch_label(client, n)},
                "modules": [],
                "threads": [{"crashed": true, "frames": [{"instruction_addr": "0x1234"}]}]
            })
        })
        .collect()
}

/// Posts batches to the pods in turn until `stop`, one request at a time, never resending.
async fn client(
    k: usize,
    urls: Vec<String>,
    log: Arc<Mutex<ClientLog>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !*stop.borrow() {
        let url = &urls[(k + n as usize) % urls.len()];
        let r = http
            .post(format!("{url}/api/v1/crashes?wait=counted"))
            .json(&batch(k, n))
            .send()
            .await;
        n += 1;
        let answer = match r {
            Ok(r) if r.status() == 200 => Answer::Counted,
            Ok(r) if r.status() == 202 => Answer::Uncertain,
            // Refused whole (429 while overloaded, 503 while stopping): not admitted.
            Ok(_) => Answer::Refused,
            // Nothing was sent: the pod is down.
            Err(e) if e.is_connect() => Answer::Refused,
            Err(_) => Answer::Uncertain,
        };
        {
            let mut l = log.lock();
            match answer {
                Answer::Counted => l.counted += BATCH as u64,
                Answer::Uncertain => l.uncertain += BATCH as u64,
                Answer::Refused => l.refused += BATCH as u64,
            }
            l.batches.push(answer);
        }
        // Paced so a run stays under TOP_GROUPS batches.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// What a step of a schedule does to the cluster.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// SIGKILL the current leader.
    KillLeader,
    /// SIGKILL a follower.
    KillFollower,
    /// SIGKILL the leader elected next, as soon as the survivors agree on it (within about
    /// a publish period of its election: during its first collection round).
    KillNextLeader,
    /// SIGTERM the current leader / a follower and measure the time to exit.
    TermLeader,
    TermFollower,
}

/// Every stopped node restarts this long after it stopped.
const RESTART_AFTER: Duration = Duration::from_secs(10);

/// How a run went, for its assertions.
struct Run {
    logs: Vec<ClientLog>,
    /// SIGTERM to exit, per SIGTERM step.
    term_to_exit: Vec<Duration>,
}

/// Runs `CLIENTS` clients against 3 pods for `traffic` (after `idle`), applying `schedule`
/// (seconds after traffic starts, action); checks that every event answered counted is in
/// every pod's final snapshot exactly once.
async fn run(idle: Duration, traffic: Duration, schedule: &[(u64, Action)]) -> Run {
    let top_groups = TOP_GROUPS.to_string();
    let mut c = ProcCluster::start(3, &["--top-groups", &top_groups]).await;
    tokio::time::sleep(idle).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
    let logs: Vec<Arc<Mutex<ClientLog>>> = (0..CLIENTS).map(|_| Default::default()).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(client(k, urls.clone(), logs[k].clone(), stop_rx.clone())))
        .collect();
    let started = Instant::now();
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut term_to_exit = Vec::new();
    let mut steps = schedule.iter().peekable();
    loop {
        // The next thing to do: a due restart, or the next step.
        restarts.sort();
        let next_step = steps.peek().map(|(s, _)| started + Duration::from_secs(*s));
        let next_restart = restarts.first().map(|r| r.0);
        let (when, is_restart) = match (next_step, next_restart) {
            (None, None) => break,
            (Some(s), Some(r)) if r <= s => (r, true),
            (Some(s), _) => (s, false),
            (None, Some(r)) => (r, true),
        };
        tokio::time::sleep_until(when.into()).await;
        if is_restart {
            let (_, i) = restarts.remove(0);
            eprintln!("t={:?}: restart {}", started.elapsed(), c.nodes[i].id);
            c.restart(i);
            continue;
        }
        let (_, action) = steps.next().unwrap();
        let running = c.running();
        let leader = wait_for_leader(&c, &running, None).await;
        let li = c.index_of(&leader);
        let follower = running.iter().copied().find(|&i| i != li).unwrap();
        let victim = match action {
            Action::KillLeader | Action::TermLeader => li,
            Action::KillFollower | Action::TermFollower => follower,
            Action::KillNextLeader => {
                let killed_at = started.elapsed();
                c.nodes[li].kill9();
                restarts.push((Instant::now() + RESTART_AFTER, li));
                let survivors: Vec<usize> = running.iter().copied().filter(|&i| i != li).collect();
                let next = wait_for_leader(&c, &survivors, Some(&leader)).await;
                eprintln!(
                    "t={killed_at:?}: SIGKILL leader {leader}; {next} elected after {:?}",
                    started.elapsed() - killed_at
                );
                c.index_of(&next)
            }
        };
        match action {
            Action::TermLeader | Action::TermFollower => {
                let t0 = Instant::now();
                let status = c.nodes[victim].terminate();
                let took = t0.elapsed();
                eprintln!(
                    "t={:?}: SIGTERM {:?} {} exited {status} after {took:?}",
                    started.elapsed(),
                    action,
                    c.nodes[victim].id
                );
                assert!(status.success(), "{} exited {status}", c.nodes[victim].id);
                term_to_exit.push(took);
            }
            _ => {
                eprintln!(
                    "t={:?}: SIGKILL {action:?} {}",
                    started.elapsed(),
                    c.nodes[victim].id
                );
                c.nodes[victim].kill9();
            }
        }
        restarts.push((Instant::now() + RESTART_AFTER, victim));
    }
    tokio::time::sleep_until((started + traffic).into()).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.unwrap();
    }
    c.converged(3, Duration::from_secs(30)).await;
    let logs: Vec<ClientLog> = logs.iter().map(|l| l.lock().clone()).collect();
    eprintln!(
        "clients (counted, uncertain, refused events): {:?}",
        logs.iter()
            .map(|l| (l.counted, l.uncertain, l.refused))
            .collect::<Vec<_>>()
    );
    // Refused batches must be absent, which needs no listing; admitted ones must all fit.
    let admitted = logs
        .iter()
        .flat_map(|l| &l.batches)
        .filter(|a| **a != Answer::Refused)
        .count();
    assert!(
        admitted < TOP_GROUPS,
        "{admitted} admitted batches: more than the snapshot lists, the judge would be blind"
    );
    let counted: u64 = logs.iter().map(|l| l.counted).sum();
    assert!(counted > 1000, "too little traffic was counted: {logs:?}");
    // Once the backlog is empty every admitted event has its final count.
    wait_until(
        "the cluster-wide backlog is empty",
        Duration::from_secs(60),
        async || {
            c.stats_of(0)
                .await
                .is_some_and(|v| v["backlog"]["unacked"] == 0)
        },
    )
    .await;
    // Two more publish periods, then every pod serves the same final counts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..3 {
        let v = c.stats_of(i).await.expect("every pod answers");
        // Event by event (a batch is admitted whole): counted once if answered counted,
        // never counted if refused, once or not at all if the client cannot know.
        let by_batch: std::collections::HashMap<&str, u64> = v["stats"]["top_groups"]
            .as_array()
            .expect("top groups")
            .iter()
            .map(|g| {
                let title = g["title"].as_str().unwrap();
                let label = title.split(':').next().unwrap();
                (label, g["count"].as_u64().unwrap())
            })
            .collect();
        for (k, l) in logs.iter().enumerate() {
            for (n, answer) in l.batches.iter().enumerate() {
                let label = batch_label(k, n as u64);
                let seen = by_batch.get(label.as_str()).copied().unwrap_or(0);
                let ok = match answer {
                    Answer::Counted => seen == BATCH as u64,
                    Answer::Refused => seen == 0,
                    Answer::Uncertain => seen == 0 || seen == BATCH as u64,
                };
                assert!(
                    ok,
                    "node {i}: batch {label} was answered {answer:?}, the snapshot counts {seen} of its {BATCH} events; logs:\n{}",
                    c.logs()
                );
            }
        }
        for (k, l) in logs.iter().enumerate() {
            let seen = v["stats"]["breakdowns"]["device_model"]
                .as_array()
                .expect("a device_model breakdown")
                .iter()
                .find(|x| x["value"] == format!("client-{k}").as_str())
                .and_then(|x| x["count"].as_u64())
                .unwrap_or(0);
            assert!(
                seen >= l.counted,
                "node {i}: client {k} was answered counted for {} events, the snapshot holds {seen} ({l:?}); logs:\n{}",
                l.counted,
                c.logs()
            );
            assert!(
                seen <= l.counted + l.uncertain,
                "node {i}: client {k}: {seen} counted, more than the {} it may have admitted (double counting; {l:?})",
                l.counted + l.uncertain
            );
        }
    }
    Run { logs, term_to_exit }
}

/// The leader the nodes `of` agree on, once they do, and (with `not`) once it is another one.
async fn wait_for_leader(c: &ProcCluster, of: &[usize], not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((leader, _)) = c.agreed_leader_of(of).await {
            if not != Some(leader.as_str()) {
                return leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader among {of:?}; logs:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rule (acknowledged means kept): after SIGKILL of the leader, then of the new leader, then of
/// a follower (each restarted), every event answered `counted: true` is counted exactly once
/// in the cluster-wide snapshot, compared client by client. Idle 45 s first: past the old
/// replica's blind spot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_events_survive_leader_and_follower_kills_over_minutes() {
    run(
        Duration::from_secs(45),
        Duration::from_secs(95),
        &[
            (15, Action::KillLeader),
            (45, Action::KillLeader),
            (70, Action::KillFollower),
        ],
    )
    .await;
}

/// Rule (acknowledged means kept, failover mid-round): a schedule drawn from a fixed seed
/// (different kill times and victims from the run above) that includes killing a leader and
/// then its successor within its first collection round, when it has just asked every pod
/// for its partials and holds them only in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_events_survive_a_seeded_kill_schedule_with_a_kill_mid_collection() {
    let mut rng = StdRng::seed_from_u64(13);
    let mut schedule = Vec::new();
    let mut at = 0u64;
    for action in [
        Action::KillNextLeader,
        [Action::KillLeader, Action::KillFollower][rng.gen_range(0..2)],
        [Action::KillLeader, Action::KillFollower][rng.gen_range(0..2)],
    ] {
        // Every step after the last one's restarts: 20..30 s apart.
        at += rng.gen_range(20..30);
        schedule.push((at, action));
    }
    eprintln!("schedule (seed 13): {schedule:?}");
    run(Duration::ZERO, Duration::from_secs(at + 20), &schedule).await;
}

/// Rule (shutdown drains with real answers): SIGTERM of the leader and later of a follower
/// under `?wait=counted` load. Each exits well inside the manifests' 45 s grace period, and no
/// client is answered `counted: false` (or cut off): the cluster could count everything, so
/// every in-flight request gets its real answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_promptly_and_every_answer_is_real() {
    let run = run(
        Duration::ZERO,
        Duration::from_secs(60),
        &[(15, Action::TermLeader), (40, Action::TermFollower)],
    )
    .await;
    eprintln!("SIGTERM to exit: {:?}", run.term_to_exit);
    assert_eq!(run.term_to_exit.len(), 2);
    for took in &run.term_to_exit {
        assert!(
            *took < Duration::from_secs(20),
            "SIGTERM to exit took {took:?}"
        );
    }
    for (k, l) in run.logs.iter().enumerate() {
        assert_eq!(
            l.uncertain, 0,
            "client {k} got answers that were not real: {l:?}"
        );
    }
}
