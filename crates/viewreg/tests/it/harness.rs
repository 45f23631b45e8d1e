//! Test doubles and helpers.
//!
//! [`Scripted`] is a prober told per endpoint what to answer (serve, fail,
//! not serving, no health service, hang); it records when each check
//! started and counts the checks still running. [`channel_locator`] is a
//! locator the test feeds by hand. [`Client`] is a client whose drops can
//! be observed.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use flotilla_core_types::Endpoint;
use flotilla_viewreg::{
    Health, Locator, LocatorError, Partition, ProbeError, ProbeOutcome, Prober, Registry,
    RegistryConfig, Snapshot, StreamLocator, WaitLimit,
};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(crate) type Features = BTreeSet<&'static str>;

/// The test cluster: every device it issued trusts every other.
fn cluster() -> &'static flotilla_identity::LocalCluster {
    static CLUSTER: std::sync::OnceLock<flotilla_identity::LocalCluster> =
        std::sync::OnceLock::new();
    CLUSTER
        .get_or_init(|| flotilla_identity::LocalCluster::new("viewreg tests").expect("a cluster"))
}

/// The trust of every device of the test cluster.
pub(crate) fn cluster_trust() -> std::sync::Arc<flotilla_identity::Trust> {
    cluster().trust()
}

/// TLS as the device `name` of the test cluster.
pub(crate) fn transport(name: &str) -> flotilla_identity::Transport {
    let device = flotilla_core_types::DeviceId::new(name).expect("a valid id");
    cluster().transport(&device).expect("a TLS configuration")
}

pub(crate) fn features(names: &[&'static str]) -> Features {
    names.iter().copied().collect()
}

pub(crate) fn ep(n: u8) -> Endpoint {
    Endpoint::new(&format!("10.0.0.{n}"), 80).expect("test endpoints are valid")
}

/// Round numbers and no jitter: checks every 5 s, timeout 1 s, unhealthy
/// after 3 failures, healthy after 2 successes, backoff doubling to 60 s.
pub(crate) fn config() -> RegistryConfig {
    let mut config = RegistryConfig::default().with_rng_seed(7);
    config.probe_jitter = 0.0;
    config
}

/// What [`Scripted`] answers for one endpoint.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Serve(Features, Option<Partition>),
    NotServing,
    NoHealthService,
    Fail,
    Hang,
}

pub(crate) fn serve(names: &[&'static str]) -> Answer {
    Answer::Serve(features(names), None)
}

#[derive(Default)]
struct Script {
    answers: HashMap<Endpoint, Answer>,
    started: Vec<(Endpoint, Instant)>,
}

/// A prober that answers as told; endpoints not told serve no features.
#[derive(Clone, Default)]
pub(crate) struct Scripted {
    script: Arc<Mutex<Script>>,
    running: Arc<AtomicUsize>,
}

impl Scripted {
    fn script(&self) -> MutexGuard<'_, Script> {
        self.script
            .lock()
            .expect("no test panics while holding the script")
    }

    pub(crate) fn set(&self, endpoint: &Endpoint, answer: Answer) {
        self.script().answers.insert(endpoint.clone(), answer);
    }

    /// When each check of `endpoint` started.
    pub(crate) fn checks_of(&self, endpoint: &Endpoint) -> Vec<Instant> {
        self.script()
            .started
            .iter()
            .filter(|(probed, _)| probed == endpoint)
            .map(|&(_, at)| at)
            .collect()
    }

    /// How many checks are running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// Counts a running check down when it ends or is dropped.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Prober<Features> for Scripted {
    async fn probe(&self, endpoint: &Endpoint) -> ProbeOutcome<Features> {
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(Arc::clone(&self.running));
        let answer = {
            let mut script = self.script();
            script.started.push((endpoint.clone(), Instant::now()));
            script
                .answers
                .get(endpoint)
                .cloned()
                .unwrap_or(Answer::Serve(Features::new(), None))
        };
        match answer {
            Answer::Serve(features, partition) => ProbeOutcome::Serving {
                features,
                partition,
            },
            Answer::NotServing => ProbeOutcome::NotServing,
            Answer::NoHealthService => ProbeOutcome::NoHealthService,
            Answer::Fail => ProbeOutcome::Failed(ProbeError::unreachable(
                endpoint,
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
            )),
            Answer::Hang => std::future::pending().await,
        }
    }
}

