//! A dependency engine: named manifolds whose workers depend on each other's
//! resources.
//!
//! An [`Engine`] holds [`Manifold`]s. A manifold names its inputs (other
//! manifolds), says how to start its worker from a snapshot of those inputs'
//! resources, and may offer a resource of its own to its dependents. The
//! engine starts each worker once its required inputs are running, restarts
//! it with backoff when it fails, and bounces it (stops it and starts it again
//! with a fresh snapshot) when the workers behind its inputs change.
//!
//! The design follows juju's `worker/dependency`, with what years of running
//! it taught: bounces are coalesced (a dependent restarts only when the
//! generations of its inputs' workers actually changed, so a cold start
//! restarts nothing), a crash loop hits a restart-intensity limit as in OTP
//! supervisors, and a report never hangs on one stuck worker.
//!
//! # How a worker's end is read
//!
//! | the worker (or its start) ended with | the engine |
//! |---|---|
//! | `Ok(())` | leaves it stopped until one of its inputs changes |
//! | [`Signal::Missing`] or [`InputError::Missing`] | the same, and spends no restart budget |
//! | [`Signal::Bounce`] | restarts it after the bounce delay |
//! | [`Signal::Uninstall`] | uninstalls the manifold |
//! | an error that [`EngineConfig::is_fatal`] accepts | stops the whole engine with that error |
//! | any other error | restarts it after a growing, jittered delay |
//!
//! That is the [`RestartPolicy::Permanent`] manifold, the default. A
//! [`RestartPolicy::Transient`] one is finished after `Ok(())` and never
//! starts again; a [`RestartPolicy::Temporary`] one is uninstalled however
//! its one attempt ends (fatal errors still stop the engine).
//!
//! A worker that panics has failed with [`WorkerError::Panicked`]; the engine
//! carries on. So does a panic in one of the engine's callbacks: a panicking
//! [`Manifold::filter`] or [`EngineConfig::is_fatal`] is read as a failure of
//! the manifold whose error it was judging (an [`Error::CallbackPanicked`]
//! naming the callback, never fatal and never shown to `is_fatal`), and when
//! [`EngineConfig::worst_error`] panics the engine keeps the error it had.
//! Should the engine's own code ever panic, it still kills every worker it
//! started and waits for them: [`Engine`]'s `wait` never returns while one
//! of its workers runs.
//!
//! # Backoff
//!
//! The delay before a restart after the n-th consecutive failure is
//! `error_delay × backoff_factor^(n-1)`, capped at `max_delay` and moved by
//! up to `backoff_jitter` either way; a worker that ran for
//! `backoff_reset_after` before failing starts counting afresh. A change of
//! one of its inputs while a manifold waits out that delay is new
//! information (the failure may have been the input's): the wait is cut to
//! the bounce delay, or, when a required input has gone, to "start as soon as
//! the inputs run". The failure count and the restart-limit budget are not
//! reset by it, so a crash loop is still caught. The other side of that: a
//! failing manifold whose inputs flap restarts as often as they do, and so
//! reaches its [`RestartLimit`] sooner than its backoff alone would let it.
//!
//! # Example
//!
//! ```
//! use flotilla_core_types::{TaskWorker, Worker};
//! use flotilla_depengine::{Engine, EngineConfig, Manifold, Started};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> anyhow::Result<()> {
//! let engine = Engine::start(EngineConfig::default())?;
//!
//! // "config" offers a String to whoever depends on it.
//! engine
//!     .install(Manifold::new("config", |_ctx| async {
//!         let worker = TaskWorker::spawn(|stop| async move {
//!             stop.cancelled().await;
//!             Ok(())
//!         });
//!         Ok(Started::new(worker).with_resource(String::from("db=primary")))
//!     }))
//!     .await?;
//!
//! // "api" starts only once "config" is running, and reads its resource.
//! engine
//!     .install(Manifold::new("api", |ctx| async move {
//!         let config: String = ctx.get("config")?;
//!         let worker = TaskWorker::spawn(|stop| async move {
//!             assert_eq!(config, "db=primary");
//!             stop.cancelled().await;
//!             Ok(())
//!         });
//!         Ok(Started::new(worker))
//!     })
//!     .input("config"))
//!     .await?;
//!
//! tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! let report = engine.report().await?;
//! assert!(report.manifolds.iter().all(|m| m.state.is_started()));
//!
//! engine.kill();
//! engine.wait().await?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod config;
mod engine;
mod error;
mod graph;
mod input;
mod manifold;
mod report;
mod runner;

pub use config::{CrashLoopPolicy, EngineConfig, RestartLimit};
pub use engine::Engine;
pub use error::Error;
#[doc(no_inline)]
pub use flotilla_core_types::{InvalidId, Name, Worker, WorkerError, WorkerResult};
pub use input::{Input, InputKey, InputName};
pub use manifold::{
    InputError, Manifold, RestartPolicy, Signal, StartContext, StartFuture, Started,
};
pub use report::{
    EngineReport, EngineState, InputReport, ManifoldReport, ManifoldState, StoppedReason,
};
