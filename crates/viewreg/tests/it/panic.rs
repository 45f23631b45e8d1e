//! Panic mode: too few healthy views, and what `healthy_views` does then.

use flotilla_viewreg::{Health, StaticLocator};

use crate::harness::{Answer, Scripted, config, ep, features, serve, start};

#[tokio::test(start_paused = true)]
async fn too_few_healthy_views_is_a_panic_and_spreads_over_every_view() {
    let prober = Scripted::default();
    for n in 1..=4 {
        prober.set(&ep(n), serve(&["kv"]));
    }
    let (registry, _clients) = start(StaticLocator::new((1..=4).map(ep)), &prober, config());
    crate::harness::until(&registry, |s| s.summary().healthy == 4).await;
    assert!(!registry.snapshot().is_panic());

    // Two of four down: half are healthy, not fewer: no panic.
    prober.set(&ep(1), Answer::NotServing);
    prober.set(&ep(2), Answer::NotServing);
    let half = crate::harness::until(&registry, |s| s.summary().healthy == 2).await;
    assert!(!half.is_panic());
    assert_eq!(registry.healthy_views(&features(&["kv"])).len(), 2);

    prober.set(&ep(3), Answer::NotServing);
    let panicked = crate::harness::until(&registry, |s| s.summary().healthy == 1).await;
    assert!(panicked.is_panic());
    assert!(panicked.summary().panic);
    assert!(registry.dump().contains("PANIC"));
    let spread = registry.healthy_views(&features(&["kv"]));
    assert_eq!(
        spread.len(),
        4,
        "every view providing kv, with its last features"
    );
    assert_eq!(spread.iter().filter(|v| v.is_healthy()).count(), 1);
    // The answer reads alike every way: by position, first, iterated, owned.
    let endpoints: Vec<_> = spread.iter().map(|view| view.endpoint().clone()).collect();
    assert_eq!(
        endpoints,
        [ep(1), ep(2), ep(3), ep(4)],
        "sorted by endpoint"
    );
    assert_eq!(spread.first().map(|view| view.endpoint()), Some(&ep(1)));
    assert_eq!(spread.get(3).map(|view| view.endpoint()), Some(&ep(4)));
    assert!(spread.get(4).is_none());
    assert_eq!(spread[2].endpoint(), &ep(3));
    let owned: Vec<_> = spread
        .to_vec()
        .iter()
        .map(|view| view.endpoint().clone())
        .collect();
    assert_eq!(owned, endpoints);
    assert_eq!((&spread).into_iter().len(), 4);
    assert_eq!(spread.clone().len(), 4);
    assert!(registry.healthy_views(&features(&["sql"])).is_empty());

    prober.set(&ep(3), serve(&["kv"]));
    let calm = crate::harness::until(&registry, |s| s.summary().healthy == 2).await;
    assert!(!calm.is_panic());
    assert!(
        calm.view(&ep(1))
            .is_some_and(|v| v.health() == Health::Unhealthy)
    );
}

#[tokio::test(start_paused = true)]
async fn a_threshold_of_zero_never_panics() {
    let prober = Scripted::default();
    prober.set(&ep(1), Answer::Fail);
    let mut config = config();
    config.panic_threshold = 0.0;
    let (registry, _clients) = start(StaticLocator::new([ep(1)]), &prober, config);
    let snapshot = crate::harness::until_health(&registry, &ep(1), Health::Unhealthy).await;
    assert!(!snapshot.is_panic());
    assert!(registry.healthy_views(&features(&[])).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_empty_registry_is_not_a_panic() {
    let prober = Scripted::default();
    let (registry, _clients) = start(StaticLocator::new([]), &prober, config());
    crate::harness::settle().await;
    let snapshot = registry.snapshot();
    assert!(!snapshot.is_panic());
    assert!(registry.healthy_views(&features(&[])).is_empty());
    assert_eq!(registry.summary().views, 0);
}
