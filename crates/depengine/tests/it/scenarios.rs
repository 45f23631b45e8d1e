//! Scenario tests: each rule of the engine, one at a time.

use std::cmp::Ordering;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::time::Duration;

use flotilla_core_types::{ReportFuture, TaskWorker, WaitFuture, Worker, WorkerError};
use flotilla_depengine::{
    CrashLoopPolicy, Engine, EngineState, Error, InputError, Manifold, ManifoldState, Signal,
    Started, StoppedReason,
};

use crate::harness::*;

fn lab_engine() -> (Lab, Engine) {
    (
        Lab::default(),
        Engine::start(test_config()).expect("valid config"),
    )
}

// ---- starting ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_worker_starts_once_its_missing_input_is_installed() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("b", &["a"])]).await;
    assert_eq!(
        state(&engine, "b").await,
        stopped(StoppedReason::WaitingForInputs)
    );
    assert_eq!(
        lab.start_calls("b"),
        0,
        "no start is attempted without required inputs"
    );

    lab.install(&engine, &[("a", &[])]).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    assert_eq!(start_count(&engine, "b").await, 1);
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    shut_down(engine).await.expect("clean stop");
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_finds_an_optional_input_missing_waits_for_it() {
    let (lab, engine) = lab_engine();
    engine
        .install(lab.manifold_needing_optional("b", &["a"]))
        .await
        .expect("installs");
    settle().await;
    assert_eq!(lab.start_calls("b"), 1);
    assert_eq!(state(&engine, "b").await, stopped(StoppedReason::Exited));
    advance(Duration::from_secs(600)).await;
    assert_eq!(lab.start_calls("b"), 1, "missing means wait, not retry");

    lab.install(&engine, &[("a", &[])]).await;
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    assert_eq!(lab.start_calls("b"), 2);
    let report = report(&engine).await;
    assert_eq!(
        report.manifold("b").map(|m| m.last_error.clone()),
        Some(None)
    );
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_of_a_deep_graph_starts_every_worker_exactly_once() {
    let (lab, engine) = lab_engine();
    // A layered graph, installed dependents first: layer n depends on every
    // node of layer n - 1.
    let mut manifolds = Vec::new();
    for layer in (0..6).rev() {
        for index in 0..4 {
            let inputs: Vec<String> = if layer == 0 {
                Vec::new()
            } else {
                (0..4).map(|i| format!("l{}-{i}", layer - 1)).collect()
            };
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            manifolds.push(lab.manifold(&format!("l{layer}-{index}"), &inputs));
        }
    }
    engine.install_group(manifolds).await.expect("installs");
    settle().await;
    let report = report(&engine).await;
    assert_eq!(report.manifolds.len(), 24);
    for manifold in &report.manifolds {
        assert_eq!(manifold.state, ManifoldState::Started, "{}", manifold.name);
        assert_eq!(manifold.start_count, 1, "{} restarted", manifold.name);
        assert_eq!(
            lab.start_calls(&manifold.name),
            1,
            "{} started twice",
            manifold.name
        );
    }
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    shut_down(engine).await.expect("clean stop");
}

// ---- bouncing ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dependents_bounce_exactly_once_when_an_input_restarts() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])])
        .await;
    assert!(lab.end("a", Ending::Fail("flaky".into())));
    settle().await;
    // a backs off; b and c were stopped at once and wait for it.
    assert_eq!(
        state(&engine, "a").await,
        stopped(StoppedReason::BackingOff {
            remaining: Duration::from_millis(999)
        })
    );
    assert_eq!(
        state(&engine, "b").await,
        stopped(StoppedReason::WaitingForInputs)
    );
    assert_eq!(
        state(&engine, "c").await,
        stopped(StoppedReason::WaitingForInputs)
    );
    assert!(!lab.is_alive("b") && !lab.is_alive("c"));

    advance(Duration::from_secs(1)).await;
    let report = report(&engine).await;
    for (name, starts) in [("a", 2), ("b", 2), ("c", 2)] {
        let manifold = report.manifold(name).expect("installed");
        assert_eq!(manifold.state, ManifoldState::Started, "{name}");
        assert_eq!(
            manifold.start_count, starts,
            "{name} started {} times",
            manifold.start_count
        );
    }
    assert_eq!(
        report
            .manifold("a")
            .and_then(|m| m.last_error.clone())
            .as_deref(),
        Some("flaky")
    );
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_bounce_request_restarts_after_the_bounce_delay_and_bounces_dependents() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    assert!(lab.end("a", Ending::Bounce));
    settle().await;
    assert!(matches!(
        state(&engine, "a").await,
        ManifoldState::Stopped {
            reason: StoppedReason::BackingOff { .. }
        }
    ));
    advance(Duration::from_millis(10)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    assert_eq!(start_count(&engine, "b").await, 2);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_clean_exit_stays_down_until_an_input_changes() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    assert!(lab.end("b", Ending::Clean));
    advance(Duration::from_secs(600)).await;
    assert_eq!(state(&engine, "b").await, stopped(StoppedReason::Exited));
    assert_eq!(lab.start_calls("b"), 1);

    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_millis(20)).await;
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    assert_eq!(start_count(&engine, "b").await, 2);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_worker_slow_to_stop_is_never_running_beside_its_successor() {
    let (lab, engine) = lab_engine();
    lab.set_stop_delay("b", Duration::from_secs(5));
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_secs(1)).await;
    // a is back, but b's old worker is still stopping: no second b yet.
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    assert_eq!(state(&engine, "b").await, ManifoldState::Stopping);
    advance(Duration::from_secs(5)).await;
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    shut_down(engine).await.expect("clean stop");
}

