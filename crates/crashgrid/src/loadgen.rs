//! `crashgrid loadgen`: realistic crash traffic against a crashgrid node, with exact accounting.
//!
//! # What it does
//!
//! 1. Builds the [`DemoWorld`] for the seed and, when asked, uploads every demo debug file with
//!    `PUT {url}/api/v1/debug-files/{name}` (raw body; any 2xx is success; network errors, 5xx
//!    and 429 are retried a few times), so the server can symbolicate what follows.
//! 2. Sends `POST {url}/api/v1/crashes` with a JSON array of `batch` events
//!    (`Content-Type: application/json`, gzip-compressed with `Content-Encoding: gzip` when
//!    asked), from `concurrency` parallel workers, paced to `rate` events per second.
//! 3. Prints a progress line to stderr every few seconds (with the server's backlog from
//!    `GET {url}/api/v1/stats`) and returns a [`LoadgenReport`] at the end.
//!
//! # Pacing
//!
//! A token bucket without drift: batch `k` is due at `origin + events_before_k / rate`, computed
//! from a fixed origin rather than by adding up sleeps, so rounding and scheduling delays never
//! accumulate. When the generator falls more than [`MAX_BURST`] behind (the server pushes back,
//! or the machine cannot keep up), the origin moves forward: the missed tokens are forfeited
//! rather than sent as one huge burst, and the report shows the achieved rate honestly. With a
//! finite duration exactly `rate × duration` events are planned; the run stops early at the
//! deadline if they could not all be sent in time. `rate = 0` sends as fast as the workers can.
//!
//! # Nothing is lost silently
//!
//! Every generated event ends in exactly one of three counters: `accepted` (its batch was
//! answered 2xx), `rejected` (answered with a 4xx other than 429: not retried, the first error
//! body per status is printed), or `unsent` (still queued or being retried when the run was
//! stopped). 429 answers are retried after `Retry-After` (counted in `retried_429`), network
//! errors and 5xx after an exponential backoff (counted in `errors`). So
//! `sent == accepted + rejected + unsent` always, and [`Truth`] tallies exactly the accepted
//! events, ready to compare with the server's statistics. The server accepts a batch whole or
//! not at all, and event ids are unique per run, so a resent batch can never double-count.
//!
//! # Stopping
//!
//! At the end of `duration`, or when `shutdown` completes, no new batch is generated. After the
//! duration, queued and retrying batches get [`DRAIN_TIMEOUT`] to complete; after `shutdown`
//! they stop at once (a request already on the wire is still awaited, so its outcome is known).
//! A `duration` of zero (or one too large to represent) runs until `shutdown`.
//!
//! # Memory
//!
//! Events are generated on the fly on one blocking thread; at most `concurrency` batches wait in
//! the queue and one is in flight per worker, so memory is bounded by the batch size, whatever
//! the rate or duration. The tally of distinct users is bounded by the world's user count.
//!
//! Event contents are deterministic for a seed (the generator uses a `StdRng` seeded from it);
//! event ids are `<run nonce><sequence>`, fresh for every run so that a repeated run is not
//! mistaken for redelivery by the server.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::demo::{DemoWorld, Truth};

/// How far the generator may fall behind its schedule before missed tokens are forfeited.
pub const MAX_BURST: Duration = Duration::from_secs(1);
/// How long queued and retrying batches may take to complete after the duration is over.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of the progress lines on stderr.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Timeout of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of a stats request (progress must not stall on a slow server).
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest backoff after a network error or 5xx.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Shortest and longest wait honoured for a 429 (`Retry-After: 0` must not spin).
const MIN_RETRY_WAIT: Duration = Duration::from_millis(10);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// Attempts per debug file upload (errors and 5xx other than "busy").
const UPLOAD_ATTEMPTS: u32 = 5;
/// How long one debug file may keep being answered "busy" (429, or 503 with `Retry-After`:
/// the node receives one upload at a time by default) before its upload counts as failed.
/// Busy answers are the server pacing us, not failures, so they do not use up attempts.
const UPLOAD_BUSY_DEADLINE: Duration = Duration::from_secs(120);

/// Settings of a load-generation run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadgenConfig {
    /// Base URL of a node, e.g. `http://127.0.0.1:8080`; several comma-separated URLs spread
    /// the batches round-robin over the nodes (as a load-balanced Service would) and upload the
    /// debug files to each.
    pub url: String,
    /// Events per second (0 = as fast as possible).
    pub rate: u32,
    /// How long to send (zero = until shutdown).
    pub duration: Duration,
    /// Events per POST.
    pub batch: usize,
    /// Parallel requests.
    pub concurrency: usize,
    /// Seed of the demo world and of the event stream.
    pub seed: u64,
    /// Upload the demo debug files before sending events.
    pub upload: bool,
    /// Gzip request bodies (`Content-Encoding: gzip`).
    pub gzip: bool,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".to_string(),
            rate: 100,
            duration: Duration::from_secs(60),
            batch: 50,
            concurrency: 4,
            seed: 1,
            upload: true,
            gzip: true,
        }
    }
}

