//! How a connection between devices is secured: [`Transport`] turns any
//! byte stream (a TCP connection, an in-memory pipe) into a [`Secured`]
//! one that knows which device is on the other end.
//!
//! [`Transport::tls`] is the one to use: TLS 1.3, both sides presenting
//! certificates, each accepting only a peer its [`Trust`] accepts (see
//! [`tls`](crate::tls)). [`Transport::insecure_plaintext`] is the only way
//! to speak without it, for tests that need byte-level control of a
//! connection: its peers prove nothing, so a protocol on top must not
//! believe what they claim.
//!
//! ```
//! use std::sync::Arc;
//! use flotilla_core_types::DeviceId;
//! use flotilla_identity::{Identity, Transport, Trust};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let a = Identity::generate(&DeviceId::new("a")?)?;
//! let b = Identity::generate(&DeviceId::new("b")?)?;
//! let trust = Arc::new(Trust::of([&a, &b]));
//! let (at_a, at_b) = (Transport::tls(&a, Arc::clone(&trust))?, Transport::tls(&b, trust)?);
//!
//! let (near, far) = tokio::io::duplex(64 * 1024);
//! let (dialled, accepted) = tokio::join!(at_a.connect(near, None), at_b.accept(far));
//! assert_eq!(dialled?.peer(), Some(b.device()));
//! assert_eq!(accepted?.peer(), Some(a.device()));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use flotilla_core_types::DeviceId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{self, TlsConfigError};
use crate::{Identity, Trust, TrustError};

/// How connections to and from peers are secured. Cheap to clone: every
/// clone shares the configurations.
#[derive(Clone)]
pub struct Transport {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Tls(Arc<TlsTransport>),
    InsecurePlaintext,
}

/// What a TLS transport keeps: its configurations, made once.
struct TlsTransport {
    device: DeviceId,
    identity: Identity,
    trust: Arc<Trust>,
    acceptor: TlsAcceptor,
    /// For dialling a peer whatever device it turns out to be.
    connector: TlsConnector,
}

impl Transport {
    /// TLS 1.3 with mutual authentication: presents `identity`, and accepts
    /// (dialling or accepting) only a peer `trust` accepts.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError`] if rustls refuses the identity's key.
    pub fn tls(identity: &Identity, trust: Arc<Trust>) -> Result<Transport, TlsConfigError> {
        let server = tls::server_config(identity, Arc::clone(&trust))?;
        let client = tls::client_config(identity, Arc::clone(&trust), None)?;
        Ok(Transport {
            kind: Kind::Tls(Arc::new(TlsTransport {
                device: identity.device().clone(),
                identity: identity.clone(),
                trust,
                acceptor: TlsAcceptor::from(Arc::new(server)),
                connector: TlsConnector::from(Arc::new(client)),
            })),
        })
    }

    /// No encryption and no authentication: bytes as they are, from peers
    /// that prove nothing. Only for tests that need byte-level control of
    /// a connection, and for nothing that matters: anyone who can reach
    /// the port can claim to be anyone.
    pub fn insecure_plaintext() -> Transport {
        Transport {
            kind: Kind::InsecurePlaintext,
        }
    }

    /// Whether peers prove who they are (false only for
    /// [`insecure_plaintext`](Transport::insecure_plaintext)).
    pub fn is_authenticated(&self) -> bool {
        matches!(self.kind, Kind::Tls(_))
    }

    /// The device this side presents itself as, if it is authenticated.
    pub fn device(&self) -> Option<&DeviceId> {
        match &self.kind {
            Kind::Tls(tls) => Some(&tls.device),
            Kind::InsecurePlaintext => None,
        }
    }

