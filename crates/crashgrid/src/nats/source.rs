//! The source's tasks: connect, pull, parse and submit, acknowledge, dead-letter, sample the
//! backlog. See the parent module for the semantics.
//!
//! ```text
//!  fetcher ──messages──▶ processor ──events──▶ Node ──callback (worker thread)──┐
//!  (pull requests,         │ parse off the runtime, dedup claim,                 │
//!   only while the node    │ submit_with_ack                                     ▼
//!   has room)              └──poison──▶ dead-letterer ──term/nak──▶ acker ◀── accepted(token)
//!                                                                    │ +ACK/+NAK/+TERM,
//!  sampler: consumer info + direct get, once a second → watch        │ +WPI lease extension
//! ```
//!
//! The acker is the only task that answers the broker; everything else hands it commands over
//! an unbounded channel (the node's ack callback runs on a worker thread and must not block).
//! Acks are plain publishes on the client's connection: they are pipelined and batched by the
//! client's writer, never awaited one by one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream, AckKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use symbolicate::{CrashEvent, EventError};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    register, Claim, EventIdDedup, NatsBacklog, NatsConfig, NatsCounters, Registered, SeenEvents,
};
use crate::loadgen::{jittered, sleep_unless_stopped};
use crate::node::Node;

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait for in-flight messages to be acknowledged when the source stops.
const STOP_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for room in the node's queue before a leased message is nak'ed.
const OVERLOAD_WAIT: Duration = Duration::from_secs(2);
/// Longest reason text in a dead-letter header.
const MAX_REASON_BYTES: usize = 1024;

/// A message delivered to this pod and not yet answered (acked, nak'ed or terminated). Its
/// lease is extended while it is held: waiting in the pipeline, in the node, for the
/// dead-letter publish.
struct InFlight {
    reply: Subject,
    stream_sequence: u64,
    since: Instant,
    extended: Instant,
}

/// What the acker is asked to do.
enum AckCmd {
    /// Answer held message `token` (and stop holding it).
    Answer(u64, AckKind),
    /// Answered once every earlier command is handled and written to the connection.
    Flush(oneshot::Sender<()>),
    /// Stop after the commands before it.
    Close,
}

/// A poison message on its way to the dead-letter subject.
struct DeadLetter {
    token: u64,
    message: async_nats::Message,
    stream_sequence: u64,
    delivered: i64,
    /// `invalid_json`, `invalid_event` or `too_large`.
    code: &'static str,
    error: EventError,
}

struct Shared {
    config: NatsConfig,
    node: Node,
    counters: Arc<NatsCounters>,
    seen: Arc<dyn SeenEvents>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_token: AtomicU64,
    /// Exponentially weighted average of events per message, ×16 (0: none seen yet).
    events_per_message_x16: AtomicU64,
    /// Events submitted by this source and not yet acknowledged by the node.
    unacked_events: Arc<AtomicU64>,
    connected: AtomicBool,
    backlog: watch::Sender<NatsBacklog>,
}

impl Shared {
    /// An estimate of the node's queue occupancy: events admitted and not yet processed
    /// (HTTP traffic included), or — when larger — the events this source submitted and the
    /// node has not yet acknowledged (processed events hold their place in the queue until
    /// their statistics are accepted for good).
    fn occupancy(&self) -> u64 {
        let m = self.node.metrics();
        let queued = m.accepted.get().saturating_sub(m.processed.get());
        queued.max(self.unacked_events.load(Ordering::Relaxed))
    }

