//! [`Storage`]: the replica's durable state in redb, and typed views of a
//! read or write transaction over it.
//!
//! Tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | name | u64: the open generation, its next sequence, the next log index |
//! | `vector` | device id | newest generation held |
//! | `log` | log index | a [`LogRecord`], postcard |
//! | `origin` | (device, generation, sequence) of a record in the log | its log index: a round reads only what it sends |
//! | `dag` | version id | a [`DagNode`]: parents and the log index of its record |
//! | `values` | key | a [`Head`]: the key's current version and value |
//! | `peers` | device id | a [`PeerRecord`]: its last known vector, and when it was heard of |
//! | `pruned` | version id | nothing: a version garbage collection removed |
//! | `pruned_vector` | device id | the generations collected: this log may lack records up to here |
//! | `pending` | first log index | the log index after the last: records of a sync round not yet finished, one range per transaction |
//! | `owner` | `"device"` | the id of the device whose replica this is, written by the first [`Replica::open`](crate::Replica::open) |
//!
//! Every local write is one write transaction, and so is the end of a sync
//! round (its records go before, in transactions of their own, marked
//! `pending` until then), so after a crash the store holds exactly what
//! some commit left, with the vector never ahead of the log. The in-memory
//! variant is redb on its in-memory backend: the same code, no file.
//!
//! The database sits behind a lock as an `Option`, so that a replica's
//! `wait` can close it (and free the file's lock) whatever handles remain:
//! work that comes after gets [`Error::Closed`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use flotilla_core_types::DeviceId;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::replica::{DeviceInfo, VersionInfo};
use crate::{Error, GenVector, LogRecord, VersionId};

const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
const VECTOR: TableDefinition<'static, &'static str, u64> = TableDefinition::new("vector");
const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log");
/// The log by where each record comes from: (device, generation,
/// sequence) to its log index.
const ORIGIN: TableDefinition<'static, (&'static str, u64, u64), u64> =
    TableDefinition::new("origin");
const DAG: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("dag");
const VALUES: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("values");

const PEERS: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("peers");
const PRUNED: TableDefinition<'static, &'static [u8], ()> = TableDefinition::new("pruned");
const PRUNED_VECTOR: TableDefinition<'static, &'static str, u64> =
    TableDefinition::new("pruned_vector");
const PENDING: TableDefinition<'static, u64, u64> = TableDefinition::new("pending");
const OWNER: TableDefinition<'static, &'static str, &'static str> = TableDefinition::new("owner");

const OWNER_DEVICE: &str = "device";

const OPEN_GENERATION: &str = "open_generation";
const OPEN_SEQUENCE: &str = "open_sequence";
const NEXT_LOG_INDEX: &str = "next_log_index";
/// The log index up to which `origin` indexes the log: every record below
/// it is indexed. Every commit moves it to the next log index; a store
/// written before the index existed, or appended to by a version of this
/// crate that did not keep it, is indexed from there when opened.
const ORIGIN_INDEXED_UP_TO: &str = "origin_indexed_up_to";

/// The page cache [`Storage::open`] gives a store: enough for the working
/// set of a sync round, far below redb's own default of 1 GiB, so that a
/// replica's memory stays small whatever the size of its store.
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A version in the DAG: what it replaced, and where its record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DagNode {
    pub(crate) parents: Vec<VersionId>,
    pub(crate) log_index: u64,
}

/// What a replica knows of another device: the vector it last reported
/// (empty if it never spoke to us directly), and when it was last heard of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    pub(crate) vector: GenVector,
    pub(crate) last_seen_ms: u64,
}

/// What one garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcStats {
    /// Log records removed.
    pub records_pruned: u64,
    /// DAG versions removed (their ids are kept, so that a record naming
    /// one as its parent is still accepted).
    pub versions_pruned: u64,
    /// Devices no longer holding collection back: silent for longer than
    /// the eviction time.
    pub evicted: Vec<DeviceId>,
    /// The generations every known device holds, now collected.
    pub collected: GenVector,
}

/// A key's current version, and where its record (with the value) is in
/// the log. The value is not copied here: a round then writes a few dozen
/// bytes per key it moves, not the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Head {
    pub(crate) version: VersionId,
    pub(crate) log_index: u64,
}

/// The replica's database: a redb file, or redb in memory.
///
/// Opening one blocks the calling thread while the file is opened (and,
/// for a file written before, checked); in async code use
/// [`open_async`](Self::open_async) or
/// [`open_with_cache_async`](Self::open_with_cache_async), which do that
/// work on tokio's blocking pool.
///
/// A file is locked while its `Storage` is open: a second open of it, in
/// this process or another, fails with [`Error::Locked`]. A [`Replica`]
/// closes its store when its [`wait`](crate::Worker::wait) returns, so the
/// same file can be opened again at once.
///
/// [`Replica`]: crate::Replica
pub struct Storage {
    /// `None` once closed.
    db: RwLock<Option<Database>>,
    /// Set once `close` has begun: read without the lock, which `close`
    /// holds across the final flush.
    closed: std::sync::atomic::AtomicBool,
    /// The file, for error messages; `None` in memory.
    path: Option<Arc<Path>>,
}

