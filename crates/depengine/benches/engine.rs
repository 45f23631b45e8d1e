//! Speed of the dependency engine, each figure beside a floor measured in the
//! same run: the same work hand-wired with bare tokio tasks and channels.
//!
//! Run with `cargo bench -p flotilla-depengine --bench engine`; the results
//! and their goals are in docs/benchmarks.md. Extra restarts are counted and
//! printed to stderr, since criterion only measures time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_core_types::{TaskWorker, Worker};
use flotilla_depengine::{Engine, EngineConfig, Manifold, Signal, Started};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, mpsc, oneshot};

mod common;
use common::{NullWorker, all_started, dag_manifolds, name, random_dag};

const DAG_NODES: usize = 10_000;
const DAG_INPUTS: usize = 3;
const CHAIN_DEPTH: usize = 1_000;

/// Two worker threads, as on the 2-core machines these figures come from:
/// for the benchmarks that fan work out.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

/// One thread: for the benchmarks of one operation at a time, where a
/// multi-threaded runtime mostly measures threads waking each other up.
fn single_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

fn engine_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.bounce_delay = Duration::ZERO;
    // The chain benchmark bounces its head thousands of times a second; a
    // worker's bounce requests count against the restart limit.
    config.restart_limit.max_restarts = u32::MAX;
    config
}

/// Counts starts and wakes a waiter when a target count is reached.
#[derive(Clone, Default)]
struct StartCounter {
    starts: Arc<AtomicUsize>,
    reached: Arc<Notify>,
    target: Arc<AtomicUsize>,
}

impl StartCounter {
    fn record(&self) {
        let starts = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        if starts == self.target.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }

    /// A closure that records a start, for [`dag_manifolds`].
    fn record_fn(&self) -> impl Fn() + Clone + Send + Sync + 'static {
        let counter = self.clone();
        move || counter.record()
    }

    /// Waits until `target` starts in total have been recorded.
    async fn until(&self, target: usize) {
        let reached = self.reached.notified();
        self.target.store(target, Ordering::SeqCst);
        if self.starts.load(Ordering::SeqCst) >= target {
            return;
        }
        reached.await;
    }
}

fn cold_start(c: &mut Criterion) {
    let runtime = runtime();
    let dag = random_dag(DAG_NODES, DAG_INPUTS, 42);
    let edges: usize = dag.iter().map(Vec::len).sum();
    eprintln!("cold start: {DAG_NODES} manifolds, {edges} input edges");
    let extra_restarts = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("cold_start_10k_dag");
    group.sample_size(20);

    let extra = extra_restarts.clone();
    group.bench_function("engine", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let dag = dag.clone();
            let extra = extra.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let engine = Engine::start(engine_config()).expect("valid config");
                    let counter = StartCounter::default();
                    let manifolds = dag_manifolds(&dag, counter.record_fn());
                    let started = Instant::now();
                    engine.install_group(manifolds).await.expect("installs");
                    counter.until(DAG_NODES).await;
                    total += started.elapsed();
                    let report = all_started(&engine).await;
                    let starts: u64 = report.manifolds.iter().map(|m| m.start_count).sum();
                    extra.fetch_add(starts - DAG_NODES as u64, Ordering::SeqCst);
                    engine.kill();
                    engine.wait().await.expect("clean stop");
                }
                total
            }
        });
    });

    group.bench_function("floor_bare_tasks", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let dag = dag.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    total += hand_wired_dag(&dag).await;
                }
                total
            }
        });
    });
    group.finish();
    eprintln!(
        "cold start: extra restarts over all engine iterations: {}",
        extra_restarts.load(Ordering::SeqCst)
    );
}

/// The floor: one task per node that waits for a signal from each input,
/// then signals each dependent. Returns the time until every task ran.
async fn hand_wired_dag(dag: &[Vec<usize>]) -> Duration {
    let mut senders: Vec<Vec<oneshot::Sender<()>>> = (0..dag.len()).map(|_| Vec::new()).collect();
    let mut receivers: Vec<Vec<oneshot::Receiver<()>>> =
        (0..dag.len()).map(|_| Vec::new()).collect();
    for (node, inputs) in dag.iter().enumerate() {
        for &input in inputs {
            let (sender, receiver) = oneshot::channel();
            senders[input].push(sender);
            receivers[node].push(receiver);
        }
    }
    let (done, mut finished) = mpsc::unbounded_channel();
    let started = Instant::now();
    for (inputs, outputs) in receivers.into_iter().zip(senders) {
        let done = done.clone();
        tokio::spawn(async move {
            for input in inputs {
                let _ = input.await;
            }
            for output in outputs {
                let _ = output.send(());
            }
            let _ = done.send(());
        });
    }
    for _ in 0..dag.len() {
        finished.recv().await;
    }
    started.elapsed()
}

