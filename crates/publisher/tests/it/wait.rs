//! `Publisher::wait_mounted` and `wait_all_mounted` on tokio's paused clock:
//! they return once the mount is visible, never before, and fail with a
//! typed error when the publisher stops or the pair goes away.

use std::time::Duration;

use flotilla_publisher::{Error, MountState, Publisher, Worker};
use tokio::time::{Instant, timeout};

use crate::harness::{
    Flaky, LeaseTable, PairFault, config, name, resolved, server, settle, stop_and_check, until,
};

/// Longer than any retry the test config makes (at most 30 s apart).
const LONG: Duration = Duration::from_secs(120);

fn started(flaky: &Flaky) -> Publisher {
    Publisher::start(flaky.clone(), config()).expect("valid config")
}

async fn publish(publisher: &Publisher, names: &[&str], ports: &[u16]) {
    for text in names {
        publisher.add_name(name(text)).await.expect("running");
    }
    for port in ports {
        publisher.add_server(server(*port)).await.expect("running");
    }
}

/// `publisher.wait_mounted(name, port)` in a task of its own.
fn waiting_for(
    publisher: &Publisher,
    text: &str,
    port: u16,
) -> tokio::task::JoinHandle<Result<flotilla_publisher::MountStatus, Error>> {
    let publisher = publisher.clone();
    let (name, server) = (name(text), server(port));
    tokio::spawn(async move { publisher.wait_mounted(&name, &server).await })
}

