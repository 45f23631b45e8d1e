//! Sync rounds over TCP: [`sync_with`] runs one round as the initiator,
//! [`Responder`] serves rounds to peers, and [`Initiator`] runs rounds with
//! a set of peers on a jittered interval.
//!
//! Every connection is secured by a [`Transport`] before a byte of the
//! protocol passes: with [`Transport::tls`], both sides prove by their
//! certificates which device they are, each refuses a peer its trust does
//! not accept, and a peer whose hello claims another device than its
//! certificate names is refused before anything it sent is read.
//!
//! A round: both sides say who they are ([`Message::Hello`]), the initiator
//! sends its vector ([`Message::GetDeltas`]), the responder seals its open
//! generation and streams every record of its log the initiator's vector
//! does not cover, oldest first, then its vector ([`Message::Done`]). The
//! initiator applies the records as they arrive, in one transaction it
//! commits only when the round is complete and consistent.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_core_types::{DeviceId, Endpoint, ReportFuture, TaskWorker, delegate_worker};
use flotilla_identity::{Secured, Transport, TransportError};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Error;
use crate::replay::{Item, Moved, QUEUE_BYTES, Queued, RoundStats, apply_round, queue_share};
use crate::replica::{Change, Origin, Replica, blocking, joined, start_blocking};
use crate::wire::{
    Connection, KnownPeer, MAX_FRAME_LEN, MAX_KNOWN_PER_MESSAGE, Message, WireError,
};

/// How sync rounds are paced and bounded. Start from [`Default`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncConfig {
    /// How often an [`Initiator`] starts a round with each peer. Default: 5 s.
    pub interval: Duration,
    /// Each interval is shortened by a random fraction of up to this much,
    /// so that replicas started together do not sync in step. From 0 to
    /// below 1. Default: 0.2.
    pub jitter: f64,
    /// The longest a round may take, connecting included. Default: 60 s.
    pub round_timeout: Duration,
    /// How many log records a responder reads at a time while streaming.
    /// Default: 512.
    pub batch_records: usize,
    /// How long a [`Responder`] gives a connection to complete its TLS
    /// handshake: a peer that connects and says nothing is dropped then,
    /// long before the round's timeout. Default: 5 s.
    pub handshake_timeout: Duration,
    /// The most connections a [`Responder`] lets wait in their handshake
    /// at once (default 64), and the most of them from one IP address
    /// (default 8). One beyond is closed as soon as it is accepted. Anyone
    /// who reaches the port can open such connections; these limits keep
    /// them from taking more than this many tasks, and keep strangers at
    /// one address from crowding out peers at others.
    pub max_handshakes: usize,
    /// See [`max_handshakes`](Self::max_handshakes).
    pub max_handshakes_per_address: usize,
    /// The most rounds a [`Responder`] serves at once, to peers that
    /// proved who they are (default 64); a peer beyond is closed once its
    /// handshake is done.
    pub max_connections: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval: Duration::from_secs(5),
            jitter: 0.2,
            round_timeout: Duration::from_secs(60),
            batch_records: 512,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            max_handshakes_per_address: 8,
            max_connections: 64,
        }
    }
}

/// Runs one sync round with the responder at `peer`, over a connection
/// `transport` secures: fetches and applies everything this replica lacks
/// of what the peer has.
///
/// # Errors
///
/// [`Error::IdentityMismatch`] when `transport` presents another device
/// than the replica's; [`Error::Connect`]; [`Error::Handshake`] when the
/// connection cannot be secured (the peer is not trusted, or does not
/// trust us); or any error of the round (bad input, an impostor, a
/// missing parent, an unbacked claim, a timeout as
/// [`Error::Disconnected`]). The replica is then as it was.
///
/// # Cancel safety
///
/// Dropping the future abandons the round; nothing of it is committed.
pub async fn sync_with(
    replica: &Replica,
    transport: &Transport,
    peer: SocketAddr,
    config: &SyncConfig,
) -> Result<RoundStats, Error> {
    check_transport(replica, transport)?;
    let round = async {
        let stream = TcpStream::connect(peer)
            .await
            .map_err(|source| Error::Connect {
                peer,
                source: Arc::new(source),
            })?;
        initiate(replica, dial(transport, stream, peer).await?, Some(peer)).await
    };
    match tokio::time::timeout(config.round_timeout, round).await {
        Ok(result) => result,
        Err(_) => Err(Error::Disconnected),
    }
}

/// Runs one sync round with the responder at `endpoint`, resolving its
/// host name now (so that a peer that moved is found at its new address)
/// and trying each address it resolves to in turn.
///
/// # Errors
///
/// [`Error::Resolve`] when the host name does not resolve;
/// [`Error::Connect`] (for the last address tried) when no address takes
/// the connection; otherwise as for [`sync_with`]. The resolution counts
/// toward the round's timeout.
///
/// # Cancel safety
///
/// Dropping the future abandons the round; nothing of it is committed.
pub async fn sync_with_endpoint(
    replica: &Replica,
    transport: &Transport,
    endpoint: &Endpoint,
    config: &SyncConfig,
) -> Result<RoundStats, Error> {
    check_transport(replica, transport)?;
    let round = async {
        let (stream, address) = connect_endpoint(endpoint).await?;
        initiate(
            replica,
            dial(transport, stream, address).await?,
            Some(address),
        )
        .await
    };
    match tokio::time::timeout(config.round_timeout, round).await {
        Ok(result) => result,
        Err(_) => Err(Error::Disconnected),
    }
}

/// Secures a connection this side dialled.
async fn dial(
    transport: &Transport,
    stream: TcpStream,
    address: SocketAddr,
) -> Result<Secured<TcpStream>, Error> {
    // Records are small and many; do not wait to fill packets.
    let _ = stream.set_nodelay(true);
    transport
        .connect(stream, None)
        .await
        .map_err(|source| Error::Handshake {
            peer: Some(address),
            source: Arc::new(source),
        })
}

/// A replica syncs under its own identity, or under none (plaintext).
fn check_transport(replica: &Replica, transport: &Transport) -> Result<(), Error> {
    match transport.device() {
        Some(identity) if identity != replica.device() => Err(Error::IdentityMismatch {
            replica: replica.device().clone(),
            identity: identity.clone(),
        }),
        _ => Ok(()),
    }
}

