//! Pieces the benchmark binaries share: a worker that costs nothing but its
//! stop token, and a seeded random DAG.

use flotilla_core_types::{WaitFuture, Worker};
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
