//! The symbolication cache shared by all pods: the cluster's grid ([`cluster::Grid`]) holding
//! frame lookups ([`FrameKey`] → [`FrameValue`], see `symbolicate`'s `shared.rs`).
//!
//! # Where it sits
//!
//! A worker thread symbolicating a crash asks its near cache first, then sends every frame
//! the near cache lacks to the grid in one [`Grid::get_or_compute_many`] call (one RPC per
//! owner pod), which answers what any pod computed before and has this pod compute the rest
//! (once cluster-wide: concurrent pods wait for the first one's result). Workers are plain
//! threads, so the bridge to the async grid is `Handle::block_on` on the worker thread (the
//! node's runtime is multi-threaded: its workers drive the grid's I/O meanwhile).
//!
//! # Homes: each debug file converted on one pod
//!
//! The grid computes a frame once cluster-wide, but by the pod that claimed it, with its own
//! SymCache; and the frames of one debug file reach every pod, so without more every pod
//! would convert every debug file (a cold cluster of 3 pods converted 126 SymCaches for 42
//! files in the benchmark). So a pod sends the frames it claimed to their debug file's
//! **home** — the owner of the grid partition the debug id hashes to — in one
//! `symbolicate.compute` RPC per home; the home computes them on a blocking thread (its
//! SymCache cache makes concurrent requests share one conversion) and answers the values,
//! which the claimant puts into the grid as before. The claimant computes itself what its
//! home does not answer within 4 s (below the grid's 5 s claim timeout), what the home
//! reports missing or malformed (the home may lack a debug file this pod has), and frames
//! whose home it is. Homes follow the partition table, so a debug file's home moves only with
//! its partition's owner; every pod needs every debug file (upload to all pods, or share the
//! store). `crashgrid_grid_home_frames_total{side}` counts frames asked, served, and fallen
//! back.
//!
//! # Sizing
//!
//! `--cache-memory-bytes` bounds each pod's grid store (default 128 MiB; 0 turns the shared
//! tier off and leaves each pod with its near cache). With one backup a pod holds about
//! `2 / pods` of all entries; an entry is ~500 bytes on average with the demo world's names,
//! paths and inline chains (as counted by [`GridValue::size_bytes`], plus the grid's per-entry
//! overhead; measured in this module's tests), so 128 MiB holds some 250,000 frames per pod.
//! Negative entries (no debug file, malformed debug file) live for the node's negative TTL.
//!
//! # Readiness and shutdown
//!
//! `/readyz` answers 503 until the grid has been *cluster safe* once (a table computed from
//! the current members, every partition with a live replica, nothing being received by this
//! pod), so a rolling update starts the next old pod's termination only once the new pod holds
//! its share of the cache. It does not fall back to 503 afterwards: a peer's death makes every
//! survivor briefly unsafe (a new table, backups re-replicated), and all pods leaving the
//! Service at once would turn a lost pod into an outage. On SIGTERM the server hands the
//! partitions of which this pod holds the only copy to their new replicas ([`Grid::leave`],
//! bounded by `--leave-timeout-secs`) before leaving the cluster.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use cluster::{
    BoxFuture, Grid, GridConfig, GridError, GridKey, GridStatsSnapshot, GridValue, Handler,
    PartitionTable, RpcError, StableHasher,
};
use serde::{Deserialize, Serialize};
use symbolicate::{FrameCacheStats, FrameKey, FrameValue, SharedFrames, SourceFrame, Symbolicator};

use crate::metrics::{Counter, Exposition};

/// The grid's name (its RPC methods are `frames.get`, `frames.put`, ...).
pub const GRID_NAME: &str = "frames";

/// Default bound of each pod's grid store: 128 MiB.
pub const DEFAULT_MEMORY_BYTES: usize = 128 << 20;

/// A frame key in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GridFrameKey(pub FrameKey);

impl GridKey for GridFrameKey {
    fn stable_hash(&self, state: &mut StableHasher) {
        let k = &self.0;
        state.write_raw(k.debug_id.uuid().as_bytes());
        state.write_u32(k.debug_id.appendix());
        state.write_u64(k.rel_addr);
        state.write_u8(u8::from(k.crashing));
        state.write_u8(k.image_align);
    }

