//! Hostile input against a real node process: gzip bombs, floods of unique strings, slow and
//! idle sockets, hundreds of subscribers. Each test asserts a bound the node must keep (its
//! resident memory read from `/proc`, sockets closed within the stated timeouts, no
//! "Too many open files") while a normal client keeps being served.

use std::io::Write as _;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::{ProcCluster, ProcNode};

const MIB: u64 = 1 << 20;

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`: resident now; `VmHWM`: peak resident).
fn status_bytes(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// `n` zero bytes, gzip-compressed (about n / 1000 bytes: deflate's best ratio).
fn gzip_zeros(n: usize) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..n / chunk.len() {
        gz.write_all(&chunk).unwrap();
    }
    gz.finish().unwrap()
}

fn event(id: &str, device: &str) -> Value {
    json!({
        "event_id": id,
        "timestamp": 1_795_598_000u64,
        "app": {"id": "com.example.game", "version": "2.4.1"},
        "platform": "android",
        "os": {"name": "Android", "version": "14"},
        "device": {"model": device},
        "exception": {"type": "SIGSEGV"},
        "modules": [],
        "threads": [{"crashed": true, "frames": [{"instruction_addr": "0x1234"}]}]
    })
}

/// A normal client's request: one valid event, answered 202.
async fn normal_post(client: &reqwest::Client, node: &ProcNode, id: &str) {
    let r = client
        .post(format!("{}/api/v1/crashes", node.url))
        .json(&event(id, "Pixel 8"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("a normal client was not served: {e}"));
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
}

/// Rule (issue 13, memory): a gzip body is decompressed as it streams in and cut off at the
/// size limit or at 100 times its compressed size, whichever comes first; uploads are
/// received one at a time. Six 1 GiB bombs at once (the reported 3 GB peak) and a bomb on the
/// crash route keep the node's peak RSS within 128 MiB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gzip_bombs_are_cut_off_as_they_stream_in_and_memory_stays_bounded() {
    let bomb = gzip_zeros(1 << 30);
    assert!(bomb.len() < 2 << 20, "bomb of {} bytes", bomb.len());
    let c = ProcCluster::start(1, &[]).await;
    let node = &c.nodes[0];
    let start_rss = status_bytes(node.pid(), "VmRSS");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let uploads = (0..6).map(|i| {
        client
            .put(format!("{}/api/v1/debug-files/bomb-{i}", node.url))
            .header("content-encoding", "gzip")
            .body(bomb.clone())
            .send()
    });
    // A refused upload is answered before its body is read; the client may then see the
    // connection reset while it still sends (the answer is lost with it), so the node's own
    // count is checked too.
    let mut too_large = 0;
    for answer in join_all(uploads).await {
        let Ok(r) = answer else { continue };
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        match (status, body["error"]["code"].as_str()) {
            (413, Some("too_large")) => too_large += 1,
            (503, Some("uploads_busy")) => {}
            other => panic!("unexpected answer to a gzip bomb: {other:?} {body}"),
        }
    }
    let m = c.metrics(0).await.unwrap();
    let refused = m["crashgrid_rejected_total{reason=\"too_large\"}"];
    let busy = m
        .get("crashgrid_rejected_total{reason=\"uploads_busy\"}")
        .copied()
        .unwrap_or(0.0);
    eprintln!("gzip bombs: {too_large} answered 413 seen by the client, node counted {refused} too large and {busy} busy");
    assert!(
        refused >= 1.0 && refused + busy == 6.0,
        "{refused} + {busy}"
    );
    let r = client
        .post(format!("{}/api/v1/crashes", node.url))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    normal_post(&client, node, "after-bombs").await;
    let peak = status_bytes(node.pid(), "VmHWM");
    eprintln!(
        "gzip bombs: RSS at start {} MiB, peak {} MiB",
        start_rss / MIB,
        peak / MIB
    );
    assert!(
        peak < start_rss + 128 * MIB,
        "peak RSS {} MiB from {} MiB at start",
        peak / MIB,
        start_rss / MIB
    );
}

/// What happened to one hostile socket.
#[derive(Debug, PartialEq)]
enum Fate {
    /// The server closed it, after this long, having answered with this status line (if any).
    Closed(Duration, Option<String>),
    /// Still open when the test gave up.
    Open,
}

/// Connects and runs `behave` (what the socket sends), then waits until the server closes it.
async fn hostile_socket(addr: String, behave: &'static str, give_up: Duration) -> Option<Fate> {
    let mut s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
        .await
        .ok()?
        .ok()?;
    let began = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = began + give_up;
    let mut sent = 0usize;
    loop {
        // What this kind of client sends next, one byte per 500 ms.
        let next: Option<Vec<u8>> = match behave {
            "idle" => None,
            "slow-header" => Some(if sent == 0 {
                b"POST /api/v1/crashes HTTP/1.1\r\nHost: x\r\n".to_vec()
            } else {
                b"X".to_vec()
            }),
            "slow-body" => Some(if sent == 0 {
                b"POST /api/v1/crashes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 100000\r\n\r\n["
                    .to_vec()
            } else {
                b" ".to_vec()
            }),
            other => panic!("unknown behaviour {other}"),
        };
        if let Some(bytes) = next {
            if s.write_all(&bytes).await.is_err() {
                return Some(Fate::Closed(began.elapsed(), status_line(&answer)));
            }
            sent += 1;
        }
        let wait =
            Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some(Fate::Closed(began.elapsed(), status_line(&answer)))
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Some(Fate::Open);
        }
    }
}

fn status_line(answer: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(answer);
    text.lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
}

/// Rule (issue 13, timeouts): a request head must arrive within the header timeout (1 s
/// here), a kept-alive or fresh connection that sends nothing is closed after it, and a crash
/// body must arrive within the body timeout (2 s here, answered 408). With 200 sockets of each
/// kind against a connection cap of 300, every one is closed by the server, a normal client
/// is served meanwhile, and nothing is logged about running out of file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_sockets_are_closed_within_the_timeouts() {
    let c = ProcCluster::start(
        1,
        &[
            "--http-header-timeout-ms",
            "1000",
            "--http-body-timeout-ms",
            "2000",
            "--max-connections",
            "300",
        ],
    )
    .await;
    let node = &c.nodes[0];
    let addr = format!("127.0.0.1:{}", node.http_port);
    let give_up = Duration::from_secs(30);
    let sockets = ["idle", "slow-header", "slow-body"]
        .into_iter()
        .flat_map(|kind| (0..200).map(move |_| kind))
        .map(|kind| {
            let addr = addr.clone();
            tokio::spawn(async move { (kind, hostile_socket(addr, kind, give_up).await) })
        })
        .collect::<Vec<_>>();
    // A normal client, while the flood is on: served once a slot frees (idle sockets hold
    // theirs for at most the header timeout).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    normal_post(&client, node, "during-flood").await;
    let mut closed = std::collections::BTreeMap::<&str, (usize, Duration)>::new();
    let mut fates = Vec::new();
    for task in sockets {
        fates.push(task.await.unwrap());
    }
    let open: Vec<_> = fates
        .iter()
        .filter(|(_, f)| !matches!(f, Some(Fate::Closed(..))))
        .collect();
    assert!(open.is_empty(), "{} not closed: {open:?}", open.len());
    for (kind, fate) in fates {
        match fate {
            Some(Fate::Closed(after, status)) => {
                // A slow body is answered 408, though the client may not read it: the server
                // closes with the rest of the body unread, so its kernel resets the
                // connection, and a reset discards what the client had not read yet.
                if let Some(status) = status {
                    let expected = if kind == "slow-body" { "408" } else { "400" };
                    assert!(status.contains(expected), "{kind}: {status}");
                }
                let e = closed.entry(kind).or_default();
                e.0 += 1;
                e.1 = e.1.max(after);
            }
            Some(Fate::Open) => panic!("a {kind} socket was still open after {give_up:?}"),
            None => panic!("a {kind} socket could not connect"),
        }
    }
    eprintln!("closed by the server (count, longest after connect): {closed:?}");
    for kind in ["idle", "slow-header", "slow-body"] {
        assert_eq!(closed.get(kind).map(|e| e.0), Some(200), "{kind}");
    }
    let m = c.metrics(0).await.unwrap();
    assert!(m["crashgrid_http_connections_failed_total{reason=\"header_timeout\"}"] >= 400.0);
    assert!(m["crashgrid_http_body_timeouts_total"] >= 200.0);
    assert_eq!(m["crashgrid_http_connection_cap"], 300.0);
    assert!(!node.log().contains("Too many open files"));
}

/// Rule (issue 13, connection cap): with a file-descriptor limit of 1024 the caps are fitted
/// (HTTP connections get three quarters of what the reserve leaves), so 2,000 idle sockets
/// wait in the accept queue instead of exhausting descriptors: `accept` never fails, nothing
/// logs "Too many open files", and a normal client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_socket_flood_never_exhausts_file_descriptors() {
    let c = ProcCluster::start_specs(1, 1, &["--http-header-timeout-ms", "3000"], |spec| {
        spec.fd_limit = Some(1024)
    })
    .await;
    let node = &c.nodes[0];
    let m = c.metrics(0).await.unwrap();
    let cap = m["crashgrid_http_connection_cap"];
    assert_eq!(cap, ((1024 - crashgrid::http::FD_RESERVE) / 4 * 3) as f64);
    let addr = format!("127.0.0.1:{}", node.http_port);
    let flood = (0..2000)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
                    .await
                    .ok()
                    .and_then(Result::ok);
                tokio::time::sleep(Duration::from_secs(8)).await;
                s.is_some()
            })
        })
        .collect::<Vec<_>>();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = c.metrics(0).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    normal_post(&client, node, "during-idle-flood").await;
    let connected = join_all(flood)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    let m = c.metrics(0).await.unwrap();
    eprintln!(
        "idle flood: {connected} of 2000 connected, cap {cap}, open during the flood {:?}",
        during.map(|d| d["crashgrid_http_connections"])
    );
    assert!(connected as f64 > cap, "the flood never reached the cap");
    assert_eq!(m["crashgrid_http_accept_errors_total"], 0.0);
    assert!(m["crashgrid_http_connections_failed_total{reason=\"header_timeout\"}"] >= cap);
    assert!(!node.log().contains("Too many open files"));
}

/// Rule (issue 13, bounded statistics): 80,000 crashes with unique 4 KB strings in four
/// dimensions (the reported 6.25 GB) are all counted, exactly, the breakdowns hold at most
/// `breakdown_limit` values plus "(other)", and the node's peak RSS stays within 256 MiB of
/// where it started while `GET /api/v1/stats` keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unique_strings_is_counted_exactly_in_bounded_memory() {
    const EVENTS: usize = 80_000;
    const BATCH: usize = 40;
    const POSTERS: usize = 4;
    let c = ProcCluster::start(1, &["--workers", "2"]).await;
    let node = &c.nodes[0];
    let start_rss = status_bytes(node.pid(), "VmRSS");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let posters = flood(&client, node, EVENTS, POSTERS, BATCH);
    let watcher = async {
        // A dashboard client polling meanwhile.
        for _ in 0..20 {
            let r = client
                .get(format!("{}/api/v1/stats", node.url))
                .send()
                .await
                .expect("GET /api/v1/stats answers during the flood");
            assert_eq!(r.status(), 200);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::join!(posters, watcher);
    let snap = counted(&c, EVENTS as u64).await;
    for dim in [
        "app_version",
        "os_version",
        "device_model",
        "exception_type",
    ] {
        let list = snap["stats"]["breakdowns"][dim].as_array().unwrap();
        assert_eq!(list.len(), 21, "{dim}");
        assert_eq!(list[20]["value"], "(other)");
        let sum: u64 = list.iter().map(|v| v["count"].as_u64().unwrap()).sum();
        assert_eq!(sum, EVENTS as u64, "{dim}");
    }
    let peak = status_bytes(node.pid(), "VmHWM");
    eprintln!(
        "unique-string flood: RSS at start {} MiB, peak {} MiB, now {} MiB",
        start_rss / MIB,
        peak / MIB,
        status_bytes(node.pid(), "VmRSS") / MIB
    );
    assert!(
        peak < start_rss + 256 * MIB,
        "peak RSS {} MiB from {} MiB at start",
        peak / MIB,
        start_rss / MIB
    );
}

/// Posts `events` crashes, each with a unique 4 KB string in four dimensions, from `posters`
/// concurrent clients in batches of `batch`, waiting out 429s.
async fn flood(
    client: &reqwest::Client,
    node: &ProcNode,
    events: usize,
    posters: usize,
    batch: usize,
) {
    let filler = "x".repeat(4000);
    let posters = (0..posters).map(|p| {
        let url = format!("{}/api/v1/crashes", node.url);
        let filler = &filler;
        async move {
            let mut accepted = 0usize;
            let mut b = 0usize;
            while accepted < events / posters {
                let body: Vec<Value> = (0..batch)
                    .map(|i| {
                        let u = format!("{p}-{b}-{i}-{filler}");
                        let mut e = event(&format!("flood-{p}-{b}-{i}"), &u);
                        e["app"]["version"] = json!(u);
                        e["os"]["version"] = json!(u);
                        e["exception"]["type"] = json!(u);
                        e
                    })
                    .collect();
                let r = client.post(&url).json(&body).send().await.unwrap();
                match r.status().as_u16() {
                    202 => {
                        accepted += batch;
                        b += 1;
                    }
                    429 => tokio::time::sleep(Duration::from_millis(200)).await,
                    other => panic!("flood batch answered {other}: {:?}", r.text().await),
                }
            }
        }
    });
    join_all(posters).await;
}

/// Waits (bounded) until node 0's snapshot counts `total` crashes; returns it.
async fn counted(c: &ProcCluster, total: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let snap = c.stats_of(0).await.unwrap_or_default();
        if snap["stats"]["total"] == total {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "counted {} of {total}",
            snap["stats"]["total"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (`clear_refs`, value 5).
fn reset_peak(pid: i32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// Rule (issue 13, shared snapshots): every WebSocket subscriber and every `GET` is sent the
/// one serialized snapshot (no copy per client, no computation per subscriber), and
/// subscribers past the cap (400 here) are refused with 503. After a flood of unique strings
/// (the heaviest state the caps allow), 500 subscribers and then 1,500 concurrent `GET`s keep
/// the node's peak RSS within 256 MiB of where it was, and a normal client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_subscribers_and_concurrent_gets_share_one_snapshot() {
    const EVENTS: u64 = 20_000;
    let c = ProcCluster::start(1, &["--workers", "2", "--max-ws-subscribers", "400"]).await;
    let node = &c.nodes[0];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    flood(&client, node, EVENTS as usize, 4, 40).await;
    counted(&c, EVENTS).await;
    reset_peak(node.pid());
    let before = status_bytes(node.pid(), "VmRSS");

    let ws_url = format!("{}/api/v1/stats/live", node.url.replace("http://", "ws://"));
    let subscribers = join_all((0..500).map(|_| async {
        use futures_util::StreamExt as _;
        match tokio_tungstenite::connect_async(&ws_url).await {
            Ok((mut ws, _)) => {
                let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
                    .await
                    .expect("a snapshot on connect")
                    .unwrap()
                    .unwrap();
                let snap: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
                assert_eq!(snap["stats"]["total"], EVENTS);
                Ok(ws)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("WebSocket connect failed: {e}"),
        }
    }))
    .await;
    let (open, refused): (Vec<_>, Vec<_>) = subscribers.into_iter().partition(Result::is_ok);
    assert_eq!(open.len(), 400);
    let refused: Vec<u16> = refused.into_iter().filter_map(Result::err).collect();
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    let m = c.metrics(0).await.unwrap();
    assert_eq!(m["crashgrid_websocket_subscribers"], 400.0);
    assert_eq!(m["crashgrid_websocket_refused_total"], 100.0);

    let gets = join_all((0..1500).map(|_| async {
        let r = client
            .get(format!("{}/api/v1/stats", node.url))
            .send()
            .await
            .expect("every GET is answered");
        assert_eq!(r.status(), 200);
        let snap: Value = r.json().await.unwrap();
        snap["stats"]["total"].as_u64()
    }))
    .await;
    assert!(gets.iter().all(|t| *t == Some(EVENTS)));
    normal_post(&client, node, "after-subscribers").await;
    let peak = status_bytes(node.pid(), "VmHWM");
    eprintln!(
        "400 subscribers + 1500 GETs: RSS before {} MiB, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(
        peak < before + 256 * MIB,
        "peak RSS {} MiB from {} MiB",
        peak / MIB,
        before / MIB
    );
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.metrics(0).await.unwrap()["crashgrid_websocket_subscribers"] > 0.0 {
        assert!(
            Instant::now() < deadline,
            "closed subscribers are not released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
