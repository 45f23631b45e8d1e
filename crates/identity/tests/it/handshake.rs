//! Real TLS 1.3 handshakes (tokio-rustls over an in-memory pipe) between
//! identities: trusted peers learn each other's device, and every other
//! peer is refused in the handshake, with the reason, before a byte of
//! application data passes.

use std::sync::Arc;

use anyhow::{Result, bail};
use flotilla_core_types::DeviceId;
use flotilla_identity::{ClusterCa, Identity, Trust, TrustError, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("a valid id")
}

/// What each side saw: the device on the other end, or why it failed.
struct Outcome {
    server: Result<DeviceId, Failure>,
    client: Result<DeviceId, Failure>,
}

/// A side's failure: its own refusal of the peer (typed), or anything else.
#[derive(Debug)]
enum Failure {
    Refused(TrustError),
    Other(#[expect(dead_code, reason = "read through Debug, in failure messages")] String),
}

fn failure(error: std::io::Error) -> Failure {
    match tls::refusal(&error) {
        Some(refusal) => Failure::Refused(refusal.clone()),
        None => Failure::Other(error.to_string()),
    }
}

/// One handshake, `client` dialling `server` (expecting `expected`), then
/// a message each way when it succeeds.
async fn handshake(
    server: &Identity,
    server_trust: Trust,
    client: &Identity,
    client_trust: Trust,
    expected: Option<DeviceId>,
) -> Result<Outcome> {
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(
        server,
        Arc::new(server_trust),
    )?));
    let connector = TlsConnector::from(Arc::new(tls::client_config(
        client,
        Arc::new(client_trust),
        expected,
    )?));
    let (near, far) = tokio::io::duplex(64 * 1024);
    let serving = async move {
        let mut stream = acceptor.accept(far).await.map_err(failure)?;
        let peer = tls::peer_device(stream.get_ref().1).map_err(Failure::Refused)?;
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.map_err(failure)?;
        stream.write_all(b"world").await.map_err(failure)?;
        stream.flush().await.map_err(failure)?;
        assert_eq!(&hello, b"hello");
        Ok(peer)
    };
    let dialling = async move {
        let mut stream = connector
            .connect(tls::server_name(), near)
            .await
            .map_err(failure)?;
        let peer = tls::peer_device(stream.get_ref().1).map_err(Failure::Refused)?;
        stream.write_all(b"hello").await.map_err(failure)?;
        stream.flush().await.map_err(failure)?;
        let mut world = [0u8; 5];
        stream.read_exact(&mut world).await.map_err(failure)?;
        assert_eq!(&world, b"world");
        Ok(peer)
    };
    let (server, client) = tokio::join!(serving, dialling);
    Ok(Outcome { server, client })
}

#[tokio::test]
async fn trusted_peers_learn_each_others_device() -> Result<()> {
    let (a, b) = (
        Identity::generate(&device("a"))?,
        Identity::generate(&device("b"))?,
    );
    let outcome = handshake(&a, Trust::of([&b]), &b, Trust::of([&a]), Some(device("a"))).await?;
    assert_eq!(outcome.server.ok(), Some(device("b")));
    assert_eq!(outcome.client.ok(), Some(device("a")));
    Ok(())
}

#[tokio::test]
async fn a_client_the_server_does_not_trust_is_refused_with_the_reason() -> Result<()> {
    let (a, stranger) = (
        Identity::generate(&device("a"))?,
        Identity::generate(&device("stranger"))?,
    );
    let outcome = handshake(&a, Trust::new(), &stranger, Trust::of([&a]), None).await?;
    let Err(Failure::Refused(TrustError::UnknownDevice {
        device: named,
        fingerprint,
    })) = outcome.server
    else {
        bail!(
            "an untrusted client was not refused for it: {:?}",
            outcome.server
        );
    };
    assert_eq!(
        (named, fingerprint),
        (device("stranger"), stranger.fingerprint())
    );
    assert!(outcome.client.is_err(), "the client saw the refusal too");
    Ok(())
}

