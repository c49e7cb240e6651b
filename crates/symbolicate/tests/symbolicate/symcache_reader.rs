//! Our SymCache reader (`src/symindex.rs`) against `symbolic`'s: the same answers for every
//! address of real `cc -g -O2` / `c++ -g -O2` binaries and of the Breakpad fixture, whether the
//! SymCache was just converted or is memory-mapped from the disk cache; and cached SymCaches
//! that are truncated or corrupt never make a lookup panic or hang.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use symbolic::symcache::SymCache;
use symbolicate::{CacheConfig, DebugId, SourceFrame, SymCaches, SymbolStore, Symbolicator};

use crate::common::*;
use crate::elf::{CPP_SOURCE, C_SOURCE};

/// The one SymCache file under `cache_dir`.
fn cached_symcache(cache_dir: &Path) -> PathBuf {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else if e.path().extension().is_some_and(|x| x == "symcache") {
                out.push(e.path());
            }
        }
    }
    let mut found = Vec::new();
    walk(cache_dir, &mut found);
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

/// Every address below `end`, and addresses that do not fit the format's 32 bits (one of them
/// truncating onto a real function).
fn addresses(end: u64, real: u64) -> Vec<u64> {
    let mut addrs: Vec<u64> = (0..end).collect();
    addrs.extend([
        u64::from(u32::MAX) - 1,
        u64::from(u32::MAX),
        1 << 32,
        (1 << 32) + real,
        u64::MAX - 1,
        u64::MAX,
    ]);
    addrs
}

/// A debug file in a fresh store, with its symbolicator.
struct Stored {
    dir: tempfile::TempDir,
    debug_id: DebugId,
}

impl Stored {
    fn new(file: &Path, dir: tempfile::TempDir) -> Self {
        let store = SymbolStore::open(dir.path().join("store")).unwrap();
        let stored = store.add_file(file).unwrap();
        assert_eq!(stored.len(), 1);
        Self {
            debug_id: stored[0].object.debug_id,
            dir,
        }
    }

    /// A symbolicator over the store and the disk cache (a new one loads from disk).
    fn symbolicator(&self) -> (Symbolicator, Arc<SymCaches>) {
        let store = SymbolStore::open(self.dir.path().join("store")).unwrap();
        let caches = Arc::new(SymCaches::new(
            store,
            CacheConfig::new(self.dir.path().join("cache")),
        ));
        (Symbolicator::new(caches.clone()), caches)
    }
}