    fn size_bytes(&self) -> usize {
        std::mem::size_of::<FrameKey>()
    }
}

/// The negative TTL a value read from another pod falls back to (it is only used when a value
/// is written, and this pod writes only values it made).
const FALLBACK_NEGATIVE_TTL: Duration = Duration::from_secs(60);

fn fallback_ttl() -> Duration {
    FALLBACK_NEGATIVE_TTL
}

/// A frame value in the grid, with the writer's negative TTL (not sent: the expiry travels
/// with the entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridFrameValue {
    /// The value.
    #[serde(rename = "v")]
    pub value: FrameValue,
    #[serde(skip, default = "fallback_ttl")]
    negative_ttl: Duration,
}

impl GridFrameValue {
    /// `value`, kept for `negative_ttl` when it is a negative one.
    pub fn new(value: FrameValue, negative_ttl: Duration) -> Self {
        Self {
            value,
            negative_ttl,
        }
    }
}

/// Heap bookkeeping of one `Arc<str>`/`Arc<[T]>` (two reference counts).
const ARC_HEADER: usize = 16;

fn frame_bytes(f: &SourceFrame) -> usize {
    std::mem::size_of::<SourceFrame>()
        + 2 * ARC_HEADER
        + f.function.len()
        + f.raw_function.len()
        + f.abs_path.as_ref().map_or(0, |p| ARC_HEADER + p.len())
}

impl GridValue for GridFrameValue {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.value {
                FrameValue::Found { frames, .. } => {
                    ARC_HEADER + frames.iter().map(frame_bytes).sum::<usize>()
                }
                FrameValue::Missing { .. } => 0,
                FrameValue::Malformed { reason, .. } => reason.capacity(),
            }
    }

    fn ttl(&self) -> Option<Duration> {
        self.value.is_negative().then_some(self.negative_ttl)
    }
}

/// The grid of frames.
pub type FrameGrid = Grid<GridFrameKey, GridFrameValue>;

/// The caller's compute function, lent to the grid's compute calls (never concurrent).
type LentCompute<'a> = RefCell<&'a mut dyn FnMut(&[FrameKey]) -> Vec<FrameValue>>;

/// [`SharedFrames`] over the grid, for the symbolication worker threads.
pub struct GridFrames {
    grid: FrameGrid,
    runtime: tokio::runtime::Handle,
    negative_ttl: Duration,
    /// Where frames this pod must compute are sent (their debug file's home), when set.
    homes: Option<(cluster::Cluster, Arc<HomeCounters>)>,
}

impl GridFrames {
    /// Serves `grid` to worker threads, blocking on `runtime`; computes every frame it must
    /// compute itself.
    pub fn new(grid: FrameGrid, runtime: tokio::runtime::Handle, negative_ttl: Duration) -> Self {
        Self {
            grid,
            runtime,
            negative_ttl,
            homes: None,
        }
    }

    /// Sends the frames this pod must compute to their debug file's home pod over `cluster`
    /// (see the module docs), counting into `counters`.
    pub fn with_homes(mut self, cluster: cluster::Cluster, counters: Arc<HomeCounters>) -> Self {
        self.homes = Some((cluster, counters));
        self
    }

