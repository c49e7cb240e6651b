//! Symbolicating frames and whole crash events.
//!
//! For each reported frame: find its module (by `addr_mode: rel:N`, or by the absolute
//! address falling in `[image_addr, image_addr + image_size)`), adjust the address of
//! non-crashing frames to the *calling* instruction (a return address points after the call;
//! looking it up as is would blame the next line, or even the next function — Symbolicator's
//! rule, via `symbolic`'s `InstructionInfo`), subtract the image address, and look the
//! module-relative address up in the module's SymCache. One reported frame expands to several
//! output frames when calls were inlined, innermost first, each marked `inlined` except the
//! outermost (the real, physical function).
//!
//! Status per frame, as Symbolicator reports it: `symbolicated`; `missing_symbol` (no debug
//! file for the module, or none of its symbols covers the address); `unknown_image` (the
//! address lies in no module); `malformed` (the debug file exists but cannot be read).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use symbolic::common::{Arch, DebugId, InstructionInfo, Language, Name, NameMangling};
use symbolic::demangle::{Demangle, DemangleOptions};

use crate::cache::{CacheError, LoadedSymCache, SymCaches};
use crate::event::{AddrMode, CrashEvent, Frame, Module};
use crate::frames::FrameCache;
use crate::shared::{SharedFrames, Uploads};
use crate::symindex::{LazyTable, SymLayout, SymReader};

/// Outcome of symbolicating one frame, as Symbolicator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameStatus {
    /// Function (and, with debug info, file and line) found.
    Symbolicated,
    /// No debug file for the module, or no symbol covers the address.
    MissingSymbol,
    /// The address lies in no module of the event.
    UnknownImage,
    /// The module's debug file is stored but unreadable.
    Malformed,
}

impl FrameStatus {
    /// The status as written in JSON and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameStatus::Symbolicated => "symbolicated",
            FrameStatus::MissingSymbol => "missing_symbol",
            FrameStatus::UnknownImage => "unknown_image",
            FrameStatus::Malformed => "malformed",
        }
    }
}

/// One source location found for an address: a function, possibly inlined into the next.
/// (Deserializable so shared caches can carry it; an unknown language reads as `unknown`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFrame {
    /// Demangled function name (C++ with parameters, Rust without hash, Swift).
    pub function: Arc<str>,
    /// The name as stored in the debug file (mangled, when it was).
    pub raw_function: Arc<str>,
    /// Full source path, when the debug file has line information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abs_path: Option<Arc<str>>,
    /// Line number (0 when unknown).
    pub lineno: u32,
    /// Source language as `symbolic` detects it (`c`, `cpp`, `rust`, `swift`, `unknown`).
    pub lang: &'static str,
    /// Whether this location was inlined into the next one.
    pub inlined: bool,
}

/// [`SourceFrame`] as read back (the language as an owned string).
#[derive(Deserialize)]
struct WireSourceFrame {
    function: Arc<str>,
    raw_function: Arc<str>,
    #[serde(default)]
    abs_path: Option<Arc<str>>,
    lineno: u32,
    lang: String,
    inlined: bool,
}

impl<'de> Deserialize<'de> for SourceFrame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireSourceFrame::deserialize(d)?;
        Ok(SourceFrame {
            function: w.function,
            raw_function: w.raw_function,
            abs_path: w.abs_path,
            lineno: w.lineno,
            lang: w.lang.parse::<Language>().map_or("unknown", language_name),
            inlined: w.inlined,
        })
    }
}

/// One output frame of a symbolicated thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SymbolicatedFrame {
    /// Outcome for the reported frame this output frame came from.
    pub status: FrameStatus,
    /// Index of the reported frame this output frame expands.
    pub original_index: usize,
    /// The reported address, absolute.
    #[serde(serialize_with = "ser_hex")]
    pub instruction_addr: u64,
    /// Index of the module the address lies in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_index: Option<usize>,
    /// Module-relative address that was looked up (after caller adjustment).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_hex"
    )]
    pub lookup_addr: Option<u64>,
    /// The module's code file (e.g. `libgame.so`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// The source location, when symbolicated.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceFrame>,
}

