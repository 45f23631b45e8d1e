//! Garbage collection: what every known device holds is removed, a silent
//! device holds it back until evicted, and a device that lacks collected
//! generations (evicted and back, or new) gets what the log still has and
//! converges.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_gensync::wire::{Connection, Message};
use flotilla_gensync::{Collector, Error, initiate_over};

use crate::harness::{Node, assert_converged, device, pipe, pull, stop, transport};
use crate::hostile::{record, vector};

const HOUR: Duration = Duration::from_secs(3600);

/// Moves every clock of `nodes` two hours on.
fn two_hours_on(nodes: &[&Node]) {
    for node in nodes {
        node.set_clock(node.clock.load(std::sync::atomic::Ordering::SeqCst) + 2 * 3_600_000);
    }
}

async fn updates(node: &Node, key: &str, count: usize) {
    for i in 0..count {
        node.put(key, &format!("{key}={i}")).await;
    }
}

#[tokio::test]
async fn what_every_peer_holds_is_collected_and_current_values_stay() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let (serve_a, serve_b) = (a.serve().await, b.serve().await);
    updates(&a, "x", 20).await;
    updates(&a, "y", 5).await;
    pull(&b, &serve_a).await;
    pull(&a, &serve_b).await; // a learns b's vector
    let before = a.replica.log_len().expect("reads");

    let stats = a.replica.collect_garbage(HOUR).await.expect("collects");
    assert_eq!(stats.records_pruned, 23, "all but the two current versions");
    assert_eq!(stats.versions_pruned, 23);
    assert!(stats.evicted.is_empty());
    assert_eq!(a.replica.log_len().expect("reads"), before - 23);
    assert_eq!(a.get("x").as_deref(), Some("x=19"));
    assert_eq!(a.get("y").as_deref(), Some("y=4"));
    assert_eq!(a.replica.verify().expect("reads"), Ok(()));

    // Syncing goes on as before.
    a.put("x", "after").await;
    pull(&b, &serve_a).await;
    assert_eq!(b.get("x").as_deref(), Some("after"));
    assert_converged(&a, &b);
    stop(serve_a).await;
    stop(serve_b).await;
}

