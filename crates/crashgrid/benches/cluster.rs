//! A cluster of three real `crashgrid serve` processes (static discovery, file lease; lease
//! 2 s, renew deadline 1.5 s, retry 0.25 s, as in the process tests):
//!
//! 1. Failover over repeated runs: kill -9 of the leader until the survivors agree on a new
//!    leader (compared with the bound leaseDuration + retryPeriod), and SIGTERM of the leader
//!    (lease released: compared with the 1 s target). min / median / max.
//! 2. End-to-end latency from a POST on one follower to the crash being counted in the
//!    snapshot received over WebSocket on another follower (publish period 1 s), p50 / p99;
//!    baseline in the same run: the same measurement on a single node.
//!
//! Run: `cargo bench -p crashgrid --bench cluster`. `BENCH_RUNS` (default 5) failovers of
//! each kind; `BENCH_SAMPLES` (default 40) latency samples per setup.

#[allow(dead_code)]
#[path = "../tests/crashgrid/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use crashgrid::demo::DemoWorld;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use procs::{ProcCluster, LEASE_MS, RETRY_MS};
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Time from the signal until the other two nodes agree on a new leader.
async fn failover(signal: Signal) -> Duration {
    let mut c = ProcCluster::start(3, &[]).await;
    let (old, _) = c.converged(3, Duration::from_secs(30)).await;
    let li = c.index_of(&old);
    let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let sent = Instant::now();
    if signal == Signal::SIGKILL {
        c.nodes[li].kill9();
    } else {
        c.nodes[li].signal(signal);
    }
    loop {
        if let Some((l, _)) = c.agreed_leader_of(&others).await {
            if l != old {
                return sent.elapsed();
            }
        }
        assert!(sent.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// POSTs one crash at a time to `post_to` and times its arrival in the WebSocket snapshots of
/// `watch`.
async fn latency(c: &ProcCluster, post_to: usize, watch: usize, samples: usize) -> Vec<Duration> {
    let world = DemoWorld::new(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let ws_url = format!(
        "{}/api/v1/stats/live",
        c.nodes[watch].url.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let total_of = |m: tokio_tungstenite::tungstenite::Message| -> u64 {
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        v["stats"]["total"].as_u64().unwrap_or(0)
    };
    let mut seen = total_of(ws.next().await.unwrap().unwrap());
    let mut out = Vec::new();
    for _ in 0..samples {
        // A random phase against the publish period.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
        let event = serde_json::to_vec(&world.event(&mut rng)).unwrap();
        let posted = Instant::now();
        let r = c
            .client
            .post(format!("{}/api/v1/crashes", c.nodes[post_to].url))
            .header("content-type", "application/json")
            .body(event)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("snapshots keep coming")
                .unwrap()
                .unwrap();
            let total = total_of(m);
            if total > seen {
                seen = total;
                out.push(posted.elapsed());
                break;
            }
        }
    }
    out
}

fn main() {
    let runs = env("BENCH_RUNS", 5);
    let samples = env("BENCH_SAMPLES", 40);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        println!("failover of a 3-process cluster, {runs} runs each (lease {LEASE_MS} ms, retry {RETRY_MS} ms)");
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>12} {:>14}",
            "leader", "min", "median", "max", "bound", "max / bound"
        );
        for (name, signal, bound) in [
            (
                "kill -9 (lease expires)",
                Signal::SIGKILL,
                // client-go: leaseDuration + retryPeriod × JitterFactor (1.2).
                Duration::from_millis(LEASE_MS + RETRY_MS * 12 / 10),
            ),
            ("SIGTERM (lease released)", Signal::SIGTERM, Duration::from_secs(1)),
        ] {
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(failover(signal).await);
            }
            let (min, med, max) = summary(times);
            println!(
                "{name:<34} {:>10} {:>10} {:>10} {:>12} {:>14.2}",
                ms(min),
                ms(med),
                ms(max),
                ms(bound),
                max.as_secs_f64() / bound.as_secs_f64()
            );
        }

        println!();
        println!("POST -> snapshot on a WebSocket, publish period 1 s, {samples} samples");
        let single = ProcCluster::start(1, &["--publish-interval-ms", "1000"]).await;
        let mut base = latency(&single, 0, 0, samples).await;
        base.sort();
        drop(single);
        let cluster = ProcCluster::start(3, &["--publish-interval-ms", "1000"]).await;
        let (leader, _) = cluster.converged(3, Duration::from_secs(30)).await;
        let li = cluster.index_of(&leader);
        let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();
        let mut lat = latency(&cluster, followers[0], followers[1], samples).await;
        lat.sort();
        println!(
            "{:<46} {:>10} {:>10}",
            "setup", "p50", "p99"
        );
        println!(
            "{:<46} {:>10} {:>10}",
            "single node (baseline)",
            ms(percentile(&base, 0.5)),
            ms(percentile(&base, 0.99))
        );
        println!(
            "{:<46} {:>10} {:>10}",
            "3 nodes: POST on a follower, WS on another",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        let p99 = percentile(&lat, 0.99);
        println!(
            "ratio p99 cluster / single: {:.2}; target p99 <= 1.5 s -> {}",
            p99.as_secs_f64() / percentile(&base, 0.99).as_secs_f64(),
            if p99 <= Duration::from_millis(1500) { "met" } else { "NOT met" }
        );
    });
}
