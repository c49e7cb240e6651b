//! The sliding window of one-second slices.
//!
//! # Time rule
//!
//! The window at `now` covers the `W = seconds` seconds `now − W < s ≤ now`.
//! A crash at second `t` is counted by snapshots at `now = t … t + W − 1`
//! and not at `t + W`: with the default `W = 300`, it still counts at
//! `t + 299` and is gone at `t + 300`. `now` only moves forward: the window
//! remembers the newest `now` passed to [`Window::advance`]. Contributions
//! for a second older than `now − W + 1` are rejected
//! ([`StatsError::TooOld`]); so are seconds later than
//! `now + max_future_seconds` ([`StatsError::TooNew`]), which bounds memory
//! against a pod with a runaway clock. Accepted future seconds are kept but
//! only show in a snapshot once `now` reaches them.
//!
//! # Two modes
//!
//! * [`Window`] *adds*: one [`Partial`] per second, and
//!   [`Window::merge`] folds a contribution into it in place (cost: the
//!   size of the contribution). Use it where every contribution is new data,
//!   e.g. a pod aggregating its own crashes.
//! * [`KeyedWindow`] *replaces*: one [`Partial`] per `(source, second)`,
//!   and [`KeyedWindow::set`] swaps the stored partial for the new one
//!   (cost: a map insert, no merge). A pod may re-send the cumulative
//!   partial of a second any number of times and it counts once — the
//!   leader's "latest partial per (pod, second) replaces, never adds". The
//!   merge across sources happens at snapshot time.
//!
//! Both store slices in a `BTreeMap` keyed by second, so expiry is one
//! `split_off` and a snapshot is a range scan.
//!
//! # Snapshots are recomputed
//!
//! A snapshot merges every slice in the window from scratch rather than
//! maintaining a running total with subtraction on expiry: HyperLogLog
//! registers cannot be un-merged, and recomputing keeps every figure exact
//! by construction. The cost is one pass over the slices (300 per source):
//! for counts, proportional to the distinct values stored; for users, at
//! most 300 × 4096 register maxima per source — well under a millisecond
//! per second of wall time.
//!
//! # Memory
//!
//! At most `W + max_future_seconds` slices (330 by default) per window, per
//! source for a [`KeyedWindow`]. A slice costs ~100 B of fixed overhead
//! plus: ~60 B per distinct dimension value and ~100 B per distinct crash
//! group in that second; the user sketch, 4 B per distinct register up to
//! 256 (≤ 1 KiB) then 4 KiB dense; the latency sketch, ~40 B per occupied
//! bucket (typically < 400). A busy source (1 000 crashes/s, 250 distinct
//! dimension values, 200 groups, dense users, 300 buckets) costs ~55 KiB
//! per second, ~18 MiB per 330 slices; a quiet one a few KiB per second.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::snapshot::build;
use crate::{CrashRecord, Partial, Snapshot, StatsError};

/// Upper bound accepted for [`WindowConfig::seconds`] (one day).
pub const MAX_WINDOW_SECONDS: u32 = 86_400;
/// Upper bound accepted for [`WindowConfig::top_groups`] and
/// [`WindowConfig::breakdown_limit`].
pub const MAX_LIST_LEN: usize = 1_000;
/// Upper bound accepted for [`WindowConfig::max_future_seconds`].
pub const MAX_FUTURE_SECONDS: u64 = 3_600;

/// Shape of a [`Window`] / [`KeyedWindow`] and of its [`Snapshot`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length in one-second slices. Default 300: the dashboard shows
    /// "the last 5 minutes". Range `1..=86_400`.
    pub seconds: u32,
    /// Crash groups listed in [`Snapshot::top_groups`]. Default 20: what a
    /// dashboard table shows without scrolling; each one carries its own
    /// `seconds`-long series, so this multiplies the snapshot size. Range
    /// `0..=1_000`.
    pub top_groups: usize,
    /// Values listed per breakdown before the rest is summed into
    /// `"(other)"`. Default 20: enough for every platform and exception
    /// type and the head of the version/device long tail, while keeping a
    /// snapshot (sent every second to every dashboard) a few KiB. Range
    /// `1..=1_000`.
    pub breakdown_limit: usize,
    /// How far past the newest `now` a contribution may be and still be
    /// accepted. Default 30 s: absorbs clock skew between pods and a pod
    /// whose clock is ahead, while bounding the slices kept for the future.
    /// Range `0..=3_600`.
    pub max_future_seconds: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            seconds: 300,
            top_groups: 20,
            breakdown_limit: 20,
            max_future_seconds: 30,
        }
    }
}

