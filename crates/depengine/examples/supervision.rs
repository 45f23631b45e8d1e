//! A guided tour of the dependency engine: run it with
//!
//! ```text
//! cargo run --release -p flotilla-depengine --example supervision
//! ```
//!
//! Five manifolds start in dependency order; the configuration reloads and
//! its dependents bounce; a flaky cache fails twice and is restarted with a
//! growing delay; a janitor panics once and is restarted; then the engine
//! reports on itself and stops every worker. The engine's own tracing events
//! tell the story; the lines starting with `==>` are this example's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Result;
use flotilla_core_types::{ReportFuture, TaskWorker, WaitFuture, Worker, WorkerError};
use flotilla_depengine::{Engine, EngineConfig, Manifold, Signal, Started};
use tracing_subscriber::EnvFilter;

/// What the "config" manifold offers its dependents.
#[derive(Debug, Clone)]
struct Settings {
    version: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    // The engine turns the janitor's panic into an error and logs it; the
    // default hook's backtrace would only be noise here.
    std::panic::set_hook(Box::new(|info| println!("(a worker panicked: {info})")));

    let mut config = EngineConfig::default();
    config.error_delay = Duration::from_millis(200);
    config.max_delay = Duration::from_secs(2);
    config.bounce_delay = Duration::from_millis(50);
    config.backoff_jitter = 0.1;
    let engine = Engine::start(config)?;

    say("installing five manifolds, dependents first: they wait for their inputs");
    let (reload, reloads) = tokio::sync::watch::channel(1_u32);
    let cache_attempts = Arc::new(AtomicU32::new(0));
    let janitor_runs = Arc::new(AtomicU32::new(0));
    engine
        .install_group([
            api(),
            database(),
            config_manifold(reloads),
            flaky_cache(cache_attempts),
            janitor(janitor_runs),
        ])
        .await?;

    tokio::time::sleep(Duration::from_millis(500)).await;
    say(
        "reloading the configuration: config asks to be bounced; database and api bounce once each",
    );
    reload.send_replace(2);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    say("the engine's report");
    let report = engine.report().await?;
    println!("\n{report}");
    println!(
        "\nThe same graph in Graphviz DOT (pipe it to `dot -Tsvg`):\n{}",
        report.to_dot()
    );

    say("stopping the engine: every worker is stopped and waited for");
    engine.kill();
    engine.wait().await?;
    say("engine stopped cleanly");
    Ok(())
}

fn say(message: &str) {
    println!("==> {message}");
}

/// Offers the current settings; its worker asks to be bounced when they are
/// reloaded, so that its dependents restart with the new ones.
fn config_manifold(reloads: tokio::sync::watch::Receiver<u32>) -> Manifold {
    Manifold::new("config", move |_ctx| {
        let mut reloads = reloads.clone();
        let version = *reloads.borrow_and_update();
        async move {
            let worker = TaskWorker::spawn(move |stop| async move {
                tokio::select! {
                    () = stop.cancelled() => Ok(()),
                    _ = reloads.changed() => Err(Signal::Bounce.into()),
                }
            });
            Ok(Started::new(worker).with_resource(Settings { version }))
        }
    })
}

fn database() -> Manifold {
    Manifold::new("database", |ctx| async move {
        let settings: Settings = ctx.get("config")?;
        Ok(Started::new(Reporting {
            worker: idle(),
            report: serde_json::json!({ "config_version": settings.version }),
        }))
    })
    .input("config")
}

fn api() -> Manifold {
    Manifold::new("api", |ctx| async move {
        ctx.require("database")?;
        let settings: Settings = ctx.get("config")?;
        Ok(Started::new(Reporting {
            worker: idle(),
            report: serde_json::json!({ "config_version": settings.version, "listening": true }),
        }))
    })
    .input("database")
    .input("config")
}

/// Fails twice shortly after starting, then settles down.
fn flaky_cache(attempts: Arc<AtomicU32>) -> Manifold {
    Manifold::new("cache", move |_ctx| {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok(Started::new(TaskWorker::spawn(move |stop| async move {
                if attempt <= 2 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(WorkerError::msg(format!(
                        "cache warm-up failed (attempt {attempt})"
                    )));
                }
                stop.cancelled().await;
                Ok(())
            })))
        }
    })
    .filter(|error| {
        // A real filter might map a known transient error to a bounce; this
        // one leaves every error as it is.
        if error.to_string() == "connection reset" {
            Signal::Bounce.into()
        } else {
            error
        }
    })
}

/// Panics on its first run.
fn janitor(runs: Arc<AtomicU32>) -> Manifold {
    Manifold::new("janitor", move |_ctx| {
        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok(Started::new(TaskWorker::spawn(move |stop| async move {
                if run == 1 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    panic!("janitor tripped over a mop");
                }
                stop.cancelled().await;
                Ok(())
            })))
        }
    })
}

fn idle() -> TaskWorker {
    TaskWorker::spawn(|stop| async move {
        stop.cancelled().await;
        Ok(())
    })
}

/// A worker that offers a report of its own.
struct Reporting {
    worker: TaskWorker,
    report: serde_json::Value,
}

impl Worker for Reporting {
    fn kill(&self) {
        self.worker.kill();
    }

    fn wait(&self) -> WaitFuture<'_> {
        self.worker.wait()
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let report = self.report.clone();
        Some(Box::pin(async move { report }))
    }
}
