//! Shared helpers: compiling test programs and asking llvm-symbolizer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
