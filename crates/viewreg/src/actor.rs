//! The registry's actor: the one task that owns every view's state.
//!
//! It takes in three kinds of events (locator answers, probe results and
//! callers' failure reports), applies the health rules of
//! [`HealthTracker`], and whenever something a reader can see has changed
//! publishes a new immutable [`Snapshot`] through the `ArcSwap` that every
//! handle reads, with the next [`ChangeStamp`] on a `watch` channel for the
//! waiters. Checks run as tasks of a `JoinSet`, each bounded by the probe
//! timeout, so no check waits for another; the schedule of the next checks
//! is a `DelayQueue`. The locator runs on a task of its own, so it never
//! needs to be cancel safe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use flotilla_core_types::{Endpoint, WorkerResult, catch_panic};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::Instrument;

use crate::health::{Check, HealthTracker};
use crate::index::FeatureIndex;
use crate::view::ViewInner;
use crate::{
    ChangeStamp, EndpointSet, FeatureSet, Health, Locator, LocatorError, Partition, ProbeError,
    ProbeOutcome, Prober, RegistryConfig, Snapshot, View,
};

/// How many locator answers may wait for the actor: answers are whole sets,
/// so a short queue loses nothing but the locator's pace.
const LOCATOR_QUEUE: usize = 4;

/// The most events (finished checks, reports, checks falling due) applied
/// between two snapshots when they are all ready at once: a snapshot copies
/// every view, so a burst (a thousand first checks answering together) is
/// published a batch at a time instead of once per event. Only events
/// already ready are batched; none is ever waited for.
const PUBLISH_BATCH: usize = 256;

/// Makes the caller's client for an endpoint.
pub(crate) type Connector<C> = Arc<dyn Fn(&Endpoint) -> C + Send + Sync>;

/// What the locator's task tells the actor.
enum LocatorEvent {
    Answer(EndpointSet),
    Failed(LocatorError),
}

/// One probe's result, tagged with the incarnation of the endpoint it
/// checked, so that a result for an endpoint that left and came back is
/// not taken for the new one's.
struct ProbeDone<F> {
    endpoint: Endpoint,
    incarnation: u64,
    outcome: ProbeOutcome<F>,
}

/// One endpoint the locator lists.
struct Entry<F, C> {
    incarnation: u64,
    tracker: HealthTracker,
    view: View<F, C>,
    /// The pending next check, while no check runs.
    due: Option<delay_queue::Key>,
    /// The running check.
    probe: Option<AbortHandle>,
}

pub(crate) struct Actor<F, C, P> {
    config: RegistryConfig,
    prober: Arc<P>,
    connector: Connector<C>,
    entries: BTreeMap<Endpoint, Entry<F, C>>,
    schedule: DelayQueue<Endpoint>,
    probes: JoinSet<ProbeDone<F>>,
    next_incarnation: u64,
    rng: fastrand::Rng,
    snapshot: Arc<ArcSwap<Snapshot<F, C>>>,
    stamps: watch::Sender<ChangeStamp>,
    stamp: ChangeStamp,
    locator_error: Option<String>,
    /// Whether something a reader sees changed since the last publish.
    dirty: bool,
}

