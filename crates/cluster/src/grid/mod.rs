//! The grid: a partitioned, replicated key-value cache over the cluster (what Hazelcast's
//! embedded `IMap` did for the original system), generic over keys ([`GridKey`]) and values
//! ([`GridValue`]).
//!
//! # Partitioning
//!
//! A key's partition is `stable_hash(key)` reduced to `0..partitions` (271 by default).
//! [`GridKey::stable_hash`] feeds the key to a SipHash-1-3 under a fixed key with explicit
//! byte orders, so every pod, build and run agrees (`std::hash::Hash` promises none of that).
//!
//! A [`PartitionTable`] lists, per partition, the owner then `backup_count` backups (1 by
//! default). The **leader** (the cluster's lease holder) computes it from the member list by
//! rendezvous hashing with per-member quotas, starting from the previous table (see
//! `table.rs`: each member holds `floor` or `ceil` of `partitions / members` slots per rank,
//! a removal moves only the removed member's slots, a join moves about `1/N`). It recomputes
//! when the member list has been stable for `table_debounce` (200 ms), bumps the version and
//! sends the table with its fencing epoch to every member (`<name>.table`), resending every
//! 500 ms to those that did not acknowledge. Receivers check the epoch with the cluster's
//! [`EpochFence`](crate::EpochFence) — a deposed leader's table is rejected and counted — and
//! keep the table with the highest `(epoch, version)`. A node without a table, or whose leader
//! changed, pulls it from the leader (`<name>.table_get`). A leader without a table (a
//! restart) asks the members for theirs first, so a leader change never reshuffles data; a
//! new leader republishes under its own epoch.
//!
//! # Routing
//!
//! [`Grid::get_many`] and [`Grid::put_many`] group keys by node: **one RPC per node per
//! call**, all in parallel. Keys of partitions this node holds (as owner or backup) are read
//! in-process; a backup's miss asks the owner (the owner's copy is authoritative, a backup may
//! have evicted or missed a write). When an owner fails, its keys go to the next replica; when
//! all fail, they are misses and the failures are counted. Writes go to the owner and every
//! backup. A node that receives a request for a partition it does not hold (the caller's table
//! is older or newer) forwards it once to the replicas it knows of. Bodies are JSON (serde):
//! the bench measures the whole remote path, encoding included, against a bare TCP echo.
//!
//! # Load coalescing
//!
//! [`Grid::get_or_compute_many`] computes each missing key once cluster-wide. A key's
//! **coordinator** is its first reachable replica (the owner, or its backup when the owner is
//! down — every caller fails over in the same order, so they still meet at one node):
//!
//! 1. the caller sends the keys it misses to their coordinators (`<name>.claim`, one RPC per
//!    coordinator); per key the coordinator answers the value, or *Claimed* (no live claim:
//!    the caller now holds one, lasting `claim_timeout`), or *Pending* (another caller holds
//!    it);
//! 2. the caller computes all its claimed keys in **one** `compute` call and puts the results
//!    (the put at the coordinator ends the claim and wakes its waiters); keys `compute`
//!    could not produce are released. *Meanwhile* it waits for its pending keys
//!    (`<name>.wait`, one RPC per coordinator, answered when the claimant's put lands);
//! 3. pending keys whose claim ended without a value (released, the claimant died, the
//!    timeout passed) are computed by the waiter itself, in one more `compute` call.
//!
//! So a key is computed twice only when its claimant fails or exceeds `claim_timeout`, or when
//! its coordinator changes between two claims (a table change, a coordinator dying).
//!
//! # Migration
//!
//! When a table arrives, each node plans ([`plan_migration`]): the partitions it now holds and
//! did not are *received* — pulled in chunks (`migration_chunk_entries` entries or
//! `migration_chunk_bytes`, `<name>.pull`), `migration_parallelism` partitions at a time, from
//! the previous owner, else a previous backup, else another current replica; a source
//! answers only for partitions it holds completely, so a half-received copy is never copied
//! on. Migrated entries never overwrite newer writes (insert-if-absent). While a partition is
//! received, its owner serves hits from what it has and forwards misses to the sources ("reads
//! fall through to the previous owner"). Partitions a node no longer holds are kept for
//! `handoff_grace` (30 s), then dropped. A node joining therefore serves its partitions
//! locally as soon as they arrived: new pods are warm.
//!
//! # Leaving
//!
//! [`Grid::leave`] (before [`Cluster::leave`](crate::Cluster::leave), on SIGTERM) asks the
//! leader for a table without this node — the leader excludes it at once, without debounce,
//! and lists it as *leaving* — then **pushes every partition of which it holds the only live
//! copy** ([`plan_leave`]) to its new replicas (`<name>.push`), and returns when done or after
//! `leave_timeout` (20 s). Partitions with a surviving replica are not pushed: their new
//! replicas pull from the survivor, so with a backup a leave moves no data at all from the
//! leaving pod. Receivers expecting a push wait for it up to `leave_timeout`, then pull from
//! the leaving node, which keeps serving until it exits. If the leader cannot be reached, the
//! node pushes along the table it computes itself (the same inputs give the same table).
//!
//! # Safety
//!
//! [`Grid::cluster_safe`] holds when this node has a table computed from the current member
//! list (no recomputation pending, no member handing off), every partition has a replica on a
//! current member, and this node receives no partition. A new pod becomes safe once it holds
//! its data; use it for readiness so a rolling update waits for the new pod before stopping
//! the next old one. (It is this node's view: other nodes' migrations are not included.)
//!
//! # Memory bound
//!
//! Each node's store is bounded by `max_bytes` as reported by [`GridKey::size_bytes`] and
//! [`GridValue::size_bytes`] plus a fixed per-entry overhead, with least-recently-used
//! eviction (counted). Values may carry a TTL ([`GridValue::ttl`], e.g. negative entries):
//! the writer turns it into an expiry in Unix milliseconds that travels with the entry;
//! expired entries are absent (the clock is injected: [`Clock`]).
//!
//! # Not guaranteed
//!
//! - **Durability**: the grid is a cache. An entry is lost when all its replicas die together
//!   (two pods at once with one backup), when evicted, or when a write to a replica failed.
//! - **Consistency**: no linearizability. Writes of different values to one key resolve
//!   arbitrarily (last write per replica; migration keeps existing entries); a reader may see
//!   an older value from a backup or a stale-table node. Values should be deterministic
//!   functions of their keys (symbolication results are).
//! - **Exactly-once computation**: see the coalescing caveats above.
//! - **Cluster-wide safety**: `cluster_safe` is one node's view.
//! - **Split brain**: during a network partition both sides may serve and compute; fencing
//!   only keeps a deposed leader's tables out.
//! - **Partition count changes** need a fresh cluster (all pods restarted with the new
//!   configuration).
//!
//! All pods must run the grid under the same name and configuration; a member that does not
//! (yet) serve the grid answers "no such method", which callers treat like a failed node.

mod config;
mod hash;
mod node;
mod plan;
mod stats;
mod store;
mod table;
mod wire;

pub use config::GridConfig;
pub use hash::{key_hash, partition_of, GridKey, GridValue, StableHasher};
pub use node::{ClaimOutcome, Grid, GridError, LeaveReport, Safety};
pub use plan::{plan_leave, plan_migration, MigrationPlan, Push, Transfer};
pub use stats::{GridStats, GridStatsSnapshot, LatencyHistogram};
pub use store::{
    Clock, Cursor, Inserted, ManualClock, Store, SystemClock, WireEntry, ENTRY_OVERHEAD,
};
pub use table::{assign, rendezvous_weight, PartitionTable};