impl Storage {
    /// Opens the database at `path`, creating it if needed, with a page
    /// cache of [`DEFAULT_CACHE_BYTES`].
    ///
    /// Blocks the calling thread on file I/O; see
    /// [`open_async`](Self::open_async).
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] when the file is open already (by another
    /// `Storage`, here or in another process); [`Error::Storage`] when the
    /// file cannot be opened or is not a redb database. Both name the path.
    pub fn open(path: impl AsRef<Path>) -> Result<Storage, Error> {
        Storage::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the database at `path` with a page cache of `cache_bytes`:
    /// more makes reads of a large store faster, and is memory the
    /// replica holds.
    ///
    /// Blocks the calling thread on file I/O; see
    /// [`open_with_cache_async`](Self::open_with_cache_async).
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Storage, Error> {
        let path: Arc<Path> = Arc::from(path.as_ref());
        let located = |error: Error| error.located(Some(&path));
        let db = match Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::Locked {
                    path: Arc::clone(&path),
                });
            }
            Err(error) => return Err(located(error.into())),
        };
        Storage::init(db, Some(Arc::clone(&path))).map_err(located)
    }

    /// [`open`](Self::open), with the file work done on tokio's blocking
    /// pool: for async code, such as a supervisor's start function.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open); [`Error::Closed`] if the runtime shuts
    /// down before the work is done.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the open goes on on the blocking pool,
    /// and the store it opened is closed again when it is done.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub async fn open_async(path: impl Into<PathBuf>) -> Result<Storage, Error> {
        Storage::open_with_cache_async(path, DEFAULT_CACHE_BYTES).await
    }

    /// [`open_with_cache`](Self::open_with_cache), with the file work done
    /// on tokio's blocking pool.
    ///
    /// # Errors
    ///
    /// As for [`open_async`](Self::open_async).
    ///
    /// # Cancel safety
    ///
    /// As for [`open_async`](Self::open_async).
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub async fn open_with_cache_async(
        path: impl Into<PathBuf>,
        cache_bytes: usize,
    ) -> Result<Storage, Error> {
        let path = path.into();
        off_thread(move || Storage::open_with_cache(path, cache_bytes)).await
    }

    /// A database in memory, gone when dropped (or closed): for tests. Does
    /// not block on I/O.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] only if redb fails to initialise it.
    pub fn in_memory() -> Result<Storage, Error> {
        let backend = redb::backends::InMemoryBackend::new();
        Storage::init(Database::builder().create_with_backend(backend)?, None)
    }

    /// The file this store is in; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn init(db: Database, path: Option<Arc<Path>>) -> Result<Storage, Error> {
        let txn = db.begin_write()?;
        {
            // Opening a table in a write transaction creates it.
            txn.open_table(META)?;
            txn.open_table(VECTOR)?;
            txn.open_table(LOG)?;
            txn.open_table(DAG)?;
            txn.open_table(VALUES)?;
            txn.open_table(PEERS)?;
            txn.open_table(PRUNED)?;
            txn.open_table(PRUNED_VECTOR)?;
            txn.open_table(PENDING)?;
            txn.open_table(OWNER)?;
            let mut meta_table = txn.open_table(META)?;
            let indexed_up_to = meta(&meta_table, ORIGIN_INDEXED_UP_TO)?;
            let next_log_index = meta(&meta_table, NEXT_LOG_INDEX)?;
            if indexed_up_to < next_log_index {
                index_origins(
                    &txn.open_table(LOG)?,
                    &mut txn.open_table(ORIGIN)?,
                    indexed_up_to,
                )?;
                meta_table.insert(ORIGIN_INDEXED_UP_TO, next_log_index)?;
            }
        }
        txn.commit()?;
        Ok(Storage {
            db: RwLock::new(Some(db)),
            closed: std::sync::atomic::AtomicBool::new(false),
            path,
        })
    }

    /// `error`, naming this store's file if it is a storage error that
    /// names none yet.
    pub(crate) fn locate(&self, error: Error) -> Error {
        error.located(self.path.as_ref())
    }

    /// The file, shared, for errors made away from the store.
    pub(crate) fn shared_path(&self) -> Option<Arc<Path>> {
        self.path.clone()
    }

    /// Makes the store `device`'s: records it in an empty store (or one
    /// written before stores recorded their owner), and refuses a store
    /// another device wrote.
    pub(crate) fn claim(&self, device: &DeviceId) -> Result<(), Error> {
        let txn = self.write()?;
        {
            let mut owner = txn.txn.open_table(OWNER)?;
            let stored = owner
                .get(OWNER_DEVICE)?
                .map(|stored| stored_device("owner", stored.value()))
                .transpose()?;
            match stored {
                Some(stored) if &stored == device => return Ok(()),
                Some(stored) => {
                    return Err(Error::ForeignStore {
                        path: self.path.clone(),
                        stored,
                        opened_as: device.clone(),
                    });
                }
                None => {
                    owner.insert(OWNER_DEVICE, device.as_str())?;
                }
            }
        }
        txn.txn.commit()?;
        Ok(())
    }

    /// Closes the database, freeing its file; whatever comes after gets
    /// [`Error::Closed`]. Returns once the file is free (unless a write
    /// transaction is still live, which the replica's `wait` rules out).
    /// Blocks on the final flush.
    pub(crate) fn close(&self) {
        // Held while the database closes, so that a second `close` returns
        // only once the first is done.
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = db.take()
            && let Err(error) = db.close()
        {
            tracing::warn!(
                %error,
                path = %self.path.as_deref().map(|path| path.display().to_string()).unwrap_or_else(|| "(in memory)".to_owned()),
                "closing the store failed"
            );
        }
    }

    /// Whether [`close`](Self::close) has run.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Removes what an unfinished sync round left (after a crash, or a
    /// round that failed after writing some of its records): its log
    /// entries and the DAG nodes that point at them.
    pub(crate) fn discard_pending(&self) -> Result<(), Error> {
        let txn = self.write()?;
        let mut writer = txn.tables()?;
        writer.discard_pending()?;
        let finished = writer.finish()?;
        txn.commit(finished)
    }

    pub(crate) fn read(&self) -> Result<Reader, Error> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = db.as_ref().ok_or(Error::Closed)?;
        Ok(Reader {
            txn: db.begin_read()?,
        })
    }

    pub(crate) fn write(&self) -> Result<WriteTxn, Error> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = db.as_ref().ok_or(Error::Closed)?;
        Ok(WriteTxn {
            txn: db.begin_write()?,
        })
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.path)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Runs `work` on tokio's blocking pool and waits for it; a panic in it
/// goes on in the caller.
pub(crate) async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join_error| {
            if join_error.is_panic() {
                std::panic::resume_unwind(join_error.into_panic())
            }
            Err(Error::Closed)
        })
}

