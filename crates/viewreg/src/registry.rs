//! [`Registry`]: the cheap, cloneable handle to a registry's actor, and the
//! [`WaitLimit`] that bounds its waits.
//!
//! Every query reads the current [`Snapshot`] through an `ArcSwap`: one
//! atomic load and a reference count, no lock and no message to the actor,
//! so a query never waits for a health check or for the network.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use flotilla_core_types::{Endpoint, ReportFuture, TaskWorker, WaitFuture, Worker};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::actor::Actor;
use crate::view::HealthyViews;
use crate::{
    ChangeStamp, Error, FeatureSet, Locator, Prober, RegistryConfig, Snapshot, Summary, View,
};

/// How many failure reports may wait for the actor before
/// [`Registry::report_failure`] drops them: a burst that fills this is
/// already more than the passive cap lets count.
const REPORT_QUEUE: usize = 1024;

/// A client-side registry of the servers of a cluster: which exist (from a
/// [`Locator`]), which are healthy (from a [`Prober`]), what each provides,
/// and a client for each (from a connector). Cloning is cheap: every clone
/// is a handle to the same registry.
///
/// The health rules and the choices behind them are in the
/// [crate docs](crate).
///
/// The registry is a [`Worker`]: [`kill`](Worker::kill) (or dropping every
/// handle) stops it, and [`wait`](Worker::wait) returns once its checks and
/// its locator task are gone and its clients dropped; its final snapshot
/// holds no views. Its [`report`](Worker::report) is its [`Summary`] as
/// JSON, with the worker `state`.
///
/// # Example
///
/// ```
/// use std::collections::BTreeSet;
/// use flotilla_core_types::{Endpoint, Worker};
/// use flotilla_viewreg::{Registry, RegistryConfig, StaticLocator, TcpProber, WaitLimit};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server: Endpoint = listener.local_addr()?.try_into()?;
/// let registry = Registry::start(
///     StaticLocator::new([server.clone()]),
///     TcpProber::with_features(BTreeSet::from(["kv"])),
///     |endpoint: &Endpoint| endpoint.to_string(), // the "client": any Clone value
///     RegistryConfig::default(),
/// )?;
///
/// // Wait until the view is healthy, for at most 10 s.
/// let limit = WaitLimit::timeout(std::time::Duration::from_secs(10));
/// let mut since = registry.last_changed();
/// while registry.healthy_views(&BTreeSet::from(["kv"])).is_empty() {
///     since = registry.wait_for_change(since, &limit).await?.stamp();
/// }
/// let views = registry.healthy_views(&BTreeSet::from(["kv"]));
/// assert_eq!(views[0].client(), &server.to_string());
///
/// registry.kill();
/// registry.wait().await?;
/// # Ok(())
/// # }
/// ```
pub struct Registry<F, C> {
    snapshot: Arc<ArcSwap<Snapshot<F, C>>>,
    stamps: watch::Receiver<ChangeStamp>,
    reports: mpsc::Sender<Endpoint>,
    worker: TaskWorker,
}

impl<F, C> Registry<F, C>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
{
    /// Validates `config` and starts a registry that tracks the endpoints
    /// `locator` lists, checks them with `prober`, and makes one client per
    /// endpoint with `connect` when the endpoint is discovered. `connect`
    /// must not block: make a lazily connecting client (a tonic
    /// `Channel::connect_lazy`, a pool handle).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `config` does not validate.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with a timer.
    pub fn start<L, P, K>(
        locator: L,
        prober: P,
        connect: K,
        config: RegistryConfig,
    ) -> Result<Self, Error>
    where
        L: Locator,
        P: Prober<F>,
        K: Fn(&Endpoint) -> C + Send + Sync + 'static,
    {
        config.validate()?;
        let snapshot = Arc::new(ArcSwap::from_pointee(Actor::<F, C, P>::initial_snapshot()));
        let (stamp_tx, stamps) = watch::channel(ChangeStamp::ZERO);
        let (reports, report_queue) = mpsc::channel(REPORT_QUEUE);
        let actor = Actor::new(
            config,
            prober,
            Arc::new(connect),
            Arc::clone(&snapshot),
            stamp_tx,
        );
        let span = tracing::info_span!("viewreg");
        let worker =
            TaskWorker::spawn(move |stop| actor.run(locator, report_queue, stop).instrument(span));
        Ok(Registry {
            snapshot,
            stamps,
            reports,
            worker,
        })
    }

