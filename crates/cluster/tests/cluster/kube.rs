//! The Kubernetes backends through kube-rs against `kube-testserver`, a test double of the API
//! server implementing the documented semantics of Leases, EndpointSlices and Pods.
//!
//! Each test names the API rule it relies on: the Kubernetes API Concepts page (resource
//! versions, watch, 410 Gone), the Lease registry strategy, and the EndpointSlice / Pod
//! field documentation.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ::k8s_openapi::api::coordination::v1::Lease;
use ::kube::api::{Api, PostParams};
use cluster::{
    kubernetes_peers, spawn_elector, DiscoveryError, DiscoveryHandle, ElectionConfig,
    KubeDiscoveryConfig, KubeLease, KubeSource, LeaseBackend, LeaseError, LeaseRecord, MicroTime,
    PeerSet, Version,
};
use kube_testserver::TestApiServer;
use serde_json::{json, Value};

use crate::election::{conformance_cas, conformance_election};

const NS: &str = "crashgrid";

/// Generous bound for something that happens in milliseconds; only a hang reaches it.
const WAIT: Duration = Duration::from_secs(10);

/// A `KubeLease` as production builds it: from a kube `Config`, without kube's retry layer.
fn kube_lease(server: &TestApiServer, name: &str) -> KubeLease {
    KubeLease::from_config(server.config(), NS, name).unwrap()
}

fn record(holder: Option<&str>, transitions: u64) -> LeaseRecord {
    let now = MicroTime::from_system_time(SystemTime::now());
    LeaseRecord {
        holder_identity: holder.map(str::to_owned),
        lease_duration_seconds: 15,
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        lease_transitions: transitions,
    }
}

/// `2024-05-01T12:00:00.123456Z`: RFC 3339 UTC with exactly six fractional digits.
fn is_micro_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 27
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[26] == b'Z'
        && b[20..26].iter().all(u8::is_ascii_digit)
}

// ---------------------------------------------------------------------------------------------
// Lease election
// ---------------------------------------------------------------------------------------------

/// LeaseBackend contract on a Kubernetes Lease: GET 404 → none, POST 409 AlreadyExists, PUT
/// with a stale `metadata.resourceVersion` 409 Conflict, every write a new resourceVersion
/// (one global counter); and the election suite over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_lease_passes_the_backend_conformance_suite() {
    let server = TestApiServer::start().await;
    conformance_cas(kube_lease(&server, "cas"), kube_lease(&server, "cas")).await;
    conformance_election(|| kube_lease(&server, "election")).await;
}

/// Optimistic concurrency (API concepts, "resource versions"): a PUT whose resourceVersion is
/// not the stored one is 409 Conflict and changes nothing; a POST of an existing name is 409
/// AlreadyExists. Checked on the wire with kube-rs and through `KubeLease`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_is_conflict_and_double_create_already_exists() {
    let server = TestApiServer::start().await;
    let client = server.client_without_retries();
    let a = kube_lease(&server, "leader");
    let b = kube_lease(&server, "leader");

    let v1 = a.create(record(Some("a"), 0)).await.unwrap();
    let again = b.create(record(Some("b"), 0)).await;
    assert!(matches!(again, Err(LeaseError::AlreadyExists)), "{again:?}");

    let (_, seen) = b.get().await.unwrap().unwrap();
    assert_eq!(seen, v1);
    let v2 = b.update(record(Some("b"), 1), &v1).await.unwrap();
    let stale = a.update(record(Some("a"), 1), &v1).await;
    assert!(
        matches!(&stale, Err(LeaseError::Conflict { expected }) if *expected == v1),
        "{stale:?}"
    );
    let stored = server.lease(NS, "leader").unwrap();
    assert_eq!(stored["metadata"]["resourceVersion"], v2.as_str());
    assert_eq!(stored["spec"]["holderIdentity"], "b");

    // The same two answers, as the raw API gives them.
    let api: Api<Lease> = Api::namespaced(client, NS);
    let mut lease: Lease = serde_json::from_value(stored).unwrap();
    lease.metadata.resource_version = Some(v1.as_str().to_string());
    let err = api
        .replace("leader", &PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ::kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    lease.metadata.resource_version = None;
    lease.metadata.uid = None;
    let err = api
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ::kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
}

