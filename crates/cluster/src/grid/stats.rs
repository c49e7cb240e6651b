//! Counters of a grid node, as atomics, and a plain snapshot the binary renders as
//! Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

const SUB: u32 = 4;
const BUCKETS: usize = 4 * 26;

/// A latency histogram in microseconds with four buckets per power of two (a quantile is
/// reported as its bucket's upper bound: at most 25 % high), lock-free.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let m = 63 - us.leading_zeros();
    let sub = (us >> (m - 2)) & 3;
    ((SUB * (m - 1)) as usize + sub as usize).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> u64 {
    if bucket < SUB as usize {
        return bucket as u64;
    }
    let m = bucket as u32 / SUB + 1;
    let sub = bucket as u64 % SUB as u64;
    ((4 + sub + 1) << (m - 2)) - 1
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1) in microseconds (upper bound of its bucket); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(i);
            }
        }
        upper_bound(BUCKETS - 1)
    }
}

/// The counters of one grid node. Monotonic counters only; gauges are read at snapshot time.
#[derive(Debug, Default)]
pub struct GridStats {
    /// Keys found in a partition this node holds.
    pub hits_local: AtomicU64,
    /// Keys found on another node.
    pub hits_remote: AtomicU64,
    /// Keys found nowhere.
    pub misses: AtomicU64,
    /// Keys handed to a `compute` function.
    pub computations: AtomicU64,
    /// Keys another caller was computing, received by waiting for its put.
    pub coalesced_waits: AtomicU64,
    /// Keys whose wait for another caller ended without a value (timeout, release, failure):
    /// computed by the waiter itself.
    pub coalesce_fallbacks: AtomicU64,
    /// Entries written by this node's callers (each counted once, whatever the replicas).
    pub puts: AtomicU64,
    /// Reads a node forwarded for a partition it is still receiving.
    pub forwarded_reads: AtomicU64,
    /// Data-path RPCs sent (get, put, claim, wait).
    pub rpc_calls: AtomicU64,
    /// Data-path RPCs that failed (the keys went to a backup, or were counted as misses).
    pub rpc_errors: AtomicU64,
    /// Sum of data-path RPC latencies, microseconds.
    pub rpc_micros: AtomicU64,
    /// Data-path RPC latencies.
    pub rpc_latency: LatencyHistogram,
    /// Partition migrations (pulls or received pushes) completed.
    pub migrations_done: AtomicU64,
    /// Partition migrations abandoned: no source held the partition (its data is lost, and
    /// recomputed on demand).
    pub migrations_failed: AtomicU64,
    /// Bytes received by migrations and leave pushes (entry sizes as counted by the store).
    pub migration_bytes: AtomicU64,
    /// Entries received by migrations and leave pushes.
    pub migration_entries: AtomicU64,
    /// Bytes this node pushed while leaving.
    pub pushed_bytes: AtomicU64,
    /// Tables accepted.
    pub tables_applied: AtomicU64,
    /// Tables rejected for a stale leader epoch.
    pub stale_tables_rejected: AtomicU64,
}

impl GridStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn rpc(&self, micros: u64, ok: bool) {
        self.rpc_calls.fetch_add(1, Ordering::Relaxed);
        self.rpc_micros.fetch_add(micros, Ordering::Relaxed);
        self.rpc_latency.record(micros);
        if !ok {
            self.rpc_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A point-in-time copy of a node's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GridStatsSnapshot {
    /// See [`GridStats::hits_local`].
    pub hits_local: u64,
    /// See [`GridStats::hits_remote`].
    pub hits_remote: u64,
    /// See [`GridStats::misses`].
    pub misses: u64,
    /// See [`GridStats::computations`].
    pub computations: u64,
    /// See [`GridStats::coalesced_waits`].
    pub coalesced_waits: u64,
    /// See [`GridStats::coalesce_fallbacks`].
    pub coalesce_fallbacks: u64,
    /// See [`GridStats::puts`].
    pub puts: u64,
    /// See [`GridStats::forwarded_reads`].
    pub forwarded_reads: u64,
    /// See [`GridStats::rpc_calls`].
    pub rpc_calls: u64,
    /// See [`GridStats::rpc_errors`].
    pub rpc_errors: u64,
    /// See [`GridStats::rpc_micros`].
    pub rpc_micros: u64,
    /// Median data-path RPC latency, microseconds (bucket upper bound).
    pub rpc_p50_micros: u64,
    /// 99th percentile data-path RPC latency, microseconds (bucket upper bound).
    pub rpc_p99_micros: u64,
    /// Entries in the local store.
    pub entries: u64,
    /// Bytes counted in the local store.
    pub bytes: u64,
    /// The store's bound.
    pub max_bytes: u64,
    /// Entries evicted by the memory bound.
    pub evictions: u64,
    /// Entries removed as expired.
    pub expired: u64,
    /// Partitions this node owns in its table.
    pub partitions_owned: u64,
    /// Partitions this node backs up in its table.
    pub partitions_backup: u64,
    /// Partitions being received now.
    pub migrations_running: u64,
    /// See [`GridStats::migrations_done`].
    pub migrations_done: u64,
    /// See [`GridStats::migrations_failed`].
    pub migrations_failed: u64,
    /// See [`GridStats::migration_bytes`].
    pub migration_bytes: u64,
    /// See [`GridStats::migration_entries`].
    pub migration_entries: u64,
    /// See [`GridStats::pushed_bytes`].
    pub pushed_bytes: u64,
    /// The table's version (0: no table yet).
    pub table_version: u64,
    /// The table's epoch.
    pub table_epoch: u64,
    /// See [`GridStats::tables_applied`].
    pub tables_applied: u64,
    /// See [`GridStats::stale_tables_rejected`].
    pub stale_tables_rejected: u64,
    /// Whether the grid is safe (see `Grid::cluster_safe`).
    pub cluster_safe: bool,
}

impl GridStatsSnapshot {
    /// Hits (both tiers) over lookups; 1 when nothing was looked up.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.hits_local + self.hits_remote;
        let all = hits + self.misses;
        if all == 0 {
            1.0
        } else {
            hits as f64 / all as f64
        }
    }
}

pub(crate) fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounds_contain_their_values() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket_of(us);
            assert!(b >= last);
            last = b;
            assert!(
                upper_bound(b) >= us,
                "{us} in bucket {b} bounded by {}",
                upper_bound(b)
            );
            assert!(
                upper_bound(b) <= us + us / 4 + 1,
                "{us}: {}",
                upper_bound(b)
            );
        }
    }

    #[test]
    fn quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for us in 1..=1000 {
            h.record(us);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((500..=625).contains(&p50), "{p50}");
        assert!((990..=1240).contains(&p99), "{p99}");
    }
}
