//! The etcd store against real etcd processes (flotilla-testkit): the store
//! contract side by side with the embedded store, two batchers and a
//! watcher agreeing, the death and stop bounds on the wall clock, and a
//! three-member cluster losing its leader and getting a member back.
//!
//! These run on the real clock: etcd's leases and elections do. The bounds
//! they hold are the crate's stated ones with a margin for a loaded
//! machine, and each wait is for an event, never a fixed sleep.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, GetOptions};
use flotilla_core_types::{Name, Worker};
use flotilla_presence::{
    Config, EtcdStore, Event, MemoryStore, PingBatch, PingBatcher, Pinger, PresenceStore,
    PruneRule, Reason, Slot, StoreError, Subscription, Watcher,
};
use flotilla_testkit::EtcdCluster;
use tokio::time::{Instant, timeout};

use crate::harness::{key, name};

/// Slack for a loaded CI machine on top of a stated bound.
const SLACK: Duration = Duration::from_secs(2);

async fn connect(endpoints: Vec<String>) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2))
        .with_require_leader(true);
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// One-second slots: a flush, a load and a ping every 250 ms.
fn fast_config() -> Config {
    Config::with_slot_length(Duration::from_secs(1))
}

/// The same operations on the embedded store and on etcd give the same
/// answers: incarnations, liveness, tombstones, pruning, scope removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_store_answers_as_the_embedded_one_does() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = EtcdStore::new(cluster.client().await?, &fast_config());
    let memory = MemoryStore::new();
    let scope = name("model-1");
    let (a, b, c) = (key(1), key(2), key(3));
    // A key that is a prefix of another keeps its own records.
    let nested = name("key-1/sub");
    let all = vec![a.clone(), b.clone(), c.clone(), nested.clone()];

    async fn script<S: PresenceStore>(
        store: &S,
        scope: &Name,
        keys: &[Name],
    ) -> Result<Vec<String>> {
        let (a, b, nested) = (&keys[0], &keys[1], &keys[3]);
        let mut seen = Vec::new();
        let a1 = store.begin(scope, a, Slot(10)).await?;
        let b1 = store.begin(scope, b, Slot(10)).await?;
        let n1 = store.begin(scope, nested, Slot(10)).await?;
        let a2 = store.begin(scope, a, Slot(11)).await?;
        seen.push(format!("{a1:?} {b1:?} {n1:?} {a2:?}"));
        let mut batch = PingBatch::new();
        batch.add(scope, Slot(12), a2);
        batch.add(scope, Slot(12), b1);
        store.write_pings(&batch).await?;
        // A retried write changes nothing.
        store.write_pings(&batch).await?;
        let mut later = PingBatch::new();
        later.add(scope, Slot(13), b1);
        store.write_pings(&later).await?;
        store.mark_stopped(scope, b1).await?;
        store.mark_stopped(scope, n1).await?;
        for since in [Slot(10), Slot(12), Slot(13), Slot(14)] {
            let loaded = store.load(scope, keys, since).await?;
            let mut shown: Vec<_> = loaded.iter().map(|(k, r)| format!("{k}={r:?}")).collect();
            shown.sort();
            seen.push(format!("since {since:?}: {shown:?}"));
        }
        let pruned = store
            .prune(PruneRule {
                keep_slots_from: Slot(13),
                forget_dead_before: Slot(12),
            })
            .await?;
        // Slot records are counted differently (one per writer in etcd).
        seen.push(format!(
            "pruned {} incarnations, {} tombstones",
            pruned.incarnations, pruned.tombstones
        ));
        // Asked from the first kept slot: what a reader asks after a prune
        // (it never asks from before the current slot's predecessor, which
        // the pruner keeps). Older pings are gone from etcd's slot records.
        let loaded = store.load(scope, keys, Slot(13)).await?;
        let mut shown: Vec<_> = loaded.iter().map(|(k, r)| format!("{k}={r:?}")).collect();
        shown.sort();
        seen.push(format!("after prune: {shown:?}"));
        store.remove_scope(scope).await?;
        seen.push(format!(
            "after removal: {:?}",
            store.load(scope, keys, Slot(0)).await?
        ));
        let again = store.begin(scope, a, Slot(20)).await?;
        seen.push(format!("numbers go on: {}", again > a2));
        Ok(seen)
    }

    let from_memory = script(&memory, &scope, &all).await?;
    let from_etcd = script(&etcd, &scope, &all).await?;
    assert_eq!(from_etcd, from_memory);
    // The script is not vacuous: it saw a stop, a prune and a removal.
    assert!(
        from_memory
            .iter()
            .any(|line| line.contains("stopped: true")),
        "{from_memory:#?}"
    );
    // a's first incarnation (superseded), and the nested key's (dead since
    // slot 10, with its tombstone).
    assert_eq!(from_memory[5], "pruned 2 incarnations, 1 tombstones");
    assert_eq!(from_memory[7], "after removal: {}");
    assert_eq!(from_memory[8], "numbers go on: true");
    Ok(())
}

