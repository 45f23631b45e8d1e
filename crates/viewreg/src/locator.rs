//! [`Locator`]: where the registry learns which servers exist, and three
//! locators: [`StaticLocator`] (a fixed list), [`StreamLocator`] (any
//! stream of endpoint sets) and [`NameLocator`] (the servers published under
//! a name, from any core-types [`EndpointSource`], such as
//! flotilla-publisher's mount table or etcd namespace).
//!
//! A locator answers with whole sets, not deltas: each answer replaces the
//! previous one, so a locator that reconnects after a failure can simply
//! answer with what it sees now.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;

use flotilla_core_types::{Endpoint, EndpointSource, EndpointWatch, Name, SourceError};
use futures_util::stream::Map;
use futures_util::{Stream, StreamExt};

use crate::LocatorError;

/// A set of endpoints, as a locator answers.
pub type EndpointSet = BTreeSet<Endpoint>;

/// A source of the set of servers the registry should track.
///
/// The registry runs its locator on a task of its own and only ever awaits
/// [`next_endpoints`](Locator::next_endpoints) to completion (or drops the
/// locator when it stops), so an implementation need not be cancel safe.
pub trait Locator: Send + 'static {
    /// Waits for the next set of endpoints, which replaces the last one.
    ///
    /// `None` means the locator has no more answers: the registry keeps the
    /// last set it had for good. An error leaves the registry's set as it
    /// was; the registry calls again after a backoff.
    fn next_endpoints(
        &mut self,
    ) -> impl Future<Output = Option<Result<EndpointSet, LocatorError>>> + Send;
}

/// A fixed list of endpoints: answers once with it, then has no more
/// answers.
///
/// # Example
///
/// ```
/// use flotilla_viewreg::{Locator, StaticLocator};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let mut locator = StaticLocator::new(["10.0.0.1:80".parse()?, "10.0.0.2:80".parse()?]);
/// assert_eq!(locator.next_endpoints().await.transpose()?.map(|set| set.len()), Some(2));
/// assert!(locator.next_endpoints().await.is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StaticLocator {
    endpoints: Option<EndpointSet>,
}

impl StaticLocator {
    /// A locator answering with `endpoints` (duplicates count once).
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        StaticLocator {
            endpoints: Some(endpoints.into_iter().collect()),
        }
    }
}

impl Locator for StaticLocator {
    async fn next_endpoints(&mut self) -> Option<Result<EndpointSet, LocatorError>> {
        self.endpoints.take().map(Ok)
    }
}

/// A locator over any stream of answers: each item is a whole set of
/// endpoints or an error, and the stream's end is the locator's.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{Endpoint, EndpointSource, EndpointWatch, Name, SourceError};
/// use flotilla_viewreg::{Locator, StreamLocator};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let a: Endpoint = "10.0.0.1:80".parse()?;
/// let sets = futures_util::stream::iter([vec![a.clone()], vec![]]);
/// let mut locator = StreamLocator::from_sets(sets);
/// assert_eq!(locator.next_endpoints().await.transpose()?, Some([a].into()));
/// assert_eq!(locator.next_endpoints().await.transpose()?, Some([].into()));
/// assert!(locator.next_endpoints().await.is_none());
/// # Ok(())
/// # }
/// ```
pub struct StreamLocator<S> {
    answers: S,
}

/// What [`StreamLocator::from_sets`] turns each set into.
type Infallible<I> = fn(I) -> Result<I, LocatorError>;

impl<S, I> StreamLocator<S>
where
    S: Stream<Item = Result<I, LocatorError>> + Send + Unpin + 'static,
    I: IntoIterator<Item = Endpoint> + Send,
{
    /// A locator answering with the items of `answers`: each a collection
    /// of endpoints (duplicates count once) or an error.
    pub fn new(answers: S) -> Self {
        StreamLocator { answers }
    }
}

impl<T, I> StreamLocator<Map<T, Infallible<I>>>
where
    T: Stream<Item = I> + Send + Unpin + 'static,
    I: IntoIterator<Item = Endpoint> + Send,
{
    /// A locator over a stream that cannot fail: each item is a collection
    /// of endpoints.
    pub fn from_sets(sets: T) -> Self {
        StreamLocator {
            answers: sets.map(Ok as Infallible<I>),
        }
    }
}

impl<S, I> Locator for StreamLocator<S>
where
    S: Stream<Item = Result<I, LocatorError>> + Send + Unpin + 'static,
    I: IntoIterator<Item = Endpoint> + Send,
{
    async fn next_endpoints(&mut self) -> Option<Result<EndpointSet, LocatorError>> {
        let answer = self.answers.next().await?;
        Some(answer.map(|set| set.into_iter().collect()))
    }
}

impl<S> fmt::Debug for StreamLocator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLocator").finish_non_exhaustive()
    }
}

/// The servers published under a name, from any [`EndpointSource`]: with
/// flotilla-publisher, its `MountTable` or its `EtcdNamespace`, so that a
/// server a publisher advertises is discovered with no glue code.
///
/// Each answer is the whole set under exactly that name, whenever it
/// changes. A source that shuts down ends the locator (the registry keeps
/// its last set); one that cannot reach its backend answers
/// [`LocatorError::Unavailable`], and the registry asks again after its
/// backoff.
pub struct NameLocator {
    name: Name,
    watch: Box<dyn EndpointWatch>,
}

impl NameLocator {
    /// Follows the endpoints `source` has under `name`.
    pub fn new(source: &dyn EndpointSource, name: &Name) -> Self {
        NameLocator {
            name: name.clone(),
            watch: source.watch_endpoints(name),
        }
    }
}

impl Locator for NameLocator {
    async fn next_endpoints(&mut self) -> Option<Result<EndpointSet, LocatorError>> {
        match self.watch.next().await {
            Ok(endpoints) => Some(Ok(endpoints)),
            Err(SourceError::Closed) => None,
            Err(error) => Some(Err(LocatorError::Unavailable {
                source: std::sync::Arc::new(error),
            })),
        }
    }
}

impl fmt::Debug for NameLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameLocator")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
