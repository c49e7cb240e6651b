//! ELF/DWARF built with `cc -g -O2` and `c++ -g -O2`, checked against llvm-symbolizer.

use std::sync::Arc;

use symbolicate::{CacheConfig, SymCaches, SymbolStore, Symbolicator};

use crate::common::*;

pub const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>

static inline int square(int x) { return x * x; }

static inline int sum_squares(const int *v, int n) {
    int total = 0;
    for (int i = 0; i < n; i++)
        total += square(v[i]);
    return total;
}

__attribute__((noinline)) int checksum(const char *s) {
    unsigned h = 2166136261u;
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 16777619u;
    }
    return (int)(h & 0x7fffffff);
}

__attribute__((noinline)) int crunch(int *v, int n) {
    int s = sum_squares(v, n);
    if (s > 1000)
        s -= checksum("overflow");
    return s;
}

int main(int argc, char **argv) {
    int v[16];
    for (int i = 0; i < 16; i++)
        v[i] = argc + i;
    printf("%d\n", crunch(v, 16) + checksum(argv[0]));
    return 0;
}
"#;

pub const CPP_SOURCE: &str = r#"
#include <cstdio>

namespace game {
namespace physics {

struct Vec2 { double x, y; };

class Body {
public:
    Body(double m) : mass_(m), pos_{0, 0}, vel_{1, 2} {}
    inline void integrate(double dt) {
        pos_.x += vel_.x * dt;
        pos_.y += vel_.y * dt;
    }
    __attribute__((noinline)) double energy() const { return 0.5 * mass_ * (vel_.x * vel_.x + vel_.y * vel_.y); }
    __attribute__((noinline)) void step(int n, double dt);
private:
    double mass_;
    Vec2 pos_, vel_;
};

void Body::step(int n, double dt) {
    for (int i = 0; i < n; i++) integrate(dt);
}

template <typename T>
__attribute__((noinline)) T accumulate(const T *v, int n) {
    T acc{};
    for (int i = 0; i < n; i++) acc += v[i];
    return acc;
}

} // namespace physics
} // namespace game

int main(int argc, char **) {
    game::physics::Body b(argc);
    b.step(argc * 10, 0.5);
    double d[4] = {1, 2, 3, double(argc)};
    int k[3] = {argc, 2, 3};
    std::printf("%f %f %d\n", b.energy(), game::physics::accumulate(d, 4), game::physics::accumulate(k, 3));
    return 0;
}
"#;

pub(crate) struct Built {
    _dir: tempfile::TempDir,
    binary: std::path::PathBuf,
    symbolicator: Symbolicator,
    debug_id: symbolicate::DebugId,
}

fn build(compiler: &str, ext: &str, source: &str) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path(), compiler, "prog", ext, source, &["-g", "-O2"]);
    stored(dir, binary)
}

/// `binary` (in `dir`) added to a store of its own, with a symbolicator over it.
pub(crate) fn stored(dir: tempfile::TempDir, binary: std::path::PathBuf) -> Built {
    let store = SymbolStore::open(dir.path().join("store")).unwrap();
    let stored = store.add_file(&binary).unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].object.has_debug_info);
    let debug_id = stored[0].object.debug_id;
    let caches = SymCaches::new(store, CacheConfig::new(dir.path().join("cache")));
    Built {
        _dir: dir,
        binary,
        symbolicator: Symbolicator::new(Arc::new(caches)),
        debug_id,
    }
}

/// Every byte address of every function defined in the program's own source.
fn own_addresses(binary: &std::path::Path, exclude: &[&str]) -> Vec<u64> {
    let mut addrs = Vec::new();
    for sym in text_symbols(binary) {
        if exclude.iter().any(|e| sym.name.contains(e)) || sym.size == 0 {
            continue;
        }
        addrs.extend(sym.addr..sym.addr + sym.size);
    }
    addrs
}

fn normalize(name: &str) -> String {
    let mut name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    // LLVM 14 separates closing template brackets (`> > >`); crashgrid prints `>>>`.
    while name.contains("> >") {
        name = name.replace("> >", ">>");
    }
    name
}

/// One address where crashgrid and llvm-symbolizer disagree.
#[derive(Debug)]
pub(crate) struct Mismatch {
    pub addr: u64,
    pub got: Vec<LlvmFrame>,
    pub want: Vec<LlvmFrame>,
}

