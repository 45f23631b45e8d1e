//! Peers that are not trusted, or that claim another device than their
//! certificate names, in either role: each is refused with its typed
//! error, before anything it sent is read, and nothing of it is stored
//! (not its records, not even that it was heard of). Devices trusted by
//! pinned keys sync as those vouched for by the cluster CA do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_core_types::Worker;
use flotilla_gensync::wire::{Connection, Message};
use flotilla_gensync::{
    Error, GenVector, Identity, Responder, SyncConfig, Transport, Trust, TrustError, sync_with,
};
use flotilla_identity::ClusterCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Node, cluster_trust, device, identity, pull, stop, transport};
use crate::hostile::{dial_as, fake_responder, refused};

/// Everything a replica has kept of its peers: what it holds, and which
/// devices it has heard of.
fn kept(node: &Node) -> (GenVector, u64, Vec<String>) {
    let devices = node
        .replica
        .devices()
        .expect("reads")
        .into_iter()
        .map(|info| info.device.to_string())
        .collect();
    (
        node.replica.vector().expect("reads"),
        node.replica.log_len().expect("reads"),
        devices,
    )
}

/// A responder serving a replica with a record, under `identity`. It
/// trusts the test cluster (an untrusted peer accepts us, so that it is
/// our side that refuses).
async fn serving_as(name: &str, identity: &Identity) -> (Node, Responder) {
    let mut node = Node::new(name);
    node.put("theirs", "v").await;
    node.transport = Transport::tls(identity, cluster_trust()).expect("a configuration");
    let responder = node.serve().await;
    (node, responder)
}

fn a_day_around_now() -> std::ops::Range<SystemTime> {
    let now = SystemTime::now();
    now - Duration::from_secs(86_400)..now + Duration::from_secs(86_400)
}

fn untrusted_identities() -> Vec<(&'static str, Identity)> {
    let stranger = device("stranger");
    let year_2001 = UNIX_EPOCH + Duration::from_secs(978_307_200);
    let other_ca = ClusterCa::generate("another cluster").expect("a CA");
    vec![
        (
            "a self-signed certificate",
            Identity::generate(&stranger).expect("an identity"),
        ),
        (
            "another CA's certificate",
            other_ca
                .issue(&stranger, a_day_around_now())
                .expect("issues"),
        ),
        (
            "an expired certificate",
            crate::harness::issue(
                &stranger,
                year_2001..year_2001 + Duration::from_secs(86_400),
            ),
        ),
    ]
}

#[tokio::test]
async fn an_untrusted_responder_is_refused_in_the_handshake_with_why() {
    for (which, identity) in untrusted_identities() {
        let node = Node::new("me");
        let before = kept(&node);
        let (_stranger, responder) = serving_as("stranger", &identity).await;
        let error = refused(&node, responder.local_addr()).await;
        match error.refusal() {
            Some(TrustError::NotSignedByClusterCa {
                device: named,
                reason,
            }) => {
                assert_eq!(named, &device("stranger"), "{which}");
                if which.contains("expired") {
                    assert!(
                        reason.to_lowercase().contains("expired"),
                        "{which}: {reason}"
                    );
                }
            }
            other => panic!("{which}: not refused for it: {other:?} ({error})"),
        }
        assert!(
            matches!(error, Error::Handshake { peer: Some(_), .. }),
            "{error:?}"
        );
        assert_eq!(kept(&node), before, "{which}: nothing is kept");
        stop(responder).await;
    }
}

#[tokio::test]
async fn an_untrusted_initiator_is_refused_and_not_even_heard_of() {
    let node = Node::new("me");
    node.put("mine", "v").await;
    let responder = node.serve().await;
    let before = kept(&node);
    for (round, (which, identity)) in untrusted_identities().into_iter().enumerate() {
        let mut stranger = Node::new("stranger");
        stranger.transport = Transport::tls(&identity, cluster_trust()).expect("a configuration");
        let error = sync_with(
            &stranger.replica,
            &stranger.transport,
            responder.local_addr(),
            &SyncConfig::default(),
        )
        .await
        .expect_err("refused");
        // The stranger learns that it was refused, not why.
        assert!(
            matches!(&error, Error::Handshake { source, .. } if source.refusal().is_none()),
            "{which}: {error:?}"
        );
        assert_eq!(stranger.get("mine"), None, "{which}: nothing is sent");
        let report = handshake_failures(&responder, round + 1).await;
        let why = report["last_handshake_failure"]
            .as_str()
            .expect("a failure");
        assert!(
            why.contains("stranger") && why.contains("not valid under a trusted cluster CA"),
            "{which}: {why}"
        );
    }
    assert_eq!(kept(&node), before, "nothing is kept of a stranger");
    assert_eq!(pull(&Node::new("friend"), &responder).await.applied, 1);
    stop(responder).await;
}

