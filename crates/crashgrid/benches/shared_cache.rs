//! The original team's experiment with the symbolication cache shared by all pods: three real
//! `crashgrid serve` processes (static discovery, file lease, one worker each), every pod with
//! the demo world's 43 debug files at game size, Zipf-repeating demo crashes (real SymCache
//! conversions and lookups: Breakpad files, inline chains, demangling) sent round-robin at a
//! rate derived from the pods' measured capacity.
//!
//! # What is realistic here, and why
//!
//! * **Debug files of game size.** `DemoWorld::with_scale(seed, BENCH_SCALE)`, default 50:
//!   every module holds 50 × its demo function count, so the big ones have game-sized
//!   function counts (UIKitCore ~47,000, UnityFramework ~46,000, libil2cpp.so ~38,000,
//!   libunity.so ~31,000; 417 MB of Breakpad text in all), converting one into a SymCache
//!   takes 0.5–0.9 s on the development machine, all 43 about 12 s of CPU. The crashes are
//!   those of the unscaled world (the extra functions are code that never crashes), so hit
//!   ratios and frames computed are those of scale 1. With the demo world's own files (scale
//!   1, the earlier version of this benchmark) a conversion takes 10–20 ms and a cold pod
//!   costs nothing worth sharing. Scale 100 (10⁵ functions in the largest modules, 1.2–1.8 s
//!   per conversion) is closer still to libunity.so and libil2cpp.so, but on a 2-core machine
//!   the per-pod setup's backlog through a deploy would then (estimated from scale 50, not
//!   run) approach the queue bound below, with a gigabyte or two of queued events per pod,
//!   so 50 is the default.
//! * **A load with headroom, from measured capacity.** Before the runs, three pods of setup
//!   (a) are warmed (every crash group once per pod) and given three bursts of 10,000
//!   crashes each per pod; the median throughput is their warm capacity. The traffic is
//!   `BENCH_LOAD` (default 0.25) of it: pods provisioned with room for a 4× burst, so the
//!   backlog comes from what the cache does (cold pods converting), not from saturation.
//!   `BENCH_RATE` fixes the rate instead. (The earlier fixed 600 crashes/s ran the pods at a
//!   few % of capacity.)
//! * **Phases last until the backlog is gone.** Each phase runs at least its minimum, then
//!   until the cluster-wide oldest unacked age has stayed below `BENCH_RECOVER_MS` (default
//!   1000) for 2 s, or `BENCH_MAX_PHASE_SECS` (default 300) passed ("not recovered" is
//!   printed). A phase cut short at a fixed length would cap the maximum.
//! * The queue holds 200,000 events per pod (`--queue-capacity`), like a subscription's
//!   backlog, so a stalled pod does not turn its backlog into rejections (counted and printed
//!   if it does); `--sink none` (a file sink would write gigabytes).
//!
//! Each setup starts three fresh pods, uploads every debug file to each, and runs two phases
//! with the same traffic:
//!
//! 1. **cold start**: every pod starts with empty caches;
//! 2. **rolling restart**: each pod in turn is taken out of the traffic, stopped, and replaced
//!    by a new pod with an empty data directory (a Kubernetes deploy: new pod, empty
//!    emptyDir, so its SymCache disk cache is gone too) that gets the debug files uploaded and
//!    takes traffic once `/readyz` answers 200 (as the Deployment's rolling update waits for
//!    readiness before terminating the next old pod: a pod of setup (a) is ready at once, one
//!    of the grid once its share of the grid has arrived); then the traffic runs on.
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
//! computation (near cache, then grid), frames computed, SymCaches converted, and the maximum
//! cluster-wide oldest-unacked age seen in `/api/v1/stats` (sampled every 50 ms). The figure:
//! the maximum over cold start and rolling restart; the target is (b)/(a) ≤ 0.5, i.e. sharing
//! lowers it by at least 50 %.
//!
//! Run: `cargo bench -p crashgrid --bench shared_cache`. Besides the variables above:
//! `BENCH_COLD_SECS` (default 20) and `BENCH_TAIL_SECS` (default 10) minimum phase lengths,
//! `BENCH_PUBLISH_MS` the pods' publish period (default 100: the unacked age cannot be lower
//! than about one period), `BENCH_RUNS` runs of every setup (default 3, interleaved: the
//! maximum of one run is a single sample, and noisy). Needs about 6 GB of free disk in the
//! temporary directory at scale 50 (six pods' stores and SymCaches at a time) and takes
//! 12–17 minutes per run of the four setups on the development machine.

