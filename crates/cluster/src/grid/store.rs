//! The local store of a node: the entries of the partitions it holds, bounded in bytes with
//! least-recently-used eviction, with optional expiry on an injected clock.
//!
//! An entry's size is `key.size_bytes() + value.size_bytes() + ENTRY_OVERHEAD` (the index,
//! LRU links and per-partition index cost about that much per entry). Expired entries count as
//! absent and are removed when touched or evicted. Each partition keeps an ordered index of
//! its entries by key hash, so migration can page through one partition with a cursor while
//! writes continue.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::hash::{GridKey, GridValue};

/// Bytes counted per entry on top of its key and value (hash-map slot, LRU links, partition
/// index node).
pub const ENTRY_OVERHEAD: usize = 96;

/// Wall-clock time in Unix milliseconds, injected so expiry can be tested.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where a partition scan resumes: after this (key hash, slot).
pub type Cursor = (u64, u32);

/// One entry as moved between nodes: key, value, expiry (Unix ms).
pub type WireEntry<K, V> = (K, V, Option<u64>);

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored (new or replacing).
    Stored,
    /// A live entry was there and `if_absent` was asked: kept it.
    Kept,
    /// Larger than the whole bound, or already expired: not stored.
    Rejected,
}

const NIL: u32 = u32::MAX;

struct Entry<K, V> {
    key: K,
    value: V,
    hash: u64,
    partition: u32,
    size: usize,
    expires_at: Option<u64>,
}

struct Slot<K, V> {
    entry: Option<Entry<K, V>>,
    prev: u32,
    next: u32,
}

/// The bounded store (not synchronised: the grid holds it under a mutex).
pub struct Store<K, V> {
    max_bytes: usize,
    index: HashMap<K, u32>,
    slots: Vec<Slot<K, V>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    partitions: Vec<BTreeSet<(u64, u32)>>,
    bytes: usize,
    evictions: u64,
    expired: u64,
}

impl<K, V> std::fmt::Debug for Store<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.index.len())
            .field("bytes", &self.bytes)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

fn live(expires_at: Option<u64>, now_ms: u64) -> bool {
    expires_at.is_none_or(|e| e > now_ms)
}

impl<K: GridKey, V: GridValue> Store<K, V> {
    /// An empty store for `partitions` partitions holding at most `max_bytes`.
    pub fn new(partitions: u32, max_bytes: usize) -> Self {
        Store {
            max_bytes,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            partitions: vec![BTreeSet::new(); partitions as usize],
            bytes: 0,
            evictions: 0,
            expired: 0,
        }
    }

