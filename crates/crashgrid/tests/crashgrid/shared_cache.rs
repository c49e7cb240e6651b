//! The symbolication cache shared by all pods, with real `crashgrid serve` processes and real
//! debug files (a `cc -g -O2` ELF, the demo world's Breakpad files), uploaded to every pod (each
//! has its own symbol store): a frame computed on one pod is served on another without a
//! second SymCache computation; kill -9 of a pod loses no entry; a joining pod gets its share of
//! the partitions and serves hits from them; a rolling restart keeps the cluster's grid hit
//! ratio high. Counters come from `/metrics`; nothing here asserts a duration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crashgrid::demo::DemoWorld;
use parking_lot::Mutex;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::{json, Value};
use symbolicate::CrashEvent;

use crate::harness::build_crasher;
use crate::procs::ProcCluster;

/// Seed of the demo world whose debug files the pods get.
const SEED: u64 = 17;

/// The value of one series of node `i`'s `/metrics` (`name` with its labels, as printed).
async fn metric(c: &ProcCluster, i: usize, series: &str) -> Option<f64> {
    let text = c
        .client
        .get(format!("{}/metrics", c.nodes[i].url))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    parse_metric(&text, series)
}

fn parse_metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The counters a test reads, from one scrape.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    processed: f64,
    computations: f64,
    conversions: f64,
    hits_local: f64,
    hits_remote: f64,
    waits: f64,
    misses: f64,
    fallbacks: f64,
    symbolicated_frames: f64,
    owned: f64,
    migrations_done: f64,
    migrations_failed: f64,
    migration_entries: f64,
}

impl Counters {
    /// Lookups the grid answered (from a partition here, another pod, or a wait for a pod
    /// computing it).
    fn answered(&self) -> f64 {
        self.hits_local + self.hits_remote + self.waits
    }

    fn minus(&self, o: &Counters) -> Counters {
        Counters {
            processed: self.processed - o.processed,
            computations: self.computations - o.computations,
            conversions: self.conversions - o.conversions,
            hits_local: self.hits_local - o.hits_local,
            hits_remote: self.hits_remote - o.hits_remote,
            waits: self.waits - o.waits,
            misses: self.misses - o.misses,
            fallbacks: self.fallbacks - o.fallbacks,
            symbolicated_frames: self.symbolicated_frames - o.symbolicated_frames,
            owned: self.owned,
            migrations_done: self.migrations_done - o.migrations_done,
            migrations_failed: self.migrations_failed - o.migrations_failed,
            migration_entries: self.migration_entries - o.migration_entries,
        }
    }
}

