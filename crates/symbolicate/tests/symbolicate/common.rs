//! Shared helpers: compiling test programs and asking llvm-symbolizer.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Runs a command, panicking with its output when it fails (a missing tool fails loudly).
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? scripts/test installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Compiles `source` (C or C++ by `compiler`) with `flags` into `dir/name`.
pub fn compile(
    dir: &Path,
    compiler: &str,
    name: &str,
    ext: &str,
    source: &str,
    flags: &[&str],
) -> PathBuf {
    let src = dir.join(format!("{name}.{ext}"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    run(Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src));
    out
}

/// Compiles `sources` with `compiler` and `flags` (`-c` added) into objects in `dir`, two
/// compilers at a time (the machine has two cores), and links them with `-shared` into
/// `dir/name`. Unresolved symbols are fine: only the library's own code is looked at.
pub fn build_shared_library(
    dir: &Path,
    compiler: &str,
    flags: &[OsString],
    sources: &[PathBuf],
    name: &str,
) -> PathBuf {
    let next = AtomicUsize::new(0);
    let mut objects: Vec<(usize, PathBuf)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(src) = sources.get(i) else {
                            return done;
                        };
                        // Numbered: sources in different directories may share a name.
                        let stem = src.file_stem().unwrap().to_string_lossy();
                        let obj = dir.join(format!("{i:03}-{stem}.o"));
                        run(Command::new(compiler)
                            .args(flags)
                            .arg("-c")
                            .arg("-o")
                            .arg(&obj)
                            .arg(src));
                        done.push((i, obj));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    objects.sort();
    let so = dir.join(name);
    run(Command::new(compiler)
        .args(["-shared", "-o"])
        .arg(&so)
        .args(objects.iter().map(|(_, o)| o)));
    so
}

/// The directory of package `name` in the dependency graph of the cargo project `manifest`,
/// from `cargo metadata --offline`, this platform's packages only (those are the ones cargo
/// has downloaded). `Err` with cargo's own words when cargo cannot say, as when the package
/// was never downloaded.
pub fn package_dir(manifest: &Path, name: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = run(Command::new("rustc").arg("-vV"));
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--filter-platform",
        host,
        "--manifest-path",
    ])
    .arg(manifest);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .ok_or_else(|| format!("no package {name} in the dependency graph of {manifest:?}"))?;
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap());
    Ok(manifest.parent().unwrap().to_path_buf())
}

/// `n` addresses inside the functions of `symbols`, seeded: a function (of a non-zero size)
/// drawn uniformly, then a byte of it.
pub fn random_addresses(symbols: &[Sym], n: usize, seed: u64) -> Vec<u64> {
    let symbols: Vec<&Sym> = symbols.iter().filter(|s| s.size > 0).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let s = &symbols[rng.gen_range(0..symbols.len())];
            s.addr + rng.gen_range(0..s.size)
        })
        .collect()
}

/// A function symbol of a binary: name, start address, size (from `nm`).
#[derive(Debug, Clone)]
pub struct Sym {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// Text symbols with a size, from `nm --print-size --defined-only`.
pub fn text_symbols(binary: &Path) -> Vec<Sym> {
    let out = run(Command::new("nm")
        .args(["--print-size", "--defined-only"])
        .arg(binary));
    out.lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            if p.len() == 4 && matches!(p[2], "T" | "t" | "W") {
                Some(Sym {
                    name: p[3].to_string(),
                    addr: u64::from_str_radix(p[0], 16).ok()?,
                    size: u64::from_str_radix(p[1], 16).ok()?,
                })
            } else {
                None
            }
        })
        .collect()
}

/// One frame of llvm-symbolizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlvmFrame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Asks `llvm-symbolizer --output-style=JSON` about `addrs` in `binary`: frames innermost first.
pub fn llvm_symbolize(binary: &Path, addrs: &[u64]) -> Vec<Vec<LlvmFrame>> {
    let mut child = Command::new("llvm-symbolizer")
        .args([
            "--output-style=JSON",
            "--inlining",
            "--demangle",
            "--functions=linkage",
        ])
        .arg(format!("--obj={}", binary.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("llvm-symbolizer is installed (scripts/test installs llvm)");
    let mut stdin = child.stdin.take().unwrap();
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<Vec<LlvmFrame>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("llvm-symbolizer JSON");
            v["Symbol"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| LlvmFrame {
                    function: s["FunctionName"].as_str().unwrap_or("").to_string(),
                    file: s["FileName"].as_str().unwrap_or("").to_string(),
                    line: s["Line"].as_u64().unwrap_or(0) as u32,
                })
                .collect()
        })
        .collect();
    assert_eq!(
        answers.len(),
        addrs.len(),
        "one llvm-symbolizer answer per address"
    );
    answers
}
