//! What the registry hands out: [`View`]s of servers, in an immutable
//! [`Snapshot`] stamped with a [`ChangeStamp`], and the vocabulary they
//! speak ([`FeatureSet`], [`Partition`], [`Health`]).

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use flotilla_core_types::Endpoint;
use serde::Serialize;
use tokio::time::Instant;

use crate::index::FeatureIndex;

/// What a server provides, as a set: the registry asks only whether one set
/// holds every member of another, and whether two are equal (views with
/// equal sets share one entry of a snapshot's index). Implemented for
/// `BTreeSet` and `HashSet`; implement it for a bit set or an enum set of
/// your own features.
pub trait FeatureSet: Clone + Default + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// Whether `self` holds every member of `wanted` (the empty set is held
    /// by every set).
    fn contains_all(&self, wanted: &Self) -> bool;
}

impl<T: Ord + Clone + fmt::Debug + Send + Sync + 'static> FeatureSet for BTreeSet<T> {
    fn contains_all(&self, wanted: &Self) -> bool {
        wanted.is_subset(self)
    }
}

impl<T: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static> FeatureSet for HashSet<T> {
    fn contains_all(&self, wanted: &Self) -> bool {
        wanted.is_subset(self)
    }
}

/// The share of a partitioned data set a server holds: part `index` of
/// `count` equal parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Partition {
    index: u32,
    count: u32,
}

impl Partition {
    /// Part `index` (from 0) of `count`; `None` unless `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Partition> {
        (index < count).then_some(Partition { index, count })
    }

    /// Which part, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Of how many parts.
    pub fn count(&self) -> u32 {
        self.count
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What the registry believes of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Discovered and not yet checked with a conclusive result.
    Unknown,
    /// Serving: its last checks succeeded.
    Healthy,
    /// Not serving: enough checks (or reports) failed, or it said so.
    Unhealthy,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// The position of a [`Snapshot`] in the registry's history: every snapshot
/// published has a stamp greater than every one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ChangeStamp(u64);

impl ChangeStamp {
    /// The stamp before any snapshot: waiting for a change since it returns
    /// at once.
    pub const ZERO: ChangeStamp = ChangeStamp(0);

    pub(crate) fn next(self) -> ChangeStamp {
        ChangeStamp(self.0.saturating_add(1))
    }

    /// The stamp as a number, for logs.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ChangeStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One server as the registry sees it. Cloning is cheap (a reference count).
///
/// `F` is the caller's [`FeatureSet`]; `C` is the caller's client for the
/// server, made once by the registry's connector when the endpoint was
/// discovered and kept, whatever its health, until the endpoint leaves.
pub struct View<F, C> {
    inner: Arc<ViewInner<F, C>>,
}

pub(crate) struct ViewInner<F, C> {
    pub(crate) endpoint: Endpoint,
    pub(crate) features: F,
    pub(crate) partition: Option<Partition>,
    pub(crate) health: Health,
    pub(crate) last_changed: Instant,
    pub(crate) last_error: Option<String>,
    pub(crate) client: C,
    /// Which discovery of the endpoint made `client`: distinct for each
    /// time the endpoint joins, kept across health changes, so a reader of
    /// two snapshots can tell a client kept from a client replaced.
    #[cfg_attr(
        not(feature = "tower"),
        expect(dead_code, reason = "only the tower feature's diff reads it")
    )]
    pub(crate) incarnation: u64,
}

impl<F, C> View<F, C> {
    pub(crate) fn new(inner: ViewInner<F, C>) -> Self {
        View {
            inner: Arc::new(inner),
        }
    }

    /// See [`ViewInner::incarnation`].
    #[cfg(feature = "tower")]
    pub(crate) fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Where the server is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// What it provides, as its last successful check said; an unhealthy
    /// view keeps what it last said, an unknown one has the empty set.
    pub fn features(&self) -> &F {
        &self.inner.features
    }

    /// Which partition it holds, as its last successful check said.
    pub fn partition(&self) -> Option<Partition> {
        self.inner.partition
    }

    /// What the registry believes of it.
    pub fn health(&self) -> Health {
        self.inner.health
    }

    /// Whether it is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.inner.health == Health::Healthy
    }

    /// When its health, features or partition last changed (or when it was
    /// discovered).
    pub fn last_changed(&self) -> Instant {
        self.inner.last_changed
    }

    /// Why it is not healthy: the failure (of a check, or callers' reports)
    /// that turned it unhealthy, kept while it stays so; `None` while it is
    /// healthy or unknown.
    pub fn last_error(&self) -> Option<&str> {
        self.inner.last_error.as_deref()
    }

    /// The caller's client for this server, ready to call.
    pub fn client(&self) -> &C {
        &self.inner.client
    }
}

