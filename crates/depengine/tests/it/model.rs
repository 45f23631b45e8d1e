//! A model test: random sequences of installs, uninstalls, worker endings of
//! every kind and clock steps, checked against a small reference model.
//!
//! After every step the engine's invariants must hold: at most one worker per
//! manifold, no worker handed a stopped input, every started worker's inputs
//! are the ones it was started with. At quiescence (every backoff elapsed),
//! every manifold whose inputs all run is running, unless the model says it
//! exited and none of its inputs changed since, or it is parked after a crash
//! loop. After `wait`, no task is left and no worker is alive.
//!
//! The engine's callbacks are booby-trapped: a manifold's filter panics on
//! one error message, `is_fatal` on another and on errors from workers that
//! fail while being stopped, and `worst_error` always panics. Each must read
//! as a failure of that manifold (or the documented fallback), never as a
//! dead engine with its workers left running.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_depengine::{
    CrashLoopPolicy, Engine, EngineReport, Error, ManifoldState, StoppedReason,
};
use proptest::prelude::*;

use crate::harness::*;

const NAMES: usize = 5;
const MAX_RESTARTS: u32 = 3;
/// A worker error that makes the manifold's filter panic.
const FILTER_BOMB: &str = "filter bomb";
/// A worker error that makes `is_fatal` panic.
const FATAL_BOMB: &str = "is_fatal bomb";

#[derive(Debug, Clone)]
enum Op {
    Install(usize),
    Uninstall(usize),
    End(usize, Ending),
    Advance(Duration),
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        Just(Ending::Clean),
        Just(Ending::Fail("failed".to_owned())),
        Just(Ending::Fail(FILTER_BOMB.to_owned())),
        Just(Ending::Fail(FATAL_BOMB.to_owned())),
        Just(Ending::Bounce),
        Just(Ending::Missing),
        Just(Ending::Uninstall),
        Just(Ending::Panic),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..NAMES).prop_map(Op::Install),
        1 => (0..NAMES).prop_map(Op::Uninstall),
        4 => (0..NAMES, ending()).prop_map(|(index, ending)| Op::End(index, ending)),
        2 => prop::sample::select(vec![1u64, 10, 150, 1_000, 5_000]).prop_map(|ms| Op::Advance(Duration::from_millis(ms))),
    ]
}

/// For each name, its inputs: a subset of the names before it, so the graph
/// is acyclic whatever order things are installed in.
fn graph() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (0..NAMES)
        .map(|index| prop::sample::subsequence((0..index).collect::<Vec<_>>(), 0..=index.min(2)))
        .collect::<Vec<_>>()
}

fn name(index: usize) -> String {
    format!("n{index}")
}

/// What the model knows: what is installed, and which manifolds exited and
/// must stay down until something upstream of them changes.
#[derive(Debug, Default)]
struct Model {
    installed: BTreeSet<usize>,
    exited: BTreeSet<usize>,
    /// Failures and bounce requests per manifold, to tell whether parking was possible.
    restarts_charged: BTreeMap<usize, u32>,
}

