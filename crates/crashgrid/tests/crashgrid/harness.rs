//! Starting a node in-process on a port-0 listener with a controllable wall clock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crashgrid::clock::ManualWallClock;
use crashgrid::config::ServeArgs;
use crashgrid::node::Node;
use tokio::sync::oneshot;

pub struct TestNode {
    pub url: String,
    pub clock: ManualWallClock,
    pub node: Node,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    pub async fn start(customize: impl FnOnce(&mut ServeArgs)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs {
            node_id: Some("test-node".into()),
            data_dir: Some(dir.path().to_path_buf()),
            sink: Some(format!(
                "file:{}",
                dir.path().join("crashes.jsonl").display()
            )),
            publish_interval_ms: Some(100),
            workers: Some(2),
            ..Default::default()
        };
        customize(&mut args);
        let settings = args.resolve().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // A fixed, whole-second start keeps second arithmetic in the tests exact.
        let clock = ManualWallClock::at_ms(1_795_599_000_000);
        let (stop, stopped) = oneshot::channel::<()>();
        let (node_tx, node_rx) = std::sync::mpsc::channel();
        let task = tokio::spawn(crashgrid::server::serve(
            settings,
            listener,
            Arc::new(clock.clone()),
            async move {
                let _ = stopped.await;
            },
            move |node| node_tx.send(node.clone()).unwrap(),
        ));
        let node = tokio::task::spawn_blocking(move || {
            node_rx.recv_timeout(Duration::from_secs(30)).unwrap()
        })
        .await
        .unwrap();
        Self {
            url,
            clock,
            node,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits (bounded) until every accepted event is processed and acknowledged.
    pub async fn drained(&self, expected_processed: u64) {
        for _ in 0..600 {
            let m = self.node.metrics();
            if m.processed.get() >= expected_processed && self.node.backlog().unacked == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node did not process {expected_processed} events in time (processed {})",
            self.node.metrics().processed.get()
        );
    }

    /// Stops the node gracefully; returns its data directory (still on disk).
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self.dir
    }
}

/// A small C program with distinct crash sites, built with `cc -g -O2`.
pub const CRASHER: &str = r#"
#include <stdio.h>
static inline int deref(int *p) { return *p; }
__attribute__((noinline)) int crash_render(int *p) { return deref(p) + 1; }
__attribute__((noinline)) int crash_physics(int *p) { return deref(p) * 3; }
__attribute__((noinline)) int crash_audio(int *p) { return deref(p) - 7; }
__attribute__((noinline)) int crash_network(int *p) { return deref(p) ^ 5; }
__attribute__((noinline)) int game_loop(int *p, int k) {
    switch (k) {
    case 0: return crash_render(p);
    case 1: return crash_physics(p);
    case 2: return crash_audio(p);
    default: return crash_network(p);
    }
}
int main(int argc, char **argv) { (void)argv; int x = argc; printf("%d\n", game_loop(&x, argc)); return 0; }
"#;

pub struct Crasher {
    pub path: PathBuf,
    pub debug_id: String,
    /// function name -> (start address, size)
    pub functions: Vec<(String, u64, u64)>,
}

pub fn build_crasher(dir: &Path) -> Crasher {
    let src = dir.join("libgame.c");
    std::fs::write(&src, CRASHER).unwrap();
    let path = dir.join("libgame.so");
    let out = Command::new("cc")
        .args(["-g", "-O2", "-o"])
        .arg(&path)
        .arg(&src)
        .output()
        .expect("cc is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nm = Command::new("nm")
        .args(["--print-size", "--defined-only"])
        .arg(&path)
        .output()
        .unwrap();
    let functions = String::from_utf8(nm.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            (p.len() == 4 && (p[3].starts_with("crash_") || p[3] == "game_loop")).then(|| {
                (
                    p[3].to_string(),
                    u64::from_str_radix(p[0], 16).unwrap(),
                    u64::from_str_radix(p[1], 16).unwrap(),
                )
            })
        })
        .collect();
    let debug_id = symbolicate::inspect(&std::fs::read(&path).unwrap()).unwrap()[0]
        .debug_id
        .to_string();
    Crasher {
        path,
        debug_id,
        functions,
    }
}

impl Crasher {
    pub fn addr_in(&self, function: &str) -> u64 {
        let (_, start, size) = self.functions.iter().find(|f| f.0 == function).unwrap();
        start + size / 2
    }
}

// ---------------------------------------------------------------------------------------------
// NATS: a real `nats-server -js` and `crashgrid serve` pods fed from it (tests/crashgrid/nats.rs).

/// A port free on loopback right now.
pub fn pick_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `$NATS_SERVER`, else `nats-server` from `PATH`, else Debian's `/usr/sbin/nats-server`
/// (`/usr/sbin` is not on every user's `PATH`).
pub fn nats_server_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| "/usr/sbin/nats-server".into())
}