/// A connection to the first of `endpoint`'s addresses that takes one,
/// and that address.
async fn connect_endpoint(endpoint: &Endpoint) -> Result<(TcpStream, SocketAddr), Error> {
    let resolve_error = |source| Error::Resolve {
        endpoint: endpoint.clone(),
        source: Arc::new(source),
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((endpoint.host(), endpoint.port()))
        .await
        .map_err(resolve_error)?
        .collect();
    connect_first(endpoint, addresses).await
}

/// A connection to the first of `addresses` (what `endpoint` resolved to)
/// that takes one.
async fn connect_first(
    endpoint: &Endpoint,
    addresses: Vec<SocketAddr>,
) -> Result<(TcpStream, SocketAddr), Error> {
    let resolve_error = |source| Error::Resolve {
        endpoint: endpoint.clone(),
        source: Arc::new(source),
    };
    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok((stream, address)),
            Err(source) => {
                last_error = Some(Error::Connect {
                    peer: address,
                    source: Arc::new(source),
                });
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        resolve_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host name resolved to no address",
        ))
    }))
}

/// Runs one sync round as the initiator over `io`, any byte stream to a
/// responder (a TCP connection, an in-memory pipe) that a [`Transport`]
/// secured. The caller bounds its time.
///
/// # Errors
///
/// As for [`sync_with`], but for connecting.
///
/// # Cancel safety
///
/// Dropping the future abandons the round; nothing of it is committed.
pub async fn initiate_over<T: AsyncRead + AsyncWrite + Unpin>(
    replica: &Replica,
    io: Secured<T>,
) -> Result<RoundStats, Error> {
    initiate(replica, io, None).await
}

/// The initiator's round over `io`, to the responder at `address` if
/// known.
async fn initiate<T: AsyncRead + AsyncWrite + Unpin>(
    replica: &Replica,
    io: Secured<T>,
    address: Option<SocketAddr>,
) -> Result<RoundStats, Error> {
    let certified = io.peer().cloned();
    let mut connection = Connection::new(io);
    let ours = replica.device().clone();
    connection
        .send(&Message::Hello {
            device: ours.clone(),
        })
        .await?;
    let peer = match expect_hello(&mut connection).await {
        // In TLS 1.3 a responder that does not trust us says so only now,
        // with an alert on our first read.
        Err(Error::Wire(wire)) => match &*wire {
            WireError::Io(io) if flotilla_identity::tls::refused_by_peer(io) => {
                return Err(Error::Handshake {
                    peer: address,
                    source: Arc::new(TransportError::Handshake(std::io::Error::new(
                        io.kind(),
                        format!("the peer refused this side: {io}"),
                    ))),
                });
            }
            _ => return Err(Error::Wire(wire)),
        },
        hello => hello?,
    };
    check_not_ours(&peer, &ours)?;
    check_certified(&peer, certified.as_ref())?;
    // The round's gate is held from before the request goes out, so a
    // peer that has our request knows we are busy.
    let gate = Arc::clone(&replica.shared.round_gate).lock_owned().await;
    let vector = replica.vector()?;
    connection.send(&Message::GetDeltas { vector }).await?;

    // The records go to a blocking task that applies them (see
    // `replay::apply_round`); the channel's bounds, in items and in bytes,
    // keep memory flat however long the round and however large its frames.
    let (items, mut queue) = mpsc::channel::<Queued>(256);
    let shared = Arc::clone(&replica.shared);
    let peer_device = peer.clone();
    let applier = start_blocking(&replica.shared, move || {
        let _gate = gate;
        apply_round(&shared, peer_device, &mut queue)
    })?;
    let budget = Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES));
    let received = receive(&mut connection, &items, &budget).await;
    drop(items);
    let applied = joined(applier).await;
    // An error from the network wins: it is why the applier stopped.
    received?;
    let (stats, moved) = applied?;
    // The round is committed; failing to tell watchers does not undo it.
    if let Err(error) = announce(replica, moved).await {
        tracing::warn!(%error, "could not tell watchers of a round's changes");
    }
    tracing::debug!(%peer, applied = stats.applied, duplicates = stats.duplicates, conflicts = stats.conflicts, "sync round applied");
    Ok(stats)
}

/// Tells watchers of the heads a round moved, reading the values back a
/// batch at a time, so that a large round is never held whole; and not at
/// all when nobody watches.
async fn announce(replica: &Replica, moved: Vec<Moved>) -> Result<(), Error> {
    const BATCH: usize = 1024;
    let mut moved = moved.into_iter();
    while replica.shared.changes.receiver_count() > 0 {
        let batch: Vec<Moved> = moved.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let shared = Arc::clone(&replica.shared);
        let changes = blocking(&replica.shared, move || {
            let reader = shared.storage.read()?;
            batch
                .into_iter()
                .map(|Moved { key, head }| {
                    Ok(Change {
                        value: reader.head_value(&head)?,
                        version: head.version,
                        key,
                        origin: Origin::Replicated,
                    })
                })
                .collect::<Result<Vec<Change>, Error>>()
        })
        .await?;
        for change in changes {
            let _ = replica.shared.changes.send(change);
        }
    }
    Ok(())
}

/// The part of a record's frame that is the record's own encoding (the
/// store's): the frame less its version byte and the message's variant,
/// or `None` if the variant took more than a byte (never, today).
fn record_encoding(frame: bytes::Bytes) -> Option<bytes::Bytes> {
    (frame.get(1) == Some(&RECORD_VARIANT)).then(|| frame.slice(2..))
}

/// `Message::Record`'s variant in postcard's encoding of a message.
const RECORD_VARIANT: u8 = 2;

