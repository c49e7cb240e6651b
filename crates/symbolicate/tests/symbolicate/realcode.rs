//! Symbolication of real C code nobody on the project wrote: zstd's library, from the sources
//! the `zstd-sys` crate bundles (a dependency of the workspace, so cargo has them), built
//! `cc -g -O2` as a shared library, checked against llvm-symbolizer at thousands of random
//! addresses (function, file, line, whole inline chain).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::elf::{assert_agrees_on_real_code, stored};

/// `zstd/lib` of the `zstd-sys` package in the workspace's dependency graph.
fn zstd_sources() -> PathBuf {
    let manifest = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"));
    package_dir(manifest, "zstd-sys")
        .expect("zstd-sys is in the dependency graph")
        .join("zstd/lib")
}

/// Builds zstd's C library (no assembly: `ZSTD_DISABLE_ASM`) as `libzstd.so` in `dir`.
fn build_zstd(dir: &Path) -> PathBuf {
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
    let mut flags: Vec<OsString> = ["-g", "-O2", "-fPIC", "-DZSTD_DISABLE_ASM"]
        .map(OsString::from)
        .into();
    for include in [lib.clone(), lib.join("common")] {
        flags.extend(["-I".into(), include.into()]);
    }
    build_shared_library(dir, "cc", &flags, &sources, "libzstd.so")
}

/// Rule (issue 14): on a real C library, crashgrid agrees with llvm-symbolizer (function,
/// file modulo `..` resolution, line, whole inline chain) at random addresses; lines alone may
/// differ at ≤ 0.1 % of the addresses, any other disagreement fails
/// (`elf::assert_agrees_on_real_code`; 0 disagreements of any kind at 5,000 addresses when
/// written).
#[test]
fn zstd_agrees_with_llvm_symbolizer_at_random_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let so = build_zstd(dir.path());
    let symbols = text_symbols(&so);
    assert!(symbols.len() > 300, "{} functions", symbols.len());
    let addrs = random_addresses(&symbols, 5000, 14);
    let built = stored(dir, so);
    assert_agrees_on_real_code("zstd", &built, &addrs);
}
