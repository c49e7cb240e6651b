//! Symbolication through a frame cache shared by every pod of a cluster.
//!
//! # Keys and values
//!
//! A [`FrameKey`] names one reported frame's lookup *without* the SymCache: the module's debug
//! id, the module-relative address **before** the caller adjustment, whether it is the
//! crashing frame, and the image address modulo 8. The caller adjustment needs the debug
//! file's architecture (only the SymCache knows it), so it is part of the *value*: a pod that
//! finds every key of a crash in the shared cache loads, converts and parses no SymCache at
//! all. (The adjustment aligns the *absolute* address to the instruction size — up to 8 bytes
//! — before stepping back, so the image address's low three bits are in the key: they are 0
//! for every page-aligned image, and with them the result equals the unshared path's exactly.)
//!
//! A [`FrameValue`] is what the unshared path would conclude for the frame:
//! [`Found`](FrameValue::Found) (the adjusted lookup address and the source frames innermost
//! first, inlined ones included; empty when no symbol covers the address),
//! [`Missing`](FrameValue::Missing) (no debug file) or [`Malformed`](FrameValue::Malformed)
//! (the debug file cannot be read). **Negatives are shared**, for the negative TTL (the
//! cache's implementation expires them): a flood of frames of a module without debug file
//! costs one store lookup in the whole cluster per TTL, not one per pod. (Sentry's
//! Symbolicator shares found results through its shared cache but keeps negative results per
//! instance; here each pod has its own symbol store, see below.)
//!
//! # The path of one crash ([`Symbolicator::symbolicate`] with a shared cache installed)
//!
//! 1. Every frame with a module and a debug id gets its key; duplicates are looked up once.
//! 2. The near cache (in process, see [`FrameCache`](crate::FrameCache)) answers what it can.
//!    It cannot use the SymCache generation rule of the unshared path (the SymCache is not
//!    loaded), so it keeps these values in a map of its own keyed by [`FrameKey`], negatives
//!    until their TTL runs out.
//! 3. All remaining keys go to the shared cache in **one**
//!    [`get_or_compute`](SharedFrames::get_or_compute) call per crash (the grid makes it one
//!    RPC per owner). Keys nobody knows are computed here, in one batch per debug file, with
//!    the SymCache — loaded or converted only now — and stored in the shared cache.
//! 4. Frames, statuses and module reports are built from the values exactly as the unshared
//!    path builds them from SymCache lookups. A module's `debug_status` comes from the value
//!    of its first frame (with consistent values, all its frames agree).
//!
//! # Uploads
//!
//! Each pod has its own symbol store, and values may come from another pod or from before an
//! upload. Values carry when they were computed (`at_ms`, Unix milliseconds), and a pod does
//! not trust, for a debug id it received a file for (see [`Symbolicator::store_debug_file`]):
//! a **negative** computed before that upload (the file may be what was missing), nor a
//! **found** value computed before an upload that *replaced* a different stored file (e.g. a
//! file with debug information after a stripped one). Such values are recomputed here and
//! written back. A brand-new pod receiving every file does not distrust found values, so it
//! starts warm. What stays possible: a pod *lacking* a file the others have shares its
//! negatives for up to the TTL (upload debug files to every pod), and clocks skewed between
//! pods blur the `at_ms` comparison by their skew.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use symbolic::common::{Arch, DebugId};

use crate::cache::CacheError;
use crate::event::CrashEvent;
use crate::names::lookup_in;
use crate::output::{
    EventMeta, FrameStatus, ModuleReport, SourceFrame, SymbolicatedCrash, SymbolicatedFrame,
    SymbolicatedThread, SYMBOLS_ONLY_NOTE,
};
use crate::store::{IndexChange, StoreError, StoredFile};
use crate::symbolicator::{caller_address, push_found, unresolved_frame, Symbolicator};

