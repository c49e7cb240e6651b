//! One crashgrid node: the ingest queue, the symbolication workers, aggregation into the live
//! window, crash groups, the sink, and the snapshots pushed to dashboards.
//!
//! # Flow of one batch
//!
//! 1. [`Node::submit`] admits a batch *whole or not at all* against the queue capacity (a count
//!    of unacknowledged events, not a channel size: memory is bounded by it). A full queue is
//!    an [`Overloaded`] answer (HTTP 429 with Retry-After), never a silent drop.
//! 2. The batch is cut into jobs of at most [`JOB_EVENTS`] events, so large batches spread over
//!    all workers. Each job remembers when it was accepted: that instant is what the "oldest
//!    unacked age" measures, and its Unix second is the slice of the live window the events
//!    count in (the statistics answer "what is arriving now"; a crash's own timestamp, which a
//!    phone may report days late, is kept in the symbolicated record).
//! 3. Worker threads (CPU-bound, off the async runtime) symbolicate, fingerprint, write to the
//!    sink, fold the job into one per-second [`Partial`] and merge it into the window, then
//!    acknowledge the job. "Unacked" is everything admitted and not yet acknowledged.
//! 4. Once a second a publisher task takes a snapshot and puts it on a `watch` channel; every
//!    WebSocket subscriber is fed from there.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use stats::{CrashRecord, Partial, Snapshot, Window, WindowConfig};
use symbolicate::{
    CacheConfig, CrashEvent, FrameCache, SymCaches, SymbolStore, SymbolicatedCrash, Symbolicator,
};
use tokio::sync::watch;

use crate::clock::WallClock;
use crate::clustering::{self, ClusterLink, ClusterView};
use crate::fingerprint::{fingerprint, InApp};
use crate::metrics::{Exposition, Metrics};
use crate::shared_cache::SharedCache;

mod exchange;

/// Largest job handed to one worker.
pub const JOB_EVENTS: usize = 64;

/// Where symbolicated crashes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// Nowhere (statistics only).
    None,
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File(PathBuf),
}

impl std::str::FromStr for SinkConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "stdout" => Ok(Self::Stdout),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                _ => Err(format!("expected none, stdout or file:PATH, found {s:?}")),
            },
        }
    }
}

/// Settings of a node's pipeline.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name in the cluster (the pod name on Kubernetes).
    pub node_id: String,
    /// The symbol store directory.
    pub store_dir: PathBuf,
    /// The SymCache directory (local disk; safe to lose).
    pub cache_dir: PathBuf,
    /// Most events admitted and not yet acknowledged. 20,000: a few seconds of peak traffic
    /// for one pod; beyond it clients are told to retry (429), which keeps memory bounded
    /// (a 40-frame event is about 4 KiB in memory: ~80 MiB at the bound).
    pub queue_capacity: usize,
    /// Most bytes of admitted events waiting for a worker: 256 MiB. The count bound alone
    /// lets a client fill the queue with events of 4 KB strings (~20 KiB each: 400 MiB at
    /// 20,000); past this, batches are refused with 429 like a full queue. An event's size is
    /// estimated from its strings, modules and frames ([`event_bytes`]).
    pub max_queued_bytes: usize,
    /// Symbolication worker threads; 0 means one per CPU.
    pub workers: usize,
    /// In-app module patterns (see [`InApp`]).
    pub in_app: Vec<String>,
    /// Where symbolicated crashes are written.
    pub sink: SinkConfig,
    /// The live window.
    pub window: WindowConfig,
    /// How long a missing/malformed debug file is remembered.
    pub negative_ttl: Duration,
    /// Most crash groups remembered for `/api/v1/groups/{id}` (the least recently seen go).
    pub max_groups: usize,
    /// Most bytes the remembered crash groups hold (each keeps its latest example): 64 MiB,
    /// about 10,000 groups of ordinary 40-frame crashes; the least recently seen go first.
    pub max_group_bytes: usize,
    /// Most symbolicated addresses kept in the near cache. 200,000 is about 50 MiB and holds
    /// every frame of several thousand distinct crashes.
    pub frame_cache_entries: usize,
    /// Bound of this pod's share of the symbolication cache shared by the cluster (the grid,
    /// see [`crate::shared_cache`]): 128 MiB. 0 turns the shared tier off (each pod keeps its
    /// near cache only). Unused without a cluster.
    pub cache_memory_bytes: usize,
}

impl NodeConfig {
    /// Defaults for a node named `node_id` keeping its data under `data_dir`.
    pub fn new(node_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            node_id: node_id.into(),
            store_dir: data_dir.join("symbols"),
            cache_dir: data_dir.join("cache"),
            queue_capacity: 20_000,
            max_queued_bytes: 256 << 20,
            workers: 0,
            in_app: Vec::new(),
            sink: SinkConfig::None,
            window: WindowConfig::default(),
            negative_ttl: Duration::from_secs(60),
            max_groups: 10_000,
            max_group_bytes: 64 << 20,
            frame_cache_entries: 200_000,
            cache_memory_bytes: crate::shared_cache::DEFAULT_MEMORY_BYTES,
        }
    }
}

