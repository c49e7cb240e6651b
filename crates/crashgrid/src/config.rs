//! `crashgrid serve` settings: command-line flags, `CRASHGRID_*` environment variables and an
//! optional TOML file, in that order of precedence, over documented defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::http::HttpConfig;
use crate::node::{NodeConfig, SinkConfig};

/// Port of the HTTP API and dashboard when `--listen` is not given (and `crashgrid up`'s
/// first choice): the one the manifests and docs use.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Port of pod-to-pod RPC when `--rpc-listen` is not given (the memberlist/Serf convention).
pub const DEFAULT_RPC_PORT: u16 = 7946;

/// Flags (and their environment variables) of `crashgrid serve`. Every field is optional so
/// that a value given nowhere falls back to the TOML file, then to the default.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Address of the public HTTP API and dashboard [default: 0.0.0.0:8080]
    #[arg(long, env = "CRASHGRID_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// This node's name [default: $POD_NAME, else $HOSTNAME, else "crashgrid"]
    #[arg(long, env = "CRASHGRID_NODE_ID")]
    pub node_id: Option<String>,
    /// Directory for node data [default: ./crashgrid-data]
    #[arg(long, env = "CRASHGRID_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Symbol store directory [default: DATA_DIR/symbols]
    #[arg(long, env = "CRASHGRID_STORE_DIR")]
    pub store_dir: Option<PathBuf>,
    /// SymCache directory, local disk [default: DATA_DIR/cache]
    #[arg(long, env = "CRASHGRID_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most events accepted and not yet processed; beyond it POSTs get 429 [default: 20000]
    #[arg(long, env = "CRASHGRID_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Most bytes of admitted events waiting for a worker; beyond it POSTs get 429
    /// [default: 268435456]
    #[arg(long, env = "CRASHGRID_MAX_QUEUED_BYTES")]
    pub max_queued_bytes: Option<usize>,
    /// Symbolication worker threads, 0 = one per CPU [default: 0]
    #[arg(long, env = "CRASHGRID_WORKERS")]
    pub workers: Option<usize>,
    /// Largest crash request body in bytes, before and after gzip [default: 4194304]
    #[arg(long, env = "CRASHGRID_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest debug file upload in bytes [default: 536870912]
    #[arg(long, env = "CRASHGRID_MAX_DEBUG_FILE_BYTES")]
    pub max_debug_file_bytes: Option<usize>,
    /// Milliseconds a connection may take to send a request head, and may stay idle between
    /// kept-alive requests [default: 15000]
    #[arg(long, env = "CRASHGRID_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,
    /// Milliseconds a crash request body may take to arrive (debug-file uploads: 20 times
    /// this) [default: 30000]
    #[arg(long, env = "CRASHGRID_HTTP_BODY_TIMEOUT_MS")]
    pub http_body_timeout_ms: Option<u64>,
    /// Most open HTTP connections (lowered to fit the file-descriptor limit) [default: 4096]
    #[arg(long, env = "CRASHGRID_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open WebSocket subscribers [default: 1000]
    #[arg(long, env = "CRASHGRID_MAX_WS_SUBSCRIBERS")]
    pub max_ws_subscribers: Option<usize>,
    /// In-app module file-name patterns, comma-separated, `*` wildcard; empty = all modules
    /// [default: empty]
    #[arg(long, env = "CRASHGRID_IN_APP", value_delimiter = ',')]
    pub in_app: Option<Vec<String>>,
    /// Where symbolicated crashes go: none, stdout or file:PATH (JSON lines) [default: stdout]
    #[arg(long, env = "CRASHGRID_SINK")]
    pub sink: Option<String>,
    /// Seconds a missing or malformed debug file is remembered [default: 60]
    #[arg(long, env = "CRASHGRID_NEGATIVE_TTL_SECS")]
    pub negative_ttl_secs: Option<u64>,
    /// Milliseconds between snapshots pushed to dashboards [default: 1000]
    #[arg(long, env = "CRASHGRID_PUBLISH_INTERVAL_MS")]
    pub publish_interval_ms: Option<u64>,
    /// Most crash groups remembered for /api/v1/groups [default: 10000]
    #[arg(long, env = "CRASHGRID_MAX_GROUPS")]
    pub max_groups: Option<usize>,
    /// Crash groups listed in each snapshot, each with its per-second series (at most 1000)
    /// [default: 20]
    #[arg(long, env = "CRASHGRID_TOP_GROUPS")]
    pub top_groups: Option<usize>,
    /// Most symbolicated addresses in the in-process near cache (~250 bytes each)
    /// [default: 200000]
    #[arg(long, env = "CRASHGRID_FRAME_CACHE_ENTRIES")]
    pub frame_cache_entries: Option<usize>,

    // --- clustering (docs/architecture.md, "Cluster") ---
    /// Address of the internal pod-to-pod RPC server [default: 0.0.0.0:7946]
    #[arg(long, env = "CRASHGRID_RPC_LISTEN")]
    pub rpc_listen: Option<SocketAddr>,
    /// host:port peers use to reach this node's RPC [default: $POD_IP, else 127.0.0.1, with
    /// the RPC port]
    #[arg(long, env = "CRASHGRID_ADVERTISE")]
    pub advertise: Option<String>,
    /// Shared cluster secret (at least 16 bytes); prefer --cluster-secret-file
    #[arg(long, env = "CRASHGRID_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// File holding the shared cluster secret (trailing newline ignored)
    #[arg(long, env = "CRASHGRID_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// How peers are found: none (a single node), static, dns or kubernetes [default: none]
    #[arg(long, env = "CRASHGRID_DISCOVERY")]
    pub discovery: Option<String>,
    /// Static discovery: peers' RPC addresses, comma-separated host:port
    #[arg(long, env = "CRASHGRID_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// DNS discovery: SERVICE.NAMESPACE.svc.cluster.local:RPC_PORT (a headless Service)
    #[arg(long, env = "CRASHGRID_DNS_NAME")]
    pub dns_name: Option<String>,
    /// Seconds between DNS re-resolutions [default: 5]
    #[arg(long, env = "CRASHGRID_DNS_INTERVAL_SECS")]
    pub dns_interval_secs: Option<u64>,
    /// Kubernetes discovery: the Service whose EndpointSlices list the pods (port named "rpc")
    #[arg(long, env = "CRASHGRID_K8S_SERVICE")]
    pub k8s_service: Option<String>,
    /// Kubernetes discovery: a pod label selector instead of a Service (e.g. app=crashgrid)
    #[arg(long, env = "CRASHGRID_K8S_SELECTOR")]
    pub k8s_selector: Option<String>,
    /// Kubernetes namespace [default: $POD_NAMESPACE, else the service account's namespace]
    #[arg(long, env = "CRASHGRID_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// Leader election backend: none (this node leads alone), file or kubernetes
    /// [default: none without discovery, kubernetes with kubernetes or dns discovery]
    #[arg(long, env = "CRASHGRID_LEASE")]
    pub lease: Option<String>,
    /// Name of the Lease object (kubernetes) [default: crashgrid-leader]
    #[arg(long, env = "CRASHGRID_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// Lease file shared by the local processes (file backend)
    #[arg(long, env = "CRASHGRID_LEASE_FILE")]
    pub lease_file: Option<PathBuf>,
    /// leaseDuration in milliseconds [default: 15000, as client-go and Camel]
    #[arg(long, env = "CRASHGRID_LEASE_DURATION_MS")]
    pub lease_duration_ms: Option<u64>,
    /// Renew deadline in milliseconds [default: 10000]
    #[arg(long, env = "CRASHGRID_RENEW_DEADLINE_MS")]
    pub renew_deadline_ms: Option<u64>,
    /// Retry period in milliseconds [default: 2000]
    #[arg(long, env = "CRASHGRID_RETRY_PERIOD_MS")]
    pub retry_period_ms: Option<u64>,
    /// Milliseconds between heartbeats to each peer [default: 500]
    #[arg(long, env = "CRASHGRID_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// A peer silent for this many milliseconds leaves the member list [default: 2000]
    #[arg(long, env = "CRASHGRID_FAILURE_TIMEOUT_MS")]
    pub failure_timeout_ms: Option<u64>,
    /// Seconds allowed on SIGTERM to hand this node's data to the others [default: 20]
    #[arg(long, env = "CRASHGRID_LEAVE_TIMEOUT_SECS")]
    pub leave_timeout_secs: Option<u64>,

    // --- NATS JetStream source (src/nats.rs) ---
    /// NATS server URL(s), comma-separated, of the JetStream source, e.g. nats://nats:4222;
    /// the source is off when unset [default: unset]
    #[arg(long, env = "CRASHGRID_NATS_URL")]
    pub nats_url: Option<String>,
    /// JetStream stream holding crash messages [default: CRASHES]
    #[arg(long, env = "CRASHGRID_NATS_STREAM")]
    pub nats_stream: Option<String>,
    /// Subject filter of the consumer [default: crashes.>]
    #[arg(long, env = "CRASHGRID_NATS_SUBJECT")]
    pub nats_subject: Option<String>,
    /// Durable pull consumer shared by all pods [default: crashgrid]
    #[arg(long, env = "CRASHGRID_NATS_CONSUMER")]
    pub nats_consumer: Option<String>,
    /// Seconds a delivered message may stay unacknowledged before redelivery [default: 30]
    #[arg(long, env = "CRASHGRID_NATS_ACK_WAIT_SECS")]
    pub nats_ack_wait_secs: Option<u64>,
    /// Most messages delivered and unacknowledged over all pods [default: 10000]
    #[arg(long, env = "CRASHGRID_NATS_MAX_ACK_PENDING")]
    pub nats_max_ack_pending: Option<usize>,
    /// Messages per pull request, 1-256 [default: 256]
    #[arg(long, env = "CRASHGRID_NATS_BATCH")]
    pub nats_batch: Option<usize>,
    /// Subject poison messages are published to [default: crashgrid.dlq]
    #[arg(long, env = "CRASHGRID_NATS_DLQ_SUBJECT")]
    pub nats_dlq_subject: Option<String>,
    /// Create the stream (and STREAM_DLQ, its dead letters) when missing; for development [default: false]
    #[arg(long, env = "CRASHGRID_NATS_CREATE_STREAM", action = clap::ArgAction::Set)]
    pub nats_create_stream: Option<bool>,

    // --- shared symbolication cache (src/shared_cache.rs) ---
    /// Bytes of the symbolication cache shared by the cluster held by this pod (the grid's
    /// memory bound); 0 turns the shared tier off [default: 134217728]
    #[arg(long, env = "CRASHGRID_CACHE_MEMORY_BYTES")]
    pub cache_memory_bytes: Option<usize>,
}