/// The responder's report once it has counted `failed` failed rounds.
async fn failures(responder: &Responder, failed: usize) -> serde_json::Value {
    report_when(responder, "rounds_failed", failed).await
}

/// The responder's report once it has counted `failed` failed handshakes.
async fn handshake_failures(responder: &Responder, failed: usize) -> serde_json::Value {
    report_when(responder, "handshakes_failed", failed).await
}

async fn report_when(responder: &Responder, field: &str, count: usize) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = responder.report().expect("reports").await;
        if report[field] == count {
            return report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_before_it_is_read() {
    let node = Node::new("me");
    node.put("mine", "v").await;
    let responder = node.serve().await;
    let before = kept(&node);
    let stream = tokio::net::TcpStream::connect(responder.local_addr())
        .await
        .expect("connects");
    let mut anonymous = flotilla_testkit::anonymous_tls_client()
        .connect(flotilla_identity::tls::server_name(), stream)
        .await
        .expect("a TLS 1.3 client's handshake ends before the server checks it");
    // Its hello, then what it gets back.
    let _ = anonymous.write_all(&[0, 0, 0, 2, 2, 0]).await;
    let mut answer = Vec::new();
    let read = anonymous.read_to_end(&mut answer).await;
    assert!(read.is_err() || answer.is_empty(), "sent {answer:?}");
    let report = handshake_failures(&responder, 1).await;
    let why = report["last_handshake_failure"]
        .as_str()
        .expect("a failure");
    assert!(why.contains("the peer presented no certificate"), "{why}");
    assert_eq!(kept(&node), before);
    stop(responder).await;
}

#[tokio::test]
async fn a_trusted_responder_claiming_another_device_is_refused_before_its_records() {
    let node = Node::new("me");
    let before = kept(&node);
    // Certified as x, it greets as y and sends y's record.
    let (address, _peer) = fake_responder("x", |stream| async move {
        let mut connection = Connection::new(stream);
        let _hello = connection.recv().await;
        let _ = connection
            .send(&Message::Hello {
                device: device("y"),
            })
            .await;
        let _request = connection.recv().await;
        let _ = connection
            .send(&Message::Record(crate::hostile::record(
                "y",
                1,
                1,
                "k",
                vec![],
            )))
            .await;
    })
    .await;
    match refused(&node, address).await {
        Error::NotCertified { claimed, certified } => {
            assert_eq!((claimed, certified), (device("y"), device("x")));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(kept(&node), before);
}

#[tokio::test]
async fn a_trusted_initiator_claiming_another_device_is_refused_and_told_why() {
    let node = Node::new("me");
    node.put("mine", "v").await;
    let responder = node.serve().await;
    let before = kept(&node);
    let mut impostor = dial_as("x", responder.local_addr()).await;
    impostor
        .send(&Message::Hello {
            device: device("y"),
        })
        .await
        .expect("sends");
    match impostor.recv().await.expect("an answer") {
        Some(Message::Abort { reason }) => {
            assert!(reason.contains("its certificate names x"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let report = failures(&responder, 1).await;
    assert_eq!(report["connected_peers"], serde_json::json!([]));
    assert_eq!(kept(&node), before);
    stop(responder).await;
}

#[tokio::test]
async fn plaintext_and_tls_do_not_speak_to_each_other() {
    // A plaintext initiator at a TLS responder: a failed handshake there.
    let node = Node::new("me");
    node.put("mine", "v").await;
    let responder = node.serve().await;
    let before = kept(&node);
    let plain = Node::new("plain");
    let error = sync_with(
        &plain.replica,
        &Transport::insecure_plaintext(),
        responder.local_addr(),
        &SyncConfig::default(),
    )
    .await
    .expect_err("refused");
    assert!(
        !matches!(error, Error::Handshake { .. }),
        "it has no handshake: {error:?}"
    );
    let report = handshake_failures(&responder, 1).await;
    let why = report["last_handshake_failure"]
        .as_str()
        .expect("a failure");
    assert!(why.contains("TLS handshake failed"), "{why}");
    assert_eq!(kept(&node), before);
    assert_eq!(plain.get("mine"), None);
    stop(responder).await;

    // A TLS initiator at a plaintext responder: the handshake fails.
    let plain_server = Node::new("plain");
    plain_server.put("theirs", "v").await;
    let address: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let responder = Responder::bind(
        plain_server.replica.clone(),
        Transport::insecure_plaintext(),
        address,
        SyncConfig::default(),
    )
    .await
    .expect("binds");
    let node = Node::new("me");
    let error = refused(&node, responder.local_addr()).await;
    assert!(
        matches!(&error, Error::Handshake { source, .. } if source.refusal().is_none()),
        "{error:?}"
    );
    stop(responder).await;
}

#[tokio::test]
async fn a_transport_of_another_device_is_refused_before_connecting() {
    let node = Node::new("me");
    let address: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let error = Responder::bind(
        node.replica.clone(),
        transport("you"),
        address,
        SyncConfig::default(),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(&error, Error::IdentityMismatch { replica, identity }
            if *replica == device("me") && *identity == device("you")),
        "{error:?}"
    );
    // Not even a connection is tried.
    let error = sync_with(
        &node.replica,
        &transport("you"),
        address,
        &SyncConfig::default(),
    )
    .await
    .expect_err("refused");
    assert!(matches!(error, Error::IdentityMismatch { .. }), "{error:?}");
}

/// Syncthing's model: each device trusts a list of devices, each pinned to
/// its key, and no CA.
#[tokio::test]
async fn devices_trusted_by_pinned_keys_sync_and_others_are_unknown() {
    let (a_key, b_key) = (
        Identity::generate(&device("a")).expect("an identity"),
        Identity::generate(&device("b")).expect("an identity"),
    );
    let trust = Arc::new(Trust::of([&a_key, &b_key]));
    let mut a = Node::new("a");
    a.transport = Transport::tls(&a_key, Arc::clone(&trust)).expect("a configuration");
    let mut b = Node::new("b");
    b.transport = Transport::tls(&b_key, trust).expect("a configuration");
    a.put("k", "v").await;
    let serve_a = a.serve().await;
    assert_eq!(pull(&b, &serve_a).await.applied, 1);
    assert_eq!(b.get("k").as_deref(), Some("v"));

    // A device the test cluster's CA vouches for is a stranger here, even
    // one that trusts a.
    let mut outsider = Node::new("c");
    outsider.transport =
        Transport::tls(&identity("c"), Arc::new(Trust::of([&a_key]))).expect("a configuration");
    let error = refused(&outsider, serve_a.local_addr()).await;
    assert!(
        matches!(&error, Error::Handshake { source, .. } if source.refusal().is_none()),
        "refused by a: {error:?}"
    );
    let report = handshake_failures(&serve_a, 1).await;
    let why = report["last_handshake_failure"]
        .as_str()
        .expect("a failure");
    assert!(
        why.contains("c (key") && why.contains("not a trusted device"),
        "{why}"
    );
    stop(serve_a).await;
}

/// Anyone who reaches the port can open connections: one that says
/// nothing is dropped when its handshake time is up, and connections
/// beyond the limit are closed at once, so neither holds the responder.
#[tokio::test]
async fn silent_and_surplus_connections_do_not_hold_the_responder() {
    let node = Node::new("me");
    node.put("mine", "v").await;
    let mut config = SyncConfig::default();
    // Long enough that the surplus connection surely comes while the
    // silent one holds the slot.
    config.handshake_timeout = Duration::from_secs(2);
    config.max_handshakes = 1;
    let responder = node.serve_with(config).await;
    // Holds the only slot, and never starts a handshake.
    let silent = crowded_out(responder.local_addr()).await;
    let report = handshake_failures(&responder, 1).await;
    let why = report["last_handshake_failure"]
        .as_str()
        .expect("a failure");
    assert!(why.contains("not completed within 2000 ms"), "{why}");
    assert_eq!(report["connections_refused"], 1);
    // The slot is free again.
    assert_eq!(pull(&Node::new("friend"), &responder).await.applied, 1);
    drop(silent);
    stop(responder).await;
}

/// Opens a connection to `address` that never starts its handshake, then
/// another that the responder closes at once, as it has no place for it;
/// returns the first, still open.
async fn crowded_out(address: SocketAddr) -> tokio::net::TcpStream {
    let silent = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let mut surplus = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), surplus.read_to_end(&mut rest))
        .await
        .expect("the surplus connection is closed");
    assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");
    silent
}

/// Strangers at one address cannot take the places peers at others need
/// to prove themselves.
#[tokio::test]
async fn handshakes_from_one_address_are_limited_apart() {
    let node = Node::new("me");
    node.put("mine", "v").await;
    let mut config = SyncConfig::default();
    config.max_handshakes_per_address = 1;
    let responder = node.serve_with(config).await;
    let address = responder.local_addr();
    // 127.0.0.1 holds its one place with a silent connection.
    let _silent = crowded_out(address).await;
    report_when(&responder, "connections_refused", 1).await;
    // A peer from another loopback address is served meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.2:0".parse().expect("an address"))
        .expect("binds 127.0.0.2");
    let stream = socket.connect(address).await.expect("connects");
    let friend = Node::new("friend");
    let secured = friend
        .transport
        .connect(stream, None)
        .await
        .expect("a trusted responder");
    let stats = flotilla_gensync::initiate_over(&friend.replica, secured)
        .await
        .expect("served");
    assert_eq!(stats.applied, 1);
    stop(responder).await;
}