// ---- failing ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_and_reset_after_a_stable_run() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[])]).await;
    // Each failure right after a start doubles the delay: 1 s, 2 s, 4 s.
    for (failures, delay_secs) in [(1, 1), (2, 2), (3, 4)] {
        assert!(lab.end("a", Ending::Fail(format!("failure {failures}"))));
        settle().await;
        let report = report(&engine).await;
        let a = report.manifold("a").expect("installed");
        assert_eq!(a.consecutive_failures, failures);
        assert_eq!(
            a.state,
            stopped(StoppedReason::BackingOff {
                remaining: Duration::from_secs(delay_secs) - Duration::from_millis(1)
            })
        );
        advance(Duration::from_secs(delay_secs) - Duration::from_millis(2)).await;
        assert!(!lab.is_alive("a"), "restarted before its delay");
        advance(Duration::from_millis(2)).await;
        assert!(lab.is_alive("a"), "not restarted after its delay");
    }
    // After running longer than backoff_reset_after, the backoff starts over.
    advance(Duration::from_secs(31)).await;
    assert!(lab.end("a", Ending::Fail("after a stable run".into())));
    settle().await;
    let report = report(&engine).await;
    assert_eq!(
        report.manifold("a").map(|a| a.consecutive_failures),
        Some(1)
    );
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worker_fails_with_its_message_and_is_restarted() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[])]).await;
    assert!(lab.end("a", Ending::Panic));
    settle().await;
    let report = report(&engine).await;
    assert_eq!(
        report
            .manifold("a")
            .and_then(|a| a.last_error.clone())
            .as_deref(),
        Some("worker panicked: lab worker told to panic")
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    shut_down(engine)
        .await
        .expect("the engine survived the panic");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_start_function_is_a_failure_too() {
    fn explode() -> Started {
        panic!("first start explodes")
    }
    check_recovery_from_a_bad_first_start(explode, "worker panicked: first start explodes").await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_wait_panics_has_failed() {
    fn broken() -> Started {
        Started::new(PanicsInWait)
    }
    check_recovery_from_a_bad_first_start(broken, "worker panicked: wait exploded").await;
}

/// Installs "a", whose first start is `first` and whose later starts run an
/// idle worker; checks that the first failure is recorded as `expected` and
/// that "a" runs again after the error delay, with the engine unharmed.
async fn check_recovery_from_a_bad_first_start(first: fn() -> Started, expected: &str) {
    let engine = Engine::start(test_config()).expect("valid config");
    let starts = Arc::new(AtomicU32::new(0));
    let counted = starts.clone();
    engine
        .install(Manifold::new("a", move |_ctx| {
            let is_first = counted.fetch_add(1, AtomicOrdering::SeqCst) == 0;
            async move {
                if is_first {
                    Ok(first())
                } else {
                    Ok(Started::new(idle_worker()))
                }
            }
        }))
        .await
        .expect("installs");
    settle().await;
    let report = report(&engine).await;
    let last_error = report.manifold("a").and_then(|a| a.last_error.clone());
    assert_eq!(last_error.as_deref(), Some(expected));
    advance(Duration::from_secs(1)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    assert_eq!(starts.load(AtomicOrdering::SeqCst), 2);
    shut_down(engine).await.expect("the engine survived");
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_is_fatal_by_default() {
    let lab = Lab::default();
    let mut config = test_config();
    config.restart_limit.max_restarts = 3;
    config.restart_limit.window = Duration::from_secs(60);
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("a", &[]), ("steady", &[])]).await;
    for _ in 0..4 {
        assert!(lab.end("a", Ending::Fail("crash".into())));
        advance(Duration::from_secs(5)).await;
    }
    let error = engine.wait().await.expect_err("the crash loop is fatal");
    match error.downcast_ref::<Error>() {
        Some(Error::CrashLoop {
            name,
            restarts,
            last_error,
            ..
        }) => {
            assert_eq!(name.as_str(), "a");
            assert_eq!(*restarts, 4);
            assert_eq!(last_error.to_string(), "crash");
        }
        other => panic!("expected a crash loop error, got {other:?}"),
    }
    assert_eq!(lab.alive_count(), 0, "every worker was stopped");
    assert!(matches!(engine.report().await, Err(Error::Stopped)));
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_can_park_the_manifold_until_an_input_changes() {
    let lab = Lab::default();
    let mut config = test_config();
    config.restart_limit.max_restarts = 2;
    config.restart_limit.on_exceeded = CrashLoopPolicy::Park;
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("input", &[]), ("a", &["input"])])
        .await;
    for _ in 0..3 {
        assert!(lab.end("a", Ending::Fail("crash".into())));
        advance(Duration::from_secs(5)).await;
    }
    assert_eq!(state(&engine, "a").await, stopped(StoppedReason::Parked));
    advance(Duration::from_secs(600)).await;
    assert_eq!(state(&engine, "a").await, stopped(StoppedReason::Parked));
    assert_eq!(state(&engine, "input").await, ManifoldState::Started);

    assert!(lab.end("input", Ending::Bounce));
    advance(Duration::from_millis(20)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    shut_down(engine)
        .await
        .expect("parking is not an engine failure");
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_missing_input_spends_no_restart_budget() {
    let lab = Lab::default();
    let mut config = test_config();
    config.restart_limit.max_restarts = 1;
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    for _ in 0..10 {
        assert!(lab.end("b", Ending::Missing));
        settle().await;
        assert_eq!(state(&engine, "b").await, stopped(StoppedReason::Exited));
        // a's worker changing lets b try again, without counting as a restart of b.
        assert!(lab.end("a", Ending::Clean));
        engine.uninstall("a").await.expect("uninstalls");
        engine
            .install(lab.manifold("a", &[]))
            .await
            .expect("installs");
        settle().await;
        assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    }
    assert_eq!(report(&engine).await.state, EngineState::Running);
    shut_down(engine).await.expect("no crash loop");
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_stops_the_engine_with_that_error() {
    let lab = Lab::default();
    let config = test_config().with_is_fatal(|error| error.to_string().starts_with("fatal"));
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    assert!(lab.end("b", Ending::Fail("fatal: disk corrupt".into())));
    let error = engine.wait().await.expect_err("fatal");
    assert_eq!(error.to_string(), "fatal: disk corrupt");
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_worst_error_seen_while_stopping_wins() {
    // Workers that fail with "severity N" when killed; higher N is worse.
    fn failing_on_kill(severity: u32) -> Manifold {
        Manifold::new(format!("w{severity}"), move |_ctx| async move {
            Ok(Started::new(TaskWorker::spawn(move |stop| async move {
                stop.cancelled().await;
                Err(WorkerError::msg(format!("severity {severity}")))
            })))
        })
    }
    fn severity(error: &WorkerError) -> u32 {
        error
            .to_string()
            .trim_start_matches("severity ")
            .parse()
            .unwrap_or(0)
    }
    let config = test_config().with_worst_error(|a, b| severity(a).cmp(&severity(b)));
    let engine = Engine::start(config).expect("valid config");
    engine
        .install_group([2, 9, 4].map(failing_on_kill))
        .await
        .expect("installs");
    settle().await;
    let error = shut_down(engine)
        .await
        .expect_err("errors while stopping are reported");
    assert_eq!(error.to_string(), "severity 9");
}

#[tokio::test(start_paused = true)]
async fn among_equally_bad_errors_the_first_wins() {
    let engine = Engine::start(test_config().with_worst_error(|_, _| Ordering::Equal))
        .expect("valid config");
    engine
        .install(Manifold::new("a", |_ctx| async {
            Ok(Started::new(TaskWorker::spawn(|stop| async move {
                stop.cancelled().await;
                Err(WorkerError::msg("first"))
            })))
        }))
        .await
        .expect("installs");
    settle().await;
    assert_eq!(
        shut_down(engine).await.expect_err("failed").to_string(),
        "first"
    );
}

// ---- stopping ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn kill_during_starts_abandons_slow_and_stuck_starts() {
    let engine = Engine::start(test_config()).expect("valid config");
    let dropped = Arc::new(AtomicU32::new(0));
    let (slow_drops, stuck_drops) = (dropped.clone(), dropped.clone());
    engine
        .install_group([
            // Slow, but would finish in an hour.
            Manifold::new("slow", move |_ctx| {
                let guard = CountOnDrop(slow_drops.clone());
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Started::new(idle_worker()))
                }
            }),
            // Ignores its token and never returns.
            Manifold::new("stuck", move |_ctx| {
                let guard = CountOnDrop(stuck_drops.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(Started::new(idle_worker()))
                }
            }),
        ])
        .await
        .expect("installs");
    settle().await;
    assert_eq!(state(&engine, "slow").await, ManifoldState::Starting);
    assert_eq!(state(&engine, "stuck").await, ManifoldState::Starting);
    let killed_at = tokio::time::Instant::now();
    shut_down(engine)
        .await
        .expect("abandoning starts is not an error");
    assert_eq!(
        killed_at.elapsed(),
        Duration::ZERO,
        "shutdown waited for a start"
    );
    assert_eq!(
        dropped.load(AtomicOrdering::SeqCst),
        2,
        "both start futures were dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_start_is_abandoned_when_its_input_goes_away() {
    let lab = Lab::default();
    let engine = Engine::start(test_config()).expect("valid config");
    engine
        .install(lab.manifold("a", &[]))
        .await
        .expect("installs");
    let starts = Arc::new(AtomicU32::new(0));
    let counted = starts.clone();
    engine
        .install(
            Manifold::new("slow", move |ctx| {
                counted.fetch_add(1, AtomicOrdering::SeqCst);
                async move {
                    ctx.require("a")?;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(Started::new(idle_worker()))
                }
            })
            .input("a"),
        )
        .await
        .expect("installs");
    settle().await;
    assert_eq!(state(&engine, "slow").await, ManifoldState::Starting);
    engine.uninstall("a").await.expect("uninstalls");
    settle().await;
    assert_eq!(
        state(&engine, "slow").await,
        stopped(StoppedReason::WaitingForInputs)
    );
    advance(Duration::from_secs(20)).await;
    assert_eq!(
        state(&engine, "slow").await,
        stopped(StoppedReason::WaitingForInputs)
    );
    assert_eq!(starts.load(AtomicOrdering::SeqCst), 1);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_the_engine_and_its_workers() {
    let lab = Lab::default();
    let engine = Engine::start(test_config()).expect("valid config");
    lab.install(&engine, &[("a", &[])]).await;
    assert!(lab.is_alive("a"));
    drop(engine);
    settle().await;
    assert!(!lab.is_alive("a"));
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        0
    );
}

// ---- installing -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn install_rejects_duplicates_cycles_and_bad_names() {
    let (lab, engine) = lab_engine();
    engine
        .install_group([lab.manifold("a", &["b"]), lab.manifold("b", &["c"])])
        .await
        .expect("installs");

    let duplicate = engine.install(lab.manifold("a", &[])).await;
    assert!(matches!(duplicate, Err(Error::AlreadyInstalled { ref name }) if name.as_str() == "a"));

    let cycle = engine
        .install(lab.manifold("c", &["a"]))
        .await
        .expect_err("cycle");
    assert_eq!(
        cycle.to_string(),
        "installing would close the dependency cycle c -> a -> b -> c"
    );
    let own = engine
        .install(lab.manifold("d", &["d"]))
        .await
        .expect_err("cycle");
    assert_eq!(
        own.to_string(),
        "installing would close the dependency cycle d -> d"
    );

    let bad = engine.install(lab.manifold("bad name", &[])).await;
    assert!(matches!(bad, Err(Error::InvalidName(_))), "{bad:?}");
    let bad_input = engine.install(lab.manifold("e", &["x//y"])).await;
    assert!(
        matches!(bad_input, Err(Error::InvalidName(_))),
        "{bad_input:?}"
    );
    let twice = engine.install(lab.manifold("e", &["a", "a"])).await;
    assert!(
        matches!(twice, Err(Error::DuplicateInput { .. })),
        "{twice:?}"
    );

    // c can still be installed without the cycle.
    lab.install(&engine, &[("c", &[])]).await;
    let report = report(&engine).await;
    let names: Vec<&str> = report.manifolds.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(report.manifolds.iter().all(|m| m.state.is_started()));
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn install_group_is_all_or_nothing() {
    let (lab, engine) = lab_engine();
    engine
        .install(lab.manifold("x", &[]))
        .await
        .expect("installs");
    let cases = [
        // The last member duplicates an installed manifold.
        vec![
            lab.manifold("p", &[]),
            lab.manifold("q", &["p"]),
            lab.manifold("x", &[]),
        ],
        // Two members close a cycle between them.
        vec![lab.manifold("p", &["q"]), lab.manifold("q", &["p"])],
        // A member appears twice.
        vec![lab.manifold("p", &[]), lab.manifold("p", &[])],
        // A member has an invalid name.
        vec![lab.manifold("p", &[]), lab.manifold("", &[])],
    ];
    for group in cases {
        assert!(engine.install_group(group).await.is_err());
        settle().await;
        let report = report(&engine).await;
        let names: Vec<&str> = report.manifolds.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["x"], "a failed group left something behind");
        assert!(!lab.is_alive("p") && !lab.is_alive("q"));
    }
    // The same names install fine afterwards, proving no placeholder leaked.
    lab.install(&engine, &[("q", &["p"]), ("p", &[])]).await;
    assert_eq!(state(&engine, "q").await, ManifoldState::Started);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn uninstall_stops_the_worker_and_its_dependents_wait() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    engine.uninstall("a").await.expect("uninstalls");
    assert!(
        !lab.is_alive("a"),
        "uninstall returns after the worker ended"
    );
    settle().await;
    assert_eq!(
        state(&engine, "b").await,
        stopped(StoppedReason::WaitingForInputs)
    );
    assert!(!lab.is_alive("b"));
    let report = report(&engine).await;
    assert_eq!(report.manifolds.len(), 1);
    assert_eq!(
        report.manifold("b").map(|b| b.inputs[0].installed),
        Some(false)
    );

    assert!(matches!(
        engine.uninstall("a").await,
        Err(Error::NotInstalled { ref name }) if name == "a"
    ));
    assert!(matches!(
        engine.uninstall("no such").await,
        Err(Error::NotInstalled { .. })
    ));
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_worker_can_ask_to_be_uninstalled() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    assert!(lab.end("a", Ending::Uninstall));
    settle().await;
    let report = report(&engine).await;
    assert!(report.manifold("a").is_none());
    assert_eq!(
        report.manifold("b").map(|b| b.state),
        Some(stopped(StoppedReason::WaitingForInputs))
    );
    // The name is free again.
    engine
        .install(lab.manifold("a", &[]))
        .await
        .expect("installs again");
    settle().await;
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    shut_down(engine).await.expect("clean stop");
}

// ---- inputs -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn inputs_are_typed_and_must_be_declared() {
    let (lab, engine) = lab_engine();
    engine
        .install(lab.manifold("a", &[]))
        .await
        .expect("installs");
    engine
        .install(
            Manifold::new("wrong-type", |ctx| async move {
                let _: String = ctx.get("a")?;
                Ok(Started::new(idle_worker()))
            })
            .input("a"),
        )
        .await
        .expect("installs");
    engine
        .install(Manifold::new("undeclared", |ctx| async move {
            let _: Token = ctx.get("a")?;
            Ok(Started::new(idle_worker()))
        }))
        .await
        .expect("installs");
    engine
        .install(
            Manifold::new("existence", |ctx| async move {
                ctx.require("a")?;
                Ok(Started::new(idle_worker()))
            })
            .input("a"),
        )
        .await
        .expect("installs");
    settle().await;
    let report = report(&engine).await;
    let error_of = |name: &str| report.manifold(name).and_then(|m| m.last_error.clone());
    assert_eq!(
        error_of("wrong-type").as_deref(),
        Some("input a offers it::harness::Token, not the requested alloc::string::String")
    );
    assert_eq!(
        error_of("undeclared").as_deref(),
        Some("manifold undeclared asked for input a, which it did not declare")
    );
    assert_eq!(
        report.manifold("existence").map(|m| m.state),
        Some(ManifoldState::Started)
    );
    let mismatch = InputError::TypeMismatch {
        input: "a".into(),
        requested: "x",
        offered: "y",
    };
    assert!(WorkerError::from(mismatch).find::<InputError>().is_some());
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_filter_can_turn_an_error_into_another() {
    let (lab, engine) = lab_engine();
    engine
        .install(lab.manifold("a", &[]).filter(|error| {
            if error.to_string() == "connection reset" {
                Signal::Bounce.into()
            } else {
                error
            }
        }))
        .await
        .expect("installs");
    settle().await;
    assert!(lab.end("a", Ending::Fail("connection reset".into())));
    advance(Duration::from_millis(20)).await;
    // Bounced after 10 ms, not backed off for 1 s, and not recorded as a failure.
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    let report = report(&engine).await;
    assert_eq!(
        report.manifold("a").map(|a| a.consecutive_failures),
        Some(0)
    );
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn repeated_bounces_ripple_through_a_long_chain_once_each() {
    let mut config = test_config();
    config.bounce_delay = Duration::ZERO;
    // Bounce requests count against the restart limit; this test makes many.
    config.restart_limit.max_restarts = 100;
    let lab = Lab::default();
    let engine = Engine::start(config).expect("valid config");
    let depth = 50;
    let manifolds: Vec<Manifold> = (0..depth)
        .map(|node| {
            let input = format!("c{}", node.max(1) - 1);
            let inputs: Vec<&str> = if node == 0 {
                vec![]
            } else {
                vec![input.as_str()]
            };
            lab.manifold(&format!("c{node}"), &inputs)
        })
        .collect();
    engine.install_group(manifolds).await.expect("installs");
    settle().await;
    for round in 1..=20 {
        assert!(lab.end("c0", Ending::Bounce), "round {round}");
        settle().await;
        let report = report(&engine).await;
        for manifold in &report.manifolds {
            assert_eq!(
                manifold.state,
                ManifoldState::Started,
                "round {round}: {}",
                manifold.name
            );
            assert_eq!(
                manifold.start_count,
                round + 1,
                "round {round}: {}",
                manifold.name
            );
        }
    }
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    shut_down(engine).await.expect("clean stop");
}

// ---- reporting ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_report_includes_worker_reports_and_does_not_wait_for_a_stuck_one() {
    fn reporting(name: &str, answer: Answer) -> Manifold {
        Manifold::new(name, move |_ctx| async move {
            Ok(Started::new(Reporting {
                inner: idle_worker(),
                answer,
            }))
        })
    }
    let mut config = test_config();
    config.report_timeout = Duration::from_secs(2);
    let engine = Engine::start(config).expect("valid config");
    engine
        .install_group([
            reporting("chatty", Answer::Promptly),
            reporting("stuck", Answer::Never).input("chatty"),
            reporting("broken", Answer::Panic),
        ])
        .await
        .expect("installs");
    settle().await;
    let asked_at = tokio::time::Instant::now();
    let report = engine.report().await.expect("reports");
    assert_eq!(
        asked_at.elapsed(),
        Duration::from_secs(2),
        "waited exactly the deadline"
    );
    let chatty = report.manifold("chatty").expect("installed");
    assert_eq!(chatty.worker, Some(serde_json::json!({ "queue": 3 })));
    assert_eq!(
        report.manifold("stuck").and_then(|m| m.worker.clone()),
        Some(serde_json::json!({ "error": "report timed out" }))
    );
    assert_eq!(
        report.manifold("broken").and_then(|m| m.worker.clone()),
        Some(serde_json::json!({ "error": "worker panicked: report exploded" }))
    );
    let stuck = report.manifold("stuck").expect("installed");
    assert_eq!(stuck.inputs[0].generation, chatty.generation);
    assert_eq!(stuck.inputs[0].snapshot_generation, chatty.generation);
    assert!(stuck.running_for.is_some());

    let dot = report.to_dot();
    assert!(dot.contains("\"chatty\" -> \"stuck\""), "{dot}");
    assert!(dot.contains("stuck\\nstarted"), "{dot}");
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["manifolds"][0]["name"], "broken");
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn the_engine_reports_itself_as_a_worker() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[])]).await;
    let as_worker: Arc<dyn Worker> = Arc::new(engine.clone());
    let value = as_worker.report().expect("the engine reports").await;
    assert_eq!(value["state"], "running");
    assert_eq!(value["manifolds"][0]["name"], "a");
    as_worker.kill();
    as_worker.wait().await.expect("clean stop");
    assert!(matches!(
        engine.install(lab.manifold("b", &[])).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(engine.uninstall("a").await, Err(Error::Stopped)));
}

