//! Test doubles and helpers.
//!
//! [`Flaky`] wraps the memory store and fails the operations a test turns
//! off, counting the writes it passes on. [`Parts`] is a store, a batcher
//! and a watcher on one clock, with helpers to start pingers and to take
//! events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_core_types::{Name, Worker};
use flotilla_presence::{
    Change, Clock, Config, Event, Incarnation, KeyRecord, MemoryStore, PingBatch, PingBatcher,
    Pinger, PresenceStore, PruneReport, PruneRule, Slot, StoreError, Subscription, Watcher,
};
use tokio::time::timeout;

/// A store that fails what the test turns off.
#[derive(Debug, Clone, Default)]
pub(crate) struct Flaky {
    pub(crate) inner: MemoryStore,
    pub(crate) fail_writes: Arc<AtomicBool>,
    pub(crate) fail_loads: Arc<AtomicBool>,
    /// This many coming `write_pings` calls fail.
    pub(crate) fail_next_writes: Arc<AtomicUsize>,
    /// `write_pings` calls that reached the store.
    pub(crate) writes: Arc<AtomicUsize>,
    /// `write_pings` calls refused.
    pub(crate) refused_writes: Arc<AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
#[error("turned off by the test")]
pub(crate) struct TurnedOff;

impl Flaky {
    pub(crate) fn set_unreachable(&self, unreachable: bool) {
        self.fail_writes.store(unreachable, Ordering::SeqCst);
        self.fail_loads.store(unreachable, Ordering::SeqCst);
    }

    fn check(&self, flag: &AtomicBool, operation: &'static str) -> Result<(), StoreError> {
        if flag.load(Ordering::SeqCst) {
            Err(StoreError::unavailable(operation, TurnedOff))
        } else {
            Ok(())
        }
    }
}

impl PresenceStore for Flaky {
    async fn begin(&self, scope: &Name, key: &Name, slot: Slot) -> Result<Incarnation, StoreError> {
        self.check(&self.fail_writes, "begin")?;
        self.inner.begin(scope, key, slot).await
    }

    async fn write_pings(&self, batch: &PingBatch) -> Result<(), StoreError> {
        let failing_next = self
            .fail_next_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing_next {
            self.refused_writes.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::unavailable("write_pings", TurnedOff));
        }
        if let Err(error) = self.check(&self.fail_writes, "write_pings") {
            self.refused_writes.fetch_add(1, Ordering::SeqCst);
            return Err(error);
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_pings(batch).await
    }

    async fn mark_stopped(&self, scope: &Name, incarnation: Incarnation) -> Result<(), StoreError> {
        self.check(&self.fail_writes, "mark_stopped")?;
        self.inner.mark_stopped(scope, incarnation).await
    }

    async fn load(
        &self,
        scope: &Name,
        keys: &[Name],
        since: Slot,
    ) -> Result<HashMap<Name, KeyRecord>, StoreError> {
        self.check(&self.fail_loads, "load")?;
        self.inner.load(scope, keys, since).await
    }

    async fn prune(&self, rule: PruneRule) -> Result<PruneReport, StoreError> {
        self.check(&self.fail_writes, "prune")?;
        self.inner.prune(rule).await
    }

    async fn remove_scope(&self, scope: &Name) -> Result<(), StoreError> {
        self.check(&self.fail_writes, "remove_scope")?;
        self.inner.remove_scope(scope).await
    }
}

pub(crate) fn name(text: &str) -> Name {
    Name::new(text).expect("test names are valid")
}

pub(crate) fn key(n: usize) -> Name {
    name(&format!("agent-{n}"))
}

pub(crate) fn scope() -> Name {
    name("model-1")
}

/// One-second slots starting exactly on a slot boundary, no jitter: a flush
/// and a load every 250 ms, a ping every 250 ms.
pub(crate) fn fast_config() -> Config {
    let mut config = Config::with_slot_length(Duration::from_secs(1))
        .clock(Clock::starting_at(Duration::from_secs(1_000_000)));
    config.flush_jitter = 0.0;
    config.seed = Some(7);
    config
}

/// A store, a batcher and a watcher of [`scope`] sharing one config.
pub(crate) struct Parts {
    pub(crate) store: Flaky,
    pub(crate) config: Config,
    pub(crate) batcher: PingBatcher,
    pub(crate) watcher: Watcher,
}

impl Parts {
    pub(crate) fn start(config: Config) -> Parts {
        let store = Flaky::default();
        let batcher = PingBatcher::start(store.clone(), config.clone()).expect("valid config");
        let watcher = Watcher::start(store.clone(), scope(), config.clone()).expect("valid config");
        Parts {
            store,
            config,
            batcher,
            watcher,
        }
    }

    pub(crate) async fn pinger(&self, key: &Name) -> Pinger {
        Pinger::start(
            self.store.clone(),
            self.batcher.clone(),
            scope(),
            key.clone(),
            self.config.clone(),
        )
        .await
        .expect("the pinger starts")
    }

    /// A running pinger for each of `keys`, in order.
    pub(crate) async fn pingers(&self, keys: &[Name]) -> Vec<Pinger> {
        let mut pingers = Vec::with_capacity(keys.len());
        for key in keys {
            pingers.push(self.pinger(key).await);
        }
        pingers
    }

    /// A subscription watching `keys`, with their first states taken.
    pub(crate) async fn subscription(&self, keys: &[Name]) -> (Subscription, Vec<Change>) {
        let mut subscription = self.watcher.subscribe();
        subscription
            .watch_many(keys.to_vec())
            .await
            .expect("the watcher runs");
        let mut first = Vec::new();
        for _ in keys {
            first.push(next_change(&mut subscription).await);
        }
        (subscription, first)
    }

    pub(crate) async fn stop(self) {
        for worker in [&self.watcher as &dyn Worker, &self.batcher] {
            worker.kill();
            worker.wait().await.expect("stops cleanly");
        }
    }
}

/// The next event, which must come within five minutes of (paused) time.
pub(crate) async fn next_event(subscription: &mut Subscription) -> Event {
    timeout(Duration::from_secs(300), subscription.next())
        .await
        .expect("an event within five minutes")
        .expect("the watcher runs")
}

/// The next event, which must be a change.
pub(crate) async fn next_change(subscription: &mut Subscription) -> Change {
    match next_event(subscription).await {
        Event::Change(change) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// Every event already buffered.
pub(crate) fn buffered(subscription: &mut Subscription) -> Vec<Event> {
    std::iter::from_fn(|| subscription.try_next()).collect()
}
