//! The original team's experiment with the symbolication cache shared by all pods: three real
//! `crashgrid serve` processes (static discovery, file lease, one worker each), every pod with
//! the demo world's debug files, Zipf-repeating demo crashes (real SymCache conversion and
//! lookups: 43 Breakpad files, inline chains, demangling) sent round-robin at a fixed rate.
//!
//! Each setup starts three fresh pods and runs two phases with the same traffic:
//!
//! 1. **cold start**: every pod starts with empty caches;
//! 2. **rolling restart**: each pod in turn is taken out of the traffic, stopped, and replaced
//!    by a new pod with an empty data directory (a Kubernetes deploy: new pod, empty
//!    emptyDir, so its SymCache disk cache is gone too) that gets the debug files uploaded and
//!    takes traffic once `/readyz` answers 200; then the traffic runs on for a while.
//!
//! Setups: (a) caches per pod only (`--cache-memory-bytes 0`: near cache and SymCaches), (b)
//! the shared grid, restarted with SIGTERM (graceful hand-off), (c) the shared grid restarted
//! with kill -9 (no hand-off; note that kill -9 of the lease holder also stalls the statistics
//! until the lease expires, 2 s here, which shows in the unacked age whatever the cache does)
//! and (d) the shared grid restarted with SIGTERM and `--leave-timeout-secs 0` (lease released
//! at once, no data handed off).
//!
//! Printed per setup and phase: average symbolication time per crash (the pods' own
//! `crashgrid_symbolication_seconds`), the share of frame lookups answered without a SymCache
//! computation (near cache, then grid), SymCaches converted, and the maximum cluster-wide
//! oldest-unacked age seen in `/api/v1/stats` (sampled every 50 ms). The target: sharing
//! lowers the maximum unacked age by at least 50 % (a vs b).
//!
//! Run: `cargo bench -p crashgrid --bench shared_cache`. `BENCH_RATE` crashes/s for the whole
//! cluster (default 600), `BENCH_COLD_SECS` (default 8) and `BENCH_TAIL_SECS` (default 4)
//! phase lengths, `BENCH_PUBLISH_MS` the pods' publish period (default 100: the unacked age
//! cannot be lower than about one period), `BENCH_RUNS` runs of every setup (default 3,
//! interleaved: the maximum of one run is a single sample, and noisy).

#[allow(dead_code)]
#[path = "../tests/crashgrid/procs.rs"]
mod procs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crashgrid::demo::DemoWorld;
use parking_lot::Mutex;
use procs::ProcCluster;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::Value;
use symbolicate::CrashEvent;

const SEED: u64 = 23;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The counters one scrape of `/metrics` gives.
#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    sym_seconds: f64,
    crashes: f64,
    near_hits: f64,
    near_misses: f64,
    grid_answered: f64,
    computations: f64,
    conversions: f64,
}

impl Scrape {
    fn minus(&self, o: &Scrape) -> Scrape {
        Scrape {
            sym_seconds: self.sym_seconds - o.sym_seconds,
            crashes: self.crashes - o.crashes,
            near_hits: self.near_hits - o.near_hits,
            near_misses: self.near_misses - o.near_misses,
            grid_answered: self.grid_answered - o.grid_answered,
            computations: self.computations - o.computations,
            conversions: self.conversions - o.conversions,
        }
    }

    fn plus(&self, o: &Scrape) -> Scrape {
        Scrape {
            sym_seconds: self.sym_seconds + o.sym_seconds,
            crashes: self.crashes + o.crashes,
            near_hits: self.near_hits + o.near_hits,
            near_misses: self.near_misses + o.near_misses,
            grid_answered: self.grid_answered + o.grid_answered,
            computations: self.computations + o.computations,
            conversions: self.conversions + o.conversions,
        }
    }
}

fn parse(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<Scrape> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let p = |s: &str| parse(&text, s);
    Some(Scrape {
        sym_seconds: p("crashgrid_symbolication_seconds_sum"),
        crashes: p("crashgrid_symbolication_seconds_count"),
        near_hits: p("crashgrid_near_cache_lookups_total{outcome=\"hit\"}"),
        near_misses: p("crashgrid_near_cache_lookups_total{outcome=\"miss\"}"),
        grid_answered: p("crashgrid_grid_hits_total{tier=\"local\"}")
            + p("crashgrid_grid_hits_total{tier=\"remote\"}")
            + p("crashgrid_grid_coalesced_waits_total"),
        computations: p("crashgrid_grid_computations_total"),
        conversions: p("crashgrid_symcache_conversions_total"),
    })
}

/// The latest scrape of every pod ever seen, by pod id.
type Scrapes = HashMap<String, Scrape>;

async fn scrape_all(c: &ProcCluster, into: &mut Scrapes) {
    for n in c.nodes.iter().filter(|n| n.is_running()) {
        if let Some(s) = scrape(&c.client, &n.url).await {
            into.insert(n.id.clone(), s);
        }
    }
}

fn delta(end: &Scrapes, start: &Scrapes) -> Scrape {
    end.iter().fold(Scrape::default(), |acc, (id, s)| {
        acc.plus(&s.minus(&start.get(id).copied().unwrap_or_default()))
    })
}

