//! Watchers: first states, one event per transition, watching twice, slow
//! subscribers, the out-of-touch rule, the answers and waits, removal.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_presence::{Error, Event, PresenceStore, Reason};

use crate::harness::{Parts, buffered, fast_config, key, next_change, next_event, scope};

#[tokio::test(start_paused = true)]
async fn a_watch_gives_the_current_state_first_for_every_kind_of_key() {
    let parts = Parts::start(fast_config());
    let (alive, stopped, expired, unknown) = (key(1), key(2), key(3), key(4));
    let _alive = parts.pinger(&alive).await;
    let gone = parts.pinger(&stopped).await;
    gone.kill();
    gone.wait().await.expect("stops");
    let crashed = parts.pinger(&expired).await;
    crashed.abort();
    crashed.wait().await.expect("aborts");
    tokio::time::sleep(parts.config.death_bound()).await;

    let keys = [
        alive.clone(),
        stopped.clone(),
        expired.clone(),
        unknown.clone(),
    ];
    let (_changes, first) = parts.subscription(&keys).await;
    let reasons: Vec<_> = first
        .iter()
        .map(|change| (change.key.clone(), change.alive, change.reason))
        .collect();
    for expected in [
        (alive, true, Reason::Started),
        (stopped, false, Reason::Stopped),
        (expired, false, Reason::Expired),
        (unknown, false, Reason::NeverSeen),
    ] {
        assert!(
            reasons.contains(&expected),
            "{expected:?} not in {reasons:?}"
        );
    }
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watching_a_key_twice_is_idempotent_and_a_second_subscriber_gets_its_own_first_state() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let (mut changes, _first) = parts.subscription(std::slice::from_ref(&agent)).await;
    changes.watch(agent.clone()).await.expect("watches again");
    parts.watcher.sync().await.expect("loads");
    assert!(buffered(&mut changes).is_empty(), "no second first state");

    let (_other, first) = parts.subscription(std::slice::from_ref(&agent)).await;
    assert_eq!(first[0].reason, Reason::NeverSeen);
    assert_eq!(parts.watcher.status().subscribers, 2);
    assert_eq!(parts.watcher.status().keys, 1);
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_holds_up_nobody_and_reads_the_latest_state() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let (mut slow, _) = parts.subscription(std::slice::from_ref(&agent)).await;
    let (mut fast, _) = parts.subscription(std::slice::from_ref(&agent)).await;
    // Start, crash and restart many times; the fast subscriber sees every
    // transition, the slow one takes nothing until the end.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let pinger = parts.pinger(&agent).await;
        seen.push(next_change(&mut fast).await.reason);
        pinger.kill();
        pinger.wait().await.expect("stops");
        seen.push(next_change(&mut fast).await.reason);
    }
    assert_eq!(seen, [Reason::Started, Reason::Stopped].repeat(5));
    // The slow one's buffer holds one change: the latest state.
    let pending = buffered(&mut slow);
    let [Event::Change(latest)] = pending.as_slice() else {
        panic!("one change, got {pending:?}")
    };
    assert_eq!((latest.alive, latest.reason), (false, Reason::Stopped));
    assert_eq!(slow.coalesced(), 9);
    let last = parts.pinger(&agent).await;
    let latest = next_change(&mut slow).await;
    assert_eq!(
        (latest.reason, latest.incarnation),
        (Reason::Started, Some(last.incarnation()))
    );
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn out_of_touch_reports_no_deaths_and_back_in_touch_waits_for_the_batchers() {
    let parts = Parts::start(fast_config());
    let (running, crashing) = (key(1), key(2));
    let _running = parts.pinger(&running).await;
    let crashing_pinger = parts.pinger(&crashing).await;
    let (mut changes, first) = parts
        .subscription(&[running.clone(), crashing.clone()])
        .await;
    assert!(first.iter().all(|change| change.alive));

    // The store is unreachable for everyone for ten slots.
    parts.store.set_unreachable(true);
    let Event::OutOfTouch { .. } = next_event(&mut changes).await else {
        panic!("out of touch first")
    };
    assert!(!parts.watcher.status().touch.is_in_touch());
    crashing_pinger.abort();
    let _ = crashing_pinger.wait().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        buffered(&mut changes).is_empty(),
        "no deaths from stale data"
    );
    assert!(parts.batcher.status().is_failing());
    assert!(matches!(parts.watcher.sync().await, Err(Error::Store(_))));

    // Back: the running key never dies, the crashed one expires after the
    // batchers had time to write.
    parts.store.set_unreachable(false);
    let Event::BackInTouch = next_event(&mut changes).await else {
        panic!("back in touch")
    };
    let expired = next_change(&mut changes).await;
    assert_eq!(
        (expired.key.clone(), expired.reason),
        (crashing, Reason::Expired)
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        buffered(&mut changes).is_empty(),
        "the running key stayed alive"
    );
    assert!(parts.watcher.alive(&running).await.expect("answers"));
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn alive_answers_watched_and_unwatched_keys_and_wait_alive_times_out() {
    let parts = Parts::start(fast_config());
    let (on, off) = (key(1), key(2));
    let _on = parts.pinger(&on).await;
    assert_eq!(
        parts
            .watcher
            .alive_many(&[on.clone(), off.clone()])
            .await
            .expect("answers"),
        [true, false]
    );
    let (_changes, _) = parts.subscription(std::slice::from_ref(&on)).await;
    assert!(
        parts
            .watcher
            .alive(&on)
            .await
            .expect("answers from the cache")
    );
    parts.store.set_unreachable(true);
    assert!(matches!(
        parts.watcher.alive(&off).await,
        Err(Error::Store(_))
    ));
    parts.store.set_unreachable(false);

    let waited = parts.watcher.wait_alive(&off, Duration::from_secs(3)).await;
    assert!(
        matches!(waited, Err(Error::Timeout { ref key, .. }) if *key == off),
        "{waited:?}"
    );
    parts
        .watcher
        .wait_alive(&on, Duration::from_secs(3))
        .await
        .expect("alive");
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn start_sync_loads_without_waiting_and_sync_delivers_before_returning() {
    let mut config = fast_config();
    // Loads only when asked, within the test's time.
    config.load_interval = Some(Duration::from_secs(3600));
    let parts = Parts::start(config);
    let agent = key(1);
    let (mut changes, _) = parts.subscription(std::slice::from_ref(&agent)).await;
    let pinger = parts.pinger(&agent).await;
    parts.watcher.sync().await.expect("loads");
    assert!(matches!(changes.try_next(), Some(Event::Change(change)) if change.alive));
    pinger.kill();
    pinger.wait().await.expect("stops");
    parts.watcher.start_sync().expect("asks");
    let stopped = next_change(&mut changes).await;
    assert_eq!(stopped.reason, Reason::Stopped);
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn removing_a_scope_reports_its_keys_removed_and_a_stopped_watcher_ends_subscriptions() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let pinger = parts.pinger(&agent).await;
    let (mut changes, _) = parts.subscription(std::slice::from_ref(&agent)).await;
    parts.store.remove_scope(&scope()).await.expect("removes");
    pinger.abort();
    let _ = pinger.wait().await;
    let removed = next_change(&mut changes).await;
    assert_eq!(
        (removed.alive, removed.incarnation, removed.reason),
        (false, None, Reason::Removed)
    );
    // A new start after removal never reuses a number.
    let again = parts.pinger(&agent).await;
    assert!(again.incarnation() > pinger.incarnation());

    parts.watcher.kill();
    parts.watcher.wait().await.expect("stops");
    // What was buffered is still read, then the subscription ends.
    while changes.next().await.is_some() {}
    assert!(matches!(
        parts.watcher.sync().await,
        Err(Error::Stopped { part: "watcher" })
    ));
    let mut late = parts.watcher.subscribe();
    assert!(late.next().await.is_none());
    assert!(late.watch(agent).await.is_err());
    again.abort();
    parts.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unwatching_drops_a_keys_events_and_dropping_a_subscription_unwatches() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let (mut changes, _) = parts.subscription(std::slice::from_ref(&agent)).await;
    let _pinger = parts.pinger(&agent).await;
    parts.watcher.sync().await.expect("loads");
    changes.unwatch(&agent).await.expect("unwatches");
    assert!(changes.try_next().is_none());
    assert_eq!(parts.watcher.status().keys, 0);
    let (other, _) = parts.subscription(std::slice::from_ref(&agent)).await;
    assert_eq!(parts.watcher.status().keys, 1);
    drop(other);
    parts.watcher.sync().await.expect("loads");
    assert_eq!(parts.watcher.status().keys, 0);
    assert_eq!(parts.watcher.status().subscribers, 1);
    parts.stop().await;
}
