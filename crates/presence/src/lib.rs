//! Liveness of arbitrary keys, after juju's presence package: pingers keep
//! keys alive, a batcher turns any number of pings into a few store writes,
//! watchers report each alive/dead transition once with its reason, and a
//! pruner keeps storage proportional to the live keys.
//!
//! # The parts
//!
//! - [`Pinger`]: keeps one key of a scope alive while it runs. Each start is
//!   a new [`Incarnation`], allocated atomically by the store, so a restart
//!   is visible. Killing it writes a tombstone (a graceful stop, seen at the
//!   next load); [`Pinger::abort`] leaves none, as a crash would.
//! - [`PingBatcher`]: gathers pings in a sharded map (`ping` takes
//!   microseconds and never waits) and writes them on a jittered interval as
//!   one [`PingBatch`] per flush: one record per (scope, slot) touched,
//!   never one per key. Pings merge by set union, so a failed flush is
//!   simply retried with the same pings; a failing batcher keeps them and
//!   says so in its [`BatcherStatus`]. Pingers take any [`PingRecorder`], so
//!   a [`DirectRecorder`] can stand in for a batcher.
//! - [`Watcher`]: watches keys of one scope for any number of
//!   [`Subscription`]s: the current state first, then every [`Change`] with
//!   its [`Reason`] (started, restarted, stopped, expired, removed);
//!   [`Watcher::alive`], [`Watcher::alive_many`], [`Watcher::sync`],
//!   [`Watcher::start_sync`] and [`Watcher::wait_alive`]. A slow subscriber
//!   never holds up the watcher or another subscriber: its buffer keeps at
//!   most the latest change per key.
//! - [`Pruner`]: removes what no reader will consult again ([`PruneRule`]).
//! - [`PresenceStore`]: what all of them need from storage;
//!   [`MemoryStore`] is the embedded one; `EtcdStore` (feature `etcd`)
//!   shares the records of many processes through an etcd cluster.
//!
//! Every long-lived part is a [`Worker`](flotilla_core_types::Worker) and
//! stops cleanly: after `wait` returns, its task has ended.
//!
//! # The bounds
//!
//! Time is cut into slots of length `S` ([`Config::slot_length`], 30 s by
//! default, as in juju; down to 1 s). A key is alive while its latest
//! incarnation was born or pinged in the current or the previous slot and
//! has no tombstone. With a watcher load interval `L` (by default the flush
//! interval, 1 s):
//!
//! - a key whose pinger dies is reported dead within `2·S + L`
//!   ([`Config::death_bound`]): 61 s by default, 2.25 s with
//!   [`Config::with_slot_length`] at 1 s (juju's worst case was about
//!   90 s);
//! - a key whose pinger starts is reported alive within one load, `L`;
//! - a key whose pinger keeps running is never reported dead: the config is
//!   refused unless a ping and two jittered flushes fit in a slot.
//!
//! A watcher whose loads fail reports no deaths from the stale state it
//! holds: it is out of touch ([`Touch`], [`Event::OutOfTouch`]) until a load
//! succeeds, and then holds back expirations for two flush intervals, the
//! time batchers need to write the pings they kept (see [`watcher`'s
//! docs](Watcher#out-of-touch)).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use flotilla_core_types::{Name, Worker};
//! use flotilla_presence::{Config, MemoryStore, PingBatcher, Pinger, Watcher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let store = MemoryStore::new();
//! let config = Config::with_slot_length(Duration::from_secs(1));
//! let scope = Name::new("model-1")?;
//! let batcher = PingBatcher::start(store.clone(), config.clone())?;
//! let watcher = Watcher::start(store.clone(), scope.clone(), config.clone())?;
//!
//! let key = Name::new("machine-0")?;
//! let pinger = Pinger::start(store.clone(), batcher.clone(), scope, key.clone(), config).await?;
//! watcher.wait_alive(&key, Duration::from_secs(1)).await?;
//! assert!(watcher.alive(&key).await?);
//!
//! for worker in [&pinger as &dyn Worker, &watcher, &batcher] {
//!     worker.kill();
//!     worker.wait().await?;
//! }
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod batcher;
mod config;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod memory;
mod pinger;
mod pruner;
mod store;
mod watcher;

pub use batcher::{BatcherStatus, DirectRecorder, FlushReport, PingBatcher, PingRecorder};
pub use config::{Clock, Config, MIN_SLOT_LENGTH, Slot};
pub use error::{Error, StoreError};
#[cfg(feature = "etcd")]
#[doc(hidden)]
pub use etcd::decode_any_record;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd::{DEFAULT_PREFIX, EtcdStore, MAX_RECORD_BYTES};
pub use memory::{MemoryStore, StoreCounts};
pub use pinger::Pinger;
pub use pruner::{Pruner, PrunerStatus};
pub use store::{Incarnation, KeyRecord, PingBatch, PresenceStore, PruneReport, PruneRule};
pub use watcher::{Change, Event, Reason, Subscription, Touch, Watcher, WatcherStatus};
