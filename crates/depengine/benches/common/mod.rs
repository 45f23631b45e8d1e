//! Pieces the benchmark binaries share: a worker that costs nothing but its
//! stop token, a seeded random DAG of manifolds, and a wait for all of them
//! to be recorded as started.

use flotilla_core_types::{WaitFuture, Worker};
use flotilla_depengine::{Engine, EngineReport, Manifold, Started};
use tokio_util::sync::CancellationToken;

/// A worker with no task: it runs until killed. Benchmarks use it so that
/// what they measure is the engine, not the workers.
#[derive(Debug, Clone, Default)]
pub(crate) struct NullWorker {
    stop: CancellationToken,
}

impl Worker for NullWorker {
    fn kill(&self) {
        self.stop.cancel();
    }

    fn wait(&self) -> WaitFuture<'_> {
        Box::pin(async move {
            self.stop.cancelled().await;
            Ok(())
        })
    }
}

/// `nodes` nodes, each with up to `max_inputs` distinct inputs drawn from the
/// nodes before it (so about `max_inputs` each, fewer for the first few).
pub(crate) fn random_dag(nodes: usize, max_inputs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..nodes)
        .map(|node| {
            let mut inputs = Vec::new();
            for _ in 0..max_inputs.min(node) {
                let input = rng.usize(0..node);
                if !inputs.contains(&input) {
                    inputs.push(input);
                }
            }
            inputs
        })
        .collect()
}

pub(crate) fn name(node: usize) -> String {
    format!("m{node}")
}

/// One manifold per node of `dag`, named by [`name`], whose start calls
/// `on_start` and runs a [`NullWorker`].
pub(crate) fn dag_manifolds<F>(dag: &[Vec<usize>], on_start: F) -> Vec<Manifold>
where
    F: Fn() + Clone + Send + Sync + 'static,
{
    dag.iter()
        .enumerate()
        .map(|(node, inputs)| {
            let on_start = on_start.clone();
            let manifold = Manifold::new(name(node), move |_ctx| {
                on_start();
                async { Ok(Started::new(NullWorker::default())) }
            });
            inputs
                .iter()
                .fold(manifold, |manifold, &input| manifold.input(name(input)))
        })
        .collect()
}

/// The engine's report once it has recorded every manifold as started.
pub(crate) async fn all_started(engine: &Engine) -> EngineReport {
    loop {
        let report = engine.report().await.expect("reports");
        if report.manifolds.iter().all(|m| m.state.is_started()) {
            return report;
        }
        tokio::task::yield_now().await;
    }
}
