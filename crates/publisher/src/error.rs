//! The crate's errors: [`Error`] for the publisher's own operations and
//! [`NamespaceError`] for what a naming backend can answer.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core_types::{Endpoint, InvalidId, Name, WorkerError};

use crate::MountFlags;

/// A publisher operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting in [`PublisherConfig`](crate::PublisherConfig) is out of
    /// range, or the backend cannot honour the TTL it implies.
    #[error("invalid publisher config: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A name or server given as text did not validate.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The publisher has been stopped; nothing more will be mounted.
    #[error("the publisher is stopped")]
    Stopped,
    /// Connecting to etcd failed, or etcd does not let this client use
    /// the prefix ([`EtcdNamespace::connect_with`](crate::EtcdNamespace::connect_with)).
    #[cfg(feature = "etcd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
    #[error(transparent)]
    Etcd(#[from] flotilla_core_types::etcd::EtcdConnectError),
    /// The pair waited for is not published: its name or its server was
    /// never added, or was removed while
    /// [`wait_mounted`](crate::Publisher::wait_mounted) or
    /// [`wait_all_mounted`](crate::Publisher::wait_all_mounted) waited.
    #[error("{server} is not published under {name}")]
    NotPublished {
        /// The name.
        name: Name,
        /// The server.
        server: Endpoint,
    },
    /// The pair waited for will not be mounted: another server's `replace`
    /// mount under the name took its place, and the publisher leaves it so
    /// (see [`MountState::Replaced`](crate::MountState::Replaced)).
    #[error("another server's replace mount under {name} took the place of {server}")]
    Replaced {
        /// The name.
        name: Name,
        /// The server.
        server: Endpoint,
    },
    /// Stopping could not unmount everything; what it could not unmount
    /// expires by its TTL.
    #[error("stopping left {failed} mount(s) in place (they expire by their TTL): {first}")]
    UnmountIncomplete {
        /// How many unmounts (or the session release) failed.
        failed: usize,
        /// The first failure.
        first: NamespaceError,
    },
}

/// What a naming backend answered instead of doing what was asked.
///
/// Cheap to clone (sources are shared), because the publisher keeps the last
/// one of every mount in its status.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// The backend could not be reached or did not answer.
    #[error("naming backend unavailable: {source}")]
    Unavailable {
        /// What the transport said.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// The operation took longer than the publisher allows.
    #[error("naming backend did not answer within {}", ShownDuration(*.after))]
    Timeout {
        /// The limit.
        after: Duration,
    },
    /// The backend lost this publisher's mounts: its session (lease) expired
    /// or was revoked, or the table was reset.
    #[error("the naming backend lost our mounts: {reason}")]
    EntriesLost {
        /// How the loss showed.
        reason: String,
    },
    /// A mount's flags disagree with those of servers already mounted under
    /// the name (mount with `replace` to change them).
    #[error(
        "cannot mount {server} under {name} with {requested}: servers mounted there have {existing}"
    )]
    FlagsConflict {
        /// The name.
        name: Name,
        /// The server being mounted.
        server: Endpoint,
        /// The flags of the servers already there.
        existing: MountFlags,
        /// The flags asked for.
        requested: MountFlags,
    },
    /// The backend cannot honour this TTL.
    #[error("invalid TTL {}: {reason}", ShownDuration(*.ttl))]
    InvalidTtl {
        /// The TTL.
        ttl: Duration,
        /// Why not.
        reason: String,
    },
    /// Nothing is mounted under the name or any ancestor that resolves
    /// beneath itself.
    #[error("nothing is mounted under {name}")]
    NotFound {
        /// The name.
        name: Name,
    },
    /// The backend answered with data this crate cannot read (someone else
    /// wrote under our prefix).
    #[error("unreadable entry at key {key} in the naming backend: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend refused the operation for a reason of its own.
    #[error("naming backend refused the operation: {source}")]
    Rejected {
        /// What it said.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// The backend has been shut down.
    #[error("the naming backend is shut down")]
    Closed,
}

impl NamespaceError {
    /// A [`NamespaceError::Unavailable`] from any transport error.
    pub fn unavailable(source: impl StdError + Send + Sync + 'static) -> Self {
        NamespaceError::Unavailable {
            source: Arc::new(source),
        }
    }

    /// A [`NamespaceError::Rejected`] from any backend error.
    pub fn rejected(source: impl StdError + Send + Sync + 'static) -> Self {
        NamespaceError::Rejected {
            source: Arc::new(source),
        }
    }

    /// Whether the backend lost this publisher's mounts, so that everything
    /// must be mounted again.
    pub fn is_entries_lost(&self) -> bool {
        matches!(self, NamespaceError::EntriesLost { .. })
    }

    /// Whether an operation that failed with this error may still have
    /// taken effect: after a timeout or a broken connection the request may
    /// have landed, so a mount that failed so must still be unmounted. Every
    /// other error is an answer from the backend that it did not do it.
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(
            self,
            NamespaceError::Unavailable { .. } | NamespaceError::Timeout { .. }
        )
    }
}

/// A publisher error as a worker's error, so that `?` on a publisher call
/// works in a function returning [`WorkerResult`](crate::WorkerResult) or
/// `Result<_, WorkerError>`, such as a `flotilla-depengine` start function.
/// The error stays reachable with [`WorkerError::downcast_ref`].
impl From<Error> for WorkerError {
    fn from(error: Error) -> WorkerError {
        WorkerError::new(error)
    }
}

/// A backend's error as a worker's error, as for [`Error`]: `?` on a
/// [`Namespace`](crate::Namespace) call works where a `WorkerError` is
/// expected.
impl From<NamespaceError> for WorkerError {
    fn from(error: NamespaceError) -> WorkerError {
        WorkerError::new(error)
    }
}

/// A duration as a person reads it in a message: `10 s`, `250 ms`, `365
/// days`, in the largest unit that shows it exactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShownDuration(pub(crate) Duration);

impl fmt::Display for ShownDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DAY_SECS: u64 = 24 * 60 * 60;
        let duration = self.0;
        let (secs, nanos) = (duration.as_secs(), duration.subsec_nanos());
        match (secs, nanos) {
            (0, 0) => f.write_str("0 s"),
            (secs, 0) if secs % DAY_SECS == 0 => {
                let days = secs / DAY_SECS;
                write!(f, "{days} day{}", if days == 1 { "" } else { "s" })
            }
            (secs, 0) => write!(f, "{secs} s"),
            (_, nanos) if nanos % 1_000_000 == 0 => write!(f, "{} ms", duration.as_millis()),
            (_, nanos) if nanos % 1_000 == 0 => write!(f, "{} µs", duration.as_micros()),
            _ => write!(f, "{} ns", duration.as_nanos()),
        }
    }
}