/// The server's backlog as `GET /api/v1/stats` reports it in its `backlog` object. Each field
/// is optional: older or other servers may lack some.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerLag {
    /// Events accepted but not yet processed.
    pub unacked: Option<u64>,
    /// Age of the oldest unprocessed event, milliseconds.
    pub oldest_unacked_age_ms: Option<u64>,
    /// Average symbolication time per crash, microseconds.
    pub avg_symbolication_us: Option<f64>,
    /// Capacity of the server's ingest queue, events.
    pub queue_capacity: Option<u64>,
}

impl ServerLag {
    /// Reads the `backlog` object of a stats document; `None` when there is none.
    pub fn from_stats(stats: &Value) -> Option<Self> {
        let b = stats.get("backlog")?.as_object()?;
        Some(Self {
            unacked: b.get("unacked").and_then(Value::as_u64),
            oldest_unacked_age_ms: b.get("oldest_unacked_age_ms").and_then(Value::as_u64),
            avg_symbolication_us: b.get("avg_symbolication_us").and_then(Value::as_f64),
            queue_capacity: b.get("queue_capacity").and_then(Value::as_u64),
        })
    }
}

impl fmt::Display for ServerLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        write!(
            f,
            "unacked {}, oldest unacked {} ms, avg symbolication {} µs",
            opt(self.unacked),
            opt(self.oldest_unacked_age_ms),
            self.avg_symbolication_us
                .map_or("?".to_string(), |v| format!("{v:.1}"))
        )
    }
}

/// The outcome of a run. `sent == accepted + rejected + unsent`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadgenReport {
    /// The node's base URL.
    pub url: String,
    /// Requested events per second (0 = unlimited).
    pub target_rate: u32,
    /// Events generated and handed to the senders (each counted once, however often resent).
    pub sent: u64,
    /// Events in batches the server answered with 2xx.
    pub accepted: u64,
    /// Sum of the `accepted` figures of the server's answers (equals `accepted` for a server
    /// that accepts batches whole).
    pub server_accepted: u64,
    /// Events in batches refused with a 4xx other than 429 (not retried).
    pub rejected: u64,
    /// Events whose batch was still queued or being retried when the run stopped.
    pub unsent: u64,
    /// 429 answers (each followed by a retry of the same batch after `Retry-After`).
    pub retried_429: u64,
    /// Network errors and 5xx answers (each followed by a retry after a backoff).
    pub errors: u64,
    /// POST requests made (first attempts and retries).
    pub requests: u64,
    /// Bytes of request bodies sent (compressed size when gzip is on).
    pub body_bytes: u64,
    /// Debug files uploaded.
    pub uploaded: u64,
    /// Debug files whose upload failed.
    pub upload_failed: u64,
    /// From the first event sent to the last answer.
    pub elapsed: Duration,
    /// The first rejection: status and the server's error body.
    pub first_rejection: Option<String>,
    /// The first network error or 5xx.
    pub first_error: Option<String>,
    /// Tally of the accepted events.
    pub truth: Truth,
    /// The server's backlog at the end of the run, when it reports one.
    pub lag: Option<ServerLag>,
}

/// `count` per second over `elapsed` (0 for an empty run).
pub(crate) fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// A target rate as a report prints it (0: unlimited).
pub(crate) fn target_label(rate: u64) -> String {
    if rate == 0 {
        "unlimited".to_string()
    } else {
        format!("{rate} events/s")
    }
}

impl LoadgenReport {
    /// Accepted events per second over the run.
    pub fn achieved_rate(&self) -> f64 {
        per_second(self.accepted, self.elapsed)
    }
}

impl fmt::Display for LoadgenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = target_label(self.target_rate as u64);
        writeln!(
            f,
            "loadgen → {}: {:.1} s, target {target}, achieved {:.1} events/s",
            self.url,
            self.elapsed.as_secs_f64(),
            self.achieved_rate()
        )?;
        writeln!(f, "  sent           {:>10} events", self.sent)?;
        writeln!(f, "  accepted       {:>10}", self.accepted)?;
        writeln!(f, "  rejected       {:>10}", self.rejected)?;
        writeln!(f, "  unsent         {:>10}", self.unsent)?;
        writeln!(f, "  retried (429)  {:>10} requests", self.retried_429)?;
        writeln!(f, "  errors         {:>10} requests", self.errors)?;
        writeln!(
            f,
            "  requests       {:>10} ({:.1} MB of bodies)",
            self.requests,
            self.body_bytes as f64 / 1e6
        )?;
        if self.uploaded + self.upload_failed > 0 {
            writeln!(
                f,
                "  debug files    {:>10} uploaded, {} failed",
                self.uploaded, self.upload_failed
            )?;
        }
        writeln!(f, "  distinct users {:>10}", self.truth.distinct_users())?;
        match &self.lag {
            Some(lag) => writeln!(f, "  server         {lag}")?,
            None => writeln!(
                f,
                "  server         backlog unavailable (no answer from /api/v1/stats)"
            )?,
        }
        if self.server_accepted != self.accepted {
            writeln!(
                f,
                "  note: the server reported {} accepted events",
                self.server_accepted
            )?;
        }
        if let Some(r) = &self.first_rejection {
            writeln!(f, "  first rejection: {r}")?;
        }
        if let Some(e) = &self.first_error {
            writeln!(f, "  first error: {e}")?;
        }
        Ok(())
    }
}

