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
use std::sync::{Arc, OnceLock};

use symbolic::common::{Arch, DebugId, InstructionInfo};

use crate::cache::{CacheError, LoadedSymCache, SymCaches};
use crate::event::{AddrMode, CrashEvent, Frame, Module};
use crate::frames::FrameCache;
use crate::names::lookup_in;
use crate::output::{
    EventMeta, FrameStatus, ModuleReport, SourceFrame, SymbolicatedCrash, SymbolicatedFrame,
    SymbolicatedThread, SYMBOLS_ONLY_NOTE,
};
use crate::shared::{SharedFrames, Uploads};

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
