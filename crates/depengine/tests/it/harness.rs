//! A lab of controllable test workers, and helpers to drive an engine.
//!
//! Each test worker offers a [`Token`] naming it; a worker that starts checks
//! that every input token it was handed belongs to a worker that is still
//! alive, and that no other worker of its manifold is alive. Breaches are
//! recorded as violations, which tests assert are empty.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_core_types::{TaskWorker, Worker, WorkerError};
use flotilla_depengine::{
    Engine, EngineConfig, EngineReport, Manifold, ManifoldState, Signal, Started, StoppedReason,
};
use tokio::sync::mpsc;

/// The resource every lab worker offers: which worker it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Token(pub(crate) u64);

/// How a lab worker is told to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    Clean,
    Fail(String),
    Bounce,
    Missing,
    Uninstall,
    Panic,
}

/// Shared between a test and the workers it starts. Lives only in tests, so
/// a plain mutex over the bookkeeping is simplest.
#[derive(Clone, Default)]
pub(crate) struct Lab {
    state: Arc<Mutex<LabState>>,
}

#[derive(Default)]
struct LabState {
    next_token: u64,
    /// Alive lab workers: token -> manifold name.
    alive: HashMap<u64, String>,
    /// Per manifold: the channel to its newest worker.
    controls: HashMap<String, mpsc::UnboundedSender<Ending>>,
    /// Per manifold: how many times its start function was called.
    start_calls: HashMap<String, u32>,
    /// Per manifold: how long its workers take to stop once killed.
    stop_delay: HashMap<String, Duration>,
    /// Manifolds whose workers fail when killed.
    fail_on_stop: HashSet<String>,
    /// A counter that orders kills and ends.
    sequence: u64,
    /// Per worker token: its manifold, when it was killed and when it ended.
    history: HashMap<u64, WorkerHistory>,
    violations: Vec<String>,
}

impl Lab {
    /// A manifold whose workers are lab workers, with the given required inputs.
    pub(crate) fn manifold(&self, name: &str, inputs: &[&str]) -> Manifold {
        inputs
            .iter()
            .fold(self.reading(name, inputs), |manifold, input| {
                manifold.input(*input)
            })
    }

    /// A manifold whose inputs are all optional, but whose start returns
    /// `Missing` unless every one of them runs (as juju's manifolds do).
    pub(crate) fn manifold_needing_optional(&self, name: &str, optional: &[&str]) -> Manifold {
        optional
            .iter()
            .fold(self.reading(name, optional), |manifold, input| {
                manifold.optional_input(*input)
            })
    }

    /// A manifold (inputs not yet declared) whose start reads a token from
    /// each of `inputs` and starts a lab worker with them.
    fn reading(&self, name: &str, inputs: &[&str]) -> Manifold {
        let lab = self.clone();
        let owned = name.to_owned();
        let inputs: Vec<String> = inputs.iter().map(|input| (*input).to_owned()).collect();
        Manifold::new(name, move |ctx| {
            let lab = lab.clone();
            let name = owned.clone();
            let inputs = inputs.clone();
            async move {
                lab.count_start_call(&name);
                let mut tokens = Vec::new();
                for input in &inputs {
                    tokens.push(ctx.get::<Token>(input)?);
                }
                Ok(lab.spawn_worker(&name, &tokens))
            }
        })
    }

    /// Installs lab manifolds, given as (name, required inputs), all at once,
    /// and lets the engine settle.
    pub(crate) async fn install(&self, engine: &Engine, manifolds: &[(&str, &[&str])]) {
        let manifolds = manifolds
            .iter()
            .map(|(name, inputs)| self.manifold(name, inputs));
        engine.install_group(manifolds).await.expect("installs");
        settle().await;
    }

    /// Starts a lab worker for manifold `name`, checking the tokens it was given.
    pub(crate) fn spawn_worker(&self, name: &str, inputs: &[Token]) -> Started {
        let (control, mut endings) = mpsc::unbounded_channel();
        let token = {
            let mut state = self.lock();
            for input in inputs {
                if !state.alive.contains_key(&input.0) {
                    state.violations.push(format!(
                        "{name} was handed input token {} of a stopped worker",
                        input.0
                    ));
                }
            }
            if state.alive.values().any(|alive| alive == name) {
                state.violations.push(format!(
                    "{name} started while another of its workers was alive"
                ));
            }
            state.next_token += 1;
            let token = state.next_token;
            state.alive.insert(token, name.to_owned());
            state.controls.insert(name.to_owned(), control);
            token
        };
        self.lock().history.insert(
            token,
            WorkerHistory {
                manifold: name.to_owned(),
                killed: None,
                ended: None,
            },
        );
        let stop_delay = self.lock().stop_delay.get(name).copied();
        let fail_on_stop = self.lock().fail_on_stop.contains(name);
        let manifold = name.to_owned();
        let guard = AliveGuard {
            lab: self.clone(),
            token,
        };
        let worker = TaskWorker::spawn(move |stop| async move {
            let guard = guard;
            let ending = tokio::select! {
                () = stop.cancelled() => {
                    guard.lab.record(guard.token, |history, at| history.killed = Some(at));
                    if let Some(delay) = stop_delay {
                        tokio::time::sleep(delay).await;
                    }
                    if fail_on_stop {
                        return Err(WorkerError::msg(format!("{manifold} failed while stopping")));
                    }
                    return Ok(());
                }
                ending = endings.recv() => ending.unwrap_or(Ending::Clean),
            };
            match ending {
                Ending::Clean => Ok(()),
                Ending::Fail(message) => Err(WorkerError::msg(message)),
                Ending::Bounce => Err(Signal::Bounce.into()),
                Ending::Missing => Err(Signal::Missing.into()),
                Ending::Uninstall => Err(Signal::Uninstall.into()),
                Ending::Panic => panic!("lab worker told to panic"),
            }
        });
        Started::new(worker).with_resource(Token(token))
    }

