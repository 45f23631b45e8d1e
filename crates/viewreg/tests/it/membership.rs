//! Endpoints coming and going, and what the locator's errors and end do.

use std::io;
use std::time::Duration;

use flotilla_viewreg::{Health, LocatorError};
use tokio::time::Instant;

use crate::harness::{
    Answer, Scripted, channel_locator, config, ep, settle, start, until, until_health,
};

#[tokio::test(start_paused = true)]
async fn a_leaving_endpoint_is_dropped_with_its_client_and_check_and_comes_back_fresh() {
    let prober = Scripted::default();
    prober.set(&ep(1), Answer::Fail);
    let (locator, answers) = channel_locator();
    let (registry, clients) = start(answers, &prober, config());
    locator
        .send(Ok(vec![ep(1), ep(2)]))
        .expect("registry listens");
    until_health(&registry, &ep(1), Health::Unhealthy).await;
    until_health(&registry, &ep(2), Health::Healthy).await;
    let client_of_2 = registry.snapshot().view(&ep(2)).map(|v| v.client().clone());
    assert_eq!(clients.made_and_alive(&ep(1)), (1, 1));

    // A check of ep(1) hangs when it leaves.
    prober.set(&ep(1), Answer::Hang);
    // Unhealthy at 0 s, checked again at 5 s; that check would time out at 6 s.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(prober.running(), 1);
    locator.send(Ok(vec![ep(2)])).expect("registry listens");
    let gone = until(&registry, |s| s.view(&ep(1)).is_none()).await;
    assert_eq!(gone.all_views().len(), 1);
    drop(gone);
    settle().await;
    assert_eq!(prober.running(), 0, "its check was dropped");
    assert_eq!(
        clients.made_and_alive(&ep(1)),
        (1, 0),
        "its client was dropped"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let checks_while_gone = prober.checks_of(&ep(1)).len();

    // Back, and serving: one success makes it healthy, as for any new view.
    prober.set(&ep(1), crate::harness::serve(&[]));
    let back = Instant::now();
    locator
        .send(Ok(vec![ep(1), ep(2)]))
        .expect("registry listens");
    let snapshot = until_health(&registry, &ep(1), Health::Healthy).await;
    assert_eq!(snapshot.changed_at(), back);
    assert_eq!(prober.checks_of(&ep(1)).len(), checks_while_gone + 1);
    assert_eq!(clients.made_and_alive(&ep(1)), (2, 1), "a new client");
    // The view that stayed kept its client across all of it.
    assert_eq!(clients.made_and_alive(&ep(2)), (1, 1));
    drop(client_of_2);
}

#[tokio::test(start_paused = true)]
async fn a_client_is_kept_across_health_changes() {
    let prober = Scripted::default();
    let (locator, answers) = channel_locator();
    let (registry, clients) = start(answers, &prober, config());
    locator.send(Ok(vec![ep(1)])).expect("registry listens");
    until_health(&registry, &ep(1), Health::Healthy).await;
    prober.set(&ep(1), Answer::NotServing);
    until_health(&registry, &ep(1), Health::Unhealthy).await;
    prober.set(&ep(1), crate::harness::serve(&[]));
    until_health(&registry, &ep(1), Health::Healthy).await;
    assert_eq!(clients.made_and_alive(&ep(1)), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_locator_error_keeps_the_last_set_and_the_locator_is_asked_again_later() {
    let prober = Scripted::default();
    let (locator, answers) = channel_locator();
    let (registry, _clients) = start(answers, &prober, config());
    locator.send(Ok(vec![ep(1)])).expect("registry listens");
    until_health(&registry, &ep(1), Health::Healthy).await;

    let failed_at = Instant::now();
    let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "etcd down");
    locator
        .send(Err(LocatorError::unavailable(refused)))
        .expect("registry listens");
    locator
        .send(Ok(vec![ep(1), ep(2)]))
        .expect("registry listens");
    let failing = until(&registry, |s| s.summary().locator_error.is_some()).await;
    assert_eq!(failing.all_views().len(), 1, "the last set stays");
    assert!(failing.summary().to_string().contains("locator failing"));
    assert!(failing.view(&ep(1)).is_some_and(|v| v.is_healthy()));

    // The next answer is read only after the retry delay (1 s).
    let recovered = until(&registry, |s| s.all_views().len() == 2).await;
    assert_eq!(recovered.changed_at() - failed_at, Duration::from_secs(1));
    assert_eq!(recovered.summary().locator_error, None);
}

#[tokio::test(start_paused = true)]
async fn a_locator_that_ends_leaves_its_last_set() {
    let prober = Scripted::default();
    let (locator, answers) = channel_locator();
    let (registry, _clients) = start(answers, &prober, config());
    locator.send(Ok(vec![ep(1)])).expect("registry listens");
    until_health(&registry, &ep(1), Health::Healthy).await;
    drop(locator);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.all_views().len(), 1);
    assert!(prober.checks_of(&ep(1)).len() > 10, "still checked");
    assert!(!snapshot.is_stopped());
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_ready_checks_is_published_a_batch_at_a_time() {
    // 2,000 endpoints discovered at once: their first checks fall due and
    // answer together. Publishing once per answer would take 4,000
    // snapshots (one per check started and one per answer), each copying
    // every view; batches of ready events take a few dozen.
    let endpoints: Vec<_> = (0..2_000u32)
        .map(|n| {
            flotilla_core_types::Endpoint::new(&format!("10.1.{}.{}", n / 250, n % 250), 80)
                .expect("valid")
        })
        .collect();
    let prober = Scripted::default();
    let (registry, _clients) = start(
        flotilla_viewreg::StaticLocator::new(endpoints.clone()),
        &prober,
        config(),
    );
    let settled = until(&registry, |snapshot| snapshot.summary().healthy == 2_000).await;
    assert!(
        settled.stamp().as_u64() < 100,
        "{} snapshots for 2,000 first checks",
        settled.stamp().as_u64()
    );
    // Nothing is lost to batching: every endpoint was checked once.
    for endpoint in &endpoints {
        assert_eq!(prober.checks_of(endpoint).len(), 1);
    }
}