/// A symbolicated thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SymbolicatedThread {
    /// Thread id, if reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Thread name, if reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the thread crashed.
    pub crashed: bool,
    /// Output frames, innermost first, inlined frames expanded.
    pub frames: Vec<SymbolicatedFrame>,
}

/// Per-module outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleReport {
    /// The module as reported.
    #[serde(flatten)]
    pub module: Module,
    /// `found`, `symbols_only` (the debug info is unreadable: names from the symbol table,
    /// no files or lines), `missing`, `malformed` or `unused` (no frame pointed into it).
    pub debug_status: &'static str,
    /// Why the debug file was unusable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_error: Option<String>,
}

/// The `debug_error` of a `symbols_only` module.
pub(crate) const SYMBOLS_ONLY_NOTE: &str =
    "the debug info cannot be read; function names come from the symbol table, without files or lines";

/// A symbolicated crash event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SymbolicatedCrash {
    /// The event as received, without threads and modules (they follow, symbolicated).
    #[serde(flatten)]
    pub event: EventMeta,
    /// Threads with symbolicated frames.
    pub threads: Vec<SymbolicatedThread>,
    /// Modules with the outcome of their debug file lookup.
    pub modules: Vec<ModuleReport>,
}

/// The descriptive part of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventMeta {
    /// See [`CrashEvent`].
    pub event_id: String,
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    /// See [`CrashEvent`].
    pub app: crate::event::App,
    /// See [`CrashEvent`].
    pub platform: String,
    /// See [`CrashEvent`].
    pub os: crate::event::Os,
    /// See [`CrashEvent`].
    pub device_model: Option<String>,
    /// See [`CrashEvent`].
    pub user_id: Option<String>,
    /// See [`CrashEvent`].
    pub exception: crate::event::Exception,
}

fn ser_hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

fn ser_opt_hex<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => ser_hex(v, s),
        None => s.serialize_none(),
    }
}

fn language_name(lang: Language) -> &'static str {
    match lang {
        Language::Unknown => "unknown",
        other => other.name(),
    }
}

/// What a lookup returns of one function: demangled name, raw name, language.
#[derive(Debug, Clone)]
struct FunctionNames {
    function: Arc<str>,
    raw: Arc<str>,
    lang: &'static str,
}

impl FunctionNames {
    /// Names of the function `name` in `language` (see [`demangled_name`]).
    fn of(name: &str, language: u32) -> Self {
        let language = Language::from_u32(language);
        let demangled = demangled_name(name, language);
        Self {
            function: demangled.into(),
            raw: name.into(),
            lang: language_name(language),
        }
    }
}

/// `name` demangled: Itanium C++ names (`_Z…`) by the `demangle` crate, which spells them as
/// `llvm-symbolizer` does (docs/architecture.md, "Demangling"), kept mangled when it refuses
/// them, as llvm-symbolizer keeps them; Rust (legacy `_ZN…17h<hash>E` and v0), Swift and MSVC
/// names by `symbolic`, as is any name that is not mangled.
pub(crate) fn demangled_name(name: &str, language: Language) -> String {
    let itanium = (name.starts_with("_Z") || name.starts_with("__Z"))
        && language != Language::Rust
        && !is_rust_legacy(name);
    if itanium {
        return demangle::demangle(name).unwrap_or_else(|_| name.to_string());
    }
    Name::new(name, NameMangling::Unknown, language)
        .try_demangle(DemangleOptions::complete())
        .into_owned()
}

/// A Rust legacy symbol: Itanium-shaped, its last component the hash `17h<16 hex digits>E`
/// (optionally followed by a `.llvm.…` suffix).
fn is_rust_legacy(name: &str) -> bool {
    let name = name.split('.').next().unwrap_or(name).as_bytes();
    name.strip_suffix(b"E")
        .and_then(|n| n.len().checked_sub(19).map(|at| &n[at..]))
        .is_some_and(|tail| {
            tail.starts_with(b"17h") && tail[3..].iter().all(|b| b.is_ascii_hexdigit())
        })
}

