//! Peers that lie, send garbage or vanish: each gets a typed error that
//! ends its round, and the store is left as it was.

use std::future::Future;
use std::net::SocketAddr;

use flotilla_gensync::wire::{Connection, Message, WireError};
use flotilla_gensync::{
    Conflict, Error, GenVector, LogRecord, MAX_KEY_LEN, MAX_VALUE_LEN, ReplicaConfig, Resolution,
    Resolver, Secured, SyncConfig, VersionId, initiate_over,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::harness::{Node, device, pipe, pull, stop, transport};

/// A responder played by `script` for one connection, a trusted device of
/// the test cluster (`as_device`, by its certificate) that lies in the
/// protocol. A connection that fails its handshake ends it.
pub(crate) async fn fake_responder<F, Fut>(
    as_device: &'static str,
    script: F,
) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Secured<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let address = listener.local_addr().expect("an address");
    let transport = transport(as_device);
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("a connection");
        if let Ok(secured) = transport.accept(stream).await {
            script(secured).await;
        }
    });
    (address, task)
}

/// A connection to `address` as `name`, by a certificate of the test
/// cluster, for a test that then speaks the protocol itself.
pub(crate) async fn dial_as(name: &str, address: SocketAddr) -> Connection<Secured<TcpStream>> {
    let stream = TcpStream::connect(address).await.expect("connects");
    dial_stream_as(name, stream).await
}

async fn dial_stream_as(name: &str, stream: TcpStream) -> Connection<Secured<TcpStream>> {
    let secured = transport(name)
        .connect(stream, None)
        .await
        .expect("the test cluster's devices trust each other");
    Connection::new(secured)
}

/// A fake responder that greets as `device`, reads the request, and then
/// sends `messages`.
pub(crate) async fn scripted(
    device_name: &'static str,
    messages: Vec<Message>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    fake_responder(device_name, move |stream| async move {
        let mut connection = Connection::new(stream);
        let _hello = connection.recv().await;
        let _ = connection
            .send(&Message::Hello {
                device: device(device_name),
            })
            .await;
        let _request = connection.recv().await;
        for message in messages {
            let _ = connection.send(&message).await;
        }
    })
    .await
}

pub(crate) fn record(
    writer: &str,
    generation: u64,
    sequence: u64,
    key: &str,
    parents: Vec<VersionId>,
) -> LogRecord {
    let writer = device(writer);
    LogRecord {
        version: VersionId::of_write(&writer, generation, sequence),
        device: writer.clone(),
        generation,
        sequence,
        key: key.as_bytes().to_vec(),
        parents,
        value: Some(b"v".to_vec()),
        writer,
        timestamp_ms: 1,
    }
}

pub(crate) fn vector(entries: &[(&str, u64)]) -> GenVector {
    let mut vector = GenVector::new();
    for (name, generation) in entries {
        vector.raise(&device(name), *generation);
    }
    vector
}

/// Runs one round against `address` and checks that it failed and left
/// `node` untouched.
pub(crate) async fn refused(node: &Node, address: SocketAddr) -> Error {
    let before = (
        node.replica.vector().expect("reads"),
        node.replica.log_len().expect("reads"),
    );
    let error = node.pull_from(address).await.expect_err("the round fails");
    let after = (
        node.replica.vector().expect("reads"),
        node.replica.log_len().expect("reads"),
    );
    assert_eq!(before, after, "nothing of a failed round is kept");
    assert!(node.replica.scan(b"").expect("scans").is_empty() || before.1 > 0);
    error
}

#[tokio::test]
async fn a_record_whose_parent_is_unknown_ends_the_round() {
    let node = Node::new("me");
    let orphan = record(
        "x",
        1,
        1,
        "k",
        vec![VersionId::of_write(&device("nobody"), 1, 1)],
    );
    let (address, _peer) = scripted(
        "x",
        vec![
            Message::Record(orphan),
            Message::Done {
                vector: vector(&[("x", 1)]),
            },
        ],
    )
    .await;
    assert!(matches!(
        refused(&node, address).await,
        Error::MissingParent { .. }
    ));
}