/// The key of one frame lookup in a shared cache (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FrameKey {
    /// The module's debug id.
    pub debug_id: DebugId,
    /// The reported address minus the image address, **before** the caller adjustment.
    pub rel_addr: u64,
    /// Whether this is the crashing frame (looked up as is, not at its caller address).
    pub crashing: bool,
    /// The image address modulo 8 (0 for every page-aligned image).
    pub image_align: u8,
}

/// Any multiple of 8 far from 0 and from `u64::MAX`: the absolute address the adjustment is
/// computed at, so neither end can wrap.
const ADJUST_BASE: u64 = 1 << 63;

impl FrameKey {
    /// The key of a frame at absolute address `abs` in a module loaded at `image_addr`.
    pub fn new(debug_id: DebugId, abs: u64, image_addr: u64, crashing: bool) -> Self {
        Self {
            debug_id,
            rel_addr: abs.wrapping_sub(image_addr),
            crashing,
            image_align: (image_addr % 8) as u8,
        }
    }

    /// The module-relative address to look up in a debug file of `arch`: what the unshared
    /// path computes as `caller_address(arch, abs, crashing) - image_addr`.
    pub fn lookup_addr(&self, arch: Arch) -> u64 {
        let base = ADJUST_BASE + u64::from(self.image_align);
        caller_address(arch, base.wrapping_add(self.rel_addr), self.crashing).wrapping_sub(base)
    }
}

/// The outcome of one frame lookup, as kept in a shared cache (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameValue {
    /// The debug file was read: the adjusted module-relative address looked up, and the
    /// source frames found there, innermost first (empty: no symbol covers the address).
    Found {
        /// The module-relative address looked up (after the caller adjustment).
        lookup_addr: u64,
        /// Source frames, innermost first, inlined ones included.
        frames: Arc<[SourceFrame]>,
        /// When it was computed, Unix milliseconds.
        at_ms: u64,
        /// The debug file's debug info was unreadable: `frames` come from its symbol table.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        symbols_only: bool,
    },
    /// No debug file is stored for the module.
    Missing {
        /// When it was computed, Unix milliseconds.
        at_ms: u64,
    },
    /// A debug file is stored but cannot be read.
    Malformed {
        /// Why (as in [`CacheError::Malformed`]).
        reason: String,
        /// When it was computed, Unix milliseconds.
        at_ms: u64,
    },
}

impl FrameValue {
    /// Missing or malformed: kept only for the negative TTL.
    pub fn is_negative(&self) -> bool {
        !matches!(self, FrameValue::Found { .. })
    }

    /// When the value was computed, Unix milliseconds.
    pub fn at_ms(&self) -> u64 {
        match self {
            FrameValue::Found { at_ms, .. }
            | FrameValue::Missing { at_ms }
            | FrameValue::Malformed { at_ms, .. } => *at_ms,
        }
    }
}

/// A frame cache shared by the pods of a cluster, called from symbolication worker threads
/// (plain threads, blocking calls).
pub trait SharedFrames: Send + Sync {
    /// The values of `keys`, in order, one per key. Keys the cache does not hold are handed
    /// to `compute` (all of them in one call, or a few calls; each call answers one value per
    /// key given, in order), and what it answers is stored for the other pods. A cache that
    /// cannot be reached computes everything with `compute`: never fails.
    fn get_or_compute(
        &self,
        keys: &[FrameKey],
        compute: &mut dyn FnMut(&[FrameKey]) -> Vec<FrameValue>,
    ) -> Vec<FrameValue>;

    /// Stores values computed outside [`get_or_compute`](Self::get_or_compute) (a value found
    /// in the cache but not trusted here, recomputed; see the module docs). Best effort.
    fn put(&self, entries: &[(FrameKey, FrameValue)]);
}

/// The uploads a pod received, per debug id: when a file was last stored, and when a stored
/// file was last replaced by a different one (0: never).
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    by_id: RwLock<HashMap<DebugId, (u64, u64)>>,
}

impl Uploads {
    fn record(&self, debug_id: DebugId, change: IndexChange) {
        let now = now_ms();
        let mut map = self.by_id.write();
        let mark = map.entry(debug_id).or_insert((0, 0));
        mark.0 = now;
        if change == IndexChange::Replaced {
            mark.1 = now;
        }
    }

