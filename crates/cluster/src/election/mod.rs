//! Leader election on a lease, with client-go semantics and fencing epochs.
//!
//! # Model
//!
//! One lease record ([`LeaseRecord`], the fields of a Kubernetes `coordination.k8s.io/v1`
//! Lease) lives in a store ([`LeaseBackend`]) that offers read, create, and compare-and-swap
//! update on an opaque [`Version`] (Kubernetes' `resourceVersion`). Every pod runs an
//! [`Elector`]; the holder renews the record every `retry_period`, the others poll it.
//!
//! # Why expiry is judged on the observer's clock
//!
//! The record carries `renewTime`, a wall-clock timestamp written by the holder. Comparing it
//! with a candidate's wall clock would make safety depend on clock *offsets* between pods: a
//! candidate whose clock runs an hour ahead would take a lease its holder renewed a second ago,
//! and two pods would lead at once. Instead (as client-go does) a candidate remembers *when it
//! first saw* each version, on its own monotonic clock, and takes over only once the same
//! version stayed unchanged for `lease_duration`. Timestamps in the record are for humans.
//!
//! Safety argument. Let the leader send a successful renewal at `s` (its clock); the write
//! applies at some `w >= s`; a candidate observes the new version at `o >= w` and may take
//! over at `o + lease_duration` at the earliest. The leader acts as leader only until
//! `s + renew_deadline`, and `renew_deadline < lease_duration`, so leadership periods cannot
//! overlap, whatever the offsets between clocks. What is assumed: clocks *advance* at nearly
//! the same rate (the 5 s margin of the defaults absorbs a 33% rate difference), versions are
//! never reused, and the store is linearizable. The compare-and-swap makes every takeover and
//! renewal race decide exactly one winner; a leader whose renewal loses a race steps down.
//!
//! # Fencing
//!
//! What the timing cannot rule out is a leader that is *paused* (GC, SIGSTOP, a slow node)
//! after checking that it leads and before its message arrives. Hence fencing: the epoch of a
//! leader is `lease_transitions` of the record under which it leads; it increases with every
//! change of holder (renewals keep it). Leader-originated messages carry the epoch, and each
//! receiver keeps an [`EpochFence`] that rejects epochs lower than the highest it has seen.
//! No Kubernetes lease library offers this; it is ours.
//!
//! # Release, self-demotion, restarts
//!
//! - On graceful shutdown the leader steps down first, then writes the record with no holder
//!   (keeping `lease_transitions`); a standby takes it at its next poll (≤ 1.2 ×
//!   `retry_period`) instead of after `lease_duration`.
//! - A leader that cannot renew within `renew_deadline` of its last successful renewal steps
//!   down on its own, before any candidate may take over.
//! - Takeover is decided by "did *this* elector write the current version", not by the
//!   identity string: a restarted process finding its own identity in the record waits it out
//!   like any other holder and then takes over with a new epoch, so a zombie of the previous
//!   incarnation is fenced off. An identity must be unique among live processes.
//!
//! # Layout
//!
//! The state machine ([`Elector`]) does no I/O and reads no clock: it is fed instants and
//! backend results and answers with [`Action`]s, so every rule is tested deterministically.
//! [`spawn_elector`] runs it on tokio. Backends: [`MemoryLease`] (tests, fault injection),
//! [`FileLease`] (processes on one machine); a Kubernetes backend implements [`LeaseBackend`].

mod backend;
mod config;
mod driver;
mod elector;
mod error;
mod fence;
mod file;
mod memory;
mod record;

pub use backend::{BoxFuture, LeaseBackend};
pub use config::{ElectionConfig, JITTER_FACTOR};
pub use driver::{spawn_elector, spawn_elector_with, ElectorHandle};
pub use elector::{Action, Elector, Leadership};
pub use error::LeaseError;
pub use fence::{EpochFence, StaleEpoch};
pub use file::FileLease;
pub use memory::{MemoryFault, MemoryLease};
pub use record::{LeaseRecord, MicroTime, Version};
