//! The registry against a model: random locator updates, probe answers,
//! reported failures and waits, on the paused clock, each followed by a
//! comparison of every view's health, the set of views, panic mode and how
//! many checks each endpoint had with what the documented rules say.
//!
//! The model is written from the crate docs, not from the actor: checks
//! every 5 s (no jitter), a new view checked at once, unhealthy after 3
//! consecutive failures (at once for "not serving", or for any failure of a
//! view never seen healthy), healthy again after 2 successes, failed checks
//! of an unhealthy view backing off ×2 up to 60 s, reports counting as
//! failures but holding at most max(1, ⌊0.1 × views⌋) views unhealthy and
//! never the last healthy one, panic while fewer than half are healthy.
//!
//! Timing is made unambiguous: every wait lasts whole seconds plus 1 ms and
//! every step is followed by a 1 ms settle, so no step ever lands on the
//! same millisecond as a check (checks fall on multiples of 5 s from a
//! view's discovery; fewer than 1,000 offsets of 1 ms never add up to a
//! whole second).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_core_types::Endpoint;
use flotilla_viewreg::Health;
use proptest::prelude::*;

use crate::harness::{Answer, Scripted, channel_locator, config, ep, serve, settle, start};

const ENDPOINTS: u8 = 6;
const INTERVAL_MS: u64 = 5_000;
const MAX_BACKOFF_MS: u64 = 60_000;

#[derive(Debug, Clone)]
enum Step {
    /// The locator answers with the endpoints whose bits are set.
    Locate(u8),
    /// From now on, the endpoint's checks answer this.
    Answer(u8, Reply),
    /// A caller reports a failed request to the endpoint.
    Report(u8),
    /// Time passes: this many seconds, plus 1 ms.
    Wait(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Serve,
    Fail,
    NotServing,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0u8..1 << ENDPOINTS).prop_map(Step::Locate),
        2 => (1..=ENDPOINTS, prop_oneof![Just(Reply::Serve), Just(Reply::Fail), Just(Reply::NotServing)])
            .prop_map(|(n, reply)| Step::Answer(n, reply)),
        3 => (1..=ENDPOINTS).prop_map(Step::Report),
        2 => (0u64..3).prop_map(Step::Wait),
        2 => (0u64..40).prop_map(Step::Wait),
    ]
}

/// One view as the rules see it.
#[derive(Debug, Clone)]
struct ModelView {
    health: Health,
    failures: u32,
    successes: u32,
    failed_while_unhealthy: u32,
    by_report: bool,
    next_check_ms: u64,
}

#[derive(Debug, Default)]
struct Model {
    now_ms: u64,
    views: BTreeMap<u8, ModelView>,
    replies: BTreeMap<u8, Reply>,
    checks: BTreeMap<u8, usize>,
}

impl Model {
    fn reply(&self, n: u8) -> Reply {
        self.replies.get(&n).copied().unwrap_or(Reply::Serve)
    }

    fn healthy(&self) -> usize {
        self.views
            .values()
            .filter(|view| view.health == Health::Healthy)
            .count()
    }

    fn panic(&self) -> bool {
        !self.views.is_empty() && (self.healthy() as f64) < 0.5 * self.views.len() as f64
    }

    fn locate(&mut self, mask: u8) {
        self.views.retain(|n, _| mask & (1 << (n - 1)) != 0);
        for n in 1..=ENDPOINTS {
            if mask & (1 << (n - 1)) != 0 && !self.views.contains_key(&n) {
                self.views.insert(
                    n,
                    ModelView {
                        health: Health::Unknown,
                        failures: 0,
                        successes: 0,
                        failed_while_unhealthy: 0,
                        by_report: false,
                        next_check_ms: self.now_ms,
                    },
                );
            }
        }
        self.run_checks_until(self.now_ms);
    }

    fn report(&mut self, n: u8) {
        let views = self.views.len();
        let healthy = self.healthy();
        let ejected = self
            .views
            .values()
            .filter(|view| view.health == Health::Unhealthy && view.by_report)
            .count();
        let cap = ((views as f64 * 0.1).floor() as usize).max(1);
        let Some(view) = self.views.get_mut(&n) else {
            return;
        };
        let would_eject = view.health == Health::Healthy && view.failures + 1 >= 3;
        view.successes = 0;
        view.failures += 1;
        if would_eject && ejected < cap && healthy >= 2 {
            view.health = Health::Unhealthy;
            view.failed_while_unhealthy = 0;
            view.by_report = true;
        }
    }

    fn wait_until(&mut self, until_ms: u64) {
        self.run_checks_until(until_ms);
        self.now_ms = until_ms;
    }

