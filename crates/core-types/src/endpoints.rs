//! [`EndpointSource`]: where one crate learns the servers another publishes
//! under a name, without either depending on the other.
//!
//! flotilla-publisher implements it for its backends; a registry (such as
//! flotilla-viewreg) consumes it to discover servers. The watch is level
//! triggered: every answer is the whole set, so a consumer that missed a
//! step loses nothing, and one that reconnects just gets the set again.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use crate::{Endpoint, Name};

/// The future of [`EndpointWatch::next`].
pub type EndpointsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BTreeSet<Endpoint>, SourceError>> + Send + 'a>>;

/// A source of the endpoints published under names.
pub trait EndpointSource: Send + Sync + 'static {
    /// Starts watching the endpoints published under exactly `name` (not
    /// the names beneath it). Nothing is asked of the backend until the
    /// watch's first [`next`](EndpointWatch::next).
    fn watch_endpoints(&self, name: &Name) -> Box<dyn EndpointWatch>;
}

/// The endpoints of one name, as they change.
pub trait EndpointWatch: Send {
    /// The first call answers the current set at once (empty when nothing
    /// is published); each later call waits until the set differs from the
    /// one last answered, and answers the new set.
    ///
    /// # Errors
    ///
    /// [`SourceError::Closed`] when the source has shut down: final.
    /// [`SourceError::Unavailable`] when the backend cannot be reached:
    /// call again to retry (the watch reconnects, and answers the set as it
    /// then is if it differs from the last one answered).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call loses no change; the next call answers
    /// the set as it is.
    fn next(&mut self) -> EndpointsFuture<'_>;
}

/// Why an [`EndpointWatch`] has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source has shut down; no answer will come again.
    #[error("the endpoint source has shut down")]
    Closed,
    /// The backend could not be reached; calling again retries.
    #[error("the endpoint source is unavailable: {0}")]
    Unavailable(String),
}
