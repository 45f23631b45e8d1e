//! The engine's actor: one task that owns every manifold's state.
//!
//! Commands (install, uninstall, report) arrive from [`Engine`] handles.
//! Every start of a worker is an *attempt*, driven by the actor itself in a
//! `FuturesUnordered`, in two phases: the start function (ending in a started
//! worker, or an error), then the worker (ending when it ends, after being
//! killed if the attempt is stopped). Driving them in the actor's own task
//! rather than spawning a task per attempt makes a restart cost a few
//! allocations instead of a spawn and two cross-task messages, and means no
//! task of the engine can outlive it; the price is that a start function or a
//! worker's `wait` that blocks the thread stalls the engine, as it would stall
//! any task of the runtime.
//!
//! Each outcome marks the manifolds it may affect as dirty, and after every
//! batch of outcomes [`Runner::reconcile`] brings each dirty manifold in line
//! with its inputs. Because a whole batch is applied before anything is
//! reconciled, several changes to one manifold's inputs cost it one restart,
//! not several.
//!
//! The rule that keeps dependents consistent: every running worker has a
//! generation, unique in the engine, and every start records the generations
//! of its inputs (`seen`). A worker whose inputs' generations differ from
//! what it saw is stopped; a stopped manifold whose inputs differ from what
//! it last saw may start. An input's generation is withdrawn (set to "not
//! running") as soon as the engine decides to stop it, before it has ended,
//! so no snapshot handed out afterwards can hold it.
//!
//! [`Engine`]: crate::Engine

use std::any::Any;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use flotilla_core_types::{Name, Worker, WorkerError, WorkerResult, catch_panic};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::config::CrashLoopPolicy;
use crate::graph::{NodeId, find_cycle};
use crate::input::TypeTag;
use crate::manifold::{
    ErrorClass, InputValue, Resource, RestartPolicy, StartContext, Started, classify,
};
use crate::report::{
    EngineReport, EngineState, InputReport, ManifoldReport, ManifoldState, StoppedReason,
};
use crate::{EngineConfig, Error, Manifold};

/// The most attempt outcomes applied before the actor reconciles and looks at its
/// commands again: large enough to coalesce a wave of restarts through
/// thousands of manifolds, small enough to keep commands answered promptly.
const MAX_OUTCOME_BATCH: usize = 4096;

/// A request from an [`Engine`](crate::Engine) handle.
pub(crate) enum Command {
    Install {
        manifolds: Vec<Manifold>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Uninstall {
        name: String,
        reply: oneshot::Sender<Result<Option<WorkerResult>, Error>>,
    },
    Report {
        reply: oneshot::Sender<ReportDraft>,
    },
    /// The resource of a manifold's running worker; with `wait`, answered
    /// when a worker of it starts if none runs now.
    Resource {
        name: String,
        wait: bool,
        reply: ResourceReply,
    },
}

/// The answer to [`Command::Resource`]: the resource (`None`: the worker
/// offers none), or why there is none.
pub(crate) type ResourceReply = oneshot::Sender<Result<Option<Resource>, Error>>;

/// The engine's part of a report, and the running workers whose own reports
/// the caller gathers (outside the actor, so a slow one cannot stall it).
pub(crate) struct ReportDraft {
    pub(crate) report: EngineReport,
    /// Index into `report.manifolds`, and that manifold's worker.
    pub(crate) workers: Vec<(usize, Arc<dyn Worker>)>,
}

/// One phase of an attempt, as the actor drives it.
type AttemptFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// How a phase of an attempt ended.
enum Outcome {
    /// The start function returned a worker; its second phase waits on it.
    Started {
        node: NodeId,
        attempt: u64,
        worker: Arc<dyn Worker>,
        resource: Option<Resource>,
        stop: CancellationToken,
    },
    /// The start function failed or was abandoned, or the worker ended.
    Ended {
        node: NodeId,
        attempt: u64,
        result: WorkerResult,
    },
}

/// A name in the graph: an installed manifold, or a name that installed
/// manifolds use as an input before it is installed.
struct Node {
    name: Name,
    span: Span,
    /// Nodes whose manifold declares this one as an input.
    dependents: Vec<NodeId>,
    /// The running worker dependents may see; `None` once it is stopping.
    published: Option<Published>,
    manifold: Option<Installed>,
    dirty: bool,
    /// While the engine stops: how many of this node's dependents still
    /// have a worker (or a start) that has not ended. Its own worker is
    /// stopped when this reaches zero.
    pending_dependents: usize,
}

struct Published {
    generation: u64,
    resource: Option<Resource>,
    worker: Arc<dyn Worker>,
    since: Instant,
}

struct Installed {
    manifold: Manifold,
    inputs: Vec<Input>,
    slot: Slot,
    start_count: u64,
    last_error: Option<String>,
    consecutive_failures: u32,
    /// When it restarted, within the restart-limit window.
    restarts: VecDeque<Instant>,
    uninstall_waiters: Vec<oneshot::Sender<Result<Option<WorkerResult>, Error>>>,
    /// Callers of `Engine::wait_for_resource`, answered when a worker starts.
    resource_waiters: Vec<ResourceReply>,
    /// While the engine stops: whether this manifold's worker still counts
    /// in its inputs' `pending_dependents`.
    holds_inputs: bool,
}

#[derive(Clone, Copy)]
struct Input {
    node: NodeId,
    required: bool,
    /// The resource type a typed key expects of it.
    expects: Option<TypeTag>,
}

/// Where a manifold's worker is in its life. `seen` holds, per input, the
/// generation its start was given (0: not running).
enum Slot {
    Idle(Idle),
    Starting {
        attempt: u64,
        stop: CancellationToken,
        seen: Vec<u64>,
    },
    Running {
        attempt: u64,
        stop: CancellationToken,
        seen: Vec<u64>,
    },
    Stopping {
        attempt: u64,
        then: AfterStop,
        /// The worker being stopped, withdrawn from dependents but still in
        /// the report until it has ended; `None` if it had not started.
        retiring: Option<Retiring>,
    },
}

/// A worker the engine asked to stop, kept for the report until it ends.
struct Retiring {
    worker: Arc<dyn Worker>,
    since: Instant,
}

enum Idle {
    /// Start as soon as the required inputs run.
    Ready,
    /// Exited (cleanly or for a missing input): start when the inputs differ
    /// from `seen`.
    Exited {
        seen: Vec<u64>,
    },
    /// Waiting out a restart delay. An input change (the inputs differ
    /// from `seen`) cuts the wait to the bounce delay.
    BackingOff {
        until: Instant,
        timer: u64,
        seen: Vec<u64>,
    },
    /// In a crash loop: start when the inputs differ from `seen`.
    Parked {
        seen: Vec<u64>,
    },
    /// A transient worker exited cleanly: never starts again.
    Completed,
    Shutdown,
}

/// What to do once a worker the engine stopped has ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Restart,
    Uninstall,
    Shutdown,
}

