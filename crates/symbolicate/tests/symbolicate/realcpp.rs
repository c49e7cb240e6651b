//! Symbolication of real C++ code nobody on the project wrote: 39 source files of protobuf
//! 21.5 (the runtime with descriptors, reflection and text format, its `stubs`, `io` and
//! `util` parts, the `.proto` parser and part of the C++ code generator), from the sources
//! the `protobuf-src` crate bundles, built `c++ -g -O2 -std=c++17` as a shared library and
//! checked against llvm-symbolizer at thousands of random addresses: demangled function name,
//! file, line, whole inline chain. It is the C++ counterpart of `realcode.rs` (zstd, C): code
//! that uses the standard library throughout (`std::string`, `std::map`, `std::vector`,
//! `std::function`), templates instantiated from headers (`RepeatedField<T>`, `Map<K, V>`),
//! lambdas, and deep inlining of header code into the library's functions.
//!
//! The sources are not built by cargo (protobuf-src's build script runs protobuf's whole
//! autotools build): `tests/cpp-sources` is a cargo project of its own, outside the
//! workspace, that depends on protobuf-src at an exact version; scripts/test downloads it
//! with `cargo fetch`, and this test finds it with `cargo metadata --offline`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::elf::{assert_agrees_on_real_code, stored};

/// The manifest of the project that makes cargo download the C++ sources.
const SOURCES_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cpp-sources/Cargo.toml");

/// The compiled subset, under `src/google/protobuf`: over 4,000 functions, about 90 s of
/// compiler time (so 45 s on two cores). `descriptor.cc`, the longest, comes first so that
/// the other compiler is not left waiting for it at the end.
const PROTOBUF_SOURCES: &[&str] = &[
    "descriptor.cc",
    "descriptor_database.cc",
    "text_format.cc",
    "generated_message_reflection.cc",
    "message.cc",
    "extension_set.cc",
    "repeated_field.cc",
    "map_field.cc",
    "dynamic_message.cc",
    "reflection_ops.cc",
    "unknown_field_set.cc",
    "wire_format_lite.cc",
    "parse_context.cc",
    "message_lite.cc",
    "generated_message_util.cc",
    "arena.cc",
    "arenastring.cc",
    "stubs/common.cc",
    "stubs/strutil.cc",
    "stubs/substitute.cc",
    "stubs/stringprintf.cc",
    "stubs/status.cc",
    "stubs/int128.cc",
    "io/coded_stream.cc",
    "io/printer.cc",
    "io/tokenizer.cc",
    "io/zero_copy_stream_impl.cc",
    "io/zero_copy_stream_impl_lite.cc",
    "compiler/parser.cc",
    "compiler/importer.cc",
    "compiler/code_generator.cc",
    "compiler/cpp/helpers.cc",
    "compiler/cpp/enum.cc",
    "compiler/cpp/string_field.cc",
    "compiler/cpp/map_field.cc",
    "util/message_differencer.cc",
    "util/field_comparator.cc",
    "util/field_mask_util.cc",
    "util/time_util.cc",
];

/// `protobuf/src` of the `protobuf-src` package, which `cargo fetch` on [`SOURCES_MANIFEST`]
/// downloads. Missing sources fail the test, saying how to get them.
fn protobuf_sources() -> PathBuf {
    let fetch = format!("run `cargo fetch --manifest-path {SOURCES_MANIFEST}` (scripts/test does)");
    let dir = package_dir(Path::new(SOURCES_MANIFEST), "protobuf-src")
        .unwrap_or_else(|e| panic!("protobuf's C++ sources are not downloaded: {fetch}\n{e}"));
    let src = dir.join("protobuf/src");
    assert!(
        src.join("google/protobuf/descriptor.cc").is_file(),
        "no protobuf sources in {}: {fetch}",
        src.display()
    );
    src
}

/// Builds the subset of protobuf as `libprotobuf.so` in `dir`.
fn build_protobuf(dir: &Path) -> PathBuf {
    let src = protobuf_sources();
    let sources: Vec<PathBuf> = PROTOBUF_SOURCES
        .iter()
        .map(|s| src.join("google/protobuf").join(s))
        .collect();
    let mut flags: Vec<OsString> = ["-g", "-O2", "-fPIC", "-std=c++17", "-DHAVE_PTHREAD"]
        .map(OsString::from)
        .into();
    flags.extend(["-I".into(), src.into()]);
    build_shared_library(dir, "c++", &flags, &sources, "libprotobuf.so")
}

/// Rule (issue 14): on a real C++ library, crashgrid agrees with llvm-symbolizer — demangled
/// function name, file modulo `..` resolution, line, whole inline chain — at random
/// addresses: no name may differ, lines alone may differ at ≤ 0.1 % of the addresses, and no
/// other disagreement is allowed (`elf::assert_agrees_on_real_code`; 0 disagreements of any
/// kind at 5,000 addresses when written).
#[test]
fn protobuf_agrees_with_llvm_symbolizer_at_random_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let so = build_protobuf(dir.path());
    let symbols = text_symbols(&so);
    assert!(symbols.len() > 1000, "{} functions", symbols.len());
    let addrs = random_addresses(&symbols, 5000, 14);
    let built = stored(dir, so);
    assert_agrees_on_real_code("protobuf", &built, &addrs);
}
