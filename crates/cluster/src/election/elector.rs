//! The election state machine: no I/O, no clock reads, deterministic given its inputs.

use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::{ElectionConfig, JITTER_FACTOR};
use super::error::LeaseError;
use super::record::{LeaseRecord, MicroTime, Version};

/// What one node knows about leadership at an instant: the value published by the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The node believed to lead: this node while `is_leader`; otherwise the holder of the
    /// last observed record, or `None` if that lease was released, has expired by this node's
    /// observation, or names this node without it leading (a previous incarnation).
    pub leader: Option<String>,
    /// The fencing epoch: `lease_transitions` of the record under which `leader` leads
    /// (0 before anything was observed). Messages from a leader carry it; see
    /// [`EpochFence`](crate::EpochFence).
    pub epoch: u64,
    /// Whether *this* node may act as leader now (`now < last successful renewal +
    /// renew_deadline`, and not shutting down).
    pub is_leader: bool,
}

/// What the driver must do next, as answered by [`Elector::poll`].
///
/// For `Read`, `Create` and `Update`, the driver performs the call on its
/// [`LeaseBackend`](crate::LeaseBackend) and hands the result to [`Elector::on_read`] (for
/// `Read`) or [`Elector::on_write`] (for `Create` and `Update`) before polling again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the lease (`LeaseBackend::get`).
    Read,
    /// Create the lease with this record (`LeaseBackend::create`).
    Create(LeaseRecord),
    /// Compare-and-swap the lease to `record` if it is still at `expected`
    /// (`LeaseBackend::update`). A record without holder is the release on shutdown.
    Update {
        /// The record to write.
        record: LeaseRecord,
        /// The version the lease must still have.
        expected: Version,
    },
    /// Nothing to do before this instant; poll again then (or after calling
    /// [`Elector::shutdown`]).
    SleepUntil(Instant),
    /// The elector has stopped (after shutdown, with the lease released if it was held).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Following,
    Leading,
    Stopped,
}

/// The last record seen, and when (on our clock) we first saw that exact version.
#[derive(Clone, Debug)]
struct Observed {
    record: LeaseRecord,
    version: Version,
    since: Instant,
}

/// The lease version this elector last wrote (holder = us), and when it sent that write.
#[derive(Clone, Debug)]
struct Held {
    record: LeaseRecord,
    version: Version,
    sent_at: Instant,
}

/// A write whose outcome is unknown (ambiguous error): if the lease reads back equal to
/// `record`, the write took effect at some point after `sent_at`.
#[derive(Clone, Debug)]
struct Unconfirmed {
    record: LeaseRecord,
    sent_at: Instant,
}

#[derive(Clone, Debug)]
enum Step {
    Read,
    Create,
    /// Take over a released or expired lease (new epoch).
    Acquire {
        base: LeaseRecord,
        expected: Version,
    },
    /// Rewrite the version we hold (same epoch).
    Renew,
}

#[derive(Clone, Debug)]
struct Inflight {
    action: Action,
    sent_at: Instant,
}

/// Leader election on a lease as a pure state machine, in the style of raft-rs' `RawNode`.
///
/// It performs no I/O and never reads a clock: the driver passes the current monotonic
/// instant (and the wall-clock time, used only to stamp records for humans) to
/// [`poll`](Self::poll), performs the returned [`Action`], and feeds the result back with
/// [`on_read`](Self::on_read) / [`on_write`](Self::on_write). [`leadership`](Self::leadership)
/// answers at any instant. Exactly one action is outstanding at a time.
///
/// Rules (client-go `leaderelection`, plus fencing):
///
/// - A lease held by another is taken over only after it stayed unchanged (same version and
///   content) for `max(lease_duration, record.lease_duration_seconds)`, measured on this
///   elector's instants from when it *first observed* that version. Record timestamps are never
///   compared with any clock.
/// - A released lease (no holder) is taken at once; a missing lease is created.
/// - Every write is a compare-and-swap on the version. Taking over (from another holder, a
///   released lease, or a record naming this identity that this elector did not write, e.g. a
///   previous incarnation) increments `lease_transitions`; renewing keeps it.
/// - The leader renews every `retry_period` and is leader only while
///   `now < sent_at(last successful renewal) + renew_deadline`; failing that, it steps down.
///   A conflict on renewal (someone else wrote) steps down at once.
/// - A write that failed ambiguously (timeout, lost response) is adopted if a later read
///   returns exactly the record it wrote, as if it succeeded when it was sent.
/// - [`shutdown`](Self::shutdown) steps down at once; if this elector still holds the current
///   version it writes the release (holder `None`, `lease_transitions` kept), then stops.
#[derive(Debug)]
pub struct Elector {
    identity: String,
    config: ElectionConfig,
    rng: StdRng,
    phase: Phase,
    shutdown: bool,
    observed: Option<Observed>,
    held: Option<Held>,
    unconfirmed: Option<Unconfirmed>,
    inflight: Option<Inflight>,
    next: Step,
    /// When `next` is due; `None` means at once.
    next_at: Option<Instant>,
}

