//! Map/reduce of the live window across pods, as two state machines without I/O.
//!
//! # The protocol
//!
//! Every pod aggregates its own crashes into one cumulative [`Partial`] per second in its
//! [`Outbox`]. Each change of a second's partial bumps that slot's *version*. About once a
//! second the pod sends every slot whose version the current leader has not acknowledged, as a
//! [`PartialsMessage`] tagged with (pod, leader epoch, sequence). The leader's [`Reducer`]
//! stores the latest partial per (pod, second) — a resend *replaces*, it never adds, and an
//! older version arriving late is ignored — so retries never double-count. It answers with
//! the (second, version) pairs it holds, and the pod releases the work items (source
//! messages) recorded at or below those versions: that is the acknowledgement.
//!
//! Epochs fence the exchange: a reducer accepts only messages addressed to its own epoch
//! ([`ExchangeError::WrongEpoch`] otherwise), and a pod that sees a new epoch treats every
//! slot as unacknowledged, so the new leader receives each pod's whole window. Together with
//! a replica of the reducer on one standby pod (kept by the binary, using
//! [`Reducer::export`] / [`Reducer::absorb`]), a failover restores exact statistics instead
//! of restarting from zero.
//!
//! A pod that leaves keeps its slots in the reducer until they age out of the window: counted
//! once, neither dropped nor doubled.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::snapshot::build;
use crate::{KeyedWindow, Partial, Snapshot, StatsError, WindowConfig};

/// One second of one pod: its cumulative partial at a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceUpdate {
    /// Unix second.
    pub second: u64,
    /// Version of this slot at the sender (increases with every change).
    pub version: u64,
    /// The whole partial of the second, as of `version`.
    pub partial: Partial,
}

/// What a pod reports of its ingest backlog with every message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodBacklog {
    /// Events admitted and not yet acknowledged.
    pub unacked: u64,
    /// Age of the oldest of them, milliseconds.
    pub oldest_unacked_age_ms: u64,
}

/// A pod's partials for a leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialsMessage {
    /// Sending pod.
    pub pod: String,
    /// The leader epoch it is addressed to.
    pub epoch: u64,
    /// Per-pod sequence number (diagnostics; ordering is by slot versions).
    pub seq: u64,
    /// Changed slots.
    pub slices: Vec<SliceUpdate>,
    /// The pod's backlog now.
    pub backlog: PodBacklog,
}

/// What the reducer answers: the (second, version) pairs it now holds for the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The epoch that accepted.
    pub epoch: u64,
    /// `(second, version)` pairs.
    pub slices: Vec<(u64, u64)>,
}

/// Errors of the exchange.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The message was addressed to another leader term.
    #[error("partials for epoch {got} sent to the leader of epoch {expected}")]
    WrongEpoch {
        /// The message's epoch.
        got: u64,
        /// The reducer's epoch.
        expected: u64,
    },
}

struct Slot<T> {
    partial: Partial,
    version: u64,
    /// Highest version the current epoch's leader acknowledged.
    acked: u64,
    /// Work items recorded at a version, released once `acked` reaches it.
    pending: Vec<(u64, T)>,
}