/// How peers are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySettings {
    /// A fixed list of host:port.
    Static(Vec<String>),
    /// A DNS name (host:port) re-resolved periodically.
    Dns {
        /// host:port.
        name: String,
        /// Re-resolution period.
        interval: Duration,
    },
    /// EndpointSlices of a Service (port named "rpc").
    KubernetesService {
        /// Namespace.
        namespace: String,
        /// Service name.
        service: String,
    },
    /// Pods by label selector.
    KubernetesPods {
        /// Namespace.
        namespace: String,
        /// Label selector.
        selector: String,
    },
}

/// Where the leader lease lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseSettings {
    /// A file shared by local processes.
    File(PathBuf),
    /// A `coordination.k8s.io/v1` Lease.
    Kubernetes {
        /// Namespace.
        namespace: String,
        /// Lease name.
        name: String,
    },
}

/// Resolved clustering settings; `None` in [`ServeSettings::cluster`] means a single node.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// RPC listen address.
    pub rpc_listen: SocketAddr,
    /// Advertised RPC address (`None`: derived once the RPC port is bound).
    pub advertise: Option<String>,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Peer discovery.
    pub discovery: DiscoverySettings,
    /// Lease backend.
    pub lease: LeaseSettings,
    /// Lease timings.
    pub election: cluster::ElectionConfig,
    /// Heartbeat timings.
    pub membership: cluster::MembershipConfig,
    /// Time allowed for the graceful hand-off on SIGTERM.
    pub leave_timeout: Duration,
}

