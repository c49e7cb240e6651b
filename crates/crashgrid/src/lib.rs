//! The crashgrid node: HTTP API, WebSocket, dashboard, ingest pipeline, sinks, metrics and the
//! command-line tools. Library crates (`symbolicate`, `stats`, `cluster`) never depend on this
//! crate; this crate wires them together.
#![forbid(unsafe_code)]

pub mod clock;
pub mod clustering;
pub mod config;
pub mod demo;
pub mod fingerprint;
pub mod http;
pub mod loadgen;
pub mod loadgen_nats;
pub mod metrics;
pub mod nats;
pub mod node;
pub mod server;
pub mod shared_cache;
pub mod status;
pub mod up;