/// One pod's side: its per-second partials and the work items waiting for acknowledgement.
///
/// `T` is whatever the caller acknowledges upstream (a job number, a message handle).
pub struct Outbox<T> {
    window_seconds: u64,
    slots: BTreeMap<u64, Slot<T>>,
    epoch: Option<u64>,
    seq: u64,
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("slots", &self.slots.len())
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl<T> Outbox<T> {
    /// An empty outbox keeping `window_seconds` seconds.
    pub fn new(window_seconds: u64) -> Self {
        Outbox {
            window_seconds: window_seconds.max(1),
            slots: BTreeMap::new(),
            epoch: None,
            seq: 0,
        }
    }

    /// Folds `partial` into second `second` and records `item` to be released once the
    /// leader acknowledged this change.
    pub fn record(&mut self, second: u64, partial: &Partial, item: T) {
        let slot = self.slots.entry(second).or_insert_with(|| Slot {
            partial: Partial::new(),
            version: 0,
            acked: 0,
            pending: Vec::new(),
        });
        slot.partial.merge(partial);
        slot.version += 1;
        slot.pending.push((slot.version, item));
    }

    /// The message for the leader of `epoch`: every slot it has not acknowledged (all of
    /// them, the first time this epoch is seen). Always returns a message, possibly without
    /// slices, so the leader keeps hearing the pod's backlog.
    pub fn message(&mut self, pod: &str, epoch: u64, backlog: PodBacklog) -> PartialsMessage {
        if self.epoch != Some(epoch) {
            self.epoch = Some(epoch);
            for s in self.slots.values_mut() {
                s.acked = 0;
            }
        }
        self.seq += 1;
        self.build(pod, epoch, backlog, |s| s.version > s.acked)
    }

    fn build(
        &self,
        pod: &str,
        epoch: u64,
        backlog: PodBacklog,
        keep: impl Fn(&Slot<T>) -> bool,
    ) -> PartialsMessage {
        PartialsMessage {
            pod: pod.to_string(),
            epoch,
            seq: self.seq,
            slices: self
                .slots
                .iter()
                .filter(|(_, s)| keep(s))
                .map(|(&second, s)| SliceUpdate {
                    second,
                    version: s.version,
                    partial: s.partial.clone(),
                })
                .collect(),
            backlog,
        }
    }

    /// Every slot, whatever was acknowledged (for a new leader collecting windows).
    pub fn full(&self, pod: &str, epoch: u64, backlog: PodBacklog) -> PartialsMessage {
        self.build(pod, epoch, backlog, |_| true)
    }

    /// The leader's answer: releases and returns the items now acknowledged. An answer for
    /// another epoch than the one last sent to is ignored.
    pub fn on_accepted(&mut self, accepted: &Accepted) -> Vec<T> {
        if self.epoch != Some(accepted.epoch) {
            return Vec::new();
        }
        let mut released = Vec::new();
        for &(second, version) in &accepted.slices {
            if let Some(slot) = self.slots.get_mut(&second) {
                slot.acked = slot.acked.max(version.min(slot.version));
                let acked = slot.acked;
                let mut i = 0;
                while i < slot.pending.len() {
                    if slot.pending[i].0 <= acked {
                        released.push(slot.pending.swap_remove(i).1);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        released
    }

    /// Drops the seconds that left the window ending at `now`; returns the items that were
    /// never acknowledged (no leader accepted them in five minutes: the caller releases and
    /// counts them).
    pub fn advance(&mut self, now: u64) -> Vec<T> {
        let oldest = now.saturating_sub(self.window_seconds - 1);
        let kept = self.slots.split_off(&oldest);
        let expired = std::mem::replace(&mut self.slots, kept);
        expired
            .into_values()
            .flat_map(|s| s.pending.into_iter().map(|(_, t)| t))
            .collect()
    }

    /// Items waiting for acknowledgement.
    pub fn pending(&self) -> usize {
        self.slots.values().map(|s| s.pending.len()).sum()
    }
}

/// The leader's side: the latest partial per (pod, second), merged into snapshots.
#[derive(Debug)]
pub struct Reducer {
    epoch: u64,
    window: KeyedWindow<String>,
    versions: HashMap<(String, u64), u64>,
    backlogs: BTreeMap<String, (PodBacklog, u64)>,
    late: u64,
    refused: u64,
    /// Per second, the merge of every pod's partial; recomputed only for seconds that changed
    /// since the last snapshot (a snapshot then merges 300 partials, not 300 × pods).
    merged: BTreeMap<u64, Partial>,
    dirty: BTreeSet<u64>,
}

impl Reducer {
    /// An empty reducer of leader epoch `epoch`.
    pub fn new(config: WindowConfig, now: u64, epoch: u64) -> Result<Self, StatsError> {
        Ok(Reducer {
            epoch,
            window: KeyedWindow::new(config, now)?,
            versions: HashMap::new(),
            backlogs: BTreeMap::new(),
            late: 0,
            refused: 0,
            merged: BTreeMap::new(),
            dirty: BTreeSet::new(),
        })
    }

    /// The epoch this reducer serves.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Stores a pod's message: each slice replaces what the pod sent for that second before,
    /// unless a newer version is already held. Answers with what is now held.
    ///
    /// Slices older than the window are acknowledged (there is nothing to count them in any
    /// more; the pod must not resend them forever) and counted in [`late`](Self::late).
    /// Slices too far ahead of the reducer's clock (beyond `max_future_seconds`) are *not*
    /// in the answer: the pod keeps them unacknowledged and sends them again.
    pub fn accept(
        &mut self,
        message: PartialsMessage,
        now_second: u64,
    ) -> Result<Accepted, ExchangeError> {
        if message.epoch != self.epoch {
            return Err(ExchangeError::WrongEpoch {
                got: message.epoch,
                expected: self.epoch,
            });
        }
        let accepted = self.absorb(message, now_second);
        Ok(Accepted {
            epoch: self.epoch,
            slices: accepted,
        })
    }

    /// Stores a message whatever its epoch (replicas, windows collected by a new leader);
    /// returns the `(second, version)` pairs held for the pod afterwards.
    ///
    /// The window first moves to `now_second` (a replica that only ever absorbs must follow
    /// time, or every second beyond its start + `max_future_seconds` would be refused). A
    /// slice the window refuses as too new is left out of the answer, so a caller can tell
    /// "held" from "refused": an answer shorter than the message means something was not
    /// kept.
    pub fn absorb(&mut self, message: PartialsMessage, now_second: u64) -> Vec<(u64, u64)> {
        self.advance(now_second);
        let pod = message.pod;
        self.backlogs
            .insert(pod.clone(), (message.backlog, now_second));
        let mut held = Vec::with_capacity(message.slices.len());
        for s in message.slices {
            let key = (pod.clone(), s.second);
            let have = self.versions.get(&key).copied().unwrap_or(0);
            if s.version <= have {
                held.push((s.second, have));
                continue;
            }
            let crashes = s.partial.total();
            match self.window.set(pod.clone(), s.second, s.partial) {
                Ok(_) => {
                    self.versions.insert(key, s.version);
                    self.dirty.insert(s.second);
                }
                Err(StatsError::TooNew { .. }) => {
                    // Not held: the sender must keep it and try again.
                    self.refused += 1;
                    continue;
                }
                Err(_) => self.late += crashes,
            }
            held.push((s.second, s.version));
        }
        held
    }

    /// Records a pod's backlog without partials (the leader's own, right after it released
    /// the jobs it just accepted).
    pub fn report_backlog(&mut self, pod: &str, backlog: PodBacklog, now_second: u64) {
        self.backlogs.insert(pod.to_string(), (backlog, now_second));
    }

    /// Every (pod, second) held, as messages per pod (for the standby replica and for a new
    /// leader collecting windows).
    pub fn export(&self) -> Vec<PartialsMessage> {
        let mut per_pod: BTreeMap<&str, Vec<SliceUpdate>> = BTreeMap::new();
        for ((pod, second), &version) in &self.versions {
            if let Some(p) = self.window.get(pod, *second) {
                per_pod.entry(pod).or_default().push(SliceUpdate {
                    second: *second,
                    version,
                    partial: p.clone(),
                });
            }
        }
        per_pod
            .into_iter()
            .map(|(pod, mut slices)| {
                slices.sort_by_key(|s| s.second);
                PartialsMessage {
                    pod: pod.to_string(),
                    epoch: self.epoch,
                    seq: 0,
                    slices,
                    backlog: self.backlogs.get(pod).map(|b| b.0).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Moves the window to `now` and forgets what left it.
    pub fn advance(&mut self, now: u64) {
        self.window.advance(now);
        let oldest = now.saturating_sub(u64::from(self.window.config().seconds) - 1);
        self.versions.retain(|(_, second), _| *second >= oldest);
        self.merged = self.merged.split_off(&oldest);
        self.dirty = self.dirty.split_off(&oldest);
    }

    /// The merged statistics of every pod at `now` (equal to merging every stored partial).
    pub fn snapshot(&mut self, now: u64) -> Snapshot {
        for second in std::mem::take(&mut self.dirty) {
            let mut p = Partial::new();
            for part in self.window.sources_at(second) {
                p.merge(part);
            }
            self.merged.insert(second, p);
        }
        let oldest = self.window.oldest_second_at(now);
        let slices: Vec<(u64, &Partial)> = self
            .merged
            .range(oldest..=now)
            .map(|(s, p)| (*s, p))
            .collect();
        build(self.window.config(), now, &slices)
    }

    /// Cluster-wide backlog: the sum of the unacked counts and the oldest age reported by
    /// pods heard from within `fresh_seconds` of `now` (a pod that stopped reporting has left:
    /// what it had not processed is not coming).
    pub fn backlog(&self, now_second: u64, fresh_seconds: u64) -> PodBacklog {
        let mut total = PodBacklog::default();
        for (b, seen) in self.backlogs.values() {
            if now_second.saturating_sub(*seen) <= fresh_seconds {
                total.unacked += b.unacked;
                total.oldest_unacked_age_ms =
                    total.oldest_unacked_age_ms.max(b.oldest_unacked_age_ms);
            }
        }
        total
    }

    /// Pods that reported within `fresh_seconds`.
    pub fn reporting_pods(&self, now_second: u64, fresh_seconds: u64) -> usize {
        self.backlogs
            .values()
            .filter(|(_, seen)| now_second.saturating_sub(*seen) <= fresh_seconds)
            .count()
    }

    /// Crashes in slices that arrived after their second left the window.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Slices refused so far as too far ahead of this reducer's clock (left unacknowledged;
    /// the sender retries them).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Stored (pod, second) partials.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }
}
