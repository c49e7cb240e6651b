//! SymCaches: conversion, the on-disk cache, and remembered failures.
//!
//! # Design
//!
//! A debug file is converted once into a SymCache (`symbolic`'s compact, binary-searchable
//! address → function/file/line/inlinee table) and the result is written to
//! `<cache_dir>/symcaches/v<SYMCACHE_VERSION>.<CACHE_REVISION>/<debug-id>.symcache`. The path
//! is versioned, so a new `symbolic` format or a change of our conversion never reads a stale
//! cache; old directories are simply left behind. Writes go through a temporary file and a
//! rename, so a crash mid-write never leaves a truncated cache that later reads would trust.
//!
//! In memory, every debug id has one *slot*. Whoever needs a SymCache locks the slot: the first
//! caller converts (or loads from disk) while concurrent callers for the same id wait on the
//! lock and then share the result — one conversion per file however many requests need it at
//! once — while requests for other ids proceed in parallel.
//!
//! Failures are cached as plain data ([`CacheError`], `Clone + PartialEq`): a missing debug
//! file or a malformed one is remembered for `negative_ttl`, so a burst of frames for an
//! unknown module costs one store lookup, not one per frame. After the TTL the next request
//! looks again (the file may have been uploaded since). Uploading a file through
//! [`SymCaches::invalidate`] forgets the remembered failure at once.
//!
//! Loaded SymCaches are kept as their bytes (memory-mapped when read from disk) plus where their
//! tables are, validated once at load (`symindex.rs` reads the format; a lookup only slices the
//! bytes again, which keeps the crate free of self-referential `unsafe`). Each loaded SymCache
//! memoizes, per file and per function, the full path and the demangled names as shared
//! strings, filled on first use: hot frames repeat, joining paths is half the cost of a lookup,
//! and demangling a C++ name costs microseconds.
//!
//! A loaded SymCache is answered from memory without consulting the clock: only remembered
//! failures expire.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use symbolic::common::{Arch, ByteView, DebugId};
use symbolic::debuginfo::Object;
use symbolic::symcache::{SymCacheConverter, SYMCACHE_VERSION};

use crate::clock::{Clock, SystemClock};
use crate::names::{lookup_in, NameMemo};
use crate::object::{parse_archive, select};
use crate::output::SourceFrame;
use crate::store::{write_atomic, SymbolStore};
use crate::symindex::{SymLayout, SymReader};

/// Our own revision of the conversion; bump it when the converter's input or settings change.
/// 2: files end with a checksum trailer. 3: line rows for functions without DWARF ranges.
/// 4: outermost names from the symbol table, line rows that start before a range (`pieces.rs`).
const CACHE_REVISION: u32 = 4;

/// The end of every SymCache file on disk: magic, body length (u64 LE), CRC-32 of the body
/// (u32 LE), flags (u32 LE: [`SYMBOLS_ONLY`]). The body is the SymCache as `symbolic` wrote
/// it.
///
/// SymCaches live on local disk for months and are trusted on load: a flipped bit in a
/// header is caught by the format's own checks, but one in a string or range table would
/// silently give wrong names and lines. So every load checks the body's CRC-32 (gigabytes per
/// second; it detects every burst error up to 32 bits and all but 1 in 4 billion others). A
/// mismatch is logged and counted ([`CacheCounters::checksum_failures`]) and the SymCache is
/// converted again from the debug file.
const TRAILER_MAGIC: &[u8; 8] = b"CGSYMCK1";
const TRAILER_LEN: usize = 24;
/// Trailer flag: the debug info could not be read; the SymCache holds the symbol table only.
const SYMBOLS_ONLY: u32 = 1;

/// `converted`'s SymCache followed by its trailer.
fn with_trailer(converted: Converted) -> Vec<u8> {
    let mut body = converted.bytes;
    let len = body.len() as u64;
    let crc = crc32fast::hash(&body);
    let flags = if converted.symbols_only.is_some() {
        SYMBOLS_ONLY
    } else {
        0
    };
    body.extend_from_slice(TRAILER_MAGIC);
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(&crc.to_le_bytes());
    body.extend_from_slice(&flags.to_le_bytes());
    body
}