/// Resolved settings of a node.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Public HTTP address.
    pub listen: SocketAddr,
    /// The pipeline.
    pub node: NodeConfig,
    /// HTTP limits.
    pub http: HttpConfig,
    /// Snapshot period.
    pub publish_interval: Duration,
    /// Clustering; `None` runs a single node that leads itself.
    pub cluster: Option<ClusterSettings>,
    /// The NATS JetStream source, when `nats_url` is set.
    pub nats: Option<crate::nats::NatsConfig>,
}

fn default_node_id() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "crashgrid".to_string())
}

impl ServeArgs {
    /// Reads a TOML file with the same keys as the flags (snake_case).
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Fills every unset field from `file`.
    pub fn or(self, file: ServeArgs) -> Self {
        macro_rules! pick { ($($f:ident),*) => { ServeArgs { $($f: self.$f.or(file.$f)),* } } }
        pick!(
            listen,
            node_id,
            data_dir,
            store_dir,
            cache_dir,
            queue_capacity,
            max_queued_bytes,
            workers,
            max_body_bytes,
            max_debug_file_bytes,
            http_header_timeout_ms,
            http_body_timeout_ms,
            max_connections,
            max_ws_subscribers,
            in_app,
            sink,
            negative_ttl_secs,
            publish_interval_ms,
            max_groups,
            top_groups,
            frame_cache_entries,
            rpc_listen,
            advertise,
            cluster_secret,
            cluster_secret_file,
            discovery,
            peers,
            dns_name,
            dns_interval_secs,
            k8s_service,
            k8s_selector,
            k8s_namespace,
            lease,
            lease_name,
            lease_file,
            lease_duration_ms,
            renew_deadline_ms,
            retry_period_ms,
            heartbeat_interval_ms,
            failure_timeout_ms,
            leave_timeout_secs,
            nats_url,
            nats_stream,
            nats_subject,
            nats_consumer,
            nats_ack_wait_secs,
            nats_max_ack_pending,
            nats_batch,
            nats_dlq_subject,
            nats_create_stream,
            cache_memory_bytes
        )
    }

