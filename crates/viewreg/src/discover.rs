//! [`ViewDiscover`]: the registry's healthy views as a tower
//! [`Discover`] stream of inserts and removals, so that tower's balancers
//! (`tower::balance::p2c::Balance`) route over them.
//!
//! The stream runs no task: its consumer (a balancer's `poll_ready`)
//! polls it, and it polls one [`Registry::wait_for_change`] future, boxed
//! once and reused for every wait. On each new snapshot it walks the
//! snapshot's views and the keys it has handed out side by side, both
//! sorted by endpoint, and queues the difference. A key it keeps costs no
//! allocation; an insert clones the endpoint (twice) and the client. A view is told
//! apart from an earlier view of the same endpoint by the discovery that
//! made its client, so a client replaced between two snapshots (the
//! endpoint left and came back) is never mistaken for the one handed out.
//!
//! [`Discover`]: tower::discover::Discover

use std::collections::VecDeque;
use std::fmt;
use std::iter::Peekable;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use flotilla_core_types::Endpoint;
use futures_util::Stream;
use futures_util::stream::FusedStream;
use tokio_util::sync::ReusableBoxFuture;
use tower::discover::Change;

use crate::{ChangeStamp, Error, FeatureSet, Registry, Snapshot, WaitLimit};

impl<F, C> Registry<F, C>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
{
    /// The views [`healthy_views(&features)`](Registry::healthy_views)
    /// lists, as a tower [`Discover`] stream: keys are the views'
    /// endpoints, services their clients (make your connector's client a
    /// tower `Service`). Give it to a balancer, wrapped in the load measure
    /// the balancer needs. What it yields and when it ends is on
    /// [`ViewDiscover`].
    ///
    /// The stream is a handle: the registry keeps running while it lives,
    /// even once every other handle is dropped; [`kill`](crate::Worker::kill)
    /// stops it.
    ///
    /// # Example
    ///
    /// ```
    /// use std::collections::BTreeSet;
    /// use std::convert::Infallible;
    /// use flotilla_viewreg::{Endpoint, Registry, RegistryConfig, StaticLocator, TcpProber, Worker};
    /// use tower::balance::p2c::Balance;
    /// use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
    /// use tower::{Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server: Endpoint = listener.local_addr()?.try_into()?;
    /// let registry = Registry::start(
    ///     StaticLocator::new([server.clone()]),
    ///     TcpProber::with_features(BTreeSet::from(["kv"])),
    ///     // Your client, as a tower Service; here one that names its server.
    ///     |endpoint: &Endpoint| {
    ///         let endpoint = endpoint.clone();
    ///         service_fn(move |request: &'static str| {
    ///             let answer = format!("{endpoint} got {request}");
    ///             async move { Ok::<_, Infallible>(answer) }
    ///         })
    ///     },
    ///     RegistryConfig::default(),
    /// )?;
    ///
    /// let servers = registry.discover(BTreeSet::from(["kv"]));
    /// let mut balancer = Balance::new(PendingRequestsDiscover::new(
    ///     servers,
    ///     CompleteOnResponse::default(),
    /// ));
    /// // Ready once a server providing "kv" is healthy.
    /// let answer = balancer.ready().await?.call("get").await?;
    /// assert_eq!(answer, format!("{server} got get"));
    ///
    /// // A stopped registry takes its servers away and fails the balancer.
    /// registry.kill();
    /// registry.wait().await?;
    /// assert!(balancer.ready().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Discover`]: tower::discover::Discover
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn discover(&self, features: F) -> ViewDiscover<F, C> {
        ViewDiscover {
            registry: self.clone(),
            features,
            held: Vec::new(),
            spare: Vec::new(),
            queued: VecDeque::new(),
            wait: ReusableBoxFuture::new(next_snapshot(self.clone(), ChangeStamp::ZERO)),
            state: State::Watching,
        }
    }
}

/// The views a [`Registry`] would list with
/// [`healthy_views`](Registry::healthy_views), as a tower [`Discover`]
/// stream of [`Change`]s keyed by endpoint, carrying each view's client.
/// Made by [`Registry::discover`]. It implements `Stream<Item =
/// Result<Change<Endpoint, C>, Error>>`, and so `Discover`.
///
/// What it yields:
///
/// - **First poll**: an [`Insert`](Change::Insert) for each view of the
///   current snapshot that `healthy_views` lists; nothing while there is
///   none (the stream then waits, like any other).
/// - **Each later snapshot**: the difference from what it has yielded, in
///   endpoint order: a [`Remove`](Change::Remove) for each view gone,
///   turned unhealthy, or no longer providing the features, an `Insert`
///   for each newly listed one. A change the filter does not see (a view
///   it does not list changing, a listed view's partition) yields nothing.
///   Snapshots it was not polled in between are not replayed: it diffs
///   against the newest.
/// - **A replaced client** (the endpoint left the locator and came back, so
///   the registry made a new client, even if the stream never saw the gap):
///   a `Remove` then an `Insert` of the new client, never an `Insert` over
///   a key still held. tower's p2c balancer would replace a service on a
///   second `Insert`, but only once the new one is ready, routing to the
///   client the registry has dropped until then, and the `Discover`
///   contract lets a key be reused only after its `Remove`.
/// - **Panic mode**: the stream follows `healthy_views` exactly, so while
///   the registry [panics](Snapshot::is_panic) it inserts every view
///   providing the features, healthy or not (Envoy's panic routing), and
///   removes the unhealthy ones once the panic is over. Set
///   [`panic_threshold`](crate::RegistryConfig::panic_threshold) to 0 for
///   strictly healthy servers.
/// - **When the registry stops** (killed, or its task gone): a `Remove`
///   for every key still held, then one [`Error::Stopped`], then `None`
///   for good ([`FusedStream`]). It never hangs: a pending poll is woken
///   by the stop. The error, rather than a quiet end, because tower's
///   balancers take the end of discovery to mean "the set is final" and go
///   on routing to it: this way a balancer's `poll_ready` fails with a
///   `tower::balance::error::Discover` whose source is `Error::Stopped`,
///   with no servers left. Polled again, such a balancer has no servers
///   and waits: put it behind tower's `Buffer`, which fails every later
///   call with that first error, or drop it on the error.
///
/// It runs no task: it waits in its consumer's polls, on one
/// [`Registry::wait_for_change`] boxed once. Dropping it drops that wait
/// and its registry handle, and nothing else. Each new snapshot costs one
/// pass over its views beside the keys held (both sorted by endpoint);
/// keys kept are moved, not cloned, and their buffers are reused.
///
/// [`Discover`]: tower::discover::Discover
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct ViewDiscover<F, C> {
    registry: Registry<F, C>,
    features: F,
    /// The keys the consumer holds once the queued changes are yielded,
    /// sorted by endpoint, each with the incarnation of the view whose
    /// client went with it.
    held: Vec<(Endpoint, u64)>,
    /// The buffer the next diff fills, empty between diffs: `held` and it
    /// swap, so diffing reuses their allocations.
    spare: Vec<(Endpoint, u64)>,
    /// Changes worked out and not yet yielded.
    queued: VecDeque<Change<Endpoint, C>>,
    /// The wait for the snapshot after the last one diffed.
    wait: ReusableBoxFuture<'static, Result<Arc<Snapshot<F, C>>, Error>>,
    state: State,
}

