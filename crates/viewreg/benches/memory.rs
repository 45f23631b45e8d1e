//! Heap memory per view: a registry of 100,000 views (an instant prober,
//! every view healthy, a unit client), measured with dhat's heap
//! statistics, beside the list of its endpoints alone from the same run.
//!
//! Run with `cargo bench -p flotilla-viewreg --bench memory`; the result is
//! in docs/benchmarks.md.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use flotilla_core_types::{Endpoint, Worker};
use flotilla_viewreg::{ProbeOutcome, Prober, Registry, RegistryConfig, StaticLocator, WaitLimit};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const VIEWS: usize = 100_000;

struct Instant;

impl Prober<BTreeSet<&'static str>> for Instant {
    async fn probe(&self, _: &Endpoint) -> ProbeOutcome<BTreeSet<&'static str>> {
        ProbeOutcome::serving(BTreeSet::from(["kv"]))
    }
}

fn endpoints() -> Vec<Endpoint> {
    (0..VIEWS)
        .map(|n| {
            let address = Ipv4Addr::from(0x0a00_0000 + u32::try_from(n).expect("few"));
            Endpoint::new(&address.to_string(), 80).expect("valid")
        })
        .collect()
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    runtime.block_on(measure());
}

async fn measure() {
    let empty = dhat::HeapStats::get().curr_bytes;
    let list = endpoints();
    let list_bytes = dhat::HeapStats::get().curr_bytes - empty;
    drop(list);

    let before = dhat::HeapStats::get().curr_bytes;
    let registry = Registry::start(
        StaticLocator::new(endpoints()),
        Instant,
        |_: &Endpoint| (),
        RegistryConfig::default(),
    )
    .expect("valid config");
    let limit = WaitLimit::timeout(Duration::from_secs(120));
    let mut snapshot = registry.snapshot();
    while snapshot.summary().healthy < VIEWS {
        snapshot = registry
            .wait_for_change(snapshot.stamp(), &limit)
            .await
            .expect("every view turns healthy");
    }
    drop(snapshot);
    // Let the registry settle: its first check of every view is done and
    // no snapshot but the current one is held.
    let settled = registry
        .wait_for_stable(Duration::from_millis(200), &limit)
        .await
        .expect("settles");
    drop(settled);
    let held = dhat::HeapStats::get().curr_bytes - before;
    println!(
        "memory: a registry of {VIEWS} healthy views holds {:.0} bytes per view; the endpoint list alone {:.0} bytes per endpoint",
        held as f64 / VIEWS as f64,
        list_bytes as f64 / VIEWS as f64
    );
    registry.kill();
    registry.wait().await.expect("stops");
}
