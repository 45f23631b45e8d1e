//! A proptest model of presence: random starts, graceful stops, crashes and
//! restarts of pingers over a few keys, failed flushes and steps of (paused)
//! time. A subscriber taking every event as it comes must see each
//! transition once, with a reason the model allows (no death of a running
//! incarnation, a stop only after a graceful stop, an expiry only after a
//! crash); once time has passed the death bound, the watcher's state must
//! be the model's exactly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_core_types::{Name, Worker};
use flotilla_presence::{Clock, Config, Event, Incarnation, Pinger, Reason, Subscription};
use proptest::prelude::*;

use crate::harness::{Parts, key};

const KEYS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    Start(usize),
    Stop(usize),
    Crash(usize),
    /// A crash and a start at once.
    Restart(usize),
    /// The next few flushes fail.
    FailFlushes(usize),
    Wait(Duration),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..KEYS).prop_map(Step::Start),
        2 => (0..KEYS).prop_map(Step::Stop),
        2 => (0..KEYS).prop_map(Step::Crash),
        2 => (0..KEYS).prop_map(Step::Restart),
        1 => (1usize..=2).prop_map(Step::FailFlushes),
        4 => (0u64..6_000).prop_map(|ms| Step::Wait(Duration::from_millis(ms))),
    ]
}

/// Two-second slots: a ping every 250 ms and a flush every 500 ms, so two
/// failed flushes in a row still leave a written ping in every slot.
fn config() -> Config {
    let mut config = Config::with_slot_length(Duration::from_secs(2))
        .clock(Clock::starting_at(Duration::from_millis(7_000_333)));
    config.flush_interval = Duration::from_millis(500);
    config.ping_interval = Some(Duration::from_millis(250));
    config.flush_jitter = 0.0;
    config.validate().expect("the model's config is valid");
    config
}

/// What the model knows: each key's running incarnation, and how each
/// incarnation that ended, ended.
#[derive(Default)]
struct Model {
    running: HashMap<usize, Pinger>,
    stopped: HashSet<Incarnation>,
    crashed: HashSet<Incarnation>,
    /// What the subscriber last saw per key: (alive, incarnation).
    seen: HashMap<Name, (bool, Option<Incarnation>)>,
}

impl Model {
    /// Takes every buffered event and checks it against the model.
    fn take_events(&mut self, subscription: &mut Subscription) -> Result<(), TestCaseError> {
        while let Some(event) = subscription.try_next() {
            let Event::Change(change) = event else {
                return Err(TestCaseError::fail(format!(
                    "the store never went away: {event:?}"
                )));
            };
            let now = (change.alive, change.incarnation);
            let before = self.seen.insert(change.key.clone(), now);
            prop_assert_ne!(before, Some(now), "two events for one state: {:?}", change);
            let incarnation = change.incarnation;
            let running = |inc: Option<Incarnation>| {
                self.running
                    .values()
                    .any(|pinger| Some(pinger.incarnation()) == inc)
            };
            match change.reason {
                Reason::Started | Reason::Restarted => prop_assert!(change.alive),
                Reason::Stopped => prop_assert!(
                    incarnation.is_some_and(|inc| self.stopped.contains(&inc)),
                    "a stop without a graceful stop: {:?}",
                    change
                ),
                Reason::Expired => {
                    prop_assert!(
                        !running(incarnation),
                        "a running incarnation died: {:?}",
                        change
                    );
                    prop_assert!(
                        incarnation.is_some_and(|inc| self.crashed.contains(&inc)),
                        "an expiry without a crash: {:?}",
                        change
                    );
                }
                Reason::NeverSeen => prop_assert!(before.is_none() && incarnation.is_none()),
                other => return Err(TestCaseError::fail(format!("unexpected reason {other:?}"))),
            }
        }
        Ok(())
    }
}

async fn end(model: &mut Model, n: usize, graceful: bool) {
    let Some(pinger) = model.running.remove(&n) else {
        return;
    };
    if graceful {
        model.stopped.insert(pinger.incarnation());
        pinger.kill();
    } else {
        model.crashed.insert(pinger.incarnation());
        pinger.abort();
    }
    pinger.wait().await.expect("a pinger ends cleanly");
}

async fn start(model: &mut Model, parts: &Parts, n: usize) {
    if model.running.contains_key(&n) {
        return;
    }
    let pinger = parts.pinger(&key(n)).await;
    model.running.insert(n, pinger);
}

fn check(steps: &[Step]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let parts = Parts::start(config());
        let keys: Vec<Name> = (0..KEYS).map(key).collect();
        let mut subscription = parts.watcher.subscribe();
        subscription
            .watch_many(keys.clone())
            .await
            .expect("watches");
        let mut model = Model::default();
        for step in steps {
            match step {
                Step::Start(n) => start(&mut model, &parts, *n).await,
                Step::Stop(n) => end(&mut model, *n, true).await,
                Step::Crash(n) => end(&mut model, *n, false).await,
                Step::Restart(n) => {
                    end(&mut model, *n, false).await;
                    start(&mut model, &parts, *n).await;
                }
                Step::FailFlushes(count) => {
                    parts.store.fail_next_writes.store(*count, Ordering::SeqCst);
                }
                Step::Wait(time) => {
                    // In small steps, so the subscriber takes each event as it
                    // comes (a subscriber that falls behind is coalesced).
                    let mut left = *time;
                    while !left.is_zero() {
                        let now = left.min(Duration::from_millis(100));
                        tokio::time::sleep(now).await;
                        left -= now;
                        model.take_events(&mut subscription)?;
                    }
                }
            }
            model.take_events(&mut subscription)?;
        }
        tokio::time::sleep(parts.config.death_bound()).await;
        parts.watcher.sync().await.expect("loads");
        model.take_events(&mut subscription)?;
        // Alive exactly when running, in the running incarnation. (A key
        // that was born and died between two loads leaves no event: the
        // dead state it was seen in may be an older incarnation's.)
        for n in 0..KEYS {
            let running = model.running.get(&n).map(Pinger::incarnation);
            let seen = model.seen.get(&key(n)).copied();
            match running {
                Some(incarnation) => {
                    prop_assert_eq!(seen, Some((true, Some(incarnation))), "key {}", n)
                }
                None => prop_assert_eq!(seen.map(|(alive, _)| alive), Some(false), "key {}", n),
            }
        }
        for pinger in model.running.values() {
            pinger.abort();
        }
        parts.stop().await;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_watcher_reports_what_the_model_allows_once_per_transition(
        steps in proptest::collection::vec(step(), 1..30)
    ) {
        check(&steps)?;
    }
}

#[test]
fn a_crash_and_restart_during_failed_flushes_is_one_restart() {
    let steps = [
        Step::Start(0),
        Step::Wait(Duration::from_secs(3)),
        Step::FailFlushes(2),
        Step::Restart(0),
        Step::Wait(Duration::from_secs(10)),
    ];
    check(&steps).expect("the model holds");
}