/// The trailer's flags, if `file` is a body with its intact trailer.
fn trailer_holds(file: &[u8]) -> Result<u32, &'static str> {
    let Some(body_len) = file.len().checked_sub(TRAILER_LEN) else {
        return Err("shorter than its trailer");
    };
    let (body, trailer) = file.split_at(body_len);
    if &trailer[..8] != TRAILER_MAGIC {
        return Err("no checksum trailer");
    }
    let len = u64::from_le_bytes(trailer[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(trailer[16..20].try_into().expect("4 bytes"));
    if len != body_len as u64 {
        return Err("length mismatch");
    }
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    Ok(u32::from_le_bytes(
        trailer[20..24].try_into().expect("4 bytes"),
    ))
}

/// Why no SymCache is available for a debug id. Cached, hence plain data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// No debug file is stored for the id.
    #[error("no debug file for {0}")]
    Missing(DebugId),
    /// A debug file is stored but could not be read or converted.
    #[error("debug file for {debug_id} is malformed: {reason}")]
    Malformed {
        /// The debug id.
        debug_id: DebugId,
        /// What went wrong.
        reason: String,
    },
}

/// Settings of the SymCache layer.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Directory for converted SymCaches (local disk; safe to delete).
    pub cache_dir: PathBuf,
    /// How long a missing or malformed debug file is remembered before it is looked up again.
    /// One minute: long enough that a flood of frames of one unknown module costs one lookup,
    /// short enough that a debug file uploaded out of band is picked up quickly.
    pub negative_ttl: Duration,
}

impl CacheConfig {
    /// A config with the default TTL and the given cache directory.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            negative_ttl: Duration::from_secs(60),
        }
    }
}

/// A converted SymCache held in memory.
#[derive(Debug)]
pub struct LoadedSymCache {
    bytes: ByteView<'static>,
    layout: SymLayout,
    arch: Arch,
    symbols_only: bool,
    generation: u64,
    pub(crate) names: NameMemo,
}

/// Every loaded SymCache gets a distinct generation, so caches of its results can tell a
/// re-uploaded debug file's SymCache from the old one.
static GENERATION: AtomicU64 = AtomicU64::new(1);

