//! Replicas syncing over real loopback TCP.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_gensync::{Initiator, Origin, Peers, SyncConfig};

use crate::harness::{Node, assert_converged, device, pull, stop};

#[tokio::test]
async fn two_replicas_converge_and_nothing_is_sent_twice() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    for i in 0..50 {
        a.put(&format!("a/{i}"), "from a").await;
        b.put(&format!("b/{i}"), "from b").await;
    }
    let (serve_a, serve_b) = (a.serve().await, b.serve().await);
    assert_eq!(pull(&b, &serve_a).await.applied, 50);
    assert_eq!(pull(&a, &serve_b).await.applied, 50);
    assert_converged(&a, &b);
    assert_eq!(a.replica.scan(b"").expect("scans").len(), 100);

    let again = pull(&b, &serve_a).await;
    assert_eq!(
        (again.applied, again.duplicates),
        (0, 0),
        "a second round sends nothing"
    );
    assert_eq!(
        a.replica.vector().expect("reads"),
        b.replica.vector().expect("reads")
    );
    stop(serve_a).await;
    stop(serve_b).await;
}

#[tokio::test]
async fn updates_fast_forward_and_deletes_replicate() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let serve_a = a.serve().await;
    a.put("k", "1").await;
    pull(&b, &serve_a).await;
    a.put("k", "2").await;
    a.replica.delete(b"gone".to_vec()).await.expect("deletes");
    a.put("k", "3").await;
    let round = pull(&b, &serve_a).await;
    assert_eq!(round.conflicts, 0, "a chain of updates is no conflict");
    assert_eq!(b.get("k").as_deref(), Some("3"));
    assert_eq!(b.get("gone"), None);
    assert_converged(&a, &b);
    stop(serve_a).await;
}

#[tokio::test]
async fn concurrent_writes_to_one_key_converge_to_the_later_write_everywhere() {
    let (a, b, c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    a.set_clock(5_000);
    b.set_clock(6_000);
    c.set_clock(4_000);
    a.put("k", "a's").await;
    b.put("k", "b's").await;
    c.put("k", "c's").await;
    let (serve_a, serve_b, serve_c) = (a.serve().await, b.serve().await, c.serve().await);
    // Each resolves the conflicts it meets on its own.
    assert_eq!(pull(&a, &serve_b).await.conflicts, 1);
    assert_eq!(pull(&c, &serve_b).await.conflicts, 1);
    pull(&b, &serve_c).await;
    pull(&a, &serve_c).await;
    pull(&b, &serve_a).await;
    pull(&c, &serve_a).await;
    for node in [&a, &b, &c] {
        assert_eq!(
            node.get("k").as_deref(),
            Some("b's"),
            "{:?}",
            node.replica.device()
        );
    }
    assert_converged(&a, &b);
    assert_converged(&b, &c);
    // The merges they made alike are one version: no new conflicts.
    for (node, from) in [(&a, &serve_b), (&b, &serve_c), (&c, &serve_a)] {
        assert_eq!(pull(node, from).await.conflicts, 0);
    }
    for responder in [serve_a, serve_b, serve_c] {
        stop(responder).await;
    }
}

#[tokio::test]
async fn equal_timestamps_are_settled_by_device_id() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    a.put("k", "a's").await;
    b.put("k", "b's").await;
    let (serve_a, serve_b) = (a.serve().await, b.serve().await);
    pull(&a, &serve_b).await;
    pull(&b, &serve_a).await;
    assert_eq!(a.get("k").as_deref(), Some("b's"));
    assert_converged(&a, &b);
    stop(serve_a).await;
    stop(serve_b).await;
}

