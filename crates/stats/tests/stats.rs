//! Behavioural tests of the `stats` crate. Each test names the rule it
//! checks.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stats::{
    CrashRecord, Dimension, GroupStat, HyperLogLog, KeyedWindow, LatencySketch, Partial, Snapshot,
    StatsError, ValueCount, Window, WindowConfig, OTHER,
};

const T: u64 = 1_700_000_000;

/// Owned twin of `CrashRecord` so random records can be kept around.
#[derive(Clone, Debug)]
struct Rec {
    second: u64,
    app_version: String,
    platform: String,
    os_version: String,
    device_model: String,
    exception_type: String,
    group_id: String,
    group_title: String,
    user_id: Option<String>,
    symbolication_us: u64,
}

impl Rec {
    fn as_record(&self) -> CrashRecord<'_> {
        CrashRecord {
            second: self.second,
            app_version: &self.app_version,
            platform: &self.platform,
            os_version: &self.os_version,
            device_model: &self.device_model,
            exception_type: &self.exception_type,
            group_id: &self.group_id,
            group_title: &self.group_title,
            user_id: self.user_id.as_deref(),
            symbolication_us: self.symbolication_us,
        }
    }

    fn value(&self, dim: Dimension) -> &str {
        dim.value_of(&self.as_record())
    }
}

/// Index in `0..n`, skewed towards 0 so counts differ between values.
fn skewed(rng: &mut StdRng, n: usize) -> usize {
    ((rng.gen::<f64>().powi(2)) * n as f64) as usize
}

/// A random symbolication time: zeros, and values spread over 1 µs..10 s.
fn random_latency(rng: &mut StdRng) -> u64 {
    if rng.gen_bool(0.02) {
        0
    } else {
        let exp = rng.gen_range(0..7u32);
        rng.gen_range(1..1_000u64) * 10u64.pow(exp) / 100 + 1
    }
}