impl LoadedSymCache {
    fn new(
        bytes: ByteView<'static>,
        debug_id: DebugId,
        symbols_only: bool,
    ) -> Result<Self, CacheError> {
        let layout = SymLayout::parse(&bytes).map_err(|e| CacheError::Malformed {
            debug_id,
            reason: format!("symcache: {e}"),
        })?;
        Ok(Self {
            names: NameMemo::new(&layout),
            arch: Arch::from_u32(layout.arch()),
            bytes,
            layout,
            symbols_only,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Whether the debug file's debug info was unreadable and this SymCache holds only its
    /// symbol table (function names, no files or lines).
    pub fn symbols_only(&self) -> bool {
        self.symbols_only
    }

    /// The CPU architecture of the debug file.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// This SymCache's generation (distinct for every load).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the SymCache is in the format version the converter writes now.
    fn is_latest(&self) -> bool {
        self.layout.version() == SYMCACHE_VERSION
    }

    /// Runs `f` on a reader of the SymCache (validated at load, so this cannot fail; the
    /// `Result` matches the other ways of getting at a SymCache).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&SymReader<'_>) -> R) -> Result<R, CacheError> {
        Ok(f(&SymReader::new(&self.bytes, &self.layout)))
    }

    /// Looks up a module-relative address: source frames innermost first, empty when no symbol
    /// covers it.
    pub fn lookup(&self, addr: u64) -> Result<Vec<SourceFrame>, CacheError> {
        self.with(|c| lookup_in(c, &self.names, addr))
    }

    /// Size of the SymCache in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the SymCache is empty (never, for a valid one).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

type Outcome = Result<Arc<LoadedSymCache>, CacheError>;

/// The in-memory state of one debug id.
#[derive(Default)]
struct Slot {
    /// The loaded SymCache, once there is one: read without taking `failure`'s lock.
    loaded: OnceLock<Arc<LoadedSymCache>>,
    /// Held while loading or converting (concurrent callers wait on it), and the last failure
    /// with when it happened.
    failure: Mutex<Option<(CacheError, Instant)>>,
}

/// A debug id as the key of the slot map: equal ids are equal keys; the hash covers the UUID
/// and the appendix (what tells ids apart) in one write instead of `DebugId`'s six, since it is
/// computed for every lookup. The map keeps the standard keyed hasher: ids come from crash
/// reports.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SlotKey(DebugId);

impl std::hash::Hash for SlotKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut bytes = [0u8; 20];
        bytes[..16].copy_from_slice(self.0.uuid().as_bytes());
        bytes[16..].copy_from_slice(&self.0.appendix().to_le_bytes());
        state.write(&bytes);
    }
}

/// Counters of the SymCache layer (monotonic).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounters {
    /// Conversions from a debug file.
    pub conversions: u64,
    /// SymCaches loaded from the on-disk cache.
    pub disk_loads: u64,
    /// Lookups answered by a remembered failure.
    pub negative_hits: u64,
    /// SymCaches on disk whose checksum did not hold (converted again).
    pub checksum_failures: u64,
}

/// Converted SymCaches for the debug files of a [`SymbolStore`].
pub struct SymCaches {
    store: SymbolStore,
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
    counters: Mutex<CacheCounters>,
}

