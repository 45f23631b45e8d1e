//! [`Config`]: slot length, ping, flush and load intervals, validated in one
//! place; [`Clock`] and [`Slot`]: how the time of a ping becomes the slot it
//! counts for.
//!
//! Every part of one scope (pingers, batchers, watchers, pruners, in one
//! process or many) must use the same slot length, or they disagree about
//! which slot "now" is.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::Error;

/// The shortest slot length a [`Config`] accepts: below a second the slot
/// records churn faster than any store should be written.
pub const MIN_SLOT_LENGTH: Duration = Duration::from_secs(1);

/// A time slot: the number of whole slot lengths since the Unix epoch. A key
/// is alive while its latest incarnation was born or pinged in the current
/// slot or the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u64);

impl Slot {
    /// The slot before this one (slot 0 has none and is its own).
    pub fn previous(self) -> Slot {
        Slot(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// Wall-clock time as presence reads it: an anchor in Unix time, advanced
/// by tokio's clock, so that slots follow the wall clock in production and
/// tokio's paused clock in tests.
///
/// Clones share their anchor, so every part given clones of one clock agrees
/// on the time exactly. Parts in different processes agree as closely as
/// their system clocks do; keep those within a small fraction of the slot
/// length (NTP does far better).
#[derive(Clone, Copy)]
pub struct Clock {
    anchor_unix: Duration,
    anchor_instant: Instant,
}

impl Clock {
    /// The system clock, read once now and advanced by tokio's clock from
    /// then on.
    pub fn system() -> Clock {
        let anchor_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock::starting_at(anchor_unix)
    }

    /// A clock that reads `unix_time` now (time since the Unix epoch) and is
    /// advanced by tokio's clock: tests use it to place slot boundaries
    /// where they want them.
    pub fn starting_at(unix_time: Duration) -> Clock {
        Clock {
            anchor_unix: unix_time,
            anchor_instant: Instant::now(),
        }
    }

    /// The time now, since the Unix epoch.
    pub fn now(&self) -> Duration {
        self.anchor_unix + self.anchor_instant.elapsed()
    }

    /// The slot of length `slot_length` that holds the time now.
    pub fn slot(&self, slot_length: Duration) -> Slot {
        slot_of(self.now(), slot_length)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock").field("now", &self.now()).finish()
    }
}

/// The slot of length `slot_length` that holds `unix_time`.
pub(crate) fn slot_of(unix_time: Duration, slot_length: Duration) -> Slot {
    let length = slot_length.as_nanos().max(1);
    Slot(u64::try_from(unix_time.as_nanos() / length).unwrap_or(u64::MAX))
}

/// How presence's parts keep time. Start from [`Default`] and change what
/// you need; each part validates it when it starts ([`Config::validate`]).
///
/// # The bounds
///
/// With slot length `S`, ping interval `P`, flush interval `F` (jittered by
/// up to `F × flush_jitter`) and load interval `L`:
///
/// - A key whose pinger dies is reported dead within `2·S + L`: its last
///   ping was in some slot `k`, and from the start of slot `k + 2` no
///   consulted slot holds it. With the defaults (30 s, and `L` = `F` = 1 s)
///   that is 61 s; at `S` = 1 s, `F` = `L` = 250 ms it is 2.25 s.
/// - A key whose pinger starts is reported alive within one load, `L`: its
///   birth counts as its first ping, written when the incarnation is
///   allocated.
/// - A key whose pinger keeps running is never reported dead: validation
///   demands `P + 2·F·(1 + flush_jitter) ≤ S`, so in every slot a ping is
///   written (with one failed flush to spare) before the next slot starts.
/// - A store that refuses or fails every write for a while causes no false
///   deaths as long as that lasts at most [`Config::outage_tolerance`],
///   `S − P − F·(1 + flush_jitter)`: the latest ping of a slot is then
///   still written, by the first flush after the outage, before the slot
///   ends. A write that hangs counts as outage until it times out, so keep
///   the store's request timeout well below the tolerance. A watcher that
///   lost touch itself holds its expiries back after it regains touch; one
///   that did not (a store failing for the batcher only) relies on this
///   bound. With the defaults it is 21.3 s; at `S` = 1 s, 0.45 s; so choose
///   a slot several times longer than the elections and failovers of the
///   store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The length of a time slot. At least 1 s. Default: 30 s, as in juju.
    pub slot_length: Duration,
    /// How often a pinger pings. Default: a quarter of the slot length.
    pub ping_interval: Option<Duration>,
    /// How often a batcher writes the pings it gathered. Default: 1 s.
    pub flush_interval: Duration,
    /// Each flush delay is changed by a random fraction of up to this much
    /// of itself, either way, so that many batchers do not write in step.
    /// From 0 to below 1. Default: 0.2.
    pub flush_jitter: f64,
    /// How often a watcher loads the state of its keys. Default: the flush
    /// interval.
    pub load_interval: Option<Duration>,
    /// How long a flush may take before it counts as failed and is retried.
    /// Default: 10 s.
    pub store_timeout: Duration,
    /// How often a [`Pruner`](crate::Pruner) prunes. Default: the slot
    /// length.
    pub prune_interval: Option<Duration>,
    /// How long a key must have been dead before the pruner forgets it
    /// (its latest incarnation and tombstone). At least two slots. Default:
    /// 1 hour.
    pub forget_dead_after: Duration,
    /// The clock slots are read from. Default: [`Clock::system`], read when
    /// the config is made.
    pub clock: Clock,
    /// The seed of the flush jitter; `None` seeds from the system.
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            slot_length: Duration::from_secs(30),
            ping_interval: None,
            flush_interval: Duration::from_secs(1),
            flush_jitter: 0.2,
            load_interval: None,
            store_timeout: Duration::from_secs(10),
            prune_interval: None,
            forget_dead_after: Duration::from_secs(3600),
            clock: Clock::system(),
            seed: None,
        }
    }
}

