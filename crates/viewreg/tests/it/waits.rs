//! `wait_for_change`, `wait_for_stable`, change stamps, the worker's stop
//! and its report.

use std::time::Duration;

use flotilla_viewreg::{ChangeStamp, Error, Health, StaticLocator, WaitLimit, Worker};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::harness::{Answer, Scripted, config, ep, serve, start, until_health};

#[tokio::test(start_paused = true)]
async fn wait_for_change_returns_at_once_for_an_older_stamp() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    until_health(&registry, &ep(1), Health::Healthy).await;
    let limit = WaitLimit::timeout(Duration::ZERO);
    let snapshot = registry
        .wait_for_change(ChangeStamp::ZERO, &limit)
        .await
        .expect("newer already");
    assert_eq!(snapshot.stamp(), registry.last_changed());
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_its_deadline_is_an_error_not_a_hang() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let stamp = until_health(&registry, &ep(1), Health::Healthy)
        .await
        .stamp();
    let started = Instant::now();
    let limit = WaitLimit::timeout(Duration::from_secs(30));
    let waited = registry.wait_for_change(stamp, &limit).await;
    assert!(
        matches!(waited, Err(Error::DeadlineExceeded { waited }) if waited == Duration::from_secs(30)),
        "{waited:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_is_an_error() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let stamp = until_health(&registry, &ep(1), Health::Healthy)
        .await
        .stamp();
    let token = CancellationToken::new();
    let limit = WaitLimit::timeout(Duration::from_secs(3600)).or_cancelled(token.clone());
    let cancel = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        token.cancel();
    };
    let (waited, ()) = tokio::join!(registry.wait_for_change(stamp, &limit), cancel);
    assert!(matches!(waited, Err(Error::Cancelled)), "{waited:?}");
    let stable = registry
        .wait_for_stable(Duration::from_secs(7200), &WaitLimit::cancelled_by(token))
        .await;
    assert!(matches!(stable, Err(Error::Cancelled)), "{stable:?}");
}

#[tokio::test(start_paused = true)]
async fn wait_for_change_wakes_on_the_change() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let stamp = until_health(&registry, &ep(1), Health::Healthy)
        .await
        .stamp();
    let drained = Instant::now();
    prober.set(&ep(1), Answer::NotServing);
    let limit = WaitLimit::timeout(Duration::from_secs(3600));
    let snapshot = registry
        .wait_for_change(stamp, &limit)
        .await
        .expect("a change");
    assert_eq!(drained.elapsed(), Duration::from_secs(5));
    assert!(snapshot.stamp() > stamp);
    assert_eq!(
        crate::harness::health_of(&snapshot, &ep(1)),
        Some(Health::Unhealthy)
    );
}

#[tokio::test(start_paused = true)]
async fn wait_for_stable_waits_out_the_changes() {
    let prober = Scripted::default();
    let t0 = Instant::now();
    let (registry, _clients) = start(StaticLocator::new([ep(1), ep(2)]), &prober, config());
    let limit = WaitLimit::timeout(Duration::from_secs(3600));
    // Both healthy at 0 s; ep(2) says it is not serving at its check at
    // 10 s, within the quiet period, so the wait goes on to 10 s + 12 s.
    let drain = async {
        tokio::time::sleep(Duration::from_secs(7)).await;
        prober.set(&ep(2), Answer::NotServing);
    };
    let (stable, ()) = tokio::join!(
        registry.wait_for_stable(Duration::from_secs(12), &limit),
        drain
    );
    let stable = stable.expect("settles");
    assert_eq!(stable.changed_at() - t0, Duration::from_secs(10));
    assert_eq!(t0.elapsed(), Duration::from_secs(22));
    assert_eq!(stable.summary().healthy, 1);
}

#[tokio::test(start_paused = true)]
async fn wait_for_stable_gives_up_at_its_deadline() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    let limit = WaitLimit::timeout(Duration::from_secs(2));
    let waited = registry
        .wait_for_stable(Duration::from_secs(10), &limit)
        .await;
    assert!(
        matches!(waited, Err(Error::DeadlineExceeded { .. })),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_snapshot_has_a_greater_stamp() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([ep(1), ep(2), ep(3)]), &prober, config());
    let limit = WaitLimit::timeout(Duration::from_secs(60));
    // Set between checks (every 5 s): unhealthy at 10 s, healthy at 30 s,
    // unhealthy at 40 s.
    let flap = async {
        for (after, answer) in [
            (7, Answer::NotServing),
            (10, serve(&[])),
            (20, Answer::NotServing),
        ] {
            tokio::time::sleep(Duration::from_secs(after)).await;
            prober.set(&ep(2), answer);
        }
    };
    let watch = async {
        let mut stamps = vec![registry.last_changed()];
        while let Ok(snapshot) = registry
            .wait_for_change(stamps[stamps.len() - 1], &limit)
            .await
        {
            stamps.push(snapshot.stamp());
        }
        stamps
    };
    let (stamps, ()) = tokio::join!(watch, flap);
    assert!(stamps.len() >= 5, "{stamps:?}");
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stopped_registry_releases_everything_and_says_so() {
    let prober = Scripted::default();
    prober.set(&ep(2), Answer::Hang);
    let (registry, clients) = start(StaticLocator::new([ep(1), ep(2)]), &prober, config());
    let stamp = until_health(&registry, &ep(1), Health::Healthy)
        .await
        .stamp();
    let report = registry.report().expect("reports").await;
    assert_eq!(report["views"], 2);
    assert_eq!(report["healthy"], 1);
    assert_eq!(report["state"], "running");

    let waiter = registry.clone();
    let waiting = tokio::spawn(async move {
        waiter
            .wait_for_change(stamp, &WaitLimit::timeout(Duration::from_secs(3600)))
            .await
    });
    crate::harness::settle().await;
    registry.kill();
    registry.wait().await.expect("clean stop");
    let waited = waiting.await.expect("the waiter ends");
    assert!(matches!(waited, Err(Error::Stopped)), "{waited:?}");
    assert_eq!(prober.running(), 0, "the hung check was dropped");
    assert_eq!(clients.made_and_alive(&ep(1)), (1, 0));
    assert_eq!(clients.made_and_alive(&ep(2)), (1, 0));
    assert!(registry.snapshot().is_stopped());
    assert!(registry.all_views().is_empty());
    assert!(matches!(
        registry.report_failure(&ep(1)),
        Err(Error::Stopped)
    ));
    let stable = registry
        .wait_for_stable(Duration::ZERO, &WaitLimit::timeout(Duration::from_secs(1)))
        .await;
    assert!(matches!(stable, Err(Error::Stopped)));
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_the_registry() {
    let prober = Scripted::default();
    let (registry, clients) = start(StaticLocator::new([ep(1)]), &prober, config());
    until_health(&registry, &ep(1), Health::Healthy).await;
    drop(registry);
    crate::harness::settle().await;
    assert_eq!(clients.made_and_alive(&ep(1)), (1, 0));
}
