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

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use symbolic::common::DebugId;

use crate::symbolicator::SourceFrame;

const SHARDS: usize = 16;

type Key = (DebugId, u64);

#[derive(Default)]
struct Generations {
    hot: HashMap<Key, (u64, Arc<[SourceFrame]>)>,
    cold: HashMap<Key, (u64, Arc<[SourceFrame]>)>,
}

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
    shards: Vec<Mutex<Generations>>,
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
            per_shard: (capacity / SHARDS).max(2),
            hasher: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Generations> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The frames cached for `key` from SymCache generation `generation`.
    pub(crate) fn get(&self, key: &Key, generation: u64) -> Option<Arc<[SourceFrame]>> {
        let mut shard = self.shard(key).lock();
        let found = match shard.hot.get(key) {
            Some((g, frames)) if *g == generation => Some(frames.clone()),
            _ => match shard.cold.remove(key) {
                Some((g, frames)) if g == generation => {
                    let per_shard = self.per_shard;
                    insert(&mut shard, per_shard, *key, generation, frames.clone());
                    Some(frames)
                }
                _ => None,
            },
        };
        drop(shard);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers the frames of `key`.
    pub(crate) fn put(&self, key: Key, generation: u64, frames: Arc<[SourceFrame]>) {
        let mut shard = self.shard(&key).lock();
        insert(&mut shard, self.per_shard, key, generation, frames);
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
            .sum();
        FrameCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
        }
    }
}

fn insert(
    shard: &mut Generations,
    per_shard: usize,
    key: Key,
    generation: u64,
    frames: Arc<[SourceFrame]>,
) {
    if shard.hot.len() >= per_shard / 2 {
        shard.cold = std::mem::take(&mut shard.hot);
    }
    shard.hot.insert(key, (generation, frames));
}
