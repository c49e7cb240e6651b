//! A Pub/Sub-style source: every pod pulls crash messages from ONE durable NATS JetStream pull
//! consumer (competing consumers), the way the original system shared one Google Cloud Pub/Sub
//! subscription.
//!
//! # Semantics
//!
//! - **Competing consumers.** All pods bind the same durable consumer (`--nats-consumer`) on the
//!   same stream; the broker hands each message to one of the pods' pull requests. A pod pulls
//!   in batches (`--nats-batch`) and only while its ingest queue is less than half full, so a
//!   busy pod leaves messages to the others instead of hoarding them.
//! - **Message body.** One crash event JSON object or a JSON array of events, exactly what
//!   `POST /api/v1/crashes` takes (docs/event-format.md; plain JSON, no gzip); a message is
//!   accepted whole or not at all, like a request.
//! - **Ack on acceptance.** A message is acknowledged only when every event in it is counted
//!   for good ([`Node::submit_with_ack`]'s callback). Until then its lease is extended
//!   (`+WPI`, in progress) every third of `ack_wait`, so a slow pod does not see its messages
//!   redelivered elsewhere; a pod that dies stops extending and the broker redelivers its
//!   unacknowledged messages to the others after `ack_wait`.
//! - **Poison messages** (not JSON, or not a valid event) are published with their original
//!   payload and headers plus `Crashgrid-Dlq-*` headers (reason, stream, consumer, stream
//!   sequence, subject, delivery count) to the dead-letter subject, then terminated
//!   (`+TERM`): the broker never redelivers them and they never block the consumer.
//! - **Overload.** The pod stops pulling while its ingest queue is half full, and sizes each
//!   pull to the free half at the average events per message: a busy pod leaves the backlog
//!   in the broker, where the other pods (and the backlog figures) see it. A message that
//!   still does not fit (HTTP traffic shares the queue) waits up to 2 s for room; if the node
//!   still refuses it, it is nak'ed with the node's `Retry-After` as delay, so it goes back to
//!   the consumer for any pod instead of holding an ack slot. A message with more events than
//!   the queue's capacity could never be admitted whole: it is dead-lettered (`too_large`).
//! - **Redelivery and duplicates.** Event ids submitted within the last 5 minutes are
//!   remembered ([`EventIdDedup`] behind the [`SeenEvents`] trait). A redelivered message whose
//!   events were all accepted is just acknowledged again; one whose first copy is still being
//!   processed is nak'ed with a short delay (counting it now could double-count, acknowledging
//!   it now could lose it if the first copy is lost). In a cluster the set is shared
//!   ([`ClusterSeenEvents`]: the local set in front of a grid of event ids), so a copy
//!   redelivered to another pod is recognised too.
//! - **Broker restarts.** The client reconnects by itself; the pull loop logs, backs off and
//!   retries. Acks that could not be delivered are not retried: the broker redelivers those
//!   messages after `ack_wait` and the dedup set recognises them.
//!
//! # Backlog figures
//!
//! About once a second the source reads the consumer's state ([`NatsBacklog`], on a `watch`
//! channel and as `crashgrid_nats_*` gauges): *unacked* = `num_pending + num_ack_pending`
//! (published and not yet delivered, plus delivered and not yet acknowledged: everything the
//! subscription still owes); *oldest unacked age* = now − publish time of the first message at
//! or after `ack_floor.stream_sequence + 1` that matches the consumer's filter (a direct get;
//! gaps left by deleted or filtered-out messages are skipped); *redelivered* = messages this
//! pod received with a delivery count above one.
//!
//! # Using it
//!
//! `crashgrid serve --nats-url nats://...` starts the source with the node ([`run_source`]);
//! [`NatsSource`] is the handle form. [`backlog_of`] returns the backlog channel of the source
//! running for a node id, and [`render_registered`] appends its metrics to `/metrics`.

mod cluster_dedup;
pub mod dedup;
mod source;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

