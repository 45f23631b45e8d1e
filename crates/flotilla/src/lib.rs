//! Flotilla: the coordination chores every cluster of tokio services has,
//! as small crates that each do one job, re-exported here behind features.
//!
//! | module | feature | what it is |
//! |---|---|---|
//! | `core_types` | (always) | the `Worker` contract, `TaskWorker`, validated names and ids |
//! | `depengine` | `depengine` | an engine of named manifolds whose workers depend on each other |
//! | `publisher` | `publisher` | keeps (name, server) pairs mounted in a naming backend with a TTL |
//! | `presence` | `presence` | liveness of arbitrary keys: batched pings, watchers, pruning |
//! | `gensync` | `gensync` | replicates a key/value store between peers by generation vectors |
//! | `viewreg` | `viewreg` | a client-side registry of servers, health-checked, filtered by features |
//! | `identity` | `identity` (with `gensync` or `viewreg`) | devices' identities, whom they trust, and TLS between them |
//!
//! `full` enables every crate. `etcd` adds the etcd backend of each enabled
//! crate that has one (building it needs `protoc`): publisher's namespace,
//! viewreg's locator. `tower` adds, with `viewreg`, its registry as a tower
//! `Discover` stream; `grpc` adds, with `viewreg`, its `grpc.health.v1`
//! prober. Each crate is also usable on its own
//! (`flotilla-depengine = "…"`); this facade only saves naming them one by
//! one.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "depengine")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use flotilla::core_types::Worker;
//! use flotilla::depengine::{Engine, EngineConfig};
//!
//! let engine = Engine::start(EngineConfig::default())?;
//! engine.kill();
//! engine.wait().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "depengine"))]
//! # fn main() {}
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use flotilla_core_types as core_types;

#[cfg(feature = "depengine")]
#[cfg_attr(docsrs, doc(cfg(feature = "depengine")))]
pub use flotilla_depengine as depengine;

#[cfg(feature = "publisher")]
#[cfg_attr(docsrs, doc(cfg(feature = "publisher")))]
pub use flotilla_publisher as publisher;

#[cfg(feature = "gensync")]
#[cfg_attr(docsrs, doc(cfg(feature = "gensync")))]
pub use flotilla_gensync as gensync;

#[cfg(feature = "identity")]
#[cfg_attr(docsrs, doc(cfg(feature = "identity")))]
pub use flotilla_identity as identity;

#[cfg(feature = "viewreg")]
#[cfg_attr(docsrs, doc(cfg(feature = "viewreg")))]
pub use flotilla_viewreg as viewreg;

#[cfg(feature = "presence")]
#[cfg_attr(docsrs, doc(cfg(feature = "presence")))]
pub use flotilla_presence as presence;