/// Cardinalities: app versions 25, OS versions 30 and device models 40
/// exceed the default breakdown limit of 20 so "(other)" is exercised;
/// 60 groups exceed the 20 top groups.
fn random_rec(rng: &mut StdRng, seconds: std::ops::RangeInclusive<u64>, users: u32) -> Rec {
    let g = skewed(rng, 60);
    Rec {
        second: rng.gen_range(seconds),
        app_version: format!("3.{}.0", skewed(rng, 25)),
        platform: ["ios", "android", "macos"][skewed(rng, 3)].to_owned(),
        os_version: format!("{}.{}", 10 + skewed(rng, 6), skewed(rng, 5)),
        device_model: format!("Model{}", skewed(rng, 40)),
        exception_type: ["SIGSEGV", "SIGABRT", "EXC_BAD_ACCESS", "SIGBUS", "SIGILL"]
            [skewed(rng, 5)]
        .to_owned(),
        group_id: format!("{:016x}", (g as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        group_title: format!("SIGSEGV: crate::module::function_{g}"),
        user_id: rng
            .gen_bool(0.9)
            .then(|| format!("user-{}", rng.gen_range(0..users))),
        symbolication_us: random_latency(rng),
    }
}

fn partial_of(recs: &[Rec]) -> Partial {
    let mut p = Partial::new();
    for r in recs {
        p.add(&r.as_record());
    }
    p
}

fn merged(a: &Partial, b: &Partial) -> Partial {
    let mut out = a.clone();
    out.merge(b);
    out
}

/// Lower quantile: element at rank floor(q·(n−1)) — the definition
/// documented on `LatencySketch::quantile`.
fn exact_quantile(sorted: &[u64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize] as f64
}

fn assert_within_alpha(estimate: f64, exact: f64, what: &str) {
    let bound = LatencySketch::RELATIVE_ACCURACY * exact + 1e-9;
    assert!(
        (estimate - exact).abs() <= bound,
        "{what}: estimate {estimate} exact {exact}"
    );
}

fn assert_hll_within_3se(estimate: f64, exact: usize) {
    let bound = 3.0 * HyperLogLog::RELATIVE_STANDARD_ERROR * exact as f64;
    assert!(
        (estimate - exact as f64).abs() <= bound,
        "estimate {estimate} for {exact} distinct (bound ±{bound})"
    );
}

// Rule: Partial::merge is associative and commutative with exact (==)
// results, the empty partial is its identity, and merging partials equals
// the partial of all their records (including across the HyperLogLog
// sparse -> dense conversion).
#[test]
fn merge_is_associative_and_commutative() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut saw_dense = false;
    let mut saw_sparse = false;
    for trial in 0..30 {
        // Some trials get enough distinct users to force dense sketches.
        let users = if trial % 3 == 0 { 100_000 } else { 50 };
        let mut parts = Vec::new();
        let mut all = Vec::new();
        for _ in 0..3 {
            let n = rng.gen_range(0..400);
            let recs: Vec<Rec> = (0..n).map(|_| random_rec(&mut rng, T..=T, users)).collect();
            parts.push(partial_of(&recs));
            all.extend(recs);
        }
        let (a, b, c) = (&parts[0], &parts[1], &parts[2]);

        let left = merged(&merged(a, b), c);
        let right = merged(a, &merged(b, c));
        assert_eq!(left, right, "associativity, trial {trial}");
        assert_eq!(merged(a, b), merged(b, a), "commutativity, trial {trial}");
        assert_eq!(merged(&merged(c, a), b), left, "any order, trial {trial}");
        assert_eq!(merged(a, &Partial::new()), *a, "identity");
        assert_eq!(merged(&Partial::new(), a), *a, "identity");
        assert_eq!(left, partial_of(&all), "homomorphism, trial {trial}");
        assert_eq!(left.total(), all.len() as u64);

        saw_dense |= !left.users().is_sparse();
        saw_sparse |= left.users().is_sparse() && !left.users().is_empty();
    }
    assert!(
        saw_dense && saw_sparse,
        "both HLL representations exercised"
    );
}

// Rule: if one group id arrives with two titles, the lexicographically
// smallest wins whatever the merge order (keeps merge commutative).
#[test]
fn conflicting_group_titles_merge_order_independently() {
    let mut a = one_crash(T);
    a.group_title = "b title".to_owned();
    let mut b = a.clone();
    b.group_title = "a title".to_owned();
    let (pa, pb) = (partial_of(&[a.clone()]), partial_of(&[b.clone()]));
    for p in [merged(&pa, &pb), merged(&pb, &pa), partial_of(&[a, b])] {
        let g = p.groups().values().next().unwrap();
        assert_eq!((g.title.as_str(), g.count), ("a title", 2));
    }
}

/// Hand-computed expectations for the window ending at `now`.
struct Truth {
    total: u64,
    series: Vec<u64>,
    breakdowns: HashMap<Dimension, Vec<ValueCount>>,
    top_groups: Vec<GroupStat>,
    distinct_users: usize,
    latencies: Vec<u64>,
}

fn ground_truth(recs: &[Rec], now: u64, config: &WindowConfig) -> Truth {
    let w = config.seconds as u64;
    let inside: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.second + w > now && r.second <= now)
        .collect();
    let mut series = vec![0u64; w as usize];
    for r in &inside {
        series[(r.second + w - 1 - now) as usize] += 1;
    }

    let mut breakdowns = HashMap::new();
    for dim in Dimension::ALL {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &inside {
            *counts.entry(r.value(dim)).or_default() += 1;
        }
        let mut list: Vec<(&str, u64)> = counts.into_iter().collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut out: Vec<ValueCount> = list
            .iter()
            .take(config.breakdown_limit)
            .map(|(v, c)| ValueCount {
                value: v.to_string(),
                count: *c,
            })
            .collect();
        if list.len() > config.breakdown_limit {
            out.push(ValueCount {
                value: OTHER.to_owned(),
                count: list[config.breakdown_limit..].iter().map(|e| e.1).sum(),
            });
        }
        breakdowns.insert(dim, out);
    }

    let mut groups: BTreeMap<&str, (String, u64, Vec<u64>)> = BTreeMap::new();
    for r in &inside {
        let g = groups
            .entry(&r.group_id)
            .or_insert_with(|| (r.group_title.clone(), 0, vec![0; w as usize]));
        g.1 += 1;
        g.2[(r.second + w - 1 - now) as usize] += 1;
    }
    let mut top: Vec<GroupStat> = groups
        .into_iter()
        .map(|(id, (title, count, series))| GroupStat {
            id: id.to_owned(),
            title,
            count,
            series,
        })
        .collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
    top.truncate(config.top_groups);

    let users: HashSet<&str> = inside.iter().filter_map(|r| r.user_id.as_deref()).collect();
    let mut latencies: Vec<u64> = inside.iter().map(|r| r.symbolication_us).collect();
    latencies.sort_unstable();
    Truth {
        total: inside.len() as u64,
        series,
        breakdowns,
        top_groups: top,
        distinct_users: users.len(),
        latencies,
    }
}

fn check_against_truth(snap: &Snapshot, truth: &Truth, now: u64) {
    assert_eq!(snap.window_seconds, 300);
    assert_eq!(snap.now, now);
    assert_eq!(snap.total, truth.total);
    assert_eq!(snap.series, truth.series);
    for dim in Dimension::ALL {
        assert_eq!(
            snap.breakdowns.get(dim),
            truth.breakdowns[&dim].as_slice(),
            "{dim}"
        );
        let sum: u64 = snap.breakdowns.get(dim).iter().map(|v| v.count).sum();
        assert_eq!(sum, truth.total, "{dim} adds up to total");
    }
    assert_eq!(snap.top_groups, truth.top_groups);
    assert_hll_within_3se(snap.distinct_users as f64, truth.distinct_users);

    let lat = &snap.symbolication_time_us;
    assert_eq!(lat.count, truth.latencies.len() as u64);
    let sum: u64 = truth.latencies.iter().sum();
    assert_eq!(lat.avg, Some(sum as f64 / truth.latencies.len() as f64));
    for (q, got) in [(0.5, lat.p50), (0.95, lat.p95), (0.99, lat.p99)] {
        assert_within_alpha(got.unwrap(), exact_quantile(&truth.latencies, q), "pXX");
    }
}