/// Forwards the responder's records to the applier until `Done`. A
/// `Collected` may come once, before any record: a second one, or one
/// after a record, is a protocol violation (it could only make the round
/// hold more, or change the rules for records already checked).
async fn receive<T: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<T>,
    items: &mpsc::Sender<Queued>,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<(), Error> {
    let mut first = true;
    let mut known = 0;
    loop {
        let item = match connection.recv_frame().await? {
            Some((Message::Record(record), frame)) => Item::Record(record, record_encoding(frame)),
            Some((Message::Collected { vector }, _)) if first => Item::Collected(vector),
            Some((Message::Collected { .. }, _)) => {
                return Err(Error::Protocol {
                    expected: "a record or done (collected comes once, before the records)",
                    got: String::from("collected"),
                });
            }
            Some((Message::Known { peers }, _)) => {
                known += peers.len();
                if peers.len() > MAX_KNOWN_PER_MESSAGE || known > MAX_KNOWN_PER_ROUND {
                    return Err(Error::Protocol {
                        expected: "at most 64 known devices a message, 65,536 a round",
                        got: format!("{known} known devices"),
                    });
                }
                Item::Known(peers)
            }
            Some((Message::Done { vector }, _)) => Item::Done(vector),
            Some((Message::Abort { reason }, _)) => return Err(peer_aborted(reason)),
            Some((other, _)) => {
                return Err(Error::Protocol {
                    expected: "a record or done",
                    got: other.kind().to_owned(),
                });
            }
            None => return Err(Error::Disconnected),
        };
        first = false;
        let done = matches!(item, Item::Done(_));
        // Waits while the queue holds its budget of bytes. The semaphore
        // is never closed; should it be, the applier has gone.
        let Ok(share) = Arc::clone(budget)
            .acquire_many_owned(queue_share(&item))
            .await
        else {
            return Ok(());
        };
        // A closed channel means the applier failed; its error is reported.
        if items.send((item, share)).await.is_err() || done {
            return Ok(());
        }
    }
}

/// The bytes of entries a responder puts in one [`Message::Known`], well
/// inside a frame.
const KNOWN_MESSAGE_BYTES: usize = MAX_FRAME_LEN / 4;

/// `known` in messages of at most [`MAX_KNOWN_PER_MESSAGE`] entries and
/// about [`KNOWN_MESSAGE_BYTES`] each. An entry too large for a message
/// alone (a vector of tens of thousands of devices) is left out.
fn known_messages(known: Vec<KnownPeer>) -> Vec<Vec<KnownPeer>> {
    let size = |peer: &KnownPeer| {
        16 + peer.device.as_str().len()
            + peer
                .vector
                .iter()
                .map(|(device, _)| device.as_str().len() + 11)
                .sum::<usize>()
    };
    let mut messages = Vec::new();
    let (mut current, mut bytes) = (Vec::new(), 0);
    for peer in known {
        let entry = size(&peer);
        if entry > KNOWN_MESSAGE_BYTES {
            tracing::warn!(device = %peer.device, bytes = entry, "a known device's vector is too large to relay; left out");
            continue;
        }
        if current.len() == MAX_KNOWN_PER_MESSAGE || bytes + entry > KNOWN_MESSAGE_BYTES {
            messages.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += entry;
        current.push(peer);
    }
    if !current.is_empty() {
        messages.push(current);
    }
    messages
}

/// The most devices a responder may tell of in one round's
/// [`Message::Known`]s.
const MAX_KNOWN_PER_ROUND: usize = 1 << 16;

/// The most of a peer's abort reason kept in the error: enough to read,
/// too little to flood a log (a frame may carry megabytes of it).
const MAX_ABORT_REASON: usize = 256;

/// [`Error::PeerAborted`] with the peer's reason, cut to
/// [`MAX_ABORT_REASON`] bytes (on a character boundary).
fn peer_aborted(mut reason: String) -> Error {
    if reason.len() > MAX_ABORT_REASON {
        let total = reason.len();
        let mut cut = MAX_ABORT_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str(&format!("… ({total} bytes in all)"));
    }
    Error::PeerAborted(reason)
}

/// The peer's hello. A peer may refuse the round instead (a responder
/// does so when it will not serve us): that is [`Error::PeerAborted`] with
/// its reason, not a protocol violation.
async fn expect_hello<T>(connection: &mut Connection<T>) -> Result<DeviceId, Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match connection.recv().await? {
        Some(Message::Hello { device }) => Ok(device),
        Some(Message::Abort { reason }) => Err(peer_aborted(reason)),
        Some(other) => Err(Error::Protocol {
            expected: "hello",
            got: other.kind().to_owned(),
        }),
        None => Err(Error::Disconnected),
    }
}

/// Serves sync rounds to peers on a TCP listener: a [`Worker`](crate::Worker) whose task
/// accepts connections and serves each on a task of its own, all stopped
/// and awaited by [`kill`](crate::Worker::kill) and [`wait`](crate::Worker::wait).
///
/// Each connection is secured by the responder's [`Transport`] first: a
/// peer its trust does not accept fails the handshake, and is counted as
/// a failed handshake. A peer may not claim another device than its
/// certificate names, nor this replica's device id, nor one that is
/// connected already from another IP address: it is refused with a
/// [`Message::Abort`] saying why, and nothing it sent is used.
///
/// A connection must complete its handshake within
/// [`SyncConfig::handshake_timeout`]; the limits on connections waiting in
/// their handshake and on rounds served at once are in [`SyncConfig`].
///
/// Its [`report`](crate::Worker::report) is a JSON object: `state` (as a
/// [`TaskWorker`]'s), `local_addr`, `rounds_served` and `rounds_failed`
/// (of peers that proved who they are), `last_failure` (why the last
/// failed round failed, or null), `handshakes_failed` and
/// `last_handshake_failure` (connections that did not prove themselves:
/// untrusted, silent, not TLS), `connections_refused` (closed at once,
/// over a limit), and `connected_peers` (the device ids connected now, in
/// order).
pub struct Responder {
    worker: TaskWorker,
    local_addr: SocketAddr,
    counts: Arc<ServedCounts>,
    connected: Connected,
}

/// How many rounds a [`Responder`] has served, for its report.
#[derive(Debug, Default)]
struct ServedCounts {
    served: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    last_failure: Mutex<Option<String>>,
    handshakes_failed: AtomicU64,
    last_handshake_failure: Mutex<Option<String>>,
}

