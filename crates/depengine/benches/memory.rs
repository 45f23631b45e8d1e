//! Memory per installed, running manifold: the engine's bookkeeping (the
//! manifold, its node, its attempt future and the worker's handle), excluding
//! the worker's own state, measured with dhat's heap statistics.
//!
//! Run with `cargo bench -p flotilla-depengine --bench memory`; the result and
//! its goal (at most 4 KiB) are in docs/benchmarks.md. Prints one line per
//! figure; takes no arguments (any given by cargo are ignored).

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_depengine::{Engine, EngineConfig};

mod common;
use common::{NullWorker, all_started, dag_manifolds, random_dag};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const MANIFOLDS: usize = 10_000;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    runtime.block_on(measure());
}

async fn measure() {
    // The workers' own state, to subtract.
    let before = heap_bytes();
    let workers: Vec<NullWorker> = (0..MANIFOLDS).map(|_| NullWorker::default()).collect();
    let worker_bytes = heap_bytes().saturating_sub(before);
    drop(workers);

    let mut config = EngineConfig::default();
    config.bounce_delay = Duration::ZERO;
    let engine = Engine::start(config).expect("valid config");
    let dag = random_dag(MANIFOLDS, 3, 42);
    let before = heap_bytes();
    let manifolds = dag_manifolds(&dag, || {});
    engine.install_group(manifolds).await.expect("installs");
    let report = all_started(&engine).await;
    drop(report);
    let engine_bytes = heap_bytes().saturating_sub(before);
    let per_manifold = engine_bytes.saturating_sub(worker_bytes) / MANIFOLDS;
    println!(
        "memory: {MANIFOLDS} running manifolds (about 3 inputs each): {engine_bytes} bytes in all, \
         {worker_bytes} of them the workers' own"
    );
    println!(
        "memory: engine bookkeeping per running manifold: {per_manifold} bytes (goal: at most 4096)"
    );
    engine.kill();
    engine.wait().await.expect("clean stop");
}

fn heap_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}
