//! Recognising redelivered events cluster-wide: the pod-local [`EventIdDedup`] in front of a
//! grid of event ids (`events.*` RPCs) shared by every pod.
//!
//! JetStream hands a redelivered message to *any* pod. When the first copy's ack was lost (a
//! broker restart, a pod killed between counting and acknowledging), the copy usually lands on
//! another pod, whose local set has never seen its ids: without a shared set it would be
//! counted twice. Here an id goes through the same two states as in the local set, held by
//! the id's coordinator in the grid (its partition's first reachable replica):
//!
//! - **claim** ([`Grid::claim_many`], one RPC per coordinator per message): the local set is
//!   asked first (a copy in flight *here* is busy without any RPC); ids fresh locally are
//!   claimed in the grid. *Found* (accepted by some pod) → skipped and remembered locally;
//!   *Pending* (another pod's copy is in flight) → the whole message is busy, every claim just
//!   made is withdrawn, and the source naks it with a delay; *Claimed* → fresh.
//! - **accept** (the node's ack callback, on a worker thread): remembered locally at once, and
//!   an `Accepted` entry with the dedup TTL is put on the id's owner and backup in the
//!   background. The put also ends the claim. Accepted ids survive the loss of any one pod
//!   (backup count 1) and move with their partitions on joins and rolling updates
//!   (migration, hand-off on SIGTERM).
//! - **release** (the node refused the message): withdrawn locally and in the grid.
//!
//! A claim lasts `dedup_ttl` (as long as the source may hold a message) unless its pod leaves
//! the membership: coordinators drop a dead pod's claims within a few seconds, so the messages
//! it held, redelivered to the others after `ack_wait`, are claimed by them.
//!
//! # Limits
//!
//! - The grid is a cache: an id whose owner and backup both die, or that is evicted under the
//!   memory bound, is forgotten; a later copy would count again.
//! - Claims are held in memory by the coordinator only: if it dies while a first copy is in
//!   flight, a copy redelivered meanwhile to another pod is claimed anew.
//! - Until the grid has its first partition table (about a second after a pod starts) claims
//!   and puts wait for it, for at most 10 s. When no replica of an id's partition answers
//!   (still no table, a split), the id is claimed locally only: the source keeps going rather
//!   than stalling on the cache.

use std::sync::Arc;
use std::time::Duration;

use cluster::{ClaimOutcome, Cluster, Grid, GridConfig, GridError, GridValue, ENTRY_OVERHEAD};
use serde::{Deserialize, Serialize};

use super::dedup::{digest, Claim, ClaimFuture, EventIdDedup, SeenEvents};
use super::NatsConfig;
use crate::clock::WallClock;
use crate::metrics::{Counter, Exposition};

/// The grid's RPC prefix.
pub const EVENT_GRID_NAME: &str = "events";

/// The grid's value for an accepted event id: how long it is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Time to live, milliseconds.
    pub ttl_ms: u64,
}

impl GridValue for Accepted {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }

    fn ttl(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.ttl_ms))
    }
}

/// Event id digests (see `dedup.rs`) → acceptance.
pub type EventGrid = Grid<u128, Accepted>;

/// The cluster-wide [`SeenEvents`] (see the module docs).
pub struct ClusterSeenEvents {
    local: EventIdDedup,
    grid: EventGrid,
    runtime: tokio::runtime::Handle,
    ttl_ms: u64,
    found_elsewhere: Counter,
    busy_elsewhere: Counter,
}

impl std::fmt::Debug for ClusterSeenEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSeenEvents")
            .field("local", &self.local)
            .field("grid", &self.grid)
            .finish_non_exhaustive()
    }
}

impl ClusterSeenEvents {
    /// Starts the event-id grid on `cluster` (every pod running a NATS source must) with the
    /// source's capacity and TTL; `leave_timeout` bounds its hand-off on shutdown. Call within
    /// the Tokio runtime.
    pub fn start(
        cluster: Cluster,
        config: &NatsConfig,
        clock: Arc<dyn WallClock>,
        leave_timeout: Duration,
    ) -> Result<Self, GridError> {
        let grid_config = GridConfig {
            name: EVENT_GRID_NAME.into(),
            // Each pod holds (1 + backups) / pods of the ids; bounding each at what the local
            // set may hold keeps the grid within the same memory as the local set.
            max_bytes: config
                .dedup_capacity
                .saturating_mul(ENTRY_OVERHEAD + 16 + std::mem::size_of::<Accepted>()),
            // A claim lasts as long as the source may hold its message (its lease is extended
            // that long); a dead claimant's claims are dropped much sooner.
            claim_timeout: config.dedup_ttl,
            leave_timeout: leave_timeout.max(Duration::from_millis(1)),
            ..GridConfig::default()
        };
        Ok(Self {
            local: EventIdDedup::new(config.dedup_capacity, config.dedup_ttl, clock),
            grid: Grid::start(cluster, grid_config)?,
            runtime: tokio::runtime::Handle::current(),
            ttl_ms: config.dedup_ttl.as_millis() as u64,
            found_elsewhere: Counter::default(),
            busy_elsewhere: Counter::default(),
        })
    }