/// The strings a lookup returns, memoized per file and per function index of one SymCache (the
/// one the memo was made for): full paths (joining and cleaning per frame was half of a warm
/// lookup) and demangled names (C++ demangling costs microseconds). Filled lazily, on a
/// frame's first lookup, and shared as `Arc<str>` by every frame that returns them.
#[derive(Debug)]
pub(crate) struct NameMemo {
    /// Full path per file record; `None` for an empty path.
    paths: LazyTable<Option<Arc<str>>>,
    /// Names per function record.
    functions: LazyTable<FunctionNames>,
    /// The function of a location whose function index is out of range.
    unknown: OnceLock<FunctionNames>,
}

impl NameMemo {
    /// An empty memo for the SymCache laid out as `layout`.
    pub(crate) fn new(layout: &SymLayout) -> Self {
        Self {
            paths: LazyTable::new(layout.num_files() as usize),
            functions: LazyTable::new(layout.num_functions() as usize),
            unknown: OnceLock::new(),
        }
    }

    /// The names of function record `index` (the unknown function `?` when out of range).
    #[inline]
    fn function(&self, reader: &SymReader<'_>, index: u32) -> &FunctionNames {
        self.functions
            .get_or_init(index as usize, || {
                reader.function(index).map_or_else(
                    || FunctionNames::of("?", 0),
                    |f| FunctionNames::of(f.name, f.language),
                )
            })
            .unwrap_or_else(|| self.unknown.get_or_init(|| FunctionNames::of("?", 0)))
    }

    /// The full path of file record `index`; `None` when out of range or empty.
    #[inline]
    fn path(&self, reader: &SymReader<'_>, index: u32) -> Option<Arc<str>> {
        self.paths
            .get_or_init(index as usize, || {
                reader
                    .file(index)
                    .map(|f| f.full_path())
                    .filter(|p| !p.is_empty())
                    .map(Arc::from)
            })?
            .clone()
    }
}

/// Looks up a module-relative address in a SymCache: source frames innermost first; empty when
/// no symbol covers the address. `names` must be the memo made for `cache`'s SymCache.
pub(crate) fn lookup_in(cache: &SymReader<'_>, names: &NameMemo, addr: u64) -> Vec<SourceFrame> {
    let mut frames: Vec<SourceFrame> = cache
        .lookup(addr)
        .map(|loc| {
            let function = names.function(cache, loc.function);
            SourceFrame {
                function: function.function.clone(),
                raw_function: function.raw.clone(),
                abs_path: names.path(cache, loc.file),
                lineno: loc.line,
                lang: function.lang,
                inlined: true,
            }
        })
        .collect();
    if let Some(last) = frames.last_mut() {
        last.inlined = false;
    }
    frames
}

/// A reported frame before any lookup: in no module (`unknown_image`), or in its module without
/// symbols yet (`missing_symbol`, the module's code file as package).
pub(crate) fn unresolved_frame(
    modules: &[Module],
    index: usize,
    frame: &Frame,
) -> SymbolicatedFrame {
    let (abs, module_index) = frame_address(modules, frame);
    let base = SymbolicatedFrame {
        status: FrameStatus::UnknownImage,
        original_index: index,
        instruction_addr: abs,
        module_index,
        lookup_addr: None,
        package: None,
        source: None,
    };
    match module_index {
        Some(mi) => SymbolicatedFrame {
            status: FrameStatus::MissingSymbol,
            package: modules[mi].code_file.clone(),
            ..base
        },
        None => base,
    }
}