fn chain_bounce(c: &mut Criterion) {
    let runtime = single_thread_runtime();
    let mut group = c.benchmark_group("bounce_1k_chain");
    group.sample_size(30);

    group.bench_function("engine", |b| {
        // One engine for all iterations: each iteration bounces the head and
        // waits for the tail to restart.
        let (engine, trigger, tail) = runtime.block_on(async {
            let engine = Engine::start(engine_config()).expect("valid config");
            let trigger = Arc::new(Notify::new());
            let tail = StartCounter::default();
            let head_trigger = trigger.clone();
            let mut manifolds = vec![Manifold::new(name(0), move |_ctx| {
                let trigger = head_trigger.clone();
                async move {
                    Ok(Started::new(TaskWorker::spawn(move |stop| async move {
                        tokio::select! {
                            () = stop.cancelled() => Ok(()),
                            () = trigger.notified() => Err(Signal::Bounce.into()),
                        }
                    })))
                }
            })];
            for node in 1..CHAIN_DEPTH {
                let tail = tail.clone();
                let is_tail = node == CHAIN_DEPTH - 1;
                manifolds.push(
                    Manifold::new(name(node), move |_ctx| {
                        if is_tail {
                            tail.record();
                        }
                        async { Ok(Started::new(NullWorker::default())) }
                    })
                    .input(name(node - 1)),
                );
            }
            engine.install_group(manifolds).await.expect("installs");
            tail.until(1).await;
            (engine, trigger, tail)
        });
        let restarts = Arc::new(AtomicUsize::new(1));
        b.to_async(&runtime).iter_custom(|iterations| {
            let (trigger, tail, restarts) = (trigger.clone(), tail.clone(), restarts.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let target = restarts.fetch_add(1, Ordering::SeqCst) + 1;
                    let started = Instant::now();
                    trigger.notify_one();
                    tail.until(target).await;
                    total += started.elapsed();
                }
                total
            }
        });
        runtime.block_on(async {
            let report = engine.report().await.expect("reports");
            let tail_starts = report
                .manifold(&name(CHAIN_DEPTH - 1))
                .map_or(0, |m| m.start_count);
            let head_starts = report.manifold(&name(0)).map_or(0, |m| m.start_count);
            eprintln!("bounce chain: head started {head_starts} times, tail {tail_starts} times");
            engine.kill();
            engine.wait().await.expect("clean stop");
        });
    });

    group.bench_function("floor_token_passing", |b| {
        b.to_async(&runtime).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += hand_wired_chain(CHAIN_DEPTH).await;
            }
            total
        });
    });
    group.finish();
}

/// The floor: a chain of tasks, each waiting for the token from the one
/// before it and passing it on. Times the token's trip, not the spawning.
async fn hand_wired_chain(depth: usize) -> Duration {
    let (first, mut previous) = oneshot::channel::<()>();
    for _ in 1..depth {
        let (next, receiver) = oneshot::channel();
        let input = std::mem::replace(&mut previous, receiver);
        tokio::spawn(async move {
            if input.await.is_ok() {
                let _ = next.send(());
            }
        });
    }
    let started = Instant::now();
    let _ = first.send(());
    let _ = previous.await;
    started.elapsed()
}

fn shutdown(c: &mut Criterion) {
    let runtime = runtime();
    let dag = random_dag(DAG_NODES, DAG_INPUTS, 42);
    let mut group = c.benchmark_group("shutdown_10k");
    group.sample_size(20);
    group.bench_function("engine", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let dag = dag.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let engine = Engine::start(engine_config()).expect("valid config");
                    let counter = StartCounter::default();
                    engine
                        .install_group(dag_manifolds(&dag, counter.record_fn()))
                        .await
                        .expect("installs");
                    counter.until(DAG_NODES).await;
                    let started = Instant::now();
                    engine.kill();
                    engine.wait().await.expect("clean stop");
                    total += started.elapsed();
                }
                total
            }
        });
    });
    group.finish();
}

fn start_stop_one(c: &mut Criterion) {
    let runtime = single_thread_runtime();
    let mut group = c.benchmark_group("start_stop_one_worker");
    group.bench_function("engine", |b| {
        let engine =
            runtime.block_on(async { Engine::start(engine_config()).expect("valid config") });
        b.to_async(&runtime).iter(|| {
            let engine = engine.clone();
            async move {
                let (started, is_started) = oneshot::channel();
                let started = std::sync::Mutex::new(Some(started));
                engine
                    .install(Manifold::new("w", move |_ctx| {
                        if let Some(started) = started.lock().ok().and_then(|mut slot| slot.take())
                        {
                            let _ = started.send(());
                        }
                        async { Ok(Started::new(NullWorker::default())) }
                    }))
                    .await
                    .expect("installs");
                is_started.await.expect("starts");
                engine.uninstall("w").await.expect("uninstalls");
            }
        });
        runtime.block_on(async {
            engine.kill();
            engine.wait().await.expect("clean stop");
        });
    });
    group.bench_function("floor_spawn_and_channel", |b| {
        b.to_async(&runtime).iter(|| async {
            let (stop, stopped) = oneshot::channel::<()>();
            let (ready, is_ready) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let _ = ready.send(());
                let _ = stopped.await;
            });
            let _ = is_ready.await;
            let _ = stop.send(());
            let _ = task.await;
        });
    });
    group.finish();
}

criterion_group!(benches, cold_start, chain_bounce, shutdown, start_stop_one);
criterion_main!(benches);