/// What [`Runner::reconcile`] decided for one manifold.
enum Decision {
    Nothing,
    Start,
    Bounce,
    CutBackoff,
}

pub(crate) struct Runner {
    config: EngineConfig,
    nodes: Vec<Option<Node>>,
    free: Vec<NodeId>,
    ids: HashMap<Name, NodeId>,
    dirty: Vec<NodeId>,
    /// Backoff deadlines: (when, timer id, node). Stale entries are skipped.
    timers: BinaryHeap<Reverse<(Instant, u64, NodeId)>>,
    /// Every attempt in flight, in one phase or the other.
    attempts: FuturesUnordered<AttemptFuture>,
    next_id: u64,
    stopping: bool,
    worst: Option<WorkerError>,
    rng: fastrand::Rng,
}

impl Runner {
    /// Runs the engine until `kill` fires, every handle is dropped, or a fatal
    /// error; then stops every worker, waits for all of them and every task
    /// the engine spawned, and returns the worst error seen while stopping.
    pub(crate) async fn run(
        config: EngineConfig,
        kill: CancellationToken,
        mut commands: mpsc::Receiver<Command>,
    ) -> WorkerResult {
        let rng = match config.jitter_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let mut runner = Runner {
            config,
            nodes: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            attempts: FuturesUnordered::new(),
            next_id: 1,
            stopping: false,
            worst: None,
            rng,
        };
        info!("engine started");
        if let Err(panic) = catch_panic(runner.supervise(&kill, &mut commands)).await {
            // A bug in the engine itself. Its state can no longer be trusted
            // to supervise, but it still knows every attempt in flight: end
            // them all, so that no worker outlives `wait`.
            error!(error = %panic, "the engine failed; stopping every worker");
            runner.stop_everything_after_panic().await;
            info!("engine stopped");
            return Err(panic);
        }
        info!("engine stopped");
        match runner.worst.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The actor's loop: commands, attempt outcomes and timers, until the
    /// engine has stopped and every attempt has ended.
    async fn supervise(
        &mut self,
        kill: &CancellationToken,
        commands: &mut mpsc::Receiver<Command>,
    ) {
        let runner = self;
        let mut commands_open = true;
        // Made once: a fresh `cancelled()` future per turn of the loop would
        // register and unregister with the token every time.
        let killed = kill.cancelled();
        tokio::pin!(killed);
        loop {
            runner.reconcile_dirty();
            if runner.stopping && runner.attempts.is_empty() {
                break;
            }
            let next_timer = runner.timers.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                biased;
                () = &mut killed, if !runner.stopping => runner.begin_shutdown(),
                Some(outcome) = runner.attempts.next(), if !runner.attempts.is_empty() => {
                    // Apply every outcome that is ready before reconciling, so
                    // that changes arriving together cost one restart, but cap
                    // the batch so that commands are never starved.
                    runner.handle_outcome(outcome);
                    for _ in 1..MAX_OUTCOME_BATCH {
                        let Some(Some(outcome)) = runner.attempts.next().now_or_never() else {
                            break;
                        };
                        runner.handle_outcome(outcome);
                    }
                }
                command = commands.recv(), if commands_open => match command {
                    Some(command) => runner.handle_command(command),
                    None => {
                        debug!("every engine handle dropped");
                        commands_open = false;
                        runner.begin_shutdown();
                    }
                },
                () = sleep_until_next(next_timer), if next_timer.is_some() => runner.fire_timers(),
            }
        }
    }