/// Appends what a lookup at `lookup_addr` found for `base`: one symbolicated frame per source
/// frame (inlined ones first), or `base` with the address when no symbol covers it.
pub(crate) fn push_found(
    frames: &mut Vec<SymbolicatedFrame>,
    base: SymbolicatedFrame,
    lookup_addr: u64,
    sources: &[SourceFrame],
) {
    if sources.is_empty() {
        frames.push(SymbolicatedFrame {
            lookup_addr: Some(lookup_addr),
            ..base
        });
        return;
    }
    for source in sources {
        frames.push(SymbolicatedFrame {
            status: FrameStatus::Symbolicated,
            lookup_addr: Some(lookup_addr),
            source: Some(source.clone()),
            ..base.clone()
        });
    }
}

/// Symbolicates frames and events against the SymCaches of a symbol store, optionally through
/// a near cache ([`FrameCache`]) and a cache shared by the pods of a cluster
/// ([`SharedFrames`], see `shared.rs`). Clones share both caches.
#[derive(Clone)]
pub struct Symbolicator {
    pub(crate) caches: Arc<SymCaches>,
    pub(crate) near: Option<Arc<FrameCache>>,
    pub(crate) shared: Arc<OnceLock<Arc<dyn SharedFrames>>>,
    pub(crate) uploads: Arc<Uploads>,
}

impl std::fmt::Debug for Symbolicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolicator")
            .field("caches", &self.caches)
            .field("near", &self.near)
            .field("shared", &self.shared.get().is_some())
            .finish()
    }
}

/// A reported frame's absolute address and the index of the module it lies in.
pub(crate) fn frame_address(modules: &[Module], frame: &Frame) -> (u64, Option<usize>) {
    match frame.addr_mode {
        AddrMode::Abs => (
            frame.instruction_addr,
            module_for(modules, frame.instruction_addr),
        ),
        AddrMode::Rel(n) => (
            modules[n].image_addr.wrapping_add(frame.instruction_addr),
            Some(n),
        ),
    }
}

impl EventMeta {
    pub(crate) fn of(event: &CrashEvent) -> Self {
        EventMeta {
            event_id: event.event_id.clone(),
            timestamp_ms: event.timestamp_ms,
            app: event.app.clone(),
            platform: event.platform.clone(),
            os: event.os.clone(),
            device_model: event.device_model.clone(),
            user_id: event.user_id.clone(),
            exception: event.exception.clone(),
        }
    }
}

fn module_for(modules: &[Module], addr: u64) -> Option<usize> {
    // End of a module without a size: the next module's start (Symbolicator's rule).
    let mut best: Option<usize> = None;
    for (i, m) in modules.iter().enumerate() {
        if addr < m.image_addr {
            continue;
        }
        let end = match m.image_size {
            Some(size) => m.image_addr.saturating_add(size),
            None => modules
                .iter()
                .map(|o| o.image_addr)
                .filter(|&a| a > m.image_addr)
                .min()
                .unwrap_or(u64::MAX),
        };
        if addr < end && best.is_none_or(|b| modules[b].image_addr < m.image_addr) {
            best = Some(i);
        }
    }
    best
}

type ModuleCache = Result<Arc<LoadedSymCache>, CacheError>;

impl Symbolicator {
    /// A symbolicator over `caches`.
    pub fn new(caches: Arc<SymCaches>) -> Self {
        Self {
            caches,
            near: None,
            shared: Arc::default(),
            uploads: Arc::default(),
        }
    }

    /// A symbolicator that remembers symbolicated addresses in `near` (see [`FrameCache`]).
    /// [`Symbolicator::lookup`] never uses it; [`Symbolicator::symbolicate`] does.
    pub fn with_frame_cache(caches: Arc<SymCaches>, near: Arc<FrameCache>) -> Self {
        Self {
            caches,
            near: Some(near),
            shared: Arc::default(),
            uploads: Arc::default(),
        }
    }

    /// The near cache, if any.
    pub fn frame_cache(&self) -> Option<&Arc<FrameCache>> {
        self.near.as_ref()
    }

