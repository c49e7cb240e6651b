//! Recognising redelivered events: the set of event ids a source has claimed or had accepted
//! within the last few minutes.
//!
//! JetStream delivers *at least once*: a message whose ack was lost (a broker restart, a pod
//! killed after the events were counted but before the ack left) comes back after `ack_wait`.
//! Every event carries a client-chosen `event_id` (docs/event-format.md); a source remembers the
//! ids it submitted so that a second copy is acknowledged without being counted again.
//!
//! # Claims, then acceptance
//!
//! An id goes through two states:
//!
//! 1. **in flight** — claimed when its message is *submitted* to the node, before any worker
//!    touched it. A copy of the same message arriving now (the broker redelivered it while the
//!    first copy is still being processed) must be neither counted nor acknowledged: if the
//!    first copy were then lost, acknowledging the second would lose the event. The source
//!    answers [`Claim::Busy`] copies with a delayed nak; by the time they come back the first
//!    copy is usually accepted.
//! 2. **accepted** — the node counted the event for good (the ack callback fired). A copy now is
//!    acknowledged at once and counts nothing.
//!
//! A claim is withdrawn ([`SeenEvents::release`]) when the node refused the submission
//! (overloaded): the message is nak'ed and its events are new again when it comes back.
//!
//! # Bounds
//!
//! Entries live [`EventIdDedup::ttl`] after their last change (5 minutes: the live window; an
//! event redelivered later than that would fall outside the statistics it could double-count)
//! and at most `capacity` are kept (the oldest go first). Ids are stored as 128-bit SipHash
//! digests, about 60 bytes per entry with the expiry queue: a million ids is ~60 MiB.
//!
//! [`EventIdDedup`] is one pod's set: it catches redeliveries to the pod that saw the first
//! copy. In a cluster, [`ClusterSeenEvents`](super::ClusterSeenEvents) puts a grid behind it so
//! a copy redelivered to *another* pod is recognised too (see `cluster_dedup.rs`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hasher as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use siphasher::sip128::{Hasher128 as _, SipHasher13};

use crate::clock::WallClock;

/// A boxed future borrowing the set (the claim of a cluster-wide set asks other pods).
pub type ClaimFuture<'a> = Pin<Box<dyn Future<Output = Claim> + Send + 'a>>;

/// What a source learns when it claims the event ids of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing was in flight: `fresh[i]` tells whether `ids[i]` was claimed now (new) or had
    /// already been accepted (or appeared earlier in the same message) and must be skipped.
    Claimed {
        /// One flag per id, in order.
        fresh: Vec<bool>,
    },
    /// At least one id is claimed by a submission not yet accepted: nothing was claimed; try
    /// the message again later.
    Busy,
}

impl Claim {
    /// How many ids were claimed now (0 for [`Claim::Busy`]).
    pub fn fresh_count(&self) -> usize {
        match self {
            Claim::Claimed { fresh } => fresh.iter().filter(|f| **f).count(),
            Claim::Busy => 0,
        }
    }
}

/// The event ids a source has seen recently. Implementations are shared by the source's tasks
/// and the node's worker threads (the acceptance is recorded from the ack callback).
pub trait SeenEvents: Send + Sync + 'static {
    /// Atomically checks the ids of one message and, unless one of them is in flight, claims
    /// every id not seen before.
    fn claim<'a>(&'a self, ids: &'a [&'a str]) -> ClaimFuture<'a>;

    /// Records that the events were counted for good (their claims become acceptances).
    /// Called from the node's worker threads: must not block on I/O.
    fn accept(&self, ids: &[&str]);

    /// Withdraws claims whose submission was refused; ids already accepted stay accepted.
    fn release(&self, ids: &[&str]);

    /// Appends the set's own figures to `/metrics` (none by default).
    fn render(&self, _e: &mut crate::metrics::Exposition) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Accepted,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    /// When the state last changed (Unix ms); the expiry queue item with this stamp is live.
    since_ms: u64,
}

struct Inner {
    map: HashMap<u128, Entry>,
    /// (stamp, key) in stamp order; an item is stale when the entry's `since_ms` moved on.
    queue: VecDeque<(u64, u128)>,
}