impl WindowConfig {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), StatsError> {
        fn invalid(field: &'static str, reason: String) -> Result<(), StatsError> {
            Err(StatsError::InvalidConfig { field, reason })
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.seconds) {
            return invalid(
                "seconds",
                format!("is {}, must be in 1..={MAX_WINDOW_SECONDS}", self.seconds),
            );
        }
        if self.top_groups > MAX_LIST_LEN {
            return invalid(
                "top_groups",
                format!("is {}, must be in 0..={MAX_LIST_LEN}", self.top_groups),
            );
        }
        if !(1..=MAX_LIST_LEN).contains(&self.breakdown_limit) {
            return invalid(
                "breakdown_limit",
                format!("is {}, must be in 1..={MAX_LIST_LEN}", self.breakdown_limit),
            );
        }
        if self.max_future_seconds > MAX_FUTURE_SECONDS {
            return invalid(
                "max_future_seconds",
                format!(
                    "is {}, must be in 0..={MAX_FUTURE_SECONDS}",
                    self.max_future_seconds
                ),
            );
        }
        Ok(())
    }
}

/// The clock part shared by both window kinds.
#[derive(Clone, Debug)]
struct Clock {
    config: WindowConfig,
    now: u64,
}

impl Clock {
    fn new(config: WindowConfig, now: u64) -> Result<Self, StatsError> {
        config.validate()?;
        Ok(Clock { config, now })
    }

    /// Oldest second inside the window ending at `now`.
    fn oldest_at(&self, now: u64) -> u64 {
        now.saturating_sub(u64::from(self.config.seconds) - 1)
    }

    fn admit(&self, second: u64) -> Result<(), StatsError> {
        let oldest = self.oldest_at(self.now);
        let newest = self.now.saturating_add(self.config.max_future_seconds);
        if second < oldest {
            Err(StatsError::TooOld { second, oldest })
        } else if second > newest {
            Err(StatsError::TooNew { second, newest })
        } else {
            Ok(())
        }
    }

    /// Moves `now` forward (never back); returns the new oldest second.
    fn advance(&mut self, now: u64) -> u64 {
        self.now = self.now.max(now);
        self.oldest_at(self.now)
    }
}

/// Drops every slice older than `oldest`; returns how many were dropped.
fn expire<V>(slices: &mut BTreeMap<u64, V>, oldest: u64) -> usize {
    let before = slices.len();
    *slices = slices.split_off(&oldest);
    before - slices.len()
}

/// Additive window: one [`Partial`] per second, contributions are summed.
///
/// Time rule: the window at `now` covers seconds `now − seconds < s ≤ now`
/// (a crash at `t` counts up to `now = t + 299` with the default 300 s, not
/// at `t + 300`); contributions older than that or later than
/// `now + max_future_seconds` are rejected; `now` never moves back.
#[derive(Clone, Debug)]
pub struct Window {
    clock: Clock,
    slices: BTreeMap<u64, Partial>,
}