    fn lookup_cached(
        &self,
        debug_id: &DebugId,
        cache: &LoadedSymCache,
        rel: u64,
    ) -> Result<Arc<[SourceFrame]>, CacheError> {
        let Some(near) = &self.near else {
            return cache.lookup(rel).map(Arc::from);
        };
        let key = (*debug_id, rel);
        if let Some(frames) = near.get(&key, cache.generation()) {
            return Ok(frames);
        }
        let frames: Arc<[SourceFrame]> = cache.lookup(rel)?.into();
        near.put(key, cache.generation(), frames.clone());
        Ok(frames)
    }

    /// The SymCaches in use.
    pub fn caches(&self) -> &Arc<SymCaches> {
        &self.caches
    }

    /// Looks up a module-relative address (already adjusted) in the debug file `debug_id`.
    pub fn lookup(&self, debug_id: &DebugId, addr: u64) -> Result<Vec<SourceFrame>, CacheError> {
        self.caches.get(debug_id)?.lookup(addr)
    }

    /// Looks up many module-relative addresses of one debug file (one SymCache fetch and parse
    /// for all of them); answers in the order asked.
    pub fn lookup_many(
        &self,
        debug_id: &DebugId,
        addrs: &[u64],
    ) -> Result<Vec<Vec<SourceFrame>>, CacheError> {
        let cache = self.caches.get(debug_id)?;
        cache.with(|sc| {
            addrs
                .iter()
                .map(|a| lookup_in(sc, &cache.names, *a))
                .collect()
        })
    }

    /// Symbolicates every frame of every thread of `event`. Blocking and CPU-bound; with a
    /// shared cache installed ([`install_shared`](Self::install_shared)) it also waits for the
    /// cache (see `shared.rs`), with the same output.
    pub fn symbolicate(&self, event: &CrashEvent) -> SymbolicatedCrash {
        match self.shared.get() {
            Some(shared) => self.symbolicate_shared(event, shared.as_ref()),
            None => self.symbolicate_local(event),
        }
    }

