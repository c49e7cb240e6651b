//! Real `crashgrid serve` processes on loopback, clustered with static discovery and a file
//! lease, and the signals a test sends them (SIGKILL, SIGTERM, SIGSTOP, SIGCONT).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Lease timings of the process tests: short, so failover tests take seconds.
pub const LEASE_MS: u64 = 2000;
pub const RENEW_MS: u64 = 1500;
pub const RETRY_MS: u64 = 250;
pub const SECRET: &str = "process-test-cluster-secret";

/// A `/metrics` exposition as series (name with its labels, as printed) → value.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node process.
pub struct ProcNode {
    pub id: String,
    pub url: String,
    pub http_port: u16,
    pub rpc_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// How a node process is started; kept so a node can be restarted identically.
#[derive(Clone)]
pub struct Spec {
    pub id: String,
    pub http_port: u16,
    pub rpc_port: u16,
    pub peers: Vec<String>,
    pub lease_file: PathBuf,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    /// `RLIMIT_NOFILE` (soft and hard) of the process, if not inherited.
    pub fd_limit: Option<u64>,
}

impl ProcNode {
    pub fn spawn(spec: &Spec) -> ProcNode {
        std::fs::create_dir_all(&spec.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.dir.join("node.log"))
            .unwrap();
        let mut command = match spec.fd_limit {
            // The shell sets the limit, then becomes the node (same pid).
            Some(limit) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\"")])
                    .arg(env!("CARGO_BIN_EXE_crashgrid"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_crashgrid")),
        };
        let child = command
            .arg("serve")
            .args(["--node-id", &spec.id])
            .args(["--listen", &format!("127.0.0.1:{}", spec.http_port)])
            .args(["--rpc-listen", &format!("127.0.0.1:{}", spec.rpc_port)])
            .args(["--discovery", "static", "--peers", &spec.peers.join(",")])
            .args(["--lease", "file", "--lease-file"])
            .arg(&spec.lease_file)
            .args(["--lease-duration-ms", &LEASE_MS.to_string()])
            .args(["--renew-deadline-ms", &RENEW_MS.to_string()])
            .args(["--retry-period-ms", &RETRY_MS.to_string()])
            .args([
                "--heartbeat-interval-ms",
                "200",
                "--failure-timeout-ms",
                "1000",
            ])
            .arg("--data-dir")
            .arg(&spec.dir)
            .args(Self::defaults(spec))
            .args(&spec.extra)
            .env("CRASHGRID_CLUSTER_SECRET", SECRET)
            .env("CRASHGRID_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting crashgrid serve");
        ProcNode {
            id: spec.id.clone(),
            url: format!("http://127.0.0.1:{}", spec.http_port),
            http_port: spec.http_port,
            rpc_port: spec.rpc_port,
            dir: spec.dir.clone(),
            child: Some(child),
        }
    }

    /// Flags the tests usually want, unless `spec.extra` sets them.
    fn defaults(spec: &Spec) -> Vec<String> {
        let sink = format!("file:{}", spec.dir.join("crashes.jsonl").display());
        [
            ("--publish-interval-ms", "200".to_string()),
            ("--workers", "1".to_string()),
            ("--sink", sink),
        ]
        .into_iter()
        .filter(|(flag, _)| !spec.extra.iter().any(|e| e == flag))
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }

