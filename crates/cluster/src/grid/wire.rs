//! The grid's RPC messages (methods `<name>.<op>`, JSON bodies: see the module docs for why).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::store::Cursor;
use crate::membership::NodeInfo;
use crate::rpc::RpcError;

/// `get`: values of keys, in request order. `forward`: the receiver may ask the partition's
/// previous holders (while it receives the partition) or the owner it knows of (when it does not
/// hold the partition); forwarded requests are not forwarded again.
#[derive(Serialize, Deserialize)]
pub(crate) struct GetReq<KK> {
    pub keys: Vec<KK>,
    pub forward: bool,
}

/// `put`: entries (key, value, expiry in Unix ms) for the receiver's partitions.
#[derive(Serialize, Deserialize)]
pub(crate) struct PutReq<E> {
    pub entries: Vec<E>,
    pub forward: bool,
}

/// `wait`, `release`: keys.
#[derive(Serialize, Deserialize)]
pub(crate) struct KeysReq<KK> {
    pub keys: Vec<KK>,
}

/// `claim`: keys, and the member claiming them (a coordinator drops the claims of a claimant
/// that is no longer a member, so a dead pod's claims do not block the others).
#[derive(Serialize, Deserialize)]
pub(crate) struct ClaimReq<KK> {
    pub keys: Vec<KK>,
    pub claimant: String,
}

/// The answer to a claim for one key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ClaimAnswer<V> {
    /// The value exists.
    Hit(V),
    /// Absent and now claimed by the caller: compute it and put it (or release it).
    Claimed,
    /// Absent and claimed by another caller: `wait` for it.
    Pending,
}

/// `pull`: the next chunk of a partition.
#[derive(Serialize, Deserialize)]
pub(crate) struct PullReq {
    pub partition: u32,
    pub cursor: Option<Cursor>,
    pub max_entries: usize,
    pub max_bytes: usize,
}

/// The answer to `pull`. `held: false`: the receiver has no complete copy (then no entries);
/// `receiving`: it is itself receiving the partition from a previous holder (ask again later).
#[derive(Serialize, Deserialize)]
pub(crate) struct PullResp<E> {
    pub held: bool,
    #[serde(default)]
    pub receiving: bool,
    pub entries: Vec<E>,
    pub next: Option<Cursor>,
}

/// `push`: a chunk of a partition from a leaving node; `done` on the last.
#[derive(Serialize, Deserialize)]
pub(crate) struct PushReq<E> {
    pub partition: u32,
    pub entries: Vec<E>,
    pub done: bool,
}

/// `leave`, to the leader: `node` hands off and must be excluded from the table.
#[derive(Serialize, Deserialize)]
pub(crate) struct LeaveReq {
    pub node: NodeInfo,
}

/// The answer to `table`: the receiver's table version after it.
#[derive(Serialize, Deserialize)]
pub(crate) struct TableAck {
    pub epoch: u64,
    pub version: u64,
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(value).map_err(|e| RpcError::Protocol(format!("encode: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    serde_json::from_slice(body).map_err(|e| RpcError::Remote(format!("invalid grid message: {e}")))
}