    /// Holds a delivered message (its lease is extended from now on); returns its token.
    fn hold(&self, reply: Subject, stream_sequence: u64) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut map = self.in_flight.lock();
        map.insert(
            token,
            InFlight {
                reply,
                stream_sequence,
                since: now,
                extended: now,
            },
        );
        self.counters.set_in_flight(map.len());
        token
    }

    fn release(&self, token: u64) -> Option<InFlight> {
        let mut map = self.in_flight.lock();
        let entry = map.remove(&token);
        self.counters.set_in_flight(map.len());
        entry
    }

    fn send(&self, tx: &mpsc::UnboundedSender<AckCmd>, cmd: AckCmd) {
        if tx.send(cmd).is_err() {
            self.counters.ack_errors.inc();
        }
    }

    fn answer(&self, tx: &mpsc::UnboundedSender<AckCmd>, token: u64, kind: AckKind) {
        self.send(tx, AckCmd::Answer(token, kind));
    }

    fn nak(
        &self,
        tx: &mpsc::UnboundedSender<AckCmd>,
        token: u64,
        reason: &str,
        d: Option<Duration>,
    ) {
        self.counters.naks.add(reason, 1);
        self.answer(tx, token, AckKind::Nak(d));
    }

    /// Publishes the backlog with the local figures refreshed (and the broker's, if given).
    fn publish_backlog(&self, sample: Option<ConsumerBacklog>) {
        let connected = self.connected.load(Ordering::Acquire);
        let in_flight = self.in_flight.lock().len() as u64;
        let redelivered = self.counters.redelivered.get();
        self.backlog.send_modify(|b| {
            b.connected = connected;
            b.in_flight = in_flight;
            b.redelivered = redelivered;
            if let Some(s) = sample {
                b.sampled = true;
                b.unacked = s.unacked;
                b.pending = s.pending;
                b.ack_pending = s.ack_pending;
                b.oldest_unacked_age_ms = s.oldest_unacked_age_ms;
                b.consumer_redelivered = s.consumer_redelivered;
                b.sampled_at_ms = unix_ms();
            }
        });
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running NATS source. Dropping it asks the source to stop (it then finishes in the
/// background); [`stop`](Self::stop) also waits until it has.
pub struct NatsSource {
    registered: Arc<Registered>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("backlog", &*self.registered.backlog.borrow())
            .finish_non_exhaustive()
    }
}

impl NatsSource {
    /// Starts the source for `node` with the local [`EventIdDedup`] (on the node's clock).
    /// Fails only on an invalid configuration: the broker being unreachable is retried in the
    /// background. Must be called within a Tokio runtime.
    pub fn spawn(node: Node, config: NatsConfig) -> anyhow::Result<Self> {
        let seen = Arc::new(EventIdDedup::new(
            config.dedup_capacity,
            config.dedup_ttl,
            node.clock().clone(),
        ));
        Self::spawn_with(node, config, seen)
    }

    /// Like [`spawn`](Self::spawn) with another set of seen events (e.g. a cluster-wide one).
    pub fn spawn_with(
        node: Node,
        config: NatsConfig,
        seen: Arc<dyn SeenEvents>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let (backlog_tx, backlog_rx) = watch::channel(NatsBacklog::default());
        let counters = Arc::new(NatsCounters::default());
        let registered = Arc::new(Registered {
            backlog: backlog_rx,
            counters: counters.clone(),
            seen: seen.clone(),
            alive: Arc::new(AtomicBool::new(true)),
        });
        register(node.id(), &registered);
        let shared = Arc::new(Shared {
            config,
            node,
            counters,
            seen,
            in_flight: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            events_per_message_x16: AtomicU64::new(0),
            unacked_events: Arc::new(AtomicU64::new(0)),
            connected: AtomicBool::new(false),
            backlog: backlog_tx,
        });
        let (stop, stop_rx) = watch::channel(false);
        let alive = registered.alive.clone();
        let task = tokio::spawn(async move {
            run(shared.clone(), stop_rx).await;
            shared.connected.store(false, Ordering::Release);
            shared.publish_backlog(None);
            alive.store(false, Ordering::Release);
        });
        Ok(Self {
            registered,
            stop,
            task: Some(task),
        })
    }

    /// The backlog figures, refreshed about once a second.
    pub fn backlog(&self) -> watch::Receiver<NatsBacklog> {
        self.registered.backlog.clone()
    }

    /// The source's counters.
    pub fn counters(&self) -> &Arc<NatsCounters> {
        &self.registered.counters
    }

    /// Stops pulling now: the current pull is finished and what it still delivers is nak'ed
    /// for the other pods. Submitted messages keep their leases and are acknowledged as the
    /// node acknowledges their events (shutting the node down and flushing its statistics
    /// does that); [`stop`](Self::stop) waits for them.
    pub fn stop_pulling(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops pulling, waits (at most 30 s, leases extended meanwhile) until every submitted
    /// message is acknowledged — so the node must go on acknowledging: either still running,
    /// or shutting down and flushing its statistics concurrently — then sends the last acks
    /// and closes the connection. Messages still unacknowledged then are redelivered by the
    /// broker after `ack_wait`.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for NatsSource {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Runs the source for `node` until `shutdown` resolves, then stops it gracefully (see
/// [`NatsSource::stop`]). Fails only on an invalid configuration.
pub async fn run_source(
    node: Node,
    config: NatsConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let source = NatsSource::spawn(node, config)?;
    shutdown.await;
    source.stop().await;
    Ok(())
}

/// [`run_source`] with another set of seen events (a cluster's [`ClusterSeenEvents`]).
///
/// [`ClusterSeenEvents`]: super::ClusterSeenEvents
pub async fn run_source_with(
    node: Node,
    config: NatsConfig,
    seen: Arc<dyn SeenEvents>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let source = NatsSource::spawn_with(node, config, seen)?;
    shutdown.await;
    source.stop().await;
    Ok(())
}

async fn connect(
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
) -> Option<async_nats::Client> {
    let urls: Vec<String> = shared
        .config
        .url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let events = shared.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("crashgrid {}", shared.node.id()))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                // Quick first retries (a broker restart takes a second or two), then at most
                // every 2 s.
                Duration::from_millis((50u64 << attempts.min(6)).min(2000))
            })
            .event_callback(move |event| {
                let shared = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connection (re)established");
                            shared.connected.store(true, Ordering::Release);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; reconnecting");
                            shared.connected.store(false, Ordering::Release);
                        }
                        other => tracing::warn!(event = %other, "NATS client event"),
                    }
                    shared.publish_backlog(None);
                }
            });
        let attempt = tokio::select! {
            r = options.connect(urls.as_slice()) => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        match attempt? {
            Ok(client) => {
                tracing::info!(url = %shared.config.url, "connected to NATS");
                shared.connected.store(true, Ordering::Release);
                shared.publish_backlog(None);
                return Some(client);
            }
            Err(e) => {
                tracing::warn!(url = %shared.config.url, error = %e, "cannot connect to NATS; retrying");
                if !sleep_unless_stopped(jittered(&mut backoff), stop).await {
                    return None;
                }
            }
        }
    }
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(client) = connect(&shared, &mut stop).await else {
        return;
    };
    let js = jetstream::new(client.clone());
    let batch = shared.config.batch;
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<AckCmd>();
    let (msg_tx, msg_rx) = mpsc::channel::<(u64, jetstream::Message)>(2 * batch);
    let (dlq_tx, dlq_rx) = mpsc::channel::<DeadLetter>(256);
    let acker = tokio::spawn(acker(shared.clone(), client.clone(), ack_rx));
    let processor = tokio::spawn(processor(
        shared.clone(),
        msg_rx,
        ack_tx.clone(),
        dlq_tx,
        stop.clone(),
    ));
    let dead_letters = tokio::spawn(dead_letterer(
        shared.clone(),
        js.clone(),
        dlq_rx,
        ack_tx.clone(),
    ));
    let sampler = tokio::spawn(sampler(shared.clone(), js.clone()));

    fetch_loop(&shared, &js, msg_tx, &mut stop).await;

    // Stopping: messages pulled and not yet submitted were nak'ed (for the other pods); the
    // submitted ones are acknowledged as the node acknowledges their events (it processes its
    // queue and flushes its statistics while shutting down).
    let _ = processor.await;
    let _ = dead_letters.await;
    // Leases are still extended meanwhile, so waiting longer than ack_wait is safe.
    let deadline = Instant::now() + STOP_ACK_TIMEOUT;
    while !shared.in_flight.lock().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.in_flight.lock().len();
    if left > 0 {
        tracing::warn!(
            messages = left,
            "NATS source stopping with unacknowledged messages; the broker redelivers them"
        );
    }
    let (flushed_tx, flushed_rx) = oneshot::channel();
    shared.send(&ack_tx, AckCmd::Flush(flushed_tx));
    let _ = tokio::time::timeout(Duration::from_secs(5), flushed_rx).await;
    shared.send(&ack_tx, AckCmd::Close);
    let _ = acker.await;
    sampler.abort();
    let _ = sampler.await;
    shared.publish_backlog(None);
    tracing::info!(acked = shared.counters.acked.get(), "NATS source stopped");
}

