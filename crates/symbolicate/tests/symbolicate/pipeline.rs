//! The whole pipeline on a real binary: store, SymCache conversion and its caches, event
//! symbolication with frame statuses and return-address adjustment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use symbolicate::{
    CacheConfig, CacheError, CrashEvent, DebugId, FrameStatus, ManualClock, SymCaches, SymbolStore,
    Symbolicator,
};

use crate::common::*;
use crate::elf::C_SOURCE;

pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub binary: PathBuf,
    pub debug_id: DebugId,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let prefix_map = format!("-fdebug-prefix-map={}=/src", dir.path().display());
    let binary = compile(
        dir.path(),
        "cc",
        "prog",
        "c",
        C_SOURCE,
        &["-g", "-O2", &prefix_map],
    );
    let info = symbolicate::inspect(&std::fs::read(&binary).unwrap()).unwrap();
    Fixture {
        debug_id: info[0].debug_id,
        dir,
        binary,
    }
}

pub(crate) fn caches(f: &Fixture, clock: ManualClock) -> Arc<SymCaches> {
    let store = SymbolStore::open(f.dir.path().join("store")).unwrap();
    Arc::new(SymCaches::with_clock(
        store,
        CacheConfig::new(f.dir.path().join("cache")),
        Arc::new(clock),
    ))
}

/// Address of the instruction after the first `call` to `callee` inside `caller` (a real
/// return address), read from `objdump -d`.
pub(crate) fn return_address(binary: &Path, caller: &str, callee: &str) -> u64 {
    let out = run(Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(binary));
    let mut in_caller = false;
    let mut lines = out.lines().peekable();
    while let Some(line) = lines.next() {
        if line.ends_with(&format!("<{caller}>:")) {
            in_caller = true;
            continue;
        }
        if in_caller && line.is_empty() {
            break;
        }
        if in_caller && line.contains("call") && line.contains(&format!("<{callee}>")) {
            let next = lines.next().expect("an instruction follows the call");
            let addr = next.trim().split(':').next().unwrap();
            return u64::from_str_radix(addr, 16).unwrap();
        }
    }
    panic!("no call to {callee} in {caller}");
}

pub(crate) fn symbol(binary: &Path, name: &str) -> Sym {
    text_symbols(binary)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

pub(crate) const BASE: u64 = 0x5555_0000_0000;

pub(crate) fn event(f: &Fixture, frames: &[(u64, &str)], other_id: &str) -> CrashEvent {
    let frames: Vec<_> = frames
        .iter()
        .map(|(a, mode)| json!({"instruction_addr": format!("{a:#x}"), "addr_mode": mode}))
        .collect();
    CrashEvent::from_value(&json!({
        "event_id": "e1", "timestamp": 1_795_599_000,
        "app": {"id": "demo", "version": "1.0"}, "platform": "native",
        "os": {"name": "Linux", "version": "6.1"},
        "exception": {"type": "SIGSEGV"},
        "modules": [
            {"type": "elf", "code_file": "/opt/demo/prog", "debug_id": f.debug_id.to_string(),
             "image_addr": format!("{BASE:#x}"), "image_size": 0x10000},
            {"type": "elf", "code_file": "/usr/lib/libother.so", "debug_id": other_id,
             "image_addr": "0x7f0000000000", "image_size": 0x10000}
        ],
        "threads": [{"crashed": true, "frames": frames}]
    }))
    .unwrap()
}

/// Rules: the crashing frame is looked up as is, every other frame at its caller address
/// (return address − 1 on x86_64, Symbolicator's adjustment); statuses per frame as
/// Symbolicator names them; inline frames expanded innermost first.
#[test]
fn an_event_is_symbolicated_with_statuses_and_caller_adjustment() {
    let f = fixture();
    let caches = caches(&f, ManualClock::default());
    caches.store().add_file(&f.binary).unwrap();
    let sym = Symbolicator::new(caches);

    let checksum = symbol(&f.binary, "checksum");
    let crash_at = checksum.addr + checksum.size / 2;
    let ret = return_address(&f.binary, "main", "crunch");
    let event = event(
        &f,
        &[
            (BASE + crash_at, "abs"),
            (ret, "rel:0"),
            (0x10, "abs"),             // below every module
            (0x7f00_0000_0040, "abs"), // libother.so, whose debug file is unknown
            (BASE + 0x10, "abs"),      // inside prog's image (ELF header), no symbol there
        ],
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    );
    let crash = sym.symbolicate(&event);
    let frames = &crash.threads[0].frames;

    let want_crash = llvm_symbolize(&f.binary, &[crash_at]);
    let want_ret = llvm_symbolize(&f.binary, &[ret - 1]);

    let by_index = |i: usize| frames.iter().filter(move |fr| fr.original_index == i);
    let got: Vec<(String, u32)> = by_index(0)
        .map(|fr| {
            assert_eq!(fr.status, FrameStatus::Symbolicated);
            assert_eq!(
                fr.lookup_addr,
                Some(crash_at),
                "the crashing frame is not adjusted"
            );
            let s = fr.source.as_ref().unwrap();
            (s.function.to_string(), s.lineno)
        })
        .collect();
    let want: Vec<(String, u32)> = want_crash[0]
        .iter()
        .map(|w| (w.function.clone(), w.line))
        .collect();
    assert_eq!(got, want);

    let got: Vec<(String, u32)> = by_index(1)
        .map(|fr| {
            assert_eq!(fr.status, FrameStatus::Symbolicated);
            assert_eq!(
                fr.lookup_addr,
                Some(ret - 1),
                "caller frames are looked up at ret - 1"
            );
            let s = fr.source.as_ref().unwrap();
            (s.function.to_string(), s.lineno)
        })
        .collect();
    let want: Vec<(String, u32)> = want_ret[0]
        .iter()
        .map(|w| (w.function.clone(), w.line))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.last().unwrap().0, "main");

    let statuses: Vec<FrameStatus> = (2..5).map(|i| by_index(i).next().unwrap().status).collect();
    assert_eq!(
        statuses,
        [
            FrameStatus::UnknownImage,
            FrameStatus::MissingSymbol,
            FrameStatus::MissingSymbol
        ]
    );
    assert_eq!(crash.modules[0].debug_status, "found");
    assert_eq!(crash.modules[1].debug_status, "missing");
    // Inlined frames carry the flag; the last frame of each chain is the physical function.
    for i in 0..2 {
        let chain: Vec<bool> = by_index(i)
            .map(|fr| fr.source.as_ref().unwrap().inlined)
            .collect();
        assert!(!chain.last().unwrap());
        assert!(chain[..chain.len() - 1].iter().all(|x| *x));
    }

    // The readable rendering names every frame; paths are prefix-mapped, so it is stable.
    let text = crash.to_text();
    assert!(text.contains("SIGSEGV"));
    assert!(text.contains("<unknown_image>") && text.contains("<missing_symbol>"));
    assert!(text.contains("/src/prog.c:"));
    let json = serde_json::to_value(&crash).unwrap();
    assert_eq!(json["threads"][0]["frames"][0]["status"], "symbolicated");
    assert_eq!(json["threads"][0]["frames"][0]["abs_path"], "/src/prog.c");
}

