//! End-to-end: three `crashgrid serve` processes configured exactly as
//! `deploy/kubernetes/base/deployment.yaml` configures the pods (its environment, read from the
//! manifest), with the Kubernetes discovery and Lease backends talking through kube-rs to the
//! test API server (`kube-testserver`: no real API server can run here), then a rolling
//! update under load, one pod at a time as the Deployment does it (maxSurge 1,
//! maxUnavailable 0): a new pod starts and becomes ready, an old one gets SIGTERM.
//!
//! What differs from a cluster, and why: each "pod" gets its own loopback address
//! (127.0.0.x, as pods get their own IPs) and binds it instead of 0.0.0.0 (one network
//! namespace here); the secret file and data directory live in a temporary directory instead
//! of the manifest's mount paths; `KUBECONFIG` points at the test server instead of the
//! service-account token. The test plays the EndpointSlice controller: a pod's endpoint is
//! listed while it runs (the Service publishes not-ready addresses) and removed on SIGTERM.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crashgrid::demo::DemoWorld;
use kube_testserver::TestApiServer;
use parking_lot::Mutex;
use rand::SeedableRng;
use serde_json::{json, Value};

const NS: &str = "crashgrid";

/// The container's environment from the manifest: (name, value or fieldRef path).
fn manifest_env() -> Vec<(String, Result<String, String>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kubernetes/base/deployment.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the Deployment manifest");
    let doc: Value = serde_yaml::from_str(&text).expect("valid YAML");
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let c = containers
        .iter()
        .find(|c| c["name"] == "crashgrid")
        .expect("the crashgrid container");
    c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match e["value"].as_str() {
                Some(v) => Ok(v.to_string()),
                None => Err(e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .expect("value or fieldRef")
                    .to_string()),
            };
            (name, value)
        })
        .collect()
}

/// Expands `$(VAR)` as the kubelet does, from variables defined earlier.
fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = value.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

struct Pod {
    name: String,
    ip: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pod {
    fn url(&self) -> String {
        format!("http://{}:8080", self.ip)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pod.log")).unwrap_or_default()
    }
}

struct Env {
    api: TestApiServer,
    kubeconfig: std::path::PathBuf,
    secret: std::path::PathBuf,
    _root: tempfile::TempDir,
}

fn start_pod(env: &Env, name: &str, ip: &str) -> Pod {
    let dir = tempfile::tempdir().unwrap();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crashgrid"));
    cmd.arg("serve").env_clear();
    for (k, v) in manifest_env() {
        let value = match v {
            Ok(v) => expand(&v, &vars),
            Err(field) => match field.as_str() {
                "metadata.name" => name.to_string(),
                "metadata.namespace" => NS.to_string(),
                "status.podIP" => ip.to_string(),
                other => panic!("unexpected fieldRef {other}"),
            },
        };
        let value = match k.as_str() {
            "CRASHGRID_LISTEN" | "CRASHGRID_RPC_LISTEN" => value.replace("0.0.0.0", ip),
            "CRASHGRID_CLUSTER_SECRET_FILE" => env.secret.display().to_string(),
            "CRASHGRID_DATA_DIR" => dir.path().display().to_string(),
            _ => value,
        };
        vars.insert(k.clone(), value.clone());
        cmd.env(k, value);
    }
    let log = std::fs::File::create(dir.path().join("pod.log")).unwrap();
    let child = cmd
        .env("KUBECONFIG", &env.kubeconfig)
        .env("CRASHGRID_SINK", "none")
        .env("CRASHGRID_PUBLISH_INTERVAL_MS", "500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting a pod");
    Pod {
        name: name.to_string(),
        ip: ip.to_string(),
        child: Some(child),
        dir,
    }
}

/// The EndpointSlice of the headless Service `crashgrid-peers` listing `pods`.
fn publish_endpoints(api: &TestApiServer, pods: &[(String, String)]) {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(name, ip)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": name, "namespace": NS},
            })
        })
        .collect();
    api.apply_endpoint_slice(
        NS,
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "crashgrid-peers-abcde",
                "labels": {"kubernetes.io/service-name": "crashgrid-peers"},
            },
            "addressType": "IPv4",
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "rpc", "port": 7946, "protocol": "TCP"},
            ],
            "endpoints": endpoints,
        }),
    );
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

async fn ready(client: &reqwest::Client, pod: &Pod) -> bool {
    matches!(client.get(format!("{}/readyz", pod.url())).send().await, Ok(r) if r.status().is_success())
}

