//! The command line as a user runs it: `crashgrid symbols add` and `crashgrid symbolicate` as
//! processes, on a debug file built by the test (`cc -g -O2`), its build-id read with
//! `readelf -n` (binutils), not with crashgrid.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::harness::build_crasher;

fn crashgrid(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crashgrid"))
        .args(args)
        .current_dir(dir)
        .env("CRASHGRID_LOG", "warn")
        .output()
        .expect("running crashgrid")
}

/// The GNU build-id of an ELF file as `readelf -n` prints it.
fn build_id(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("cc links a build-id")
        .trim()
        .to_string()
}

/// Rule (issue 14): a module that reports only its ELF build-id (`code_id`, as Android
/// does) finds its debug file: the debug id is derived from it the way the store names the
/// file. `symbols add` prints both ids; a store that does not exist is an error.
#[test]
fn a_module_with_only_a_code_id_is_symbolicated_and_a_missing_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let crasher = build_crasher(dir.path());
    let store = dir.path().join("store");
    let lib = crasher.path.to_str().unwrap();
    let out = crashgrid(
        &["symbols", "add", lib, "--store", store.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = String::from_utf8(out.stdout).unwrap();
    let code_id = build_id(&crasher.path);
    assert!(
        added.contains(&crasher.debug_id) && added.contains(&code_id),
        "`symbols add` names the debug id {} and the code id {code_id}: {added}",
        crasher.debug_id
    );

    let addr = crasher.addr_in("crash_physics");
    let event = json!({
        "event_id": "cli-code-id",
        "timestamp": 1_795_598_000u64,
        "app": {"id": "com.example.game", "version": "2.4.1"},
        "platform": "android",
        "os": {"name": "Android", "version": "14"},
        "exception": {"type": "SIGSEGV"},
        "modules": [{"type": "elf", "code_file": "/data/app/lib/arm64/libgame.so",
                     "code_id": code_id, "image_addr": "0x10000"}],
        "threads": [{"crashed": true, "frames": [
            {"instruction_addr": format!("{:#x}", 0x10000 + addr)}
        ]}]
    });
    let event_file = dir.path().join("event.json");
    std::fs::write(&event_file, event.to_string()).unwrap();
    let out = crashgrid(
        &[
            "symbolicate",
            event_file.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crash: Value = serde_json::from_slice(&out.stdout).unwrap();
    let frame = &crash["threads"][0]["frames"][0];
    assert_eq!(frame["status"], "symbolicated", "{crash}");
    assert_eq!(frame["function"], "crash_physics", "{crash}");
    assert_eq!(crash["modules"][0]["debug_id"], crasher.debug_id.as_str());

    // A store directory that is not there: an error naming it, no store created.
    let nowhere = dir.path().join("no-such-store");
    let out = crashgrid(
        &[
            "symbolicate",
            event_file.to_str().unwrap(),
            "--store",
            nowhere.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!nowhere.exists(), "a store was created");
}