/// A consistent snapshot for reading.
pub(crate) struct Reader {
    txn: ReadTransaction,
}

impl Reader {
    pub(crate) fn head(&self, key: &[u8]) -> Result<Option<Head>, Error> {
        let table = self.txn.open_table(VALUES)?;
        table
            .get(key)?
            .map(|value| decode("head", value.value()))
            .transpose()
    }

    /// Live (not deleted) values whose keys start with `prefix`, in key
    /// order.
    pub(crate) fn scan(&self, prefix: &[u8]) -> Result<Vec<crate::replica::Entry>, Error> {
        let table = self.txn.open_table(VALUES)?;
        let log = self.txn.open_table(LOG)?;
        let mut found = Vec::new();
        for entry in table.range(prefix..)? {
            let (key, head) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            let head: Head = decode("head", head.value())?;
            if let Some(value) = head_value(&log, &head)? {
                found.push((key.value().to_vec(), value));
            }
        }
        Ok(found)
    }

    /// The value `head` holds.
    pub(crate) fn head_value(&self, head: &Head) -> Result<Option<Vec<u8>>, Error> {
        head_value(&self.txn.open_table(LOG)?, head)
    }

    /// The current value of `key`: `None` if it has none, `Some(None)` if
    /// it was deleted.
    pub(crate) fn value(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>, Error> {
        let Some(head) = self.head(key)? else {
            return Ok(None);
        };
        Ok(Some(head_value(&self.txn.open_table(LOG)?, &head)?))
    }

    pub(crate) fn vector(&self) -> Result<GenVector, Error> {
        read_vector(&self.txn.open_table(VECTOR)?)
    }

    /// The log indices, in log order, of the records a peer whose vector
    /// is `theirs` lacks and `ours` covers: read from the `origin` index,
    /// so the cost follows what is sent, not the size of the log.
    pub(crate) fn missing_indices(
        &self,
        theirs: &GenVector,
        ours: &GenVector,
    ) -> Result<Vec<u64>, Error> {
        let origin = self.txn.open_table(ORIGIN)?;
        let mut indices = Vec::new();
        for (device, newest) in ours.iter() {
            let from = theirs.get(device).saturating_add(1);
            if from > newest {
                continue;
            }
            let device = device.as_str();
            for entry in origin.range((device, from, 0)..=(device, newest, u64::MAX))? {
                let (_, index) = entry?;
                indices.push(index.value());
            }
        }
        // Log order: every record after its parents.
        indices.sort_unstable();
        Ok(indices)
    }

    /// The records at `indices` (ascending) that are still in the log, in
    /// that order. Each run of consecutive indices is one range read: a
    /// peer that lacks much of the log usually lacks long runs of it.
    pub(crate) fn records_at(&self, indices: &[u64]) -> Result<Vec<(u64, LogRecord)>, Error> {
        let table = self.txn.open_table(LOG)?;
        let mut records = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while let Some(&first) = rest.first() {
            let run = rest
                .windows(2)
                .position(|pair| pair[1] != pair[0] + 1)
                .map_or(rest.len(), |end| end + 1);
            let last = rest[run - 1];
            for entry in table.range(first..=last)? {
                let (index, record) = entry?;
                records.push((index.value(), decode("log record", record.value())?));
            }
            rest = &rest[run..];
        }
        Ok(records)
    }

    /// The DAG's heads of every key, for comparing replicas.
    pub(crate) fn heads(&self) -> Result<Vec<(Vec<u8>, VersionId)>, Error> {
        let table = self.txn.open_table(VALUES)?;
        let mut heads = Vec::new();
        for entry in table.iter()? {
            let (key, head) = entry?;
            let head: Head = decode("head", head.value())?;
            heads.push((key.value().to_vec(), head.version));
        }
        Ok(heads)
    }

    /// Checks what every commit must leave true, and describes the first
    /// breach: the vector is not ahead of the log (every generation it
    /// claims has records), every head is in the DAG, and every DAG node's
    /// record and parents are there.
    pub(crate) fn verify(&self) -> Result<Result<(), String>, Error> {
        let log = self.txn.open_table(LOG)?;
        let dag = self.txn.open_table(DAG)?;
        let pruned = self.txn.open_table(PRUNED)?;
        let collected = read_vector(&self.txn.open_table(PRUNED_VECTOR)?)?;
        let origin = self.txn.open_table(ORIGIN)?;
        let mut generations: std::collections::BTreeSet<(DeviceId, u64)> = Default::default();
        for entry in log.iter()? {
            let (index, record) = entry?;
            let record: LogRecord = decode("log record", record.value())?;
            // Its own place, or that of an earlier copy of it (a log written
            // before in-round repeats were dropped may hold one).
            let indexed = origin.get(origin_of(&record))?.map(|at| at.value());
            if indexed.is_none_or(|at| at > index.value()) {
                return Ok(Err(format!(
                    "the record at log index {} (generation {} of {}) is indexed at {indexed:?}",
                    index.value(),
                    record.generation,
                    record.device
                )));
            }
            generations.insert((record.device, record.generation));
        }
        if origin.len()? > log.len()? {
            return Ok(Err(format!(
                "the origin index holds {} entries for {} records",
                origin.len()?,
                log.len()?
            )));
        }
        for (device, claimed) in self.vector()?.iter() {
            let from = collected.get(device) + 1;
            if let Some(missing) =
                (from..=claimed).find(|g| !generations.contains(&(device.clone(), *g)))
            {
                return Ok(Err(format!(
                    "the vector claims generation {missing} of {device}, which the log lacks"
                )));
            }
        }
        if self.txn.open_table(PENDING)?.len()? > 0 {
            return Ok(Err(String::from("an unfinished round's records are left")));
        }
        for entry in self.txn.open_table(VALUES)?.iter()? {
            let (key, head) = entry?;
            let head: Head = decode("head", head.value())?;
            let version = head.version;
            let key = key.value();
            if dag.get(version.0.as_slice())?.is_none() {
                return Ok(Err(format!(
                    "the head {version:?} of key {key:?} is not in the DAG"
                )));
            }
            let record = log.get(head.log_index)?;
            let record: Option<LogRecord> = record
                .map(|value| decode("log record", value.value()))
                .transpose()?;
            if record.is_none_or(|record| record.version != version) {
                return Ok(Err(format!(
                    "the head {version:?} of key {key:?} has no record"
                )));
            }
        }
        for entry in dag.iter()? {
            let (version, node) = entry?;
            let node: DagNode = decode("dag node", node.value())?;
            if log.get(node.log_index)?.is_none() {
                return Ok(Err(format!("DAG node {:?} has no record", version.value())));
            }
            for parent in node.parents {
                let known = dag.get(parent.0.as_slice())?.is_some()
                    || pruned.get(parent.0.as_slice())?.is_some();
                if !known {
                    return Ok(Err(format!("parent {parent:?} of a DAG node is missing")));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Whether `version` is in the DAG, or was collected from it.
    pub(crate) fn knows(&self, version: &VersionId) -> Result<bool, Error> {
        let id = version.0.as_slice();
        Ok(self.txn.open_table(DAG)?.get(id)?.is_some()
            || self.txn.open_table(PRUNED)?.get(id)?.is_some())
    }

    pub(crate) fn collected(&self) -> Result<GenVector, Error> {
        read_vector(&self.txn.open_table(PRUNED_VECTOR)?)
    }

    /// How many keys have a current version (deleted ones included).
    pub(crate) fn heads_len(&self) -> Result<u64, Error> {
        Ok(self.txn.open_table(VALUES)?.len()?)
    }

    pub(crate) fn log_len(&self) -> Result<u64, Error> {
        Ok(self.txn.open_table(LOG)?.len()?)
    }

    /// The versions of `key` its head descends from, and the head, oldest
    /// first (log order, in which parents come before their children).
    /// Collected versions have no entry, though they may be named as
    /// parents.
    pub(crate) fn history(&self, key: &[u8]) -> Result<Vec<VersionInfo>, Error> {
        let Some(head) = self.head(key)? else {
            return Ok(Vec::new());
        };
        let dag = self.txn.open_table(DAG)?;
        let log = self.txn.open_table(LOG)?;
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::from([head.version]);
        let mut queue = std::collections::VecDeque::from([head.version]);
        while let Some(version) = queue.pop_front() {
            let Some(node) = dag.get(version.0.as_slice())? else {
                continue;
            };
            let node: DagNode = decode("dag node", node.value())?;
            let record = log.get(node.log_index)?.ok_or(Error::Corrupt {
                what: "log (a dag node without its record)",
                source: postcard::Error::DeserializeUnexpectedEnd,
            })?;
            let record: LogRecord = decode("log record", record.value())?;
            for parent in &node.parents {
                if seen.insert(*parent) {
                    queue.push_back(*parent);
                }
            }
            found.push((
                node.log_index,
                VersionInfo {
                    version,
                    parents: node.parents,
                    value: record.value,
                    writer: record.writer,
                    timestamp_ms: record.timestamp_ms,
                    logged_by: record.device,
                    is_head: version == head.version,
                },
            ));
        }
        found.sort_by_key(|(log_index, _)| *log_index);
        Ok(found.into_iter().map(|(_, info)| info).collect())
    }

    /// Every device this replica has heard of, in id order.
    pub(crate) fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        let mut devices = Vec::new();
        for entry in self.txn.open_table(PEERS)?.iter()? {
            let (device, record) = entry?;
            let device = stored_device("peer entry", device.value())?;
            let record: PeerRecord = decode("peer", record.value())?;
            devices.push(DeviceInfo {
                device,
                vector: record.vector,
                last_heard_ms: record.last_seen_ms,
            });
        }
        Ok(devices)
    }
}

/// A write transaction. Its tables are opened once, by
/// [`tables`](WriteTxn::tables), and everything written through them is
/// committed together by [`commit`](WriteTxn::commit), or dropped.
pub(crate) struct WriteTxn {
    txn: WriteTransaction,
}

/// Proof that a [`Writer`]'s cached counters went back to the `meta` table:
/// [`WriteTxn::commit`] takes one, so none is forgotten.
pub(crate) struct Finished(());

impl WriteTxn {
    pub(crate) fn tables(&self) -> Result<Writer<'_>, Error> {
        let meta_table = self.txn.open_table(META)?;
        let next_log_index = meta(&meta_table, NEXT_LOG_INDEX)?;
        let open_generation = meta(&meta_table, OPEN_GENERATION)?.max(1);
        let open_sequence = meta(&meta_table, OPEN_SEQUENCE)?;
        Ok(Writer {
            meta: meta_table,
            vector: self.txn.open_table(VECTOR)?,
            log: self.txn.open_table(LOG)?,
            origin: self.txn.open_table(ORIGIN)?,
            dag: self.txn.open_table(DAG)?,
            values: self.txn.open_table(VALUES)?,
            peers: self.txn.open_table(PEERS)?,
            pruned: self.txn.open_table(PRUNED)?,
            pruned_vector: self.txn.open_table(PRUNED_VECTOR)?,
            pending: self.txn.open_table(PENDING)?,
            pending_range: None,
            new_nodes: std::collections::BTreeMap::new(),
            next_log_index,
            open_generation,
            open_sequence,
        })
    }

    /// Makes the commit fast and not durable by itself: it becomes durable
    /// with the next durable commit, and is lost in a crash before that.
    /// For the parts of a sync round, whose last commit is durable.
    pub(crate) fn not_durable(&mut self) {
        self.txn
            .set_durability(redb::Durability::None)
            .expect("this crate makes no persistent savepoints, the one reason this can fail");
    }

    /// Makes the commit durable again (the default).
    pub(crate) fn durable(&mut self) {
        self.txn
            .set_durability(redb::Durability::Immediate)
            .expect("this crate makes no persistent savepoints, the one reason this can fail");
    }

    pub(crate) fn commit(self, _finished: Finished) -> Result<(), Error> {
        self.txn.commit()?;
        Ok(())
    }
}

/// The open tables of a [`WriteTxn`], with the counters kept in memory
/// until [`finish`](Writer::finish): a record costs no table opening and no
/// counter round trip.
pub(crate) struct Writer<'t> {
    meta: Table<'t, &'static str, u64>,
    vector: Table<'t, &'static str, u64>,
    log: Table<'t, u64, &'static [u8]>,
    origin: Table<'t, (&'static str, u64, u64), u64>,
    dag: Table<'t, &'static [u8], &'static [u8]>,
    values: Table<'t, &'static [u8], &'static [u8]>,
    peers: Table<'t, &'static str, &'static [u8]>,
    pruned: Table<'t, &'static [u8], ()>,
    pruned_vector: Table<'t, &'static str, u64>,
    pending: Table<'t, u64, u64>,
    /// The log indices this transaction marked pending, written as one
    /// range by `finish`.
    pending_range: Option<(u64, u64)>,
    /// The DAG nodes this transaction added, put by `finish` in key order.
    new_nodes: std::collections::BTreeMap<VersionId, DagNode>,
    next_log_index: u64,
    open_generation: u64,
    open_sequence: u64,
}

impl Writer<'_> {
    pub(crate) fn head(&self, key: &[u8]) -> Result<Option<Head>, Error> {
        let head = self.values.get(key)?;
        head.map(|value| decode("head", value.value())).transpose()
    }