// Rule: a snapshot is exact for totals, the per-second series (oldest
// first), breakdowns (count desc, value asc, capped at 20 + "(other)") and
// group counts/series/titles; distinct users within 3 standard errors;
// average exact and percentiles within 1 %. Records older than the window
// are rejected with TooOld and never counted; accepted future seconds are
// not shown until `now` reaches them.
#[test]
fn snapshot_matches_ground_truth() {
    let mut rng = StdRng::seed_from_u64(2);
    let config = WindowConfig::default();
    let now = T + 299;
    let recs: Vec<Rec> = (0..20_000)
        .map(|_| random_rec(&mut rng, T - 40..=now + 10, 3_000))
        .collect();

    let mut window = Window::new(config.clone(), now).unwrap();
    for r in &recs {
        let result = window.add(&r.as_record());
        if r.second < T {
            assert_eq!(
                result,
                Err(StatsError::TooOld {
                    second: r.second,
                    oldest: T
                })
            );
        } else {
            assert_eq!(result, Ok(()));
        }
    }
    let truth = ground_truth(&recs, now, &config);
    assert!(
        truth.breakdowns[&Dimension::DeviceModel]
            .last()
            .unwrap()
            .value
            == OTHER
    );
    assert!(truth.total > 10_000 && truth.latencies.contains(&0));
    let snap = window.snapshot(now);
    check_against_truth(&snap, &truth, now);

    // Ten seconds later the future records are in and the oldest are out.
    window.advance(now + 10);
    let truth_later = ground_truth(&recs, now + 10, &config);
    assert_ne!(truth_later.total, truth.total);
    check_against_truth(&window.snapshot(now + 10), &truth_later, now + 10);

    // The same records shipped as per-(pod, second) partials through the
    // replacing window give the identical snapshot.
    let mut by_key: BTreeMap<(u8, u64), Vec<Rec>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.second >= T) {
        by_key
            .entry((rng.gen_range(0..4u8), r.second))
            .or_default()
            .push(r.clone());
    }
    let mut keyed = KeyedWindow::new(config, now).unwrap();
    for ((pod, second), rs) in &by_key {
        assert_eq!(keyed.set(*pod, *second, partial_of(rs)), Ok(None));
    }
    assert_eq!(keyed.snapshot(now), snap);
}

// Rule: HyperLogLog estimates of 1k, 10k and 100k distinct users are within
// 3 standard errors (3 × 1.625 %); duplicates do not count.
#[test]
fn hll_distinct_counts_within_bound() {
    for n in [1_000usize, 10_000, 100_000] {
        let mut h = HyperLogLog::new();
        for i in 0..n {
            h.insert(&format!("user-{i}"));
            if i % 7 == 0 {
                h.insert(&format!("user-{}", i / 2)); // duplicate
            }
        }
        assert_hll_within_3se(h.estimate(), n);
    }
}

// Rule: the estimator is unbiased (Ertl's improved estimator needs no
// bias tables): over 16 independent sketches of 20k users the mean
// relative error is within 3 standard errors of the mean, 3·1.625 %/√16.
#[test]
fn hll_estimator_is_unbiased() {
    let runs = 16;
    let n = 20_000;
    let mut sum_rel_err = 0.0;
    for run in 0..runs {
        let mut h = HyperLogLog::new();
        for i in 0..n {
            h.insert(&format!("run{run}-user-{i}"));
        }
        sum_rel_err += (h.estimate() - n as f64) / n as f64;
    }
    let mean = sum_rel_err / runs as f64;
    let bound = 3.0 * HyperLogLog::RELATIVE_STANDARD_ERROR / (runs as f64).sqrt();
    assert!(
        mean.abs() <= bound,
        "mean relative error {mean}, bound {bound}"
    );
}

// Rule: merging sketches of overlapping user sets equals (register for
// register) the sketch of the union and estimates the union's size.
#[test]
fn hll_merge_estimates_union() {
    let mut a = HyperLogLog::new();
    let mut b = HyperLogLog::new();
    let mut union = HyperLogLog::new();
    for i in 0..60_000 {
        a.insert(&format!("user-{i}"));
    }
    for i in 40_000..100_000 {
        b.insert(&format!("user-{i}"));
    }
    for i in 0..100_000 {
        union.insert(&format!("user-{i}"));
    }
    let mut ab = a.clone();
    ab.merge(&b);
    let mut ba = b.clone();
    ba.merge(&a);
    assert_eq!(ab, union);
    assert_eq!(ba, union);
    assert_hll_within_3se(ab.estimate(), 100_000);
    // The union is clearly more than either side.
    assert!(ab.estimate() > a.estimate() * 1.5);

    // Sparse sketches of overlapping small sets merge to the exact union too.
    let mut s1 = HyperLogLog::new();
    let mut s2 = HyperLogLog::new();
    for i in 0..100 {
        s1.insert(&format!("u{i}"));
        s2.insert(&format!("u{}", i + 50));
    }
    s1.merge(&s2);
    assert!(s1.is_sparse());
    assert!((s1.estimate() - 150.0).abs() < 5.0, "{}", s1.estimate());
}

