//! The statistics exchange of one pod, as a state machine without I/O.
//!
//! [`Outbox`] and [`Reducer`] are the two data structures of the map/reduce; [`Exchange`] is the
//! protocol that moves partials between them across pods, written in the style of raft-rs's
//! `RawNode`: the caller feeds it the time, the cluster as it sees it ([`View`]) and the
//! messages and replies it received, and takes back a [`Ready`] — what to send to whom and
//! which work items are now acknowledged (or expired). It never reads a clock, never opens a
//! socket and never waits, so every failover rule below is tested in process with a manual
//! clock and an in-memory network that cuts links (`tests/stats.rs`, `exchange_*`).
//!
//! # Roles and rounds
//!
//! Once per publish interval the driver calls [`Exchange::tick`]:
//!
//! 1. seconds that left the window are dropped from the outbox; their unacknowledged items
//!    come back in [`Ready::expired`] (no leader took them in five minutes);
//! 2. a **follower** sends its unacknowledged partials to the leader
//!    ([`Message::Partials`], tagged with the leader's epoch); the answer
//!    ([`Reply::Accepted`]) releases the items recorded at or below the acknowledged versions;
//! 3. the **leader** accepts its own partials into its reducer, but releases its own items only
//!    once each standby — the first [`STANDBYS`] other members in member order — holds a
//!    replica ([`Message::Replica`] answered [`Reply::Held`]). A standby not yet synchronised
//!    in this term first gets the whole reducer in that one message. Partials the leader
//!    accepts from followers are replicated the same way, off the follower's answer.
//!
//! Then the leader's driver builds the cluster-wide snapshot and calls
//! [`Exchange::broadcast`], which pushes it with the epoch to every member
//! ([`Message::Snapshot`]). A follower keeps the newest accepted snapshot as a value
//! ([`Exchange::latest`]).
//!
//! # Terms and failover
//!
//! ```text
//!                  view: leading, epoch e          last Collect reply (or none to wait for)
//!   Following ──────────────────────────────► Collecting(e) ─────────────────────► Leading(e)
//!       ▲       reducer = own window + replica,        │ partials refused: NotLeading      │
//!       │       Collect{e} sent to every peer          │                                   │
//!       └──────────────────────────────────────────────┴───────────────────────────────────┘
//!                       view: not leading (or leading a newer epoch: a new Collecting)
//! ```
//!
//! A pod that starts leading under a new epoch builds a fresh reducer from its own window and
//! its replica, and asks every member for its window and replica ([`Message::Collect`]) before
//! it accepts anything: statistics after a failover are exact instead of restarting from zero.
//! Two standbys make two failures in a row safe: the leader dies, the first standby takes over
//! and dies too before it re-replicated; the second standby still holds every acknowledged
//! partial of the first leader's own pod.
//!
//! # Fencing
//!
//! Every leader-originated message carries its epoch; a receiver refuses epochs below the
//! highest it knows ([`Refusal::StaleEpoch`]) and raises the bar on higher ones, so a deposed
//! leader's replica, collection or snapshot is never accepted. The highest known epoch also
//! rises with the pod's own reads of the lease ([`View::highest_epoch`]). A reducer accepts
//! only partials addressed to its own epoch; a pod that sees a new epoch treats every slot as
//! unacknowledged, so a new leader receives each pod's whole window and an answer from the old
//! one releases nothing.
//!
//! # Contract with the driver
//!
//! Every [`Outgoing`] recipient must be answered exactly once, with
//! [`Exchange::on_reply`] or [`Exchange::on_failure`] (a transport timeout is a failure).
//! Requests from peers go to [`Exchange::on_request`], whose return value is the answer. After
//! any call, [`Exchange::take_ready`] holds what to do next.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::{Accepted, Outbox, Partial, PartialsMessage, PodBacklog, Reducer, WindowConfig};

