//! Starts a node's cluster membership from its settings: the RPC server on its own port,
//! discovery, the lease backend and the [`cluster::Cluster`] runtime; and stops them in the
//! order a rolling update needs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use anyhow::Context as _;
use cluster::{
    Cluster, ClusterConfig, DiscoveryHandle, FileLease, KubeDiscoveryConfig, KubeLease, KubeSource,
    LeaseBackend, LeaseTimings, NodeInfo, RpcConfig, RpcStats, TcpTransport, Transition,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{ClusterSettings, DiscoverySettings, LeaseSettings};
use crate::metrics::Exposition;

/// The RPC port's name in the Kubernetes Service (EndpointSlice discovery reads it).
pub const RPC_PORT_NAME: &str = "rpc";

/// What a node keeps of its cluster membership: the runtime and the RPC counters.
#[derive(Clone)]
pub struct ClusterLink {
    /// The runtime.
    pub cluster: Cluster,
    /// Outgoing calls.
    pub client_stats: Arc<RpcStats>,
    /// Incoming calls.
    pub server_stats: Arc<RpcStats>,
    /// Time allowed for the graceful hand-off of this node's data on shutdown.
    pub leave_timeout: std::time::Duration,
}

/// A member as shown by `/api/v1/cluster`, `crashgrid status` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MemberView {
    /// Node id (`?` for a discovered address that never answered).
    pub id: String,
    /// Address of its HTTP API (empty when unknown).
    pub address: String,
    /// Address of its RPC server.
    pub rpc_address: String,
    /// Start time, Unix ms (0 when unknown).
    pub incarnation: u64,
    /// Whether it answers heartbeats.
    pub healthy: bool,
    /// Whether it leads.
    pub leader: bool,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterView {
    /// `single` (no cluster configured: the node leads itself) or `cluster`.
    pub mode: String,
    /// The node answering.
    pub node: String,
    /// The leader's id.
    pub leader: Option<String>,
    /// Leader epoch (fencing token: the Lease's leaseTransitions).
    pub epoch: u64,
    /// Whether the answering node leads.
    pub is_leader: bool,
    /// Version of the member list.
    pub membership_version: u64,
    /// Members, then discovered peers that do not answer.
    pub members: Vec<MemberView>,
    /// Lease timings.
    pub lease: Option<LeaseTimings>,
    /// Recent leader changes seen by the answering node, oldest first.
    pub transitions: Vec<Transition>,
    /// Leader claims rejected for a stale epoch.
    pub stale_epoch_rejections: u64,
}

/// The view of `node_id` (public address `address`), alone or in `link`'s cluster.
pub fn view(node_id: &str, address: &str, link: Option<&ClusterLink>) -> ClusterView {
    let Some(link) = link else {
        return ClusterView {
            mode: "single".into(),
            node: node_id.to_string(),
            leader: Some(node_id.to_string()),
            epoch: 0,
            is_leader: true,
            membership_version: 1,
            members: vec![MemberView {
                id: node_id.to_string(),
                address: address.to_string(),
                rpc_address: String::new(),
                incarnation: 0,
                healthy: true,
                leader: true,
            }],
            lease: None,
            transitions: Vec::new(),
            stale_epoch_rejections: 0,
        };
    };
    let s = link.cluster.state();
    let mut members: Vec<MemberView> = s
        .members
        .members
        .iter()
        .map(|m| MemberView {
            id: m.info.id.clone(),
            address: m.info.meta.get("http").cloned().unwrap_or_default(),
            rpc_address: m.info.addr.to_string(),
            incarnation: m.info.incarnation,
            healthy: true,
            leader: s.leader.as_deref() == Some(m.info.id.as_str()),
        })
        .collect();
    members.extend(s.unreachable.iter().map(|a| MemberView {
        id: "?".into(),
        address: String::new(),
        rpc_address: a.to_string(),
        incarnation: 0,
        healthy: false,
        leader: false,
    }));
    ClusterView {
        mode: "cluster".into(),
        node: node_id.to_string(),
        leader: s.leader.clone(),
        epoch: s.epoch,
        is_leader: s.is_leader,
        membership_version: s.members.version,
        members,
        lease: s.lease.clone(),
        transitions: s.transitions.clone(),
        stale_epoch_rejections: s.stale_epoch_rejections,
    }
}

/// The cluster's Prometheus metrics.
pub fn render_metrics(e: &mut Exposition, view: &ClusterView, link: Option<&ClusterLink>) {
    e.gauge(
        "crashgrid_is_leader",
        "1 when this node leads the cluster.",
        u8::from(view.is_leader),
    );
    e.gauge(
        "crashgrid_leader_epoch",
        "Epoch (fencing token) of the current leader: the Lease's leaseTransitions.",
        view.epoch,
    );
    e.gauge(
        "crashgrid_cluster_members",
        "Live members in this node's view of the cluster, itself included.",
        view.members.iter().filter(|m| m.healthy).count(),
    );
    e.gauge(
        "crashgrid_cluster_unreachable_peers",
        "Discovered peers that do not answer heartbeats.",
        view.members.iter().filter(|m| !m.healthy).count(),
    );
    e.gauge(
        "crashgrid_cluster_membership_version",
        "Version of the member list (increases with every change).",
        view.membership_version,
    );
    e.counter(
        "crashgrid_cluster_stale_epoch_rejected_total",
        "Leader-originated messages rejected for carrying a stale epoch.",
        view.stale_epoch_rejections,
    );
    let Some(link) = link else { return };
    let (c, s) = (&link.client_stats, &link.server_stats);
    e.counter(
        "crashgrid_rpc_calls_total",
        "Outgoing pod-to-pod RPC calls.",
        c.calls.load(Ordering::Relaxed),
    );
    e.counter(
        "crashgrid_rpc_call_failures_total",
        "Outgoing RPC calls that failed (unreachable, timeout, error answer).",
        c.call_failures.load(Ordering::Relaxed),
    );
    e.counter(
        "crashgrid_rpc_call_seconds_total",
        "Time spent in outgoing RPC calls (divide by calls for the mean latency).",
        c.call_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    e.counter(
        "crashgrid_rpc_served_total",
        "Incoming RPC requests served.",
        s.served.load(Ordering::Relaxed),
    );
    e.counter(
        "crashgrid_rpc_rejected_unauthenticated_total",
        "Incoming RPC connections refused for a wrong or missing cluster secret.",
        s.rejected_unauthenticated.load(Ordering::Relaxed),
    );
}

/// A running cluster member with its RPC server.
pub struct Clustering {
    /// The runtime.
    pub cluster: Cluster,
    /// Outgoing calls.
    pub transport: Arc<TcpTransport>,
    /// Counters of the RPC server (incoming).
    pub server_stats: Arc<RpcStats>,
    rpc_stop: Option<oneshot::Sender<()>>,
    rpc_task: Option<JoinHandle<()>>,
    leave_timeout: std::time::Duration,
}

impl std::fmt::Debug for Clustering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clustering")
            .field("me", self.cluster.me())
            .finish_non_exhaustive()
    }
}