/// Runs the load generator until `cfg.duration` is over or `shutdown` completes.
///
/// Fails only on an unusable configuration or when debug files were to be uploaded and not one
/// upload succeeded; everything else (rejections, errors) is counted in the report.
pub async fn run(
    cfg: LoadgenConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<LoadgenReport> {
    anyhow::ensure!(cfg.batch > 0, "the batch size must be at least 1");
    anyhow::ensure!(cfg.concurrency > 0, "the concurrency must be at least 1");
    let bases: Vec<String> = cfg
        .url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    anyhow::ensure!(!bases.is_empty(), "no URL given");
    for base in &bases {
        let parsed = reqwest::Url::parse(base).with_context(|| format!("invalid URL {base:?}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "the URL must be http(s): {base:?}"
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let work = drive(cfg, bases, stop_rx, stop_tx.clone());
    tokio::pin!(work);
    tokio::pin!(shutdown);
    tokio::select! {
        report = &mut work => report,
        () = &mut shutdown => {
            let _ = stop_tx.send(true);
            work.await
        }
    }
}

/// Counters shared by the producer and the workers.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    server_accepted: AtomicU64,
    rejected: AtomicU64,
    unsent: AtomicU64,
    retried_429: AtomicU64,
    errors: AtomicU64,
    requests: AtomicU64,
    body_bytes: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One POST body and what it holds.
struct Batch {
    body: Bytes,
    events: u64,
    truth: Truth,
}

/// What the workers share.
struct Ctx {
    client: reqwest::Client,
    /// `POST /api/v1/crashes` of every target, used round-robin.
    crashes_urls: Vec<String>,
    next_url: AtomicU64,
    gzip: bool,
    counters: Counters,
    truth: Mutex<Truth>,
    first_rejection: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
    logged_statuses: Mutex<BTreeSet<u16>>,
}

impl Ctx {
    fn note_rejection(&self, status: StatusCode, events: u64, body: &str) {
        let text = format!("{status}: {}", body.trim());
        if self.logged_statuses.lock().insert(status.as_u16()) {
            eprintln!("loadgen: the server rejected a batch of {events} events with {text}");
        }
        self.first_rejection.lock().get_or_insert(text);
    }

    fn note_error(&self, text: String) {
        let n = Counters::get(&self.counters.errors);
        if n.is_power_of_two() {
            eprintln!("loadgen: request failed ({n} so far), retrying: {text}");
        }
        self.first_error.lock().get_or_insert(text);
    }

    /// Sends one batch until it is accepted or rejected, or the run stops.
    async fn send(&self, batch: Batch, stop: &mut watch::Receiver<bool>) {
        let n = batch.events;
        let mut backoff = INITIAL_BACKOFF;
        loop {
            Counters::add(&self.counters.requests, 1);
            Counters::add(&self.counters.body_bytes, batch.body.len() as u64);
            let i = self.next_url.fetch_add(1, Ordering::Relaxed) as usize;
            let url = &self.crashes_urls[i % self.crashes_urls.len()];
            let mut request = self
                .client
                .post(url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(batch.body.clone());
            if self.gzip {
                request = request.header(header::CONTENT_ENCODING, "gzip");
            }
            let wait = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let answer: Option<Value> = response.json().await.ok();
                        let server_n = answer
                            .as_ref()
                            .and_then(|v| v.get("accepted"))
                            .and_then(Value::as_u64)
                            .unwrap_or(n);
                        Counters::add(&self.counters.accepted, n);
                        Counters::add(&self.counters.server_accepted, server_n);
                        self.truth.lock().merge(&batch.truth);
                        return;
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        Counters::add(&self.counters.retried_429, 1);
                        let wait = retry_after(response.headers()).unwrap_or(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait.clamp(MIN_RETRY_WAIT, MAX_RETRY_WAIT)
                    } else if status.is_client_error() {
                        let body = response.text().await.unwrap_or_default();
                        Counters::add(&self.counters.rejected, n);
                        self.note_rejection(status, n, &body);
                        return;
                    } else {
                        let body = response.text().await.unwrap_or_default();
                        Counters::add(&self.counters.errors, 1);
                        self.note_error(format!("{status}: {}", body.trim()));
                        jittered(&mut backoff)
                    }
                }
                Err(e) => {
                    Counters::add(&self.counters.errors, 1);
                    self.note_error(error_chain(&e));
                    jittered(&mut backoff)
                }
            };
            if !sleep_unless_stopped(wait, stop).await {
                Counters::add(&self.counters.unsent, n);
                return;
            }
        }
    }
}

/// The backoff to wait now (with ±25 % jitter so workers do not retry in lockstep), doubling
/// the next one up to [`MAX_BACKOFF`]. Shared with the NATS source's reconnect loops.
pub(crate) fn jittered(backoff: &mut Duration) -> Duration {
    let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.75..1.25));
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    wait
}

/// `Retry-After` in seconds (the HTTP-date form is not used by crashgrid and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_WAIT.as_secs_f64())))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sleeps for `d`; false when the run was stopped first (or already).
pub(crate) async fn sleep_unless_stopped(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => !*stop.borrow(),
        () = async {
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => false,
    }
}

async fn worker(
    ctx: Arc<Ctx>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let batch = rx.lock().await.recv().await;
        let Some(batch) = batch else { break };
        if *stop.borrow() {
            Counters::add(&ctx.counters.unsent, batch.events);
            continue;
        }
        ctx.send(batch, &mut stop).await;
    }
}

