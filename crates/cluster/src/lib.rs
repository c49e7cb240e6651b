//! The reusable pod-clustering kit of crashgrid; it knows nothing about crashes.
//!
//! Today it holds **leader election on a lease** with client-go semantics and fencing epochs:
//!
//! - [`LeaseRecord`] / [`Version`]: the lease as stored (the fields of a Kubernetes
//!   `coordination.k8s.io/v1` Lease) and its opaque optimistic-concurrency version
//!   (`resourceVersion`).
//! - [`LeaseBackend`]: compare-and-swap storage for one lease, with [`MemoryLease`] (tests,
//!   fault injection) and [`FileLease`] (several processes on one machine). A Kubernetes
//!   backend implements the same trait.
//! - [`Elector`]: the election as a pure state machine (no I/O, no clock reads), fed instants
//!   and backend results, answering with the next [`Action`].
//! - [`spawn_elector`] / [`ElectorHandle`]: a thin tokio driver that publishes [`Leadership`]
//!   on a `watch` channel and releases the lease on shutdown.
//! - [`EpochFence`]: the receiving side of fencing; rejects messages from deposed leaders.
//!
//! Two design points carry the safety (the full argument is in `src/election/mod.rs`):
//!
//! - **Expiry is judged on the observer's own monotonic clock.** A candidate takes a lease
//!   over only after it saw the same version unchanged for `lease_duration`, counted from when
//!   *it* first saw it; the `renewTime` written by the holder is never compared with any clock.
//!   A leader stops acting `renew_deadline` (< `lease_duration`) after *sending* its last
//!   successful renewal. Clock offsets between pods therefore cannot produce two leaders.
//! - **Fencing.** A process can still be paused between checking leadership and acting on it,
//!   so every leader-originated message carries `epoch = lease_transitions` of the record it
//!   leads under, and receivers reject lower epochs with an [`EpochFence`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod discovery;
mod election;
mod grid;
mod kube;
mod membership;
mod rpc;
mod runtime;

pub use crate::kube::{
    kubernetes_peers, namespace_from_env, KubeDiscoveryConfig, KubeLease, KubeSource,
    SERVICE_ACCOUNT_NAMESPACE_FILE,
};
pub use discovery::{dns_peers, static_peers, DiscoveryError, DiscoveryHandle, PeerSet};
pub use election::{
    spawn_elector, spawn_elector_with, Action, BoxFuture, ElectionConfig, Elector, ElectorHandle,
    EpochFence, FileLease, Leadership, LeaseBackend, LeaseError, LeaseRecord, MemoryFault,
    MemoryLease, MicroTime, StaleEpoch, Version, JITTER_FACTOR,
};
pub use grid::{
    assign, key_hash, partition_of, plan_leave, plan_migration, rendezvous_weight, ClaimOutcome,
    Clock, Cursor, Grid, GridConfig, GridError, GridKey, GridStats, GridStatsSnapshot, GridValue,
    Inserted, LatencyHistogram, LeaveReport, ManualClock, MigrationPlan, PartitionTable, Push,
    Safety, StableHasher, Store, SystemClock, Transfer, WireEntry, ENTRY_OVERHEAD,
};
pub use membership::{Heartbeat, Member, MemberList, Membership, MembershipConfig, NodeInfo};
pub use rpc::{
    call_json, call_with_retry, decode_json, encode_json, serve as serve_rpc, Handler, LogEvery,
    MemoryNetwork, MemoryTransport, RetryPolicy, RpcConfig, RpcError, RpcStats, TcpTransport,
    Transport,
};
pub use runtime::{
    Cluster, ClusterConfig, ClusterError, ClusterEvent, ClusterState, LeaseTimings, Transition,
    HEARTBEAT_METHOD, TRANSITIONS_KEPT,
};
