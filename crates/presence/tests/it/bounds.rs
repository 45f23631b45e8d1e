//! The stated bounds, on the paused clock: a dead pinger's key is reported
//! dead within `2·S + L` wherever in a slot it died, a running key is never
//! reported dead (jittered flushes included), a new key is reported alive
//! within one load, and a write outage within the tolerance kills no
//! running key.

use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_presence::{Clock, Config, Event, Reason};
use tokio::time::Instant;

use crate::harness::{Parts, fast_config, key, next_change};

/// Kills a pinger `offset` into a slot and returns how long the watcher
/// took to report it expired.
async fn time_to_expiry(config: Config, offset: Duration) -> Duration {
    let parts = Parts::start(config.clone());
    let agent = key(1);
    let pinger = parts.pinger(&agent).await;
    let (mut changes, first) = parts.subscription(std::slice::from_ref(&agent)).await;
    assert!(first[0].alive);
    // Run for a few slots, then to `offset` into the next one.
    let slot = config.slot_length;
    let into_slot = Duration::from_nanos(
        u64::try_from(config.clock.now().as_nanos() % slot.as_nanos()).expect("fits"),
    );
    tokio::time::sleep(slot * 3 - into_slot + offset).await;
    let died = Instant::now();
    pinger.abort();
    pinger.wait().await.expect("aborts");
    let expired = next_change(&mut changes).await;
    assert_eq!(expired.reason, Reason::Expired);
    let took = died.elapsed();
    parts.stop().await;
    took
}

#[tokio::test(start_paused = true)]
async fn a_dead_pingers_key_is_reported_dead_within_two_slots_and_a_load_at_one_second_slots() {
    let config = fast_config();
    let bound = config.death_bound();
    assert_eq!(bound, Duration::from_millis(2250));
    for offset_ms in [0, 1, 100, 249, 250, 251, 500, 750, 999] {
        let took = time_to_expiry(config.clone(), Duration::from_millis(offset_ms)).await;
        assert!(
            took <= bound,
            "died {offset_ms} ms into a slot, reported after {took:?} > {bound:?}"
        );
        // And never before its pings had a full slot to lapse.
        assert!(took >= config.slot_length, "reported after only {took:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_defaults_a_death_is_reported_within_61_seconds() {
    let mut config = Config::default().clock(Clock::starting_at(Duration::from_secs(3_000_000)));
    config.seed = Some(3);
    let bound = config.death_bound();
    assert_eq!(bound, Duration::from_secs(61));
    for offset in [0, 1, 15, 29] {
        let took = time_to_expiry(config.clone(), Duration::from_secs(offset)).await;
        assert!(
            took <= bound,
            "died {offset} s into a slot, reported after {took:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn running_keys_never_die_even_with_jittered_flushes_and_loads() {
    for seed in 0..4 {
        let mut config = Config::with_slot_length(Duration::from_secs(1)).clock(
            Clock::starting_at(Duration::from_millis(5_000_123 + seed * 371)),
        );
        config.seed = Some(seed);
        let parts = Parts::start(config);
        let keys: Vec<_> = (0..20).map(key).collect();
        let _pingers = parts.pingers(&keys).await;
        let (mut changes, first) = parts.subscription(&keys).await;
        assert!(first.iter().all(|change| change.alive));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let events = crate::harness::buffered(&mut changes);
        assert!(events.is_empty(), "seed {seed}: {events:?}");
        parts.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_key_is_reported_alive_within_one_load() {
    let parts = Parts::start(fast_config());
    let agent = key(1);
    let (mut changes, _) = parts.subscription(std::slice::from_ref(&agent)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let _pinger = parts.pinger(&agent).await;
    let alive = next_change(&mut changes).await;
    assert!(alive.alive);
    assert!(started.elapsed() <= parts.config.effective_load_interval());
    parts.stop().await;
}

/// Runs 20 pingers, fails every write for `outage` from `offset` into a
/// slot while loads go on succeeding (a store failing for the batcher
/// only), and returns the keys reported dead by two slots after it.
async fn deaths_through_a_write_outage(offset: Duration, outage: Duration) -> usize {
    let config = fast_config();
    let parts = Parts::start(config.clone());
    let keys: Vec<_> = (0..20).map(key).collect();
    let pingers = parts.pingers(&keys).await;
    let (mut changes, first) = parts.subscription(&keys).await;
    assert!(first.iter().all(|change| change.alive));
    let slot = config.slot_length;
    let into_slot = Duration::from_nanos(
        u64::try_from(config.clock.now().as_nanos() % slot.as_nanos()).expect("fits"),
    );
    // Events are taken as they come: a death and the return after it
    // would otherwise coalesce into nothing.
    let mut deaths = 0;
    let mut take_events_for = async |lasting: Duration| {
        let until = Instant::now() + lasting;
        while let Ok(Some(event)) = tokio::time::timeout_at(until, changes.next()).await {
            if matches!(event, Event::Change(change) if !change.alive) {
                deaths += 1;
            }
        }
    };
    take_events_for(slot * 2 - into_slot + offset).await;
    parts.store.fail_writes.store(true, Ordering::SeqCst);
    take_events_for(outage).await;
    parts.store.fail_writes.store(false, Ordering::SeqCst);
    take_events_for(slot * 2).await;
    for pinger in pingers {
        pinger.kill();
        pinger.wait().await.expect("stops cleanly");
    }
    parts.stop().await;
    deaths
}

#[tokio::test(start_paused = true)]
async fn a_write_outage_within_the_tolerance_kills_no_running_key_and_a_longer_one_does() {
    let tolerance = fast_config().outage_tolerance();
    assert_eq!(tolerance, Duration::from_millis(500));
    for offset_ms in (0..1000).step_by(50) {
        let offset = Duration::from_millis(offset_ms);
        assert_eq!(
            deaths_through_a_write_outage(offset, tolerance - Duration::from_millis(1)).await,
            0,
            "an outage of {tolerance:?} from {offset:?} into a slot"
        );
        // Two slots without a write leave a whole slot without pings.
        let long = fast_config().slot_length * 2;
        assert_eq!(
            deaths_through_a_write_outage(offset, long).await,
            20,
            "an outage of {long:?} from {offset:?} into a slot"
        );
    }
}