    /// Entries stored (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes counted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Entries evicted to stay within the bound, so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Entries found expired and removed, so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Entries of partition `p`.
    pub fn partition_len(&self, p: u32) -> usize {
        self.partitions.get(p as usize).map_or(0, BTreeSet::len)
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    fn remove_slot(&mut self, i: u32) -> Entry<K, V> {
        self.unlink(i);
        let e = self.slots[i as usize]
            .entry
            .take()
            .expect("linked slot holds an entry");
        self.index.remove(&e.key);
        self.partitions[e.partition as usize].remove(&(e.hash, i));
        self.bytes -= e.size;
        self.free.push(i);
        e
    }

    /// The value of `key` if present and not expired; marks it most recently used.
    pub fn get(&mut self, key: &K, now_ms: u64) -> Option<V> {
        let i = *self.index.get(key)?;
        let e = self.slots[i as usize].entry.as_ref().expect("indexed");
        if !live(e.expires_at, now_ms) {
            self.remove_slot(i);
            self.expired += 1;
            return None;
        }
        let v = e.value.clone();
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(v)
    }

    /// Whether `key` is present and not expired (does not touch the LRU order).
    pub fn contains(&self, key: &K, now_ms: u64) -> bool {
        self.index.get(key).is_some_and(|i| {
            let e = self.slots[*i as usize].entry.as_ref().expect("indexed");
            live(e.expires_at, now_ms)
        })
    }

    /// Stores `value` under `key` in partition `partition` (its hash is `hash`), evicting the
    /// least recently used entries as needed. With `if_absent`, a live entry is kept.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        key: K,
        hash: u64,
        partition: u32,
        value: V,
        expires_at: Option<u64>,
        now_ms: u64,
        if_absent: bool,
    ) -> Inserted {
        if !live(expires_at, now_ms) {
            return Inserted::Rejected;
        }
        if let Some(&i) = self.index.get(&key) {
            let old = self.slots[i as usize].entry.as_ref().expect("indexed");
            if if_absent && live(old.expires_at, now_ms) {
                return Inserted::Kept;
            }
            self.remove_slot(i);
        }
        let size = key.size_bytes() + value.size_bytes() + ENTRY_OVERHEAD;
        if size > self.max_bytes {
            return Inserted::Rejected;
        }
        while self.bytes + size > self.max_bytes && self.tail != NIL {
            self.remove_slot(self.tail);
            self.evictions += 1;
        }
        let entry = Entry {
            key: key.clone(),
            value,
            hash,
            partition,
            size,
            expires_at,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].entry = Some(entry);
                i
            }
            None => {
                self.slots.push(Slot {
                    entry: Some(entry),
                    prev: NIL,
                    next: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.push_front(i);
        self.index.insert(key, i);
        self.partitions[partition as usize].insert((hash, i));
        self.bytes += size;
        Inserted::Stored
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.index.get(key) {
            Some(&i) => {
                self.remove_slot(i);
                true
            }
            None => false,
        }
    }

    /// Removes every entry of partition `p`; how many.
    pub fn drop_partition(&mut self, p: u32) -> usize {
        let slots: Vec<u32> = self.partitions[p as usize]
            .iter()
            .map(|(_, i)| *i)
            .collect();
        for i in &slots {
            self.remove_slot(*i);
        }
        slots.len()
    }

    /// The next chunk of partition `p` after `cursor` (from the start with `None`): live
    /// entries up to `max_entries` or about `max_bytes`, in key-hash order, and the cursor of
    /// the following chunk (`None`: this was the last). Does not touch the LRU order.
    pub fn partition_chunk(
        &self,
        p: u32,
        cursor: Option<Cursor>,
        max_entries: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> (Vec<WireEntry<K, V>>, Option<Cursor>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let set = &self.partitions[p as usize];
        let start = cursor.map_or(Unbounded, Excluded);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        for &(hash, i) in set.range((start, Unbounded)) {
            if out.len() >= max_entries.max(1) || (bytes >= max_bytes && !out.is_empty()) {
                return (out, last);
            }
            last = Some((hash, i));
            let e = self.slots[i as usize].entry.as_ref().expect("indexed");
            if live(e.expires_at, now_ms) {
                bytes += e.size;
                out.push((e.key.clone(), e.value.clone(), e.expires_at));
            }
        }
        (out, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::hash::{key_hash, partition_of};

    fn put(
        s: &mut Store<String, String>,
        k: &str,
        v: &str,
        exp: Option<u64>,
        now: u64,
    ) -> Inserted {
        let h = key_hash(&k.to_string());
        s.insert(k.into(), h, partition_of(h, 7), v.into(), exp, now, false)
    }

    fn entry_size(k: &str, v: &str) -> usize {
        GridKey::size_bytes(&k.to_string()) + GridValue::size_bytes(&v.to_string()) + ENTRY_OVERHEAD
    }

    /// Rule: memory bound — bytes never exceed the bound; the least recently used entry goes
    /// first; every eviction is counted.
    #[test]
    fn lru_by_bytes_evicts_the_least_recently_used_and_counts() {
        let one = entry_size("k0", "vvvv");
        let mut s = Store::<String, String>::new(7, one * 3);
        for k in ["k0", "k1", "k2"] {
            assert_eq!(put(&mut s, k, "vvvv", None, 0), Inserted::Stored);
        }
        assert_eq!(s.bytes(), one * 3);
        // Touch k0: k1 is now the least recently used.
        assert_eq!(s.get(&"k0".into(), 0).as_deref(), Some("vvvv"));
        put(&mut s, "k3", "vvvv", None, 0);
        assert!(s.bytes() <= s.max_bytes());
        assert_eq!(s.evictions(), 1);
        assert!(s.get(&"k1".into(), 0).is_none());
        for k in ["k0", "k2", "k3"] {
            assert!(s.get(&k.to_string(), 0).is_some(), "{k}");
        }
        // A value bigger than the whole bound is refused, and evicts nothing.
        let big = "x".repeat(one * 4);
        assert_eq!(put(&mut s, "big", &big, None, 0), Inserted::Rejected);
        assert_eq!((s.len(), s.evictions()), (3, 1));
        // Replacing an entry re-counts its size.
        put(&mut s, "k0", "v", None, 0);
        assert_eq!(s.bytes(), one * 2 + entry_size("k0", "v"));
    }

    /// Rule: expired = absent, on the injected clock.
    #[test]
    fn expired_entries_are_absent() {
        let mut s = Store::<String, String>::new(7, 1 << 20);
        put(&mut s, "neg", "missing", Some(1_000), 0);
        assert!(s.contains(&"neg".into(), 999));
        assert!(s.get(&"neg".into(), 999).is_some());
        assert!(s.get(&"neg".into(), 1_000).is_none());
        assert_eq!((s.len(), s.expired(), s.bytes()), (0, 1, 0));
        // Already expired on arrival: not stored.
        assert_eq!(put(&mut s, "old", "x", Some(5), 10), Inserted::Rejected);
    }

    #[test]
    fn if_absent_keeps_live_entries_and_replaces_expired_ones() {
        let mut s = Store::<String, String>::new(7, 1 << 20);
        put(&mut s, "a", "new", None, 0);
        let h = key_hash(&"a".to_string());
        let p = partition_of(h, 7);
        assert_eq!(
            s.insert("a".into(), h, p, "old".into(), None, 0, true),
            Inserted::Kept
        );
        assert_eq!(s.get(&"a".into(), 0).as_deref(), Some("new"));
        put(&mut s, "b", "gone", Some(10), 0);
        let h = key_hash(&"b".to_string());
        let p = partition_of(h, 7);
        assert_eq!(
            s.insert("b".into(), h, p, "fresh".into(), None, 20, true),
            Inserted::Stored
        );
    }

    /// Rule: per-partition iteration for migration pages through every live entry exactly
    /// once, in chunks bounded by count and bytes.
    #[test]
    fn partition_chunks_cover_the_partition_once() {
        let mut s = Store::<String, String>::new(7, 1 << 24);
        for i in 0..5000 {
            put(&mut s, &format!("key-{i}"), "value", None, 0);
        }
        let mut total = 0;
        for p in 0..7 {
            let mut seen = std::collections::HashSet::new();
            let mut cursor = None;
            loop {
                let (chunk, next) = s.partition_chunk(p, cursor, 100, usize::MAX, 0);
                assert!(chunk.len() <= 100);
                for (k, _, _) in chunk {
                    assert_eq!(partition_of(key_hash(&k), 7), p);
                    assert!(seen.insert(k));
                }
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(seen.len(), s.partition_len(p));
            total += seen.len();
        }
        assert_eq!(total, 5000);
        // A byte limit cuts chunks too (at least one entry per chunk).
        let (chunk, next) = s.partition_chunk(0, None, 1000, 1, 0);
        assert_eq!(chunk.len(), 1);
        assert!(next.is_some());
        // Dropping a partition frees its bytes.
        let before = s.bytes();
        let n = s.drop_partition(3);
        assert_eq!(s.partition_len(3), 0);
        assert!(n > 0);
        assert_eq!(s.len(), 5000 - n);
        assert!(s.bytes() < before);
        let mut rest = 0;
        for p in 0..7 {
            let (chunk, _) = s.partition_chunk(p, None, usize::MAX, usize::MAX, 0);
            rest += chunk
                .iter()
                .map(|(k, v, _)| entry_size(k, v))
                .sum::<usize>();
        }
        assert_eq!(s.bytes(), rest);
    }
}
