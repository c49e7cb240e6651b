//! `crashgrid serve` settings: command-line flags, `CRASHGRID_*` environment variables and an
//! optional TOML file, in that order of precedence, over documented defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::http::HttpConfig;
use crate::node::{NodeConfig, SinkConfig};

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
    /// Symbol store directory [default: <data-dir>/symbols]
    #[arg(long, env = "CRASHGRID_STORE_DIR")]
    pub store_dir: Option<PathBuf>,
    /// SymCache directory, local disk [default: <data-dir>/cache]
    #[arg(long, env = "CRASHGRID_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most events accepted and not yet processed; beyond it POSTs get 429 [default: 20000]
    #[arg(long, env = "CRASHGRID_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Symbolication worker threads, 0 = one per CPU [default: 0]
    #[arg(long, env = "CRASHGRID_WORKERS")]
    pub workers: Option<usize>,
    /// Largest crash request body in bytes, before and after gzip [default: 4194304]
    #[arg(long, env = "CRASHGRID_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest debug file upload in bytes [default: 536870912]
    #[arg(long, env = "CRASHGRID_MAX_DEBUG_FILE_BYTES")]
    pub max_debug_file_bytes: Option<usize>,
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
    /// Most symbolicated addresses in the in-process near cache (~250 bytes each)
    /// [default: 200000]
    #[arg(long, env = "CRASHGRID_FRAME_CACHE_ENTRIES")]
    pub frame_cache_entries: Option<usize>,
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
            workers,
            max_body_bytes,
            max_debug_file_bytes,
            in_app,
            sink,
            negative_ttl_secs,
            publish_interval_ms,
            max_groups,
            frame_cache_entries
        )
    }

    /// Applies defaults and checks the values.
    pub fn resolve(self) -> anyhow::Result<ServeSettings> {
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
        if let Some(n) = self.frame_cache_entries {
            node.frame_cache_entries = n;
        }
        let mut http = HttpConfig::default();
        if let Some(n) = self.max_body_bytes {
            anyhow::ensure!(n >= 1024, "max_body_bytes must be at least 1024");
            http.max_body_bytes = n;
        }
        if let Some(n) = self.max_debug_file_bytes {
            http.max_debug_file_bytes = n;
        }
        let publish_interval = Duration::from_millis(self.publish_interval_ms.unwrap_or(1000));
        anyhow::ensure!(
            publish_interval >= Duration::from_millis(50),
            "publish_interval_ms must be at least 50"
        );
        Ok(ServeSettings {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            node,
            http,
            publish_interval,
        })
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
