//! Sync figures, printed one per line, each beside its baseline from the
//! same run. Every round runs over TLS, as peers do; the wire and
//! convergence figures are measured again over plaintext, to show what TLS
//! costs (goal: under 10% on each).
//!
//! - bytes on the wire per byte of missing records (keys and values), for
//!   1, 100 and 100,000 missing records of 1 KiB, beside a full-state
//!   transfer of the same store (every key and value, framed alike);
//! - the convergence of three replicas after a partition in which each
//!   wrote 100,000 records, over loopback TCP, with the stores on the disk
//!   beside the durable floor (the bytes each replica receives copied over
//!   loopback into a file beside its store, one fsync at the end, three at
//!   once) and a raw loopback copy, and again with the stores on tmpfs
//!   (/dev/shm) beside the raw copy: the replay's CPU cost without the
//!   disk;
//! - the disk's write rate with an fsync, from the durable floor;
//! - records replayed per second and the time per record, on each;
//! - the time of a round that sends one record, from a replica whose log
//!   holds 1,000,000 records, beside the same round from one whose log
//!   holds 1,000 (goal: within 2x).
//!
//! Run with `cargo bench -p flotilla-gensync --bench sync`; the results are
//! in docs/benchmarks.md.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::time::{Duration, Instant};

use flotilla_core_types::{DeviceId, Worker};
use flotilla_gensync::wire::{Connection, Message};
use flotilla_gensync::{
    GenVector, Replica, Responder, SyncConfig, Transport, initiate_over, respond_over, sync_with,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

mod support;

use support::{replica, secure, tls_transports};

const VALUE_LEN: usize = 1024;

fn main() {
    support::runtime().block_on(async {
        if std::env::args().any(|arg| arg == "tls") {
            // Only what TLS costs, on tmpfs where the disk hides nothing:
            // `cargo bench --bench sync -- tls`. Each transport twice, in
            // turn, so that neither always runs on a warmer machine.
            tls_cost_on_tmpfs(100_000).await;
            return;
        }
        if std::env::args().any(|arg| arg == "rounds") {
            // Only the round figures: `cargo bench --bench sync -- rounds`.
        } else {
            let mut ratio = 1.0;
            for missing in [1, 100, 100_000] {
                ratio = wire_ratio(missing, Secure::Tls).await;
            }
            let plaintext = wire_ratio(100_000, Secure::Plaintext).await;
            println!(
                "tls: wire ratio for 100000 missing records {ratio:.3} over TLS, {plaintext:.3} over plaintext: TLS adds {:.1}% (goal: under 10%)",
                (ratio / plaintext - 1.0) * 100.0
            );
            convergence_with_floors(100_000, ratio).await;
        }
        let small = round_cost(1_000).await;
        let large = round_cost(1_000_000).await;
        println!(
            "round: sends 1 record: from a log of 1,000,000 records {large:.2?}; from a log of 1,000 records {small:.2?}; ratio {:.2}x (goal: within 2x; median of {ROUNDS} rounds each)",
            large.as_secs_f64() / small.as_secs_f64()
        );
    });
}

async fn fill(replica: &Replica, prefix: &str, records: usize) -> u64 {
    let mut payload = 0;
    for chunk in (0..records).collect::<Vec<_>>().chunks(10_000) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|i| {
                (
                    format!("{prefix}/{i:08}").into_bytes(),
                    Some(vec![7; VALUE_LEN]),
                )
            })
            .collect();
        payload += batch
            .iter()
            .map(|(key, value): &(Vec<u8>, Option<Vec<u8>>)| {
                key.len() + value.as_ref().map_or(0, Vec::len)
            })
            .sum::<usize>() as u64;
        replica.write_batch(batch).await.expect("writes");
    }
    payload
}

/// How a benchmark's connections are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secure {
    Tls,
    Plaintext,
}