    /// Computes `keys`: those whose debug file's home is another pod there (one RPC per home),
    /// the rest, and whatever a home could not answer with a found value, with `compute`.
    async fn compute_at_homes(
        &self,
        keys: &[FrameKey],
        compute: &LentCompute<'_>,
    ) -> Vec<FrameValue> {
        let mut out: Vec<Option<FrameValue>> = vec![None; keys.len()];
        if let (Some((cluster, counters)), Some(table)) = (&self.homes, self.grid.table()) {
            let me = &cluster.me().id;
            let mut remote: Vec<(SocketAddr, Vec<usize>)> = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let Some(addr) = home_of(&table, &k.debug_id)
                    .filter(|id| id != me)
                    .and_then(|id| table.node(id).map(|n| n.addr))
                else {
                    continue;
                };
                match remote.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, idx)) => idx.push(i),
                    None => remote.push((addr, vec![i])),
                }
            }
            let calls = remote.iter().map(|(addr, idx)| {
                let ks: Vec<FrameKey> = idx.iter().map(|&i| keys[i]).collect();
                async move {
                    let body = serde_json::to_vec(&ks).expect("frame keys serialize");
                    let answer = cluster
                        .transport()
                        .call(*addr, HOME_COMPUTE, body, HOME_TIMEOUT)
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Vec<FrameValue>>(&b).ok())
                        .filter(|vs| vs.len() == ks.len());
                    (idx, answer)
                }
            });
            for (idx, answer) in futures_util::future::join_all(calls).await {
                counters.asked.add(idx.len() as u64);
                let Some(values) = answer else {
                    counters.fallbacks.add(idx.len() as u64);
                    continue;
                };
                for (&i, v) in idx.iter().zip(values) {
                    // A home without the debug file answers a negative; this pod may have it.
                    if v.is_negative() {
                        counters.fallbacks.inc();
                    } else {
                        out[i] = Some(v);
                    }
                }
            }
        }
        let here: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        if !here.is_empty() {
            let ks: Vec<FrameKey> = here.iter().map(|&i| keys[i]).collect();
            let values = (compute.borrow_mut())(&ks);
            for (i, v) in here.into_iter().zip(values) {
                out[i] = Some(v);
            }
        }
        out.into_iter()
            .map(|v| v.unwrap_or(FrameValue::Missing { at_ms: 0 }))
            .collect()
    }
}

impl SharedFrames for GridFrames {
    fn get_or_compute(
        &self,
        keys: &[FrameKey],
        compute: &mut dyn FnMut(&[FrameKey]) -> Vec<FrameValue>,
    ) -> Vec<FrameValue> {
        let grid_keys: Vec<GridFrameKey> = keys.iter().copied().map(GridFrameKey).collect();
        let ttl = self.negative_ttl;
        // The grid calls `compute` at most twice, one call after the other (never
        // concurrently): a RefCell lends it the caller's FnMut.
        let compute = RefCell::new(compute);
        let compute = &compute;
        let answers =
            self.runtime
                .block_on(self.grid.get_or_compute_many(&grid_keys, |ks| async move {
                    let raw: Vec<FrameKey> = ks.iter().map(|k| k.0).collect();
                    self.compute_at_homes(&raw, compute)
                        .await
                        .into_iter()
                        .map(|v| Some(GridFrameValue::new(v, ttl)))
                        .collect::<Vec<Option<GridFrameValue>>>()
                }));
        // The grid answers every key `compute` answered; anything else is computed here.
        let mut out: Vec<Option<FrameValue>> =
            answers.into_iter().map(|a| a.map(|v| v.value)).collect();
        out.resize(keys.len(), None);
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let ks: Vec<FrameKey> = missing.iter().map(|&i| keys[i]).collect();
            let values = (compute.borrow_mut())(&ks);
            for (i, v) in missing.into_iter().zip(values) {
                out[i] = Some(v);
            }
        }
        out.into_iter()
            .map(|v| v.unwrap_or(FrameValue::Missing { at_ms: 0 }))
            .collect()
    }

    fn put(&self, entries: &[(FrameKey, FrameValue)]) {
        let entries = entries
            .iter()
            .map(|(k, v)| {
                (
                    GridFrameKey(*k),
                    GridFrameValue::new(v.clone(), self.negative_ttl),
                )
            })
            .collect();
        self.runtime.block_on(self.grid.put_many(entries));
    }
}

/// A node's shared cache: the grid and whether it has been safe once (readiness).
pub struct SharedCache {
    grid: FrameGrid,
    warm: AtomicBool,
    cluster: cluster::Cluster,
    home: Arc<HomeCounters>,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("grid", &self.grid)
            .field("warm", &self.warm.load(Ordering::Relaxed))
            .finish()
    }
}

