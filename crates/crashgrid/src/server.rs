//! A whole node: pipeline, snapshot publisher and HTTP server, with graceful shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::WallClock;
use crate::config::ServeSettings;
use crate::http;
use crate::node::Node;

/// Runs a node on `listener` until `shutdown` resolves: then stops accepting, finishes open
/// requests, processes every accepted event, flushes the sink and returns.
///
/// `on_start` receives the node once it runs (tests use it to reach the node directly).
pub async fn serve(
    settings: ServeSettings,
    listener: TcpListener,
    clock: Arc<dyn WallClock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_start: impl FnOnce(&Node),
) -> anyhow::Result<()> {
    let address = listener.local_addr()?.to_string();
    let node = Node::start(settings.node.clone(), address.clone(), clock)?;
    on_start(&node);
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let publisher = tokio::spawn(
        node.clone()
            .run_publisher(settings.publish_interval, stopped(stop_rx.clone())),
    );
    let router = http::router(node.clone(), settings.http.clone(), ready.clone());
    tracing::info!(node = node.id(), %address, "crashgrid node serving");
    let ready_flag = ready.clone();
    let http_shutdown = async move {
        shutdown.await;
        ready_flag.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        tracing::info!("shutting down: finishing open requests and accepted events");
    };
    http::run(listener, router, http_shutdown).await?;
    let _ = publisher.await;
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.shutdown()).await?;
    tracing::info!(processed = node.metrics().processed.get(), "node stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
