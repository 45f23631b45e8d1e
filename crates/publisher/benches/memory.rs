//! Memory per mount in the publisher, beyond the name and server strings:
//! its record of the pair, its place in the schedule and its share of the
//! maps, measured with dhat's heap statistics on a backend that keeps
//! nothing.
//!
//! Run with `cargo bench -p flotilla-publisher --bench memory`; the result
//! and its goal (at most 512 bytes) are in docs/benchmarks.md. Prints one
//! line per figure; takes no arguments (any given by cargo are ignored).

use flotilla_core_types::Worker;
use flotilla_publisher::{Publisher, PublisherConfig};

mod common;
use common::{MOUNTS, NullNamespace, SIDE, name, publish_10k, server};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime builds");
    runtime.block_on(measure());
}

async fn measure() {
    // The strings, to subtract: the publisher holds each name and server
    // once, and each pair's key a copy of the server (an endpoint's host is
    // a boxed string; names are shared by reference count). Measured as
    // the heap those take, less the vectors that hold them here.
    let before = heap_bytes();
    let names: Vec<_> = (0..SIDE).map(name).collect();
    let servers: Vec<_> = (1..=SIDE).map(server).collect();
    let copies: Vec<_> = (0..MOUNTS as usize)
        .map(|i| servers[i % servers.len()].clone())
        .collect();
    let vectors = std::mem::size_of_val(names.as_slice())
        + std::mem::size_of_val(servers.as_slice())
        + std::mem::size_of_val(copies.as_slice());
    let string_bytes = heap_bytes().saturating_sub(before).saturating_sub(vectors);
    drop((names, servers, copies));

    let publisher =
        Publisher::start(NullNamespace, PublisherConfig::default()).expect("valid config");
    let before = heap_bytes();
    publish_10k(&publisher).await;
    // Let a period pass, so that refresh scheduling is in its steady state.
    tokio::time::sleep(PublisherConfig::default().refresh_period * 2).await;
    let total = heap_bytes().saturating_sub(before);
    let per_mount = total.saturating_sub(string_bytes) / MOUNTS as usize;
    println!(
        "memory: {MOUNTS} mounts: {total} bytes in all, {string_bytes} of them name and server strings"
    );
    println!("memory: publisher bookkeeping per mount: {per_mount} bytes (goal: at most 512)");
    publisher.stop().await;
    publisher.wait().await.expect("clean stop");
}

fn heap_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}
