//! The health rules: first check, thresholds, "not serving", no health
//! service, what an unhealthy view keeps, backoff, and a hanging prober.

use std::time::Duration;

use flotilla_viewreg::{Health, Partition, StaticLocator};
use tokio::time::Instant;

use crate::harness::{Answer, Scripted, config, ep, features, serve, start, until_health};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn a_new_view_is_healthy_after_one_success() {
    let prober = Scripted::default();
    prober.set(&ep(1), serve(&["kv"]));
    let t0 = Instant::now();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let healthy = until_health(&registry, &ep(1), Health::Healthy).await;
    assert_eq!(healthy.changed_at(), t0, "the first check runs at once");
    assert_eq!(prober.checks_of(&ep(1)).len(), 1);
    assert_eq!(registry.healthy_views(&features(&["kv"])).len(), 1);
    assert!(registry.healthy_views(&features(&["kv", "sql"])).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_new_view_failing_its_first_check_is_unhealthy_at_once() {
    let prober = Scripted::default();
    prober.set(&ep(1), Answer::Fail);
    let t0 = Instant::now();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let snapshot = until_health(&registry, &ep(1), Health::Unhealthy).await;
    assert_eq!(snapshot.changed_at(), t0);
    let view = snapshot.view(&ep(1)).expect("listed");
    assert!(view.last_error().is_some_and(|e| e.contains("refused")));
}

#[tokio::test(start_paused = true)]
async fn three_failures_turn_a_healthy_view_unhealthy_within_the_bound() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    until_health(&registry, &ep(1), Health::Healthy).await;
    let died = Instant::now();
    prober.set(&ep(1), Answer::Fail);
    let snapshot = until_health(&registry, &ep(1), Health::Unhealthy).await;
    // Checks at 5, 10 and 15 s fail; the bound is 3 × (5 s + 1 s).
    assert_eq!(snapshot.changed_at() - died, secs(15));
    assert!(snapshot.changed_at() - died <= secs(18));
    assert_eq!(prober.checks_of(&ep(1)).len(), 4);
}

#[tokio::test(start_paused = true)]
async fn two_failures_then_a_success_keep_a_view_healthy() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let healthy = until_health(&registry, &ep(1), Health::Healthy).await;
    prober.set(&ep(1), Answer::Fail);
    tokio::time::sleep(secs(11)).await; // the checks at 5 and 10 s fail
    prober.set(&ep(1), serve(&[]));
    tokio::time::sleep(secs(30)).await;
    assert_eq!(prober.checks_of(&ep(1)).len(), 9);
    assert_eq!(registry.last_changed(), healthy.stamp(), "nothing changed");
}

#[tokio::test(start_paused = true)]
async fn two_successes_bring_an_unhealthy_view_back() {
    let prober = Scripted::default();
    prober.set(&ep(1), Answer::Fail);
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    until_health(&registry, &ep(1), Health::Unhealthy).await;
    let back = Instant::now();
    prober.set(&ep(1), serve(&["kv"]));
    let snapshot = until_health(&registry, &ep(1), Health::Healthy).await;
    // Checks at 5 s and 10 s succeed.
    assert_eq!(snapshot.changed_at() - back, secs(10));
    let view = snapshot.view(&ep(1)).expect("listed");
    assert_eq!(view.features(), &features(&["kv"]));
    assert_eq!(view.last_error(), None);
}

