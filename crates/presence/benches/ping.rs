//! Speed of a ping and the writes of a flush, each beside a baseline
//! measured in the same run:
//!
//! - `ping_100k`: one `PingBatcher::ping` among 100,000 live keys, beside a
//!   bare insert into one `Mutex<HashMap>` of the same key and value types,
//!   uncontended (the floor a ping's map insert cannot beat). Criterion reports the mean; the p50
//!   and p99 of single calls, timed one by one, are printed first.
//! - writes per flush: the store operations and records one flush writes
//!   for 1,000, 10,000 and 100,000 keys (goal: independent of the number of
//!   keys), printed.
//!
//! Run with `cargo bench -p flotilla-presence --bench ping`; the results
//! and their goals are in docs/benchmarks.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use flotilla_core_types::{Name, Worker};
use flotilla_presence::{
    Config, Incarnation, MemoryStore, PingBatch, PingBatcher, PresenceStore, Slot, StoreError,
};
use tokio::runtime::Runtime;

const KEYS: u64 = 100_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

fn scope() -> Name {
    Name::new("model-1").expect("a valid name")
}

/// A store that keeps nothing and counts the writes it is asked for.
#[derive(Debug, Clone, Default)]
struct CountingStore {
    inner: MemoryStore,
    writes: Arc<AtomicUsize>,
    records: Arc<AtomicUsize>,
}

impl PresenceStore for CountingStore {
    async fn begin(&self, scope: &Name, key: &Name, slot: Slot) -> Result<Incarnation, StoreError> {
        self.inner.begin(scope, key, slot).await
    }
    async fn write_pings(&self, batch: &PingBatch) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.records
            .fetch_add(batch.record_count(), Ordering::SeqCst);
        Ok(())
    }
    async fn mark_stopped(&self, scope: &Name, incarnation: Incarnation) -> Result<(), StoreError> {
        self.inner.mark_stopped(scope, incarnation).await
    }
    async fn load(
        &self,
        scope: &Name,
        keys: &[Name],
        since: Slot,
    ) -> Result<std::collections::HashMap<Name, flotilla_presence::KeyRecord>, StoreError> {
        self.inner.load(scope, keys, since).await
    }
    async fn prune(
        &self,
        rule: flotilla_presence::PruneRule,
    ) -> Result<flotilla_presence::PruneReport, StoreError> {
        self.inner.prune(rule).await
    }
    async fn remove_scope(&self, scope: &Name) -> Result<(), StoreError> {
        self.inner.remove_scope(scope).await
    }
}

/// A batcher that flushes only when asked (its interval is an hour).
fn quiet_batcher(store: CountingStore) -> PingBatcher {
    let mut config = Config::with_slot_length(Duration::from_secs(6 * 3600));
    config.flush_interval = Duration::from_secs(3600);
    config.forget_dead_after = 2 * config.slot_length;
    PingBatcher::start(store, config).expect("valid config")
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "ping_100k: {label}: p50 {:?}, p99 {:?}, over {} single calls",
        at(0.50),
        at(0.99),
        samples.len()
    );
}

/// p50 and p99 of single calls, timed one by one, ping and floor in turn.
fn single_call_percentiles(runtime: &Runtime) {
    let batcher = runtime.block_on(async { quiet_batcher(CountingStore::default()) });
    let floor: Mutex<HashMap<(Name, Incarnation), Slot>> = Mutex::new(HashMap::new());
    let scope = scope();
    let rounds = 5;
    let (mut pings, mut inserts) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for n in 0..KEYS {
            let incarnation = Incarnation(n);
            let started = Instant::now();
            batcher.ping(&scope, incarnation).expect("pings");
            let pinged = started.elapsed();
            let started = Instant::now();
            floor
                .lock()
                .expect("unpoisoned")
                .insert((scope.clone(), incarnation), Slot(round));
            let inserted = started.elapsed();
            // The first round fills the maps; the steady state is the rest.
            if round > 0 {
                pings.push(pinged);
                inserts.push(inserted);
            }
        }
    }
    percentiles("PingBatcher::ping", pings);
    percentiles("bare Mutex<HashMap> insert (floor)", inserts);
    runtime.block_on(async {
        batcher.kill();
        batcher.wait().await.expect("clean stop");
    });
}

fn writes_per_flush(runtime: &Runtime) {
    for keys in [1_000, 10_000, 100_000] {
        let store = CountingStore::default();
        let batcher = runtime.block_on(async { quiet_batcher(store.clone()) });
        for n in 0..keys {
            batcher.ping(&scope(), Incarnation(n)).expect("pings");
        }
        let flushed = runtime.block_on(batcher.sync()).expect("flushes");
        println!(
            "writes per flush: {keys} keys: {} store write(s), {} record(s), {} pings",
            store.writes.load(Ordering::SeqCst),
            flushed.records,
            flushed.pings,
        );
        runtime.block_on(async {
            batcher.kill();
            batcher.wait().await.expect("clean stop");
        });
    }
}

fn ping_100k(c: &mut Criterion, runtime: &Runtime) {
    let mut group = c.benchmark_group("ping_100k");
    let batcher = runtime.block_on(async { quiet_batcher(CountingStore::default()) });
    let scope = scope();
    for n in 0..KEYS {
        batcher.ping(&scope, Incarnation(n)).expect("pings");
    }
    let mut next = 0;
    group.bench_function("PingBatcher::ping", |b| {
        b.iter(|| {
            next = (next + 1) % KEYS;
            batcher
                .ping(black_box(&scope), Incarnation(next))
                .expect("pings");
        });
    });
    let floor: Mutex<HashMap<(Name, Incarnation), Slot>> = Mutex::new(HashMap::new());
    for n in 0..KEYS {
        floor
            .lock()
            .expect("unpoisoned")
            .insert((scope.clone(), Incarnation(n)), Slot(0));
    }
    group.bench_function("bare Mutex<HashMap> insert (floor)", |b| {
        b.iter(|| {
            next = (next + 1) % KEYS;
            floor
                .lock()
                .expect("unpoisoned")
                .insert((black_box(&scope).clone(), Incarnation(next)), Slot(1));
        });
    });
    group.finish();
    runtime.block_on(async {
        batcher.kill();
        batcher.wait().await.expect("clean stop");
    });
}

fn main() {
    let runtime = runtime();
    single_call_percentiles(&runtime);
    writes_per_flush(&runtime);
    let mut criterion = Criterion::default().configure_from_args();
    ping_100k(&mut criterion, &runtime);
    criterion.final_summary();
}