// Rule: latency quantiles are within 1 % relative error of the exact lower
// quantile (rank floor(q·(n−1))), also after merging sketches; the mean
// is exact.
#[test]
fn latency_quantiles_within_relative_accuracy() {
    let mut rng = StdRng::seed_from_u64(3);
    for trial in 0..10 {
        let mut values = Vec::new();
        let mut merged_sketch = LatencySketch::new();
        for _ in 0..4 {
            let mut s = LatencySketch::new();
            for _ in 0..rng.gen_range(1..3_000) {
                let v = match trial % 3 {
                    0 => rng.gen_range(0..2_000u64),
                    1 => random_latency(&mut rng),
                    _ => (rng.gen::<f64>() * 40.0).exp2() as u64,
                };
                s.insert(v);
                values.push(v);
            }
            merged_sketch.merge(&s);
        }
        values.sort_unstable();
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            assert_within_alpha(
                merged_sketch.quantile(q).unwrap(),
                exact_quantile(&values, q),
                &format!("trial {trial} q {q}"),
            );
        }
        let sum: u64 = values.iter().sum();
        assert_eq!(merged_sketch.count(), values.len() as u64);
        assert_eq!(merged_sketch.mean(), Some(sum as f64 / values.len() as f64));
    }
}

fn one_crash(second: u64) -> Rec {
    random_rec(&mut StdRng::seed_from_u64(second), second..=second, 10)
}

// Rule (window time rule): a crash at second t counts in snapshots for
// now = t ..= t+299 and not at t+300; series is oldest first so it sits at
// the end at now = t and at index 0 at now = t+299. After advance(t+300) its
// slice is dropped and second t is rejected as TooOld while t+1 is
// accepted; seconds beyond now + max_future_seconds (30) are TooNew, and an
// accepted future second shows only once now reaches it.
#[test]
fn window_expiry_with_explicit_time() {
    let t = T;
    let mut w = Window::new(WindowConfig::default(), t).unwrap();
    w.add(&one_crash(t).as_record()).unwrap();

    let at_t = w.snapshot(t);
    assert_eq!(at_t.total, 1);
    assert_eq!(at_t.series.len(), 300);
    assert_eq!(at_t.series[299], 1);

    w.advance(t + 299);
    let last = w.snapshot(t + 299);
    assert_eq!(last.total, 1);
    assert_eq!(last.series[0], 1);
    assert_eq!(last.top_groups[0].series[0], 1);

    // Without advancing, the snapshot at t+300 already excludes it.
    assert_eq!(w.snapshot(t + 300).total, 0);
    assert_eq!(w.snapshot(t + 300).series, vec![0; 300]);
    assert_eq!(w.len(), 1);
    assert_eq!(w.advance(t + 300), 1);
    assert!(w.is_empty());

    assert_eq!(
        w.merge(t, &Partial::from_record(&one_crash(t).as_record())),
        Err(StatsError::TooOld {
            second: t,
            oldest: t + 1
        })
    );
    assert!(w.is_empty(), "a rejected merge changes nothing");
    assert_eq!(w.merge(t + 1, &Partial::new()), Ok(()));

    let future = one_crash(t + 330);
    assert_eq!(w.add(&future.as_record()), Ok(()));
    assert_eq!(
        w.add(&one_crash(t + 331).as_record()),
        Err(StatsError::TooNew {
            second: t + 331,
            newest: t + 330
        })
    );
    assert_eq!(w.snapshot(t + 300).total, 0);
    w.advance(t + 330);
    let s = w.snapshot(t + 330);
    assert_eq!(s.total, 1);
    assert_eq!(s.series[299], 1);

    // Time never goes backwards: an older advance is ignored.
    w.advance(t);
    assert_eq!(w.now(), t + 330);
}

