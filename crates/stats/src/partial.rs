//! The per-second, per-pod aggregate.
//!
//! A [`Partial`] is a commutative monoid: [`Partial::default`] is the
//! identity and [`Partial::merge`] is associative and commutative, with
//! exact results (`==` after merging in any order and grouping). That is
//! what lets pods pre-aggregate and the leader reduce in whatever order
//! partials arrive.
//!
//! Exact counts are kept per dimension value and per crash group in
//! `BTreeMap`s (deterministic iteration and JSON). Their values come from
//! clients, so both are bounded, and totals stay exact whatever arrives:
//!
//! * a dimension value is cut to [`MAX_VALUE_BYTES`] (64) and a group title
//!   to [`MAX_TITLE_BYTES`] (128), at a character boundary;
//! * a partial holds at most [`MAX_DISTINCT_VALUES`] (100) values per
//!   dimension and [`MAX_DISTINCT_GROUPS`] (100) groups; a crash with a value
//!   (group) past that is counted under [`OTHER`] (the `"(other)"` entry,
//!   or group), so every map still sums to `total`.
//!
//! Real traffic stays far inside: a second of one pod's crashes carries a
//! few app and OS versions and at most tens of device models and groups.
//! Hostile traffic (a unique 4 KB string per crash) costs at most ~84 KB per
//! partial: 5 × 100 × (64 + ~56 bytes of map overhead) + 100 × (32-byte id +
//! 128-byte title + ~80). With `N` pods the leader holds `(N + 1) × 300` of
//! them in its window, 3 pods ≈ 100 MB at worst. Within the caps, merging is
//! exact, associative and commutative; past them, which values get their own
//! entry depends on arrival order (the first ones), never the totals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CrashRecord, Dimension, HyperLogLog, LatencySketch, StatsError, OTHER};

/// Longest dimension value kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_VALUE_BYTES: usize = 64;
/// Longest group title kept, in bytes.
pub const MAX_TITLE_BYTES: usize = 128;
/// Distinct values per dimension in one partial; more are counted under [`OTHER`].
pub const MAX_DISTINCT_VALUES: usize = 100;
/// Distinct crash groups in one partial; more are counted under the group [`OTHER`].
pub const MAX_DISTINCT_GROUPS: usize = 100;

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `map` (which may hold [`OTHER`]) has room for one more distinct key.
fn has_room<V>(map: &BTreeMap<String, V>, max: usize) -> bool {
    map.len() - usize::from(map.contains_key(OTHER)) < max
}

/// Count and title of one crash group inside a [`Partial`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCount {
    /// Group title. A group id is expected to always carry the same title;
    /// if two differ, merging keeps the lexicographically smallest so that
    /// merge stays order-independent.
    pub title: String,
    /// Crashes of this group.
    pub count: u64,
}

/// The aggregate of the crashes of one second on one pod.
///
/// Invariants (checked when deserialising, so a malformed partial from a
/// peer is rejected rather than merged): every dimension map and the group
/// map sum to `total`, no entry has count 0, and the latency sketch holds
/// exactly `total` values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PartialWire")]
pub struct Partial {
    total: u64,
    app_version: BTreeMap<String, u64>,
    platform: BTreeMap<String, u64>,
    os_version: BTreeMap<String, u64>,
    device_model: BTreeMap<String, u64>,
    exception_type: BTreeMap<String, u64>,
    groups: BTreeMap<String, GroupCount>,
    users: HyperLogLog,
    symbolication_time_us: LatencySketch,
}

impl Partial {
    /// An empty partial (the identity of [`merge`](Self::merge)).
    pub fn new() -> Self {
        Self::default()
    }

    /// A partial holding one crash.
    pub fn from_record(record: &CrashRecord<'_>) -> Self {
        let mut p = Self::new();
        p.add(record);
        p
    }

    /// Adds one crash. `record.second` is not looked at: the caller keeps
    /// one partial per second.
    pub fn add(&mut self, record: &CrashRecord<'_>) {
        self.total = self.total.saturating_add(1);
        for dim in Dimension::ALL {
            bump(self.counts_mut(dim), dim.value_of(record), 1);
        }
        self.add_group(record.group_id, cut(record.group_title, MAX_TITLE_BYTES), 1);
        if let Some(user) = record.user_id {
            self.users.insert(user);
        }
        self.symbolication_time_us.insert(record.symbolication_us);
    }

    /// Adds `count` crashes of group `id` titled `title` (already cut), under the group
    /// [`OTHER`] when the partial holds [`MAX_DISTINCT_GROUPS`] others.
    fn add_group(&mut self, id: &str, title: &str, count: u64) {
        let (id, title) = if self.groups.contains_key(id)
            || id == OTHER
            || has_room(&self.groups, MAX_DISTINCT_GROUPS)
        {
            (id, title)
        } else {
            (OTHER, OTHER)
        };
        match self.groups.get_mut(id) {
            Some(g) => {
                g.count = g.count.saturating_add(count);
                if title < g.title.as_str() {
                    title.clone_into(&mut g.title);
                }
            }
            None => {
                self.groups.insert(
                    id.to_owned(),
                    GroupCount {
                        title: title.to_owned(),
                        count,
                    },
                );
            }
        }
    }