pub use cluster_dedup::{Accepted, ClusterSeenEvents, EventGrid, EVENT_GRID_NAME};
pub use dedup::{Claim, ClaimFuture, EventIdDedup, SeenEvents};
pub use source::{run_source, run_source_with, sample_backlog, ConsumerBacklog, NatsSource};

use crate::metrics::{Counter, Exposition, LabeledCounter};

#[cfg(doc)]
use crate::node::Node;

/// Settings of the NATS JetStream source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated, e.g. `nats://nats.crashgrid.svc:4222`.
    pub url: String,
    /// The stream holding crash messages.
    pub stream: String,
    /// The consumer's filter subject (wildcards allowed); also the stream's subject when the
    /// source creates the stream.
    pub subject: String,
    /// The durable pull consumer every pod shares.
    pub consumer: String,
    /// How long a delivered message may stay unacknowledged before the broker redelivers it.
    pub ack_wait: Duration,
    /// Most messages delivered and not yet acknowledged, over all pods.
    pub max_ack_pending: usize,
    /// Messages asked for in one pull request.
    pub batch: usize,
    /// How long one pull request waits on the broker for messages.
    pub fetch_expiry: Duration,
    /// Where poison messages are published (a subject the consumer's filter must not match).
    pub dead_letter_subject: String,
    /// Create the stream (and a `<stream>_DLQ` stream for the dead-letter subject) when
    /// missing, and the consumer. For development and tests; production streams are managed
    /// by the operator. The consumer is created when missing in any case.
    pub create_stream: bool,
    /// Most event ids remembered for recognising redeliveries.
    pub dedup_capacity: usize,
    /// How long an event id is remembered.
    pub dedup_ttl: Duration,
    /// Delay of a nak: for a copy of a message still in flight, or a batch the node refused.
    pub nak_delay: Duration,
    /// Period of the backlog figures.
    pub backlog_interval: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_string(),
            stream: "CRASHES".to_string(),
            subject: "crashes.>".to_string(),
            consumer: "crashgrid".to_string(),
            // Pub/Sub's longest usual deadline is 10 min, its default 10 s; 30 s is a few
            // times the worst queueing delay of a pod at its queue bound (20,000 events at a
            // few thousand per second), and leases are extended while a message is processed,
            // so it only decides how soon a dead pod's messages go to the others.
            ack_wait: Duration::from_secs(30),
            // Bounds what the broker hands out before acks come back, over all pods: with
            // batches of tens of events per message that is a few hundred thousand events,
            // far above what the pods' queues (20,000 events each) admit, so it never
            // throttles healthy pods but stops a broken fleet from leasing the whole stream.
            max_ack_pending: 10_000,
            // The broker's largest batch per pull request for pull consumers (256): fewer
            // round trips under load; a pull returns as soon as any messages are there.
            batch: 256,
            // An idle pod re-asks every 2 s: cheap, and quick to notice a broken connection.
            fetch_expiry: Duration::from_secs(2),
            // Outside `crashes.>`, so poison never flows back into the consumer.
            dead_letter_subject: "crashgrid.dlq".to_string(),
            create_stream: false,
            // Five minutes at ~3,300 events/s per pod; ~60 MiB at the bound.
            dedup_capacity: 1_000_000,
            // The live window: a redelivery later than this is outside the statistics anyway.
            dedup_ttl: Duration::from_secs(300),
            // The node's Retry-After, and a first copy in flight is usually accepted by then.
            nak_delay: Duration::from_secs(1),
            backlog_interval: Duration::from_secs(1),
        }
    }
}

/// Whether NATS subject `pattern` (with `*` and `>` wildcards) matches the literal `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn valid_subject(s: &str, wildcards: bool) -> bool {
    !s.is_empty()
        && s.split('.').enumerate().all(|(i, token)| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace())
                && match token {
                    "*" => wildcards,
                    ">" => wildcards && i == s.split('.').count() - 1,
                    t => !t.contains(['*', '>']),
                }
        })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