#[test]
fn an_invalid_config_is_refused_before_anything_runs() {
    let mut config = test_config();
    config.backoff_factor = 0.1;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    match Engine::start(config) {
        Err(Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "backoff_factor");
            assert!(reason.contains("0.1"), "{reason}");
        }
        other => panic!("expected an invalid config error, got {other:?}"),
    }
}

// ---- helpers ------------------------------------------------------------------

/// A worker that runs until killed.
fn idle_worker() -> TaskWorker {
    TaskWorker::spawn(|stop| async move {
        stop.cancelled().await;
        Ok(())
    })
}

/// A worker whose `wait` panics: a broken implementation of the contract.
struct PanicsInWait;

impl Worker for PanicsInWait {
    fn kill(&self) {}

    fn wait(&self) -> WaitFuture<'_> {
        Box::pin(async {
            tokio::task::yield_now().await;
            panic!("wait exploded")
        })
    }
}

/// Counts its drops: proves a future was dropped.
struct CountOnDrop(Arc<AtomicU32>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, AtomicOrdering::SeqCst);
    }
}

/// A worker with a report of its own, which may never answer or may panic.
struct Reporting {
    inner: TaskWorker,
    answer: Answer,
}

#[derive(Clone, Copy)]
enum Answer {
    Promptly,
    Never,
    Panic,
}