    /// Folds `other` into `self`. Associative and commutative; the result
    /// equals the partial built from both partials' crashes.
    pub fn merge(&mut self, other: &Partial) {
        self.total = self.total.saturating_add(other.total);
        for dim in Dimension::ALL {
            let mine = self.counts_mut(dim);
            for (value, &count) in other.counts(dim) {
                bump(mine, value, count);
            }
        }
        for (id, theirs) in &other.groups {
            self.add_group(id, cut(&theirs.title, MAX_TITLE_BYTES), theirs.count);
        }
        self.users.merge(&other.users);
        self.symbolication_time_us
            .merge(&other.symbolication_time_us);
    }

    /// Number of crashes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// True when no crash was added.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Exact crash counts by value of `dim`.
    pub fn counts(&self, dim: Dimension) -> &BTreeMap<String, u64> {
        match dim {
            Dimension::AppVersion => &self.app_version,
            Dimension::Platform => &self.platform,
            Dimension::OsVersion => &self.os_version,
            Dimension::DeviceModel => &self.device_model,
            Dimension::ExceptionType => &self.exception_type,
        }
    }

    /// Exact crash counts by group id.
    pub fn groups(&self) -> &BTreeMap<String, GroupCount> {
        &self.groups
    }

    /// Distinct-user sketch.
    pub fn users(&self) -> &HyperLogLog {
        &self.users
    }

    /// Symbolication-time sketch (microseconds).
    pub fn symbolication_time_us(&self) -> &LatencySketch {
        &self.symbolication_time_us
    }

    fn counts_mut(&mut self, dim: Dimension) -> &mut BTreeMap<String, u64> {
        match dim {
            Dimension::AppVersion => &mut self.app_version,
            Dimension::Platform => &mut self.platform,
            Dimension::OsVersion => &mut self.os_version,
            Dimension::DeviceModel => &mut self.device_model,
            Dimension::ExceptionType => &mut self.exception_type,
        }
    }
}

/// Adds `n` to `map[key]` (`key` cut to [`MAX_VALUE_BYTES`]), allocating the key only when
/// it is new, and counting it under [`OTHER`] when the map holds [`MAX_DISTINCT_VALUES`].
fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    let key = cut(key, MAX_VALUE_BYTES);
    match map.get_mut(key) {
        Some(c) => *c = c.saturating_add(n),
        None => {
            let key = if key == OTHER || has_room(map, MAX_DISTINCT_VALUES) {
                key
            } else {
                OTHER
            };
            *map.entry(key.to_owned()).or_default() += n;
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialWire {
    total: u64,
    app_version: BTreeMap<String, u64>,
    platform: BTreeMap<String, u64>,
    os_version: BTreeMap<String, u64>,
    device_model: BTreeMap<String, u64>,
    exception_type: BTreeMap<String, u64>,
    groups: BTreeMap<String, GroupCount>,
    users: HyperLogLog,
    symbolication_time_us: LatencySketch,
}

impl TryFrom<PartialWire> for Partial {
    type Error = StatsError;

    fn try_from(w: PartialWire) -> Result<Self, StatsError> {
        let p = Partial {
            total: w.total,
            app_version: w.app_version,
            platform: w.platform,
            os_version: w.os_version,
            device_model: w.device_model,
            exception_type: w.exception_type,
            groups: w.groups,
            users: w.users,
            symbolication_time_us: w.symbolication_time_us,
        };
        const WHAT: &str = "partial";
        let check = |name: &str, counts: &mut dyn Iterator<Item = u64>| {
            let mut sum = 0u64;
            for c in counts {
                if c == 0 {
                    return Err(StatsError::invalid_data(
                        WHAT,
                        format!("`{name}` has a zero count"),
                    ));
                }
                sum = sum.saturating_add(c);
            }
            if sum != p.total {
                return Err(StatsError::invalid_data(
                    WHAT,
                    format!("`{name}` adds up to {sum}, total is {}", p.total),
                ));
            }
            Ok(())
        };
        for dim in Dimension::ALL {
            check(dim.as_str(), &mut p.counts(dim).values().copied())?;
        }
        check("groups", &mut p.groups.values().map(|g| g.count))?;
        if p.symbolication_time_us.count() != p.total {
            return Err(StatsError::invalid_data(
                WHAT,
                format!(
                    "`symbolication_time_us` holds {} values, total is {}",
                    p.symbolication_time_us.count(),
                    p.total
                ),
            ));
        }
        Ok(p)
    }
}
