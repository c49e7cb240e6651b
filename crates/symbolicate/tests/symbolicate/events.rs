//! The crash event format: valid events parse, invalid ones name the offending field.

use serde_json::json;
use symbolicate::{AddrMode, CrashEvent, EventError};

pub fn valid() -> serde_json::Value {
    json!({
        "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "timestamp": "2026-11-25T09:30:00.250Z",
        "app": {"id": "com.example.game", "version": "2.4.1", "build": "2041"},
        "platform": "android",
        "os": {"name": "Android", "version": "14"},
        "device": {"model": "Pixel 8"},
        "user": {"id": "user-42"},
        "exception": {"type": "SIGSEGV", "value": "Segmentation fault"},
        "modules": [
            {"type": "elf", "code_file": "/data/app/libgame.so", "debug_id": "3249d99d-0c40-7b5a-9e38-4a9f0b7f1c2e",
             "image_addr": "0x7f0000000000", "image_size": 65536},
            {"type": "elf", "code_file": "/system/lib64/libc.so", "image_addr": "0x7f0000100000"}
        ],
        "threads": [
            {"id": 1, "name": "main", "crashed": true, "frames": [
                {"instruction_addr": "0x7f0000001234"},
                {"instruction_addr": "0x10", "addr_mode": "rel:1"}
            ]}
        ]
    })
}

/// Rejects through both paths: the JSON-tree validation and `from_json` (typed fast path with
/// fallback) must give the same error, alone and inside a batch.
fn reject(mutate: impl FnOnce(&mut serde_json::Value)) -> EventError {
    let mut v = valid();
    mutate(&mut v);
    let err = CrashEvent::from_value(&v).expect_err("the event must be rejected");
    let text = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        CrashEvent::from_json(&text).unwrap_err(),
        err,
        "from_json disagrees"
    );
    assert_eq!(
        CrashEvent::parse_batch(&text).unwrap_err(),
        err,
        "parse_batch disagrees"
    );
    let batch = serde_json::to_vec(&json!([valid(), v])).unwrap();
    let in_batch = CrashEvent::parse_batch(&batch).unwrap_err();
    let want = if err.field == "$" {
        "[1]".to_string()
    } else {
        format!("[1].{}", err.field)
    };
    assert_eq!(in_batch.field, want);
    err
}

#[test]
fn a_valid_event_parses_with_every_field() {
    let e = CrashEvent::from_value(&valid()).unwrap();
    assert_eq!(e.event_id, "7c9e6679-7425-40de-944b-e07fc1f90ae7");
    // 2026-11-25T09:30:00.250Z
    assert_eq!(e.timestamp_ms, 1_795_599_000_250);
    assert_eq!(e.unix_second(), 1_795_599_000);
    assert_eq!(e.app.build.as_deref(), Some("2041"));
    assert_eq!(e.device_model.as_deref(), Some("Pixel 8"));
    assert_eq!(e.user_id.as_deref(), Some("user-42"));
    assert_eq!(e.modules[0].image_size, Some(65536));
    assert_eq!(e.modules[1].image_size, None);
    assert_eq!(e.threads[0].frames[0].addr_mode, AddrMode::Abs);
    assert_eq!(e.threads[0].frames[1].addr_mode, AddrMode::Rel(1));
    assert_eq!(e.threads[0].frames[1].instruction_addr, 0x10);
}

/// Rule: the typed fast path and the field-by-field validation accept the same events alike.
#[test]
fn both_parsing_paths_give_the_same_event() {
    let text = serde_json::to_vec(&valid()).unwrap();
    let slow = CrashEvent::from_value(&valid()).unwrap();
    assert_eq!(CrashEvent::from_json(&text).unwrap(), slow);
    let batch = serde_json::to_vec(&json!([valid(), valid()])).unwrap();
    assert_eq!(
        CrashEvent::parse_batch(&batch).unwrap(),
        vec![slow.clone(), slow.clone()]
    );
    // Escaped strings (not borrowable) and nulls as absent values.
    let mut v = valid();
    v["app"]["id"] = json!("com.example.\"quoted\"\u{e9}\n");
    v["device"] = json!(null);
    v["threads"][0]["crashed"] = json!(null);
    let text = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        CrashEvent::from_json(&text).unwrap(),
        CrashEvent::from_value(&v).unwrap()
    );
    let err = CrashEvent::parse_batch(b"[]").unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.problem.as_str()),
        ("$", "the batch is empty")
    );
    assert!(CrashEvent::parse_batch(b"[{").unwrap_err().is_syntax());
}

#[test]
fn serializing_and_parsing_again_gives_the_same_event() {
    let e = CrashEvent::from_value(&valid()).unwrap();
    let again = CrashEvent::from_json(&serde_json::to_vec(&e).unwrap()).unwrap();
    assert_eq!(e, again);
}

#[test]
fn timestamps_in_unix_seconds_and_with_offsets() {
    let mut v = valid();
    v["timestamp"] = json!(1_795_599_000.5);
    assert_eq!(
        CrashEvent::from_value(&v).unwrap().timestamp_ms,
        1_795_599_000_500
    );
    v["timestamp"] = json!("2026-11-25T11:30:00+02:00");
    assert_eq!(
        CrashEvent::from_value(&v).unwrap().timestamp_ms,
        1_795_599_000_000
    );
}