impl Elector {
    /// A follower that will read the lease at its first poll. Fails if `config` does not
    /// [`validate`](ElectionConfig::validate) or `identity` is empty (an empty holder means
    /// "released"). Identities must be unique among the processes sharing a lease.
    ///
    /// Retry jitter comes from a PRNG seeded from the identity (deterministic); see
    /// [`with_seed`](Self::with_seed).
    pub fn new(identity: impl Into<String>, config: ElectionConfig) -> Result<Self, LeaseError> {
        let identity = identity.into();
        config.validate()?;
        if identity.is_empty() {
            return Err(LeaseError::InvalidConfig(
                "identity must not be empty".into(),
            ));
        }
        let seed = fnv1a(identity.as_bytes());
        Ok(Elector {
            identity,
            config,
            rng: StdRng::seed_from_u64(seed),
            phase: Phase::Following,
            shutdown: false,
            observed: None,
            held: None,
            unconfirmed: None,
            inflight: None,
            next: Step::Read,
            next_at: None,
        })
    }

    /// Reseeds the PRNG that jitters candidate retries.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// This elector's identity (the `holder_identity` it writes).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Whether [`poll`](Self::poll) now answers [`Action::Stopped`].
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// The instant until which this elector is leader, if it currently leads (its leadership
    /// ends at that instant unless a renewal succeeds first).
    pub fn leader_until(&self) -> Option<Instant> {
        match (&self.held, self.phase) {
            (Some(held), Phase::Leading) if !self.shutdown => {
                Some(held.sent_at + self.config.renew_deadline)
            }
            _ => None,
        }
    }

    /// Whether this elector may act as leader at `now`.
    pub fn is_leader(&self, now: Instant) -> bool {
        self.leader_until().is_some_and(|until| now < until)
    }

    /// Leadership as known at `now` (see [`Leadership`] for each field).
    pub fn leadership(&self, now: Instant) -> Leadership {
        if let (true, Some(held)) = (self.is_leader(now), &self.held) {
            return Leadership {
                leader: Some(self.identity.clone()),
                epoch: held.record.lease_transitions,
                is_leader: true,
            };
        }
        match &self.observed {
            Some(o) => {
                let expired = now >= o.since + self.takeover_wait(&o.record);
                let leader = o
                    .record
                    .holder()
                    .filter(|h| *h != self.identity && !expired)
                    .map(str::to_owned);
                Leadership {
                    leader,
                    epoch: o.record.lease_transitions,
                    is_leader: false,
                }
            }
            None => Leadership::default(),
        }
    }

    /// The deadline the driver should put on the call for the action just polled: the end of
    /// leadership while leading (so a hung renewal is abandoned when leadership ends anyway),
    /// otherwise `now + renew_deadline`. A call abandoned at the deadline is reported as
    /// [`LeaseError::Timeout`].
    pub fn io_deadline(&self, now: Instant) -> Instant {
        self.leader_until()
            .filter(|until| *until > now)
            .unwrap_or(now + self.config.renew_deadline)
    }

    /// Requests a graceful stop: this elector stops being leader at once; the next polls
    /// release the lease if it still holds the current version, then answer
    /// [`Action::Stopped`]. An outstanding call is completed (its result fed back) first.
    pub fn shutdown(&mut self) {
        if self.shutdown || self.phase == Phase::Stopped {
            return;
        }
        self.shutdown = true;
        if self.phase == Phase::Leading {
            self.phase = Phase::Following;
            tracing::info!(identity = %self.identity, "shutting down: stepping down as leader");
        }
    }

