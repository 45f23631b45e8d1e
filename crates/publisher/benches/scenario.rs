//! Scenario figures the criterion benchmarks cannot give, printed one per
//! line:
//!
//! - backend operations per refresh period for 10,000 mounts: the publisher
//!   on the embedded table (one refresh per mount), the publisher on etcd
//!   (one lease keep-alive), and the seed's strategy (one write per mount),
//!   counted in the same run;
//! - the time from aborting a publisher (its runtime torn down: no stop, no
//!   unmount) until a resolver no longer sees its server, on the embedded
//!   table and on etcd, five times each.
//!
//! Run with `cargo bench -p flotilla-publisher --all-features --bench
//! scenario`; the results are in docs/benchmarks.md.

use std::time::{Duration, Instant};

use flotilla_core_types::Worker;
use flotilla_publisher::{
    EtcdNamespace, MountFlags, MountTable, Namespace, Publisher, PublisherConfig,
};
use flotilla_testkit::EtcdCluster;
use tokio::runtime::Runtime;

mod common;
use common::{Counting, MOUNTS, SIDE, name, publish_10k, server};

/// The short period the real-clock scenarios use, with a TTL of two.
const SHORT_PERIOD: Duration = Duration::from_secs(1);
const ABORTS: usize = 5;

fn main() {
    let runtime = runtime();
    let cluster = runtime
        .block_on(EtcdCluster::single())
        .expect("etcd starts (install etcd-server, or set ETCD_BIN)");
    let endpoint = cluster.endpoint(0);

    let embedded = embedded_operations_per_period();
    let seed = seed_operations_per_period(&runtime);
    let etcd = runtime.block_on(etcd_operations_per_period(&endpoint));
    println!("operations per period, 10,000 mounts: embedded publisher {embedded:.1}");
    println!("operations per period, 10,000 mounts: seed strategy (one write per mount) {seed}");
    println!("operations per period, 10,000 mounts: etcd publisher {etcd:.2}");
    println!(
        "operations per period: the seed's strategy makes {:.0}x the etcd publisher's (goal: at least 1000x)",
        seed as f64 / etcd
    );

    for run in 1..=ABORTS {
        let table = runtime.block_on(async { MountTable::start() });
        let gone = abort_until_gone(&runtime, table.clone(), table);
        println!("abort until gone, embedded, run {run}: {gone:.2?} (TTL 2 s)");
    }
    for run in 1..=ABORTS {
        let connect = || async {
            EtcdNamespace::connect(&[endpoint.as_str()], "scenario/abort")
                .await
                .expect("connects")
        };
        let publisher_side = runtime.block_on(connect());
        let reader = runtime.block_on(connect());
        let gone = abort_until_gone(&runtime, publisher_side, reader);
        println!("abort until gone, etcd, run {run}: {gone:.2?} (TTL 2 s)");
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

fn short_config() -> PublisherConfig {
    PublisherConfig::default().with_period(SHORT_PERIOD, SHORT_PERIOD)
}

/// The publisher on the embedded table, over ten periods of paused time.
fn embedded_operations_per_period() -> f64 {
    const PERIODS: u32 = 10;
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime builds");
    paused.block_on(async {
        let table = Counting::new(MountTable::start());
        let config = PublisherConfig::default();
        let period = config.refresh_period;
        let publisher = Publisher::start(table.clone(), config).expect("valid config");
        publish_10k(&publisher).await;
        let before = table.operations();
        tokio::time::sleep(period * PERIODS).await;
        let per_period = (table.operations() - before) as f64 / f64::from(PERIODS);
        publisher.stop().await;
        publisher.wait().await.expect("clean stop");
        per_period
    })
}

/// The seed's strategy, counted the same way: one sweep is one period.
fn seed_operations_per_period(runtime: &Runtime) -> u64 {
    runtime.block_on(async {
        let table = Counting::new(MountTable::start());
        let ttl = PublisherConfig::default().ttl();
        for n in 0..SIDE {
            for s in 1..=SIDE {
                table
                    .mount(&name(n), &server(s), ttl, MountFlags::NONE)
                    .await
                    .expect("mounts");
            }
        }
        assert_eq!(table.operations(), MOUNTS);
        table.operations()
    })
}

/// The publisher on etcd, over five real periods of one second.
async fn etcd_operations_per_period(endpoint: &str) -> f64 {
    const PERIODS: u32 = 5;
    let etcd = EtcdNamespace::connect(&[endpoint], "scenario/count")
        .await
        .expect("connects");
    let counted = Counting::new(etcd);
    let publisher = Publisher::start(counted.clone(), short_config()).expect("valid config");
    publish_10k(&publisher).await;
    let before = counted.operations();
    tokio::time::sleep(SHORT_PERIOD * PERIODS).await;
    let per_period = (counted.operations() - before) as f64 / f64::from(PERIODS);
    let status = publisher.status().await.expect("running");
    assert!(status.all_mounted(), "every mount stayed up");
    publisher.stop().await;
    publisher.wait().await.expect("clean stop");
    per_period
}

/// Publishes one server from a runtime of its own, tears that runtime
/// down mid-period, and returns how long `reader` kept resolving it.
fn abort_until_gone<N: Namespace, R: Namespace>(
    runtime: &Runtime,
    backend: N,
    reader: R,
) -> Duration {
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    let publisher = doomed.block_on(async {
        let publisher = Publisher::start(backend, short_config()).expect("valid config");
        publisher.add_name(name(0)).await.expect("running");
        publisher.add_server(server(1)).await.expect("running");
        let mut watch = publisher.watch().await.expect("running");
        watch.wait_for(|s| s.all_mounted()).await.expect("running");
        // Abort somewhere in the middle of a period, not right after a
        // refresh.
        tokio::time::sleep(SHORT_PERIOD.mul_f64(1.5)).await;
        publisher
    });
    doomed.shutdown_background();
    let aborted_at = Instant::now();
    drop(publisher);
    runtime.block_on(async {
        while reader.resolve(&name(0)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    aborted_at.elapsed()
}