    /// After the actor's own code panicked: cancels every attempt it knows
    /// of, kills every worker that had started, and waits until all of them
    /// have ended.
    async fn stop_everything_after_panic(&mut self) {
        self.stopping = true;
        self.timers.clear();
        for node in self.nodes.iter_mut().flatten() {
            if let Some(published) = node.published.take() {
                published.worker.kill();
            }
            let Some(installed) = node.manifold.as_mut() else {
                continue;
            };
            match &installed.slot {
                Slot::Starting { stop, .. } | Slot::Running { stop, .. } => stop.cancel(),
                Slot::Stopping {
                    retiring: Some(retiring),
                    ..
                } => retiring.worker.kill(),
                Slot::Stopping { .. } | Slot::Idle(_) => {}
            }
        }
        while let Some(outcome) = self.attempts.next().await {
            if let Outcome::Started {
                node,
                attempt,
                worker,
                stop,
                ..
            } = outcome
            {
                stop.cancel();
                self.attempts
                    .push(Box::pin(run_worker(node, attempt, worker, stop)));
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Install { manifolds, reply } => {
                let result = if self.stopping {
                    Err(Error::Stopped)
                } else {
                    self.install_group(manifolds)
                };
                let _ = reply.send(result);
            }
            Command::Uninstall { name, reply } => {
                if self.stopping {
                    let _ = reply.send(Err(Error::Stopped));
                } else {
                    self.uninstall(name, reply);
                }
            }
            Command::Report { reply } => {
                let _ = reply.send(self.draft_report());
            }
            Command::Resource { name, wait, reply } => self.resource(&name, wait, reply),
        }
    }

    fn handle_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Started {
                node,
                attempt,
                worker,
                resource,
                stop,
            } => {
                // Whatever the engine now thinks of this attempt, its worker
                // is waited for (and killed first if the attempt was stopped).
                let span = self.nodes[node]
                    .as_ref()
                    .map_or_else(Span::none, |n| n.span.clone());
                self.attempts.push(Box::pin(
                    run_worker(node, attempt, Arc::clone(&worker), stop).instrument(span),
                ));
                self.on_started(node, attempt, worker, resource);
            }
            Outcome::Ended {
                node,
                attempt,
                result,
            } => self.on_ended(node, attempt, result),
        }
    }

    // ---- installing and uninstalling ------------------------------------

    /// Installs every manifold or none: all are checked, added one by one,
    /// and the added ones removed again if any fails.
    fn install_group(&mut self, manifolds: Vec<Manifold>) -> Result<(), Error> {
        let mut prepared = Vec::with_capacity(manifolds.len());
        for manifold in manifolds {
            let name = Name::new(manifold.name.clone())?;
            let mut inputs: Vec<(Name, Input)> = Vec::with_capacity(manifold.inputs.len());
            for spec in &manifold.inputs {
                let input = Name::new(spec.name.clone())?;
                if inputs.iter().any(|(seen, _)| *seen == input) {
                    return Err(Error::DuplicateInput {
                        manifold: name,
                        input,
                    });
                }
                let declared = Input {
                    node: NodeId::MAX,
                    required: spec.required,
                    expects: spec.expects,
                };
                inputs.push((input, declared));
            }
            prepared.push((name, inputs, manifold));
        }
        let mut added = Vec::with_capacity(prepared.len());
        for (name, inputs, manifold) in prepared {
            match self.add(name, inputs, manifold) {
                Ok(id) => added.push(id),
                Err(error) => {
                    for id in added.into_iter().rev() {
                        self.unlink(id, None);
                    }
                    return Err(error);
                }
            }
        }
        for id in added {
            info!(manifold = %self.node(id).name, "installed");
            self.mark_dirty(id);
        }
        Ok(())
    }

    fn add(
        &mut self,
        name: Name,
        inputs: Vec<(Name, Input)>,
        manifold: Manifold,
    ) -> Result<NodeId, Error> {
        let id = self.node_for(&name);
        if self.node(id).manifold.is_some() {
            return Err(Error::AlreadyInstalled { name });
        }
        if let Err(error) = self.check_types(id, &inputs, &manifold) {
            self.free_if_unused(id);
            return Err(error);
        }
        let known_inputs: Vec<NodeId> = inputs
            .iter()
            .filter_map(|(input, _)| self.ids.get(input).copied())
            .collect();
        if let Some(cycle) = find_cycle(id, &known_inputs, |node| &self.node(node).dependents) {
            let path = cycle
                .iter()
                .map(|&node| self.node(node).name.clone())
                .collect();
            self.free_if_unused(id);
            return Err(Error::Cycle { path });
        }
        let inputs = inputs
            .into_iter()
            .map(|(input, declared)| {
                let node = self.node_for(&input);
                self.node_mut(node).dependents.push(id);
                Input { node, ..declared }
            })
            .collect();
        self.node_mut(id).manifold = Some(Installed {
            manifold,
            inputs,
            slot: Slot::Idle(Idle::Ready),
            start_count: 0,
            last_error: None,
            consecutive_failures: 0,
            restarts: VecDeque::new(),
            uninstall_waiters: Vec::new(),
            resource_waiters: Vec::new(),
            holds_inputs: false,
        });
        Ok(id)
    }

    /// Typed inputs must agree with what their providers declare they offer,
    /// both ways: this manifold's inputs against installed providers, and
    /// installed dependents' keys against what this manifold offers.
    fn check_types(
        &self,
        id: NodeId,
        inputs: &[(Name, Input)],
        manifold: &Manifold,
    ) -> Result<(), Error> {
        let name = &self.node(id).name;
        for (input, declared) in inputs {
            let offered = self
                .ids
                .get(input)
                .and_then(|&node| self.node(node).manifold.as_ref())
                .and_then(|installed| installed.manifold.offers);
            if let (Some(expected), Some(offered)) = (declared.expects, offered)
                && expected.id != offered.id
            {
                return Err(Error::InputType {
                    manifold: name.clone(),
                    input: input.clone(),
                    expected: expected.name,
                    offered: offered.name,
                });
            }
        }
        let Some(offered) = manifold.offers else {
            return Ok(());
        };
        for &dependent in &self.node(id).dependents {
            let Some(installed) = self.node(dependent).manifold.as_ref() else {
                continue;
            };
            let expects = installed
                .inputs
                .iter()
                .filter(|input| input.node == id)
                .find_map(|input| input.expects);
            if let Some(expected) = expects
                && expected.id != offered.id
            {
                return Err(Error::InputType {
                    manifold: self.node(dependent).name.clone(),
                    input: name.clone(),
                    expected: expected.name,
                    offered: offered.name,
                });
            }
        }
        Ok(())
    }

    /// Answers with the resource offered by `name`'s running worker; with
    /// `wait`, keeps the reply until a worker of it starts (or it is
    /// uninstalled, or the engine stops) if none runs now.
    fn resource(&mut self, name: &str, wait: bool, reply: ResourceReply) {
        let id = Name::new(name.to_owned())
            .ok()
            .and_then(|name| self.ids.get(&name).copied())
            .filter(|&id| self.node(id).manifold.is_some());
        let Some(id) = id else {
            let _ = reply.send(Err(Error::NotInstalled {
                name: name.to_owned(),
            }));
            return;
        };
        if let Some(published) = &self.node(id).published {
            let _ = reply.send(Ok(published.resource.clone()));
            return;
        }
        if self.stopping {
            let _ = reply.send(Err(Error::Stopped));
            return;
        }
        if !wait {
            let _ = reply.send(Err(Error::NotRunning {
                name: name.to_owned(),
            }));
            return;
        }
        let waiters = &mut self.installed_mut(id).resource_waiters;
        // Waiters that gave up (a timeout dropped their future) go now, so
        // a caller retrying in a loop cannot pile them up.
        waiters.retain(|waiter| !waiter.is_closed());
        waiters.push(reply);
    }

    fn uninstall(
        &mut self,
        name: String,
        reply: oneshot::Sender<Result<Option<WorkerResult>, Error>>,
    ) {
        let installed_id = Name::new(name.clone())
            .ok()
            .and_then(|name| self.ids.get(&name).copied())
            .filter(|&id| self.node(id).manifold.is_some());
        let Some(id) = installed_id else {
            let _ = reply.send(Err(Error::NotInstalled { name }));
            return;
        };
        let installed = self.installed_mut(id);
        installed.uninstall_waiters.push(reply);
        match &mut installed.slot {
            Slot::Stopping { then, .. } => *then = AfterStop::Uninstall,
            Slot::Starting { .. } | Slot::Running { .. } => {
                self.stop_worker(id, AfterStop::Uninstall)
            }
            Slot::Idle(_) => self.remove(id, None),
        }
    }

    /// Removes an idle manifold, answers whoever waits for its uninstall
    /// with how its last worker ended (`ended`, when one had been running),
    /// and frees nodes nobody needs any more.
    fn remove(&mut self, id: NodeId, ended: Option<WorkerResult>) {
        info!(manifold = %self.node(id).name, "uninstalled");
        self.unlink(id, ended);
    }

    /// Takes an idle manifold out of the graph: the work of [`remove`], also
    /// used to roll back a group install that failed.
    ///
    /// [`remove`]: Self::remove
    fn unlink(&mut self, id: NodeId, ended: Option<WorkerResult>) {
        let Some(installed) = self.node_mut(id).manifold.take() else {
            return;
        };
        for waiter in installed.uninstall_waiters {
            let _ = waiter.send(Ok(ended.clone()));
        }
        let name = self.node(id).name.to_string();
        for waiter in installed.resource_waiters {
            let _ = waiter.send(Err(Error::NotInstalled { name: name.clone() }));
        }
        for input in &installed.inputs {
            let dependents = &mut self.node_mut(input.node).dependents;
            if let Some(position) = dependents.iter().position(|&node| node == id) {
                dependents.swap_remove(position);
            }
            self.free_if_unused(input.node);
        }
        self.mark_dependents_dirty(id);
        self.free_if_unused(id);
    }

    // ---- deciding what runs ----------------------------------------------

    fn reconcile_dirty(&mut self) {
        while let Some(id) = self.dirty.pop() {
            if let Some(node) = self.nodes[id].as_mut() {
                node.dirty = false;
                self.reconcile(id);
            }
        }
    }

    /// Brings one manifold in line with its inputs: bounce a worker whose
    /// inputs changed, start an idle one whose inputs allow it.
    fn reconcile(&mut self, id: NodeId) {
        if self.stopping {
            return;
        }
        let Some(installed) = self.node(id).manifold.as_ref() else {
            return;
        };
        let inputs = &installed.inputs;
        let decision = match &installed.slot {
            Slot::Starting { seen, .. } | Slot::Running { seen, .. } => {
                if self.inputs_match(inputs, seen) {
                    Decision::Nothing
                } else {
                    Decision::Bounce
                }
            }
            Slot::Idle(Idle::Ready) if self.required_running(inputs) => Decision::Start,
            Slot::Idle(Idle::Exited { seen } | Idle::Parked { seen })
                if !self.inputs_match(inputs, seen) && self.required_running(inputs) =>
            {
                Decision::Start
            }
            Slot::Idle(Idle::BackingOff { seen, .. }) if !self.inputs_match(inputs, seen) => {
                Decision::CutBackoff
            }
            _ => Decision::Nothing,
        };
        match decision {
            Decision::Nothing => {}
            Decision::Start => self.start(id),
            Decision::CutBackoff => self.cut_backoff(id),
            Decision::Bounce => {
                info!(manifold = %self.node(id).name, "bouncing: inputs changed");
                self.stop_worker(id, AfterStop::Restart);
            }
        }
    }

    /// An input changed while the manifold waited out a restart delay. That
    /// is new information (the failure may have been the input's fault), so
    /// the wait is cut to the bounce delay, or, with a required input down,
    /// to "start as soon as the inputs run". Never lengthened; the failure
    /// count and the restart-limit budget are left as they are.
    fn cut_backoff(&mut self, id: NodeId) {
        let Slot::Idle(Idle::BackingOff { until, timer, .. }) = self.installed(id).slot else {
            return;
        };
        let seen = self.current_generations(id);
        let slot = if !self.required_running(&self.installed(id).inputs) {
            Slot::Idle(Idle::Ready)
        } else if until <= Instant::now() + self.config.bounce_delay {
            Slot::Idle(Idle::BackingOff { until, timer, seen })
        } else {
            self.delay(id, self.config.bounce_delay, seen)
        };
        debug!(manifold = %self.node(id).name, "an input changed: backoff cut short");
        let ready = matches!(slot, Slot::Idle(Idle::Ready));
        self.installed_mut(id).slot = slot;
        if ready {
            // No timer will wake it (a zero bounce delay, or waiting for
            // inputs): look at it again now.
            self.mark_dirty(id);
        }
    }

    /// The generations of the manifold's inputs now, as a start would see them.
    fn current_generations(&self, id: NodeId) -> Vec<u64> {
        self.installed(id)
            .inputs
            .iter()
            .map(|input| self.generation(input.node))
            .collect()
    }

    fn generation(&self, id: NodeId) -> u64 {
        self.node(id)
            .published
            .as_ref()
            .map_or(0, |published| published.generation)
    }

    fn inputs_match(&self, inputs: &[Input], seen: &[u64]) -> bool {
        inputs
            .iter()
            .zip(seen)
            .all(|(input, &generation)| self.generation(input.node) == generation)
    }

    fn required_running(&self, inputs: &[Input]) -> bool {
        inputs
            .iter()
            .all(|input| !input.required || self.generation(input.node) != 0)
    }

    /// Begins an attempt: the start function with a snapshot of the inputs,
    /// then the worker, until it ends or the attempt is stopped.
    fn start(&mut self, id: NodeId) {
        let attempt = self.fresh_id();
        // A token of its own rather than a child of an engine-wide one: child
        // tokens share their parent's lock, and shutdown visits every attempt
        // anyway.
        let stop = CancellationToken::new();
        let node = self.node(id);
        let Some(installed) = node.manifold.as_ref() else {
            return;
        };
        let seen: Vec<u64> = installed
            .inputs
            .iter()
            .map(|input| self.generation(input.node))
            .collect();
        let inputs = installed
            .inputs
            .iter()
            .map(|input| {
                let input_node = self.node(input.node);
                InputValue {
                    name: input_node.name.clone(),
                    running: input_node
                        .published
                        .as_ref()
                        .map(|published| published.resource.clone()),
                }
            })
            .collect();
        let context = StartContext {
            name: node.name.clone(),
            inputs,
            stop: stop.clone(),
        };
        let start = Arc::clone(&installed.manifold.start);
        let offers = installed.manifold.offers;
        let span = node.span.clone();
        debug!(manifold = %node.name, "starting");
        self.attempts.push(Box::pin(
            start_worker(id, attempt, start, offers, context, stop.clone()).instrument(span),
        ));
        self.installed_mut(id).slot = Slot::Starting {
            attempt,
            stop,
            seen,
        };
    }

    /// Asks the worker (or start) to stop, and withdraws the worker from
    /// dependents at once.
    fn stop_worker(&mut self, id: NodeId, then: AfterStop) {
        let published = self.node_mut(id).published.take();
        let withdrawn = published.is_some();
        let installed = self.installed_mut(id);
        let slot = mem::replace(&mut installed.slot, Slot::Idle(Idle::Ready));
        installed.slot = match slot {
            Slot::Starting { attempt, stop, .. } | Slot::Running { attempt, stop, .. } => {
                stop.cancel();
                Slot::Stopping {
                    attempt,
                    then,
                    retiring: published.map(Retiring::from),
                }
            }
            other => other,
        };
        if withdrawn {
            self.mark_dependents_dirty(id);
        }
    }

    // ---- reading what happened -------------------------------------------

    fn on_started(
        &mut self,
        id: NodeId,
        attempt: u64,
        worker: Arc<dyn Worker>,
        resource: Option<Resource>,
    ) {
        let generation = self.fresh_id();
        let Some(installed) = self.nodes[id]
            .as_mut()
            .and_then(|node| node.manifold.as_mut())
        else {
            return;
        };
        let current = match &mut installed.slot {
            Slot::Starting { attempt, .. } => *attempt,
            Slot::Stopping {
                attempt: stopping,
                retiring,
                ..
            } => {
                // Abandoned while its start was finishing: the worker's
                // phase kills it; the report shows it until it has ended.
                if *stopping == attempt && retiring.is_none() {
                    *retiring = Some(Retiring {
                        worker,
                        since: Instant::now(),
                    });
                }
                return;
            }
            _ => return,
        };
        if current != attempt {
            return;
        }
        let Slot::Starting { stop, seen, .. } =
            mem::replace(&mut installed.slot, Slot::Idle(Idle::Ready))
        else {
            return;
        };
        installed.slot = Slot::Running {
            attempt,
            stop,
            seen,
        };
        installed.start_count += 1;
        let node = self.node_mut(id);
        node.published = Some(Published {
            generation,
            resource,
            worker,
            since: Instant::now(),
        });
        info!(manifold = %node.name, generation, "started");
        self.mark_dependents_dirty(id);
        let resource = self
            .node(id)
            .published
            .as_ref()
            .and_then(|published| published.resource.clone());
        for waiter in mem::take(&mut self.installed_mut(id).resource_waiters) {
            let _ = waiter.send(Ok(resource.clone()));
        }
    }

    fn on_ended(&mut self, id: NodeId, attempt: u64, result: WorkerResult) {
        let Some(installed) = self.nodes[id]
            .as_mut()
            .and_then(|node| node.manifold.as_mut())
        else {
            return;
        };
        let current = match &installed.slot {
            Slot::Starting { attempt, .. }
            | Slot::Running { attempt, .. }
            | Slot::Stopping { attempt, .. } => *attempt,
            Slot::Idle(_) => return,
        };
        if current != attempt {
            return;
        }
        if self.stopping {
            self.release_inputs(id);
        }
        let Some(installed) = self.nodes[id]
            .as_mut()
            .and_then(|node| node.manifold.as_mut())
        else {
            return;
        };
        let result = match (&installed.manifold.filter, result) {
            (Some(filter), Err(error)) => Err(catch_unwind(AssertUnwindSafe(|| filter(error)))
                .unwrap_or_else(|payload| {
                    callback_panicked("the manifold's error filter", payload)
                })),
            (_, result) => result,
        };
        let slot = mem::replace(&mut installed.slot, Slot::Idle(Idle::Ready));
        let published = self.node_mut(id).published.take();
        if published.is_some() {
            self.mark_dependents_dirty(id);
        }
        match slot {
            Slot::Stopping { then, .. } => self.after_requested_stop(id, then, result),
            Slot::Starting { seen, .. } => self.after_exit(id, seen, None, result),
            Slot::Running { seen, .. } => {
                let ran_for = published.map(|published| published.since.elapsed());
                self.after_exit(id, seen, ran_for, result);
            }
            Slot::Idle(_) => {}
        }
        self.mark_dirty(id);
    }

    /// A worker the engine stopped has ended: its error matters only if it
    /// is fatal or the engine is stopping.
    fn after_requested_stop(&mut self, id: NodeId, then: AfterStop, result: WorkerResult) {
        if let Err(error) = &result
            && classify(error) == ErrorClass::Failure
        {
            warn!(manifold = %self.node(id).name, error = %error, "worker failed while stopping");
            if self.stopping {
                // Fatal or not no longer matters: it is one of the errors
                // `wait` chooses the worst of.
                self.installed_mut(id).last_error = Some(error.to_string());
                self.note_error(error.clone());
            } else {
                let (fatal, error) = self.fatality(error.clone());
                self.installed_mut(id).last_error = Some(error.to_string());
                if fatal {
                    self.fail(error);
                }
            }
        }
        info!(manifold = %self.node(id).name, "stopped");
        let temporary = self.installed(id).manifold.restart == RestartPolicy::Temporary;
        let asked_to_go = result
            .as_ref()
            .is_err_and(|error| classify(error) == ErrorClass::Uninstall);
        let slot = match then {
            AfterStop::Uninstall => return self.remove(id, Some(result)),
            AfterStop::Restart if temporary && !self.stopping => {
                info!(manifold = %self.node(id).name, "temporary worker stopped; uninstalling");
                return self.remove(id, Some(result));
            }
            AfterStop::Restart if asked_to_go && !self.stopping => {
                info!(manifold = %self.node(id).name, "worker asked to be uninstalled as it stopped");
                return self.remove(id, Some(result));
            }
            _ if self.stopping => Slot::Idle(Idle::Shutdown),
            AfterStop::Shutdown => Slot::Idle(Idle::Shutdown),
            // With a required input gone there is nothing to delay: it
            // starts when the inputs are back, as after a fresh install.
            AfterStop::Restart if !self.required_running(&self.installed(id).inputs) => {
                Slot::Idle(Idle::Ready)
            }
            AfterStop::Restart => {
                let seen = self.current_generations(id);
                self.delay(id, self.config.bounce_delay, seen)
            }
        };
        self.installed_mut(id).slot = slot;
    }

    /// A worker (or its start) ended by itself: read its result.
    fn after_exit(
        &mut self,
        id: NodeId,
        seen: Vec<u64>,
        ran_for: Option<Duration>,
        result: WorkerResult,
    ) {
        let name = self.node(id).name.clone();
        if self.stopping {
            if let Err(error) = result
                && classify(&error) == ErrorClass::Failure
            {
                self.note_error(error);
            }
            self.installed_mut(id).slot = Slot::Idle(Idle::Shutdown);
            return;
        }
        let policy = self.installed(id).manifold.restart;
        if policy == RestartPolicy::Temporary {
            return self.after_temporary_exit(id, result);
        }
        let error = match result {
            Ok(()) if policy == RestartPolicy::Transient => {
                info!(manifold = %name, "transient worker completed");
                self.installed_mut(id).slot = Slot::Idle(Idle::Completed);
                return;
            }
            Ok(()) => {
                info!(manifold = %name, "exited; waiting for an input to change");
                self.installed_mut(id).slot = Slot::Idle(Idle::Exited { seen });
                return;
            }
            Err(error) => error,
        };
        let slot = match classify(&error) {
            ErrorClass::Missing => {
                debug!(manifold = %name, error = %error, "input missing; waiting for an input to change");
                Slot::Idle(Idle::Exited { seen })
            }
            ErrorClass::Uninstall => {
                info!(manifold = %name, "worker asked to be uninstalled");
                return self.remove(id, Some(Err(error)));
            }
            ErrorClass::Bounce => {
                info!(manifold = %name, "worker asked to be bounced");
                match self.charge_restart(id, &seen, &error) {
                    Some(parked) => parked,
                    None => self.delay(id, self.config.bounce_delay, seen),
                }
            }
            ErrorClass::Failure => {
                let (fatal, error) = self.fatality(error);
                self.installed_mut(id).last_error = Some(error.to_string());
                if fatal {
                    warn!(manifold = %name, error = %error, "fatal error; stopping the engine");
                    self.fail(error);
                    Slot::Idle(Idle::Shutdown)
                } else {
                    let stable = ran_for.is_some_and(|ran| ran >= self.config.backoff_reset_after);
                    let installed = self.installed_mut(id);
                    if stable {
                        installed.consecutive_failures = 0;
                    }
                    installed.consecutive_failures =
                        installed.consecutive_failures.saturating_add(1);
                    let failures = installed.consecutive_failures;
                    match self.charge_restart(id, &seen, &error) {
                        Some(parked) => parked,
                        None => {
                            let delay = self
                                .config
                                .jittered(self.config.backoff_delay(failures), self.rng.f64());
                            warn!(manifold = %name, error = %error, failures, ?delay, "worker failed; restarting after a delay");
                            self.delay(id, delay, seen)
                        }
                    }
                }
            }
        };
        if let Some(installed) = self.nodes[id]
            .as_mut()
            .and_then(|node| node.manifold.as_mut())
        {
            installed.slot = slot;
        }
    }

    /// A temporary worker ended by itself: whatever the end, its manifold is
    /// uninstalled, unless the end is fatal to the engine.
    fn after_temporary_exit(&mut self, id: NodeId, result: WorkerResult) {
        if let Err(error) = &result
            && classify(error) == ErrorClass::Failure
        {
            let (fatal, error) = self.fatality(error.clone());
            self.installed_mut(id).last_error = Some(error.to_string());
            if fatal {
                warn!(manifold = %self.node(id).name, error = %error, "fatal error; stopping the engine");
                self.fail(error);
                self.installed_mut(id).slot = Slot::Idle(Idle::Shutdown);
                return;
            }
        }
        info!(manifold = %self.node(id).name, ?result, "temporary worker ended; uninstalling");
        self.remove(id, Some(result));
    }

    /// Whether `error` is fatal to the engine, and the error to read: a
    /// panicking [`EngineConfig::is_fatal`] is not fatal, and its panic
    /// becomes the manifold's failure.
    fn fatality(&self, error: WorkerError) -> (bool, WorkerError) {
        // A callback's panic is a bug in the callback, never fatal, and is
        // not shown to `is_fatal` (which might well treat panics as fatal).
        if matches!(error.find::<Error>(), Some(Error::CallbackPanicked { .. })) {
            return (false, error);
        }
        match catch_unwind(AssertUnwindSafe(|| (self.config.is_fatal)(&error))) {
            Ok(fatal) => (fatal, error),
            Err(payload) => (false, callback_panicked("EngineConfig::is_fatal", payload)),
        }
    }

    /// Counts a restart against the restart limit. Returns the slot to park
    /// in when the manifold is in a crash loop (after stopping the engine,
    /// when that is the policy), or `None` when it may restart.
    fn charge_restart(&mut self, id: NodeId, seen: &[u64], error: &WorkerError) -> Option<Slot> {
        let limit = self.config.restart_limit;
        let now = Instant::now();
        let installed = self.installed_mut(id);
        installed.restarts.push_back(now);
        while installed
            .restarts
            .front()
            .is_some_and(|&at| now.duration_since(at) > limit.window)
        {
            installed.restarts.pop_front();
        }
        let restarts = installed.restarts.len();
        if restarts <= limit.max_restarts as usize {
            return None;
        }
        let name = self.node(id).name.clone();
        match limit.on_exceeded {
            CrashLoopPolicy::Park => {
                warn!(manifold = %name, restarts, "crash loop; parking the manifold");
                let installed = self.installed_mut(id);
                installed.restarts.clear();
                installed.consecutive_failures = 0;
                Some(Slot::Idle(Idle::Parked {
                    seen: seen.to_vec(),
                }))
            }
            CrashLoopPolicy::Fatal => {
                warn!(manifold = %name, restarts, "crash loop; stopping the engine");
                self.fail(WorkerError::new(Error::CrashLoop {
                    name,
                    restarts,
                    window: limit.window,
                    last_error: error.clone(),
                }));
                Some(Slot::Idle(Idle::Shutdown))
            }
        }
    }

    /// The idle slot that starts the manifold after `delay`, unless its
    /// inputs differ from `seen` first (then the wait is cut short).
    fn delay(&mut self, id: NodeId, delay: Duration, seen: Vec<u64>) -> Slot {
        if delay.is_zero() {
            return Slot::Idle(Idle::Ready);
        }
        let until = Instant::now() + delay;
        let timer = self.fresh_id();
        self.timers.push(Reverse((until, timer, id)));
        Slot::Idle(Idle::BackingOff { until, timer, seen })
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((until, timer, id))) = self.timers.peek() {
            if until > now {
                break;
            }
            self.timers.pop();
            let due = self.nodes[id]
                .as_mut()
                .and_then(|node| node.manifold.as_mut())
                .filter(|installed| matches!(installed.slot, Slot::Idle(Idle::BackingOff { timer: t, .. }) if t == timer));
            if let Some(installed) = due {
                installed.slot = Slot::Idle(Idle::Ready);
                self.mark_dirty(id);
                continue;
            }
            let overdue = self.stopping
                && self.nodes[id]
                    .as_ref()
                    .and_then(|node| node.manifold.as_ref())
                    .is_some_and(|installed| {
                        installed.holds_inputs
                            && matches!(installed.slot, Slot::Stopping { attempt, .. } if attempt == timer)
                    });
            if overdue {
                warn!(
                    manifold = %self.node(id).name,
                    timeout = ?self.config.stop_timeout,
                    "still stopping after the stop timeout; stopping its inputs anyway"
                );
                self.release_inputs(id);
            }
        }
    }

    // ---- stopping --------------------------------------------------------

    fn fail(&mut self, error: WorkerError) {
        self.note_error(error);
        self.begin_shutdown();
    }

    /// Keeps the worse of `error` and the worst so far (the earlier on a
    /// tie, and when [`EngineConfig::worst_error`] panics).
    fn note_error(&mut self, error: WorkerError) {
        self.worst = match self.worst.take() {
            None => Some(error),
            Some(worst) => {
                let ranked = catch_unwind(AssertUnwindSafe(|| {
                    (self.config.worst_error)(&error, &worst)
                }));
                match ranked {
                    Ok(Ordering::Greater) => Some(error),
                    Ok(_) => Some(worst),
                    Err(payload) => {
                        let panic = callback_panicked("EngineConfig::worst_error", payload);
                        warn!(error = %panic, kept = %worst, dropped = %error, "keeping the earlier error");
                        Some(worst)
                    }
                }
            }
        };
    }

    /// Stops the engine: nothing starts any more, starts under way are
    /// abandoned, and running workers are stopped dependents first. A worker
    /// is asked to stop once every manifold that depends on it has ended (or
    /// has had `stop_timeout` to end and has not: then its inputs are
    /// stopped anyway, so one stuck worker cannot hold up the rest).
    fn begin_shutdown(&mut self) {
        if self.stopping {
            return;
        }
        info!("engine stopping");
        self.stopping = true;
        self.timers.clear();
        let mut active = Vec::new();
        for (id, node) in self.nodes.iter_mut().enumerate() {
            let Some(installed) = node.as_mut().and_then(|node| node.manifold.as_mut()) else {
                continue;
            };
            for waiter in mem::take(&mut installed.resource_waiters) {
                let _ = waiter.send(Err(Error::Stopped));
            }
            let slot = mem::replace(&mut installed.slot, Slot::Idle(Idle::Shutdown));
            installed.slot = match slot {
                // Nothing runs yet: abandon it now.
                Slot::Starting { attempt, stop, .. } => {
                    stop.cancel();
                    Slot::Stopping {
                        attempt,
                        then: AfterStop::Shutdown,
                        retiring: None,
                    }
                }
                Slot::Stopping {
                    attempt,
                    then,
                    retiring,
                } => Slot::Stopping {
                    attempt,
                    then,
                    retiring,
                },
                running @ Slot::Running { .. } => running,
                Slot::Idle(_) => Slot::Idle(Idle::Shutdown),
            };
            if !matches!(installed.slot, Slot::Idle(_)) {
                installed.holds_inputs = true;
                active.push(id);
            }
        }
        for &id in &active {
            for index in 0..self.installed(id).inputs.len() {
                let input = self.installed(id).inputs[index].node;
                self.node_mut(input).pending_dependents += 1;
            }
        }
        let now = Instant::now();
        for id in active {
            match self.installed(id).slot {
                Slot::Running { .. } if self.node(id).pending_dependents == 0 => {
                    self.stop_for_shutdown(id, now);
                }
                Slot::Stopping { attempt, .. } => self.arm_stop_timeout(id, attempt, now),
                _ => {}
            }
        }
    }

    /// Stops a running worker whose dependents have all ended.
    fn stop_for_shutdown(&mut self, id: NodeId, now: Instant) {
        // A placeholder (an input never installed, or uninstalled) has no
        // worker to stop.
        let Some(Installed {
            slot: Slot::Running { attempt, .. },
            ..
        }) = self.node(id).manifold
        else {
            return;
        };
        debug!(manifold = %self.node(id).name, "stopping: its dependents have ended");
        self.stop_worker(id, AfterStop::Shutdown);
        self.arm_stop_timeout(id, attempt, now);
    }

    /// After `stop_timeout`, the inputs of a worker still stopping are
    /// stopped regardless.
    fn arm_stop_timeout(&mut self, id: NodeId, attempt: u64, now: Instant) {
        let deadline = now + self.config.stop_timeout;
        self.timers.push(Reverse((deadline, attempt, id)));
    }

    /// A worker has ended (or overrun its stop timeout) while the engine
    /// stops: it no longer holds up its inputs, and each input with no other
    /// dependent left is stopped in turn.
    fn release_inputs(&mut self, id: NodeId) {
        let installed = self.installed_mut(id);
        if !mem::replace(&mut installed.holds_inputs, false) {
            return;
        }
        let now = Instant::now();
        for index in 0..self.installed(id).inputs.len() {
            let input = self.installed(id).inputs[index].node;
            let node = self.node_mut(input);
            node.pending_dependents = node.pending_dependents.saturating_sub(1);
            if node.pending_dependents == 0 {
                self.stop_for_shutdown(input, now);
            }
        }
    }

    // ---- reporting -------------------------------------------------------

    fn draft_report(&self) -> ReportDraft {
        let now = Instant::now();
        let mut installed_nodes: Vec<&Node> = self
            .nodes
            .iter()
            .flatten()
            .filter(|node| node.manifold.is_some())
            .collect();
        installed_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut manifolds = Vec::with_capacity(installed_nodes.len());
        let mut workers = Vec::new();
        for node in installed_nodes {
            let Some(installed) = node.manifold.as_ref() else {
                continue;
            };
            let seen = match &installed.slot {
                Slot::Starting { seen, .. } | Slot::Running { seen, .. } => Some(seen),
                _ => None,
            };
            let inputs = installed
                .inputs
                .iter()
                .enumerate()
                .map(|(index, input)| {
                    let input_node = self.node(input.node);
                    InputReport {
                        name: input_node.name.to_string(),
                        required: input.required,
                        installed: input_node.manifold.is_some(),
                        generation: nonzero(self.generation(input.node)),
                        snapshot_generation: seen.and_then(|seen| nonzero(seen[index])),
                    }
                })
                .collect();
            // A worker being stopped is still reported until it has ended.
            let running = match (&node.published, &installed.slot) {
                (Some(published), _) => Some((&published.worker, published.since)),
                (
                    None,
                    Slot::Stopping {
                        retiring: Some(retiring),
                        ..
                    },
                ) => Some((&retiring.worker, retiring.since)),
                _ => None,
            };
            if let Some((worker, _)) = running {
                workers.push((manifolds.len(), Arc::clone(worker)));
            }
            manifolds.push(ManifoldReport {
                name: node.name.to_string(),
                state: slot_state(&installed.slot, now),
                inputs,
                start_count: installed.start_count,
                generation: node
                    .published
                    .as_ref()
                    .map(|published| published.generation),
                last_error: installed.last_error.clone(),
                consecutive_failures: installed.consecutive_failures,
                running_for: running.map(|(_, since)| now - since),
                worker: None,
            });
        }
        ReportDraft {
            report: EngineReport {
                state: if self.stopping {
                    EngineState::Stopping
                } else {
                    EngineState::Running
                },
                manifolds,
            },
            workers,
        }
    }

    // ---- node table ------------------------------------------------------

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes[id]
            .as_ref()
            .expect("node ids held by the engine always name live nodes")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id]
            .as_mut()
            .expect("node ids held by the engine always name live nodes")
    }

    fn installed(&self, id: NodeId) -> &Installed {
        self.node(id)
            .manifold
            .as_ref()
            .expect("only installed manifolds have workers")
    }

    fn installed_mut(&mut self, id: NodeId) -> &mut Installed {
        self.node_mut(id)
            .manifold
            .as_mut()
            .expect("only installed manifolds have workers")
    }

    /// The node for `name`, made (as a placeholder) if it does not exist.
    fn node_for(&mut self, name: &Name) -> NodeId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let node = Node {
            name: name.clone(),
            span: info_span!("manifold", name = %name),
            dependents: Vec::new(),
            published: None,
            manifold: None,
            dirty: false,
            pending_dependents: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.ids.insert(name.clone(), id);
        id
    }

    fn free_if_unused(&mut self, id: NodeId) {
        let node = self.node(id);
        if node.manifold.is_some() || !node.dependents.is_empty() || node.published.is_some() {
            return;
        }
        if let Some(node) = self.nodes[id].take() {
            self.ids.remove(&node.name);
            self.free.push(id);
        }
    }

    fn mark_dirty(&mut self, id: NodeId) {
        if let Some(node) = self.nodes[id].as_mut()
            && !node.dirty
        {
            node.dirty = true;
            self.dirty.push(id);
        }
    }

    fn mark_dependents_dirty(&mut self, id: NodeId) {
        let count = self.node(id).dependents.len();
        for index in 0..count {
            let dependent = self.node(id).dependents[index];
            self.mark_dirty(dependent);
        }
    }
}

