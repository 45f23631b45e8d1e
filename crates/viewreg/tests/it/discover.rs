//! The `tower` feature: `Registry::discover` as a tower `Discover` stream.
//! Its inserts and removals as views turn healthy and unhealthy, leave and
//! come back, and match a feature filter or not; panic mode; the end when
//! the registry stops; no task; and a real p2c balancer routing over it.
//!
//! Every stream is read through a [`Follower`], which holds what a
//! balancer would (key to client), fails on any change the `Discover`
//! contract forbids, and checks after each read that it holds exactly
//! what `healthy_views` lists, with the views' own clients.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

use flotilla_core_types::Endpoint;
use flotilla_viewreg::{Error, Health, Registry, StaticLocator, ViewDiscover, Worker};
use futures_util::stream::FusedStream;
use futures_util::{FutureExt, StreamExt};
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::util::rng::HasherRng;
use tower::{BoxError, Service, ServiceExt};

use crate::harness::{
    Answer, Client, Features, Scripted, TestRegistry, channel_locator, config, ep, features, serve,
    settle, start, until, until_health,
};

type Item = Result<Change<Endpoint, Client>, Error>;

/// A stream's consumer: what it was given, checked against the registry.
struct Follower {
    stream: ViewDiscover<Features, Client>,
    features: Features,
    held: BTreeMap<Endpoint, Client>,
}