#[allow(dead_code)]
#[path = "../tests/crashgrid/procs.rs"]
mod procs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crashgrid::demo::DemoWorld;
use futures_util::{stream, StreamExt};
use parking_lot::Mutex;
use procs::ProcCluster;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::Value;
use symbolicate::CrashEvent;

const SEED: u64 = 23;
/// Events per pod in one capacity burst.
const BURST_PER_POD: usize = 10_000;
/// Ingest queue per pod: room for a long stall without rejections.
const QUEUE_CAPACITY: &str = "200000";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's settings (see the module docs).
#[derive(Debug, Clone)]
struct Params {
    scale: usize,
    load: f64,
    cold_min: Duration,
    tail_min: Duration,
    recover_ms: u64,
    max_phase: Duration,
    publish_ms: u64,
    runs: usize,
}

impl Params {
    fn from_env() -> Self {
        Self {
            scale: env_or("BENCH_SCALE", 50),
            load: env_or("BENCH_LOAD", 0.25),
            cold_min: Duration::from_secs(env_or("BENCH_COLD_SECS", 20)),
            tail_min: Duration::from_secs(env_or("BENCH_TAIL_SECS", 10)),
            recover_ms: env_or("BENCH_RECOVER_MS", 1000),
            max_phase: Duration::from_secs(env_or("BENCH_MAX_PHASE_SECS", 300)),
            publish_ms: env_or("BENCH_PUBLISH_MS", 100),
            runs: env_or("BENCH_RUNS", 3),
        }
    }

