//! Names of the functions a SymCache lookup finds: demangled once per function and SymCache
//! ([`NameMemo`]), and the lookup that turns a SymCache location into [`SourceFrame`]s.

use std::sync::{Arc, OnceLock};

use symbolic::common::{Language, Name, NameMangling};
use symbolic::demangle::{Demangle, DemangleOptions};

use crate::output::{language_name, SourceFrame};
use crate::symindex::{LazyTable, SymLayout, SymReader};

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