    /// Whether a value computed somewhere at `v.at_ms()` may be served for `key` here.
    fn trusts(&self, key: &FrameKey, v: &FrameValue) -> bool {
        let map = self.by_id.read();
        match map.get(&key.debug_id) {
            None => true,
            Some(&(stored, replaced)) => {
                let since = if v.is_negative() { stored } else { replaced };
                v.at_ms() >= since
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One reported frame on its way through the shared path.
enum Slot {
    /// Final without a lookup (no module, or a module without debug id).
    Done(SymbolicatedFrame),
    /// Waits for the value of key `.1`.
    Keyed(SymbolicatedFrame, usize),
}

impl Symbolicator {
    /// Installs the shared frame cache (once; later calls are refused and answer `false`).
    /// From then on [`symbolicate`](Self::symbolicate) goes through it, in this symbolicator
    /// and every clone of it.
    pub fn install_shared(&self, shared: Arc<dyn SharedFrames>) -> bool {
        self.shared.set(shared).is_ok()
    }

    /// The shared frame cache, once installed.
    pub fn shared(&self) -> Option<&Arc<dyn SharedFrames>> {
        self.shared.get()
    }

    /// Imports a debug file into the store and forgets what was concluded without it: the
    /// SymCaches of its ids (and their remembered failures) and, in the shared path, values
    /// computed before now that the new file may contradict (see the module docs).
    pub fn store_debug_file(&self, name: &str, data: &[u8]) -> Result<Vec<StoredFile>, StoreError> {
        let changes = self.caches.store().add_bytes_changes(name, data)?;
        let mut stored = Vec::with_capacity(changes.len());
        for (file, change) in changes {
            self.caches.invalidate(&file.object.debug_id);
            self.uploads.record(file.object.debug_id, change);
            stored.push(file);
        }
        Ok(stored)
    }

    /// Computes the values of `keys` with the SymCaches (one SymCache fetch per debug id).
    pub fn compute_frames(&self, keys: &[FrameKey]) -> Vec<FrameValue> {
        let at_ms = now_ms();
        let mut out: Vec<Option<FrameValue>> = vec![None; keys.len()];
        let mut groups: Vec<(DebugId, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<DebugId, usize> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let g = *group_of.entry(k.debug_id).or_insert_with(|| {
                groups.push((k.debug_id, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let negative = |e: CacheError| match e {
            CacheError::Missing(_) => FrameValue::Missing { at_ms },
            CacheError::Malformed { reason, .. } => FrameValue::Malformed { reason, at_ms },
        };
        for (debug_id, idx) in groups {
            let looked_up = self.caches.get(&debug_id).and_then(|cache| {
                let arch = cache.arch();
                cache
                    .with(|sc| {
                        idx.iter()
                            .map(|&i| {
                                let addr = keys[i].lookup_addr(arch);
                                (addr, lookup_in(sc, &cache.names, addr))
                            })
                            .collect::<Vec<_>>()
                    })
                    .map(|found| (found, cache.symbols_only()))
            });
            match looked_up {
                Ok((found, symbols_only)) => {
                    for (&i, (lookup_addr, frames)) in idx.iter().zip(found) {
                        out[i] = Some(FrameValue::Found {
                            lookup_addr,
                            frames: frames.into(),
                            at_ms,
                            symbols_only,
                        });
                    }
                }
                Err(e) => {
                    let v = negative(e);
                    for &i in &idx {
                        out[i] = Some(v.clone());
                    }
                }
            }
        }
        out.into_iter()
            .map(|v| v.expect("every key belongs to a group"))
            .collect()
    }

    /// The values of `keys`: near cache, then one call to the shared cache for the rest.
    fn resolve_shared(&self, keys: &[FrameKey], shared: &dyn SharedFrames) -> Vec<FrameValue> {
        let now = self.caches.now();
        let mut values: Vec<Option<FrameValue>> = match &self.near {
            Some(near) => keys
                .iter()
                .map(|k| near.get_value(k, now, |v| self.uploads.trusts(k, v)))
                .collect(),
            None => vec![None; keys.len()],
        };
        let wanted: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
        if wanted.is_empty() {
            return values.into_iter().flatten().collect();
        }
        let wanted_keys: Vec<FrameKey> = wanted.iter().map(|&i| keys[i]).collect();
        let mut got = shared.get_or_compute(&wanted_keys, &mut |ks| self.compute_frames(ks));
        if got.len() != wanted_keys.len() {
            tracing::warn!(
                asked = wanted_keys.len(),
                answered = got.len(),
                "the shared frame cache answered a wrong number of values; computing locally"
            );
            got = self.compute_frames(&wanted_keys);
        }
        // Values from before an upload here: recompute and write back.
        let stale: Vec<usize> = (0..got.len())
            .filter(|&j| !self.uploads.trusts(&wanted_keys[j], &got[j]))
            .collect();
        if !stale.is_empty() {
            let ks: Vec<FrameKey> = stale.iter().map(|&j| wanted_keys[j]).collect();
            let fresh = self.compute_frames(&ks);
            shared.put(
                &ks.iter()
                    .copied()
                    .zip(fresh.iter().cloned())
                    .collect::<Vec<_>>(),
            );
            for (j, v) in stale.into_iter().zip(fresh) {
                got[j] = v;
            }
        }
        let ttl = self.caches.negative_ttl();
        let now_wall = now_ms();
        for (j, v) in got.into_iter().enumerate() {
            if let Some(near) = &self.near {
                let until = v.is_negative().then(|| {
                    let age = Duration::from_millis(now_wall.saturating_sub(v.at_ms()));
                    now + ttl.saturating_sub(age)
                });
                near.put_value(wanted_keys[j], v.clone(), until);
            }
            values[wanted[j]] = Some(v);
        }
        values.into_iter().flatten().collect()
    }

    /// [`Symbolicator::symbolicate`] through the shared cache (see the module docs).
    pub(crate) fn symbolicate_shared(
        &self,
        event: &CrashEvent,
        shared: &dyn SharedFrames,
    ) -> SymbolicatedCrash {
        let mut keys: Vec<FrameKey> = Vec::new();
        let mut key_index: HashMap<FrameKey, usize> = HashMap::new();
        // Module index -> the key of its first frame.
        let mut module_key: HashMap<usize, usize> = HashMap::new();
        let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(event.threads.len());
        for thread in &event.threads {
            let mut thread_slots = Vec::with_capacity(thread.frames.len());
            for (index, frame) in thread.frames.iter().enumerate() {
                let base = unresolved_frame(&event.modules, index, frame);
                let abs = base.instruction_addr;
                let Some(mi) = base.module_index else {
                    thread_slots.push(Slot::Done(base));
                    continue;
                };
                let module = &event.modules[mi];
                let Some(debug_id) = module.debug_id else {
                    thread_slots.push(Slot::Done(base));
                    continue;
                };
                let crashing = thread.crashed && index == 0;
                let key = FrameKey::new(debug_id, abs, module.image_addr, crashing);
                let ki = *key_index.entry(key).or_insert_with(|| {
                    keys.push(key);
                    keys.len() - 1
                });
                module_key.entry(mi).or_insert(ki);
                thread_slots.push(Slot::Keyed(base, ki));
            }
            slots.push(thread_slots);
        }
        let values = if keys.is_empty() {
            Vec::new()
        } else {
            self.resolve_shared(&keys, shared)
        };
        let threads = event
            .threads
            .iter()
            .zip(slots)
            .map(|(thread, thread_slots)| {
                let mut frames = Vec::with_capacity(thread_slots.len());
                for slot in thread_slots {
                    let (base, ki) = match slot {
                        Slot::Done(f) => {
                            frames.push(f);
                            continue;
                        }
                        Slot::Keyed(base, ki) => (base, ki),
                    };
                    match &values[ki] {
                        FrameValue::Found {
                            lookup_addr,
                            frames: sources,
                            ..
                        } => push_found(&mut frames, base, *lookup_addr, sources),
                        FrameValue::Missing { .. } => frames.push(base),
                        FrameValue::Malformed { .. } => frames.push(SymbolicatedFrame {
                            status: FrameStatus::Malformed,
                            ..base
                        }),
                    }
                }
                SymbolicatedThread {
                    id: thread.id,
                    name: thread.name.clone(),
                    crashed: thread.crashed,
                    frames,
                }
            })
            .collect();
        let modules = event
            .modules
            .iter()
            .enumerate()
            .map(|(i, module)| {
                let (debug_status, debug_error) = match module_key.get(&i).map(|&k| &values[k]) {
                    None => ("unused", None),
                    Some(FrameValue::Found {
                        symbols_only: true, ..
                    }) => ("symbols_only", Some(SYMBOLS_ONLY_NOTE.to_string())),
                    Some(FrameValue::Found { .. }) => ("found", None),
                    Some(FrameValue::Missing { .. }) => (
                        "missing",
                        Some(CacheError::Missing(keys[module_key[&i]].debug_id).to_string()),
                    ),
                    Some(FrameValue::Malformed { reason, .. }) => (
                        "malformed",
                        Some(
                            CacheError::Malformed {
                                debug_id: keys[module_key[&i]].debug_id,
                                reason: reason.clone(),
                            }
                            .to_string(),
                        ),
                    ),
                };
                ModuleReport {
                    module: module.clone(),
                    debug_status,
                    debug_error,
                }
            })
            .collect();
        SymbolicatedCrash {
            event: EventMeta::of(event),
            threads,
            modules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rule: the key's adjustment equals the unshared path's for every architecture's
    /// alignment, every image alignment and both frame kinds.
    #[test]
    fn the_key_adjustment_equals_the_absolute_one() {
        let id: DebugId = "5a9e8c0f-3b2d-4e1f-8a7b-6c5d4e3f2a1b".parse().unwrap();
        for arch in [Arch::Amd64, Arch::Arm64, Arch::Arm, Arch::Ppc64, Arch::Mips] {
            for image in [
                0x5555_0000_0000u64,
                0x7f00_0000_1003,
                0x1000_0006,
                0x4_0000_0001,
            ] {
                for rel in [0u64, 1, 2, 3, 4, 5, 7, 8, 0x1234, 0x1235, 0xfff7] {
                    for crashing in [false, true] {
                        let abs = image + rel;
                        let want = caller_address(arch, abs, crashing).wrapping_sub(image);
                        let key = FrameKey::new(id, abs, image, crashing);
                        assert_eq!(
                            key.lookup_addr(arch),
                            want,
                            "{arch:?} image {image:#x} rel {rel:#x} crashing {crashing}"
                        );
                    }
                }
            }
        }
    }

    /// Rule: values survive the wire format (JSON) unchanged, languages included.
    #[test]
    fn values_round_trip_through_json() {
        let frames: Arc<[SourceFrame]> = vec![
            SourceFrame {
                function: "inner()".into(),
                raw_function: "_Z5innerv".into(),
                abs_path: Some("/src/a.cpp".into()),
                lineno: 7,
                lang: "cpp",
                inlined: true,
            },
            SourceFrame {
                function: "outer".into(),
                raw_function: "outer".into(),
                abs_path: None,
                lineno: 0,
                lang: "unknown",
                inlined: false,
            },
        ]
        .into();
        for v in [
            FrameValue::Found {
                lookup_addr: 0x1234,
                frames,
                at_ms: 5,
                symbols_only: false,
            },
            FrameValue::Missing { at_ms: 6 },
            FrameValue::Malformed {
                reason: "bad".into(),
                at_ms: 7,
            },
        ] {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(
                serde_json::from_str::<FrameValue>(&json).unwrap(),
                v,
                "{json}"
            );
        }
    }
}
