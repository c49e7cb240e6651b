//! Prometheus metrics, rendered in the text exposition format (version 0.0.4).
//!
//! Counters are plain atomics bumped on the hot path; gauges that describe state (backlog,
//! window, caches) are read at scrape time from their owners, so they are never stale.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge: a value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one (never below zero).
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter with one label.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    /// Adds `n` to the series with label value `label`.
    pub fn add(&self, label: &str, n: u64) {
        *self.0.lock().entry(label.to_string()).or_default() += n;
    }

    /// The value of one series.
    pub fn get(&self, label: &str) -> u64 {
        self.0.lock().get(label).copied().unwrap_or(0)
    }

    /// All series.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().clone()
    }
}

/// The node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Crash events received in request bodies (valid or not).
    pub received: Counter,
    /// Crash events accepted into the ingest queue.
    pub accepted: Counter,
    /// Events or requests rejected, by reason (`invalid_event`, `invalid_json`, `too_large`,
    /// `unsupported_media_type`, `bad_encoding`, `overloaded`).
    pub rejected: LabeledCounter,
    /// Crash events fully processed and acknowledged.
    pub processed: Counter,
    /// Output frames by status.
    pub frames: LabeledCounter,
    /// Total symbolication time, microseconds.
    pub symbolication_us_sum: Counter,
    /// Records whose acceptance second had left the window when processed (counted now).
    pub late_records: Counter,
    /// Debug files stored through the API.
    pub debug_files_stored: Counter,
    /// Debug files refused through the API.
    pub debug_files_refused: Counter,
    /// Sink write failures.
    pub sink_errors: Counter,
    /// WebSocket snapshots pushed.
    pub ws_messages: Counter,
    /// Open HTTP connections (not counting upgraded WebSockets).
    pub http_connections: Gauge,
    /// The HTTP connection cap in force (after fitting the file-descriptor limit).
    pub http_connection_cap: Gauge,
    /// HTTP connections that ended in an error, by reason (`header_timeout`, which includes
    /// idle keep-alive connections, `client_closed`, `error`).
    pub http_connections_failed: LabeledCounter,
    /// Failed `accept` calls on the HTTP port (e.g. out of file descriptors).
    pub http_accept_errors: Counter,
    /// Request bodies not received within their timeout.
    pub http_body_timeouts: Counter,
    /// Open WebSocket subscribers.
    pub ws_subscribers: Gauge,
    /// WebSocket subscriptions refused at the subscriber cap.
    pub ws_refused: Counter,
}

/// A text exposition being written.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, "counter", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A counter or gauge with one label.
    pub fn labeled<T: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        series: &BTreeMap<String, T>,
    ) {
        self.head(name, kind, help);
        for (value, n) in series {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(self.0, "{name}{{{label}=\"{escaped}\"}} {n}");
        }
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.0
    }
}
