//! In-memory lease for tests: several clients over one store, each with its own fault switch.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::backend::{BoxFuture, LeaseBackend};
use super::error::LeaseError;
use super::record::{LeaseRecord, Version};

/// A fault that a [`MemoryLease`] client injects into its own calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryFault {
    /// Calls work.
    #[default]
    None,
    /// Calls never reach the store and fail with [`LeaseError::Unavailable`] (a partition).
    Unreachable,
    /// Calls reach the store (writes take effect) but the answer is lost: they fail with
    /// [`LeaseError::Unavailable`] anyway (an ambiguous failure, like a timed-out request).
    LoseResponses,
}

#[derive(Debug, Default)]
struct Store {
    lease: Option<(LeaseRecord, u64)>,
    /// Last version handed out; versions are store-wide and never reused.
    last_version: u64,
}

/// An in-memory lease shared by several clients, for tests and single-process use.
///
/// `MemoryLease::new()` creates a store and a first client. [`new_client`](Self::new_client)
/// opens another client of the same store with its own [`MemoryFault`] switch, so a test can
/// cut one elector off while others keep working. `clone()` shares both the store and the
/// switch (it is the same client). Futures complete immediately (never pending).
/// Versions are a store-wide counter (`"1"`, `"2"`, ...).
#[derive(Clone, Debug, Default)]
pub struct MemoryLease {
    store: Arc<Mutex<Store>>,
    fault: Arc<Mutex<MemoryFault>>,
}

impl MemoryLease {
    /// A new, empty store and its first client.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another client of the same store, starting without faults.
    pub fn new_client(&self) -> Self {
        MemoryLease {
            store: Arc::clone(&self.store),
            fault: Arc::default(),
        }
    }

    /// Sets the fault injected into this client's calls (and its clones').
    pub fn set_fault(&self, fault: MemoryFault) {
        *lock(&self.fault) = fault;
    }

    /// The fault currently injected into this client's calls.
    pub fn fault(&self) -> MemoryFault {
        *lock(&self.fault)
    }

    /// The stored record and version, bypassing faults (for assertions).
    pub fn snapshot(&self) -> Option<(LeaseRecord, Version)> {
        lock(&self.store)
            .lease
            .as_ref()
            .map(|(record, v)| (record.clone(), Version::new(v.to_string())))
    }

    fn call<T>(
        &self,
        op: impl FnOnce(&mut Store) -> Result<T, LeaseError>,
    ) -> Result<T, LeaseError> {
        let fault = self.fault();
        if fault == MemoryFault::Unreachable {
            return Err(LeaseError::Unavailable(
                "memory lease: client partitioned".into(),
            ));
        }
        let result = op(&mut lock(&self.store));
        if fault == MemoryFault::LoseResponses {
            return Err(LeaseError::Unavailable(
                "memory lease: response lost".into(),
            ));
        }
        result
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LeaseBackend for MemoryLease {
    fn get(&self) -> BoxFuture<'_, Result<Option<(LeaseRecord, Version)>, LeaseError>> {
        let result = self.call(|store| {
            Ok(store
                .lease
                .as_ref()
                .map(|(record, v)| (record.clone(), Version::new(v.to_string()))))
        });
        Box::pin(std::future::ready(result))
    }

    fn create(&self, record: LeaseRecord) -> BoxFuture<'_, Result<Version, LeaseError>> {
        let result = self.call(|store| {
            if store.lease.is_some() {
                return Err(LeaseError::AlreadyExists);
            }
            store.last_version += 1;
            store.lease = Some((record, store.last_version));
            Ok(Version::new(store.last_version.to_string()))
        });
        Box::pin(std::future::ready(result))
    }

    fn update<'a>(
        &'a self,
        record: LeaseRecord,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, LeaseError>> {
        let result = self.call(|store| {
            let next = store.last_version + 1;
            match &mut store.lease {
                None => Err(LeaseError::NotFound),
                Some((_, current)) if current.to_string() != expected.as_str() => {
                    Err(LeaseError::Conflict {
                        expected: expected.clone(),
                    })
                }
                Some(lease) => {
                    *lease = (record, next);
                    store.last_version = next;
                    Ok(Version::new(next.to_string()))
                }
            }
        });
        Box::pin(std::future::ready(result))
    }
}