impl Worker for Reporting {
    fn kill(&self) {
        self.inner.kill();
    }

    fn wait(&self) -> WaitFuture<'_> {
        self.inner.wait()
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let answer = self.answer;
        Some(Box::pin(async move {
            match answer {
                Answer::Promptly => {}
                Answer::Never => std::future::pending::<()>().await,
                Answer::Panic => panic!("report exploded"),
            }
            serde_json::json!({ "queue": 3 })
        }))
    }
}

// ---- callbacks that panic -------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_panicking_filter_fails_its_manifold_not_the_engine() {
    let lab = Lab::default();
    // Even an is_fatal that takes every panic for fatal does not stop the
    // engine over a callback's bug: it is not asked.
    let config = test_config().with_is_fatal(|error| error.to_string().contains("panicked"));
    let engine = Engine::start(config).expect("valid config");
    engine
        .install(lab.manifold("a", &[]).filter(|error| {
            assert!(!error.to_string().contains("trap"), "the filter fell in");
            error
        }))
        .await
        .expect("installs");
    lab.install(&engine, &[("b", &[])]).await;
    assert!(lab.end("a", Ending::Fail("trap".into())));
    settle().await;
    let report = report(&engine).await;
    let a = report.manifold("a").expect("installed");
    assert_eq!(a.consecutive_failures, 1);
    let last_error = a.last_error.clone().unwrap_or_default();
    assert!(
        last_error.contains("the manifold's error filter panicked: the filter fell in"),
        "{last_error}"
    );
    assert!(matches!(
        a.state,
        ManifoldState::Stopped {
            reason: StoppedReason::BackingOff { .. }
        }
    ));
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    advance(Duration::from_secs(1)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    shut_down(engine).await.expect("clean stop");
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_is_fatal_fails_the_manifold_and_is_not_fatal() {
    let lab = Lab::default();
    let config = test_config().with_is_fatal(|error| {
        assert!(!error.to_string().contains("trap"), "is_fatal fell in");
        true
    });
    let engine = Engine::start(config).expect("valid config");
    lab.set_fail_on_stop("b");
    lab.install(&engine, &[("a", &[]), ("b", &[])]).await;
    assert!(lab.end("a", Ending::Fail("trap".into())));
    settle().await;
    let report = report(&engine).await;
    assert_eq!(report.state, EngineState::Running);
    let last_error = report
        .manifold("a")
        .and_then(|a| a.last_error.clone())
        .unwrap_or_default();
    assert!(
        last_error.contains("EngineConfig::is_fatal panicked: is_fatal fell in"),
        "{last_error}"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    // A non-trapped error is still fatal, even one returned while stopping.
    let outcome = engine.uninstall("b").await.expect("uninstalls");
    assert_eq!(
        outcome.and_then(Result::err).map(|e| e.to_string()),
        Some("b failed while stopping".to_owned())
    );
    settle().await;
    let error = shut_down(engine).await.expect_err("fatal");
    assert_eq!(error.to_string(), "b failed while stopping");
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worst_error_keeps_the_error_seen_first() {
    let lab = Lab::default();
    let config = test_config().with_worst_error(|_, _| panic!("worst_error fell in"));
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("fast", &[]), ("slow", &[])]).await;
    lab.set_fail_on_stop("fast");
    lab.set_fail_on_stop("slow");
    lab.set_stop_delay("slow", Duration::from_millis(5));
    lab.end("fast", Ending::Bounce);
    lab.end("slow", Ending::Bounce);
    // Bounced once, so both run workers that read the fail-on-stop setting.
    advance(Duration::from_millis(20)).await;
    engine.kill();
    let error = engine.wait().await.expect_err("both failed while stopping");
    assert_eq!(error.to_string(), "fast failed while stopping");
    assert_eq!(lab.alive_count(), 0, "wait returned with a worker alive");
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        0
    );
}