impl<F, C, P> Actor<F, C, P>
where
    F: FeatureSet,
    C: Clone + Send + Sync + 'static,
    P: Prober<F>,
{
    pub(crate) fn new(
        config: RegistryConfig,
        prober: P,
        connector: Connector<C>,
        snapshot: Arc<ArcSwap<Snapshot<F, C>>>,
        stamps: watch::Sender<ChangeStamp>,
    ) -> Self {
        let rng = config
            .rng_seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Actor {
            config,
            prober: Arc::new(prober),
            connector,
            entries: BTreeMap::new(),
            schedule: DelayQueue::new(),
            probes: JoinSet::new(),
            next_incarnation: 0,
            rng,
            snapshot,
            stamps,
            stamp: ChangeStamp::ZERO,
            locator_error: None,
            dirty: false,
        }
    }

    /// The empty snapshot a registry starts with.
    pub(crate) fn initial_snapshot() -> Snapshot<F, C> {
        Snapshot {
            stamp: ChangeStamp::ZERO,
            changed_at: Instant::now(),
            views: Arc::from([]),
            healthy: 0,
            panic: false,
            locator_error: None,
            stopped: false,
            index: FeatureIndex::build::<C>(&[]),
        }
    }

    pub(crate) async fn run<L: Locator>(
        mut self,
        locator: L,
        mut reports: mpsc::Receiver<Endpoint>,
        stop: CancellationToken,
    ) -> WorkerResult {
        let (locator_events, mut answers) = mpsc::channel(LOCATOR_QUEUE);
        let locator_stop = stop.child_token();
        let locator_task = tokio::spawn(
            run_locator(
                locator,
                locator_events,
                locator_stop.clone(),
                self.config.clone(),
            )
            .in_current_span(),
        );
        let mut locator_running = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = answers.recv(), if locator_running => match event {
                    Some(LocatorEvent::Answer(set)) => self.apply_set(set),
                    Some(LocatorEvent::Failed(error)) => self.locator_failed(&error),
                    None => {
                        tracing::debug!("the locator has no more answers; keeping the last set");
                        locator_running = false;
                    }
                },
                report = reports.recv() => match report {
                    Some(endpoint) => self.apply_report(&endpoint),
                    // Every handle is gone: nobody can read the registry.
                    None => break,
                },
                Some(expired) = self.schedule.next() => self.start_probe(expired.into_inner()),
                Some(joined) = self.probes.join_next() => {
                    // Aborted checks (endpoints gone) have nothing to say.
                    if let Ok(done) = joined {
                        self.apply_probe(done);
                    }
                }
            }
            self.apply_ready(&mut reports, PUBLISH_BATCH - 1);
            if self.dirty {
                self.publish(false);
            }
        }
        locator_stop.cancel();
        self.probes.shutdown().await;
        // The locator task only awaits its locator and the stop token; it
        // ends at once, and a panic in the locator is its own business.
        let _ended = locator_task.await;
        self.entries.clear();
        self.publish(true);
        Ok(())
    }

    /// Applies up to `budget` more events that are ready now, waiting for
    /// none.
    fn apply_ready(&mut self, reports: &mut mpsc::Receiver<Endpoint>, budget: usize) {
        for _ in 0..budget {
            if let Some(joined) = self.probes.try_join_next() {
                if let Ok(done) = joined {
                    self.apply_probe(done);
                }
            } else if let Ok(endpoint) = reports.try_recv() {
                self.apply_report(&endpoint);
            } else if let Some(Some(expired)) = self.schedule.next().now_or_never() {
                self.start_probe(expired.into_inner());
            } else {
                return;
            }
        }
    }

    fn apply_set(&mut self, set: EndpointSet) {
        if self.locator_error.take().is_some() {
            tracing::info!("the locator answers again");
            self.dirty = true;
        }
        let gone: Vec<Endpoint> = self
            .entries
            .keys()
            .filter(|endpoint| !set.contains(*endpoint))
            .cloned()
            .collect();
        for endpoint in gone {
            self.remove(&endpoint);
        }
        for endpoint in set {
            if !self.entries.contains_key(&endpoint) {
                self.add(endpoint);
            }
        }
    }

    fn add(&mut self, endpoint: Endpoint) {
        tracing::info!(%endpoint, "view discovered");
        let client = (self.connector)(&endpoint);
        self.next_incarnation += 1;
        let view = View::new(ViewInner {
            endpoint: endpoint.clone(),
            features: F::default(),
            partition: None,
            health: Health::Unknown,
            last_changed: Instant::now(),
            last_error: None,
            client,
            incarnation: self.next_incarnation,
        });
        let due = Some(self.schedule.insert(endpoint.clone(), Duration::ZERO));
        let entry = Entry {
            incarnation: self.next_incarnation,
            tracker: HealthTracker::new(),
            view,
            due,
            probe: None,
        };
        self.entries.insert(endpoint, entry);
        self.dirty = true;
    }

    /// Drops an endpoint with its client, its pending check and its running
    /// one.
    fn remove(&mut self, endpoint: &Endpoint) {
        let Some(entry) = self.entries.remove(endpoint) else {
            return;
        };
        tracing::info!(%endpoint, "view left the locator");
        if let Some(key) = entry.due {
            self.schedule.remove(&key);
        }
        if let Some(probe) = entry.probe {
            probe.abort();
        }
        self.dirty = true;
    }

    fn locator_failed(&mut self, error: &LocatorError) {
        tracing::warn!(error = %error, "locator failed; keeping the last set");
        if self.locator_error.is_none() {
            self.locator_error = Some(error.to_string());
            self.dirty = true;
        }
    }

    fn start_probe(&mut self, endpoint: Endpoint) {
        let Some(entry) = self.entries.get_mut(&endpoint) else {
            return;
        };
        entry.due = None;
        let prober = Arc::clone(&self.prober);
        let timeout = self.config.probe_timeout;
        let incarnation = entry.incarnation;
        let probe = async move {
            let checked = tokio::time::timeout(timeout, catch_panic(prober.probe(&endpoint)));
            let outcome = match checked.await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panicked)) => ProbeOutcome::Failed(ProbeError::Protocol {
                    endpoint: endpoint.clone(),
                    reason: panicked.to_string(),
                }),
                Err(_elapsed) => ProbeOutcome::Failed(ProbeError::TimedOut {
                    endpoint: endpoint.clone(),
                    after: timeout,
                }),
            };
            ProbeDone {
                endpoint,
                incarnation,
                outcome,
            }
        };
        entry.probe = Some(self.probes.spawn(probe.in_current_span()));
    }

    fn apply_probe(&mut self, done: ProbeDone<F>) {
        let Some(entry) = self.entries.get_mut(&done.endpoint) else {
            return;
        };
        if entry.incarnation != done.incarnation {
            return;
        }
        entry.probe = None;
        let (check, served, error) = match done.outcome {
            ProbeOutcome::Serving {
                features,
                partition,
            } => (Check::Success, Some((features, partition)), None),
            ProbeOutcome::NotServing => (Check::NotServing, None, Some("not serving".to_owned())),
            ProbeOutcome::NoHealthService => {
                (Check::Failure, None, Some("no health service".to_owned()))
            }
            ProbeOutcome::Failed(error) => (Check::Failure, None, Some(error.to_string())),
        };
        let changed = entry.tracker.on_check(check, &self.config);
        let (features, partition) = match served {
            Some(served) => served,
            // A view that fails keeps what it last said it provides.
            None => (entry.view.features().clone(), entry.view.partition()),
        };
        if changed {
            tracing::info!(
                endpoint = %done.endpoint,
                health = %entry.tracker.health(),
                error = error.as_deref().unwrap_or(""),
                "view health changed"
            );
        }
        let features_changed = !(features.contains_all(entry.view.features())
            && entry.view.features().contains_all(&features));
        if changed || features_changed || partition != entry.view.partition() {
            let why = if entry.tracker.health() == Health::Healthy {
                None
            } else {
                error.or_else(|| entry.view.last_error().map(str::to_owned))
            };
            rebuild(entry, features, partition, why);
            self.dirty = true;
        }
        let delay = jittered(
            entry.tracker.next_delay(&self.config),
            self.config.probe_jitter,
            &mut self.rng,
        );
        entry.due = Some(self.schedule.insert(done.endpoint, delay));
    }

    fn apply_report(&mut self, endpoint: &Endpoint) {
        let views = self.entries.len();
        let healthy = self.healthy_count();
        let ejected = self
            .entries
            .values()
            .filter(|entry| {
                entry.tracker.health() == Health::Unhealthy && entry.tracker.ejected_by_report()
            })
            .count();
        // Rounded down: the cap is a whole number of views, at least one.
        let cap = ((views as f64 * self.config.max_passive_ejection).floor() as usize).max(1);
        let Some(entry) = self.entries.get_mut(endpoint) else {
            return;
        };
        let may_eject = ejected < cap && healthy >= 2;
        if entry.tracker.report_would_eject(&self.config) && !may_eject {
            tracing::debug!(%endpoint, ejected, cap, "reported failure held by the passive cap");
        }
        if entry.tracker.on_report(may_eject, &self.config) {
            tracing::info!(%endpoint, "view unhealthy by reported failures");
            let features = entry.view.features().clone();
            let partition = entry.view.partition();
            rebuild(
                entry,
                features,
                partition,
                Some("failures reported by callers".to_owned()),
            );
            self.dirty = true;
        }
    }

    fn healthy_count(&self) -> usize {
        self.entries
            .values()
            .filter(|entry| entry.tracker.health() == Health::Healthy)
            .count()
    }

    fn publish(&mut self, stopped: bool) {
        self.dirty = false;
        self.stamp = self.stamp.next();
        let views: Vec<View<F, C>> = self.entries.values().map(|e| e.view.clone()).collect();
        let healthy = self.healthy_count();
        let panic = !views.is_empty()
            && (healthy as f64) < self.config.panic_threshold * views.len() as f64;
        let snapshot = Snapshot {
            stamp: self.stamp,
            changed_at: Instant::now(),
            index: FeatureIndex::build(&views),
            views: Arc::from(views),
            healthy,
            panic,
            locator_error: self.locator_error.clone(),
            stopped,
        };
        self.snapshot.store(Arc::new(snapshot));
        // Stored before sent: a waiter woken by the stamp finds the snapshot.
        self.stamps.send_replace(self.stamp);
    }
}

