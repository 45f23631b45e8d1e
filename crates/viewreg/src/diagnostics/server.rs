//! [`DiagnosticsServer`]: answers the diagnostics protocol on a listener,
//! with the status its handle last set; [`serve_diagnostics_over`] answers
//! it over one byte stream of any transport.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_core_types::{ReportFuture, TaskWorker, WorkerError, delegate_worker};
use flotilla_identity::Transport;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Error;
use crate::diagnostics::DiagnosticsStatus;
use crate::diagnostics::wire::{
    self, Answer, MAX_FRAME_LEN, PROTOCOL_VERSION, Request, WireError, check_features,
};

/// Limits of a [`DiagnosticsServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiagnosticsConfig {
    /// The most connections served at once (default 256). A connection
    /// beyond is closed as soon as it is accepted, so a flood of clients
    /// costs the server no more than this many tasks; the registries
    /// behind the closed ones count a failed check.
    pub max_connections: usize,
    /// How long a connection may wait between requests, or take to send
    /// one, before the server closes it (default 30 s).
    pub idle_timeout: Duration,
    /// How long a connection may take to complete its TLS handshake
    /// (default 5 s).
    pub handshake_timeout: Duration,
    /// The most connections waiting in their handshake at once (default
    /// 64), and the most of them from one IP address (default 8); one
    /// beyond is closed at once. They do not count against
    /// [`max_connections`](Self::max_connections), which counts probers
    /// that proved who they are, so strangers cannot take their places.
    pub max_handshakes: usize,
    /// See [`max_handshakes`](Self::max_handshakes).
    pub max_handshakes_per_address: usize,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        DiagnosticsConfig {
            max_connections: 256,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            max_handshakes_per_address: 8,
        }
    }
}

impl DiagnosticsConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.max_connections == 0 {
            return Err(Error::InvalidConfig {
                field: "max_connections",
                reason: "must be at least 1".to_owned(),
            });
        }
        for (field, timeout) in [
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be longer than zero".to_owned(),
                });
            }
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_address == 0 {
            return Err(Error::InvalidConfig {
                field: "max_handshakes",
                reason: "must be at least 1, and so must max_handshakes_per_address".to_owned(),
            });
        }
        Ok(())
    }
}

/// A server of the diagnostics protocol: run it beside your service and
/// set its status as the service's changes, and registries with a
/// [`DiagnosticsProber`](crate::DiagnosticsProber) see it.
///
/// Every connection is secured by the server's [`Transport`] before a
/// request is read: a prober its trust does not accept is refused in the
/// handshake, and learns nothing of the status.
///
/// It is a [`Worker`](flotilla_core_types::Worker): `kill` stops accepting
/// and closes every connection, and `wait` returns once every connection's
/// task has ended. Its report holds `state`, `local_addr`, `serving`,
/// `connections` (open now), `answered`, `refused` (connections closed
/// at once because [`max_connections`](DiagnosticsConfig::max_connections)
/// were open, and requests that were not of the protocol) and `untrusted`
/// (connections whose handshake failed or did not finish in time: a
/// prober not trusted, or not speaking TLS). Connections in their
/// handshake are limited apart from those answered (see
/// [`DiagnosticsConfig`]).
///
/// See the [module docs](crate::diagnostics) for an example.
#[derive(Clone)]
pub struct DiagnosticsServer {
    worker: TaskWorker,
    status: Arc<watch::Sender<DiagnosticsStatus>>,
    local_addr: SocketAddr,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    open: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    untrusted: AtomicU64,
}

impl DiagnosticsServer {
    /// Starts serving `status` on `listener`, over connections `transport`
    /// secures. Does not block.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a zero limit; [`Error::InvalidStatus`]
    /// when `status` breaks the protocol's limits; [`Error::Listener`]
    /// when the listener has no local address.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(
        listener: TcpListener,
        transport: Transport,
        status: DiagnosticsStatus,
        config: DiagnosticsConfig,
    ) -> Result<DiagnosticsServer, Error> {
        config.validate()?;
        check_features(status.features()).map_err(Error::InvalidStatus)?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Listener(Arc::new(source)))?;
        let (sender, receiver) = watch::channel(status);
        let counts = Arc::new(Counts::default());
        let served = Arc::clone(&counts);
        let span = tracing::info_span!("diagnostics", %local_addr);
        let worker = TaskWorker::spawn(move |stop| {
            accept_loop(listener, transport, receiver, config, served, stop).instrument(span)
        });
        Ok(DiagnosticsServer {
            worker,
            status: Arc::new(sender),
            local_addr,
            counts,
        })
    }

    /// Answers `status` from the next request on.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStatus`] when it breaks the protocol's limits (the
    /// status answered stays the last valid one).
    pub fn set_status(&self, status: DiagnosticsStatus) -> Result<(), Error> {
        check_features(status.features()).map_err(Error::InvalidStatus)?;
        self.status.send_replace(status);
        Ok(())
    }

    /// The status answered now.
    pub fn status(&self) -> DiagnosticsStatus {
        self.status.borrow().clone()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn report_json(&self) -> Option<ReportFuture<'_>> {
        let report = serde_json::json!({
            "state": self.worker.state(),
            "local_addr": self.local_addr.to_string(),
            "serving": self.status.borrow().is_serving(),
            "connections": self.counts.open.load(Ordering::Relaxed),
            "answered": self.counts.answered.load(Ordering::Relaxed),
            "refused": self.counts.refused.load(Ordering::Relaxed),
            "untrusted": self.counts.untrusted.load(Ordering::Relaxed),
        });
        Some(Box::pin(async move { report }))
    }
}