    /// The clustering part of [`resolve`](Self::resolve).
    fn resolve_cluster(&self) -> anyhow::Result<Option<ClusterSettings>> {
        let namespace = || -> anyhow::Result<String> {
            self.k8s_namespace
                .clone()
                .or_else(cluster::namespace_from_env)
                .context("k8s_namespace: not set, and neither POD_NAMESPACE nor a service account namespace file exists")
        };
        let discovery = match self.discovery.as_deref().unwrap_or("none") {
            "none" => None,
            "static" => {
                let peers = self.peers.clone().unwrap_or_default();
                anyhow::ensure!(
                    !peers.is_empty(),
                    "discovery static needs --peers host:port,..."
                );
                Some(DiscoverySettings::Static(peers))
            }
            "dns" => Some(DiscoverySettings::Dns {
                name: self
                    .dns_name
                    .clone()
                    .context("discovery dns needs --dns-name host:port")?,
                interval: Duration::from_secs(self.dns_interval_secs.unwrap_or(5).max(1)),
            }),
            "kubernetes" => Some(match (&self.k8s_service, &self.k8s_selector) {
                (Some(service), None) => DiscoverySettings::KubernetesService {
                    namespace: namespace()?,
                    service: service.clone(),
                },
                (None, Some(selector)) => DiscoverySettings::KubernetesPods {
                    namespace: namespace()?,
                    selector: selector.clone(),
                },
                _ => anyhow::bail!(
                    "discovery kubernetes needs exactly one of --k8s-service or --k8s-selector"
                ),
            }),
            other => anyhow::bail!(
                "discovery: unknown backend {other:?} (none, static, dns, kubernetes)"
            ),
        };
        let default_lease = match &discovery {
            None => "none",
            Some(DiscoverySettings::Static(_)) => "file",
            Some(_) => "kubernetes",
        };
        let lease = match self.lease.as_deref().unwrap_or(default_lease) {
            "none" => None,
            "file" => Some(LeaseSettings::File(
                self.lease_file
                    .clone()
                    .context("lease file needs --lease-file PATH")?,
            )),
            "kubernetes" => Some(LeaseSettings::Kubernetes {
                namespace: namespace()?,
                name: self
                    .lease_name
                    .clone()
                    .unwrap_or_else(|| "crashgrid-leader".into()),
            }),
            other => anyhow::bail!("lease: unknown backend {other:?} (none, file, kubernetes)"),
        };
        let (discovery, lease) = match (discovery, lease) {
            (None, None) => return Ok(None),
            (Some(d), Some(l)) => (d, l),
            (Some(_), None) => anyhow::bail!(
                "a cluster (discovery other than none) needs a lease: several nodes cannot all lead"
            ),
            (None, Some(_)) => anyhow::bail!("a lease needs discovery of the peers (--discovery)"),
        };
        let secret = match (&self.cluster_secret, &self.cluster_secret_file) {
            (Some(s), None) => s.as_bytes().to_vec(),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path)
                    .with_context(|| format!("reading the cluster secret {}", path.display()))?;
                while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    bytes.pop();
                }
                bytes
            }
            (Some(_), Some(_)) => {
                anyhow::bail!("give the cluster secret once: --cluster-secret or --cluster-secret-file")
            }
            (None, None) => anyhow::bail!(
                "a cluster needs a shared secret: --cluster-secret-file (or CRASHGRID_CLUSTER_SECRET)"
            ),
        };
        anyhow::ensure!(
            secret.len() >= 16,
            "the cluster secret must be at least 16 bytes"
        );
        let mut election = cluster::ElectionConfig::default();
        if let Some(ms) = self.lease_duration_ms {
            election.lease_duration = Duration::from_millis(ms);
        }
        if let Some(ms) = self.renew_deadline_ms {
            election.renew_deadline = Duration::from_millis(ms);
        }
        if let Some(ms) = self.retry_period_ms {
            election.retry_period = Duration::from_millis(ms);
        }
        election
            .validate()
            .map_err(|e| anyhow::anyhow!("lease timings: {e}"))?;
        let mut membership = cluster::MembershipConfig::default();
        if let Some(ms) = self.heartbeat_interval_ms {
            membership.heartbeat_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = self.failure_timeout_ms {
            membership.failure_timeout = Duration::from_millis(ms);
        }
        membership
            .validate()
            .map_err(|e| anyhow::anyhow!("heartbeat timings: {e}"))?;
        Ok(Some(ClusterSettings {
            rpc_listen: self
                .rpc_listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_RPC_PORT))),
            advertise: self.advertise.clone(),
            secret,
            discovery,
            lease,
            election,
            membership,
            leave_timeout: Duration::from_secs(self.leave_timeout_secs.unwrap_or(20)),
        }))
    }

    /// Applies defaults and checks the values.
    pub fn resolve(self) -> anyhow::Result<ServeSettings> {
        let cluster = self.resolve_cluster()?;
        let nats = self.resolve_nats()?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("crashgrid-data"));
        let mut node = NodeConfig::new(self.node_id.unwrap_or_else(default_node_id), &data_dir);
        if let Some(d) = self.store_dir {
            node.store_dir = d;
        }
        if let Some(d) = self.cache_dir {
            node.cache_dir = d;
        }
        if let Some(n) = self.queue_capacity {
            anyhow::ensure!(n > 0, "queue_capacity must be at least 1");
            node.queue_capacity = n;
        }
        if let Some(n) = self.max_queued_bytes {
            anyhow::ensure!(n >= 1 << 20, "max_queued_bytes must be at least 1048576");
            node.max_queued_bytes = n;
        }
        if let Some(n) = self.workers {
            node.workers = n;
        }
        node.in_app = self
            .in_app
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        node.sink = match self.sink {
            Some(s) => s
                .parse::<SinkConfig>()
                .map_err(|e| anyhow::anyhow!("sink: {e}"))?,
            None => SinkConfig::Stdout,
        };
        if let Some(s) = self.negative_ttl_secs {
            node.negative_ttl = Duration::from_secs(s);
        }
        if let Some(n) = self.max_groups {
            node.max_groups = n;
        }
        if let Some(n) = self.top_groups {
            node.window.top_groups = n;
            node.window
                .validate()
                .map_err(|e| anyhow::anyhow!("top_groups: {e}"))?;
        }
        if let Some(n) = self.frame_cache_entries {
            node.frame_cache_entries = n;
        }
        if let Some(n) = self.cache_memory_bytes {
            anyhow::ensure!(
                n == 0 || n >= 1 << 20,
                "cache_memory_bytes must be 0 (no shared cache) or at least 1048576"
            );
            node.cache_memory_bytes = n;
        }
        let mut http = HttpConfig::default();
        if let Some(n) = self.max_body_bytes {
            anyhow::ensure!(n >= 1024, "max_body_bytes must be at least 1024");
            http.max_body_bytes = n;
        }
        if let Some(n) = self.max_debug_file_bytes {
            http.max_debug_file_bytes = n;
        }
        if let Some(ms) = self.http_header_timeout_ms {
            http.header_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.http_body_timeout_ms {
            http.body_timeout = Duration::from_millis(ms);
            http.upload_timeout = http.body_timeout.saturating_mul(20);
        }
        if let Some(n) = self.max_connections {
            http.max_connections = n;
        }
        if let Some(n) = self.max_ws_subscribers {
            http.max_ws_subscribers = n;
        }
        http.validate().map_err(anyhow::Error::msg)?;
        let publish_interval = Duration::from_millis(self.publish_interval_ms.unwrap_or(1000));
        anyhow::ensure!(
            publish_interval >= Duration::from_millis(50),
            "publish_interval_ms must be at least 50"
        );
        Ok(ServeSettings {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_HTTP_PORT))),
            node,
            http,
            publish_interval,
            cluster,
            nats,
        })
    }

    /// The NATS part of [`resolve`](Self::resolve): `None` without `nats_url`.
    fn resolve_nats(&self) -> anyhow::Result<Option<crate::nats::NatsConfig>> {
        let Some(url) = self.nats_url.clone() else {
            return Ok(None);
        };
        let mut c = crate::nats::NatsConfig {
            url,
            ..Default::default()
        };
        if let Some(v) = &self.nats_stream {
            c.stream = v.clone();
        }
        if let Some(v) = &self.nats_subject {
            c.subject = v.clone();
        }
        if let Some(v) = &self.nats_consumer {
            c.consumer = v.clone();
        }
        if let Some(v) = self.nats_ack_wait_secs {
            c.ack_wait = Duration::from_secs(v);
        }
        if let Some(v) = self.nats_max_ack_pending {
            c.max_ack_pending = v;
        }
        if let Some(v) = self.nats_batch {
            c.batch = v;
        }
        if let Some(v) = &self.nats_dlq_subject {
            c.dead_letter_subject = v.clone();
        }
        if let Some(v) = self.nats_create_stream {
            c.create_stream = v;
        }
        c.validate().context("invalid NATS settings")?;
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: ServeArgs =
            toml::from_str("queue_capacity = 5\nsink = \"none\"\nin_app = [\"libgame*\"]").unwrap();
        let flags = ServeArgs {
            queue_capacity: Some(7),
            ..Default::default()
        };
        let s = flags.or(file).resolve().unwrap();
        assert_eq!(s.node.queue_capacity, 7);
        assert_eq!(s.node.sink, SinkConfig::None);
        assert_eq!(s.node.in_app, vec!["libgame*".to_string()]);
        assert_eq!(s.http.max_body_bytes, 4 << 20);
        assert_eq!(s.listen.port(), 8080);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<ServeArgs>("queue_capacty = 5").is_err());
        assert!(ServeArgs {
            sink: Some("kafka".into()),
            ..Default::default()
        }
        .resolve()
        .is_err());
        assert!(ServeArgs {
            queue_capacity: Some(0),
            ..Default::default()
        }
        .resolve()
        .is_err());
    }
}