impl std::fmt::Debug for SymCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymCaches")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SymCaches {
    /// SymCaches for `store`, using the system clock.
    pub fn new(store: SymbolStore, config: CacheConfig) -> Self {
        Self::with_clock(store, config, Arc::new(SystemClock))
    }

    /// SymCaches with an injected clock (tests drive the negative TTL with it).
    pub fn with_clock(store: SymbolStore, config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            config,
            clock,
            slots: Mutex::new(HashMap::new()),
            counters: Mutex::new(CacheCounters::default()),
        }
    }

    /// The symbol store behind the caches.
    pub fn store(&self) -> &SymbolStore {
        &self.store
    }

    /// How long a missing or malformed debug file is remembered.
    pub fn negative_ttl(&self) -> Duration {
        self.config.negative_ttl
    }

    /// The current instant of the injected clock.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Counters since start.
    pub fn counters(&self) -> CacheCounters {
        *self.counters.lock()
    }

    fn cache_path(&self, debug_id: &DebugId) -> PathBuf {
        self.config
            .cache_dir
            .join("symcaches")
            .join(format!("v{SYMCACHE_VERSION}.{CACHE_REVISION}"))
            .join(format!("{debug_id}.symcache"))
    }

    /// Forgets what is known about `debug_id` (call after a new upload for it).
    pub fn invalidate(&self, debug_id: &DebugId) {
        self.slots.lock().remove(&SlotKey(*debug_id));
        let _ = fs::remove_file(self.cache_path(debug_id));
    }

    /// The SymCache for `debug_id`: from memory, from the disk cache, or converted now.
    ///
    /// Blocking and possibly CPU-heavy (conversion): call it off the async runtime.
    pub fn get(&self, debug_id: &DebugId) -> Outcome {
        let slot = {
            let mut slots = self.slots.lock();
            let slot = slots.entry(SlotKey(*debug_id)).or_default();
            if let Some(loaded) = slot.loaded.get() {
                return Ok(loaded.clone());
            }
            slot.clone()
        };
        let mut failure = slot.failure.lock();
        if let Some(loaded) = slot.loaded.get() {
            // Loaded by the caller we waited for.
            return Ok(loaded.clone());
        }
        let now = self.clock.now();
        if let Some((error, at)) = failure.as_ref() {
            if now.saturating_duration_since(*at) < self.config.negative_ttl {
                self.counters.lock().negative_hits += 1;
                return Err(error.clone());
            }
        }
        match self.load_or_convert(debug_id) {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                *failure = None;
                Ok(slot.loaded.get_or_init(|| loaded).clone())
            }
            Err(error) => {
                *failure = Some((error.clone(), now));
                Err(error)
            }
        }
    }

    fn load_or_convert(&self, debug_id: &DebugId) -> Result<LoadedSymCache, CacheError> {
        let path = self.cache_path(debug_id);
        if let Ok(bytes) = ByteView::open(&path) {
            match trailer_holds(&bytes) {
                Ok(flags) => match LoadedSymCache::new(bytes, *debug_id, flags & SYMBOLS_ONLY != 0)
                {
                    Ok(loaded) if loaded.is_latest() => {
                        self.counters.lock().disk_loads += 1;
                        return Ok(loaded);
                    }
                    _ => tracing::warn!(
                        path = %path.display(),
                        "discarding unreadable cached symcache"
                    ),
                },
                Err(why) => {
                    self.counters.lock().checksum_failures += 1;
                    tracing::warn!(
                        path = %path.display(),
                        why,
                        "cached symcache is damaged; converting it again"
                    );
                }
            }
        }
        let source = self
            .store
            .find(debug_id)
            .ok_or(CacheError::Missing(*debug_id))?;
        let malformed = |reason: String| CacheError::Malformed {
            debug_id: *debug_id,
            reason,
        };
        let data = ByteView::open(&source).map_err(|e| malformed(e.to_string()))?;
        let converted = convert(&data, debug_id).map_err(malformed)?;
        if let Some(why) = &converted.symbols_only {
            tracing::warn!(%debug_id, error = %why, "the debug info cannot be read; using the symbol table only");
        }
        let symbols_only = converted.symbols_only.is_some();
        let bytes = with_trailer(converted);
        self.counters.lock().conversions += 1;
        if let Err(e) = write_atomic(&path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "could not write symcache to disk; keeping it in memory");
        }
        LoadedSymCache::new(ByteView::from_vec(bytes), *debug_id, symbols_only)
    }
}

/// A converted SymCache.
pub(crate) struct Converted {
    pub(crate) bytes: Vec<u8>,
    /// Why the debug info was unreadable, when the SymCache holds only the symbol table.
    pub(crate) symbols_only: Option<String>,
}