impl ServedCounts {
    fn failed(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    fn handshake_failed(&self, why: String) {
        self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
        *self
            .last_handshake_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
    }
}

impl Responder {
    /// Binds `address` and starts serving `replica` over connections
    /// `transport` secures. Does not block the thread.
    ///
    /// # Errors
    ///
    /// [`Error::IdentityMismatch`] when `transport` presents another
    /// device than the replica's; [`Error::Connect`] when the address
    /// cannot be bound.
    pub async fn bind(
        replica: Replica,
        transport: Transport,
        address: SocketAddr,
        config: SyncConfig,
    ) -> Result<Responder, Error> {
        check_transport(&replica, &transport)?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Connect {
                peer: address,
                source: Arc::new(source),
            })?;
        Responder::start(replica, transport, listener, config)
    }

    /// Starts serving `replica` on `listener`, over connections
    /// `transport` secures. Does not block the thread: it spawns the task
    /// that serves.
    ///
    /// # Errors
    ///
    /// [`Error::IdentityMismatch`] when `transport` presents another
    /// device than the replica's; [`Error::Connect`] when the listener's
    /// address cannot be read.
    pub fn start(
        replica: Replica,
        transport: Transport,
        listener: TcpListener,
        config: SyncConfig,
    ) -> Result<Responder, Error> {
        check_transport(&replica, &transport)?;
        let local_addr = listener.local_addr().map_err(|source| Error::Connect {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: Arc::new(source),
        })?;
        let span = tracing::info_span!("responder", device = %replica.device(), %local_addr);
        let counts = Arc::new(ServedCounts::default());
        let connected = Connected::default();
        let served = Served {
            transport,
            counts: Arc::clone(&counts),
            connected: Arc::clone(&connected),
        };
        let worker = TaskWorker::spawn(move |stop| {
            accept_loop(replica, listener, config, served, stop).instrument(span)
        });
        Ok(Responder {
            worker,
            local_addr,
            counts,
            connected,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn report_json(&self) -> Option<ReportFuture<'_>> {
        let mut connected: Vec<String> = self
            .connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .map(ToString::to_string)
            .collect();
        connected.sort();
        let report = serde_json::json!({
            "state": self.worker.state(),
            "local_addr": self.local_addr.to_string(),
            "rounds_served": self.counts.served.load(Ordering::Relaxed),
            "rounds_failed": self.counts.failed.load(Ordering::Relaxed),
            "last_failure": self
                .counts
                .last_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            "handshakes_failed": self.counts.handshakes_failed.load(Ordering::Relaxed),
            "last_handshake_failure": self
                .counts
                .last_handshake_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            "connections_refused": self.counts.refused.load(Ordering::Relaxed),
            "connected_peers": connected,
        });
        Some(Box::pin(async move { report }))
    }
}

delegate_worker!(Responder, worker, report = Responder::report_json);

/// What a [`Responder`]'s task shares with its handle.
struct Served {
    transport: Transport,
    counts: Arc<ServedCounts>,
    connected: Connected,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Which devices are connected, from where, and how many times.
type Connected = Arc<Mutex<HashMap<DeviceId, (IpAddr, usize)>>>;

async fn accept_loop(
    replica: Replica,
    listener: TcpListener,
    config: SyncConfig,
    served: Served,
    stop: CancellationToken,
) -> Result<(), flotilla_core_types::WorkerError> {
    let tracker = TaskTracker::new();
    let Served {
        transport,
        counts,
        connected,
    } = served;
    let pending = flotilla_identity::PendingHandshakes::new(
        config.max_handshakes,
        config.max_handshakes_per_address,
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, address) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait a little, go on.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(place) = pending.try_start(address.ip()) else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%address, "connection refused: too many handshakes under way");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (replica, transport, config, connected, counts, stop, slots) = (
            replica.clone(),
            transport.clone(),
            config.clone(),
            Arc::clone(&connected),
            Arc::clone(&counts),
            stop.clone(),
            Arc::clone(&slots),
        );
        tracker.spawn(
            async move {
                let secured = tokio::select! {
                    () = stop.cancelled() => return,
                    secured = secure_accepted(&transport, stream, address, config.handshake_timeout) => secured,
                };
                drop(place);
                let secured = match secured {
                    Ok(secured) => secured,
                    Err(error) => {
                        // Strangers can make many of these: not a warning.
                        tracing::debug!(%address, %error, "handshake failed");
                        counts.handshake_failed(error.to_string());
                        return;
                    }
                };
                let Ok(_slot) = slots.try_acquire_owned() else {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%address, "connection refused: too many rounds under way");
                    return;
                };
                let served = tokio::select! {
                    () = stop.cancelled() => return,
                    served = tokio::time::timeout(
                        config.round_timeout,
                        serve(&replica, secured, address, &config, &connected),
                    ) => served,
                };
                match served {
                    Ok(Ok(sent)) => {
                        tracing::debug!(%address, sent, "round served");
                        counts.served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%address, %error, "round failed");
                        counts.failed(error.to_string());
                    }
                    Err(_) => {
                        tracing::warn!(%address, "round timed out");
                        counts.failed(String::from("the round timed out"));
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

/// Serves one sync round as the responder over `io`, any byte stream from
/// an initiator that a [`Transport`] secured, and returns how many records
/// it sent. Refuses a peer that claims this replica's id, or another
/// device than its certificate names; a [`Responder`] also refuses a
/// device connected from two addresses. The caller bounds its time.
///
/// # Errors
///
/// Any error of the round: bad input, an impostor, a protocol violation,
/// the store failing.
///
/// # Cancel safety
///
/// Dropping the future abandons the round (the initiator then discards it).
pub async fn respond_over<T: AsyncRead + AsyncWrite + Unpin>(
    replica: &Replica,
    io: Secured<T>,
    config: &SyncConfig,
) -> Result<u64, Error> {
    let (mut connection, peer) = certified_hello(io).await?;
    if let Err(error) = check_not_ours(&peer, replica.device()) {
        return Err(refuse(&mut connection, error).await);
    }
    respond(replica, connection, config, peer).await
}

/// Serves one round for a [`Responder`]; returns how many records it sent.
async fn serve(
    replica: &Replica,
    secured: Secured<TcpStream>,
    address: SocketAddr,
    config: &SyncConfig,
    connected: &Connected,
) -> Result<u64, Error> {
    let (mut connection, peer) = certified_hello(secured).await?;
    let _registration = match Registration::claim(connected, &peer, address.ip(), replica.device())
    {
        Ok(registration) => registration,
        Err(error) => return Err(refuse(&mut connection, error).await),
    };
    respond(replica, connection, config, peer).await
}

/// The initiator's hello on a secured connection, and the connection: a
/// peer that claims another device than its certificate names is refused
/// (told why in an `Abort`) before anything else it sent is read.
async fn certified_hello<T: AsyncRead + AsyncWrite + Unpin>(
    io: Secured<T>,
) -> Result<(Connection<Secured<T>>, DeviceId), Error> {
    let certified = io.peer().cloned();
    let mut connection = Connection::new(io);
    let peer = expect_hello(&mut connection).await?;
    if let Err(error) = check_certified(&peer, certified.as_ref()) {
        return Err(refuse(&mut connection, error).await);
    }
    Ok((connection, peer))
}

/// Secures a connection a [`Responder`] accepted, within the handshake's
/// time.
async fn secure_accepted(
    transport: &Transport,
    stream: TcpStream,
    address: SocketAddr,
    timeout: Duration,
) -> Result<Secured<TcpStream>, Error> {
    let failed = match tokio::time::timeout(timeout, transport.accept(stream)).await {
        Ok(Ok(secured)) => return Ok(secured),
        Ok(Err(error)) => error,
        Err(_) => TransportError::Handshake(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("not completed within {} ms", timeout.as_millis()),
        )),
    };
    Err(Error::Handshake {
        peer: Some(address),
        source: Arc::new(failed),
    })
}

/// Tells the peer why it is refused; returns that, to fail with.
async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<T>,
    error: Error,
) -> Error {
    let _ = connection
        .send(&Message::Abort {
            reason: error.to_string(),
        })
        .await;
    error
}

/// A peer that proved a device by its certificate must claim that device.
/// (Over plaintext it proved nothing, and this checks nothing.)
fn check_certified(claimed: &DeviceId, certified: Option<&DeviceId>) -> Result<(), Error> {
    match certified {
        Some(certified) if certified != claimed => Err(Error::NotCertified {
            claimed: claimed.clone(),
            certified: certified.clone(),
        }),
        _ => Ok(()),
    }
}

fn check_not_ours(claimed: &DeviceId, ours: &DeviceId) -> Result<(), Error> {
    if claimed == ours {
        return Err(Error::Impostor {
            claimed: claimed.clone(),
            reason: "that is this replica's own id",
        });
    }
    Ok(())
}

/// The responder's side of a round, once the peer's hello is accepted.
async fn respond<T: AsyncRead + AsyncWrite + Unpin>(
    replica: &Replica,
    mut connection: Connection<T>,
    config: &SyncConfig,
    peer: DeviceId,
) -> Result<u64, Error> {
    connection
        .send(&Message::Hello {
            device: replica.device().clone(),
        })
        .await?;
    let theirs = match connection.recv().await? {
        Some(Message::GetDeltas { vector }) => vector,
        Some(Message::Abort { reason }) => return Err(peer_aborted(reason)),
        Some(other) => {
            return Err(Error::Protocol {
                expected: "get-deltas",
                got: other.kind().to_owned(),
            });
        }
        None => return Err(Error::Disconnected),
    };
    let shared = Arc::clone(&replica.shared);
    let reported = theirs.clone();
    let (snapshot, collected, known) = blocking(&replica.shared, move || {
        // Seal, and note what the peer reported, unless this replica is
        // applying a round of its own (see `Shared::round_gate`): the open
        // generation then goes next time.
        let gate = shared.round_gate.try_lock().ok();
        if gate.is_some() {
            let txn = shared.storage.write()?;
            let mut writer = txn.tables()?;
            writer.seal(&shared.device)?;
            writer.heard_of(&peer, Some(&reported), (shared.config.clock)())?;
            let finished = writer.finish()?;
            txn.commit(finished)?;
        }
        drop(gate);
        let reader = shared.storage.read()?;
        let now_ms = (shared.config.clock)();
        let vector = reader.vector()?;
        // What the initiator can use: devices whose records we hold, and
        // of each what we hold too (it keeps no more than that).
        let known: Vec<KnownPeer> = reader
            .devices()?
            .into_iter()
            .filter(|info| info.device != peer && vector.get(&info.device) > 0)
            .map(|info| KnownPeer {
                device: info.device,
                vector: info.vector.bounded_by(&vector),
                heard_ms_ago: now_ms.saturating_sub(info.last_heard_ms),
            })
            .collect();
        Ok((vector, reader.collected()?, known))
    })
    .await?;
    if !theirs.dominates(&collected) {
        // The peer lacks generations collected here: it gets what the log
        // still has, and is told so.
        connection
            .feed(&Message::Collected { vector: collected })
            .await?;
    }
    // What the peer lacks, found through the origin index: a round reads
    // what it sends, however long the log.
    let shared = Arc::clone(&replica.shared);
    let (wanted, held) = (theirs.clone(), snapshot.clone());
    let missing = blocking(&replica.shared, move || {
        shared.storage.read()?.missing_indices(&wanted, &held)
    })
    .await?;
    let mut sent = 0;
    for indices in missing.chunks(config.batch_records.max(1)) {
        let shared = Arc::clone(&replica.shared);
        let indices = indices.to_vec();
        let batch = blocking(&replica.shared, move || {
            shared.storage.read()?.records_at(&indices)
        })
        .await?;
        for (_, record) in batch {
            connection.feed(&Message::Record(record)).await?;
            sent += 1;
        }
        connection.flush().await?;
    }
    // What this replica knows of other devices: garbage collection on the
    // initiator can count devices it never met.
    for peers in known_messages(known) {
        connection.feed(&Message::Known { peers }).await?;
    }
    connection.send(&Message::Done { vector: snapshot }).await?;
    Ok(sent)
}

/// A peer's claim to a device id, held while its connection lasts.
struct Registration {
    connected: Connected,
    device: DeviceId,
}

impl Registration {
    fn claim(
        connected: &Connected,
        device: &DeviceId,
        address: IpAddr,
        ours: &DeviceId,
    ) -> Result<Registration, Error> {
        check_not_ours(device, ours)?;
        let mut map = connected.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(device.clone()).or_insert((address, 0));
        if entry.0 != address {
            return Err(Error::Impostor {
                claimed: device.clone(),
                reason: "that device is connected already from another address",
            });
        }
        entry.1 += 1;
        Ok(Registration {
            connected: Arc::clone(connected),
            device: device.clone(),
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self
            .connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(&self.device) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.device);
            }
        }
    }
}

/// The error a [`Peers::Resolved`] source may fail with: any error.
pub type PeersError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`Peers::Resolved`] source returns.
pub type PeersFuture = BoxFuture<'static, Result<Vec<Endpoint>, PeersError>>;

/// Where an [`Initiator`] finds its peers.
#[derive(Clone)]
pub enum Peers {
    /// A fixed list.
    Fixed(Vec<SocketAddr>),
    /// Asked before every interval, so another component (a registry, a
    /// presence watcher) can feed it.
    Dynamic(Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>),
    /// Asked, and awaited, before every interval: an async source such as
    /// a registry lookup. Its endpoints' host names are resolved when each
    /// round connects ([`sync_with_endpoint`]). A source that fails skips
    /// that pass; one that takes longer than
    /// [`SyncConfig::round_timeout`] is given up on for that pass. Either
    /// way the initiator tries again at the next interval. Build one with
    /// [`Peers::resolved`].
    Resolved(Arc<dyn Fn() -> PeersFuture + Send + Sync>),
}

impl Peers {
    /// [`Peers::Resolved`] from an async function, boxing what it returns.
    ///
    /// # Example
    ///
    /// ```
    /// use flotilla_core_types::Endpoint;
    /// use flotilla_gensync::Peers;
    ///
    /// let peers = Peers::resolved(|| async {
    ///     // A registry would be asked here.
    ///     Ok::<_, flotilla_core_types::InvalidId>(vec![Endpoint::parse("localhost:7000")?])
    /// });
    /// assert!(matches!(peers, Peers::Resolved(_)));
    /// ```
    pub fn resolved<F, Fut, E>(source: F) -> Peers
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<Endpoint>, E>> + Send + 'static,
        E: Into<PeersError>,
    {
        Peers::Resolved(Arc::new(move || {
            let found = source();
            Box::pin(async move { found.await.map_err(Into::into) })
        }))
    }