    /// The next action at `now`; `wall` is the wall-clock time written into records (for
    /// humans only). While an action is outstanding (polled but its result not yet fed back),
    /// answers that same action again.
    pub fn poll(&mut self, now: Instant, wall: SystemTime) -> Action {
        if let Some(inflight) = &self.inflight {
            return inflight.action.clone();
        }
        if self.phase == Phase::Stopped {
            return Action::Stopped;
        }
        if let Some(until) = self.leader_until().filter(|until| now >= *until) {
            self.phase = Phase::Following;
            tracing::warn!(
                identity = %self.identity,
                late_by = ?now.saturating_duration_since(until),
                "lease not renewed within the renew deadline: stepping down as leader"
            );
        }
        let action = if self.shutdown {
            match (&self.held, &self.unconfirmed) {
                (Some(held), _) => {
                    let record = LeaseRecord {
                        holder_identity: None,
                        renew_time: Some(MicroTime::from_system_time(wall)),
                        ..held.record.clone()
                    };
                    Action::Update {
                        record,
                        expected: held.version.clone(),
                    }
                }
                // A write of ours may have landed: read once to find out, then release.
                (None, Some(_)) => Action::Read,
                (None, None) => {
                    self.phase = Phase::Stopped;
                    return Action::Stopped;
                }
            }
        } else {
            if let Some(at) = self.next_at.filter(|at| now < *at) {
                let wake = self.leader_until().map_or(at, |until| until.min(at));
                return Action::SleepUntil(wake);
            }
            self.build(wall)
        };
        self.inflight = Some(Inflight {
            action: action.clone(),
            sent_at: now,
        });
        action
    }

    /// Feeds the result of the outstanding [`Action::Read`], observed at `now`.
    /// A result without an outstanding read is ignored.
    pub fn on_read(
        &mut self,
        now: Instant,
        result: Result<Option<(LeaseRecord, Version)>, LeaseError>,
    ) {
        match self.inflight.take() {
            Some(Inflight {
                action: Action::Read,
                ..
            }) => {}
            other => {
                self.inflight = other;
                tracing::warn!(identity = %self.identity, "read result without an outstanding read: ignored");
                return;
            }
        }
        let (record, version) = match result {
            Err(err) => {
                tracing::debug!(identity = %self.identity, error = %err, "reading the lease failed");
                if self.shutdown {
                    self.unconfirmed = None;
                }
                let delay = self.retry_delay();
                self.schedule(Step::Read, Some(now + delay));
                return;
            }
            Ok(None) => {
                self.observed = None;
                self.unconfirmed = None;
                if self.held.take().is_some() {
                    self.step_down("the lease was deleted");
                }
                self.schedule(Step::Create, None);
                return;
            }
            Ok(Some(found)) => found,
        };
        if let Some(attempt) = self.unconfirmed.take() {
            if attempt.record == record {
                tracing::debug!(identity = %self.identity, "an unconfirmed write of ours took effect");
                self.held = Some(Held {
                    record: record.clone(),
                    version: version.clone(),
                    sent_at: attempt.sent_at,
                });
                self.become_leader();
            }
        }
        self.observe(now, &record, &version);
        if let Some(held) = self.held.as_ref().filter(|h| h.version == version) {
            // The current version is ours: renew it (after a self-demotion this re-acquires
            // without a new epoch: nobody else can have led in between).
            let due = held.sent_at + self.config.retry_period;
            self.schedule(Step::Renew, Some(due));
            return;
        }
        if self.held.take().is_some() {
            self.step_down("another writer changed the lease");
        }
        let expected = version;
        match record.holder() {
            None => self.schedule(
                Step::Acquire {
                    base: record,
                    expected,
                },
                None,
            ),
            Some(_) => {
                let since = self.observed.as_ref().map_or(now, |o| o.since);
                let expires = since + self.takeover_wait(&record);
                if now >= expires {
                    self.schedule(
                        Step::Acquire {
                            base: record,
                            expected,
                        },
                        None,
                    );
                } else {
                    let delay = self.retry_delay();
                    self.schedule(Step::Read, Some((now + delay).min(expires)));
                }
            }
        }
    }