impl Model {
    /// Something changed at `index`: every manifold downstream may start again.
    fn changed(&mut self, graph: &[Vec<usize>], index: usize) {
        let mut frontier = vec![index];
        while let Some(changed) = frontier.pop() {
            for (dependent, inputs) in graph.iter().enumerate() {
                if inputs.contains(&changed) {
                    self.exited.remove(&dependent);
                    frontier.push(dependent);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_matches_the_model(
        graph in graph(),
        fail_on_stop in prop::collection::vec(any::<bool>(), NAMES),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(run(graph, fail_on_stop, ops));
    }
}

async fn run(graph: Vec<Vec<usize>>, fail_on_stop: Vec<bool>, ops: Vec<Op>) {
    let lab = Lab::default();
    for (index, fails) in fail_on_stop.into_iter().enumerate() {
        if fails {
            lab.set_fail_on_stop(&name(index));
        }
    }
    let mut config = test_config();
    config.error_delay = Duration::from_millis(100);
    config.max_delay = Duration::from_secs(1);
    config.backoff_jitter = 0.2;
    config.restart_limit.max_restarts = MAX_RESTARTS;
    config.restart_limit.window = Duration::from_secs(10);
    config.restart_limit.on_exceeded = CrashLoopPolicy::Park;
    let config = config
        .with_is_fatal(|error| {
            let message = error.to_string();
            assert!(
                !message.contains(FATAL_BOMB) && !message.contains("while stopping"),
                "is_fatal exploded"
            );
            false
        })
        .with_worst_error(|_, _| panic!("worst_error exploded"));
    let engine = Engine::start(config).expect("valid config");
    let mut model = Model::default();
    let manifold = |index: usize| {
        let inputs: Vec<String> = graph[index].iter().map(|&input| name(input)).collect();
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        // An optional input that is never installed, as real graphs have.
        lab.manifold(&name(index), &inputs)
            .optional_input("ghost")
            .filter(|error| {
                assert!(!error.to_string().contains(FILTER_BOMB), "filter exploded");
                error
            })
    };

    for op in ops {
        match op {
            Op::Install(index) => {
                let result = engine.install(manifold(index)).await;
                if model.installed.insert(index) {
                    result.expect("installing a new name succeeds");
                    model.exited.remove(&index);
                    model.changed(&graph, index);
                } else {
                    assert!(
                        matches!(result, Err(Error::AlreadyInstalled { .. })),
                        "{result:?}"
                    );
                }
            }
            Op::Uninstall(index) => {
                let result = engine.uninstall(&name(index)).await;
                if model.installed.remove(&index) {
                    result.expect("uninstalling an installed name succeeds");
                    model.changed(&graph, index);
                } else {
                    assert!(
                        matches!(result, Err(Error::NotInstalled { .. })),
                        "{result:?}"
                    );
                }
            }
            Op::End(index, ending) => {
                if lab.end(&name(index), ending.clone()) {
                    match ending {
                        Ending::Clean | Ending::Missing => {
                            model.exited.insert(index);
                        }
                        Ending::Uninstall => {
                            model.installed.remove(&index);
                        }
                        Ending::Fail(_) | Ending::Panic | Ending::Bounce => {
                            *model.restarts_charged.entry(index).or_default() += 1;
                        }
                    }
                    model.changed(&graph, index);
                }
            }
            Op::Advance(duration) => advance(duration).await,
        }
        settle().await;
        let report = report(&engine).await;
        check_every_step(&lab, &model, &report);
    }

    // Quiescence: let every backoff and bounce run out.
    advance(Duration::from_secs(5)).await;
    settle().await;
    let report = report(&engine).await;
    check_every_step(&lab, &model, &report);
    check_quiescent(&graph, &model, &report);

    // Workers that fail while stopping make `wait` return an error; either
    // way, it returns only once every worker has ended, and dependents end
    // before their inputs are killed.
    let running = lab.alive_tokens();
    if let Err(error) = shut_down(engine).await {
        assert!(
            error.to_string().ends_with("failed while stopping"),
            "the engine stopped with {error}"
        );
    }
    assert_eq!(lab.alive_count(), 0, "a worker outlived the engine");
    let violations = lab.stop_order_violations(&running, |manifold| {
        let index: usize = manifold
            .trim_start_matches('n')
            .parse()
            .expect("model names are n<index>");
        graph[index].iter().map(|&input| name(input)).collect()
    });
    assert!(violations.is_empty(), "{violations:?}");
}

fn check_every_step(lab: &Lab, model: &Model, report: &EngineReport) {
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    let installed: BTreeSet<String> = report.manifolds.iter().map(|m| m.name.clone()).collect();
    let expected: BTreeSet<String> = model.installed.iter().map(|&index| name(index)).collect();
    assert_eq!(installed, expected, "installed manifolds");
    let alive = lab.alive_tokens().len();
    let started = report
        .manifolds
        .iter()
        .filter(|m| m.state.is_started())
        .count();
    assert!(
        alive >= started,
        "{started} started but only {alive} lab workers alive"
    );
    for manifold in &report.manifolds {
        if !manifold.state.is_started() {
            continue;
        }
        for input in &manifold.inputs {
            assert!(
                input.generation.is_some() || !input.required,
                "{} runs without input {}",
                manifold.name,
                input.name
            );
            assert_eq!(
                input.generation, input.snapshot_generation,
                "{} runs with a stale snapshot of {}",
                manifold.name, input.name
            );
        }
    }
}

fn check_quiescent(graph: &[Vec<usize>], model: &Model, report: &EngineReport) {
    let started = |index: usize| {
        report
            .manifold(&name(index))
            .is_some_and(|m| m.state.is_started())
    };
    for &index in &model.installed {
        let manifold = report.manifold(&name(index)).expect("installed");
        let inputs_started = graph[index].iter().all(|&input| started(input));
        if !inputs_started {
            assert!(
                !manifold.state.is_started(),
                "{} runs without its inputs",
                manifold.name
            );
            continue;
        }
        let parked_allowed =
            model.restarts_charged.get(&index).copied().unwrap_or(0) > MAX_RESTARTS;
        match manifold.state {
            ManifoldState::Started => {
                assert!(
                    !model.exited.contains(&index),
                    "{} restarted without an input change",
                    manifold.name
                );
            }
            ManifoldState::Stopped {
                reason: StoppedReason::Exited,
            } => assert!(
                model.exited.contains(&index),
                "{} is down though its inputs changed",
                manifold.name
            ),
            ManifoldState::Stopped {
                reason: StoppedReason::Parked,
            } => assert!(
                parked_allowed,
                "{} parked without a crash loop",
                manifold.name
            ),
            other => panic!("{} is {other:?} at quiescence", manifold.name),
        }
    }
}