/// The Lease registry allows create-on-update: a PUT of a missing Lease creates it, whatever
/// resourceVersion it carries, unless `metadata.uid` is set, which is a precondition (409).
/// `KubeLease::update` sends the uid, so updating a Lease deleted behind its back fails and
/// never re-creates it; and an update from a version this client never saw reads first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_of_a_deleted_lease_fails_and_never_recreates_it() {
    let server = TestApiServer::start().await;
    let client = server.client_without_retries();
    let a = kube_lease(&server, "leader");
    let v1 = a.create(record(Some("a"), 0)).await.unwrap();
    assert!(server.delete_lease(NS, "leader"));

    let result = a.update(record(Some("a"), 0), &v1).await;
    assert!(
        result.as_ref().is_err_and(LeaseError::is_lost_race),
        "{result:?}"
    );
    assert!(
        server.lease(NS, "leader").is_none(),
        "the PUT created the lease"
    );

    // A client that never saw the version: NotFound without any PUT.
    let updates = server.requests("update", "leases");
    let fresh = kube_lease(&server, "leader");
    let result = fresh.update(record(Some("a"), 0), &v1).await;
    assert!(matches!(result, Err(LeaseError::NotFound)), "{result:?}");
    assert_eq!(server.requests("update", "leases"), updates);

    // The rule itself, on the wire: a PUT without uid of a missing Lease creates it.
    let api: Api<Lease> = Api::namespaced(client, NS);
    let mut lease = Lease::default();
    lease.metadata.name = Some("other".into());
    lease.metadata.resource_version = Some("12345".into());
    api.replace("other", &PostParams::default(), &lease)
        .await
        .unwrap();
    assert!(server.lease(NS, "other").is_some());
}

/// Errors other than lost races are `Unavailable` with the API's message (here 503 from the
/// server), at once (no client-side retry), so the elector treats them as ambiguous and reads
/// back on its own schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_are_unavailable_with_the_status_message() {
    let server = TestApiServer::start().await;
    let lease = kube_lease(&server, "leader");
    let v1 = lease.create(record(Some("a"), 0)).await.unwrap();
    server.set_unavailable(true);
    for result in [
        lease.get().await.map(|_| ()),
        lease.create(record(Some("a"), 0)).await.map(|_| ()),
        lease.update(record(Some("a"), 0), &v1).await.map(|_| ()),
    ] {
        match result {
            Err(LeaseError::Unavailable(message)) => {
                assert!(message.contains("503"), "{message}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    server.set_unavailable(false);
    assert_eq!(lease.get().await.unwrap().unwrap().1, v1);
}

/// client-go leader election on a Lease through the real driver: of three electors exactly one
/// leads; shutting it down releases the Lease and another takes over at once. The stored
/// object is what `kubectl get lease crashgrid-leader -o yaml` shows: holderIdentity,
/// leaseDurationSeconds, MicroTime acquire/renew times, leaseTransitions counting hand-overs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_elects_one_of_three_kube_leases_and_hands_over_on_shutdown() {
    let server = TestApiServer::start().await;
    let config = ElectionConfig {
        lease_duration: Duration::from_secs(5),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(100),
    };
    let mut handles = Vec::new();
    for id in ["pod-a", "pod-b", "pod-c"] {
        let lease = kube_lease(&server, "crashgrid-leader");
        handles.push(spawn_elector(lease, id, config).unwrap());
    }
    let leaders = |hs: &[cluster::ElectorHandle]| {
        hs.iter()
            .filter(|h| h.current().is_leader)
            .map(|h| h.identity().to_string())
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while leaders(&handles).len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..30 {
        assert_eq!(leaders(&handles).len(), 1, "{:?}", leaders(&handles));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = leaders(&handles)[0].clone();
    let stored = server.lease(NS, "crashgrid-leader").unwrap();
    assert_eq!(stored["kind"], "Lease");
    assert_eq!(stored["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(stored["spec"]["holderIdentity"], first.as_str());
    assert_eq!(stored["spec"]["leaseDurationSeconds"], 5);
    assert_eq!(stored["spec"]["leaseTransitions"], 0);
    for field in ["acquireTime", "renewTime"] {
        let t = stored["spec"][field].as_str().unwrap();
        assert!(is_micro_time(t), "{field} = {t}");
    }

    let at = handles.iter().position(|h| h.identity() == first).unwrap();
    let leader = handles.remove(at);
    leader.shutdown().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while leaders(&handles).len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no hand-over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = leaders(&handles)[0].clone();
    assert_ne!(second, first);
    let stored = server.lease(NS, "crashgrid-leader").unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], second.as_str());
    assert_eq!(stored["spec"]["leaseTransitions"], 1);
    let epoch = handles.iter().find(|h| h.identity() == second).unwrap();
    assert_eq!(epoch.current().epoch, 1);

    for h in handles {
        h.shutdown().await;
    }
    let released = server.lease(NS, "crashgrid-leader").unwrap();
    let holder = released["spec"]["holderIdentity"].as_str().unwrap_or("");
    assert_eq!(holder, "", "released: {released}");
    assert_eq!(released["spec"]["leaseTransitions"], 1);
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

fn endpoint(ip: &str, ready: Option<bool>) -> Value {
    match ready {
        Some(ready) => json!({"addresses": [ip], "conditions": {"ready": ready}}),
        None => json!({"addresses": [ip], "conditions": {}}),
    }
}

fn slice(name: &str, service: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "rpc", "port": 7946, "protocol": "TCP"},
        ],
        "endpoints": endpoints,
    })
}

fn pod(name: &str, app: &str, phase: &str, ready: bool, ip: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "crashgrid", "image": "crashgrid"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    });
    if let Some(ip) = ip {
        pod["status"]["podIP"] = json!(ip);
    }
    pod
}

