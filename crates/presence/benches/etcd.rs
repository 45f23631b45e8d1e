//! What presence costs a real etcd, beside what a user would pick instead,
//! measured in the same run on one etcd started by flotilla-testkit, with
//! one-second slots (a death is reported within 2·S + L = 2.25 s):
//!
//! - requests per second for 10,000 live keys: presence (one batcher for
//!   every pinger, one watcher of every key; the writers' and the
//!   watcher's requests counted apart), beside one lease per key with a
//!   keep-alive every third of its TTL of 2 s (etcd's own client's rhythm;
//!   the shortest TTL etcd grants at its default election timeout, and so
//!   the nearest detection bound), whose keys a watch on their prefix
//!   would follow with no further requests;
//! - the time from a pinger's death (aborted: no tombstone) to the
//!   watcher's `Expired` event, with the 10,000 keys live, beside the bound.
//!
//! A measuring binary, not a criterion benchmark: each figure is a rate or
//! a latency over a window on the wall clock, printed one per line. Run
//! with `cargo bench -p flotilla-presence --features etcd --bench etcd`
//! (needs `etcd` on the PATH, as the tests do); the results and their
//! goals are in docs/benchmarks.md. Takes no arguments (any given by cargo
//! are ignored).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, PutOptions};
use flotilla_core_types::{Name, Worker};
use flotilla_presence::{Config, EtcdStore, Event, PingBatcher, Pinger, Reason, Watcher};
use flotilla_testkit::EtcdCluster;
use tokio::task::JoinSet;
use tokio::time::timeout;

const KEYS: usize = 10_000;
/// How long each request rate is counted over.
const WINDOW: Duration = Duration::from_secs(10);
/// Deaths timed.
const DEATHS: usize = 12;
/// The lease a user would give each key, and its keep-alive rhythm.
const LEASE_TTL_SECONDS: i64 = 2;
/// Requests a setup phase keeps in flight.
const IN_FLIGHT: usize = 64;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("a tokio runtime")?;
    runtime.block_on(measure())
}

async fn connect(cluster: &EtcdCluster) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10));
    Ok(Client::connect(cluster.endpoints(), Some(options)).await?)
}

async fn measure() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let config = Config::with_slot_length(Duration::from_secs(1));
    let scope = Name::new("model-1")?;
    let keys: Vec<Name> = (0..KEYS)
        .map(|n| Name::new(format!("agent-{n}")))
        .collect::<Result<_, _>>()?;

    // Presence: one process's batcher and its pingers, and a watcher with
    // its own connection, as in a second process.
    let writing = EtcdStore::new(connect(&cluster).await?, &config);
    let batcher = PingBatcher::start(writing.clone(), config.clone())?;
    let mut pingers = start_pingers(&writing, &batcher, &scope, &keys, &config).await?;
    let watching = EtcdStore::new(connect(&cluster).await?, &config);
    let watcher = Watcher::start(watching.clone(), scope.clone(), config.clone())?;
    let mut subscription = watcher.subscribe();
    subscription.watch_many(keys.clone()).await?;
    let mut alive = 0;
    while let Some(Event::Change(change)) = subscription.try_next() {
        alive += usize::from(change.alive);
    }
    if alive != KEYS {
        bail!("{alive} of {KEYS} keys alive after their pingers started");
    }
    // Two slots to settle, then count.
    tokio::time::sleep(2 * config.slot_length).await;
    let (writes_before, loads_before) = (writing.requests_sent(), watching.requests_sent());
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let elapsed = started.elapsed().as_secs_f64();
    let writes = (writing.requests_sent() - writes_before) as f64 / elapsed;
    let loads = (watching.requests_sent() - loads_before) as f64 / elapsed;
    let status = watcher.status();
    println!(
        "etcd: presence, {KEYS} live keys, S = 1 s: writers {writes:.1} requests/s, watcher {loads:.1} requests/s, together {:.1} requests/s ({} loads, {} failed)",
        writes + loads,
        status.loads,
        status.failed_loads
    );

    // Deaths, timed from the abort to the event, one at a time.
    let bound = config.death_bound();
    let mut deaths = Vec::with_capacity(DEATHS);
    for _ in 0..DEATHS {
        let (key, pinger) = pingers.pop().context("a pinger left")?;
        let died = Instant::now();
        pinger.abort();
        let event = timeout(bound * 3, subscription.next())
            .await
            .with_context(|| format!("no death of {key} within {:?}", bound * 3))?
            .context("the watcher stopped")?;
        // Every other key keeps pinging: the next event is this death.
        match event {
            Event::Change(change) if change.key == key && change.reason == Reason::Expired => {
                deaths.push(died.elapsed());
            }
            other => bail!("expected {key} to expire, got {other:?}"),
        }
    }
    deaths.sort();
    println!(
        "etcd: death to event, {DEATHS} deaths among {KEYS} live keys: min {:.2} s, p50 {:.2} s, max {:.2} s (bound 2·S + L = {:.2} s)",
        deaths[0].as_secs_f64(),
        deaths[DEATHS / 2].as_secs_f64(),
        deaths[DEATHS - 1].as_secs_f64(),
        bound.as_secs_f64()
    );

    for (_, pinger) in pingers {
        pinger.abort();
    }
    drop(subscription);
    watcher.kill();
    watcher.wait().await?;
    batcher.kill();
    batcher.wait().await?;

    // The alternative: a lease per key, kept alive by the key's owner.
    let client = connect(&cluster).await?;
    let leases = LeasePerKey::start(&client, &keys).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent_before, expired_before) = leases.counts();
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (sent, expired) = leases.counts();
    let rate = (sent - sent_before) as f64 / elapsed;
    println!(
        "etcd: a lease per key, {KEYS} keys, TTL {LEASE_TTL_SECONDS} s, keep-alive every TTL/3: {rate:.0} requests/s ({} leases found expired in the window)",
        expired - expired_before
    );
    println!(
        "etcd: fewer requests than a lease per key: writers {:.0}x, writers and watcher {:.0}x (goal: at least 1000x)",
        rate / writes,
        rate / (writes + loads)
    );
    leases.stop().await;
    Ok(())
}

