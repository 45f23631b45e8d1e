//! The vocabulary every Flotilla crate shares.
//!
//! - [`Worker`]: the contract every long-lived component honours. A worker is
//!   asked to stop with [`Worker::kill`] and reports how it ended through
//!   [`Worker::wait`]. The trait is object-safe, so a supervisor such as
//!   `flotilla-depengine` can hold any worker as `Arc<dyn Worker>`.
//! - [`TaskWorker`]: the reusable way to implement that contract: one tokio
//!   task, one [`CancellationToken`](tokio_util::sync::CancellationToken), the
//!   recorded result, and panics turned into [`WorkerError::Panicked`]. It is
//!   juju's tomb done the tokio way.
//! - [`delegate_worker!`]: a type is a `Worker` by way of one of its fields,
//!   the one way handles around a `TaskWorker` implement the contract.
//! - [`EndpointSource`]: the endpoints published under a name, as they
//!   change; one crate publishes (flotilla-publisher), another discovers,
//!   and neither depends on the other.
//! - [`Name`], [`Endpoint`] and [`DeviceId`]: identifiers validated when they
//!   are made, so that code holding one never has to check it again.
//!
//! Architecture invariant: this crate depends on no other Flotilla crate and
//! holds nothing that only one crate needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod delegate;
mod endpoints;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd;
mod ids;
mod panic;
mod task;
mod worker;

pub use endpoints::{EndpointSource, EndpointWatch, EndpointsFuture, SourceError};
pub use ids::{
    DeviceId, Endpoint, IdKind, InvalidId, InvalidIdReason, MAX_DEVICE_ID_LEN, MAX_NAME_LEN, Name,
};
pub use panic::catch_panic;
pub use task::TaskWorker;
pub use worker::{ReportFuture, WaitFuture, Worker, WorkerError, WorkerResult};