fn peers(addrs: &[&str]) -> PeerSet {
    addrs
        .iter()
        .map(|a| a.parse::<SocketAddr>().unwrap())
        .collect::<BTreeSet<_>>()
}

async fn wait_for(handle: &DiscoveryHandle, want: &[&str]) {
    let want = peers(want);
    let mut rx = handle.subscribe();
    let reached = tokio::time::timeout(WAIT, rx.wait_for(|set| *set == want)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "peers {:?}, want {want:?}",
        handle.peers()
    );
}

/// Waits (generously) until `done` holds.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn endpoint_slices(service: &str) -> KubeDiscoveryConfig {
    KubeDiscoveryConfig {
        namespace: NS.into(),
        source: KubeSource::EndpointSlices {
            service: service.into(),
            port_name: "rpc".into(),
        },
    }
}

/// EndpointSlice discovery. Rules: a Service's slices carry `kubernetes.io/service-name`;
/// `conditions.ready` absent means unknown, to be treated as ready; the port is the slice port
/// with the Service port's name. A slice update that flips an endpoint's readiness, and the
/// removal of a slice, reach the published set through the watch (API concepts, "efficient
/// detection of changes"): one list, then watch requests only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_publish_ready_endpoints_and_follow_changes_through_a_watch() {
    let server = TestApiServer::start().await;
    server.apply_endpoint_slice(
        NS,
        slice(
            "crashgrid-abc",
            "crashgrid",
            vec![
                endpoint("10.0.0.1", Some(true)),
                endpoint("10.0.0.2", Some(false)),
                endpoint("10.0.0.3", None),
            ],
        ),
    );
    server.apply_endpoint_slice(
        NS,
        slice(
            "crashgrid-def",
            "crashgrid",
            vec![endpoint("10.0.1.1", Some(true))],
        ),
    );
    server.apply_endpoint_slice(
        NS,
        slice("other-xyz", "other", vec![endpoint("10.9.9.9", Some(true))]),
    );
    server.apply_endpoint_slice(
        "elsewhere",
        slice(
            "crashgrid-abc",
            "crashgrid",
            vec![endpoint("10.8.8.8", Some(true))],
        ),
    );

    let handle = kubernetes_peers(server.client(), endpoint_slices("crashgrid"))
        .await
        .unwrap();
    assert_eq!(
        handle.peers(),
        peers(&["10.0.0.1:7946", "10.0.0.3:7946", "10.0.1.1:7946"]),
        "the first complete list is there when kubernetes_peers returns"
    );

    // 10.0.0.2 becomes ready, 10.0.0.1 stops being ready.
    server.apply_endpoint_slice(
        NS,
        slice(
            "crashgrid-abc",
            "crashgrid",
            vec![
                endpoint("10.0.0.1", Some(false)),
                endpoint("10.0.0.2", Some(true)),
                endpoint("10.0.0.3", None),
            ],
        ),
    );
    wait_for(
        &handle,
        &["10.0.0.2:7946", "10.0.0.3:7946", "10.0.1.1:7946"],
    )
    .await;

    assert!(server.delete_endpoint_slice(NS, "crashgrid-def"));
    wait_for(&handle, &["10.0.0.2:7946", "10.0.0.3:7946"]).await;

    // A slice of another service changes nothing.
    server.apply_endpoint_slice(
        NS,
        slice("other-xyz", "other", vec![endpoint("10.9.9.8", Some(true))]),
    );
    server.apply_endpoint_slice(
        NS,
        slice(
            "crashgrid-ghi",
            "crashgrid",
            vec![endpoint("10.0.2.1", Some(true))],
        ),
    );
    wait_for(
        &handle,
        &["10.0.0.2:7946", "10.0.0.3:7946", "10.0.2.1:7946"],
    )
    .await;

    // Watches, not polls: one list, and no further request while nothing changes.
    assert_eq!(server.requests("list", "endpointslices"), 1);
    let watches = server.requests("watch", "endpointslices");
    assert!(watches >= 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.requests("list", "endpointslices"), 1);
    assert_eq!(server.requests("watch", "endpointslices"), watches);
    assert_eq!(server.open_watches(), 1);

    // Dropping the handle ends the watch.
    drop(handle);
    wait_until(|| server.open_watches() == 0).await;
}