/// The queue is full; retry after the given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    /// Suggested wait before retrying.
    pub retry_after: Duration,
}

struct Job {
    seq: u64,
    accepted_ms: u64,
    events: Vec<CrashEvent>,
    /// [`event_bytes`] of `events`, released once a worker is done with them.
    bytes: usize,
}

/// About the memory an event holds while it waits for a worker: the struct, its strings, its
/// modules and frames.
pub fn event_bytes(e: &CrashEvent) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let strings = e.event_id.len()
        + e.app.id.len()
        + e.app.version.len()
        + opt(&e.app.build)
        + e.platform.len()
        + e.os.name.len()
        + e.os.version.len()
        + opt(&e.device_model)
        + opt(&e.user_id)
        + e.exception.ty.len()
        + opt(&e.exception.value);
    let modules: usize = e
        .modules
        .iter()
        .map(|m| {
            std::mem::size_of_val(m)
                + m.ty.len()
                + opt(&m.code_file)
                + opt(&m.debug_file)
                + opt(&m.code_id)
        })
        .sum();
    let threads: usize = e
        .threads
        .iter()
        .map(|t| std::mem::size_of_val(t) + opt(&t.name) + std::mem::size_of_val(&t.frames[..]))
        .sum();
    std::mem::size_of_val(e) + strings + modules + threads
}

/// How a submitted batch ended (see [`Node::submit_with_ack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every event is counted for good: accepted by the leader (and, for the leader's own
    /// events, held by its standby's replica).
    Counted,
    /// At least one job's statistics left the window before any leader accepted them: the
    /// batch is *not* counted. An HTTP waiter answers `counted: false`; a source should
    /// redeliver.
    Expired,
}

/// Called once when every job of a submitted batch has an outcome (see
/// [`Node::submit_with_ack`]).
pub type AckCallback = Box<dyn FnOnce(Outcome) + Send>;

/// The jobs of one batch still unacknowledged, and what to call when none is left.
struct AckGroup {
    remaining: AtomicUsize,
    /// Set when one of its jobs expired unacknowledged.
    expired: std::sync::atomic::AtomicBool,
    callback: Mutex<Option<AckCallback>>,
}

/// One admitted job: when it was accepted, its event count, its batch's ack group.
struct BacklogEntry {
    accepted_ms: u64,
    events: usize,
    group: Option<Arc<AckGroup>>,
}

/// Admitted, not yet acknowledged events.
struct Backlog {
    capacity: usize,
    inflight: AtomicUsize,
    /// Bytes of events waiting for a worker, and their bound.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    next_seq: AtomicU64,
    /// Job sequence → entry: ordered, so the first is the oldest.
    jobs: Mutex<BTreeMap<u64, BacklogEntry>>,
}

impl Backlog {
    /// Reserves room for `n` events of `bytes` bytes, or nothing.
    fn try_reserve(&self, n: usize, bytes: usize) -> bool {
        let events = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= self.capacity).then_some(cur + n)
            })
            .is_ok();
        if !events {
            return false;
        }
        let room = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                // One batch is always let in on an empty queue, whatever its size.
                (cur == 0 || cur + bytes <= self.max_queued_bytes).then_some(cur + bytes)
            })
            .is_ok();
        if !room {
            self.inflight.fetch_sub(n, Ordering::AcqRel);
        }
        room
    }

    /// A worker is done with a job's events (or they were never queued).
    fn dequeued(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn register(&self, accepted_ms: u64, events: usize, group: Option<Arc<AckGroup>>) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.jobs.lock().insert(
            seq,
            BacklogEntry {
                accepted_ms,
                events,
                group,
            },
        );
        seq
    }

    /// Drops a job that will never be processed, without acknowledging its batch (a source
    /// then redelivers it).
    fn abandon(&self, seq: u64) {
        if let Some(entry) = self.jobs.lock().remove(&seq) {
            self.inflight.fetch_sub(entry.events, Ordering::AcqRel);
        }
    }

    /// The job is counted for good.
    fn ack(&self, seq: u64) {
        self.finish(seq, Outcome::Counted);
    }

    /// The job left the window without being accepted: it ends, but its batch is not
    /// reported as counted.
    fn expire(&self, seq: u64) {
        self.finish(seq, Outcome::Expired);
    }

    fn finish(&self, seq: u64, outcome: Outcome) {
        let entry = self.jobs.lock().remove(&seq);
        if let Some(entry) = entry {
            self.inflight.fetch_sub(entry.events, Ordering::AcqRel);
            if let Some(group) = entry.group {
                if outcome == Outcome::Expired {
                    group.expired.store(true, Ordering::Release);
                }
                if group.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    if let Some(callback) = group.callback.lock().take() {
                        callback(if group.expired.load(Ordering::Acquire) {
                            Outcome::Expired
                        } else {
                            Outcome::Counted
                        });
                    }
                }
            }
        }
    }

    fn unacked(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    fn oldest_age_ms(&self, now_ms: u64) -> u64 {
        self.jobs
            .lock()
            .values()
            .next()
            .map(|e| now_ms.saturating_sub(e.accepted_ms))
            .unwrap_or(0)
    }
}

