//! The crate's errors: [`Error`] for the registry's own operations,
//! [`LocatorError`] for what a locator can answer, and [`ProbeError`] for a
//! health check that did not get an answer.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core_types::{Endpoint, WorkerError};

use crate::diagnostics::wire::WireError;

/// A registry operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting in [`RegistryConfig`](crate::RegistryConfig) is out of
    /// range.
    #[error("invalid registry config: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry has been stopped.
    #[error("the registry is stopped")]
    Stopped,
    /// A wait reached the deadline of its [`WaitLimit`](crate::WaitLimit)
    /// before what it waited for happened.
    #[error("gave up waiting for the registry after {waited:?}")]
    DeadlineExceeded {
        /// How long the wait lasted.
        waited: Duration,
    },
    /// A wait was cancelled through the token of its
    /// [`WaitLimit`](crate::WaitLimit).
    #[error("the wait for the registry was cancelled")]
    Cancelled,
    /// [`report_failure`](crate::Registry::report_failure) found the
    /// registry's queue of reports full; the report was dropped.
    #[error("the registry's failure reports queue is full; the report for {endpoint} was dropped")]
    ReportQueueFull {
        /// The endpoint whose failure was reported.
        endpoint: Endpoint,
    },
    /// A [`DiagnosticsStatus`](crate::DiagnosticsStatus) breaks the
    /// diagnostics protocol's limits (too many features, a name empty or
    /// too long), so a server could not answer it.
    #[error("invalid diagnostics status: {0}")]
    InvalidStatus(#[source] WireError),
    /// The listener given to a server has no local address.
    #[error("cannot serve on the listener: {0}")]
    Listener(#[source] Arc<std::io::Error>),
}

/// A registry error as a worker's error, so that `?` on a registry call
/// works in a function returning `Result<_, WorkerError>`, such as a
/// `flotilla-depengine` start function. The error stays reachable with
/// [`WorkerError::downcast_ref`].
impl From<Error> for WorkerError {
    fn from(error: Error) -> WorkerError {
        WorkerError::new(error)
    }
}

/// What a [`Locator`](crate::Locator) answered instead of a set of
/// endpoints. The registry keeps the last set it had and asks again after a
/// backoff; a locator error never stops the registry.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LocatorError {
    /// The discovery source could not be reached or did not answer.
    #[error("discovery source unavailable: {source}")]
    Unavailable {
        /// What the transport said.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// The discovery source answered with something that is not a set of
    /// endpoints.
    #[error("discovery source answered with unreadable data: {reason}")]
    Corrupt {
        /// What is wrong with it.
        reason: String,
    },
    /// The discovery source refused the request (no permission, a bad
    /// request): asking again will not help until someone fixes it.
    #[error("discovery source refused the request: {source}")]
    Rejected {
        /// What the source said.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// A locator was made with a key prefix it cannot follow.
    #[error("invalid key prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl LocatorError {
    /// A [`LocatorError::Unavailable`] from any transport error.
    pub fn unavailable(source: impl StdError + Send + Sync + 'static) -> Self {
        LocatorError::Unavailable {
            source: Arc::new(source),
        }
    }
}

/// A health check that got no usable answer. Cheap to clone: the registry
/// keeps the last one of every view for [`Registry::dump`](crate::Registry::dump).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The server could not be reached (connection refused, reset, no route).
    #[error("cannot reach {endpoint}: {source}")]
    Unreachable {
        /// The endpoint probed.
        endpoint: Endpoint,
        /// What the transport said.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// The probe did not finish within
    /// [`RegistryConfig::probe_timeout`](crate::RegistryConfig::probe_timeout).
    #[error("health check of {endpoint} did not answer within {after:?}")]
    TimedOut {
        /// The endpoint probed.
        endpoint: Endpoint,
        /// The limit.
        after: Duration,
    },
    /// The connection could not be secured: the server is not a device
    /// this side trusts ([`ProbeError::refusal`] says why), it does not
    /// trust this side, or it does not speak TLS. A server that has not
    /// proved who it is is never reported healthy.
    #[error("cannot secure the connection to {endpoint}: {source}")]
    Handshake {
        /// The endpoint probed.
        endpoint: Endpoint,
        /// What failed.
        #[source]
        source: Arc<flotilla_identity::TransportError>,
    },
    /// The server answered something the prober could not read.
    #[error("health check of {endpoint} got an unreadable answer: {reason}")]
    Protocol {
        /// The endpoint probed.
        endpoint: Endpoint,
        /// What is wrong with the answer.
        reason: String,
    },
}

impl ProbeError {
    /// Why this side refused the server's certificate, if that is what
    /// failed the check.
    pub fn refusal(&self) -> Option<&flotilla_identity::TrustError> {
        match self {
            ProbeError::Handshake { source, .. } => source.refusal(),
            _ => None,
        }
    }

    /// A [`ProbeError::Unreachable`] from any transport error.
    pub fn unreachable(endpoint: &Endpoint, source: impl StdError + Send + Sync + 'static) -> Self {
        ProbeError::Unreachable {
            endpoint: endpoint.clone(),
            source: Arc::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let endpoint: Endpoint = "10.0.0.1:80".parse().expect("valid");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            ProbeError::unreachable(&endpoint, refused).to_string(),
            "cannot reach 10.0.0.1:80: refused"
        );
        let prefix = LocatorError::InvalidPrefix {
            prefix: String::from("names/"),
            reason: String::from("ends with '/'"),
        };
        assert_eq!(
            prefix.to_string(),
            "invalid key prefix \"names/\": ends with '/'"
        );
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no permission");
        let rejected = LocatorError::Rejected {
            source: Arc::new(denied),
        };
        assert_eq!(
            rejected.to_string(),
            "discovery source refused the request: no permission"
        );
        let full = Error::ReportQueueFull { endpoint };
        let worker: WorkerError = full.into();
        assert!(worker.downcast_ref::<Error>().is_some());
    }
}
