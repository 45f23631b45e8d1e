//! The pruner: exact counts before and after, under churn storage follows
//! the live keys, and nothing a reader consults is removed.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_presence::{PruneReport, Pruner, StoreCounts};

use crate::harness::{Parts, fast_config, key, scope};

#[tokio::test(start_paused = true)]
async fn a_prune_removes_superseded_incarnations_old_slots_and_long_dead_keys_exactly() {
    let mut config = fast_config();
    config.forget_dead_after = Duration::from_secs(5);
    // Only explicit prunes.
    config.prune_interval = Some(Duration::from_secs(3600));
    let parts = Parts::start(config.clone());
    let pruner = Pruner::start(parts.store.clone(), config.clone()).expect("valid");

    // Key 1 restarts twice (three incarnations, two superseded); key 2
    // stops gracefully; key 3 runs throughout.
    let mut restarts = Vec::new();
    for _ in 0..3 {
        let pinger = parts.pinger(&key(1)).await;
        pinger.abort();
        pinger.wait().await.expect("aborts");
        restarts.push(pinger);
    }
    let stopping = parts.pinger(&key(2)).await;
    stopping.kill();
    stopping.wait().await.expect("stops");
    let running = parts.pinger(&key(3)).await;
    // Ten slots of pings from key 3.
    tokio::time::sleep(Duration::from_millis(10_100)).await;
    parts.batcher.sync().await.expect("flushes");

    let before = parts.store.inner.counts(&scope());
    assert_eq!((before.incarnations, before.tombstones), (5, 1));
    assert!(before.slots >= 10, "{before:?}");
    let report = pruner.prune_now().await.expect("prunes");
    // Superseded: key 1's first two. Dead for more than 5 s: key 1's last
    // and key 2 (with its tombstone). Slots: all but the last three.
    assert_eq!(
        report,
        PruneReport {
            slots: before.slots - 3,
            incarnations: 4,
            tombstones: 1,
        }
    );
    assert_eq!(
        parts.store.inner.counts(&scope()),
        StoreCounts {
            incarnations: 1,
            tombstones: 0,
            slots: 3,
            pings: 3,
        }
    );
    // What readers consult is intact: key 3 alive, the others dead.
    assert_eq!(
        parts
            .watcher
            .alive_many(&[key(1), key(2), key(3)])
            .await
            .expect("answers"),
        [false, false, true]
    );
    // A second prune at once finds nothing.
    assert_eq!(
        pruner.prune_now().await.expect("prunes"),
        PruneReport::default()
    );
    assert_eq!(pruner.status().prunes, 2);
    running.abort();
    pruner.kill();
    pruner.wait().await.expect("stops");
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn under_churn_storage_follows_the_live_keys() {
    let mut config = fast_config();
    config.forget_dead_after = Duration::from_secs(3);
    let parts = Parts::start(config.clone());
    let pruner = Pruner::start(parts.store.clone(), config.clone()).expect("valid");
    // Ten keys, each restarting every second for a minute.
    let mut pingers = Vec::new();
    for n in 0..10 {
        pingers.push(parts.pinger(&key(n)).await);
    }
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for pinger in &mut pingers {
            pinger.abort();
            pinger.wait().await.expect("aborts");
            *pinger = parts.pinger(pinger.key()).await;
        }
    }
    pruner.prune_now().await.expect("prunes");
    let counts = parts.store.inner.counts(&scope());
    // 610 incarnations were born; one per key is left.
    assert_eq!(counts.incarnations, 10, "{counts:?}");
    assert!(counts.slots <= 3, "{counts:?}");
    assert!(pruner.status().removed.incarnations >= 600);
    for pinger in pingers {
        pinger.abort();
    }
    pruner.kill();
    parts.stop().await;
}