#[tokio::test(start_paused = true)]
async fn not_serving_is_unhealthy_at_once() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    until_health(&registry, &ep(1), Health::Healthy).await;
    let draining = Instant::now();
    prober.set(&ep(1), Answer::NotServing);
    let snapshot = until_health(&registry, &ep(1), Health::Unhealthy).await;
    assert_eq!(
        snapshot.changed_at() - draining,
        secs(5),
        "the very next check"
    );
    assert_eq!(
        snapshot.view(&ep(1)).and_then(|v| v.last_error()),
        Some("not serving")
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_without_the_health_service_fails_like_any_check() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    until_health(&registry, &ep(1), Health::Healthy).await;
    let since = Instant::now();
    prober.set(&ep(1), Answer::NoHealthService);
    let snapshot = until_health(&registry, &ep(1), Health::Unhealthy).await;
    assert_eq!(snapshot.changed_at() - since, secs(15), "three failures");
    let view = snapshot.view(&ep(1)).expect("listed");
    assert_eq!(view.last_error(), Some("no health service"));
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_view_keeps_its_last_features_and_partition() {
    let prober = Scripted::default();
    let partition = Partition::new(1, 4).expect("1 < 4");
    prober.set(&ep(1), Answer::Serve(features(&["kv"]), Some(partition)));
    let mut config = config();
    config.panic_threshold = 0.0; // panic mode would list it (see panic.rs)
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config);
    until_health(&registry, &ep(1), Health::Healthy).await;
    prober.set(&ep(1), Answer::NotServing);
    let snapshot = until_health(&registry, &ep(1), Health::Unhealthy).await;
    let view = snapshot.view(&ep(1)).expect("listed");
    assert_eq!(view.features(), &features(&["kv"]));
    assert_eq!(view.partition(), Some(partition));
    assert!(registry.healthy_views(&features(&["kv"])).is_empty());
    assert_eq!(registry.all_views().len(), 1);
    let dump = registry.dump();
    assert!(
        dump.contains("10.0.0.1:80 unhealthy partition=1/4"),
        "{dump}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_of_features_alone_is_a_change() {
    let prober = Scripted::default();
    prober.set(&ep(1), serve(&["kv"]));
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let first = until_health(&registry, &ep(1), Health::Healthy).await;
    prober.set(&ep(1), serve(&["kv", "sql"]));
    let second = crate::harness::until(&registry, |s| {
        s.view(&ep(1)).is_some_and(|v| v.features().contains("sql"))
    })
    .await;
    assert!(second.stamp() > first.stamp());
    assert_eq!(registry.healthy_views(&features(&["sql"])).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn checks_of_an_unhealthy_view_back_off_and_reset_on_success() {
    let prober = Scripted::default();
    prober.set(&ep(1), Answer::Fail);
    let t0 = Instant::now();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    tokio::time::sleep(secs(200)).await;
    let offsets: Vec<u64> = prober
        .checks_of(&ep(1))
        .iter()
        .map(|at| (*at - t0).as_secs())
        .collect();
    // Unhealthy at 0; then 5, 10, 20, 40, 60 (the cap), 60.
    assert_eq!(offsets, [0, 5, 15, 35, 75, 135, 195]);

    prober.set(&ep(1), serve(&[]));
    until_health(&registry, &ep(1), Health::Healthy).await;
    let checks = prober.checks_of(&ep(1));
    let gaps: Vec<u64> = checks.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    // The success at 255 s brings the interval back: the next is at 260 s.
    assert_eq!(gaps[gaps.len() - 2..], [60, 5]);
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_each_delay_within_its_bound() {
    let prober = Scripted::default();
    let mut config = config();
    config.probe_jitter = 0.5;
    let (_registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config);
    tokio::time::sleep(secs(100)).await;
    let checks = prober.checks_of(&ep(1));
    let gaps: Vec<Duration> = checks.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 20);
    assert!(
        gaps.iter()
            .all(|gap| *gap >= Duration::from_millis(2500) && *gap <= secs(5))
    );
    assert!(gaps.windows(2).any(|w| w[0] != w[1]), "the delays vary");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_times_out_and_holds_up_nothing_else() {
    let prober = Scripted::default();
    prober.set(&ep(1), Answer::Hang);
    let t0 = Instant::now();
    let (registry, _clients) = start(StaticLocator::new([ep(1), ep(2)]), &prober, config());
    let other = until_health(&registry, &ep(2), Health::Healthy).await;
    assert_eq!(other.changed_at(), t0, "the other view did not wait");
    assert_eq!(
        other.view(&ep(1)).map(|v| v.health()),
        Some(Health::Unknown)
    );
    let hung = until_health(&registry, &ep(1), Health::Unhealthy).await;
    assert_eq!(hung.changed_at() - t0, secs(1), "the timeout fired");
    let error = hung.view(&ep(1)).and_then(|v| v.last_error()).unwrap_or("");
    assert!(error.contains("did not answer within 1s"), "{error}");
    // The hung check was dropped: only the next one runs, once it is due.
    crate::harness::settle().await;
    assert_eq!(prober.running(), 0);
}
