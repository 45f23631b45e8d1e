//! Integration tests of flotilla-viewreg: every health rule, the passive
//! cap, panic mode, endpoints coming and going, locator failures and the
//! waits, on tokio's paused clock with a scripted prober, and against a
//! model of those rules under random steps; the TCP and
//! diagnostics probers against real loopback sockets; with the `tower`
//! feature, the registry as a tower `Discover` stream under a real p2c
//! balancer; with the `etcd` feature, the etcd locator against real etcd
//! processes and clusters; with `grpc`, the gRPC health prober against
//! real etcd members.

mod diagnostics;
#[cfg(feature = "tower")]
mod discover;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "grpc")]
mod grpc;
mod harness;
mod health;
mod membership;
mod model;
mod panic;
mod passive;
mod published;
mod tcp;
mod waits;