    /// Feeds the result of the outstanding [`Action::Create`] or [`Action::Update`], received
    /// at `now`. A result without an outstanding write is ignored.
    pub fn on_write(&mut self, now: Instant, result: Result<Version, LeaseError>) {
        let (record, sent_at) = match self.inflight.take() {
            Some(Inflight {
                action: Action::Create(record) | Action::Update { record, .. },
                sent_at,
            }) => (record, sent_at),
            other => {
                self.inflight = other;
                tracing::warn!(identity = %self.identity, "write result without an outstanding write: ignored");
                return;
            }
        };
        let release = record.holder().is_none();
        match result {
            Ok(version) => {
                self.unconfirmed = None;
                self.observe(now, &record, &version);
                if release {
                    self.held = None;
                    self.phase = Phase::Stopped;
                    tracing::info!(identity = %self.identity, "lease released");
                    return;
                }
                self.held = Some(Held {
                    record,
                    version,
                    sent_at,
                });
                self.become_leader();
                let due = sent_at + self.config.retry_period;
                self.schedule(Step::Renew, Some(due));
            }
            Err(err) if release => {
                self.phase = Phase::Stopped;
                tracing::warn!(identity = %self.identity, error = %err, "releasing the lease failed; it will expire");
            }
            Err(err) if err.is_lost_race() => {
                self.unconfirmed = None;
                if self.held.take().is_some() {
                    self.step_down("lost the lease to another writer");
                }
                tracing::debug!(identity = %self.identity, error = %err, "lease write lost a race");
                let delay = self.retry_delay();
                self.schedule(Step::Read, Some(now + delay));
            }
            Err(err) => {
                tracing::debug!(identity = %self.identity, error = %err, "lease write failed");
                self.unconfirmed = Some(Unconfirmed { record, sent_at });
                // Retry after reading: the write may have taken effect.
                let delay = self.retry_delay();
                self.schedule(Step::Read, Some(now + delay));
            }
        }
    }

    fn build(&mut self, wall: SystemTime) -> Action {
        let stamp = MicroTime::from_system_time(wall);
        let mine = |transitions| LeaseRecord {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: self.config.lease_duration_seconds(),
            acquire_time: Some(stamp.clone()),
            renew_time: Some(stamp.clone()),
            lease_transitions: transitions,
        };
        match &self.next {
            Step::Read => Action::Read,
            Step::Create => Action::Create(mine(0)),
            Step::Acquire { base, expected } => Action::Update {
                record: mine(base.lease_transitions.saturating_add(1)),
                expected: expected.clone(),
            },
            Step::Renew => match &self.held {
                Some(held) => Action::Update {
                    record: LeaseRecord {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: self.config.lease_duration_seconds(),
                        renew_time: Some(stamp.clone()),
                        ..held.record.clone()
                    },
                    expected: held.version.clone(),
                },
                None => Action::Read,
            },
        }
    }

    fn schedule(&mut self, step: Step, at: Option<Instant>) {
        self.next = step;
        self.next_at = at;
    }

    fn observe(&mut self, now: Instant, record: &LeaseRecord, version: &Version) {
        let unchanged = self
            .observed
            .as_ref()
            .is_some_and(|o| o.version == *version && o.record == *record);
        if !unchanged {
            self.observed = Some(Observed {
                record: record.clone(),
                version: version.clone(),
                since: now,
            });
        }
    }

    fn become_leader(&mut self) {
        if self.shutdown || self.phase == Phase::Leading {
            return;
        }
        self.phase = Phase::Leading;
        let epoch = self.held.as_ref().map_or(0, |h| h.record.lease_transitions);
        tracing::info!(identity = %self.identity, epoch, "leading");
    }

    fn step_down(&mut self, reason: &str) {
        if self.phase == Phase::Leading {
            self.phase = Phase::Following;
            tracing::warn!(identity = %self.identity, reason, "stepping down as leader");
        }
    }

    /// How long a record must stay unchanged before it may be taken over: the holder's
    /// declared duration if longer than ours (it renews relative to its own configuration).
    fn takeover_wait(&self, record: &LeaseRecord) -> Duration {
        let declared = Duration::from_secs(record.lease_duration_seconds.into());
        self.config.lease_duration.max(declared)
    }

