//! The shared frame cache path (`Symbolicator::install_shared`) against the unshared path, on
//! the inputs of the other tests: identical output (statuses, inline chains, lookup addresses,
//! module reports), one shared-cache call per crash, nothing converted by a pod whose frames
//! the cluster already knows, and uploads seen through shared negatives. The shared cache is
//! an in-memory fake standing for the cluster's grid.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use symbolicate::{
    CacheConfig, CacheCounters, CrashEvent, DebugId, FrameCache, FrameKey, FrameStatus, FrameValue,
    SharedFrames, SymCaches, SymbolStore, SymbolicatedCrash, Symbolicator,
};

use crate::pipeline::{event, fixture, return_address, symbol, Fixture, BASE};

/// The cluster's shared cache, in memory: computes what it lacks with the caller's `compute`.
#[derive(Default)]
struct MemoryShared {
    map: Mutex<HashMap<FrameKey, FrameValue>>,
    calls: AtomicUsize,
    computed: AtomicUsize,
    puts: AtomicUsize,
}

impl SharedFrames for MemoryShared {
    fn get_or_compute(
        &self,
        keys: &[FrameKey],
        compute: &mut dyn FnMut(&[FrameKey]) -> Vec<FrameValue>,
    ) -> Vec<FrameValue> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut out: Vec<Option<FrameValue>> = {
            let map = self.map.lock().unwrap();
            keys.iter().map(|k| map.get(k).cloned()).collect()
        };
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let ks: Vec<FrameKey> = missing.iter().map(|&i| keys[i]).collect();
            let values = compute(&ks);
            assert_eq!(values.len(), ks.len(), "one value per key");
            self.computed.fetch_add(ks.len(), Ordering::SeqCst);
            let mut map = self.map.lock().unwrap();
            for (i, v) in missing.into_iter().zip(values) {
                map.insert(keys[i], v.clone());
                out[i] = Some(v);
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    fn put(&self, entries: &[(FrameKey, FrameValue)]) {
        self.puts.fetch_add(entries.len(), Ordering::SeqCst);
        let mut map = self.map.lock().unwrap();
        for (k, v) in entries {
            map.insert(*k, v.clone());
        }
    }
}

/// A pod: its own store (holding `files`) and SymCache directory under `root/name`, a near
/// cache, and the shared cache when given.
fn pod(
    root: &Path,
    name: &str,
    files: &[&Path],
    shared: Option<Arc<MemoryShared>>,
) -> Symbolicator {
    let store = SymbolStore::open(root.join(name).join("store")).unwrap();
    for f in files {
        store.add_file(f).unwrap();
    }
    let caches = Arc::new(SymCaches::new(
        store,
        CacheConfig::new(root.join(name).join("cache")),
    ));
    let sym = Symbolicator::with_frame_cache(caches, Arc::new(FrameCache::new(10_000)));
    if let Some(s) = shared {
        assert!(sym.install_shared(s));
    }
    sym
}

fn counters(sym: &Symbolicator) -> CacheCounters {
    sym.caches().counters()
}

/// Runs `events` through the unshared path, then through a cold shared pod (twice: shared
/// cache, then near cache) and through a second pod that finds everything in the shared cache;
/// asserts identical output everywhere. Returns the second pod's SymCache counters.
fn assert_paths_agree(root: &Path, files: &[&Path], events: &[CrashEvent]) -> CacheCounters {
    let unshared = pod(root, "unshared", files, None);
    let want: Vec<SymbolicatedCrash> = events.iter().map(|e| unshared.symbolicate(e)).collect();

    let shared = Arc::new(MemoryShared::default());
    let first = pod(root, "first", files, Some(shared.clone()));
    for round in ["cold", "near-warm"] {
        let calls = shared.calls.load(Ordering::SeqCst);
        for (e, w) in events.iter().zip(&want) {
            assert_eq!(&first.symbolicate(e), w, "{round}: event {}", e.event_id);
        }
        let made = shared.calls.load(Ordering::SeqCst) - calls;
        if round == "cold" {
            assert!(
                made <= events.len(),
                "at most one shared-cache call per crash: {made} calls for {} crashes",
                events.len()
            );
        } else {
            assert_eq!(made, 0, "the near cache answers every frame seen before");
        }
    }
    let computed = shared.computed.load(Ordering::SeqCst);

    // Another pod: every key is in the shared cache.
    let second = pod(root, "second", files, Some(shared.clone()));
    for (e, w) in events.iter().zip(&want) {
        assert_eq!(
            &second.symbolicate(e),
            w,
            "second pod: event {}",
            e.event_id
        );
    }
    assert_eq!(
        shared.computed.load(Ordering::SeqCst),
        computed,
        "the second pod computed nothing"
    );
    assert_eq!(shared.puts.load(Ordering::SeqCst), 0);
    counters(&second)
}

/// Rule: on the pipeline test's inputs (a real `cc -g -O2` binary: crashing frame, return
/// address adjusted to the call, unknown image, unknown module, no symbol at the address;
/// absolute and `rel:` frames; an image loaded at an address that is not 8-aligned; a second
/// thread), the shared path gives exactly the unshared path's output, and a pod finding every
/// frame in the shared cache loads and converts no SymCache at all.
#[test]
fn both_paths_agree_on_a_real_elf_and_a_cold_pod_converts_nothing() {
    let f = fixture();
    let checksum = symbol(&f.binary, "checksum");
    let crash_at = checksum.addr + checksum.size / 2;
    let ret = return_address(&f.binary, "main", "crunch");
    let other = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    let mut events = vec![
        event(
            &f,
            &[
                (BASE + crash_at, "abs"),
                (ret, "rel:0"),
                (0x10, "abs"),
                (0x7f00_0000_0040, "abs"),
                (BASE + 0x10, "abs"),
            ],
            other,
        ),
        // The same frames, the crashing one now a caller frame and vice versa.
        event(
            &f,
            &[(BASE + ret, "abs"), (crash_at, "rel:0"), (ret + 1, "rel:0")],
            other,
        ),
    ];
    events.push(odd_event(&f, crash_at, ret));
    let second = assert_paths_agree(f.dir.path(), &[&f.binary], &events);
    assert_eq!(
        second,
        CacheCounters::default(),
        "no conversion, no disk load, no store lookup"
    );
}

/// An event with two threads and the module loaded at an address that is not 8-aligned.
fn odd_event(f: &Fixture, crash_at: u64, ret: u64) -> CrashEvent {
    let image = 0x7f12_3456_7003u64;
    CrashEvent::from_value(&json!({
        "event_id": "odd", "timestamp": 1_795_599_000,
        "app": {"id": "demo", "version": "1.0"}, "platform": "native",
        "os": {"name": "Linux", "version": "6.1"},
        "exception": {"type": "SIGSEGV"},
        "modules": [
            {"type": "elf", "code_file": "/opt/demo/prog", "debug_id": f.debug_id.to_string(),
             "image_addr": format!("{image:#x}"), "image_size": 0x10000},
            {"type": "elf", "code_file": "/opt/demo/nodebug", "image_addr": "0x7f2000000000"},
        ],
        "threads": [
            {"crashed": true, "frames": [
                {"instruction_addr": format!("{:#x}", image + crash_at)},
                {"instruction_addr": format!("{ret:#x}"), "addr_mode": "rel:0"},
                {"instruction_addr": "0x20", "addr_mode": "rel:1"},
            ]},
            {"crashed": false, "id": 2, "name": "worker", "frames": [
                {"instruction_addr": format!("{:#x}", image + crash_at)},
                {"instruction_addr": format!("{:#x}", image + ret)},
            ]}
        ]
    }))
    .unwrap()
}

/// Rule: a malformed debug file gives the same frame statuses and the same module report
/// (`malformed`, with the same error) through both paths; the negative is shared.
#[test]
fn both_paths_agree_on_a_malformed_debug_file() {
    let f = fixture();
    let data = std::fs::read(&f.binary).unwrap();
    let checksum = symbol(&f.binary, "checksum");
    let events = vec![event(
        &f,
        &[
            (BASE + checksum.addr, "abs"),
            (BASE + checksum.addr + 4, "abs"),
        ],
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    )];
    // Each pod's stored copy is corrupted after the import (as in the pipeline test).
    let root = f.dir.path();
    for name in ["unshared", "first", "second"] {
        let store = SymbolStore::open(root.join(name).join("store")).unwrap();
        store.add_file(&f.binary).unwrap();
        let stored = store.find(&f.debug_id).unwrap();
        std::fs::write(&stored, &data[..data.len() / 3]).unwrap();
    }
    let second = assert_paths_agree(root, &[], &events);
    assert_eq!(second.conversions, 0);
    let unshared = pod(root, "unshared", &[], None);
    let crash = unshared.symbolicate(&events[0]);
    assert_eq!(crash.threads[0].frames[0].status, FrameStatus::Malformed);
    assert_eq!(crash.modules[0].debug_status, "malformed");
    assert_eq!(crash.modules[1].debug_status, "unused");
}

/// The Breakpad fixture of the format tests (inline records two deep, PUBLIC-only symbols,
/// gaps between functions).
fn breakpad_fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libgame.so.sym")
}

