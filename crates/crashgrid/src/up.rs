//! `crashgrid up`: the embedded default — a node on a temporary data directory, the demo debug
//! files uploaded through the API, and demo traffic, until Ctrl-C.

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

/// Runs the demo until Ctrl-C (or `duration`).
pub async fn run(port: u16, rate: u32, duration: Option<Duration>) -> anyhow::Result<()> {
    let data = tempfile::Builder::new()
        .prefix("crashgrid-up-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(port, error = %e, "port taken, using a free one");
            TcpListener::bind(("127.0.0.1", 0)).await?
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
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = async { match duration { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {}
    }
    println!("stopping…");
    let _ = stop_traffic.send(true);
    match traffic.await {
        Ok(Ok(report)) => println!("{report}"),
        Ok(Err(e)) => eprintln!("demo traffic failed: {e:#}"),
        Err(e) => eprintln!("demo traffic task failed: {e}"),
    }
    let _ = stop_server.send(true);
    server.await.context("server task")??;
    Ok(())
}
