//! A whole node: pipeline, snapshot publisher and HTTP server, with graceful shutdown.
//!
//! # Shutdown order (SIGTERM, e.g. a rolling update)
//!
//! 1. Give up the leader lease, so a standby leads at once.
//! 2. `/readyz` answers 503; stop accepting HTTP requests and finish the open ones; stop the
//!    sources; the workers process every accepted event.
//! 3. Hand the last statistics partials to the leader (bounded: 5 s).
//! 4. Hand off the shared symbolication cache and the cluster-wide set of accepted event ids
//!    (both at once): push the partitions of which this pod holds the only copy to their new
//!    replicas ([`cluster::Grid::leave`], bounded by the leave timeout; the RPC server keeps
//!    serving meanwhile, so peers may also pull from this pod).
//! 5. Leave the cluster (members drop this pod at once) and stop the RPC server.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use anyhow::Context as _;

use crate::clock::WallClock;
use crate::clustering;
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
    let clustering = match &settings.cluster {
        Some(c) => {
            let rpc = TcpListener::bind(c.rpc_listen)
                .await
                .with_context(|| format!("binding the RPC port {}", c.rpc_listen))?;
            let started = clustering::start(c, node.id(), &address, rpc).await?;
            node.attach_cluster(started.link())?;
            Some(started)
        }
        None => None,
    };
    on_start(&node);
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The statistics exchange keeps running while HTTP drains: a `?wait=counted` request in
    // flight is answered by an exchange round, so stopping the exchange first would hold
    // every such request for its whole `counted_wait` and then answer `counted: false`.
    let (publisher_stop_tx, publisher_stop_rx) = watch::channel(false);
    let publisher = tokio::spawn(
        node.clone()
            .run_publisher(settings.publish_interval, stopped(publisher_stop_rx)),
    );
    // The NATS source (when configured) pulls once the node runs and stops pulling when
    // shutdown begins, before the node shuts down; its task ends once the messages it
    // submitted are acknowledged (by the node's shutdown and statistics flush below).
    // In a cluster, redelivered event ids are recognised cluster-wide (an event-id grid
    // behind the local set, `nats/cluster_dedup.rs`).
    let seen_events = match (&settings.nats, &clustering, &settings.cluster) {
        (Some(config), Some(started), Some(c)) => Some(Arc::new(
            crate::nats::ClusterSeenEvents::start(
                started.cluster.clone(),
                config,
                node.clock().clone(),
                c.leave_timeout,
            )
            .context("starting the cluster-wide event-id set")?,
        )),
        _ => None,
    };
    let nats = settings.nats.clone().map(|config| {
        let stopping = stopped(stop_rx.clone());
        match &seen_events {
            Some(seen) => tokio::spawn(crate::nats::run_source_with(
                node.clone(),
                config,
                seen.clone(),
                stopping,
            )),
            None => tokio::spawn(crate::nats::run_source(node.clone(), config, stopping)),
        }
    });
    let mut http_config = settings.http.clone();
    let fd_limit = http::raise_fd_limit();
    if http_config.fit_to_fd_limit(fd_limit) {
        tracing::warn!(
            fd_limit,
            max_connections = http_config.max_connections,
            max_ws_subscribers = http_config.max_ws_subscribers,
            "the file-descriptor limit lowers the HTTP connection and WebSocket caps"
        );
    }
    let router = http::router(node.clone(), http_config.clone(), ready.clone());
    tracing::info!(node = node.id(), %address, "crashgrid node serving");
    let ready_flag = ready.clone();
    let electing = clustering.as_ref().map(|c| c.cluster.clone());
    let http_shutdown = async move {
        shutdown.await;
        // First give up the lease, so a standby leads at once (a rolling update must not
        // wait a lease duration for statistics).
        if let Some(c) = electing {
            c.step_down().await;
        }
        ready_flag.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        tracing::info!("shutting down: finishing open requests and accepted events");
    };
    http::run(listener, router, &http_config, node.clone(), http_shutdown).await?;
    let _ = publisher_stop_tx.send(true);
    let _ = publisher.await;
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.shutdown()).await?;
    // Hand the last partials to the leader (a new one, if this node led), so every event
    // this node accepted is counted before it leaves.
    node.flush_statistics(std::time::Duration::from_secs(5))
        .await;
    if let Some(source) = nats {
        match source.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "NATS source failed"),
            Err(e) => tracing::error!(error = %e, "NATS source task failed"),
        }
    }
    // The accepted event ids move to their new replicas while the frame cache hands off.
    let events_leave = seen_events.map(|seen| {
        tokio::spawn(async move {
            let report = seen.grid().leave().await;
            tracing::info!(
                partitions_pushed = report.partitions_pushed,
                entries_pushed = report.entries_pushed,
                completed = report.completed,
                "handed off the cluster-wide event-id set"
            );
        })
    });
    if let (Some(cache), Some(c)) = (node.shared_cache(), &settings.cluster) {
        // Grid::leave is bounded by the leave timeout itself; the outer bound also covers the
        // request to the leader.
        let bound = c.leave_timeout + std::time::Duration::from_secs(1);
        match tokio::time::timeout(bound, cache.grid().leave()).await {
            Ok(report) => tracing::info!(
                leader_acknowledged = report.leader_acknowledged,
                partitions_pushed = report.partitions_pushed,
                entries_pushed = report.entries_pushed,
                completed = report.completed,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "handed off the shared symbolication cache"
            ),
            Err(_) => tracing::warn!(
                timeout_ms = bound.as_millis() as u64,
                "the hand-off of the shared symbolication cache did not finish in time"
            ),
        }
    }
    if let Some(leave) = events_leave {
        let _ = leave.await;
    }
    if let Some(c) = clustering {
        c.stop().await;
    }
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
