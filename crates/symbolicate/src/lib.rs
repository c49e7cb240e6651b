//! Symbolication for crashgrid: debug files, the symbol store, SymCaches, and lookups.
//!
//! The pipeline for one frame (see each module for its design):
//!
//! 1. [`SymbolStore`] finds the debug file for a module's debug id (symbol-server layout plus
//!    an index by id); [`inspect`] identifies files exactly as `symbolic` does.
//! 2. [`SymCaches`] converts it to a SymCache once, keeps it on disk under a versioned path and
//!    in memory, coalesces concurrent conversions, and remembers missing or malformed files for
//!    a TTL.
//! 3. [`Symbolicator`] adjusts return addresses, looks them up, expands inlined frames and
//!    demangles names, reporting a [`FrameStatus`] per frame. Lookups read the SymCache format
//!    themselves (`symindex.rs`, answering exactly as `symbolic`'s reader) so that each file's
//!    full path and each function's names are computed once per SymCache.
//! 4. Optionally, a cache shared by the pods of a cluster ([`SharedFrames`], keyed by
//!    [`FrameKey`], holding [`FrameValue`]s) answers frames other pods already symbolicated,
//!    without loading the SymCache.
//!
//! Crash events ([`CrashEvent`]) are validated by hand so every error names its field.
//! Everything here is blocking; async callers run it on a blocking pool.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod clock;
mod event;
mod fast;
mod frames;
mod lines;
mod names;
mod object;
mod output;
mod pieces;
mod shared;
mod store;
mod symbolicator;
mod symindex;

pub use cache::{CacheConfig, CacheCounters, CacheError, LoadedSymCache, SymCaches};
pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{
    debug_id_from_code_id, limits, parse_rfc3339, AddrMode, App, CrashEvent, EventError, Exception,
    Frame, Module, Os, Thread,
};
pub use frames::{FrameCache, FrameCacheStats};
pub use object::{inspect, ObjectError, ObjectInfo};
pub use output::{
    EventMeta, FrameStatus, ModuleReport, SourceFrame, SymbolicatedCrash, SymbolicatedFrame,
    SymbolicatedThread,
};
pub use shared::{FrameKey, FrameValue, SharedFrames};
pub use store::{IndexChange, StoreError, StoredFile, SymbolStore};
pub use symbolic::common::DebugId;
pub use symbolicator::{caller_address, Symbolicator};
#[doc(hidden)]
pub use symindex::reference_lookup;
