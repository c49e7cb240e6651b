//! RPC: one conformance suite run against the TCP transport (real sockets on loopback) and
//! the in-memory network; authentication and framing limits on TCP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::{
    call_json, call_with_retry, serve_rpc, BoxFuture, Handler, MemoryNetwork, RetryPolicy,
    RpcConfig, RpcError, RpcStats, TcpTransport, Transport,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SECRET: &str = "0123456789abcdef-test-secret";

/// `echo` answers its body, `fail` a remote error, `slow` sleeps 5 s, `big` answers `n` bytes.
fn service() -> Arc<dyn Handler> {
    Arc::new(
        |method: &str, body: Vec<u8>| -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
            let method = method.to_string();
            Box::pin(async move {
                match method.as_str() {
                    "test.echo" => Ok(body),
                    "test.fail" => Err(RpcError::Remote("it failed".into())),
                    "test.slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(body)
                    }
                    "test.big" => {
                        let n: usize = String::from_utf8(body).unwrap().parse().unwrap();
                        Ok(vec![7u8; n])
                    }
                    other => Err(RpcError::NoSuchMethod(other.to_string())),
                }
            })
        },
    )
}

/// A peer address nothing listens on.
async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// The contract every transport keeps.
async fn conformance(transport: &dyn Transport, server: SocketAddr, dead: SocketAddr) {
    let t = Duration::from_secs(2);
    // Round trip, empty and binary bodies.
    assert_eq!(
        transport
            .call(server, "test.echo", b"hello".to_vec(), t)
            .await,
        Ok(b"hello".to_vec())
    );
    assert_eq!(
        transport.call(server, "test.echo", vec![], t).await,
        Ok(vec![])
    );
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert_eq!(
        transport.call(server, "test.echo", binary.clone(), t).await,
        Ok(binary)
    );
    // Application errors come back as answers, not transport failures.
    assert_eq!(
        transport.call(server, "test.fail", vec![], t).await,
        Err(RpcError::Remote("it failed".into()))
    );
    assert_eq!(
        transport.call(server, "test.nope", vec![], t).await,
        Err(RpcError::NoSuchMethod("test.nope".into()))
    );
    // A slow handler hits the caller's timeout, and the connection stays usable.
    assert_eq!(
        transport
            .call(server, "test.slow", vec![], Duration::from_millis(100))
            .await,
        Err(RpcError::Timeout(Duration::from_millis(100)))
    );
    assert_eq!(
        transport.call(server, "test.echo", b"x".to_vec(), t).await,
        Ok(b"x".to_vec())
    );
    // Nobody there: unavailable, and retryable.
    let e = transport
        .call(dead, "test.echo", vec![], t)
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::Unavailable(_)), "{e:?}");
    assert!(e.is_retryable());
    // Many requests in flight at once, answers matched to their requests.
    let calls = (0..200u32).map(|i| {
        let body = i.to_be_bytes().to_vec();
        async move { (i, transport.call(server, "test.echo", body, t).await) }
    });
    for (i, answer) in futures_util::future::join_all(calls).await {
        assert_eq!(answer, Ok(i.to_be_bytes().to_vec()));
    }
    // JSON on top.
    let v: Vec<u32> = call_json(transport, server, "test.echo", &vec![1u32, 2, 3], t)
        .await
        .unwrap();
    assert_eq!(v, vec![1, 2, 3]);
    assert!(transport.stats().calls.load(Ordering::Relaxed) >= 200);
}

