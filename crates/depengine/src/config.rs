//! [`EngineConfig`]: delays, backoff, restart intensity and the error policy,
//! validated in one place ([`EngineConfig::validate`]).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core_types::WorkerError;

use crate::Error;
use crate::report::human;

type FatalFn = dyn Fn(&WorkerError) -> bool + Send + Sync;
type WorstFn = dyn Fn(&WorkerError, &WorkerError) -> Ordering + Send + Sync;

/// How an [`Engine`](crate::Engine) restarts workers and reads their errors.
///
/// Start from [`EngineConfig::default`] and change the fields you need; the
/// engine checks the result with [`validate`](Self::validate) when it starts.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use flotilla_depengine::{CrashLoopPolicy, EngineConfig};
///
/// let mut config = EngineConfig::default()
///     .with_is_fatal(|error| error.to_string().contains("corrupt"));
/// config.error_delay = Duration::from_millis(500);
/// config.restart_limit.on_exceeded = CrashLoopPolicy::Park;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The delay before the first restart after a failure. Default 3 s.
    pub error_delay: Duration,
    /// Each further consecutive failure multiplies the delay by this
    /// (at least 1.0). Default 2.0.
    pub backoff_factor: f64,
    /// Each delay is moved at random by up to this fraction of itself, either
    /// way (0.0 to 1.0), so that workers failing together do not retry
    /// together. Default 0.2.
    pub backoff_jitter: f64,
    /// No restart delay exceeds this. Default 2 min.
    pub max_delay: Duration,
    /// A worker that ran at least this long before failing starts its
    /// backoff afresh. Default 1 min.
    pub backoff_reset_after: Duration,
    /// The delay before restarting a worker that asked to be bounced, or
    /// whose inputs changed. Default 10 ms.
    pub bounce_delay: Duration,
    /// How many restarts of one manifold are too many. Default: more than 10
    /// within 1 min is fatal.
    pub restart_limit: RestartLimit,
    /// How long [`Engine::report`](crate::Engine::report) waits for the
    /// workers' own reports. Default 2 s.
    pub report_timeout: Duration,
    /// While the engine stops (dependents before their inputs), how long a
    /// worker may take to end before its inputs are stopped anyway. The
    /// engine still waits for it to end. Default 5 s (OTP's default
    /// shutdown time for a worker).
    pub stop_timeout: Duration,
    /// The seed for backoff jitter; `None` seeds from the OS. Fix it in tests.
    pub jitter_seed: Option<u64>,
    /// Which errors stop the whole engine. Default: none. If it panics, the
    /// error is not fatal, and the panic ([`Error::CallbackPanicked`]) becomes
    /// the failure of the manifold whose error it was judging. It is never
    /// asked about a callback's panic.
    pub is_fatal: Arc<FatalFn>,
    /// Ranks two errors: `Greater` when the first is worse. The engine's
    /// `wait` returns the worst error it saw while stopping; among equals, the
    /// first seen. If it panics, the engine keeps the error it had (the
    /// earlier one) and logs the other. Default: all equal.
    pub worst_error: Arc<WorstFn>,
}

/// A restart-intensity limit, as OTP supervisors have: more than
/// `max_restarts` restarts of one manifold within `window` is a crash loop.
///
/// Restarts after failures and after bounce requests count; waiting for a
/// missing input and bounces caused by inputs changing do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartLimit {
    /// The most restarts allowed within `window`.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    pub window: Duration,
    /// What happens to a manifold in a crash loop.
    pub on_exceeded: CrashLoopPolicy,
}

/// What the engine does with a manifold that exceeds its [`RestartLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrashLoopPolicy {
    /// Stop the engine with [`Error::CrashLoop`].
    Fatal,
    /// Leave the manifold stopped (its state reads "parked") until one of its
    /// inputs changes; the engine carries on.
    Park,
}

impl Default for RestartLimit {
    fn default() -> Self {
        RestartLimit {
            max_restarts: 10,
            window: Duration::from_secs(60),
            on_exceeded: CrashLoopPolicy::Fatal,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            error_delay: Duration::from_secs(3),
            backoff_factor: 2.0,
            backoff_jitter: 0.2,
            max_delay: Duration::from_secs(120),
            backoff_reset_after: Duration::from_secs(60),
            bounce_delay: Duration::from_millis(10),
            restart_limit: RestartLimit::default(),
            report_timeout: Duration::from_secs(2),
            stop_timeout: Duration::from_secs(5),
            jitter_seed: None,
            is_fatal: Arc::new(|_| false),
            worst_error: Arc::new(|_, _| Ordering::Equal),
        }
    }
}

impl EngineConfig {
    /// Sets [`is_fatal`](Self::is_fatal).
    pub fn with_is_fatal<F>(mut self, is_fatal: F) -> Self
    where
        F: Fn(&WorkerError) -> bool + Send + Sync + 'static,
    {
        self.is_fatal = Arc::new(is_fatal);
        self
    }

    /// Sets [`worst_error`](Self::worst_error).
    pub fn with_worst_error<F>(mut self, worst_error: F) -> Self
    where
        F: Fn(&WorkerError, &WorkerError) -> Ordering + Send + Sync + 'static,
    {
        self.worst_error = Arc::new(worst_error);
        self
    }