#[tokio::test]
async fn a_peer_claiming_a_trusted_name_with_another_key_is_refused() -> Result<()> {
    let a = Identity::generate(&device("a"))?;
    let b = Identity::generate(&device("b"))?;
    let impostor = Identity::generate(&device("b"))?;
    // The server trusts b; the impostor says it is b.
    let outcome = handshake(&a, Trust::of([&b]), &impostor, Trust::of([&a]), None).await?;
    let Err(Failure::Refused(TrustError::WrongKey {
        pinned, presented, ..
    })) = outcome.server
    else {
        bail!(
            "an impostor was not refused for its key: {:?}",
            outcome.server
        );
    };
    assert_eq!(
        (pinned, presented),
        (b.fingerprint(), impostor.fingerprint())
    );
    // And a client that trusts b refuses an impostor server.
    let outcome = handshake(&impostor, Trust::of([&a]), &a, Trust::of([&b]), None).await?;
    let Err(Failure::Refused(TrustError::WrongKey { .. })) = outcome.client else {
        bail!(
            "an impostor server was not refused for its key: {:?}",
            outcome.client
        );
    };
    Ok(())
}

#[tokio::test]
async fn a_trusted_server_that_is_not_the_device_dialled_is_refused() -> Result<()> {
    let (a, b, c) = (
        Identity::generate(&device("a"))?,
        Identity::generate(&device("b"))?,
        Identity::generate(&device("c"))?,
    );
    // c trusts both a and b, dials b, but a answers.
    let outcome = handshake(
        &a,
        Trust::of([&c]),
        &c,
        Trust::of([&a, &b]),
        Some(device("b")),
    )
    .await?;
    let Err(Failure::Refused(TrustError::NotTheExpectedDevice {
        expected,
        presented,
    })) = outcome.client
    else {
        bail!("the wrong device was not refused: {:?}", outcome.client);
    };
    assert_eq!((expected, presented), (device("b"), device("a")));
    Ok(())
}

#[tokio::test]
async fn plaintext_spoken_to_a_tls_port_is_refused_and_nothing_is_read() -> Result<()> {
    let a = Identity::generate(&device("a"))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&a, Arc::new(Trust::new()))?));
    let (mut near, far) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move { acceptor.accept(far).await.map(|_| ()) });
    // A gensync hello in plaintext: a length, a version byte and a message.
    near.write_all(&[0, 0, 0, 3, 2, 0, 1]).await?;
    near.shutdown().await?;
    let accepted = serving.await?;
    assert!(accepted.is_err(), "plaintext passed for a handshake");
    Ok(())
}

#[test]
fn the_trust_names_why_it_refuses() -> Result<()> {
    let b = Identity::generate(&device("b"))?;
    let other_b = Identity::generate(&device("b"))?;
    let mut trust = Trust::of([&b]);
    assert_eq!(trust.check(b.certificate()), Ok(device("b")));
    assert!(matches!(
        trust.check(other_b.certificate()),
        Err(TrustError::WrongKey { device: named, pinned, presented })
            if named == device("b") && pinned == b.fingerprint() && presented == other_b.fingerprint()
    ));
    // Moving b to its new key.
    trust.pin(device("b"), other_b.fingerprint());
    assert_eq!(trust.check(other_b.certificate()), Ok(device("b")));
    assert_eq!(trust.pinned(&device("b")), Some(other_b.fingerprint()));
    assert_eq!(
        trust.devices().collect::<Vec<_>>(),
        [(&device("b"), other_b.fingerprint())]
    );
    assert_eq!(trust.unpin(&device("b")), Some(other_b.fingerprint()));
    assert!(matches!(
        trust.check(other_b.certificate()),
        Err(TrustError::UnknownDevice { .. })
    ));
    assert!(matches!(
        trust.check(&rustls_pki_types_der(b"not a certificate")),
        Err(TrustError::Unreadable { .. })
    ));
    Ok(())
}

fn rustls_pki_types_der(bytes: &[u8]) -> rustls::pki_types::CertificateDer<'static> {
    rustls::pki_types::CertificateDer::from(bytes.to_vec())
}

fn a_day_from_now() -> std::ops::Range<std::time::SystemTime> {
    let now = std::time::SystemTime::now();
    now - std::time::Duration::from_secs(60)..now + std::time::Duration::from_secs(86_400)
}

#[tokio::test]
async fn devices_a_cluster_ca_issued_trust_each_other_through_it() -> Result<()> {
    let ca = ClusterCa::generate("cluster")?;
    let (a, b) = (
        ca.issue(&device("a"), a_day_from_now())?,
        ca.issue(&device("b"), a_day_from_now())?,
    );
    let trust = || {
        Trust::new()
            .with_cluster_ca(ca.certificate().clone())
            .expect("a CA's certificate")
    };
    let outcome = handshake(&a, trust(), &b, trust(), Some(device("a"))).await?;
    assert_eq!(outcome.server.ok(), Some(device("b")));
    assert_eq!(outcome.client.ok(), Some(device("a")));
    Ok(())
}