/// Every address of `addrs` where crashgrid's answer (function, file and line of every frame
/// of the inline chain, innermost first) differs from llvm-symbolizer's; and how many
/// addresses had an inline chain.
pub(crate) fn compare_with_llvm(built: &Built, addrs: &[u64]) -> (Vec<Mismatch>, usize) {
    let expected = llvm_symbolize(&built.binary, addrs);
    let mut inlined = 0;
    let mut mismatches = Vec::new();
    for (addr, want) in addrs.iter().zip(&expected) {
        let got = built.symbolicator.lookup(&built.debug_id, *addr).unwrap();
        let got: Vec<LlvmFrame> = got
            .iter()
            .map(|f| LlvmFrame {
                function: normalize(&f.function),
                file: f.abs_path.as_deref().unwrap_or_default().to_string(),
                line: f.lineno,
            })
            .collect();
        let want: Vec<LlvmFrame> = want
            .iter()
            .filter(|f| f.function != "??")
            .map(|f| LlvmFrame {
                function: normalize(&f.function),
                ..f.clone()
            })
            .collect();
        if want.len() > 1 {
            inlined += 1;
        }
        if got != want {
            mismatches.push(Mismatch {
                addr: *addr,
                got,
                want,
            });
        }
    }
    (mismatches, inlined)
}

/// `path` with `.` and `dir/..` components resolved lexically: crashgrid joins a DWARF file's
/// directory and name into a clean path (`lib/common/bits.h`) where llvm-symbolizer keeps
/// `lib/compress/../common/bits.h`; both name the same file.
pub(crate) fn lexical(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." => {}
            ".." if parts.last().is_some_and(|p| !p.is_empty() && *p != "..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// How crashgrid's answer at one address differs from llvm-symbolizer's, files compared
/// modulo [`lexical`]: the first of these that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Disagreement {
    /// Inline chains of different lengths: a frame missing or extra.
    ChainLength,
    /// Same chain length, a frame's file differs.
    File,
    /// Files agree, a function name differs (lines may differ too). GCC's `foo.cold` parts and
    /// aliases were a class of their own until functions were named by the symbol table as
    /// llvm-symbolizer names them (`pieces.rs`), as were functions whose DWARF entry has no
    /// range (`lines.rs`) and rows starting before a range.
    Name,
    /// Files and functions agree, lines differ.
    Line,
}

impl Disagreement {
    fn describe(self) -> &'static str {
        match self {
            Disagreement::ChainLength => "inline-chain length",
            Disagreement::File => "files",
            Disagreement::Name => "names differ",
            Disagreement::Line => "lines only",
        }
    }
}

/// The class of the disagreement between `got` and `want`, `None` if they agree (files
/// compared modulo [`lexical`]).
pub(crate) fn classify(got: &[LlvmFrame], want: &[LlvmFrame]) -> Option<Disagreement> {
    let same_file = |g: &LlvmFrame, w: &LlvmFrame| lexical(&g.file) == lexical(&w.file);
    if got.len() != want.len() {
        return Some(Disagreement::ChainLength);
    }
    let pairs = || got.iter().zip(want);
    if pairs().any(|(g, w)| !same_file(g, w)) {
        return Some(Disagreement::File);
    }
    if pairs().any(|(g, w)| g.function != w.function) {
        Some(Disagreement::Name)
    } else if pairs().any(|(g, w)| g.line != w.line) {
        Some(Disagreement::Line)
    } else {
        None
    }
}

/// An inline chain, one indented `function  file:line` line per frame, innermost first.
fn chain(frames: &[LlvmFrame]) -> String {
    frames
        .iter()
        .map(|f| format!("      {}  {}:{}\n", f.function, f.file, f.line))
        .collect()
}

