//! Memory per live key beyond the key's own bytes: in a batcher (its map
//! entry and its pending entry, in the steady state between flushes) and in
//! a watcher (its state of the key, and one subscriber's buffer of it),
//! measured with dhat's heap statistics.
//!
//! Run with `cargo bench -p flotilla-presence --bench memory`; the results
//! and their goals (at most 128 bytes each) are in docs/benchmarks.md.
//! Prints one line per figure; takes no arguments (any given by cargo are
//! ignored).

use std::time::Duration;

use flotilla_core_types::{Name, Worker};
use flotilla_presence::{
    Config, Event, Incarnation, MemoryStore, PingBatcher, PresenceStore, Watcher,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const KEYS: usize = 100_000;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime builds");
    runtime.block_on(measure());
}

fn heap_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}

async fn measure() {
    let scope = Name::new("model-1").expect("valid");
    let config = Config::default();

    // The batcher: pings of KEYS incarnations, flushed once (so its pending
    // set has grown to size), then pinged again: the state between flushes.
    let store = MemoryStore::new();
    let batcher = PingBatcher::start(NullWrites(store.clone()), config.clone()).expect("valid");
    let before = heap_bytes();
    for n in 0..KEYS as u64 {
        batcher.ping(&scope, Incarnation(n)).expect("pings");
    }
    batcher.sync().await.expect("flushes");
    for n in 0..KEYS as u64 {
        batcher.ping(&scope, Incarnation(n)).expect("pings");
    }
    let batcher_bytes = heap_bytes().saturating_sub(before);
    println!(
        "memory: batcher: {KEYS} live keys: {} bytes per key (goal: at most 128)",
        batcher_bytes / KEYS
    );
    batcher.kill();
    batcher.wait().await.expect("clean stop");

    // The watcher: KEYS keys alive in the store, watched by one subscriber
    // that has taken every first state. The keys' names are made first and
    // shared by reference with the watcher, so their bytes are not counted.
    let keys: Vec<Name> = (0..KEYS)
        .map(|n| Name::new(format!("agent-{n}")).expect("valid"))
        .collect();
    for key in &keys {
        store
            .begin(&scope, key, config.current_slot())
            .await
            .expect("begins");
    }
    let watcher = Watcher::start(store.clone(), scope.clone(), config.clone()).expect("valid");
    let before = heap_bytes();
    let mut subscription = watcher.subscribe();
    subscription
        .watch_many(keys.clone())
        .await
        .expect("watches");
    let mut taken = 0;
    while let Some(Event::Change(_)) = subscription.try_next() {
        taken += 1;
    }
    assert_eq!(taken, KEYS);
    // Let a few loads run: the steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The clone of the key list given to watch_many is gone; the list the
    // watcher made of its keys for a load is transient.
    let watcher_bytes = heap_bytes().saturating_sub(before);
    println!(
        "memory: watcher: {KEYS} watched keys, one subscriber: {} bytes per key (goal: at most 128)",
        watcher_bytes / KEYS
    );
    drop(subscription);
    watcher.kill();
    watcher.wait().await.expect("clean stop");
}

/// The memory store for everything but pings, whose writes it drops: the
/// batcher's memory is measured, not the store's.
#[derive(Debug, Clone)]
struct NullWrites(MemoryStore);

impl PresenceStore for NullWrites {
    async fn begin(
        &self,
        scope: &Name,
        key: &Name,
        slot: flotilla_presence::Slot,
    ) -> Result<Incarnation, flotilla_presence::StoreError> {
        self.0.begin(scope, key, slot).await
    }
    async fn write_pings(
        &self,
        _batch: &flotilla_presence::PingBatch,
    ) -> Result<(), flotilla_presence::StoreError> {
        Ok(())
    }
    async fn mark_stopped(
        &self,
        scope: &Name,
        incarnation: Incarnation,
    ) -> Result<(), flotilla_presence::StoreError> {
        self.0.mark_stopped(scope, incarnation).await
    }
    async fn load(
        &self,
        scope: &Name,
        keys: &[Name],
        since: flotilla_presence::Slot,
    ) -> Result<
        std::collections::HashMap<Name, flotilla_presence::KeyRecord>,
        flotilla_presence::StoreError,
    > {
        self.0.load(scope, keys, since).await
    }
    async fn prune(
        &self,
        rule: flotilla_presence::PruneRule,
    ) -> Result<flotilla_presence::PruneReport, flotilla_presence::StoreError> {
        self.0.prune(rule).await
    }
    async fn remove_scope(&self, scope: &Name) -> Result<(), flotilla_presence::StoreError> {
        self.0.remove_scope(scope).await
    }
}