/// Rule: on the Breakpad fixture's lookups (inline chains, PUBLIC-only names, addresses
/// covered by nothing), as crashing and as caller frames, absolute and relative, at an
/// aligned and a misaligned image address, both paths agree.
#[test]
fn both_paths_agree_on_breakpad_inline_chains() {
    let dir = tempfile::tempdir().unwrap();
    let sym = breakpad_fixture();
    let id: DebugId = "5a9e8c0f-3b2d-4e1f-8a7b-6c5d4e3f2a1b".parse().unwrap();
    let addrs: [u64; 16] = [
        0x0fff, 0x1000, 0x100f, 0x1010, 0x1017, 0x1018, 0x1027, 0x1028, 0x1041, 0x107f, 0x1080,
        0x1101, 0x1111, 0x2001, 0x20ff, 0x2101,
    ];
    let mut events = Vec::new();
    for (n, image) in [0x7f00_0000_0000u64, 0x7f00_0000_0005]
        .into_iter()
        .enumerate()
    {
        for (m, mode) in ["abs", "rel"].into_iter().enumerate() {
            let frames: Vec<_> = addrs
                .iter()
                .map(|a| match mode {
                    "abs" => json!({"instruction_addr": format!("{:#x}", image + a)}),
                    _ => json!({"instruction_addr": format!("{a:#x}"), "addr_mode": "rel:0"}),
                })
                .collect();
            events.push(
                CrashEvent::from_value(&json!({
                    "event_id": format!("bp-{n}-{m}"), "timestamp": 1_795_599_000,
                    "app": {"id": "demo", "version": "1.0"}, "platform": "native",
                    "os": {"name": "Linux", "version": "6.1"},
                    "exception": {"type": "SIGSEGV"},
                    "modules": [{"type": "elf", "code_file": "libgame.so",
                        "debug_id": id.to_string(), "image_addr": format!("{image:#x}"),
                        "image_size": 0x10000}],
                    "threads": [
                        {"crashed": true, "frames": frames.clone()},
                        {"crashed": false, "frames": frames},
                    ]
                }))
                .unwrap(),
            );
        }
    }
    let second = assert_paths_agree(dir.path(), &[&sym], &events);
    assert_eq!(second, CacheCounters::default());
    // The inline chains really are there (the comparison is not between two empty outputs).
    let crash = pod(dir.path(), "unshared", &[], None).symbolicate(&events[0]);
    let chain = crash.threads[0]
        .frames
        .iter()
        .filter(|f| f.original_index == 6)
        .count();
    assert_eq!(chain, 3, "0x1027 - 1: dot in length in step");
}