/// The paced event generator; runs on a blocking thread.
struct Producer {
    world: Arc<DemoWorld>,
    rate: u32,
    batch: usize,
    gzip: bool,
    seed: u64,
    start: Instant,
    end: Option<Instant>,
    /// Events to send in all (`None`: until `end` or stop).
    limit: Option<u64>,
    tx: mpsc::Sender<Batch>,
    stop: watch::Receiver<bool>,
    ctx: Arc<Ctx>,
}

impl Producer {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps until `due` in short steps; false when stopped or past the end meanwhile.
    fn sleep_until(&self, due: Instant) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if self.end.is_some_and(|end| now >= end) {
                return false;
            }
            if now >= due {
                return true;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
        }
    }

    fn run(self) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x6c6f_6164_6765_6e21);
        let nonce: u64 = rand::random();
        let mut seq = 0u64;
        let mut produced = 0u64;
        // Token bucket: `origin` is when the `origin_count`-th event was due.
        let mut origin = self.start;
        let mut origin_count = 0u64;
        loop {
            if self.stopped() {
                break;
            }
            let mut n = self.batch as u64;
            if let Some(limit) = self.limit {
                if produced >= limit {
                    break;
                }
                n = n.min(limit - produced);
            }
            if self.rate > 0 {
                let due = origin
                    + Duration::from_secs_f64((produced - origin_count) as f64 / self.rate as f64);
                let now = Instant::now();
                if now > due + MAX_BURST {
                    // Fell behind: forfeit the missed tokens instead of bursting them out.
                    origin = now;
                    origin_count = produced;
                } else if !self.sleep_until(due) {
                    break;
                }
            }
            if self.end.is_some_and(|end| Instant::now() >= end) {
                break;
            }

            let mut events = Vec::with_capacity(n as usize);
            let mut truth = Truth::default();
            for _ in 0..n {
                let mut event = self.world.event(&mut rng);
                event.event_id = format!("{nonce:016x}{seq:016x}");
                seq += 1;
                truth.add(&event);
                events.push(event);
            }
            let json = serde_json::to_vec(&events).expect("events serialize");
            let body = if self.gzip {
                let mut enc =
                    GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
                enc.write_all(&json).expect("writing to memory");
                enc.finish().expect("writing to memory")
            } else {
                json
            };
            drop(events);
            Counters::add(&self.ctx.counters.sent, n);
            produced += n;
            let batch = Batch {
                body: Bytes::from(body),
                events: n,
                truth,
            };
            if let Err(mpsc::error::SendError(batch)) = self.tx.blocking_send(batch) {
                Counters::add(&self.ctx.counters.unsent, batch.events);
                break;
            }
        }
    }
}

/// `GET {base}/api/v1/stats` → the backlog, if the server answers with one.
async fn fetch_lag(client: &reqwest::Client, base: &str) -> Option<ServerLag> {
    let response = client
        .get(format!("{base}/api/v1/stats"))
        .timeout(STATS_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let stats: Value = response.json().await.ok()?;
    ServerLag::from_stats(&stats)
}

async fn progress(ctx: Arc<Ctx>, base: String, start: Instant) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + PROGRESS_EVERY,
        PROGRESS_EVERY,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (start, 0u64);
    loop {
        tick.tick().await;
        let lag = fetch_lag(&ctx.client, &base).await;
        let c = &ctx.counters;
        let now = Instant::now();
        let accepted = Counters::get(&c.accepted);
        let rate = (accepted - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, accepted);
        let server = lag.map_or_else(|| "backlog not reported".to_string(), |l| l.to_string());
        eprintln!(
            "loadgen {:>5.0}s: sent {} accepted {} ({rate:.0}/s) rejected {} retried(429) {} errors {} | server {server}",
            (now - start).as_secs_f64(),
            Counters::get(&c.sent),
            accepted,
            Counters::get(&c.rejected),
            Counters::get(&c.retried_429),
            Counters::get(&c.errors),
        );
    }
}

