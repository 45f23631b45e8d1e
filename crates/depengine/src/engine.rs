//! [`Engine`]: the cheap, cloneable handle to the engine's actor task.

use std::fmt;
use std::sync::Arc;

use flotilla_core_types::{
    ReportFuture, TaskWorker, Worker, WorkerResult, catch_panic, delegate_worker,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::runner::{Command, ReportDraft, Runner};
use crate::{EngineConfig, EngineReport, Error, InputKey, Manifold};

/// How many commands may queue for the engine before callers wait: enough to
/// absorb bursts, small enough that a flood of installs is paced by the actor.
const COMMAND_QUEUE: usize = 256;

/// A running dependency engine. Cloning is cheap: every clone is a handle to
/// the same engine.
///
/// The engine is a [`Worker`]: [`kill`](Worker::kill) stops it, and
/// [`wait`](Worker::wait) returns once every worker it started has ended,
/// with the worst error it saw while stopping (a fatal error, a crash loop
/// as [`Error::CrashLoop`], or an error a worker returned while being
/// stopped). Dropping every handle, a fatal error and a crash loop stop it
/// the same way.
///
/// # The order of stopping
///
/// Dependents stop before their inputs, as an OTP supervisor stops its
/// children in reverse start order: starts under way are abandoned at once,
/// and a running worker is asked to stop only once every manifold that
/// depends on it has ended. So a server that advertises a store stops
/// advertising before the store closes. A worker that takes longer than
/// [`EngineConfig::stop_timeout`] to end no longer holds up its inputs (they
/// are then stopped anyway, with a warning), but `wait` still waits for it:
/// it never returns while a worker the engine started is running.
///
/// See the [crate documentation](crate) for an example.
#[derive(Clone)]
pub struct Engine {
    commands: mpsc::Sender<Command>,
    worker: TaskWorker,
    config: Arc<EngineConfig>,
}

impl Engine {
    /// Validates `config` and starts an engine with no manifolds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `config` does not validate.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with a timer.
    pub fn start(config: EngineConfig) -> Result<Engine, Error> {
        config.validate()?;
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let runner_config = config.clone();
        let worker = TaskWorker::spawn(move |kill| {
            Runner::run(runner_config, kill, queue).instrument(tracing::info_span!("engine"))
        });
        Ok(Engine {
            commands,
            worker,
            config: Arc::new(config),
        })
    }

    /// Installs `manifold`. Its worker starts as soon as its required inputs
    /// run, which may be at once, later, or (if they are never installed)
    /// never.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::AlreadyInstalled`],
    /// [`Error::DuplicateInput`], [`Error::Cycle`], or [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped after the request was sent, the install may
    /// still happen; check with [`report`](Self::report).
    pub async fn install(&self, manifold: Manifold) -> Result<(), Error> {
        self.install_group([manifold]).await
    }

    /// Installs several manifolds at once: all of them, or (if any is
    /// invalid, or they would close a cycle together or with what is
    /// installed) none. Their inputs may be among each other.
    ///
    /// # Errors
    ///
    /// As [`install`](Self::install), for the first manifold that fails.
    ///
    /// # Cancel safety
    ///
    /// As [`install`](Self::install).
    pub async fn install_group(
        &self,
        manifolds: impl IntoIterator<Item = Manifold>,
    ) -> Result<(), Error> {
        let manifolds = manifolds.into_iter().collect();
        self.request(|reply| Command::Install { manifolds, reply })
            .await?
    }

    /// Stops the worker of the manifold called `name`, then removes the
    /// manifold. Returns once both are done; its dependents then see it as
    /// missing.
    ///
    /// Returns how the worker ended: `Some(result)` when a worker (or its
    /// start) was running and has now ended with `result` (after the
    /// manifold's filter), `None` when none was running.
    ///
    /// # Errors
    ///
    /// [`Error::NotInstalled`], or [`Error::Stopped`] when the engine had
    /// stopped before the request arrived. An uninstall already under way
    /// when the engine begins to stop still completes and answers.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped after the request was sent, the uninstall
    /// still happens.
    pub async fn uninstall(&self, name: &str) -> Result<Option<WorkerResult>, Error> {
        let name = name.to_owned();
        self.request(|reply| Command::Uninstall { name, reply })
            .await?
    }

    /// A snapshot of the engine and every manifold, including each running
    /// worker's own report ([`Worker::report`]).
    ///
    /// Returns within [`EngineConfig::report_timeout`] of the engine's
    /// answer: a worker that has not reported by then appears with
    /// `{"error": "report timed out"}`, and never holds up the rest; one whose
    /// report panicked appears with the panic message.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the engine has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the report and the workers'
    /// report futures with it.
    pub async fn report(&self) -> Result<EngineReport, Error> {
        let ReportDraft {
            mut report,
            workers,
        } = self.request(|reply| Command::Report { reply }).await?;
        let deadline = Instant::now() + self.config.report_timeout;
        // Gathered side by side in this future, not in tasks: dropping it
        // drops them all.
        let mut pending: FuturesUnordered<_> = workers
            .into_iter()
            .map(|(index, worker)| async move { (index, worker_report(&*worker, deadline).await) })
            .collect();
        while let Some((index, value)) = pending.next().await {
            report.manifolds[index].worker = value;
        }
        Ok(report)
    }

    /// A clone of the resource offered by the running worker of the manifold
    /// `input` names, as a `T`: how code outside the engine (a `main`, a
    /// test) gets at a handle a start function made.
    ///
    /// # Errors
    ///
    /// [`Error::NotInstalled`], [`Error::NotRunning`] (see
    /// [`wait_for_resource`](Self::wait_for_resource) to wait instead),
    /// [`Error::ResourceType`], or [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing.
    pub async fn resource<T: Clone + 'static>(&self, input: impl InputKey<T>) -> Result<T, Error> {
        self.read_resource(input.key_name(), false).await
    }

    /// Like [`resource`](Self::resource), but while the manifold is
    /// installed and not running, waits until a worker of it has started.
    /// Bound it with `tokio::time::timeout` to give up.
    ///
    /// # Errors
    ///
    /// [`Error::NotInstalled`] (also when it is uninstalled while this
    /// waits), [`Error::ResourceType`], or [`Error::Stopped`] (also when the
    /// engine begins to stop while this waits).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing.
    pub async fn wait_for_resource<T: Clone + 'static>(
        &self,
        input: impl InputKey<T>,
    ) -> Result<T, Error> {
        self.read_resource(input.key_name(), true).await
    }

    async fn read_resource<T: Clone + 'static>(&self, name: &str, wait: bool) -> Result<T, Error> {
        let name = name.to_owned();
        let resource = self
            .request(|reply| Command::Resource {
                name: name.clone(),
                wait,
                reply,
            })
            .await??;
        let mismatch = |offered| Error::ResourceType {
            name: name.clone(),
            requested: std::any::type_name::<T>(),
            offered,
        };
        match resource {
            Some(resource) => resource.downcast().map_err(mismatch),
            None => Err(mismatch("no resource")),
        }
    }

    /// Sends a command and waits for its answer; a closed channel or a
    /// dropped reply both mean the engine has stopped.
    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }
}

