//! The diagnostics protocol end to end, over TLS: a real
//! `DiagnosticsServer` on loopback checked by `DiagnosticsProber` alone and
//! under a registry; servers that answer wrongly; servers and probers that
//! are not trusted; the server's limits and its shutdown. Real
//! clock where real sockets are used (no timing is asserted; every wait has
//! a deadline), the paused clock for the idle timeout over an in-memory
//! stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core_types::{Endpoint, Worker};
use flotilla_identity::{Identity, Secured, Transport, TrustError};
use flotilla_viewreg::diagnostics::wire::{self, Answer, WireError};
use flotilla_viewreg::{
    DiagnosticsConfig, DiagnosticsProber, DiagnosticsServer, DiagnosticsStatus, Error, Health,
    Partition, ProbeError, ProbeOutcome, Prober, Registry, RegistryConfig, Snapshot, StaticLocator,
    WaitLimit, ask_status_over, serve_diagnostics_over,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Features, cluster_trust, features, transport};

/// How long any condition of these tests may take to hold before the test
/// fails: far beyond what loopback needs, short enough to fail visibly.
const PATIENCE: Duration = Duration::from_secs(30);

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

async fn server(status: DiagnosticsStatus) -> anyhow::Result<(DiagnosticsServer, Endpoint)> {
    server_with(status, DiagnosticsConfig::default()).await
}

async fn server_with(
    status: DiagnosticsStatus,
    config: DiagnosticsConfig,
) -> anyhow::Result<(DiagnosticsServer, Endpoint)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server = DiagnosticsServer::start(listener, transport("server"), status, config)?;
    let endpoint = server.local_addr().try_into()?;
    Ok((server, endpoint))
}

/// A prober into the tests' feature type: names it knows, others dropped.
fn prober() -> DiagnosticsProber<Features> {
    DiagnosticsProber::with_features(transport("registry"), |sent: &BTreeSet<String>| {
        ["kv", "query"]
            .into_iter()
            .filter(|known| sent.contains(*known))
            .collect()
    })
}

/// A loopback server, a trusted device, that answers every connection
/// with `reply` (after reading whatever the client sent first), then
/// closes it.
async fn answering_with(reply: Vec<u8>) -> anyhow::Result<Endpoint> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = listener.local_addr()?.try_into()?;
    let transport = transport("liar");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut stream) = transport.accept(stream).await else {
                continue;
            };
            let mut request = [0u8; 64];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(&reply).await;
            let _ = stream.shutdown().await;
        }
    });
    Ok(endpoint)
}

/// What is left to read on `stream` until the server closes it, with or
/// without closing its TLS session first.
async fn rest_of(stream: &mut Secured<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest).await {
        Ok(_) => Ok(rest),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(rest),
        Err(error) => Err(error),
    }
}

/// A connection to `address`, secured as a trusted prober.
async fn dial(address: std::net::SocketAddr) -> anyhow::Result<Secured<TcpStream>> {
    let stream = TcpStream::connect(address).await?;
    Ok(transport("prober").connect(stream, None).await?)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut framed = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(body);
    framed
}