impl Secure {
    /// A transport for each of `names`.
    fn transports<const N: usize>(self, names: [&str; N]) -> [Transport; N] {
        match self {
            Secure::Tls => tls_transports(names),
            Secure::Plaintext => names.map(|_| Transport::insecure_plaintext()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Secure::Tls => "TLS",
            Secure::Plaintext => "plaintext",
        }
    }
}

/// Prints the wire figures for `missing` records over `secure` (every
/// byte the responder writes counted, TLS's own included); returns the
/// ratio.
async fn wire_ratio(missing: usize, secure_by: Secure) -> f64 {
    let dir = tempfile::tempdir().expect("a directory");
    let (source, sink) = (replica(dir.path(), "source"), replica(dir.path(), "sink"));
    let payload = fill(&source, "k", missing).await;
    let (near, far) = tokio::io::duplex(256 * 1024);
    let written = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: far,
        written: Arc::clone(&written),
    };
    let [at_sink, at_source] = secure_by.transports(["sink", "source"]);
    let (near, counted) = secure(&at_sink, near, &at_source, counted).await;
    let config = SyncConfig::default();
    let (pulled, served) = tokio::join!(
        initiate_over(&sink, near),
        respond_over(&source, counted, &config)
    );
    pulled.expect("round");
    served.expect("served");
    let wire = written.load(Ordering::Relaxed);
    // The alternative: every key and value, one frame each (length,
    // version byte, then the pair as postcard).
    let full_state: u64 = source
        .scan(b"")
        .expect("scans")
        .iter()
        .map(|entry| 5 + postcard::to_allocvec(entry).expect("encodes").len() as u64)
        .sum();
    println!(
        "wire: {missing} missing records of {VALUE_LEN} B over {}: {wire} B on the wire for {payload} B of records: ratio {:.3} (goal: at most 1.1 for large deltas); a full-state transfer of the same store: {full_state} B ({:.3})",
        secure_by.name(),
        wire as f64 / payload as f64,
        full_state as f64 / payload as f64
    );
    wire as f64 / payload as f64
}

/// What one convergence run measured.
struct Converged {
    time: Duration,
    applied: u64,
    /// The bytes of keys and values every replica wrote.
    payload: u64,
}

/// Three replicas with their stores in `dir`, each having written
/// `per_replica` records, converge over `secure_by`: each pulls from the
/// next, twice round the ring (the second pass forwards what arrived
/// second-hand).
async fn convergence(per_replica: usize, dir: &Path, secure_by: Secure) -> Converged {
    let dir = tempfile::tempdir_in(dir).expect("a directory");
    let names = ["r0", "r1", "r2"];
    let transports = secure_by.transports(names);
    let replicas: Vec<Replica> = names.iter().map(|name| replica(dir.path(), name)).collect();
    let mut payload = 0;
    for (replica, name) in replicas.iter().zip(names) {
        payload += fill(replica, name, per_replica).await;
    }
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let mut responders = Vec::new();
    for (replica, transport) in replicas.iter().zip(&transports) {
        responders.push(
            Responder::bind(
                replica.clone(),
                transport.clone(),
                any,
                SyncConfig::default(),
            )
            .await
            .expect("binds"),
        );
    }
    let mut config = SyncConfig::default();
    config.round_timeout = Duration::from_secs(600);
    let started = Instant::now();
    let mut applied = 0;
    for _ in 0..2 {
        let pulls = (0..3).map(|i| {
            let (into, from) = (&replicas[i], responders[(i + 1) % 3].local_addr());
            let (transport, config) = (&transports[i], config.clone());
            async move {
                sync_with(into, transport, from, &config)
                    .await
                    .expect("round")
                    .applied
            }
        });
        applied += futures_util::future::join_all(pulls)
            .await
            .into_iter()
            .sum::<u64>();
    }
    let time = started.elapsed();
    for pair in replicas.windows(2) {
        assert_eq!(
            pair[0].heads().expect("heads"),
            pair[1].heads().expect("heads"),
            "converged"
        );
    }
    for responder in responders {
        responder.kill();
        responder.wait().await.expect("stops");
    }
    Converged {
        time,
        applied,
        payload,
    }
}

