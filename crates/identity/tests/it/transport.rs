//! [`Transport`] over an in-memory pipe: TLS names the device on each end
//! and refuses the rest with the reason; plaintext names nobody.

use std::sync::Arc;

use anyhow::{Result, bail};
use flotilla_identity::{Identity, Transport, TransportError, Trust, TrustError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::device;

#[tokio::test]
async fn tls_names_each_peer_and_carries_bytes_both_ways() -> Result<()> {
    let (a, b) = (
        Identity::generate(&device("a"))?,
        Identity::generate(&device("b"))?,
    );
    let trust = Arc::new(Trust::of([&a, &b]));
    let at_a = Transport::tls(&a, Arc::clone(&trust))?;
    let at_b = Transport::tls(&b, trust)?;
    assert!(at_a.is_authenticated());
    assert_eq!(at_a.device(), Some(a.device()));
    let (near, far) = tokio::io::duplex(1024);
    let (dialled, accepted) = tokio::join!(at_a.connect(near, Some(b.device())), at_b.accept(far));
    let (mut dialled, mut accepted) = (dialled?, accepted?);
    assert_eq!(dialled.peer(), Some(b.device()));
    assert_eq!(accepted.peer(), Some(a.device()));
    // More than the pipe holds, so both directions must keep flowing.
    let message = vec![7u8; 10_000];
    let (sent, received) = tokio::join!(
        async {
            dialled.write_all(&message).await?;
            dialled.shutdown().await
        },
        async {
            let mut all = Vec::new();
            accepted.read_to_end(&mut all).await.map(|_| all)
        }
    );
    sent?;
    assert_eq!(received?, message);
    Ok(())
}

#[tokio::test]
async fn a_peer_refused_by_the_trust_is_a_typed_refusal_on_that_side() -> Result<()> {
    let (a, stranger) = (
        Identity::generate(&device("a"))?,
        Identity::generate(&device("stranger"))?,
    );
    let at_a = Transport::tls(&a, Arc::new(Trust::new()))?;
    let at_stranger = Transport::tls(&stranger, Arc::new(Trust::of([&a])))?;
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (dialled, accepted) = tokio::join!(at_stranger.connect(near, None), at_a.accept(far));
    match accepted {
        Err(TransportError::Refused(TrustError::UnknownDevice { device: named, .. })) => {
            assert_eq!(named, device("stranger"));
        }
        other => bail!("the stranger was not refused for being unknown: {other:?}"),
    }
    // In TLS 1.3 the client's handshake is over before the server has
    // checked it: the refusal reaches the stranger as its first read
    // failing, an alert that does not say why.
    let mut dialled = dialled?;
    let mut byte = [0u8; 1];
    let read = dialled.read(&mut byte).await;
    let refused = read.expect_err("the stranger reads nothing");
    assert!(
        flotilla_identity::tls::refused_by_peer(&refused),
        "the stranger can tell it was refused: {refused}"
    );
    Ok(())
}

#[tokio::test]
async fn dialling_a_device_reaches_only_that_device() -> Result<()> {
    let (a, b, c) = (
        Identity::generate(&device("a"))?,
        Identity::generate(&device("b"))?,
        Identity::generate(&device("c"))?,
    );
    let trust = Arc::new(Trust::of([&a, &b, &c]));
    let at_a = Transport::tls(&a, Arc::clone(&trust))?;
    let at_c = Transport::tls(&c, trust)?;
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (dialled, _accepted) = tokio::join!(at_a.connect(near, Some(b.device())), at_c.accept(far));
    match dialled {
        Err(error) => assert_eq!(
            error.refusal(),
            Some(&TrustError::NotTheExpectedDevice {
                expected: device("b"),
                presented: device("c"),
            })
        ),
        Ok(secured) => bail!("reached {:?} when b was dialled", secured.peer()),
    }
    Ok(())
}

#[tokio::test]
async fn plaintext_proves_nobody_and_a_tls_side_refuses_it() -> Result<()> {
    let a = Identity::generate(&device("a"))?;
    let plain = Transport::insecure_plaintext();
    assert!(!plain.is_authenticated());
    assert_eq!(plain.device(), None);
    let (near, far) = tokio::io::duplex(1024);
    let (dialled, accepted) = tokio::join!(plain.connect(near, None), plain.accept(far));
    assert_eq!((dialled?.peer(), accepted?.peer()), (None, None));
    // Asking for a device is asking for proof, which plaintext has not.
    let (near, _far) = tokio::io::duplex(1024);
    assert!(matches!(
        plain.connect(near, Some(a.device())).await,
        Err(TransportError::Unverifiable { expected }) if expected == *a.device()
    ));

    // A plaintext client speaks its protocol at a TLS side: refused as a
    // failed handshake, within the handshake.
    let at_a = Transport::tls(&a, Arc::new(Trust::new()))?;
    let (near, far) = tokio::io::duplex(1024);
    let speaking = async move {
        let mut stream = plain.connect(near, None).await?;
        stream.write_all(b"\0\0\0\x05hello").await?;
        stream.flush().await?;
        anyhow::Ok(stream)
    };
    let (spoke, accepted) = tokio::join!(speaking, at_a.accept(far));
    let _kept_open = spoke?;
    assert!(
        matches!(accepted, Err(TransportError::Handshake(_))),
        "{accepted:?}"
    );
    Ok(())
}
