//! Leader reduce capacity: simulated partials from 200 pods at 1 Hz, each second accepted by
//! the leader's `Reducer` and merged into a 5-minute snapshot, as the leader does.
//!
//! The budget (the baseline of the ratio) is one second of one core per simulated second;
//! the target is under half a core. A second figure compares with the same crashes merged
//! into a single adding `Window` (what one pod does for itself), to show the price of
//! replace-per-pod.
//!
//! Run: `cargo bench -p stats --bench reduce`. `BENCH_PODS` (default 200) and
//! `BENCH_CRASHES_PER_POD` (crashes per pod per second, default 25: 5,000/s in the cluster).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stats::{CrashRecord, Outbox, Partial, PodBacklog, Reducer, Window, WindowConfig};

const T0: u64 = 1_800_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One pod's partial for one second: realistic cardinalities (30 app versions, 40 devices,
/// 300 crash groups with Zipf-like skew, a million users).
fn partial(rng: &mut StdRng, second: u64, crashes: usize) -> Partial {
    let mut p = Partial::new();
    for _ in 0..crashes {
        let skew = |rng: &mut StdRng, n: usize| ((rng.gen::<f64>().powi(3)) * n as f64) as usize;
        let g = skew(rng, 300);
        let app = format!("5.{}.0", skew(rng, 30));
        let os = format!("{}.{}", 12 + skew(rng, 6), skew(rng, 4));
        let device = format!("Device{}", skew(rng, 40));
        let group = format!("{:016x}", g as u64 * 0x9e37_79b9);
        let title = format!("SIGSEGV in function_{g}");
        let user = format!("user-{}", rng.gen_range(0..1_000_000));
        p.add(&CrashRecord {
            second,
            app_version: &app,
            platform: ["android", "ios"][skew(rng, 2)],
            os_version: &os,
            device_model: &device,
            exception_type: ["SIGSEGV", "SIGABRT", "SIGBUS"][skew(rng, 3)],
            group_id: &group,
            group_title: &title,
            user_id: Some(&user),
            symbolication_us: rng.gen_range(100..20_000),
        });
    }
    p
}

fn main() {
    let pods = env("BENCH_PODS", 200);
    let per_pod = env("BENCH_CRASHES_PER_POD", 25);
    let warm = 300u64;
    let measured = 30u64;
    let config = WindowConfig::default();
    let mut rng = StdRng::seed_from_u64(7);
    println!(
        "leader reduce: {pods} pods at 1 Hz, {per_pod} crashes/pod/s ({} crashes/s), window 300 s",
        pods * per_pod
    );
    // Pre-build one second of partials per pod; reusing them keeps generation out of the
    // measurement (the reducer stores clones, as it stores decoded messages).
    let seconds: Vec<Vec<Partial>> = (0..8)
        .map(|s| {
            (0..pods)
                .map(|_| partial(&mut rng, T0 + s, per_pod))
                .collect()
        })
        .collect();
    let names: Vec<String> = (0..pods).map(|i| format!("pod-{i}")).collect();
    let mut outboxes: Vec<Outbox<u64>> = (0..pods).map(|_| Outbox::new(300)).collect();
    let mut reducer = Reducer::new(config.clone(), T0, 1).unwrap();
    let mut window = Window::new(config.clone(), T0).unwrap();

    let mut reduce_time = Duration::ZERO;
    let mut window_time = Duration::ZERO;
    let mut last_total = 0;
    for s in 0..warm + measured {
        let now = T0 + s;
        let batch = &seconds[(s % 8) as usize];
        // The pods' side (not measured): record the second, build the message.
        let messages: Vec<_> = outboxes
            .iter_mut()
            .zip(&names)
            .zip(batch)
            .map(|((o, name), p)| {
                o.record(now, p, s);
                let m = o.message(name, 1, PodBacklog::default());
                o.advance(now);
                m
            })
            .collect();
        let started = Instant::now();
        for m in messages {
            let accepted = reducer.accept(m, now).unwrap();
            assert!(!accepted.slices.is_empty());
        }
        reducer.advance(now);
        let snap = reducer.snapshot(now);
        let took = started.elapsed();
        last_total = snap.total;
        let started = Instant::now();
        for p in batch {
            window.merge(now, p).unwrap();
        }
        window.advance(now);
        let wsnap = window.snapshot(now);
        let wtook = started.elapsed();
        assert_eq!(wsnap.total, snap.total, "both count the same crashes");
        // Acknowledge so the next message carries only the new second.
        for (o, _) in outboxes.iter_mut().zip(&names) {
            o.on_accepted(&stats::Accepted {
                epoch: 1,
                slices: vec![(now, u64::MAX)],
            });
        }
        if s >= warm {
            reduce_time += took;
            window_time += wtook;
        }
    }
    let per_second = reduce_time / measured as u32;
    let per_second_window = window_time / measured as u32;
    println!("window total at the end: {last_total} crashes in 300 s");
    println!(
        "{:<44} {:>12} {:>18}",
        "per simulated second (full window)", "CPU time", "cores (÷ 1 s)"
    );
    println!(
        "{:<44} {:>12.1?} {:>18.3}",
        format!("Reducer: {pods} accepts + snapshot"),
        per_second,
        per_second.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.1?} {:>18.3}",
        "Window (one adding window, same crashes)",
        per_second_window,
        per_second_window.as_secs_f64()
    );
    println!(
        "ratio Reducer / Window: {:.2}; target: under 0.5 cores -> {}",
        per_second.as_secs_f64() / per_second_window.as_secs_f64().max(1e-9),
        if per_second.as_secs_f64() < 0.5 {
            "met"
        } else {
            "NOT met"
        }
    );
}