/// Members that keep a replica of the leader's reducer: 2, so that two failures in a row (the
/// leader, then the standby that took over, before it re-replicated) lose nothing the leader
/// acknowledged. Each costs one replica message per partials message.
pub const STANDBYS: usize = 2;

/// A pod that has not reported for this long no longer counts in the cluster-wide backlog
/// (what it had not processed is not coming).
pub const BACKLOG_FRESH_SECONDS: u64 = 5;

/// The cluster as one pod sees it (from its membership and its reads of the lease).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View<P> {
    /// The epoch of the current leader term (0 for a pod alone).
    pub epoch: u64,
    /// Whether this pod leads that term.
    pub leading: bool,
    /// The leader's address when another pod leads and it is a member.
    pub leader: Option<P>,
    /// Every other member, in the cluster's member order (by id): the first [`STANDBYS`]
    /// are the standbys while this pod leads.
    pub peers: Vec<P>,
    /// The highest epoch this pod knows of from its own reads of the lease and leader claims
    /// (at least `epoch`); leader messages below it are refused.
    pub highest_epoch: u64,
}

impl<P> View<P> {
    /// A pod without a cluster: the leader of epoch 0, with no peers.
    pub fn alone() -> Self {
        View {
            epoch: 0,
            leading: true,
            leader: None,
            peers: Vec::new(),
            highest_epoch: 0,
        }
    }
}

/// Every message of the exchange (one enum, serialised once by the driver).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Message<S> {
    /// A pod's unacknowledged partials for the leader of `message.epoch`.
    Partials(PartialsMessage),
    /// Partials the leader accepted, for a standby's replica (the whole reducer when the
    /// standby is new in this term).
    Replica {
        /// The leader's epoch.
        epoch: u64,
        /// Per-pod partials.
        messages: Vec<PartialsMessage>,
    },
    /// A new leader asks for the member's whole window and replica.
    Collect {
        /// The new leader's epoch.
        epoch: u64,
    },
    /// The leader's cluster-wide snapshot.
    Snapshot {
        /// The leader's epoch.
        epoch: u64,
        /// Whatever the leader publishes (the binary's node snapshot).
        snapshot: S,
    },
}

impl<S> Message<S> {
    /// The message's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Partials(_) => "partials",
            Message::Replica { .. } => "replica",
            Message::Collect { .. } => "collect",
            Message::Snapshot { .. } => "snapshot",
        }
    }
}

/// The answer to a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Reply {
    /// To [`Message::Partials`]: what the leader now holds of the pod.
    Accepted(Accepted),
    /// To [`Message::Replica`]: every slice is held.
    Held,
    /// To [`Message::Collect`]: the member's whole window, then its replica.
    Collected(Vec<PartialsMessage>),
    /// To [`Message::Snapshot`]: taken (or ignored by a pod that leads itself).
    Taken,
    /// The message was not acted on.
    Refused(Refusal),
}

/// Why a message was refused (plain data: it travels in a [`Reply`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Partials sent to a pod that does not lead, or is still collecting its term's windows.
    #[error("not the leader (or still collecting the members' windows)")]
    NotLeading,
    /// Partials addressed to another term than the leader's.
    #[error("partials for epoch {got} sent to the leader of epoch {expected}")]
    WrongEpoch {
        /// The message's epoch.
        got: u64,
        /// The leader's epoch.
        expected: u64,
    },
    /// A leader message from an older term than one the receiver knows.
    #[error("stale leader epoch {epoch}: epoch {highest} has already been seen")]
    StaleEpoch {
        /// The message's epoch.
        epoch: u64,
        /// The highest epoch the receiver knows.
        highest: u64,
    },
    /// The replica could not hold some slices (too far ahead of the standby's clock).
    #[error("the replica refused {refused} of {slices} slices (too far ahead of its clock)")]
    ReplicaRefused {
        /// Slices not held.
        refused: usize,
        /// Slices in the message.
        slices: usize,
    },
    /// The answer did not fit the request (a peer speaking another version).
    #[error("unexpected answer to a {0} message")]
    UnexpectedReply(String),
}