/// What is known of a crash group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    /// Group id.
    pub id: String,
    /// Title.
    pub title: String,
    /// The frames that make the signature.
    pub signature: Vec<String>,
    /// Crashes of this group processed by this node since it started.
    pub count: u64,
    /// Unix ms of the first crash seen.
    pub first_seen_ms: u64,
    /// Unix ms of the latest crash seen.
    pub last_seen_ms: u64,
    /// The latest symbolicated crash of the group.
    pub latest: Arc<SymbolicatedCrash>,
    /// Estimated bytes this entry holds, and of them its example's (see [`Groups`]).
    #[serde(skip)]
    bytes: usize,
    #[serde(skip)]
    bytes_of_example: usize,
}

/// The crash groups this pod has seen, bounded by count and by bytes: each holds its latest
/// example, and a client can make every crash a new group (a unique exception type) with 4 KB
/// strings, so the count bound alone would let it hold 10,000 large examples.
struct Groups {
    map: HashMap<String, GroupInfo>,
    capacity: usize,
    bytes: usize,
    max_bytes: usize,
}

impl Groups {
    /// Records a crash of `group`; `example_bytes` estimates the memory of `crash`.
    fn record(
        &mut self,
        group: crate::fingerprint::Group,
        crash: Arc<SymbolicatedCrash>,
        example_bytes: usize,
        now_ms: u64,
    ) {
        if let Some(info) = self.map.get_mut(&group.id) {
            info.count += 1;
            info.last_seen_ms = now_ms;
            info.latest = crash;
            let fixed = info.bytes.saturating_sub(info.bytes_of_example);
            self.bytes = self.bytes - info.bytes + fixed + example_bytes;
            info.bytes = fixed + example_bytes;
            info.bytes_of_example = example_bytes;
            return;
        }
        let bytes = group.title.len()
            + group.id.len() * 2
            + group.signature.iter().map(String::len).sum::<usize>()
            + std::mem::size_of::<GroupInfo>()
            + example_bytes;
        while !self.map.is_empty()
            && (self.map.len() >= self.capacity || self.bytes + bytes > self.max_bytes)
        {
            // Evict the least recently seen tenth in one go (amortized O(1) per insert).
            let mut seen: Vec<(u64, String)> = self
                .map
                .values()
                .map(|g| (g.last_seen_ms, g.id.clone()))
                .collect();
            seen.sort_unstable();
            for (_, id) in seen.into_iter().take(self.map.len() / 10 + 1) {
                if let Some(gone) = self.map.remove(&id) {
                    self.bytes -= gone.bytes;
                }
            }
        }
        self.bytes += bytes;
        self.map.insert(
            group.id.clone(),
            GroupInfo {
                id: group.id,
                title: group.title,
                signature: group.signature,
                count: 1,
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                latest: crash,
                bytes,
                bytes_of_example: example_bytes,
            },
        );
    }
}

enum Sink {
    None,
    Writer(Mutex<Box<dyn Write + Send>>),
}

#[derive(Serialize)]
struct SinkRecord<'a> {
    group_id: &'a str,
    group_title: &'a str,
    #[serde(flatten)]
    crash: &'a SymbolicatedCrash,
}

/// The backlog figures the original team watched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct BacklogView {
    /// Events accepted and not yet processed and acknowledged.
    pub unacked: u64,
    /// Age of the oldest unacknowledged event, milliseconds.
    pub oldest_unacked_age_ms: u64,
    /// Average symbolication time per crash over the window, microseconds.
    pub avg_symbolication_us: f64,
    /// The queue's capacity (events).
    pub queue_capacity: u64,
}

/// Ingest counters in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IngestView {
    /// Events accepted since start.
    pub accepted_total: u64,
    /// Events processed since start.
    pub processed_total: u64,
    /// Requests or events rejected since start.
    pub rejected_total: u64,
}

/// What `/api/v1/stats` and the WebSocket deliver.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeSnapshot {
    /// The node that produced it.
    pub node: String,
    /// Unix ms when it was taken.
    pub generated_at_ms: u64,
    /// The window statistics.
    pub stats: Snapshot,
    /// Backlog figures.
    pub backlog: BacklogView,
    /// Ingest counters.
    pub ingest: IngestView,
    /// Cluster view.
    pub cluster: ClusterView,
    /// The NATS consumer's backlog (consumer-wide: the same from every pod), when this node
    /// runs the NATS source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<crate::nats::NatsBacklog>,
}