/// The address peers use: `--advertise`, else `$POD_IP` with the bound port, else the bound
/// address (loopback when bound to every interface).
async fn advertised(settings: &ClusterSettings, bound: SocketAddr) -> anyhow::Result<SocketAddr> {
    if let Some(a) = &settings.advertise {
        return tokio::net::lookup_host(a.as_str())
            .await
            .with_context(|| format!("resolving --advertise {a}"))?
            .next()
            .with_context(|| format!("--advertise {a} resolves to nothing"));
    }
    if let Some(ip) = std::env::var("POD_IP")
        .ok()
        .and_then(|s| s.parse::<std::net::IpAddr>().ok())
    {
        return Ok(SocketAddr::new(ip, bound.port()));
    }
    if bound.ip().is_unspecified() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], bound.port())));
    }
    Ok(bound)
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)")
}

/// Starts clustering for node `node_id`, whose public HTTP address is `http_address`, serving
/// RPC on `rpc_listener`.
pub async fn start(
    settings: &ClusterSettings,
    node_id: &str,
    http_address: &str,
    rpc_listener: TcpListener,
) -> anyhow::Result<Clustering> {
    let bound = rpc_listener.local_addr()?;
    let addr = advertised(settings, bound).await?;
    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut me = NodeInfo::new(node_id, addr, incarnation);
    // Peers show this address on their dashboards: never 0.0.0.0.
    let http = match http_address.parse::<SocketAddr>() {
        Ok(h) if h.ip().is_unspecified() => SocketAddr::new(addr.ip(), h.port()).to_string(),
        _ => http_address.to_string(),
    };
    me.meta.insert("http".into(), http);

    let discovery: DiscoveryHandle = match &settings.discovery {
        DiscoverySettings::Static(peers) => {
            cluster::static_peers(peers, std::time::Duration::from_secs(5)).await?
        }
        DiscoverySettings::Dns { name, interval } => cluster::dns_peers(name, *interval).await?,
        DiscoverySettings::KubernetesService { namespace, service } => {
            cluster::kubernetes_peers(
                kube_client().await?,
                KubeDiscoveryConfig {
                    namespace: namespace.clone(),
                    source: KubeSource::EndpointSlices {
                        service: service.clone(),
                        port_name: RPC_PORT_NAME.into(),
                    },
                },
            )
            .await?
        }
        DiscoverySettings::KubernetesPods {
            namespace,
            selector,
        } => {
            cluster::kubernetes_peers(
                kube_client().await?,
                KubeDiscoveryConfig {
                    namespace: namespace.clone(),
                    source: KubeSource::Pods {
                        label_selector: selector.clone(),
                        port: addr.port(),
                    },
                },
            )
            .await?
        }
    };
    let lease: Arc<dyn LeaseBackend> = match &settings.lease {
        LeaseSettings::File(path) => Arc::new(FileLease::new(path)),
        LeaseSettings::Kubernetes { namespace, name } => {
            Arc::new(KubeLease::new(kube_client().await?, namespace, name))
        }
    };
    let rpc = RpcConfig::new(&settings.secret);
    let transport = Arc::new(TcpTransport::new(rpc.clone())?);
    let mut config = ClusterConfig::new(me);
    config.election = settings.election;
    config.membership = settings.membership.clone();
    let cluster = Cluster::start(config, transport.clone(), discovery, Some(lease))?;
    let server_stats = Arc::new(RpcStats::default());
    let (rpc_stop, stopped) = oneshot::channel::<()>();
    let handler = cluster.handler();
    let stats = server_stats.clone();
    let rpc_task = tokio::spawn(async move {
        let stop = async {
            let _ = stopped.await;
        };
        if let Err(e) = cluster::serve_rpc(rpc_listener, rpc, handler, stats, stop).await {
            tracing::error!(error = %e, "rpc server failed");
        }
    });
    tracing::info!(node = node_id, rpc = %addr, "cluster member started");
    Ok(Clustering {
        cluster,
        transport,
        server_stats,
        rpc_stop: Some(rpc_stop),
        rpc_task: Some(rpc_task),
        leave_timeout: settings.leave_timeout,
    })
}

impl Clustering {
    /// What the node keeps.
    pub fn link(&self) -> ClusterLink {
        ClusterLink {
            cluster: self.cluster.clone(),
            client_stats: cluster::Transport::stats(&*self.transport),
            server_stats: self.server_stats.clone(),
            leave_timeout: self.leave_timeout,
        }
    }

    /// Leaves the cluster: tells the members, then stops the RPC server. Call after
    /// [`Cluster::step_down`] and after this node's data was handed off.
    pub async fn stop(mut self) {
        self.cluster.shutdown().await;
        if let Some(stop) = self.rpc_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.rpc_task.take() {
            let _ = task.await;
        }
    }
}