/// The local [`SeenEvents`]: a bounded map of id digests with a TTL on an injected clock.
pub struct EventIdDedup {
    capacity: usize,
    ttl: Duration,
    clock: Arc<dyn WallClock>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for EventIdDedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventIdDedup")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish()
    }
}

/// The 128-bit digest an id is remembered (and shared between pods) by.
pub(crate) fn digest(id: &str) -> u128 {
    let mut h = SipHasher13::new_with_keys(0x6372_6173_6867_7269, 0x6420_6576_656e_7473);
    h.write(id.as_bytes());
    h.finish128().as_u128()
}

impl EventIdDedup {
    /// At most `capacity` ids (at least 1), each kept `ttl` after its last change.
    pub fn new(capacity: usize, ttl: Duration, clock: Arc<dyn WallClock>) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            clock,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                queue: VecDeque::new(),
            }),
        }
    }

    /// How long an entry lives after its last change.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most ids kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Ids currently remembered (in flight or accepted).
    pub fn len(&self) -> usize {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        self.expire(&mut inner, now);
        inner.map.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` was accepted (and not yet forgotten).
    pub fn is_accepted(&self, id: &str) -> bool {
        self.state(id) == Some(State::Accepted)
    }

    /// Whether `id` is claimed and not yet accepted.
    pub fn is_in_flight(&self, id: &str) -> bool {
        self.state(id) == Some(State::InFlight)
    }

    fn state(&self, id: &str) -> Option<State> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        self.expire(&mut inner, now);
        inner.map.get(&digest(id)).map(|e| e.state)
    }

    /// [`SeenEvents::claim`] without a future: this set never waits.
    pub fn try_claim(&self, ids: &[&str]) -> Claim {
        let now = self.clock.now_ms();
        let keys: Vec<u128> = ids.iter().map(|id| digest(id)).collect();
        let mut inner = self.inner.lock();
        self.expire(&mut inner, now);
        if keys
            .iter()
            .any(|k| inner.map.get(k).is_some_and(|e| e.state == State::InFlight))
        {
            return Claim::Busy;
        }
        let fresh = keys
            .iter()
            .map(|&key| {
                if inner.map.contains_key(&key) {
                    false
                } else {
                    Self::set(&mut inner, key, State::InFlight, now);
                    true
                }
            })
            .collect();
        self.expire(&mut inner, now);
        Claim::Claimed { fresh }
    }

    fn expire(&self, inner: &mut Inner, now_ms: u64) {
        let ttl = self.ttl.as_millis() as u64;
        if inner.queue.len() > 2 * self.capacity + 1024 {
            // Stale items (an id changed state many times) beyond twice the live ones: rebuild.
            let mut live: Vec<(u64, u128)> =
                inner.map.iter().map(|(k, e)| (e.since_ms, *k)).collect();
            live.sort_unstable();
            inner.queue = live.into();
        }
        while let Some(&(stamp, key)) = inner.queue.front() {
            let over = inner.map.len() > self.capacity;
            if !over && now_ms.saturating_sub(stamp) < ttl {
                break;
            }
            inner.queue.pop_front();
            if inner.map.get(&key).is_some_and(|e| e.since_ms == stamp) {
                inner.map.remove(&key);
            }
        }
    }

    fn set(inner: &mut Inner, key: u128, state: State, now_ms: u64) {
        inner.map.insert(
            key,
            Entry {
                state,
                since_ms: now_ms,
            },
        );
        inner.queue.push_back((now_ms, key));
    }
}

impl SeenEvents for EventIdDedup {
    fn claim<'a>(&'a self, ids: &'a [&'a str]) -> ClaimFuture<'a> {
        Box::pin(std::future::ready(self.try_claim(ids)))
    }

    fn accept(&self, ids: &[&str]) {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        for id in ids {
            Self::set(&mut inner, digest(id), State::Accepted, now);
        }
        self.expire(&mut inner, now);
    }

    fn release(&self, ids: &[&str]) {
        let mut inner = self.inner.lock();
        for id in ids {
            let key = digest(id);
            if inner
                .map
                .get(&key)
                .is_some_and(|e| e.state == State::InFlight)
            {
                inner.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualWallClock;

    fn dedup(capacity: usize) -> (EventIdDedup, ManualWallClock) {
        let clock = ManualWallClock::at_ms(1_000_000);
        (
            EventIdDedup::new(capacity, Duration::from_secs(300), Arc::new(clock.clone())),
            clock,
        )
    }

    #[test]
    fn new_ids_are_claimed_and_accepted_ones_skipped() {
        let (d, _) = dedup(100);
        assert_eq!(
            d.try_claim(&["a", "b"]),
            Claim::Claimed {
                fresh: vec![true, true]
            }
        );
        assert!(d.is_in_flight("a"));
        d.accept(&["a", "b"]);
        assert!(d.is_accepted("a") && d.is_accepted("b"));
        // A redelivered copy with one new event: only the new one is claimed.
        let c = d.try_claim(&["a", "b", "c"]);
        assert_eq!(
            c,
            Claim::Claimed {
                fresh: vec![false, false, true]
            }
        );
        assert_eq!(c.fresh_count(), 1);
    }

    #[test]
    fn a_copy_of_an_in_flight_message_is_busy_and_claims_nothing() {
        let (d, _) = dedup(100);
        assert_eq!(d.try_claim(&["a", "b"]).fresh_count(), 2);
        assert_eq!(d.try_claim(&["b", "z"]), Claim::Busy);
        assert!(
            !d.is_in_flight("z") && !d.is_accepted("z"),
            "nothing claimed"
        );
        d.accept(&["a", "b"]);
        assert_eq!(
            d.try_claim(&["b", "z"]),
            Claim::Claimed {
                fresh: vec![false, true]
            }
        );
    }

    #[test]
    fn an_id_repeated_within_one_message_counts_once() {
        let (d, _) = dedup(100);
        assert_eq!(
            d.try_claim(&["a", "a"]),
            Claim::Claimed {
                fresh: vec![true, false]
            }
        );
    }

    #[test]
    fn released_claims_are_new_again_but_acceptances_stay() {
        let (d, _) = dedup(100);
        d.try_claim(&["a"]);
        d.accept(&["a"]);
        d.try_claim(&["b"]);
        d.release(&["a", "b"]);
        assert!(d.is_accepted("a"));
        assert_eq!(
            d.try_claim(&["a", "b"]),
            Claim::Claimed {
                fresh: vec![false, true]
            }
        );
    }

    #[test]
    fn entries_expire_after_the_ttl_since_their_last_change() {
        let (d, clock) = dedup(100);
        d.try_claim(&["a", "b"]);
        clock.advance_ms(200_000);
        d.accept(&["a"]); // "a" changes at 200 s, "b" stays claimed since 0 s
        clock.advance_ms(100_000); // 300 s after the claim
        assert!(!d.is_in_flight("b"), "b's claim expired");
        assert!(d.is_accepted("a"), "a was accepted 100 s ago");
        clock.advance_ms(199_999);
        assert!(d.is_accepted("a"));
        clock.advance_ms(1);
        assert!(!d.is_accepted("a"));
        assert!(d.is_empty());
        assert_eq!(d.try_claim(&["a"]).fresh_count(), 1);
    }

    #[test]
    fn the_capacity_bounds_the_set_and_the_oldest_go_first() {
        let (d, clock) = dedup(3);
        for id in ["a", "b", "c", "d"] {
            d.try_claim(&[id]);
            d.accept(&[id]);
            clock.advance_ms(1);
        }
        assert_eq!(d.len(), 3);
        assert!(!d.is_accepted("a"));
        assert!(d.is_accepted("b") && d.is_accepted("d"));
        // Many changes to one id do not let the queue grow without bound.
        for _ in 0..5000 {
            d.accept(&["d"]);
        }
        assert!(d.inner.lock().queue.len() <= 2 * 3 + 1024 + 1);
        assert!(d.is_accepted("d") && d.is_accepted("c"));
        clock.advance_ms(300_000);
        assert!(d.is_empty());
        assert!(d.inner.lock().queue.is_empty());
    }
}