/// Two processes allocating in one scope never get the same number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incarnations_are_unique_across_processes() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let config = fast_config();
    let first = EtcdStore::new(cluster.client().await?, &config);
    let second = EtcdStore::new(cluster.client().await?, &config);
    let scope = name("model-1");
    let mut tasks = Vec::new();
    for (index, store) in [first, second].into_iter().enumerate() {
        let scope = scope.clone();
        tasks.push(tokio::spawn(async move {
            let mut numbers = Vec::new();
            for n in 0..50 {
                numbers.push(store.begin(&scope, &key(index * 100 + n), Slot(1)).await?.0);
            }
            Ok::<_, StoreError>(numbers)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
    Ok(())
}

/// A slot record carries a lease, so etcd drops it without a pruner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_records_end_with_their_lease() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let client = cluster.client().await?;
    let store = EtcdStore::new(client.clone(), &fast_config());
    let scope = name("model-1");
    let being = store.begin(&scope, &key(1), Slot(5)).await?;
    let mut batch = PingBatch::new();
    batch.add(&scope, Slot(5), being);
    store.write_pings(&batch).await?;

    let mut slot_prefix = store.prefix().to_vec();
    slot_prefix.extend_from_slice(b"model-1/#slot/");
    let records = client
        .clone()
        .get(slot_prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let [record] = records.kvs() else {
        bail!("one slot record, got {:?}", records.kvs());
    };
    assert_ne!(record.lease(), 0, "the record is on a lease");
    let ttl = client
        .clone()
        .lease_time_to_live(record.lease(), None)
        .await?;
    assert!(
        (1..=3).contains(&ttl.granted_ttl()),
        "three 1 s slots: {}",
        ttl.granted_ttl()
    );

    // Wait for etcd to drop it (a condition, bounded).
    let deadline = Instant::now() + Duration::from_secs(3) + SLACK * 3;
    loop {
        let left = client
            .clone()
            .get(
                slot_prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        if left.count() == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the slot record outlived its lease");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Records etcd holds that presence did not write in its format are
/// reported as corrupt, naming the key, and never read as a death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_named_errors() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let client = cluster.client().await?;
    let store = EtcdStore::new(client.clone(), &fast_config());
    let scope = name("model-1");
    store.begin(&scope, &key(1), Slot(5)).await?;
    let cases: [(&str, &[u8]); 3] = [
        (
            "model-1/#slot/00000000000000000005/0000000000000001",
            b"[1, 0]",
        ),
        ("model-1/#being/key-2#00000000000000000009", b"five"),
        ("model-1/#stopped/7", b""),
    ];
    for (suffix, value) in cases {
        let mut bad = store.prefix().to_vec();
        bad.extend_from_slice(suffix.as_bytes());
        client.clone().put(bad.clone(), value, None).await?;
        let error = store
            .load(&scope, &[key(1)], Slot(5))
            .await
            .expect_err("an unreadable record");
        match &error {
            StoreError::Corrupt { location, .. } => assert!(location.ends_with(suffix), "{error}"),
            other => bail!("expected corrupt, got {other:?}"),
        }
        client.clone().delete(bad, None).await?;
    }
    assert!(store.load(&scope, &[key(1)], Slot(5)).await?[&key(1)].alive());
    Ok(())
}

/// A load reads only the beings written since the last one (one request
/// in the steady state), and still sees every change made by others: a
/// new incarnation, a prune of superseded ones, a being deleted by hand,
/// the whole scope removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_read_only_new_beings_and_still_see_every_change() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let config = fast_config();
    let reader = EtcdStore::new(cluster.client().await?, &config);
    let writer = EtcdStore::new(cluster.client().await?, &config);
    let client = cluster.client().await?;
    let scope = name("model-1");
    let keys: Vec<Name> = (0..3).map(key).collect();
    let mut first = Vec::new();
    for key in &keys {
        first.push(writer.begin(&scope, key, Slot(10)).await?);
    }
    // More beings than one page holds, so that reading them all takes
    // another request and reading only the new ones does not.
    for n in 0..1_000 {
        writer
            .begin(&scope, &name(&format!("other-{n}")), Slot(10))
            .await?;
    }
    let load = |reader: &EtcdStore| {
        let (reader, scope, keys) = (reader.clone(), scope.clone(), keys.clone());
        async move {
            let before = reader.requests_sent();
            let loaded = reader.load(&scope, &keys, Slot(10)).await?;
            let incarnations: Vec<_> = keys
                .iter()
                .map(|key| loaded.get(key).map(|record| record.incarnation))
                .collect();
            anyhow::Ok((incarnations, reader.requests_sent() - before))
        }
    };
    let everyone = |incarnations: &[flotilla_presence::Incarnation]| {
        incarnations.iter().copied().map(Some).collect::<Vec<_>>()
    };

    assert_eq!(
        load(&reader).await?,
        (everyone(&first), 2),
        "all, in two pages"
    );
    assert_eq!(load(&reader).await?, (everyone(&first), 1), "nothing new");
    // Another process restarts key 0: the new incarnation, in one request.
    let restarted = writer.begin(&scope, &keys[0], Slot(11)).await?;
    let mut now = first.clone();
    now[0] = restarted;
    assert_eq!(load(&reader).await?, (everyone(&now), 1));
    // A prune deletes the superseded incarnation: the count no longer
    // matches, so every being is read again (two more requests).
    let pruned = writer
        .prune(PruneRule {
            keep_slots_from: Slot(10),
            forget_dead_before: Slot(0),
        })
        .await?;
    assert_eq!(pruned.incarnations, 1);
    assert_eq!(load(&reader).await?, (everyone(&now), 3));
    assert_eq!(load(&reader).await?, (everyone(&now), 1));
    // A being deleted by hand (key 2's only one): the key is gone.
    let mut being = reader.prefix().to_vec();
    being.extend_from_slice(format!("model-1/#being/agent-2#{:020}", first[2].0).as_bytes());
    assert_eq!(client.clone().delete(being, None).await?.deleted(), 1);
    let (seen, requests) = load(&reader).await?;
    assert_eq!(seen, vec![Some(now[0]), Some(now[1]), None]);
    assert_eq!(requests, 3);
    // The scope removed, then started again.
    writer.remove_scope(&scope).await?;
    assert_eq!(load(&reader).await?.0, vec![None, None, None]);
    let again = writer.begin(&scope, &keys[1], Slot(12)).await?;
    assert_eq!(load(&reader).await?, (vec![None, Some(again), None], 1));
    Ok(())
}

struct Process {
    store: EtcdStore,
    batcher: PingBatcher,
}

impl Process {
    async fn start(cluster: &EtcdCluster, config: &Config) -> Result<Process> {
        let store = EtcdStore::new(connect(cluster.endpoints()).await?, config);
        let batcher = PingBatcher::start(store.clone(), config.clone())?;
        Ok(Process { store, batcher })
    }

    async fn pinger(&self, scope: &Name, key: &Name, config: &Config) -> Result<Pinger> {
        Ok(Pinger::start(
            self.store.clone(),
            self.batcher.clone(),
            scope.clone(),
            key.clone(),
            config.clone(),
        )
        .await?)
    }

    async fn stop(self) -> Result<()> {
        self.batcher.kill();
        self.batcher.wait().await?;
        Ok(())
    }
}

/// The next change of `key` on `subscription`, within `limit`, skipping
/// other keys' changes and touch events.
async fn change_of(
    subscription: &mut Subscription,
    key: &Name,
    limit: Duration,
) -> Result<flotilla_presence::Change> {
    let deadline = Instant::now() + limit;
    loop {
        let event = timeout(
            deadline.saturating_duration_since(Instant::now()),
            subscription.next(),
        )
        .await
        .with_context(|| format!("no change of {key} within {limit:?}"))?
        .context("the watcher stopped")?;
        if let Event::Change(change) = event
            && &change.key == key
        {
            return Ok(change);
        }
    }
}

/// Two processes, each with its own batcher, and a watcher in a third agree
/// on every key; a crashed pinger is reported expired within the death
/// bound, a stopped one as stopped within one load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batchers_and_a_watcher_agree() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let config = fast_config();
    let scope = name("model-1");
    let one = Process::start(&cluster, &config).await?;
    let two = Process::start(&cluster, &config).await?;
    let watching = EtcdStore::new(connect(cluster.endpoints()).await?, &config);
    let watcher = Watcher::start(watching, scope.clone(), config.clone())?;

    let keys: Vec<Name> = (0..10).map(key).collect();
    let mut pingers = HashMap::new();
    for (index, key) in keys.iter().enumerate() {
        let process = if index % 2 == 0 { &one } else { &two };
        pingers.insert(key.clone(), process.pinger(&scope, key, &config).await?);
    }
    let mut subscription = watcher.subscribe();
    subscription.watch_many(keys.clone()).await?;
    for key in &keys {
        watcher
            .wait_alive(key, config.effective_load_interval() + SLACK)
            .await?;
    }
    assert_eq!(watcher.alive_many(&keys).await?, vec![true; keys.len()]);

    // Alive for several slots, with no change reported after the start.
    let mut started = 0;
    let quiet_until = Instant::now() + 3 * config.slot_length;
    while let Ok(Some(event)) = timeout(
        quiet_until.saturating_duration_since(Instant::now()),
        subscription.next(),
    )
    .await
    {
        match event {
            Event::Change(change) if change.alive && change.reason == Reason::Started => {
                started += 1
            }
            other => bail!("a key that kept pinging changed: {other:?}"),
        }
    }
    assert_eq!(started, keys.len(), "one first state per key");

    // A crash (no tombstone): expired within 2·S + L.
    let crashed = keys[0].clone();
    let crashed_at = Instant::now();
    pingers.remove(&crashed).context("a pinger")?.abort();
    let change = change_of(&mut subscription, &crashed, config.death_bound() + SLACK).await?;
    assert_eq!((change.alive, change.reason), (false, Reason::Expired));
    assert!(
        crashed_at.elapsed() >= config.slot_length,
        "not before its last slot ended"
    );

    // A graceful stop: stopped within one load.
    let stopped = keys[1].clone();
    let pinger = pingers.remove(&stopped).context("a pinger")?;
    pinger.kill();
    pinger.wait().await?;
    let change = change_of(
        &mut subscription,
        &stopped,
        config.effective_load_interval() + SLACK,
    )
    .await?;
    assert_eq!((change.alive, change.reason), (false, Reason::Stopped));

    let mut expected = vec![true; keys.len()];
    expected[0] = false;
    expected[1] = false;
    assert_eq!(watcher.alive_many(&keys).await?, expected);
    for (_, pinger) in pingers {
        pinger.kill();
        pinger.wait().await?;
    }
    watcher.kill();
    watcher.wait().await?;
    one.stop().await?;
    two.stop().await?;
    Ok(())
}

/// Killing the leader of a three-member cluster (SIGKILL) and restarting
/// it later reports no key dead whose pinger kept running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_leader_and_a_returning_member_cause_no_false_deaths() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    // The batcher's writes may fail from the kill until a new leader is
    // elected and its client has moved on, while the watcher's reads
    // succeed: five-second slots tolerate 2.55 s of that (outage_tolerance),
    // several elections here, with requests bounded by one second.
    let config = Config::with_slot_length(Duration::from_secs(5));
    assert_eq!(config.outage_tolerance(), Duration::from_millis(2550));
    let request_timeout = Duration::from_secs(1);
    let scope = name("model-1");
    let store = EtcdStore::new(connect(cluster.endpoints()).await?, &config)
        .with_request_timeout(request_timeout);
    let process = Process {
        batcher: PingBatcher::start(store.clone(), config.clone())?,
        store,
    };
    let watcher = Watcher::start(
        EtcdStore::new(connect(cluster.endpoints()).await?, &config)
            .with_request_timeout(request_timeout),
        scope.clone(),
        config.clone(),
    )?;
    let keys: Vec<Name> = (0..20).map(key).collect();
    let mut pingers = Vec::new();
    for key in &keys {
        pingers.push(process.pinger(&scope, key, &config).await?);
    }
    for key in &keys {
        watcher
            .wait_alive(key, config.effective_load_interval() + SLACK)
            .await?;
    }
    let mut subscription = watcher.subscribe();
    subscription.watch_many(keys.clone()).await?;

    async fn no_deaths(
        subscription: &mut Subscription,
        batcher: &PingBatcher,
        lasting: Duration,
    ) -> Result<usize> {
        let until = Instant::now() + lasting;
        let mut touch_events = 0;
        while let Ok(Some(event)) = timeout(
            until.saturating_duration_since(Instant::now()),
            subscription.next(),
        )
        .await
        {
            match event {
                Event::Change(change) if change.alive => {}
                Event::Change(change) => bail!(
                    "a false death: {change:?}; the batcher: {:?}",
                    batcher.status()
                ),
                _ => touch_events += 1,
            }
        }
        Ok(touch_events)
    }
    no_deaths(&mut subscription, &process.batcher, config.slot_length).await?;

    let leader = cluster.leader().await?;
    cluster.kill(leader)?;
    // Through the election and three slots beyond the death bound.
    no_deaths(
        &mut subscription,
        &process.batcher,
        config.death_bound() + 2 * config.slot_length,
    )
    .await?;
    assert_eq!(watcher.alive_many(&keys).await?, vec![true; keys.len()]);

    cluster.restart(leader).await?;
    no_deaths(
        &mut subscription,
        &process.batcher,
        config.death_bound() + config.slot_length,
    )
    .await?;
    assert_eq!(watcher.alive_many(&keys).await?, vec![true; keys.len()]);

    for pinger in pingers {
        pinger.kill();
        pinger.wait().await?;
    }
    watcher.kill();
    watcher.wait().await?;
    process.stop().await?;
    Ok(())
}

/// On a cluster with TLS and authentication, a store made with the shared
/// options works as any other for the user whose role covers its prefix;
/// one whose role does not is refused when connecting, with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_connects_over_tls_as_a_user_held_to_its_role() -> Result<()> {
    use flotilla_core_types::etcd::EtcdConnectError;
    use flotilla_testkit::{OUTSIDER, PREFIX, USER};
    let cluster = EtcdCluster::with_tls_and_auth(1).await?;
    let options = |user: &str| cluster.options_as(Some(user));
    let prefix = format!("{PREFIX}presence/");
    let store = EtcdStore::connect(&options(USER)?, &fast_config(), prefix.clone()).await?;
    let scope = name("secure");
    let incarnation = store.begin(&scope, &key(1), Slot(10)).await?;
    let mut batch = PingBatch::new();
    batch.add(&scope, Slot(11), incarnation);
    store.write_pings(&batch).await?;
    let loaded = store.load(&scope, &[key(1)], Slot(10)).await?;
    assert!(loaded.contains_key(&key(1)), "{loaded:?}");

    let refused = EtcdStore::connect(&options(OUTSIDER)?, &fast_config(), prefix).await;
    assert!(
        matches!(&refused, Err(EtcdConnectError::PermissionDenied { .. })),
        "{:?}",
        refused.err()
    );
    Ok(())
}