/// Checks every address in `addrs`: converted, then loaded from disk; single and batched.
/// Returns how many addresses found frames and how many found inline chains.
fn assert_same_as_symbolic(stored: &Stored, addrs: &[u64]) -> (usize, usize) {
    let (converted, caches) = stored.symbolicator();
    let first = converted.lookup(&stored.debug_id, addrs[0]).unwrap();
    assert_eq!(caches.counters().conversions, 1);
    let bytes = std::fs::read(cached_symcache(&stored.dir.path().join("cache"))).unwrap();
    let symcache = SymCache::parse(&bytes).unwrap();
    let want: Vec<Vec<SourceFrame>> = addrs
        .iter()
        .map(|a| symbolicate::reference_lookup(&symcache, *a))
        .collect();
    assert_eq!(first, want[0]);

    let (from_disk, disk_caches) = stored.symbolicator();
    for (name, sym) in [("converted", &converted), ("from disk", &from_disk)] {
        let mut mismatches = Vec::new();
        for (addr, want) in addrs.iter().zip(&want) {
            let got = sym.lookup(&stored.debug_id, *addr).unwrap();
            if &got != want {
                mismatches.push(format!("{addr:#x}: ours {got:?}\n  symbolic {want:?}"));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{name}: {} of {} addresses differ, first:\n{}",
            mismatches.len(),
            addrs.len(),
            mismatches[..mismatches.len().min(5)].join("\n")
        );
        let batched = sym.lookup_many(&stored.debug_id, addrs).unwrap();
        assert!(batched == want, "{name}: batched lookups differ");
    }
    assert_eq!(disk_caches.counters().disk_loads, 1);
    assert_eq!(disk_caches.counters().conversions, 0);
    let found = want.iter().filter(|f| !f.is_empty()).count();
    let inlined = want.iter().filter(|f| f.len() > 1).count();
    (found, inlined)
}

/// Every address from 0 to past the end of the binary's last function.
fn binary_addresses(binary: &Path) -> Vec<u64> {
    let symbols = text_symbols(binary);
    let end = symbols.iter().map(|s| s.addr + s.size).max().unwrap();
    let main = symbols.iter().find(|s| s.name == "main").unwrap().addr;
    addresses(end + 0x100, main)
}

/// A generated C program with many functions and inline trees (like the benchmark's, smaller).
fn generated_program(n: usize) -> String {
    let mut s = String::from("#include <stdio.h>\n");
    for i in 0..n {
        s.push_str(&format!(
            "static inline int mix{i}(int x) {{ int y = x * {m} + {i}; if (y & 1) y ^= x >> 3; return y; }}\n\
             static inline int fold{i}(const int *v, int n) {{ int t = 0; for (int k = 0; k < n; k++) t += mix{i}(v[k]); return t; }}\n\
             __attribute__((noinline)) int work{i}(int *v, int n) {{ int a = fold{i}(v, n); if (a > {i}) a -= mix{i}(a); return a; }}\n",
            m = 31 + i % 17
        ));
    }
    s.push_str("int main(int argc, char **argv) {\n  (void)argv; int v[8] = {argc}; int r = 0;\n");
    for i in 0..n {
        s.push_str(&format!("  r += work{i}(v, argc);\n"));
    }
    s.push_str("  printf(\"%d\\n\", r);\n  return 0;\n}\n");
    s
}

/// Rule: for every address of real optimized C and C++ binaries (and far beyond, and beyond 32
/// bits), our lookups answer exactly what `symbolic`'s reader answers: function, raw name, path,
/// line, language and inline flag, converted or memory-mapped from the disk cache.
#[test]
fn lookups_equal_symbolics_for_every_address_of_real_binaries() {
    let programs: [(&str, &str, String); 3] = [
        ("cc", "c", C_SOURCE.to_string()),
        ("c++", "cpp", CPP_SOURCE.to_string()),
        ("cc", "c", generated_program(40)),
    ];
    for (compiler, ext, source) in programs {
        let dir = tempfile::tempdir().unwrap();
        let binary = compile(dir.path(), compiler, "prog", ext, &source, &["-g", "-O2"]);
        let addrs = binary_addresses(&binary);
        let stored = Stored::new(&binary, dir);
        let (found, inlined) = assert_same_as_symbolic(&stored, &addrs);
        assert!(
            found > 100,
            "{compiler}: only {found} addresses found frames"
        );
        assert!(inlined > 5, "{compiler}: only {inlined} inline chains");
    }
}

/// Rule: the same for the Breakpad fixture (inline records, `PUBLIC` symbols without size).
#[test]
fn lookups_equal_symbolics_for_the_breakpad_fixture() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libgame.so.sym");
    let stored = Stored::new(&fixture, tempfile::tempdir().unwrap());
    let (found, inlined) = assert_same_as_symbolic(&stored, &addresses(0x3000, 0x1018));
    assert!(found > 0x100 && inlined > 0x10, "{found} {inlined}");
}

/// Rule: repeated lookups share the memoized strings (one path and one name per file and
/// function of a SymCache), and the answers do not change.
#[test]
fn repeated_lookups_share_memoized_strings() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path(), "cc", "prog", "c", C_SOURCE, &["-g", "-O2"]);
    let crunch = text_symbols(&binary)
        .into_iter()
        .find(|s| s.name == "crunch")
        .unwrap();
    let stored = Stored::new(&binary, dir);
    let (sym, _) = stored.symbolicator();
    let a = sym.lookup(&stored.debug_id, crunch.addr).unwrap();
    let b = sym.lookup(&stored.debug_id, crunch.addr).unwrap();
    let c = sym.lookup(&stored.debug_id, crunch.addr + 1).unwrap();
    assert_eq!(a, b);
    let (a, b, c) = (a.last().unwrap(), b.last().unwrap(), c.last().unwrap());
    assert_eq!(&*a.function, "crunch");
    assert!(Arc::ptr_eq(&a.function, &b.function) && Arc::ptr_eq(&a.function, &c.function));
    assert!(Arc::ptr_eq(&a.raw_function, &c.raw_function));
    let (pa, pc) = (a.abs_path.as_ref().unwrap(), c.abs_path.as_ref().unwrap());
    assert!(Arc::ptr_eq(pa, pc), "{pa} {pc}");
}

