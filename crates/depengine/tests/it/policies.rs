//! Restart policies (permanent, transient, temporary) and what `uninstall`
//! says about how the worker ended.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_depengine::{Engine, ManifoldState, RestartPolicy, StoppedReason};

use crate::harness::*;

fn engine() -> (Lab, Engine) {
    (
        Lab::default(),
        Engine::start(test_config()).expect("valid config"),
    )
}

async fn install(lab: &Lab, engine: &Engine, name: &str, inputs: &[&str], policy: RestartPolicy) {
    engine
        .install(lab.manifold(name, inputs).restart(policy))
        .await
        .expect("installs");
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn a_transient_worker_that_succeeds_is_finished_for_good() {
    let (lab, engine) = engine();
    lab.install(&engine, &[("a", &[])]).await;
    install(&lab, &engine, "job", &["a"], RestartPolicy::Transient).await;
    assert!(lab.end("job", Ending::Clean));
    settle().await;
    assert_eq!(
        state(&engine, "job").await,
        stopped(StoppedReason::Completed)
    );
    // An input change does not start it again (a permanent one would).
    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_secs(5)).await;
    assert_eq!(state(&engine, "a").await, ManifoldState::Started);
    assert_eq!(
        state(&engine, "job").await,
        stopped(StoppedReason::Completed)
    );
    assert_eq!(lab.start_calls("job"), 1);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_transient_worker_is_restarted_after_a_failure_and_bounced_by_its_inputs() {
    let (lab, engine) = engine();
    lab.install(&engine, &[("a", &[])]).await;
    install(&lab, &engine, "job", &["a"], RestartPolicy::Transient).await;
    assert!(lab.end("job", Ending::Fail("try again".into())));
    advance(Duration::from_millis(1_010)).await;
    assert_eq!(state(&engine, "job").await, ManifoldState::Started);
    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_millis(50)).await;
    assert_eq!(state(&engine, "job").await, ManifoldState::Started);
    assert_eq!(lab.start_calls("job"), 3);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_temporary_worker_is_uninstalled_however_it_ends() {
    for ending in [
        Ending::Clean,
        Ending::Fail("boom".into()),
        Ending::Panic,
        Ending::Bounce,
        Ending::Missing,
    ] {
        let (lab, engine) = engine();
        install(&lab, &engine, "once", &[], RestartPolicy::Temporary).await;
        lab.install(&engine, &[("after", &["once"])]).await;
        assert_eq!(state(&engine, "after").await, ManifoldState::Started);
        assert!(lab.end("once", ending.clone()));
        advance(Duration::from_secs(5)).await;
        let report = report(&engine).await;
        assert!(
            report.manifold("once").is_none(),
            "{ending:?}: still installed"
        );
        assert_eq!(lab.start_calls("once"), 1, "{ending:?}: restarted");
        assert_eq!(
            report.manifold("after").map(|m| m.state),
            Some(stopped(StoppedReason::WaitingForInputs)),
            "{ending:?}"
        );
        shut_down(engine).await.expect("clean stop");
    }
}

#[tokio::test(start_paused = true)]
async fn a_temporary_worker_whose_input_changes_is_stopped_and_uninstalled() {
    let (lab, engine) = engine();
    lab.install(&engine, &[("a", &[])]).await;
    install(&lab, &engine, "once", &["a"], RestartPolicy::Temporary).await;
    assert!(lab.end("a", Ending::Bounce));
    advance(Duration::from_secs(1)).await;
    assert!(report(&engine).await.manifold("once").is_none());
    assert!(!lab.is_alive("once"));
    assert_eq!(lab.start_calls("once"), 1);
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_of_a_temporary_worker_still_stops_the_engine() {
    let lab = Lab::default();
    let config = test_config().with_is_fatal(|error| error.to_string() == "disk on fire");
    let engine = Engine::start(config).expect("valid config");
    install(&lab, &engine, "once", &[], RestartPolicy::Temporary).await;
    assert!(lab.end("once", Ending::Fail("disk on fire".into())));
    let error = engine.wait().await.expect_err("fatal");
    assert_eq!(error.to_string(), "disk on fire");
}

#[tokio::test(start_paused = true)]
async fn uninstall_returns_how_the_worker_ended() {
    let (lab, engine) = engine();
    lab.install(&engine, &[("clean", &[]), ("failing", &[])])
        .await;
    lab.set_fail_on_stop("failing");
    // The lab reads the fail-on-stop setting when a worker starts.
    assert!(lab.end("failing", Ending::Bounce));
    advance(Duration::from_millis(20)).await;
    engine
        .install(lab.manifold("waiting", &["nothing"]))
        .await
        .expect("installs");

    let clean = engine.uninstall("clean").await.expect("uninstalls");
    assert!(matches!(clean, Some(Ok(()))), "{clean:?}");
    let failing = engine.uninstall("failing").await.expect("uninstalls");
    assert_eq!(
        failing.and_then(Result::err).map(|error| error.to_string()),
        Some("failing failed while stopping".to_owned())
    );
    let waiting = engine.uninstall("waiting").await.expect("uninstalls");
    assert!(waiting.is_none(), "no worker was running: {waiting:?}");
    shut_down(engine).await.expect("clean stop");
}

#[test]
fn the_default_policy_is_permanent() {
    let lab = Lab::default();
    assert_eq!(
        lab.manifold("a", &[]).restart_policy(),
        RestartPolicy::Permanent
    );
}
