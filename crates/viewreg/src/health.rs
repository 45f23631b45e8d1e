//! The health rules of one view, as a plain state machine the registry's
//! actor drives: hysteresis between [`Health`] states and the backoff of the
//! next check. No clock and no I/O here, so the rules are tested directly.

use std::time::Duration;

use crate::{Health, RegistryConfig};

/// What one active check concluded, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The server answered that it serves.
    Success,
    /// No usable answer, a timeout, or no health service.
    Failure,
    /// The server said it is not serving.
    NotServing,
}

/// One view's counters and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthTracker {
    health: Health,
    consecutive_failures: u32,
    consecutive_successes: u32,
    /// Failed active checks since the view turned unhealthy: the backoff
    /// exponent.
    failed_while_unhealthy: u32,
    /// Whether a caller's report (not an active check) turned it unhealthy.
    ejected_by_report: bool,
}

impl HealthTracker {
    /// A newly discovered view: unknown, no history.
    pub(crate) fn new() -> Self {
        HealthTracker {
            health: Health::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
            failed_while_unhealthy: 0,
            ejected_by_report: false,
        }
    }

    pub(crate) fn health(&self) -> Health {
        self.health
    }

    pub(crate) fn ejected_by_report(&self) -> bool {
        self.ejected_by_report
    }