impl NatsConfig {
    /// Checks the values; the source refuses to start on an error.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.url.trim().is_empty(), "nats_url is empty");
        anyhow::ensure!(
            valid_name(&self.stream),
            "nats_stream {:?} is not a valid stream name (no spaces, '.', '*', '>', slashes)",
            self.stream
        );
        anyhow::ensure!(
            valid_name(&self.consumer),
            "nats_consumer {:?} is not a valid consumer name (no spaces, '.', '*', '>', slashes)",
            self.consumer
        );
        anyhow::ensure!(
            valid_subject(&self.subject, true),
            "nats_subject {:?} is not a valid subject filter",
            self.subject
        );
        anyhow::ensure!(
            valid_subject(&self.dead_letter_subject, false),
            "nats_dlq_subject {:?} must be a literal subject (no wildcards)",
            self.dead_letter_subject
        );
        anyhow::ensure!(
            !subject_matches(&self.subject, &self.dead_letter_subject),
            "nats_dlq_subject {:?} is matched by nats_subject {:?}: dead letters would be \
             consumed again",
            self.dead_letter_subject,
            self.subject
        );
        anyhow::ensure!(
            self.ack_wait >= Duration::from_secs(1),
            "nats_ack_wait_secs must be at least 1"
        );
        anyhow::ensure!(
            self.max_ack_pending >= 1,
            "nats_max_ack_pending must be at least 1"
        );
        anyhow::ensure!(
            (1..=256).contains(&self.batch),
            "nats_batch must be between 1 and 256 (the broker's limit per pull request)"
        );
        anyhow::ensure!(
            self.fetch_expiry >= Duration::from_millis(100) && self.fetch_expiry < self.ack_wait,
            "the fetch expiry must be at least 100 ms and below ack_wait"
        );
        anyhow::ensure!(self.dedup_capacity >= 1, "dedup capacity must be positive");
        anyhow::ensure!(
            self.backlog_interval >= Duration::from_millis(50),
            "the backlog interval must be at least 50 ms"
        );
        Ok(())
    }

    /// The stream created for the dead-letter subject when [`create_stream`](Self::create_stream)
    /// is set.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DLQ", self.stream)
    }
}

/// The consumer's backlog as one pod sees it, refreshed about once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NatsBacklog {
    /// Whether the client is connected to a server now.
    pub connected: bool,
    /// Whether the figures below come from the broker at least once (false until the first
    /// successful sample).
    pub sampled: bool,
    /// Messages the subscription still owes: not yet delivered plus delivered and not yet
    /// acknowledged (`num_pending + num_ack_pending`), over all pods.
    pub unacked: u64,
    /// Of which not yet delivered.
    pub pending: u64,
    /// Of which delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Age of the oldest unacknowledged message (publish time to now), milliseconds.
    pub oldest_unacked_age_ms: u64,
    /// Messages this pod received with a delivery count above one, since it started.
    pub redelivered: u64,
    /// Unacknowledged messages that were delivered more than once (consumer-wide).
    pub consumer_redelivered: u64,
    /// Messages this pod holds: delivered to it and not yet answered (ack, nak or term).
    pub in_flight: u64,
    /// Unix ms of the last successful sample.
    pub sampled_at_ms: u64,
}

/// Counters of one source.
#[derive(Debug, Default)]
pub struct NatsCounters {
    /// Messages delivered to this pod (redeliveries included).
    pub received: Counter,
    /// Messages acknowledged (`+ACK` sent).
    pub acked: Counter,
    /// Messages delivered more than once (from the message's delivery count).
    pub redelivered: Counter,
    /// Poison messages terminated (`+TERM`).
    pub terminated: Counter,
    /// Poison messages published to the dead-letter subject.
    pub dead_lettered: Counter,
    /// Dead-letter publishes that failed (the message was nak'ed to try again).
    pub dead_letter_errors: Counter,
    /// Naks by reason: `in_flight` (a copy of a message still being processed), `overloaded`
    /// (the node refused the batch), `dead_letter_failed`, `stopping`.
    pub naks: LabeledCounter,
    /// Events received and valid.
    pub events_received: Counter,
    /// Events skipped because their id was already accepted (redeliveries).
    pub duplicate_events: Counter,
    /// Events submitted to the node.
    pub events_submitted: Counter,
    /// Pull requests that failed (the loop backs off and retries).
    pub fetch_errors: Counter,
    /// Acks, naks or terms that could not be sent (the broker redelivers after `ack_wait`).
    pub ack_errors: Counter,
    /// In-progress acks (`+WPI`) sent to extend leases.
    pub lease_extensions: Counter,
    /// Messages held now: delivered and not yet answered.
    in_flight: AtomicU64,
}

