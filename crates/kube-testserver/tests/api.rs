//! The test server's API semantics, checked through kube-rs as a client sees them. Each test
//! names the rule of the Kubernetes API Concepts page (or the registry) it implements.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube_testserver::TestApiServer;
use serde_json::{json, Value};

const NS: &str = "test";
const WAIT: Duration = Duration::from_secs(10);

fn pod(name: &str, app: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {"containers": []}})
}

async fn next<S, T>(stream: &mut S) -> T
where
    S: futures_util::Stream<Item = Result<T, kube::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .expect("no error")
}

fn name(event: &WatchEvent<Pod>) -> (&'static str, String) {
    match event {
        WatchEvent::Added(p) => ("ADDED", p.metadata.name.clone().unwrap()),
        WatchEvent::Modified(p) => ("MODIFIED", p.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(p) => ("DELETED", p.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(_) => ("BOOKMARK", String::new()),
        WatchEvent::Error(s) => ("ERROR", s.reason.clone()),
    }
}

/// List: a `PodList` whose `metadata.resourceVersion` is the current version; `labelSelector`
/// with comma-joined requirements filters it.
#[tokio::test]
async fn list_filters_by_label_selector_and_carries_the_resource_version() {
    let server = TestApiServer::start().await;
    server.apply_pod(NS, pod("a", "crashgrid"));
    server.apply_pod(
        NS,
        json!({"metadata": {"name": "b", "labels": {"app": "crashgrid", "tier": "rpc"}}}),
    );
    server.apply_pod(NS, pod("c", "web"));
    server.apply_pod("other", pod("d", "crashgrid"));
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let names = |list: kube::core::ObjectList<Pod>| {
        list.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        all.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
    assert_eq!(names(all), ["a", "b", "c"]);
    let selected = api
        .list(&ListParams::default().labels("app=crashgrid,tier=rpc"))
        .await
        .unwrap();
    assert_eq!(names(selected), ["b"]);
    let selected = api
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(names(selected), ["a", "b"]);
    assert_eq!(server.requests("list", "pods"), 3);
}

/// Watch from resourceVersion "0": synthetic ADDED events for the current objects, then every
/// change as ADDED / MODIFIED / DELETED, each object at its new resourceVersion.
#[tokio::test]
async fn watch_from_zero_replays_the_state_then_streams_changes() {
    let server = TestApiServer::start().await;
    server.apply_pod(NS, pod("a", "x"));
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let mut stream = api
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(name(&next(&mut stream).await), ("ADDED", "a".into()));
    let added = server.apply_pod(NS, pod("b", "x"));
    let event = next(&mut stream).await;
    assert_eq!(name(&event), ("ADDED", "b".into()));
    if let WatchEvent::Added(p) = event {
        assert_eq!(
            p.metadata.resource_version.as_deref(),
            added["metadata"]["resourceVersion"].as_str()
        );
    }
    server.apply_pod(NS, pod("a", "y"));
    assert_eq!(name(&next(&mut stream).await), ("MODIFIED", "a".into()));
    server.delete_pod(NS, "b");
    assert_eq!(name(&next(&mut stream).await), ("DELETED", "b".into()));
}

/// Watch with a label selector: an object whose change makes it match arrives as ADDED, one
/// that stops matching as DELETED; others are not sent.
#[tokio::test]
async fn selector_watch_reports_objects_entering_and_leaving() {
    let server = TestApiServer::start().await;
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let rv = server.resource_version().to_string();
    let params = WatchParams::default()
        .labels("app=crashgrid")
        .disable_bookmarks();
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    server.apply_pod(NS, pod("a", "web"));
    server.apply_pod(NS, pod("a", "crashgrid"));
    assert_eq!(name(&next(&mut stream).await), ("ADDED", "a".into()));
    server.apply_pod(NS, pod("a", "web"));
    assert_eq!(name(&next(&mut stream).await), ("DELETED", "a".into()));
    server.delete_pod(NS, "a");
    server.apply_pod(NS, pod("b", "crashgrid"));
    assert_eq!(name(&next(&mut stream).await), ("ADDED", "b".into()));
}

/// Watch from a resourceVersion whose changes were dropped from the history: HTTP 200 and one
/// ERROR event carrying a 410 `Expired` Status, then the stream ends (the watch cache's answer;
/// clients re-list).
#[tokio::test]
async fn watch_from_a_compacted_version_gets_410_expired_in_the_stream() {
    let server = TestApiServer::builder().history_limit(2).start().await;
    let old = server.resource_version().to_string();
    for i in 0..3 {
        server.apply_pod(NS, pod(&format!("p{i}"), "x"));
    }
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let mut stream = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(end.is_none(), "the stream ends after the error");
}

/// `allowWatchBookmarks=true`: BOOKMARK events carry the current resourceVersion (here every
/// 50 ms); `timeoutSeconds` ends the stream.
#[tokio::test]
async fn bookmarks_carry_the_version_and_timeout_ends_the_watch() {
    let server = TestApiServer::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    server.apply_pod("elsewhere", pod("a", "x"));
    let api: Api<Pod> = Api::namespaced(server.client(), NS);
    let rv = server.resource_version();
    server.apply_pod("elsewhere", pod("b", "x"));
    let mut stream = api
        .watch(&WatchParams::default().timeout(1), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, (rv + 1).to_string())
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(event) = stream.next().await {
            assert!(matches!(event, Ok(WatchEvent::Bookmark(_))), "{event:?}");
        }
    })
    .await;
    assert!(ended.is_ok(), "timeoutSeconds=1 ended the stream");
}

/// Streaming lists (`sendInitialEvents=true`, `resourceVersionMatch=NotOlderThan`): the
/// initial state as ADDED events, then a BOOKMARK annotated `k8s.io/initial-events-end`;
/// kube-rs's watcher in that mode completes its initial list without any list request.
#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_the_end_bookmark() {
    let server = TestApiServer::start().await;
    for name in ["s1", "s2"] {
        server.apply_endpoint_slice(
            NS,
            json!({"metadata": {"name": name}, "addressType": "IPv4", "endpoints": []}),
        );
    }
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), NS);
    let config = watcher::Config::default().streaming_lists();
    let mut stream = watcher::watcher(api, config).boxed();
    let mut initial = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::Init => {}
            watcher::Event::InitApply(s) => initial.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["s1", "s2"]);
    assert_eq!(server.requests("list", "endpointslices"), 0);
    assert_eq!(server.requests("watch", "endpointslices"), 1);
}

/// Fault injection: while unavailable every request is 503 `ServiceUnavailable` (a Status
/// object), and open watches are ended.
#[tokio::test]
async fn unavailable_server_answers_503_and_ends_watches() {
    let server = TestApiServer::start().await;
    let api: Api<Pod> = Api::namespaced(server.client_without_retries(), NS);
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    tokio::time::timeout(WAIT, async {
        while server.open_watches() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    server.set_unavailable(true);
    let end = tokio::time::timeout(WAIT, async {
        while let Some(event) = stream.next().await {
            assert!(matches!(event, Ok(WatchEvent::Bookmark(_))), "{event:?}");
        }
    })
    .await;
    assert!(end.is_ok(), "the watch ended");
    let err = api.get("a").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 503 && s.reason == "ServiceUnavailable"),
        "{err:?}"
    );
    server.set_unavailable(false);
    let err = api.get("a").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{err:?}"
    );
}