    /// The current snapshot: everything the queries below answer from, read
    /// at one moment.
    pub fn snapshot(&self) -> Arc<Snapshot<F, C>> {
        self.snapshot.load_full()
    }

    /// Every view, healthy or not, sorted by endpoint.
    pub fn all_views(&self) -> Vec<View<F, C>> {
        self.snapshot.load().all_views().to_vec()
    }

    /// The healthy views providing every feature of `features` (the empty
    /// set asks for none), sorted by endpoint; in panic mode, every view
    /// providing them (see [`Snapshot::healthy_views`]).
    pub fn healthy_views(&self, features: &F) -> HealthyViews<F, C> {
        self.snapshot.load().healthy_views(features)
    }

    /// The stamp of the current snapshot: pass it to
    /// [`wait_for_change`](Self::wait_for_change).
    pub fn last_changed(&self) -> ChangeStamp {
        self.snapshot.load().stamp()
    }

    /// The current snapshot's counts.
    pub fn summary(&self) -> Summary {
        self.snapshot.load().summary()
    }

    /// The current snapshot, one line per view, for debugging.
    pub fn dump(&self) -> String {
        self.snapshot.load().dump()
    }

    /// Tells the registry that a request to `endpoint` failed (a reset
    /// connection, a transport error): it counts as one failed check
    /// towards [`RegistryConfig::unhealthy_threshold`], without waiting for
    /// the next one. Reports may turn at most
    /// [`RegistryConfig::max_passive_ejection`] of the views unhealthy, and
    /// never the last healthy one. A report for an endpoint the registry
    /// does not list is ignored. Never waits.
    ///
    /// # Errors
    ///
    /// [`Error::ReportQueueFull`] when reports come faster than the registry
    /// takes them (the report is dropped), [`Error::Stopped`] once the
    /// registry is stopped.
    pub fn report_failure(&self, endpoint: &Endpoint) -> Result<(), Error> {
        self.reports
            .try_send(endpoint.clone())
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(endpoint) => Error::ReportQueueFull { endpoint },
                mpsc::error::TrySendError::Closed(_) => Error::Stopped,
            })
    }

    /// Waits until the registry publishes a snapshot newer than `since`,
    /// and returns it; returns at once when the current one is newer.
    ///
    /// # Errors
    ///
    /// [`Error::DeadlineExceeded`] or [`Error::Cancelled`] as `limit` says;
    /// [`Error::Stopped`] when the registry stops.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only listens.
    pub async fn wait_for_change(
        &self,
        since: ChangeStamp,
        limit: &WaitLimit,
    ) -> Result<Arc<Snapshot<F, C>>, Error> {
        let started = Instant::now();
        let mut stamps = self.stamps.clone();
        loop {
            // Marked seen before the load: a later publish wakes us.
            stamps.borrow_and_update();
            let snapshot = self.snapshot();
            if snapshot.is_stopped() {
                return Err(Error::Stopped);
            }
            if snapshot.stamp() > since {
                return Ok(snapshot);
            }
            tokio::select! {
                changed = stamps.changed() => {
                    if changed.is_err() {
                        return self.last_look(since);
                    }
                }
                error = limit.reached(started) => return Err(error),
            }
        }
    }

    /// Waits until the registry has not changed for `quiet` (its current
    /// snapshot is at least that old), and returns that snapshot: for a
    /// client starting up, "discovery and the first checks have settled".
    ///
    /// # Errors
    ///
    /// [`Error::DeadlineExceeded`] or [`Error::Cancelled`] as `limit` says;
    /// [`Error::Stopped`] when the registry stops.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only listens.
    pub async fn wait_for_stable(
        &self,
        quiet: Duration,
        limit: &WaitLimit,
    ) -> Result<Arc<Snapshot<F, C>>, Error> {
        let started = Instant::now();
        let mut stamps = self.stamps.clone();
        loop {
            stamps.borrow_and_update();
            let snapshot = self.snapshot();
            if snapshot.is_stopped() {
                return Err(Error::Stopped);
            }
            let stable_at = snapshot.changed_at() + quiet;
            if Instant::now() >= stable_at {
                return Ok(snapshot);
            }
            tokio::select! {
                changed = stamps.changed() => {
                    if changed.is_err() {
                        return Err(Error::Stopped);
                    }
                }
                () = tokio::time::sleep_until(stable_at) => {}
                error = limit.reached(started) => return Err(error),
            }
        }
    }

    /// After the actor is gone: a snapshot newer than `since` if one was
    /// published, else stopped.
    fn last_look(&self, since: ChangeStamp) -> Result<Arc<Snapshot<F, C>>, Error> {
        let snapshot = self.snapshot();
        if snapshot.stamp() > since && !snapshot.is_stopped() {
            return Ok(snapshot);
        }
        Err(Error::Stopped)
    }
}

