//! The receiving side of fencing: reject messages from leaders of older epochs.

use std::sync::atomic::{AtomicU64, Ordering};

/// A message carried an epoch lower than one already seen: it comes from a deposed leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale leader epoch {epoch}: epoch {highest} has already been seen")]
pub struct StaleEpoch {
    /// The rejected epoch.
    pub epoch: u64,
    /// The highest epoch seen so far.
    pub highest: u64,
}

/// Remembers the highest leader epoch seen and rejects lower ones.
///
/// Every leader-originated message carries the sender's [`Leadership::epoch`]
/// (`lease_transitions` of the record it leads under); a receiver passes it to
/// [`check`](Self::check) before acting. Equal epochs pass (the same leader term), higher ones
/// pass and raise the bar. Lock-free and `Sync`: one fence can be shared (e.g. in an `Arc`) by
/// all tasks of a receiver.
///
/// [`Leadership::epoch`]: crate::Leadership::epoch
#[derive(Debug, Default)]
pub struct EpochFence {
    highest: AtomicU64,
    rejected: AtomicU64,
}

impl EpochFence {
    /// A fence that has seen nothing (every epoch passes at first).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `epoch` if no higher epoch was seen before (remembering it), otherwise counts
    /// and returns the rejection. Atomic: concurrent checks behave as if run in some order.
    pub fn check(&self, epoch: u64) -> Result<(), StaleEpoch> {
        let before = self.highest.fetch_max(epoch, Ordering::AcqRel);
        if epoch < before {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(StaleEpoch {
                epoch,
                highest: before,
            });
        }
        Ok(())
    }

    /// Raises the bar to `epoch` without judging a message: the receiver learnt of a newer
    /// leader term by itself (its own read of the lease).
    pub fn observe(&self, epoch: u64) {
        self.highest.fetch_max(epoch, Ordering::AcqRel);
    }

    /// The highest epoch accepted so far (0 if none).
    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::Acquire)
    }

    /// How many checks were rejected.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}
