//! What each worker tells a supervisor's report: the replica, the
//! responder, the initiator and the collector, as JSON.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_gensync::wire::{Connection, Message};
use flotilla_gensync::{Collector, Initiator, Peers, SyncConfig};
use serde_json::json;

use crate::harness::{Node, device, pull, stop};

async fn report_of(worker: &dyn Worker) -> serde_json::Value {
    worker.report().expect("reports").await
}

#[tokio::test]
async fn a_replica_reports_its_device_vector_log_heads_and_whether_it_is_closed() {
    let node = Node::new("a");
    node.put("k", "1").await;
    node.put("k", "2").await;
    node.put("j", "1").await;
    let report = report_of(&node.replica).await;
    assert_eq!(report["device"], "a");
    assert_eq!(report["state"], "running");
    assert_eq!(report["closed"], false);
    assert_eq!(report["log_len"], 3);
    assert_eq!(report["heads"], 2);
    // Nothing sealed yet: the open generation is not in the vector.
    assert_eq!(report["vector"], json!({}));

    node.replica.kill();
    assert_eq!(report_of(&node.replica).await["state"], "stopping");
    node.replica.wait().await.expect("ends cleanly");
    let closed = report_of(&node.replica).await;
    assert_eq!(
        closed,
        json!({ "device": "a", "state": "closed", "closed": true })
    );
}

#[tokio::test]
async fn a_responder_reports_its_address_rounds_served_and_connected_peers() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    a.put("k", "v").await;
    let serve_a = a.serve().await;
    pull(&b, &serve_a).await;
    // A peer that says hello, gets the responder's, and stays connected.
    let stream = tokio::net::TcpStream::connect(serve_a.local_addr())
        .await
        .expect("connects");
    let secured = crate::harness::transport("c")
        .connect(stream, None)
        .await
        .expect("c is of the cluster");
    let mut peer = Connection::new(secured);
    peer.send(&Message::Hello {
        device: device("c"),
    })
    .await
    .expect("sends");
    let hello = peer.recv().await.expect("reads");
    assert!(matches!(hello, Some(Message::Hello { .. })), "{hello:?}");

    // The responder counts a round once its task is done with it, which
    // may be just after the initiator has seen the round's end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = report_of(&serve_a).await;
        if report["rounds_served"] == 1 {
            break report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(report["state"], "running");
    assert_eq!(report["local_addr"], serve_a.local_addr().to_string());
    assert_eq!(report["rounds_served"], 1);
    assert_eq!(report["rounds_failed"], 0);
    assert_eq!(report["last_failure"], json!(null));
    assert_eq!(report["handshakes_failed"], 0);
    assert_eq!(report["connections_refused"], 0);
    assert_eq!(report["connected_peers"], json!(["c"]));
    drop(peer);
    stop(serve_a).await;
}

#[tokio::test]
async fn an_initiator_reports_its_passes_and_each_peers_last_round() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    a.put("k", "v").await;
    let serve_a = a.serve().await;
    // An address nobody listens on any more.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let gone_address = gone.local_addr().expect("an address");
    drop(gone);
    let mut config = SyncConfig::default();
    config.interval = Duration::from_secs(3600);
    let initiator = Initiator::start(
        b.replica.clone(),
        b.transport.clone(),
        Peers::Fixed(vec![serve_a.local_addr(), gone_address]),
        config,
    );
    initiator
        .passes()
        .wait_for(|&passes| passes >= 1)
        .await
        .expect("initiator running");
    let report = report_of(&initiator).await;
    assert_eq!(report["state"], "running");
    assert_eq!(report["passes"], 1);
    assert_eq!(report["peers_error"], json!(null));
    let good = &report["last_rounds"][serve_a.local_addr().to_string()];
    assert_eq!(
        good,
        &json!({ "ok": true, "applied": 1, "duplicates": 0, "conflicts": 0 })
    );
    let bad = &report["last_rounds"][gone_address.to_string()];
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|error| error.contains("cannot connect")),
        "{bad}"
    );
    initiator.kill();
    initiator.wait().await.expect("clean stop");
    assert_eq!(report_of(&initiator).await["state"], "stopped");
    stop(serve_a).await;
}

#[tokio::test(start_paused = true)]
async fn a_collector_reports_its_passes_and_last_result() {
    let node = Node::new("a");
    node.put("k", "v").await;
    let collector = Collector::start(
        node.replica.clone(),
        Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    let before = report_of(&collector).await;
    assert_eq!(before["passes"], 0);
    assert_eq!(before["last_result"], json!(null));
    collector
        .passes()
        .wait_for(|&passes| passes >= 1)
        .await
        .expect("collector running");
    let report = report_of(&collector).await;
    assert_eq!(report["state"], "running");
    assert!(report["passes"].as_u64().is_some_and(|passes| passes >= 1));
    let last = &report["last_result"];
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["evicted"], json!([]));
    assert!(last["records_pruned"].is_u64(), "{last}");
    collector.kill();
    collector.wait().await.expect("clean stop");
}
