//! [`PublisherConfig`]: how often mounts are refreshed, how failures back
//! off, and how much runs at once.

use std::time::Duration;

use crate::{Error, MountFlags};

/// How a [`Publisher`](crate::Publisher) paces its work. Start from
/// [`Default`] and change what you need; [`Publisher::start`] validates it.
///
/// Every mount carries a TTL of `refresh_period + ttl_slack`, so a mount
/// refreshed once per period never lapses, and a publisher that dies takes
/// its names with it within one TTL.
///
/// [`Publisher::start`]: crate::Publisher::start
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PublisherConfig {
    /// How often each mount is refreshed (or the session kept alive).
    /// Default: 60 s, as in Vanadium.
    pub refresh_period: Duration,
    /// What the TTL adds to the period, so that a slow refresh still lands
    /// in time. Default: 20 s.
    pub ttl_slack: Duration,
    /// The first refresh after a mount (and after a failure) is due a random
    /// fraction of up to this much of the period early, so that mounts made
    /// together, by one publisher or by a thousand started at once, spread
    /// their refreshes; later refreshes keep that phase. From 0 (no jitter)
    /// to below 1. Default: 0.2.
    pub refresh_jitter: f64,
    /// The delay before the first retry of a failed operation. Default: 1 s.
    pub retry_delay: Duration,
    /// What each further consecutive failure multiplies the delay by.
    /// Default: 2.
    pub backoff_factor: f64,
    /// The longest retry delay. Default: 30 s.
    pub max_retry_delay: Duration,
    /// Each retry delay is shortened by a random fraction of up to this much
    /// of itself, so that failing publishers do not retry in step. From 0 to
    /// 1. Default: 0.5.
    pub backoff_jitter: f64,
    /// How long one backend operation may take before it counts as failed.
    /// Default: 10 s.
    pub operation_timeout: Duration,
    /// How many backend operations may be under way at once. Default: 64.
    pub max_in_flight: usize,
    /// The flags every mount of this publisher carries. Default: none.
    pub flags: MountFlags,
    /// The seed of the jitter's random numbers; `None` seeds from the
    /// system. Tests fix it to make schedules repeatable.
    pub rng_seed: Option<u64>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            refresh_period: Duration::from_secs(60),
            ttl_slack: Duration::from_secs(20),
            refresh_jitter: 0.2,
            retry_delay: Duration::from_secs(1),
            backoff_factor: 2.0,
            max_retry_delay: Duration::from_secs(30),
            backoff_jitter: 0.5,
            operation_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            flags: MountFlags::NONE,
            rng_seed: None,
        }
    }
}

impl PublisherConfig {
    /// This config with `refresh_period` and `ttl_slack` set.
    pub fn with_period(mut self, refresh_period: Duration, ttl_slack: Duration) -> Self {
        self.refresh_period = refresh_period;
        self.ttl_slack = ttl_slack;
        self
    }

    /// This config with `flags` set.
    pub fn with_flags(mut self, flags: MountFlags) -> Self {
        self.flags = flags;
        self
    }

    /// This config with `rng_seed` set.
    pub fn with_rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// The TTL every mount carries: `refresh_period + ttl_slack`.
    pub fn ttl(&self) -> Duration {
        self.refresh_period.saturating_add(self.ttl_slack)
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.refresh_period.is_zero() {
            return fail("refresh_period", "must be above zero");
        }
        if self.ttl_slack.is_zero() {
            return fail("ttl_slack", "must be above zero");
        }
        if self.refresh_period.checked_add(self.ttl_slack).is_none() {
            return fail(
                "ttl_slack",
                "overflows the TTL when added to refresh_period",
            );
        }
        if !(0.0..1.0).contains(&self.refresh_jitter) {
            return fail("refresh_jitter", "must be from 0 to below 1");
        }
        if self.retry_delay.is_zero() {
            return fail("retry_delay", "must be above zero");
        }
        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            return fail("backoff_factor", "must be a finite number of at least 1");
        }
        if self.max_retry_delay < self.retry_delay {
            return fail("max_retry_delay", "must be at least retry_delay");
        }
        if !(0.0..=1.0).contains(&self.backoff_jitter) {
            return fail("backoff_jitter", "must be from 0 to 1");
        }
        if self.operation_timeout.is_zero() {
            return fail("operation_timeout", "must be above zero");
        }
        if self.max_in_flight == 0 {
            return fail("max_in_flight", "must be at least 1");
        }
        Ok(())
    }

    /// When a refresh is due after a mount sent at time zero, given `unit`
    /// (a random number in `0.0..1.0`): between `(1 - refresh_jitter)` of a
    /// period and a whole period.
    pub(crate) fn refresh_after(&self, unit: f64) -> Duration {
        self.refresh_period
            .mul_f64(1.0 - self.refresh_jitter * unit)
    }

    /// The retry delay after `failures` consecutive failures (at least one),
    /// shortened by the jitter that `unit` (a random number in `0.0..1.0`)
    /// picks.
    pub(crate) fn retry_after(&self, failures: u32, unit: f64) -> Duration {
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.retry_delay.as_secs_f64() * self.backoff_factor.powi(exponent);
        let capped = seconds.min(self.max_retry_delay.as_secs_f64());
        let jittered = capped * (1.0 - self.backoff_jitter * unit);
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max_retry_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_field(change: impl FnOnce(&mut PublisherConfig)) -> Option<&'static str> {
        let mut config = PublisherConfig::default();
        change(&mut config);
        match config.validate() {
            Err(Error::InvalidConfig { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn the_default_is_valid_and_has_vanadiums_ttl() {
        let config = PublisherConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.ttl(), Duration::from_secs(80));
    }

    #[test]
    fn each_out_of_range_field_is_named() {
        type Change = fn(&mut PublisherConfig);
        let cases: [(Change, &str); 10] = [
            (|c| c.refresh_period = Duration::ZERO, "refresh_period"),
            (|c| c.ttl_slack = Duration::ZERO, "ttl_slack"),
            (|c| c.ttl_slack = Duration::MAX, "ttl_slack"),
            (|c| c.refresh_jitter = 1.0, "refresh_jitter"),
            (|c| c.retry_delay = Duration::ZERO, "retry_delay"),
            (|c| c.backoff_factor = f64::NAN, "backoff_factor"),
            (
                |c| c.max_retry_delay = Duration::from_millis(1),
                "max_retry_delay",
            ),
            (|c| c.backoff_jitter = -0.1, "backoff_jitter"),
            (
                |c| c.operation_timeout = Duration::ZERO,
                "operation_timeout",
            ),
            (|c| c.max_in_flight = 0, "max_in_flight"),
        ];
        for (change, field) in cases {
            assert_eq!(invalid_field(change), Some(field));
        }
    }

    #[test]
    fn refreshes_fall_within_the_jitter_window() {
        let config = PublisherConfig::default();
        assert_eq!(config.refresh_after(0.0), Duration::from_secs(60));
        assert_eq!(config.refresh_after(0.5), Duration::from_secs(54));
        assert!(config.refresh_after(0.999_999) > Duration::from_secs(48));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let config = PublisherConfig {
            backoff_jitter: 0.0,
            ..PublisherConfig::default()
        };
        let delays: Vec<u64> = (1..=7)
            .map(|failures| config.retry_after(failures, 0.5).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            PublisherConfig::default().retry_after(1, 1.0),
            Duration::from_millis(500),
            "full jitter halves the delay at most"
        );
    }
}