impl<F, C> Clone for View<F, C> {
    fn clone(&self) -> Self {
        View {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<F: fmt::Debug, C> fmt::Debug for View<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("endpoint", &self.inner.endpoint)
            .field("health", &self.inner.health)
            .field("features", &self.inner.features)
            .field("partition", &self.inner.partition)
            .finish_non_exhaustive()
    }
}

/// The answer of [`Snapshot::healthy_views`] (and
/// [`Registry::healthy_views`](crate::Registry::healthy_views)): the views
/// it lists, sorted by endpoint, read from the snapshot they came from,
/// which it keeps alive. Cheap to make and to keep; [`to_vec`](Self::to_vec)
/// when owned views are wanted.
///
/// ```
/// # use std::collections::BTreeSet;
/// # use flotilla_viewreg::{Registry, RegistryConfig, StaticLocator, TcpProber};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// # let registry = Registry::start(StaticLocator::new([]), TcpProber::new(),
/// #     |_: &flotilla_core_types::Endpoint| (), RegistryConfig::default())?;
/// let serving = registry.healthy_views(&BTreeSet::from(["kv"]));
/// for view in &serving {
///     println!("{} serves kv", view.endpoint());
/// }
/// if let Some(first) = serving.first() {
///     let _client = first.client();
/// }
/// # assert!(serving.is_empty());
/// # Ok(())
/// # }
/// ```
pub struct HealthyViews<F, C> {
    views: Arc<[View<F, C>]>,
    positions: Vec<u32>,
}

impl<F, C> HealthyViews<F, C> {
    /// How many views it lists.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether it lists none.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The `index`th view listed, if there are that many.
    pub fn get(&self, index: usize) -> Option<&View<F, C>> {
        let position = *self.positions.get(index)?;
        self.views.get(position as usize)
    }

    /// The first view listed.
    pub fn first(&self) -> Option<&View<F, C>> {
        self.get(0)
    }

    /// The views listed, in order.
    pub fn iter(&self) -> HealthyIter<'_, F, C> {
        HealthyIter {
            views: &self.views,
            positions: self.positions.iter(),
        }
    }

    /// The views listed, as owned views (a reference count each).
    pub fn to_vec(&self) -> Vec<View<F, C>> {
        self.iter().cloned().collect()
    }
}

impl<'a, F, C> IntoIterator for &'a HealthyViews<F, C> {
    type Item = &'a View<F, C>;
    type IntoIter = HealthyIter<'a, F, C>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The views of a [`HealthyViews`], in order.
pub struct HealthyIter<'a, F, C> {
    views: &'a [View<F, C>],
    positions: std::slice::Iter<'a, u32>,
}

impl<'a, F, C> Iterator for HealthyIter<'a, F, C> {
    type Item = &'a View<F, C>;

    fn next(&mut self) -> Option<Self::Item> {
        let position = *self.positions.next()?;
        self.views.get(position as usize)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.positions.size_hint()
    }
}

impl<F, C> ExactSizeIterator for HealthyIter<'_, F, C> {}

impl<F, C> fmt::Debug for HealthyIter<'_, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthyIter")
            .field("left", &self.positions.len())
            .finish()
    }
}

impl<F, C> std::ops::Index<usize> for HealthyViews<F, C> {
    type Output = View<F, C>;

    /// # Panics
    ///
    /// If `index` is not below [`len`](Self::len), as a slice's does.
    fn index(&self, index: usize) -> &View<F, C> {
        &self.views[self.positions[index] as usize]
    }
}

impl<F, C> Clone for HealthyViews<F, C> {
    fn clone(&self) -> Self {
        HealthyViews {
            views: Arc::clone(&self.views),
            positions: self.positions.clone(),
        }
    }
}

impl<F: fmt::Debug, C> fmt::Debug for HealthyViews<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Everything the registry knew at one moment. Immutable: the registry
/// publishes a new one on each change, and a reader holding this one is
/// never disturbed.
pub struct Snapshot<F, C> {
    pub(crate) stamp: ChangeStamp,
    pub(crate) changed_at: Instant,
    /// Sorted by endpoint; shared with the [`HealthyViews`] answered from
    /// it.
    pub(crate) views: Arc<[View<F, C>]>,
    pub(crate) healthy: usize,
    pub(crate) panic: bool,
    pub(crate) locator_error: Option<String>,
    pub(crate) stopped: bool,
    /// The views grouped by feature set, for `healthy_views`.
    pub(crate) index: FeatureIndex<F>,
}

impl<F: FeatureSet, C> Snapshot<F, C> {
    /// This snapshot's stamp.
    pub fn stamp(&self) -> ChangeStamp {
        self.stamp
    }

    /// When it was published.
    pub fn changed_at(&self) -> Instant {
        self.changed_at
    }

    /// Every view, healthy or not, sorted by endpoint.
    pub fn all_views(&self) -> &[View<F, C>] {
        &self.views
    }

    /// The view of `endpoint`, if the locator lists it.
    pub fn view(&self, endpoint: &Endpoint) -> Option<&View<F, C>> {
        self.views
            .binary_search_by(|view| view.endpoint().cmp(endpoint))
            .ok()
            .and_then(|index| self.views.get(index))
    }

