//! The JSON document the dashboard consumes.
//!
//! Field names are snake_case and stable; new fields may be added, existing
//! ones are never renamed or retyped. Example (a 4-second window for
//! brevity; the default has 300 entries per series):
//!
//! ```json
//! {
//!   "window_seconds": 4,
//!   "now": 1700000299,
//!   "total": 3,
//!   "series": [0, 1, 2, 0],
//!   "top_groups": [
//!     {"id": "9f2c4e1d0a7b3c55", "title": "SIGSEGV: foo::bar", "count": 3, "series": [0, 1, 2, 0]}
//!   ],
//!   "breakdowns": {
//!     "app_version":    [{"value": "2.0", "count": 2}, {"value": "1.9", "count": 1}],
//!     "platform":       [{"value": "ios", "count": 3}],
//!     "os_version":     [{"value": "17.4", "count": 3}],
//!     "device_model":   [{"value": "iPhone15,2", "count": 3}],
//!     "exception_type": [{"value": "SIGSEGV", "count": 3}]
//!   },
//!   "distinct_users": 2,
//!   "symbolication_time_us": {"count": 3, "avg": 1200.0, "p50": 1200.13, "p95": 1200.13, "p99": 1200.13}
//! }
//! ```
//!
//! (With 3 values, p95 and p99 are the 2nd smallest: percentiles are the
//! lower quantile at rank `floor(q · (count − 1))`.)

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Dimension, HyperLogLog, LatencySketch, Partial, WindowConfig};

/// Name of the entry that sums the values cut off a breakdown.
pub const OTHER: &str = "(other)";

/// Statistics of the window ending at `now`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Window length in seconds; `series` has this many entries.
    pub window_seconds: u32,
    /// Unix second of the newest slice (the last entry of `series`).
    pub now: u64,
    /// Crashes in the window (exact).
    pub total: u64,
    /// Crashes per second, oldest first: entry `i` is second
    /// `now − window_seconds + 1 + i`.
    pub series: Vec<u64>,
    /// The largest crash groups, by count descending then id ascending.
    pub top_groups: Vec<GroupStat>,
    /// Exact counts by dimension value.
    pub breakdowns: Breakdowns,
    /// Estimated distinct users in the window (HyperLogLog, ±1.6 % standard
    /// error).
    pub distinct_users: u64,
    /// Symbolication time statistics.
    pub symbolication_time_us: LatencySummary,
}

/// One crash group in [`Snapshot::top_groups`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStat {
    /// Group id (hex fingerprint).
    pub id: String,
    /// Group title.
    pub title: String,
    /// Crashes of this group in the window (exact).
    pub count: u64,
    /// Crashes per second, aligned with [`Snapshot::series`].
    pub series: Vec<u64>,
}

/// Exact counts by dimension value.
///
/// Each list is sorted by count descending, then value ascending, and holds
/// at most [`WindowConfig::breakdown_limit`] values; when more values were
/// seen, one extra entry named [`OTHER`] (`"(other)"`) is appended *last*
/// with the sum of the rest, so the counts of a list always add up to
/// [`Snapshot::total`]. (A real value spelled `"(other)"` is not escaped.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdowns {
    /// By app version.
    pub app_version: Vec<ValueCount>,
    /// By platform.
    pub platform: Vec<ValueCount>,
    /// By OS version.
    pub os_version: Vec<ValueCount>,
    /// By device model.
    pub device_model: Vec<ValueCount>,
    /// By exception type.
    pub exception_type: Vec<ValueCount>,
}

impl Breakdowns {
    /// The list for `dim`.
    pub fn get(&self, dim: Dimension) -> &[ValueCount] {
        match dim {
            Dimension::AppVersion => &self.app_version,
            Dimension::Platform => &self.platform,
            Dimension::OsVersion => &self.os_version,
            Dimension::DeviceModel => &self.device_model,
            Dimension::ExceptionType => &self.exception_type,
        }
    }

    fn get_mut(&mut self, dim: Dimension) -> &mut Vec<ValueCount> {
        match dim {
            Dimension::AppVersion => &mut self.app_version,
            Dimension::Platform => &mut self.platform,
            Dimension::OsVersion => &mut self.os_version,
            Dimension::DeviceModel => &mut self.device_model,
            Dimension::ExceptionType => &mut self.exception_type,
        }
    }
}

/// One entry of a breakdown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueCount {
    /// Dimension value, or [`OTHER`].
    pub value: String,
    /// Crashes with that value (exact).
    pub count: u64,
}

