//! A cluster of three `crashgrid serve` pods (static discovery, file lease: statistics reduced by
//! the leader, messages acknowledged on its acceptance, redeliveries recognised through the
//! event-id grid) fed from one NATS JetStream durable consumer, compared in the
//! same run with the same three pods fed over HTTP by `loadgen` (one generator per pod; three
//! publishers for NATS), and
//! the backlog figures sampled through a burst.
//!
//! Both feeds carry the same demo crashes (20–60 frames, debug files uploaded to every pod,
//! 100 events per message or request) for the same time, as fast as they go; the rate is
//! events processed by the three pods divided by the time from the first event sent to the
//! last one processed (and, for NATS, acknowledged). HTTP generators are paced by the pods'
//! 429s, NATS publishers are not (the stream buffers), so that NATS figure also carries the
//! publishers and the broker competing with the pods for the cores. A second NATS figure
//! takes them out: the stream is filled while the pods cannot reach the broker (it is
//! stopped, and a second broker on another port writes the same store), then the first broker
//! comes back and the pods drain the backlog, timed from the first event processed to the
//! last one acknowledged. (Brokers are stopped with SIGTERM here: after a SIGKILL, Debian's
//! nats-server 2.9 may report phantom pending messages for a while.) A real `nats-server -js` runs on
//! loopback (`apt-get install nats-server`; the benchmark fails without it).
//!
//! Run: `cargo bench -p crashgrid --bench nats`. `BENCH_SECONDS` sets each phase's sending
//! time (default 10), `BENCH_BURST` the burst's size in events (default 30,000).

#[allow(dead_code)]
#[path = "../tests/crashgrid/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/crashgrid/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use bytes::Bytes;
use crashgrid::demo::DemoWorld;
use crashgrid::loadgen::{self, LoadgenConfig};
use crashgrid::loadgen_nats::{self, NatsLoadgenConfig};
use harness::{NatsPod, NatsServer};
use rand::rngs::StdRng;
use rand::SeedableRng;

const EVENTS_PER_MESSAGE: usize = 100;
/// The demo world every feed uses (its debug files are uploaded to every pod); each run
/// still has fresh event ids.
const SEED: u64 = 1;
/// Publishes awaiting acks per publisher: 32 messages of ~750 KB.
const IN_FLIGHT: usize = 32;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sum(pods: &[NatsPod], metric: &str) -> f64 {
    let mut total = 0.0;
    for p in pods {
        total += p.metric(metric).await.unwrap_or(0.0);
    }
    total
}