impl SharedCache {
    /// Starts the frame grid on `cluster` (call within the tokio runtime), bounded by
    /// `max_bytes`, handing off within `leave_timeout` on shutdown.
    pub fn start(
        cluster: cluster::Cluster,
        max_bytes: usize,
        leave_timeout: Duration,
    ) -> Result<Self, GridError> {
        let config = GridConfig {
            name: GRID_NAME.into(),
            max_bytes,
            leave_timeout: leave_timeout.max(Duration::from_millis(1)),
            ..GridConfig::default()
        };
        Ok(Self {
            grid: Grid::start(cluster.clone(), config)?,
            warm: AtomicBool::new(false),
            cluster,
            home: Arc::new(HomeCounters::default()),
        })
    }

    /// The grid.
    pub fn grid(&self) -> &FrameGrid {
        &self.grid
    }

    /// Registers the home computation service (`symbolicate.compute`, see the module docs)
    /// for `symbolicator` on this pod's cluster.
    pub fn serve_home(&self, symbolicator: Symbolicator) {
        self.cluster.register(
            HOME_SERVICE,
            Arc::new(HomeService {
                symbolicator,
                counters: self.home.clone(),
            }),
        );
    }

    /// Frames computed at their debug file's home.
    pub fn home_counters(&self) -> &HomeCounters {
        &self.home
    }

    /// Whether the grid has been cluster safe at least once (see the module docs).
    pub fn warm(&self) -> bool {
        if self.warm.load(Ordering::Acquire) {
            return true;
        }
        if self.grid.cluster_safe() {
            if !self.warm.swap(true, Ordering::AcqRel) {
                let s = self.grid.stats();
                tracing::info!(
                    partitions_owned = s.partitions_owned,
                    partitions_backup = s.partitions_backup,
                    entries = s.entries,
                    "shared symbolication cache is warm (cluster safe): ready"
                );
            }
            return true;
        }
        false
    }
}

fn ratio(part: u64, all: u64) -> f64 {
    if all == 0 {
        0.0
    } else {
        part as f64 / all as f64
    }
}