    /// A leader retries at its renewal cadence (client-go renews without jitter); a candidate
    /// waits `retry_period × U[1, JITTER_FACTOR)`.
    fn retry_delay(&mut self) -> Duration {
        if self.phase == Phase::Leading {
            return self.config.retry_period;
        }
        let factor = self.rng.gen_range(1.0..JITTER_FACTOR);
        self.config.retry_period.mul_f64(factor)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ElectionConfig {
        ElectionConfig::default()
    }

    fn held_by(holder: &str, transitions: u64) -> LeaseRecord {
        LeaseRecord {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: 15,
            acquire_time: None,
            renew_time: None,
            lease_transitions: transitions,
        }
    }

    fn secs(t: f64) -> Duration {
        Duration::from_secs_f64(t)
    }

    #[test]
    fn new_rejects_empty_identity_and_bad_config() {
        assert!(Elector::new("", config()).is_err());
        let bad = ElectionConfig {
            renew_deadline: Duration::from_secs(20),
            ..config()
        };
        assert!(Elector::new("a", bad).is_err());
    }

    #[test]
    fn poll_repeats_the_outstanding_action_and_stray_results_are_ignored() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut e = Elector::new("a", config()).unwrap();
        assert_eq!(e.poll(t0, wall), Action::Read);
        assert_eq!(e.poll(t0 + secs(1.0), wall), Action::Read);
        // A write result while a read is outstanding changes nothing.
        e.on_write(t0, Ok(Version::new("9")));
        assert!(!e.is_leader(t0));
        assert_eq!(e.poll(t0, wall), Action::Read);
        e.on_read(t0, Ok(None));
        assert!(matches!(e.poll(t0, wall), Action::Create(r) if r.lease_transitions == 0));
    }