    /// Tells the newest worker of `name` to end; false if none is alive.
    pub(crate) fn end(&self, name: &str, ending: Ending) -> bool {
        let state = self.lock();
        let alive = state.alive.values().any(|alive| alive == name);
        alive
            && state
                .controls
                .get(name)
                .is_some_and(|control| control.send(ending).is_ok())
    }

    /// Makes workers of `name` take `delay` to stop once killed.
    pub(crate) fn set_stop_delay(&self, name: &str, delay: Duration) {
        self.lock().stop_delay.insert(name.to_owned(), delay);
    }

    /// Records an event in worker `token`'s history, stamped with the next
    /// number in sequence.
    fn record(&self, token: u64, event: impl FnOnce(&mut WorkerHistory, u64)) {
        let mut state = self.lock();
        state.sequence += 1;
        let at = state.sequence;
        if let Some(history) = state.history.get_mut(&token) {
            event(history, at);
        }
    }

    /// Among the workers `tokens`, the pairs where an input was killed before
    /// a dependent of it (per `inputs_of`: manifold -> its inputs) ended.
    pub(crate) fn stop_order_violations(
        &self,
        tokens: &HashSet<u64>,
        inputs_of: impl Fn(&str) -> Vec<String>,
    ) -> Vec<String> {
        let state = self.lock();
        let mut violations = Vec::new();
        for dependent in tokens.iter().filter_map(|token| state.history.get(token)) {
            for input_name in inputs_of(&dependent.manifold) {
                let inputs = tokens
                    .iter()
                    .filter_map(|token| state.history.get(token))
                    .filter(|history| history.manifold == input_name);
                for input in inputs {
                    let (Some(input_killed), Some(dependent_ended)) =
                        (input.killed, dependent.ended)
                    else {
                        continue;
                    };
                    if input_killed < dependent_ended {
                        violations.push(format!(
                            "{} was killed (at {input_killed}) before its dependent {} ended (at {dependent_ended})",
                            input.manifold, dependent.manifold
                        ));
                    }
                }
            }
        }
        violations
    }

    /// Whether a live worker of `name` has been killed (and not ended yet).
    pub(crate) fn is_killed(&self, name: &str) -> bool {
        let state = self.lock();
        state.alive.iter().any(|(token, alive)| {
            alive == name
                && state
                    .history
                    .get(token)
                    .is_some_and(|history| history.killed.is_some())
        })
    }

    /// Makes workers of `name` fail when killed.
    pub(crate) fn set_fail_on_stop(&self, name: &str) {
        self.lock().fail_on_stop.insert(name.to_owned());
    }

    pub(crate) fn is_alive(&self, name: &str) -> bool {
        self.lock().alive.values().any(|alive| alive == name)
    }

    pub(crate) fn alive_count(&self) -> usize {
        self.lock().alive.len()
    }

    pub(crate) fn start_calls(&self, name: &str) -> u32 {
        self.lock().start_calls.get(name).copied().unwrap_or(0)
    }

    pub(crate) fn alive_tokens(&self) -> HashSet<u64> {
        self.lock().alive.keys().copied().collect()
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    fn count_start_call(&self, name: &str) {
        *self.lock().start_calls.entry(name.to_owned()).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LabState> {
        // A test that panicked while holding the lock has failed already; the
        // data is still fine to read for the other assertions.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Marks a worker dead when its future is dropped, which happens before the
/// engine can learn that it ended.
struct AliveGuard {
    lab: Lab,
    token: u64,
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.lab
            .record(self.token, |history, at| history.ended = Some(at));
        self.lab.lock().alive.remove(&self.token);
    }
}

/// What happened to one lab worker, in the lab's sequence numbers.
#[derive(Debug, Clone)]
struct WorkerHistory {
    manifold: String,
    killed: Option<u64>,
    ended: Option<u64>,
}

/// A config for tests: no jitter, fixed seed, round delays.
pub(crate) fn test_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.error_delay = Duration::from_secs(1);
    config.max_delay = Duration::from_secs(60);
    config.bounce_delay = Duration::from_millis(10);
    config.backoff_jitter = 0.0;
    config.backoff_reset_after = Duration::from_secs(30);
    config.jitter_seed = Some(7);
    config
}

/// Lets every task run until all are idle, then moves the clock 1 ms.
///
/// On a paused clock the runtime advances time only when no task can run,
/// so this returns only after the engine has processed everything that was
/// ready: a deterministic "settle", not a sleep-and-hope.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Moves the paused clock forward by `duration`, letting everything due run.
pub(crate) async fn advance(duration: Duration) {
    tokio::time::sleep(duration).await;
}

pub(crate) async fn report(engine: &Engine) -> EngineReport {
    engine.report().await.expect("the engine is running")
}

/// The state of manifold `name`, which must be installed.
pub(crate) async fn state(engine: &Engine, name: &str) -> ManifoldState {
    report(engine)
        .await
        .manifold(name)
        .unwrap_or_else(|| panic!("{name} is installed"))
        .state
}

pub(crate) async fn start_count(engine: &Engine, name: &str) -> u64 {
    report(engine)
        .await
        .manifold(name)
        .unwrap_or_else(|| panic!("{name} is installed"))
        .start_count
}

pub(crate) fn stopped(reason: StoppedReason) -> ManifoldState {
    ManifoldState::Stopped { reason }
}

/// Kills the engine, waits for it, and checks that no task is left.
pub(crate) async fn shut_down(engine: Engine) -> Result<(), WorkerError> {
    engine.kill();
    let result = engine.wait().await;
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        0,
        "a task outlived the engine"
    );
    result
}
