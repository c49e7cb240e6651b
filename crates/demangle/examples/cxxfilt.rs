//! Reads mangled names, one per line, and prints each demangled (or unchanged when it is not
//! a name this crate demangles), like `llvm-cxxfilt`.
use std::io::{BufRead, Write};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lock().lines() {
        let line = line.expect("stdin is text");
        let name = line.trim();
        match demangle::demangle(name) {
            Ok(d) => writeln!(out, "{d}"),
            Err(_) => writeln!(out, "{name}"),
        }
        .expect("stdout is writable");
    }
}
