//! Grid latency, each figure side by side with a baseline measured in the same run:
//!
//! 1. a local hit (the key's partition is held by the calling node) vs a plain
//!    `Mutex<HashMap>` lookup of the same keys and values;
//! 2. a remote `get_many` of 40 keys over real TCP on loopback (one owner, one RPC, the
//!    authenticated transport, JSON bodies) vs an echo of the same request and answer bytes
//!    over the same transport, and over a bare loopback TCP socket. Target: p99 <= 1 ms.
//!
//! Run: `cargo bench -p cluster --bench grid`. `BENCH_ITERS` sets the remote iterations
//! (default 20,000).

use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{
    key_hash, serve_rpc, BoxFuture, Cluster, ClusterConfig, DiscoveryHandle, Grid, GridConfig,
    Handler, LeaseBackend, MemoryLease, NodeInfo, RpcConfig, RpcError, RpcStats, TcpTransport,
    Transport,
};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "0123456789abcdef-bench-secret";

fn key(i: usize) -> String {
    format!(
        "8f3a6c2e-41d7-4b0e-9a1c-{:012x}:0x{:x}",
        i % 977,
        0x1000 + i * 4
    )
}

/// About the size of a symbolicated frame (function, file, line, inlinees) as JSON.
fn value(i: usize) -> String {
    format!(
        "{{\"function\":\"crashgrid::demo::module_{}::handler_{}\",\"file\":\"src/demo/module_{}.rs\",\"line\":{},\"inlined\":[]}}",
        i % 50,
        i,
        i % 50,
        i % 3000
    )
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Lat {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarize(mut v: Vec<Duration>) -> Lat {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    Lat {
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        mean,
    }
}

struct Node {
    cluster: Cluster,
    grid: Grid<String, String>,
}

async fn tcp_cluster(n: usize) -> Vec<Node> {
    let lease = MemoryLease::new();
    let mut listeners = Vec::new();
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push(l);
    }
    let peers: BTreeSet<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let me = NodeInfo::new(format!("bench-{i}"), l.local_addr().unwrap(), 1);
        let backend: Arc<dyn LeaseBackend> = Arc::new(lease.new_client());
        let transport = Arc::new(TcpTransport::new(RpcConfig::new(SECRET)).unwrap());
        let cluster = Cluster::start(
            ClusterConfig::new(me),
            transport,
            DiscoveryHandle::fixed(peers.clone()),
            Some(backend),
        )
        .unwrap();
        let grid = Grid::start(cluster.clone(), GridConfig::default()).unwrap();
        tokio::spawn(serve_rpc(
            l,
            RpcConfig::new(SECRET),
            cluster.handler(),
            Arc::new(RpcStats::default()),
            std::future::pending::<()>(),
        ));
        nodes.push(Node { cluster, grid });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tables: Vec<_> = nodes.iter().map(|n| n.grid.table()).collect();
        let ok = tables.iter().all(|t| {
            t.as_ref().is_some_and(|t| {
                t.members.len() == n && Some(t.version) == tables[0].as_ref().map(|x| x.version)
            })
        }) && nodes.iter().all(|n| n.grid.cluster_safe());
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bench cluster did not converge"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes
}

fn local_hits(rt: &tokio::runtime::Runtime) {
    const ENTRIES: usize = 10_000;
    const LOOKUPS: usize = 1_000_000;
    let (grid, _cluster) = rt.block_on(async {
        let me = NodeInfo::new("solo", SocketAddr::from(([127, 0, 0, 1], 1)), 1);
        let net = cluster::MemoryNetwork::new();
        let cluster = Cluster::start(
            ClusterConfig::new(me.clone()),
            Arc::new(net.transport(me.addr)),
            DiscoveryHandle::fixed(BTreeSet::new()),
            None,
        )
        .unwrap();
        net.register(me.addr, cluster.handler());
        let grid: Grid<String, String> =
            Grid::start(cluster.clone(), GridConfig::default()).unwrap();
        while !grid.cluster_safe() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let entries: Vec<(String, String)> = (0..ENTRIES).map(|i| (key(i), value(i))).collect();
        for c in entries.chunks(1000) {
            grid.put_many(c.to_vec()).await;
        }
        (grid, cluster)
    });
    let keys: Vec<String> = (0..ENTRIES).map(key).collect();
    let map: Mutex<HashMap<String, String>> =
        Mutex::new((0..ENTRIES).map(|i| (key(i), value(i))).collect());

    let order: Vec<usize> = (0..LOOKUPS).map(|i| (i * 7919) % ENTRIES).collect();
    let time = |f: &mut dyn FnMut(&String)| {
        for i in &order[..LOOKUPS / 10] {
            f(&keys[*i]);
        }
        let t = Instant::now();
        for i in &order {
            f(&keys[*i]);
        }
        t.elapsed() / LOOKUPS as u32
    };
    let baseline = time(&mut |k| {
        black_box(map.lock().get(k).cloned());
    });
    let hashing = time(&mut |k| {
        black_box(key_hash(k));
    });
    let local = time(&mut |k| {
        black_box(grid.get_local(k));
    });
    // The async batch API on the calling thread, 40 keys per call (all local).
    let batch: Vec<Vec<String>> = keys.chunks(40).map(|c| c.to_vec()).collect();
    let per_key_batched = rt.block_on(async {
        let t = Instant::now();
        let mut n = 0;
        for _ in 0..4 {
            for b in &batch {
                n += black_box(grid.get_many(b).await).len();
            }
        }
        t.elapsed() / n as u32
    });
    assert_eq!(grid.stats().misses, 0, "every lookup must hit");
    println!("local hit ({ENTRIES} entries, 1 node, {LOOKUPS} lookups)");
    println!("| path | ns/lookup | vs Mutex<HashMap> |");
    println!("|---|---:|---:|");
    let row = |name: &str, d: Duration| {
        println!(
            "| {name} | {:.0} | {:.2}x |",
            d.as_nanos(),
            d.as_secs_f64() / baseline.as_secs_f64()
        );
    };
    row("baseline: Mutex<HashMap>::get + clone", baseline);
    row("stable key hash alone (SipHash-1-3)", hashing);
    row("Grid::get_local", local);
    row("Grid::get_many, 40 local keys, per key", per_key_batched);
    println!();
}

/// Answers every request with `answer` (the echo baseline on the same transport).
fn echo_handler(answer: Vec<u8>) -> Arc<dyn Handler> {
    let answer = Arc::new(answer);
    Arc::new(
        move |_m: &str, _b: Vec<u8>| -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
            let a = answer.clone();
            Box::pin(async move { Ok((*a).clone()) })
        },
    )
}