    /// A node of `spec` that is not running (yet): start it with [`ProcCluster::restart`].
    pub fn not_started(spec: &Spec) -> ProcNode {
        ProcNode {
            id: spec.id.clone(),
            url: format!("http://127.0.0.1:{}", spec.http_port),
            http_port: spec.http_port,
            rpc_port: spec.rpc_port,
            dir: spec.dir.clone(),
            child: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.take().unwrap().wait();
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A local cluster of node processes.
pub struct ProcCluster {
    pub nodes: Vec<ProcNode>,
    pub specs: Vec<Spec>,
    /// Holds the nodes' directories and the lease file.
    pub _root: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl ProcCluster {
    pub fn specs(n: usize, root: &Path, extra: &[&str]) -> Vec<Spec> {
        let rpc: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<String> = rpc.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        (0..n)
            .map(|i| Spec {
                id: format!("node-{}", i + 1),
                http_port: free_port(),
                rpc_port: rpc[i],
                peers: peers.clone(),
                lease_file: root.join("leader.lease"),
                dir: root.join(format!("node-{}", i + 1)),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                fd_limit: None,
            })
            .collect()
    }

    /// Starts `n` nodes and waits until every one sees all `n` members and the same leader.
    pub async fn start(n: usize, extra: &[&str]) -> ProcCluster {
        Self::start_some(n, n, extra).await
    }

    /// Like [`start`](Self::start), with `total` nodes configured (every one is in the others'
    /// peer lists) of which only the first `running` are started; start the others with
    /// [`restart`](Self::restart).
    pub async fn start_some(total: usize, running: usize, extra: &[&str]) -> ProcCluster {
        Self::start_specs(total, running, extra, |_| {}).await
    }

    /// Like [`start_some`](Self::start_some), each spec changed by `adjust` first.
    pub async fn start_specs(
        total: usize,
        running: usize,
        extra: &[&str],
        adjust: impl Fn(&mut Spec),
    ) -> ProcCluster {
        let root = tempfile::tempdir().unwrap();
        let mut specs = Self::specs(total, root.path(), extra);
        specs.iter_mut().for_each(adjust);
        let nodes = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i < running {
                    ProcNode::spawn(s)
                } else {
                    ProcNode::not_started(s)
                }
            })
            .collect();
        let c = ProcCluster {
            nodes,
            specs,
            _root: root,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        };
        c.converged(running, Duration::from_secs(60)).await;
        c
    }

    /// Replaces stopped node `i` by a new pod named `id` with the same ports and an empty data
    /// directory (a Kubernetes rolling update: new pod name, empty emptyDir), and starts it.
    pub fn replace(&mut self, i: usize, id: &str) {
        assert!(!self.nodes[i].is_running());
        let dir = self._root.path().join(id);
        self.specs[i] = Spec {
            id: id.to_string(),
            dir,
            ..self.specs[i].clone()
        };
        self.nodes[i] = ProcNode::spawn(&self.specs[i]);
    }

    /// `GET /api/v1/cluster` of node `i` (None while it does not answer).
    pub async fn view(&self, i: usize) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/api/v1/cluster", self.nodes[i].url))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// `GET /api/v1/stats` of node `i` (None while it does not answer).
    pub async fn stats_of(&self, i: usize) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/api/v1/stats", self.nodes[i].url))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// `/metrics` of node `i` (None while it does not answer).
    pub async fn metrics(&self, i: usize) -> Option<std::collections::BTreeMap<String, f64>> {
        let r = self
            .client
            .get(format!("{}/metrics", self.nodes[i].url))
            .send()
            .await
            .ok()?;
        Some(parse_metrics(&r.text().await.ok()?))
    }

    /// Indices of running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// The leader every running node names, with its epoch, once they all agree and the
    /// leader is among them and says it leads.
    pub async fn agreed_leader(&self) -> Option<(String, u64)> {
        self.agreed_leader_of(&self.running()).await
    }

    /// Like [`agreed_leader`](Self::agreed_leader), asking only the nodes `of`.
    pub async fn agreed_leader_of(&self, of: &[usize]) -> Option<(String, u64)> {
        let mut seen = None;
        for &i in of {
            let v = self.view(i).await?;
            let l = (v["leader"].as_str()?.to_string(), v["epoch"].as_u64()?);
            if seen.get_or_insert(l.clone()) != &l {
                return None;
            }
        }
        let (leader, epoch) = seen?;
        let li = of.iter().copied().find(|&i| self.nodes[i].id == leader)?;
        (self.view(li).await?["is_leader"] == Value::Bool(true)).then_some((leader, epoch))
    }

    /// Waits until every running node lists `members` live members and all agree on a leader.
    pub async fn converged(&self, members: usize, within: Duration) -> (String, u64) {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            for i in self.running() {
                let live = match self.view(i).await {
                    Some(v) => v["members"]
                        .as_array()
                        .map(|m| {
                            m.iter()
                                .filter(|x| x["healthy"] == Value::Bool(true))
                                .count()
                        })
                        .unwrap_or(0),
                    None => 0,
                };
                ok &= live == members;
            }
            if ok {
                if let Some(l) = self.agreed_leader().await {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge on {members} members and one leader; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn index_of(&self, id: &str) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {} ---\n{}",
                    n.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Restarts node `i` from its spec (same ports, same data directory).
    pub fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running());
        self.nodes[i] = ProcNode::spawn(&self.specs[i]);
    }
}