    pub(crate) fn set_head(&mut self, key: &[u8], head: &Head) -> Result<(), Error> {
        self.values.insert(key, encode(head).as_slice())?;
        Ok(())
    }

    pub(crate) fn dag_node(&self, version: &VersionId) -> Result<Option<DagNode>, Error> {
        if let Some(node) = self.new_nodes.get(version) {
            return Ok(Some(node.clone()));
        }
        let node = self.dag.get(version.0.as_slice())?;
        node.map(|value| decode("dag node", value.value()))
            .transpose()
    }

    pub(crate) fn record_at(&self, log_index: u64) -> Result<Option<LogRecord>, Error> {
        let record = self.log.get(log_index)?;
        record
            .map(|value| decode("log record", value.value()))
            .transpose()
    }

    /// Whether the log holds a record from `record`'s origin (its device,
    /// generation and sequence) already.
    pub(crate) fn has_origin(&self, record: &LogRecord) -> Result<bool, Error> {
        Ok(self.origin.get(origin_of(record))?.is_some())
    }

    /// Appends `record` to the log and, unless its version is known
    /// already, to the DAG. Returns its log index, and whether the version
    /// was new.
    pub(crate) fn append(&mut self, record: &LogRecord) -> Result<(u64, bool), Error> {
        self.append_encoded(record, None)
    }