/// The convergence benchmark on the disk and on tmpfs, each beside its
/// floors from the same run.
async fn convergence_with_floors(per_replica: usize, wire_ratio: f64) {
    let disk = std::env::temp_dir();
    let on_disk = convergence(per_replica, &disk, Secure::Tls).await;
    let on_disk_plain = convergence(per_replica, &disk, Secure::Plaintext).await;
    // Every replica received the two others' records: the bytes a copy
    // must move too, framed as the wire frames them.
    let moved = (on_disk.payload as f64 * 2.0 * wire_ratio) as u64;
    let raw = raw_copy(moved).await;
    let durable = durable_copy(moved / 3, &disk).await;
    println!(
        "convergence: 3 replicas x {per_replica} records of {VALUE_LEN} B after a partition, stores on disk ({}): {:.2?}; durable floor (3 loopback copies of {} B into files beside the stores, one fsync each): {durable:.2?}, ratio {:.1}x (goal: within 2x); raw loopback copy of {moved} B: {raw:.2?}, ratio {:.1}x",
        disk.display(),
        on_disk.time,
        moved / 3,
        on_disk.time.as_secs_f64() / durable.as_secs_f64(),
        on_disk.time.as_secs_f64() / raw.as_secs_f64(),
    );
    println!(
        "tls: convergence on disk {:.2?} over TLS, {:.2?} over plaintext: TLS adds {:.1}% (goal: under 10%)",
        on_disk.time,
        on_disk_plain.time,
        (on_disk.time.as_secs_f64() / on_disk_plain.time.as_secs_f64() - 1.0) * 100.0
    );
    println!(
        "disk: {:.0} MB/s written with an fsync at the end, 3 files at once ({} B each, in {})",
        moved as f64 / durable.as_secs_f64() / 1e6,
        moved / 3,
        disk.display()
    );
    println!(
        "replay: {} records applied in {:.2?} on disk: {:.0} records/s, {:.2} µs each",
        on_disk.applied,
        on_disk.time,
        on_disk.applied as f64 / on_disk.time.as_secs_f64(),
        on_disk.time.as_secs_f64() * 1e6 / on_disk.applied as f64
    );
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        println!("convergence on tmpfs: not measured: /dev/shm is not a directory here");
        return;
    }
    let on_tmpfs = convergence(per_replica, shm, Secure::Tls).await;
    let on_tmpfs_plain = convergence(per_replica, shm, Secure::Plaintext).await;
    let raw = raw_copy(moved).await;
    println!(
        "tls: convergence on tmpfs {:.2?} over TLS, {:.2?} over plaintext: TLS adds {:.1}% (goal: under 10%)",
        on_tmpfs.time,
        on_tmpfs_plain.time,
        (on_tmpfs.time.as_secs_f64() / on_tmpfs_plain.time.as_secs_f64() - 1.0) * 100.0
    );
    println!(
        "convergence: the same, stores on tmpfs (/dev/shm): {:.2?}; raw loopback copy of {moved} B: {raw:.2?}, ratio {:.1}x (goal: within 10x)",
        on_tmpfs.time,
        on_tmpfs.time.as_secs_f64() / raw.as_secs_f64(),
    );
    println!(
        "replay: {} records applied in {:.2?} on tmpfs: {:.2} µs each (goal: at most 4 µs)",
        on_tmpfs.applied,
        on_tmpfs.time,
        on_tmpfs.time.as_secs_f64() * 1e6 / on_tmpfs.applied as f64
    );
}

/// Convergence on tmpfs over TLS and over plaintext, each twice, in turn.
async fn tls_cost_on_tmpfs(per_replica: usize) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        for (i, secure_by) in [Secure::Tls, Secure::Plaintext].into_iter().enumerate() {
            let converged = convergence(per_replica, &dir, secure_by).await;
            println!(
                "tls: convergence in {} over {}: {:.2?}",
                dir.display(),
                secure_by.name(),
                converged.time
            );
            times[i].push(converged.time);
        }
    }
    let best = |runs: &[Duration]| runs.iter().min().copied().unwrap_or_default();
    let (tls, plain) = (best(&times[0]), best(&times[1]));
    println!(
        "tls: convergence in {}, best of 2 each: {tls:.2?} over TLS, {plain:.2?} over plaintext: TLS adds {:.1}% (goal: under 10%)",
        dir.display(),
        (tls.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0
    );
}

/// Three loopback TCP copies at once, each of `bytes` into its own file in
/// `dir`, with one fsync at the end of each: what a durable replica's
/// round cannot beat.
async fn durable_copy(bytes: u64, dir: &Path) -> Duration {
    let dir = tempfile::tempdir_in(dir).expect("a directory");
    let started = Instant::now();
    let copies = (0..3).map(|i| {
        let path = dir.path().join(format!("floor-{i}"));
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let address = listener.local_addr().expect("an address");
            let receiver = tokio::spawn(async move {
                let mut file = tokio::fs::File::create(&path).await.expect("creates");
                receive_into(listener, bytes, &mut file).await;
                file.sync_all().await.expect("syncs");
            });
            send(address, bytes).await;
            receiver.await.expect("the receiver finishes");
        }
    });
    futures_util::future::join_all(copies).await;
    started.elapsed()
}

