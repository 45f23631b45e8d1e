//! Failures callers report: they count with the checks, and the cap keeps a
//! burst of them from emptying the healthy set.

use flotilla_viewreg::{Health, StaticLocator};

use crate::harness::{Scripted, TestRegistry, config, ep, settle, start, until_health};

async fn report(registry: &TestRegistry, endpoint: u8, times: usize) {
    for _ in 0..times {
        registry.report_failure(&ep(endpoint)).expect("queued");
    }
    settle().await;
}

async fn all_healthy(views: u8) -> (TestRegistry, Scripted) {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new((1..=views).map(ep)), &prober, config());
    crate::harness::until(&registry, |s| s.summary().healthy == usize::from(views)).await;
    (registry, prober)
}

#[tokio::test(start_paused = true)]
async fn one_reported_failure_such_as_a_dropped_connection_ejects_nothing() {
    let (registry, _prober) = all_healthy(3).await;
    report(&registry, 1, 1).await;
    assert_eq!(registry.summary().healthy, 3);
}

#[tokio::test(start_paused = true)]
async fn reports_reaching_the_threshold_eject_before_the_next_check() {
    let (registry, prober) = all_healthy(3).await;
    let checks = prober.checks_of(&ep(1)).len();
    report(&registry, 1, 3).await;
    let snapshot = registry.snapshot();
    assert_eq!(
        crate::harness::health_of(&snapshot, &ep(1)),
        Some(Health::Unhealthy)
    );
    assert_eq!(
        prober.checks_of(&ep(1)).len(),
        checks,
        "no check was needed"
    );
    let view = snapshot.view(&ep(1)).expect("listed");
    assert_eq!(view.last_error(), Some("failures reported by callers"));
    // The server is fine: two successful checks bring it back.
    until_health(&registry, &ep(1), Health::Healthy).await;
}

#[tokio::test(start_paused = true)]
async fn a_success_between_reports_resets_the_count() {
    let (registry, _prober) = all_healthy(3).await;
    report(&registry, 1, 2).await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await; // a check succeeds
    report(&registry, 1, 2).await;
    assert_eq!(registry.summary().healthy, 3);
}

#[tokio::test(start_paused = true)]
async fn the_cap_holds_reports_to_a_share_of_the_views() {
    // 10 % of 10 views: one may be held unhealthy by reports.
    let (registry, _prober) = all_healthy(10).await;
    report(&registry, 1, 3).await;
    report(&registry, 2, 3).await;
    report(&registry, 3, 5).await;
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.summary().healthy, 9);
    assert_eq!(
        crate::harness::health_of(&snapshot, &ep(1)),
        Some(Health::Unhealthy)
    );
    assert_eq!(
        crate::harness::health_of(&snapshot, &ep(2)),
        Some(Health::Healthy)
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_report_lets_the_next_failed_check_decide() {
    let (registry, prober) = all_healthy(10).await;
    report(&registry, 1, 3).await;
    report(&registry, 2, 3).await;
    prober.set(&ep(2), crate::harness::Answer::Fail);
    let snapshot = until_health(&registry, &ep(2), Health::Unhealthy).await;
    let error = snapshot
        .view(&ep(2))
        .and_then(|v| v.last_error())
        .unwrap_or("");
    assert!(
        error.contains("refused"),
        "an active check ejected it: {error}"
    );
}

#[tokio::test(start_paused = true)]
async fn reports_never_eject_the_last_healthy_view() {
    let (registry, _prober) = all_healthy(1).await;
    report(&registry, 1, 20).await;
    assert_eq!(registry.summary().healthy, 1);
}

#[tokio::test(start_paused = true)]
async fn a_report_for_an_unknown_endpoint_is_ignored() {
    let (registry, _prober) = all_healthy(2).await;
    let stamp = registry.last_changed();
    report(&registry, 9, 5).await;
    assert_eq!(registry.last_changed(), stamp);
}