impl Config {
    /// The defaults with slot length `slot_length` and a flush interval
    /// (and so a load interval) of a quarter of it, capped at 1 s: at 1 s
    /// slots a death is reported within 2.25 s.
    pub fn with_slot_length(slot_length: Duration) -> Config {
        Config {
            slot_length,
            flush_interval: (slot_length / 4).min(Duration::from_secs(1)),
            ..Config::default()
        }
    }

    /// The same config reading time from `clock`.
    pub fn clock(mut self, clock: Clock) -> Config {
        self.clock = clock;
        self
    }

    /// The ping interval in effect.
    pub fn effective_ping_interval(&self) -> Duration {
        self.ping_interval.unwrap_or(self.slot_length / 4)
    }

    /// The load interval in effect.
    pub fn effective_load_interval(&self) -> Duration {
        self.load_interval.unwrap_or(self.flush_interval)
    }

    /// The prune interval in effect.
    pub fn effective_prune_interval(&self) -> Duration {
        self.prune_interval.unwrap_or(self.slot_length)
    }

    /// The longest a gathered ping waits before its flush starts.
    pub fn max_flush_delay(&self) -> Duration {
        self.flush_interval.mul_f64(1.0 + self.flush_jitter)
    }

    /// The bound within which a dead pinger's key is reported dead:
    /// `2·S + L` (see the type's docs).
    pub fn death_bound(&self) -> Duration {
        self.slot_length * 2 + self.effective_load_interval()
    }

    /// The longest span during which every store write may fail without a
    /// running key being reported dead: `S − P − F·(1 + flush_jitter)`
    /// (see the type's docs), or zero if the intervals leave none.
    pub fn outage_tolerance(&self) -> Duration {
        self.slot_length
            .saturating_sub(self.effective_ping_interval())
            .saturating_sub(self.max_flush_delay())
    }

    /// The slot the clock is in now.
    pub fn current_slot(&self) -> Slot {
        self.clock.slot(self.slot_length)
    }