#[tokio::test]
async fn a_silent_device_holds_collection_back_until_it_is_evicted() {
    let (a, b, c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let (serve_a, serve_b, serve_c) = (a.serve().await, b.serve().await, c.serve().await);
    updates(&a, "x", 5).await;
    pull(&c, &serve_a).await;
    // a hears that c has generation 1; then c falls silent.
    pull(&a, &serve_c).await;
    updates(&a, "x", 5).await;
    pull(&b, &serve_a).await;
    pull(&a, &serve_b).await;

    let held_back = a.replica.collect_garbage(HOUR).await.expect("collects");
    assert_eq!(
        held_back.collected.get(&device("a")),
        1,
        "c holds generation 2 back"
    );
    assert_eq!(held_back.records_pruned, 5, "generation 1, all superseded");

    // Two hours on (for every clock), b has been heard from again; c has
    // not. (b tells a when it last heard of c, as an age.)
    two_hours_on(&[&a, &b, &c]);
    pull(&a, &serve_b).await;
    let evicting = a.replica.collect_garbage(HOUR).await.expect("collects");
    assert_eq!(evicting.evicted, [device("c")]);
    assert_eq!(evicting.collected.get(&device("a")), 2);
    assert_eq!(a.replica.verify().expect("reads"), Ok(()));
    for responder in [serve_a, serve_b, serve_c] {
        stop(responder).await;
    }
}

/// a, b and c in a line: a and c never meet, yet each learns the other's
/// vector through b, and every replica collects what all three hold.
#[tokio::test]
async fn replicas_in_a_line_collect_without_the_ends_ever_meeting() {
    let (a, b, c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let (serve_a, serve_b, serve_c) = (a.serve().await, b.serve().await, c.serve().await);
    updates(&a, "x", 10).await;
    updates(&c, "y", 10).await;
    // Twice along the line: the records move end to end, then the vectors.
    for _ in 0..2 {
        pull(&b, &serve_a).await;
        pull(&b, &serve_c).await;
        pull(&a, &serve_b).await;
        pull(&c, &serve_b).await;
    }
    assert_converged(&a, &c);
    let everyone = a.replica.vector().expect("reads");
    let known_of = |node: &Node, other: &str| {
        node.replica
            .devices()
            .expect("reads")
            .into_iter()
            .find(|info| info.device == device(other))
            .map(|info| info.vector)
    };
    assert_eq!(
        known_of(&a, "c"),
        Some(everyone.clone()),
        "a knows c's vector through b"
    );
    assert_eq!(
        known_of(&c, "a"),
        Some(everyone.clone()),
        "c knows a's vector through b"
    );
    for node in [&a, &b, &c] {
        let stats = node.replica.collect_garbage(HOUR).await.expect("collects");
        assert_eq!(
            (stats.records_pruned, stats.collected.clone()),
            (18, everyone.clone()),
            "{:?}: all but the current x and y",
            node.replica.device()
        );
        assert!(stats.evicted.is_empty());
        assert_eq!(node.replica.verify().expect("reads"), Ok(()));
    }
    assert_eq!(a.get("y").as_deref(), Some("y=9"));
    assert_eq!(c.get("x").as_deref(), Some("x=9"));
    for responder in [serve_a, serve_b, serve_c] {
        stop(responder).await;
    }
}

/// A relay says how long ago it heard of a device, not when: a peer whose
/// clock runs far ahead cannot keep a silent device from eviction.
#[tokio::test]
async fn a_relay_from_a_clock_far_ahead_does_not_keep_a_device_from_eviction() {
    let (a, b, c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let (serve_b, serve_c) = (b.serve().await, c.serve().await);
    updates(&c, "y", 3).await;
    let ahead = u64::MAX / 2;
    b.set_clock(ahead);
    pull(&b, &serve_c).await; // b hears from c, by its clock in the far future
    b.set_clock(ahead + 500);
    pull(&a, &serve_b).await; // and tells a it did 500 ms ago
    let heard = |node: &Node| {
        node.replica
            .devices()
            .expect("reads")
            .into_iter()
            .find(|info| info.device == device("c"))
            .map(|info| info.last_heard_ms)
    };
    assert_eq!(heard(&a), Some(1_000), "a heard of c as an author at 1,000");
    // Two hours on, by both clocks: a hears from b again, nobody from c.
    let later = 2 * 3_600_000;
    a.set_clock(1_000 + later);
    b.set_clock(ahead + later);
    pull(&a, &serve_b).await;
    assert_eq!(heard(&a), Some(1_000), "b heard of c two hours ago");
    let stats = a.replica.collect_garbage(HOUR).await.expect("collects");
    assert_eq!(stats.evicted, [device("c")]);
    stop(serve_b).await;
    stop(serve_c).await;
}

#[tokio::test]
async fn an_evicted_device_that_returns_gets_the_current_state_and_converges() {
    let (a, b, c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let (serve_a, serve_b, serve_c) = (a.serve().await, b.serve().await, c.serve().await);
    updates(&a, "x", 5).await;
    pull(&c, &serve_a).await;
    pull(&a, &serve_c).await;
    updates(&a, "x", 5).await;
    updates(&a, "y", 3).await;
    pull(&b, &serve_a).await;
    two_hours_on(&[&a, &b, &c]);
    pull(&a, &serve_b).await; // b is heard from after the jump; c is not
    let stats = a.replica.collect_garbage(HOUR).await.expect("collects");
    assert_eq!(stats.evicted, [device("c")]);

    // While away, c wrote a key of its own.
    c.put("z", "from c").await;
    let back = pull(&c, &serve_a).await;
    assert!(back.applied >= 2, "the current versions arrived: {back:?}");
    assert_eq!(c.get("x").as_deref(), Some("x=4"));
    assert_eq!(c.get("y").as_deref(), Some("y=2"));
    assert_eq!(c.replica.verify().expect("reads"), Ok(()));
    pull(&a, &serve_c).await;
    pull(&b, &serve_a).await;
    pull(&c, &serve_a).await;
    assert_converged(&a, &b);
    assert_converged(&a, &c);
    for responder in [serve_a, serve_b, serve_c] {
        stop(responder).await;
    }
}

#[tokio::test]
async fn a_device_new_after_collection_gets_the_current_state() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let (serve_a, serve_b) = (a.serve().await, b.serve().await);
    updates(&a, "x", 10).await;
    pull(&b, &serve_a).await;
    pull(&a, &serve_b).await;
    a.replica.collect_garbage(HOUR).await.expect("collects");
    assert!(a.replica.collected().expect("reads").get(&device("a")) >= 1);

    let newcomer = Node::new("n");
    pull(&newcomer, &serve_a).await;
    assert_eq!(newcomer.get("x").as_deref(), Some("x=9"));
    assert_converged(&a, &newcomer);
    assert_eq!(newcomer.replica.verify().expect("reads"), Ok(()));
    stop(serve_a).await;
    stop(serve_b).await;
}

#[tokio::test]
async fn a_collector_worker_collects_on_its_interval_and_stops() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let (serve_a, serve_b) = (a.serve().await, b.serve().await);
    updates(&a, "x", 10).await;
    pull(&b, &serve_a).await;
    pull(&a, &serve_b).await;
    let collector = Collector::start(a.replica.clone(), Duration::from_millis(20), HOUR);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while a.replica.log_len().expect("reads") > 1 {
        assert!(tokio::time::Instant::now() < deadline, "collected in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    collector.kill();
    collector.wait().await.expect("clean stop");
    stop(serve_a).await;
    stop(serve_b).await;
}

#[tokio::test]
async fn collection_does_not_wait_behind_a_round_whose_peer_stalls() {
    let node = Node::new("me");
    let (near, far) = pipe(&node.transport, &transport("x"), 1 << 16).await;
    let (requested, request_seen) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    // A peer that takes our request (the round holds its gate from before
    // it goes out), sends a record, and stalls until released.
    let peer = tokio::spawn(async move {
        let mut connection = Connection::new(far);
        let _hello = connection.recv().await;
        let _ = connection
            .send(&Message::Hello {
                device: device("x"),
            })
            .await;
        let _request = connection.recv().await;
        let _ = connection
            .send(&Message::Record(record("x", 1, 1, "k", vec![])))
            .await;
        let _ = requested.send(());
        let _ = released.await;
        let _ = connection
            .send(&Message::Done {
                vector: vector(&[("x", 1)]),
            })
            .await;
        connection
    });
    let round = tokio::spawn({
        let replica = node.replica.clone();
        async move { initiate_over(&replica, near).await }
    });
    request_seen.await.expect("the peer gets the request");

    let bound = Duration::from_secs(10);
    let collected = tokio::time::timeout(bound, node.replica.collect_garbage(HOUR)).await;
    // A collector tries, and skips, three times while the round stalls.
    let collector = Collector::start(node.replica.clone(), Duration::from_millis(1), HOUR);
    let tried = tokio::time::timeout(bound, collector.passes().wait_for(|&passes| passes >= 3))
        .await
        .is_ok();
    collector.kill();
    let stopped = tokio::time::timeout(bound, collector.wait()).await;
    // Unstall the peer before asserting, so that a failure does not hang.
    let _ = release.send(());
    assert!(
        matches!(collected, Ok(Err(Error::RoundUnderway))),
        "collection reports the round at once: {collected:?}"
    );
    assert!(tried, "a collector goes on trying while a round stalls");
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "a collector stops while a round stalls"
    );

    let stats = round
        .await
        .expect("the round task ends")
        .expect("the round completes once the peer goes on");
    assert_eq!(stats.applied, 1);
    node.replica
        .collect_garbage(HOUR)
        .await
        .expect("collects once the round is over");
    assert_eq!(node.get("k").as_deref(), Some("v"));
    drop(peer.await.expect("the peer task ends"));
}