/// A worker's own report, or a note of why there is none by `deadline`:
/// `None` when the worker offers no report.
async fn worker_report(worker: &dyn Worker, deadline: Instant) -> Option<serde_json::Value> {
    let answer = catch_panic(async {
        let report = worker.report()?;
        Some(tokio::time::timeout_at(deadline, report).await)
    })
    .await;
    match answer {
        Ok(None) => None,
        Ok(Some(Ok(value))) => Some(value),
        Ok(Some(Err(_elapsed))) => Some(serde_json::json!({ "error": "report timed out" })),
        Err(panicked) => Some(serde_json::json!({ "error": panicked.to_string() })),
    }
}

impl Engine {
    /// The engine's report as a worker's: its [`EngineReport`] as JSON.
    fn worker_report(&self) -> Option<ReportFuture<'_>> {
        Some(Box::pin(async move {
            match Engine::report(self).await {
                Ok(report) => serde_json::to_value(report)
                    .unwrap_or_else(|error| serde_json::json!({ "error": error.to_string() })),
                Err(error) => serde_json::json!({ "error": error.to_string() }),
            }
        }))
    }
}

delegate_worker!(Engine, worker, report = Engine::worker_report);

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("worker", &self.worker)
            .field("config", &self.config)
            .finish()
    }
}