impl NatsCounters {
    /// Messages held now: delivered and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }

    /// Appends the counters to a `/metrics` exposition.
    pub fn render(&self, e: &mut Exposition) {
        e.gauge(
            "crashgrid_nats_in_flight_messages",
            "NATS messages this pod holds: delivered to it and not yet answered (ack, nak, term).",
            self.in_flight(),
        );
        e.counter(
            "crashgrid_nats_received_total",
            "Messages delivered to this pod by the NATS consumer (redeliveries included).",
            self.received.get(),
        );
        e.counter(
            "crashgrid_nats_acked_total",
            "NATS messages acknowledged after their events were counted.",
            self.acked.get(),
        );
        e.counter(
            "crashgrid_nats_redelivered_total",
            "NATS messages delivered to this pod more than once.",
            self.redelivered.get(),
        );
        e.counter(
            "crashgrid_nats_terminated_total",
            "Poison NATS messages terminated (never redelivered).",
            self.terminated.get(),
        );
        e.counter(
            "crashgrid_nats_dead_lettered_total",
            "Poison NATS messages published to the dead-letter subject.",
            self.dead_lettered.get(),
        );
        e.counter(
            "crashgrid_nats_dead_letter_errors_total",
            "Dead-letter publishes that failed (the message was nak'ed).",
            self.dead_letter_errors.get(),
        );
        e.labeled(
            "crashgrid_nats_naks_total",
            "counter",
            "NATS messages nak'ed for later redelivery, by reason.",
            "reason",
            &self.naks.snapshot(),
        );
        e.counter(
            "crashgrid_nats_events_received_total",
            "Valid crash events received in NATS messages.",
            self.events_received.get(),
        );
        e.counter(
            "crashgrid_nats_duplicate_events_total",
            "Events skipped because their id was already accepted (redeliveries).",
            self.duplicate_events.get(),
        );
        e.counter(
            "crashgrid_nats_fetch_errors_total",
            "NATS pull requests that failed.",
            self.fetch_errors.get(),
        );
        e.counter(
            "crashgrid_nats_ack_errors_total",
            "NATS acks that could not be sent (the broker redelivers).",
            self.ack_errors.get(),
        );
        e.counter(
            "crashgrid_nats_lease_extensions_total",
            "In-progress acks sent to extend the lease of messages being processed.",
            self.lease_extensions.get(),
        );
    }
}

impl NatsBacklog {
    /// Appends the backlog gauges to a `/metrics` exposition.
    pub fn render(&self, e: &mut Exposition) {
        e.gauge(
            "crashgrid_nats_connected",
            "1 when the NATS client is connected.",
            u8::from(self.connected),
        );
        e.gauge(
            "crashgrid_nats_unacked_messages",
            "NATS messages not yet acknowledged: pending delivery plus delivered and unacked (consumer-wide).",
            self.unacked,
        );
        e.gauge(
            "crashgrid_nats_oldest_unacked_age_seconds",
            "Age of the oldest unacknowledged NATS message (consumer-wide).",
            self.oldest_unacked_age_ms as f64 / 1000.0,
        );
        e.gauge(
            "crashgrid_nats_backlog_sampled_timestamp_seconds",
            "Unix time of the last backlog figures read from the broker (0: none yet).",
            self.sampled_at_ms as f64 / 1000.0,
        );
    }
}

