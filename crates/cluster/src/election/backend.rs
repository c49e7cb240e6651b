//! The storage contract of a lease: read, create, compare-and-swap update.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::error::LeaseError;
use super::record::{LeaseRecord, Version};

/// A boxed, `Send` future, as returned by [`LeaseBackend`] methods (the trait stays
/// object-safe: `Arc<dyn LeaseBackend>` selects a backend at run time).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Storage for one lease with optimistic concurrency, shaped after a Kubernetes `Lease`
/// object: `get` ~ GET, `create` ~ POST (409 AlreadyExists), `update` ~ PUT carrying
/// `metadata.resourceVersion` (409 Conflict).
///
/// Object-safe (methods return [`BoxFuture`]), so `Arc<dyn LeaseBackend>` works; implemented
/// for `Arc<T>` and `Box<T>` of any backend.
///
/// Contract every implementation keeps (checked by the conformance suite in
/// `tests/cluster.rs` for [`MemoryLease`](crate::MemoryLease) and
/// [`FileLease`](crate::FileLease)):
///
/// - Linearizable: each call takes effect atomically at one point between its start and end,
///   across all clients (processes) of the same lease.
/// - Every successful write returns a new [`Version`], never equal to any earlier version of
///   this lease; `get` returns the record and version of the latest write.
/// - `create` fails with [`LeaseError::AlreadyExists`] if the lease exists; `update` fails with
///   [`LeaseError::Conflict`] if the stored version is not `expected`, and with
///   [`LeaseError::NotFound`] if there is no lease. A failed call changes nothing.
pub trait LeaseBackend: Send + Sync {
    /// The current record and its version, or `None` if the lease was never created.
    fn get(&self) -> BoxFuture<'_, Result<Option<(LeaseRecord, Version)>, LeaseError>>;

    /// Creates the lease; [`LeaseError::AlreadyExists`] if it exists.
    fn create(&self, record: LeaseRecord) -> BoxFuture<'_, Result<Version, LeaseError>>;

    /// Replaces the record if the stored version is still `expected` (compare-and-swap);
    /// [`LeaseError::Conflict`] if it moved.
    fn update<'a>(
        &'a self,
        record: LeaseRecord,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, LeaseError>>;
}

impl<T: LeaseBackend + ?Sized> LeaseBackend for Arc<T> {
    fn get(&self) -> BoxFuture<'_, Result<Option<(LeaseRecord, Version)>, LeaseError>> {
        (**self).get()
    }

    fn create(&self, record: LeaseRecord) -> BoxFuture<'_, Result<Version, LeaseError>> {
        (**self).create(record)
    }

    fn update<'a>(
        &'a self,
        record: LeaseRecord,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, LeaseError>> {
        (**self).update(record, expected)
    }
}

impl<T: LeaseBackend + ?Sized> LeaseBackend for Box<T> {
    fn get(&self) -> BoxFuture<'_, Result<Option<(LeaseRecord, Version)>, LeaseError>> {
        (**self).get()
    }

    fn create(&self, record: LeaseRecord) -> BoxFuture<'_, Result<Version, LeaseError>> {
        (**self).create(record)
    }

    fn update<'a>(
        &'a self,
        record: LeaseRecord,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, LeaseError>> {
        (**self).update(record, expected)
    }
}