    /// Applies an active check; returns whether the health changed.
    pub(crate) fn on_check(&mut self, check: Check, config: &RegistryConfig) -> bool {
        let before = self.health;
        match check {
            Check::Success => {
                self.consecutive_failures = 0;
                self.failed_while_unhealthy = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                let recovered = self.health == Health::Unhealthy
                    && self.consecutive_successes >= config.healthy_threshold;
                if self.health == Health::Unknown || recovered {
                    self.health = Health::Healthy;
                    self.ejected_by_report = false;
                }
            }
            Check::Failure | Check::NotServing => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                match self.health {
                    Health::Unhealthy => {
                        self.failed_while_unhealthy = self.failed_while_unhealthy.saturating_add(1);
                    }
                    Health::Unknown => self.turn_unhealthy(false),
                    Health::Healthy => {
                        if check == Check::NotServing
                            || self.consecutive_failures >= config.unhealthy_threshold
                        {
                            self.turn_unhealthy(false);
                        }
                    }
                }
            }
        }
        self.health != before
    }

    /// Whether one more reported failure would turn this view unhealthy, if
    /// the passive cap allowed it.
    pub(crate) fn report_would_eject(&self, config: &RegistryConfig) -> bool {
        self.health == Health::Healthy
            && self.consecutive_failures.saturating_add(1) >= config.unhealthy_threshold
    }

    /// Applies a failure a caller reported; `may_eject` is the registry's
    /// passive cap. Returns whether the health changed.
    pub(crate) fn on_report(&mut self, may_eject: bool, config: &RegistryConfig) -> bool {
        let would_eject = self.report_would_eject(config);
        self.consecutive_successes = 0;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if would_eject && may_eject {
            self.turn_unhealthy(true);
            return true;
        }
        false
    }

    /// The delay before this view's next check, before jitter: the interval,
    /// or while unhealthy and failing, the interval grown by the backoff
    /// factor once per failed check, up to the cap.
    pub(crate) fn next_delay(&self, config: &RegistryConfig) -> Duration {
        if self.health != Health::Unhealthy || self.failed_while_unhealthy == 0 {
            return config.probe_interval;
        }
        // Past 64 doublings every interval is capped anyway.
        let exponent = self.failed_while_unhealthy.min(64) as i32;
        let grown = config.probe_interval.as_secs_f64() * config.backoff_factor.powi(exponent);
        if grown >= config.max_backoff.as_secs_f64() {
            return config.max_backoff;
        }
        Duration::from_secs_f64(grown)
    }

    fn turn_unhealthy(&mut self, by_report: bool) {
        self.health = Health::Unhealthy;
        self.failed_while_unhealthy = 0;
        self.ejected_by_report = by_report;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> RegistryConfig {
        RegistryConfig::default()
            .with_thresholds(3, 2)
            .with_probe_timing(Duration::from_secs(5), Duration::from_secs(1))
    }

    /// Runs `checks` from a new tracker and returns the health after each.
    fn check(checks: &[Check], expected: &[Health]) {
        let config = config();
        let mut tracker = HealthTracker::new();
        let seen: Vec<Health> = checks
            .iter()
            .map(|&check| {
                tracker.on_check(check, &config);
                tracker.health()
            })
            .collect();
        assert_eq!(seen, expected, "after {checks:?}");
    }

    use Check::{Failure as F, NotServing as N, Success as S};
    use Health::{Healthy as H, Unhealthy as U};

    #[test]
    fn hysteresis() {
        check(&[S], &[H]);
        check(&[F], &[U]);
        check(&[N], &[U]);
        check(&[S, F, F, F], &[H, H, H, U]);
        check(&[S, F, F, S, F, F], &[H, H, H, H, H, H]);
        check(&[S, N], &[H, U]);
        check(&[S, F, F, F, S, S], &[H, H, H, U, U, H]);
        check(&[F, S, F, S, S], &[U, U, U, U, H]);
    }

    #[test]
    fn backoff_grows_while_unhealthy_checks_fail_and_resets_on_success() {
        let config = config();
        let mut tracker = HealthTracker::new();
        let mut delays = Vec::new();
        for check in [F, F, F, F, F, F, S] {
            tracker.on_check(check, &config);
            delays.push(tracker.next_delay(&config).as_secs());
        }
        assert_eq!(delays, [5, 10, 20, 40, 60, 60, 5]);
    }

    #[test]
    fn reports_count_with_checks_and_obey_the_cap() {
        let config = config();
        let mut tracker = HealthTracker::new();
        tracker.on_check(S, &config);
        assert!(!tracker.on_report(true, &config));
        assert!(!tracker.on_report(true, &config));
        assert!(tracker.report_would_eject(&config));
        assert!(!tracker.on_report(false, &config), "the cap holds it");
        assert_eq!(tracker.health(), H);
        assert!(
            tracker.on_check(F, &config),
            "the next failed check flips it"
        );
        assert!(!tracker.ejected_by_report());

        let mut reported = HealthTracker::new();
        reported.on_check(S, &config);
        for _ in 0..2 {
            reported.on_report(true, &config);
        }
        assert!(reported.on_report(true, &config));
        assert!(reported.ejected_by_report());
        reported.on_check(S, &config);
        assert!(reported.on_check(S, &config));
        assert!(!reported.ejected_by_report());
    }

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Check(Check),
        Report { may_eject: bool },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Check(S)),
            Just(Event::Check(F)),
            Just(Event::Check(N)),
            any::<bool>().prop_map(|may_eject| Event::Report { may_eject }),
        ]
    }

    proptest! {
        /// Against a model that reads the rules off the event history: a
        /// flip happens only when the recent events justify it, and the
        /// delay stays within its bounds and grows while failures go on.
        #[test]
        fn transitions_follow_the_history(
            unhealthy_threshold in 1u32..5,
            healthy_threshold in 1u32..5,
            events in proptest::collection::vec(event(), 0..60),
        ) {
            let config = config().with_thresholds(unhealthy_threshold, healthy_threshold);
            let mut tracker = HealthTracker::new();
            let mut history: Vec<Event> = Vec::new();
            let mut last_delay = config.probe_interval;
            for event in events {
                let before = tracker.health();
                match event {
                    Event::Check(check) => { tracker.on_check(check, &config); }
                    Event::Report { may_eject } => { tracker.on_report(may_eject, &config); }
                }
                history.push(event);
                let after = tracker.health();
                // The failures at the end of the history, since the last success.
                let trailing_failures = history.iter().rev()
                    .take_while(|e| !matches!(e, Event::Check(S)))
                    .count() as u32;
                let trailing_successes = history.iter().rev()
                    .take_while(|e| matches!(e, Event::Check(S)))
                    .count() as u32;
                match (before, after) {
                    (Health::Unknown, H) => prop_assert!(matches!(event, Event::Check(S))),
                    (Health::Unknown, U) => prop_assert!(matches!(event, Event::Check(F | N))),
                    (H, U) => {
                        let held = matches!(event, Event::Report { may_eject: false });
                        let not_serving = matches!(event, Event::Check(N));
                        prop_assert!(not_serving || (trailing_failures >= unhealthy_threshold && !held));
                    }
                    (U, H) => prop_assert!(trailing_successes >= healthy_threshold),
                    (_, Health::Unknown) => prop_assert_eq!(before, Health::Unknown),
                    _ => prop_assert_eq!(before, after),
                }
                if before == H && matches!(event, Event::Check(S)) {
                    prop_assert_eq!(after, H);
                }
                let delay = tracker.next_delay(&config);
                prop_assert!(delay >= config.probe_interval && delay <= config.max_backoff);
                if before == U && after == U && matches!(event, Event::Check(F | N)) {
                    prop_assert!(delay >= last_delay);
                }
                last_delay = delay;
            }
        }
    }
}