// ---- backoff and input changes ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_input_change_cuts_a_backoff_short_but_keeps_the_failure_count() {
    let lab = Lab::default();
    let mut config = test_config();
    config.error_delay = Duration::from_secs(30);
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    assert!(lab.end("b", Ending::Fail("needs a fresh a".into())));
    settle().await;
    assert!(matches!(
        state(&engine, "b").await,
        ManifoldState::Stopped {
            reason: StoppedReason::BackingOff { remaining }
        } if remaining > Duration::from_secs(29)
    ));
    // Its input restarts: b starts after the bounce delay, not after 30 s.
    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_millis(30)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    // The failure count was not reset: the next failure waits twice as long.
    assert!(lab.end("b", Ending::Fail("again".into())));
    settle().await;
    let report = report(&engine).await;
    let b = report.manifold("b").expect("installed");
    assert_eq!(b.consecutive_failures, 2);
    assert!(matches!(
        b.state,
        ManifoldState::Stopped {
            reason: StoppedReason::BackingOff { remaining }
        } if remaining > Duration::from_secs(59)
    ));
    // A required input going away ends the wait too: b starts as soon as it
    // is back.
    engine.uninstall("a").await.expect("uninstalls");
    settle().await;
    assert_eq!(
        state(&engine, "b").await,
        stopped(StoppedReason::WaitingForInputs)
    );
    lab.install(&engine, &[("a", &[])]).await;
    settle().await;
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_backoff_shorter_than_the_bounce_delay_is_not_lengthened() {
    let lab = Lab::default();
    let mut config = test_config();
    config.error_delay = Duration::from_millis(5);
    config.bounce_delay = Duration::from_millis(50);
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("c", &[])]).await;
    engine
        .install(lab.manifold("b", &[]).optional_input("c"))
        .await
        .expect("installs");
    settle().await;
    // b fails and waits 5 ms; meanwhile its optional input restarts, which
    // takes 50 ms: b's wait stays 5 ms.
    assert!(lab.end("b", Ending::Fail("brief".into())));
    assert!(lab.end("c", Ending::Bounce));
    settle().await;
    advance(Duration::from_millis(5)).await;
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    assert!(!lab.is_alive("c"), "c is still waiting out its bounce");
    shut_down(engine).await.expect("clean stop");
}