async fn until_report(
    server: &DiagnosticsServer,
    mut condition: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let report = server.report().expect("reports").await;
            if condition(&report) {
                return report;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the report reached the condition")
}

#[tokio::test]
async fn a_server_answers_its_status_as_it_changes() -> anyhow::Result<()> {
    let partition = Partition::new(1, 3).expect("1 < 3");
    let (server, endpoint) = server(
        DiagnosticsStatus::serving(names(&["kv", "query", "other"])).with_partition(partition),
    )
    .await?;
    let prober = prober();
    match prober.probe(&endpoint).await {
        ProbeOutcome::Serving {
            features: provided,
            partition: held,
        } => {
            assert_eq!(
                provided,
                features(&["kv", "query"]),
                "unknown names are dropped"
            );
            assert_eq!(held, Some(partition));
        }
        other => panic!("expected serving, got {other:?}"),
    }

    server.set_status(DiagnosticsStatus::not_serving())?;
    assert!(matches!(
        prober.probe(&endpoint).await,
        ProbeOutcome::NotServing
    ));

    let too_long = DiagnosticsStatus::serving(names(&[&"x".repeat(wire::MAX_FEATURE_LEN + 1)]));
    assert!(matches!(
        server.set_status(too_long),
        Err(Error::InvalidStatus(WireError::Malformed(_)))
    ));
    assert_eq!(
        server.status(),
        DiagnosticsStatus::not_serving(),
        "the last valid one stays"
    );

    server.set_status(DiagnosticsStatus::serving(names(&["kv"])))?;
    let plain = DiagnosticsProber::new(transport("registry"));
    assert!(matches!(
        plain.probe(&endpoint).await,
        ProbeOutcome::Serving { features: provided, partition: None } if provided == names(&["kv"])
    ));
    let report = until_report(&server, |report| report["answered"] == 3).await;
    assert_eq!(report["state"], "running");
    assert_eq!(report["serving"], true);
    server.kill();
    server.wait().await?;
    Ok(())
}

#[tokio::test]
async fn a_registry_follows_features_partitions_and_draining() -> anyhow::Result<()> {
    let (first, first_endpoint) = server(DiagnosticsStatus::serving(names(&["kv"]))).await?;
    let (second, second_endpoint) = server(
        DiagnosticsStatus::serving(names(&["kv", "query"]))
            .with_partition(Partition::new(0, 2).expect("0 < 2")),
    )
    .await?;
    let mut config = RegistryConfig::default();
    config.probe_interval = Duration::from_millis(20);
    config.probe_timeout = Duration::from_secs(5);
    let registry = Registry::start(
        StaticLocator::new([first_endpoint.clone(), second_endpoint.clone()]),
        prober(),
        |endpoint: &Endpoint| endpoint.clone(),
        config,
    )?;
    let limit = WaitLimit::timeout(PATIENCE);
    let until = |condition: fn(&Snapshot<Features, Endpoint>, &Endpoint, &Endpoint) -> bool| {
        let (registry, limit, first, second) =
            (&registry, &limit, &first_endpoint, &second_endpoint);
        async move {
            let mut snapshot = registry.snapshot();
            while !condition(&snapshot, first, second) {
                snapshot = registry.wait_for_change(snapshot.stamp(), limit).await?;
            }
            Ok::<_, Error>(snapshot)
        }
    };

    let both =
        until(|snapshot, _, _| snapshot.healthy_views(&features(&["kv"])).len() == 2).await?;
    let query = both.healthy_views(&features(&["query"])).to_vec();
    assert_eq!(query.len(), 1);
    assert_eq!(query[0].endpoint(), &second_endpoint);
    assert_eq!(query[0].partition(), Partition::new(0, 2));

    // The first server gains a feature; the second drains.
    first.set_status(DiagnosticsStatus::serving(names(&["kv", "query"])))?;
    second.set_status(DiagnosticsStatus::not_serving())?;
    let drained = until(|snapshot, first, second| {
        snapshot.view(second).map(|view| view.health()) == Some(Health::Unhealthy)
            && snapshot
                .healthy_views(&features(&["query"]))
                .iter()
                .any(|view| view.endpoint() == first)
    })
    .await?;
    let drained_view = drained.view(&second_endpoint).expect("still listed");
    assert_eq!(
        drained_view.features(),
        &features(&["kv", "query"]),
        "an unhealthy view keeps its last known features"
    );

    // The first server dies: its checks fail until it turns unhealthy.
    first.kill();
    first.wait().await?;
    let dead = until(|snapshot, first, _| {
        snapshot.view(first).map(|view| view.health()) == Some(Health::Unhealthy)
    })
    .await?;
    let error = dead
        .view(&first_endpoint)
        .and_then(|view| view.last_error())
        .expect("why it is unhealthy");
    assert!(error.contains("cannot reach"), "{error}");

    registry.kill();
    registry.wait().await?;
    second.kill();
    second.wait().await?;
    Ok(())
}

#[tokio::test]
async fn servers_that_answer_wrongly_are_told_apart() -> anyhow::Result<()> {
    let prober = prober();

    // Speaks the protocol, not this version.
    let unsupported = wire::encode_answer(&Answer::Unsupported { version: 1 })?;
    let endpoint = answering_with(frame(&unsupported)).await?;
    assert!(matches!(
        prober.probe(&endpoint).await,
        ProbeOutcome::NoHealthService
    ));

    // Another protocol, in a frame of the right shape.
    let endpoint = answering_with(frame(b"{\"status\":\"ok\"}")).await?;
    assert!(matches!(
        prober.probe(&endpoint).await,
        ProbeOutcome::NoHealthService
    ));

    // A broken answer: a partition outside its count.
    let endpoint = answering_with(frame(
        b"FLDG\x01\x01\x01\x01\x00\x00\x00\x09\x00\x00\x00\x02\x00\x00",
    ))
    .await?;
    let outcome = prober.probe(&endpoint).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failed(ProbeError::Protocol { reason, .. }) if reason.contains("partition 9 of 2")),
        "{outcome:?}"
    );

    // A length far beyond the limit: refused before anything is held.
    let endpoint = answering_with(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await?;
    let outcome = prober.probe(&endpoint).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failed(ProbeError::Protocol { reason, .. }) if reason.contains("connection failed")),
        "{outcome:?}"
    );

    // Closes without a word.
    let endpoint = answering_with(Vec::new()).await?;
    let outcome = prober.probe(&endpoint).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failed(ProbeError::Protocol { reason, .. }) if reason.contains("without answering")),
        "{outcome:?}"
    );

    // Nobody listening.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let closed: Endpoint = listener.local_addr()?.try_into()?;
    drop(listener);
    assert!(matches!(
        prober.probe(&closed).await,
        ProbeOutcome::Failed(ProbeError::Unreachable { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn a_server_drops_strangers_answers_later_versions_and_keeps_serving() -> anyhow::Result<()> {
    let (server, endpoint) = server(DiagnosticsStatus::serving(names(&["kv"]))).await?;
    let address = server.local_addr();

    let mut stranger = dial(address).await?;
    stranger.write_all(&frame(b"GET / HTTP/1.1")).await?;
    assert!(
        rest_of(&mut stranger).await?.is_empty(),
        "a stranger is closed unanswered"
    );

    let mut later = dial(address).await?;
    later.write_all(&frame(b"FLDG\x02\x01")).await?;
    let mut length = [0u8; 4];
    later.read_exact(&mut length).await?;
    let mut body = vec![0u8; usize::try_from(u32::from_be_bytes(length))?];
    later.read_exact(&mut body).await?;
    assert_eq!(
        wire::decode_answer(&body)?,
        Answer::Unsupported {
            version: wire::PROTOCOL_VERSION
        }
    );

    // One connection, many requests.
    let mut kept = dial(address).await?;
    for _ in 0..3 {
        assert!(matches!(
            ask_status_over(&mut kept).await?,
            Answer::Status(_)
        ));
    }
    assert!(matches!(
        prober().probe(&endpoint).await,
        ProbeOutcome::Serving { .. }
    ));
    until_report(&server, |report| report["refused"] == 1).await;
    server.kill();
    server.wait().await?;
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() -> anyhow::Result<()> {
    let mut config = DiagnosticsConfig::default();
    config.max_connections = 1;
    let (server, endpoint) =
        server_with(DiagnosticsStatus::serving(names(&["kv"])), config).await?;

    let mut held = dial(server.local_addr()).await?;
    assert!(matches!(
        ask_status_over(&mut held).await?,
        Answer::Status(_)
    ));
    // Closed as soon as accepted: during the handshake, or (TLS 1.3
    // clients finish theirs first) before the answer.
    let outcome = prober().probe(&endpoint).await;
    assert!(
        matches!(
            &outcome,
            ProbeOutcome::Failed(ProbeError::Protocol { .. } | ProbeError::Handshake { .. })
        ),
        "{outcome:?}"
    );
    let report = until_report(&server, |report| report["refused"] == 1).await;
    assert_eq!(report["connections"], 1);

    drop(held);
    until_report(&server, |report| report["connections"] == 0).await;
    assert!(matches!(
        prober().probe(&endpoint).await,
        ProbeOutcome::Serving { .. }
    ));
    server.kill();
    server.wait().await?;
    Ok(())
}

#[tokio::test]
async fn kill_closes_open_connections_and_wait_returns() -> anyhow::Result<()> {
    let (server, _) = server(DiagnosticsStatus::serving(names(&["kv"]))).await?;
    let mut held = dial(server.local_addr()).await?;
    assert!(matches!(
        ask_status_over(&mut held).await?,
        Answer::Status(_)
    ));
    server.kill();
    tokio::time::timeout(PATIENCE, server.wait()).await??;
    let rest = tokio::time::timeout(PATIENCE, rest_of(&mut held)).await??;
    assert!(rest.is_empty());
    let report = server.report().expect("reports").await;
    assert_eq!(report["state"], "stopped");
    assert!(
        TcpStream::connect(server.local_addr()).await.is_err(),
        "no longer listening"
    );
    Ok(())
}

#[tokio::test]
async fn bad_limits_are_refused() -> anyhow::Result<()> {
    let mut no_connections = DiagnosticsConfig::default();
    no_connections.max_connections = 0;
    let mut no_idle = DiagnosticsConfig::default();
    no_idle.idle_timeout = Duration::ZERO;
    for config in [no_connections, no_idle] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let refused = DiagnosticsServer::start(
            listener,
            transport("server"),
            DiagnosticsStatus::not_serving(),
            config,
        );
        assert!(
            matches!(refused, Err(Error::InvalidConfig { .. })),
            "{refused:?}"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    let (client, server_side) = tokio::io::duplex(1024);
    let (_sender, status) = tokio::sync::watch::channel(DiagnosticsStatus::serving(names(&["kv"])));
    let status = Arc::new(status);
    let started = tokio::time::Instant::now();
    let serving = tokio::spawn({
        let status = Arc::clone(&status);
        async move { serve_diagnostics_over(server_side, &status, Duration::from_secs(30)).await }
    });
    let mut client = client;
    assert!(matches!(
        ask_status_over(&mut client).await?,
        Answer::Status(_)
    ));
    let answered = serving.await??;
    assert_eq!(answered, 1);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(30),
        "closed exactly when idle for 30 s"
    );
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await?;
    assert!(rest.is_empty());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_prober_that_never_reads_cannot_hold_the_connection() -> anyhow::Result<()> {
    // A pipe of 64 bytes each way: six requests (10 bytes each) fit, the
    // answers to three (17 bytes each) fill it.
    let (mut client, server_side) = tokio::io::duplex(64);
    let (_sender, status) = tokio::sync::watch::channel(DiagnosticsStatus::serving(names(&["kv"])));
    let serving = tokio::spawn(async move {
        serve_diagnostics_over(server_side, &status, Duration::from_secs(30)).await
    });
    let request = frame(&wire::encode_status_request());
    for _ in 0..6 {
        client.write_all(&request).await?;
    }
    let started = tokio::time::Instant::now();
    let ended = serving.await?;
    assert!(
        matches!(&ended, Err(WireError::Transport(reason)) if reason.contains("did not read")),
        "{ended:?}"
    );
    assert!(started.elapsed() <= Duration::from_secs(30));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_request_trickled_byte_by_byte_is_cut_off() -> anyhow::Result<()> {
    let (mut client, server_side) = tokio::io::duplex(1024);
    let (_sender, status) = tokio::sync::watch::channel(DiagnosticsStatus::serving(names(&["kv"])));
    let started = tokio::time::Instant::now();
    let serving = tokio::spawn(async move {
        let served = serve_diagnostics_over(server_side, &status, Duration::from_secs(30)).await;
        (served, started.elapsed())
    });
    let request = frame(&wire::encode_status_request());
    let mut sent = 0;
    for byte in &request[..request.len() - 1] {
        if client.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // A byte every 10 s: the server gave up 30 s in, unanswered, and the
    // bytes after were refused.
    let (served, after) = serving.await?;
    assert_eq!(served?, 0);
    assert_eq!(after, Duration::from_secs(30));
    assert!(sent < request.len() - 1, "{sent} bytes went through");
    Ok(())
}

/// A server that proves to be no device the registry trusts is never
/// healthy, whatever it would answer: it is refused in the handshake, with
/// why.
#[tokio::test]
async fn a_server_that_is_not_trusted_is_never_reported_healthy() -> anyhow::Result<()> {
    let stranger = Identity::generate(&flotilla_core_types::DeviceId::new("stranger")?)?;
    // It trusts the registry's cluster, so that the refusal is the
    // registry's.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server = DiagnosticsServer::start(
        listener,
        Transport::tls(&stranger, cluster_trust())?,
        DiagnosticsStatus::serving(names(&["kv"])),
        DiagnosticsConfig::default(),
    )?;
    let endpoint: Endpoint = server.local_addr().try_into()?;
    let outcome = prober().probe(&endpoint).await;
    match &outcome {
        ProbeOutcome::Failed(error @ ProbeError::Handshake { .. }) => {
            assert!(
                matches!(error.refusal(), Some(TrustError::NotSignedByClusterCa { device, .. }) if device.as_str() == "stranger"),
                "{error}"
            );
        }
        other => panic!("an untrusted server was not refused: {other:?}"),
    }

    let mut config = RegistryConfig::default();
    config.probe_interval = Duration::from_millis(20);
    let registry = Registry::start(
        StaticLocator::new([endpoint.clone()]),
        prober(),
        |endpoint: &Endpoint| endpoint.clone(),
        config,
    )?;
    // Checked and failed several times over: it never turned healthy, and
    // it never had the features it would have said it has. (In panic mode,
    // which a registry of one unhealthy view is in, a question that asks
    // for no feature at all is answered with every view, this one too.)
    let mut snapshot = registry.snapshot();
    let limit = WaitLimit::timeout(PATIENCE);
    while snapshot
        .view(&endpoint)
        .is_none_or(|view| view.health() != Health::Unhealthy)
    {
        assert!(
            snapshot
                .view(&endpoint)
                .is_none_or(|view| !view.is_healthy())
        );
        assert!(snapshot.healthy_views(&features(&["kv"])).is_empty());
        snapshot = registry.wait_for_change(snapshot.stamp(), &limit).await?;
    }
    let error = snapshot
        .view(&endpoint)
        .and_then(|view| view.last_error())
        .expect("why it is unhealthy");
    assert!(error.contains("cannot secure"), "{error}");
    assert_eq!(server.report().expect("reports").await["answered"], 0);
    registry.kill();
    registry.wait().await?;
    server.kill();
    server.wait().await?;
    Ok(())
}

/// A prober the server does not trust, or one that speaks no TLS, learns
/// nothing of the status; the server counts it as untrusted.
#[tokio::test]
async fn a_prober_that_is_not_trusted_gets_no_answer() -> anyhow::Result<()> {
    let (server, endpoint) = server(DiagnosticsStatus::serving(names(&["kv"]))).await?;
    let stranger = Identity::generate(&flotilla_core_types::DeviceId::new("stranger")?)?;
    // The stranger trusts the server, so that the refusal is the server's.
    let probers = [
        ("a self-signed", Transport::tls(&stranger, cluster_trust())?),
        ("a plaintext", Transport::insecure_plaintext()),
    ];
    for (count, (which, transport)) in probers.into_iter().enumerate() {
        let authenticated = transport.is_authenticated();
        let prober = DiagnosticsProber::new(transport);
        let outcome = prober.probe(&endpoint).await;
        assert!(
            !matches!(
                outcome,
                ProbeOutcome::Serving { .. } | ProbeOutcome::NotServing
            ),
            "{which} prober was answered: {outcome:?}"
        );
        if authenticated {
            // It can tell it was refused (though not why).
            assert!(
                matches!(&outcome, ProbeOutcome::Failed(error @ ProbeError::Handshake { .. }) if error.refusal().is_none()),
                "{outcome:?}"
            );
        }
        let report = until_report(&server, |report| report["untrusted"] == count + 1).await;
        assert_eq!(report["answered"], 0, "{which}");
    }
    server.kill();
    server.wait().await?;
    Ok(())
}

/// Connections that never start their handshake are dropped when its time
/// is up, and those beyond the handshake limit at once: strangers do not
/// take the places of probers that prove themselves.
#[tokio::test]
async fn silent_connections_do_not_hold_the_server() -> anyhow::Result<()> {
    let mut config = DiagnosticsConfig::default();
    config.handshake_timeout = Duration::from_secs(2);
    config.max_handshakes = 1;
    let (server, endpoint) =
        server_with(DiagnosticsStatus::serving(names(&["kv"])), config).await?;
    let silent = TcpStream::connect(server.local_addr()).await?;
    let mut surplus = TcpStream::connect(server.local_addr()).await?;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, surplus.read_to_end(&mut rest)).await?;
    assert!(closed.is_err() || rest.is_empty());
    until_report(&server, |report| report["refused"] == 1).await;
    // The silent one's time runs out, and its place is free again.
    until_report(&server, |report| report["untrusted"] == 1).await;
    assert!(matches!(
        prober().probe(&endpoint).await,
        ProbeOutcome::Serving { .. }
    ));
    drop(silent);
    server.kill();
    server.wait().await?;
    Ok(())
}