/// What `SymCacheConverter::process_object` does (DWARF functions, then the symbol table),
/// with corrections that make the answers agree with llvm-symbolizer on GCC output: a
/// symbol whose code no DWARF function range covers gets a function of its name with the line
/// rows of that code (`lines.rs`), instead of a name without file and line; functions are cut
/// and named by the symbol table, and code whose line row starts before its range gets that
/// row (`pieces.rs`).
fn process_with_lines<'d>(
    converter: &mut SymCacheConverter<'_>,
    object: &Object<'d>,
) -> Result<(), String> {
    use symbolic::common::Name;
    use symbolic::debuginfo::Function;

    let session = object.debug_session().map_err(|e| e.to_string())?;
    converter.set_arch(object.arch());
    converter.set_debug_id(object.debug_id());
    let table = crate::pieces::SymbolTable::of(object);
    let mut covered: Vec<(u64, u64)> = Vec::new();
    // Pieces with code no line of theirs covers wait for one read of the line table.
    let mut waiting: Vec<Function<'_>> = Vec::new();
    let mut wanted: Vec<(u64, u64)> = Vec::new();
    for function in session.functions() {
        let function = function.map_err(|e| e.to_string())?;
        covered.push((function.address, function.end_address()));
        for piece in crate::pieces::split_by_symbols(function, &table) {
            let before = wanted.len();
            crate::pieces::gaps(&piece, &mut wanted);
            if wanted.len() == before {
                converter.process_symbolic_function(&piece);
            } else {
                waiting.push(piece);
            }
        }
    }
    covered.sort_unstable();
    let is_covered = |start: u64, end: u64| {
        let i = covered.partition_point(|r| r.0 < end);
        covered[..i].iter().rev().take(64).any(|r| r.1 > start)
    };
    let mut uncovered: Vec<(u64, u64, String)> = object
        .symbols()
        .filter(|s| s.size > 0 && !is_covered(s.address, s.address + s.size))
        .filter_map(|s| Some((s.address, s.address + s.size, s.name?.into_owned())))
        .collect();
    uncovered.sort_unstable();
    uncovered.dedup_by(|b, a| b.0 < a.1); // overlapping symbols (aliases): keep the first
    wanted.extend(uncovered.iter().map(|u| (u.0, u.1)));
    let union = crate::pieces::union(wanted);
    let rows = crate::pieces::Rows::new(crate::lines::rows_in(object, &union));
    for mut piece in waiting {
        crate::pieces::fill(&mut piece, &rows);
        converter.process_symbolic_function(&piece);
    }
    for (start, end, name) in &uncovered {
        // Rows are clipped to the union of wanted ranges, which may reach past this symbol.
        let Some(first) = rows.overlapping(*start, *end).next() else {
            continue;
        };
        let lines = rows.lines_in(*start, *end);
        converter.process_symbolic_function(&Function {
            address: *start,
            size: end - start,
            name: Name::new(
                Cow::Borrowed(name.as_str()),
                symbolic::common::NameMangling::Mangled,
                symbolic::common::Language::Unknown,
            ),
            compilation_dir: &first.comp_dir,
            lines,
            inlinees: Vec::new(),
            inline: false,
        });
    }
    for symbol in object.symbols() {
        converter.process_symbolic_symbol(&symbol);
    }
    Ok(())
}

/// Converts the object with `debug_id` in the debug file `data` into SymCache bytes.
///
/// When the debug info cannot be read (a damaged `.debug_info`: the converter stops at the
/// first bad entry) but the object has a symbol table, the SymCache is built from the symbol
/// table alone, as llvm-symbolizer falls back to it: frames get function names without files
/// and lines, and the module reports `symbols_only` rather than every frame `malformed`.
pub(crate) fn convert(data: &[u8], debug_id: &DebugId) -> Result<Converted, String> {
    let archive = parse_archive(data).map_err(|e| e.to_string())?;
    let object = select(&archive, debug_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the stored file holds no object {debug_id}"))?;
    let serialize = |converter: SymCacheConverter<'_>| {
        let mut out = Vec::new();
        converter
            .serialize(&mut std::io::Cursor::new(&mut out))
            .map_err(|e| format!("serialization failed: {e}"))?;
        Ok::<_, String>(out)
    };
    let mut converter = SymCacheConverter::new();
    let converted = match object {
        // symbolic's own walk undecorates Windows symbol names, which only it can do.
        Object::Pe(_) | Object::Pdb(_) => {
            converter.process_object(&object).map_err(|e| e.to_string())
        }
        _ => process_with_lines(&mut converter, &object),
    };
    let error = match converted {
        Ok(()) => {
            return Ok(Converted {
                bytes: serialize(converter)?,
                symbols_only: None,
            })
        }
        Err(e) => format!("conversion failed: {e}"),
    };
    let mut symbols = SymCacheConverter::new();
    symbols.set_arch(object.arch());
    symbols.set_debug_id(object.debug_id());
    let mut n = 0usize;
    for symbol in object.symbols() {
        symbols.process_symbolic_symbol(&symbol);
        n += 1;
    }
    if n == 0 {
        return Err(error);
    }
    Ok(Converted {
        bytes: serialize(symbols)?,
        symbols_only: Some(error),
    })
}
