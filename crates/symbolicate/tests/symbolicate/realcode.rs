//! Symbolication of real C code nobody on the project wrote: zstd's library, from the sources
//! the `zstd-sys` crate bundles (a dependency of the workspace, so cargo has them), built
//! `cc -g -O2` as a shared library, checked against llvm-symbolizer at thousands of random
//! addresses (function, file, line, whole inline chain).

use std::path::PathBuf;
use std::process::Command;

use rand::{Rng, SeedableRng};

use crate::common::*;
use crate::elf::{compare_with_llvm, stored};

/// `zstd/lib` of the `zstd-sys` package in the workspace's dependency graph.
fn zstd_sources() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    // Only this platform's packages: those are the ones cargo has downloaded.
    let rustc = run(Command::new("rustc").arg("-vV"));
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let out = run(Command::new(cargo).args([
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--filter-platform",
        host,
        "--manifest-path",
        manifest,
    ]));
    let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "zstd-sys")
        .expect("zstd-sys is in the dependency graph");
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap());
    manifest.parent().unwrap().join("zstd/lib")
}

/// Builds zstd's C library (no assembly: `ZSTD_DISABLE_ASM`) as `libzstd.so` in `dir`, two
/// compilers at a time.
fn build_zstd(dir: &std::path::Path) -> PathBuf {
    let lib = zstd_sources();
    let mut sources = Vec::new();
    for sub in ["common", "compress", "decompress"] {
        for e in std::fs::read_dir(lib.join(sub)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "c") {
                sources.push(e.path());
            }
        }
    }
    sources.sort();
    let objects: Vec<PathBuf> = std::thread::scope(|s| {
        let chunks: Vec<_> = sources.chunks(sources.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let lib = &lib;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|src| {
                            let obj = dir
                                .join(format!("{}.o", src.file_stem().unwrap().to_string_lossy()));
                            run(Command::new("cc")
                                .args(["-g", "-O2", "-fPIC", "-DZSTD_DISABLE_ASM", "-c"])
                                .arg("-I")
                                .arg(lib)
                                .arg("-I")
                                .arg(lib.join("common"))
                                .arg("-o")
                                .arg(&obj)
                                .arg(src));
                            obj
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let so = dir.join("libzstd.so");
    run(Command::new("cc")
        .args(["-shared", "-o"])
        .arg(&so)
        .args(&objects));
    so
}

/// `path` with `.` and `dir/..` components resolved lexically: crashgrid joins a DWARF file's
/// directory and name into a clean path (`lib/common/bits.h`) where llvm-symbolizer keeps
/// `lib/compress/../common/bits.h`; both name the same file.
fn lexical(path: &str) -> String {
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

/// The class of disagreement still open (issue 14), recognised exactly: code split off by GCC
/// (`foo.cold`) where crashgrid and llvm-symbolizer pick different names for the same file
/// and line (`symbolic` names a range by the symbol at its start; llvm-symbolizer says `foo`
/// for some cold parts and `foo.cold` for others, a rule not understood yet). Functions whose
/// DWARF entry has no range were the other class (1.3 % of the addresses) until their lines
/// came from the line table (`lines.rs`); they now count as any other disagreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Open {
    ColdSuffix,
}

fn open_class(got: &[LlvmFrame], want: &[LlvmFrame]) -> Option<Open> {
    let same_but_names = got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| g.file == w.file && g.line == w.line);
    let cold = got.iter().zip(want).any(|(g, w)| {
        g.function != w.function
            && (g.function.strip_suffix(".cold") == Some(&w.function)
                || w.function.strip_suffix(".cold") == Some(&g.function))
    });
    (same_but_names && cold).then_some(Open::ColdSuffix)
}

/// Rule (issue 14): on a real C library, crashgrid agrees with llvm-symbolizer (function,
/// file modulo `..` resolution, line, whole inline chain) at random addresses, except for the
/// open class above (counted and printed: 21 of 5,000 when written); any other disagreement
/// fails, and lines alone may differ at ≤ 0.1 % of the addresses.
#[test]
fn zstd_agrees_with_llvm_symbolizer_at_random_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let so = build_zstd(dir.path());
    let symbols = text_symbols(&so);
    assert!(symbols.len() > 300, "{} functions", symbols.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let addrs: Vec<u64> = (0..5000)
        .map(|_| {
            let s = &symbols[rng.gen_range(0..symbols.len())];
            s.addr + rng.gen_range(0..s.size)
        })
        .collect();
    let built = stored(dir, so);
    let (mismatches, inlined) = compare_with_llvm(&built, &addrs);
    let clean = |frames: &[LlvmFrame]| -> Vec<LlvmFrame> {
        frames
            .iter()
            .map(|f| LlvmFrame {
                file: lexical(&f.file),
                ..f.clone()
            })
            .collect()
    };
    let mut open = std::collections::BTreeMap::<Open, usize>::new();
    let mut lines_only = 0;
    let mut other = Vec::new();
    for m in &mismatches {
        let (got, want) = (clean(&m.got), clean(&m.want));
        if got == want {
            continue;
        }
        if let Some(class) = open_class(&got, &want) {
            *open.entry(class).or_default() += 1;
        } else if got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.function == w.function && g.file == w.file)
        {
            lines_only += 1;
        } else {
            other.push(format!(
                "{:#x}:\n  crashgrid {got:?}\n  llvm      {want:?}",
                m.addr
            ));
        }
    }
    eprintln!(
        "zstd: {} addresses ({inlined} with inline chains): open classes {open:?}, \
         lines only {lines_only}, other {}",
        addrs.len(),
        other.len()
    );
    assert!(
        other.is_empty(),
        "{} disagreements outside the known classes:\n{}",
        other.len(),
        other[..other.len().min(10)].join("\n")
    );
    assert!(
        lines_only * 1000 <= addrs.len(),
        "{lines_only} line mismatches in {}",
        addrs.len()
    );
}