/// The client the tests' connector makes: drops are seen through
/// [`Clients::alive`].
#[derive(Debug, Clone)]
pub(crate) struct Client(#[allow(dead_code)] pub(crate) Arc<Endpoint>); // Held to be dropped; the tower tests compare it.

/// A client the connector made, held weakly, with its endpoint.
type Made = (Endpoint, Weak<Endpoint>);

/// Every client the connector made, weakly.
#[derive(Clone, Default)]
pub(crate) struct Clients(Arc<Mutex<Vec<Made>>>);

impl Clients {
    pub(crate) fn connector(&self) -> impl Fn(&Endpoint) -> Client + Send + Sync + 'static {
        let made = self.clone();
        move |endpoint: &Endpoint| {
            let client = Arc::new(endpoint.clone());
            made.0
                .lock()
                .expect("no test panics while holding the clients")
                .push((endpoint.clone(), Arc::downgrade(&client)));
            Client(client)
        }
    }

    /// How many clients were made for `endpoint`, and how many are alive.
    pub(crate) fn made_and_alive(&self, endpoint: &Endpoint) -> (usize, usize) {
        let made = self
            .0
            .lock()
            .expect("no test panics while holding the clients");
        let of: Vec<_> = made.iter().filter(|(e, _)| e == endpoint).collect();
        let alive = of
            .iter()
            .filter(|(_, weak)| weak.strong_count() > 0)
            .count();
        (of.len(), alive)
    }
}

pub(crate) type TestRegistry = Registry<Features, Client>;

/// Starts a registry over `locator` with the [`Scripted`] prober.
pub(crate) fn start<L: Locator>(
    locator: L,
    prober: &Scripted,
    config: RegistryConfig,
) -> (TestRegistry, Clients) {
    let clients = Clients::default();
    let registry = Registry::start(locator, prober.clone(), clients.connector(), config)
        .expect("the test config is valid");
    (registry, clients)
}

pub(crate) type Answers = Pin<Box<dyn Stream<Item = Result<Vec<Endpoint>, LocatorError>> + Send>>;

/// A locator fed by hand.
pub(crate) fn channel_locator() -> (
    mpsc::UnboundedSender<Result<Vec<Endpoint>, LocatorError>>,
    StreamLocator<Answers>,
) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let answers = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let answer = receiver.recv().await?;
        Some((answer, receiver))
    });
    (sender, StreamLocator::new(Box::pin(answers) as Answers))
}

/// Waits on the registry's changes (no polling) until `condition` holds,
/// for at most an hour of paused time.
pub(crate) async fn until<C: Clone + Send + Sync + 'static>(
    registry: &Registry<Features, C>,
    mut condition: impl FnMut(&Snapshot<Features, C>) -> bool,
) -> Arc<Snapshot<Features, C>> {
    let limit = WaitLimit::timeout(Duration::from_secs(3600));
    let mut snapshot = registry.snapshot();
    while !condition(&snapshot) {
        snapshot = registry
            .wait_for_change(snapshot.stamp(), &limit)
            .await
            .expect("the condition held within an hour");
    }
    snapshot
}

/// The health of `endpoint` in `snapshot`, `None` when it is not listed.
pub(crate) fn health_of<C>(
    snapshot: &Snapshot<Features, C>,
    endpoint: &Endpoint,
) -> Option<Health> {
    snapshot.view(endpoint).map(|view| view.health())
}

/// Until `endpoint` has `health`.
pub(crate) async fn until_health<C: Clone + Send + Sync + 'static>(
    registry: &Registry<Features, C>,
    endpoint: &Endpoint,
    health: Health,
) -> Arc<Snapshot<Features, C>> {
    until(registry, |snapshot| {
        health_of(snapshot, endpoint) == Some(health)
    })
    .await
}

/// Lets every task that can run, run, moving the paused clock by 1 ms.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}