    /// The peers for one pass, the source's time bounded by `timeout`.
    async fn current(&self, timeout: Duration) -> Result<Vec<Target>, String> {
        match self {
            Peers::Fixed(peers) => Ok(peers.iter().copied().map(Target::Address).collect()),
            Peers::Dynamic(source) => Ok(source().into_iter().map(Target::Address).collect()),
            Peers::Resolved(source) => match tokio::time::timeout(timeout, source()).await {
                Ok(Ok(endpoints)) => Ok(endpoints.into_iter().map(Target::Endpoint).collect()),
                Ok(Err(error)) => Err(format!("the peer source failed: {error}")),
                Err(_) => Err(format!(
                    "the peer source did not answer within {} ms",
                    timeout.as_millis()
                )),
            },
        }
    }
}

impl fmt::Debug for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peers::Fixed(peers) => f.debug_tuple("Fixed").field(peers).finish(),
            Peers::Dynamic(_) => f.write_str("Dynamic"),
            Peers::Resolved(_) => f.write_str("Resolved"),
        }
    }
}

/// One peer of a pass: an address, or an endpoint resolved as it connects.
#[derive(Debug, Clone)]
enum Target {
    Address(SocketAddr),
    Endpoint(Endpoint),
}

impl Target {
    async fn sync(
        &self,
        replica: &Replica,
        transport: &Transport,
        config: &SyncConfig,
    ) -> Result<RoundStats, Error> {
        match self {
            Target::Address(address) => sync_with(replica, transport, *address, config).await,
            Target::Endpoint(endpoint) => {
                sync_with_endpoint(replica, transport, endpoint, config).await
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Address(address) => address.fmt(f),
            Target::Endpoint(endpoint) => endpoint.fmt(f),
        }
    }
}

/// Runs a sync round with every peer, then again after a jittered
/// interval, until killed: a [`Worker`](crate::Worker). A failed round is logged and
/// retried at the next interval; it never stops the initiator.
///
/// Its [`report`](crate::Worker::report) is a JSON object: `state` (as a
/// [`TaskWorker`]'s), `passes`, `peers_error` (why the last pass had no
/// peers from its source, or null), and `last_rounds`: per peer of the last
/// pass (by address or endpoint), its last round's outcome, `{"ok": true,
/// "applied", "duplicates", "conflicts"}` or `{"ok": false, "error"}`.
pub struct Initiator {
    worker: TaskWorker,
    rounds: tokio::sync::watch::Receiver<u64>,
    outcomes: Arc<Mutex<PassOutcomes>>,
}

/// What an [`Initiator`]'s passes came to, for its report.
#[derive(Debug, Default)]
struct PassOutcomes {
    peers_error: Option<String>,
    last_rounds: BTreeMap<String, serde_json::Value>,
}

/// A round's outcome as an [`Initiator`] reports it.
fn round_outcome(round: &Result<RoundStats, Error>) -> serde_json::Value {
    match round {
        Ok(stats) => serde_json::json!({
            "ok": true,
            "applied": stats.applied,
            "duplicates": stats.duplicates,
            "conflicts": stats.conflicts,
        }),
        Err(error) => serde_json::json!({ "ok": false, "error": error.to_string() }),
    }
}

impl Initiator {
    /// Starts syncing `replica` with `peers`, over connections `transport`
    /// secures. Does not block the thread: it spawns the task that syncs.
    /// A transport presenting another device than the replica's fails
    /// every round with [`Error::IdentityMismatch`], which the report
    /// shows.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with a timer.
    pub fn start(
        replica: Replica,
        transport: Transport,
        peers: Peers,
        config: SyncConfig,
    ) -> Initiator {
        let (rounds_tx, rounds) = tokio::sync::watch::channel(0);
        let span = tracing::info_span!("initiator", device = %replica.device());
        let outcomes = Arc::new(Mutex::new(PassOutcomes::default()));
        let recorded = Arc::clone(&outcomes);
        let record = move |update: &dyn Fn(&mut PassOutcomes)| {
            update(&mut recorded.lock().unwrap_or_else(PoisonError::into_inner));
        };
        let worker = TaskWorker::spawn(move |stop| {
            async move {
                let mut rng = fastrand::Rng::new();
                loop {
                    let current = tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        current = peers.current(config.round_timeout) => current,
                    };
                    let peers_error = current.as_ref().err().cloned();
                    record(&|outcomes| outcomes.peers_error.clone_from(&peers_error));
                    let current = current.unwrap_or_else(|error| {
                        tracing::warn!(%error, "no peers this pass");
                        Vec::new()
                    });
                    let names: std::collections::BTreeSet<String> =
                        current.iter().map(ToString::to_string).collect();
                    for peer in current {
                        let round = tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            round = peer.sync(&replica, &transport, &config) => round,
                        };
                        let outcome = round_outcome(&round);
                        record(&|outcomes| {
                            outcomes
                                .last_rounds
                                .insert(peer.to_string(), outcome.clone());
                        });
                        match round {
                            Ok(stats) => tracing::debug!(%peer, applied = stats.applied, "synced"),
                            Err(error) => tracing::warn!(%peer, %error, "sync round failed"),
                        }
                    }
                    record(&|outcomes| {
                        outcomes.last_rounds.retain(|peer, _| names.contains(peer));
                    });
                    rounds_tx.send_modify(|rounds| *rounds += 1);
                    let pause = config
                        .interval
                        .mul_f64(1.0 - config.jitter.clamp(0.0, 0.99) * rng.f64());
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
            .instrument(span)
        });
        Initiator {
            worker,
            rounds,
            outcomes,
        }
    }