// ---- reports of workers being stopped -------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_worker_slow_to_stop_keeps_its_report_and_running_time_until_it_ends() {
    let engine = Engine::start(test_config()).expect("valid config");
    engine
        .install(Manifold::new("slow", |_ctx| async {
            Ok(Started::new(Reporting {
                inner: TaskWorker::spawn(|stop| async move {
                    stop.cancelled().await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                }),
                answer: Answer::Promptly,
            }))
        }))
        .await
        .expect("installs");
    advance(Duration::from_secs(10)).await;
    let uninstalling = tokio::spawn({
        let engine = engine.clone();
        async move { engine.uninstall("slow").await }
    });
    advance(Duration::from_secs(1)).await;
    let report = report(&engine).await;
    let slow = report.manifold("slow").expect("still installed");
    assert_eq!(slow.state, ManifoldState::Stopping);
    assert_eq!(slow.worker, Some(serde_json::json!({ "queue": 3 })));
    assert!(
        slow.running_for
            .is_some_and(|ran| ran >= Duration::from_secs(11)),
        "{:?}",
        slow.running_for
    );
    assert_eq!(slow.generation, None, "withdrawn from dependents");
    let ended = uninstalling.await.expect("joins").expect("uninstalls");
    assert!(matches!(ended, Some(Ok(()))), "{ended:?}");
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn an_engine_stopping_reports_the_workers_it_waits_for() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[])]).await;
    lab.set_stop_delay("a", Duration::from_secs(5));
    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_millis(20)).await;
    engine.kill();
    settle().await;
    let report = report(&engine).await;
    assert_eq!(report.state, EngineState::Stopping);
    let a = report.manifold("a").expect("installed");
    assert_eq!(a.state, ManifoldState::Stopping);
    assert!(a.running_for.is_some());
    engine.wait().await.expect("clean stop");
    assert_eq!(lab.alive_count(), 0);
}