    /// [`append`](Self::append), keeping `encoded` in the log when given:
    /// `record`'s encoding as it came from a peer (it decoded to `record`),
    /// so that it is not encoded again.
    pub(crate) fn append_encoded(
        &mut self,
        record: &LogRecord,
        encoded: Option<&[u8]>,
    ) -> Result<(u64, bool), Error> {
        let index = self.next_log_index;
        self.next_log_index += 1;
        match encoded {
            Some(encoded) => self.log.insert(index, encoded)?,
            None => self.log.insert(index, encode(record).as_slice())?,
        };
        self.origin.insert(origin_of(record), index)?;
        if self.knows(&record.version)? {
            return Ok((index, false));
        }
        let node = DagNode {
            parents: record.parents.clone(),
            log_index: index,
        };
        self.new_nodes.insert(record.version, node);
        Ok((index, true))
    }

    /// Removes `version`'s DAG node, whether put before or in this
    /// transaction.
    fn remove_node(&mut self, version: &VersionId) -> Result<(), Error> {
        self.new_nodes.remove(version);
        self.dag.remove(version.0.as_slice())?;
        Ok(())
    }

    /// Marks the record at `index` as part of a round not yet finished.
    pub(crate) fn mark_pending(&mut self, index: u64) {
        self.pending_range = Some(match self.pending_range {
            Some((start, end)) => (start.min(index), end.max(index + 1)),
            None => (index, index + 1),
        });
    }

