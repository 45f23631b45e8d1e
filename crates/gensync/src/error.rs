//! [`Error`]: everything a replica and its sync can fail with.

use std::path::Path;
use std::sync::Arc;

use flotilla_core_types::{DeviceId, Endpoint, InvalidId, WorkerError};
use flotilla_identity::{TransportError, TrustError};

use crate::VersionId;
use crate::wire::WireError;

/// A replica operation or a sync round failed. Cheap to clone (sources are
/// shared), so that one round's failure can be reported to several callers.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key or value is larger than the replica accepts: in a local
    /// write (nothing is written), in a record a peer sent, or in a merge
    /// a [`Resolver`](crate::Resolver) made (the round ends, and nothing of
    /// it is stored).
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// "key" or "value".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The store failed (I/O, or a corrupted file).
    #[error("storage failed{}: {source}", on_file(.path.as_deref()))]
    Storage {
        /// The store's file; `None` for a store in memory.
        path: Option<Arc<Path>>,
        /// What redb reported.
        #[source]
        source: Arc<redb::Error>,
    },
    /// The store's file is open already, by another [`Storage`](crate::Storage)
    /// in this process or by another process: a replica that has not
    /// been waited for, or two replicas given one file.
    #[error("the store {} is open already (it is locked by another open of it)", .path.display())]
    Locked {
        /// The file.
        path: Arc<Path>,
    },
    /// Something stored does not decode: the file was written by something
    /// else, or damaged.
    #[error("stored {what} does not decode: {source}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it does not decode.
        #[source]
        source: postcard::Error,
    },
    /// The peer sent something that is not a valid frame or message.
    #[error("bad input from the peer: {0}")]
    Wire(Arc<WireError>),
    /// The peer claimed a device id it may not use.
    #[error("peer claims device {claimed}: {reason}")]
    Impostor {
        /// The id it claimed.
        claimed: DeviceId,
        /// Why it may not.
        reason: &'static str,
    },
    /// The peer proved, by its certificate, to be one device, and claimed
    /// in its hello to be another: refused before anything it sent is read.
    #[error("peer claims device {claimed}, but its certificate names {certified}")]
    NotCertified {
        /// The id it claimed.
        claimed: DeviceId,
        /// The id its certificate names, which the handshake checked.
        certified: DeviceId,
    },
    /// The connection could not be secured: this side refused the peer
    /// ([`Error::refusal`] says why), the peer refused this side, or it
    /// does not speak TLS.
    #[error("securing the connection{} failed: {source}", with_peer(.peer.as_ref()))]
    Handshake {
        /// The peer's address, if known.
        peer: Option<std::net::SocketAddr>,
        /// What failed.
        #[source]
        source: Arc<TransportError>,
    },
    /// The transport presents another device than the replica's own: each
    /// replica syncs under its own identity.
    #[error("the transport presents device {identity}, but the replica is {replica}")]
    IdentityMismatch {
        /// The replica's device.
        replica: DeviceId,
        /// The device the transport's identity names.
        identity: DeviceId,
    },
    /// The peer sent a message out of turn.
    #[error("protocol violation: expected {expected}, got {got}")]
    Protocol {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// A record's parent version is unknown: the peer sent a version before
    /// what it descends from.
    #[error("record {version} names parent {parent}, which this replica does not have")]
    MissingParent {
        /// The record's version.
        version: VersionId,
        /// The missing parent.
        parent: VersionId,
    },
    /// The peer's vector claims a generation it did not send.
    #[error("peer claims generation {generation} of {device} but sent none of it")]
    UnbackedClaim {
        /// The device.
        device: DeviceId,
        /// The generation.
        generation: u64,
    },
    /// The peer sent a record its own vector does not cover.
    #[error("peer sent generation {generation} of {device}, beyond what its vector claims")]
    UnclaimedRecord {
        /// The device.
        device: DeviceId,
        /// The generation.
        generation: u64,
    },
    /// The peer ended the round, saying why.
    #[error("peer aborted the round: {0}")]
    PeerAborted(String),
    /// The connection closed before the round was done.
    #[error("the peer closed the connection before the round was done")]
    Disconnected,
    /// Connecting to the peer failed.
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        /// The address.
        peer: std::net::SocketAddr,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A sync round is under way on this replica, so garbage collection
    /// did not start (it would wait behind the round, which may be waiting
    /// for a slow peer): try again later. The [`Collector`](crate::Collector)
    /// does so at its next interval.
    #[error("a sync round is under way; garbage collection did not start")]
    RoundUnderway,
    /// The store was written by another device: each replica has a store of
    /// its own, and opening one as another device would mix two logs.
    #[error("the store{} belongs to device {stored}, not to {opened_as}", on_file(.path.as_deref()))]
    ForeignStore {
        /// The store's file; `None` for a store in memory.
        path: Option<Arc<Path>>,
        /// The device whose store it is.
        stored: DeviceId,
        /// The device it was opened as.
        opened_as: DeviceId,
    },
    /// An id or an endpoint did not validate.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// A peer's host name did not resolve to any address.
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve {
        /// The endpoint.
        endpoint: Endpoint,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The replica is closed: it was killed (no new work starts), or its
    /// `wait` has returned (its store is closed, and reads fail too).
    #[error("the replica is closed")]
    Closed,
}

impl Error {
    /// Why this side refused its peer's certificate, if that is what
    /// ended the round.
    pub fn refusal(&self) -> Option<&TrustError> {
        match self {
            Error::Handshake { source, .. } => source.refusal(),
            _ => None,
        }
    }

    /// This error, naming `path` if it is a storage error that names no
    /// file yet.
    pub(crate) fn located(self, path: Option<&Arc<Path>>) -> Error {
        match self {
            Error::Storage { path: None, source } => Error::Storage {
                path: path.cloned(),
                source,
            },
            other => other,
        }
    }
}

/// So that `?` turns this crate's errors into the error a worker, or a
/// supervisor's start function, ends with; the original stays reachable
/// with [`WorkerError::downcast_ref`].
impl From<Error> for WorkerError {
    fn from(error: Error) -> Self {
        WorkerError::new(error)
    }
}

/// As for [`Error`]: a decode error of [`wire`](crate::wire) ends a worker
/// with `?` too.
impl From<WireError> for WorkerError {
    fn from(error: WireError) -> Self {
        WorkerError::new(error)
    }
}

/// " with ADDRESS", or nothing when the address is not known.
fn with_peer(peer: Option<&std::net::SocketAddr>) -> String {
    peer.map(|peer| format!(" with {peer}")).unwrap_or_default()
}

/// " on PATH", or nothing for a store in memory.
fn on_file(path: Option<&Path>) -> String {
    path.map(|path| format!(" on {}", path.display()))
        .unwrap_or_default()
}

impl From<WireError> for Error {
    fn from(error: WireError) -> Self {
        Error::Wire(Arc::new(error))
    }
}

macro_rules! storage_error {
    ($($source:ty),*) => {$(
        impl From<$source> for Error {
            fn from(error: $source) -> Self {
                match redb::Error::from(error) {
                    // A read that outlived its replica's `wait`.
                    redb::Error::DatabaseClosed => Error::Closed,
                    source => Error::Storage {
                        path: None,
                        source: Arc::new(source),
                    },
                }
            }
        }
    )*};
}

storage_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
