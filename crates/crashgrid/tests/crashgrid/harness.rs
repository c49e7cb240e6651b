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
