//! Durable local writes per second on a file store: one write per
//! transaction (each waits for the disk), and batches of 1,000 writes per
//! transaction. Values are 1 KiB.
//!
//! Run with `cargo bench -p flotilla-gensync --bench writes`; the results
//! are in docs/benchmarks.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flotilla_core_types::DeviceId;
use flotilla_gensync::{Replica, ReplicaConfig, Storage};

const BATCH: u64 = 1_000;

fn replica(dir: &tempfile::TempDir) -> Replica {
    let storage = Storage::open(dir.path().join("bench.redb")).expect("opens");
    let device = DeviceId::new("bench").expect("valid id");
    Replica::open(device, storage, ReplicaConfig::default()).expect("opens")
}

fn writes(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    let dir = tempfile::tempdir().expect("a directory");
    let replica = runtime.block_on(async { replica(&dir) });
    let mut group = c.benchmark_group("durable_writes");
    group.sample_size(20);
    let mut counter = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_per_transaction", |b| {
        b.to_async(&runtime).iter(|| {
            counter += 1;
            let key = format!("single/{counter}").into_bytes();
            let replica = replica.clone();
            async move { replica.put(key, vec![7; 1024]).await.expect("writes") }
        });
    });
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("batches_of_1000", |b| {
        b.to_async(&runtime).iter(|| {
            counter += 1;
            let batch = (0..BATCH)
                .map(|i| {
                    (
                        format!("batch/{counter}/{i}").into_bytes(),
                        Some(vec![7; 1024]),
                    )
                })
                .collect();
            let replica = replica.clone();
            async move { replica.write_batch(batch).await.expect("writes") }
        });
    });
    group.finish();
}

criterion_group!(benches, writes);
criterion_main!(benches);