// Rule (replace semantics): KeyedWindow::set stores the *latest* partial
// per (source, second): setting the same key twice counts once, a smaller
// re-send lowers the count, other sources and other seconds add. The
// additive Window, in contrast, counts a re-merge twice.
#[test]
fn keyed_window_replaces() {
    let mut rng = StdRng::seed_from_u64(4);
    let recs: Vec<Rec> = (0..50)
        .map(|_| random_rec(&mut rng, T..=T, 1_000))
        .collect();
    let full = partial_of(&recs);
    let half = partial_of(&recs[..25]);

    let mut keyed = KeyedWindow::new(WindowConfig::default(), T).unwrap();
    assert_eq!(keyed.set("pod-a", T, half.clone()), Ok(None));
    assert_eq!(keyed.set("pod-a", T, full.clone()), Ok(Some(half.clone())));
    assert_eq!(keyed.set("pod-a", T, full.clone()), Ok(Some(full.clone())));
    assert_eq!(keyed.snapshot(T).total, 50);
    assert_eq!(keyed.get(&"pod-a", T), Some(&full));
    assert_eq!(keyed.len(), 1);

    assert_eq!(keyed.set("pod-a", T, half.clone()), Ok(Some(full.clone())));
    assert_eq!(keyed.snapshot(T).total, 25);

    keyed.set("pod-b", T, full.clone()).unwrap();
    keyed.set("pod-a", T - 1, full.clone()).unwrap();
    let s = keyed.snapshot(T);
    assert_eq!(s.total, 125);
    assert_eq!(s.series[298..], [50, 75]);
    assert_eq!(keyed.len(), 3);

    assert_eq!(keyed.remove(&"pod-b", T), Some(full.clone()));
    assert_eq!(keyed.snapshot(T).total, 75);

    assert!(matches!(
        keyed.set("pod-c", T - 300, full.clone()),
        Err(StatsError::TooOld { .. })
    ));
    assert_eq!(keyed.advance(T + 299), 1, "second T-1 dropped");
    assert_eq!(keyed.snapshot(T + 299).total, 25);

    let mut additive = Window::new(WindowConfig::default(), T).unwrap();
    additive.merge(T, &full).unwrap();
    additive.merge(T, &full).unwrap();
    assert_eq!(additive.snapshot(T).total, 100);
}

// Rule: a Partial survives a serde_json round trip unchanged (sparse and
// dense user sketches, zero latencies, unicode values), and JSON that
// violates the invariants is rejected instead of merged.
#[test]
fn partial_serde_round_trip() {
    let mut rng = StdRng::seed_from_u64(5);
    for (n, users) in [(0, 10), (5, 10), (300, 100_000), (2_000, 1_000_000)] {
        let mut recs: Vec<Rec> = (0..n).map(|_| random_rec(&mut rng, T..=T, users)).collect();
        if let Some(r) = recs.first_mut() {
            r.device_model = "Pixel \"8\" ✓".to_owned();
            r.symbolication_us = 0;
        }
        let p = partial_of(&recs);
        let json = serde_json::to_string(&p).unwrap();
        let back: Partial = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p, "n = {n}");
        assert_eq!(back.users().is_sparse(), p.users().is_sparse());
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    let p = partial_of(&[one_crash(T)]);
    let mut v: serde_json::Value = serde_json::to_value(&p).unwrap();
    v["total"] = 2.into();
    let err = serde_json::from_value::<Partial>(v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adds up to 1, total is 2"), "{err}");

    let mut v: serde_json::Value = serde_json::to_value(&p).unwrap();
    v["users"]["registers"] = serde_json::json!([[9999, 1]]);
    assert!(serde_json::from_value::<Partial>(v).is_err());
}

// Rule: the Snapshot JSON has exactly the documented snake_case fields
// (the dashboard depends on them) and `null` percentiles when empty.
#[test]
fn snapshot_json_shape() {
    let mut w = Window::new(WindowConfig::default(), T).unwrap();
    let empty = serde_json::to_value(w.snapshot(T)).unwrap();
    assert_eq!(
        empty["symbolication_time_us"]["p50"],
        serde_json::Value::Null
    );
    assert_eq!(empty["distinct_users"], 0);

    w.add(&one_crash(T).as_record()).unwrap();
    let v = serde_json::to_value(w.snapshot(T)).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "breakdowns",
            "distinct_users",
            "now",
            "series",
            "symbolication_time_us",
            "top_groups",
            "total",
            "window_seconds"
        ]
    );
    assert_eq!(
        keys(&v["breakdowns"]),
        [
            "app_version",
            "device_model",
            "exception_type",
            "os_version",
            "platform"
        ]
    );
    assert_eq!(
        keys(&v["top_groups"][0]),
        ["count", "id", "series", "title"]
    );
    assert_eq!(keys(&v["breakdowns"]["platform"][0]), ["count", "value"]);
    assert_eq!(
        keys(&v["symbolication_time_us"]),
        ["avg", "count", "p50", "p95", "p99"]
    );
    assert_eq!(v["series"].as_array().unwrap().len(), 300);
    assert_eq!(v["window_seconds"], 300);
    assert_eq!(v["now"], T);
}

// ---------------------------------------------------------------------------------------------
// Exchange: pods' outboxes and the leader's reducer (map/reduce across pods)
// ---------------------------------------------------------------------------------------------

use stats::{Accepted, ExchangeError, Outbox, PodBacklog, Reducer};

fn one(second: u64, group: u64, user: u32) -> Partial {
    let mut rng = StdRng::seed_from_u64(group * 1000 + u64::from(user));
    let mut r = random_rec(&mut rng, second..=second, 1_000_000);
    r.user_id = Some(format!("user-{user}"));
    partial_of(&[r])
}