/// A watch stream that ends (timeoutSeconds, a restarted load balancer) is resumed from the
/// last resourceVersion seen (API concepts: watch from a specific resourceVersion delivers
/// every change after it), without a new list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_watch_resumes_from_the_last_resource_version_without_relisting() {
    let server = TestApiServer::start().await;
    server.apply_endpoint_slice(
        NS,
        slice(
            "crashgrid-abc",
            "crashgrid",
            vec![endpoint("10.0.0.1", Some(true))],
        ),
    );
    let handle = kubernetes_peers(server.client(), endpoint_slices("crashgrid"))
        .await
        .unwrap();
    assert_eq!(handle.peers(), peers(&["10.0.0.1:7946"]));
    wait_until(|| server.open_watches() == 1).await;
    for round in 2..5 {
        let watches = server.requests("watch", "endpointslices");
        server.close_watches();
        // The change is made once the client watches again, so it cannot ride the old stream.
        wait_until(|| {
            server.requests("watch", "endpointslices") > watches && server.open_watches() == 1
        })
        .await;
        let ip = format!("10.0.0.{round}");
        server.apply_endpoint_slice(
            NS,
            slice(
                "crashgrid-abc",
                "crashgrid",
                vec![endpoint(&ip, Some(true))],
            ),
        );
        wait_for(&handle, &[&format!("{ip}:7946")]).await;
    }
    assert_eq!(server.requests("list", "endpointslices"), 1);
    assert!(server.requests("watch", "endpointslices") >= 4);
}

/// Pod discovery by label selector: only pods with `status.podIP`, phase Running and
/// condition Ready=True, not being deleted (`metadata.deletionTimestamp`), count. A pod whose
/// labels stop matching the selector leaves the set (the watch reports it as DELETED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_by_label_publish_ready_running_pods_with_an_ip() {
    let server = TestApiServer::start().await;
    server.apply_pod(
        NS,
        pod("ready", "crashgrid", "Running", true, Some("10.1.0.1")),
    );
    server.apply_pod(
        NS,
        pod("unready", "crashgrid", "Running", false, Some("10.1.0.2")),
    );
    server.apply_pod(NS, pod("pending", "crashgrid", "Pending", false, None));
    server.apply_pod(NS, pod("no-ip", "crashgrid", "Running", true, None));
    server.apply_pod(NS, pod("web", "web", "Running", true, Some("10.1.0.9")));
    let mut terminating = pod(
        "terminating",
        "crashgrid",
        "Running",
        true,
        Some("10.1.0.5"),
    );
    terminating["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    server.apply_pod(NS, terminating);

    let config = KubeDiscoveryConfig {
        namespace: NS.into(),
        source: KubeSource::Pods {
            label_selector: "app=crashgrid".into(),
            port: 7946,
        },
    };
    let handle = kubernetes_peers(server.client(), config).await.unwrap();
    assert_eq!(handle.peers(), peers(&["10.1.0.1:7946"]));

    server.apply_pod(
        NS,
        pod("unready", "crashgrid", "Running", true, Some("10.1.0.2")),
    );
    wait_for(&handle, &["10.1.0.1:7946", "10.1.0.2:7946"]).await;

    server.apply_pod(NS, pod("ready", "other", "Running", true, Some("10.1.0.1")));
    wait_for(&handle, &["10.1.0.2:7946"]).await;

    assert!(server.delete_pod(NS, "unready"));
    wait_for(&handle, &[]).await;

    server.apply_pod(
        NS,
        pod("pending", "crashgrid", "Running", true, Some("10.1.0.3")),
    );
    wait_for(&handle, &["10.1.0.3:7946"]).await;
    assert_eq!(server.requests("list", "pods"), 1);
}

