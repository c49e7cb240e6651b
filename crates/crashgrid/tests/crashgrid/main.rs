//! Integration tests of the crashgrid node over real HTTP and WebSocket on loopback.

mod acked;
mod cli;
mod distributed;
mod election;
mod harness;
mod hostile;
mod kubernetes;
mod nats;
mod node;
mod procs;
mod shared_cache;
