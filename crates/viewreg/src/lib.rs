//! A client-side registry of the servers of a cluster, after Akutan's
//! viewreg: discovered by a [`Locator`], health-checked by a [`Prober`],
//! filtered by features (a [`FeatureSet`] of your own) and [`Partition`],
//! and read instantly from immutable snapshots.
//!
//! A [`Registry`] is a long-lived worker. Its queries
//! ([`all_views`](Registry::all_views),
//! [`healthy_views`](Registry::healthy_views),
//! [`summary`](Registry::summary), [`dump`](Registry::dump)) read the
//! current [`Snapshot`] through `arc-swap`: no lock, no message, never the
//! network. Each snapshot has a distinct, increasing [`ChangeStamp`], and
//! [`wait_for_change`](Registry::wait_for_change) and
//! [`wait_for_stable`](Registry::wait_for_stable) wait on them, bounded by a
//! [`WaitLimit`] (a deadline, a cancellation, or both), each a typed error.
//! A [`View`] carries the endpoint, features, partition, health, when it
//! last changed, and your client for that server, made once per endpoint
//! by your connector and dropped when the endpoint leaves.
//!
//! Locators: [`StaticLocator`] (a fixed list), [`StreamLocator`] (any
//! stream of endpoint sets), [`NameLocator`] (a name's servers from a
//! core-types `EndpointSource`, such as flotilla-publisher's), and, with the
//! `etcd` feature, `EtcdLocator`: an etcd key prefix listed in pages at one
//! revision, then watched from the revision after, resumed from the last
//! revision seen after a disconnect and listed again after a compaction
//! (`EtcdLocator::for_published_name` follows the keys flotilla-publisher
//! writes for a name).
//!
//! Probers: [`TcpProber`] (a connection opens), [`DiagnosticsProber`] (the
//! server's [`DiagnosticsServer`] answers its status, features and
//! partition over the flotilla [diagnostics] protocol, over TLS between
//! devices that trust each other: a server that does not prove to be one
//! is never healthy), with the `grpc`
//! feature `GrpcProber` (the standard `grpc.health.v1` Check, which etcd
//! members answer too), or your own [`Prober`].
//!
//! # Health rules
//!
//! Each endpoint is checked on its own schedule: every
//! [`probe_interval`](RegistryConfig::probe_interval) (5 s), each delay
//! shortened by a random fraction of up to
//! [`probe_jitter`](RegistryConfig::probe_jitter) (0.2), each check bounded
//! by [`probe_timeout`](RegistryConfig::probe_timeout) (1 s). Checks run
//! concurrently, so one that hangs costs only its own endpoint a failure.
//! - A healthy view turns unhealthy after
//!   [`unhealthy_threshold`](RegistryConfig::unhealthy_threshold) (3)
//!   consecutive failures, and an unhealthy one healthy after
//!   [`healthy_threshold`](RegistryConfig::healthy_threshold) (2)
//!   consecutive successes. A server that dies turns unhealthy within
//!   `unhealthy_threshold × (probe_interval + probe_timeout)`, 18 s with the
//!   defaults.
//! - While an unhealthy view's checks keep failing, each failure multiplies
//!   the delay before the next by [`backoff_factor`](RegistryConfig::backoff_factor)
//!   (2), up to [`max_backoff`](RegistryConfig::max_backoff) (60 s); a
//!   success brings it back to the interval.
//! - [`Registry::report_failure`] counts a failed request as a failed check
//!   (passive outlier detection), capped as below.
//! - The snapshot is in panic mode ([`Snapshot::is_panic`]) while fewer
//!   than [`panic_threshold`](RegistryConfig::panic_threshold) (0.5) of the
//!   views are healthy.
//! - An endpoint that leaves the locator is dropped at once, with its
//!   client, its pending and its running check; one that comes back starts
//!   afresh, unknown, with a new client.
//!
//! # Choices
//!
//! The systems this learns from answer these differently; this crate's
//! answers, each held by a test:
//!
//! | question | answer here | why |
//! |---|---|---|
//! | a dropped connection between checks | not seen by the registry (it does not own your connections); you [report](Registry::report_failure) it and it counts as one failure, as in Envoy, not unhealthy at once as in Akutan | one reset must not eject a server; a dead one is caught within the bound above |
//! | a newly discovered view | [`Health::Unknown`] until its first check; healthy after one success; unhealthy after one failure | a fresh registry serves within one check; a view never seen healthy has no record to protect |
//! | an explicit "not serving" answer | unhealthy at once ([`ProbeOutcome::NotServing`]) | a server draining says so to be removed now, not after three checks |
//! | what an unhealthy view keeps | its last known features and partition (shown by [`Registry::all_views`], and in panic mode) plus why it is unhealthy ([`View::last_error`]) | for debugging and for panic mode; [`Registry::healthy_views`] skips it anyway |
//! | a server without the health service | an ordinary failed check ([`ProbeOutcome::NoHealthService`]), shown as such | it cannot say what it provides; it is not taken as healthy |
//! | a burst of client errors | reports may hold at most [`max_passive_ejection`](RegistryConfig::max_passive_ejection) (0.1) of the views unhealthy, at least one, never the last healthy one; beyond that they still count, and the next failed check decides | a client bug must not empty the healthy set |
//! | panic mode in `healthy_views` | returns every view providing the features, healthy or not (as Envoy routes to all); [`View::is_healthy`] tells them apart | spreading load beats crushing the few healthy servers left; set `panic_threshold` to 0 to turn it off |
//! | an empty registry | not a panic: no views, `healthy_views` is empty | there is nothing to spread load over |
//! | a locator error | the last set is kept and checked as before, the error shown in [`Summary::locator_error`], and the locator asked again after a doubling delay ([`locator_retry_delay`](RegistryConfig::locator_retry_delay) 1 s to 30 s); a locator that ends leaves its last set for good | discovery trouble must not take healthy servers away, nor the process down (Akutan crashed) |
//!
//! # Balancing with tower (feature `tower`)
//!
//! `Registry::discover` offers what [`healthy_views`](Registry::healthy_views)
//! lists as a tower `Discover` stream, a `ViewDiscover`: keyed by
//! endpoint, carrying each view's client (make it a tower `Service`), so
//! that tower's balancers (`tower::balance::p2c::Balance`) route over the
//! healthy servers. It inserts what is listed at its first poll, then
//! yields each snapshot's difference; a client replaced (the endpoint left
//! and came back) is a removal then an insertion; in panic mode it follows
//! `healthy_views` over every view; when the registry stops it removes
//! everything and ends with [`Error::Stopped`]. It runs no task. The
//! choices are spelled out on `ViewDiscover`.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeSet;
//! use std::time::Duration;
//! use flotilla_core_types::{Endpoint, Worker};
//! use flotilla_viewreg::{Registry, RegistryConfig, StaticLocator, TcpProber, WaitLimit};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server: Endpoint = listener.local_addr()?.try_into()?;
//! let registry = Registry::start(
//!     StaticLocator::new([server.clone()]),
//!     TcpProber::<BTreeSet<&str>>::new(),
//!     |endpoint: &Endpoint| endpoint.clone(),
//!     RegistryConfig::default(),
//! )?;
//! let settled = registry
//!     .wait_for_stable(Duration::from_millis(50), &WaitLimit::timeout(Duration::from_secs(10)))
//!     .await?;
//! println!("{}", settled.dump());
//! registry.kill();
//! registry.wait().await?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod actor;
mod config;
pub mod diagnostics;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
mod discover;
mod error;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
mod etcd;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
mod grpc;
mod health;
mod index;
mod locator;
mod prober;
mod registry;
mod view;

pub use config::RegistryConfig;
pub use diagnostics::{
    DiagnosticsConfig, DiagnosticsProber, DiagnosticsServer, DiagnosticsStatus, ask_status_over,
    serve_diagnostics_over,
};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use discover::ViewDiscover;
pub use error::{Error, LocatorError, ProbeError};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd::{EndpointFrom, EtcdLocator, EtcdLocatorStatus};
/// The shared vocabulary this crate's API speaks in, re-exported so that
/// users need not name `flotilla-core-types` themselves.
#[doc(no_inline)]
pub use flotilla_core_types::{Endpoint, Worker, WorkerError, WorkerResult};
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub use grpc::GrpcProber;
pub use locator::{EndpointSet, Locator, NameLocator, StaticLocator, StreamLocator};
pub use prober::{ProbeOutcome, Prober, TcpProber};
pub use registry::{Registry, WaitLimit};
pub use view::{
    ChangeStamp, FeatureSet, Health, HealthyIter, HealthyViews, Partition, Snapshot, Summary, View,
};