/// The `crashgrid_grid_*` metrics: lookups per tier (near cache, a partition this pod holds,
/// another pod), misses and computations, coalescing, RPC latency, memory, partitions and
/// migrations.
pub fn render_metrics(e: &mut Exposition, s: &GridStatsSnapshot, near: Option<FrameCacheStats>) {
    let near = near.unwrap_or_default();
    let lookups = near.hits + near.misses;
    let mut tiers = BTreeMap::new();
    tiers.insert("near".to_string(), near.hits);
    tiers.insert("local".to_string(), s.hits_local);
    tiers.insert("remote".to_string(), s.hits_remote);
    e.labeled(
        "crashgrid_grid_hits_total",
        "counter",
        "Frame lookups answered per tier: near (in-process), local (a grid partition this pod \
         holds), remote (another pod).",
        "tier",
        &tiers,
    );
    e.counter(
        "crashgrid_grid_lookups_total",
        "Frame lookups (each distinct frame of a crash once), all tiers.",
        lookups,
    );
    e.counter(
        "crashgrid_grid_misses_total",
        "Frame lookups found in no tier (computed here, or waited for).",
        s.misses,
    );
    e.counter(
        "crashgrid_grid_computations_total",
        "Frames computed with a SymCache by this pod for the grid (once cluster-wide, unless a \
         claimant failed).",
        s.computations,
    );
    e.counter(
        "crashgrid_grid_coalesced_waits_total",
        "Frames another pod was computing, received by waiting for its result.",
        s.coalesced_waits,
    );
    e.counter(
        "crashgrid_grid_coalesce_fallbacks_total",
        "Frames waited for in vain (claimant failed or too slow) and computed here.",
        s.coalesce_fallbacks,
    );
    let mut ratios = BTreeMap::new();
    ratios.insert("near".to_string(), ratio(near.hits, lookups));
    ratios.insert("local".to_string(), ratio(s.hits_local, lookups));
    ratios.insert("remote".to_string(), ratio(s.hits_remote, lookups));
    ratios.insert(
        "all".to_string(),
        ratio(near.hits + s.hits_local + s.hits_remote, lookups),
    );
    e.labeled(
        "crashgrid_grid_hit_ratio",
        "gauge",
        "Share of frame lookups since start answered per tier (all: by any tier, without \
         computing).",
        "tier",
        &ratios,
    );
    e.counter(
        "crashgrid_grid_puts_total",
        "Entries this pod wrote to the grid.",
        s.puts,
    );
    e.counter(
        "crashgrid_grid_rpc_calls_total",
        "Grid data-path RPCs sent (get, put, claim, wait).",
        s.rpc_calls,
    );
    e.counter(
        "crashgrid_grid_rpc_errors_total",
        "Grid data-path RPCs that failed (the keys went to a backup or were computed).",
        s.rpc_errors,
    );
    e.counter(
        "crashgrid_grid_rpc_seconds_sum",
        "Total time of grid data-path RPCs.",
        s.rpc_micros as f64 / 1e6,
    );
    e.counter(
        "crashgrid_grid_rpc_seconds_count",
        "Grid data-path RPCs timed.",
        s.rpc_calls,
    );
    e.gauge(
        "crashgrid_grid_rpc_p50_seconds",
        "Median grid data-path RPC latency since start (upper bound of its bucket).",
        s.rpc_p50_micros as f64 / 1e6,
    );
    e.gauge(
        "crashgrid_grid_rpc_p99_seconds",
        "99th percentile grid data-path RPC latency since start (upper bound of its bucket).",
        s.rpc_p99_micros as f64 / 1e6,
    );
    e.gauge(
        "crashgrid_grid_entries",
        "Entries in this pod's grid store.",
        s.entries,
    );
    e.gauge(
        "crashgrid_grid_bytes",
        "Bytes counted in this pod's grid store.",
        s.bytes,
    );
    e.gauge(
        "crashgrid_grid_max_bytes",
        "Bound of this pod's grid store (--cache-memory-bytes).",
        s.max_bytes,
    );
    e.counter(
        "crashgrid_grid_evictions_total",
        "Entries evicted by the memory bound.",
        s.evictions,
    );
    e.counter(
        "crashgrid_grid_expired_total",
        "Entries removed as expired (negative entries past their TTL).",
        s.expired,
    );
    let mut parts = BTreeMap::new();
    parts.insert("owner".to_string(), s.partitions_owned);
    parts.insert("backup".to_string(), s.partitions_backup);
    e.labeled(
        "crashgrid_grid_partitions",
        "gauge",
        "Grid partitions this pod holds in the current table, by role.",
        "role",
        &parts,
    );
    e.gauge(
        "crashgrid_grid_migrations_running",
        "Partitions this pod is receiving now.",
        s.migrations_running,
    );
    let mut migrations = BTreeMap::new();
    migrations.insert("done".to_string(), s.migrations_done);
    migrations.insert("failed".to_string(), s.migrations_failed);
    e.labeled(
        "crashgrid_grid_migrations_total",
        "counter",
        "Partition migrations into this pod, by outcome (failed: no source held the \
         partition).",
        "outcome",
        &migrations,
    );
    e.counter(
        "crashgrid_grid_migration_bytes_total",
        "Bytes received by migrations and leave hand-offs.",
        s.migration_bytes,
    );
    e.counter(
        "crashgrid_grid_migration_entries_total",
        "Entries received by migrations and leave hand-offs.",
        s.migration_entries,
    );
    e.counter(
        "crashgrid_grid_pushed_bytes_total",
        "Bytes this pod handed off while leaving.",
        s.pushed_bytes,
    );
    e.gauge(
        "crashgrid_grid_table_version",
        "Version of the partition table this pod uses (0: none yet).",
        s.table_version,
    );
    e.gauge(
        "crashgrid_grid_cluster_safe",
        "1 when every partition has a live replica, the table is current and this pod \
         receives nothing.",
        u8::from(s.cluster_safe),
    );
}

/// Builds the [`GridFrames`] of `cache` for the runtime of the caller (call within it).
pub fn bridge(cache: &SharedCache, negative_ttl: Duration) -> Arc<dyn SharedFrames> {
    Arc::new(
        GridFrames::new(
            cache.grid.clone(),
            tokio::runtime::Handle::current(),
            negative_ttl,
        )
        .with_homes(cache.cluster.clone(), cache.home.clone()),
    )
}

