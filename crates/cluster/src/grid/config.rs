//! Settings of a grid.

use std::time::Duration;

/// Settings of a grid. Every pod of a cluster must use the same `name`, `partitions` and
/// `backup_count` (tables with another partition count are refused and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridConfig {
    /// The RPC prefix: methods are `<name>.get`, `<name>.put`, ... One cluster can run several
    /// grids under different names. Default `grid`; no dots.
    pub name: String,
    /// Number of partitions: 271 (Hazelcast's default). Enough that every member of a few
    /// dozen pods holds several partitions (so capping per-member load balances well), few
    /// enough that the table (partitions × replicas ids) is a ~10 KiB message; prime, so a
    /// key hash with structure in its low bits still spreads.
    pub partitions: u32,
    /// Backups per partition: 1. Any single pod may die (a node failure, an eviction, a
    /// rolling update) without losing an entry, at twice the memory. 0 makes the grid a
    /// plain sharded cache; 2 survives two simultaneous losses.
    pub backup_count: u32,
    /// Bound on each node's store, in bytes as reported by keys and values plus a per-entry
    /// overhead: 128 MiB. A node holds `(1 + backup_count) / members` of the data; size pods
    /// for it (the least recently used entries are evicted beyond it).
    pub max_bytes: usize,
    /// Timeout of one data-path call (get, put, claim): 500 ms. A batch answers in well under
    /// a millisecond; a peer slower than this is overloaded or gone, and asking its backup, or
    /// computing locally, is faster than waiting longer.
    pub rpc_timeout: Duration,
    /// How long a claim on a missing key lasts, so how long concurrent callers wait for the
    /// claimant's value before computing it themselves: 5 s, above a cold symbolication (a
    /// SymCache conversion of a large debug file takes a few seconds).
    pub claim_timeout: Duration,
    /// The leader recomputes the table once the member list has been stable this long:
    /// 200 ms, so a burst of joins (a scale-up, a rolling update's surge) makes one table, not
    /// one per pod, while a dead pod's partitions move on promptly.
    pub table_debounce: Duration,
    /// Most entries per migration chunk: 1000 (with `migration_chunk_bytes`, one RPC moves
    /// about a megabyte: large enough to amortise the round trip, small enough not to stall
    /// the connection for other calls).
    pub migration_chunk_entries: usize,
    /// About most bytes per migration chunk: 1 MiB.
    pub migration_chunk_bytes: usize,
    /// Partitions received (or pushed) at once: 4. Keeps a join from saturating the peers'
    /// cores (the machines have 2) and their connections while serving traffic.
    pub migration_parallelism: usize,
    /// Timeout of one migration chunk: 5 s (a megabyte moves in milliseconds; this tolerates
    /// a CPU-starved peer).
    pub transfer_timeout: Duration,
    /// Longest [`Grid::leave`](crate::Grid::leave) takes: 20 s, inside Kubernetes' default
    /// `terminationGracePeriodSeconds` of 30 s with room for the rest of the shutdown.
    /// Receivers also wait this long for a leaving member's push before pulling instead.
    pub leave_timeout: Duration,
    /// How long a node keeps a partition it no longer holds: 30 s, so callers with an older
    /// table and new replicas still pulling find the data.
    pub handoff_grace: Duration,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            name: "grid".into(),
            partitions: 271,
            backup_count: 1,
            max_bytes: 128 << 20,
            rpc_timeout: Duration::from_millis(500),
            claim_timeout: Duration::from_secs(5),
            table_debounce: Duration::from_millis(200),
            migration_chunk_entries: 1000,
            migration_chunk_bytes: 1 << 20,
            migration_parallelism: 4,
            transfer_timeout: Duration::from_secs(5),
            leave_timeout: Duration::from_secs(20),
            handoff_grace: Duration::from_secs(30),
        }
    }
}

impl GridConfig {
    /// Checks each field and the rules between them.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.contains('.') {
            return Err(format!(
                "name {:?} must be non-empty and without dots",
                self.name
            ));
        }
        if !(1..=65_536).contains(&self.partitions) {
            return Err(format!(
                "partitions ({}) must be within 1..=65536",
                self.partitions
            ));
        }
        if self.backup_count > 6 {
            return Err(format!(
                "backup_count ({}) must be at most 6",
                self.backup_count
            ));
        }
        if self.max_bytes < 4096 {
            return Err(format!(
                "max_bytes ({}) must be at least 4096",
                self.max_bytes
            ));
        }
        if self.migration_chunk_entries == 0 || self.migration_chunk_bytes == 0 {
            return Err("migration chunks must allow at least one entry and one byte".into());
        }
        if self.migration_parallelism == 0 {
            return Err("migration_parallelism must be at least 1".into());
        }
        for (name, d) in [
            ("rpc_timeout", self.rpc_timeout),
            ("claim_timeout", self.claim_timeout),
            ("transfer_timeout", self.transfer_timeout),
            ("leave_timeout", self.leave_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(GridConfig::default().validate().is_ok());
        let bad = |f: fn(&mut GridConfig)| {
            let mut c = GridConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.name = "a.b".into()).contains("name"));
        assert!(bad(|c| c.partitions = 0).contains("partitions"));
        assert!(bad(|c| c.backup_count = 7).contains("backup_count"));
        assert!(bad(|c| c.max_bytes = 10).contains("max_bytes"));
        assert!(bad(|c| c.migration_parallelism = 0).contains("parallelism"));
        assert!(bad(|c| c.claim_timeout = Duration::ZERO).contains("claim_timeout"));
    }
}