    /// Checks that the settings make sense together.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid =
            |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        if !self.backoff_factor.is_finite() || self.backoff_factor < 1.0 {
            return invalid(
                "backoff_factor",
                format!(
                    "must be a finite number of at least 1.0, not {}",
                    self.backoff_factor
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.backoff_jitter) {
            return invalid(
                "backoff_jitter",
                format!("must be from 0.0 to 1.0, not {}", self.backoff_jitter),
            );
        }
        if self.error_delay > self.max_delay {
            return invalid(
                "error_delay",
                format!(
                    "{} is longer than max_delay {}",
                    human(self.error_delay),
                    human(self.max_delay)
                ),
            );
        }
        if self.bounce_delay > self.max_delay {
            return invalid(
                "bounce_delay",
                format!(
                    "{} is longer than max_delay {}",
                    human(self.bounce_delay),
                    human(self.max_delay)
                ),
            );
        }
        if self.restart_limit.window.is_zero() {
            return invalid(
                "restart_limit.window",
                "must be longer than zero".to_owned(),
            );
        }
        if self.report_timeout.is_zero() {
            return invalid("report_timeout", "must be longer than zero".to_owned());
        }
        if self.stop_timeout.is_zero() {
            return invalid("stop_timeout", "must be longer than zero".to_owned());
        }
        Ok(())
    }

    /// The delay before restarting after the `failures`-th consecutive
    /// failure (1 for the first), before jitter: `error_delay *
    /// backoff_factor^(failures - 1)`, capped at `max_delay`. Saturates
    /// instead of overflowing, however many failures.
    pub(crate) fn backoff_delay(&self, failures: u32) -> Duration {
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.error_delay.as_secs_f64() * self.backoff_factor.powi(exponent);
        let capped = seconds.min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_delay)
    }

    /// `delay` moved by up to `backoff_jitter` of itself either way, as chosen
    /// by `unit` (a random number in `0.0..1.0`), and capped at `max_delay`.
    pub(crate) fn jittered(&self, delay: Duration, unit: f64) -> Duration {
        let spread = self.backoff_jitter * (unit * 2.0 - 1.0);
        let seconds =
            (delay.as_secs_f64() * (1.0 + spread)).clamp(0.0, self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(seconds).unwrap_or(self.max_delay)
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("error_delay", &self.error_delay)
            .field("backoff_factor", &self.backoff_factor)
            .field("backoff_jitter", &self.backoff_jitter)
            .field("max_delay", &self.max_delay)
            .field("backoff_reset_after", &self.backoff_reset_after)
            .field("bounce_delay", &self.bounce_delay)
            .field("restart_limit", &self.restart_limit)
            .field("report_timeout", &self.report_timeout)
            .field("stop_timeout", &self.stop_timeout)
            .field("jitter_seed", &self.jitter_seed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> EngineConfig {
        EngineConfig {
            error_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            ..EngineConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_from_the_error_delay_up_to_the_cap() {
        let config = config();
        let delays: Vec<u64> = (1..=8).map(|n| config.backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(config.backoff_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let config = config();
        let base = Duration::from_secs(10);
        assert_eq!(config.jittered(base, 0.0), Duration::from_secs(8));
        assert_eq!(config.jittered(base, 0.5), base);
        assert!(config.jittered(base, 0.999_999) <= Duration::from_secs(12));
        assert_eq!(
            config.jittered(Duration::from_secs(60), 0.99),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn validation_names_the_wrong_field() {
        let check = |change: fn(&mut EngineConfig), field: &str| {
            let mut config = EngineConfig::default();
            change(&mut config);
            match config.validate() {
                Err(Error::InvalidConfig { field: found, .. }) => assert_eq!(found, field),
                other => panic!("expected {field} to be rejected, got {other:?}"),
            }
        };
        check(|c| c.backoff_factor = 0.5, "backoff_factor");
        check(|c| c.backoff_factor = f64::NAN, "backoff_factor");
        check(|c| c.backoff_factor = f64::INFINITY, "backoff_factor");
        check(|c| c.backoff_jitter = 1.5, "backoff_jitter");
        check(|c| c.backoff_jitter = f64::NAN, "backoff_jitter");
        check(|c| c.error_delay = Duration::from_secs(1000), "error_delay");
        check(
            |c| c.bounce_delay = Duration::from_secs(1000),
            "bounce_delay",
        );
        check(
            |c| c.restart_limit.window = Duration::ZERO,
            "restart_limit.window",
        );
        check(|c| c.report_timeout = Duration::ZERO, "report_timeout");
        check(|c| c.stop_timeout = Duration::ZERO, "stop_timeout");
        assert!(EngineConfig::default().validate().is_ok());
    }

    #[test]
    fn reasons_speak_of_durations_as_people_do() {
        let config = EngineConfig {
            error_delay: Duration::from_secs(1000),
            ..EngineConfig::default()
        };
        let error = config.validate().expect_err("too long");
        assert_eq!(
            error.to_string(),
            "invalid engine config: error_delay 1000.0 s is longer than max_delay 120.0 s"
        );
    }

    proptest! {
        #[test]
        fn backoff_never_overflows_and_never_passes_the_cap(
            failures in any::<u32>(),
            factor in 1.0f64..1e6,
            unit in 0.0f64..1.0,
            error_ms in 0u64..10_000,
        ) {
            let mut config = config();
            config.backoff_factor = factor;
            config.error_delay = Duration::from_millis(error_ms);
            let delay = config.backoff_delay(failures);
            prop_assert!(delay <= config.max_delay);
            prop_assert!(config.jittered(delay, unit) <= config.max_delay);
        }
    }
}