/// Written by hand because [`delegate_worker!`] takes only types without
/// generic parameters; it forwards to the task exactly as that macro does,
/// and reports the summary.
///
/// [`delegate_worker!`]: flotilla_core_types::delegate_worker
impl<F, C> Worker for Registry<F, C>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
{
    fn kill(&self) {
        self.worker.kill();
    }

    fn wait(&self) -> WaitFuture<'_> {
        self.worker.wait()
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let summary = self.summary();
        let task = self.worker.report();
        Some(Box::pin(async move {
            let mut report = serde_json::to_value(summary)
                .unwrap_or_else(|error| serde_json::json!({ "error": error.to_string() }));
            if let (Some(task), Some(object)) = (task, report.as_object_mut()) {
                object.insert("state".to_owned(), task.await["state"].clone());
            }
            report
        }))
    }
}

impl<F, C> Clone for Registry<F, C> {
    fn clone(&self) -> Self {
        Registry {
            snapshot: Arc::clone(&self.snapshot),
            stamps: self.stamps.clone(),
            reports: self.reports.clone(),
            worker: self.worker.clone(),
        }
    }
}

impl<F: FeatureSet, C> fmt::Debug for Registry<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("summary", &self.snapshot.load().summary())
            .field("worker", &self.worker)
            .finish()
    }
}

/// How long a wait of the registry may last: a deadline, a cancellation
/// token, or both. A wait past its limit ends with a typed error, never a
/// hang.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tokio_util::sync::CancellationToken;
/// use flotilla_viewreg::WaitLimit;
///
/// let shutdown = CancellationToken::new();
/// let limit = WaitLimit::timeout(Duration::from_secs(5)).or_cancelled(shutdown.clone());
/// # let _ = limit;
/// ```
#[derive(Debug, Clone)]
pub struct WaitLimit {
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
}

impl WaitLimit {
    /// Gives up `timeout` from now.
    pub fn timeout(timeout: Duration) -> Self {
        WaitLimit::deadline(Instant::now() + timeout)
    }

    /// Gives up at `deadline`.
    pub fn deadline(deadline: Instant) -> Self {
        WaitLimit {
            deadline: Some(deadline),
            cancel: None,
        }
    }

    /// Gives up when `token` is cancelled.
    pub fn cancelled_by(token: CancellationToken) -> Self {
        WaitLimit {
            deadline: None,
            cancel: Some(token),
        }
    }

    /// Never gives up: for waits that end only with the registry (the
    /// tower feature's stream, which its consumer drops to stop).
    #[cfg(feature = "tower")]
    pub(crate) fn unbounded() -> Self {
        WaitLimit {
            deadline: None,
            cancel: None,
        }
    }

    /// This limit, also giving up when `token` is cancelled.
    pub fn or_cancelled(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Resolves with the error to return once the limit is reached.
    async fn reached(&self, started: Instant) -> Error {
        let deadline = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match &self.cancel {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = cancelled => Error::Cancelled,
            () = deadline => Error::DeadlineExceeded { waited: started.elapsed() },
        }
    }
}
