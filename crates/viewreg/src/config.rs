//! [`RegistryConfig`]: how often views are checked, how health changes, and
//! when the registry panics.

use std::time::Duration;

use crate::Error;

/// How a [`Registry`](crate::Registry) checks and judges its views. Start
/// from [`Default`] and change what you need; the registry validates it when
/// it starts.
///
/// With the defaults a healthy view whose server dies turns unhealthy within
/// `unhealthy_threshold × (probe_interval + probe_timeout)` = 3 × (5 s + 1 s)
/// = 18 s, and sooner if callers [report](crate::Registry::report_failure)
/// the failures they see.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// How long after one check of a view the next is due while the view is
    /// healthy (or not yet known, or recovering). Default: 5 s.
    pub probe_interval: Duration,
    /// Each delay before a check is shortened by a random fraction of up to
    /// this much of itself, so that views discovered together are not
    /// checked in step. From 0 (no jitter) to below 1. Default: 0.2.
    pub probe_jitter: f64,
    /// How long one check may take before it counts as a failure. Default:
    /// 1 s.
    pub probe_timeout: Duration,
    /// How many consecutive failures turn a healthy view unhealthy. Default:
    /// 3, as in Envoy.
    pub unhealthy_threshold: u32,
    /// How many consecutive successes turn an unhealthy view healthy again.
    /// Default: 2, as in Envoy.
    pub healthy_threshold: u32,
    /// While a view is unhealthy and its checks keep failing, each further
    /// failure multiplies the delay before its next check by this much.
    /// Default: 2.
    pub backoff_factor: f64,
    /// The longest delay between two checks of an unhealthy view. Default:
    /// 60 s.
    pub max_backoff: Duration,
    /// The largest share of the views that reported failures
    /// ([`report_failure`](crate::Registry::report_failure)) may hold
    /// unhealthy at once; at least one view may always be, and never the
    /// last healthy one. From 0 to 1. Default: 0.1, as Envoy's
    /// `max_ejection_percent`.
    pub max_passive_ejection: f64,
    /// When fewer than this share of the views are healthy, the registry is
    /// in panic mode (see the crate docs). From 0 (never) to 1. Default:
    /// 0.5, as in Envoy.
    pub panic_threshold: f64,
    /// The delay before asking a locator again after it failed; doubled on
    /// each further consecutive failure up to `max_locator_retry_delay`.
    /// Default: 1 s.
    pub locator_retry_delay: Duration,
    /// The longest delay before asking a failing locator again. Default:
    /// 30 s.
    pub max_locator_retry_delay: Duration,
    /// The seed of the jitter's random numbers; `None` seeds from the
    /// system. Tests fix it to make schedules repeatable.
    pub rng_seed: Option<u64>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            probe_interval: Duration::from_secs(5),
            probe_jitter: 0.2,
            probe_timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            backoff_factor: 2.0,
            max_backoff: Duration::from_secs(60),
            max_passive_ejection: 0.1,
            panic_threshold: 0.5,
            locator_retry_delay: Duration::from_secs(1),
            max_locator_retry_delay: Duration::from_secs(30),
            rng_seed: None,
        }
    }
}

impl RegistryConfig {
    /// This config with `rng_seed` set.
    pub fn with_rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// This config with `probe_interval` and `probe_timeout` set.
    pub fn with_probe_timing(mut self, interval: Duration, timeout: Duration) -> Self {
        self.probe_interval = interval;
        self.probe_timeout = timeout;
        self
    }

    /// This config with both thresholds set.
    pub fn with_thresholds(mut self, unhealthy: u32, healthy: u32) -> Self {
        self.unhealthy_threshold = unhealthy;
        self.healthy_threshold = healthy;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |field: &'static str, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.probe_interval.is_zero() {
            return fail("probe_interval", "must be more than zero");
        }
        if self.probe_timeout.is_zero() {
            return fail("probe_timeout", "must be more than zero");
        }
        if !(0.0..1.0).contains(&self.probe_jitter) {
            return fail("probe_jitter", "must be from 0 to below 1");
        }
        if self.unhealthy_threshold == 0 {
            return fail("unhealthy_threshold", "must be at least 1");
        }
        if self.healthy_threshold == 0 {
            return fail("healthy_threshold", "must be at least 1");
        }
        if !(self.backoff_factor >= 1.0 && self.backoff_factor.is_finite()) {
            return fail("backoff_factor", "must be a finite number of at least 1");
        }
        if self.max_backoff < self.probe_interval {
            return fail("max_backoff", "must be at least probe_interval");
        }
        if !(0.0..=1.0).contains(&self.max_passive_ejection) {
            return fail("max_passive_ejection", "must be from 0 to 1");
        }
        if !(0.0..=1.0).contains(&self.panic_threshold) {
            return fail("panic_threshold", "must be from 0 to 1");
        }
        if self.locator_retry_delay.is_zero() {
            return fail("locator_retry_delay", "must be more than zero");
        }
        if self.max_locator_retry_delay < self.locator_retry_delay {
            return fail(
                "max_locator_retry_delay",
                "must be at least locator_retry_delay",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(change: impl FnOnce(&mut RegistryConfig)) -> &'static str {
        let mut config = RegistryConfig::default();
        change(&mut config);
        match config.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn the_default_validates() {
        assert!(RegistryConfig::default().validate().is_ok());
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            rejected(|c| c.probe_interval = Duration::ZERO),
            "probe_interval"
        );
        assert_eq!(
            rejected(|c| c.probe_timeout = Duration::ZERO),
            "probe_timeout"
        );
        assert_eq!(rejected(|c| c.probe_jitter = 1.0), "probe_jitter");
        assert_eq!(rejected(|c| c.probe_jitter = f64::NAN), "probe_jitter");
        assert_eq!(
            rejected(|c| c.unhealthy_threshold = 0),
            "unhealthy_threshold"
        );
        assert_eq!(rejected(|c| c.healthy_threshold = 0), "healthy_threshold");
        assert_eq!(rejected(|c| c.backoff_factor = 0.5), "backoff_factor");
        assert_eq!(
            rejected(|c| c.backoff_factor = f64::INFINITY),
            "backoff_factor"
        );
        assert_eq!(
            rejected(|c| c.max_backoff = Duration::from_secs(1)),
            "max_backoff"
        );
        assert_eq!(
            rejected(|c| c.max_passive_ejection = 1.5),
            "max_passive_ejection"
        );
        assert_eq!(rejected(|c| c.panic_threshold = -0.1), "panic_threshold");
        assert_eq!(
            rejected(|c| c.locator_retry_delay = Duration::ZERO),
            "locator_retry_delay"
        );
        assert_eq!(
            rejected(|c| c.max_locator_retry_delay = Duration::from_millis(1)),
            "max_locator_retry_delay"
        );
    }
}
