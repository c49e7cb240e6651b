//! The one error type of lease election.

use std::path::PathBuf;
use std::time::Duration;

use super::record::Version;

/// Everything that can go wrong in lease election: backend outcomes and configuration.
///
/// [`Conflict`](LeaseError::Conflict), [`AlreadyExists`](LeaseError::AlreadyExists) and
/// [`NotFound`](LeaseError::NotFound) are *definitive*: the write was certainly not applied
/// (someone else got there first). Every other error from a write is *ambiguous*: the write may
/// or may not have been applied, and the elector finds out by reading the lease back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// `update` was rejected because the stored lease is no longer at the expected version.
    #[error("lease version conflict: the lease is no longer at version {expected}")]
    Conflict {
        /// The version the caller expected.
        expected: Version,
    },
    /// `create` was rejected because the lease already exists.
    #[error("lease already exists")]
    AlreadyExists,
    /// `update` was rejected because the lease does not exist.
    #[error("lease does not exist")]
    NotFound,
    /// The backend could not be reached or refused service for now (also simulated faults).
    #[error("lease backend unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish before the driver's deadline; it may still take effect.
    #[error("lease backend call timed out after {0:?}")]
    Timeout(Duration),
    /// A file operation of [`FileLease`](crate::FileLease) failed.
    #[error("lease file {}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stored lease could not be understood.
    #[error("lease data is corrupt: {0}")]
    Corrupt(String),
    /// An [`ElectionConfig`](crate::ElectionConfig) or identity was rejected.
    #[error("invalid election configuration: {0}")]
    InvalidConfig(String),
    /// Any other backend failure (for backends whose client has its own error type).
    #[error("lease backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LeaseError {
    /// True when a write certainly did not take effect because another writer won the race
    /// (conflict, already exists, not found). False for ambiguous failures.
    pub fn is_lost_race(&self) -> bool {
        matches!(
            self,
            LeaseError::Conflict { .. } | LeaseError::AlreadyExists | LeaseError::NotFound
        )
    }
}
