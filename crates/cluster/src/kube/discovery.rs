//! [`kubernetes_peers`]: discovery from EndpointSlices or Pods, watched through kube-rs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use ::futures_util::{Stream, StreamExt};
use ::k8s_openapi::api::core::v1::Pod;
use ::k8s_openapi::api::discovery::v1::EndpointSlice;
use ::kube::api::Api;
use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::discovery::{DiscoveryError, DiscoveryHandle, PeerSet};

/// The label the EndpointSlice controller puts on the slices of a Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long [`kubernetes_peers`] waits for the first complete list before returning with an
/// empty set (the task keeps trying).
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(10);

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// What [`kubernetes_peers`] watches, in which namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeDiscoveryConfig {
    /// The namespace of the Service's EndpointSlices or of the Pods (usually this pod's own,
    /// see [`namespace_from_env`](crate::namespace_from_env)).
    pub namespace: String,
    /// The objects that name the peers.
    pub source: KubeSource,
}

/// The Kubernetes objects discovery reads peers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSource {
    /// The ready endpoints of a Service: EndpointSlices labelled
    /// `kubernetes.io/service-name=<service>`, at the slice port named `port_name`.
    EndpointSlices {
        /// The Service's name.
        service: String,
        /// The name of the RPC port in the Service (and so in its slices), e.g. `rpc`.
        port_name: String,
    },
    /// Ready, running pods matching a label selector, at a fixed port.
    Pods {
        /// A label selector, e.g. `app.kubernetes.io/name=crashgrid`.
        label_selector: String,
        /// The RPC port every pod listens on.
        port: u16,
    },
}

/// Starts watching the configured objects and returns a handle publishing the peer set; see
/// the docs of `src/kube/mod.rs` for the requests, the readiness rules and the RBAC.
///
/// Waits for the first complete list (at most 10 s). Fails on a configuration that cannot
/// work (empty namespace, service or selector; port 0) and on a first answer of 401, 403 or
/// 404; any other failure starts with an empty set and keeps retrying in the background.
pub async fn kubernetes_peers(
    client: Client,
    config: KubeDiscoveryConfig,
) -> Result<DiscoveryHandle, DiscoveryError> {
    let invalid = |what: &str| {
        Err(DiscoveryError::Kubernetes(format!(
            "invalid configuration: {what}"
        )))
    };
    if config.namespace.trim().is_empty() {
        return invalid("the namespace is empty");
    }
    match config.source {
        KubeSource::EndpointSlices { service, port_name } => {
            if service.trim().is_empty() {
                return invalid("the service name is empty");
            }
            let api: Api<EndpointSlice> = Api::namespaced(client, &config.namespace);
            let selector = format!("{SERVICE_NAME_LABEL}={service}");
            let extract = move |slice: &EndpointSlice| slice_peers(slice, &port_name);
            start(api, &selector, extract).await
        }
        KubeSource::Pods {
            label_selector,
            port,
        } => {
            if label_selector.trim().is_empty() {
                // An empty selector matches every pod of the namespace: surely a mistake.
                return invalid("the label selector is empty");
            }
            if port == 0 {
                return invalid("the port is 0");
            }
            let api: Api<Pod> = Api::namespaced(client, &config.namespace);
            let extract = move |pod: &Pod| pod_peer(pod, port).into_iter().collect();
            start(api, &label_selector, extract).await
        }
    }
}

/// The addresses of a slice's ready endpoints at the port named `port_name`.
fn slice_peers(slice: &EndpointSlice, port_name: &str) -> Vec<SocketAddr> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or("") == port_name)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        // `ready` absent means "unknown", which consumers are to treat as ready.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// `podIP:port` of a pod that is Running, Ready and not being deleted.
fn pod_peer(pod: &Pod, port: u16) -> Option<SocketAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

type WatchStream<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

/// The peers each watched object contributes, rebuilt on every (re-)list.
#[derive(Debug, Default)]
struct Peers {
    by_object: BTreeMap<String, Vec<SocketAddr>>,
    /// Objects of a list in progress; replaces `by_object` when the list is complete.
    listing: Option<BTreeMap<String, Vec<SocketAddr>>>,
}

impl Peers {
    /// Applies one event; returns the new set when a complete state changed.
    fn apply<K: ResourceExt>(
        &mut self,
        event: Event<K>,
        extract: &impl Fn(&K) -> Vec<SocketAddr>,
    ) -> Option<PeerSet> {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                None
            }
            Event::InitApply(object) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(object.name_any(), extract(&object));
                None
            }
            Event::InitDone => {
                self.by_object = self.listing.take().unwrap_or_default();
                Some(self.set())
            }
            Event::Apply(object) => {
                self.by_object.insert(object.name_any(), extract(&object));
                Some(self.set())
            }
            Event::Delete(object) => {
                self.by_object.remove(&object.name_any());
                Some(self.set())
            }
        }
    }

    fn set(&self) -> PeerSet {
        self.by_object.values().flatten().copied().collect()
    }
}

