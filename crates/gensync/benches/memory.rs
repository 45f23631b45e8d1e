//! Peak memory growth while a replica catches up 100,000 records of 1 KiB
//! (100 MiB) in one round, measured with dhat's heap statistics. Both ends
//! run in this process, over TLS on an in-memory pipe, so the figure covers
//! the responder streaming too: an upper bound for the catching-up side.
//!
//! Run with `cargo bench -p flotilla-gensync --bench memory`; the result and
//! its goal (under 64 MiB) are in docs/benchmarks.md.

use flotilla_gensync::{SyncConfig, initiate_over, respond_over};

mod support;

use support::{fill_kib, replica, runtime, secure, tls_transports};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const RECORDS: usize = 100_000;
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    runtime().block_on(measure());
}

async fn measure() {
    let dir = tempfile::tempdir().expect("a directory");
    let (source, sink) = (replica(dir.path(), "source"), replica(dir.path(), "sink"));
    fill_kib(&source, RECORDS).await;
    let stats = dhat::HeapStats::get();
    let (before, peak_before) = (stats.curr_bytes, stats.max_bytes);

    let [at_sink, at_source] = tls_transports(["sink", "source"]);
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (near, far) = secure(&at_sink, near, &at_source, far).await;
    let config = SyncConfig::default();
    let (pulled, served) = tokio::join!(
        initiate_over(&sink, near),
        respond_over(&source, far, &config)
    );
    assert_eq!(pulled.expect("the round completes").applied, RECORDS as u64);
    served.expect("served");

    let peak = dhat::HeapStats::get().max_bytes;
    println!(
        "memory: heap before the round {:.1} MiB; peak so far before it {:.1} MiB; peak after it {:.1} MiB",
        before as f64 / MIB,
        peak_before as f64 / MIB,
        peak as f64 / MIB
    );
    if peak > peak_before {
        println!(
            "memory: peak growth while catching up {RECORDS} records of 1 KiB: {:.1} MiB (goal: under 64 MiB)",
            (peak - before) as f64 / MIB
        );
    } else {
        println!(
            "memory: the round stayed under the filling's peak: growth at most {:.1} MiB (goal: under 64 MiB)",
            (peak_before - before) as f64 / MIB
        );
    }
}