    /// The round is finished: its records stay.
    pub(crate) fn clear_pending(&mut self) -> Result<(), Error> {
        self.pending_range = None;
        self.pending.retain(|_, _| false)?;
        Ok(())
    }

    /// Removes every pending record and the DAG nodes pointing at them.
    pub(crate) fn discard_pending(&mut self) -> Result<(), Error> {
        let mut ranges = Vec::new();
        for entry in self.pending.iter()? {
            let (start, end) = entry?;
            ranges.push(start.value()..end.value());
        }
        for index in ranges.into_iter().flatten() {
            let Some(record) = self.record_at(index)? else {
                continue;
            };
            if self
                .dag_node(&record.version)?
                .is_some_and(|node| node.log_index == index)
            {
                self.remove_node(&record.version)?;
            }
            self.forget_origin(origin_of(&record), index)?;
            self.log.remove(index)?;
        }
        self.clear_pending()
    }

    pub(crate) fn vector(&self) -> Result<GenVector, Error> {
        read_vector(&self.vector)
    }

    /// Whether `version` is in the DAG, or was collected from it.
    pub(crate) fn knows(&self, version: &VersionId) -> Result<bool, Error> {
        let id = version.0.as_slice();
        Ok(self.new_nodes.contains_key(version)
            || self.dag.get(id)?.is_some()
            || self.pruned.get(id)?.is_some())
    }

    /// The generations collected so far: this log may lack their records.
    pub(crate) fn collected(&self) -> Result<GenVector, Error> {
        read_vector(&self.pruned_vector)
    }

    /// Records that `version` existed and was collected (here or, for a
    /// parent named in a full-state round, by the peer).
    pub(crate) fn mark_collected(&mut self, version: &VersionId) -> Result<(), Error> {
        self.pruned.insert(version.0.as_slice(), ())?;
        Ok(())
    }

    /// Raises the collected generations to at least `vector`.
    pub(crate) fn raise_collected(&mut self, vector: &GenVector) -> Result<(), Error> {
        let mut collected = self.collected()?;
        collected.merge(vector);
        for (device, generation) in collected.iter() {
            self.pruned_vector.insert(device.as_str(), generation)?;
        }
        Ok(())
    }

    /// Notes that `device` reported `vector` (or, with `None`, that we
    /// heard of it without learning its vector) at `now_ms`; a peer's
    /// relay of a device it heard of is noted the same way. A known vector
    /// is merged (vectors only grow), and the time kept if newer.
    pub(crate) fn heard_of(
        &mut self,
        device: &DeviceId,
        vector: Option<&GenVector>,
        now_ms: u64,
    ) -> Result<(), Error> {
        let known = self
            .peers
            .get(device.as_str())?
            .map(|value| decode::<PeerRecord>("peer", value.value()))
            .transpose()?;
        let record = match (known, vector) {
            (Some(mut known), Some(vector)) => {
                known.vector.merge(vector);
                known.last_seen_ms = known.last_seen_ms.max(now_ms);
                known
            }
            (Some(_), None) => return Ok(()),
            (None, vector) => PeerRecord {
                vector: vector.cloned().unwrap_or_default(),
                last_seen_ms: now_ms,
            },
        };
        self.peers
            .insert(device.as_str(), encode(&record).as_slice())?;
        Ok(())
    }

    pub(crate) fn peers(&self) -> Result<Vec<(DeviceId, PeerRecord)>, Error> {
        let mut peers = Vec::new();
        for entry in self.peers.iter()? {
            let (device, record) = entry?;
            let device = stored_device("peer entry", device.value())?;
            peers.push((device, decode("peer", record.value())?));
        }
        Ok(peers)
    }

