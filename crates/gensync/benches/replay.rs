//! The replay's cost per record, apart from the network and the disk: one
//! round in which a replica catches up 100,000 records of 1 KiB from
//! another, both in this process over TLS on an in-memory pipe, with the
//! stores on tmpfs (/dev/shm) when there is one. Prints the round's time, the time
//! per record applied, and the same round's responder alone (the records
//! read and framed, sent to a reader that drops them) as its floor.
//!
//! Run with `cargo bench -p flotilla-gensync --bench replay`; for working
//! on the replay (profile it with `perf record`); the figures that count
//! are the convergence benchmark's (docs/benchmarks.md).

use std::path::Path;
use std::time::Instant;

use flotilla_core_types::DeviceId;
use flotilla_gensync::wire::{Connection, Message};
use flotilla_gensync::{GenVector, Secured, SyncConfig, initiate_over, respond_over};

const RECORDS: usize = 100_000;

mod support;

use support::{fill_kib, replica, runtime, secure, tls_transports};

fn main() {
    runtime().block_on(measure());
}

async fn measure() {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::tempdir_in(&base).expect("a directory");
    let (source, sink) = (replica(dir.path(), "source"), replica(dir.path(), "sink"));
    fill_kib(&source, RECORDS).await;

    let [at_drain, at_sink, at_source] = tls_transports(["drain", "sink", "source"]);
    // The floor: the responder's side alone.
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (near, far) = secure(&at_drain, near, &at_source, far).await;
    let started = Instant::now();
    let config = SyncConfig::default();
    let (read, served) = tokio::join!(drain(near), respond_over(&source, far, &config));
    served.expect("served");
    let floor = started.elapsed();
    assert_eq!(read, RECORDS as u64);

    let (near, far) = tokio::io::duplex(256 * 1024);
    let (near, far) = secure(&at_sink, near, &at_source, far).await;
    let started = Instant::now();
    let (pulled, served) = tokio::join!(
        initiate_over(&sink, near),
        respond_over(&source, far, &config)
    );
    let round = started.elapsed();
    let applied = pulled.expect("the round completes").applied;
    assert_eq!(applied, RECORDS as u64);
    served.expect("served");
    println!(
        "replay: one round of {RECORDS} records of 1 KiB, stores in {}: {round:.2?}, {:.2} µs per record; the responder alone: {floor:.2?}, {:.2} µs per record",
        base.display(),
        round.as_secs_f64() * 1e6 / applied as f64,
        floor.as_secs_f64() * 1e6 / applied as f64,
    );
}

/// A peer with nothing that takes a whole round and drops it; returns the
/// records it was sent.
async fn drain(io: Secured<tokio::io::DuplexStream>) -> u64 {
    let mut connection = Connection::new(io);
    connection
        .send(&Message::Hello {
            device: DeviceId::new("drain").expect("valid id"),
        })
        .await
        .expect("sends");
    let mut records = 0;
    while let Some(message) = connection.recv().await.expect("reads") {
        match message {
            Message::Hello { .. } => connection
                .send(&Message::GetDeltas {
                    vector: GenVector::new(),
                })
                .await
                .expect("sends"),
            Message::Record(_) => records += 1,
            Message::Done { .. } => break,
            _ => {}
        }
    }
    records
}