    /// Runs every check due at or before `until_ms`, earliest first.
    fn run_checks_until(&mut self, until_ms: u64) {
        loop {
            let due = self
                .views
                .iter()
                .filter(|(_, view)| view.next_check_ms <= until_ms)
                .min_by_key(|(n, view)| (view.next_check_ms, **n))
                .map(|(n, view)| (*n, view.next_check_ms));
            let Some((n, at_ms)) = due else { return };
            let reply = self.reply(n);
            *self.checks.entry(n).or_default() += 1;
            let view = self.views.get_mut(&n).expect("listed");
            match reply {
                Reply::Serve => {
                    view.failures = 0;
                    view.failed_while_unhealthy = 0;
                    view.successes += 1;
                    if view.health == Health::Unknown
                        || (view.health == Health::Unhealthy && view.successes >= 2)
                    {
                        view.health = Health::Healthy;
                        view.by_report = false;
                    }
                }
                Reply::Fail | Reply::NotServing => {
                    view.successes = 0;
                    view.failures += 1;
                    let turns = match view.health {
                        Health::Unhealthy => {
                            view.failed_while_unhealthy += 1;
                            false
                        }
                        Health::Unknown => true,
                        Health::Healthy => reply == Reply::NotServing || view.failures >= 3,
                    };
                    if turns {
                        view.health = Health::Unhealthy;
                        view.failed_while_unhealthy = 0;
                        view.by_report = false;
                    }
                }
            }
            let delay = if view.health == Health::Unhealthy && view.failed_while_unhealthy > 0 {
                (INTERVAL_MS << view.failed_while_unhealthy.min(16)).min(MAX_BACKOFF_MS)
            } else {
                INTERVAL_MS
            };
            view.next_check_ms = at_ms + delay;
        }
    }
}

fn endpoint(n: u8) -> Endpoint {
    ep(n)
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let prober = Scripted::default();
        let (locator, answers) = channel_locator();
        let (registry, _clients) = start(answers, &prober, config());
        let mut model = Model::default();
        let started = tokio::time::Instant::now();
        for (index, step) in steps.iter().enumerate() {
            match *step {
                Step::Locate(mask) => {
                    let set: Vec<Endpoint> = (1..=ENDPOINTS)
                        .filter(|n| mask & (1 << (n - 1)) != 0)
                        .map(endpoint)
                        .collect();
                    locator.send(Ok(set)).expect("the registry listens");
                    model.locate(mask);
                }
                Step::Answer(n, reply) => {
                    let answer = match reply {
                        Reply::Serve => serve(&[]),
                        Reply::Fail => Answer::Fail,
                        Reply::NotServing => Answer::NotServing,
                    };
                    prober.set(&endpoint(n), answer);
                    model.replies.insert(n, reply);
                }
                Step::Report(n) => {
                    registry
                        .report_failure(&endpoint(n))
                        .expect("the queue has room");
                    model.report(n);
                }
                Step::Wait(seconds) => {
                    let wait = seconds * 1_000 + 1;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    model.wait_until(model.now_ms + wait);
                }
            }
            settle().await;
            model.wait_until(model.now_ms + 1);
            prop_assert_eq!(
                u64::try_from(started.elapsed().as_millis()).expect("short"),
                model.now_ms,
                "the clocks agree"
            );

            let snapshot = registry.snapshot();
            let listed: Vec<Endpoint> = snapshot
                .all_views()
                .iter()
                .map(|view| view.endpoint().clone())
                .collect();
            let expected: Vec<Endpoint> = model.views.keys().map(|n| endpoint(*n)).collect();
            prop_assert_eq!(listed, expected, "views after step {} ({:?})", index, step);
            for (n, view) in &model.views {
                let seen = snapshot.view(&endpoint(*n)).map(|view| view.health());
                prop_assert_eq!(
                    seen,
                    Some(view.health),
                    "health of endpoint {} after step {} ({:?})",
                    n,
                    index,
                    step
                );
            }
            prop_assert_eq!(
                snapshot.is_panic(),
                model.panic(),
                "panic after step {}",
                index
            );
            for n in 1..=ENDPOINTS {
                prop_assert_eq!(
                    prober.checks_of(&endpoint(n)).len(),
                    model.checks.get(&n).copied().unwrap_or(0),
                    "checks of endpoint {} after step {} ({:?})",
                    n,
                    index,
                    step
                );
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_registry_follows_the_rules(steps in proptest::collection::vec(step(), 1..80)) {
        run(steps)?;
    }
}