    /// The unshared path: near cache, then the SymCache of each module.
    fn symbolicate_local(&self, event: &CrashEvent) -> SymbolicatedCrash {
        let mut loaded: HashMap<usize, ModuleCache> = HashMap::new();
        let mut threads = Vec::with_capacity(event.threads.len());
        for thread in &event.threads {
            let mut frames = Vec::with_capacity(thread.frames.len());
            for (index, frame) in thread.frames.iter().enumerate() {
                let base = unresolved_frame(&event.modules, index, frame);
                let abs = base.instruction_addr;
                let Some(mi) = base.module_index else {
                    frames.push(base);
                    continue;
                };
                let module = &event.modules[mi];
                let Some(debug_id) = module.debug_id else {
                    frames.push(base);
                    continue;
                };
                let cache = loaded
                    .entry(mi)
                    .or_insert_with(|| self.caches.get(&debug_id));
                let cache = match cache {
                    Ok(cache) => cache,
                    Err(CacheError::Missing(_)) => {
                        frames.push(base);
                        continue;
                    }
                    Err(CacheError::Malformed { .. }) => {
                        frames.push(SymbolicatedFrame {
                            status: FrameStatus::Malformed,
                            ..base
                        });
                        continue;
                    }
                };
                let crashing = thread.crashed && index == 0;
                let rel =
                    caller_address(cache.arch(), abs, crashing).wrapping_sub(module.image_addr);
                let result = self.lookup_cached(&debug_id, cache, rel);
                match result {
                    Ok(sources) => push_found(&mut frames, base, rel, &sources),
                    Err(_) => frames.push(SymbolicatedFrame {
                        status: FrameStatus::Malformed,
                        ..base
                    }),
                }
            }
            threads.push(SymbolicatedThread {
                id: thread.id,
                name: thread.name.clone(),
                crashed: thread.crashed,
                frames,
            });
        }
        let modules = event
            .modules
            .iter()
            .enumerate()
            .map(|(i, module)| {
                let (debug_status, debug_error) = match loaded.get(&i) {
                    None => ("unused", None),
                    Some(Ok(cache)) if cache.symbols_only() => {
                        ("symbols_only", Some(SYMBOLS_ONLY_NOTE.to_string()))
                    }
                    Some(Ok(_)) => ("found", None),
                    Some(Err(e @ CacheError::Missing(_))) => ("missing", Some(e.to_string())),
                    Some(Err(e)) => ("malformed", Some(e.to_string())),
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

/// The address to look up for a frame: the instruction itself for the crashing frame, the
/// calling instruction for every other (return addresses point after the call).
pub fn caller_address(arch: Arch, addr: u64, crashing_frame: bool) -> u64 {
    InstructionInfo::new(arch, addr)
        .is_crashing_frame(crashing_frame)
        .caller_address()
}

impl SymbolicatedCrash {
    /// A readable rendering, one line per output frame.
    pub fn to_text(&self) -> String {
        let e = &self.event;
        let mut out = String::new();
        let _ = writeln!(out, "Event {} at {} ms", e.event_id, e.timestamp_ms);
        let _ = writeln!(
            out,
            "{} {}{} · {} · {} {} · {}",
            e.app.id,
            e.app.version,
            e.app
                .build
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            e.platform,
            e.os.name,
            e.os.version,
            e.device_model.as_deref().unwrap_or("unknown device"),
        );
        let _ = writeln!(
            out,
            "{}{}",
            e.exception.ty,
            e.exception
                .value
                .as_deref()
                .map(|v| format!(": {v}"))
                .unwrap_or_default()
        );
        for (ti, t) in self.threads.iter().enumerate() {
            let _ = writeln!(
                out,
                "\nThread {}{}{}",
                t.id.unwrap_or(ti as u64),
                t.name
                    .as_deref()
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default(),
                if t.crashed { " (crashed)" } else { "" }
            );
            for f in &t.frames {
                let package = f
                    .package
                    .as_deref()
                    .map(|p| p.rsplit('/').next().unwrap_or(p))
                    .unwrap_or("???");
                let _ = write!(
                    out,
                    "  #{:<3} {:#018x} {:<20} ",
                    f.original_index, f.instruction_addr, package
                );
                match &f.source {
                    Some(s) => {
                        let _ = write!(out, "{}", s.function);
                        if let Some(path) = &s.abs_path {
                            let _ = write!(out, " at {}:{}", path, s.lineno);
                        }
                        if s.inlined {
                            let _ = write!(out, " [inlined]");
                        }
                        let _ = writeln!(out);
                    }
                    None => {
                        let _ = writeln!(out, "<{}>", f.status.as_str());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rule (issue 14): C++ names go to our demangler (LLVM's spelling), every other mangling
    /// stays with `symbolic`'s demanglers, and a name no demangler takes is kept as is.
    #[test]
    fn each_mangling_goes_to_its_demangler() {
        let cases = [
            // Itanium C++, a pack expansion `symbolic`'s demangler got wrong.
            (
                "_Z1fIJidEEvDpRKT_",
                Language::Unknown,
                "void f<int, double>(int const&, double const&)",
            ),
            ("_Z3fooi.cold", Language::Cpp, "foo(int) (.cold)"),
            // Rust legacy: Itanium-shaped, demangled by rustc-demangle without the hash.
            (
                "_ZN4core9panicking5panic17h0123456789abcdefE",
                Language::Unknown,
                "core::panicking::panic",
            ),
            // Rust v0.
            (
                "_RNvNtCs1234_7mycrate3foo3bar",
                Language::Unknown,
                "mycrate::foo::bar",
            ),
            // MSVC.
            ("?f@@YAXH@Z", Language::Unknown, "void f(int)"),
            // Not mangled, and mangled but invalid: kept.
            ("main", Language::C, "main"),
            ("_Z3fo", Language::Unknown, "_Z3fo"),
        ];
        for (name, lang, want) in cases {
            assert_eq!(demangled_name(name, lang), want, "{name}");
        }
    }
}