impl Follower {
    fn new(registry: &TestRegistry, wanted: &[&'static str]) -> Self {
        Follower {
            stream: registry.discover(features(wanted)),
            features: features(wanted),
            held: BTreeMap::new(),
        }
    }

    /// Everything the stream yields without waiting, as data ("+1" inserts
    /// ep(1), "-1" removes it), after which what it holds is exactly what
    /// `registry.healthy_views` lists.
    fn read(&mut self, registry: &TestRegistry) -> Vec<String> {
        let seen = self.read_unchecked();
        let listed: Vec<(Endpoint, Client)> = registry
            .healthy_views(&self.features)
            .iter()
            .map(|view| (view.endpoint().clone(), view.client().clone()))
            .collect();
        let held: Vec<_> = self.held.iter().collect();
        assert_eq!(held.len(), listed.len(), "held {held:?}, listed {listed:?}");
        for ((endpoint, client), (listed, view_client)) in held.into_iter().zip(&listed) {
            assert_eq!(endpoint, listed);
            assert!(
                same(client, view_client),
                "{endpoint} holds the view's client"
            );
        }
        seen
    }

    /// As [`read`](Self::read), without comparing with the registry (for a
    /// stopped one).
    fn read_unchecked(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(item) = self.stream.next().now_or_never() {
            let Some(item) = item else {
                seen.push("end".to_owned());
                break;
            };
            seen.push(self.take(item));
        }
        seen
    }

    /// Applies one item as a balancer would, holding the contract.
    fn take(&mut self, item: Item) -> String {
        match item {
            Ok(Change::Insert(endpoint, client)) => {
                let name = format!("+{}", short(&endpoint));
                let replaced = self.held.insert(endpoint, client);
                assert!(replaced.is_none(), "{name}: inserted while held");
                name
            }
            Ok(Change::Remove(endpoint)) => {
                let name = format!("-{}", short(&endpoint));
                assert!(self.held.remove(&endpoint).is_some(), "{name}: not held");
                name
            }
            Err(error) => format!("error: {error}"),
        }
    }

    fn client(&self, endpoint: &Endpoint) -> Option<&Client> {
        self.held.get(endpoint)
    }
}

/// `10.0.0.7:80` as `7`, as the tests' `ep(7)`.
fn short(endpoint: &Endpoint) -> String {
    let text = endpoint.to_string();
    let host = text.strip_suffix(":80").unwrap_or(&text);
    host.strip_prefix("10.0.0.").unwrap_or(host).to_owned()
}

/// Whether two clients are the one the connector made once.
fn same(a: &Client, b: &Client) -> bool {
    Arc::ptr_eq(&a.0, &b.0)
}

#[test]
fn the_stream_can_go_where_a_balancer_goes() {
    // Behind tower's Buffer (a task of its own) or shared across threads.
    fn check<T: Send + Sync + Unpin + 'static>() {}
    check::<ViewDiscover<Features, Client>>();
}

#[tokio::test(start_paused = true)]
async fn the_first_poll_inserts_every_listed_view() {
    let prober = Scripted::default();
    prober.set(&ep(1), serve(&["kv"]));
    prober.set(&ep(2), serve(&["kv", "sql"]));
    prober.set(&ep(3), Answer::Fail);
    prober.set(&ep(4), serve(&["sql"]));
    let (registry, _clients) = start(StaticLocator::new((1..=4).map(ep)), &prober, config());
    until(&registry, |s| {
        s.all_views().len() == 4 && s.summary().unknown == 0
    })
    .await;

    for (wanted, inserted) in [
        (&[][..], &["+1", "+2", "+4"][..]),
        (&["kv"], &["+1", "+2"]),
        (&["kv", "sql"], &["+2"]),
        (&["blob"], &[]),
    ] {
        let mut follower = Follower::new(&registry, wanted);
        assert_eq!(follower.read(&registry), inserted, "{wanted:?}");
        assert!(follower.read(&registry).is_empty(), "then it waits");
    }
}

#[tokio::test(start_paused = true)]
async fn views_turning_unhealthy_are_removed_and_inserted_when_healthy_again() {
    let prober = Scripted::default();
    let (registry, clients) = start(StaticLocator::new((1..=3).map(ep)), &prober, config());
    let mut follower = Follower::new(&registry, &[]);
    assert!(follower.read(&registry).is_empty(), "nothing checked yet");

    until(&registry, |s| s.summary().healthy == 3).await;
    assert_eq!(follower.read(&registry), ["+1", "+2", "+3"]);
    let first = follower.client(&ep(2)).cloned().expect("held");

    prober.set(&ep(2), Answer::NotServing);
    until_health(&registry, &ep(2), Health::Unhealthy).await;
    assert_eq!(follower.read(&registry), ["-2"]);

    prober.set(&ep(2), serve(&[]));
    until_health(&registry, &ep(2), Health::Healthy).await;
    assert_eq!(follower.read(&registry), ["+2"]);
    let again = follower.client(&ep(2)).expect("held");
    assert!(same(&first, again), "the registry kept its client");
    assert_eq!(clients.made_and_alive(&ep(2)), (1, 1));

    // A change the filter does not see (a partition) yields nothing.
    let partition = flotilla_viewreg::Partition::new(0, 2);
    prober.set(&ep(3), Answer::Serve(features(&[]), partition));
    until(&registry, |s| {
        s.view(&ep(3)).is_some_and(|v| v.partition() == partition)
    })
    .await;
    assert!(follower.read(&registry).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_view_that_leaves_and_comes_back_is_removed_then_inserted_with_its_new_client() {
    let prober = Scripted::default();
    let (locator, answers) = channel_locator();
    let (registry, clients) = start(answers, &prober, config());
    let mut follower = Follower::new(&registry, &[]);
    locator
        .send(Ok(vec![ep(1), ep(2)]))
        .expect("registry listens");
    until(&registry, |s| s.summary().healthy == 2).await;
    assert_eq!(follower.read(&registry), ["+1", "+2"]);
    let first = follower.client(&ep(1)).cloned().expect("held");

    // Seen leaving, seen coming back.
    locator.send(Ok(vec![ep(2)])).expect("registry listens");
    until(&registry, |s| s.view(&ep(1)).is_none()).await;
    assert_eq!(follower.read(&registry), ["-1"]);
    locator
        .send(Ok(vec![ep(1), ep(2)]))
        .expect("registry listens");
    until_health(&registry, &ep(1), Health::Healthy).await;
    assert_eq!(follower.read(&registry), ["+1"]);
    let second = follower.client(&ep(1)).cloned().expect("held");
    assert!(!same(&first, &second), "a new client");
    drop(first);

    // Gone and back between two reads: the client changed under the same
    // key, so the old one is removed before the new one is inserted.
    locator.send(Ok(vec![ep(2)])).expect("registry listens");
    until(&registry, |s| s.view(&ep(1)).is_none()).await;
    locator
        .send(Ok(vec![ep(1), ep(2)]))
        .expect("registry listens");
    until_health(&registry, &ep(1), Health::Healthy).await;
    assert_eq!(follower.read(&registry), ["-1", "+1"]);
    let third = follower.client(&ep(1)).expect("held");
    assert!(!same(&second, third));
    drop(second);
    assert_eq!(
        clients.made_and_alive(&ep(1)),
        (3, 1),
        "only the newest lives"
    );

    // Back but not yet checked: not listed, so not inserted.
    locator.send(Ok(vec![ep(2)])).expect("registry listens");
    until(&registry, |s| s.view(&ep(1)).is_none()).await;
    prober.set(&ep(1), Answer::Hang);
    locator
        .send(Ok(vec![ep(1), ep(2)]))
        .expect("registry listens");
    until(&registry, |s| s.view(&ep(1)).is_some()).await;
    assert_eq!(follower.read(&registry), ["-1"]);
}

#[tokio::test(start_paused = true)]
async fn feature_filters_insert_and_remove_as_views_provide_the_features_or_not() {
    let prober = Scripted::default();
    prober.set(&ep(1), serve(&["kv"]));
    prober.set(&ep(2), serve(&["sql"]));
    prober.set(&ep(3), serve(&["kv"]));
    let (registry, _clients) = start(StaticLocator::new((1..=3).map(ep)), &prober, config());
    let mut kv = Follower::new(&registry, &["kv"]);
    let mut sql = Follower::new(&registry, &["sql"]);
    until(&registry, |s| s.summary().healthy == 3).await;
    assert_eq!(kv.read(&registry), ["+1", "+3"]);
    assert_eq!(sql.read(&registry), ["+2"]);

    // ep(1) stays healthy but changes what it provides.
    prober.set(&ep(1), serve(&["sql"]));
    until(&registry, |s| {
        s.view(&ep(1)).is_some_and(|v| v.features().contains("sql"))
    })
    .await;
    assert_eq!(kv.read(&registry), ["-1"]);
    assert_eq!(sql.read(&registry), ["+1"]);

    prober.set(&ep(1), serve(&["kv", "sql"]));
    until(&registry, |s| {
        s.view(&ep(1)).is_some_and(|v| v.features().contains("kv"))
    })
    .await;
    assert_eq!(kv.read(&registry), ["+1"]);
    assert!(sql.read(&registry).is_empty(), "still provides sql");

    // A view the filter does not list turning unhealthy: nothing for kv.
    prober.set(&ep(2), Answer::NotServing);
    until_health(&registry, &ep(2), Health::Unhealthy).await;
    assert!(kv.read(&registry).is_empty());
    assert_eq!(sql.read(&registry), ["-2"]);
}

#[tokio::test(start_paused = true)]
async fn in_panic_mode_the_stream_follows_healthy_views_over_every_view() {
    let prober = Scripted::default();
    for n in 1..=4 {
        prober.set(&ep(n), serve(&["kv"]));
    }
    let (registry, _clients) = start(StaticLocator::new((1..=4).map(ep)), &prober, config());
    let mut follower = Follower::new(&registry, &["kv"]);
    until(&registry, |s| s.summary().healthy == 4).await;
    assert_eq!(follower.read(&registry), ["+1", "+2", "+3", "+4"]);

    prober.set(&ep(1), Answer::NotServing);
    until_health(&registry, &ep(1), Health::Unhealthy).await;
    assert_eq!(follower.read(&registry), ["-1"]);
    prober.set(&ep(2), Answer::NotServing);
    until_health(&registry, &ep(2), Health::Unhealthy).await;
    assert_eq!(follower.read(&registry), ["-2"], "half healthy: no panic");

    // One of four healthy: panic, and every view providing kv is listed.
    prober.set(&ep(3), Answer::NotServing);
    let panicked = until_health(&registry, &ep(3), Health::Unhealthy).await;
    assert!(panicked.is_panic());
    assert_eq!(follower.read(&registry), ["+1", "+2"], "ep(3) stays listed");

    prober.set(&ep(3), serve(&["kv"]));
    let calm = until_health(&registry, &ep(3), Health::Healthy).await;
    assert!(!calm.is_panic());
    assert_eq!(follower.read(&registry), ["-1", "-2"]);
}

#[tokio::test(start_paused = true)]
async fn when_the_registry_stops_the_stream_removes_everything_then_ends() {
    let prober = Scripted::default();
    let (registry, clients) = start(StaticLocator::new([ep(1), ep(2)]), &prober, config());
    let mut follower = Follower::new(&registry, &[]);
    until(&registry, |s| s.summary().healthy == 2).await;
    assert_eq!(follower.read(&registry), ["+1", "+2"]);

    // A consumer waiting on the stream is woken by the stop.
    let waiting = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(item) = follower.stream.next().await {
            seen.push(follower.take(item));
        }
        (seen, follower)
    });
    settle().await;
    registry.kill();
    registry.wait().await.expect("clean stop");
    let (seen, mut follower) = waiting.await.expect("the consumer ends");
    assert_eq!(seen, ["-1", "-2", "error: the registry is stopped"]);
    assert!(follower.held.is_empty());
    assert!(follower.stream.is_terminated());
    assert_eq!(follower.read_unchecked(), ["end"], "and stays ended");
    assert_eq!(
        clients.made_and_alive(&ep(1)),
        (1, 0),
        "the stream kept no client"
    );

    let mut late = Follower::new(&registry, &[]);
    assert_eq!(
        late.read_unchecked(),
        ["error: the registry is stopped", "end"]
    );
}

#[tokio::test(start_paused = true)]
async fn the_stream_runs_no_task_and_dropping_it_releases_the_registry() {
    let prober = Scripted::default();
    let (registry, clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    until_health(&registry, &ep(1), Health::Healthy).await;
    settle().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks = metrics.num_alive_tasks();

    let mut follower = Follower::new(&registry, &[]);
    assert_eq!(follower.read(&registry), ["+1"]);
    settle().await;
    assert_eq!(metrics.num_alive_tasks(), tasks, "waiting spawned nothing");

    // The stream is a registry handle: with the others gone it still runs.
    let stream = follower.stream;
    drop(follower.held);
    drop(registry);
    settle().await;
    assert_eq!(clients.made_and_alive(&ep(1)), (1, 1));
    drop(stream);
    settle().await;
    assert_eq!(
        clients.made_and_alive(&ep(1)),
        (1, 0),
        "the registry stopped"
    );
}

/// Each server's count of the requests it served.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<Endpoint, usize>>>);

impl Calls {
    fn count(&self, endpoint: &Endpoint) {
        *self.map().entry(endpoint.clone()).or_default() += 1;
    }

    /// The counts of ep(1), ep(2), … ep(n), then zeroed.
    fn take(&self, n: u8) -> Vec<usize> {
        let mut map = self.map();
        let counts = (1..=n)
            .map(|i| map.get(&ep(i)).copied().unwrap_or(0))
            .collect();
        map.clear();
        counts
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Endpoint, usize>> {
        self.0
            .lock()
            .expect("no test panics while holding the calls")
    }
}

/// Sends `n` requests through `balancer`, each once it is ready.
async fn send<S: Service<(), Error = BoxError>>(balancer: &mut S, n: usize) {
    for _ in 0..n {
        let ready = balancer.ready().await.expect("the balancer has a server");
        ready.call(()).await.expect("served");
    }
}

#[tokio::test(start_paused = true)]
async fn a_p2c_balancer_routes_only_to_healthy_servers() {
    let prober = Scripted::default();
    prober.set(&ep(4), Answer::Fail);
    let calls = Calls::default();
    let connect = {
        let calls = calls.clone();
        move |endpoint: &Endpoint| {
            let (endpoint, calls) = (endpoint.clone(), calls.clone());
            tower::service_fn(move |()| {
                calls.count(&endpoint);
                std::future::ready(Ok::<_, Infallible>(()))
            })
        }
    };
    let registry = Registry::start(
        StaticLocator::new((1..=4).map(ep)),
        prober.clone(),
        connect,
        config(),
    )
    .expect("the test config is valid");
    let discover = PendingRequestsDiscover::new(
        registry.discover(features(&[])),
        CompleteOnResponse::default(),
    );
    // A fixed hasher: the same choices on every run.
    let rng = HasherRng::with_hasher(BuildHasherDefault::<DefaultHasher>::default());
    let mut balancer = Balance::from_rng(discover, rng);
    until(&registry, |s| {
        s.all_views().len() == 4 && s.summary().unknown == 0
    })
    .await;

    send(&mut balancer, 60).await;
    let counts = calls.take(4);
    assert!(counts[..3].iter().all(|&n| n > 0), "{counts:?}");
    assert_eq!(counts[3], 0, "never the unhealthy ep(4): {counts:?}");
    assert_eq!(balancer.len(), 3);

    prober.set(&ep(2), Answer::NotServing);
    until_health(&registry, &ep(2), Health::Unhealthy).await;
    send(&mut balancer, 60).await;
    let counts = calls.take(4);
    assert_eq!((counts[1], counts[3]), (0, 0), "{counts:?}");
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");

    prober.set(&ep(2), serve(&[]));
    until_health(&registry, &ep(2), Health::Healthy).await;
    send(&mut balancer, 60).await;
    let counts = calls.take(4);
    assert!(counts[1] > 0, "ep(2) serves again: {counts:?}");
    assert_eq!(counts[3], 0, "{counts:?}");

    registry.kill();
    registry.wait().await.expect("clean stop");
    let failed = balancer
        .ready()
        .await
        .map(|_| ())
        .expect_err("no servers after the stop");
    let discovery = failed
        .downcast_ref::<tower::balance::error::Discover>()
        .expect("a discovery error");
    let source = std::error::Error::source(discovery).and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(source, Some(Error::Stopped)), "{failed}");
    // Polled again, the balancer has no servers and nothing to wait for
    // but its callers' patience: wrap it in tower's Buffer, which fails
    // every later call with that first error, or drop it on the error.
    assert!(balancer.ready().now_or_never().is_none());
    assert_eq!(balancer.len(), 0);
}
