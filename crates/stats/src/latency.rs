//! Mergeable latency sketch (DDSketch-style logarithmic buckets).
//!
//! A value `x ≥ 1` (microseconds, integer) goes to bucket
//! `i = ceil(log_γ x)` with `γ = (1 + α) / (1 − α)` and `α = 1 %`; bucket
//! `i` covers `(γ^(i−1), γ^i]` and is represented by `2γ^i / (γ + 1)`, which
//! is within `α` of every value in the bucket. Zero gets its own counter.
//! Because the quantile's bucket is found from exact per-bucket counts, a
//! quantile estimate is within relative error `α` of the exact quantile
//! (defined in [`LatencySketch::quantile`]), whatever the distribution and
//! however sketches were merged.
//!
//! Memory: buckets are a sparse `BTreeMap<u16, u64>`. The whole `u64`
//! range needs at most 2 220 buckets (`log_γ 2^64 ≈ 2218`); symbolication
//! times between 1 µs and 100 s occupy at most ~920, and a realistic spread
//! (1 ms to 10 s) at most ~460. Count and sum are kept exactly, so the mean
//! is exact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::StatsError;

/// Mergeable quantile sketch for non-negative integer latencies.
///
/// Contract: [`merge`](Self::merge) is associative and commutative; `count`
/// and `sum` are exact (the sum saturates at `u64::MAX` µs, ~584 000
/// years); [`quantile`](Self::quantile) is within
/// [`RELATIVE_ACCURACY`](Self::RELATIVE_ACCURACY) of the exact quantile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LatencyWire")]
pub struct LatencySketch {
    count: u64,
    sum: u64,
    zeros: u64,
    buckets: BTreeMap<u16, u64>,
}

impl LatencySketch {
    /// Relative accuracy `α` of quantile estimates.
    pub const RELATIVE_ACCURACY: f64 = 0.01;

    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value.
    pub fn insert(&mut self, value: u64) {
        self.count = self.count.saturating_add(1);
        self.sum = self.sum.saturating_add(value);
        if value == 0 {
            self.zeros = self.zeros.saturating_add(1);
        } else {
            let c = self.buckets.entry(bucket_index(value)).or_insert(0);
            *c = c.saturating_add(1);
        }
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &LatencySketch) {
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.saturating_add(other.sum);
        self.zeros = self.zeros.saturating_add(other.zeros);
        for (&i, &c) in &other.buckets {
            let slot = self.buckets.entry(i).or_insert(0);
            *slot = slot.saturating_add(c);
        }
    }

    /// Number of recorded values (exact).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of recorded values (exact, saturating).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Exact arithmetic mean, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// Estimate of the `q`-quantile (`q` clamped to `[0, 1]`), `None` when
    /// empty.
    ///
    /// The exact quantile it approximates is the lower one: the element at
    /// 0-based rank `floor(q · (count − 1))` of the sorted values. The
    /// estimate `e` satisfies `|e − x| ≤ α · x` for that element `x` (and is
    /// exactly 0 when `x` is 0).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (&i, &c) in &self.buckets {
            seen = seen.saturating_add(c);
            if rank < seen {
                return Some(bucket_value(i));
            }
        }
        // Unreachable for valid sketches (count = zeros + Σ buckets).
        self.buckets.keys().next_back().map(|&i| bucket_value(i))
    }
}

fn ln_gamma() -> f64 {
    let a = LatencySketch::RELATIVE_ACCURACY;
    ((1.0 + a) / (1.0 - a)).ln()
}

/// Bucket of a value `≥ 1`.
fn bucket_index(value: u64) -> u16 {
    ((value as f64).ln() / ln_gamma()).ceil() as u16
}

/// Representative value of a bucket: `2γ^i / (γ + 1)`.
fn bucket_value(index: u16) -> f64 {
    let a = LatencySketch::RELATIVE_ACCURACY;
    let gamma = (1.0 + a) / (1.0 - a);
    2.0 * (f64::from(index) * ln_gamma()).exp() / (gamma + 1.0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyWire {
    count: u64,
    sum: u64,
    zeros: u64,
    buckets: BTreeMap<u16, u64>,
}

impl TryFrom<LatencyWire> for LatencySketch {
    type Error = StatsError;

    fn try_from(w: LatencyWire) -> Result<Self, StatsError> {
        const WHAT: &str = "latency sketch";
        let max_index = bucket_index(u64::MAX);
        let mut total = w.zeros;
        for (&i, &c) in &w.buckets {
            if i > max_index {
                return Err(StatsError::invalid_data(
                    WHAT,
                    format!("bucket {i} out of range"),
                ));
            }
            if c == 0 {
                return Err(StatsError::invalid_data(
                    WHAT,
                    format!("bucket {i} is empty"),
                ));
            }
            total = total.saturating_add(c);
        }
        if total != w.count {
            return Err(StatsError::invalid_data(
                WHAT,
                format!("bucket counts add up to {total}, count is {}", w.count),
            ));
        }
        Ok(LatencySketch {
            count: w.count,
            sum: w.sum,
            zeros: w.zeros,
            buckets: w.buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: every value's bucket representative is within α of the value
    // (this is what the quantile guarantee rests on), over the whole range.
    #[test]
    fn bucket_representative_within_alpha() {
        let mut values: Vec<u64> = (1..5_000).collect();
        values.extend((0..64).map(|s| 1u64 << s));
        values.extend((1..64).map(|s| (1u64 << s) - 1));
        values.push(u64::MAX);
        for v in values {
            let est = bucket_value(bucket_index(v));
            let err = (est - v as f64).abs() / v as f64;
            assert!(
                err <= LatencySketch::RELATIVE_ACCURACY + 1e-9,
                "v={v} est={est}"
            );
        }
        assert!(bucket_index(u64::MAX) < 2_220);
    }

    // Rule: zeros are exact, the mean is exact, empty sketches have no
    // quantiles.
    #[test]
    fn zeros_mean_and_empty() {
        let mut s = LatencySketch::new();
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.mean(), None);
        for v in [0, 0, 0, 10, 20] {
            s.insert(v);
        }
        assert_eq!(s.quantile(0.5), Some(0.0)); // rank floor(0.5*4) = 2 -> 0
        assert_eq!(s.mean(), Some(6.0));
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum(), 30);
    }

    // Rule: deserialisation rejects sketches whose buckets do not add up.
    #[test]
    fn wire_validation() {
        let ok = LatencyWire {
            count: 2,
            sum: 5,
            zeros: 1,
            buckets: BTreeMap::from([(3, 1)]),
        };
        assert!(LatencySketch::try_from(ok).is_ok());
        let bad_count = LatencyWire {
            count: 3,
            sum: 5,
            zeros: 1,
            buckets: BTreeMap::from([(3, 1)]),
        };
        assert!(LatencySketch::try_from(bad_count).is_err());
        let bad_index = LatencyWire {
            count: 1,
            sum: 5,
            zeros: 0,
            buckets: BTreeMap::from([(60_000, 1)]),
        };
        assert!(LatencySketch::try_from(bad_index).is_err());
    }
}