    /// Removes every log record `threshold` covers, except the records of
    /// current heads, and the DAG nodes of the versions that leaves without
    /// a record (keeping their ids in `pruned`).
    pub(crate) fn collect(&mut self, threshold: &GenVector) -> Result<(u64, u64), Error> {
        let mut doomed = Vec::new();
        for entry in self.log.iter()? {
            let (index, record) = entry?;
            let record: LogRecord = decode("log record", record.value())?;
            if !threshold.covers(&record.device, record.generation) {
                continue;
            }
            let is_head = self
                .head(&record.key)?
                .is_some_and(|head| head.version == record.version);
            if !is_head {
                let origin = (record.device, record.generation, record.sequence);
                doomed.push((index.value(), record.version, origin));
            }
        }
        let mut versions = 0;
        for (index, version, (device, generation, sequence)) in &doomed {
            self.forget_origin((device.as_str(), *generation, *sequence), *index)?;
            self.log.remove(*index)?;
            let node = self.dag_node(version)?;
            if node.is_some_and(|node| node.log_index == *index) {
                self.remove_node(version)?;
                self.pruned.insert(version.0.as_slice(), ())?;
                versions += 1;
            }
        }
        self.raise_collected(threshold)?;
        Ok((doomed.len() as u64, versions))
    }

    /// Drops the entry `key` of the `origin` index, if it points at
    /// `index` (the log removes the record there).
    fn forget_origin(&mut self, key: (&str, u64, u64), index: u64) -> Result<(), Error> {
        let points_here = self.origin.get(key)?.is_some_and(|at| at.value() == index);
        if points_here {
            self.origin.remove(key)?;
        }
        Ok(())
    }

    pub(crate) fn set_vector(&mut self, vector: &GenVector) -> Result<(), Error> {
        for (device, generation) in vector.iter() {
            self.vector.insert(device.as_str(), generation)?;
        }
        Ok(())
    }

    /// The open generation (from 1) and the sequence its next record gets.
    pub(crate) fn open_slot(&self) -> (u64, u64) {
        (self.open_generation, self.open_sequence + 1)
    }

    /// Records that the open generation now has `sequence` records.
    pub(crate) fn fill_slot(&mut self, generation: u64, sequence: u64) {
        self.open_generation = generation;
        self.open_sequence = sequence;
    }

    /// Seals the open generation, if it has records: `device`'s entry in
    /// the vector becomes it, and the next record opens a new one. Returns
    /// whether anything was sealed.
    pub(crate) fn seal(&mut self, device: &DeviceId) -> Result<bool, Error> {
        if self.open_sequence == 0 {
            return Ok(false);
        }
        self.vector.insert(device.as_str(), self.open_generation)?;
        self.fill_slot(self.open_generation + 1, 0);
        Ok(true)
    }

    /// Writes the counters back; the transaction may then be committed.
    pub(crate) fn finish(mut self) -> Result<Finished, Error> {
        // In key order: the versions' ids are hashes, and sorted puts walk
        // the DAG's tree once instead of jumping about it.
        for (version, node) in std::mem::take(&mut self.new_nodes) {
            self.dag
                .insert(version.0.as_slice(), encode(&node).as_slice())?;
        }
        if let Some((start, end)) = self.pending_range.take() {
            self.pending.insert(start, end)?;
        }
        self.meta.insert(NEXT_LOG_INDEX, self.next_log_index)?;
        self.meta
            .insert(ORIGIN_INDEXED_UP_TO, self.next_log_index)?;
        self.meta.insert(OPEN_GENERATION, self.open_generation)?;
        self.meta.insert(OPEN_SEQUENCE, self.open_sequence)?;
        Ok(Finished(()))
    }
}

/// `record`'s key in the `origin` index.
fn origin_of(record: &LogRecord) -> (&str, u64, u64) {
    (record.device.as_str(), record.generation, record.sequence)
}

/// Indexes the records of `log` from log index `from` on in `origin`, for
/// a store some of whose records were written without it. A record whose
/// origin is indexed already keeps its first place: a log that holds a
/// record twice (only a peer's repeat could have made one) sends the copy
/// that came first, after its parents.
fn index_origins(
    log: &impl ReadableTable<u64, &'static [u8]>,
    origin: &mut Table<'_, (&'static str, u64, u64), u64>,
    from: u64,
) -> Result<(), Error> {
    for entry in log.range(from..)? {
        let (index, record) = entry?;
        let record: LogRecord = decode("log record", record.value())?;
        if origin.get(origin_of(&record))?.is_none() {
            origin.insert(origin_of(&record), index.value())?;
        }
    }
    Ok(())
}

/// The value of the record `head` points at.
fn head_value(
    log: &impl ReadableTable<u64, &'static [u8]>,
    head: &Head,
) -> Result<Option<Vec<u8>>, Error> {
    let record = log.get(head.log_index)?.ok_or(Error::Corrupt {
        what: "head (its record is missing)",
        source: postcard::Error::DeserializeUnexpectedEnd,
    })?;
    let record: LogRecord = decode("log record", record.value())?;
    Ok(record.value)
}

