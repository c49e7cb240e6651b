//! Every mangled C++ symbol of the system's C++ libraries (`libstdc++.so.6` and each
//! `libLLVM-*.so` of Debian's llvm packages) through this crate and through `llvm-cxxfilt`.
//!
//! Rule (issue 14): the demangler agrees with `llvm-cxxfilt` on every name, up to the space
//! LLVM 14 puts between closing template brackets (`> >`; LLVM 15 and later print `>>`, as we
//! do), except for two classes where LLVM 14 is wrong and GNU `c++filt` (and LLVM 15 for the
//! second) agree with us; each name of those classes must then equal GNU `c++filt`'s answer:
//! 1. `_ZGTt…` transaction clones (`-fgnu-tm`, in libstdc++): LLVM 14 and 15 leave them
//!    mangled; the ABI's `GTt <encoding>` is "transaction clone for <encoding>".
//! 2. Constructors and destructors of a class with an ABI tag
//!    (`std::ios_base::failure[abi:cxx11]`): LLVM 14 prints an empty name
//!    (`failure[abi:cxx11]::~()`), GNU prints `~failure()`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `> >` → `>>`, repeatedly (`> > >` → `>>>`).
fn close_brackets(s: &str) -> String {
    let mut s = s.to_string();
    while s.contains("> >") {
        s = s.replace("> >", ">>");
    }
    s
}

fn libraries() -> Vec<PathBuf> {
    let dir = PathBuf::from("/usr/lib/x86_64-linux-gnu");
    let mut libs = vec![dir.join("libstdc++.so.6")];
    let mut llvm: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the system library directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM-") && n.contains(".so"))
        })
        .filter(|p| !p.is_symlink())
        .collect();
    llvm.sort();
    assert!(
        !llvm.is_empty(),
        "no libLLVM-*.so under {}: install Debian's `llvm` package (scripts/test does)",
        dir.display()
    );
    libs.extend(llvm);
    for lib in &libs {
        assert!(lib.exists(), "{} missing", lib.display());
    }
    libs
}

/// Defined `_Z` symbols of `lib` (dynamic and static tables), version suffixes dropped.
fn mangled_names(lib: &PathBuf, into: &mut BTreeSet<String>) {
    for flags in [&["-D", "--defined-only"][..], &["--defined-only"][..]] {
        let out = Command::new("nm")
            .args(flags)
            .arg(lib)
            .output()
            .expect("nm (binutils) runs");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(sym) = line.split_whitespace().last() else {
                continue;
            };
            let sym = sym.split('@').next().unwrap_or(sym);
            if sym.starts_with("_Z") {
                into.insert(sym.to_string());
            }
        }
    }
}

/// One answer per input line from `tool` (which reads names on stdin).
fn filter(tool: &str, names: &[&String]) -> Vec<String> {
    let mut child = Command::new(tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} runs ({e}): scripts/test installs it"));
    let mut stdin = child.stdin.take().unwrap();
    let input: String = names.iter().map(|n| format!("{n}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{tool} failed");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), names.len(), "{tool} answered every line");
    lines
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Justified {
    TransactionClone,
    AbiTaggedCtorDtor,
}

fn justified(mangled: &str, llvm: &str) -> Option<Justified> {
    if mangled.starts_with("_ZGTt") && llvm == mangled {
        return Some(Justified::TransactionClone);
    }
    if llvm.contains("]::(") || llvm.contains("]::~(") {
        return Some(Justified::AbiTaggedCtorDtor);
    }
    None
}

#[test]
fn system_cpp_libraries_demangle_as_llvm_cxxfilt() {
    let mut names = BTreeSet::new();
    let libs = libraries();
    for lib in &libs {
        mangled_names(lib, &mut names);
    }
    let names: Vec<&String> = names.iter().collect();
    assert!(names.len() > 20_000, "{} names", names.len());
    let llvm = filter("llvm-cxxfilt", &names);
    let gnu = filter("c++filt", &names);
    let mut classes = std::collections::BTreeMap::<Justified, usize>::new();
    let mut wrong = Vec::new();
    let mut refused_by_both = 0;
    for ((name, llvm), gnu) in names.iter().zip(&llvm).zip(&gnu) {
        let ours = demangle::demangle(name).unwrap_or_else(|_| name.to_string());
        let llvm = close_brackets(llvm);
        if ours == llvm {
            if ours == **name {
                refused_by_both += 1;
            }
            continue;
        }
        match justified(name, &llvm) {
            Some(class) if ours == close_brackets(gnu) => *classes.entry(class).or_default() += 1,
            _ => wrong.push(format!(
                "{name}\n  llvm-cxxfilt {llvm}\n  c++filt      {gnu}\n  ours         {ours}"
            )),
        }
    }
    eprintln!(
        "{} names from {} libraries: {} differ outside the justified classes, justified {classes:?}, \
         {refused_by_both} left mangled by both",
        names.len(),
        libs.len(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} names differ from llvm-cxxfilt:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
}
