//! The writes a gensync round makes per record, on redb (the engine the
//! replica uses) and on fjall (an LSM tree), with the same keys and
//! values: per record a log entry (its index to the record's 1 KiB
//! encoding), an origin entry, a lookup of its version in the DAG (absent:
//! the record is new) and a DAG node; per key, at the end, its head. In
//! chunks of 1,024 records, each its own transaction or batch, not durable,
//! and one durable commit at the end. Prints the time per record of each.
//!
//! `cargo run --release -- DIR` (DIR defaults to /dev/shm).

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{ReadableTable, TableDefinition};

const RECORDS: u64 = 200_000;
const CHUNK: u64 = 1_024;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const ORIGIN: TableDefinition<(&str, u64, u64), u64> = TableDefinition::new("origin");
const DAG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dag");
const PRUNED: TableDefinition<&[u8], ()> = TableDefinition::new("pruned");
const VALUES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("values");

fn record(n: u64) -> (Vec<u8>, [u8; 16], Vec<u8>) {
    let key = format!("r1/{n:08}").into_bytes();
    let mut version = [0u8; 16];
    // Spread like hashes: versions are SHA-256 prefixes.
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n << 17);
    version[..8].copy_from_slice(&mixed.to_be_bytes());
    version[8..].copy_from_slice(&(!mixed).rotate_left(13).to_be_bytes());
    let mut encoded = vec![7u8; 1_100];
    encoded[..8].copy_from_slice(&n.to_be_bytes());
    (key, version, encoded)
}

fn on_redb(dir: &Path) -> Duration {
    let db = redb::Database::builder()
        .set_cache_size(16 * 1024 * 1024)
        .create(dir.join("spike.redb"))
        .expect("creates");
    let started = Instant::now();
    let mut n = 0;
    while n < RECORDS {
        let mut txn = db.begin_write().expect("a write");
        let last = n + CHUNK >= RECORDS;
        if !last {
            txn.set_durability(redb::Durability::None).expect("durability");
        }
        {
            let mut log = txn.open_table(LOG).expect("log");
            let mut origin = txn.open_table(ORIGIN).expect("origin");
            let mut dag = txn.open_table(DAG).expect("dag");
            let pruned = txn.open_table(PRUNED).expect("pruned");
            let mut values = txn.open_table(VALUES).expect("values");
            let end = (n + CHUNK).min(RECORDS);
            for i in n..end {
                let (key, version, encoded) = record(i);
                log.insert(i, encoded.as_slice()).expect("log");
                origin.insert(("r1", 1, i + 1), i).expect("origin");
                let known = dag.get(version.as_slice()).expect("dag").is_some()
                    || pruned.get(version.as_slice()).expect("pruned").is_some();
                assert!(!known);
                let mut node = vec![0u8; 10];
                node[..8].copy_from_slice(&i.to_be_bytes());
                dag.insert(version.as_slice(), node.as_slice()).expect("dag");
                values.insert(key.as_slice(), &version[..]).expect("head");
            }
        }
        txn.commit().expect("commits");
        n = (n + CHUNK).min(RECORDS);
    }
    started.elapsed()
}

fn on_fjall(dir: &Path) -> Duration {
    let db = fjall::Database::builder(dir.join("spike.fjall"))
        .open()
        .expect("opens");
    let open = |name: &str| {
        db.keyspace(name, fjall::KeyspaceCreateOptions::default)
            .expect("a keyspace")
    };
    let (log, origin, dag, pruned, values) =
        (open("log"), open("origin"), open("dag"), open("pruned"), open("values"));
    let started = Instant::now();
    let mut n = 0;
    while n < RECORDS {
        let mut batch = db.batch();
        let end = (n + CHUNK).min(RECORDS);
        for i in n..end {
            let (key, version, encoded) = record(i);
            batch.insert(&log, i.to_be_bytes(), encoded);
            let mut origin_key = b"r1\0".to_vec();
            origin_key.extend_from_slice(&1u64.to_be_bytes());
            origin_key.extend_from_slice(&(i + 1).to_be_bytes());
            batch.insert(&origin, origin_key, i.to_be_bytes());
            let known = dag.get(version).expect("dag").is_some()
                || pruned.get(version).expect("pruned").is_some();
            assert!(!known);
            let mut node = vec![0u8; 10];
            node[..8].copy_from_slice(&i.to_be_bytes());
            batch.insert(&dag, version, node);
            batch.insert(&values, key, version);
        }
        batch.commit().expect("commits");
        n = end;
    }
    db.persist(fjall::PersistMode::SyncAll).expect("persists");
    let elapsed = started.elapsed();
    assert_eq!(log.len().expect("counts"), RECORDS as usize);
    elapsed
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| String::from("/dev/shm"));
    for round in 0..2 {
        let dir = tempfile::tempdir_in(&base).expect("a directory");
        let redb = on_redb(dir.path());
        let fjall = on_fjall(dir.path());
        let per = |d: Duration| d.as_secs_f64() * 1e6 / RECORDS as f64;
        println!(
            "run {round}: {RECORDS} records in {base}: redb {redb:.2?} ({:.2} µs a record); fjall {fjall:.2?} ({:.2} µs a record)",
            per(redb),
            per(fjall)
        );
    }
}