#[tokio::test]
async fn records_travel_through_a_replica_that_did_not_write_them() {
    let (a, b, c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    a.put("k", "1").await;
    let (serve_a, serve_b) = (a.serve().await, b.serve().await);
    pull(&b, &serve_a).await;
    pull(&c, &serve_b).await;
    assert_eq!(c.get("k").as_deref(), Some("1"));
    assert_eq!(c.replica.vector().expect("reads").get(&device("a")), 1);
    // c has a's generation now, so a second hop via a sends nothing new.
    assert_eq!(pull(&c, &serve_a).await.applied, 0);
    stop(serve_a).await;
    stop(serve_b).await;
}

#[tokio::test]
async fn watchers_see_replicated_changes() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let serve_a = a.serve().await;
    a.put("k", "v").await;
    let mut changes = b.replica.watch();
    pull(&b, &serve_a).await;
    let change = changes.recv().await.expect("a change");
    assert_eq!(change.origin, Origin::Replicated);
    assert_eq!(change.value.as_deref(), Some(&b"v"[..]));
    stop(serve_a).await;
}

#[tokio::test]
async fn an_initiator_keeps_a_replica_in_step_with_its_peers() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let serve_a = a.serve().await;
    let mut config = SyncConfig::default();
    config.interval = Duration::from_millis(50);
    let initiator = Initiator::start(
        b.replica.clone(),
        b.transport.clone(),
        Peers::Fixed(vec![serve_a.local_addr()]),
        config,
    );
    let mut passes = initiator.passes();
    a.put("k", "1").await;
    let start = *passes.borrow_and_update();
    passes
        .wait_for(|&done| done >= start + 2)
        .await
        .expect("initiator running");
    assert_eq!(b.get("k").as_deref(), Some("1"));
    initiator.kill();
    initiator.wait().await.expect("clean stop");
    stop(serve_a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_busy_with_its_own_round_still_serves_its_sealed_generations() {
    use flotilla_gensync::wire::{Connection, Message};
    let (a, b) = (Node::new("a"), Node::new("b"));
    let serve_a = a.serve().await;
    for i in 0..10 {
        a.put(&format!("first/{i}"), "v").await;
    }
    assert_eq!(pull(&b, &serve_a).await.applied, 10);
    for i in 0..5 {
        a.put(&format!("second/{i}"), "v").await;
    }

    // a starts a round with a peer that answers and then stalls, so a's
    // round holds a's store for as long as the test wants.
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let stalling_address = stalling.local_addr().expect("an address");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (requested, request_seen) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        let (stream, _) = stalling.accept().await.expect("a connection");
        let secured = crate::harness::transport("x")
            .accept(stream)
            .await
            .expect("a is of the cluster");
        let mut connection = Connection::new(secured);
        let _ = connection.recv().await;
        let _ = connection
            .send(&Message::Hello {
                device: crate::harness::device("x"),
            })
            .await;
        let _ = connection.recv().await;
        let _ = requested.send(());
        let _ = released.await;
    });
    let (busy, busy_transport) = (a.replica.clone(), a.transport.clone());
    let stalled_round = tokio::spawn(async move {
        flotilla_gensync::sync_with(
            &busy,
            &busy_transport,
            stalling_address,
            &SyncConfig::default(),
        )
        .await
    });
    // a's round is under way, holding a's store, once its peer has the
    // request.
    request_seen
        .await
        .expect("the stalling peer got the request");

    // b's round with a completes meanwhile; a cannot seal its open
    // generation, so it sends nothing new.
    let mut config = SyncConfig::default();
    config.round_timeout = Duration::from_secs(10);
    let round =
        flotilla_gensync::sync_with(&b.replica, &b.transport, serve_a.local_addr(), &config)
            .await
            .expect("served while a is busy");
    assert_eq!(round.applied, 0);

    let _ = release.send(());
    peer.await.expect("the stalling peer ends");
    assert!(
        stalled_round.await.expect("no panic").is_err(),
        "the stalled round failed"
    );
    assert_eq!(
        pull(&b, &serve_a).await.applied,
        5,
        "the open generation goes next time"
    );
    stop(serve_a).await;
}