    /// Flags of every pod, before the setup's own.
    fn common_flags(&self) -> Vec<String> {
        [
            "--publish-interval-ms",
            &self.publish_ms.to_string(),
            "--sink",
            "none",
            "--queue-capacity",
            QUEUE_CAPACITY,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
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
    accepted: f64,
    processed: f64,
}

impl Scrape {
    fn zip(&self, o: &Scrape, f: impl Fn(f64, f64) -> f64) -> Scrape {
        Scrape {
            sym_seconds: f(self.sym_seconds, o.sym_seconds),
            crashes: f(self.crashes, o.crashes),
            near_hits: f(self.near_hits, o.near_hits),
            near_misses: f(self.near_misses, o.near_misses),
            grid_answered: f(self.grid_answered, o.grid_answered),
            computations: f(self.computations, o.computations),
            conversions: f(self.conversions, o.conversions),
            accepted: f(self.accepted, o.accepted),
            processed: f(self.processed, o.processed),
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
        accepted: p("crashgrid_crashes_accepted_total"),
        processed: p("crashgrid_crashes_processed_total"),
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
        let s = s.zip(&start.get(id).copied().unwrap_or_default(), |a, b| a - b);
        acc.zip(&s, |a, b| a + b)
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

/// The world's debug files, rendered once into a temporary directory.
struct DebugFiles {
    dir: tempfile::TempDir,
    names: Vec<String>,
    bytes: u64,
}

impl DebugFiles {
    fn render(world: &DemoWorld) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut names = Vec::new();
        let mut bytes = 0;
        for (name, data) in world.debug_files() {
            std::fs::write(dir.path().join(&name), &data).unwrap();
            bytes += data.len() as u64;
            names.push(name);
        }
        Self { dir, names, bytes }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A client for requests that may take long (uploads; POSTs to a pod that is busy
/// converting): a timeout there would drop crashes from the measurement.
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn upload(client: &reqwest::Client, url: &str, files: &DebugFiles) {
    let results: Vec<Result<(), String>> = stream::iter(&files.names)
        .map(|name| async move {
            let data = tokio::fs::read(files.path(name))
                .await
                .map_err(|e| e.to_string())?;
            let r = client
                .put(format!("{url}/api/v1/debug-files/{name}"))
                .header("content-type", "application/octet-stream")
                .body(data)
                .send()
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("{name}: {}", r.status()))
            }
        })
        .buffer_unordered(3)
        .collect()
        .await;
    for r in results {
        r.unwrap();
    }
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<u16, String> {
    client
        .post(format!("{url}/api/v1/crashes"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

fn batch_body(events: &mut [CrashEvent], tag: &str, next_id: &mut u64) -> Vec<u8> {
    for e in events.iter_mut() {
        *next_id += 1;
        e.event_id = format!("{tag}-{next_id}");
    }
    serde_json::to_vec(&events).unwrap()
}

/// Crashes processed and accepted, summed over the running pods.
async fn processed_and_accepted(c: &ProcCluster) -> (f64, f64) {
    let mut now = Scrapes::new();
    scrape_all(c, &mut now).await;
    now.values()
        .fold((0.0, 0.0), |(p, a), s| (p + s.processed, a + s.accepted))
}

async fn wait_processed(c: &ProcCluster, target: f64, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let (processed, _) = processed_and_accepted(c).await;
        if processed >= target {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the pods processed {processed} of {target} crashes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Warm capacity of three pods of setup (a), crashes/s: every pod is warmed with every crash
/// group, then given bursts of [`BURST_PER_POD`] Zipf crashes at once; the throughput of each
/// burst (first request sent to last crash processed).
async fn measure_capacity(world: &Arc<DemoWorld>, files: &DebugFiles, p: &Params) -> Vec<f64> {
    let mut flags = p.common_flags();
    flags.extend(["--cache-memory-bytes".to_string(), "0".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = ProcCluster::start(3, &flags).await;
    let client = patient_client();
    for i in 0..3 {
        until(&c, i, "/readyz").await;
        upload(&client, &c.nodes[i].url, files).await;
    }
    let mut id = 0;
    let mut rng = StdRng::seed_from_u64(17);
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // Warm: every group once per pod (converting every SymCache the crashes need).
    for node in &c.nodes {
        let mut events: Vec<CrashEvent> = (0..world.groups().len())
            .map(|g| world.event_for_group(g, &mut rng, now_ms()))
            .collect();
        for chunk in events.chunks_mut(50) {
            let body = batch_body(chunk, "warm", &mut id);
            assert_eq!(post(&client, &node.url, body).await, Ok(202));
        }
    }
    let (_, accepted) = processed_and_accepted(&c).await;
    wait_processed(&c, accepted, Duration::from_secs(600)).await;
    let mut capacities = Vec::new();
    for _ in 0..3 {
        let bodies: Vec<Vec<Vec<u8>>> = (0..3)
            .map(|_| {
                let mut events: Vec<CrashEvent> =
                    (0..BURST_PER_POD).map(|_| world.event(&mut rng)).collect();
                events
                    .chunks_mut(100)
                    .map(|chunk| batch_body(chunk, "burst", &mut id))
                    .collect()
            })
            .collect();
        let (before, _) = processed_and_accepted(&c).await;
        let started = Instant::now();
        let senders: Vec<_> = bodies
            .into_iter()
            .zip(c.nodes.iter().map(|n| n.url.clone()))
            .map(|(bodies, url)| {
                let client = client.clone();
                tokio::spawn(async move {
                    for body in bodies {
                        assert_eq!(post(&client, &url, body).await, Ok(202));
                    }
                })
            })
            .collect();
        let total = (3 * BURST_PER_POD) as f64;
        let done = wait_processed(&c, before + total, Duration::from_secs(600)).await;
        for s in senders {
            s.await.unwrap();
        }
        capacities.push(total / (done - started).as_secs_f64());
    }
    capacities
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
#[derive(Debug, Clone, Copy)]
struct Phase {
    totals: Scrape,
    max_unacked_ms: u64,
    secs: f64,
    recovered: bool,
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

/// One run of one setup.
struct RunResult {
    cold: Phase,
    restart: Phase,
    sent: u64,
    rejected: u64,
    failed: u64,
}

impl RunResult {
    /// The figure: the maximum oldest-unacked age over both phases.
    fn max_unacked_ms(&self) -> u64 {
        self.cold.max_unacked_ms.max(self.restart.max_unacked_ms)
    }
}

/// One maximum unacked age of a run (a phase's, or both phases').
type Figure = fn(&RunResult) -> u64;

/// What the poller shares with the phases.
#[derive(Default)]
struct Watch {
    phase: AtomicUsize,
    max_unacked: [AtomicU64; 2],
    /// Milliseconds since `epoch` at which the age last was at or above the recovery bound.
    last_high_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last sample.
    last_sample_ms: AtomicU64,
}

/// Runs the current phase for at least `min`, then until the oldest unacked age has stayed
/// below the recovery bound for 2 s (true), or until `max` (false).
async fn settle(
    watch: &Watch,
    epoch: Instant,
    started: Instant,
    min: Duration,
    max: Duration,
) -> bool {
    tokio::time::sleep(min.saturating_sub(started.elapsed())).await;
    loop {
        let now_ms = epoch.elapsed().as_millis() as u64;
        let fresh = now_ms.saturating_sub(watch.last_sample_ms.load(Ordering::Relaxed)) < 500;
        if fresh && now_ms.saturating_sub(watch.last_high_ms.load(Ordering::Relaxed)) >= 2000 {
            return true;
        }
        if started.elapsed() >= max {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(
    setup: &Setup,
    world: Arc<DemoWorld>,
    files: &DebugFiles,
    p: &Params,
    rate: u64,
) -> RunResult {
    let mut flags = p.common_flags();
    flags.extend(setup.extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut c = ProcCluster::start(3, &flags).await;
    let client = patient_client();
    for i in 0..3 {
        until(&c, i, "/readyz").await;
        upload(&client, &c.nodes[i].url, files).await;
    }
    let routable: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(c.nodes.iter().map(|n| n.url.clone()).collect()));
    let watch = Arc::new(Watch::default());
    let epoch = Instant::now();
    let recover_ms = p.recover_ms;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = {
        let (routable, watch, client) = (routable.clone(), watch.clone(), c.client.clone());
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
                        let now_ms = epoch.elapsed().as_millis() as u64;
                        watch.last_sample_ms.store(now_ms, Ordering::Relaxed);
                        watch.max_unacked[watch.phase.load(Ordering::Relaxed)]
                            .fetch_max(age, Ordering::Relaxed);
                        if age >= recover_ms {
                            watch.last_high_ms.store(now_ms, Ordering::Relaxed);
                        }
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
    let rejected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (routable, world) = (routable.clone(), world.clone());
        let (sent, rejected, failed, client) = (
            sent.clone(),
            rejected.clone(),
            failed.clone(),
            client.clone(),
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
                let body = batch_body(&mut batch, "bench", &mut id);
                let url = {
                    let r = routable.lock();
                    r[n % r.len()].clone()
                };
                n += 1;
                let client = client.clone();
                let (sent, rejected, failed) = (sent.clone(), rejected.clone(), failed.clone());
                tokio::spawn(async move {
                    let counter = match post(&client, &url, body).await {
                        Ok(202) => sent,
                        Ok(429) => rejected,
                        _ => failed,
                    };
                    counter.fetch_add(BATCH, Ordering::Relaxed);
                });
            }
        })
    };

    // Phase 1: cold start.
    let mut start = Scrapes::new();
    scrape_all(&c, &mut start).await;
    let started = Instant::now();
    let recovered = settle(&watch, epoch, started, p.cold_min, p.max_phase).await;
    let mut latest = Scrapes::new();
    scrape_all(&c, &mut latest).await;
    let cold = Phase {
        totals: delta(&latest, &start),
        max_unacked_ms: watch.max_unacked[0].load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
        recovered,
    };
    eprintln!(
        "  {}: cold start {:.0} s, max unacked {} ms{}",
        setup.name,
        cold.secs,
        cold.max_unacked_ms,
        if recovered { "" } else { " (not recovered)" }
    );

    // Phase 2: rolling restart.
    watch.phase.store(1, Ordering::Relaxed);
    let restart_start = latest.clone();
    let started = Instant::now();
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
        upload(&client, &c.nodes[i].url, files).await;
        until(&c, i, "/readyz").await;
        routable.lock().push(c.nodes[i].url.clone());
        scrape_all(&c, &mut latest).await;
    }
    let rolled = started.elapsed();
    let recovered = settle(
        &watch,
        epoch,
        started,
        rolled + p.tail_min,
        rolled + p.max_phase,
    )
    .await;
    scrape_all(&c, &mut latest).await;
    let restart = Phase {
        totals: delta(&latest, &restart_start),
        max_unacked_ms: watch.max_unacked[1].load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
        recovered,
    };
    eprintln!(
        "  {}: rolling restart {:.0} s ({:.0} s rolling), max unacked {} ms{}",
        setup.name,
        restart.secs,
        rolled.as_secs_f64(),
        restart.max_unacked_ms,
        if recovered { "" } else { " (not recovered)" }
    );
    let _ = stop_tx.send(true);
    let _ = traffic.await;
    let _ = poller.await;
    RunResult {
        cold,
        restart,
        sent: sent.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
    let p = Params::from_env();
    rt.block_on(async move {
        let scale = p.scale;
        let world = Arc::new(
            tokio::task::spawn_blocking(move || DemoWorld::with_scale(SEED, scale))
                .await
                .unwrap(),
        );
        let files = {
            let world = world.clone();
            tokio::task::spawn_blocking(move || DebugFiles::render(&world))
                .await
                .unwrap()
        };
        let mut biggest: Vec<_> = world
            .modules()
            .iter()
            .map(|m| (m.function_count(), m.name))
            .collect();
        biggest.sort_unstable_by(|a, b| b.cmp(a));
        let biggest: Vec<String> = biggest[..4]
            .iter()
            .map(|(n, name)| format!("{name} {n}"))
            .collect();
        println!(
            "demo world at scale {scale}: {} debug files, {:.0} MB of Breakpad text, {} \
             functions in all (largest: {}); {} crash groups, Zipf",
            files.names.len(),
            files.bytes as f64 / 1e6,
            world.modules().iter().map(|m| m.function_count()).sum::<usize>(),
            biggest.join(", "),
            world.groups().len(),
        );
        let rate: u64 = match std::env::var("BENCH_RATE").ok().and_then(|v| v.parse().ok()) {
            Some(rate) => {
                println!("rate fixed by BENCH_RATE: {rate} crashes/s");
                rate
            }
            None => {
                let capacities = measure_capacity(&world, &files, &p).await;
                let capacity = median(capacities.clone());
                let rate = (capacity * p.load).round().max(20.0) as u64;
                let each: Vec<String> = capacities.iter().map(|c| format!("{c:.0}")).collect();
                println!(
                    "warm capacity of 3 pods of setup (a), 1 worker each: {capacity:.0} crashes/s \
                     (median of bursts of {}: {}); rate = {} × capacity = {rate} crashes/s",
                    3 * BURST_PER_POD,
                    each.join(", "),
                    p.load,
                );
                rate
            }
        };
        println!(
            "3 pods, 1 worker each, publish period {} ms; phases: cold start >= {} s, rolling \
             restart + >= {} s, each until the oldest unacked age stays < {} ms for 2 s (at most \
             {} s)",
            p.publish_ms,
            p.cold_min.as_secs(),
            p.tail_min.as_secs(),
            p.recover_ms,
            p.max_phase.as_secs()
        );
        println!(
            "{} runs per setup, interleaved; per phase the median over the runs, and the \
             maximum unacked age of every run",
            p.runs
        );
        // results[setup][run]
        let mut results: Vec<Vec<RunResult>> = setups.iter().map(|_| Vec::new()).collect();
        for run_no in 0..p.runs {
            for (k, setup) in setups.iter().enumerate() {
                let r = run(setup, world.clone(), &files, &p, rate).await;
                eprintln!(
                    "run {}: {}: {} crashes accepted, {} rejected (429), {} failed; max unacked \
                     {} ms cold, {} ms restart",
                    run_no + 1,
                    setup.name,
                    r.sent,
                    r.rejected,
                    r.failed,
                    r.cold.max_unacked_ms,
                    r.restart.max_unacked_ms
                );
                results[k].push(r);
            }
        }
        println!(
            "{:<38} {:<16} {:>8} {:>14} {:>9} {:>9} {:>9} {:>12}  (each run; s = phase length)",
            "setup", "phase", "crashes", "avg sym/crash", "hit ratio", "computed", "converted",
            "max unacked",
        );
        for (setup, runs) in setups.iter().zip(&results) {
            for (phase_no, label) in ["cold start", "rolling restart"].into_iter().enumerate() {
                let phases: Vec<&Phase> = runs
                    .iter()
                    .map(|r| if phase_no == 0 { &r.cold } else { &r.restart })
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
                let each: Vec<String> = phases
                    .iter()
                    .map(|p| {
                        format!(
                            "{} ms/{:.0} s{}",
                            p.max_unacked_ms,
                            p.secs,
                            if p.recovered { "" } else { " not recovered" }
                        )
                    })
                    .collect();
                println!(
                    "{:<38} {:<16} {:>8.0} {:>11.0} µs {:>9.3} {:>9.0} {:>9.0} {:>9.0} ms  ({})",
                    setup.name,
                    label,
                    m(&|p| p.totals.crashes),
                    m(&|p| p.avg_us()),
                    m(&|p| p.hit_ratio()),
                    m(&computed),
                    m(&|p| p.totals.conversions),
                    m(&|p| p.max_unacked_ms as f64),
                    each.join(", ")
                );
            }
            let lost: u64 = runs.iter().map(|r| r.rejected + r.failed).sum();
            if lost > 0 {
                println!("{:<38} {lost} crashes rejected or failed over the runs", setup.name);
            }
        }
        println!();
        // Ratios to setup (a), per phase and for the figure (max over both phases).
        let figures: [(&str, Figure); 3] = [
            ("cold start", |r| r.cold.max_unacked_ms),
            ("rolling restart", |r| r.restart.max_unacked_ms),
            ("both phases", RunResult::max_unacked_ms),
        ];
        for (label, f) in figures {
            let med = |k: usize| median(results[k].iter().map(|r| f(r) as f64).collect());
            let a = med(0).max(1.0);
            let per_run: Vec<String> = results[0]
                .iter()
                .zip(&results[1])
                .map(|(ra, rb)| format!("{:.2}", f(rb) as f64 / f(ra).max(1) as f64))
                .collect();
            let others: Vec<String> = (1..setups.len())
                .map(|k| format!("{} {:.2}", &setups[k].name[..3], med(k) / a))
                .collect();
            let ratio = med(1) / a;
            println!(
                "{label:<16} max oldest unacked age, median: (a) {:>6.0} ms, (b) {:>6.0} ms: \
                 (b)/(a) = {ratio:.2} ({:.0} % lower; target >= 50 %: {}); per run (b)/(a) {}; \
                 vs (a): {}",
                med(0),
                med(1),
                (1.0 - ratio) * 100.0,
                if ratio <= 0.5 { "met" } else { "NOT met" },
                per_run.join(", "),
                others.join(", ")
            );
        }
        let avg = |k: usize| {
            median(
                results[k]
                    .iter()
                    .map(|r| {
                        let t = r.cold.totals.zip(&r.restart.totals, |x, y| x + y);
                        t.sym_seconds / t.crashes.max(1.0) * 1e6
                    })
                    .collect(),
            )
        };
        println!(
            "symbolication per crash over both phases, median: (a) {:.0} µs, (b) {:.0} µs ({:+.0} %)",
            avg(0),
            avg(1),
            (avg(1) / avg(0) - 1.0) * 100.0
        );
    });
}