/// Rounds timed per log length.
const ROUNDS: usize = 21;

/// The median time of a round that sends one record, from a replica whose
/// log holds `log_len` records: the responder's side, with a scripted peer
/// that has every record but the newest (so the round's cost is what the
/// responder reads, not what the peer writes).
async fn round_cost(log_len: usize) -> Duration {
    let dir = tempfile::tempdir().expect("a directory");
    let source = replica(dir.path(), "source");
    let mut written = 0;
    while written < log_len - 1 {
        let batch: Vec<_> = (written..(written + 10_000).min(log_len - 1))
            .map(|i| (format!("k/{i:08}").into_bytes(), Some(vec![7; 16])))
            .collect();
        written += batch.len();
        source.write_batch(batch).await.expect("writes");
    }
    // A first round seals everything so far; the newest record then goes
    // into a generation of its own, which the peer lacks.
    let peer = DeviceId::new("peer").expect("valid id");
    let transports = tls_transports(["peer", "source"]);
    let has_all = round_as(&source, &peer, GenVector::new(), &transports).await;
    assert_eq!(has_all, log_len as u64 - 1);
    let theirs = source.vector().expect("reads");
    source
        .put(b"newest".to_vec(), vec![7; 16])
        .await
        .expect("writes");
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let sent = round_as(&source, &peer, theirs.clone(), &transports).await;
        times.push(started.elapsed());
        assert_eq!(sent, 1, "one record sent");
    }
    times.sort();
    times[ROUNDS / 2]
}

/// One round served by `source` to a peer `peer` whose vector is
/// `theirs`, its TLS handshake included; returns the records it received.
async fn round_as(
    source: &Replica,
    peer: &DeviceId,
    theirs: GenVector,
    [at_peer, at_source]: &[Transport; 2],
) -> u64 {
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (near, far) = secure(at_peer, near, at_source, far).await;
    let serving = {
        let source = source.clone();
        tokio::spawn(async move { respond_over(&source, far, &SyncConfig::default()).await })
    };
    let mut connection = Connection::new(near);
    connection
        .send(&Message::Hello {
            device: peer.clone(),
        })
        .await
        .expect("sends");
    let mut records = 0;
    let mut asked = false;
    while let Some(message) = connection.recv().await.expect("reads") {
        match message {
            Message::Hello { .. } if !asked => {
                asked = true;
                connection
                    .send(&Message::GetDeltas {
                        vector: theirs.clone(),
                    })
                    .await
                    .expect("sends");
            }
            Message::Record(_) => records += 1,
            Message::Done { .. } => break,
            other => panic!("unexpected {}", other.kind()),
        }
    }
    serving.await.expect("joins").expect("the round is served");
    records
}

/// Copies `bytes` over a loopback TCP connection, 64 KiB at a time.
async fn raw_copy(bytes: u64) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("an address");
    let reader =
        tokio::spawn(async move { receive_into(listener, bytes, &mut tokio::io::sink()).await });
    let started = Instant::now();
    send(address, bytes).await;
    reader.await.expect("the reader finishes");
    started.elapsed()
}

/// Takes one connection on `listener` and writes the first `bytes` it
/// reads into `sink`, 64 KiB at a time.
async fn receive_into<W: AsyncWrite + Unpin>(
    listener: tokio::net::TcpListener,
    bytes: u64,
    sink: &mut W,
) {
    let (mut stream, _) = listener.accept().await.expect("accepts");
    let mut buffer = vec![0; 64 * 1024];
    let mut total = 0u64;
    while total < bytes {
        let read = stream.read(&mut buffer).await.expect("reads");
        if read == 0 {
            break;
        }
        sink.write_all(&buffer[..read]).await.expect("writes");
        total += read as u64;
    }
}

/// Sends `bytes` to `address` over TCP, 64 KiB at a time.
async fn send(address: std::net::SocketAddr, bytes: u64) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let len = chunk.len().min((bytes - sent) as usize);
        stream.write_all(&chunk[..len]).await.expect("writes");
        sent += len as u64;
    }
}

/// Counts the bytes written through it.
struct Counted<T> {
    inner: T,
    written: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(count)) = &written {
            self.written.fetch_add(*count as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