/// Rule: a shared negative computed before this pod received the debug file is not trusted:
/// the pod recomputes (finds the file), answers symbolicated frames and writes the found
/// value back for the others. A pod that did not receive the file keeps the negative (until
/// the TTL, which the shared cache enforces) — until the value written back reaches it.
#[test]
fn an_upload_overrides_shared_negatives_from_before_it() {
    let f = fixture();
    let checksum = symbol(&f.binary, "checksum");
    let ev = event(
        &f,
        &[(BASE + checksum.addr + 1, "abs")],
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    );
    let shared = Arc::new(MemoryShared::default());
    let root = f.dir.path();
    let a = pod(root, "a", &[], Some(shared.clone()));
    let b = pod(root, "b", &[], Some(shared.clone()));
    let crash = a.symbolicate(&ev);
    assert_eq!(
        crash.threads[0].frames[0].status,
        FrameStatus::MissingSymbol
    );
    assert_eq!(crash.modules[0].debug_status, "missing");
    // Same millisecond as the negative would count as "after" it.
    std::thread::sleep(std::time::Duration::from_millis(5));

    let data = std::fs::read(&f.binary).unwrap();
    let stored = a.store_debug_file("prog", &data).unwrap();
    assert_eq!(stored[0].object.debug_id, f.debug_id);
    let crash = a.symbolicate(&ev);
    assert_eq!(crash.threads[0].frames[0].status, FrameStatus::Symbolicated);
    assert_eq!(crash.modules[0].debug_status, "found");
    assert_eq!(shared.puts.load(Ordering::SeqCst), 1, "written back");
    // Pod b never received the file, and now reads the found value from the shared cache.
    let crash = b.symbolicate(&ev);
    assert_eq!(crash.threads[0].frames[0].status, FrameStatus::Symbolicated);
    assert_eq!(counters(&b).conversions, 0);

    // Uploading the same file again replaces nothing: found values stay trusted.
    let puts = shared.puts.load(Ordering::SeqCst);
    a.store_debug_file("prog", &data).unwrap();
    let fresh = pod(root, "c", &[], Some(shared.clone()));
    fresh.store_debug_file("prog", &data).unwrap();
    assert_eq!(fresh.symbolicate(&ev), a.symbolicate(&ev));
    assert_eq!(shared.puts.load(Ordering::SeqCst), puts);
    assert_eq!(
        counters(&fresh).conversions,
        0,
        "a new pod receiving its files starts warm"
    );
}