/// Rule (issue 14), for a real library (`realcode.rs`, `realcpp.rs`): crashgrid agrees with
/// llvm-symbolizer at `addrs` — function, file modulo [`lexical`], line, whole inline chain —
/// lines alone may differ at ≤ 0.1 % of the addresses, and no other disagreement is allowed. Prints the
/// count of each class, the distinct name pairs (up to 10) and examples of the other classes.
pub(crate) fn assert_agrees_on_real_code(label: &str, built: &Built, addrs: &[u64]) {
    let (mismatches, inlined) = compare_with_llvm(built, addrs);
    let mut counts = std::collections::BTreeMap::<Disagreement, usize>::new();
    let mut examples = std::collections::BTreeMap::<Disagreement, Vec<String>>::new();
    // Distinct (crashgrid, llvm) pairs of differing names, first seen first: address, count.
    let mut names: Vec<((String, String), u64, usize)> = Vec::new();
    for m in &mismatches {
        let Some(class) = classify(&m.got, &m.want) else {
            continue;
        };
        *counts.entry(class).or_default() += 1;
        if class == Disagreement::Name {
            let (g, w) = m
                .got
                .iter()
                .zip(&m.want)
                .find(|(g, w)| g.function != w.function)
                .expect("a name differs");
            let pair = (g.function.clone(), w.function.clone());
            match names.iter_mut().find(|(p, _, _)| *p == pair) {
                Some((_, _, n)) => *n += 1,
                None => names.push((pair, m.addr, 1)),
            }
        } else {
            let shown = examples.entry(class).or_default();
            if shown.len() < 10 {
                shown.push(format!(
                    "{:#x}:\n    crashgrid\n{}    llvm-symbolizer\n{}",
                    m.addr,
                    chain(&m.got),
                    chain(&m.want)
                ));
            }
        }
    }
    let count = |c: Disagreement| counts.get(&c).copied().unwrap_or(0);
    let classes = [
        Disagreement::Name,
        Disagreement::Line,
        Disagreement::File,
        Disagreement::ChainLength,
    ];
    eprintln!(
        "{label}: {} addresses ({inlined} with inline chains): {}",
        addrs.len(),
        classes
            .iter()
            .map(|&c| format!("{} {}", c.describe(), count(c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !names.is_empty() {
        eprintln!(
            "{label}: names differ: {} distinct pairs, the first 10 (addresses of the pair):",
            names.len()
        );
        for ((got, want), addr, n) in names.iter().take(10) {
            eprintln!("  {addr:#x} ({n}):\n      crashgrid {got}\n      llvm      {want}");
        }
    }
    for (class, shown) in &examples {
        eprintln!("{label}: {}, first {}:", class.describe(), shown.len());
        for e in shown {
            eprint!("  {e}");
        }
    }
    let mut failures: Vec<String> = [
        Disagreement::Name,
        Disagreement::File,
        Disagreement::ChainLength,
    ]
    .iter()
    .filter(|&&c| count(c) > 0)
    .map(|&c| format!("{} at {} addresses", c.describe(), count(c)))
    .collect();
    if count(Disagreement::Line) * 1000 > addrs.len() {
        failures.push(format!(
            "lines only at {} addresses (> 0.1 %)",
            count(Disagreement::Line)
        ));
    }
    assert!(
        failures.is_empty(),
        "{label}: crashgrid and llvm-symbolizer disagree at {} of {} addresses: {} \
         (details above)",
        counts.values().sum::<usize>(),
        addrs.len(),
        failures.join(", ")
    );
}

/// Rule: crashgrid answers exactly what llvm-symbolizer answers — function, file and line of
/// every frame of the inline chain, innermost first.
fn agree_with_llvm(built: &Built, addrs: &[u64]) -> usize {
    let (mismatches, inlined) = compare_with_llvm(built, addrs);
    assert!(
        mismatches.is_empty(),
        "{} of {} addresses disagree, first:\n{}",
        mismatches.len(),
        addrs.len(),
        mismatches
            .iter()
            .take(10)
            .map(|m| format!(
                "{:#x}: crashgrid {:?}\n        llvm {:?}",
                m.addr, m.got, m.want
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    inlined
}

#[test]
fn c_program_agrees_with_llvm_symbolizer_including_inline_chains() {
    let built = build("cc", "c", C_SOURCE);
    let addrs = own_addresses(
        &built.binary,
        &[
            "_start",
            "deregister_tm",
            "register_tm",
            "do_global",
            "frame_dummy",
            "__libc_csu",
        ],
    );
    assert!(addrs.len() > 100, "only {} addresses", addrs.len());
    let inlined = agree_with_llvm(&built, &addrs);
    assert!(
        inlined > 10,
        "the test program must exercise inlining; saw {inlined} inline chains"
    );
}

/// Rule: a batched lookup answers exactly what one-address lookups answer, in order.
#[test]
fn batched_lookups_equal_single_lookups() {
    let built = build("cc", "c", C_SOURCE);
    let addrs = own_addresses(&built.binary, &["_start"]);
    let batched = built
        .symbolicator
        .lookup_many(&built.debug_id, &addrs)
        .unwrap();
    assert_eq!(batched.len(), addrs.len());
    for (a, frames) in addrs.iter().zip(&batched) {
        assert_eq!(
            frames,
            &built.symbolicator.lookup(&built.debug_id, *a).unwrap()
        );
    }
    assert!(
        batched.iter().any(|f| f.len() > 1),
        "inline chains included"
    );
}

#[test]
fn cpp_program_agrees_with_llvm_symbolizer_with_demangled_names() {
    let built = build("c++", "cpp", CPP_SOURCE);
    let addrs = own_addresses(
        &built.binary,
        &[
            "_start",
            "deregister_tm",
            "register_tm",
            "do_global",
            "frame_dummy",
            "__libc_csu",
        ],
    );
    assert!(addrs.len() > 100);
    let inlined = agree_with_llvm(&built, &addrs);
    assert!(inlined > 5, "saw {inlined} inline chains");
    // Demangled C++ names, not mangled ones.
    let names: Vec<String> = addrs
        .iter()
        .flat_map(|a| built.symbolicator.lookup(&built.debug_id, *a).unwrap())
        .map(|f| f.function.to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == "game::physics::Body::step(int, double)"),
        "{names:?}"
    );
    let acc: Vec<&String> = names.iter().filter(|n| n.contains("accumulate")).collect();
    assert!(
        acc.iter()
            .any(|n| n.contains("game::physics::accumulate<double>(double const*, int)")),
        "{acc:?}"
    );
}

/// File offset and size of section `name` in an ELF file, from `readelf -S -W`.
fn section(binary: &std::path::Path, name: &str) -> (usize, usize) {
    let out = run(std::process::Command::new("readelf")
        .args(["-S", "-W"])
        .arg(binary));
    let line = out
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
        .unwrap_or_else(|| panic!("no {name} section"));
    // [Nr] Name Type Address Off Size ...: the fields after the name.
    let fields: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    let hex = |s: &str| usize::from_str_radix(s, 16).unwrap();
    (hex(fields[3]), hex(fields[4]))
}

/// Rule (issue 14, damaged debug info): a debug file whose `.debug_info` is damaged still has
/// a usable symbol table; frames get their function names from it, as llvm-symbolizer does,
/// and the module reports `symbols_only` (names without files or lines) instead of every
/// frame being `malformed`. The state survives a restart (the SymCache on disk says so).
#[test]
fn a_damaged_debug_info_falls_back_to_the_symbol_table() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path(), "cc", "prog", "c", C_SOURCE, &["-g", "-O2"]);
    let (offset, size) = section(&binary, ".debug_info");
    let mut bytes = std::fs::read(&binary).unwrap();
    // Garbage over the compile unit headers and their first entries.
    for b in &mut bytes[offset..offset + size.min(64)] {
        *b = 0xff;
    }
    let damaged = dir.path().join("damaged");
    std::fs::write(&damaged, &bytes).unwrap();
    let store = SymbolStore::open(dir.path().join("store")).unwrap();
    let stored = store.add_file(&damaged).unwrap();
    let debug_id = stored[0].object.debug_id;
    let addrs: Vec<u64> = text_symbols(&damaged)
        .into_iter()
        .filter(|s| ["checksum", "crunch", "main"].contains(&s.name.as_str()))
        .map(|s| s.addr + s.size / 2)
        .collect();
    assert_eq!(addrs.len(), 3);
    let reference = llvm_symbolize(&damaged, &addrs);
    for restart in 0..2 {
        let caches = Arc::new(SymCaches::new(
            SymbolStore::open(dir.path().join("store")).unwrap(),
            CacheConfig::new(dir.path().join("cache")),
        ));
        let symbolicator = Symbolicator::new(caches.clone());
        assert_eq!(caches.counters().conversions, 0);
        for (addr, want) in addrs.iter().zip(&reference) {
            let got = symbolicator.lookup(&debug_id, *addr).unwrap();
            assert_eq!(got.len(), 1, "{addr:#x}: {got:?}");
            assert_eq!(
                &*got[0].function, want[0].function,
                "{addr:#x} (restart {restart})"
            );
            assert_eq!(got[0].abs_path, None);
        }
        let loaded = caches.get(&debug_id).unwrap();
        assert!(loaded.symbols_only());
        let c = caches.counters();
        assert_eq!((c.conversions, c.disk_loads), (1 - restart, restart));
        // Through a whole event: the frame is symbolicated, the module says how.
        let event = symbolicate::CrashEvent::from_json(
            serde_json::json!({
                "event_id": "damaged", "timestamp": 1_700_000_000u64,
                "app": {"id": "a", "version": "1"}, "platform": "linux",
                "os": {"name": "Linux", "version": "6"}, "exception": {"type": "SIGSEGV"},
                "modules": [{"type": "elf", "debug_id": debug_id.to_string(), "image_addr": "0x0"}],
                "threads": [{"crashed": true, "frames": [{"instruction_addr": format!("{:#x}", addrs[0])}]}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let crash = symbolicator.symbolicate(&event);
        assert_eq!(crash.modules[0].debug_status, "symbols_only");
        assert_eq!(
            crash.threads[0].frames[0].status,
            symbolicate::FrameStatus::Symbolicated
        );
    }
}
