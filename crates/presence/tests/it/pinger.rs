//! Pingers: a new incarnation per start, a graceful stop seen at once, an
//! abort that expires, pings through any recorder.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_presence::{DirectRecorder, Error, PingBatcher, Pinger, PresenceStore, Reason};
use tokio::time::Instant;

use crate::harness::{Flaky, Parts, fast_config, key, next_change, scope};

#[tokio::test(start_paused = true)]
async fn each_start_is_a_new_incarnation_and_a_restart_is_reported_as_one() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let (mut changes, first) = parts.subscription(std::slice::from_ref(&agent)).await;
    assert_eq!(first[0].reason, Reason::NeverSeen);

    let pinger = parts.pinger(&agent).await;
    let started = next_change(&mut changes).await;
    assert_eq!((started.alive, started.reason), (true, Reason::Started));
    assert_eq!(started.incarnation, Some(pinger.incarnation()));

    // A crash and a restart between two loads: one event, a restart.
    pinger.abort();
    pinger.wait().await.expect("aborts cleanly");
    let again = parts.pinger(&agent).await;
    assert!(again.incarnation() > pinger.incarnation());
    let restarted = next_change(&mut changes).await;
    assert_eq!(
        (restarted.alive, restarted.reason),
        (true, Reason::Restarted)
    );
    assert_eq!(restarted.incarnation, Some(again.incarnation()));

    // Staying alive produces nothing more, over many slots.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(changes.try_next().is_none());
    again.kill();
    again.wait().await.expect("stops cleanly");
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_is_reported_as_stopped_at_the_next_load() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let pinger = parts.pinger(&agent).await;
    let (mut changes, first) = parts.subscription(std::slice::from_ref(&agent)).await;
    assert_eq!(first[0].reason, Reason::Started);

    let stopped_at = Instant::now();
    pinger.kill();
    pinger.wait().await.expect("stops cleanly");
    let stopped = next_change(&mut changes).await;
    assert_eq!((stopped.alive, stopped.reason), (false, Reason::Stopped));
    assert!(stopped_at.elapsed() <= parts.config.effective_load_interval());
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_abort_writes_no_tombstone_and_the_key_expires() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let pinger = parts.pinger(&agent).await;
    let (mut changes, _first) = parts.subscription(std::slice::from_ref(&agent)).await;
    pinger.abort();
    pinger.wait().await.expect("aborts cleanly");
    let expired = next_change(&mut changes).await;
    assert_eq!((expired.alive, expired.reason), (false, Reason::Expired));
    assert_eq!(expired.incarnation, Some(pinger.incarnation()));
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pinger_pings_through_a_direct_recorder_too() {
    let parts = Parts::start(fast_config());
    let recorder = DirectRecorder::new(parts.store.clone(), parts.config.clone()).expect("valid");
    let agent = key(1);
    let pinger = Pinger::start(
        parts.store.clone(),
        recorder,
        scope(),
        agent.clone(),
        parts.config.clone(),
    )
    .await
    .expect("starts");
    // Long after its birth slot has passed, its own pings keep it alive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(parts.watcher.alive(&agent).await.expect("answers"));
    assert!(parts.store.inner.counts(&scope()).pings > 0);
    pinger.abort();
    pinger.wait().await.expect("aborts");
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pinger_whose_batcher_stopped_fails_and_one_that_cannot_begin_is_not_started() {
    let store = Flaky::default();
    let config = fast_config();
    let batcher = PingBatcher::start(store.clone(), config.clone()).expect("valid");
    let pinger = Pinger::start(
        store.clone(),
        batcher.clone(),
        scope(),
        key(1),
        config.clone(),
    )
    .await
    .expect("starts");
    batcher.kill();
    batcher.wait().await.expect("stops");
    let ended = pinger.wait().await.expect_err("its pings are refused");
    assert!(
        matches!(
            ended.find::<Error>(),
            Some(Error::Stopped { part: "batcher" })
        ),
        "{ended}"
    );

    store.set_unreachable(true);
    let refused = Pinger::start(store.clone(), batcher, scope(), key(2), config).await;
    assert!(matches!(refused, Err(Error::Store(_))));
    store.set_unreachable(false);
    let loaded = store
        .load(&scope(), &[key(2)], flotilla_presence::Slot(0))
        .await
        .expect("loads");
    assert!(loaded.is_empty(), "nothing was begun");
}

#[tokio::test(start_paused = true)]
async fn a_tombstone_that_cannot_be_written_is_the_pingers_error() {
    let parts = Parts::start(fast_config());
    let pinger = parts.pinger(&key(1)).await;
    parts.store.set_unreachable(true);
    pinger.kill();
    let ended = pinger.wait().await.expect_err("the tombstone fails");
    assert!(
        matches!(ended.find::<Error>(), Some(Error::Store(_))),
        "{ended}"
    );
    parts.store.set_unreachable(false);
    parts.stop().await;
}