/// The RPC prefix of the home computation (`symbolicate.compute`).
pub const HOME_SERVICE: &str = "symbolicate";
const HOME_COMPUTE: &str = "symbolicate.compute";

/// How long a pod waits for a home's frames before computing them itself: below the grid's
/// claim timeout (5 s), so pods waiting on this pod's claims get its values rather than
/// computing in parallel; a conversion of a game-sized debug file takes about a second.
const HOME_TIMEOUT: Duration = Duration::from_secs(4);

/// The home of a debug file: the owner of the grid partition its debug id hashes to.
fn home_of<'t>(table: &'t PartitionTable, debug_id: &symbolicate::DebugId) -> Option<&'t str> {
    let mut h = StableHasher::new();
    h.write_raw(b"home");
    h.write_raw(debug_id.uuid().as_bytes());
    h.write_u32(debug_id.appendix());
    table.owner(table.partition_of(h.finish()))
}

/// Frames computed at their debug file's home.
#[derive(Debug, Default)]
pub struct HomeCounters {
    /// Frames this pod asked a home to compute.
    pub asked: Counter,
    /// Frames this pod computed for other pods, as their home.
    pub served: Counter,
    /// Frames this pod computed itself although another pod is their home (the home failed,
    /// timed out or lacks the debug file).
    pub fallbacks: Counter,
}

/// The `crashgrid_grid_home_frames_total` metric.
pub fn render_home(e: &mut Exposition, c: &HomeCounters) {
    let mut sides = BTreeMap::new();
    sides.insert("asked".to_string(), c.asked.get());
    sides.insert("served".to_string(), c.served.get());
    sides.insert("fallback".to_string(), c.fallbacks.get());
    e.labeled(
        "crashgrid_grid_home_frames_total",
        "counter",
        "Frames computed at their debug file's home pod: asked (sent by this pod to another \
         pod), served (computed here for other pods), fallback (computed here after the home \
         failed, timed out or lacked the debug file).",
        "side",
        &sides,
    );
}

/// `symbolicate.compute`: the frame values of the keys in the body, computed here with the
/// SymCaches on a blocking thread (CPU work off the I/O runtime).
struct HomeService {
    symbolicator: Symbolicator,
    counters: Arc<HomeCounters>,
}