/// What a running source shares with its handle and the registry.
struct Registered {
    backlog: watch::Receiver<NatsBacklog>,
    counters: Arc<NatsCounters>,
    seen: Arc<dyn SeenEvents>,
    alive: Arc<AtomicBool>,
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Registered>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Registered>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers a running source under its node id (one source per node id per process; a newer
/// one replaces an older).
fn register(node_id: &str, entry: &Arc<Registered>) {
    registry()
        .lock()
        .insert(node_id.to_string(), Arc::downgrade(entry));
}

fn lookup(node_id: &str) -> Option<Arc<Registered>> {
    let mut map = registry().lock();
    let entry = map.get(node_id)?.upgrade();
    match entry {
        Some(e) if e.alive.load(Ordering::Acquire) => Some(e),
        _ => {
            map.remove(node_id);
            None
        }
    }
}

/// The backlog channel of the source running for node `node_id` in this process, if any.
pub fn backlog_of(node_id: &str) -> Option<watch::Receiver<NatsBacklog>> {
    lookup(node_id).map(|r| r.backlog.clone())
}

/// The counters of the source running for node `node_id` in this process, if any.
pub fn counters_of(node_id: &str) -> Option<Arc<NatsCounters>> {
    lookup(node_id).map(|r| r.counters.clone())
}

/// Appends the `crashgrid_nats_*` metrics of the source running for node `node_id`, if any
/// (nothing when the node has no NATS source). Called at the end of `Node::render_metrics`.
pub fn render_registered(node_id: &str, e: &mut Exposition) {
    if let Some(r) = lookup(node_id) {
        let backlog = *r.backlog.borrow();
        backlog.render(e);
        r.counters.render(e);
        r.seen.render(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_dead_letter_subject_is_outside_the_filter() {
        let c = NatsConfig::default();
        c.validate().unwrap();
        assert!(!subject_matches(&c.subject, &c.dead_letter_subject));
        assert_eq!(c.dead_letter_stream(), "CRASHES_DLQ");
    }

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("crashes.>", "crashes.a"));
        assert!(subject_matches("crashes.>", "crashes.a.b"));
        assert!(!subject_matches("crashes.>", "crashes"));
        assert!(subject_matches("crashes.*", "crashes.a"));
        assert!(!subject_matches("crashes.*", "crashes.a.b"));
        assert!(subject_matches("crashes.dlq", "crashes.dlq"));
        assert!(!subject_matches("crashes.a", "crashes.b"));
        assert!(subject_matches(">", "x"));
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = |f: fn(&mut NatsConfig)| {
            let mut c = NatsConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.dead_letter_subject = "crashes.dlq".into()));
        assert!(bad(|c| c.dead_letter_subject = "dlq.*".into()));
        assert!(bad(|c| c.subject = "crashes.>.x".into()));
        assert!(bad(|c| c.subject = "".into()));
        assert!(bad(|c| c.stream = "CRASH.ES".into()));
        assert!(bad(|c| c.consumer = "a b".into()));
        assert!(bad(|c| c.batch = 0));
        assert!(bad(|c| c.batch = 257));
        assert!(bad(|c| c.ack_wait = Duration::from_millis(500)));
        assert!(bad(|c| c.fetch_expiry = Duration::from_secs(60)));
        assert!(bad(|c| c.max_ack_pending = 0));
        assert!(!bad(|c| c.subject = "crashes.*.v1".into()));
    }

    #[test]
    fn metrics_render_with_the_documented_names() {
        let counters = NatsCounters::default();
        counters.acked.add(3);
        counters.naks.add("in_flight", 1);
        let backlog = NatsBacklog {
            unacked: 7,
            oldest_unacked_age_ms: 1500,
            ..Default::default()
        };
        let mut e = Exposition::default();
        backlog.render(&mut e);
        counters.render(&mut e);
        let text = e.finish();
        for line in [
            "crashgrid_nats_unacked_messages 7",
            "crashgrid_nats_oldest_unacked_age_seconds 1.5",
            "crashgrid_nats_acked_total 3",
            "crashgrid_nats_redelivered_total 0",
            "crashgrid_nats_terminated_total 0",
            "crashgrid_nats_dead_lettered_total 0",
            "crashgrid_nats_naks_total{reason=\"in_flight\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
