//! [`DiagnosticsProber`]: the registry's check over the diagnostics
//! protocol; [`ask_status_over`] asks over one byte stream of any
//! transport.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use flotilla_core_types::Endpoint;
use flotilla_identity::Transport;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::diagnostics::server::{framed, io_error};
use crate::diagnostics::wire::{self, Answer, WireError};
use crate::{FeatureSet, ProbeError, ProbeOutcome, Prober};

/// Turns the feature names a server sent into the registry's feature set.
type FeatureMap<F> = dyn Fn(&BTreeSet<String>) -> F + Send + Sync;

/// Checks a server by asking its [`DiagnosticsServer`](crate::DiagnosticsServer)
/// for its status: serving with features and partition, or not serving.
///
/// Each check opens a connection, secures it with the prober's
/// [`Transport`], asks once and closes it. A prober holds no connection
/// between checks, so it keeps nothing for an endpoint that has left the
/// locator, and a check is exactly as fresh as its connection.
///
/// What a check answers:
/// - serving → [`ProbeOutcome::Serving`], features made by the prober's map
///   from the names the server sent, and the partition it sent;
/// - not serving → [`ProbeOutcome::NotServing`];
/// - a server of the protocol that cannot answer this version, or a server
///   that answered in another protocol → [`ProbeOutcome::NoHealthService`];
/// - no connection → [`ProbeOutcome::Failed`] with
///   [`ProbeError::Unreachable`]; a server that is not trusted (or does
///   not trust this side, or speaks no TLS) → [`ProbeError::Handshake`];
///   a broken answer, or the connection closed without one →
///   [`ProbeError::Protocol`].
///
/// See the [module docs](crate::diagnostics) for an example.
pub struct DiagnosticsProber<F> {
    transport: Transport,
    map: Arc<FeatureMap<F>>,
}

impl DiagnosticsProber<BTreeSet<String>> {
    /// A prober over `transport` whose views' features are the names the
    /// servers send.
    pub fn new(transport: Transport) -> Self {
        DiagnosticsProber::with_features(transport, BTreeSet::clone)
    }
}

impl<F: FeatureSet> DiagnosticsProber<F> {
    /// A prober over `transport` that makes each view's features with
    /// `map` from the names its server sent: an enum set of your own, say,
    /// leaving out names it does not know.
    pub fn with_features(
        transport: Transport,
        map: impl Fn(&BTreeSet<String>) -> F + Send + Sync + 'static,
    ) -> Self {
        DiagnosticsProber {
            transport,
            map: Arc::new(map),
        }
    }
}

impl<F> Clone for DiagnosticsProber<F> {
    fn clone(&self) -> Self {
        DiagnosticsProber {
            transport: self.transport.clone(),
            map: Arc::clone(&self.map),
        }
    }
}

impl<F> fmt::Debug for DiagnosticsProber<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiagnosticsProber")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl<F: FeatureSet> Prober<F> for DiagnosticsProber<F> {
    async fn probe(&self, endpoint: &Endpoint) -> ProbeOutcome<F> {
        let stream = match tokio::net::TcpStream::connect((endpoint.host(), endpoint.port())).await
        {
            Ok(stream) => stream,
            Err(error) => return ProbeOutcome::Failed(ProbeError::unreachable(endpoint, error)),
        };
        let _ = stream.set_nodelay(true);
        let secured = match self.transport.connect(stream, None).await {
            Ok(secured) => secured,
            Err(error) => {
                return ProbeOutcome::Failed(ProbeError::Handshake {
                    endpoint: endpoint.clone(),
                    source: Arc::new(error),
                });
            }
        };
        let answer = match ask(secured).await {
            Ok(answer) => Ok(answer),
            // In TLS 1.3 a server that does not trust this prober says so
            // only now, with an alert on the first read.
            Err(Asked::Io(error)) if flotilla_identity::tls::refused_by_peer(&error) => {
                return ProbeOutcome::Failed(ProbeError::Handshake {
                    endpoint: endpoint.clone(),
                    source: Arc::new(flotilla_identity::TransportError::Handshake(error)),
                });
            }
            Err(other) => Err(other.into_wire()),
        };
        self.outcome(endpoint, answer)
    }
}

impl<F: FeatureSet> DiagnosticsProber<F> {
    /// What an answer, or a broken one, says of the server.
    fn outcome(&self, endpoint: &Endpoint, answer: Result<Answer, WireError>) -> ProbeOutcome<F> {
        match answer {
            Ok(Answer::Status(status)) if status.is_serving() => ProbeOutcome::Serving {
                features: (self.map)(status.features()),
                partition: status.partition(),
            },
            Ok(Answer::Status(_)) => ProbeOutcome::NotServing,
            Ok(Answer::Unsupported { .. }) | Err(WireError::NotDiagnostics) => {
                ProbeOutcome::NoHealthService
            }
            Err(error) => ProbeOutcome::Failed(ProbeError::Protocol {
                endpoint: endpoint.clone(),
                reason: error.to_string(),
            }),
        }
    }
}

/// Asks for a server's status over `io`, any byte stream to a
/// [`serve_diagnostics_over`](crate::serve_diagnostics_over), and returns
/// its answer. The caller bounds its time.
///
/// # Errors
///
/// [`WireError::NotDiagnostics`] when the server answered in another
/// protocol, [`WireError::Transport`] when the connection failed or closed
/// before answering, and the other [`WireError`]s for a broken answer.
///
/// # Cancel safety
///
/// Dropping the future abandons the request; the server drops the answer.
pub async fn ask_status_over<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
) -> Result<Answer, WireError> {
    ask(io).await.map_err(Asked::into_wire)
}

/// Why asking failed: the connection (kept whole, so that a TLS alert can
/// be told apart), or the answer.
enum Asked {
    Io(std::io::Error),
    Wire(WireError),
}

impl Asked {
    fn into_wire(self) -> WireError {
        match self {
            Asked::Io(error) => io_error(error),
            Asked::Wire(error) => error,
        }
    }
}

async fn ask<T: AsyncRead + AsyncWrite + Unpin>(io: T) -> Result<Answer, Asked> {
    let mut frames = framed(io);
    frames
        .send(wire::encode_status_request())
        .await
        .map_err(Asked::Io)?;
    match frames.next().await {
        Some(frame) => wire::decode_answer(&frame.map_err(Asked::Io)?).map_err(Asked::Wire),
        None => Err(Asked::Wire(WireError::Transport(
            "the server closed the connection without answering".to_owned(),
        ))),
    }
}
