//! Peer-to-peer replication of a key/value store by generation vectors,
//! after Veyron's sync daemon.
//!
//! Every local mutation becomes a record in this device's log, in the open
//! generation. A [`GenVector`] says, per device, the newest generation a
//! replica holds. To sync, an initiator sends its vector to a peer, which
//! seals its open generation and streams exactly the records the vector
//! does not cover, oldest first. The initiator applies them through a DAG of
//! versions that tells updates from conflicts, and settles conflicts with a
//! pluggable [`Resolver`] (last writer wins by default), writing merge
//! versions whose ids every replica derives alike. A round becomes visible
//! all at once, in its last transaction, or not at all.
//!
//! - [`Replica`]: put, get, delete, scan, watch; durable on redb
//!   ([`Storage`]), or in memory for tests. [`Replica::history`] and
//!   [`Replica::devices`] show a key's versions and what is known of each
//!   peer, to explain a resolution or fill a status page.
//! - [`sync_with`] and [`sync_with_endpoint`]: one round as initiator;
//!   [`Responder`]: serves rounds over TCP; [`Initiator`]: rounds with a
//!   set of peers ([`Peers`]: fixed, or from a sync or async source) on an
//!   interval.
//! - Peers are authenticated: every connection is secured by a
//!   [`Transport`], TLS 1.3 where both sides prove by a certificate which
//!   device they are and accept only devices their [`Trust`] names (each
//!   pinned by its key, or vouched for by a cluster CA). A peer that is
//!   not trusted, or whose hello claims another device than its
//!   certificate, is refused before anything it sent is read.
//!   docs/threat-model.md says what a trusted peer can still do.
//! - [`wire`]: the frames and messages (see docs/gensync-wire.md).
//! - [`Replica::collect_garbage`] and the [`Collector`] worker: the log
//!   records and DAG versions every known device holds are removed (what a
//!   device holds is learned in rounds with it, or relayed by peers that
//!   met it); a device silent for longer than the eviction time stops
//!   holding that back, and gets what the log still has (every current
//!   value) when it returns.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use flotilla_core_types::{DeviceId, Worker};
//! use flotilla_gensync::{
//!     Identity, Replica, ReplicaConfig, Responder, Storage, SyncConfig, Transport, Trust,
//!     sync_with,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let (laptop_id, phone_id) = (DeviceId::new("laptop")?, DeviceId::new("phone")?);
//! // Each device has an identity (`Identity::load_or_create` keeps one in a
//! // directory); both trust the two.
//! let (laptop_key, phone_key) = (Identity::generate(&laptop_id)?, Identity::generate(&phone_id)?);
//! let trust = Arc::new(Trust::of([&laptop_key, &phone_key]));
//!
//! let laptop = Replica::open(laptop_id, Storage::in_memory()?, ReplicaConfig::default())?;
//! let phone = Replica::open(phone_id, Storage::in_memory()?, ReplicaConfig::default())?;
//! laptop.put(b"todo/1".to_vec(), b"buy milk".to_vec()).await?;
//!
//! // The laptop serves; the phone fetches what it lacks.
//! let address = "127.0.0.1:0".parse()?;
//! let serving = Transport::tls(&laptop_key, Arc::clone(&trust))?;
//! let responder = Responder::bind(laptop.clone(), serving, address, SyncConfig::default()).await?;
//! let dialling = Transport::tls(&phone_key, trust)?;
//! sync_with(&phone, &dialling, responder.local_addr(), &SyncConfig::default()).await?;
//! assert_eq!(phone.get(b"todo/1")?, Some(b"buy milk".to_vec()));
//!
//! responder.kill();
//! responder.wait().await.expect("clean stop");
//! # Ok(())
//! # }
//! ```

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod error;
mod model;
mod replay;
mod replica;
mod resolver;
mod storage;
mod sync;
pub mod wire;

pub use error::Error;
/// The shared vocabulary this crate's API speaks in, re-exported so that
/// users need not name `flotilla-core-types` themselves.
#[doc(no_inline)]
pub use flotilla_core_types::{DeviceId, Endpoint, InvalidId, Worker, WorkerError, WorkerResult};
/// The transport and identities a sync round is secured with, re-exported
/// so that users need not name `flotilla-identity` themselves.
#[doc(no_inline)]
pub use flotilla_identity::{Identity, Secured, Transport, TransportError, Trust, TrustError};
pub use model::{GenVector, LogRecord, VersionId};
/// The storage engine, re-exported because [`Error::Storage`] carries its
/// errors (and this crate's `From` impls name them).
#[doc(no_inline)]
pub use redb;
pub use replay::RoundStats;
pub use replica::{
    Change, DeviceInfo, Entry, MAX_KEY_LEN, MAX_VALUE_LEN, Origin, Replica, ReplicaConfig,
    VersionInfo, Write,
};
pub use resolver::{Conflict, LastWriterWins, Resolution, Resolver, Side};
pub use storage::{DEFAULT_CACHE_BYTES, GcStats, Storage};
pub use sync::{
    Collector, Initiator, Peers, PeersError, PeersFuture, Responder, SyncConfig, initiate_over,
    respond_over, sync_with, sync_with_endpoint,
};
