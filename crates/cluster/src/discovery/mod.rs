//! Discovery: where the other pods' RPC endpoints are.
//!
//! Discovery only answers "which addresses might be crashgrid pods"; whether a pod at such an
//! address is alive, and what it is called, is membership's business (it pings every
//! discovered address, see [`crate::membership`]). Keeping the two apart lets every backend
//! stay simple and lets membership be tested without any backend at all.
//!
//! Every backend runs as a task publishing a [`PeerSet`] on a `watch` channel, held by a
//! [`DiscoveryHandle`]; dropping the handle stops the task.
//!
//! - [`static_peers`]: a fixed `host:port` list (`crashgrid up`, tests, bare metal).
//!   Host names are resolved once at start and again on every refresh, like DNS.
//! - [`dns_peers`]: the A/AAAA records of a name, re-resolved every `interval`. With a
//!   headless Kubernetes Service (`clusterIP: None`, `publishNotReadyAddresses: false`) the
//!   records are exactly the Ready pods; it needs no RBAC at all. Lag: up to `interval`
//!   plus the DNS TTL of the cluster DNS (CoreDNS defaults to 30 s for headless services).
//! - Kubernetes (EndpointSlices of a Service, or Pods by label selector), watched through
//!   kube-rs, is in [`crate::kube`].
//!
//! A failed resolution keeps the last good set (a DNS hiccup must not empty the cluster) and
//! is logged; the set never contains this pod's own advertised address when it is known
//! ([`DiscoveryHandle::peers_excluding`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The RPC addresses discovery currently knows, sorted (so equal sets compare equal).
pub type PeerSet = BTreeSet<SocketAddr>;

/// Errors of discovery configuration and resolution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A `host:port` entry that cannot be parsed.
    #[error("invalid peer address {0:?}: expected host:port")]
    InvalidAddress(String),
    /// A name did not resolve.
    #[error("cannot resolve {name}: {reason}")]
    Resolve {
        /// The name looked up.
        name: String,
        /// The resolver's message.
        reason: String,
    },
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes discovery: {0}")]
    Kubernetes(String),
}

/// A running discovery task: the latest [`PeerSet`] on a `watch` channel.
///
/// Dropping the handle stops the task.
#[derive(Debug)]
pub struct DiscoveryHandle {
    peers: watch::Receiver<PeerSet>,
    task: Option<JoinHandle<()>>,
}

impl DiscoveryHandle {
    /// Wraps a task that publishes on `peers`' sender. Used by every backend, including
    /// the Kubernetes one; `task` is aborted when the handle drops.
    pub fn new(peers: watch::Receiver<PeerSet>, task: Option<JoinHandle<()>>) -> Self {
        DiscoveryHandle { peers, task }
    }

    /// A fixed set, with no task behind it.
    pub fn fixed(peers: PeerSet) -> Self {
        let (_tx, rx) = watch::channel(peers);
        DiscoveryHandle {
            peers: rx,
            task: None,
        }
    }

    /// A receiver of the peer set; `changed()` fires whenever it changes.
    pub fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.peers.clone()
    }

    /// The current set.
    pub fn peers(&self) -> PeerSet {
        self.peers.borrow().clone()
    }

    /// The current set without `own` (a pod finds itself through DNS or EndpointSlices).
    pub fn peers_excluding(&self, own: SocketAddr) -> PeerSet {
        let mut set = self.peers();
        set.remove(&own);
        set
    }
}

impl Drop for DiscoveryHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Parses `host:port` entries (`10.0.0.1:7946`, `[::1]:7946`, `pod-0.svc:7946`) without
/// resolving them; names are resolved by the task.
fn parse_entries(entries: &[String]) -> Result<Vec<(String, u16)>, DiscoveryError> {
    entries
        .iter()
        .map(|e| {
            let e = e.trim();
            let (host, port) = e
                .rsplit_once(':')
                .ok_or_else(|| DiscoveryError::InvalidAddress(e.to_string()))?;
            let port: u16 = port
                .parse()
                .map_err(|_| DiscoveryError::InvalidAddress(e.to_string()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || port == 0 {
                return Err(DiscoveryError::InvalidAddress(e.to_string()));
            }
            Ok((host.to_string(), port))
        })
        .collect()
}

async fn resolve_all(entries: &[(String, u16)]) -> Result<PeerSet, DiscoveryError> {
    let mut set = PeerSet::new();
    let mut last_error = None;
    for (host, port) in entries {
        match tokio::net::lookup_host((host.as_str(), *port)).await {
            Ok(addrs) => set.extend(addrs),
            Err(e) => {
                last_error = Some(DiscoveryError::Resolve {
                    name: format!("{host}:{port}"),
                    reason: e.to_string(),
                })
            }
        }
    }
    match last_error {
        Some(e) if set.is_empty() => Err(e),
        Some(e) => {
            tracing::warn!(error = %e, "discovery: some peers did not resolve");
            Ok(set)
        }
        None => Ok(set),
    }
}

/// Resolves `entries` now and every `refresh` (names may move), publishing the union.
///
/// Fails at once on an entry that is not `host:port`. An IP-only list never changes and gets
/// no task.
pub async fn static_peers(
    entries: &[String],
    refresh: Duration,
) -> Result<DiscoveryHandle, DiscoveryError> {
    let parsed = parse_entries(entries)?;
    let all_ips = parsed
        .iter()
        .all(|(h, _)| h.parse::<std::net::IpAddr>().is_ok());
    if all_ips {
        return Ok(DiscoveryHandle::fixed(resolve_all(&parsed).await?));
    }
    Ok(spawn_resolver(parsed, refresh).await)
}

/// The A/AAAA records of `name` (`host:port`; the port is the RPC port of every record),
/// re-resolved every `interval`.
pub async fn dns_peers(name: &str, interval: Duration) -> Result<DiscoveryHandle, DiscoveryError> {
    let parsed = parse_entries(&[name.to_string()])?;
    Ok(spawn_resolver(parsed, interval).await)
}

async fn spawn_resolver(entries: Vec<(String, u16)>, interval: Duration) -> DiscoveryHandle {
    // A first resolution before returning, so callers start with what DNS knows now; a
    // failure starts empty (the name may not exist until the first pod is Ready).
    let first = match resolve_all(&entries).await {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(error = %e, "discovery: first resolution failed; retrying");
            PeerSet::new()
        }
    };
    let (tx, rx) = watch::channel(first);
    let interval = interval.max(Duration::from_millis(100));
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match resolve_all(&entries).await {
                Ok(set) => {
                    tx.send_if_modified(|current| {
                        if *current != set {
                            *current = set;
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery: resolution failed; keeping the last set")
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    DiscoveryHandle::new(rx, Some(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_need_host_and_port() {
        assert!(parse_entries(&["127.0.0.1:7946".into()]).is_ok());
        assert_eq!(
            parse_entries(&["[::1]:7946".into()]).unwrap(),
            vec![("::1".to_string(), 7946)]
        );
        for bad in ["127.0.0.1", ":7946", "host:", "host:0", "host:99999"] {
            assert_eq!(
                parse_entries(&[bad.to_string()]),
                Err(DiscoveryError::InvalidAddress(bad.to_string())),
                "{bad}"
            );
        }
    }
}