/// Identifies one recipient of one outgoing message; its answer is fed back with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// One message for one or more recipients (serialise it once, send it to each).
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing<P, S> {
    /// The recipients, each with the id its answer is fed back with.
    pub to: Vec<(RequestId, P)>,
    /// The message.
    pub message: Message<S>,
}

/// What the driver has to do after feeding the machine.
#[derive(Debug)]
pub struct Ready<P, T, S> {
    /// Messages to send.
    pub sends: Vec<Outgoing<P, S>>,
    /// Work items a leader acknowledged (with their replicas held): release them upstream.
    pub released: Vec<T>,
    /// Work items whose second left the window unacknowledged: release and count them.
    pub expired: Vec<T>,
}

impl<P, T, S> Default for Ready<P, T, S> {
    fn default() -> Self {
        Ready {
            sends: Vec::new(),
            released: Vec::new(),
            expired: Vec::new(),
        }
    }
}

impl<P, T, S> Ready<P, T, S> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.released.is_empty() && self.expired.is_empty()
    }
}

/// Counters of the exchange (the binary renders them as metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeCounters {
    /// Partials messages sent to a leader.
    pub partials_sent: u64,
    /// Partials messages that did not reach the leader (or got a nonsensical answer).
    pub partials_failed: u64,
    /// Partials messages the leader refused (leadership moving, wrong epoch).
    pub partials_refused: u64,
    /// Snapshots accepted from a leader.
    pub snapshots_received: u64,
    /// Snapshots refused for a stale epoch.
    pub snapshots_rejected: u64,
    /// Replica messages that failed or were refused (this pod leading).
    pub replica_failed: u64,
    /// Slices this pod's replica could not hold (this pod a standby).
    pub replica_refused: u64,
    /// Members whose windows a new term collected.
    pub collected: u64,
    /// Members whose window a new term could not collect (their slices reach the leader
    /// with their next partials; a dead member's only through a replica).
    pub collect_failed: u64,
    /// Work items expired unacknowledged.
    pub expired_unacknowledged: u64,
    /// Leader messages refused for a stale epoch (replicas, collections, snapshots).
    pub stale_refused: u64,
}

enum Term<P> {
    /// Not leading: no reducer.
    Following,
    /// Leading `epoch`, waiting for the members' windows.
    Collecting {
        epoch: u64,
        reducer: Reducer,
        waiting: BTreeSet<RequestId>,
    },
    /// Leading `epoch`.
    Leading {
        epoch: u64,
        reducer: Reducer,
        /// Standbys that hold the whole reducer of this term.
        synced: BTreeSet<P>,
    },
}

impl<P> Term<P> {
    fn epoch(&self) -> Option<u64> {
        match self {
            Term::Following => None,
            Term::Collecting { epoch, .. } | Term::Leading { epoch, .. } => Some(*epoch),
        }
    }
}

enum Pending<P> {
    Partials,
    Collect {
        epoch: u64,
    },
    Replica {
        to: P,
        epoch: u64,
        /// The message carried the whole reducer.
        sync: bool,
        /// The leader's own round waiting for it.
        round: Option<u64>,
    },
    Snapshot,
}

/// The leader's own partials, accepted and waiting for the standbys' replicas.
struct OwnRound {
    epoch: u64,
    accepted: Accepted,
    waiting: usize,
    failed: bool,
}

/// One pod's side of the statistics exchange: its outbox, its standby replica and, while it
/// leads, the reducer (see the module docs for the protocol).
///
/// `P` addresses peers, `T` is the work item acknowledged upstream (a job number), `S` the
/// snapshot the leader publishes.
pub struct Exchange<P, T, S> {
    pod: String,
    window: WindowConfig,
    outbox: Outbox<T>,
    replica: Reducer,
    term: Term<P>,
    view: View<P>,
    highest_epoch: u64,
    backlog: PodBacklog,
    latest: Option<S>,
    next_id: u64,
    next_round: u64,
    pending: HashMap<RequestId, Pending<P>>,
    rounds: BTreeMap<u64, OwnRound>,
    ready: Ready<P, T, S>,
    counters: ExchangeCounters,
}