async fn remote(iters: usize) {
    let nodes = tcp_cluster(3).await;
    let table = nodes[0].grid.table().unwrap();
    let (a, b) = (&nodes[0], &nodes[1]);
    let b_id = b.cluster.me().id.clone();
    let a_id = a.cluster.me().id.clone();
    // 40 keys owned by B and not held by A at all: one RPC from A to B.
    let mut keys = Vec::new();
    let mut i = 0;
    while keys.len() < 40 {
        let k = key(i);
        let p = table.partition_of(key_hash(&k));
        if table.owner(p) == Some(b_id.as_str()) && !table.is_replica(p, &a_id) {
            keys.push(k);
        }
        i += 1;
    }
    let entries: Vec<(String, String)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), value(i)))
        .collect();
    a.grid.put_many(entries.clone()).await;
    let got = a.grid.get_many(&keys).await;
    assert!(got.iter().all(Option::is_some), "the 40 keys are stored");
    let stats0 = a.grid.stats();

    // The bytes the grid sends and receives for this call (JSON), for the baselines.
    let request =
        serde_json::to_vec(&serde_json::json!({ "keys": keys, "forward": true })).unwrap();
    let answer = serde_json::to_vec(&got).unwrap();

    let warm = iters / 10;
    let mut grid_lat = Vec::with_capacity(iters);
    for n in 0..warm + iters {
        let t = Instant::now();
        let got = a.grid.get_many(black_box(&keys)).await;
        let d = t.elapsed();
        assert!(got[39].is_some());
        if n >= warm {
            grid_lat.push(d);
        }
    }
    let stats1 = a.grid.stats();
    assert_eq!(
        stats1.rpc_calls - stats0.rpc_calls,
        (warm + iters) as u64,
        "one RPC per call"
    );

    // Baseline 1: the same bytes through the same authenticated RPC transport.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = listener.local_addr().unwrap();
    tokio::spawn(serve_rpc(
        listener,
        RpcConfig::new(SECRET),
        echo_handler(answer.clone()),
        Arc::new(RpcStats::default()),
        std::future::pending::<()>(),
    ));
    let transport = TcpTransport::new(RpcConfig::new(SECRET)).unwrap();
    let mut rpc_lat = Vec::with_capacity(iters);
    for n in 0..warm + iters {
        let t = Instant::now();
        let r = transport
            .call(
                echo_addr,
                "grid.get",
                request.clone(),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        let d = t.elapsed();
        assert_eq!(r.len(), answer.len());
        if n >= warm {
            rpc_lat.push(d);
        }
    }

    // Baseline 2: a bare loopback TCP socket: write the request bytes, read the answer bytes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = listener.local_addr().unwrap();
    let (req_len, ans) = (request.len(), answer.clone());
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; req_len];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&ans).await.is_err() {
                break;
            }
        }
    });
    let mut s = TcpStream::connect(raw_addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; answer.len()];
    let mut raw_lat = Vec::with_capacity(iters);
    for n in 0..warm + iters {
        let t = Instant::now();
        s.write_all(&request).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        let d = t.elapsed();
        if n >= warm {
            raw_lat.push(d);
        }
    }

    let (g, r, w) = (summarize(grid_lat), summarize(rpc_lat), summarize(raw_lat));
    println!(
        "remote get_many of 40 keys over loopback TCP ({iters} calls; request {} B, answer {} B)",
        request.len(),
        answer.len()
    );
    println!("| path | p50 µs | p99 µs | mean µs | p99 vs RPC echo |");
    println!("|---|---:|---:|---:|---:|");
    for (name, l) in [
        ("baseline: bare TCP echo of the same bytes", &w),
        ("baseline: RPC transport echo of the same bytes", &r),
        ("Grid::get_many (40 keys, 1 owner)", &g),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2}x |",
            us(l.p50),
            us(l.p99),
            us(l.mean),
            l.p99.as_secs_f64() / r.p99.as_secs_f64()
        );
    }
    println!(
        "target p99 <= 1000 µs: {}",
        if g.p99 <= Duration::from_millis(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "grid's own RPC histogram: p50 <= {} µs, p99 <= {} µs",
        stats1.rpc_p50_micros, stats1.rpc_p99_micros
    );
    drop(nodes);
}

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    local_hits(&rt);
    rt.block_on(remote(iters));
}