/// True for a failure only configuration can fix: unauthenticated, forbidden, not served.
fn is_fatal(error: &watcher::Error) -> bool {
    let client_error = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => return matches!(status.code, 401 | 403),
        _ => return false,
    };
    matches!(client_error, ::kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404))
}

fn describe_watch_error(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(e) => format!("list failed: {}", super::describe(e)),
        watcher::Error::WatchStartFailed(e) => format!("watch failed: {}", super::describe(e)),
        watcher::Error::WatchFailed(e) => format!("watch stream failed: {}", super::describe(e)),
        watcher::Error::WatchError(s) => {
            format!("watch error event: {} {}: {}", s.code, s.reason, s.message)
        }
        other => other.to_string(),
    }
}

async fn start<K, F>(
    api: Api<K>,
    label_selector: &str,
    extract: F,
) -> Result<DiscoveryHandle, DiscoveryError>
where
    K: Resource + ResourceExt + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(&K) -> Vec<SocketAddr> + Send + 'static,
{
    let config = watcher::Config::default().labels(label_selector);
    let mut stream: WatchStream<K> = Box::pin(watcher(api, config));
    let mut peers = Peers::default();

    // The first complete list, so the caller starts with what the API knows now.
    let first = tokio::time::timeout(FIRST_LIST_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    if let Some(set) = peers.apply(event, &extract) {
                        return Ok(Some(set));
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    })
    .await;
    let (first_set, mut failing) = match first {
        Ok(Ok(set)) => (set.unwrap_or_default(), false),
        Ok(Err(e)) if is_fatal(&e) => {
            return Err(DiscoveryError::Kubernetes(describe_watch_error(&e)));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %describe_watch_error(&e), "kubernetes discovery: first list failed; retrying");
            (PeerSet::new(), true)
        }
        Err(_) => {
            tracing::warn!("kubernetes discovery: no complete list within {FIRST_LIST_TIMEOUT:?}; starting empty");
            (PeerSet::new(), false)
        }
    };

    let (tx, rx) = watch::channel(first_set);
    let task = tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            if failing {
                // The watcher retries on the next poll: wait before polling again.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            let next = tokio::select! {
                next = stream.next() => next,
                _ = tx.closed() => return,
            };
            match next {
                Some(Ok(event)) => {
                    failing = false;
                    backoff = BACKOFF_MIN;
                    if let Some(set) = peers.apply(event, &extract) {
                        tx.send_if_modified(|current| {
                            if *current != set {
                                tracing::info!(
                                    peers = set.len(),
                                    "kubernetes discovery: peer set changed"
                                );
                                *current = set;
                                true
                            } else {
                                false
                            }
                        });
                    }
                }
                Some(Err(e)) => {
                    // The last good set stays published.
                    tracing::warn!(error = %describe_watch_error(&e), retry_in = ?backoff, "kubernetes discovery: keeping the last peer set");
                    failing = true;
                }
                // The watcher stream never ends; if it does, there is nothing left to do.
                None => return,
            }
        }
    });
    Ok(DiscoveryHandle::new(rx, Some(task)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn slices_yield_ready_or_unknown_endpoints_at_the_named_port() {
        let s = slice(json!({
            "addressType": "IPv4",
            "metadata": {"name": "s"},
            "ports": [{"name": "http", "port": 8080}, {"name": "rpc", "port": 7946}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {}},
                {"addresses": ["10.0.0.4"]},
                {"addresses": ["pod.example"], "conditions": {"ready": true}},
            ],
        }));
        let got: Vec<String> = slice_peers(&s, "rpc")
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.1:7946", "10.0.0.3:7946", "10.0.0.4:7946"]);
        assert!(slice_peers(&s, "grpc").is_empty());
    }

    #[test]
    fn pods_need_running_ready_and_an_ip() {
        let pod = |phase: &str, ready: &str, ip: Option<&str>, deleting: bool| -> Pod {
            let mut v = json!({
                "metadata": {"name": "p"},
                "status": {
                    "phase": phase,
                    "conditions": [{"type": "Ready", "status": ready}],
                },
            });
            if let Some(ip) = ip {
                v["status"]["podIP"] = json!(ip);
            }
            if deleting {
                v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
            }
            serde_json::from_value(v).unwrap()
        };
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(
            pod_peer(&pod("Running", "True", Some("10.1.0.1"), false), 7946),
            addr("10.1.0.1:7946")
        );
        assert_eq!(
            pod_peer(&pod("Running", "True", Some("fd00::1"), false), 7946),
            addr("[fd00::1]:7946")
        );
        assert_eq!(
            pod_peer(&pod("Running", "False", Some("10.1.0.1"), false), 7946),
            None
        );
        assert_eq!(
            pod_peer(&pod("Pending", "True", Some("10.1.0.1"), false), 7946),
            None
        );
        assert_eq!(pod_peer(&pod("Running", "True", None, false), 7946), None);
        assert_eq!(
            pod_peer(&pod("Running", "True", Some("10.1.0.1"), true), 7946),
            None
        );
    }
}
