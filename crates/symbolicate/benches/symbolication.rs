//! Symbolication throughput: crashgrid vs `llvm-symbolizer`, same binary, same 100,000
//! addresses, one run. Prints addresses/s for both and the ratio, warm (SymCache built and
//! loaded) and cold (conversion included). Then the near cache's hit latency: the same
//! addresses as crashes of 40 frames, symbolicated whole with every frame a near-cache hit,
//! against the same crashes from the warm SymCache without a near cache (per frame, mean and
//! per-crash p50/p99).
//!
//! Run: `cargo bench -p symbolicate --bench symbolication` (needs cc, nm and llvm-symbolizer;
//! `scripts/test` installs them). Set `BENCH_ADDRESSES` to change the count.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use symbolicate::{
    CacheConfig, CrashEvent, FrameCache, FrameKey, FrameValue, SharedFrames, SymCaches,
    SymbolStore, Symbolicator,
};

/// A generated C program: `n` functions, each calling inlined helpers, so the DWARF has
/// realistic inline trees and line tables.
fn program(n: usize) -> String {
    let mut s = String::from("#include <stdio.h>\n#include <stdlib.h>\n");
    for i in 0..n {
        s.push_str(&format!(
            "static inline int mix{i}(int x) {{ int y = x * {m} + {i}; if (y & 1) y ^= x >> 3; return y; }}\n\
             static inline int fold{i}(const int *v, int n) {{ int t = 0; for (int k = 0; k < n; k++) t += mix{i}(v[k]); return t; }}\n\
             __attribute__((noinline)) int work{i}(int *v, int n) {{\n  int a = fold{i}(v, n);\n  if (a > {i}) a -= mix{i}(a);\n  for (int k = 0; k < n; k++) v[k] = a + k;\n  return a;\n}}\n",
            m = 31 + i % 17
        ));
    }
    s.push_str("int main(int argc, char **argv) {\n  (void)argv; int v[8] = {argc}; int r = 0;\n");
    for i in 0..n {
        s.push_str(&format!("  r += work{i}(v, argc);\n"));
    }
    s.push_str("  printf(\"%d\\n\", r);\n  return 0;\n}\n");
    s
}

