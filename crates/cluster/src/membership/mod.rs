//! Membership: the live member list, by direct heartbeats.
//!
//! # Why direct heartbeats and not gossip
//!
//! A crashgrid cluster is a handful to a few dozen pods of one Deployment, all discovered from
//! one source (static list, DNS or EndpointSlices). At that size every pod pinging every other
//! pod once per `heartbeat_interval` is a few dozen small messages a second; gossip (chitchat,
//! foca/SWIM) earns its complexity at hundreds of nodes or when peers are not all discoverable.
//! Direct heartbeats also answer the question membership exists for — "can *I* reach this pod
//! now?" — first-hand, which is what routing cache requests and partials needs.
//!
//! # Rules
//!
//! - Peers come from discovery (addresses) and from anyone who pings us (so a pod that is not
//!   yet Ready, and so not yet in EndpointSlices or DNS, still joins at once).
//! - A heartbeat answer carries the peer's id and *incarnation* (its start time): a restarted
//!   pod at the same address is a new member.
//! - A peer is a member while it answered a heartbeat, or pinged us, within `failure_timeout`.
//!   Discovered peers are pinged until they answer; learned ones are forgotten after
//!   `failure_timeout` without contact.
//! - A peer that announces it leaves (graceful shutdown) is dropped at once and stays out for
//!   that incarnation, even while discovery still lists it.
//! - The member list (self included) has a version that increases with every change.
//!
//! [`Membership`] is a state machine without I/O or clock reads (instants are passed in); the
//! cluster runtime drives it with real heartbeats.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::discovery::PeerSet;

/// Membership timings.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Time between heartbeats to each peer: 500 ms, so a dead pod is noticed in about 2 s,
    /// well inside the lease duration (a dead leader's partials stop mattering sooner than the
    /// lease expires).
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is no longer a member: 2 s, four heartbeats, so one
    /// lost or slow answer never flaps membership.
    pub failure_timeout: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            heartbeat_interval: Duration::from_millis(500),
            failure_timeout: Duration::from_secs(2),
        }
    }
}

impl MembershipConfig {
    /// `failure_timeout` must exceed two heartbeat intervals (one lost answer must not evict).
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval must be positive".into());
        }
        if self.failure_timeout <= self.heartbeat_interval * 2 {
            return Err(format!(
                "failure_timeout ({:?}) must exceed two heartbeat intervals ({:?})",
                self.failure_timeout,
                self.heartbeat_interval * 2
            ));
        }
        Ok(())
    }
}

/// Who a node is: its id (the pod name), its RPC address and its incarnation (start time in
/// Unix milliseconds; a restart at the same address is a new incarnation), plus free-form
/// metadata the application shares with its peers (crashgrid: the HTTP address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique node id (pod name).
    pub id: String,
    /// Where its RPC server listens, as peers reach it.
    pub addr: SocketAddr,
    /// Start time, Unix milliseconds.
    pub incarnation: u64,
    /// Application metadata, carried in heartbeats.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl NodeInfo {
    /// A node without metadata.
    pub fn new(id: impl Into<String>, addr: SocketAddr, incarnation: u64) -> Self {
        NodeInfo {
            id: id.into(),
            addr,
            incarnation,
            meta: BTreeMap::new(),
        }
    }
}

/// A heartbeat: sent by every node to every peer, answered with the receiver's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender.
    pub from: NodeInfo,
    /// The sender is shutting down and must no longer count as a member.
    pub leaving: bool,
    /// Set when the sender believes it leads: its fencing epoch. Receivers check it against
    /// their [`EpochFence`](crate::EpochFence), so a deposed leader's claims are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<u64>,
}

/// One member of the live list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Identity.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Whether this is the node holding the list.
    pub is_self: bool,
}

/// The live member list at one version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberList {
    /// Increases with every change of the list.
    pub version: u64,
    /// Members sorted by id, this node included.
    pub members: Vec<Member>,
}

impl MemberList {
    /// The member with this id.
    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.info.id == id)
    }

    /// The ids, sorted.
    pub fn ids(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.info.id.as_str()).collect()
    }
}

#[derive(Debug)]
struct Peer {
    /// Who answered at this address last (unknown until the first answer).
    info: Option<NodeInfo>,
    last_contact: Option<Instant>,
    next_ping: Instant,
    discovered: bool,
    /// Incarnation that announced it leaves.
    left: Option<u64>,
}

/// The membership state machine of one node.
#[derive(Debug)]
pub struct Membership {
    me: NodeInfo,
    config: MembershipConfig,
    peers: BTreeMap<SocketAddr, Peer>,
    list: MemberList,
    leaving: bool,
}

impl Membership {
    /// Membership of node `me`; the list starts with `me` alone, at version 1.
    pub fn new(me: NodeInfo, config: MembershipConfig) -> Self {
        let list = MemberList {
            version: 1,
            members: vec![Member {
                info: me.clone(),
                is_self: true,
            }],
        };
        Membership {
            me,
            config,
            peers: BTreeMap::new(),
            list,
            leaving: false,
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// The current list.
    pub fn list(&self) -> &MemberList {
        &self.list
    }

    /// The heartbeat this node sends (and answers with).
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            from: self.me.clone(),
            leaving: self.leaving,
            leader_epoch: None,
        }
    }