    /// Secures `io` as the side that dialled. With `expected`, the peer
    /// must be that device, not just any trusted one (and over plaintext,
    /// where that cannot be checked, the call fails).
    ///
    /// # Errors
    ///
    /// [`TransportError::Refused`] when this side refused the peer (with
    /// why); [`TransportError::Handshake`] for any other failure of the
    /// handshake, the peer refusing us included. In TLS 1.3 a server
    /// checks the client's certificate after the client's handshake is
    /// over, so a server refusing this side shows as the first read
    /// failing instead.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the handshake and the stream.
    pub async fn connect<IO>(
        &self,
        io: IO,
        expected: Option<&DeviceId>,
    ) -> Result<Secured<IO>, TransportError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = match (&self.kind, expected) {
            (Kind::Tls(tls), _) => tls,
            (Kind::InsecurePlaintext, None) => return Ok(Secured::plain(io)),
            (Kind::InsecurePlaintext, Some(expected)) => {
                return Err(TransportError::Unverifiable {
                    expected: expected.clone(),
                });
            }
        };
        let connector = match expected {
            None => tls.connector.clone(),
            Some(expected) => {
                let config = tls::client_config(
                    &tls.identity,
                    Arc::clone(&tls.trust),
                    Some(expected.clone()),
                )?;
                TlsConnector::from(Arc::new(config))
            }
        };
        let stream = connector
            .connect(tls::server_name(), io)
            .await
            .map_err(TransportError::from_handshake)?;
        Secured::tls(stream.into())
    }

    /// Secures `io` as the side that accepted.
    ///
    /// # Errors
    ///
    /// As for [`connect`](Transport::connect).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the handshake and the stream.
    pub async fn accept<IO>(&self, io: IO) -> Result<Secured<IO>, TransportError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = match &self.kind {
            Kind::Tls(tls) => tls,
            Kind::InsecurePlaintext => return Ok(Secured::plain(io)),
        };
        let stream = tls
            .acceptor
            .accept(io)
            .await
            .map_err(TransportError::from_handshake)?;
        Secured::tls(stream.into())
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Tls(tls) => f
                .debug_struct("Transport::Tls")
                .field("device", &tls.device)
                .finish_non_exhaustive(),
            Kind::InsecurePlaintext => f.write_str("Transport::InsecurePlaintext"),
        }
    }
}

/// A connection could not be secured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// This side refused the peer: its certificate is missing, unreadable,
    /// not trusted, or names another device than the one expected.
    #[error("the peer was refused: {0}")]
    Refused(#[from] TrustError),
    /// The handshake failed otherwise: the peer refused us (a TLS alert,
    /// which does not say why), spoke something other than TLS, or went
    /// away.
    #[error("the TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// A configuration for this connection could not be made.
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    /// A particular device was asked for over
    /// [`Transport::insecure_plaintext`], where no peer proves who it is.
    #[error("cannot check that the peer is {expected}: the transport is plaintext")]
    Unverifiable {
        /// The device asked for.
        expected: DeviceId,
    },
}

impl TransportError {
    fn from_handshake(error: io::Error) -> TransportError {
        match tls::refusal(&error) {
            Some(refused) => TransportError::Refused(refused.clone()),
            None => TransportError::Handshake(error),
        }
    }

    /// Why this side refused its peer, if it did.
    pub fn refusal(&self) -> Option<&TrustError> {
        match self {
            TransportError::Refused(why) => Some(why),
            _ => None,
        }
    }
}

/// A connection secured by a [`Transport`]: a byte stream (it reads and
/// writes like `IO`) that knows which device is on the other end.
pub struct Secured<IO> {
    stream: Stream<IO>,
    peer: Option<DeviceId>,
}

enum Stream<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::TlsStream<IO>>),
}

impl<IO> Secured<IO> {
    /// An established TLS stream, naming the device its handshake proved.
    fn tls(stream: tokio_rustls::TlsStream<IO>) -> Result<Secured<IO>, TransportError> {
        let peer = tls::peer_device(stream.get_ref().1)?;
        Ok(Secured {
            stream: Stream::Tls(Box::new(stream)),
            peer: Some(peer),
        })
    }

    fn plain(io: IO) -> Secured<IO> {
        Secured {
            stream: Stream::Plain(io),
            peer: None,
        }
    }

    /// The device the peer proved it is: the one its certificate names,
    /// checked against the trust in the handshake. `None` over
    /// [`Transport::insecure_plaintext`], where the peer proved nothing.
    pub fn peer(&self) -> Option<&DeviceId> {
        self.peer.as_ref()
    }

    /// The underlying stream, for its address or socket options.
    pub fn get_ref(&self) -> &IO {
        match &self.stream {
            Stream::Plain(io) => io,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl<IO> fmt::Debug for Secured<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secured")
            .field("tls", &matches!(self.stream, Stream::Tls(_)))
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Secured<IO> {
    /// Reads what the peer sent (decrypted, with TLS).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Secured<IO> {
    /// Writes to the peer (encrypted, with TLS).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    /// Writes several buffers to the peer at once.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    /// Whether the stream writes several buffers at once efficiently.
    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    /// Sends what is buffered.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    /// Closes the sending side (with TLS, the session: a close_notify).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