/// Uploads one debug file; `Err` carries the last failure.
async fn upload_one(
    client: &reqwest::Client,
    url: &str,
    data: Bytes,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mut backoff = INITIAL_BACKOFF;
    let mut last = String::new();
    let mut failures = 0;
    let busy_until = tokio::time::Instant::now() + UPLOAD_BUSY_DEADLINE;
    while failures < UPLOAD_ATTEMPTS {
        let result = client
            .put(url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(data.clone())
            .send()
            .await;
        let wait = match result {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r)
                if r.status() == StatusCode::TOO_MANY_REQUESTS
                    || (r.status() == StatusCode::SERVICE_UNAVAILABLE
                        && r.headers().contains_key(header::RETRY_AFTER)) =>
            {
                if tokio::time::Instant::now() >= busy_until {
                    return Err(format!("{} for {UPLOAD_BUSY_DEADLINE:?}", r.status()));
                }
                last = r.status().to_string();
                if r.status() == StatusCode::TOO_MANY_REQUESTS {
                    retry_after(r.headers()).unwrap_or(backoff)
                } else {
                    // `uploads_busy`: the short backoff, not the server's hint. Uploads are
                    // received one at a time and each takes milliseconds, so a slot frees long
                    // before `Retry-After`.
                    backoff
                }
                .clamp(MIN_RETRY_WAIT, MAX_RETRY_WAIT)
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(format!("{status}: {}", body.trim()));
            }
            Ok(r) => {
                failures += 1;
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                last = format!("{status}: {}", body.trim());
                backoff
            }
            Err(e) => {
                failures += 1;
                last = error_chain(&e);
                backoff
            }
        };
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if !sleep_unless_stopped(wait, stop).await {
            return Err(format!("stopped while retrying: {last}"));
        }
    }
    Err(last)
}

/// Uploads every debug file of the world, `concurrency` at a time: (uploaded, failed).
///
/// The first file goes alone, as a probe: when it cannot be uploaded (server unreachable, or
/// refusing uploads) the run fails at once instead of retrying every file.
async fn upload_all(
    client: &reqwest::Client,
    base: &str,
    world: &Arc<DemoWorld>,
    concurrency: usize,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(u64, u64)> {
    let upload = |i: usize| {
        let world = world.clone();
        let mut stop = stop.clone();
        async move {
            if *stop.borrow() {
                return Err("stopped".to_string());
            }
            let (name, data) = tokio::task::spawn_blocking(move || world.debug_file(i))
                .await
                .map_err(|e| e.to_string())?;
            let url = format!("{base}/api/v1/debug-files/{name}");
            upload_one(client, &url, Bytes::from(data), &mut stop)
                .await
                .map_err(|e| format!("{name}: {e}"))
        }
    };
    let count = world.modules().len();
    if count == 0 {
        return Ok((0, 0));
    }
    if let Err(e) = upload(0).await {
        if *stop.borrow() {
            return Ok((0, count as u64));
        }
        anyhow::bail!("no debug file could be uploaded to {base}: {e}");
    }
    let results: Vec<Result<(), String>> = stream::iter(1..count)
        .map(upload)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count() as u64;
    for e in results.iter().filter_map(|r| r.as_ref().err()).take(3) {
        eprintln!("loadgen: debug file upload failed: {e}");
    }
    Ok((count as u64 - failed, failed))
}

async fn drive(
    cfg: LoadgenConfig,
    bases: Vec<String>,
    stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
) -> anyhow::Result<LoadgenReport> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let seed = cfg.seed;
    let world = Arc::new(
        tokio::task::spawn_blocking(move || DemoWorld::new(seed))
            .await
            .context("building the demo world")?,
    );
    let (mut uploaded, mut upload_failed) = (0, 0);
    if cfg.upload {
        for base in &bases {
            let (ok, failed) = upload_all(&client, base, &world, cfg.concurrency, &stop).await?;
            uploaded += ok;
            upload_failed += failed;
        }
    }
    // Progress and the final backlog are read from the first target.
    let base = bases[0].clone();

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        crashes_urls: bases
            .iter()
            .map(|b| format!("{b}/api/v1/crashes"))
            .collect(),
        next_url: AtomicU64::new(0),
        gzip: cfg.gzip,
        counters: Counters::default(),
        truth: Mutex::new(Truth::default()),
        first_rejection: Mutex::new(None),
        first_error: Mutex::new(None),
        logged_statuses: Mutex::new(BTreeSet::new()),
    });
    let start = Instant::now();
    let end = (!cfg.duration.is_zero())
        .then(|| start.checked_add(cfg.duration))
        .flatten();
    let limit = match end {
        Some(_) if cfg.rate > 0 => {
            Some((cfg.rate as f64 * cfg.duration.as_secs_f64()).round() as u64)
        }
        _ => None,
    };

    let (tx, rx) = mpsc::channel::<Batch>(cfg.concurrency);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = JoinSet::new();
    for _ in 0..cfg.concurrency {
        workers.spawn(worker(ctx.clone(), rx.clone(), stop.clone()));
    }
    let reporter = tokio::spawn(progress(ctx.clone(), base.clone(), start));
    let producer = Producer {
        world,
        rate: cfg.rate,
        batch: cfg.batch,
        gzip: cfg.gzip,
        seed: cfg.seed,
        start,
        end,
        limit,
        tx,
        stop: stop.clone(),
        ctx: ctx.clone(),
    };
    let produced = tokio::task::spawn_blocking(move || producer.run()).await;

    // Generation is over: queued and retrying batches get the drain timeout.
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(DRAIN_TIMEOUT).await;
        let _ = stop_tx.send(true);
    });
    while let Some(joined) = workers.join_next().await {
        joined.context("a sender task failed")?;
    }
    deadline.abort();
    reporter.abort();
    produced.context("the event generator failed")?;
    let elapsed = start.elapsed();
    let lag = fetch_lag(&client, &base).await;

    let c = &ctx.counters;
    let report = LoadgenReport {
        url: base,
        target_rate: cfg.rate,
        sent: Counters::get(&c.sent),
        accepted: Counters::get(&c.accepted),
        server_accepted: Counters::get(&c.server_accepted),
        rejected: Counters::get(&c.rejected),
        unsent: Counters::get(&c.unsent),
        retried_429: Counters::get(&c.retried_429),
        errors: Counters::get(&c.errors),
        requests: Counters::get(&c.requests),
        body_bytes: Counters::get(&c.body_bytes),
        uploaded,
        upload_failed,
        elapsed,
        first_rejection: ctx.first_rejection.lock().clone(),
        first_error: ctx.first_error.lock().clone(),
        truth: std::mem::take(&mut *ctx.truth.lock()),
        lag,
    };
    debug_assert_eq!(
        report.sent,
        report.accepted + report.rejected + report.unsent,
        "every event is accounted for"
    );
    Ok(report)
}