/// The SymCache tables' byte offsets, read as the format lays them out (8-aligned from the
/// start of the file): source locations and how many, and how many ranges.
fn locations_table(bytes: &[u8]) -> (usize, usize, usize) {
    let field = |i: usize| u32::from_ne_bytes(bytes[44 + 4 * i..48 + 4 * i].try_into().unwrap());
    let (files, functions, locations, ranges) = (field(0), field(1), field(2), field(3));
    let align = |n: usize| n.div_ceil(8) * 8;
    let at = align(align(80 + 12 * files as usize) + 16 * functions as usize);
    (at, locations as usize, ranges as usize)
}

/// Rule: a cached SymCache that is truncated at any length is discarded, never trusted: the
/// debug file is converted again when it is stored, otherwise the frame reports it missing.
/// No lookup panics.
#[test]
fn truncated_cached_symcaches_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path(), "cc", "prog", "c", C_SOURCE, &["-g", "-O2"]);
    let main = text_symbols(&binary)
        .into_iter()
        .find(|s| s.name == "main")
        .unwrap();
    let stored = Stored::new(&binary, dir);
    let (sym, _) = stored.symbolicator();
    let good = sym.lookup(&stored.debug_id, main.addr).unwrap();
    assert!(!good.is_empty());
    let path = cached_symcache(&stored.dir.path().join("cache"));
    let bytes = std::fs::read(&path).unwrap();
    let empty_store = tempfile::tempdir().unwrap();

    let lengths: Vec<usize> = (0..200)
        .chain((200..bytes.len()).step_by(97))
        .chain([bytes.len() - 1])
        .collect();
    for len in lengths {
        // With the debug file stored: converted again, same answer.
        std::fs::write(&path, &bytes[..len]).unwrap();
        let (sym, caches) = stored.symbolicator();
        assert_eq!(
            sym.lookup(&stored.debug_id, main.addr).unwrap(),
            good,
            "{len} bytes"
        );
        assert_eq!(caches.counters().disk_loads, 0, "{len} bytes");
        assert_eq!(caches.counters().conversions, 1, "{len} bytes");

        // Without it: missing, a clean error.
        std::fs::write(&path, &bytes[..len]).unwrap();
        let caches = SymCaches::new(
            SymbolStore::open(empty_store.path()).unwrap(),
            CacheConfig::new(stored.dir.path().join("cache")),
        );
        let err = caches.get(&stored.debug_id).unwrap_err();
        assert_eq!(err, symbolicate::CacheError::Missing(stored.debug_id));
    }
}

/// A cached SymCache file with its checksum trailer recomputed over the (changed) body: the
/// trailer is magic, body length u64, CRC-32 u32, flags u32, all little-endian (`cache.rs`).
fn reseal(file: &[u8]) -> Vec<u8> {
    let (body, trailer) = file.split_at(file.len() - 24);
    assert_eq!(&trailer[..8], b"CGSYMCK1");
    let mut out = body.to_vec();
    out.extend_from_slice(&trailer[..16]);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&trailer[20..]);
    out
}

/// Rule: a cached SymCache that reads well but whose inline chains are cycles (every range's
/// location inlined into itself) is answered without hanging: each chain ends after at most as
/// many frames as there are locations.
#[test]
fn cyclic_inline_chains_in_a_cached_symcache_end() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path(), "cc", "prog", "c", C_SOURCE, &["-g", "-O2"]);
    let addrs = binary_addresses(&binary);
    let stored = Stored::new(&binary, dir);
    let (sym, _) = stored.symbolicator();
    sym.lookup(&stored.debug_id, 0).unwrap();
    let path = cached_symcache(&stored.dir.path().join("cache"));
    let mut bytes = std::fs::read(&path).unwrap();
    let (at, locations, ranges) = locations_table(&bytes);
    for i in locations - ranges..locations {
        let inlined_into = at + 16 * i + 12;
        bytes[inlined_into..inlined_into + 4].copy_from_slice(&(i as u32).to_ne_bytes());
    }
    // As a converter bug would write it: with a checksum that holds over the cycles.
    let bytes = reseal(&bytes);
    std::fs::write(&path, &bytes).unwrap();
    SymCache::parse(&bytes).expect("still a readable SymCache");

    let (sym, caches) = stored.symbolicator();
    let mut cut = 0;
    for addr in addrs {
        let frames = sym.lookup(&stored.debug_id, addr).unwrap();
        assert!(frames.len() <= locations, "{addr:#x}: {}", frames.len());
        if frames.len() == locations {
            cut += 1;
            assert!(frames.iter().all(|f| f == &frames[0] || !f.inlined));
        }
    }
    assert_eq!(caches.counters().disk_loads, 1, "the corrupt file was used");
    assert!(cut > 0, "some chains were cycles");
}
