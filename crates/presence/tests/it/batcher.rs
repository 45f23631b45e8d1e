//! The batcher: one write per flush whatever the number of keys, failed
//! flushes kept and retried, the last flush on stop, pings refused after.

use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_presence::{Error, FlushReport, PingBatch, PingBatcher, PresenceStore, Slot};

use crate::harness::{Flaky, fast_config, key, name, scope};

#[tokio::test(start_paused = true)]
async fn a_flush_writes_one_record_per_scope_and_slot_whatever_the_number_of_keys() {
    let store = Flaky::default();
    let config = fast_config();
    let batcher = PingBatcher::start(store.clone(), config.clone()).expect("valid config");
    let now = config.current_slot();
    let mut incarnations = Vec::new();
    for n in 0..1_000 {
        incarnations.push(store.begin(&scope(), &key(n), now).await.expect("begins"));
    }
    for incarnation in &incarnations {
        batcher.ping(&scope(), *incarnation).expect("pings");
        batcher.ping(&scope(), *incarnation).expect("pings twice");
    }
    let other = name("model-2");
    batcher.ping(&other, incarnations[0]).expect("pings");
    let written = batcher.sync().await.expect("flushes");
    assert_eq!(
        written,
        FlushReport {
            records: 2,
            pings: 1_001
        }
    );
    assert_eq!(store.writes.load(Ordering::SeqCst), 1);
    assert_eq!(store.inner.counts(&scope()).pings, 1_000);

    // Nothing gathered: nothing written.
    assert_eq!(
        batcher.sync().await.expect("flushes"),
        FlushReport::default()
    );
    assert_eq!(store.writes.load(Ordering::SeqCst), 1);
    batcher.kill();
    batcher.wait().await.expect("stops cleanly");
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_keeps_its_pings_says_so_and_the_retry_writes_them() {
    let store = Flaky::default();
    let config = fast_config();
    let batcher = PingBatcher::start(store.clone(), config.clone()).expect("valid config");
    let first = store
        .begin(&scope(), &key(1), config.current_slot())
        .await
        .expect("begins");
    store.fail_writes.store(true, Ordering::SeqCst);
    batcher.ping(&scope(), first).expect("pings");
    assert!(matches!(batcher.sync().await, Err(Error::Store(_))));
    // The timer's flushes fail too, and the status says so.
    tokio::time::sleep(config.flush_interval * 3).await;
    let status = batcher.status();
    assert!(status.is_failing());
    assert_eq!(status.pending, 1);
    assert!(status.consecutive_failures >= 3, "{status:?}");
    assert!(status.last_error.is_some());
    assert_eq!(store.inner.counts(&scope()).pings, 0);

    store.fail_writes.store(false, Ordering::SeqCst);
    tokio::time::sleep(config.flush_interval).await;
    let status = batcher.status();
    assert!(!status.is_failing(), "{status:?}");
    assert_eq!((status.pending, status.last_error.is_none()), (0, true));
    assert_eq!(store.inner.counts(&scope()).pings, 1);
    batcher.kill();
    batcher.wait().await.expect("stops cleanly");
}

#[tokio::test(start_paused = true)]
async fn writing_the_same_pings_again_changes_nothing() {
    let store = Flaky::default();
    let incarnation = store
        .begin(&scope(), &key(1), Slot(5))
        .await
        .expect("begins");
    let mut batch = PingBatch::new();
    batch.add(&scope(), Slot(5), incarnation);
    batch.add(&scope(), Slot(6), incarnation);
    store.write_pings(&batch).await.expect("writes");
    let once = store.inner.counts(&scope());
    store.write_pings(&batch).await.expect("writes again");
    assert_eq!(store.inner.counts(&scope()), once);
    assert_eq!((once.slots, once.pings), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn stopping_flushes_what_was_gathered_and_later_pings_are_refused() {
    let store = Flaky::default();
    let mut config = fast_config();
    config.flush_interval = Duration::from_secs(60);
    config.slot_length = Duration::from_secs(600);
    let batcher = PingBatcher::start(store.clone(), config.clone()).expect("valid config");
    let incarnation = store
        .begin(&scope(), &key(1), config.current_slot())
        .await
        .expect("begins");
    batcher.ping(&scope(), incarnation).expect("pings");
    batcher.kill();
    batcher.wait().await.expect("stops cleanly");
    assert_eq!(store.inner.counts(&scope()).pings, 1);
    assert!(matches!(
        batcher.ping(&scope(), incarnation),
        Err(Error::Stopped { part: "batcher" })
    ));
    assert!(matches!(batcher.sync().await, Err(Error::Stopped { .. })));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_by_every_part() {
    let mut config = fast_config();
    config.slot_length = Duration::from_millis(10);
    let store = Flaky::default();
    assert!(matches!(
        PingBatcher::start(store.clone(), config.clone()),
        Err(Error::InvalidConfig {
            field: "slot_length",
            ..
        })
    ));
    assert!(flotilla_presence::Watcher::start(store.clone(), scope(), config.clone()).is_err());
    assert!(flotilla_presence::Pruner::start(store.clone(), config.clone()).is_err());
    assert!(flotilla_presence::DirectRecorder::new(store, config).is_err());
}