/// Symbolication time over the window, in microseconds.
///
/// `avg` is exact; the percentiles are within 1 % of the exact (lower)
/// percentile, see [`LatencySketch::quantile`]. All four are `null` when
/// `count` is 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of symbolicated crashes.
    pub count: u64,
    /// Mean.
    pub avg: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl LatencySummary {
    /// Summarises a sketch.
    pub fn from_sketch(sketch: &LatencySketch) -> Self {
        LatencySummary {
            count: sketch.count(),
            avg: sketch.mean(),
            p50: sketch.quantile(0.50),
            p95: sketch.quantile(0.95),
            p99: sketch.quantile(0.99),
        }
    }
}

/// Builds the snapshot of the window ending at `now` from `slices`: every
/// `(second, partial)` with `now − W < second ≤ now` (several partials per
/// second are allowed and are summed; others are ignored).
pub(crate) fn build<'a>(
    config: &WindowConfig,
    now: u64,
    slices: &[(u64, &'a Partial)],
) -> Snapshot {
    let w = config.seconds as usize;
    let position = |second: u64| -> Option<usize> {
        let age = now.checked_sub(second)?;
        (age < w as u64).then(|| w - 1 - age as usize)
    };

    let mut series = vec![0u64; w];
    let mut total = 0u64;
    let mut dims: [HashMap<&'a str, u64>; 5] = Default::default();
    let mut groups: HashMap<&'a str, (&'a str, u64)> = HashMap::new();
    let mut users = HyperLogLog::new();
    let mut latency = LatencySketch::new();
    let mut in_window: Vec<(usize, &'a Partial)> = Vec::with_capacity(slices.len());

    for &(second, partial) in slices {
        let Some(pos) = position(second) else {
            continue;
        };
        in_window.push((pos, partial));
        series[pos] = series[pos].saturating_add(partial.total());
        total = total.saturating_add(partial.total());
        for (map, dim) in dims.iter_mut().zip(Dimension::ALL) {
            for (value, &count) in partial.counts(dim) {
                let c = map.entry(value.as_str()).or_insert(0);
                *c = c.saturating_add(count);
            }
        }
        for (id, g) in partial.groups() {
            let entry = groups.entry(id.as_str()).or_insert((g.title.as_str(), 0));
            entry.1 = entry.1.saturating_add(g.count);
            if g.title.as_str() < entry.0 {
                entry.0 = g.title.as_str();
            }
        }
        users.merge(partial.users());
        latency.merge(partial.symbolication_time_us());
    }

    let mut breakdowns = Breakdowns::default();
    for (map, dim) in dims.into_iter().zip(Dimension::ALL) {
        // What the partials already counted under OTHER (values past their cap) joins the
        // values cut off here: one "(other)" entry, always last.
        let mut map = map;
        let capped = map.remove(OTHER).unwrap_or(0);
        let mut entries: Vec<(&str, u64)> = map.into_iter().collect();
        entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let rest: u64 = entries
            .iter()
            .skip(config.breakdown_limit)
            .map(|e| e.1)
            .fold(capped, u64::saturating_add);
        let cut = entries.len() > config.breakdown_limit || capped > 0;
        let list = breakdowns.get_mut(dim);
        list.extend(
            entries
                .into_iter()
                .take(config.breakdown_limit)
                .map(|(value, count)| ValueCount {
                    value: value.to_owned(),
                    count,
                }),
        );
        if cut {
            list.push(ValueCount {
                value: OTHER.to_owned(),
                count: rest,
            });
        }
    }

    // The group OTHER (groups past a partial's cap) is not a crash group: not listed.
    let mut ranked: Vec<(&str, &str, u64)> = groups
        .into_iter()
        .filter(|(id, _)| *id != OTHER)
        .map(|(id, (title, count))| (id, title, count))
        .collect();
    ranked.sort_unstable_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    ranked.truncate(config.top_groups);
    let mut top_groups: Vec<GroupStat> = ranked
        .into_iter()
        .map(|(id, title, count)| GroupStat {
            id: id.to_owned(),
            title: title.to_owned(),
            count,
            series: vec![0; w],
        })
        .collect();
    for (pos, partial) in in_window {
        for g in &mut top_groups {
            if let Some(c) = partial.groups().get(&g.id) {
                g.series[pos] = g.series[pos].saturating_add(c.count);
            }
        }
    }

    Snapshot {
        window_seconds: config.seconds,
        now,
        total,
        series,
        top_groups,
        breakdowns,
        distinct_users: users.estimate().round() as u64,
        symbolication_time_us: LatencySummary::from_sketch(&latency),
    }
}
