//! Integration tests of the crashgrid node over real HTTP and WebSocket on loopback.

mod harness;
mod node;
