//! A node over real HTTP and WebSocket: exact statistics, window expiry, bad input, backpressure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::*;

const KINDS: [&str; 4] = [
    "crash_render",
    "crash_physics",
    "crash_audio",
    "crash_network",
];
const VERSIONS: [&str; 3] = ["2.4.0", "2.4.1", "2.5.0"];
const OSES: [(&str, &str, &str); 3] = [
    ("android", "Android", "13"),
    ("android", "Android", "14"),
    ("ios", "iOS", "17.2"),
];
const DEVICES: [&str; 4] = ["Pixel 8", "Galaxy S23", "iPhone15,2", "Redmi Note 12"];

#[derive(Default)]
struct Truth {
    total: u64,
    by: BTreeMap<&'static str, BTreeMap<String, u64>>,
    kinds: BTreeMap<&'static str, u64>,
    users: BTreeSet<String>,
}

fn make_event(c: &Crasher, i: u64, truth: &mut Truth) -> Value {
    // A deterministic but uneven mix: kind i%7 folded onto four kinds makes counts differ.
    let kind = KINDS[[0, 0, 0, 1, 1, 2, 3][(i % 7) as usize]];
    let version = VERSIONS[(i % 3) as usize];
    let (platform, os_name, os_version) = OSES[(i / 3 % 3) as usize];
    let device = DEVICES[(i / 2 % 4) as usize];
    let user = format!("user-{}", i % 97);
    let image = 0x7000_0000_0000u64 + (i % 5) * 0x100_0000;
    truth.total += 1;
    for (dim, v) in [
        ("app_version", version),
        ("platform", platform),
        ("os_version", os_version),
        ("device_model", device),
        ("exception_type", "SIGSEGV"),
    ] {
        *truth
            .by
            .entry(dim)
            .or_default()
            .entry(v.to_string())
            .or_default() += 1;
    }
    *truth.kinds.entry(kind).or_default() += 1;
    truth.users.insert(user.clone());
    json!({
        "event_id": format!("evt-{i}"),
        "timestamp": 1_795_598_000 + i,
        "app": {"id": "com.example.game", "version": version},
        "platform": platform,
        "os": {"name": os_name, "version": os_version},
        "device": {"model": device},
        "user": {"id": user},
        "exception": {"type": "SIGSEGV", "value": "Segmentation fault"},
        "modules": [{"type": "elf", "code_file": "/data/app/lib/arm64/libgame.so", "debug_id": c.debug_id,
                     "image_addr": format!("{image:#x}"), "image_size": 0x100000}],
        "threads": [{"crashed": true, "frames": [
            {"instruction_addr": format!("{:#x}", image + c.addr_in(kind))},
            {"instruction_addr": format!("{:#x}", c.addr_in("game_loop")), "addr_mode": "rel:0"}
        ]}]
    })
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    client
        .post(format!("{url}/api/v1/crashes"))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn upload(client: &reqwest::Client, url: &str, c: &Crasher) {
    let resp = client
        .put(format!("{url}/api/v1/debug-files/libgame.so"))
        .body(std::fs::read(&c.path).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["stored"][0]["debug_id"], c.debug_id);
}

async fn stats(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(format!("{url}/api/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn breakdown(snapshot: &Value, dim: &str) -> BTreeMap<String, u64> {
    snapshot["stats"]["breakdowns"][dim]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["value"].as_str().unwrap().to_string(),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Rules: snapshot totals, breakdowns and groups equal the ground truth exactly; distinct users
/// within the HyperLogLog error bound; slices leave the window after 300 s (controllable clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_crashes_are_counted_exactly_and_leave_the_window_after_five_minutes() {
    let node = TestNode::start(|a| a.in_app = Some(vec!["libgame*".into()])).await;
    let crasher = build_crasher(node.dir.path());
    let client = reqwest::Client::new();
    upload(&client, &node.url, &crasher).await;

    let mut truth = Truth::default();
    let mut i = 0;
    // 1,000 crashes over three seconds of the manual clock, in batches, one gzip-compressed.
    for second in 0..3 {
        for batch in 0..5 {
            let events: Vec<Value> = (0..(60 + second * 20 + batch))
                .map(|_| {
                    i += 1;
                    make_event(&crasher, i, &mut truth)
                })
                .collect();
            let resp = if batch == 0 {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&serde_json::to_vec(&events).unwrap()).unwrap();
                client
                    .post(format!("{}/api/v1/crashes", node.url))
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(gz.finish().unwrap())
                    .send()
                    .await
                    .unwrap()
            } else {
                post(&client, &node.url, &json!(events)).await
            };
            assert_eq!(resp.status(), 202);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["accepted"], events.len());
        }
        node.clock.advance_ms(1000);
    }
    // A single event (not an array) is accepted too.
    i += 1;
    let single = make_event(&crasher, i, &mut truth);
    assert_eq!(post(&client, &node.url, &single).await.status(), 202);
    node.drained(truth.total).await;

    let snap = stats(&client, &node.url).await;
    assert_eq!(snap["stats"]["total"], truth.total);
    assert_eq!(snap["backlog"]["unacked"], 0);
    assert_eq!(snap["ingest"]["processed_total"], truth.total);
    for (dim, want) in &truth.by {
        assert_eq!(&breakdown(&snap, dim), want, "breakdown {dim}");
    }
    let series: Vec<u64> = snap["stats"]["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(series.len(), 300);
    assert_eq!(series.iter().sum::<u64>(), truth.total);
    assert_eq!(
        &series[296..],
        &[310, 410, 510, 1][..],
        "per-second series, oldest first"
    );

    // Groups: one per crash site, titled by the symbolicated in-app function, counted exactly.
    let groups = snap["stats"]["top_groups"].as_array().unwrap();
    assert_eq!(groups.len(), KINDS.len());
    for g in groups {
        let title = g["title"].as_str().unwrap();
        let kind = KINDS
            .iter()
            .find(|k| title.contains(**k))
            .unwrap_or_else(|| panic!("unexpected group title {title}"));
        assert!(title.starts_with("SIGSEGV: "), "{title}");
        assert_eq!(g["count"], truth.kinds[kind], "group {title}");
    }

    let users = snap["stats"]["distinct_users"].as_f64().unwrap();
    let exact = truth.users.len() as f64;
    assert!(
        (users - exact).abs() <= exact * 3.0 * 0.0163 + 1.0,
        "HLL estimate {users} vs {exact}"
    );
    assert!(snap["stats"]["symbolication_time_us"]["count"] == truth.total);

    // The group endpoint serves the latest symbolicated example.
    let id = groups[0]["id"].as_str().unwrap();
    let group: Value = client
        .get(format!("{}/api/v1/groups/{id}", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let frames = group["latest"]["threads"][0]["frames"].as_array().unwrap();
    assert_eq!(frames[0]["status"], "symbolicated");
    assert!(frames.iter().any(|f| f["function"] == "game_loop"));
    assert!(frames.iter().any(|f| f["abs_path"]
        .as_str()
        .is_some_and(|p| p.ends_with("libgame.c"))));
    let missing = client
        .get(format!("{}/api/v1/groups/0000000000000000", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Every accepted crash reached the sink.
    let lines = std::fs::read_to_string(node.dir.path().join("crashes.jsonl")).unwrap();
    assert_eq!(lines.lines().count() as u64, truth.total);

    // Window expiry: the first second (accepted at t0) still counts at t0+299, not at t0+300.
    // The clock now stands at t0+3.
    node.clock.advance_ms(296_000);
    assert_eq!(
        stats(&client, &node.url).await["stats"]["total"],
        truth.total
    );
    node.clock.advance_ms(1000);
    assert_eq!(
        stats(&client, &node.url).await["stats"]["total"],
        truth.total - 310
    );
    node.clock.advance_ms(2000);
    assert_eq!(stats(&client, &node.url).await["stats"]["total"], 1);
    node.clock.advance_ms(1000);
    assert_eq!(stats(&client, &node.url).await["stats"]["total"], 0);
    node.stop().await;
}

fn error_of(body: &Value) -> (&str, Option<&str>) {
    (
        body["error"]["code"].as_str().unwrap(),
        body["error"]["field"].as_str(),
    )
}

/// Rule: bad input gets the right status and a JSON error naming the problem, is counted, and
/// the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_node_keeps_serving() {
    let node = TestNode::start(|a| {
        a.max_body_bytes = Some(64 * 1024);
        a.queue_capacity = Some(50);
    })
    .await;
    let crasher = build_crasher(node.dir.path());
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/crashes", node.url);
    let mut truth = Truth::default();
    let good = make_event(&crasher, 1, &mut truth);

    // Malformed JSON.
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"event_id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_of(&body), ("invalid_json", Some("$")));

    // Wrong field types, in a batch: the field path carries the event index.
    let mut bad = good.clone();
    bad["threads"][0]["frames"][1]["instruction_addr"] = json!({"hex": "0x1"});
    let r = post(&client, &node.url, &json!([good.clone(), bad])).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        error_of(&body),
        (
            "invalid_event",
            Some("[1].threads[0].frames[1].instruction_addr")
        )
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expected a hex string"));

    // A frame referencing a module the event does not have.
    let mut bad = good.clone();
    bad["threads"][0]["frames"][1]["addr_mode"] = json!("rel:3");
    let body: Value = post(&client, &node.url, &bad).await.json().await.unwrap();
    assert_eq!(
        error_of(&body),
        ("invalid_event", Some("threads[0].frames[1].addr_mode"))
    );

    // Oversize body (plain, and a gzip bomb that only exceeds the limit once decompressed).
    let big = json!(vec![good.clone(); 200]);
    let r = post(&client, &node.url, &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_of(&r.json().await.unwrap()).0, "too_large");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1 << 20]).unwrap();
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_of(&r.json().await.unwrap()).0, "bad_encoding");

    // Unsupported content type and encoding.
    let r = client
        .post(&url)
        .header("content-type", "text/plain")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        error_of(&r.json().await.unwrap()).0,
        "unsupported_media_type"
    );
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Overload: a batch larger than the whole queue is refused with 429 and Retry-After.
    let r = post(&client, &node.url, &json!(vec![good.clone(); 51])).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_of(&r.json().await.unwrap()).0, "overloaded");

    // A bad debug file upload names the reason.
    let refused_upload = async |name: &str| -> Value {
        let r = client
            .put(format!("{}/api/v1/debug-files/{name}", node.url))
            .body(vec![0u8; 300])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_of(&body).0, "invalid_debug_file", "{body}");
        body
    };
    let body = refused_upload("garbage.so").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("garbage.so"));
    // A name no file system takes is a 400 too, and no answer names a server path.
    let body = refused_upload(&format!("{}.so", "n".repeat(300))).await;
    let data_dir = node.dir.path().display().to_string();
    assert!(!body.to_string().contains(&data_dir), "{body}");

    // Still serving: a good event is accepted and processed, health is fine.
    assert_eq!(post(&client, &node.url, &good).await.status(), 202);
    node.drained(1).await;
    assert_eq!(
        client
            .get(format!("{}/healthz", node.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/readyz", node.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Every rejection was counted by reason. (The accepted event is acknowledged once the
    // statistics round took it: wait for that, then nothing is left unacked.)
    node.drained(1).await;
    let metrics = client
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, n) in [
        ("invalid_json", 1),
        ("invalid_event", 2),
        ("too_large", 2),
        ("bad_encoding", 1),
        ("unsupported_media_type", 1),
        ("unsupported_encoding", 1),
        ("overloaded", 51),
    ] {
        let line = format!("crashgrid_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    assert!(metrics.contains("crashgrid_crashes_processed_total 1"));
    assert!(metrics.contains("crashgrid_debug_files_refused_total 2"));
    assert!(
        metrics.contains("crashgrid_unacked_messages 0"),
        "{metrics}"
    );
    node.stop().await;
}

async fn next_snapshot<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a snapshot within 10 s")
        .unwrap()
        .unwrap();
    serde_json::from_str::<Value>(msg.to_text().unwrap()).unwrap()
}

/// Rule: the live feed sends a snapshot on connect, then each published one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_sends_a_snapshot_on_connect_and_then_every_publish() {
    let node = TestNode::start(|_| {}).await;
    let crasher = build_crasher(node.dir.path());
    let ws_url = format!("{}/api/v1/stats/live", node.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let first = next_snapshot(&mut ws).await;
    assert_eq!(first["stats"]["total"], 0);
    assert_eq!(first["node"], "test-node");
    let client = reqwest::Client::new();
    let mut truth = Truth::default();
    let events: Vec<Value> = (0..25)
        .map(|i| make_event(&crasher, i, &mut truth))
        .collect();
    assert_eq!(post(&client, &node.url, &json!(events)).await.status(), 202);
    node.drained(25).await;
    // Published snapshots arrive every 100 ms; one of the next few shows the 25 crashes.
    let mut seen = 0;
    for _ in 0..50 {
        let snap = next_snapshot(&mut ws).await;
        seen = snap["stats"]["total"].as_u64().unwrap();
        if seen == 25 {
            assert_eq!(snap["cluster"]["members"][0]["leader"], true);
            break;
        }
    }
    assert_eq!(seen, 25);
    node.stop().await;
}

/// Rule: on shutdown every accepted event is processed and written to the sink (nothing
/// accepted is silently lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_every_accepted_event() {
    let node = TestNode::start(|a| a.workers = Some(1)).await;
    let crasher = build_crasher(node.dir.path());
    let client = reqwest::Client::new();
    let mut truth = Truth::default();
    let mut accepted = 0;
    for b in 0..10 {
        let events: Vec<Value> = (0..100)
            .map(|i| make_event(&crasher, b * 100 + i, &mut truth))
            .collect();
        if post(&client, &node.url, &json!(events)).await.status() == 202 {
            accepted += 100;
        }
    }
    let processed_before_stop = node.node.metrics().processed.get();
    let n = node.node.clone();
    let dir = node.stop().await;
    let sink = dir.path().join("crashes.jsonl");
    assert_eq!(
        n.metrics().processed.get(),
        accepted,
        "processed {processed_before_stop} before the stop"
    );
    assert_eq!(
        std::fs::read_to_string(sink).unwrap().lines().count() as u64,
        accepted
    );
}