struct Inner {
    config: NodeConfig,
    address: String,
    symbolicator: Symbolicator,
    in_app: InApp,
    clock: Arc<dyn WallClock>,
    exchange: exchange::Exchange,
    groups: Mutex<Groups>,
    backlog: Backlog,
    metrics: Metrics,
    jobs: Mutex<Option<crossbeam_channel::Sender<Job>>>,
    sink: Sink,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    snapshots: watch::Sender<Arc<str>>,
    cluster: std::sync::OnceLock<ClusterLink>,
    shared_cache: std::sync::OnceLock<SharedCache>,
}

/// A running node (cheap to clone; all clones share it).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the store and caches, starts the worker threads. `address` is the public HTTP
    /// address shown to the cluster panel.
    pub fn start(
        config: NodeConfig,
        address: String,
        clock: Arc<dyn WallClock>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        config
            .window
            .validate()
            .context("invalid window configuration")?;
        anyhow::ensure!(config.queue_capacity > 0, "queue capacity must be positive");
        let store = SymbolStore::open(&config.store_dir)
            .with_context(|| format!("opening symbol store {}", config.store_dir.display()))?;
        let mut cache_config = CacheConfig::new(&config.cache_dir);
        cache_config.negative_ttl = config.negative_ttl;
        let caches = Arc::new(SymCaches::new(store, cache_config));
        let sink = match &config.sink {
            SinkConfig::None => Sink::None,
            SinkConfig::Stdout => Sink::Writer(Mutex::new(Box::new(std::io::stdout()))),
            SinkConfig::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening sink file {}", path.display()))?;
                Sink::Writer(Mutex::new(Box::new(std::io::BufWriter::new(file))))
            }
        };
        let now = clock.now_secs();
        let exchange = exchange::Exchange::new(config.window.clone(), now)
            .context("creating the statistics exchange")?;
        let workers = if config.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            config.workers
        };
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let (snapshots, _) = watch::channel(Arc::<str>::from("{}"));
        let inner = Arc::new(Inner {
            in_app: InApp::new(config.in_app.clone()),
            symbolicator: Symbolicator::with_frame_cache(
                caches,
                Arc::new(FrameCache::new(config.frame_cache_entries)),
            ),
            clock,
            exchange,
            groups: Mutex::new(Groups {
                map: HashMap::new(),
                capacity: config.max_groups.max(1),
                bytes: 0,
                max_bytes: config.max_group_bytes,
            }),
            backlog: Backlog {
                capacity: config.queue_capacity,
                inflight: AtomicUsize::new(0),
                queued_bytes: AtomicUsize::new(0),
                max_queued_bytes: config.max_queued_bytes,
                next_seq: AtomicU64::new(0),
                jobs: Mutex::new(BTreeMap::new()),
            },
            metrics: Metrics::default(),
            jobs: Mutex::new(Some(tx)),
            sink,
            workers: Mutex::new(Vec::new()),
            snapshots,
            address,
            config,
            cluster: std::sync::OnceLock::new(),
            shared_cache: std::sync::OnceLock::new(),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = rx.clone();
            let inner = inner.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("symbolicate-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            let bytes = job.bytes;
                            inner.process(job);
                            inner.backlog.dequeued(bytes);
                        }
                    })
                    .context("spawning a worker thread")?,
            );
        }
        *inner.workers.lock() = handles;
        let node = Self { inner };
        node.publish();
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The metrics counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The symbolicator (store and caches).
    pub fn symbolicator(&self) -> &Symbolicator {
        &self.inner.symbolicator
    }

    /// The wall clock.
    pub fn clock(&self) -> &Arc<dyn WallClock> {
        &self.inner.clock
    }

    /// Admits a batch of valid events, whole or not at all.
    pub fn submit(&self, events: Vec<CrashEvent>) -> Result<usize, Overloaded> {
        self.submit_inner(events, None)
    }

    /// Like [`submit`](Self::submit), and calls `on_ack` once every event of the batch is
    /// acknowledged: counted in the statistics for good (today: merged into the window; with a
    /// cluster: accepted by the leader). A source acknowledges its messages from there. An empty
    /// batch is acknowledged at once; a refused one ([`Overloaded`]) never is.
    pub fn submit_with_ack(
        &self,
        events: Vec<CrashEvent>,
        on_ack: AckCallback,
    ) -> Result<usize, Overloaded> {
        if events.is_empty() {
            on_ack(Outcome::Counted);
            return Ok(0);
        }
        let jobs = events.len().div_ceil(JOB_EVENTS);
        let group = Arc::new(AckGroup {
            remaining: AtomicUsize::new(jobs),
            expired: Default::default(),
            callback: Mutex::new(Some(on_ack)),
        });
        self.submit_inner(events, Some(group))
    }

    fn submit_inner(
        &self,
        events: Vec<CrashEvent>,
        group: Option<Arc<AckGroup>>,
    ) -> Result<usize, Overloaded> {
        let n = events.len();
        if n == 0 {
            return Ok(0);
        }
        let inner = &self.inner;
        let sizes: Vec<usize> = events.iter().map(event_bytes).collect();
        let total_bytes = sizes.iter().sum();
        let sender = inner.jobs.lock().clone();
        let Some(sender) = sender.filter(|_| inner.backlog.try_reserve(n, total_bytes)) else {
            inner.metrics.rejected.add("overloaded", n as u64);
            return Err(Overloaded {
                retry_after: Duration::from_secs(1),
            });
        };
        let accepted_ms = inner.clock.now_ms();
        let mut events = events.into_iter().peekable();
        let mut sizes = sizes.chunks(JOB_EVENTS);
        while events.peek().is_some() {
            let chunk: Vec<CrashEvent> = events.by_ref().take(JOB_EVENTS).collect();
            let bytes = sizes.next().map_or(0, |s| s.iter().sum());
            let seq = inner
                .backlog
                .register(accepted_ms, chunk.len(), group.clone());
            if sender
                .send(Job {
                    seq,
                    accepted_ms,
                    events: chunk,
                    bytes,
                })
                .is_err()
            {
                // Workers are gone (shutting down): nothing may be lost silently, and the
                // batch is not acknowledged.
                inner.backlog.abandon(seq);
                inner.backlog.dequeued(bytes);
                tracing::error!("worker pool stopped while accepting a batch");
            }
        }
        inner.metrics.accepted.add(n as u64);
        Ok(n)
    }

    /// This node's own backlog figures (the snapshot's are cluster-wide).
    pub fn backlog(&self) -> BacklogView {
        let (unacked, oldest_unacked_age_ms) = self.local_backlog_view();
        BacklogView {
            unacked,
            oldest_unacked_age_ms,
            avg_symbolication_us: self.snapshot().backlog.avg_symbolication_us,
            queue_capacity: self.inner.backlog.capacity as u64,
        }
    }

    /// Joins this node to a running cluster (once; later calls are ignored): serves the
    /// `stats.*` RPC methods of the distributed statistics and, unless `cache_memory_bytes` is
    /// 0, starts the shared symbolication cache (the `frames.*` grid) and installs it into the
    /// symbolicator. Call within the tokio runtime; the workers block on it.
    pub fn attach_cluster(&self, link: ClusterLink) -> anyhow::Result<()> {
        if self.inner.cluster.get().is_some() {
            return Ok(());
        }
        link.cluster.register("stats", self.stats_service());
        let config = &self.inner.config;
        if config.cache_memory_bytes > 0 {
            let cache = SharedCache::start(
                link.cluster.clone(),
                config.cache_memory_bytes,
                link.leave_timeout,
            )
            .map_err(|e| anyhow::anyhow!("starting the shared symbolication cache: {e}"))?;
            cache.serve_home(self.inner.symbolicator.clone());
            self.inner
                .symbolicator
                .install_shared(crate::shared_cache::bridge(&cache, config.negative_ttl));
            let _ = self.inner.shared_cache.set(cache);
        }
        let _ = self.inner.cluster.set(link);
        Ok(())
    }

    /// The shared symbolication cache, when this node runs one.
    pub fn shared_cache(&self) -> Option<&SharedCache> {
        self.inner.shared_cache.get()
    }

    /// Whether the node may take traffic as far as the shared cache is concerned: always
    /// without one, else once its grid has been cluster safe (see [`crate::shared_cache`]).
    pub fn shared_cache_ready(&self) -> bool {
        self.shared_cache().is_none_or(|c| c.warm())
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster_link(&self) -> Option<&ClusterLink> {
        self.inner.cluster.get()
    }

    /// The cluster as this node sees it (itself alone when it runs without a cluster).
    pub fn cluster(&self) -> ClusterView {
        clustering::view(
            &self.inner.config.node_id,
            &self.inner.address,
            self.inner.cluster.get(),
        )
    }

    /// The snapshot this node serves now: the cluster-wide statistics and backlog computed
    /// here while it leads (or runs alone); otherwise the newest one its leader pushed, and
    /// before any, an empty window with this node's own backlog.
    pub fn snapshot(&self) -> NodeSnapshot {
        let inner = &self.inner;
        let now_ms = inner.clock.now_ms();
        let (stats, backlog) = match self.leader_snapshot() {
            Some(stats) => (stats, self.leader_backlog().unwrap_or_default()),
            None => {
                if let Some(pushed) = self.pushed_snapshot() {
                    return pushed;
                }
                let empty = Window::new(inner.exchange.window.clone(), now_ms / 1000)
                    .map(|w| w.snapshot(now_ms / 1000))
                    .expect("the window config was validated at start");
                let own = self.local_backlog_view();
                (
                    empty,
                    stats::PodBacklog {
                        unacked: own.0,
                        oldest_unacked_age_ms: own.1,
                    },
                )
            }
        };
        let m = &inner.metrics;
        NodeSnapshot {
            node: inner.config.node_id.clone(),
            generated_at_ms: now_ms,
            backlog: BacklogView {
                unacked: backlog.unacked,
                oldest_unacked_age_ms: backlog.oldest_unacked_age_ms,
                avg_symbolication_us: stats.symbolication_time_us.avg.unwrap_or(0.0),
                queue_capacity: inner.backlog.capacity as u64,
            },
            stats,
            ingest: IngestView {
                accepted_total: m.accepted.get(),
                processed_total: m.processed.get(),
                rejected_total: m.rejected.snapshot().values().sum(),
            },
            cluster: self.cluster(),
            nats: crate::nats::backlog_of(self.id()).map(|b| *b.borrow()),
        }
    }

    /// This node's own backlog: (unacked events, oldest unacked age in ms).
    fn local_backlog_view(&self) -> (u64, u64) {
        let now_ms = self.inner.clock.now_ms();
        (
            self.inner.backlog.unacked() as u64,
            self.inner.backlog.oldest_age_ms(now_ms),
        )
    }

    /// Publishes a snapshot now if this node computes them (it leads or runs alone).
    pub fn publish(&self) {
        if self.inner.cluster.get().is_some() && !self.inner.exchange.leads() {
            return;
        }
        let json = serde_json::to_string(&self.snapshot()).expect("snapshots serialize");
        self.inner.snapshots.send_replace(Arc::from(json));
    }

    /// Runs exchange rounds until every processed job is acknowledged by a leader, or
    /// `within` passes (graceful shutdown: hand the last partials to the leader).
    pub async fn flush_statistics(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.exchange_round().await;
            if self.inner.exchange.outbox.lock().pending() == 0
                || tokio::time::Instant::now() >= deadline
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stream of published snapshots (JSON text).
    pub fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        self.inner.snapshots.subscribe()
    }

    /// Runs the statistics exchange every `period` until `shutdown` resolves: rounds start on
    /// wall-clock multiples of the period (every pod of a cluster pushes its partials at about
    /// the same instant), and a leader publishes its snapshot a quarter period later, so a
    /// crash reaches dashboards within about 1.25 periods of being processed instead of up to
    /// two unaligned periods.
    pub async fn run_publisher(
        self,
        period: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let period_ms = period.as_millis().max(1) as u64;
        loop {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let wait = Duration::from_millis(period_ms - now_ms % period_ms);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
            }
            self.exchange_round().await;
            if self.inner.cluster.get().is_some() && self.inner.exchange.leads() {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(period / 4) => {}
                }
                self.publish_round().await;
            }
        }
    }

    /// A crash group, if this node has seen it.
    pub fn group(&self, id: &str) -> Option<GroupInfo> {
        self.inner.groups.lock().map.get(id).cloned()
    }

    /// Stops admitting, lets the workers finish every admitted event, flushes the sink.
    /// Blocking: call from a blocking context.
    pub fn shutdown(&self) {
        self.inner.jobs.lock().take();
        let workers: Vec<_> = std::mem::take(&mut *self.inner.workers.lock());
        for w in workers {
            let _ = w.join();
        }
        if let Sink::Writer(w) = &self.inner.sink {
            let _ = w.lock().flush();
        }
        self.publish();
    }

    /// Renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        let inner = &self.inner;
        let m = &inner.metrics;
        let snap = self.snapshot();
        let counters = inner.symbolicator.caches().counters();
        let mut e = Exposition::default();
        e.counter(
            "crashgrid_crashes_received_total",
            "Crash events received in request bodies.",
            m.received.get(),
        );
        e.counter(
            "crashgrid_crashes_accepted_total",
            "Crash events accepted into the ingest queue.",
            m.accepted.get(),
        );
        e.counter(
            "crashgrid_crashes_processed_total",
            "Crash events symbolicated, aggregated and acknowledged.",
            m.processed.get(),
        );
        e.labeled(
            "crashgrid_rejected_total",
            "counter",
            "Events or requests rejected, by reason.",
            "reason",
            &m.rejected.snapshot(),
        );
        e.labeled(
            "crashgrid_frames_total",
            "counter",
            "Symbolicated output frames by status.",
            "status",
            &m.frames.snapshot(),
        );
        let (own_unacked, own_oldest_ms) = self.local_backlog_view();
        e.gauge(
            "crashgrid_unacked_messages",
            "Events this node accepted whose statistics no leader has acknowledged yet.",
            own_unacked,
        );
        e.gauge(
            "crashgrid_oldest_unacked_age_seconds",
            "Age of this node's oldest unacknowledged event.",
            own_oldest_ms as f64 / 1000.0,
        );
        e.gauge(
            "crashgrid_cluster_unacked_messages",
            "Unacknowledged events of the whole cluster, as in the served snapshot.",
            snap.backlog.unacked,
        );
        e.gauge(
            "crashgrid_cluster_oldest_unacked_age_seconds",
            "Age of the oldest unacknowledged event in the whole cluster.",
            snap.backlog.oldest_unacked_age_ms as f64 / 1000.0,
        );
        e.gauge(
            "crashgrid_ingest_queue_capacity",
            "Most events admitted and not yet acknowledged.",
            snap.backlog.queue_capacity as f64,
        );
        e.counter(
            "crashgrid_symbolication_seconds_sum",
            "Total time spent symbolicating crashes.",
            m.symbolication_us_sum.get() as f64 / 1e6,
        );
        e.counter(
            "crashgrid_symbolication_seconds_count",
            "Crashes symbolicated.",
            m.processed.get(),
        );
        e.gauge(
            "crashgrid_symbolication_avg_seconds",
            "Average symbolication time per crash over the live window.",
            snap.backlog.avg_symbolication_us / 1e6,
        );
        let t = &snap.stats.symbolication_time_us;
        for (q, v) in [("p50", t.p50), ("p95", t.p95), ("p99", t.p99)] {
            e.gauge(
                &format!("crashgrid_symbolication_{q}_seconds"),
                &format!("{q} symbolication time per crash over the live window."),
                v.unwrap_or(0.0) / 1e6,
            );
        }
        e.gauge(
            "crashgrid_window_crashes",
            "Crashes in the live window.",
            snap.stats.total as f64,
        );
        e.gauge(
            "crashgrid_window_distinct_users",
            "Distinct affected users in the live window (HyperLogLog).",
            snap.stats.distinct_users as f64,
        );
        e.counter("crashgrid_late_records_total", "Records counted in the current second because their acceptance second had left the window.", m.late_records.get());
        e.counter(
            "crashgrid_symcache_conversions_total",
            "Debug files converted to SymCaches.",
            counters.conversions,
        );
        e.counter(
            "crashgrid_symcache_disk_loads_total",
            "SymCaches loaded from the on-disk cache.",
            counters.disk_loads,
        );
        e.counter(
            "crashgrid_symcache_checksum_failures_total",
            "SymCaches on disk whose checksum did not hold (converted again).",
            counters.checksum_failures,
        );
        e.counter(
            "crashgrid_symcache_negative_hits_total",
            "Lookups answered by a remembered missing or malformed debug file.",
            counters.negative_hits,
        );
        if let Some(cache) = self.shared_cache() {
            crate::shared_cache::render_metrics(
                &mut e,
                &cache.grid().stats(),
                inner.symbolicator.frame_cache().map(|n| n.stats()),
            );
            crate::shared_cache::render_home(&mut e, cache.home_counters());
        }
        if let Some(near) = inner.symbolicator.frame_cache() {
            let st = near.stats();
            let mut tiers = BTreeMap::new();
            tiers.insert("hit".to_string(), st.hits);
            tiers.insert("miss".to_string(), st.misses);
            e.labeled(
                "crashgrid_near_cache_lookups_total",
                "counter",
                "Frame lookups in the in-process near cache, by outcome.",
                "outcome",
                &tiers,
            );
            e.gauge(
                "crashgrid_near_cache_entries",
                "Symbolicated addresses held in the near cache.",
                st.entries,
            );
        }
        e.counter(
            "crashgrid_debug_files_stored_total",
            "Debug files stored through the API.",
            m.debug_files_stored.get(),
        );
        e.counter(
            "crashgrid_debug_files_refused_total",
            "Debug files refused through the API.",
            m.debug_files_refused.get(),
        );
        e.counter(
            "crashgrid_sink_errors_total",
            "Failed writes to the crash sink.",
            m.sink_errors.get(),
        );
        e.counter(
            "crashgrid_websocket_messages_total",
            "Snapshots pushed over WebSocket.",
            m.ws_messages.get(),
        );
        e.gauge(
            "crashgrid_websocket_subscribers",
            "Open WebSocket subscribers.",
            m.ws_subscribers.get(),
        );
        e.counter(
            "crashgrid_websocket_refused_total",
            "WebSocket subscriptions refused at the subscriber cap.",
            m.ws_refused.get(),
        );
        e.gauge(
            "crashgrid_http_connections",
            "Open HTTP connections (upgraded WebSockets not included).",
            m.http_connections.get(),
        );
        e.gauge(
            "crashgrid_http_connection_cap",
            "The HTTP connection cap in force.",
            m.http_connection_cap.get(),
        );
        e.labeled(
            "crashgrid_http_connections_failed_total",
            "counter",
            "HTTP connections that ended in an error, by reason (header_timeout includes idle keep-alive).",
            "reason",
            &m.http_connections_failed.snapshot(),
        );
        e.counter(
            "crashgrid_http_accept_errors_total",
            "Failed accepts on the HTTP port.",
            m.http_accept_errors.get(),
        );
        e.counter(
            "crashgrid_http_body_timeouts_total",
            "Request bodies not received within their timeout.",
            m.http_body_timeouts.get(),
        );
        let x = &inner.exchange.counters;
        for (name, help, c) in [
            (
                "crashgrid_stats_partials_sent_total",
                "Partials messages sent to the leader.",
                &x.partials_sent,
            ),
            (
                "crashgrid_stats_partials_failed_total",
                "Partials messages that did not reach the leader.",
                &x.partials_failed,
            ),
            (
                "crashgrid_stats_partials_refused_total",
                "Partials messages the leader refused (leadership moving, wrong epoch).",
                &x.partials_rejected,
            ),
            (
                "crashgrid_stats_snapshots_received_total",
                "Snapshots accepted from the leader.",
                &x.snapshots_received,
            ),
            (
                "crashgrid_stats_snapshots_rejected_total",
                "Snapshots refused for a stale leader epoch.",
                &x.snapshots_rejected,
            ),
            (
                "crashgrid_stats_replica_failures_total",
                "Failed replications of the leader's statistics to its standby.",
                &x.replica_failed,
            ),
            (
                "crashgrid_stats_replica_refused_slices_total",
                "Slices this node's replica refused (too far ahead of its clock); the leader keeps their jobs unacknowledged.",
                &x.replica_refused,
            ),
            (
                "crashgrid_stats_windows_collected_total",
                "Members' windows collected when starting a leader term.",
                &x.collected,
            ),
            (
                "crashgrid_stats_expired_unacknowledged_total",
                "Jobs whose statistics no leader accepted before they left the window.",
                &x.expired_unacknowledged,
            ),
        ] {
            e.counter(name, help, c.get());
        }
        // This node's own view: on a follower `snap` is the leader's pushed snapshot, whose
        // cluster view is the leader's.
        clustering::render_metrics(&mut e, &self.cluster(), self.inner.cluster.get());
        crate::nats::render_registered(self.id(), &mut e);
        e.finish()
    }
}