#[tokio::test(start_paused = true)]
async fn wait_mounted_returns_once_the_mount_resolves_and_not_before() {
    let flaky = Flaky::new();
    flaky.set_down(true);
    let publisher = started(&flaky);
    publish(&publisher, &["a"], &[1]).await;

    // Down: it waits, however long, and dropping the wait changes nothing.
    let (a, one) = (name("a"), server(1));
    let gave_up = timeout(LONG, publisher.wait_mounted(&a, &one)).await;
    assert!(
        gave_up.is_err(),
        "nothing is mounted while the backend is down"
    );
    assert_eq!(resolved(&flaky.table, &a).await, []);

    flaky.set_down(false);
    let status = publisher
        .wait_mounted(&a, &one)
        .await
        .expect("mounted once the backend is back");
    assert_eq!(status.observed, MountState::Mounted);
    assert_eq!(
        resolved(&flaky.table, &a).await,
        std::slice::from_ref(&one),
        "visible the moment the wait returns"
    );
    // Mounted already: it returns at once.
    let asked_at = Instant::now();
    assert!(publisher.wait_mounted(&a, &one).await.is_ok());
    assert_eq!(Instant::now(), asked_at, "no time passed");
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_mounted_fails_when_the_publisher_stops() {
    let flaky = Flaky::new();
    flaky.set_down(true);
    let publisher = started(&flaky);
    publish(&publisher, &["a"], &[1]).await;
    let waiting = waiting_for(&publisher, "a", 1);
    settle().await;
    // Back up for the stop's unmount; the next retry is a while off.
    flaky.set_down(false);
    publisher.stop().await;
    let result = waiting.await.expect("the task does not panic");
    assert!(matches!(result, Err(Error::Stopped)), "{result:?}");

    let after = publisher.wait_mounted(&name("a"), &server(1)).await;
    assert!(matches!(after, Err(Error::Stopped)), "{after:?}");
    let all = publisher.wait_all_mounted().await;
    assert!(matches!(all, Err(Error::Stopped)), "{all:?}");
    assert!(publisher.wait().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_mounted_fails_when_the_pair_is_removed_or_was_never_added() {
    let flaky = Flaky::new();
    flaky.set_down(true);
    let publisher = started(&flaky);
    publish(&publisher, &["a", "b"], &[1, 2]).await;

    let never = publisher.wait_mounted(&name("c"), &server(1)).await;
    assert!(
        matches!(&never, Err(Error::NotPublished { name: n, server: s }) if *n == name("c") && *s == server(1)),
        "{never:?}"
    );

    let by_server = waiting_for(&publisher, "a", 1);
    let by_name = waiting_for(&publisher, "b", 2);
    settle().await;
    publisher.remove_server(server(1)).await.expect("running");
    let result = by_server.await.expect("no panic");
    assert!(
        matches!(&result, Err(Error::NotPublished { name: n, server: s }) if *n == name("a") && *s == server(1)),
        "{result:?}"
    );
    publisher.remove_name(name("b")).await.expect("running");
    let result = by_name.await.expect("no panic");
    assert!(
        matches!(&result, Err(Error::NotPublished { name: n, .. }) if *n == name("b")),
        "{result:?}"
    );
    assert_eq!(
        result.expect_err("removed").to_string(),
        "10.0.0.1:2 is not published under b"
    );
    flaky.set_down(false);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_mounted_fails_when_another_server_s_replace_mount_takes_the_pair_s_place() {
    let backend = LeaseTable::default();
    let publisher = Publisher::start(backend.clone(), config()).expect("valid");
    publisher.add_name(name("a")).await.expect("running");
    publisher.add_server(server(1)).await.expect("running");
    publisher
        .wait_mounted(&name("a"), &server(1))
        .await
        .expect("mounts");

    backend.replace_behind_back(&name("a"), &server(1));
    until(&publisher, |s| {
        s.mount(&name("a"), &server(1))
            .is_some_and(|m| m.observed == MountState::Replaced)
    })
    .await;
    let result = publisher.wait_mounted(&name("a"), &server(1)).await;
    assert!(matches!(result, Err(Error::Replaced { .. })), "{result:?}");
    let all = publisher.wait_all_mounted().await;
    assert!(matches!(all, Err(Error::Replaced { .. })), "{all:?}");
    publisher.stop().await;
    assert!(publisher.wait().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_all_mounted_waits_for_every_pair_wanted_when_called() {
    let flaky = Flaky::new();
    let publisher = started(&flaky);
    let asked_at = Instant::now();
    let nothing = publisher.wait_all_mounted().await.expect("running");
    assert!(nothing.mounts.is_empty());
    assert_eq!(
        Instant::now(),
        asked_at,
        "nothing wanted: nothing to wait for"
    );

    flaky.set_pair_fault(&name("b"), &server(2), Some(PairFault::Unavailable));
    publish(&publisher, &["a", "b"], &[1, 2]).await;
    let gave_up = timeout(LONG, publisher.wait_all_mounted()).await;
    assert!(gave_up.is_err(), "b on 2 never mounts while it fails");
    flaky.set_pair_fault(&name("b"), &server(2), None);
    let status = publisher.wait_all_mounted().await.expect("all mounted");
    assert!(status.all_mounted());
    for text in ["a", "b"] {
        assert_eq!(
            resolved(&flaky.table, &name(text)).await,
            [server(1), server(2)]
        );
    }

    // A pair added after the call is not waited for.
    flaky.set_pair_fault(&name("c"), &server(1), Some(PairFault::Unavailable));
    flaky.set_delay(Duration::from_secs(5));
    publisher.add_server(server(3)).await.expect("running");
    let waiting = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publisher.wait_all_mounted().await })
    };
    settle().await;
    publisher.add_name(name("c")).await.expect("running");
    let status = waiting
        .await
        .expect("no panic")
        .expect("a and b on 1-3 mount");
    for text in ["a", "b"] {
        assert_eq!(
            resolved(&flaky.table, &name(text)).await,
            [server(1), server(2), server(3)]
        );
    }
    let c_on_1 = status.mount(&name("c"), &server(1));
    assert!(c_on_1.is_none_or(|m| m.observed != MountState::Mounted));
    flaky.set_pair_fault(&name("c"), &server(1), None);
    assert!(stop_and_check(publisher).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_all_mounted_fails_when_a_wanted_pair_is_removed() {
    let flaky = Flaky::new();
    flaky.set_pair_fault(&name("a"), &server(2), Some(PairFault::Unavailable));
    let publisher = started(&flaky);
    publish(&publisher, &["a"], &[1, 2]).await;
    let waiting = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publisher.wait_all_mounted().await })
    };
    settle().await;
    publisher.remove_server(server(2)).await.expect("running");
    let result = waiting.await.expect("no panic");
    assert!(
        matches!(&result, Err(Error::NotPublished { server: s, .. }) if *s == server(2)),
        "{result:?}"
    );
    // Working again, so that the stop can unmount what may have landed.
    flaky.set_pair_fault(&name("a"), &server(2), None);
    assert!(stop_and_check(publisher).await.is_ok());
}
