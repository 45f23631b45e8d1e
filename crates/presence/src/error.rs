//! The crate's errors: [`Error`] for what presence's parts answer, and
//! [`StoreError`] for what a [`PresenceStore`](crate::PresenceStore) can
//! fail with.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core_types::{Name, WorkerError};

/// A presence operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting in [`Config`](crate::Config) is out of range.
    #[error("invalid presence config: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The part asked has stopped (its worker ended).
    #[error("the presence {part} is stopped")]
    Stopped {
        /// Which part: "batcher", "watcher", "pinger" or "pruner".
        part: &'static str,
    },
    /// [`Watcher::wait_alive`](crate::Watcher::wait_alive) gave up.
    #[error("key {key} was not reported alive within {timeout:?}")]
    Timeout {
        /// The key waited for.
        key: Name,
        /// How long the wait lasted.
        timeout: Duration,
    },
}

/// A presence error as a worker's error, so that `?` on a presence call
/// works in a function returning `Result<_, WorkerError>`, such as a
/// `flotilla-depengine` start function.
impl From<Error> for WorkerError {
    fn from(error: Error) -> WorkerError {
        WorkerError::new(error)
    }
}

/// A store error as a worker's error (see [`Error`]'s conversion).
impl From<StoreError> for WorkerError {
    fn from(error: StoreError) -> WorkerError {
        WorkerError::new(Error::Store(error))
    }
}

/// What a store answered instead of doing what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, or did not answer in time.
    #[error("presence store unavailable during {operation}: {source}")]
    Unavailable {
        /// The operation: "begin", "write_pings", "mark_stopped", "load",
        /// "prune" or "remove_scope".
        operation: &'static str,
        /// What the transport said.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// The store holds something it cannot read (written by another
    /// version, or damaged).
    #[error("presence store holds an unreadable record at {location}: {reason}")]
    Corrupt {
        /// Where: a key or record name.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A record would be larger than the store accepts (etcd's request
    /// limit): too many pings of one scope and slot for one writer.
    #[error("presence record {location} would be {bytes} bytes, more than the {limit} allowed")]
    RecordTooLarge {
        /// The record's key.
        location: String,
        /// Its size.
        bytes: usize,
        /// The most the store takes.
        limit: usize,
    },
    /// A scope's incarnation counter is exhausted.
    #[error("scope {scope} has allocated every incarnation number")]
    IncarnationsExhausted {
        /// The scope.
        scope: Name,
    },
}

impl StoreError {
    /// An [`Unavailable`](StoreError::Unavailable) error for `operation`.
    pub fn unavailable(
        operation: &'static str,
        source: impl StdError + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Unavailable {
            operation,
            source: Arc::new(source),
        }
    }
}