impl From<Published> for Retiring {
    fn from(published: Published) -> Self {
        // The resource is dropped here: dependents have been told it is gone.
        Retiring {
            worker: published.worker,
            since: published.since,
        }
    }
}

/// The error to read when one of the user's callbacks panicked.
fn callback_panicked(callback: &'static str, payload: Box<dyn Any + Send>) -> WorkerError {
    let message = match WorkerError::from_panic(&*payload) {
        WorkerError::Panicked { message } => message,
        other => other.to_string(),
    };
    WorkerError::new(Error::CallbackPanicked { callback, message })
}

fn nonzero(generation: u64) -> Option<u64> {
    (generation != 0).then_some(generation)
}

fn slot_state(slot: &Slot, now: Instant) -> ManifoldState {
    let reason = match slot {
        Slot::Starting { .. } => return ManifoldState::Starting,
        Slot::Running { .. } => return ManifoldState::Started,
        Slot::Stopping { .. } => return ManifoldState::Stopping,
        Slot::Idle(Idle::Ready) => StoppedReason::WaitingForInputs,
        Slot::Idle(Idle::Exited { .. }) => StoppedReason::Exited,
        Slot::Idle(Idle::BackingOff { until, .. }) => StoppedReason::BackingOff {
            remaining: until.saturating_duration_since(now),
        },
        Slot::Idle(Idle::Parked { .. }) => StoppedReason::Parked,
        Slot::Idle(Idle::Completed) => StoppedReason::Completed,
        Slot::Idle(Idle::Shutdown) => StoppedReason::Shutdown,
    };
    ManifoldState::Stopped { reason }
}

