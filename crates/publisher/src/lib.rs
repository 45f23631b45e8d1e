//! Keeps (name, server) pairs mounted in a naming backend with a TTL, so
//! that a server that dies disappears from the namespace by itself.
//!
//! A [`Publisher`] owns a set of names and a set of servers and keeps their
//! cross product mounted in a [`Namespace`]: each mount carries a TTL of one
//! refresh period plus some slack and is refreshed before it lapses; a
//! failed mount or unmount is retried with jittered exponential backoff;
//! stopping unmounts everything. This is Vanadium's publisher, with what
//! users of Eureka, Consul, etcd registries and Curator have asked of such
//! things since:
//!
//! - each mount is refreshed on its own jittered deadline, by up to
//!   [`PublisherConfig::max_in_flight`] concurrent operations, so ten
//!   thousand mounts never lapse because refreshing the others was slow,
//!   and a thousand publishers started together do not refresh in step;
//! - when many operations are due, the mount closest to expiry goes first;
//! - when the backend comes back from an outage, or turns out to have lost
//!   the mounts (a restarted table, an expired or revoked etcd lease),
//!   everything is mounted again at once, not a period later; a mount
//!   someone else deleted from etcd comes back at once too, while a pair
//!   failing on its own keeps its own backoff;
//! - an entry someone else wrote that cannot be read never stops a mount:
//!   it is left alone and reported;
//! - [`Namespace::list`] shows what a backend holds under a prefix;
//! - [`Publisher::status`] and [`Publisher::watch`] say, per pair, what is
//!   wanted, what is confirmed, and what went wrong, and
//!   [`Publisher::wait_mounted`] and [`Publisher::wait_all_mounted`] wait
//!   on that watch until a mount is visible, instead of polling `resolve`;
//! - every mount and unmount has a tracing span and event.
//!
//! # Backends
//!
//! - [`MountTable`], the default: an in-process table whose entries expire
//!   exactly at their deadline, with Vanadium's `replace`,
//!   `serves_mount_table` and `leaf` flags ([`MountFlags`]).
//! - `EtcdNamespace` (feature `etcd`): mounts live under a key prefix on a
//!   real etcd cluster, all of one publisher's mounts on one lease, so the
//!   steady state costs one keep-alive per period however many mounts there
//!   are, plus one watch stream that brings back keys others delete.
//!
//! # Example
//!
//! ```
//! use flotilla_core_types::{Endpoint, Name, Worker};
//! use flotilla_publisher::{MountTable, Namespace, Publisher, PublisherConfig};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> anyhow::Result<()> {
//! let table = MountTable::start();
//! let publisher = Publisher::start(table.clone(), PublisherConfig::default())?;
//! publisher.add_server("10.0.0.7:8080".parse()?).await?;
//! publisher.add_name(Name::new("api")?).await?;
//! publisher.add_name(Name::new("api-v2")?).await?;
//!
//! publisher.wait_all_mounted().await?;
//! let api_v2 = table.resolve(&Name::new("api-v2")?).await?;
//! assert_eq!(api_v2.endpoints(), ["10.0.0.7:8080".parse::<Endpoint>()?]);
//!
//! publisher.stop().await;
//! publisher.wait().await?;
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
mod error;
mod namespace;
mod publisher;
mod status;
mod table;

#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
mod etcd;

pub use config::PublisherConfig;
pub use error::{Error, NamespaceError};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd::{EtcdNamespace, NameChange, NameWatch};
/// The shared vocabulary this crate's API speaks in, re-exported so that
/// users need not name `flotilla-core-types` themselves.
#[doc(no_inline)]
pub use flotilla_core_types::{Endpoint, InvalidId, Name, Worker, WorkerError, WorkerResult};
pub use namespace::{
    ListedName, Listing, MountFlags, MountOutcome, MountReport, MountedServer, Namespace,
    RefreshStyle, RemovedMount, Resolution,
};
pub use publisher::Publisher;
pub use status::{MountState, MountStatus, Phase, Published, PublisherStatus};
pub use table::{MAX_TABLE_TTL, MountTable};
