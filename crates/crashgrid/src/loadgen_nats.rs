//! `crashgrid loadgen --nats URL`: the same generated crash traffic as [`crate::loadgen`],
//! published to a NATS JetStream stream (the source's input) instead of POSTed to a node.
//!
//! Each message is one JSON array of `batch` events (plain JSON: the format
//! `POST /api/v1/crashes` takes, without gzip). Publishes are JetStream publishes with acks,
//! pipelined: up to `in_flight` wait for their acks at once. A message carries `Nats-Msg-Id`
//! (its first event's id, unique per run) and `Nats-Expected-Stream`, so a retry after a lost
//! ack is a no-op in the broker's duplicate window and a message never lands in another
//! stream.
//!
//! Pacing and accounting follow `loadgen`: a drift-free token bucket (missed tokens beyond
//! [`MAX_BURST`] are forfeited), exactly `rate × duration` events planned, and every generated
//! event ends in exactly one of `published` (the broker acknowledged its message), `failed`
//! (the broker refused it: no stream, wrong stream, too large; not retried) or `unsent`
//! (still queued or being retried when the run stopped). Timeouts and connection errors are
//! retried after a backoff. So `sent == published + failed + unsent`.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::demo::{DemoWorld, Truth};
use crate::loadgen::{DRAIN_TIMEOUT, MAX_BURST, PROGRESS_EVERY};

/// Settings of a NATS load-generation run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsLoadgenConfig {
    /// NATS server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subject published to (must be captured by `stream`).
    pub subject: String,
    /// The stream expected to store the messages.
    pub stream: String,
    /// Events per second (0 = as fast as possible).
    pub rate: u32,
    /// How long to publish (zero = until shutdown).
    pub duration: Duration,
    /// Events per message.
    pub batch: usize,
    /// Publishes awaiting their ack at once.
    pub in_flight: usize,
    /// Seed of the demo world and of the event stream.
    pub seed: u64,
}

impl Default for NatsLoadgenConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_string(),
            subject: "crashes.loadgen".to_string(),
            stream: "CRASHES".to_string(),
            rate: 100,
            duration: Duration::from_secs(60),
            batch: 50,
            in_flight: 256,
            seed: 1,
        }
    }
}

/// The outcome of a run. `sent == published + failed + unsent`.
#[derive(Debug, Clone, Serialize)]
pub struct NatsLoadgenReport {
    /// The NATS URL.
    pub url: String,
    /// The subject.
    pub subject: String,
    /// The stream.
    pub stream: String,
    /// Requested events per second (0 = unlimited).
    pub target_rate: u32,
    /// Events generated (each counted once, however often its message was retried).
    pub sent: u64,
    /// Events in messages the broker acknowledged.
    pub published: u64,
    /// Events in messages the broker refused (not retried).
    pub failed: u64,
    /// Events whose message was still queued or being retried when the run stopped.
    pub unsent: u64,
    /// Messages acknowledged.
    pub messages: u64,
    /// Publish attempts retried after a timeout or connection error.
    pub retries: u64,
    /// Acked messages the broker reported as duplicates (a retry of a publish that landed).
    pub duplicates: u64,
    /// Bytes of message payloads acknowledged.
    pub payload_bytes: u64,
    /// From the first message to the last ack.
    pub elapsed: Duration,
    /// The first refusal or error.
    pub first_error: Option<String>,
    /// Tally of the published events.
    pub truth: Truth,
}

impl NatsLoadgenReport {
    /// Published events per second over the run.
    pub fn achieved_rate(&self) -> f64 {
        crate::loadgen::per_second(self.published, self.elapsed)
    }
}

impl fmt::Display for NatsLoadgenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = crate::loadgen::target_label(self.target_rate as u64);
        writeln!(
            f,
            "loadgen → {} {} (stream {}): {:.1} s, target {target}, achieved {:.1} events/s",
            self.url,
            self.subject,
            self.stream,
            self.elapsed.as_secs_f64(),
            self.achieved_rate()
        )?;
        writeln!(f, "  sent           {:>10} events", self.sent)?;
        writeln!(f, "  published      {:>10}", self.published)?;
        writeln!(f, "  failed         {:>10}", self.failed)?;
        writeln!(f, "  unsent         {:>10}", self.unsent)?;
        writeln!(
            f,
            "  messages       {:>10} ({:.1} MB of payloads)",
            self.messages,
            self.payload_bytes as f64 / 1e6
        )?;
        writeln!(f, "  retries        {:>10} publishes", self.retries)?;
        if self.duplicates > 0 {
            writeln!(
                f,
                "  duplicates     {:>10} (retries that had landed)",
                self.duplicates
            )?;
        }
        writeln!(f, "  distinct users {:>10}", self.truth.distinct_users())?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  first error: {e}")?;
        }
        Ok(())
    }
}