impl<P, T, S> Debug for Exchange<P, T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("pod", &self.pod)
            .field("term", &self.term.epoch())
            .field("leads", &matches!(self.term, Term::Leading { .. }))
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<P, T, S> Exchange<P, T, S>
where
    P: Clone + Ord + Debug,
    S: Clone,
{
    /// The exchange of pod `pod` at unix second `now`, alone until the first [`set_view`].
    ///
    /// [`set_view`]: Self::set_view
    pub fn new(
        pod: impl Into<String>,
        window: WindowConfig,
        now: u64,
    ) -> Result<Self, crate::StatsError> {
        Ok(Exchange {
            pod: pod.into(),
            outbox: Outbox::new(u64::from(window.seconds)),
            replica: Reducer::new(window.clone(), now, 0)?,
            window,
            term: Term::Following,
            view: View::alone(),
            highest_epoch: 0,
            backlog: PodBacklog::default(),
            latest: None,
            next_id: 0,
            next_round: 0,
            pending: HashMap::new(),
            rounds: BTreeMap::new(),
            ready: Ready::default(),
            counters: ExchangeCounters::default(),
        })
    }

    /// The window configuration.
    pub fn window(&self) -> &WindowConfig {
        &self.window
    }

    /// Folds a processed batch's `partial` into second `second`; `item` is released once a
    /// leader acknowledged it (see [`Outbox::record`]).
    pub fn record(&mut self, second: u64, partial: &Partial, item: T) {
        self.outbox.record(second, partial, item);
    }

    /// Work items waiting for acknowledgement.
    pub fn pending_items(&self) -> usize {
        self.outbox.pending()
    }

    /// Whether this pod leads a term whose windows are collected (it holds the reducer).
    pub fn leads(&self) -> bool {
        matches!(self.term, Term::Leading { .. })
    }

    /// The counters.
    pub fn counters(&self) -> ExchangeCounters {
        self.counters
    }

    /// The highest leader epoch this pod knows of.
    pub fn highest_epoch(&self) -> u64 {
        self.highest_epoch
    }

    /// The newest snapshot this pod published (leading) or accepted from a leader.
    pub fn latest(&self) -> Option<&S> {
        self.latest.as_ref()
    }

    /// The cluster-wide statistics at `now` while leading.
    pub fn statistics(&mut self, now: u64) -> Option<crate::Snapshot> {
        match &mut self.term {
            Term::Leading { reducer, .. } => {
                reducer.advance(now);
                Some(reducer.snapshot(now))
            }
            _ => None,
        }
    }

    /// The cluster-wide backlog at `now` while leading (pods heard from within
    /// [`BACKLOG_FRESH_SECONDS`]).
    pub fn cluster_backlog(&self, now: u64) -> Option<PodBacklog> {
        match &self.term {
            Term::Leading { reducer, .. } => Some(reducer.backlog(now, BACKLOG_FRESH_SECONDS)),
            _ => None,
        }
    }

    /// The pod's own backlog now (sent with its partials and windows; a leader's reducer
    /// takes it at once: it would otherwise be one round old after the leader released).
    pub fn report_backlog(&mut self, backlog: PodBacklog, now: u64) {
        self.backlog = backlog;
        if let Term::Leading { reducer, .. } = &mut self.term {
            reducer.report_backlog(&self.pod, backlog, now);
        }
    }

    /// What to do next (taken: a second call returns nothing new).
    pub fn take_ready(&mut self) -> Ready<P, T, S> {
        std::mem::take(&mut self.ready)
    }

    /// The cluster changed (or is re-read): a pod that no longer leads drops its reducer; one
    /// that leads a new epoch starts collecting at the next [`tick`](Self::tick).
    pub fn set_view(&mut self, view: View<P>) {
        let keep = view.leading && self.term.epoch() == Some(view.epoch);
        if !keep && !matches!(self.term, Term::Following) {
            self.term = Term::Following;
            self.rounds.clear();
        }
        self.observe(view.highest_epoch.max(view.epoch));
        self.view = view;
    }

    /// The view last set.
    pub fn view(&self) -> &View<P> {
        &self.view
    }

    /// One exchange round at unix second `now`, with the pod's backlog.
    pub fn tick(&mut self, now: u64, backlog: PodBacklog) {
        self.backlog = backlog;
        let expired = self.outbox.advance(now);
        self.counters.expired_unacknowledged += expired.len() as u64;
        self.ready.expired.extend(expired);
        if self.view.leading && self.view.epoch >= self.highest_epoch {
            match self.term {
                Term::Following => self.start_term(now),
                Term::Collecting { .. } => {}
                Term::Leading { .. } => self.lead_round(now),
            }
        } else if let Some(leader) = self.view.leader.clone() {
            let message = self
                .outbox
                .message(&self.pod, self.view.epoch, self.backlog);
            self.counters.partials_sent += 1;
            let id = self.track(Pending::Partials);
            self.ready.sends.push(Outgoing {
                to: vec![(id, leader)],
                message: Message::Partials(message),
            });
        }
    }

    /// A new term: a reducer from this pod's window and replica, then the members' windows.
    fn start_term(&mut self, now: u64) {
        let epoch = self.view.epoch;
        let mut reducer = Reducer::new(self.window.clone(), now, epoch)
            .expect("the window config was validated by Exchange::new");
        reducer.absorb(self.outbox.full(&self.pod, epoch, self.backlog), now);
        for m in self.replica.export() {
            reducer.absorb(m, now);
        }
        let peers = self.view.peers.clone();
        if peers.is_empty() {
            self.term = Term::Leading {
                epoch,
                reducer,
                synced: BTreeSet::new(),
            };
            self.lead_round(now);
            return;
        }
        let to: Vec<_> = peers
            .into_iter()
            .map(|p| (self.track(Pending::Collect { epoch }), p))
            .collect();
        self.term = Term::Collecting {
            epoch,
            reducer,
            waiting: to.iter().map(|(id, _)| *id).collect(),
        };
        self.ready.sends.push(Outgoing {
            to,
            message: Message::Collect { epoch },
        });
    }

    /// The leader's own partials: accepted, replicated, released once the standbys hold them.
    fn lead_round(&mut self, now: u64) {
        let Term::Leading {
            epoch,
            reducer,
            synced,
        } = &mut self.term
        else {
            return;
        };
        let epoch = *epoch;
        let message = self.outbox.message(&self.pod, epoch, self.backlog);
        let Ok(accepted) = reducer.accept(message.clone(), now) else {
            return; // unreachable: the message is addressed to the reducer's epoch
        };
        let standbys: Vec<P> = self.view.peers.iter().take(STANDBYS).cloned().collect();
        if standbys.is_empty() {
            let released = self.outbox.on_accepted(&accepted);
            self.ready.released.extend(released);
            return;
        }
        let mut sends = Vec::new();
        for standby in standbys {
            let sync = !synced.contains(&standby);
            let messages = if sync {
                reducer.export()
            } else {
                vec![message.clone()]
            };
            sends.push((standby, sync, messages));
        }
        self.next_round += 1;
        let round = self.next_round;
        self.rounds.insert(
            round,
            OwnRound {
                epoch,
                accepted,
                waiting: sends.len(),
                failed: false,
            },
        );
        for (standby, sync, messages) in sends {
            let id = self.track(Pending::Replica {
                to: standby.clone(),
                epoch,
                sync,
                round: Some(round),
            });
            self.ready.sends.push(Outgoing {
                to: vec![(id, standby)],
                message: Message::Replica { epoch, messages },
            });
        }
    }

    /// While leading: publishes `snapshot` (kept as [`latest`](Self::latest)) and pushes it
    /// to every member with the epoch. A pod that does not lead only keeps it.
    pub fn broadcast(&mut self, snapshot: S) {
        self.latest = Some(snapshot.clone());
        let Term::Leading { epoch, .. } = self.term else {
            return;
        };
        if self.view.peers.is_empty() {
            return;
        }
        let to = self
            .view
            .peers
            .clone()
            .into_iter()
            .map(|p| (self.track(Pending::Snapshot), p))
            .collect();
        self.ready.sends.push(Outgoing {
            to,
            message: Message::Snapshot { epoch, snapshot },
        });
    }

    fn track(&mut self, pending: Pending<P>) -> RequestId {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        self.pending.insert(id, pending);
        id
    }

    /// Fencing: accepts `epoch` unless a higher one is known (raising the bar otherwise).
    fn fence(&mut self, epoch: u64) -> Result<(), Refusal> {
        if epoch < self.highest_epoch {
            self.counters.stale_refused += 1;
            return Err(Refusal::StaleEpoch {
                epoch,
                highest: self.highest_epoch,
            });
        }
        self.observe(epoch);
        Ok(())
    }

    /// Learns of leader epoch `epoch`: a pod leading an older term stops at once (its driver's
    /// next view says the same; meanwhile it must not act as leader).
    fn observe(&mut self, epoch: u64) {
        self.highest_epoch = self.highest_epoch.max(epoch);
        if self.term.epoch().is_some_and(|e| e < self.highest_epoch) {
            self.term = Term::Following;
            self.rounds.clear();
        }
    }

    /// A message from a peer at unix second `now`; returns the answer to send back.
    pub fn on_request(&mut self, message: Message<S>, now: u64) -> Reply {
        match message {
            Message::Partials(m) => {
                let Term::Leading { reducer, .. } = &mut self.term else {
                    return Reply::Refused(Refusal::NotLeading);
                };
                let epoch = reducer.epoch();
                match reducer.accept(m.clone(), now) {
                    Ok(accepted) => {
                        // The standbys' replicas follow, off the answer's path (the pod keeps
                        // its own window anyway; the replica matters for pods that leave).
                        let standbys: Vec<P> =
                            self.view.peers.iter().take(STANDBYS).cloned().collect();
                        for standby in standbys {
                            let id = self.track(Pending::Replica {
                                to: standby.clone(),
                                epoch,
                                sync: false,
                                round: None,
                            });
                            self.ready.sends.push(Outgoing {
                                to: vec![(id, standby)],
                                message: Message::Replica {
                                    epoch,
                                    messages: vec![m.clone()],
                                },
                            });
                        }
                        Reply::Accepted(accepted)
                    }
                    Err(crate::ExchangeError::WrongEpoch { got, expected }) => {
                        Reply::Refused(Refusal::WrongEpoch { got, expected })
                    }
                }
            }
            Message::Replica { epoch, messages } => {
                if let Err(r) = self.fence(epoch) {
                    return Reply::Refused(r);
                }
                // The leader releases its own items on this answer: "held" only for what a
                // failover will find here.
                let slices: usize = messages.iter().map(|m| m.slices.len()).sum();
                let held: usize = messages
                    .into_iter()
                    .map(|m| self.replica.absorb(m, now).len())
                    .sum();
                if held < slices {
                    self.counters.replica_refused += (slices - held) as u64;
                    return Reply::Refused(Refusal::ReplicaRefused {
                        refused: slices - held,
                        slices,
                    });
                }
                Reply::Held
            }
            Message::Collect { epoch } => {
                if let Err(r) = self.fence(epoch) {
                    return Reply::Refused(r);
                }
                let mut all = vec![self.outbox.full(&self.pod, epoch, self.backlog)];
                all.extend(self.replica.export());
                Reply::Collected(all)
            }
            Message::Snapshot { epoch, snapshot } => {
                if let Err(r) = self.fence(epoch) {
                    self.counters.snapshots_rejected += 1;
                    return Reply::Refused(r);
                }
                if !matches!(self.term, Term::Following) {
                    // A leader publishes its own snapshots.
                    return Reply::Taken;
                }
                self.counters.snapshots_received += 1;
                self.latest = Some(snapshot);
                Reply::Taken
            }
        }
    }

    /// The answer to request `id`, received at unix second `now`.
    pub fn on_reply(&mut self, id: RequestId, reply: Reply, now: u64) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        if let Reply::Refused(Refusal::StaleEpoch { highest, .. }) = &reply {
            // Told by a member that a newer term exists: this pod no longer leads.
            self.observe(*highest);
        }
        match pending {
            Pending::Partials => match reply {
                Reply::Accepted(a) => {
                    let released = self.outbox.on_accepted(&a);
                    self.ready.released.extend(released);
                }
                Reply::Refused(_) => self.counters.partials_refused += 1,
                _ => self.counters.partials_failed += 1,
            },
            Pending::Collect { epoch } => {
                let collected = match reply {
                    Reply::Collected(messages) => Some(messages),
                    _ => None,
                };
                self.collected(id, epoch, collected, now);
            }
            Pending::Replica {
                to,
                epoch,
                sync,
                round,
            } => {
                let held = matches!(reply, Reply::Held);
                self.replicated(to, epoch, sync, round, held);
            }
            Pending::Snapshot => {}
        }
    }

    /// Request `id` got no answer (unreachable, timed out, cut off).
    pub fn on_failure(&mut self, id: RequestId, now: u64) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match pending {
            Pending::Partials => self.counters.partials_failed += 1,
            Pending::Collect { epoch } => self.collected(id, epoch, None, now),
            Pending::Replica {
                to,
                epoch,
                sync,
                round,
            } => self.replicated(to, epoch, sync, round, false),
            Pending::Snapshot => {}
        }
    }

    fn collected(
        &mut self,
        id: RequestId,
        epoch: u64,
        messages: Option<Vec<PartialsMessage>>,
        now: u64,
    ) {
        let Term::Collecting {
            epoch: current,
            reducer,
            waiting,
        } = &mut self.term
        else {
            return;
        };
        if *current != epoch || !waiting.remove(&id) {
            return;
        }
        match messages {
            Some(messages) => {
                for m in messages {
                    reducer.absorb(m, now);
                }
                self.counters.collected += 1;
            }
            None => self.counters.collect_failed += 1,
        }
        if waiting.is_empty() {
            let Term::Collecting { epoch, reducer, .. } =
                std::mem::replace(&mut self.term, Term::Following)
            else {
                unreachable!("matched above")
            };
            self.term = Term::Leading {
                epoch,
                reducer,
                synced: BTreeSet::new(),
            };
            self.lead_round(now);
        }
    }

    fn replicated(&mut self, to: P, epoch: u64, sync: bool, round: Option<u64>, held: bool) {
        if !held {
            self.counters.replica_failed += 1;
        }
        let current = self.term.epoch() == Some(epoch);
        if let Term::Leading { synced, .. } = &mut self.term {
            if current && held && sync {
                synced.insert(to);
            }
        }
        let Some(round) = round else {
            return;
        };
        let Some(r) = self.rounds.get_mut(&round) else {
            return;
        };
        r.waiting -= 1;
        r.failed |= !held;
        if r.waiting > 0 {
            return;
        }
        let r = self.rounds.remove(&round).expect("present");
        if !r.failed && current && r.epoch == epoch && self.leads() {
            let released = self.outbox.on_accepted(&r.accepted);
            self.ready.released.extend(released);
        }
    }
}
