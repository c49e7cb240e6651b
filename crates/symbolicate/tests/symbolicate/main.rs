//! Integration tests of the `symbolicate` crate: real debug files built here, checked against
//! `llvm-symbolizer`.

mod common;
mod elf;
mod events;
mod formats;
mod pipeline;
mod realcode;
mod realcpp;
mod shared;
mod symcache_reader;