    /// The healthy views providing every feature of `features`, sorted by
    /// endpoint. In [panic mode](Self::is_panic) every view providing them
    /// is returned, healthy or not (check [`View::is_healthy`]), so that
    /// load spreads instead of crushing the few healthy servers left.
    ///
    /// Its cost is the number of distinct feature sets among the views plus
    /// what it returns, not the number of views (up to 64 distinct sets;
    /// views of further sets are tested one by one). The answer shares this
    /// snapshot's views instead of cloning each: what it returns costs four
    /// bytes a view, with no reference count touched per view.
    pub fn healthy_views(&self, features: &F) -> HealthyViews<F, C> {
        HealthyViews {
            views: Arc::clone(&self.views),
            positions: self.index.matching(&self.views, features, self.panic),
        }
    }

    /// What [`healthy_views`](Self::healthy_views) returns, borrowed from
    /// this snapshot instead of cloned: for a caller that only looks (picks
    /// one, counts, routes), skipping a reference count per view.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::collections::BTreeSet;
    /// # use flotilla_viewreg::{Registry, RegistryConfig, StaticLocator, TcpProber};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> anyhow::Result<()> {
    /// # let registry = Registry::start(StaticLocator::new([]), TcpProber::new(),
    /// #     |_: &flotilla_core_types::Endpoint| (), RegistryConfig::default())?;
    /// let snapshot = registry.snapshot();
    /// let serving_kv = snapshot.healthy_iter(&BTreeSet::from(["kv"])).count();
    /// # assert_eq!(serving_kv, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn healthy_iter<'a>(
        &'a self,
        features: &F,
    ) -> impl ExactSizeIterator<Item = &'a View<F, C>> + 'a {
        self.index
            .matching(&self.views, features, self.panic)
            .into_iter()
            .map(|position| &self.views[position as usize])
    }

    /// Whether [`healthy_views`](Self::healthy_views) lists `view` for
    /// `features`: the one rule, shared with the tower feature's diff.
    #[cfg_attr(
        not(feature = "tower"),
        expect(dead_code, reason = "only the tower feature's diff reads it")
    )]
    pub(crate) fn serves(&self, view: &View<F, C>, features: &F) -> bool {
        (self.panic || view.is_healthy()) && view.features().contains_all(features)
    }

    /// Whether fewer views are healthy than
    /// [`RegistryConfig::panic_threshold`](crate::RegistryConfig::panic_threshold)
    /// asks for. An empty registry is not in panic.
    pub fn is_panic(&self) -> bool {
        self.panic
    }

    /// Whether this is the registry's final snapshot (it holds no views).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Counts for a log line.
    pub fn summary(&self) -> Summary {
        let unknown = self
            .views
            .iter()
            .filter(|view| view.health() == Health::Unknown)
            .count();
        Summary {
            stamp: self.stamp,
            views: self.views.len(),
            healthy: self.healthy,
            unhealthy: self.views.len() - self.healthy - unknown,
            unknown,
            panic: self.panic,
            locator_error: self.locator_error.clone(),
            stopped: self.stopped,
        }
    }

    /// One line per view (endpoint, health, partition, features, last
    /// error), after the summary: for debugging.
    pub fn dump(&self) -> String {
        let mut out = self.summary().to_string();
        for view in self.views.iter() {
            out.push_str(&format!(
                "\n  {} {} partition={} features={:?}",
                view.endpoint(),
                view.health(),
                view.partition()
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                view.features()
            ));
            if let Some(error) = view.last_error() {
                out.push_str(&format!(" last_error={error:?}"));
            }
        }
        out
    }
}

impl<F: fmt::Debug, C> fmt::Debug for Snapshot<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("stamp", &self.stamp)
            .field("views", &self.views)
            .field("panic", &self.panic)
            .finish_non_exhaustive()
    }
}

/// The registry's state in numbers: what [`Registry::summary`] returns and
/// its worker report shows.
///
/// [`Registry::summary`]: crate::Registry::summary
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// The stamp of the snapshot counted.
    pub stamp: ChangeStamp,
    /// How many views the locator lists.
    pub views: usize,
    /// How many are healthy.
    pub healthy: usize,
    /// How many are unhealthy.
    pub unhealthy: usize,
    /// How many are not yet known.
    pub unknown: usize,
    /// Whether the registry is in panic mode.
    pub panic: bool,
    /// The locator's last error, while its last answer was one.
    pub locator_error: Option<String>,
    /// Whether the registry has stopped.
    pub stopped: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registry {}: {} views, {} healthy, {} unhealthy, {} unknown",
            self.stamp, self.views, self.healthy, self.unhealthy, self.unknown
        )?;
        if self.panic {
            f.write_str(", PANIC")?;
        }
        if let Some(error) = &self.locator_error {
            write!(f, ", locator failing: {error}")?;
        }
        if self.stopped {
            f.write_str(", stopped")?;
        }
        Ok(())
    }
}