/// "The leader keeps the latest partial per (pod, second): a resend replaces instead of
/// adding, so retries never double-count."
#[test]
fn resends_replace_and_never_double_count() {
    let mut pod: Outbox<u32> = Outbox::new(300);
    let mut leader = Reducer::new(WindowConfig::default(), T, 0).unwrap();
    pod.record(T, &one(T, 1, 1), 1);
    let first = pod.message("p1", 0, PodBacklog::default());
    assert_eq!(first.slices.len(), 1);
    let ack1 = leader.accept(first.clone(), T).unwrap();
    pod.record(T, &one(T, 2, 2), 2);
    let second = pod.message("p1", 0, PodBacklog::default());
    // The lost-answer case: the first message arrives again after the second.
    leader.accept(second.clone(), T).unwrap();
    leader.accept(first, T).unwrap();
    leader.accept(second, T).unwrap();
    assert_eq!(leader.snapshot(T).total, 2);
    // Acknowledging releases exactly the items at or below the acknowledged version.
    assert_eq!(pod.on_accepted(&ack1), vec![1]);
    assert_eq!(pod.pending(), 1);
    let ack2 = Accepted {
        epoch: 0,
        slices: vec![(T, 2)],
    };
    assert_eq!(pod.on_accepted(&ack2), vec![2]);
    assert_eq!(pod.pending(), 0);
    // Nothing changed since: the next message carries no slices, only the backlog.
    assert!(pod
        .message("p1", 0, PodBacklog::default())
        .slices
        .is_empty());
}

/// "Partials addressed to a stale epoch are rejected"; "a pod that sees a new epoch resends
/// everything to the new leader".
#[test]
fn epochs_fence_the_exchange_and_a_new_epoch_gets_everything() {
    let mut pod: Outbox<u32> = Outbox::new(300);
    let mut old = Reducer::new(WindowConfig::default(), T + 2, 3).unwrap();
    for s in 0..3 {
        pod.record(T + s, &one(T + s, s, 1), s as u32);
    }
    let m = pod.message("p1", 3, PodBacklog::default());
    let ack = old.accept(m, T + 2).unwrap();
    assert_eq!(pod.on_accepted(&ack).len(), 3);
    assert!(pod
        .message("p1", 3, PodBacklog::default())
        .slices
        .is_empty());
    // An answer from another epoch releases nothing.
    pod.record(T + 2, &one(T + 2, 9, 9), 99);
    assert!(pod
        .on_accepted(&Accepted {
            epoch: 2,
            slices: vec![(T + 2, 10)]
        })
        .is_empty());
    // Stale and future epochs are refused by the reducer.
    let stale = pod.message("p1", 2, PodBacklog::default());
    assert_eq!(
        old.accept(stale, T + 2),
        Err(ExchangeError::WrongEpoch {
            got: 2,
            expected: 3
        })
    );
    // New leader at epoch 4: all three seconds are sent again.
    let m = pod.message("p1", 4, PodBacklog::default());
    assert_eq!(m.slices.len(), 3);
    let mut new = Reducer::new(WindowConfig::default(), T + 2, 4).unwrap();
    let ack = new.accept(m, T + 2).unwrap();
    assert_eq!(pod.on_accepted(&ack), vec![99]);
    assert_eq!(new.snapshot(T + 2).total, 4);
}

/// After a failover the new leader's totals equal the old leader's: windows collected from
/// pods and the standby's replica, merged by version, count every crash once.
#[test]
fn failover_restores_exact_totals_from_replica_and_pods() {
    let config = WindowConfig::default();
    let mut old = Reducer::new(config.clone(), T + 9, 0).unwrap();
    let mut replica = Reducer::new(config.clone(), T + 9, 0).unwrap();
    let mut pods: Vec<Outbox<u32>> = (0..3).map(|_| Outbox::new(300)).collect();
    let names = ["p0", "p1", "p2"];
    for s in 0..10u64 {
        for (i, pod) in pods.iter_mut().enumerate() {
            pod.record(
                T + s,
                &one(T + s, s * 3 + i as u64, (s as u32) * 7 + i as u32),
                0,
            );
            let m = pod.message(names[i], 0, PodBacklog::default());
            replica.absorb(m.clone(), T + s);
            let ack = old.accept(m, T + s).unwrap();
            pod.on_accepted(&ack);
        }
    }
    let before = old.snapshot(T + 9);
    assert_eq!(before.total, 30);
    // Pod p0 left gracefully (its outbox is gone); the old leader (which also ran pod p2)
    // dies. The new leader of epoch 1 absorbs the replica and the surviving pods' windows.
    let mut new = Reducer::new(config, T + 9, 1).unwrap();
    for m in replica.export() {
        new.absorb(m, T + 9);
    }
    let m = pods[1].message("p1", 1, PodBacklog::default());
    new.accept(m, T + 9).unwrap();
    let after = new.snapshot(T + 9);
    assert_eq!(after.total, before.total);
    assert_eq!(
        after, before,
        "the whole snapshot, users and latency included"
    );
    assert_eq!(after.breakdowns, before.breakdowns);
    assert_eq!(after.top_groups, before.top_groups);
}

