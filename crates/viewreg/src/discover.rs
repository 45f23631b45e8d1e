//! [`ViewDiscover`]: the registry's healthy views as a tower
//! [`Discover`] stream of inserts and removals, so that tower's balancers
//! (`tower::balance::p2c::Balance`) route over them.
//!
//! The stream runs no task: its consumer (a balancer's `poll_ready`)
//! polls it, and it polls one [`Registry::wait_for_change`] future, boxed
//! once and reused for every wait. On each new snapshot it walks the
//! snapshot's views and the keys it has handed out side by side, both
//! sorted by endpoint, and queues the difference. A key it keeps costs no
//! allocation; an insert clones the endpoint (twice) and the client. A
//! view is told apart from an earlier view of the same endpoint by the
//! discovery that made its client, so a client replaced between two
//! snapshots (the endpoint left and came back) is never mistaken for the
//! one handed out.
//!
//! [`Discover`]: https://docs.rs/tower/0.5/tower/discover/trait.Discover.html

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
    /// [`Discover`]: https://docs.rs/tower/0.5/tower/discover/trait.Discover.html
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn discover(&self, features: F) -> ViewDiscover<F, C> {
        ViewDiscover {
            registry: self.clone(),
            features,
            held: Held::default(),
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
/// - **First poll**: an [`Insert`][Insert] for each view of the
///   current snapshot that `healthy_views` lists; nothing while there is
///   none (the stream then waits, like any other).
/// - **Each later snapshot**: the difference from what it has yielded, in
///   endpoint order: a [`Remove`][Remove] for each view gone,
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
/// [`Discover`]: https://docs.rs/tower/0.5/tower/discover/trait.Discover.html
/// [`Change`]: https://docs.rs/tower/0.5/tower/discover/enum.Change.html
/// [Insert]: https://docs.rs/tower/0.5/tower/discover/enum.Change.html#variant.Insert
/// [Remove]: https://docs.rs/tower/0.5/tower/discover/enum.Change.html#variant.Remove
/// [`FusedStream`]: https://docs.rs/futures-util/0.3/futures_util/stream/trait.FusedStream.html
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct ViewDiscover<F, C> {
    registry: Registry<F, C>,
    features: F,
    /// What the consumer holds once the queued changes are yielded.
    held: Held,
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
                    this.held.diff(&snapshot, &this.features, &mut this.queued);
                    let since = snapshot.stamp();
                    // Same future type each time: the box is reused.
                    this.wait.set(next_snapshot(this.registry.clone(), since));
                }
                Err(error) => {
                    // The wait has no limit: only the registry's end gets here.
                    this.held.remove_all(&mut this.queued);
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
            .field("held", &self.held.keys.len())
            .field("queued", &self.queued.len())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The keys a consumer holds, sorted by endpoint, each with the
/// incarnation of the view whose client went with it; and the diff that
/// keeps them in step with the snapshots.
#[derive(Debug, Default)]
struct Held {
    keys: Vec<(Endpoint, u64)>,
    /// The buffer the next diff fills, empty between diffs: it and `keys`
    /// swap, so diffing reuses their allocations.
    spare: Vec<(Endpoint, u64)>,
}

impl Held {
    /// Queues the changes that take the consumer from the keys held to what
    /// `snapshot` lists for `features`, in endpoint order, and holds those.
    fn diff<F: FeatureSet, C: Clone>(
        &mut self,
        snapshot: &Snapshot<F, C>,
        features: &F,
        queued: &mut VecDeque<Change<Endpoint, C>>,
    ) {
        let mut before = std::mem::take(&mut self.keys);
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
        self.keys = after;
        self.spare = before;
    }

    /// Queues a removal of every key held, and holds none.
    fn remove_all<C>(&mut self, queued: &mut VecDeque<Change<Endpoint, C>>) {
        let held = self.keys.drain(..);
        queued.extend(held.map(|(endpoint, _)| Change::Remove(endpoint)));
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    use flotilla_core_types::Endpoint;
    use proptest::prelude::*;
    use tokio::time::Instant;
    use tower::discover::Change;

    use super::Held;
    use crate::view::ViewInner;
    use crate::{ChangeStamp, Health, Snapshot, View};

    type Features = BTreeSet<u8>;
    /// A view's client is its incarnation: a test can tell clients apart.
    type Client = u64;

    const ENDPOINTS: usize = 5;

    /// One endpoint in one generated snapshot.
    #[derive(Debug, Clone)]
    struct Slot {
        present: bool,
        /// Left and came back since the last snapshot (a new client).
        rejoined: bool,
        health: Health,
        features: Features,
    }

    fn slot() -> impl Strategy<Value = Slot> {
        let health = prop_oneof![
            Just(Health::Unknown),
            Just(Health::Healthy),
            Just(Health::Unhealthy)
        ];
        let features = proptest::collection::btree_set(0u8..2, 0..=2);
        (
            any::<bool>(),
            proptest::bool::weighted(0.2),
            health,
            features,
        )
            .prop_map(|(present, rejoined, health, features)| Slot {
                present,
                rejoined,
                health,
                features,
            })
    }

    fn endpoint(n: usize) -> Endpoint {
        Endpoint::new(&format!("10.0.0.{n}"), 80).expect("test endpoints are valid")
    }

    /// The snapshots the registry would publish for `steps`, each a slot per
    /// endpoint and whether it is in panic: an endpoint that was absent, or
    /// rejoined, has a new incarnation and client.
    fn snapshots(steps: Vec<(Vec<Slot>, bool)>) -> Vec<Snapshot<Features, Client>> {
        let mut incarnations = [None; ENDPOINTS];
        let mut last = 0;
        let mut stamp = ChangeStamp::ZERO;
        let mut published = Vec::new();
        for (slots, panic) in steps {
            let mut views = Vec::new();
            for (n, slot) in slots.into_iter().enumerate() {
                if !slot.present {
                    incarnations[n] = None;
                    continue;
                }
                let incarnation = match incarnations[n] {
                    Some(kept) if !slot.rejoined => kept,
                    _ => {
                        last += 1;
                        last
                    }
                };
                incarnations[n] = Some(incarnation);
                views.push(View::new(ViewInner {
                    endpoint: endpoint(n),
                    features: slot.features,
                    partition: None,
                    health: slot.health,
                    last_changed: Instant::now(),
                    last_error: None,
                    client: incarnation,
                    incarnation,
                }));
            }
            stamp = stamp.next();
            published.push(Snapshot {
                stamp,
                changed_at: Instant::now(),
                healthy: views.iter().filter(|view| view.is_healthy()).count(),
                index: crate::index::FeatureIndex::build(&views),
                views: views.into(),
                panic,
                locator_error: None,
                stopped: false,
            });
        }
        published
    }

    proptest! {
        /// After each snapshot a consumer applying the changes holds
        /// exactly what `healthy_views` lists, with the views' clients; no
        /// change breaks the `Discover` contract (an insert of a key held, a
        /// removal of one not held); a key whose client is kept is not
        /// touched; the changes come in endpoint order, a removal before an
        /// insertion of the same key.
        #[test]
        fn the_diff_keeps_a_consumer_in_step_with_healthy_views(
            wanted in proptest::collection::btree_set(0u8..2, 0..=1),
            steps in proptest::collection::vec(
                (proptest::collection::vec(slot(), ENDPOINTS), proptest::bool::weighted(0.2)),
                1..12,
            ),
        ) {
            let mut held = Held::default();
            let mut consumer: BTreeMap<Endpoint, Client> = BTreeMap::new();
            let mut queued = VecDeque::new();
            for snapshot in snapshots(steps) {
                held.diff(&snapshot, &wanted, &mut queued);
                let before = consumer.clone();
                let listed: BTreeMap<Endpoint, Client> = snapshot
                    .healthy_views(&wanted)
                    .iter()
                    .map(|view| (view.endpoint().clone(), *view.client()))
                    .collect();
                let mut order = Vec::new();
                for change in queued.drain(..) {
                    match change {
                        Change::Insert(endpoint, client) => {
                            prop_assert_eq!(listed.get(&endpoint), Some(&client));
                            prop_assert_ne!(before.get(&endpoint), Some(&client));
                            order.push((endpoint.clone(), 1));
                            prop_assert!(consumer.insert(endpoint, client).is_none());
                        }
                        Change::Remove(endpoint) => {
                            prop_assert!(before.contains_key(&endpoint));
                            prop_assert_ne!(before.get(&endpoint), listed.get(&endpoint));
                            order.push((endpoint.clone(), 0));
                            prop_assert!(consumer.remove(&endpoint).is_some());
                        }
                    }
                }
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
                prop_assert_eq!(&consumer, &listed);
                let keys: Vec<&Endpoint> = held.keys.iter().map(|(endpoint, _)| endpoint).collect();
                prop_assert_eq!(keys, listed.keys().collect::<Vec<_>>());
                prop_assert!(held.spare.is_empty());
            }
            held.remove_all(&mut queued);
            for change in queued.drain(..) {
                let Change::Remove(endpoint) = change else {
                    return Err(TestCaseError::fail("only removals at the end"));
                };
                prop_assert!(consumer.remove(&endpoint).is_some());
            }
            prop_assert!(consumer.is_empty());
            prop_assert!(held.keys.is_empty());
        }
    }
}