#[tokio::test]
async fn a_vector_claiming_generations_not_sent_ends_the_round() {
    let node = Node::new("me");
    let first = record("x", 1, 1, "k", vec![]);
    let (address, _peer) = scripted(
        "x",
        vec![
            Message::Record(first),
            Message::Done {
                vector: vector(&[("x", 2)]),
            },
        ],
    )
    .await;
    match refused(&node, address).await {
        Error::UnbackedClaim { generation: 2, .. } => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_record_beyond_the_peer_s_own_claim_ends_the_round() {
    let node = Node::new("me");
    let beyond = record("x", 3, 1, "k", vec![]);
    let (address, _peer) = scripted(
        "x",
        vec![
            Message::Record(beyond),
            Message::Done {
                vector: vector(&[("x", 0)]),
            },
        ],
    )
    .await;
    assert!(matches!(
        refused(&node, address).await,
        Error::UnclaimedRecord { generation: 3, .. }
    ));
}

#[tokio::test]
async fn a_round_cut_half_way_leaves_the_replica_as_it_was_and_the_next_completes() {
    let node = Node::new("me");
    let records: Vec<Message> = (1..=10)
        .map(|s| Message::Record(record("x", 1, s, &format!("k{s}"), vec![])))
        .collect();
    let (address, _peer) = scripted("x", records).await; // no Done: the peer vanishes
    assert!(matches!(refused(&node, address).await, Error::Disconnected));
    assert!(node.replica.scan(b"").expect("scans").is_empty());

    let real = Node::new("x");
    for s in 1..=10 {
        real.put(&format!("k{s}"), "v").await;
    }
    let responder = real.serve().await;
    assert_eq!(pull(&node, &responder).await.applied, 10);
    stop(responder).await;
}

#[tokio::test]
async fn a_responder_claiming_our_own_id_is_an_impostor() {
    let node = Node::new("me");
    let (address, _peer) = scripted("me", vec![]).await;
    assert!(matches!(
        refused(&node, address).await,
        Error::Impostor { .. }
    ));
}

#[tokio::test]
async fn a_peer_that_aborts_says_why() {
    let node = Node::new("me");
    let (address, _peer) = scripted(
        "x",
        vec![Message::Abort {
            reason: String::from("busy"),
        }],
    )
    .await;
    match refused(&node, address).await {
        Error::PeerAborted(reason) => assert_eq!(reason, "busy"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn oversized_truncated_and_unknown_frames_are_typed_errors() {
    type Expected = fn(&WireError) -> bool;
    let cases: [(&[u8], Expected); 3] = [
        // A length prefix far over the cap.
        (&[0x7f, 0xff, 0xff, 0xff], |e| {
            matches!(e, WireError::Oversized)
        }),
        // A frame of 10 bytes of which 2 arrive.
        (&[0, 0, 0, 10, 1, 0], |e| matches!(e, WireError::Truncated)),
        // Protocol version 9.
        (&[0, 0, 0, 2, 9, 0], |e| {
            matches!(e, WireError::UnknownVersion(9))
        }),
    ];
    for (bytes, expected) in cases {
        let node = Node::new("me");
        let (address, _peer) = fake_responder("x", move |mut stream| async move {
            // Take the initiator's hello, answer with the bad bytes, and
            // close only the sending side, so that they all arrive.
            let mut hello = [0; 64];
            let _ = stream.read(&mut hello).await;
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
            let _ = stream.read_to_end(&mut Vec::new()).await;
        })
        .await;
        match refused(&node, address).await {
            Error::Wire(error) => assert!(expected(&error), "{error}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_responder_refuses_its_own_id_and_survives_garbage() {
    let node = Node::new("me");
    node.put("k", "v").await;
    let responder = node.serve().await;

    let mut garbage = TcpStream::connect(responder.local_addr())
        .await
        .expect("connects");
    garbage
        .write_all(&[0, 0, 0, 3, 1, 0xff, 0xff])
        .await
        .expect("writes");
    // The same garbage from a device that proved who it is.
    let stream = TcpStream::connect(responder.local_addr())
        .await
        .expect("connects");
    let mut inside = transport("garbler")
        .connect(stream, None)
        .await
        .expect("a trusted responder");
    inside
        .write_all(&[0, 0, 0, 3, 1, 0xff, 0xff])
        .await
        .expect("writes");
    inside.flush().await.expect("flushes");
    // A device of the cluster with a certificate of its own for "me".
    let mut impostor = dial_as("me", responder.local_addr()).await;
    impostor
        .send(&Message::Hello {
            device: device("me"),
        })
        .await
        .expect("sends");
    match impostor.recv().await.expect("an answer") {
        Some(Message::Abort { reason }) => assert!(reason.contains("own id"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }

    let friend = Node::new("friend");
    assert_eq!(pull(&friend, &responder).await.applied, 1, "still serving");
    stop(responder).await;
}

#[tokio::test]
async fn one_device_cannot_be_connected_from_two_addresses() {
    let node = Node::new("me");
    let responder = node.serve().await;
    let mut first = dial_as("x", responder.local_addr()).await;
    first
        .send(&Message::Hello {
            device: device("x"),
        })
        .await
        .expect("sends");
    assert!(matches!(
        first.recv().await.expect("an answer"),
        Some(Message::Hello { .. })
    ));

    // The same device, from another loopback address, while the first holds.
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.2:0".parse().expect("an address"))
        .expect("binds 127.0.0.2");
    let stream = socket
        .connect(responder.local_addr())
        .await
        .expect("connects");
    let mut second = dial_stream_as("x", stream).await;
    second
        .send(&Message::Hello {
            device: device("x"),
        })
        .await
        .expect("sends");
    match second.recv().await.expect("an answer") {
        Some(Message::Abort { reason }) => assert!(reason.contains("another address"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    drop(first);
    stop(responder).await;
}

#[tokio::test]
async fn a_record_delivered_twice_in_a_round_is_applied_once() {
    let node = Node::new("me");
    let once = record("x", 1, 1, "k", vec![]);
    let messages = vec![
        Message::Record(once.clone()),
        Message::Record(once),
        Message::Done {
            vector: vector(&[("x", 1)]),
        },
    ];
    let (address, _peer) = scripted("x", messages).await;
    let round = node.pull_from(address).await.expect("the round completes");
    assert_eq!((round.applied, round.duplicates), (1, 1));
    assert_eq!(node.get("k").as_deref(), Some("v"));
    assert_eq!(node.replica.verify().expect("reads"), Ok(()));
}

#[tokio::test]
async fn a_round_failing_after_several_chunks_leaves_nothing_behind() {
    let node = Node::new("me");
    node.put("mine", "kept").await;
    let before = (
        node.replica.vector().expect("reads"),
        node.replica.log_len().expect("reads"),
    );
    // Three thousand good records (a few chunks' worth), then an orphan.
    let mut messages: Vec<Message> = (1..=3_000)
        .map(|s| Message::Record(record("x", 1, s, &format!("k{s}"), vec![])))
        .collect();
    let orphan = record(
        "x",
        1,
        3_001,
        "k",
        vec![VersionId::of_write(&device("nobody"), 1, 1)],
    );
    messages.push(Message::Record(orphan));
    messages.push(Message::Done {
        vector: vector(&[("x", 1)]),
    });
    let (address, _peer) = scripted("x", messages).await;
    let error = node
        .pull_from(address)
        .await
        .expect_err("the orphan ends the round");
    assert!(matches!(error, Error::MissingParent { .. }), "{error}");
    let after = (
        node.replica.vector().expect("reads"),
        node.replica.log_len().expect("reads"),
    );
    assert_eq!(before, after, "no record of the failed round is left");
    assert_eq!(node.replica.scan(b"").expect("scans").len(), 1);
    assert_eq!(node.replica.verify().expect("reads"), Ok(()));
}

/// Polls `condition` until it holds, for at most ten seconds.
async fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the condition never held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Polls `condition` until it holds (true) or `limit` has passed (false).
pub(crate) async fn within(
    limit: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    true
}

#[tokio::test]
async fn a_peer_that_stalls_mid_round_does_not_hold_up_local_writes() {
    let node = Node::new("me");
    let (near, far) = pipe(&node.transport, &transport("x"), 1 << 20).await;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    // More than one chunk of records, then a stall with the connection
    // open, then `Done`.
    let peer = tokio::spawn(async move {
        let mut connection = Connection::new(far);
        let _hello = connection.recv().await;
        let _ = connection
            .send(&Message::Hello {
                device: device("x"),
            })
            .await;
        let _request = connection.recv().await;
        for s in 1..=1_100 {
            let record = record("x", 1, s, &format!("k{s}"), vec![]);
            let _ = connection.feed(&Message::Record(record)).await;
        }
        let _ = connection.flush().await;
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
    // The first chunk is written (pending, invisible); the round now waits
    // for the peer, which stalls.
    eventually(|| node.replica.log_len().expect("reads") >= 1_024).await;
    let write = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        node.replica.put(b"mine".to_vec(), b"v".to_vec()),
    )
    .await;
    assert_eq!(node.get("k1"), None, "the round is not visible before Done");
    // Unstall the peer before asserting, so that a failure does not hang.
    let _ = release.send(());
    write
        .expect("a local write completes while the peer stalls")
        .expect("writes");
    assert_eq!(node.get("mine").as_deref(), Some("v"));
    let stats = round
        .await
        .expect("the round task ends")
        .expect("the round completes once the peer goes on");
    assert_eq!(stats.applied, 1_100);
    assert_eq!(node.get("k1100").as_deref(), Some("v"));
    assert_eq!(node.get("mine").as_deref(), Some("v"));
    assert_eq!(node.replica.verify().expect("reads"), Ok(()));
    drop(peer.await.expect("the peer task ends"));
}

#[tokio::test]
async fn a_responder_that_refuses_the_hello_is_reported_as_aborting_with_its_reason() {
    // A real responder refuses an initiator that claims the responder's id.
    let server = Node::new("me");
    let responder = server.serve().await;
    let twin = Node::new("me");
    let error = refused(&twin, responder.local_addr()).await;
    match error {
        Error::PeerAborted(reason) => assert!(reason.contains("own id"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    stop(responder).await;

    // A scripted one that answers the hello with an abort.
    let node = Node::new("me");
    let (address, _peer) = fake_responder("x", |stream| async move {
        let mut connection = Connection::new(stream);
        let _hello = connection.recv().await;
        let _ = connection
            .send(&Message::Abort {
                reason: String::from("not today"),
            })
            .await;
    })
    .await;
    match refused(&node, address).await {
        Error::PeerAborted(reason) => assert_eq!(reason, "not today"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_record_over_the_local_limits_ends_the_round_and_stores_nothing() {
    let mut long_key = record("x", 1, 1, "k", vec![]);
    long_key.key = vec![b'k'; MAX_KEY_LEN + 1];
    let mut long_value = record("x", 1, 1, "k", vec![]);
    long_value.value = Some(vec![b'v'; MAX_VALUE_LEN + 1]);
    let cases = [
        ("key", MAX_KEY_LEN + 1, long_key),
        ("value", MAX_VALUE_LEN + 1, long_value),
    ];
    for (what, len, oversized) in cases {
        let node = Node::new("me");
        let messages = vec![
            Message::Record(oversized),
            Message::Done {
                vector: vector(&[("x", 1)]),
            },
        ];
        let (address, _peer) = scripted("x", messages).await;
        match refused(&node, address).await {
            Error::TooLarge {
                what: refused_what,
                len: refused_len,
                ..
            } => assert_eq!((refused_what, refused_len), (what, len)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(node.replica.log_len().expect("reads"), 0, "{what}");
        assert_eq!(node.replica.heads().expect("reads"), [], "{what}");
        assert_eq!(node.replica.verify().expect("reads"), Ok(()));
    }
}

#[tokio::test]
async fn a_merge_over_the_value_limit_fails_the_round_and_stores_nothing() {
    struct Bloated;
    impl Resolver for Bloated {
        fn resolve(&self, _: &Conflict) -> Resolution {
            Resolution::Merged(Some(vec![0; MAX_VALUE_LEN + 1]))
        }
    }
    let mut config = ReplicaConfig::default();
    config.resolver = std::sync::Arc::new(Bloated);
    let (a, b) = (Node::new("a"), Node::with_config("b", config));
    a.put("k", "a's").await;
    b.put("k", "b's").await;
    let serve_a = a.serve().await;
    let error = refused(&b, serve_a.local_addr()).await;
    assert!(
        matches!(error, Error::TooLarge { what: "value", .. }),
        "{error}"
    );
    assert_eq!(b.get("k").as_deref(), Some("b's"));
    assert_eq!(b.replica.verify().expect("reads"), Ok(()));
    stop(serve_a).await;
}

#[tokio::test]
async fn a_message_out_of_turn_is_named_by_its_kind_not_printed_whole() {
    let mut big = record("x", 1, 1, "k", vec![]);
    big.value = Some(vec![b'v'; MAX_VALUE_LEN]);
    let mut big_vector = GenVector::new();
    for i in 0..10_000 {
        big_vector.raise(&device(&format!("d{i}")), 1);
    }
    let check = |error: Error, expected: &str, got: &str| {
        let text = error.to_string();
        match &error {
            Error::Protocol {
                expected: said_expected,
                got: said_got,
            } => assert_eq!((*said_expected, said_got.as_str()), (expected, got)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(text.len() < 200, "a short message: {} bytes", text.len());
    };

    // A record where the responder's hello belongs.
    let node = Node::new("me");
    let (address, _peer) = fake_responder("x", {
        let big = big.clone();
        move |stream| async move {
            let mut connection = Connection::new(stream);
            let _hello = connection.recv().await;
            let _ = connection.send(&Message::Record(big)).await;
        }
    })
    .await;
    check(refused(&node, address).await, "hello", "record");

    // A request where a record or done belongs.
    let (address, _peer) = scripted(
        "x",
        vec![Message::GetDeltas {
            vector: big_vector.clone(),
        }],
    )
    .await;
    check(
        refused(&node, address).await,
        "a record or done",
        "get-deltas",
    );

    // A record where the initiator's request belongs.
    let (far, near) = pipe(&transport("x"), &node.transport, 1 << 16).await;
    let initiator = tokio::spawn(async move {
        let mut connection = Connection::new(far);
        let _ = connection
            .send(&Message::Hello {
                device: device("x"),
            })
            .await;
        let _hello = connection.recv().await;
        let _ = connection.send(&Message::Record(big)).await;
        connection
    });
    let error = flotilla_gensync::respond_over(&node.replica, near, &SyncConfig::default())
        .await
        .expect_err("the round fails");
    check(error, "get-deltas", "record");
    drop(initiator.await.expect("the initiator task ends"));
}

#[tokio::test]
async fn collected_comes_once_before_the_records_or_the_round_ends() {
    let collected = || Message::Collected {
        vector: vector(&[("x", 1)]),
    };
    let done = || Message::Done {
        vector: vector(&[("x", 2)]),
    };
    let first = record("x", 2, 1, "k", vec![]);
    let cases = [
        // A stream of them, each of which the round would otherwise hold.
        (0..1_000).map(|_| collected()).chain([done()]).collect(),
        vec![collected(), collected(), done()],
        vec![Message::Record(first.clone()), collected(), done()],
    ];
    for messages in cases {
        let node = Node::new("me");
        let (address, _peer) = scripted("x", messages).await;
        match refused(&node, address).await {
            Error::Protocol { got, .. } => assert_eq!(got, "collected"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(node.replica.log_len().expect("reads"), 0);
        assert_eq!(node.replica.collected().expect("reads"), GenVector::new());
        assert_eq!(node.replica.verify().expect("reads"), Ok(()));
    }
    // One, first, is the full-state transfer.
    let node = Node::new("me");
    let (address, _peer) = scripted("x", vec![collected(), Message::Record(first), done()]).await;
    let stats = node.pull_from(address).await.expect("the round completes");
    assert_eq!(stats.applied, 1);
}

#[tokio::test]
async fn records_with_huge_parent_lists_are_written_a_few_at_a_time() {
    // Each record is a few bytes of key and value and 1.6 MB of parent
    // ids: a chunk must count the parents, or it holds 1,024 of them.
    const PARENTS: usize = 100_000;
    const HEAVY: u64 = 8;
    let node = Node::new("me");
    let root = record("x", 1, 1, "root", vec![]);
    let (near, far) = pipe(&node.transport, &transport("x"), 1 << 20).await;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        let mut connection = Connection::new(far);
        let _hello = connection.recv().await;
        let _ = connection
            .send(&Message::Hello {
                device: device("x"),
            })
            .await;
        let _request = connection.recv().await;
        let _ = connection.send(&Message::Record(root.clone())).await;
        for s in 2..=HEAVY + 1 {
            let heavy = record("x", 1, s, &format!("k{s}"), vec![root.version; PARENTS]);
            connection
                .send(&Message::Record(heavy))
                .await
                .expect("a record fits in a frame");
        }
        // Stall with every record sent, the round's `Done` held back.
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
    // Far fewer than a chunk's count of records, but far more than a
    // chunk's bytes: some are written (pending) while the peer stalls.
    let written = within(std::time::Duration::from_secs(20), || {
        node.replica.log_len().expect("reads") >= 1
    })
    .await;
    // Unstall the peer before asserting, so that a failure does not hang.
    let _ = release.send(());
    assert!(written, "a chunk is written before the round's end");
    let stats = round
        .await
        .expect("the round task ends")
        .expect("the round completes");
    assert_eq!(stats.applied, HEAVY + 1);
    assert_eq!(node.get("k2").as_deref(), Some("v"));
    drop(peer.await.expect("the peer task ends"));
}

/// What a responder relays of other devices is kept only for devices whose
/// records the initiator holds, and only up to what the responder itself
/// holds: it cannot make the initiator collect what nobody vouched for, nor
/// fill its device table with strangers.
#[tokio::test]
async fn relayed_vectors_count_only_as_far_as_the_relay_holds() {
    use flotilla_gensync::wire::KnownPeer;
    let node = Node::new("me");
    let relayed = |name: &'static str, entries: &[(&str, u64)]| KnownPeer {
        device: device(name),
        vector: vector(entries),
        heard_ms_ago: 0,
    };
    let messages = vec![
        Message::Record(record("x", 1, 1, "a", vec![])),
        Message::Record(record("y", 1, 1, "b", vec![])),
        Message::Known {
            peers: vec![
                // y, whose record came: claims far more than x holds.
                relayed("y", &[("x", 100), ("y", 100), ("me", 100), ("z", 5)]),
                // A device nobody has records of: not taken in.
                relayed("stranger", &[("x", 1)]),
            ],
        },
        Message::Done {
            vector: vector(&[("x", 1), ("y", 1)]),
        },
    ];
    let (address, _peer) = scripted("x", messages).await;
    node.pull_from(address).await.expect("the round completes");
    let devices = node.replica.devices().expect("reads");
    let of = |name: &str| {
        devices
            .iter()
            .find(|info| info.device == device(name))
            .map(|info| info.vector.clone())
    };
    assert_eq!(of("y"), Some(vector(&[("x", 1), ("y", 1)])));
    assert_eq!(of("stranger"), None);
    assert_eq!(of("x"), Some(vector(&[("x", 1), ("y", 1)])));
}