fn meta(table: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, Error> {
    Ok(table.get(name)?.map_or(0, |value| value.value()))
}

fn read_vector(table: &impl ReadableTable<&'static str, u64>) -> Result<GenVector, Error> {
    let mut vector = GenVector::new();
    for entry in table.iter()? {
        let (device, generation) = entry?;
        let device = stored_device("vector entry", device.value())?;
        vector.raise(&device, generation.value());
    }
    Ok(vector)
}

/// A device id read back from a table key.
fn stored_device(what: &'static str, text: &str) -> Result<DeviceId, Error> {
    DeviceId::new(text).map_err(|_| Error::Corrupt {
        what,
        source: postcard::Error::DeserializeBadEncoding,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encodes these plain types infallibly")
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|source| Error::Corrupt { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(device: &DeviceId, generation: u64, sequence: u64) -> LogRecord {
        LogRecord {
            device: device.clone(),
            generation,
            sequence,
            key: format!("k{generation}-{sequence}").into_bytes(),
            version: VersionId::of_write(device, generation, sequence),
            parents: Vec::new(),
            value: Some(b"v".to_vec()),
            writer: device.clone(),
            timestamp_ms: 1,
        }
    }

    /// Appends `records` and raises the vector over them, in one commit.
    fn append(storage: &Storage, records: &[LogRecord]) {
        let txn = storage.write().expect("a write");
        let mut writer = txn.tables().expect("tables");
        let mut vector = GenVector::new();
        for record in records {
            writer.append(record).expect("appends");
            vector.raise(&record.device, record.generation);
        }
        writer.set_vector(&vector).expect("the vector");
        let finished = writer.finish().expect("finishes");
        txn.commit(finished).expect("commits");
    }

    #[test]
    fn a_round_reads_only_the_generations_the_peer_lacks_in_log_order() {
        let storage = Storage::in_memory().expect("a store");
        let (a, b) = (
            DeviceId::new("a").expect("valid"),
            DeviceId::new("b").expect("valid"),
        );
        // Interleaved: a's and b's generations alternate in the log.
        append(
            &storage,
            &[
                record(&a, 1, 1),
                record(&b, 1, 1),
                record(&a, 2, 1),
                record(&a, 2, 2),
                record(&b, 2, 1),
                record(&a, 3, 1),
            ],
        );
        let reader = storage.read().expect("a read");
        let ours = reader.vector().expect("the vector");
        let mut theirs = GenVector::new();
        theirs.raise(&a, 1);
        assert_eq!(
            reader.missing_indices(&theirs, &ours).expect("reads"),
            [1, 2, 3, 4, 5]
        );
        theirs.raise(&b, 1);
        assert_eq!(
            reader.missing_indices(&theirs, &ours).expect("reads"),
            [2, 3, 4, 5]
        );
        theirs.raise(&a, 3);
        theirs.raise(&b, 2);
        assert!(
            reader
                .missing_indices(&theirs, &ours)
                .expect("reads")
                .is_empty()
        );
        // Only what `ours` covers is sent, whatever the log holds beyond.
        let mut sealed = GenVector::new();
        sealed.raise(&a, 2);
        assert_eq!(
            reader
                .missing_indices(&GenVector::new(), &sealed)
                .expect("reads"),
            [0, 2, 3]
        );
        let records = reader.records_at(&[0, 2, 3, 5]).expect("reads");
        let origins: Vec<_> = records
            .iter()
            .map(|(index, record)| (*index, record.generation, record.sequence))
            .collect();
        assert_eq!(origins, [(0, 1, 1), (2, 2, 1), (3, 2, 2), (5, 3, 1)]);
        assert!(
            reader.records_at(&[6, 7]).expect("reads").is_empty(),
            "past the log"
        );
    }

    #[test]
    fn a_store_written_before_the_origin_index_is_indexed_when_opened() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("old.redb");
        let a = DeviceId::new("a").expect("valid");
        let storage = Storage::open(&path).expect("opens");
        append(
            &storage,
            &[record(&a, 1, 1), record(&a, 1, 2), record(&a, 2, 1)],
        );
        storage.close();
        drop(storage);
        // What a store written before the index looks like.
        {
            let db = Database::create(&path).expect("opens raw");
            let txn = db.begin_write().expect("a write");
            assert!(txn.delete_table(ORIGIN).expect("deletes"));
            txn.open_table(META)
                .expect("meta")
                .remove(ORIGIN_INDEXED_UP_TO)
                .expect("removes");
            txn.commit().expect("commits");
        }
        assert_eq!(indexed_after_opening(&path), [0, 1, 2]);

        // Records appended by a version that kept no index (as after a
        // rollback): their entries and the mark are missing; the next open
        // indexes what came after the mark.
        {
            let db = Database::create(&path).expect("opens raw");
            let txn = db.begin_write().expect("a write");
            {
                let mut log = txn.open_table(LOG).expect("log");
                log.insert(3, encode(&record(&a, 3, 1)).as_slice())
                    .expect("appends");
                let mut meta_table = txn.open_table(META).expect("meta");
                meta_table.insert(NEXT_LOG_INDEX, 4).expect("counts");
                let mut vector = txn.open_table(VECTOR).expect("vector");
                vector.insert("a", 3).expect("raises");
            }
            txn.commit().expect("commits");
        }
        assert_eq!(indexed_after_opening(&path), [0, 1, 2, 3]);
    }

    /// Opens the store at `path`, checks it, and gives the log indices a
    /// peer with nothing would be sent; closes it again.
    fn indexed_after_opening(path: &Path) -> Vec<u64> {
        let storage = Storage::open(path).expect("opens");
        let reader = storage.read().expect("a read");
        assert_eq!(reader.verify().expect("reads"), Ok(()));
        let ours = reader.vector().expect("the vector");
        let indices = reader
            .missing_indices(&GenVector::new(), &ours)
            .expect("reads");
        drop(reader);
        storage.close();
        indices
    }
}
