//! `crashgrid up`: the embedded default — a local cluster of node processes (three by default;
//! file lease, static discovery, short lease timings) on a temporary data directory, the demo
//! debug files uploaded through the API, and demo traffic spread over the nodes, until Ctrl-C.
//! `--nodes 1` runs a single node in this process instead.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::SystemWallClock;
use crate::config::ServeArgs;
use crate::loadgen::{self, LoadgenConfig};
use crate::server::{serve, shutdown_signal};

/// The demo world's own code (see `demo.rs`): the game, its il2cpp runtime, its netcode and
/// the Android launcher library; on iOS the app binary and Unity framework.
pub const DEMO_IN_APP: &[&str] = &[
    "libgame*",
    "libil2cpp*",
    "libnetcode*",
    "libmain*",
    "GameApp*",
    "UnityFramework*",
];

/// Lease timings of `up`: a killed leader is replaced within about 3.5 s instead of the
/// 15 s + 2 s of the Kubernetes defaults, so failover can be watched.
pub const UP_LEASE_MS: (u64, u64, u64) = (3000, 2000, 500);

/// Runs the demo with `nodes` node processes until Ctrl-C (or `duration`).
pub async fn run(
    port: u16,
    rate: u32,
    duration: Option<Duration>,
    nodes: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(nodes >= 1, "--nodes must be at least 1");
    if nodes > 1 {
        return run_cluster(port, rate, duration, nodes).await;
    }
    let data = tempfile::Builder::new()
        .prefix("crashgrid-up-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let listener = match crate::http::bind(([127, 0, 0, 1], port).into()) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(port, error = %e, "port taken, using a free one");
            crate::http::bind(([127, 0, 0, 1], 0).into())?
        }
    };
    let addr = listener.local_addr()?;
    let settings = ServeArgs {
        node_id: Some("node-1".into()),
        data_dir: Some(data.path().to_path_buf()),
        sink: Some(format!(
            "file:{}",
            data.path().join("crashes.jsonl").display()
        )),
        in_app: Some(DEMO_IN_APP.iter().map(|p| p.to_string()).collect()),
        ..Default::default()
    }
    .resolve()?;

    // The traffic stops first (so its report can still read the node's backlog), then the node.
    let (stop_server, server_rx) = watch::channel(false);
    let (stop_traffic, traffic_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(serve(
        settings,
        listener,
        Arc::new(SystemWallClock),
        stopped(server_rx),
        |_| {},
    ));
    let url = format!("http://{addr}");
    println!(
        "crashgrid is up: dashboard at {url}/  (data in {}; Ctrl-C stops)",
        data.path().display()
    );

    let cfg = LoadgenConfig {
        url: url.clone(),
        rate,
        duration: duration.unwrap_or(Duration::from_secs(365 * 24 * 3600)),
        upload: true,
        ..LoadgenConfig::default()
    };
    let traffic = tokio::spawn(loadgen::run(cfg, stopped(traffic_rx)));
    run_until_stopped(duration, stop_traffic, traffic).await;
    let _ = stop_server.send(true);
    server.await.context("server task")??;
    Ok(())
}

async fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))
        .await?
        .local_addr()?
        .port())
}

/// One node process of the local cluster.
struct Child {
    id: String,
    url: String,
    process: tokio::process::Child,
}

