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
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("> >", ">>")
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