/// API server unavailable: the last good set stays published while every request fails
/// (503); changes made meanwhile outlive the server's watch history, so the resumed watch gets
/// 410 Gone (API concepts: "clients must handle 410 Gone by re-listing") and discovery
/// re-lists and publishes the new state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_api_keeps_the_last_good_set_then_recovers_through_a_relist() {
    let server = TestApiServer::builder().history_limit(3).start().await;
    server.apply_endpoint_slice(
        NS,
        slice(
            "crashgrid-abc",
            "crashgrid",
            vec![endpoint("10.0.0.1", Some(true))],
        ),
    );
    let handle = kubernetes_peers(server.client(), endpoint_slices("crashgrid"))
        .await
        .unwrap();
    assert_eq!(handle.peers(), peers(&["10.0.0.1:7946"]));

    server.set_unavailable(true);
    let before = server.requests("watch", "endpointslices");
    // Refused retries (kube's retry layer and the watcher's backoff) happen meanwhile.
    wait_until(|| server.requests("watch", "endpointslices") >= before + 2).await;
    assert_eq!(
        handle.peers(),
        peers(&["10.0.0.1:7946"]),
        "last good set kept"
    );

    for i in 2..8 {
        let ip = format!("10.0.0.{i}");
        server.apply_endpoint_slice(
            NS,
            slice(
                "crashgrid-abc",
                "crashgrid",
                vec![endpoint(&ip, Some(true))],
            ),
        );
    }
    assert_eq!(
        handle.peers(),
        peers(&["10.0.0.1:7946"]),
        "last good set kept"
    );
    server.set_unavailable(false);
    wait_for(&handle, &["10.0.0.7:7946"]).await;
    assert_eq!(
        server.requests("list", "endpointslices"),
        2,
        "one re-list after 410 Gone"
    );
}

/// Discovery that starts while the API is down starts empty, keeps retrying and fills in once
/// the API answers; a configuration that cannot work is refused at once. (A client without
/// kube's retry layer, so the first 503 comes back at once; with it, `kubernetes_peers` would
/// return empty after its 10 s wait.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_started_during_an_outage_starts_empty_and_recovers() {
    let server = TestApiServer::start().await;
    server.apply_endpoint_slice(
        NS,
        slice(
            "crashgrid-abc",
            "crashgrid",
            vec![endpoint("10.0.0.1", Some(true))],
        ),
    );
    server.set_unavailable(true);
    let handle = kubernetes_peers(
        server.client_without_retries(),
        endpoint_slices("crashgrid"),
    )
    .await
    .unwrap();
    assert_eq!(handle.peers(), PeerSet::new());
    server.set_unavailable(false);
    wait_for(&handle, &["10.0.0.1:7946"]).await;

    let bad = kubernetes_peers(server.client(), endpoint_slices(" ")).await;
    assert!(matches!(bad, Err(DiscoveryError::Kubernetes(_))), "{bad:?}");
    let bad = KubeDiscoveryConfig {
        namespace: NS.into(),
        source: KubeSource::Pods {
            label_selector: "app=crashgrid".into(),
            port: 0,
        },
    };
    assert!(kubernetes_peers(server.client(), bad).await.is_err());
}

/// The kubeconfig the server writes is what a child process would load with
/// `KUBECONFIG=path`: kube-rs reads it and reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_kubeconfig_reaches_the_server() {
    let server = TestApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = ::kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = ::kube::Client::try_from(config).unwrap();
    let lease = KubeLease::new(client, "default", "via-kubeconfig");
    let v = lease.create(record(Some("child"), 0)).await.unwrap();
    assert_eq!(lease.get().await.unwrap().unwrap().1, v);
    assert_ne!(v, Version::new(""));
}
