//! The publisher's behaviour on the embedded table and on a session-style
//! backend, every test on tokio's paused clock.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_publisher::{
    Error, MountState, MountTable, Namespace, NamespaceError, Phase, Publisher, PublisherConfig,
};
use tokio::time::{Instant, sleep};

use crate::harness::{
    Flaky, LeaseTable, PairFault, alive_tasks, config, name, resolved, server, settle,
    stop_and_check, until,
};

const PERIOD: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(80);

async fn started(flaky: &Flaky, config: PublisherConfig) -> Publisher {
    Publisher::start(flaky.clone(), config).expect("valid config")
}

/// A publisher on `flaky` with the test config, publishing `names` ×
/// `ports`, once all of it is mounted.
async fn mounted(flaky: &Flaky, names: &[&str], ports: &[u16]) -> Publisher {
    let publisher = started(flaky, config()).await;
    publish(&publisher, names, ports).await;
    until(&publisher, |s| s.all_mounted()).await;
    publisher
}

async fn publish(publisher: &Publisher, names: &[&str], ports: &[u16]) {
    for text in names {
        publisher.add_name(name(text)).await.expect("running");
    }
    for port in ports {
        publisher.add_server(server(*port)).await.expect("running");
    }
}

#[tokio::test(start_paused = true)]
async fn the_cross_product_is_mounted_and_duplicates_change_nothing() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a", "b"], &[1, 2]).await;
    for text in ["a", "b"] {
        assert_eq!(
            resolved(&flaky.table, &name(text)).await,
            [server(1), server(2)]
        );
    }
    assert_eq!(flaky.mounts(), 4);

    publish(&publisher, &["a", "b"], &[1, 2]).await;
    settle().await;
    assert_eq!(flaky.mounts(), 4, "adding what is there mounts nothing");
    assert_eq!(publisher.status().await.expect("running").mounts.len(), 4);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn adding_a_name_mounts_it_for_every_server_and_a_server_under_every_name() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a"], &[1, 2]).await;
    publisher.add_name(name("b")).await.expect("running");
    until(&publisher, |s| s.all_mounted()).await;
    assert_eq!(
        resolved(&flaky.table, &name("b")).await,
        [server(1), server(2)]
    );
    publisher.add_server(server(3)).await.expect("running");
    until(&publisher, |s| s.all_mounted()).await;
    for text in ["a", "b"] {
        assert_eq!(
            resolved(&flaky.table, &name(text)).await,
            [server(1), server(2), server(3)]
        );
    }
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn removing_a_server_or_a_name_unmounts_exactly_its_pairs() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a", "b"], &[1, 2]).await;

    publisher.remove_server(server(1)).await.expect("running");
    let status = until(&publisher, |s| s.all_settled() && s.mounts.len() == 2).await;
    assert!(status.mounts.iter().all(|m| m.server == server(2)));
    assert_eq!(resolved(&flaky.table, &name("a")).await, [server(2)]);
    assert_eq!(resolved(&flaky.table, &name("b")).await, [server(2)]);

    publisher.remove_name(name("a")).await.expect("running");
    until(&publisher, |s| s.all_settled() && s.mounts.len() == 1).await;
    assert_eq!(resolved(&flaky.table, &name("a")).await, []);
    assert_eq!(resolved(&flaky.table, &name("b")).await, [server(2)]);
    assert_eq!(flaky.unmounts(), 3);

    publisher
        .remove_name(name("never-added"))
        .await
        .expect("running");
    settle().await;
    assert_eq!(
        flaky.unmounts(),
        3,
        "removing what is not there unmounts nothing"
    );
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn every_mount_carries_the_period_plus_slack_and_is_refreshed_before_it_lapses() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a"], &[1]).await;
    let resolution = flaky.table.resolve(&name("a")).await.expect("mounted");
    assert_eq!(resolution.servers[0].ttl_left, Some(TTL));

    // Ten periods later, it has never lapsed: resolvable at every second.
    let start = Instant::now();
    while Instant::now() - start < PERIOD * 10 {
        sleep(Duration::from_secs(1)).await;
        assert_eq!(resolved(&flaky.table, &name("a")).await, [server(1)]);
    }
    let mounts = flaky.mounts();
    assert!(
        (10..=13).contains(&mounts),
        "one refresh a period, jittered early: {mounts}"
    );
    assert!(
        flaky.longest_gap() <= PERIOD,
        "refreshed within a period: {:?}",
        flaky.longest_gap()
    );
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn each_mount_has_its_own_jittered_refresh_deadline() {
    let flaky = Flaky::new();
    let publisher = started(&flaky, config()).await;
    let ports: Vec<u16> = (1..=100).collect();
    publish(&publisher, &["a"], &ports).await;
    let status = until(&publisher, |s| s.all_mounted()).await;
    let mounted_at = status.mounts[0].last_mounted_at.expect("mounted");
    let mut deadlines: Vec<Instant> = status
        .mounts
        .iter()
        .map(|m| m.next_attempt_at.expect("a refresh is scheduled"))
        .collect();
    for deadline in &deadlines {
        let after = *deadline - mounted_at;
        assert!(
            after >= PERIOD.mul_f64(0.8) && after <= PERIOD,
            "refresh after {after:?}"
        );
    }
    deadlines.sort();
    deadlines.dedup();
    assert!(
        deadlines.len() > 90,
        "refreshes spread out: {} distinct",
        deadlines.len()
    );
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_mounts_on_a_slow_backend_never_lapse() {
    // The seed refreshed sequentially: 10,000 calls of 10 ms take 100 s,
    // longer than the 80 s TTL.
    let flaky = Flaky::new();
    flaky.set_delay(Duration::from_millis(10));
    let publisher = started(&flaky, config()).await;
    let names: Vec<String> = (0..100).map(|i| format!("svc-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ports: Vec<u16> = (1..=100).collect();
    publish(&publisher, &names, &ports).await;
    until(&publisher, |s| s.all_mounted()).await;
    sleep(PERIOD * 3).await;
    assert!(
        flaky.mounts() >= 30_000,
        "three rounds of refreshes: {}",
        flaky.mounts()
    );
    assert!(
        flaky.longest_gap() < TTL,
        "longest gap {:?}",
        flaky.longest_gap()
    );
    assert_eq!(flaky.table.entry_count(), 10_000);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_with_jitter_up_to_the_cap() {
    let flaky = Flaky::new();
    flaky.set_down(true);
    let publisher = started(&flaky, config()).await;
    publish(&publisher, &["a"], &[1]).await;
    sleep(Duration::from_secs(300)).await;
    let attempts: Vec<Instant> = flaky.attempts().into_iter().map(|(at, ..)| at).collect();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    for (index, gap) in gaps.iter().enumerate() {
        let full = Duration::from_secs(1 << index.min(5)).min(Duration::from_secs(30));
        assert!(
            *gap >= full / 2 && *gap <= full,
            "retry {index} after {gap:?}, expected between {:?} and {full:?}",
            full / 2
        );
    }
    assert!(gaps.len() >= 10, "kept retrying: {} retries", gaps.len());
    let status = publisher.status().await.expect("running");
    let mount = &status.mounts[0];
    assert_eq!(mount.observed, MountState::Mounting);
    assert_eq!(mount.consecutive_failures as usize, attempts.len());
    assert!(matches!(
        mount.last_error,
        Some(NamespaceError::Unavailable { .. })
    ));
    assert!(mount.next_attempt_at.is_some_and(|at| at > Instant::now()));
    assert_eq!(mount.ttl_left(), None);
    publisher.stop().await;
    assert!(
        publisher.wait().await.is_err(),
        "the stop-time unmount fails too"
    );
}

#[tokio::test(start_paused = true)]
async fn when_the_backend_returns_everything_is_mounted_again_at_once_closest_to_expiry_first() {
    let flaky = Flaky::new();
    let mut config = config();
    config.max_in_flight = 1;
    let publisher = started(&flaky, config).await;
    publish(&publisher, &["a"], &[]).await;
    // Mounted ten seconds apart, so they lapse in the order of their ports.
    for port in 1..=5 {
        publisher.add_server(server(port)).await.expect("running");
        until(&publisher, |s| s.all_mounted()).await;
        sleep(Duration::from_secs(10)).await;
    }
    flaky.set_down(true);
    sleep(PERIOD * 3).await;
    assert_eq!(
        resolved(&flaky.table, &name("a")).await,
        [],
        "all lapsed in the outage"
    );
    flaky.set_down(false);
    let healed_at = Instant::now();
    let status = until(&publisher, |s| s.all_mounted()).await;
    let first_success = status
        .mounts
        .iter()
        .filter_map(|m| m.last_mounted_at)
        .min()
        .expect("mounted");
    let log = flaky.mount_log();
    let after_outage: Vec<_> = log.iter().filter(|(at, ..)| *at >= healed_at).collect();
    assert_eq!(after_outage.len(), 5);
    assert!(
        after_outage.iter().all(|(at, ..)| *at == first_success),
        "every pair re-mounted at the instant of the first success"
    );
    // The first is whichever retry came due first; the rest, due together
    // once it succeeded, went one at a time, the longest-lapsed first.
    let rest: Vec<u16> = after_outage[1..].iter().map(|(_, _, s)| s.port()).collect();
    assert!(rest.is_sorted(), "lapse order: {rest:?}");
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_reset_table_gets_every_mount_back_at_the_first_refresh() {
    let flaky = Flaky::new();
    let publisher = started(&flaky, config()).await;
    let ports: Vec<u16> = (1..=50).collect();
    publish(&publisher, &["a"], &ports).await;
    until(&publisher, |s| s.all_mounted()).await;
    flaky.table.reset();
    assert_eq!(flaky.table.entry_count(), 0);
    // Step to the first refresh.
    while flaky.table.entry_count() == 0 {
        sleep(Duration::from_millis(100)).await;
    }
    let first_back = Instant::now();
    settle().await;
    assert_eq!(flaky.table.entry_count(), 50, "all back at once");
    assert!(Instant::now() - first_back <= Duration::from_millis(1));
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_failed_unmount_is_retried_until_it_succeeds() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a"], &[1]).await;
    flaky.set_fail_unmounts(true);
    publisher.remove_server(server(1)).await.expect("running");
    sleep(Duration::from_secs(20)).await;
    let status = publisher.status().await.expect("running");
    let mount = status
        .mount(&name("a"), &server(1))
        .expect("kept until unmounted");
    assert_eq!(mount.desired, MountState::Unmounted);
    assert_eq!(mount.observed, MountState::Unmounting);
    assert!(mount.consecutive_failures >= 3);
    flaky.set_fail_unmounts(false);
    until(&publisher, |s| s.mounts.is_empty()).await;
    assert_eq!(resolved(&flaky.table, &name("a")).await, []);
    assert_eq!(flaky.unmounts(), 1);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_pair_wanted_again_stops_its_unmount_and_is_mounted() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a"], &[1]).await;
    flaky.set_fail_unmounts(true);
    publisher.remove_server(server(1)).await.expect("running");
    sleep(Duration::from_secs(5)).await;
    publisher.add_server(server(1)).await.expect("running");
    let status = until(&publisher, |s| s.all_mounted()).await;
    assert_eq!(status.mounts[0].desired, MountState::Mounted);
    let unmount_attempts_then = flaky.unmounts();
    sleep(PERIOD * 2).await;
    assert_eq!(flaky.unmounts(), unmount_attempts_then);
    assert_eq!(resolved(&flaky.table, &name("a")).await, [server(1)]);
    flaky.set_fail_unmounts(false);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn status_reports_times_failures_and_ttl() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a"], &[1]).await;
    let mounted_at = Instant::now();
    sleep(Duration::from_secs(10)).await;
    let status = publisher.status().await.expect("running");
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(&*status.names, [name("a")]);
    assert_eq!(&*status.servers, [server(1)]);
    let mount = &status.mounts[0];
    assert_eq!(
        (mount.desired, mount.observed),
        (MountState::Mounted, MountState::Mounted)
    );
    assert_eq!(mount.last_mounted_at, Some(mounted_at));
    assert_eq!(mount.last_unmounted_at, None);
    assert_eq!(mount.consecutive_failures, 0);
    assert!(mount.last_error.is_none());
    assert_eq!(mount.ttl_left(), Some(TTL - Duration::from_secs(10)));
    let refresh_in = mount.next_attempt_at.expect("scheduled") - mounted_at;
    assert!(refresh_in >= PERIOD.mul_f64(0.8) && refresh_in <= PERIOD);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn published_lists_rooted_names_and_their_mounted_servers() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a", "b/c"], &[1]).await;
    let published = publisher.published().await.expect("running");
    let summary: Vec<(String, Vec<u16>)> = published
        .iter()
        .map(|p| {
            (
                p.rooted.clone(),
                p.servers.iter().map(|s| s.port()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (String::from("mem:/a"), vec![1]),
            (String::from("mem:/b/c"), vec![1])
        ]
    );
    assert_eq!(publisher.root(), "mem:");
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn stop_unmounts_everything_and_nothing_is_mounted_after_it() {
    let flaky = Flaky::new();
    let baseline = alive_tasks();
    let publisher = mounted(&flaky, &["a", "b"], &[1, 2]).await;
    let mut watch = publisher.watch().await.expect("running");

    publisher.stop().await;
    assert!(publisher.is_stopped());
    let mounts_at_stop = flaky.mounts();
    assert!(matches!(
        publisher.add_name(name("c")).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(
        publisher.add_server(server(3)).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(publisher.status().await, Err(Error::Stopped)));
    assert!(publisher.wait().await.is_ok());
    let last = watch
        .wait_for(|s| s.phase == Phase::Stopped)
        .await
        .expect("final status");
    assert!(
        last.mounts
            .iter()
            .all(|m| m.observed == MountState::Unmounted)
    );
    sleep(PERIOD * 3).await;
    assert_eq!(flaky.mounts(), mounts_at_stop, "nothing mounted after stop");
    assert_eq!(flaky.table.entry_count(), 0);
    publisher.stop().await; // stopping again is harmless
    assert!(publisher.wait().await.is_ok());
    drop(publisher);
    settle().await;
    assert_eq!(alive_tasks(), baseline, "no task outlives the publisher");
}

#[tokio::test(start_paused = true)]
async fn stop_makes_one_bounded_attempt_at_each_unmount() {
    let flaky = Flaky::new();
    let mut config = config();
    config.operation_timeout = Duration::from_secs(2);
    let publisher = started(&flaky, config).await;
    publish(&publisher, &["a"], &[1, 2]).await;
    until(&publisher, |s| s.all_mounted()).await;
    flaky.set_hang(true);
    let stopped_at = Instant::now();
    publisher.stop().await;
    let result = publisher.wait().await;
    assert_eq!(Instant::now() - stopped_at, Duration::from_secs(2));
    let error = result.expect_err("the unmounts timed out");
    match error.find::<Error>() {
        Some(Error::UnmountIncomplete {
            failed: 2,
            first: NamespaceError::Timeout { .. },
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_and_unmounts() {
    let flaky = Flaky::new();
    let baseline = alive_tasks();
    let publisher = mounted(&flaky, &["a"], &[1]).await;
    drop(publisher);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(flaky.table.entry_count(), 0);
    assert_eq!(alive_tasks(), baseline);
}

#[tokio::test(start_paused = true)]
async fn bad_configs_and_ttls_the_backend_refuses_are_rejected_before_anything_runs() {
    let table = MountTable::start();
    let mut zero_period = config();
    zero_period.refresh_period = Duration::ZERO;
    assert!(matches!(
        Publisher::start(table.clone(), zero_period),
        Err(Error::InvalidConfig {
            field: "refresh_period",
            ..
        })
    ));
    let too_long =
        config().with_period(Duration::from_secs(400 * 24 * 3600), Duration::from_secs(1));
    assert!(matches!(
        Publisher::start(table.clone(), too_long),
        Err(Error::InvalidConfig { field: "ttl", .. })
    ));
    assert_eq!(table.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_session_backend_costs_one_keep_alive_a_period() {
    let backend = LeaseTable::default();
    let publisher = Publisher::start(backend.clone(), config()).expect("valid");
    let ports: Vec<u16> = (1..=100).collect();
    publish(&publisher, &["a", "b"], &ports).await;
    until(&publisher, |s| s.all_mounted()).await;
    assert_eq!(backend.counts(), (1, 200, 0));
    sleep(PERIOD * 10).await;
    let (grants, mounts, keep_alives) = backend.counts();
    assert_eq!((grants, mounts), (1, 200), "no per-mount refresh");
    assert!(
        (10..=13).contains(&keep_alives),
        "{keep_alives} keep-alives in ten periods"
    );
    assert_eq!(backend.alive().len(), 200);
    let status = publisher.status().await.expect("running");
    assert!(
        status
            .mounts
            .iter()
            .all(|m| m.ttl_left().is_some_and(|t| t > Duration::from_secs(20)))
    );
    assert!(stop_and_check(publisher).await.is_ok());
    assert!(backend.alive().is_empty(), "stop released the session");
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_is_replaced_and_everything_mounted_again_at_once() {
    let backend = LeaseTable::default();
    let publisher = Publisher::start(backend.clone(), config()).expect("valid");
    let ports: Vec<u16> = (1..=20).collect();
    publish(&publisher, &["a"], &ports).await;
    until(&publisher, |s| s.all_mounted()).await;
    backend.revoke();
    assert!(backend.alive().is_empty());
    // The next keep-alive finds the session gone; at that instant every
    // mount goes back on a new one.
    while backend.alive().is_empty() {
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.alive().len(), 20);
    let (grants, mounts, _) = backend.counts();
    assert_eq!((grants, mounts), (2, 40));
    until(&publisher, |s| s.all_mounted()).await;
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_publisher_is_a_worker_that_kill_stops() {
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a"], &[1]).await;
    let worker: Box<dyn Worker> = Box::new(publisher.clone());
    worker.kill();
    assert!(worker.wait().await.is_ok());
    assert_eq!(flaky.table.entry_count(), 0);
    assert!(matches!(publisher.published().await, Err(Error::Stopped)));
}

#[tokio::test(start_paused = true)]
async fn a_pair_failing_alone_keeps_its_own_backoff_while_the_others_succeed() {
    // With a hundred healthy pairs succeeding all through the period, the
    // one broken pair must still be retried on its own backoff: 1 s, 2 s,
    // 4 s, ... up to 30 s, each shortened by at most half.
    pairs_failing_alone_keep_their_own_backoff(&[1]).await;
}

#[tokio::test(start_paused = true)]
async fn two_pairs_failing_alone_do_not_defeat_each_other_s_backoff() {
    // Two broken pairs failing back to back look like an outage; the
    // healthy pairs' successes must not wake them early, together, again
    // and again.
    pairs_failing_alone_keep_their_own_backoff(&[1, 2]).await;
}

/// Publishes name `a` on a hundred servers, of which those on `broken`
/// ports fail with `Unavailable` on their own, and checks that each broken
/// pair is retried exactly on its own exponential backoff.
async fn pairs_failing_alone_keep_their_own_backoff(broken: &[u16]) {
    let flaky = Flaky::new();
    for port in broken {
        flaky.set_pair_fault(&name("a"), &server(*port), Some(PairFault::Unavailable));
    }
    let publisher = started(&flaky, config()).await;
    let ports: Vec<u16> = (1..=100).collect();
    publish(&publisher, &["a"], &ports).await;
    sleep(PERIOD * 5).await;
    for port in broken {
        let attempts: Vec<Instant> = flaky
            .attempts()
            .into_iter()
            .filter(|(_, _, s)| *s == server(*port))
            .map(|(at, ..)| at)
            .collect();
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        for (index, gap) in gaps.iter().enumerate() {
            let full = Duration::from_secs(1 << index.min(5)).min(Duration::from_secs(30));
            assert!(
                *gap >= full / 2 && *gap <= full,
                "port {port}: retry {index} after {gap:?}, expected between {:?} and {full:?} \
                 (all gaps: {gaps:?})",
                full / 2
            );
        }
        assert!(gaps.len() >= 10, "kept retrying: {} retries", gaps.len());
    }
    let status = publisher.status().await.expect("running");
    let healthy = status
        .mounts
        .iter()
        .filter(|m| !broken.contains(&m.server.port()));
    assert!(healthy.clone().all(|m| m.observed == MountState::Mounted));
    assert_eq!(healthy.count(), 100 - broken.len());
    for port in broken {
        flaky.set_pair_fault(&name("a"), &server(*port), None);
    }
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_pair_whose_mounts_were_all_refused_is_forgotten_when_removed() {
    let flaky = Flaky::new();
    flaky.set_pair_fault(&name("a"), &server(1), Some(PairFault::Rejected));
    let publisher = started(&flaky, config()).await;
    publish(&publisher, &["a"], &[1]).await;
    until(&publisher, |s| {
        s.mounts
            .first()
            .is_some_and(|m| m.consecutive_failures >= 2)
    })
    .await;
    publisher.remove_server(server(1)).await.expect("running");
    until(&publisher, |s| s.mounts.is_empty()).await;
    sleep(PERIOD).await;
    assert_eq!(
        flaky.unmount_attempts(),
        [],
        "nothing was written, so nothing is unmounted"
    );

    // Stopping with such a pair still wanted is a complete unmount too.
    let tried = flaky.attempts().len();
    publisher.add_server(server(1)).await.expect("running");
    until(&publisher, |s| {
        s.mounts
            .first()
            .is_some_and(|m| m.consecutive_failures >= 1)
    })
    .await;
    assert!(flaky.attempts().len() > tried);
    assert!(stop_and_check(publisher).await.is_ok());
    assert_eq!(flaky.unmount_attempts(), []);
}

#[tokio::test(start_paused = true)]
async fn a_pair_whose_mount_may_have_landed_is_still_unmounted_with_care() {
    // A timeout, or a refusal after an earlier mount succeeded, leaves a
    // mount that may be in the backend: removing the pair unmounts it.
    let flaky = Flaky::new();
    let publisher = mounted(&flaky, &["a"], &[2]).await;
    flaky.set_pair_fault(&name("a"), &server(1), Some(PairFault::Unavailable));
    publisher.add_server(server(1)).await.expect("running");
    until(&publisher, |s| {
        s.mount(&name("a"), &server(1))
            .is_some_and(|m| m.consecutive_failures >= 1)
    })
    .await;
    flaky.set_pair_fault(&name("a"), &server(2), Some(PairFault::Rejected));
    sleep(PERIOD * 2).await; // a refresh of (a, 2) is refused
    let status = publisher.status().await.expect("running");
    let refused = status.mount(&name("a"), &server(2)).expect("wanted");
    assert!(refused.consecutive_failures >= 1);

    publisher.remove_name(name("a")).await.expect("running");
    sleep(Duration::from_secs(10)).await;
    let status = publisher.status().await.expect("running");
    assert_eq!(status.mounts.len(), 2, "both kept until unmounted");
    assert!(
        status
            .mounts
            .iter()
            .all(|m| m.observed == MountState::Unmounting)
    );
    let unmounted: Vec<u16> = flaky
        .unmount_attempts()
        .iter()
        .map(|(_, _, s)| s.port())
        .collect();
    assert!(unmounted.contains(&1) && unmounted.contains(&2));
    flaky.set_pair_fault(&name("a"), &server(1), None);
    flaky.set_pair_fault(&name("a"), &server(2), None);
    until(&publisher, |s| s.mounts.is_empty()).await;
    assert_eq!(resolved(&flaky.table, &name("a")).await, []);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_mount_removed_behind_a_session_backends_back_is_mounted_again_at_once() {
    let backend = LeaseTable::default();
    let publisher = Publisher::start(backend.clone(), config()).expect("valid");
    let ports: Vec<u16> = (1..=3).collect();
    publish(&publisher, &["a"], &ports).await;
    until(&publisher, |s| s.all_mounted()).await;
    settle().await;
    assert_eq!(backend.removal_calls(), 1, "one watch for all the mounts");

    backend.remove_behind_back(&name("a"), &server(2));
    let removed_at = Instant::now();
    assert_eq!(backend.alive().len(), 2);
    until(&publisher, |s| s.all_mounted()).await;
    assert_eq!(backend.alive().len(), 3, "back at once");
    assert_eq!(Instant::now(), removed_at, "no time passed");
    let (grants, mounts, _) = backend.counts();
    assert_eq!(
        (grants, mounts),
        (1, 4),
        "only the removed pair was mounted again"
    );
    settle().await;
    assert_eq!(backend.removal_calls(), 2, "asked again after each report");
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_pair_removed_again_and_again_is_restored_on_its_own_backoff() {
    // The first removal is undone at once; removals that keep coming within
    // a period of each other wait out the pair's retry backoff (1 s, 2 s,
    // 4 s, ... each shortened by at most half), so nothing can make a pair
    // re-mount at network speed.
    let backend = LeaseTable::default();
    let publisher = Publisher::start(backend.clone(), config()).expect("valid");
    publish(&publisher, &["a"], &[1, 2]).await;
    until(&publisher, |s| s.all_mounted()).await;
    // How long after a removal now the pair is mounted again.
    let restore = || async {
        let mounted_at = |s: &flotilla_publisher::PublisherStatus| {
            s.mount(&name("a"), &server(2))
                .and_then(|m| m.last_mounted_at)
        };
        // A moment on, so that a restore at once has a later time.
        settle().await;
        let before = mounted_at(&publisher.status().await.expect("running"));
        backend.remove_behind_back(&name("a"), &server(2));
        let removed_at = Instant::now();
        let status = until(&publisher, |s| mounted_at(s) > before).await;
        mounted_at(&status).expect("mounted") - removed_at
    };
    let mut delays = Vec::new();
    for _ in 0..6 {
        delays.push(restore().await);
    }
    assert_eq!(delays[0], Duration::ZERO, "the first restore is at once");
    for (index, delay) in delays.iter().enumerate().skip(1) {
        let full = Duration::from_secs(1 << (index - 1));
        assert!(
            *delay >= full / 2 && *delay <= full,
            "restore {index} after {delay:?}, expected between {:?} and {full:?} (all: {delays:?})",
            full / 2
        );
    }
    // Quiet for a period: the next removal is undone at once again.
    sleep(PERIOD).await;
    assert_eq!(restore().await, Duration::ZERO);
    assert_eq!(backend.alive().len(), 2);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_mount_another_server_replaced_is_left_replaced() {
    let backend = LeaseTable::default();
    let publisher = Publisher::start(backend.clone(), config()).expect("valid");
    publish(&publisher, &["a"], &[1, 2]).await;
    until(&publisher, |s| s.all_mounted()).await;
    let (_, mounts_before, _) = backend.counts();

    backend.replace_behind_back(&name("a"), &server(2));
    let status = until(&publisher, |s| {
        s.mount(&name("a"), &server(2))
            .is_some_and(|m| m.observed == MountState::Replaced)
    })
    .await;
    assert!(!status.all_mounted());
    sleep(PERIOD * 3).await;
    let status = publisher.status().await.expect("running");
    let replaced = status.mount(&name("a"), &server(2)).expect("wanted");
    assert_eq!(replaced.observed, MountState::Replaced, "not undone");
    assert_eq!(replaced.next_attempt_at, None);
    assert_eq!(backend.counts().1, mounts_before, "nothing mounted again");
    let published = publisher.published().await.expect("running");
    assert_eq!(published[0].servers, [server(1)]);

    // The session is lost: the other pair comes back, the replaced one not.
    backend.revoke();
    until(&publisher, |s| {
        s.mount(&name("a"), &server(1)).is_some_and(|m| {
            m.observed == MountState::Mounted
                && m.last_mounted_at > status.mounts[0].last_mounted_at
        })
    })
    .await;
    assert_eq!(backend.alive(), [(name("a"), server(1))]);

    // Removed and added back, it is mounted again (its key was gone with
    // the replacement, so removing it unmounts nothing).
    publisher.remove_server(server(2)).await.expect("running");
    until(&publisher, |s| s.mounts.len() == 1).await;
    publisher.add_server(server(2)).await.expect("running");
    until(&publisher, |s| s.all_mounted()).await;
    assert_eq!(backend.alive().len(), 2);
    assert!(stop_and_check(publisher).await.is_ok());
}