/// One message and what it holds.
struct Batch {
    id: String,
    body: Bytes,
    events: u64,
    truth: Truth,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
    unsent: AtomicU64,
    messages: AtomicU64,
    retries: AtomicU64,
    duplicates: AtomicU64,
    payload_bytes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Runs the generator until `cfg.duration` is over or `shutdown` completes. Fails when the
/// broker cannot be reached or the stream does not exist (create it with
/// `crashgrid serve --nats-create-stream true`, or with the operator's tooling).
pub async fn run(
    cfg: NatsLoadgenConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<NatsLoadgenReport> {
    anyhow::ensure!(cfg.batch > 0, "the batch size must be at least 1");
    anyhow::ensure!(cfg.in_flight > 0, "in-flight publishes must be at least 1");
    let client = async_nats::ConnectOptions::new()
        .name("crashgrid loadgen")
        .connection_timeout(Duration::from_secs(5))
        .connect(cfg.url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", cfg.url))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(&cfg.stream)
        .await
        .with_context(|| {
            format!(
                "stream {:?} not found at {}: create it (e.g. `crashgrid serve --nats-create-stream true`)",
                cfg.stream, cfg.url
            )
        })?;
    let subjects = &stream.cached_info().config.subjects;
    anyhow::ensure!(
        subjects
            .iter()
            .any(|s| crate::nats::subject_matches(s, &cfg.subject)),
        "stream {:?} does not capture subject {:?} (its subjects: {subjects:?})",
        cfg.stream,
        cfg.subject
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let work = drive(cfg, js, stop_rx, Arc::new(stop_tx.clone()));
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

fn produce(
    world: Arc<DemoWorld>,
    cfg: &NatsLoadgenConfig,
    start: Instant,
    end: Option<Instant>,
    tx: mpsc::Sender<Batch>,
    stop: watch::Receiver<bool>,
    counters: &Counters,
) {
    let limit = match end {
        Some(_) if cfg.rate > 0 => {
            Some((cfg.rate as f64 * cfg.duration.as_secs_f64()).round() as u64)
        }
        _ => None,
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6c6f_6164_6765_6e21);
    let nonce: u64 = rand::random();
    let mut seq = 0u64;
    let mut produced = 0u64;
    let (mut origin, mut origin_count) = (start, 0u64);
    let stopped = || *stop.borrow() || end.is_some_and(|e| Instant::now() >= e);
    loop {
        if stopped() {
            break;
        }
        let mut n = cfg.batch as u64;
        if let Some(limit) = limit {
            if produced >= limit {
                break;
            }
            n = n.min(limit - produced);
        }
        if cfg.rate > 0 {
            let due = origin
                + Duration::from_secs_f64((produced - origin_count) as f64 / cfg.rate as f64);
            let now = Instant::now();
            if now > due + MAX_BURST {
                origin = now;
                origin_count = produced;
            } else {
                while Instant::now() < due {
                    if stopped() {
                        return;
                    }
                    std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
                }
            }
        }
        let mut events = Vec::with_capacity(n as usize);
        let mut truth = Truth::default();
        for _ in 0..n {
            let mut event = world.event(&mut rng);
            event.event_id = format!("{nonce:016x}{seq:016x}");
            seq += 1;
            truth.add(&event);
            events.push(event);
        }
        let batch = Batch {
            id: events[0].event_id.clone(),
            body: Bytes::from(serde_json::to_vec(&events).expect("events serialize")),
            events: n,
            truth,
        };
        add(&counters.sent, n);
        produced += n;
        if let Err(mpsc::error::SendError(batch)) = tx.blocking_send(batch) {
            add(&counters.unsent, batch.events);
            break;
        }
    }
}

enum Outcome {
    Acked {
        duplicate: bool,
    },
    Refused(String),
    Retry(String),
    /// Stopped while waiting to retry.
    Unsent,
}

fn classify(e: PublishError) -> Outcome {
    match e.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::Other => {
            Outcome::Retry(e.to_string())
        }
        _ => Outcome::Refused(e.to_string()),
    }
}

async fn publish_once(
    js: &jetstream::Context,
    subject: &str,
    stream: &str,
    batch: &Batch,
) -> Outcome {
    let message = PublishMessage::build()
        .payload(batch.body.clone())
        .message_id(&batch.id)
        .expected_stream(stream);
    match js.send_publish(subject.to_string(), message).await {
        Ok(ack) => match ack.await {
            Ok(ack) => Outcome::Acked {
                duplicate: ack.duplicate,
            },
            Err(e) => classify(e),
        },
        Err(e) => classify(e),
    }
}

/// Publishes `batch`, after a backoff when `attempt > 0` (unless stopped meanwhile).
async fn publish(
    js: jetstream::Context,
    cfg: Arc<NatsLoadgenConfig>,
    batch: Batch,
    attempt: u32,
    mut stop: watch::Receiver<bool>,
) -> (Batch, u32, Outcome) {
    if attempt > 0 {
        let backoff = Duration::from_millis(100u64 << attempt.min(5));
        let stopped = tokio::select! {
            () = tokio::time::sleep(backoff) => false,
            r = stop.wait_for(|s| *s) => r.is_ok(),
        };
        if stopped || *stop.borrow() {
            return (batch, attempt, Outcome::Unsent);
        }
    }
    let outcome = publish_once(&js, &cfg.subject, &cfg.stream, &batch).await;
    (batch, attempt, outcome)
}

async fn drive(
    cfg: NatsLoadgenConfig,
    js: jetstream::Context,
    mut stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
) -> anyhow::Result<NatsLoadgenReport> {
    let cfg = Arc::new(cfg);
    let seed = cfg.seed;
    let world = Arc::new(
        tokio::task::spawn_blocking(move || DemoWorld::new(seed))
            .await
            .context("building the demo world")?,
    );
    let counters = Arc::new(Counters::default());
    let mut truth = Truth::default();
    let mut first_error: Option<String> = None;
    let start = Instant::now();
    let end = (!cfg.duration.is_zero())
        .then(|| start.checked_add(cfg.duration))
        .flatten();
    let (tx, mut rx) = mpsc::channel::<Batch>(cfg.in_flight.min(64));
    let producer = {
        let (cfg, counters, stop) = (cfg.clone(), counters.clone(), stop.clone());
        tokio::task::spawn_blocking(move || produce(world, &cfg, start, end, tx, stop, &counters))
    };
    let progress = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(start) + PROGRESS_EVERY,
                PROGRESS_EVERY,
            );
            loop {
                tick.tick().await;
                eprintln!(
                    "loadgen {:>5.0}s: sent {} published {} failed {} retries {}",
                    start.elapsed().as_secs_f64(),
                    get(&counters.sent),
                    get(&counters.published),
                    get(&counters.failed),
                    get(&counters.retries),
                );
            }
        })
    };
    let mut deadline: Option<tokio::task::JoinHandle<()>> = None;
    let mut pending = FuturesUnordered::new();
    let mut generating = true;
    loop {
        if !generating && pending.is_empty() {
            break;
        }
        let stopping = *stop.borrow();
        tokio::select! {
            batch = rx.recv(), if generating && !stopping && pending.len() < cfg.in_flight => {
                match batch {
                    Some(batch) => pending.push(publish(js.clone(), cfg.clone(), batch, 0, stop.clone())),
                    None => {
                        generating = false;
                        // Generation is over: queued and retrying messages get the drain
                        // timeout.
                        let stop_tx = stop_tx.clone();
                        deadline = Some(tokio::spawn(async move {
                            tokio::time::sleep(DRAIN_TIMEOUT).await;
                            let _ = stop_tx.send(true);
                        }));
                    }
                }
            }
            Some((batch, attempt, outcome)) = pending.next(), if !pending.is_empty() => {
                match outcome {
                    Outcome::Acked { duplicate } => {
                        add(&counters.published, batch.events);
                        add(&counters.messages, 1);
                        add(&counters.payload_bytes, batch.body.len() as u64);
                        if duplicate {
                            add(&counters.duplicates, 1);
                        }
                        truth.merge(&batch.truth);
                    }
                    Outcome::Refused(e) => {
                        add(&counters.failed, batch.events);
                        if first_error.is_none() {
                            eprintln!("loadgen: the broker refused a message: {e}");
                            first_error = Some(e);
                        }
                    }
                    Outcome::Retry(e) => {
                        add(&counters.retries, 1);
                        if get(&counters.retries).is_power_of_two() {
                            eprintln!("loadgen: publish failed ({} so far), retrying: {e}", get(&counters.retries));
                        }
                        first_error.get_or_insert(e);
                        if *stop.borrow() {
                            add(&counters.unsent, batch.events);
                        } else {
                            pending.push(publish(js.clone(), cfg.clone(), batch, attempt + 1, stop.clone()));
                        }
                    }
                    Outcome::Unsent => add(&counters.unsent, batch.events),
                }
            }
            _ = stop.changed(), if !stopping => {}
            else => {}
        }
        if *stop.borrow() && generating {
            // Stopped while generating: what is still queued is unsent.
            generating = false;
            rx.close();
            while let Some(batch) = rx.recv().await {
                add(&counters.unsent, batch.events);
            }
        }
    }
    if let Some(d) = deadline {
        d.abort();
    }
    progress.abort();
    rx.close();
    while let Some(batch) = rx.recv().await {
        add(&counters.unsent, batch.events);
    }
    producer.await.context("the event generator failed")?;
    let c = &counters;
    let report = NatsLoadgenReport {
        url: cfg.url.clone(),
        subject: cfg.subject.clone(),
        stream: cfg.stream.clone(),
        target_rate: cfg.rate,
        sent: get(&c.sent),
        published: get(&c.published),
        failed: get(&c.failed),
        unsent: get(&c.unsent),
        messages: get(&c.messages),
        retries: get(&c.retries),
        duplicates: get(&c.duplicates),
        payload_bytes: get(&c.payload_bytes),
        elapsed: start.elapsed(),
        first_error,
        truth,
    };
    debug_assert_eq!(
        report.sent,
        report.published + report.failed + report.unsent,
        "every event is accounted for"
    );
    Ok(report)
}