fn main() {
    let count: usize = std::env::var("BENCH_ADDRESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bench.c");
    std::fs::write(&src, program(1500)).unwrap();
    let binary = dir.path().join("bench");
    let status = Command::new("cc")
        .args(["-g", "-O2", "-o"])
        .arg(&binary)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(status.success());

    // Addresses: uniformly inside the program's functions (seeded).
    let nm = Command::new("nm")
        .args(["--print-size", "--defined-only"])
        .arg(&binary)
        .output()
        .unwrap();
    let funcs: Vec<(u64, u64)> = String::from_utf8(nm.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            (p.len() == 4 && p[3].starts_with("work")).then(|| {
                (
                    u64::from_str_radix(p[0], 16).unwrap(),
                    u64::from_str_radix(p[1], 16).unwrap(),
                )
            })
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let addrs: Vec<u64> = (0..count)
        .map(|_| {
            let (start, size) = funcs[rng.gen_range(0..funcs.len())];
            start + rng.gen_range(0..size)
        })
        .collect();
    let size = std::fs::metadata(&binary).unwrap().len();
    println!(
        "binary: {} functions, {} KiB; {} addresses",
        funcs.len() * 3,
        size / 1024,
        addrs.len()
    );

    // llvm-symbolizer: one process, all addresses on stdin (its best case: parsed once).
    let started = Instant::now();
    let mut child = Command::new("llvm-symbolizer")
        .args(["--output-style=JSON", "--inlining", "--demangle"])
        .arg(format!("--obj={}", binary.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("llvm-symbolizer");
    let mut stdin = child.stdin.take().unwrap();
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let llvm = started.elapsed();
    let answers = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(answers, addrs.len());

    let debug_id = symbolicate::inspect(&std::fs::read(&binary).unwrap()).unwrap()[0].debug_id;
    let store = SymbolStore::open(dir.path().join("store")).unwrap();
    store.add_file(&binary).unwrap();

    // Cold: empty cache directory, conversion included.
    let cold_dir = dir.path().join("cold");
    let started = Instant::now();
    let caches = Arc::new(SymCaches::new(store.clone(), CacheConfig::new(&cold_dir)));
    let sym = Symbolicator::new(caches.clone());
    let mut frames = 0usize;
    for a in &addrs {
        frames += sym.lookup(&debug_id, *a).unwrap().len();
    }
    let cold = started.elapsed();
    assert_eq!(caches.counters().conversions, 1);

    // Warm: the same symbolicator again, SymCache in memory, one address per call.
    let started = Instant::now();
    let mut warm_frames = 0usize;
    for a in &addrs {
        warm_frames += sym.lookup(&debug_id, *a).unwrap().len();
    }
    let warm = started.elapsed();
    assert_eq!(frames, warm_frames);

    // Warm, batched as a crash's frames are: 64 addresses per call.
    let started = Instant::now();
    let mut batch_frames = 0usize;
    for chunk in addrs.chunks(64) {
        batch_frames += sym
            .lookup_many(&debug_id, chunk)
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum::<usize>();
    }
    let warm_batched = started.elapsed();
    assert_eq!(frames, batch_frames);

    let rate = |d: Duration| addrs.len() as f64 / d.as_secs_f64();
    println!("frames resolved (inline chains expanded): {frames}");
    println!(
        "{:<34} {:>12} {:>14} {:>8}",
        "tool", "time", "addresses/s", "ratio"
    );
    println!(
        "{:<34} {:>10.1}ms {:>14.0} {:>8}",
        "llvm-symbolizer (one process)",
        llvm.as_secs_f64() * 1e3,
        rate(llvm),
        "1.0x"
    );
    println!(
        "{:<34} {:>10.1}ms {:>14.0} {:>7.1}x",
        "crashgrid cold (with conversion)",
        cold.as_secs_f64() * 1e3,
        rate(cold),
        llvm.as_secs_f64() / cold.as_secs_f64()
    );
    println!(
        "{:<34} {:>10.1}ms {:>14.0} {:>7.1}x",
        "crashgrid warm (SymCache loaded)",
        warm.as_secs_f64() * 1e3,
        rate(warm),
        llvm.as_secs_f64() / warm.as_secs_f64()
    );
    println!(
        "{:<34} {:>10.1}ms {:>14.0} {:>7.1}x",
        "crashgrid warm, 64 per call",
        warm_batched.as_secs_f64() * 1e3,
        rate(warm_batched),
        llvm.as_secs_f64() / warm_batched.as_secs_f64()
    );
    println!("targets: warm >= 20x, cold >= 5x");

    near_cache(&caches, debug_id, &addrs);
}

/// Per-frame time of symbolicating `events` with `sym`: (mean ns per frame, per-crash p50 and
/// p99 in ns per frame).
fn per_frame(sym: &Symbolicator, events: &[CrashEvent], frames: usize) -> (f64, f64, f64) {
    let mut per_crash: Vec<f64> = Vec::with_capacity(events.len());
    let started = Instant::now();
    for e in events {
        let t = Instant::now();
        let out = sym.symbolicate(e);
        per_crash.push(t.elapsed().as_nanos() as f64 / frames as f64);
        std::hint::black_box(out);
    }
    let mean = started.elapsed().as_nanos() as f64 / (events.len() * frames) as f64;
    per_crash.sort_by(f64::total_cmp);
    let q = |p: f64| per_crash[((per_crash.len() - 1) as f64 * p) as usize];
    (mean, q(0.5), q(0.99))
}

/// The near cache's hit latency against warm SymCache lookups, same crashes, same run.
fn near_cache(caches: &Arc<SymCaches>, debug_id: symbolicate::DebugId, addrs: &[u64]) {
    const FRAMES: usize = 40;
    let image: u64 = 0x7f00_0000_0000;
    let events: Vec<CrashEvent> = addrs
        .chunks_exact(FRAMES)
        .enumerate()
        .map(|(n, chunk)| {
            let frames: Vec<serde_json::Value> = chunk
                .iter()
                .map(|a| serde_json::json!({"instruction_addr": format!("{:#x}", image + a)}))
                .collect();
            CrashEvent::from_value(&serde_json::json!({
                "event_id": format!("near-{n}"), "timestamp": 1_795_599_000,
                "app": {"id": "bench", "version": "1"}, "platform": "native",
                "os": {"name": "Linux", "version": "6"}, "exception": {"type": "SIGSEGV"},
                "modules": [{"type": "elf", "code_file": "/bench", "debug_id": debug_id.to_string(),
                    "image_addr": format!("{image:#x}"), "image_size": 0x1000_0000u64}],
                "threads": [{"crashed": true, "frames": frames}]
            }))
            .unwrap()
        })
        .collect();
    let plain = Symbolicator::new(caches.clone());
    let near = Arc::new(FrameCache::new(1 << 20));
    let cached = Symbolicator::with_frame_cache(caches.clone(), near.clone());
    for e in &events {
        std::hint::black_box(cached.symbolicate(e));
    }
    // The shared path (what a pod of a cluster runs): a near cache in front of a shared
    // cache, here an in-process map (a grid hit on a partition this pod holds, without RPC).
    let map = Arc::new(MapFrames::default());
    let shared_near = Arc::new(FrameCache::new(1 << 20));
    let shared_cached = Symbolicator::with_frame_cache(caches.clone(), shared_near.clone());
    shared_cached.install_shared(map.clone());
    let shared_only = Symbolicator::new(caches.clone());
    shared_only.install_shared(map.clone());
    for e in &events {
        std::hint::black_box(shared_cached.symbolicate(e));
    }
    let filled = near.stats();
    let shared_filled = shared_near.stats();
    let (warm_mean, warm_p50, warm_p99) = per_frame(&plain, &events, FRAMES);
    let (hit_mean, hit_p50, hit_p99) = per_frame(&cached, &events, FRAMES);
    let (map_mean, map_p50, map_p99) = per_frame(&shared_only, &events, FRAMES);
    let (shit_mean, shit_p50, shit_p99) = per_frame(&shared_cached, &events, FRAMES);
    let hits = near.stats().hits - filled.hits;
    assert_eq!(
        hits,
        near.stats().hits + near.stats().misses - filled.hits - filled.misses,
        "every lookup of the second pass is a near-cache hit"
    );
    let shared_hits = shared_near.stats().hits - shared_filled.hits;
    assert_eq!(
        shared_hits,
        shared_near.stats().hits + shared_near.stats().misses
            - shared_filled.hits
            - shared_filled.misses,
        "every lookup of the shared path's second pass is a near-cache hit"
    );
    println!();
    println!(
        "{} crashes of {FRAMES} frames, whole crashes symbolicated; ns per frame: mean, per-crash p50, p99",
        events.len()
    );
    println!(
        "{:<34} {:>8.0} {:>8.0} {:>8.0}",
        "warm SymCache, no near cache", warm_mean, warm_p50, warm_p99
    );
    println!(
        "{:<34} {:>8.0} {:>8.0} {:>8.0}   {:.1}x faster ({hits} hits)",
        "near cache, every frame a hit",
        hit_mean,
        hit_p50,
        hit_p99,
        warm_mean / hit_mean
    );
    println!(
        "{:<34} {:>8.0} {:>8.0} {:>8.0}",
        "shared path, in-process map only", map_mean, map_p50, map_p99
    );
    println!(
        "{:<34} {:>8.0} {:>8.0} {:>8.0}   {:.1}x faster ({shared_hits} hits)",
        "shared path, near cache hit",
        shit_mean,
        shit_p50,
        shit_p99,
        map_mean / shit_mean
    );
}

/// A shared frame cache in one process: a map (no RPC), computing what it lacks.
#[derive(Default)]
struct MapFrames(parking_lot::Mutex<std::collections::HashMap<FrameKey, FrameValue>>);

impl SharedFrames for MapFrames {
    fn get_or_compute(
        &self,
        keys: &[FrameKey],
        compute: &mut dyn FnMut(&[FrameKey]) -> Vec<FrameValue>,
    ) -> Vec<FrameValue> {
        let known: Vec<Option<FrameValue>> = {
            let map = self.0.lock();
            keys.iter().map(|k| map.get(k).cloned()).collect()
        };
        let missing: Vec<FrameKey> = keys
            .iter()
            .zip(&known)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut computed = if missing.is_empty() {
            Vec::new()
        } else {
            compute(&missing)
        }
        .into_iter();
        let mut map = self.0.lock();
        keys.iter()
            .zip(known)
            .map(|(k, v)| {
                v.unwrap_or_else(|| {
                    let v = computed.next().expect("one value per missing key");
                    map.insert(*k, v.clone());
                    v
                })
            })
            .collect()
    }

    fn put(&self, entries: &[(FrameKey, FrameValue)]) {
        self.0.lock().extend(entries.iter().cloned());
    }
}
