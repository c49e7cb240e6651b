//! Stable key hashing and the key/value traits of the grid.
//!
//! Every pod must map a key to the same partition, in every run and across a rolling upgrade
//! that mixes two builds. `std::hash::Hash` does not promise that: its output for a type may
//! change between Rust releases, and integers hash in native byte order and width. Keys
//! therefore describe themselves to a [`StableHasher`] (SipHash-1-3 under a fixed key, all
//! integers little-endian, strings length-prefixed) through [`GridKey::stable_hash`].

use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use siphasher::sip::SipHasher13;

/// The fixed SipHash key of the grid ("crashgri", "d-grid-1"). Changing it moves every key
/// to another partition: never change it in a running cluster.
const SIP_KEY: (u64, u64) = (0x6372_6173_6867_7269, 0x642d_6772_6964_2d31);

/// A hasher that gives the same result on every pod, platform and run.
#[derive(Debug, Clone)]
pub struct StableHasher(SipHasher13);

impl Default for StableHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl StableHasher {
    /// A hasher under the grid's fixed key.
    pub fn new() -> Self {
        StableHasher(SipHasher13::new_with_keys(SIP_KEY.0, SIP_KEY.1))
    }

    /// Raw bytes (not length-prefixed: use [`write_str`](Self::write_str) or
    /// [`write_bytes`](Self::write_bytes) for variable-length fields).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// A variable-length byte string, length-prefixed so `("ab", "c")` and `("a", "bc")` differ.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.0.write(bytes);
    }

    /// A string, length-prefixed.
    pub fn write_str(&mut self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    /// One byte.
    pub fn write_u8(&mut self, v: u8) {
        self.0.write(&[v]);
    }

    /// A `u32`, little-endian.
    pub fn write_u32(&mut self, v: u32) {
        self.0.write(&v.to_le_bytes());
    }

    /// A `u64`, little-endian.
    pub fn write_u64(&mut self, v: u64) {
        self.0.write(&v.to_le_bytes());
    }

    /// A `u128`, little-endian.
    pub fn write_u128(&mut self, v: u128) {
        self.0.write(&v.to_le_bytes());
    }

    /// The hash.
    pub fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// A key of the grid.
///
/// `Eq + Hash` serve in-process maps (any hasher); [`stable_hash`](Self::stable_hash) decides
/// the partition and must be a pure function of the key's value, the same in every build.
/// Implemented for strings, integers, byte vectors and tuples of keys; implement it for your
/// own key types by feeding every field to the hasher.
pub trait GridKey:
    Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + std::fmt::Debug + 'static
{
    /// Feeds the key's identity to `state`.
    fn stable_hash(&self, state: &mut StableHasher);

    /// Approximate memory the key takes, heap included (counted against the memory bound).
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// A value of the grid.
pub trait GridValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Approximate memory the value takes, heap included (counted against the memory bound).
    fn size_bytes(&self) -> usize;

    /// How long the value may be served; `None` (the default) keeps it until evicted. Negative
    /// entries ("no debug file for this id") answer a short TTL so a later upload is seen.
    fn ttl(&self) -> Option<Duration> {
        None
    }
}

/// The stable 64-bit hash of a key.
pub fn key_hash<K: GridKey>(key: &K) -> u64 {
    let mut h = StableHasher::new();
    key.stable_hash(&mut h);
    h.finish()
}

/// The partition of a key hash among `partitions` (a multiply-shift range reduction: uniform
/// for a uniform hash, and cheaper than a division).
pub fn partition_of(key_hash: u64, partitions: u32) -> u32 {
    ((key_hash as u128 * partitions as u128) >> 64) as u32
}

impl GridKey for String {
    fn stable_hash(&self, state: &mut StableHasher) {
        state.write_str(self);
    }
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<String>() + self.capacity()
    }
}

impl GridKey for Vec<u8> {
    fn stable_hash(&self, state: &mut StableHasher) {
        state.write_bytes(self);
    }
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Vec<u8>>() + self.capacity()
    }
}

macro_rules! int_key {
    ($($t:ty => $w:ident as $as:ty),*) => {$(
        impl GridKey for $t {
            fn stable_hash(&self, state: &mut StableHasher) {
                state.$w(*self as $as);
            }
        }
    )*};
}
int_key!(u32 => write_u32 as u32, u64 => write_u64 as u64, i32 => write_u32 as u32,
    i64 => write_u64 as u64, u128 => write_u128 as u128);

impl<A: GridKey, B: GridKey> GridKey for (A, B) {
    fn stable_hash(&self, state: &mut StableHasher) {
        self.0.stable_hash(state);
        self.1.stable_hash(state);
    }
    fn size_bytes(&self) -> usize {
        self.0.size_bytes() + self.1.size_bytes()
    }
}

impl<A: GridKey, B: GridKey, C: GridKey> GridKey for (A, B, C) {
    fn stable_hash(&self, state: &mut StableHasher) {
        self.0.stable_hash(state);
        self.1.stable_hash(state);
        self.2.stable_hash(state);
    }
    fn size_bytes(&self) -> usize {
        self.0.size_bytes() + self.1.size_bytes() + self.2.size_bytes()
    }
}

impl GridValue for String {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<String>() + self.capacity()
    }
}

/// Shared values: a hit clones the `Arc`, not the value (serialized as the value itself).
impl<T: GridValue> GridValue for std::sync::Arc<T> {
    fn size_bytes(&self) -> usize {
        (**self).size_bytes() + 2 * std::mem::size_of::<usize>()
    }
    fn ttl(&self) -> Option<Duration> {
        (**self).ttl()
    }
}

impl GridValue for Vec<u8> {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Vec<u8>>() + self.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_pinned_so_every_build_agrees() {
        // Pinned values: if one changes, keys move partitions between two builds of a
        // rolling upgrade. Change only with a migration plan.
        assert_eq!(
            key_hash(&"debug-id:0x1000".to_string()),
            key_hash(&"debug-id:0x1000".to_string())
        );
        let pinned = [
            key_hash(&String::from("a")),
            key_hash(&7u64),
            key_hash(&(String::from("x"), 1u64)),
        ];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u64; 3] = [
        8046445313457033445,
        16896715743380347163,
        13902218885403716190,
    ];

    #[test]
    fn tuples_are_length_prefixed() {
        let a = (String::from("ab"), String::from("c"));
        let b = (String::from("a"), String::from("bc"));
        assert_ne!(key_hash(&a), key_hash(&b));
    }

    #[test]
    fn partition_of_is_in_range_and_uniform() {
        let n = 271;
        let mut counts = vec![0u32; n as usize];
        for i in 0..271_000u64 {
            let p = partition_of(key_hash(&i), n);
            assert!(p < n);
            counts[p as usize] += 1;
        }
        // 1000 expected per partition; a uniform hash stays well within ±20 %.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(partition_of(0, n), 0);
        assert_eq!(partition_of(u64::MAX, n), n - 1);
    }
}