impl Window {
    /// An empty window whose newest `now` is `now`. Fails if the config is
    /// invalid.
    pub fn new(config: WindowConfig, now: u64) -> Result<Self, StatsError> {
        Ok(Window {
            clock: Clock::new(config, now)?,
            slices: BTreeMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WindowConfig {
        &self.clock.config
    }

    /// The newest `now` seen.
    pub fn now(&self) -> u64 {
        self.clock.now
    }

    /// Adds `partial` into the slice of `second`.
    ///
    /// Errors ([`StatsError::TooOld`] / [`StatsError::TooNew`]) mean the
    /// contribution was ignored and the window is unchanged.
    pub fn merge(&mut self, second: u64, partial: &Partial) -> Result<(), StatsError> {
        self.clock.admit(second)?;
        self.slices.entry(second).or_default().merge(partial);
        Ok(())
    }

    /// Adds one crash into the slice of `record.second`; same rules as
    /// [`merge`](Self::merge).
    pub fn add(&mut self, record: &CrashRecord<'_>) -> Result<(), StatsError> {
        self.clock.admit(record.second)?;
        self.slices.entry(record.second).or_default().add(record);
        Ok(())
    }

    /// Moves the window to `now` (ignored if older than the newest `now`
    /// seen) and drops the slices that left it. Returns how many slices
    /// were dropped.
    pub fn advance(&mut self, now: u64) -> usize {
        let oldest = self.clock.advance(now);
        expire(&mut self.slices, oldest)
    }

    /// Statistics of the window ending at `now`: slices `now − W < s ≤ now`.
    /// Does not modify the window; call [`advance`](Self::advance) to free
    /// memory. For a `now` earlier than the newest one seen, seconds already
    /// dropped read as zero.
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let slices: Vec<(u64, &Partial)> = self
            .slices
            .range(self.clock.oldest_at(now)..=now)
            .map(|(&s, p)| (s, p))
            .collect();
        build(&self.clock.config, now, &slices)
    }

    /// The slice of `second`, if any contribution was accepted for it.
    pub fn slice(&self, second: u64) -> Option<&Partial> {
        self.slices.get(&second)
    }

    /// Number of stored slices (including accepted future seconds).
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    /// True when no slice is stored.
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }
}

/// Replacing window: one [`Partial`] per `(source, second)`; setting a key
/// again replaces the previous partial, and sources are summed at snapshot
/// time. `K` is typically a pod name. Same time rule as [`Window`].
#[derive(Clone, Debug)]
pub struct KeyedWindow<K> {
    clock: Clock,
    slices: BTreeMap<u64, BTreeMap<K, Partial>>,
}

impl<K: Ord> KeyedWindow<K> {
    /// An empty window whose newest `now` is `now`. Fails if the config is
    /// invalid.
    pub fn new(config: WindowConfig, now: u64) -> Result<Self, StatsError> {
        Ok(KeyedWindow {
            clock: Clock::new(config, now)?,
            slices: BTreeMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WindowConfig {
        &self.clock.config
    }

    /// The newest `now` seen.
    pub fn now(&self) -> u64 {
        self.clock.now
    }

    /// Stores `partial` as the whole contribution of `source` for `second`,
    /// replacing (never adding to) what that source set before. Returns the
    /// replaced partial. Errors ([`StatsError::TooOld`] /
    /// [`StatsError::TooNew`]) mean the partial was ignored.
    pub fn set(
        &mut self,
        source: K,
        second: u64,
        partial: Partial,
    ) -> Result<Option<Partial>, StatsError> {
        self.clock.admit(second)?;
        Ok(self
            .slices
            .entry(second)
            .or_default()
            .insert(source, partial))
    }

    /// The partial `source` set for `second`.
    pub fn get(&self, source: &K, second: u64) -> Option<&Partial> {
        self.slices.get(&second)?.get(source)
    }

    /// Removes and returns the partial `source` set for `second`.
    pub fn remove(&mut self, source: &K, second: u64) -> Option<Partial> {
        let per_source = self.slices.get_mut(&second)?;
        let removed = per_source.remove(source);
        if per_source.is_empty() {
            self.slices.remove(&second);
        }
        removed
    }

    /// Moves the window to `now` (ignored if older than the newest `now`
    /// seen) and drops the seconds that left it. Returns how many
    /// `(source, second)` partials were dropped.
    pub fn advance(&mut self, now: u64) -> usize {
        let oldest = self.clock.advance(now);
        let kept = self.slices.split_off(&oldest);
        let dropped = self.slices.values().map(BTreeMap::len).sum();
        self.slices = kept;
        dropped
    }

    /// Statistics of the window ending at `now`, summing all sources; same
    /// rules as [`Window::snapshot`].
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let slices: Vec<(u64, &Partial)> = self
            .slices
            .range(self.clock.oldest_at(now)..=now)
            .flat_map(|(&s, per_source)| per_source.values().map(move |p| (s, p)))
            .collect();
        build(&self.clock.config, now, &slices)
    }

    /// Number of stored `(source, second)` partials.
    pub fn len(&self) -> usize {
        self.slices.values().map(BTreeMap::len).sum()
    }

    /// The partials every source set for `second`.
    pub(crate) fn sources_at(&self, second: u64) -> impl Iterator<Item = &Partial> {
        self.slices
            .get(&second)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// The oldest second a snapshot at `now` covers.
    pub(crate) fn oldest_second_at(&self, now: u64) -> u64 {
        self.clock.oldest_at(now)
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: validate() enforces the documented ranges; Default is valid.
    #[test]
    fn config_validation() {
        assert_eq!(WindowConfig::default().validate(), Ok(()));
        let bad = [
            WindowConfig {
                seconds: 0,
                ..Default::default()
            },
            WindowConfig {
                seconds: MAX_WINDOW_SECONDS + 1,
                ..Default::default()
            },
            WindowConfig {
                top_groups: MAX_LIST_LEN + 1,
                ..Default::default()
            },
            WindowConfig {
                breakdown_limit: 0,
                ..Default::default()
            },
            WindowConfig {
                max_future_seconds: MAX_FUTURE_SECONDS + 1,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(matches!(
                config.validate(),
                Err(StatsError::InvalidConfig { .. })
            ));
            assert!(Window::new(config.clone(), 0).is_err());
            assert!(KeyedWindow::<u8>::new(config, 0).is_err());
        }
    }

    // Rule: near the epoch the window simply starts at second 0 (no
    // underflow), and `now` never moves backwards.
    #[test]
    fn clock_saturates_and_is_monotonic() {
        let mut w = Window::new(WindowConfig::default(), 5).unwrap();
        assert_eq!(w.merge(0, &Partial::new()), Ok(()));
        w.advance(1_000);
        w.advance(10);
        assert_eq!(w.now(), 1_000);
        assert_eq!(
            w.merge(700, &Partial::new()),
            Err(StatsError::TooOld {
                second: 700,
                oldest: 701
            })
        );
    }
}
