//! The near cache: symbolicated addresses kept in process, bounded.
//!
//! Identical crashes repeat (a few hundred crash groups make most of the traffic), so the same
//! module-relative addresses are looked up again and again. A hit returns the shared frames of
//! an earlier lookup without touching the SymCache, demangler or path joining.
//!
//! Design: 16 shards (by address hash), each two generations of hash maps (`hot`, `cold`).
//! Inserts go to `hot`; when `hot` holds a shard's half of the capacity, `cold` is dropped and
//! `hot` becomes `cold`. A hit in `cold` is promoted to `hot`. That is an approximate LRU with
//! O(1) work and a hard bound of `capacity` entries. Entries are keyed by (debug id, address)
//! and stamped with the generation of the SymCache they came from, so a re-uploaded debug file
//! (a new SymCache) never serves stale frames.
//!
//! With a shared frame cache installed ([`crate::SharedFrames`]), the near cache is asked
//! *before* the SymCache is loaded, so it cannot key on a SymCache generation: the shared path
//! keeps its own map, keyed by [`FrameKey`] (the module-relative address before the caller
//! adjustment) and holding [`FrameValue`]s, negatives included, which expire after the
//! negative TTL. Stale values after an upload are recognised by their computation time (see
//! `shared.rs`). Both maps share the bound and the counters.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use symbolic::common::DebugId;

use crate::output::SourceFrame;
use crate::shared::{FrameKey, FrameValue};

const SHARDS: usize = 16;

type Key = (DebugId, u64);

struct Generations<K, V> {
    hot: HashMap<K, V>,
    cold: HashMap<K, V>,
}

impl<K, V> Default for Generations<K, V> {
    fn default() -> Self {
        Self {
            hot: HashMap::new(),
            cold: HashMap::new(),
        }
    }
}

/// An unshared-path entry: the SymCache generation and the frames.
type FramesEntry = (u64, Arc<[SourceFrame]>);

/// A shared-path entry: the value, and until when a negative one may be served.
type SharedEntry = (FrameValue, Option<Instant>);

/// Hit and miss counts of the near cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the SymCache.
    pub misses: u64,
    /// Entries held now.
    pub entries: u64,
}

/// A bounded cache of symbolicated addresses (see the module docs).
pub struct FrameCache {
    shards: Vec<Mutex<Generations<Key, FramesEntry>>>,
    shared: Vec<Mutex<Generations<FrameKey, SharedEntry>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for FrameCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCache")
            .field("capacity", &(self.per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

impl FrameCache {
    /// A cache holding at most `capacity` addresses (about 250 bytes each with their frames).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shared: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: (capacity / SHARDS).max(2),
            hasher: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Generations<Key, FramesEntry>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The shared-path value of `key`, unless absent, expired at `now` or not `usable`.
    pub(crate) fn get_value(
        &self,
        key: &FrameKey,
        now: Instant,
        usable: impl Fn(&FrameValue) -> bool,
    ) -> Option<FrameValue> {
        let shard = &self.shared[self.hasher.hash_one(key) as usize % SHARDS];
        let mut shard = shard.lock();
        let live = |e: &SharedEntry| e.1.is_none_or(|until| now < until) && usable(&e.0);
        let found = match shard.hot.get(key) {
            Some(e) if live(e) => Some(e.0.clone()),
            _ => match shard.cold.remove(key) {
                Some(e) if live(&e) => {
                    let value = e.0.clone();
                    insert(&mut shard, self.per_shard, *key, e);
                    Some(value)
                }
                _ => None,
            },
        };
        drop(shard);
        self.count(found.is_some());
        found
    }

    /// Remembers the shared-path value of `key`, negative ones until `until`.
    pub(crate) fn put_value(&self, key: FrameKey, value: FrameValue, until: Option<Instant>) {
        let shard = &self.shared[self.hasher.hash_one(key) as usize % SHARDS];
        insert(&mut shard.lock(), self.per_shard, key, (value, until));
    }

    /// The frames cached for `key` from SymCache generation `generation`.
    pub(crate) fn get(&self, key: &Key, generation: u64) -> Option<Arc<[SourceFrame]>> {
        let mut shard = self.shard(key).lock();
        let found = match shard.hot.get(key) {
            Some((g, frames)) if *g == generation => Some(frames.clone()),
            _ => match shard.cold.remove(key) {
                Some((g, frames)) if g == generation => {
                    let per_shard = self.per_shard;
                    insert(&mut shard, per_shard, *key, (generation, frames.clone()));
                    Some(frames)
                }
                _ => None,
            },
        };
        drop(shard);
        self.count(found.is_some());
        found
    }

    /// Remembers the frames of `key`.
    pub(crate) fn put(&self, key: Key, generation: u64, frames: Arc<[SourceFrame]>) {
        let mut shard = self.shard(&key).lock();
        insert(&mut shard, self.per_shard, key, (generation, frames));
    }

    /// Counters and size.
    pub fn stats(&self) -> FrameCacheStats {
        let entries = self
            .shards
            .iter()
            .map(|s| {
                let s = s.lock();
                (s.hot.len() + s.cold.len()) as u64
            })
            .sum::<u64>()
            + self
                .shared
                .iter()
                .map(|s| {
                    let s = s.lock();
                    (s.hot.len() + s.cold.len()) as u64
                })
                .sum::<u64>();
        FrameCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
        }
    }
}

fn insert<K: Hash + Eq, V>(shard: &mut Generations<K, V>, per_shard: usize, key: K, value: V) {
    if shard.hot.len() >= per_shard / 2 {
        shard.cold = std::mem::take(&mut shard.hot);
    }
    shard.hot.insert(key, value);
}