async fn counters(c: &ProcCluster, i: usize) -> Counters {
    let text = c
        .client
        .get(format!("{}/metrics", c.nodes[i].url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = |s: &str| parse_metric(&text, s).unwrap_or_else(|| panic!("{s} in /metrics"));
    Counters {
        processed: m("crashgrid_crashes_processed_total"),
        computations: m("crashgrid_grid_computations_total"),
        conversions: m("crashgrid_symcache_conversions_total"),
        hits_local: m("crashgrid_grid_hits_total{tier=\"local\"}"),
        hits_remote: m("crashgrid_grid_hits_total{tier=\"remote\"}"),
        waits: m("crashgrid_grid_coalesced_waits_total"),
        misses: m("crashgrid_grid_misses_total"),
        fallbacks: m("crashgrid_grid_coalesce_fallbacks_total"),
        symbolicated_frames: parse_metric(&text, "crashgrid_frames_total{status=\"symbolicated\"}")
            .unwrap_or(0.0),
        owned: m("crashgrid_grid_partitions{role=\"owner\"}"),
        migrations_done: m("crashgrid_grid_migrations_total{outcome=\"done\"}"),
        migrations_failed: m("crashgrid_grid_migrations_total{outcome=\"failed\"}"),
        migration_entries: m("crashgrid_grid_migration_entries_total"),
    }
}

/// Waits until node `i` answers `/readyz` with 200.
async fn until_ready(c: &ProcCluster, i: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = c
            .client
            .get(format!("{}/readyz", c.nodes[i].url))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().as_u16() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never became ready; logs:\n{}",
            c.nodes[i].id,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `i` answers HTTP at all.
async fn until_up(c: &ProcCluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .client
        .get(format!("{}/healthz", c.nodes[i].url))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            c.nodes[i].id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Uploads the demo world's debug files to node `i`.
async fn upload_demo(c: &ProcCluster, i: usize) {
    let (ok, failed) = crashgrid::loadgen::upload_debug_files(&c.nodes[i].url, SEED, 4)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    assert!(ok > 40);
}

/// POSTs `events` to node `i` in batches; every batch must be accepted.
async fn post(c: &ProcCluster, i: usize, events: &[CrashEvent]) {
    for batch in events.chunks(50) {
        let r = c
            .client
            .post(format!("{}/api/v1/crashes", c.nodes[i].url))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(batch).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    }
}

/// Waits until node `i` has processed `n` crashes in total.
async fn until_processed(c: &ProcCluster, i: usize, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = metric(c, i, "crashgrid_crashes_processed_total")
            .await
            .unwrap_or(0.0);
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} processed {done} of {n}; logs:\n{}",
            c.nodes[i].id,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One event per crash group of the world (every frame of the world once), then `extra`
/// Zipf-distributed ones; ids prefixed with `tag`.
fn demo_events(world: &DemoWorld, tag: &str, extra: usize, seed: u64) -> Vec<CrashEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<CrashEvent> = (0..world.groups().len())
        .map(|g| world.event_for_group(g, &mut rng, 1_795_599_000_000))
        .collect();
    out.extend((0..extra).map(|_| world.event(&mut rng)));
    for (n, e) in out.iter_mut().enumerate() {
        e.event_id = format!("{tag}-{n}");
    }
    out
}

/// The sink records of node `i` by event id (the symbolicated crash, group id included).
fn sink_records(c: &ProcCluster, i: usize) -> HashMap<String, Value> {
    let text = std::fs::read_to_string(c.nodes[i].dir.join("crashes.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["event_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Rule: a frame computed on pod A is served to pod B from the grid: B converts no SymCache
/// and computes nothing, its grid answers every frame, and its symbolicated output equals A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_computed_on_one_pod_is_served_on_another_without_recomputation() {
    let c = ProcCluster::start(3, &[]).await;
    for i in 0..3 {
        until_ready(&c, i, Duration::from_secs(30)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let crasher = build_crasher(dir.path());
    let binary = std::fs::read(&crasher.path).unwrap();
    for n in &c.nodes {
        let r = c
            .client
            .put(format!("{}/api/v1/debug-files/libgame.so", n.url))
            .body(binary.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let base = 0x7f3a_0000_0000u64;
    let events = |tag: &str| -> Vec<CrashEvent> {
        ["crash_render", "crash_physics", "crash_audio", "crash_network"]
            .iter()
            .enumerate()
            .map(|(k, site)| {
                let frames = [
                    json!({"instruction_addr": format!("{:#x}", base + crasher.addr_in(site))}),
                    json!({"instruction_addr": format!("{:#x}", base + crasher.addr_in("game_loop"))}),
                    json!({"instruction_addr": format!("{:#x}", crasher.addr_in("game_loop") + 1), "addr_mode": "rel:0"}),
                    json!({"instruction_addr": "0x10", "addr_mode": "abs"}),
                ];
                CrashEvent::from_value(&json!({
                    "event_id": format!("{tag}-{k}"), "timestamp": 1_795_599_000,
                    "app": {"id": "demo", "version": "1.0"}, "platform": "native",
                    "os": {"name": "Linux", "version": "6.1"},
                    "exception": {"type": "SIGSEGV"},
                    "modules": [{"type": "elf", "code_file": "/opt/demo/libgame.so",
                        "debug_id": crasher.debug_id, "image_addr": format!("{base:#x}"),
                        "image_size": 0x100000}],
                    "threads": [{"crashed": true, "frames": frames}]
                }))
                .unwrap()
            })
            .collect()
    };
    post(&c, 0, &events("a")).await;
    until_processed(&c, 0, 4.0).await;
    let a = counters(&c, 0).await;
    let mut converted = 0.0;
    for i in 0..3 {
        converted += counters(&c, i).await.conversions;
    }
    assert_eq!(
        converted, 1.0,
        "the debug file's home converted it, once: {a:?}"
    );
    // Distinct frames: 4 crash sites + game_loop as a caller (absolute and relative are the
    // same key) + the rel+1 variant.
    assert!(a.computations >= 5.0, "A computed the frames: {a:?}");

    post(&c, 1, &events("b")).await;
    until_processed(&c, 1, 4.0).await;
    let b = counters(&c, 1).await;
    let mut converted_after = 0.0;
    for i in 0..3 {
        converted_after += counters(&c, i).await.conversions;
    }
    assert_eq!(converted_after, 1.0, "B's crashes converted nothing: {b:?}");
    assert_eq!(b.computations, 0.0, "B computed nothing: {b:?}");
    assert_eq!(
        b.answered(),
        a.computations,
        "the grid answered every frame: {b:?}"
    );
    assert!(b.symbolicated_frames >= 12.0, "{b:?}");

    // Same output on both pods (the events differ only in their ids).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ra, rb) = (sink_records(&c, 0), sink_records(&c, 1));
    for k in 0..4 {
        let (x, y) = (&ra[&format!("a-{k}")], &rb[&format!("b-{k}")]);
        assert_eq!(x["threads"], y["threads"], "crash {k}");
        assert_eq!(x["modules"], y["modules"], "crash {k}");
        assert_eq!(x["group_id"], y["group_id"], "crash {k}");
        assert_eq!(x["threads"][0]["frames"][0]["status"], "symbolicated");
    }
    // The grid's figures are on /metrics.
    for series in [
        "crashgrid_grid_hit_ratio{tier=\"all\"}",
        "crashgrid_grid_rpc_p99_seconds",
        "crashgrid_grid_entries",
        "crashgrid_grid_bytes",
        "crashgrid_grid_evictions_total",
        "crashgrid_grid_migrations_running",
        "crashgrid_grid_migration_bytes_total",
    ] {
        assert!(metric(&c, 1, series).await.is_some(), "{series}");
    }
    let entries: f64 = {
        let mut sum = 0.0;
        for i in 0..3 {
            sum += metric(&c, i, "crashgrid_grid_entries").await.unwrap();
        }
        sum
    };
    assert_eq!(
        entries,
        2.0 * a.computations,
        "one owner and one backup copy each"
    );
}

/// Rule (homes): the frames of a debug file are computed on one pod, its home (the owner of
/// the partition its debug id hashes to), whichever pod meets them: in a cold cluster every
/// debug file is converted once in all, not once per pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_debug_file_is_converted_once_in_a_cold_cluster() {
    let c = ProcCluster::start(3, &[]).await;
    for i in 0..3 {
        until_ready(&c, i, Duration::from_secs(30)).await;
        upload_demo(&c, i).await;
    }
    let world = DemoWorld::new(SEED);
    let events = demo_events(&world, "cold", 0, 3);
    let modules: std::collections::HashSet<_> = events
        .iter()
        .flat_map(|e| e.modules.iter().filter_map(|m| m.debug_id))
        .collect();
    // Every pod gets a third of the crash groups, all at once.
    let thirds: Vec<Vec<CrashEvent>> = (0..3)
        .map(|i| events.iter().skip(i).step_by(3).cloned().collect())
        .collect();
    futures_util::future::join_all(thirds.iter().enumerate().map(|(i, part)| post(&c, i, part)))
        .await;
    for (i, part) in thirds.iter().enumerate() {
        until_processed(&c, i, part.len() as f64).await;
    }
    let (mut converted, mut asked, mut served, mut fallback) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..3 {
        converted += counters(&c, i).await.conversions;
        let m = c.metrics(i).await.unwrap();
        let get = |side: &str| {
            m.get(&format!(
                "crashgrid_grid_home_frames_total{{side=\"{side}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        };
        asked += get("asked");
        served += get("served");
        fallback += get("fallback");
    }
    assert!(
        converted <= modules.len() as f64,
        "{converted} conversions for {} debug files",
        modules.len()
    );
    assert!(
        asked > 0.0 && served == asked,
        "asked {asked}, served {served}"
    );
    assert_eq!(fallback, 0.0);
}

/// Rule: kill -9 of the pod that computed every frame loses no entry: the survivors answer
/// every frame from the grid (owner or backup) and compute nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_pod_loses_no_entry() {
    let mut c = ProcCluster::start(3, &[]).await;
    for i in 0..3 {
        until_ready(&c, i, Duration::from_secs(30)).await;
        upload_demo(&c, i).await;
    }
    let world = DemoWorld::new(SEED);
    let first = demo_events(&world, "first", 0, 1);
    post(&c, 0, &first).await;
    until_processed(&c, 0, first.len() as f64).await;
    let a = counters(&c, 0).await;
    assert!(a.computations > 1000.0, "{a:?}");
    // Pods 1 and 2 converted what they are the home of, for pod 0.
    let converted_before = [
        counters(&c, 1).await.conversions,
        counters(&c, 2).await.conversions,
    ];

    c.nodes[0].kill9();
    c.converged(2, Duration::from_secs(30)).await;
    // The same crashes again (new ids), half on each survivor.
    let again = demo_events(&world, "again", 0, 2);
    let (x, y) = again.split_at(again.len() / 2);
    post(&c, 1, x).await;
    post(&c, 2, y).await;
    until_processed(&c, 1, x.len() as f64).await;
    until_processed(&c, 2, y.len() as f64).await;
    for i in [1, 2] {
        let s = counters(&c, i).await;
        assert_eq!(s.computations, 0.0, "{}: {s:?}", c.nodes[i].id);
        assert_eq!(
            s.conversions,
            converted_before[i - 1],
            "{}: no conversion after the kill: {s:?}",
            c.nodes[i].id
        );
        assert!(s.answered() > 500.0, "{}: {s:?}", c.nodes[i].id);
        assert!(s.symbolicated_frames > 1000.0, "{}: {s:?}", c.nodes[i].id);
    }
}

/// Rule: a pod joining a two-pod cluster gets about a third of the partitions, becomes ready
/// once they arrived, and then answers the frames the others computed from its own partitions
/// (local hits) or its peers, computing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_pod_gets_its_share_and_serves_hits_after_migration() {
    let mut c = ProcCluster::start_some(3, 2, &[]).await;
    for i in 0..2 {
        until_ready(&c, i, Duration::from_secs(30)).await;
        upload_demo(&c, i).await;
    }
    let world = DemoWorld::new(SEED);
    let events = demo_events(&world, "two", 0, 1);
    let (x, y) = events.split_at(events.len() / 2);
    post(&c, 0, x).await;
    post(&c, 1, y).await;
    until_processed(&c, 0, x.len() as f64).await;
    until_processed(&c, 1, y.len() as f64).await;
    let computed = counters(&c, 0).await.computations + counters(&c, 1).await.computations;

    c.restart(2);
    until_up(&c, 2).await;
    upload_demo(&c, 2).await;
    until_ready(&c, 2, Duration::from_secs(60)).await;
    c.converged(3, Duration::from_secs(30)).await;
    let joined = counters(&c, 2).await;
    assert!(
        (85.0..=96.0).contains(&joined.owned),
        "about 271 / 3 partitions owned: {joined:?}"
    );
    assert!(joined.migrations_done > 0.0, "{joined:?}");
    assert_eq!(joined.migrations_failed, 0.0, "{joined:?}");
    // It holds about 2/3 of the entries (owner or backup of 2/3 of the partitions).
    assert!(
        joined.migration_entries > computed / 3.0,
        "received {} of {computed} entries",
        joined.migration_entries
    );

    let again = demo_events(&world, "three", 0, 3);
    post(&c, 2, &again).await;
    until_processed(&c, 2, again.len() as f64).await;
    let s = counters(&c, 2).await;
    assert_eq!(s.computations, 0.0, "{s:?}");
    assert_eq!(s.conversions, 0.0, "{s:?}");
    assert!(
        s.hits_local > s.hits_remote,
        "most frames from its own partitions: {s:?}"
    );
}

/// Rule: a rolling restart of all three pods, one at a time (taken out of traffic, SIGTERM, a
/// new pod with an empty data directory started, its debug files uploaded, ready), keeps the
/// share of grid lookups answered without computing above 80 % in every step, and no
/// partition is lost (no failed migration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_the_cluster_hit_ratio_high() {
    let mut c = ProcCluster::start(3, &[]).await;
    for i in 0..3 {
        until_ready(&c, i, Duration::from_secs(30)).await;
        upload_demo(&c, i).await;
    }
    let world = Arc::new(DemoWorld::new(SEED));
    // Warm-up: every group, spread over the pods.
    let warm = demo_events(&world, "warm", 300, 1);
    let per = warm.len().div_ceil(3);
    for (i, chunk) in warm.chunks(per).enumerate() {
        post(&c, i, chunk).await;
    }
    for (i, chunk) in warm.chunks(per).enumerate() {
        until_processed(&c, i, chunk.len() as f64).await;
    }

    // Background traffic over the pods in the Service, Zipf-distributed demo crashes.
    let routable: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(c.nodes.iter().map(|n| n.url.clone()).collect()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let traffic = {
        let routable = routable.clone();
        let world = world.clone();
        let client = c.client.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(9);
            let (mut sent, mut n) = (0u64, 0usize);
            loop {
                let batch: Vec<CrashEvent> = (0..10).map(|_| world.event(&mut rng)).collect();
                let url = {
                    let r = routable.lock();
                    r[n % r.len()].clone()
                };
                n += 1;
                let ok = client
                    .post(format!("{url}/api/v1/crashes"))
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&batch).unwrap())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 202);
                if ok {
                    sent += batch.len() as u64;
                }
                tokio::select! {
                    _ = stop_rx.changed() => return sent,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The latest counters of every pod ever seen, by pod id.
    let mut latest: HashMap<String, Counters> = HashMap::new();
    for i in 0..3 {
        latest.insert(c.nodes[i].id.clone(), counters(&c, i).await);
    }
    let mut ratios = Vec::new();
    for i in 0..3 {
        let at_start = latest.clone();
        // Out of the Service, then SIGTERM: the pod hands off and leaves.
        routable.lock().retain(|u| *u != c.nodes[i].url);
        tokio::time::sleep(Duration::from_millis(300)).await;
        latest.insert(c.nodes[i].id.clone(), counters(&c, i).await);
        let status = c.nodes[i].terminate();
        assert!(status.success(), "{} exited with {status}", c.nodes[i].id);
        let log = c.nodes[i].log();
        let handoff = log
            .lines()
            .find(|l| l.contains("handed off the shared symbolication cache"))
            .unwrap_or_else(|| panic!("no hand-off logged:\n{log}"));
        eprintln!("step {i}: {handoff}");
        let new_id = format!("node-{}-v2", i + 1);
        c.replace(i, &new_id);
        until_up(&c, i).await;
        upload_demo(&c, i).await;
        until_ready(&c, i, Duration::from_secs(60)).await;
        routable.lock().push(c.nodes[i].url.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        for j in 0..3 {
            latest.insert(c.nodes[j].id.clone(), counters(&c, j).await);
        }
        // This step's grid lookups over every pod that lived during it.
        let (mut answered, mut computed, mut failed) = (0.0, 0.0, 0.0);
        for (id, now) in &latest {
            let d = now.minus(&at_start.get(id).copied().unwrap_or_default());
            answered += d.answered();
            computed += d.computations;
            failed += d.migrations_failed;
        }
        let ratio = answered / (answered + computed).max(1.0);
        eprintln!(
            "step {i}: grid answered {answered} frames, computed {computed}: hit ratio {ratio:.3}"
        );
        assert!(answered > 0.0, "the new pod asked the grid");
        assert!(
            ratio > 0.8,
            "step {i}: hit ratio {ratio:.3} ({answered} answered, {computed} computed)"
        );
        assert_eq!(failed, 0.0, "step {i}: no partition lost");
        ratios.push(ratio);
    }
    let _ = stop_tx.send(true);
    let sent = traffic.await.unwrap();
    assert!(sent > 100, "traffic flowed throughout ({sent} crashes)");
    eprintln!("hit ratio per step: {ratios:?}");
}
