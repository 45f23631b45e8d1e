//! Speed of the publisher, each figure beside a baseline measured in the
//! same run:
//!
//! - `refresh_period_10k`: the CPU time one refresh period of 10,000 mounts
//!   costs. On the embedded table the publisher refreshes each mount on its
//!   own deadline, beside the seed's strategy (one sequential write per
//!   mount). On etcd the publisher's period is one lease keep-alive, beside
//!   the seed's strategy there (10,000 sequential writes).
//! - `add_to_resolve`: from `add_server` until another client resolves the
//!   new server, on the embedded table and on etcd.
//!
//! The etcd figures run against a real etcd started by flotilla-testkit, on
//! a data directory in memory. Operation counts per period and the time
//! from abort to disappearance are in the `scenario` bench.
//!
//! Run with `cargo bench -p flotilla-publisher --bench refresh`; the results
//! and their goals are in docs/benchmarks.md.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_core_types::Worker;
use flotilla_publisher::{
    EtcdNamespace, MountFlags, MountTable, Namespace, Publisher, PublisherConfig,
};
use flotilla_testkit::EtcdCluster;
use tokio::runtime::Runtime;

mod common;
use common::{Counting, SIDE, name, publish_10k, server};

const PERIOD: Duration = Duration::from_secs(60);

fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime builds")
}

/// Two worker threads, as on the 2-core machines these figures come from.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

fn embedded_refresh(c: &mut Criterion) {
    let mut group = c.benchmark_group("refresh_period_10k");
    group.sample_size(10);

    // The publisher on the paused clock: each iteration lets one period of
    // virtual time pass, so what is measured is the CPU time of refreshing
    // 10,000 mounts on their jittered deadlines.
    let paused = paused_runtime();
    let table = Counting::new(paused.block_on(async { MountTable::start() }));
    let publisher = paused.block_on(async {
        let publisher =
            Publisher::start(table.clone(), PublisherConfig::default()).expect("valid config");
        publish_10k(&publisher).await;
        publisher
    });
    let operations_before = table.operations();
    let mut periods = 0u64;
    group.bench_function("embedded_publisher", |b| {
        b.iter_custom(|iterations| {
            paused.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    tokio::time::sleep(PERIOD).await;
                }
                periods += iterations;
                started.elapsed()
            })
        });
    });
    eprintln!(
        "refresh_period_10k/embedded_publisher: {:.0} backend operations per period",
        (table.operations() - operations_before) as f64 / periods.max(1) as f64
    );
    paused.block_on(async {
        publisher.stop().await;
        publisher.wait().await.expect("clean stop");
    });

    // The seed's strategy on the same table: every mount written again,
    // one after another.
    let real = runtime();
    let table = real.block_on(async { MountTable::start() });
    let ttl = PublisherConfig::default().ttl();
    group.bench_function("embedded_seed_sweep", |b| {
        b.to_async(&real).iter(|| async {
            for n in 0..SIDE {
                let name = name(n);
                for s in 1..=SIDE {
                    table
                        .mount(&name, &server(s), ttl, MountFlags::NONE)
                        .await
                        .expect("mounts");
                }
            }
        });
    });
    group.finish();
}

fn etcd_refresh_and_resolve(c: &mut Criterion) {
    let real = runtime();
    let cluster = real
        .block_on(EtcdCluster::single())
        .expect("etcd starts (install etcd-server, or set ETCD_BIN)");
    let endpoint = cluster.endpoint(0);
    let connect = |prefix: &'static str| {
        let endpoint = endpoint.clone();
        real.block_on(async move {
            EtcdNamespace::connect(&[endpoint.as_str()], prefix)
                .await
                .expect("connects")
        })
    };

    let mut group = c.benchmark_group("refresh_period_10k");
    group.sample_size(10);
    // The publisher's period on etcd: one keep-alive of the lease its
    // 10,000 mounts hang on.
    let etcd = connect("bench/lease");
    let config = PublisherConfig::default();
    let publisher = real.block_on(async {
        let publisher = Publisher::start(etcd.fresh_session(), config).expect("valid config");
        publish_10k(&publisher).await;
        publisher
    });
    // A session of the same shape whose keep-alive is timed directly.
    let session = etcd.fresh_session();
    real.block_on(async {
        session
            .mount(
                &name(0),
                &server(1),
                Duration::from_secs(80),
                MountFlags::NONE,
            )
            .await
            .expect("mounts");
    });
    group.bench_function("etcd_publisher_keep_alive", |b| {
        b.to_async(&real)
            .iter(|| async { session.keep_alive().await.expect("lease alive") });
    });
    // The seed's strategy on etcd: every mount written again.
    let sweep = connect("bench/sweep");
    group.bench_function("etcd_seed_sweep", |b| {
        b.to_async(&real).iter(|| async {
            let mut client = sweep.client().clone();
            for n in 0..SIDE {
                let name = name(n);
                for s in 1..=SIDE {
                    client
                        .put(sweep.key(&name, &server(s)), "{}", None)
                        .await
                        .expect("writes");
                }
            }
        });
    });
    group.finish();
    real.block_on(async {
        publisher.stop().await;
        publisher.wait().await.expect("clean stop");
        session.release().await.expect("released");
    });

    // From add_server until a separate client resolves the new server.
    let mut group = c.benchmark_group("add_to_resolve");
    let table = real.block_on(async { MountTable::start() });
    let on_table = real.block_on(async {
        let publisher =
            Publisher::start(table.clone(), PublisherConfig::default()).expect("valid config");
        publisher.add_name(name(0)).await.expect("running");
        publisher
    });
    group.bench_function("embedded", |b| {
        b.to_async(&real)
            .iter_custom(|iterations| add_then_resolve(&on_table, &table, iterations));
    });
    let reader = connect("bench/resolve");
    let on_etcd = real.block_on(async {
        let publisher =
            Publisher::start(reader.fresh_session(), PublisherConfig::default()).expect("valid");
        publisher.add_name(name(0)).await.expect("running");
        publisher
    });
    group.bench_function("etcd", |b| {
        b.to_async(&real)
            .iter_custom(|iterations| add_then_resolve(&on_etcd, &reader, iterations));
    });
    group.finish();
    real.block_on(async {
        for publisher in [on_table, on_etcd] {
            publisher.stop().await;
            publisher.wait().await.expect("clean stop");
        }
    });
}

/// Adds a server, polls `reader` until it resolves it, and removes it again
/// (untimed), `iterations` times.
async fn add_then_resolve<N: Namespace>(
    publisher: &Publisher,
    reader: &N,
    iterations: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for iteration in 0..iterations {
        let server = server(u16::try_from(iteration % 60_000).expect("fits") + 1);
        let started = Instant::now();
        publisher.add_server(server.clone()).await.expect("running");
        loop {
            let found = reader
                .resolve(&name(0))
                .await
                .is_ok_and(|resolution| resolution.servers.iter().any(|m| m.server == server));
            if found {
                break;
            }
            tokio::task::yield_now().await;
        }
        total += started.elapsed();
        publisher.remove_server(server).await.expect("running");
    }
    total
}

criterion_group!(benches, embedded_refresh, etcd_refresh_and_resolve);
criterion_main!(benches);