    /// Checks every setting, and that the intervals keep a running pinger's
    /// key alive.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: String| Err(Error::InvalidConfig { field, reason });
        if self.slot_length < MIN_SLOT_LENGTH {
            return invalid(
                "slot_length",
                format!(
                    "is {:?}, below the minimum {MIN_SLOT_LENGTH:?}",
                    self.slot_length
                ),
            );
        }
        for (field, value) in [
            ("ping_interval", self.effective_ping_interval()),
            ("flush_interval", self.flush_interval),
            ("load_interval", self.effective_load_interval()),
            ("store_timeout", self.store_timeout),
            ("prune_interval", self.effective_prune_interval()),
        ] {
            if value.is_zero() {
                return invalid(field, "must not be zero".to_owned());
            }
        }
        if !(0.0..1.0).contains(&self.flush_jitter) {
            return invalid(
                "flush_jitter",
                format!("is {}, outside 0 to below 1", self.flush_jitter),
            );
        }
        if self.forget_dead_after < self.slot_length * 2 {
            return invalid(
                "forget_dead_after",
                format!(
                    "is {:?}, below two slots ({:?}): a reader may still consult what it removes",
                    self.forget_dead_after,
                    self.slot_length * 2
                ),
            );
        }
        let needed = self.effective_ping_interval() + self.max_flush_delay() * 2;
        if needed > self.slot_length {
            return invalid(
                "ping_interval",
                format!(
                    "with the flush interval needs {needed:?} (ping interval plus two jittered \
                     flushes) to fit in a slot of {:?}, or running keys would expire",
                    self.slot_length
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_and_the_one_second_preset_are_valid() {
        assert!(Config::default().validate().is_ok());
        let fast = Config::with_slot_length(Duration::from_secs(1));
        assert!(fast.validate().is_ok());
        assert_eq!(fast.death_bound(), Duration::from_millis(2250));
        assert_eq!(Config::default().death_bound(), Duration::from_secs(61));
        assert_eq!(fast.outage_tolerance(), Duration::from_millis(450));
        assert_eq!(
            Config::default().outage_tolerance(),
            Duration::from_millis(21_300)
        );
    }

    #[test]
    fn a_valid_config_tolerates_at_least_one_failed_flush() {
        for seconds in [1, 2, 5, 30, 300] {
            let config = Config::with_slot_length(Duration::from_secs(seconds));
            assert!(config.validate().is_ok());
            assert!(config.outage_tolerance() >= config.max_flush_delay());
        }
        let mut tight = Config::with_slot_length(Duration::from_secs(1));
        tight.ping_interval = Some(Duration::from_secs(2));
        assert!(tight.validate().is_err());
        assert_eq!(tight.outage_tolerance(), Duration::ZERO);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let check = |config: Config, field: &str| match config.validate() {
            Err(Error::InvalidConfig { field: named, .. }) => assert_eq!(named, field),
            other => panic!("expected {field} to be refused, got {other:?}"),
        };
        check(
            Config {
                slot_length: Duration::from_millis(999),
                ..Config::default()
            },
            "slot_length",
        );
        check(
            Config {
                flush_jitter: 1.0,
                ..Config::default()
            },
            "flush_jitter",
        );
        check(
            Config {
                flush_jitter: f64::NAN,
                ..Config::default()
            },
            "flush_jitter",
        );
        check(
            Config {
                flush_interval: Duration::ZERO,
                ..Config::default()
            },
            "flush_interval",
        );
        check(
            Config {
                ping_interval: Some(Duration::from_secs(29)),
                ..Config::default()
            },
            "ping_interval",
        );
    }

    #[test]
    fn slots_count_whole_lengths_since_the_epoch() {
        let second = Duration::from_secs(1);
        assert_eq!(slot_of(Duration::from_millis(999), second), Slot(0));
        assert_eq!(slot_of(Duration::from_millis(1000), second), Slot(1));
        assert_eq!(
            slot_of(Duration::from_secs(95), Duration::from_secs(30)),
            Slot(3)
        );
        assert_eq!(Slot(0).previous(), Slot(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_follows_tokio_time_from_its_anchor() {
        let clock = Clock::starting_at(Duration::from_secs(100));
        let copy = clock;
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.now(), Duration::from_secs(105));
        assert_eq!(copy.slot(Duration::from_secs(10)), Slot(10));
    }
}