    /// A receiver of how many passes over the peers have finished, so a
    /// caller can wait for the next one.
    pub fn passes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rounds.clone()
    }

    fn report_json(&self) -> Option<ReportFuture<'_>> {
        let outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        let report = serde_json::json!({
            "state": self.worker.state(),
            "passes": *self.rounds.borrow(),
            "peers_error": outcomes.peers_error,
            "last_rounds": outcomes.last_rounds,
        });
        Some(Box::pin(async move { report }))
    }
}

delegate_worker!(Initiator, worker, report = Initiator::report_json);

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("passes", &*self.rounds.borrow())
            .finish_non_exhaustive()
    }
}

/// Collects garbage on an interval ([`Replica::collect_garbage`]), until
/// killed: a [`Worker`](crate::Worker). A failed collection is logged and
/// tried again at the next interval; so is one skipped because a sync round
/// was under way ([`Error::RoundUnderway`]), which the collector never waits
/// behind.
///
/// Its [`report`](crate::Worker::report) is a JSON object: `state` (as a
/// [`TaskWorker`]'s), `passes`, and `last_result`: null before the first
/// pass, then `{"ok": true, "records_pruned", "versions_pruned",
/// "evicted"}`, `{"ok": false, "skipped": true, "error"}` for a pass a sync
/// round held off, or `{"ok": false, "skipped": false, "error"}`.
pub struct Collector {
    worker: TaskWorker,
    passes: tokio::sync::watch::Receiver<u64>,
    last_result: Arc<Mutex<serde_json::Value>>,
}

