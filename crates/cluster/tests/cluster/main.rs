//! The one integration-test binary of `cluster`: each module covers one part of the kit.

mod election;
mod grid;
mod kube;
mod membership;
mod rpc;