/// Creates what is missing (the consumer always; the streams when configured to) and returns
/// the shared durable pull consumer.
async fn ensure_consumer(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<PullConsumer> {
    let stream = if config.create_stream {
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![config.subject.clone()],
                // Like a Pub/Sub subscription: a message is gone once acknowledged.
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await?;
        js.get_or_create_stream(stream::Config {
            name: config.dead_letter_stream(),
            subjects: vec![config.dead_letter_subject.clone()],
            storage: stream::StorageType::File,
            allow_direct: true,
            ..Default::default()
        })
        .await?;
        stream
    } else {
        js.get_stream(&config.stream).await?
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            &config.consumer,
            pull::Config {
                durable_name: Some(config.consumer.clone()),
                description: Some("crashgrid pods (competing consumers)".to_string()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending as i64,
                filter_subject: config.subject.clone(),
                ..Default::default()
            },
        )
        .await?;
    let existing = &consumer.cached_info().config;
    if existing.ack_wait != config.ack_wait
        || existing.max_ack_pending != config.max_ack_pending as i64
        || existing.filter_subject != config.subject
    {
        tracing::warn!(
            consumer = %config.consumer,
            ack_wait = ?existing.ack_wait,
            max_ack_pending = existing.max_ack_pending,
            filter_subject = %existing.filter_subject,
            "the durable consumer exists with other settings; keeping them"
        );
    }
    Ok(consumer)
}

/// Waits until the node's queue is less than half full, then returns how many messages to
/// ask for: the free half's worth at the average events per message, within `1..=batch`.
/// `None` when stopped meanwhile.
async fn wait_for_room(shared: &Shared, stop: &watch::Receiver<bool>) -> Option<usize> {
    let capacity = shared.node.config().queue_capacity as u64;
    loop {
        if *stop.borrow() {
            return None;
        }
        let queued = shared.occupancy();
        if queued * 2 < capacity {
            let room = capacity / 2 - queued;
            let per_message = shared
                .events_per_message_x16
                .load(Ordering::Relaxed)
                .max(16);
            let n = (room * 16 / per_message).clamp(1, shared.config.batch as u64);
            return Some(n as usize);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn fetch_loop(
    shared: &Arc<Shared>,
    js: &jetstream::Context,
    messages: mpsc::Sender<(u64, jetstream::Message)>,
    stop: &mut watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut consumer: Option<PullConsumer> = None;
    let mut backoff = INITIAL_BACKOFF;
    while !*stop.borrow() {
        let current = match &consumer {
            Some(c) => c.clone(),
            None => match ensure_consumer(js, config).await {
                Ok(c) => {
                    tracing::info!(stream = %config.stream, consumer = %config.consumer, filter = %config.subject, "pulling from the NATS consumer");
                    // The figures before the first pull: what the subscription owed at start.
                    if let Ok(sample) = sample_backlog(js, config).await {
                        shared.publish_backlog(Some(sample));
                    }
                    consumer = Some(c.clone());
                    c
                }
                Err(e) => {
                    shared.counters.fetch_errors.inc();
                    tracing::warn!(error = %e, stream = %config.stream, consumer = %config.consumer, "cannot bind the NATS consumer; retrying");
                    if !sleep_unless_stopped(jittered(&mut backoff), stop).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let Some(wanted) = wait_for_room(shared, stop).await else {
            break;
        };
        let pull = current
            .batch()
            .max_messages(wanted)
            .expires(config.fetch_expiry)
            .messages()
            .await;
        let mut batch = match pull {
            Ok(b) => b,
            Err(e) => {
                shared.counters.fetch_errors.inc();
                tracing::warn!(error = %e, "NATS pull request failed; retrying");
                consumer = None;
                if !sleep_unless_stopped(jittered(&mut backoff), stop).await {
                    break;
                }
                continue;
            }
        };
        // The pull is finished even when stopping (it ends within the fetch expiry): what it
        // still delivers is given back at once (nak) rather than left to time out.
        let mut failed = None;
        while let Some(item) = batch.next().await {
            match item {
                Ok(message) => {
                    let Some(reply) = message.message.reply.clone() else {
                        tracing::warn!(subject = %message.message.subject, "a NATS message without a reply subject; ignored");
                        continue;
                    };
                    let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let token = shared.hold(reply, seq);
                    if messages.send((token, message)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => backoff = INITIAL_BACKOFF,
            Some(e) => {
                shared.counters.fetch_errors.inc();
                tracing::warn!(error = %e, "NATS pull ended with an error; retrying");
                consumer = None;
                if !sleep_unless_stopped(jittered(&mut backoff), stop).await {
                    break;
                }
            }
        }
    }
}

async fn processor(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(u64, jetstream::Message)>,
    acks: mpsc::UnboundedSender<AckCmd>,
    dead_letters: mpsc::Sender<DeadLetter>,
    stop: watch::Receiver<bool>,
) {
    let limit = shared.config.batch.max(64);
    let mut chunk = Vec::with_capacity(limit);
    while rx.recv_many(&mut chunk, limit).await > 0 {
        let messages = std::mem::take(&mut chunk);
        if *stop.borrow() {
            // Stopping: the node may be shutting down. Give these back at once, for the
            // other pods (the last pull's messages, and what was waiting to be parsed).
            for (token, _) in messages {
                shared.counters.received.inc();
                shared.nak(&acks, token, "stopping", None);
            }
            continue;
        }
        // Parsing and validation are CPU work proportional to the payloads: off the runtime.
        let parsed = tokio::task::spawn_blocking(move || {
            messages
                .into_iter()
                .map(|(token, m)| {
                    let events = CrashEvent::parse_batch(&m.message.payload);
                    (token, m, events)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(parsed) = parsed else {
            // A panic while parsing: the messages are dropped unanswered and redelivered.
            tracing::error!("parsing NATS messages panicked");
            continue;
        };
        for (token, message, events) in parsed {
            handle(&shared, token, message, events, &acks, &dead_letters).await;
        }
    }
}

async fn handle(
    shared: &Arc<Shared>,
    token: u64,
    message: jetstream::Message,
    events: Result<Vec<CrashEvent>, EventError>,
    acks: &mpsc::UnboundedSender<AckCmd>,
    dead_letters: &mpsc::Sender<DeadLetter>,
) {
    let c = &shared.counters;
    c.received.inc();
    let (stream_sequence, delivered) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    if delivered > 1 {
        c.redelivered.inc();
    }
    let events = match events {
        Ok(events) => events,
        Err(error) => {
            let letter = DeadLetter {
                token,
                message: message.message,
                stream_sequence,
                delivered,
                code: if error.is_syntax() {
                    "invalid_json"
                } else {
                    "invalid_event"
                },
                error,
            };
            if let Err(mpsc::error::SendError(letter)) = dead_letters.send(letter).await {
                shared.nak(acks, letter.token, "stopping", None);
            }
            return;
        }
    };
    c.events_received.add(events.len() as u64);
    // Average events per message (×16, exponentially weighted), for sizing pulls.
    let avg = shared.events_per_message_x16.load(Ordering::Relaxed);
    let sample = events.len() as u64 * 16;
    shared.events_per_message_x16.store(
        if avg == 0 {
            sample
        } else {
            (avg * 7 + sample) / 8
        },
        Ordering::Relaxed,
    );
    let capacity = shared.node.config().queue_capacity;
    if events.len() > capacity {
        // Could never be admitted whole: a permanent failure, like a poison message.
        let error = EventError {
            field: "$".to_string(),
            problem: format!(
                "the message holds {} events, more than the ingest queue admits at once ({capacity})",
                events.len()
            ),
        };
        let letter = DeadLetter {
            token,
            message: message.message,
            stream_sequence,
            delivered,
            code: "too_large",
            error,
        };
        if let Err(mpsc::error::SendError(letter)) = dead_letters.send(letter).await {
            shared.nak(acks, letter.token, "stopping", None);
        }
        return;
    }
    let claim = {
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        shared.seen.claim(&ids).await
    };
    let fresh = match claim {
        Claim::Busy => {
            // A copy of a message whose first copy is still being processed here.
            tracing::debug!(
                stream_sequence,
                delivered,
                "copy of an in-flight message; nak"
            );
            shared.nak(acks, token, "in_flight", Some(shared.config.nak_delay));
            return;
        }
        Claim::Claimed { fresh } => fresh,
    };
    let total = events.len();
    let events: Vec<CrashEvent> = events
        .into_iter()
        .zip(fresh)
        .filter_map(|(e, fresh)| fresh.then_some(e))
        .collect();
    c.duplicate_events.add((total - events.len()) as u64);
    if events.is_empty() {
        // Every event was accepted before: the first copy's ack was lost. Acknowledge again.
        shared.answer(acks, token, AckKind::Ack);
        return;
    }
    // The pull was sized to fit, but HTTP traffic shares the queue: wait a little for room
    // rather than nak a message already leased to this pod.
    let n = events.len() as u64;
    let deadline = Instant::now() + OVERLOAD_WAIT;
    while shared.occupancy() + n > capacity as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let on_ack = {
        let seen = shared.seen.clone();
        let ids = ids.clone();
        let acks = acks.clone();
        let unacked = shared.unacked_events.clone();
        let owner = shared.clone();
        // Runs on a node thread once the events are counted for good (ack), or once their
        // statistics left the window uncounted (nak: a redelivery counts them late rather
        // than never).
        Box::new(move |outcome: crate::node::Outcome| {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            unacked.fetch_sub(refs.len() as u64, Ordering::Relaxed);
            if outcome == crate::node::Outcome::Counted {
                seen.accept(&refs);
                let _ = acks.send(AckCmd::Answer(token, AckKind::Ack));
            } else {
                seen.release(&refs);
                owner.nak(&acks, token, "expired_uncounted", None);
            }
        })
    };
    shared.unacked_events.fetch_add(n, Ordering::Relaxed);
    match shared.node.submit_with_ack(events, on_ack) {
        Ok(_) => c.events_submitted.add(n),
        Err(overloaded) => {
            shared.unacked_events.fetch_sub(n, Ordering::Relaxed);
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            shared.seen.release(&refs);
            shared.nak(
                acks,
                token,
                "overloaded",
                Some(overloaded.retry_after.max(shared.config.nak_delay)),
            );
        }
    }
}

/// Header values must be one line of printable text.
fn header_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

async fn dead_letterer(
    shared: Arc<Shared>,
    js: jetstream::Context,
    mut rx: mpsc::Receiver<DeadLetter>,
    acks: mpsc::UnboundedSender<AckCmd>,
) {
    let config = &shared.config;
    let mut warned_unstored = false;
    while let Some(letter) = rx.recv().await {
        let code = letter.code;
        let reason = header_text(&letter.error.to_string());
        tracing::warn!(
            stream_sequence = letter.stream_sequence,
            subject = %letter.message.subject,
            delivered = letter.delivered,
            code,
            reason = %reason,
            "poison NATS message: dead-lettering and terminating it"
        );
        let mut headers = HeaderMap::new();
        if let Some(original) = &letter.message.headers {
            for (name, values) in original.iter() {
                // Broker directives (message id, expectations) are not carried over.
                if AsRef::<str>::as_ref(name)
                    .to_ascii_lowercase()
                    .starts_with("nats-")
                {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert("Crashgrid-Dlq-Reason", reason.as_str());
        headers.insert("Crashgrid-Dlq-Code", code);
        headers.insert("Crashgrid-Dlq-Stream", config.stream.as_str());
        headers.insert("Crashgrid-Dlq-Consumer", config.consumer.as_str());
        headers.insert(
            "Crashgrid-Dlq-Stream-Sequence",
            letter.stream_sequence.to_string(),
        );
        headers.insert(
            "Crashgrid-Dlq-Subject",
            header_text(letter.message.subject.as_str()),
        );
        headers.insert("Crashgrid-Dlq-Delivered", letter.delivered.to_string());
        headers.insert("Crashgrid-Dlq-Node", header_text(shared.node.id()));
        let payload: Bytes = letter.message.payload.clone();
        let stored = match js
            .publish_with_headers(
                config.dead_letter_subject.clone(),
                headers.clone(),
                payload.clone(),
            )
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        let delivered = match stored {
            Ok(()) => true,
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                // No stream stores the dead-letter subject: still publish it (live subscribers
                // get it) and terminate, so that poison never blocks the consumer.
                if !warned_unstored {
                    warned_unstored = true;
                    tracing::warn!(
                        subject = %config.dead_letter_subject,
                        "no JetStream stream stores the dead-letter subject; dead letters are published without persistence"
                    );
                }
                js.client()
                    .publish_with_headers(config.dead_letter_subject.clone(), headers, payload)
                    .await
                    .is_ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, stream_sequence = letter.stream_sequence, "dead-letter publish failed; the message is nak'ed and retried");
                false
            }
        };
        if delivered {
            shared.counters.dead_lettered.inc();
            shared.answer(&acks, letter.token, AckKind::Term);
        } else {
            shared.counters.dead_letter_errors.inc();
            shared.nak(
                &acks,
                letter.token,
                "dead_letter_failed",
                Some(config.nak_delay),
            );
        }
    }
}

async fn acker(
    shared: Arc<Shared>,
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<AckCmd>,
) {
    let c = &shared.counters;
    // Leases are extended every third of ack_wait, so two extensions may be lost before the
    // broker redelivers. A message is held at most as long as its ids are remembered.
    let period = shared.config.ack_wait / 3;
    let max_hold = shared.config.dedup_ttl;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(1024);
    let send = |reply: Subject, kind: AckKind| {
        let client = client.clone();
        async move {
            match client.publish(reply, Bytes::from(kind)).await {
                Ok(()) => {
                    match kind {
                        AckKind::Ack => c.acked.inc(),
                        AckKind::Term => c.terminated.inc(),
                        AckKind::Progress => c.lease_extensions.inc(),
                        _ => {}
                    }
                    true
                }
                Err(e) => {
                    c.ack_errors.inc();
                    tracing::debug!(error = %e, "cannot send an ack; the broker will redeliver");
                    false
                }
            }
        }
    };
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, 1024) => {
                if n == 0 {
                    return;
                }
                for cmd in buf.drain(..) {
                    match cmd {
                        AckCmd::Answer(token, kind) => {
                            // Absent when held too long (then left to redelivery).
                            if let Some(entry) = shared.release(token) {
                                send(entry.reply, kind).await;
                            }
                        }
                        AckCmd::Flush(done) => {
                            let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
                            let _ = done.send(());
                        }
                        AckCmd::Close => return,
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let mut extend = Vec::new();
                {
                let mut held = shared.in_flight.lock();
                held.retain(|_, m| {
                    if now.duration_since(m.since) >= max_hold {
                        tracing::warn!(stream_sequence = m.stream_sequence, "a NATS message was held too long; its lease is no longer extended");
                        return false;
                    }
                    if now.duration_since(m.extended) >= period {
                        m.extended = now;
                        extend.push(m.reply.clone());
                    }
                    true
                });
                c.set_in_flight(held.len());
                }
                for reply in extend {
                    send(reply, AckKind::Progress).await;
                }
            }
        }
    }
}

/// The broker's view of the consumer's backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConsumerBacklog {
    /// `pending + ack_pending`.
    pub unacked: u64,
    /// Messages not yet delivered (`num_pending`).
    pub pending: u64,
    /// Messages delivered and not yet acknowledged (`num_ack_pending`).
    pub ack_pending: u64,
    /// Now minus the publish time of the first message after the ack floor, milliseconds;
    /// 0 when nothing is unacknowledged.
    pub oldest_unacked_age_ms: u64,
    /// Unacknowledged messages delivered more than once (`num_redelivered`).
    pub consumer_redelivered: u64,
}

/// Reads the consumer's backlog from the broker: consumer info, then (when something is
/// unacknowledged) the first message at or after `ack_floor.stream_sequence + 1` matching the
/// consumer's filter, by direct get when the stream allows it (else the stream leader's
/// message get), for its publish time.
pub async fn sample_backlog(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<ConsumerBacklog> {
    let stream = js.get_stream(&config.stream).await?;
    sample_stream(&stream, config).await
}

async fn sample_stream(
    stream: &stream::Stream,
    config: &NatsConfig,
) -> anyhow::Result<ConsumerBacklog> {
    let info = stream.consumer_info(&config.consumer).await?;
    let pending = info.num_pending;
    let ack_pending = info.num_ack_pending as u64;
    let unacked = pending + ack_pending;
    let mut oldest_unacked_age_ms = 0;
    if unacked > 0 {
        let start = info.ack_floor.stream_sequence + 1;
        let filter = if info.config.filter_subject.is_empty() {
            ">".to_string()
        } else {
            info.config.filter_subject.clone()
        };
        let published_ns = if stream.cached_info().config.allow_direct {
            stream
                .direct_get_next_for_subject(filter, Some(start))
                .await
                .map(|m| m.time.unix_timestamp_nanos())
                .map_err(anyhow::Error::from)
        } else {
            stream
                .raw_message_builder()
                .sequence(start)
                .next_by_subject(filter)
                .send()
                .await
                .map(|m| m.time.unix_timestamp_nanos())
                .map_err(anyhow::Error::from)
        };
        match published_ns {
            Ok(ns) => {
                let published_ms = (ns / 1_000_000).max(0) as u64;
                oldest_unacked_age_ms = unix_ms().saturating_sub(published_ms);
            }
            // Acknowledged (and removed) between the two requests: nothing older is left.
            Err(e) => tracing::debug!(error = %e, start, "no message after the ack floor"),
        }
    }
    Ok(ConsumerBacklog {
        unacked,
        pending,
        ack_pending,
        oldest_unacked_age_ms,
        consumer_redelivered: info.num_redelivered as u64,
    })
}

async fn sampler(shared: Arc<Shared>, js: jetstream::Context) {
    let mut tick = tokio::time::interval(shared.config.backlog_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream: Option<stream::Stream> = None;
    let mut failures = 0u64;
    loop {
        tick.tick().await;
        if stream.is_none() {
            stream = js.get_stream(&shared.config.stream).await.ok();
        }
        let sample = match &stream {
            Some(s) => sample_stream(s, &shared.config).await,
            None => Err(anyhow::anyhow!("stream {} not found", shared.config.stream)),
        };
        match sample {
            Ok(sample) => {
                failures = 0;
                shared.publish_backlog(Some(sample));
            }
            Err(e) => {
                failures += 1;
                stream = None;
                if failures.is_power_of_two() {
                    tracing::debug!(error = %e, failures, "cannot read the NATS consumer's backlog");
                }
                shared.publish_backlog(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_is_one_bounded_line() {
        assert_eq!(header_text("a\nb\r\tc"), "a b  c");
        let long = "é".repeat(1000);
        let t = header_text(&long);
        assert!(t.len() <= MAX_REASON_BYTES && t.is_char_boundary(t.len()));
    }
}