impl Collector {
    /// Starts collecting `replica`'s garbage every `every`, evicting devices
    /// silent for longer than `evict_after`. Does not block the thread: it
    /// spawns the task that collects.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with a timer.
    pub fn start(replica: Replica, every: Duration, evict_after: Duration) -> Collector {
        let (passes_tx, passes) = tokio::sync::watch::channel(0);
        let span = tracing::info_span!("collector", device = %replica.device());
        let last_result = Arc::new(Mutex::new(serde_json::Value::Null));
        let recorded = Arc::clone(&last_result);
        let worker = TaskWorker::spawn(move |stop| {
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(every) => {}
                    }
                    let collected = replica.collect_garbage(evict_after).await;
                    *recorded.lock().unwrap_or_else(PoisonError::into_inner) =
                        collection_outcome(&collected);
                    match collected {
                        Ok(stats) => tracing::debug!(
                            records = stats.records_pruned,
                            versions = stats.versions_pruned,
                            evicted = stats.evicted.len(),
                            "garbage collected"
                        ),
                        Err(Error::RoundUnderway) => tracing::debug!(
                            "a sync round is under way; collecting at the next interval"
                        ),
                        Err(error) => tracing::warn!(%error, "garbage collection failed"),
                    }
                    passes_tx.send_modify(|passes| *passes += 1);
                }
            }
            .instrument(span)
        });
        Collector {
            worker,
            passes,
            last_result,
        }
    }

    /// A receiver of how many collections have been tried (whether they
    /// collected, failed or were skipped), so a caller can wait for the
    /// next one.
    pub fn passes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.passes.clone()
    }

    fn report_json(&self) -> Option<ReportFuture<'_>> {
        let report = serde_json::json!({
            "state": self.worker.state(),
            "passes": *self.passes.borrow(),
            "last_result": *self.last_result.lock().unwrap_or_else(PoisonError::into_inner),
        });
        Some(Box::pin(async move { report }))
    }
}

delegate_worker!(Collector, worker, report = Collector::report_json);