delegate_worker!(
    DiagnosticsServer,
    worker,
    report = DiagnosticsServer::report_json
);

impl fmt::Debug for DiagnosticsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiagnosticsServer")
            .field("local_addr", &self.local_addr)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    status: watch::Receiver<DiagnosticsStatus>,
    config: DiagnosticsConfig,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> Result<(), WorkerError> {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let pending = flotilla_identity::PendingHandshakes::new(
        config.max_handshakes,
        config.max_handshakes_per_address,
    );
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait a little, go on.
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some(place) = pending.try_start(peer.ip()) else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: too many handshakes under way");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (transport, status, counts, stop, slots) = (
            transport.clone(),
            status.clone(),
            Arc::clone(&counts),
            stop.clone(),
            Arc::clone(&slots),
        );
        let (idle, handshake) = (config.idle_timeout, config.handshake_timeout);
        tracker.spawn(
            async move {
                let secured = tokio::select! {
                    () = stop.cancelled() => return,
                    secured = tokio::time::timeout(handshake, transport.accept(stream)) => secured,
                };
                drop(place);
                let secured = match secured {
                    Ok(Ok(secured)) => secured,
                    Ok(Err(error)) => {
                        counts.untrusted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, %error, "prober refused in the handshake");
                        return;
                    }
                    Err(_) => {
                        counts.untrusted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "handshake not completed in time");
                        return;
                    }
                };
                let Ok(slot) = slots.try_acquire_owned() else {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "connection refused: too many open");
                    return;
                };
                counts.open.fetch_add(1, Ordering::Relaxed);
                let served = tokio::select! {
                    () = stop.cancelled() => Ok(0),
                    served = serve_diagnostics_over(secured, &status, idle) => served,
                };
                counts.open.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
                match served {
                    Ok(answered) => {
                        counts.answered.fetch_add(answered, Ordering::Relaxed);
                    }
                    Err(error) => {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, %error, "connection closed");
                    }
                }
            }
            .in_current_span(),
        );
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Answers diagnostics requests on `io`, any byte stream from a prober,
/// with the status `status` holds at each request, until the prober closes
/// it or sends nothing for `idle_timeout`. Returns how many requests it
/// answered. A request must arrive whole, and its answer be taken, within
/// `idle_timeout`, so a peer that trickles bytes or never reads cannot hold
/// the connection.
///
/// # Errors
///
/// [`WireError`] when the peer sends what is not a diagnostics request (the
/// connection is then dropped unanswered), a frame longer than
/// [`MAX_FRAME_LEN`](wire::MAX_FRAME_LEN), or the connection fails.
///
/// # Cancel safety
///
/// Dropping the future closes the connection; nothing else is left.
pub async fn serve_diagnostics_over<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    status: &watch::Receiver<DiagnosticsStatus>,
    idle_timeout: Duration,
) -> Result<u64, WireError> {
    let mut frames = framed(io);
    let mut answered = 0;
    loop {
        let frame = match tokio::time::timeout(idle_timeout, frames.next()).await {
            Err(_) | Ok(None) => return Ok(answered),
            // A TLS prober that went away without closing its session,
            // between requests: a close like any other.
            Ok(Some(Err(error)))
                if error.kind() == std::io::ErrorKind::UnexpectedEof
                    && frames.read_buffer().is_empty() =>
            {
                return Ok(answered);
            }
            Ok(Some(frame)) => frame.map_err(io_error)?,
        };
        let answer = match wire::decode_request(&frame)? {
            Request::Status => Answer::Status(status.borrow().clone()),
            Request::Unsupported { version } => {
                tracing::debug!(version, "unsupported request");
                Answer::Unsupported {
                    version: PROTOCOL_VERSION,
                }
            }
        };
        // A prober that sends but never reads would fill the socket's
        // buffers; it gets as long to take the answer as to ask.
        match tokio::time::timeout(idle_timeout, frames.send(wire::encode_answer(&answer)?)).await {
            Ok(sent) => sent.map_err(io_error)?,
            Err(_) => {
                return Err(WireError::Transport(
                    "the prober did not read its answers".to_owned(),
                ));
            }
        }
        answered += 1;
    }
}

/// `io` framed as the protocol frames it.
pub(crate) fn framed<T: AsyncRead + AsyncWrite>(io: T) -> Framed<T, LengthDelimitedCodec> {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec();
    Framed::new(io, codec)
}

/// A framing or transport failure, as the protocol's error.
pub(crate) fn io_error(error: std::io::Error) -> WireError {
    WireError::Transport(error.to_string())
}