#[tokio::test]
async fn another_cas_device_an_expired_one_and_a_self_signed_one_are_refused() -> Result<()> {
    let ca = ClusterCa::generate("cluster")?;
    let other_ca = ClusterCa::generate("elsewhere")?;
    let server = ca.issue(&device("a"), a_day_from_now())?;
    let trust = || {
        Trust::new()
            .with_cluster_ca(ca.certificate().clone())
            .expect("a CA's certificate")
    };
    let year_2001 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(978_307_200);
    let clients = [
        (
            "another CA's",
            other_ca.issue(&device("b"), a_day_from_now())?,
        ),
        (
            "an expired",
            ca.issue(
                &device("b"),
                year_2001..year_2001 + std::time::Duration::from_secs(86_400),
            )?,
        ),
        ("a self-signed", Identity::generate(&device("b"))?),
    ];
    for (which, client) in clients {
        let outcome = handshake(&server, trust(), &client, trust(), None).await?;
        let Err(Failure::Refused(TrustError::NotSignedByClusterCa { device: named, .. })) =
            outcome.server
        else {
            bail!(
                "{which} certificate was not refused for it: {:?}",
                outcome.server
            );
        };
        assert_eq!(named, device("b"), "{which}");
    }
    Ok(())
}

#[tokio::test]
async fn a_pin_comes_before_the_cluster_ca() -> Result<()> {
    let ca = ClusterCa::generate("cluster")?;
    let server = ca.issue(&device("a"), a_day_from_now())?;
    let pinned_b = Identity::generate(&device("b"))?;
    let ca_signed_b = ca.issue(&device("b"), a_day_from_now())?;
    let mut server_trust = Trust::new().with_cluster_ca(ca.certificate().clone())?;
    server_trust.pin(device("b"), pinned_b.fingerprint());
    let client_trust = Trust::new().with_cluster_ca(ca.certificate().clone())?;
    // The CA signed this b, but b is pinned to another key.
    let outcome = handshake(
        &server,
        server_trust.clone(),
        &ca_signed_b,
        client_trust.clone(),
        None,
    )
    .await?;
    assert!(
        matches!(
            outcome.server,
            Err(Failure::Refused(TrustError::WrongKey { .. }))
        ),
        "{:?}",
        outcome.server
    );
    // The pinned b, self-signed, is accepted.
    let outcome = handshake(&server, server_trust, &pinned_b, client_trust, None).await?;
    assert_eq!(outcome.server.ok(), Some(device("b")));
    Ok(())
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() -> Result<()> {
    let a = Identity::generate(&device("a"))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&a, Arc::new(Trust::new()))?));
    let connector = flotilla_testkit::anonymous_tls_client();
    let (near, far) = tokio::io::duplex(64 * 1024);
    let serving = async move { acceptor.accept(far).await.map(|_| ()) };
    let dialling = async move {
        let mut stream = connector.connect(tls::server_name(), near).await?;
        // TLS 1.3 clients finish first; the server's refusal comes after.
        stream.write_all(b"hello").await?;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    };
    let (served, dialled) = tokio::join!(serving, dialling);
    let refusal = served.expect_err("a client without a certificate was accepted");
    assert_eq!(
        tls::refusal(&refusal),
        Some(&TrustError::NoCertificate),
        "{refusal}"
    );
    assert!(
        !matches!(dialled, Ok(n) if n > 0),
        "the server sent data: {dialled:?}"
    );
    Ok(())
}

#[test]
fn only_a_cas_certificate_can_be_a_cluster_ca() -> Result<()> {
    let ca = ClusterCa::generate("cluster")?;
    Trust::new().with_cluster_ca(ca.certificate().clone())?;
    // A device's certificate, self-signed or issued, is not a CA's: taken
    // for one, its key could vouch for every other device.
    let own = Identity::generate(&device("a"))?;
    let issued = ca.issue(&device("b"), a_day_from_now())?;
    for certificate in [own.certificate(), issued.certificate()] {
        let refused = Trust::new().with_cluster_ca(certificate.clone());
        assert!(
            matches!(refused, Err(TrustError::NotAnAuthority { .. })),
            "{refused:?}"
        );
    }
    let garbage = rustls_pki_types_der(b"not a certificate");
    assert!(matches!(
        Trust::new().with_cluster_ca(garbage),
        Err(TrustError::NotAnAuthority { .. })
    ));
    Ok(())
}