/// A collection's outcome as a [`Collector`] reports it.
fn collection_outcome(collected: &Result<crate::GcStats, Error>) -> serde_json::Value {
    match collected {
        Ok(stats) => serde_json::json!({
            "ok": true,
            "records_pruned": stats.records_pruned,
            "versions_pruned": stats.versions_pruned,
            "evicted": stats.evicted.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Err(error) => serde_json::json!({
            "ok": false,
            "skipped": matches!(error, Error::RoundUnderway),
            "error": error.to_string(),
        }),
    }
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("passes", &*self.passes.borrow())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LogRecord;
    use crate::{GenVector, VersionId};

    fn big_record(sequence: u64) -> LogRecord {
        let writer = DeviceId::new("peer").expect("valid");
        LogRecord {
            version: VersionId::of_write(&writer, 1, sequence),
            device: writer.clone(),
            generation: 1,
            sequence,
            key: format!("k{sequence}").into_bytes(),
            parents: Vec::new(),
            value: Some(vec![7; 1024 * 1024]),
            writer,
            timestamp_ms: 1,
        }
    }

    #[test]
    fn known_devices_go_in_messages_that_fit_a_frame() {
        let wide: GenVector = {
            let mut vector = GenVector::new();
            for n in 0..20_000 {
                vector.raise(&DeviceId::new(format!("device-{n:05}")).expect("valid"), 7);
            }
            vector
        };
        let peer = |n: usize, vector: &GenVector| KnownPeer {
            device: DeviceId::new(format!("peer-{n}")).expect("valid"),
            vector: vector.clone(),
            heard_ms_ago: 0,
        };
        let mut narrow = GenVector::new();
        narrow.raise(&DeviceId::new("a").expect("valid"), 1);
        // 200 small entries: 64 to a message.
        let messages = known_messages((0..200).map(|n| peer(n, &narrow)).collect());
        let sizes: Vec<usize> = messages.iter().map(Vec::len).collect();
        assert_eq!(sizes, [64, 64, 64, 8]);
        // Wide vectors: fewer to a message, and every message encodes.
        let messages = known_messages((0..6).map(|n| peer(n, &wide)).collect());
        assert!(messages.len() > 1, "{} messages", messages.len());
        assert_eq!(messages.iter().map(Vec::len).sum::<usize>(), 6);
        for peers in messages {
            crate::wire::encode(&Message::Known { peers }).expect("fits in a frame");
        }
        // A vector too wide for any message is left out.
        let mut huge = GenVector::new();
        for n in 0..200_000 {
            huge.raise(&DeviceId::new(format!("device-{n:06}")).expect("valid"), 7);
        }
        let messages = known_messages(vec![peer(0, &huge), peer(1, &narrow)]);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0][0].device.as_str(), "peer-1");
    }

    #[tokio::test]
    async fn an_endpoint_is_tried_at_each_of_its_addresses_and_none_is_a_typed_error() {
        let endpoint = Endpoint::parse("peer.example:7000").expect("valid");
        let none = connect_first(&endpoint, Vec::new())
            .await
            .expect_err("no address");
        assert!(
            matches!(&none, Error::Resolve { endpoint: named, .. } if named == &endpoint),
            "{none:?}"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let open = listener.local_addr().expect("bound");
        let closed = {
            let spare = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
            spare.local_addr().expect("bound")
        };
        // The closed address first, then the open one: the second is used.
        let (stream, address) = connect_first(&endpoint, vec![closed, open])
            .await
            .expect("connects");
        assert_eq!(stream.peer_addr().expect("connected"), open);
        assert_eq!(address, open);
        let refused = connect_first(&endpoint, vec![closed])
            .await
            .expect_err("refused");
        assert!(
            matches!(refused, Error::Connect { peer, .. } if peer == closed),
            "{refused:?}"
        );
    }

    #[test]
    fn a_long_abort_reason_is_cut_on_a_character_boundary() {
        let short = peer_aborted("busy".to_owned());
        assert_eq!(short.to_string(), "peer aborted the round: busy");
        let long = peer_aborted("é".repeat(100_000));
        let Error::PeerAborted(reason) = long else {
            panic!("expected PeerAborted");
        };
        assert!(reason.len() < MAX_ABORT_REASON + 40, "{}", reason.len());
        assert!(reason.ends_with("… (200000 bytes in all)"), "{reason}");
    }

    /// What the log keeps of a record from a peer is the record's own
    /// encoding, cut from its frame.
    #[test]
    fn a_record_is_stored_exactly_as_it_came_in_its_frame() {
        let record = big_record(7);
        let frame = crate::wire::encode(&Message::Record(record.clone())).expect("encodes");
        let kept = record_encoding(frame).expect("a record's frame");
        assert_eq!(
            kept.as_ref(),
            postcard::to_allocvec(&record).expect("encodes")
        );
        assert_eq!(
            postcard::from_bytes::<LogRecord>(&kept).expect("decodes"),
            record
        );
        // Another message's frame has no record in it.
        let done = crate::wire::encode(&Message::Done {
            vector: crate::GenVector::new(),
        })
        .expect("encodes");
        assert!(record_encoding(done).is_none());
    }

    /// A peer sending large records faster than they are applied fills the
    /// queue up to its byte budget and no further.
    #[tokio::test(start_paused = true)]
    async fn the_queue_to_the_applier_holds_a_bounded_number_of_bytes() {
        let (ours, theirs) = tokio::io::duplex(4 * 1024 * 1024);
        let mut peer = Connection::new(theirs);
        let sender = tokio::spawn(async move {
            for sequence in 1..=40 {
                if peer
                    .send(&Message::Record(big_record(sequence)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut connection = Connection::new(ours);
        let (items, mut queue) = mpsc::channel::<Queued>(256);
        let budget = Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES));
        let receiving = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { receive(&mut connection, &items, &budget).await })
        };
        // On the paused clock this returns once every task is idle: the
        // receiver waits for budget, the peer for the receiver.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Each holds its record and its encoding as it came: 2 MiB and a
        // little more.
        let queued = queue.len();
        assert!(
            (3..=4).contains(&queued),
            "{queued} records of 1 MiB queued against a budget of 8 MiB"
        );
        // Taking items frees their share, and the rest follow.
        let mut taken = 0;
        while let Ok(Some(_item)) = tokio::time::timeout(Duration::from_secs(5), queue.recv()).await
        {
            taken += 1;
            assert!(queue.len() <= 8);
            if taken == 40 {
                break;
            }
        }
        assert_eq!(taken, 40);
        sender.await.expect("sender ends");
        receiving.abort();
    }
}