/// Waits until every pod lists `want` live members and all name the same leader.
async fn converged(client: &reqwest::Client, pods: &[Pod], want: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leaders = Vec::new();
        let mut ok = true;
        for p in pods {
            match get_json(client, &format!("{}/api/v1/cluster", p.url())).await {
                Some(v) => {
                    let live = v["members"]
                        .as_array()
                        .map(|m| m.iter().filter(|x| x["healthy"] == true).count())
                        .unwrap_or(0);
                    ok &= live == want;
                    leaders.push(v["leader"].as_str().unwrap_or("").to_string());
                }
                None => ok = false,
            }
        }
        leaders.dedup();
        if ok && leaders.len() == 1 && !leaders[0].is_empty() {
            return leaders.remove(0);
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = pods
                .iter()
                .map(|p| {
                    let log = p.log();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    format!(
                        "--- {} ---\n{}",
                        p.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!(
                "no convergence on {want} members; leaders {leaders:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_configured_as_the_manifest_elect_on_the_lease_and_survive_a_rolling_update() {
    let root = tempfile::tempdir().unwrap();
    let api = TestApiServer::start().await;
    let kubeconfig = root.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let secret = root.path().join("cluster-secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let env = Env {
        api,
        kubeconfig,
        secret,
        _root: root,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    // The first ReplicaSet: three pods.
    let mut pods: Vec<Pod> = (0..3)
        .map(|i| {
            start_pod(
                &env,
                &format!("crashgrid-old-{i}"),
                &format!("127.0.0.{}", 11 + i),
            )
        })
        .collect();
    let listed = |pods: &[Pod]| -> Vec<(String, String)> {
        pods.iter()
            .map(|p| (p.name.clone(), p.ip.clone()))
            .collect()
    };
    publish_endpoints(&env.api, &listed(&pods));
    let first_leader = converged(&client, &pods, 3).await;
    // `kubectl get lease crashgrid-leader -o yaml` shows the holder.
    let lease = env
        .api
        .lease(NS, "crashgrid-leader")
        .expect("the Lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], first_leader.as_str());
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);

    // Load: batches to the pods the Service currently lists, counting acknowledged events.
    let targets: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(pods.iter().map(Pod::url).collect()));
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (targets, accepted, stop, client) = (
            targets.clone(),
            accepted.clone(),
            stop.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let world = DemoWorld::new(5);
            let mut rng = rand::rngs::StdRng::seed_from_u64(9);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..20).map(|_| world.event(&mut rng)).collect();
                let body = serde_json::to_vec(&batch).unwrap();
                loop {
                    let url = {
                        let t = targets.lock();
                        t[i % t.len()].clone()
                    };
                    i += 1;
                    let r = client
                        .post(format!("{url}/api/v1/crashes"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if matches!(&r, Ok(r) if r.status().as_u16() == 202) {
                        accepted.fetch_add(20, Ordering::Relaxed);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut old_logs = Vec::new();
    // The rolling update: for each old pod, a new pod starts and becomes ready, then the old
    // one is removed from the endpoints and gets SIGTERM.
    for i in 0..3 {
        let new = start_pod(
            &env,
            &format!("crashgrid-new-{i}"),
            &format!("127.0.0.{}", 21 + i),
        );
        pods.push(new);
        publish_endpoints(&env.api, &listed(&pods));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(&client, pods.last().unwrap()).await {
            assert!(
                Instant::now() < deadline,
                "new pod never ready:\n{}",
                pods.last().unwrap().log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        targets.lock().push(pods.last().unwrap().url());
        let mut old = pods.remove(0);
        targets.lock().retain(|u| *u != old.url());
        publish_endpoints(&env.api, &listed(&pods));
        let mut child = old.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            old.name,
            old.log()
        );
        old_logs.push(format!("--- {} ---\n{}", old.name, old.log()));
        converged(&client, &pods, 3).await;
    }
    // The new ReplicaSet serves traffic for a while (every new pod gets some).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let sent = accepted.load(Ordering::Relaxed);
    assert!(sent > 0);

    // No lost crashes: every acknowledged POST is counted, on every pod.
    let new_leader = converged(&client, &pods, 3).await;
    assert!(new_leader.starts_with("crashgrid-new-"), "{new_leader}");
    for p in &pods {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = get_json(&client, &format!("{}/api/v1/stats", p.url())).await;
            let total = v.as_ref().and_then(|v| v["stats"]["total"].as_u64());
            if total == Some(sent) {
                break;
            }
            if Instant::now() >= deadline {
                let warnings: Vec<String> = old_logs
                    .iter()
                    .cloned()
                    .chain(
                        pods.iter()
                            .map(|p| format!("--- {} ---\n{}", p.name, p.log())),
                    )
                    .flat_map(|l| {
                        l.lines()
                            .filter(|x| {
                                x.starts_with("---")
                                    || x.contains("WARN")
                                    || x.contains("ERROR")
                                    || x.contains("leader")
                                    || x.contains("stopped")
                            })
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                panic!(
                    "{}: total {total:?}, sent {sent}\n{}",
                    p.name,
                    warnings.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The cache stayed warm: the pods of the new ReplicaSet answered most frame lookups from
    // the shared grid (entries migrated or handed off from the old pods) instead of
    // symbolicating again.
    for p in &pods {
        let metrics = client
            .get(format!("{}/metrics", p.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |prefix: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{prefix} missing in\n{metrics}"))
        };
        let lookups = value("crashgrid_grid_lookups_total ");
        let ratio = value("crashgrid_grid_hit_ratio{tier=\"all\"} ");
        assert!(lookups > 0.0, "{}: no lookups", p.name);
        assert!(
            ratio >= 0.8,
            "{}: grid hit ratio {ratio} over {lookups} lookups",
            p.name
        );
    }
    // Leader changes were logged, and the Lease counts them.
    let logs: String = pods.iter().map(Pod::log).collect();
    assert!(logs.contains(&format!("The cluster has a new leader: {new_leader}")));
    let lease = env.api.lease(NS, "crashgrid-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], new_leader.as_str());
    assert!(lease["spec"]["leaseTransitions"].as_u64().unwrap() >= 1);
    drop(pods);
}