/// Sends `signal` to a child process.
fn signal(process: &tokio::process::Child, signal: nix::sys::signal::Signal) {
    if let Some(pid) = process.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

async fn wait_ready(client: &reqwest::Client, url: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.process.try_wait()? {
            anyhow::bail!("{} exited during start-up: {status}", child.id);
        }
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} did not become ready within 60 s",
            child.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_cluster(
    port: u16,
    rate: u32,
    duration: Option<Duration>,
    nodes: usize,
) -> anyhow::Result<()> {
    use rand::Rng as _;
    let data = tempfile::Builder::new()
        .prefix("crashgrid-up-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let exe = std::env::current_exe().context("locating the crashgrid binary")?;
    let secret: String = (0..32)
        .map(|_| format!("{:x}", rand::thread_rng().gen_range(0..16u8)))
        .collect();
    let first_http = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l.local_addr()?.port(),
        Err(e) => {
            tracing::warn!(port, error = %e, "port taken, using a free one");
            free_port().await?
        }
    };
    let mut http_ports = vec![first_http];
    let mut rpc_ports = Vec::new();
    while http_ports.len() < nodes {
        http_ports.push(free_port().await?);
    }
    while rpc_ports.len() < nodes {
        rpc_ports.push(free_port().await?);
    }
    let peers: Vec<String> = rpc_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let (lease, renew, retry) = UP_LEASE_MS;
    let mut children = Vec::new();
    for i in 0..nodes {
        let id = format!("node-{}", i + 1);
        let dir = data.path().join(&id);
        std::fs::create_dir_all(&dir)?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("serve")
            .args(["--node-id", &id])
            .args(["--listen", &format!("127.0.0.1:{}", http_ports[i])])
            .args(["--rpc-listen", &format!("127.0.0.1:{}", rpc_ports[i])])
            .args(["--discovery", "static", "--peers", &peers.join(",")])
            .args(["--lease", "file", "--lease-file"])
            .arg(data.path().join("leader.lease"))
            .args(["--lease-duration-ms", &lease.to_string()])
            .args(["--renew-deadline-ms", &renew.to_string()])
            .args(["--retry-period-ms", &retry.to_string()])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--sink")
            .arg(format!("file:{}", dir.join("crashes.jsonl").display()))
            .args(["--in-app", &DEMO_IN_APP.join(",")])
            .env("CRASHGRID_CLUSTER_SECRET", &secret)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let process = cmd.spawn().with_context(|| format!("starting {id}"))?;
        children.push(Child {
            id,
            url: format!("http://127.0.0.1:{}", http_ports[i]),
            process,
        });
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for c in &mut children {
        let url = c.url.clone();
        wait_ready(&client, &url, c).await?;
    }
    println!(
        "crashgrid is up: {nodes} nodes (file lease, static discovery; data in {})",
        data.path().display()
    );
    for c in &children {
        println!(
            "  {}: dashboard {}/  (pid {})",
            c.id,
            c.url,
            c.process.id().unwrap_or(0)
        );
    }
    println!(
        "Watch the cluster with `crashgrid status --url {}`; kill a node (kill -9 PID) to see \
         failover. Ctrl-C stops everything.",
        children[0].url
    );

    let (stop_traffic, traffic_rx) = watch::channel(false);
    let cfg = LoadgenConfig {
        url: children
            .iter()
            .map(|c| c.url.as_str())
            .collect::<Vec<_>>()
            .join(","),
        rate,
        duration: duration.unwrap_or(Duration::from_secs(365 * 24 * 3600)),
        upload: true,
        ..LoadgenConfig::default()
    };
    let traffic = tokio::spawn(loadgen::run(cfg, async move {
        let mut rx = traffic_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    run_until_stopped(duration, stop_traffic, traffic).await;
    for c in &children {
        signal(&c.process, nix::sys::signal::Signal::SIGTERM);
    }
    for c in &mut children {
        match tokio::time::timeout(Duration::from_secs(30), c.process.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("{} exited with {status}", c.id),
            Ok(Err(e)) => eprintln!("{}: {e}", c.id),
            Err(_) => {
                eprintln!("{} did not stop within 30 s; killing it", c.id);
                let _ = c.process.kill().await;
            }
        }
    }
    Ok(())
}

/// Waits for Ctrl-C / SIGTERM (or `duration`), then stops the demo traffic and prints its
/// report.
async fn run_until_stopped(
    duration: Option<Duration>,
    stop_traffic: watch::Sender<bool>,
    traffic: tokio::task::JoinHandle<anyhow::Result<loadgen::LoadgenReport>>,
) {
    let elapsed = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = elapsed => {}
    }
    println!("stopping…");
    let _ = stop_traffic.send(true);
    match traffic.await {
        Ok(Ok(report)) => println!("{report}"),
        Ok(Err(e)) => eprintln!("demo traffic failed: {e:#}"),
        Err(e) => eprintln!("demo traffic task failed: {e}"),
    }
}
