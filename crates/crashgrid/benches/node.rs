//! One node under load: sustained ingest of batched posts (demo crashes, 20–60 frames, warm
//! SymCaches) and end-to-end latency from POST to the crash being counted in a WebSocket
//! snapshot. The baseline in the same run is the symbolication work alone (the same events
//! through `Symbolicator::symbolicate` on one thread, no HTTP, no JSON, no aggregation).
//!
//! Run: `cargo bench -p crashgrid --bench node`. `BENCH_EVENTS` sets the throughput run's
//! size (default 100,000). Targets on a 2-core machine: >= 20,000 crashes/s; p99 <= 1.5 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crashgrid::clock::SystemWallClock;
use crashgrid::config::ServeArgs;
use crashgrid::demo::DemoWorld;
use futures_util::StreamExt;
use rand::SeedableRng;
use symbolicate::{CacheConfig, CrashEvent, SymCaches, SymbolStore, Symbolicator};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn post_all(client: &reqwest::Client, url: &str, bodies: Vec<Bytes>, concurrency: usize) {
    let bodies = Arc::new(tokio::sync::Mutex::new(bodies.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, bodies) = (client.clone(), url.to_string(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(body) = bodies.lock().await.next() else {
                    break;
                };
                loop {
                    let r = client
                        .post(format!("{url}/api/v1/crashes"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("post");
                    match r.status().as_u16() {
                        202 => break,
                        429 => tokio::time::sleep(Duration::from_millis(20)).await,
                        s => panic!(
                            "unexpected status {s}: {}",
                            r.text().await.unwrap_or_default()
                        ),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn main() {
    let n_events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let world = DemoWorld::new(1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let events: Vec<CrashEvent> = (0..n_events).map(|_| world.event(&mut rng)).collect();
        let frames: usize = events
            .iter()
            .map(|e| e.threads.iter().map(|t| t.frames.len()).sum::<usize>())
            .sum();
        println!(
            "{} demo crashes, {:.1} frames per crash on average, {} distinct groups possible",
            events.len(),
            frames as f64 / events.len() as f64,
            world.groups().len()
        );

        // Baseline: symbolication alone, one thread, warm SymCaches.
        let store = SymbolStore::open(dir.path().join("baseline-symbols")).unwrap();
        for (name, data) in world.debug_files() {
            store.add_bytes(&name, &data).unwrap();
        }
        let sym = Symbolicator::new(Arc::new(SymCaches::new(
            store,
            CacheConfig::new(dir.path().join("baseline-cache")),
        )));
        for e in events.iter().take(2000) {
            sym.symbolicate(e);
        }
        let sample = &events[..events.len().min(20_000)];
        let started = Instant::now();
        for e in sample {
            std::hint::black_box(sym.symbolicate(e));
        }
        let baseline = sample.len() as f64 / started.elapsed().as_secs_f64();

        // The node.
        let settings = ServeArgs {
            node_id: Some("bench".into()),
            data_dir: Some(dir.path().join("node")),
            sink: Some("none".into()),
            in_app: Some(
                crashgrid::up::DEMO_IN_APP
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            ),
            queue_capacity: Some(50_000),
            max_body_bytes: Some(16 << 20),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (node_tx, node_rx) = std::sync::mpsc::channel();
        tokio::spawn(crashgrid::server::serve(
            settings,
            listener,
            Arc::new(SystemWallClock),
            std::future::pending(),
            move |n| node_tx.send(n.clone()).unwrap(),
        ));
        let node = node_rx.recv().unwrap();
        let client = reqwest::Client::new();
        for (name, data) in world.debug_files() {
            let r = client
                .put(format!("{url}/api/v1/debug-files/{name}"))
                .body(data)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let drained = |target: u64| {
            let node = node.clone();
            async move {
                while node.metrics().processed.get() < target {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let bodies = |events: &[CrashEvent], batch: usize| -> Vec<Bytes> {
            events
                .chunks(batch)
                .map(|c| Bytes::from(serde_json::to_vec(c).unwrap()))
                .collect()
        };

        // Warm-up: every SymCache converted and loaded.
        let warm = bodies(&events[..5000.min(events.len())], 500);
        post_all(&client, &url, warm, 2).await;
        drained(5000.min(events.len()) as u64).await;

        // Throughput: all events in batches of 500, 4 requests in flight.
        let all = bodies(&events, 500);
        let before = node.metrics().processed.get();
        let started = Instant::now();
        post_all(&client, &url, all, 4).await;
        drained(before + events.len() as u64).await;
        let elapsed = started.elapsed();
        let rate = events.len() as f64 / elapsed.as_secs_f64();

        // Latency: 2,000 crashes/s in batches of 20 every 10 ms for 10 s, WebSocket listening.
        let ws_url = format!("{}/api/v1/stats/live", url.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        let (snap_tx, mut snap_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u64)>();
        let listener_task = tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Ok(text) = msg.to_text() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                        if let Some(total) = v["stats"]["total"].as_u64() {
                            if snap_tx.send((Instant::now(), total)).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let base_total = node.snapshot().stats.total;
        let mut posts: Vec<(Instant, u64)> = Vec::new();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut i = 0;
        while i < 1000 {
            tick.tick().await;
            let batch = &events[(i * 20) % (events.len() - 20)..][..20];
            let t = Instant::now();
            let r = client
                .post(format!("{url}/api/v1/crashes"))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(batch).unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            sent += 20;
            posts.push((t, base_total + sent));
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        listener_task.abort();
        let mut snaps = Vec::new();
        while let Ok(s) = snap_rx.try_recv() {
            snaps.push(s);
        }
        let mut latencies: Vec<Duration> = posts
            .iter()
            .map(|(t, cumulative)| {
                snaps
                    .iter()
                    .find(|(at, total)| at >= t && total >= cumulative)
                    .map(|(at, _)| *at - *t)
                    .expect("every batch shows up in a snapshot")
            })
            .collect();
        latencies.sort();

        println!();
        println!("{:<52} {:>14} {:>8}", "measure", "value", "ratio");
        println!(
            "{:<52} {:>10.0}/s {:>8}",
            "baseline: symbolicate only, 1 thread, in-process", baseline, "1.0x"
        );
        println!(
            "{:<52} {:>10.0}/s {:>7.2}x",
            "node: batched POSTs (500/request), 2 cores",
            rate,
            rate / baseline
        );
        println!(
            "{:<52} {:>10.0}/s {:>7.2}x",
            "node vs target 20,000 crashes/s",
            rate,
            rate / 20_000.0
        );
        println!(
            "{:<52} {:>11.0}ms",
            "POST -> WebSocket snapshot latency p50 (1 s push)",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3
        );
        println!(
            "{:<52} {:>11.0}ms {:>7.2}x",
            "POST -> WebSocket snapshot latency p99 (vs 1.5 s)",
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() / 1.5
        );
    });
}