    /// From now on this node announces that it leaves (graceful shutdown).
    pub fn leave(&mut self) {
        self.leaving = true;
    }

    /// Whether [`leave`](Self::leave) was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Discovery's current set. New addresses are pinged at once; addresses no longer
    /// discovered stay while they keep answering (discovery may lag, and a pod being
    /// terminated still holds data it hands off).
    pub fn set_discovered(&mut self, peers: &PeerSet, now: Instant) {
        for p in self.peers.values_mut() {
            p.discovered = false;
        }
        for addr in peers.iter().filter(|a| **a != self.me.addr) {
            let peer = self.peers.entry(*addr).or_insert(Peer {
                info: None,
                last_contact: None,
                next_ping: now,
                discovered: true,
                left: None,
            });
            peer.discovered = true;
        }
    }

    /// Addresses whose heartbeat is due at `now` (each is then scheduled one interval later).
    pub fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let interval = self.config.heartbeat_interval;
        self.peers
            .iter_mut()
            .filter(|(_, p)| p.next_ping <= now)
            .map(|(addr, p)| {
                p.next_ping = now + interval;
                *addr
            })
            .collect()
    }

    /// When the next heartbeat is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.peers.values().map(|p| p.next_ping).min()
    }

    /// A heartbeat answered by (`Ok`) or failed to (`Err`) the peer at `addr`.
    pub fn on_answer(&mut self, addr: SocketAddr, answer: Result<Heartbeat, ()>, now: Instant) {
        match answer {
            Ok(hb) => self.contact(addr, hb, now),
            Err(()) => {
                // Failure is judged by silence in `tick`; nothing to do now.
            }
        }
    }

    /// A heartbeat received from a peer (it pinged us). Returns our answer.
    pub fn on_heartbeat(&mut self, hb: Heartbeat, now: Instant) -> Heartbeat {
        let addr = hb.from.addr;
        self.contact(addr, hb, now);
        self.heartbeat()
    }

    fn contact(&mut self, addr: SocketAddr, hb: Heartbeat, now: Instant) {
        if hb.from.id == self.me.id || addr == self.me.addr {
            return;
        }
        let peer = self.peers.entry(addr).or_insert(Peer {
            info: None,
            last_contact: None,
            next_ping: now + self.config.heartbeat_interval,
            discovered: false,
            left: None,
        });
        if peer.info.as_ref().map(|i| i.incarnation) != Some(hb.from.incarnation) {
            peer.left = None;
        }
        if hb.leaving {
            peer.left = Some(hb.from.incarnation);
        }
        peer.info = Some(hb.from);
        peer.last_contact = Some(now);
        self.rebuild(now);
    }

    /// Advances time: forgets silent peers, and rebuilds the list. Returns the new list if it
    /// changed.
    pub fn tick(&mut self, now: Instant) -> Option<&MemberList> {
        let timeout = self.config.failure_timeout;
        self.peers.retain(|_, p| {
            p.discovered
                || p.last_contact
                    .is_some_and(|t| now.duration_since(t) < timeout)
        });
        if self.rebuild(now) {
            Some(&self.list)
        } else {
            None
        }
    }

    fn rebuild(&mut self, now: Instant) -> bool {
        let timeout = self.config.failure_timeout;
        let mut members: BTreeMap<String, Member> = BTreeMap::new();
        members.insert(
            self.me.id.clone(),
            Member {
                info: self.me.clone(),
                is_self: true,
            },
        );
        for p in self.peers.values() {
            let (Some(info), Some(seen)) = (&p.info, p.last_contact) else {
                continue;
            };
            if now.duration_since(seen) >= timeout || p.left == Some(info.incarnation) {
                continue;
            }
            // Two addresses claiming one id (a pod restarted on a new IP before the old entry
            // timed out): the newer incarnation wins.
            match members.get(&info.id) {
                Some(m) if m.is_self || m.info.incarnation >= info.incarnation => {}
                _ => {
                    members.insert(
                        info.id.clone(),
                        Member {
                            info: info.clone(),
                            is_self: false,
                        },
                    );
                }
            }
        }
        let members: Vec<Member> = members.into_values().collect();
        if members != self.list.members {
            self.list = MemberList {
                version: self.list.version + 1,
                members,
            };
            true
        } else {
            false
        }
    }

    /// Discovered addresses that do not answer (no contact within `failure_timeout`): shown
    /// to operators as unhealthy peers.
    pub fn unreachable(&self, now: Instant) -> Vec<SocketAddr> {
        let timeout = self.config.failure_timeout;
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.discovered
                    && p.left.is_none()
                    && p.last_contact
                        .is_none_or(|t| now.duration_since(t) >= timeout)
            })
            .map(|(a, _)| *a)
            .collect()
    }

    /// Marks a member as gone at once (it told us it leaves, or the runtime knows it died).
    pub fn remove(&mut self, id: &str, now: Instant) {
        for p in self.peers.values_mut() {
            if let Some(info) = p.info.as_ref().filter(|i| i.id == id) {
                p.left = Some(info.incarnation);
            }
        }
        self.rebuild(now);
    }
}