    /// client-go: candidate retries are jittered by `JitterFactor`; the jitter is seeded, so the
    /// schedule is reproducible, and stays within [retry_period, 1.2 × retry_period).
    #[test]
    fn candidate_retries_are_jittered_within_bounds_and_reproducible() {
        let run = |seed: u64| {
            let t0 = Instant::now();
            let wall = SystemTime::now();
            let mut e = Elector::new("b", config()).unwrap().with_seed(seed);
            let mut now = t0;
            let mut delays = Vec::new();
            for _ in 0..50 {
                assert_eq!(e.poll(now, wall), Action::Read);
                e.on_read(now, Err(LeaseError::Unavailable("down".into())));
                match e.poll(now, wall) {
                    Action::SleepUntil(at) => {
                        delays.push(at - now);
                        now = at;
                    }
                    other => panic!("expected sleep, got {other:?}"),
                }
            }
            delays
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        for d in &a {
            assert!(*d >= secs(2.0) && *d < secs(2.4), "{d:?}");
        }
    }

    /// client-go uses the holder's `leaseDurationSeconds`: a record declaring a longer
    /// duration than ours is waited out in full.
    #[test]
    fn takeover_waits_for_the_longer_of_ours_and_the_declared_duration() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut e = Elector::new("b", config()).unwrap();
        let mut record = held_by("a", 4);
        record.lease_duration_seconds = 40;
        assert_eq!(e.poll(t0, wall), Action::Read);
        e.on_read(t0, Ok(Some((record.clone(), Version::new("7")))));
        // Until then "a" counts as leader; from then on its lease has expired for us.
        let just_before = t0 + secs(40.0) - Duration::from_nanos(1);
        assert_eq!(e.leadership(just_before).leader.as_deref(), Some("a"));
        assert_eq!(e.leadership(t0 + secs(40.0)).leader, None);
        assert_eq!(e.leadership(t0 + secs(40.0)).epoch, 4);
        let mut now = t0;
        loop {
            match e.poll(now, wall) {
                Action::Read => e.on_read(now, Ok(Some((record.clone(), Version::new("7"))))),
                Action::SleepUntil(at) => now = at,
                Action::Update {
                    record: r,
                    expected,
                } => {
                    assert_eq!(expected, Version::new("7"));
                    assert_eq!(r.lease_transitions, 5);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(now - t0, secs(40.0));
    }

    /// An ambiguous write (response lost) that did land is adopted when read back: no second
    /// epoch, leadership counted from when the write was sent.
    #[test]
    fn ambiguous_write_that_landed_is_adopted_on_read_back() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut e = Elector::new("a", config()).unwrap();
        assert_eq!(e.poll(t0, wall), Action::Read);
        e.on_read(t0, Ok(None));
        let Action::Create(written) = e.poll(t0, wall) else {
            panic!("expected create")
        };
        e.on_write(t0 + secs(0.5), Err(LeaseError::Timeout(secs(0.5))));
        assert!(!e.is_leader(t0 + secs(0.5)));
        let Action::SleepUntil(at) = e.poll(t0 + secs(0.5), wall) else {
            panic!("expected sleep")
        };
        assert_eq!(e.poll(at, wall), Action::Read);
        e.on_read(at, Ok(Some((written.clone(), Version::new("1")))));
        assert!(e.is_leader(at));
        // Leadership counts from the send instant of the adopted write.
        assert_eq!(e.leader_until(), Some(t0 + secs(10.0)));
        assert_eq!(e.leadership(at).epoch, 0);
        // Its next action renews the adopted version.
        assert!(matches!(
            e.poll(at, wall),
            Action::Update { expected, record } if expected == Version::new("1") && record.lease_transitions == 0
        ));
    }

    /// A record that names us but that this elector did not write (a previous incarnation) is
    /// treated like any other holder: waited out, then taken over with a new epoch.
    #[test]
    fn own_identity_from_a_previous_incarnation_is_waited_out() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut e = Elector::new("a", config()).unwrap();
        let record = held_by("a", 3);
        assert_eq!(e.poll(t0, wall), Action::Read);
        e.on_read(t0, Ok(Some((record.clone(), Version::new("5")))));
        assert_eq!(
            e.leadership(t0),
            Leadership {
                leader: None,
                epoch: 3,
                is_leader: false
            }
        );
        let mut now = t0;
        loop {
            match e.poll(now, wall) {
                Action::Read => e.on_read(now, Ok(Some((record.clone(), Version::new("5"))))),
                Action::SleepUntil(at) => now = at,
                Action::Update { record, .. } => {
                    assert_eq!(record.lease_transitions, 4);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(now - t0, secs(15.0));
    }

    /// client-go: a failed renewal CAS (someone else wrote the lease) ends leadership at once,
    /// without waiting for the renew deadline.
    #[test]
    fn conflict_on_renewal_steps_down_at_once() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut e = Elector::new("a", config()).unwrap();
        assert_eq!(e.poll(t0, wall), Action::Read);
        e.on_read(t0, Ok(None));
        assert!(matches!(e.poll(t0, wall), Action::Create(_)));
        e.on_write(t0, Ok(Version::new("1")));
        let renew_at = t0 + secs(2.0);
        assert!(matches!(e.poll(renew_at, wall), Action::Update { .. }));
        e.on_write(
            renew_at,
            Err(LeaseError::Conflict {
                expected: Version::new("1"),
            }),
        );
        assert!(!e.is_leader(renew_at));
        assert_eq!(e.leader_until(), None);
        // It reads the lease to learn the new holder, and follows it.
        let Action::SleepUntil(at) = e.poll(renew_at, wall) else {
            panic!("expected sleep")
        };
        assert_eq!(e.poll(at, wall), Action::Read);
        e.on_read(at, Ok(Some((held_by("z", 1), Version::new("2")))));
        assert_eq!(
            e.leadership(at),
            Leadership {
                leader: Some("z".into()),
                epoch: 1,
                is_leader: false
            }
        );
    }

    #[test]
    fn shutdown_of_a_follower_stops_without_writing() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut e = Elector::new("b", config()).unwrap();
        assert_eq!(e.poll(t0, wall), Action::Read);
        e.on_read(t0, Ok(Some((held_by("a", 0), Version::new("1")))));
        e.shutdown();
        assert_eq!(e.poll(t0, wall), Action::Stopped);
        assert!(e.is_stopped());
    }

    #[test]
    fn leader_sleeps_until_the_earlier_of_next_renewal_and_end_of_leadership() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut e = Elector::new("a", config()).unwrap();
        assert_eq!(e.poll(t0, wall), Action::Read);
        e.on_read(t0, Ok(None));
        assert!(matches!(e.poll(t0, wall), Action::Create(_)));
        e.on_write(t0, Ok(Version::new("1")));
        assert_eq!(e.poll(t0, wall), Action::SleepUntil(t0 + secs(2.0)));
        assert_eq!(e.io_deadline(t0 + secs(2.0)), t0 + secs(10.0));
        // Renewals keep failing ambiguously: the leader retries every retry_period (reading
        // first), and wakes at the end of its leadership to step down.
        let mut now = t0 + secs(2.0);
        assert!(matches!(e.poll(now, wall), Action::Update { .. }));
        e.on_write(now, Err(LeaseError::Unavailable("down".into())));
        assert!(e.is_leader(t0 + secs(10.0) - Duration::from_nanos(1)));
        let mut wakes = Vec::new();
        while let Action::SleepUntil(at) = e.poll(now, wall) {
            wakes.push(at - t0);
            now = at;
            if e.poll(now, wall) == Action::Read {
                e.on_read(now, Err(LeaseError::Unavailable("down".into())));
            }
            if now >= t0 + secs(10.0) {
                break;
            }
        }
        assert_eq!(wakes, [secs(4.0), secs(6.0), secs(8.0), secs(10.0)]);
        assert!(!e.is_leader(t0 + secs(10.0)));
    }
}