    /// The grid (for its statistics and the hand-off on shutdown).
    pub fn grid(&self) -> &EventGrid {
        &self.grid
    }

    /// The pod-local set in front of the grid.
    pub fn local(&self) -> &EventIdDedup {
        &self.local
    }

    /// Ids found accepted in the grid (by another pod, or by this one before a restart of its
    /// local set) since start.
    pub fn found_elsewhere(&self) -> u64 {
        self.found_elsewhere.get()
    }

    /// Messages found busy because another pod's copy was in flight, since start.
    pub fn busy_elsewhere(&self) -> u64 {
        self.busy_elsewhere.get()
    }
}

/// Longest a claim or a put waits for the grid's first partition table. A pod's table arrives
/// within a second or so of its start (the leader's debounce and bootstrap); without one the
/// grid routes nothing: claims would all be local and puts dropped.
const TABLE_WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded by [`TABLE_WAIT`]) until the grid has a partition table.
async fn routed(grid: &EventGrid) {
    if grid.table().is_some() {
        return;
    }
    let deadline = tokio::time::Instant::now() + TABLE_WAIT;
    while grid.table().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if grid.table().is_none() {
        tracing::warn!(
            "the event-id grid has no partition table yet: redeliveries are recognised on this pod only"
        );
    }
}

impl SeenEvents for ClusterSeenEvents {
    fn claim<'a>(&'a self, ids: &'a [&'a str]) -> ClaimFuture<'a> {
        Box::pin(async move {
            let mut fresh = match self.local.try_claim(ids) {
                Claim::Busy => return Claim::Busy,
                Claim::Claimed { fresh } => fresh,
            };
            let positions: Vec<usize> = (0..ids.len()).filter(|i| fresh[*i]).collect();
            if positions.is_empty() {
                return Claim::Claimed { fresh };
            }
            let keys: Vec<u128> = positions.iter().map(|i| digest(ids[*i])).collect();
            routed(&self.grid).await;
            let outcomes = self.grid.claim_many(&keys).await;
            if outcomes.contains(&ClaimOutcome::Pending) {
                // Another pod processes a copy: claim nothing, so that whichever copy is
                // processed counts every event once.
                let local: Vec<&str> = positions.iter().map(|i| ids[*i]).collect();
                self.local.release(&local);
                let mine: Vec<u128> = keys
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| **o == ClaimOutcome::Claimed)
                    .map(|(k, _)| *k)
                    .collect();
                self.grid.release_many(&mine).await;
                self.busy_elsewhere.inc();
                return Claim::Busy;
            }
            let mut seen = Vec::new();
            for (i, outcome) in positions.iter().zip(&outcomes) {
                if matches!(outcome, ClaimOutcome::Found(_)) {
                    fresh[*i] = false;
                    seen.push(ids[*i]);
                }
            }
            if !seen.is_empty() {
                self.local.accept(&seen);
                self.found_elsewhere.add(seen.len() as u64);
            }
            Claim::Claimed { fresh }
        })
    }

    fn accept(&self, ids: &[&str]) {
        self.local.accept(ids);
        let value = Accepted {
            ttl_ms: self.ttl_ms,
        };
        let entries: Vec<(u128, Accepted)> = ids.iter().map(|id| (digest(id), value)).collect();
        let grid = self.grid.clone();
        self.runtime.spawn(async move {
            routed(&grid).await;
            grid.put_many(entries).await
        });
    }

    fn release(&self, ids: &[&str]) {
        self.local.release(ids);
        let keys: Vec<u128> = ids.iter().map(|id| digest(id)).collect();
        let grid = self.grid.clone();
        self.runtime.spawn(async move {
            routed(&grid).await;
            grid.release_many(&keys).await
        });
    }

    fn render(&self, e: &mut Exposition) {
        e.counter(
            "crashgrid_nats_dedup_found_in_cluster_total",
            "Event ids found accepted in the cluster-wide set (redeliveries to another pod).",
            self.found_elsewhere(),
        );
        e.counter(
            "crashgrid_nats_dedup_busy_in_cluster_total",
            "NATS messages nak'ed because another pod was processing a copy.",
            self.busy_elsewhere(),
        );
        let s = self.grid.stats();
        e.gauge(
            "crashgrid_nats_dedup_grid_entries",
            "Accepted event ids this pod holds for the cluster (as owner or backup).",
            s.entries,
        );
        e.gauge(
            "crashgrid_nats_dedup_grid_table_version",
            "Version of the event-id grid's partition table this pod routes by (0: none yet).",
            s.table_version,
        );
        e.counter(
            "crashgrid_nats_dedup_grid_rpc_errors_total",
            "Event-id grid calls that failed (the id was then claimed locally only).",
            s.rpc_errors,
        );
    }
}