/// Rule: an invalid event yields an error naming the field.
#[test]
fn every_rejection_names_its_field() {
    type Mutation = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "event_id",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("event_id");
            }),
        ),
        ("event_id", Box::new(|v| v["event_id"] = json!(17))),
        (
            "timestamp",
            Box::new(|v| v["timestamp"] = json!("yesterday")),
        ),
        ("timestamp", Box::new(|v| v["timestamp"] = json!(-5))),
        ("app", Box::new(|v| v["app"] = json!("com.example"))),
        ("app.version", Box::new(|v| v["app"]["version"] = json!(""))),
        (
            "os.name",
            Box::new(|v| {
                v["os"].as_object_mut().unwrap().remove("name");
            }),
        ),
        (
            "exception.type",
            Box::new(|v| v["exception"]["type"] = json!(["SIGSEGV"])),
        ),
        (
            "device.model",
            Box::new(|v| v["device"]["model"] = json!(3)),
        ),
        ("modules", Box::new(|v| v["modules"] = json!({}))),
        (
            "modules[0].debug_id",
            Box::new(|v| v["modules"][0]["debug_id"] = json!("not-an-id")),
        ),
        (
            "modules[0].image_addr",
            Box::new(|v| v["modules"][0]["image_addr"] = json!("7f00")),
        ),
        (
            "modules[1].image_addr",
            Box::new(|v| v["modules"][1]["image_addr"] = json!("0xZZ")),
        ),
        (
            "modules[0].code_id",
            Box::new(|v| v["modules"][0]["code_id"] = json!("xyz")),
        ),
        (
            "threads[0].crashed",
            Box::new(|v| v["threads"][0]["crashed"] = json!("yes")),
        ),
        (
            "threads[0].frames[1].instruction_addr",
            Box::new(|v| v["threads"][0]["frames"][1]["instruction_addr"] = json!(true)),
        ),
        (
            "threads[0].frames[0].instruction_addr",
            Box::new(|v| v["threads"][0]["frames"][0]["instruction_addr"] = json!(-1)),
        ),
        (
            "threads[0].frames[1].addr_mode",
            Box::new(|v| v["threads"][0]["frames"][1]["addr_mode"] = json!("rel:9")),
        ),
        (
            "threads[0].frames[1].addr_mode",
            Box::new(|v| v["threads"][0]["frames"][1]["addr_mode"] = json!("relative")),
        ),
        (
            // image_addr + offset past u64::MAX: refused, not wrapped to a small address.
            "threads[0].frames[1].instruction_addr",
            Box::new(|v| {
                v["modules"][1]["image_addr"] = json!("0xfffffffffffff000");
                v["threads"][0]["frames"][1]["instruction_addr"] = json!("0x1000");
            }),
        ),
        (
            "threads[0].frames",
            Box::new(|v| {
                v["threads"][0].as_object_mut().unwrap().remove("frames");
            }),
        ),
    ];
    for (field, mutate) in cases {
        let err = reject(mutate);
        assert_eq!(err.field, field, "wrong field for {err}");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn not_json_and_not_an_object_are_rejected() {
    let err = CrashEvent::from_json(b"{\"event_id\": ").unwrap_err();
    assert_eq!(err.field, "$");
    assert!(err.problem.contains("not valid JSON"), "{err}");
    let err = CrashEvent::from_json(b"[1, 2]").unwrap_err();
    assert_eq!(err.field, "$");
    assert!(err.problem.contains("expected an object"), "{err}");
}

#[test]
fn errors_in_a_batch_carry_the_event_index() {
    let err = CrashEvent::from_value_at(&json!({"event_id": 5}), "[3]").unwrap_err();
    assert_eq!(err.field, "[3].event_id");
}

#[test]
fn oversized_arrays_are_rejected_not_cut() {
    let err = reject(|v| {
        let frame = v["threads"][0]["frames"][0].clone();
        v["threads"][0]["frames"] = json!(vec![frame; symbolicate::limits::MAX_FRAMES + 1]);
    });
    assert_eq!(err.field, "threads[0].frames");
    assert!(err.problem.contains("at most"), "{err}");
}

/// Rule (issue 14, code ids): a module without `debug_id` gets one from its `code_id` as
/// Breakpad derives it: an ELF build-id's first 16 bytes as a little-endian GUID (age 0),
/// shorter ones zero-padded; a Mach-O UUID as is; a PE code id (timestamp and size) gives none.
#[test]
fn a_debug_id_is_derived_from_a_code_id() {
    use symbolicate::debug_id_from_code_id as derive;
    let id = |s: &str| s.parse::<symbolicate::DebugId>().unwrap();
    assert_eq!(
        derive("elf", "0102030405060708090a0b0c0d0e0f1011121314"),
        Some(id("04030201-0605-0807-090a-0b0c0d0e0f10"))
    );
    assert_eq!(
        derive("elf", "01020304"),
        Some(id("04030201-0000-0000-0000-000000000000"))
    );
    assert_eq!(
        derive("macho", "0102030405060708090a0b0c0d0e0f10"),
        Some(id("01020304-0506-0708-090a-0b0c0d0e0f10"))
    );
    assert_eq!(derive("pe", "5f0a3b2c1d000"), None);
    assert_eq!(derive("elf", "abc"), None, "odd length");
    // Through the parser, both paths: the module's debug id is the derived one.
    let mut v = valid();
    v["modules"][1]["code_id"] = serde_json::json!("0102030405060708090a0b0c0d0e0f1011121314");
    let text = serde_json::to_vec(&v).unwrap();
    for e in [
        CrashEvent::from_value(&v).unwrap(),
        CrashEvent::from_json(&text).unwrap(),
    ] {
        assert_eq!(
            e.modules[1].debug_id,
            Some(id("04030201-0605-0807-090a-0b0c0d0e0f10"))
        );
    }
}