/// Rule: one conversion per debug file, however many requests need it at once.
#[test]
fn concurrent_requests_convert_once() {
    let f = fixture();
    let caches = caches(&f, ManualClock::default());
    caches.store().add_file(&f.binary).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| caches.get(&f.debug_id).unwrap());
        }
    });
    assert_eq!(caches.counters().conversions, 1);
}

/// Rule: conversions are kept on disk under a versioned path and reused after a restart.
#[test]
fn a_restart_loads_the_symcache_from_disk() {
    let f = fixture();
    let first = caches(&f, ManualClock::default());
    first.store().add_file(&f.binary).unwrap();
    first.get(&f.debug_id).unwrap();
    assert_eq!(first.counters().conversions, 1);
    let cached: Vec<_> = walk(&f.dir.path().join("cache"));
    assert_eq!(cached.len(), 1);
    let rel = cached[0]
        .strip_prefix(f.dir.path().join("cache"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(rel.starts_with("symcaches/v8.4/"), "{rel}");

    let second = caches(&f, ManualClock::default());
    let loaded = second.get(&f.debug_id).unwrap();
    assert!(!loaded.is_empty());
    assert_eq!(
        second.counters(),
        symbolicate::CacheCounters {
            conversions: 0,
            disk_loads: 1,
            negative_hits: 0,
            checksum_failures: 0,
        }
    );
}

/// Rule (issue 14, checksums): a SymCache on disk whose body was damaged (bytes flipped in its
/// string and range tables, which the format's own header checks cannot see) is detected by
/// its checksum, counted, converted again, and answers exactly as before the damage; the
/// rewritten file loads cleanly after the next restart.
#[test]
fn a_damaged_symcache_on_disk_is_detected_and_rebuilt() {
    let f = fixture();
    let first = caches(&f, ManualClock::default());
    first.store().add_file(&f.binary).unwrap();
    let clean = first.get(&f.debug_id).unwrap();
    let addrs: Vec<u64> = (0x1000..0x1400).step_by(3).collect();
    let expected: Vec<_> = addrs.iter().map(|&a| clean.lookup(a)).collect();
    assert!(
        expected
            .iter()
            .filter(|r| matches!(r, Ok(f) if !f.is_empty()))
            .count()
            > 50,
        "the addresses hit functions"
    );
    let file = walk(&f.dir.path().join("cache")).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    // Flip bytes spread over the body, past the header (the last 24 bytes are the trailer).
    let body = bytes.len() - 24;
    for i in (body / 3..body).step_by(body / 50) {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();

    let second = caches(&f, ManualClock::default());
    let rebuilt = second.get(&f.debug_id).unwrap();
    let c = second.counters();
    assert_eq!(
        (c.checksum_failures, c.conversions, c.disk_loads),
        (1, 1, 0)
    );
    let again: Vec<_> = addrs.iter().map(|&a| rebuilt.lookup(a)).collect();
    assert_eq!(
        again, expected,
        "the rebuilt SymCache answers as the clean one"
    );

    let third = caches(&f, ManualClock::default());
    third.get(&f.debug_id).unwrap();
    let c = third.counters();
    assert_eq!(
        (c.checksum_failures, c.conversions, c.disk_loads),
        (0, 0, 1)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Rule: a missing debug file is remembered for the negative TTL, then looked up again.
#[test]
fn missing_debug_files_are_remembered_for_the_ttl() {
    let f = fixture();
    let clock = ManualClock::default();
    let caches = caches(&f, clock.clone());
    assert_eq!(
        caches.get(&f.debug_id).unwrap_err(),
        CacheError::Missing(f.debug_id)
    );
    // Uploaded out of band (not through invalidate): the remembered failure still answers.
    caches.store().add_file(&f.binary).unwrap();
    for _ in 0..5 {
        assert!(matches!(
            caches.get(&f.debug_id),
            Err(CacheError::Missing(_))
        ));
    }
    assert_eq!(caches.counters().negative_hits, 5);
    clock.advance(Duration::from_secs(59));
    assert!(caches.get(&f.debug_id).is_err());
    clock.advance(Duration::from_secs(2));
    assert!(
        caches.get(&f.debug_id).is_ok(),
        "after the TTL the store is asked again"
    );
    assert_eq!(caches.counters().conversions, 1);
}

/// Rule: invalidate (called on upload) forgets a remembered failure at once.
#[test]
fn invalidate_forgets_a_remembered_failure() {
    let f = fixture();
    let caches = caches(&f, ManualClock::default());
    assert!(caches.get(&f.debug_id).is_err());
    caches.store().add_file(&f.binary).unwrap();
    caches.invalidate(&f.debug_id);
    assert!(caches.get(&f.debug_id).is_ok());
}

/// Rule: a stored but unreadable debug file gives `malformed` (remembered like a missing one),
/// never a panic.
#[test]
fn a_corrupted_stored_file_is_malformed() {
    let f = fixture();
    let caches = caches(&f, ManualClock::default());
    caches.store().add_file(&f.binary).unwrap();
    let stored = caches.store().find(&f.debug_id).unwrap();
    let data = std::fs::read(&stored).unwrap();
    std::fs::write(&stored, &data[..data.len() / 3]).unwrap();
    let err = caches.get(&f.debug_id).unwrap_err();
    assert!(matches!(err, CacheError::Malformed { .. }), "{err:?}");
    let sym = Symbolicator::new(caches.clone());
    let text_sym = symbol(&f.binary, "checksum");
    let crash = sym.symbolicate(&event(
        &f,
        &[(BASE + text_sym.addr, "abs")],
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    ));
    assert_eq!(crash.threads[0].frames[0].status, FrameStatus::Malformed);
    assert_eq!(crash.modules[0].debug_status, "malformed");
    assert_eq!(caches.counters().negative_hits, 1);
}

/// Rule: the store refuses what it cannot parse, with a reason, and writes nothing.
#[test]
fn the_store_refuses_garbage_and_truncated_files() {
    let f = fixture();
    let store = SymbolStore::open(f.dir.path().join("store")).unwrap();
    let data = std::fs::read(&f.binary).unwrap();
    for (name, bytes) in [
        (
            "garbage.so",
            (0..4096u32)
                .map(|i| (i * 7919 % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
        ("truncated.so", data[..64].to_vec()),
        ("empty.so", Vec::new()),
        ("notes.txt", b"just some text\n".to_vec()),
    ] {
        let err = store.add_bytes(name, &bytes).unwrap_err();
        assert!(err.to_string().starts_with(name), "{err}");
    }
    assert!(store.list().is_empty());
    assert!(
        store.add_bytes("../escape", &data).is_err(),
        "path components are checked"
    );
}

/// Rule: the layout is `<debug_file>/<DEBUG_ID>/<file>` and the index finds a file by id alone;
/// a file with debug info wins over a stripped one with the same id.
#[test]
fn the_store_layout_and_index() {
    let f = fixture();
    let store = SymbolStore::open(f.dir.path().join("store")).unwrap();
    let stripped = f.dir.path().join("prog.stripped");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&f.binary));
    let with_debug = store.add_file(&f.binary).unwrap();
    let without = store.add_file(&stripped).unwrap();
    assert_eq!(
        with_debug[0].object.debug_id, without[0].object.debug_id,
        "ELF build-id rule"
    );
    assert_eq!(
        with_debug[0].path,
        format!("prog/{}/prog", f.debug_id.breakpad())
    );
    assert!(!without[0].object.has_debug_info && without[0].object.has_symbols);
    // The stripped import came last, but the file with debug information still answers.
    assert_eq!(store.entry(&f.debug_id).unwrap().path, with_debug[0].path);
    assert!(store.find(&f.debug_id).unwrap().is_file());
    // The code id is the full GNU build-id, as `readelf -n` prints it.
    let notes = run(Command::new("readelf").arg("-n").arg(&f.binary));
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap();
    assert_eq!(
        with_debug[0].object.code_id.as_deref(),
        Some(build_id.trim())
    );
}