/// "A pod that leaves keeps its contributions in the window until they age out."
#[test]
fn a_departed_pods_slices_count_until_they_age_out_and_backlog_forgets_it() {
    let mut leader = Reducer::new(WindowConfig::default(), T, 0).unwrap();
    let mut pod: Outbox<u32> = Outbox::new(300);
    pod.record(T, &one(T, 1, 1), 1);
    let backlog = PodBacklog {
        unacked: 5,
        oldest_unacked_age_ms: 700,
    };
    leader.accept(pod.message("gone", 0, backlog), T).unwrap();
    assert_eq!(leader.backlog(T + 1, 5), backlog);
    assert_eq!(leader.backlog(T + 10, 5), PodBacklog::default());
    leader.advance(T + 299);
    assert_eq!(leader.snapshot(T + 299).total, 1);
    leader.advance(T + 300);
    assert_eq!(leader.snapshot(T + 300).total, 0);
    assert!(leader.is_empty());
}

/// Items whose second leaves the window unacknowledged are handed back (to be released and
/// counted), never kept forever; slices older than the window are acknowledged as late.
#[test]
fn expiry_hands_back_unacknowledged_items_and_late_slices_are_acknowledged() {
    let mut pod: Outbox<u32> = Outbox::new(300);
    pod.record(T, &one(T, 1, 1), 7);
    pod.record(T + 1, &one(T + 1, 1, 1), 8);
    assert_eq!(pod.advance(T + 300), vec![7]);
    assert_eq!(pod.pending(), 1);
    let mut leader = Reducer::new(WindowConfig::default(), T + 400, 0).unwrap();
    let m = pod.message("p", 0, PodBacklog::default());
    let ack = leader.accept(m, T + 400).unwrap();
    assert_eq!(pod.on_accepted(&ack), vec![8]);
    assert_eq!(leader.late(), 1);
    assert_eq!(leader.snapshot(T + 400).total, 0);
}

/// The reducer's per-second merge cache gives exactly the snapshot of a `KeyedWindow` holding
/// the same latest partials, through replacements, late resends and expiry.
#[test]
fn reducer_snapshots_equal_a_keyed_window_of_the_latest_partials() {
    let mut rng = StdRng::seed_from_u64(99);
    let config = WindowConfig {
        seconds: 20,
        ..WindowConfig::default()
    };
    let mut reducer = Reducer::new(config.clone(), T, 0).unwrap();
    let mut pods: Vec<Outbox<u32>> = (0..4).map(|_| Outbox::new(20)).collect();
    let mut latest: BTreeMap<(usize, u64), Partial> = BTreeMap::new();
    for step in 0..120u64 {
        let now = T + step / 3;
        let p = rng.gen_range(0..4usize);
        let second = now - rng.gen_range(0..3u64);
        let recs: Vec<Rec> = (0..rng.gen_range(1..4))
            .map(|_| random_rec(&mut rng, second..=second, 500))
            .collect();
        let part = partial_of(&recs);
        pods[p].record(second, &part, 0);
        let entry = latest.entry((p, second)).or_default();
        entry.merge(&part);
        let m = pods[p].message(&format!("p{p}"), 0, PodBacklog::default());
        reducer.accept(m, now).unwrap();
        reducer.advance(now);
        if step % 7 == 0 {
            let mut expected = KeyedWindow::new(config.clone(), now).unwrap();
            for ((pod, s), part) in &latest {
                let _ = expected.set(*pod, *s, part.clone());
            }
            assert_eq!(reducer.snapshot(now), expected.snapshot(now), "step {step}");
        }
    }
}

/// Regression (issue: a killed leader lost crashes it had answered "counted"): a replica that
/// only ever absorbs must follow time. Created at `T` and fed for ten minutes, it holds every
/// second the leader holds, long after `T + max_future_seconds`.
#[test]
fn a_replica_that_only_absorbs_keeps_up_with_time_for_minutes() {
    let config = WindowConfig::default();
    let mut leader = Reducer::new(config.clone(), T, 0).unwrap();
    let mut replica = Reducer::new(config.clone(), T, 0).unwrap();
    let mut pod: Outbox<u64> = Outbox::new(300);
    for s in 0..600u64 {
        pod.record(T + s, &one(T + s, s % 7, s as u32), s);
        let m = pod.message("leader-pod", 0, PodBacklog::default());
        let slices = m.slices.len();
        let held = replica.absorb(m.clone(), T + s);
        assert_eq!(held.len(), slices, "the replica refused a slice at T+{s}");
        let ack = leader.accept(m, T + s).unwrap();
        pod.on_accepted(&ack);
    }
    assert_eq!(replica.refused(), 0);
    assert_eq!(replica.late(), 0);
    let mut promoted = Reducer::new(config, T + 599, 1).unwrap();
    for m in replica.export() {
        promoted.absorb(m, T + 599);
    }
    assert_eq!(promoted.snapshot(T + 599), leader.snapshot(T + 599));
    assert_eq!(promoted.snapshot(T + 599).total, 300);
}