impl Handler for HomeService {
    fn handle(&self, method: &str, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
        if method != HOME_COMPUTE {
            let method = method.to_string();
            return Box::pin(async move { Err(RpcError::Remote(format!("no method {method}"))) });
        }
        let symbolicator = self.symbolicator.clone();
        let counters = self.counters.clone();
        Box::pin(async move {
            let keys: Vec<FrameKey> = serde_json::from_slice(&body)
                .map_err(|e| RpcError::Remote(format!("invalid frame keys: {e}")))?;
            counters.served.add(keys.len() as u64);
            let values = tokio::task::spawn_blocking(move || symbolicator.compute_frames(&keys))
                .await
                .map_err(|e| RpcError::Remote(format!("computing frames: {e}")))?;
            serde_json::to_vec(&values).map_err(|e| RpcError::Remote(format!("encoding: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    use parking_lot::Mutex;
    use rand::{rngs::StdRng, SeedableRng};
    use symbolicate::{CacheConfig, FrameCache, SymCaches, SymbolStore, Symbolicator};

    use crate::demo::DemoWorld;

    #[derive(Default)]
    struct MemoryShared {
        map: Mutex<HashMap<FrameKey, FrameValue>>,
        calls: AtomicUsize,
    }

    impl SharedFrames for MemoryShared {
        fn get_or_compute(
            &self,
            keys: &[FrameKey],
            compute: &mut dyn FnMut(&[FrameKey]) -> Vec<FrameValue>,
        ) -> Vec<FrameValue> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let missing: Vec<FrameKey> = {
                let map = self.map.lock();
                keys.iter()
                    .filter(|k| !map.contains_key(k))
                    .copied()
                    .collect()
            };
            if !missing.is_empty() {
                let values = compute(&missing);
                let mut map = self.map.lock();
                for (k, v) in missing.into_iter().zip(values) {
                    map.insert(k, v);
                }
            }
            let map = self.map.lock();
            keys.iter().map(|k| map[k].clone()).collect()
        }

        fn put(&self, entries: &[(FrameKey, FrameValue)]) {
            self.map.lock().extend(entries.iter().cloned());
        }
    }

    /// Rule: the demo world's crashes (arm64 Breakpad files, inline chains, mangled names,
    /// absolute and `rel:` frames, ASLR bases) give the same output through the shared path,
    /// and through the grid's wire format (every value passed through JSON), as unshared.
    #[test]
    fn demo_crashes_agree_through_the_shared_path_and_the_wire_format() {
        let world = DemoWorld::new(7);
        let dir = tempfile::tempdir().unwrap();
        let pod = |name: &str| {
            let store = SymbolStore::open(dir.path().join(name).join("store")).unwrap();
            for (file, data) in world.debug_files() {
                store.add_bytes(&file, &data).unwrap();
            }
            let caches = Arc::new(SymCaches::new(
                store,
                CacheConfig::new(dir.path().join(name).join("cache")),
            ));
            Symbolicator::with_frame_cache(caches, Arc::new(FrameCache::new(100_000)))
        };
        let unshared = pod("unshared");
        let shared = Arc::new(MemoryShared::default());
        let a = pod("a");
        a.install_shared(shared.clone());
        let mut rng = StdRng::seed_from_u64(3);
        let events: Vec<_> = (0..150).map(|_| world.event(&mut rng)).collect();
        for e in &events {
            assert_eq!(a.symbolicate(e), unshared.symbolicate(e), "{}", e.event_id);
        }
        // Through JSON, as the grid carries them, to a pod that computes nothing.
        let wire: HashMap<FrameKey, FrameValue> = shared
            .map
            .lock()
            .iter()
            .map(|(k, v)| {
                let gk: GridFrameKey =
                    serde_json::from_str(&serde_json::to_string(&GridFrameKey(*k)).unwrap())
                        .unwrap();
                let gv: GridFrameValue = serde_json::from_str(
                    &serde_json::to_string(&GridFrameValue::new(v.clone(), FALLBACK_NEGATIVE_TTL))
                        .unwrap(),
                )
                .unwrap();
                (gk.0, gv.value)
            })
            .collect();
        // What an entry costs the grid's memory bound (the module docs say ~500 bytes).
        let sizes: Vec<usize> = wire
            .iter()
            .map(|(k, v)| {
                GridFrameKey(*k).size_bytes()
                    + GridFrameValue::new(v.clone(), FALLBACK_NEGATIVE_TTL).size_bytes()
                    + cluster::ENTRY_OVERHEAD
            })
            .collect();
        let avg = sizes.iter().sum::<usize>() / sizes.len();
        eprintln!("{} entries, {avg} bytes each on average", sizes.len());
        assert!((200..=1000).contains(&avg), "{avg}");
        let b_shared = Arc::new(MemoryShared {
            map: Mutex::new(wire),
            ..Default::default()
        });
        let b = pod("b");
        b.install_shared(b_shared);
        for e in &events {
            assert_eq!(b.symbolicate(e), unshared.symbolicate(e), "{}", e.event_id);
        }
        assert_eq!(b.caches().counters().conversions, 0);
        assert_eq!(b.caches().counters().disk_loads, 0);
    }

    /// Rule: keys hash from their fields (stable across builds), and differ when any field does.
    #[test]
    fn key_hashes_depend_on_every_field() {
        let k = FrameKey {
            debug_id: "5a9e8c0f-3b2d-4e1f-8a7b-6c5d4e3f2a1b".parse().unwrap(),
            rel_addr: 0x1234,
            crashing: false,
            image_align: 0,
        };
        let h = |k: FrameKey| cluster::key_hash(&GridFrameKey(k));
        let base = h(k);
        assert_ne!(
            base,
            h(FrameKey {
                rel_addr: 0x1238,
                ..k
            })
        );
        assert_ne!(
            base,
            h(FrameKey {
                crashing: true,
                ..k
            })
        );
        assert_ne!(
            base,
            h(FrameKey {
                image_align: 4,
                ..k
            })
        );
        assert_eq!(base, h(k));
    }
}