/// Where a [`ViewDiscover`] is in its life.
enum State {
    /// Waiting for the next snapshot.
    Watching,
    /// The registry stopped: the queued removals go out, then this error.
    Stopping(Error),
    /// The error went out; only `None` from now on.
    Ended,
}

impl<F, C> ViewDiscover<F, C>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
{
    /// Queues the difference between what was yielded and `snapshot`.
    fn diff(&mut self, snapshot: &Snapshot<F, C>) {
        let features = &self.features;
        let queued = &mut self.queued;
        let mut before = std::mem::take(&mut self.held);
        let mut after = std::mem::take(&mut self.spare);
        let mut held = before.drain(..).peekable();
        let listed = snapshot
            .all_views()
            .iter()
            .filter(|view| snapshot.serves(view, features));
        for view in listed {
            remove_while(&mut held, queued, |endpoint| endpoint < view.endpoint());
            match held.next_if(|(endpoint, _)| endpoint == view.endpoint()) {
                Some(kept) if kept.1 == view.incarnation() => {
                    after.push(kept);
                    continue;
                }
                // Its client was replaced: the old one goes first.
                Some((endpoint, _)) => queued.push_back(Change::Remove(endpoint)),
                None => {}
            }
            queued.push_back(Change::Insert(
                view.endpoint().clone(),
                view.client().clone(),
            ));
            after.push((view.endpoint().clone(), view.incarnation()));
        }
        remove_while(&mut held, queued, |_| true);
        drop(held);
        self.held = after;
        self.spare = before;
    }
}

impl<F, C> Stream for ViewDiscover<F, C>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
{
    type Item = Result<Change<Endpoint, C>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match std::mem::replace(&mut this.state, State::Ended) {
                State::Ended => return Poll::Ready(None),
                State::Stopping(error) => return Poll::Ready(Some(Err(error))),
                State::Watching => this.state = State::Watching,
            }
            match ready!(this.wait.poll(cx)) {
                Ok(snapshot) => {
                    this.diff(&snapshot);
                    let since = snapshot.stamp();
                    // Same future type each time: the box is reused.
                    this.wait.set(next_snapshot(this.registry.clone(), since));
                }
                Err(error) => {
                    // The wait has no limit: only the registry's end gets here.
                    let held = this.held.drain(..);
                    this.queued
                        .extend(held.map(|(endpoint, _)| Change::Remove(endpoint)));
                    this.state = State::Stopping(error);
                }
            }
        }
    }
}

impl<F, C> FusedStream for ViewDiscover<F, C>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
{
    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Ended)
    }
}

/// No field is ever pinned (the wait is boxed), so the stream is `Unpin`
/// whatever `F` and `C` are, as tower's balancers require.
impl<F, C> Unpin for ViewDiscover<F, C> {}

impl<F: fmt::Debug, C> fmt::Debug for ViewDiscover<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Watching => "watching",
            State::Stopping(_) => "stopping",
            State::Ended => "ended",
        };
        f.debug_struct("ViewDiscover")
            .field("features", &self.features)
            .field("held", &self.held.len())
            .field("queued", &self.queued.len())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The first snapshot newer than `since`, or why there will be none.
async fn next_snapshot<F, C>(
    registry: Registry<F, C>,
    since: ChangeStamp,
) -> Result<Arc<Snapshot<F, C>>, Error>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
{
    registry
        .wait_for_change(since, &WaitLimit::unbounded())
        .await
}

/// Queues a removal for each held key at the front of `held` that
/// `before` accepts.
fn remove_while<C, I>(
    held: &mut Peekable<I>,
    queued: &mut VecDeque<Change<Endpoint, C>>,
    before: impl Fn(&Endpoint) -> bool,
) where
    I: Iterator<Item = (Endpoint, u64)>,
{
    while let Some((endpoint, _)) = held.next_if(|(endpoint, _)| before(endpoint)) {
        queued.push_back(Change::Remove(endpoint));
    }
}
