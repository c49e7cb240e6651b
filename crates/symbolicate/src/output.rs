//! What symbolication answers: frames with their statuses, threads, module reports and the
//! crash, as the HTTP API and the sinks serialize them. At the bottom of the crate: every
//! other module may use these types; they use none of the others' machinery.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use symbolic::common::Language;

use crate::event::{CrashEvent, Module};

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

/// The name `lang` is reported by (`unknown` for none).
pub(crate) fn language_name(lang: Language) -> &'static str {
    match lang {
        Language::Unknown => "unknown",
        other => other.name(),
    }
}