/// A new view for `entry` from its tracker's health and what it provides.
fn rebuild<F: FeatureSet, C: Clone>(
    entry: &mut Entry<F, C>,
    features: F,
    partition: Option<Partition>,
    error: Option<String>,
) {
    entry.view = View::new(ViewInner {
        endpoint: entry.view.endpoint().clone(),
        features,
        partition,
        health: entry.tracker.health(),
        last_changed: Instant::now(),
        last_error: error,
        client: entry.view.client().clone(),
        incarnation: entry.incarnation,
    });
}

/// `delay` shortened by a random fraction of up to `jitter` of itself.
fn jittered(delay: Duration, jitter: f64, rng: &mut fastrand::Rng) -> Duration {
    delay.mul_f64(1.0 - jitter * rng.f64())
}

/// Runs the locator: forwards its answers, and after an error waits a
/// doubling delay before asking again.
async fn run_locator<L: Locator>(
    mut locator: L,
    events: mpsc::Sender<LocatorEvent>,
    stop: CancellationToken,
    config: RegistryConfig,
) {
    let mut retry_delay = config.locator_retry_delay;
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = locator.next_endpoints() => answer,
        };
        let event = match answer {
            None => return,
            Some(Ok(set)) => {
                retry_delay = config.locator_retry_delay;
                LocatorEvent::Answer(set)
            }
            Some(Err(error)) => LocatorEvent::Failed(error),
        };
        let failed = matches!(event, LocatorEvent::Failed(_));
        if events.send(event).await.is_err() {
            return;
        }
        if failed {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry_delay) => {}
            }
            retry_delay = (retry_delay * 2).min(config.max_locator_retry_delay);
        }
    }
}