// ---- the order of stopping -------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_engine_stops_dependents_before_their_inputs() {
    let (lab, engine) = lab_engine();
    let graph: &[(&str, &[&str])] = &[
        ("store", &[]),
        ("server", &["store"]),
        ("advertiser", &["server", "store"]),
        ("other", &[]),
    ];
    lab.install(&engine, graph).await;
    for name in ["store", "server", "advertiser", "other"] {
        lab.set_stop_delay(name, Duration::from_millis(100));
    }
    // Bounce each once so the running workers read their stop delays.
    for name in ["store", "server", "advertiser", "other"] {
        lab.end(name, Ending::Bounce);
    }
    advance(Duration::from_secs(1)).await;
    assert_eq!(lab.alive_count(), 4);
    let running = lab.alive_tokens();
    engine.kill();
    // The advertiser and the unrelated worker are stopped first; the store
    // and its server wait their turn.
    advance(Duration::from_millis(50)).await;
    assert!(lab.is_alive("store") && lab.is_alive("server"));
    advance(Duration::from_millis(100)).await;
    assert!(!lab.is_alive("advertiser") && !lab.is_alive("other"));
    assert!(lab.is_alive("store"), "the store stopped before its server");
    engine.wait().await.expect("clean stop");
    let inputs_of = |manifold: &str| -> Vec<String> {
        graph
            .iter()
            .find(|(name, _)| *name == manifold)
            .map(|(_, inputs)| inputs.iter().map(|input| (*input).to_owned()).collect())
            .unwrap_or_default()
    };
    let violations = lab.stop_order_violations(&running, inputs_of);
    assert!(violations.is_empty(), "{violations:?}");
    // Three levels of 100 ms each: the store was the last to end.
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stuck_dependent_holds_up_its_inputs_only_until_the_stop_timeout() {
    let lab = Lab::default();
    let mut config = test_config();
    config.stop_timeout = Duration::from_secs(1);
    let engine = Engine::start(config).expect("valid config");
    lab.set_stop_delay("stuck", Duration::from_secs(10));
    lab.install(&engine, &[("store", &[]), ("stuck", &["store"])])
        .await;
    let killed_at = tokio::time::Instant::now();
    engine.kill();
    advance(Duration::from_millis(900)).await;
    assert!(lab.is_alive("store"), "stopped before the stop timeout");
    advance(Duration::from_millis(200)).await;
    assert!(
        !lab.is_alive("store"),
        "still held up after the stop timeout"
    );
    assert!(lab.is_alive("stuck"));
    // wait still waits for the stuck worker to end.
    engine.wait().await.expect("clean stop");
    assert!(killed_at.elapsed() >= Duration::from_secs(10));
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn starts_under_way_are_abandoned_before_their_inputs_stop() {
    let lab = Lab::default();
    let engine = Engine::start(test_config()).expect("valid config");
    lab.install(&engine, &[("store", &[])]).await;
    lab.set_stop_delay("store", Duration::from_millis(100));
    lab.end("store", Ending::Bounce);
    advance(Duration::from_millis(20)).await;
    // A start that never finishes, holding the store's resource; when it is
    // abandoned it notes whether the store had been killed already.
    let store_killed_first = Arc::new(std::sync::Mutex::new(None));
    let noted = Arc::clone(&store_killed_first);
    let watcher = lab.clone();
    engine
        .install(
            Manifold::new("slow-start", move |ctx| {
                let guard = NoteOnDrop {
                    lab: watcher.clone(),
                    noted: Arc::clone(&noted),
                };
                async move {
                    let _guard = guard;
                    let _store: Token = ctx.get("store")?;
                    std::future::pending::<Result<Started, WorkerError>>().await
                }
            })
            .input("store"),
        )
        .await
        .expect("installs");
    settle().await;
    assert_eq!(state(&engine, "slow-start").await, ManifoldState::Starting);
    engine.kill();
    engine.wait().await.expect("clean stop");
    assert_eq!(
        *store_killed_first.lock().expect("not poisoned"),
        Some(false),
        "the start was abandoned after its input was killed"
    );
    assert_eq!(lab.alive_count(), 0);
}

/// Notes, when dropped, whether the store's worker had been killed.
struct NoteOnDrop {
    lab: Lab,
    noted: Arc<std::sync::Mutex<Option<bool>>>,
}

impl Drop for NoteOnDrop {
    fn drop(&mut self) {
        let killed = self.lab.is_killed("store");
        if let Ok(mut noted) = self.noted.lock() {
            *noted = Some(killed);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_with_an_input_never_installed_stops_cleanly() {
    let (lab, engine) = lab_engine();
    engine
        .install(lab.manifold("a", &[]).optional_input("metrics"))
        .await
        .expect("installs");
    lab.install(&engine, &[("b", &["a"])]).await;
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    shut_down(engine).await.expect("clean stop");
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_engine_killed_while_a_dependent_of_an_uninstalled_input_stops_ends_cleanly() {
    let (lab, engine) = lab_engine();
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    lab.set_stop_delay("b", Duration::from_millis(100));
    lab.end("b", Ending::Bounce);
    advance(Duration::from_millis(20)).await;
    // a goes; b, losing its input, takes 100 ms to stop; the engine is
    // killed meanwhile, with a now a placeholder.
    engine.uninstall("a").await.expect("uninstalls");
    assert!(lab.is_alive("b"));
    engine.kill();
    engine.wait().await.expect("clean stop, no panic");
    assert_eq!(lab.alive_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_no_bounce_delay_a_cut_backoff_starts_at_once() {
    let lab = Lab::default();
    let mut config = test_config();
    config.error_delay = Duration::from_secs(30);
    config.bounce_delay = Duration::ZERO;
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    assert!(lab.end("b", Ending::Fail("needs a fresh a".into())));
    settle().await;
    assert!(lab.end("a", Ending::Bounce));
    settle().await;
    settle().await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    assert_eq!(state(&engine, "b").await, ManifoldState::Started);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_cut_backoff_still_counts_against_the_restart_limit() {
    let lab = Lab::default();
    let mut config = test_config();
    config.error_delay = Duration::from_secs(30);
    config.restart_limit.max_restarts = 3;
    config.restart_limit.on_exceeded = CrashLoopPolicy::Park;
    let engine = Engine::start(config).expect("valid config");
    lab.install(&engine, &[("a", &[]), ("b", &["a"])]).await;
    // b fails at every start, and a bounces after each failure, cutting the
    // backoff each time: the fourth failure within the window parks b.
    for round in 0..4 {
        assert!(
            lab.end("b", Ending::Fail(format!("failure {round}"))),
            "round {round}"
        );
        settle().await;
        assert!(lab.end("a", Ending::Bounce));
        advance(Duration::from_millis(50)).await;
    }
    assert_eq!(state(&engine, "b").await, stopped(StoppedReason::Parked));
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_worker_asking_to_be_uninstalled_as_it_is_bounced_is_uninstalled() {
    let engine = Engine::start(test_config()).expect("valid config");
    let lab = Lab::default();
    lab.install(&engine, &[("a", &[])]).await;
    engine
        .install(
            Manifold::new("b", |_ctx| async {
                Ok(Started::new(TaskWorker::spawn(|stop| async move {
                    stop.cancelled().await;
                    Err(Signal::Uninstall.into())
                })))
            })
            .input("a"),
        )
        .await
        .expect("installs");
    settle().await;
    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_millis(50)).await;
    assert!(report(&engine).await.manifold("b").is_none());
    shut_down(engine).await.expect("clean stop");
}