async fn sleep_until_next(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The first phase of an attempt: runs the start function, unless the
/// attempt is stopped first. A panic in it is the attempt's error.
async fn start_worker(
    node: NodeId,
    attempt: u64,
    start: Arc<dyn Fn(StartContext) -> crate::StartFuture + Send + Sync>,
    offers: Option<TypeTag>,
    context: StartContext,
    stop: CancellationToken,
) -> Outcome {
    let name = context.name.clone();
    let started = catch_panic(async {
        tokio::select! {
            biased;
            () = stop.cancelled() => None,
            started = start(context) => Some(started),
        }
    })
    .await;
    let result = match started {
        Ok(Some(Ok(Started { worker, resource })))
            if offers
                .is_some_and(|declared| !resource.as_ref().is_some_and(|r| r.is(declared))) =>
        {
            // It broke its declaration: that is the start's failure, and the
            // worker it made is stopped before the failure is read.
            worker.kill();
            let _ = catch_panic(worker.wait()).await;
            Err(WorkerError::new(Error::OfferMismatch {
                manifold: name,
                declared: offers.map_or("", |declared| declared.name),
                returned: resource.map_or("no resource", |resource| resource.type_name),
            }))
        }
        Ok(Some(Ok(Started { worker, resource }))) => {
            return Outcome::Started {
                node,
                attempt,
                worker,
                resource,
                stop,
            };
        }
        Ok(Some(Err(error))) | Err(error) => Err(error),
        // Abandoned: the engine asked for it and reads no error into it.
        Ok(None) => Ok(()),
    };
    Outcome::Ended {
        node,
        attempt,
        result,
    }
}

/// The second phase of an attempt: waits for the worker to end, killing it
/// first if the attempt is stopped. A panic in its `wait` is its error.
async fn run_worker(
    node: NodeId,
    attempt: u64,
    worker: Arc<dyn Worker>,
    stop: CancellationToken,
) -> Outcome {
    let result = catch_panic(async {
        tokio::select! {
            biased;
            result = worker.wait() => return result,
            () = stop.cancelled() => {}
        }
        worker.kill();
        worker.wait().await
    })
    .await
    .and_then(|result| result);
    Outcome::Ended {
        node,
        attempt,
        result,
    }
}