async fn tcp_server(config: RpcConfig) -> (SocketAddr, Arc<RpcStats>, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(RpcStats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let s = stats.clone();
    tokio::spawn(async move {
        serve_rpc(listener, config, service(), s, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stats, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_conformance() {
    let (addr, stats, _stop) = tcp_server(RpcConfig::new(SECRET)).await;
    let transport = TcpTransport::new(RpcConfig::new(SECRET)).unwrap();
    conformance(&transport, addr, dead_address().await).await;
    assert!(stats.served.load(Ordering::Relaxed) >= 200);
    assert_eq!(stats.rejected_unauthenticated.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn memory_transport_conformance() {
    let net = MemoryNetwork::new();
    let server: SocketAddr = "10.0.0.1:7946".parse().unwrap();
    net.register(server, service());
    let transport = net.transport("10.0.0.2:7946".parse().unwrap());
    conformance(&transport, server, "10.0.0.3:7946".parse().unwrap()).await;
}

#[tokio::test]
async fn memory_network_cuts_and_isolates_links_and_heals() {
    let net = MemoryNetwork::new();
    let [a, b, c]: [SocketAddr; 3] =
        ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"].map(|s| s.parse().unwrap());
    for n in [a, b, c] {
        net.register(n, service());
    }
    let t = Duration::from_secs(1);
    let (ta, tc) = (net.transport(a), net.transport(c));
    net.cut(a, b);
    assert!(matches!(
        ta.call(b, "test.echo", vec![], t).await,
        Err(RpcError::Unavailable(_))
    ));
    assert!(net
        .transport(b)
        .call(a, "test.echo", vec![], t)
        .await
        .is_err());
    assert!(ta.call(c, "test.echo", vec![], t).await.is_ok());
    net.isolate(c);
    assert!(ta.call(c, "test.echo", vec![], t).await.is_err());
    assert!(tc.call(b, "test.echo", vec![], t).await.is_err());
    net.heal();
    assert!(ta.call(b, "test.echo", vec![], t).await.is_ok());
    assert!(tc.call(b, "test.echo", vec![], t).await.is_ok());
    net.unregister(b);
    assert!(ta.call(b, "test.echo", vec![], t).await.is_err());
}

/// A request without the cluster secret is rejected, counted, and never reaches a handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_secret_is_rejected_and_counted() {
    let (addr, stats, _stop) = tcp_server(RpcConfig::new(SECRET)).await;
    let intruder = TcpTransport::new(RpcConfig::new("another-secret-of-16+")).unwrap();
    assert_eq!(
        intruder
            .call(addr, "test.echo", b"hi".to_vec(), Duration::from_secs(2))
            .await,
        Err(RpcError::Unauthenticated)
    );
    // Not retryable: a wrong secret stays wrong.
    assert!(!RpcError::Unauthenticated.is_retryable());
    // A client that speaks no handshake at all (e.g. a port scan or curl).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut hello = [0u8; 38];
        s.read_exact(&mut hello).await.unwrap();
        // 32 bytes, as long as an answer, so the server reads all of it and closes cleanly.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n12345")
            .await
            .unwrap();
        let mut verdict = Vec::new();
        s.read_to_end(&mut verdict).await.unwrap();
        assert_eq!(verdict, vec![1], "rejection byte, then close");
    }
    assert_eq!(stats.rejected_unauthenticated.load(Ordering::Relaxed), 2);
    assert_eq!(stats.served.load(Ordering::Relaxed), 0);
    // The right secret still works.
    let friend = TcpTransport::new(RpcConfig::new(SECRET)).unwrap();
    assert!(friend
        .call(addr, "test.echo", vec![], Duration::from_secs(2))
        .await
        .is_ok());
}

#[test]
fn short_secrets_are_refused() {
    assert!(matches!(
        TcpTransport::new(RpcConfig::new("short")),
        Err(RpcError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_limit_are_refused_on_both_sides() {
    let mut config = RpcConfig::new(SECRET);
    config.max_frame_bytes = 64 << 10;
    let (addr, _stats, _stop) = tcp_server(config.clone()).await;
    let transport = TcpTransport::new(config).unwrap();
    let t = Duration::from_secs(2);
    assert!(matches!(
        transport
            .call(addr, "test.echo", vec![0; 100 << 10], t)
            .await,
        Err(RpcError::TooLarge(_))
    ));
    // An answer over the limit is an error answer, not a broken connection.
    assert!(matches!(
        transport
            .call(addr, "test.big", b"100000".to_vec(), t)
            .await,
        Err(RpcError::TooLarge(_))
    ));
    assert_eq!(
        transport.call(addr, "test.big", b"1000".to_vec(), t).await,
        Ok(vec![7u8; 1000])
    );
}

/// A peer that restarts: the transport reconnects on the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_reconnects_after_the_peer_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_rpc(
        listener,
        RpcConfig::new(SECRET),
        service(),
        Arc::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let transport = TcpTransport::new(RpcConfig::new(SECRET)).unwrap();
    let t = Duration::from_secs(2);
    assert!(transport.call(addr, "test.echo", vec![], t).await.is_ok());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // Down: fails (the old connection is closed).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(transport.call(addr, "test.echo", vec![], t).await.is_err());
    // Back on the same port.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (_stop2, stopped2) = oneshot::channel::<()>();
    tokio::spawn(serve_rpc(
        listener,
        RpcConfig::new(SECRET),
        service(),
        Arc::default(),
        async {
            let _ = stopped2.await;
        },
    ));
    assert_eq!(
        transport.call(addr, "test.echo", b"back".to_vec(), t).await,
        Ok(b"back".to_vec())
    );
}

/// Retries: retryable failures are retried up to the attempt limit; answers are not.
#[tokio::test(start_paused = true)]
async fn call_with_retry_retries_only_retryable_failures() {
    let net = MemoryNetwork::new();
    let server: SocketAddr = "10.0.0.1:1".parse().unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    // Fails as unreachable twice (by timing out), then answers.
    let flaky: Arc<dyn Handler> = Arc::new(
        move |_: &str, body: Vec<u8>| -> BoxFuture<'static, Result<Vec<u8>, RpcError>> {
            let n = a.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n < 2 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok(body)
            })
        },
    );
    net.register(server, flaky);
    let t = net.transport("10.0.0.2:1".parse().unwrap());
    let policy = RetryPolicy::default();
    let got = call_with_retry(
        &t,
        server,
        "x.y",
        b"ok".to_vec(),
        Duration::from_millis(100),
        &policy,
    )
    .await;
    assert_eq!(got, Ok(b"ok".to_vec()));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    // Out of attempts: the last error.
    attempts.store(0, Ordering::SeqCst);
    let one = RetryPolicy {
        attempts: 2,
        ..RetryPolicy::default()
    };
    let got = call_with_retry(&t, server, "x.y", vec![], Duration::from_millis(100), &one).await;
    assert_eq!(got, Err(RpcError::Timeout(Duration::from_millis(100))));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    // An application error is an answer: one attempt only.
    net.register(server, service());
    let got = call_with_retry(
        &t,
        server,
        "test.fail",
        vec![],
        Duration::from_secs(1),
        &policy,
    )
    .await;
    assert_eq!(got, Err(RpcError::Remote("it failed".into())));
}

#[test]
fn backoff_grows_exponentially_with_bounded_jitter() {
    let p = RetryPolicy::default();
    let mut rng = StdRng::seed_from_u64(7);
    assert_eq!(p.backoff(1, &mut rng), Duration::ZERO);
    for attempt in 2..12 {
        let full = (p.initial_backoff * (1 << (attempt - 2))).min(p.max_backoff);
        for _ in 0..50 {
            let b = p.backoff(attempt, &mut rng);
            assert!(
                b >= full / 2 && b <= full,
                "attempt {attempt}: {b:?} vs {full:?}"
            );
        }
    }
}

/// DNS discovery resolves the A/AAAA records of a name (here `localhost`, as a headless
/// Service name would resolve to its pods) with the given port; a name that does not resolve
/// starts empty instead of failing (the Service may have no ready pod yet).
#[tokio::test]
async fn dns_discovery_resolves_names_and_tolerates_missing_ones() {
    let handle = cluster::dns_peers("localhost:7946", Duration::from_secs(60))
        .await
        .unwrap();
    let peers = handle.peers();
    assert!(
        peers.contains(&"127.0.0.1:7946".parse().unwrap())
            || peers.contains(&"[::1]:7946".parse().unwrap()),
        "{peers:?}"
    );
    assert!(peers.iter().all(|a| a.port() == 7946));
    let missing = cluster::dns_peers("no-such-host.invalid:7946", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(missing.peers().is_empty());
    assert!(cluster::dns_peers("localhost", Duration::from_secs(1))
        .await
        .is_err());
    // Static discovery of IP addresses needs no task and never changes.
    let fixed = cluster::static_peers(
        &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(fixed.peers().len(), 2);
}