/// Waits until the pods processed `target` events (and, with `nats`, answered every message
/// they hold); returns when that happened. With `nats` it then also waits (untimed) until the
/// broker has applied the acks — its figures come once a second — so that the next phase
/// starts from an empty consumer.
async fn processed(pods: &[NatsPod], target: f64, nats: bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let done = sum(pods, "crashgrid_crashes_processed_total").await >= target;
        // The in-flight gauge is live; the backlog figures are sampled once a second.
        let held = nats && sum(pods, "crashgrid_nats_in_flight_messages").await != 0.0;
        if done && !held {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the pods never processed {target} events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while nats && pods[0].metric("crashgrid_nats_unacked_messages").await != Some(0.0) {
        assert!(Instant::now() < deadline, "the consumer never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done
}

/// Three publishers (as three loadgens feed HTTP) to `url` for `seconds`, as fast as the broker
/// acknowledges; every event must be published. Returns the events published.
async fn publish(url: &str, seconds: u64) -> u64 {
    let runs: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(loadgen_nats::run(
                NatsLoadgenConfig {
                    url: url.to_string(),
                    rate: 0,
                    duration: Duration::from_secs(seconds),
                    batch: EVENTS_PER_MESSAGE,
                    seed: SEED,
                    in_flight: IN_FLIGHT,
                    ..Default::default()
                },
                std::future::pending(),
            ))
        })
        .collect();
    let mut published = 0;
    for r in runs {
        let report = r.await.unwrap().unwrap();
        assert_eq!(report.failed + report.unsent, 0, "{report}");
        published += report.published;
    }
    published
}

fn main() {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let burst: u64 = env_or("BENCH_BURST", 30_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let nats = NatsServer::start();
        // A cluster of three (static discovery, file lease): statistics reduced by the leader,
        // acks on its acceptance, redeliveries recognised through the event-id grid.
        let root = tempfile::tempdir().unwrap();
        let lease = root.path().join("leader.lease").display().to_string();
        let rpc: Vec<u16> = (0..3).map(|_| harness::pick_port()).collect();
        let peers = rpc
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Vec<NatsPod> = (1..=3)
            .map(|i| {
                let listen = format!("127.0.0.1:{}", rpc[i - 1]);
                NatsPod::start(
                    &format!("pod-{i}"),
                    &nats.url(),
                    &[
                        "--nats-create-stream", "true",
                        "--in-app", "libgame*,libil2cpp*,libnetcode*,libmain*,GameApp*,UnityFramework*",
                        "--rpc-listen", &listen,
                        "--discovery", "static", "--peers", &peers,
                        "--lease", "file", "--lease-file", &lease,
                        "--cluster-secret", "bench-nats-cluster-secret-0123456789",
                    ],
                )
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while sum(&pods, "crashgrid_cluster_members").await != 9.0
            || sum(&pods, "crashgrid_is_leader").await != 1.0
        {
            assert!(
                Instant::now() < deadline,
                "the three pods never formed a cluster:\n{}",
                pods.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in &pods {
            p.wait_connected().await;
            let (ok, failed) = loadgen::upload_debug_files(&p.url, SEED, 4).await.unwrap();
            assert_eq!(failed, 0);
            assert!(ok > 0);
        }
        println!(
            "a cluster of 3 pods (1 worker each) on {} cores; demo crashes, {EVENTS_PER_MESSAGE} per message/request, {seconds} s per feed",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );

        // HTTP: one loadgen per pod, as fast as the pods accept (429 paces them).
        let before = sum(&pods, "crashgrid_crashes_processed_total").await;
        let started = Instant::now();
        let runs: Vec<_> = pods
            .iter()
            .map(|p| {
                tokio::spawn(loadgen::run(
                    LoadgenConfig {
                        url: p.url.clone(),
                        rate: 0,
                        duration: Duration::from_secs(seconds),
                        batch: EVENTS_PER_MESSAGE,
                        concurrency: 4,
                        seed: SEED,
                        upload: false,
                        gzip: true,
                    },
                    std::future::pending(),
                ))
            })
            .collect();
        let mut accepted = 0;
        for r in runs {
            accepted += r.await.unwrap().unwrap().accepted;
        }
        let done = processed(&pods, before + accepted as f64, false).await;
        let http_secs = (done - started).as_secs_f64();
        let http_rate = accepted as f64 / http_secs;
        println!(
            "HTTP : {accepted:>8} events in {http_secs:>6.2} s = {http_rate:>8.0} events/s ({:.0} requests/s)",
            http_rate / EVENTS_PER_MESSAGE as f64
        );

        // NATS: three publishers (as three loadgens fed HTTP), as fast as the broker
        // acknowledges; the pods pull.
        let before = sum(&pods, "crashgrid_crashes_processed_total").await;
        let started = Instant::now();
        let published = publish(&nats.url(), seconds).await;
        let published_in = started.elapsed().as_secs_f64();
        let done = processed(&pods, before + published as f64, true).await;
        let nats_secs = (done - started).as_secs_f64();
        let nats_rate = published as f64 / nats_secs;
        println!(
            "NATS : {published:>8} events in {nats_secs:>6.2} s = {nats_rate:>8.0} events/s ({:.0} messages/s; publishers done after {published_in:.2} s)",
            nats_rate / EVENTS_PER_MESSAGE as f64
        );

        // NATS, a backlog alone: the broker the pods use is stopped while a second one on
        // another port fills the same store; then the first comes back and the pods, the
        // broker delivering and nothing else, drain the backlog.
        let mut nats = nats;
        nats.stop();
        let fill_port = harness::pick_port();
        let filler = nats.spawn_on(fill_port);
        let filled = Instant::now();
        let backlog = publish(&format!("nats://127.0.0.1:{fill_port}"), seconds).await;
        let fill_secs = filled.elapsed().as_secs_f64();
        harness::terminate_child(filler);
        let before_drain = sum(&pods, "crashgrid_crashes_processed_total").await;
        nats.restart();
        // Timed from the first event processed (the pods reconnect within a couple of seconds).
        let resumed = loop {
            if sum(&pods, "crashgrid_crashes_processed_total").await > before_drain {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let done = processed(&pods, before_drain + backlog as f64, true).await;
        let drain_secs = (done - resumed).as_secs_f64();
        let drain_rate = backlog as f64 / drain_secs;
        println!(
            "NATS, a backlog alone: {backlog:>8} events in {drain_secs:>6.2} s = {drain_rate:>8.0} events/s ({:.0} messages/s; filled in {fill_secs:.2} s while the pods could not pull)",
            drain_rate / EVENTS_PER_MESSAGE as f64
        );
        println!(
            "NATS / HTTP = {:.2} with the publishers running, {:.2} draining a backlog",
            nats_rate / http_rate,
            drain_rate / http_rate
        );
        let mut redelivered = 0.0;
        let mut naks = 0.0;
        let mut duplicates = 0.0;
        for p in &pods {
            let m = p.metrics().await.unwrap_or_default();
            redelivered += m.get("crashgrid_nats_redelivered_total").copied().unwrap_or(0.0);
            duplicates += m
                .get("crashgrid_nats_duplicate_events_total")
                .copied()
                .unwrap_or(0.0);
            naks += m
                .iter()
                .filter(|(k, _)| k.starts_with("crashgrid_nats_naks_total"))
                .map(|(_, v)| v)
                .sum::<f64>();
            if std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!("{}: {:?}", p.name, m.iter().filter(|(k, _)| k.starts_with("crashgrid_nats")).collect::<Vec<_>>());
                eprintln!("{}", p.log().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(30).collect::<Vec<_>>().join("\n"));
            }
        }
        println!(
            "NATS deliveries: {redelivered:.0} redelivered messages, {naks:.0} naks, {duplicates:.0} duplicate events skipped"
        );

        // A burst: `burst` events, generated beforehand, published at once (pipelined, as
        // fast as the broker takes them), far above what the pods process; the backlog as the
        // pods report it (the most recent of their once-a-second samples), every 250 ms until
        // drained.
        let bodies: Vec<Bytes> = tokio::task::spawn_blocking(move || {
            let world = DemoWorld::new(SEED);
            let mut rng = StdRng::seed_from_u64(99);
            (0..burst / EVENTS_PER_MESSAGE as u64)
                .map(|m| {
                    let events: Vec<_> = (0..EVENTS_PER_MESSAGE)
                        .map(|i| {
                            let mut e = world.event(&mut rng);
                            e.event_id = format!("burst-{m}-{i}");
                            e
                        })
                        .collect();
                    Bytes::from(serde_json::to_vec(&events).unwrap())
                })
                .collect()
        })
        .await
        .unwrap();
        let burst = (bodies.len() * EVENTS_PER_MESSAGE) as u64;
        println!();
        println!(
            "burst of {burst} events ({} messages, {:.0} MB) published at once:",
            bodies.len(),
            bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / 1e6
        );
        println!(
            "{:>6} {:>10} {:>10} {:>10} {:>12} {:>10}",
            "t (s)", "published", "processed", "unacked", "oldest (s)", "in flight"
        );
        let base = sum(&pods, "crashgrid_crashes_processed_total").await;
        let mut publisher = Some(tokio::spawn({
            let js = nats.jetstream().await;
            async move {
                let mut acks = Vec::with_capacity(bodies.len());
                for body in bodies {
                    acks.push(js.publish("crashes.burst", body).await.unwrap());
                }
                for ack in acks {
                    ack.await.unwrap();
                }
                burst
            }
        }));
        let started = Instant::now();
        let mut published = None;
        let mut quiet = 0;
        loop {
            let t = started.elapsed().as_secs_f64();
            // The pod whose backlog figures are the most recent.
            let mut m = std::collections::BTreeMap::new();
            for p in &pods {
                let pm = p.metrics().await.unwrap_or_default();
                let stamp = |x: &std::collections::BTreeMap<String, f64>| {
                    x.get("crashgrid_nats_backlog_sampled_timestamp_seconds")
                        .copied()
                        .unwrap_or(0.0)
                };
                if stamp(&pm) >= stamp(&m) {
                    m = pm;
                }
            }
            let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
            let done = sum(&pods, "crashgrid_crashes_processed_total").await - base;
            let in_flight = sum(&pods, "crashgrid_nats_in_flight_messages").await;
            if publisher.as_ref().is_some_and(|p| p.is_finished()) {
                published = Some(publisher.take().unwrap().await.unwrap());
            }
            let shown = published.map_or("…".to_string(), |p| p.to_string());
            println!(
                "{t:>6.2} {shown:>10} {done:>10.0} {:>10.0} {:>12.2} {in_flight:>10.0}",
                get("crashgrid_nats_unacked_messages"),
                get("crashgrid_nats_oldest_unacked_age_seconds"),
            );
            if published.is_some_and(|p| done >= p as f64)
                && get("crashgrid_nats_unacked_messages") == 0.0
            {
                quiet += 1;
                if quiet > 2 {
                    break;
                }
            }
            assert!(t < 300.0, "the burst never drained");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(pods);
        drop(nats);
    });
}