/// "Any Ok over a rejection" is a lie to the sender: a slice beyond the reducer's
/// `max_future_seconds` is not in the answer, so the pod keeps its job and sends it again,
/// and it is counted once the reducer's clock reaches it.
#[test]
fn a_slice_too_far_ahead_is_not_acknowledged_and_is_counted_when_time_comes() {
    let config = WindowConfig::default();
    let ahead = config.max_future_seconds + 5;
    let mut leader = Reducer::new(config, T, 0).unwrap();
    let mut pod: Outbox<u32> = Outbox::new(300);
    pod.record(T + ahead, &one(T + ahead, 1, 1), 7);
    let ack = leader
        .accept(pod.message("p", 0, PodBacklog::default()), T)
        .unwrap();
    assert!(
        ack.slices.is_empty(),
        "a refused slice must not be acknowledged"
    );
    assert!(pod.on_accepted(&ack).is_empty());
    assert_eq!(leader.refused(), 1);
    assert_eq!(leader.late(), 0, "refused is not late: it is sent again");
    // Time comes; the resend is held, acknowledged and counted once.
    let ack = leader
        .accept(pod.message("p", 0, PodBacklog::default()), T + ahead)
        .unwrap();
    assert_eq!(pod.on_accepted(&ack), vec![7]);
    assert_eq!(leader.snapshot(T + ahead).total, 1);
}

// Rule (bounded partials, `partial.rs`): client strings are cut to
// MAX_VALUE_BYTES / MAX_TITLE_BYTES at a character boundary, and a partial
// holds at most MAX_DISTINCT_VALUES values per dimension and
// MAX_DISTINCT_GROUPS groups; crashes past that are counted under "(other)",
// so totals and every breakdown stay exact sums. Merging keeps the bounds,
// and the snapshot folds the partials' "(other)" into its own (listed last,
// once) and never lists the "(other)" group.
#[test]
fn a_flood_of_unique_long_strings_stays_within_the_bounds_and_totals_stay_exact() {
    use stats::{MAX_DISTINCT_GROUPS, MAX_DISTINCT_VALUES, MAX_TITLE_BYTES, MAX_VALUE_BYTES};
    let long = |i: usize| format!("{i:05}-{}", "é".repeat(2_000)); // 4 KB, two-byte chars
    let flood: Vec<Rec> = (0..2_000)
        .map(|i| Rec {
            second: T,
            app_version: long(i),
            platform: "android".into(),
            os_version: long(i),
            device_model: long(i),
            exception_type: long(i),
            group_id: format!("{i:016x}"),
            group_title: long(i),
            user_id: None,
            symbolication_us: 10,
        })
        .collect();
    let (a, b) = flood.split_at(1_000);
    let pa = partial_of(a);
    let mut p = pa.clone();
    p.merge(&partial_of(b));
    for q in [&pa, &p] {
        for dim in Dimension::ALL {
            let counts = q.counts(dim);
            assert!(counts.len() <= MAX_DISTINCT_VALUES + 1, "{dim}");
            assert_eq!(counts.values().sum::<u64>(), q.total(), "{dim}");
            assert!(counts.keys().all(|v| v.len() <= MAX_VALUE_BYTES), "{dim}");
        }
        assert!(q.groups().len() <= MAX_DISTINCT_GROUPS + 1);
        assert_eq!(q.groups().values().map(|g| g.count).sum::<u64>(), q.total());
        assert!(q
            .groups()
            .values()
            .all(|g| g.title.len() <= MAX_TITLE_BYTES));
    }
    assert_eq!(p.total(), 2_000);
    // The first values keep their own entries; the rest is "(other)".
    let devices = p.counts(Dimension::DeviceModel);
    assert_eq!(devices[OTHER], 2_000 - MAX_DISTINCT_VALUES as u64);
    assert_eq!(p.counts(Dimension::Platform)["android"], 2_000);
    assert_eq!(p.groups()[OTHER].count, 2_000 - MAX_DISTINCT_GROUPS as u64);
    // A cut value still starts with what the client sent.
    let first = devices.keys().find(|k| *k != OTHER).unwrap();
    assert!(first.starts_with("00000-é"), "{first}");
    // Bounded on the wire too (the leader and its standby hold these).
    let json = serde_json::to_vec(&p).unwrap();
    assert!(json.len() < 100_000, "{} bytes", json.len());

    let config = WindowConfig::default();
    let mut w = Window::new(config.clone(), T).unwrap();
    w.merge(T, &p).unwrap();
    let snap = w.snapshot(T);
    assert_eq!(snap.total, 2_000);
    let breakdown = &snap.breakdowns.device_model;
    assert_eq!(breakdown.len(), config.breakdown_limit + 1);
    assert_eq!(breakdown.last().unwrap().value, OTHER);
    assert_eq!(breakdown.iter().filter(|v| v.value == OTHER).count(), 1);
    assert_eq!(breakdown.iter().map(|v| v.count).sum::<u64>(), 2_000);
    assert!(snap.top_groups.iter().all(|g| g.id != OTHER));
    assert_eq!(snap.top_groups.len(), config.top_groups);
}

#[path = "stats/exchange.rs"]
mod exchange;