/// A real `nats-server` with JetStream on a loopback port, storing under a temporary directory.
/// Killable (SIGKILL) and restartable on the same port with the same store. The test fails
/// loudly when `nats-server` is not installed (`scripts/test` installs it).
pub struct NatsServer {
    pub port: u16,
    pub store: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let mut server = NatsServer {
            port: pick_port(),
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        self.child = Some(self.launch(self.port));
    }

    /// Another `nats-server` on `port` with the same store (while the main one is down: e.g.
    /// to fill the store while the pods, connected to the main port, cannot pull).
    #[allow(dead_code)] // benches/nats.rs
    pub fn spawn_on(&self, port: u16) -> std::process::Child {
        self.launch(port)
    }

    fn launch(&self, port: u16) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store.path().join("nats-server.log"))
            .unwrap();
        let mut child = Command::new(nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(self.store.path().join("jetstream"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}): install it (`apt-get install nats-server`; \
                     scripts/test does)"
                )
            });
        // Ready when it answers the client protocol with its INFO line.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            use std::io::Read as _;
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf == b"INFO" {
                    return child;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nats-server exited with {status}:\n{}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean shutdown: the store is flushed), and reap.
    #[allow(dead_code)] // benches/nats.rs
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate_child(c);
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats-server.log")).unwrap_or_default()
    }

    /// A client with JetStream.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url()).await.unwrap();
        async_nats::jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGTERM, then waits (bounded, then SIGKILL) for the exit; whether it exited cleanly.
pub fn terminate_child(mut c: std::process::Child) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            return status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `crashgrid serve` process (not clustered) with a file sink, fed from NATS.
pub struct NatsPod {
    pub name: String,
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl NatsPod {
    /// Starts `crashgrid serve` with `--nats-url nats_url` and `extra` flags.
    pub fn start(name: &str, nats_url: &str, extra: &[&str]) -> NatsPod {
        let dir = tempfile::tempdir().unwrap();
        let port = pick_port();
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_crashgrid"))
            .arg("serve")
            .args(["--node-id", name])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--sink")
            .arg(format!(
                "file:{}",
                dir.path().join("crashes.jsonl").display()
            ))
            .args(["--publish-interval-ms", "200", "--workers", "1"])
            .args(["--nats-url", nats_url])
            .args(extra)
            .env("CRASHGRID_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting crashgrid serve");
        NatsPod {
            name: name.to_string(),
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child: Some(child),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `sig` to the running process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        match self.child.take() {
            Some(c) => terminate_child(c),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Event ids in the sink file, one per line written (in order).
    pub fn sink_ids(&self) -> Vec<String> {
        let text =
            std::fs::read_to_string(self.dir.path().join("crashes.jsonl")).unwrap_or_default();
        text.lines()
            // A line being written when the process was killed may be cut short.
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["event_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// `/metrics` as name (with labels) → value; None while the pod does not answer.
    pub async fn metrics(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(crate::procs::parse_metrics(&text))
    }

    /// One metric, 0 when absent; None while the pod does not answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        Some(self.metrics().await?.get(name).copied().unwrap_or(0.0))
    }

    /// `GET /api/v1/stats`.
    pub async fn stats(&self) -> Option<serde_json::Value> {
        reqwest::Client::new()
            .get(format!("{}/api/v1/stats", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Waits (bounded) until the pod answers and its NATS client is connected.
    pub async fn wait_connected(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(m) = self.metrics().await {
                let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
                // Connected, and the consumer bound (its first backlog figures read).
                if get("crashgrid_nats_connected") == 1.0
                    && get("crashgrid_nats_backlog_sampled_timestamp_seconds") > 0.0
                {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never connected to NATS:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsPod {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `ok` every 100 ms until it holds; fails the test after `within`.
pub async fn wait_until(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ok().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