async fn start_pingers(
    store: &EtcdStore,
    batcher: &PingBatcher,
    scope: &Name,
    keys: &[Name],
    config: &Config,
) -> Result<Vec<(Name, Pinger)>> {
    let mut started = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(IN_FLIGHT) {
        let mut starting = JoinSet::new();
        for key in chunk {
            let (store, batcher) = (store.clone(), batcher.clone());
            let (scope, key, config) = (scope.clone(), key.clone(), config.clone());
            starting.spawn(async move {
                let pinger = Pinger::start(store, batcher, scope, key.clone(), config).await;
                pinger.map(|pinger| (key, pinger))
            });
        }
        while let Some(pinger) = starting.join_next().await {
            started.push(pinger??);
        }
    }
    Ok(started)
}

/// One lease per key, each kept alive by its own task on its own
/// keep-alive stream, as etcd-client offers it; counts the requests sent
/// and the leases etcd answered as already expired.
struct LeasePerKey {
    tasks: JoinSet<()>,
    sent: Arc<AtomicU64>,
    expired: Arc<AtomicU64>,
}

impl LeasePerKey {
    async fn start(client: &Client, keys: &[Name]) -> Result<LeasePerKey> {
        let sent = Arc::new(AtomicU64::new(0));
        let expired = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for chunk in keys.chunks(IN_FLIGHT) {
            let mut granting = JoinSet::new();
            for key in chunk {
                let (mut client, key, sent) = (client.clone(), key.clone(), sent.clone());
                granting.spawn(async move {
                    let lease = client.lease_grant(LEASE_TTL_SECONDS, None).await?.id();
                    let options = PutOptions::new().with_lease(lease);
                    client
                        .put(format!("leases/{key}"), "", Some(options))
                        .await?;
                    sent.fetch_add(2, Ordering::Relaxed);
                    anyhow::Ok(lease)
                });
            }
            while let Some(lease) = granting.join_next().await {
                let lease = lease??;
                let (mut client, sent, expired) = (client.clone(), sent.clone(), expired.clone());
                tasks.spawn(async move {
                    let _ = keep_alive(&mut client, lease, &sent, &expired).await;
                });
            }
        }
        Ok(LeasePerKey {
            tasks,
            sent,
            expired,
        })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.expired.load(Ordering::Relaxed),
        )
    }

    async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn keep_alive(
    client: &mut Client,
    lease: i64,
    sent: &AtomicU64,
    expired: &AtomicU64,
) -> Result<()> {
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    sent.fetch_add(1, Ordering::Relaxed);
    let rhythm = Duration::from_secs(LEASE_TTL_SECONDS as u64) / 3;
    // Spread the keep-alives over the rhythm, as owners started at
    // different times would.
    tokio::time::sleep(rhythm.mul_f64(fastrand::f64())).await;
    let mut next = tokio::time::Instant::now();
    loop {
        keeper.keep_alive().await?;
        sent.fetch_add(1, Ordering::Relaxed);
        let answer = answers.message().await?.context("the stream ended")?;
        if answer.ttl() <= 0 {
            expired.fetch_add(1, Ordering::Relaxed);
        }
        next += rhythm;
        tokio::time::sleep_until(next).await;
    }
}