/// Uploads the demo world's debug files for `seed` to the node at `url`, as a run with
/// `upload` does first: (uploaded, failed). `loadgen --nats --url` uses it before publishing.
pub async fn upload_debug_files(
    url: &str,
    seed: u64,
    concurrency: usize,
) -> anyhow::Result<(u64, u64)> {
    let base = url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let world = Arc::new(
        tokio::task::spawn_blocking(move || DemoWorld::new(seed))
            .await
            .context("building the demo world")?,
    );
    let (_stop_tx, stop) = watch::channel(false);
    upload_all(&client, &base, &world, concurrency.max(1), &stop).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::sync::atomic::AtomicUsize;

    use axum::extract::{DefaultBodyLimit, Path, State};
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post, put};
    use axum::{Json, Router};
    use serde_json::json;
    use symbolicate::CrashEvent;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// 429 (Retry-After: 1) for the first request, 202 after.
        TooManyOnce,
        /// 503 for the first two requests, 202 after.
        UnavailableTwice,
        /// 400 always.
        Reject,
        /// 429 (Retry-After: 0) always.
        AlwaysBusy,
    }

    struct Server {
        mode: Mode,
        requests: AtomicUsize,
        uploads: Mutex<Vec<(String, usize)>>,
        /// Debug files are received one at a time, as the node does by default; the others
        /// are answered 503 `uploads_busy` with `Retry-After`.
        receiving: tokio::sync::Semaphore,
        busy_answers: AtomicUsize,
        /// Per request: arrival, status answered, first event id, event count.
        log: Mutex<Vec<(Instant, u16, String, usize)>>,
        accepted_ids: Mutex<Vec<String>>,
        accepted_events: Mutex<Truth>,
    }

    impl Server {
        fn new(mode: Mode) -> Arc<Self> {
            Arc::new(Server {
                mode,
                requests: AtomicUsize::new(0),
                uploads: Mutex::new(Vec::new()),
                receiving: tokio::sync::Semaphore::new(1),
                busy_answers: AtomicUsize::new(0),
                log: Mutex::new(Vec::new()),
                accepted_ids: Mutex::new(Vec::new()),
                accepted_events: Mutex::new(Truth::default()),
            })
        }
    }

    async fn crashes(
        State(s): State<Arc<Server>>,
        headers: AxumHeaders,
        body: axum::body::Bytes,
    ) -> Response {
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        let json = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            body.to_vec()
        };
        let value: Value = serde_json::from_slice(&json).unwrap();
        let events: Vec<CrashEvent> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| CrashEvent::from_value(v).expect("valid event"))
            .collect();
        let k = s.requests.fetch_add(1, Ordering::SeqCst);
        let (status, response) = match s.mode {
            Mode::TooManyOnce if k == 0 => (429, busy(1)),
            Mode::UnavailableTwice if k < 2 => (
                503,
                (AxumStatus::SERVICE_UNAVAILABLE, "down for a moment").into_response(),
            ),
            Mode::Reject => (
                400,
                (
                    AxumStatus::BAD_REQUEST,
                    Json(json!({"error": {"code": "bad_event", "message": "no", "field": "[0].app"}})),
                )
                    .into_response(),
            ),
            Mode::AlwaysBusy => (429, busy(0)),
            _ => {
                let mut ids = s.accepted_ids.lock();
                let mut truth = s.accepted_events.lock();
                for e in &events {
                    ids.push(e.event_id.clone());
                    truth.add(e);
                }
                (
                    202,
                    (AxumStatus::ACCEPTED, Json(json!({"accepted": events.len()}))).into_response(),
                )
            }
        };
        s.log.lock().push((
            Instant::now(),
            status,
            events[0].event_id.clone(),
            events.len(),
        ));
        response
    }

    fn busy(secs: u64) -> Response {
        let mut r = (
            AxumStatus::TOO_MANY_REQUESTS,
            Json(json!({"error": {"code": "overloaded", "message": "queue full"}})),
        )
            .into_response();
        r.headers_mut().insert("retry-after", secs.into());
        r
    }

    async fn debug_file(
        State(s): State<Arc<Server>>,
        Path(name): Path<String>,
        body: axum::body::Bytes,
    ) -> Response {
        let Ok(_slot) = s.receiving.try_acquire() else {
            s.busy_answers.fetch_add(1, Ordering::SeqCst);
            return (
                AxumStatus::SERVICE_UNAVAILABLE,
                [("retry-after", "5")],
                "uploads_busy",
            )
                .into_response();
        };
        // Receiving takes a while, so concurrent uploads meet a busy server.
        tokio::time::sleep(Duration::from_millis(30)).await;
        symbolicate::inspect(&body).expect("a valid debug file");
        s.uploads.lock().push((name, body.len()));
        AxumStatus::CREATED.into_response()
    }

    async fn stats() -> Json<Value> {
        Json(json!({
            "node": "test",
            "backlog": {"unacked": 3, "oldest_unacked_age_ms": 40, "avg_symbolication_us": 12.5}
        }))
    }

    async fn serve(server: Arc<Server>) -> String {
        let app = Router::new()
            .route("/api/v1/crashes", post(crashes))
            .route("/api/v1/debug-files/{name}", put(debug_file))
            .route("/api/v1/stats", get(stats))
            .layer(DefaultBodyLimit::disable())
            .with_state(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/")
    }

    fn cfg(url: String, rate: u32, millis: u64, batch: usize) -> LoadgenConfig {
        LoadgenConfig {
            url,
            rate,
            duration: Duration::from_millis(millis),
            batch,
            concurrency: 3,
            seed: 5,
            upload: false,
            gzip: true,
        }
    }

    fn assert_accounted(r: &LoadgenReport) {
        assert_eq!(r.sent, r.accepted + r.rejected + r.unsent, "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_429_is_retried_after_retry_after_and_nothing_is_lost() {
        let server = Server::new(Mode::TooManyOnce);
        let url = serve(server.clone()).await;
        let mut c = cfg(url, 300, 1000, 20);
        c.upload = true;
        let report = run(c, std::future::pending()).await.unwrap();
        assert_accounted(&report);
        // At most rate × duration events (fewer when the generator's thread got a core late:
        // it stops at the end of the duration), in whole batches, every one accepted.
        let sent = report.sent;
        assert!((40..=300).contains(&sent) && sent % 20 == 0, "{report:?}");
        assert_eq!(report.accepted, sent);
        assert_eq!(report.server_accepted, sent);
        assert_eq!((report.rejected, report.unsent, report.errors), (0, 0, 0));
        assert_eq!(report.retried_429, 1);
        assert_eq!(report.requests, sent / 20 + 1);

        // Every event arrived exactly once, and the tally matches what the server saw.
        let ids = server.accepted_ids.lock().clone();
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!((ids.len() as u64, distinct.len() as u64), (sent, sent));
        assert_eq!(report.truth, *server.accepted_events.lock());
        assert_eq!(report.truth.total, sent);

        // The rejected batch came back, whole, after Retry-After.
        let log = server.log.lock().clone();
        let (t429, _, first, n) = log.iter().find(|l| l.1 == 429).unwrap().clone();
        let retry = log
            .iter()
            .find(|l| l.1 == 202 && l.2 == first)
            .expect("batch resent");
        assert_eq!(retry.3, n);
        assert!(
            retry.0 - t429 >= Duration::from_millis(900),
            "Retry-After honoured"
        );

        // Paced: the batches were spread over the second, not sent at once.
        let first_at = log.iter().map(|l| l.0).min().unwrap();
        let last_202 = log
            .iter()
            .filter(|l| l.1 == 202)
            .map(|l| l.0)
            .max()
            .unwrap();
        assert!(last_202 - first_at >= Duration::from_millis(800));

        // Debug files were uploaded first, each a valid debug file.
        let world = DemoWorld::new(5);
        let uploads = server.uploads.lock().clone();
        assert_eq!(report.uploaded as usize, world.modules().len());
        assert_eq!(uploads.len(), world.modules().len());
        assert!(uploads.iter().any(|(name, _)| name == "libgame.so.sym"));
        // Rule: a busy server paces uploads, it does not fail them (seen failing a CI-loaded
        // run when busy answers used up the five attempts).
        assert!(
            server.busy_answers.load(Ordering::SeqCst) > 0,
            "concurrent uploads met the one-at-a-time server"
        );

        let lag = report.lag.unwrap();
        assert_eq!(lag.unacked, Some(3));
        assert_eq!(lag.oldest_unacked_age_ms, Some(40));
        assert_eq!(lag.avg_symbolication_us, Some(12.5));
        let text = report.to_string();
        assert!(
            text.contains("accepted") && text.contains(&sent.to_string()),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_errors_are_retried_with_backoff() {
        let server = Server::new(Mode::UnavailableTwice);
        let url = serve(server.clone()).await;
        let mut c = cfg(url, 200, 500, 10);
        c.gzip = false;
        let report = run(c, std::future::pending()).await.unwrap();
        assert_accounted(&report);
        // How many events the generator made before the end depends on when its thread got a
        // core (at most rate × duration = 100); every one of them is accepted, including the
        // two batches answered 503 and resent.
        assert!(report.sent >= 20 && report.sent <= 100, "{report:?}");
        assert_eq!(report.accepted, report.sent, "{report:?}");
        assert_eq!(report.errors, 2);
        assert_eq!(report.retried_429, 0);
        assert!(report.first_error.as_deref().unwrap().contains("503"));
        let ids = server.accepted_ids.lock().clone();
        assert_eq!(
            ids.iter().collect::<BTreeSet<_>>().len() as u64,
            report.accepted
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_4xx_are_rejected_and_not_retried() {
        let server = Server::new(Mode::Reject);
        let url = serve(server.clone()).await;
        let report = run(cfg(url, 100, 500, 10), std::future::pending())
            .await
            .unwrap();
        assert_accounted(&report);
        assert_eq!((report.sent, report.rejected, report.accepted), (50, 50, 0));
        assert_eq!(report.requests, 5, "no retries");
        assert_eq!(
            report.truth.total, 0,
            "the tally holds accepted events only"
        );
        let rejection = report.first_rejection.as_deref().unwrap();
        assert!(
            rejection.starts_with("400") && rejection.contains("bad_event"),
            "{rejection}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_retrying_and_counts_what_was_not_sent() {
        let server = Server::new(Mode::AlwaysBusy);
        let url = serve(server.clone()).await;
        let began = Instant::now();
        let shutdown = tokio::time::sleep(Duration::from_millis(700));
        // A long duration: only the shutdown ends the run.
        let report = run(cfg(url, 100, 60_000, 10), shutdown).await.unwrap();
        assert!(began.elapsed() < Duration::from_secs(5), "prompt shutdown");
        assert_accounted(&report);
        assert!(report.sent > 0);
        assert_eq!(report.accepted, 0);
        assert_eq!(report.unsent, report.sent, "{report:?}");
        assert!(report.retried_429 >= 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_server_is_counted_as_errors() {
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let shutdown = tokio::time::sleep(Duration::from_millis(600));
        let report = run(cfg(url.clone(), 100, 60_000, 10), shutdown)
            .await
            .unwrap();
        assert_accounted(&report);
        assert!(report.errors > 0 && report.accepted == 0);
        assert_eq!(report.unsent, report.sent);
        assert!(report.lag.is_none());

        // Uploading to it fails loudly instead.
        let mut c = cfg(url, 100, 100, 10);
        c.upload = true;
        let shutdown = tokio::time::sleep(Duration::from_secs(30));
        let err = run(c, shutdown).await.unwrap_err();
        assert!(
            err.to_string().contains("no debug file could be uploaded"),
            "{err:#}"
        );
    }

    #[test]
    fn server_lag_is_read_tolerantly() {
        assert_eq!(ServerLag::from_stats(&json!({"stats": {}})), None);
        assert_eq!(ServerLag::from_stats(&json!({"backlog": 3})), None);
        let partial = ServerLag::from_stats(&json!({"backlog": {"unacked": 7}})).unwrap();
        assert_eq!(partial.unacked, Some(7));
        assert_eq!(partial.oldest_unacked_age_ms, None);
        assert!(partial.to_string().contains("unacked 7"));
    }

    #[test]
    fn retry_after_is_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(header::RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn the_run_future_can_be_spawned() {
        fn assert_spawnable<T: Future + Send + 'static>(_: T) {}
        assert_spawnable(run(LoadgenConfig::default(), std::future::pending::<()>()));
    }

    #[tokio::test]
    async fn bad_configuration_is_refused() {
        let c = LoadgenConfig {
            batch: 0,
            ..LoadgenConfig::default()
        };
        assert!(run(c, std::future::pending()).await.is_err());
        let c = LoadgenConfig {
            url: "not a url".into(),
            ..LoadgenConfig::default()
        };
        assert!(run(c, std::future::pending()).await.is_err());
    }
}