async fn until(c: &ProcCluster, i: usize, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = c
            .client
            .get(format!("{}{path}", c.nodes[i].url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never answered {path}",
            c.nodes[i].id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upload(c: &ProcCluster, i: usize) {
    let (_, failed) = crashgrid::loadgen::upload_debug_files(&c.nodes[i].url, SEED, 4)
        .await
        .unwrap();
    assert_eq!(failed, 0);
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Sigterm,
    Kill9,
}

struct Setup {
    name: &'static str,
    grid: bool,
    extra: &'static [&'static str],
    stop: Stop,
}

/// Figures of one phase.
struct Phase {
    totals: Scrape,
    max_unacked_ms: u64,
}

impl Phase {
    fn hit_ratio(&self) -> f64 {
        let t = &self.totals;
        let lookups = t.near_hits + t.near_misses;
        if lookups == 0.0 {
            return 1.0;
        }
        // Without a grid every near miss is computed.
        (t.near_hits + t.grid_answered) / lookups
    }

    fn avg_us(&self) -> f64 {
        self.totals.sym_seconds / self.totals.crashes.max(1.0) * 1e6
    }
}

async fn run(setup: &Setup, world: Arc<DemoWorld>) -> (Phase, Phase, u64) {
    let rate: u64 = env_or("BENCH_RATE", 600);
    let cold = Duration::from_secs(env_or("BENCH_COLD_SECS", 8));
    let tail = Duration::from_secs(env_or("BENCH_TAIL_SECS", 4));
    let publish: u64 = env_or("BENCH_PUBLISH_MS", 100);
    let publish = publish.to_string();
    let mut extra = vec!["--publish-interval-ms", publish.as_str()];
    extra.extend_from_slice(setup.extra);
    let mut c = ProcCluster::start(3, &extra).await;
    for i in 0..3 {
        until(&c, i, "/readyz").await;
        upload(&c, i).await;
    }
    let routable: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(c.nodes.iter().map(|n| n.url.clone()).collect()));
    // Max unacked age per phase (index), sampled from a routable pod's snapshot.
    let phase = Arc::new(AtomicUsize::new(0));
    let max_unacked: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = {
        let (routable, phase, max_unacked, client) = (
            routable.clone(),
            phase.clone(),
            max_unacked.clone(),
            c.client.clone(),
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !*stop.borrow() {
                let url = {
                    let r = routable.lock();
                    r[n % r.len()].clone()
                };
                n += 1;
                if let Ok(r) = client.get(format!("{url}/api/v1/stats")).send().await {
                    if let Ok(v) = r.json::<Value>().await {
                        let age = v["backlog"]["oldest_unacked_age_ms"].as_u64().unwrap_or(0);
                        max_unacked[phase.load(Ordering::Relaxed)]
                            .fetch_max(age, Ordering::Relaxed);
                    }
                }
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (routable, client, world, sent) = (
            routable.clone(),
            c.client.clone(),
            world.clone(),
            sent.clone(),
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            const BATCH: u64 = 20;
            let mut rng = StdRng::seed_from_u64(5);
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * BATCH / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0usize;
            let mut id = 0u64;
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {}
                }
                let mut batch: Vec<CrashEvent> =
                    (0..BATCH).map(|_| world.event(&mut rng)).collect();
                for e in &mut batch {
                    id += 1;
                    e.event_id = format!("bench-{id}");
                }
                let url = {
                    let r = routable.lock();
                    r[n % r.len()].clone()
                };
                n += 1;
                let body = serde_json::to_vec(&batch).unwrap();
                let client = client.clone();
                let sent = sent.clone();
                tokio::spawn(async move {
                    let ok = client
                        .post(format!("{url}/api/v1/crashes"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 202);
                    if ok {
                        sent.fetch_add(BATCH, Ordering::Relaxed);
                    }
                });
            }
        })
    };

    // Phase 1: cold start.
    let mut start = Scrapes::new();
    scrape_all(&c, &mut start).await;
    tokio::time::sleep(cold).await;
    let mut latest = Scrapes::new();
    scrape_all(&c, &mut latest).await;
    let cold_phase = Phase {
        totals: delta(&latest, &start),
        max_unacked_ms: max_unacked[0].load(Ordering::Relaxed),
    };

    // Phase 2: rolling restart.
    phase.store(1, Ordering::Relaxed);
    let restart_start = latest.clone();
    for i in 0..3 {
        let url = c.nodes[i].url.clone();
        routable.lock().retain(|u| *u != url);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(s) = scrape(&c.client, &url).await {
            latest.insert(c.nodes[i].id.clone(), s);
        }
        match setup.stop {
            Stop::Sigterm => {
                let status = c.nodes[i].terminate();
                assert!(status.success(), "{} exited with {status}", c.nodes[i].id);
            }
            Stop::Kill9 => c.nodes[i].kill9(),
        }
        c.replace(i, &format!("node-{}-v2", i + 1));
        until(&c, i, "/healthz").await;
        upload(&c, i).await;
        until(&c, i, "/readyz").await;
        routable.lock().push(c.nodes[i].url.clone());
        scrape_all(&c, &mut latest).await;
    }
    tokio::time::sleep(tail).await;
    scrape_all(&c, &mut latest).await;
    let restart_phase = Phase {
        totals: delta(&latest, &restart_start),
        max_unacked_ms: max_unacked[1].load(Ordering::Relaxed),
    };
    let _ = stop_tx.send(true);
    let _ = traffic.await;
    let _ = poller.await;
    (cold_phase, restart_phase, sent.load(Ordering::Relaxed))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let setups = [
        Setup {
            name: "(a) caches per pod only",
            grid: false,
            extra: &["--cache-memory-bytes", "0"],
            stop: Stop::Sigterm,
        },
        Setup {
            name: "(b) shared grid, SIGTERM hand-off",
            grid: true,
            extra: &[],
            stop: Stop::Sigterm,
        },
        Setup {
            name: "(c) shared grid, kill -9",
            grid: true,
            extra: &[],
            stop: Stop::Kill9,
        },
        Setup {
            name: "(d) shared grid, SIGTERM, leave 0 s",
            grid: true,
            extra: &["--leave-timeout-secs", "0"],
            stop: Stop::Sigterm,
        },
    ];
    rt.block_on(async move {
        let world = Arc::new(
            tokio::task::spawn_blocking(|| DemoWorld::new(SEED))
                .await
                .unwrap(),
        );
        println!(
            "3 pods, 1 worker each, demo crashes at {} crashes/s (Zipf over {} groups), \
             publish period {} ms",
            env_or("BENCH_RATE", 600u64),
            world.groups().len(),
            env_or("BENCH_PUBLISH_MS", 100u64)
        );
        let runs: usize = env_or("BENCH_RUNS", 3);
        println!(
            "{runs} runs per setup, interleaved; per phase the median over the runs, and the \
             maximum unacked age of every run"
        );
        // results[setup][run] = (cold, restart)
        let mut results: Vec<Vec<(Phase, Phase)>> = setups.iter().map(|_| Vec::new()).collect();
        for run_no in 0..runs {
            for (k, setup) in setups.iter().enumerate() {
                let (cold, restart, sent) = run(setup, world.clone()).await;
                eprintln!(
                    "run {}: {}: {sent} crashes accepted; max unacked {} ms cold, {} ms restart",
                    run_no + 1,
                    setup.name,
                    cold.max_unacked_ms,
                    restart.max_unacked_ms
                );
                results[k].push((cold, restart));
            }
        }
        println!(
            "{:<38} {:<16} {:>8} {:>14} {:>10} {:>10} {:>10} {:>12}  (each run)",
            "setup",
            "phase",
            "crashes",
            "avg sym/crash",
            "hit ratio",
            "computed",
            "converted",
            "max unacked",
        );
        fn median(mut v: Vec<f64>) -> f64 {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        }
        // medians[setup][phase] = (avg µs, max unacked ms)
        let mut medians = Vec::new();
        for (setup, runs) in setups.iter().zip(&results) {
            let mut per_phase = Vec::new();
            for (phase_no, label) in ["cold start", "rolling restart"].into_iter().enumerate() {
                let phases: Vec<&Phase> = runs
                    .iter()
                    .map(|(c, r)| if phase_no == 0 { c } else { r })
                    .collect();
                let m = |f: &dyn Fn(&Phase) -> f64| median(phases.iter().map(|p| f(p)).collect());
                // Without a grid every near-cache miss is computed.
                let computed = |p: &Phase| {
                    if setup.grid {
                        p.totals.computations
                    } else {
                        p.totals.near_misses
                    }
                };
                let avg = m(&|p| p.avg_us());
                let unacked = m(&|p| p.max_unacked_ms as f64);
                let each: Vec<String> = phases
                    .iter()
                    .map(|p| p.max_unacked_ms.to_string())
                    .collect();
                println!(
                    "{:<38} {:<16} {:>8.0} {:>11.0} µs {:>10.3} {:>10.0} {:>10.0} {:>9.0} ms  ({})",
                    setup.name,
                    label,
                    m(&|p| p.totals.crashes),
                    avg,
                    m(&|p| p.hit_ratio()),
                    m(&computed),
                    m(&|p| p.totals.conversions),
                    unacked,
                    each.join(", ")
                );
                per_phase.push((avg, unacked));
            }
            medians.push(per_phase);
        }
        println!();
        for (phase_no, label) in ["cold start", "rolling restart"].into_iter().enumerate() {
            let ((a_us, a_ms), (b_us, b_ms)) = (medians[0][phase_no], medians[1][phase_no]);
            let lower = 1.0 - b_ms / a_ms.max(1.0);
            println!(
                "{label:<16} max unacked age (median): per pod {a_ms:>5.0} ms, shared {b_ms:>5.0} \
                 ms: {:>5.1} % lower (target >= 50 %: {}); symbolication per crash {a_us:.0} -> \
                 {b_us:.0} µs ({:+.1} %)",
                lower * 100.0,
                if lower >= 0.5 { "met" } else { "NOT met" },
                (b_us / a_us - 1.0) * 100.0
            );
        }
    });
}