impl Inner {
    fn process(&self, job: Job) {
        let second = job.accepted_ms / 1000;
        let mut partial = Partial::new();
        let mut statuses: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut sym_us_total = 0u64;
        for event in &job.events {
            let started = Instant::now();
            let crash = self.symbolicator.symbolicate(event);
            let us = started.elapsed().as_micros() as u64;
            sym_us_total += us;
            for t in &crash.threads {
                for f in &t.frames {
                    *statuses.entry(f.status.as_str()).or_default() += 1;
                }
            }
            let group = fingerprint(&crash, &self.in_app);
            if let Sink::Writer(w) = &self.sink {
                let record = SinkRecord {
                    group_id: &group.id,
                    group_title: &group.title,
                    crash: &crash,
                };
                let mut line = serde_json::to_vec(&record).expect("records serialize");
                line.push(b'\n');
                if let Err(e) = w.lock().write_all(&line) {
                    self.metrics.sink_errors.inc();
                    tracing::warn!(error = %e, "sink write failed");
                }
            }
            partial.add(&CrashRecord {
                second,
                app_version: &event.app.version,
                platform: &event.platform,
                os_version: &event.os.version,
                device_model: event.device_model.as_deref().unwrap_or("unknown"),
                exception_type: &event.exception.ty,
                group_id: &group.id,
                group_title: &group.title,
                user_id: event.user_id.as_deref(),
                symbolication_us: us,
            });
            // The symbolicated example holds about what the event did, twice (function
            // names and paths join the addresses).
            let example_bytes = event_bytes(event) * 2;
            self.groups
                .lock()
                .record(group, Arc::new(crash), example_bytes, self.clock.now_ms());
        }
        if let Sink::Writer(w) = &self.sink {
            if let Err(e) = w.lock().flush() {
                self.metrics.sink_errors.inc();
                tracing::warn!(error = %e, "sink flush failed");
            }
        }
        {
            let now = self.clock.now_secs();
            let oldest = now.saturating_sub(u64::from(self.exchange.window.seconds) - 1);
            let second = if second < oldest {
                // The acceptance second has left the window (a backlog over five minutes):
                // count the records now rather than lose them.
                self.metrics.late_records.add(job.events.len() as u64);
                now
            } else {
                second
            };
            // Acknowledged once a leader accepted this second's partial (`exchange`).
            self.exchange
                .outbox
                .lock()
                .record(second, &partial, job.seq);
        }
        for (status, n) in statuses {
            self.metrics.frames.add(status, n);
        }
        self.metrics.symbolication_us_sum.add(sym_us_total);
        self.metrics.processed.add(job.events.len() as u64);
    }
}
