//! [`Replica`]: one device's copy of the store, read and written locally and
//! kept in step with its peers by sync rounds.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_core_types::{DeviceId, ReportFuture, WaitFuture, Worker};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::storage::{GcStats, Head, Reader, Storage, off_thread};
use crate::{Error, GenVector, LastWriterWins, LogRecord, Resolver, VersionId};

/// The longest key a replica accepts.
pub const MAX_KEY_LEN: usize = 4 * 1024;

/// The longest value a replica accepts: a record must fit in one frame
/// ([`MAX_FRAME_LEN`](crate::wire::MAX_FRAME_LEN)) with room to spare.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

/// How a [`Replica`] behaves. Start from [`Default`].
#[derive(Clone)]
#[non_exhaustive]
pub struct ReplicaConfig {
    /// A generation is sealed when it reaches this many records, even if no
    /// peer has asked for it yet. Default: 10,000.
    pub max_generation_records: u64,
    /// Settles conflicts. Default: [`LastWriterWins`].
    pub resolver: Arc<dyn Resolver>,
    /// How many changes a slow [`watch`](Replica::watch)er may fall behind
    /// before it misses some (it is told how many). Default: 1,024.
    pub watch_buffer: usize,
    /// The clock stamped on local writes, in milliseconds since the Unix
    /// epoch; last-writer-wins compares these. Default: the system clock.
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            max_generation_records: 10_000,
            resolver: Arc::new(LastWriterWins),
            watch_buffer: 1024,
            clock: Arc::new(system_clock_ms),
        }
    }
}

impl fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("max_generation_records", &self.max_generation_records)
            .field("watch_buffer", &self.watch_buffer)
            .finish_non_exhaustive()
    }
}

fn system_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// A change to a key, local or replicated, as [`Replica::watch`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// The new value (`None`: deleted).
    pub value: Option<Vec<u8>>,
    /// The version that holds it.
    pub version: VersionId,
    /// Whether it was written here or arrived from a peer.
    pub origin: Origin,
}

/// Where a [`Change`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A write on this replica.
    Local,
    /// A sync round (including a merge this replica made while applying it).
    Replicated,
}

/// One version of a key, as [`Replica::history`] reports it: enough to see
/// why a conflict resolved as it did (which versions a merge joined, and
/// the writer and timestamp last-writer-wins compared).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// The version.
    pub version: VersionId,
    /// The versions it replaced: none for a key's first version, one for
    /// an update, several for a merge. A parent garbage collection removed
    /// has no entry of its own.
    pub parents: Vec<VersionId>,
    /// Its value (`None`: deleted).
    pub value: Option<Vec<u8>>,
    /// Who wrote the value (for a merge, the writer of the value it kept).
    pub writer: DeviceId,
    /// When, by the writer's clock, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The device whose log holds the version: the writer for a write, the
    /// replica that made it for a merge.
    pub logged_by: DeviceId,
    /// Whether it is the key's current version (its head).
    pub is_head: bool,
}

/// What a replica knows of another device, as [`Replica::devices`] reports
/// it: what garbage collection waits for, and what eviction looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// The device.
    pub device: DeviceId,
    /// What it holds, as far as this replica knows: the vectors it reported
    /// in rounds with this replica and those peers relayed of it, merged;
    /// empty for a device heard of only as the author of records no peer
    /// has told of yet.
    pub vector: GenVector,
    /// When it was last heard of, by this replica's clock
    /// ([`ReplicaConfig::clock`]), in milliseconds since the Unix epoch.
    pub last_heard_ms: u64,
}

/// One write of a batch: a value, or `None` to delete.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A key and its value, as [`Replica::scan`] returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One device's replica of the store. Cloning is cheap: every clone is a
/// handle to the same replica.
///
/// Reads see the last committed state and never wait for a write or a sync
/// round (the store is multi-version). Writes are durable when they return:
/// each [`put`](Replica::put) or [`write_batch`](Replica::write_batch) is
/// one transaction. A sync round becomes visible in one transaction too,
/// and never holds up a write for longer than one chunk's commit, however
/// slow its peer.
///
/// # Example
///
/// ```
/// use flotilla_core_types::DeviceId;
/// use flotilla_gensync::{Replica, ReplicaConfig, Storage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), flotilla_gensync::Error> {
/// let device = DeviceId::new("laptop").expect("valid id");
/// let replica = Replica::open(device, Storage::in_memory()?, ReplicaConfig::default())?;
/// replica.put(b"greeting".to_vec(), b"hello".to_vec()).await?;
/// assert_eq!(replica.get(b"greeting")?, Some(b"hello".to_vec()));
/// replica.delete(b"greeting".to_vec()).await?;
/// assert_eq!(replica.get(b"greeting")?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Replica {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) device: DeviceId,
    pub(crate) storage: Storage,
    pub(crate) config: ReplicaConfig,
    pub(crate) changes: broadcast::Sender<Change>,
    /// Held by a sync round as initiator for the whole round: from before
    /// its request goes out, through every wait for the peer, to its last
    /// commit (or its discard), so for as long as the round's timeout
    /// allows when the peer stalls. Nothing else waits for it. A responder
    /// seals its open generation only if it can take this at once:
    /// otherwise it would wait for its own replica's round, which may be
    /// waiting for a responder that waits for its round, around a ring of
    /// replicas; busy, it serves the sealed generations only. Garbage
    /// collection takes it at once or not at all
    /// ([`Error::RoundUnderway`]), so that no blocking thread sits behind
    /// a stalled peer.
    pub(crate) round_gate: Arc<tokio::sync::Mutex<()>>,
    /// Every piece of store work under way (writes, rounds, collections),
    /// so that `wait` can tell when the last one has ended.
    pub(crate) work: TaskTracker,
    /// Cancelled by `kill`: no new store work starts.
    pub(crate) closing: CancellationToken,
}

impl Replica {
    /// Opens `device`'s replica on `storage` (empty or written before by
    /// the same device). An empty store becomes `device`'s; so does one
    /// written before stores recorded their device.
    ///
    /// Blocks the calling thread: it reads the store and commits to it
    /// (undoing a round a crash cut short). In async code use
    /// [`open_async`](Self::open_async).
    ///
    /// # Errors
    ///
    /// [`Error::ForeignStore`], naming both devices, when another device
    /// wrote the store; [`Error::Storage`] when the store cannot be read.
    /// Both name the store's file.
    pub fn open(
        device: DeviceId,
        storage: Storage,
        config: ReplicaConfig,
    ) -> Result<Replica, Error> {
        let opened = (|| {
            // Refuses another device's store before changing anything.
            storage.claim(&device)?;
            // Reading the vector checks that the store is readable now, not
            // at the first sync.
            storage.read()?.vector()?;
            // A round cut short by a crash is undone.
            storage.discard_pending()
        })();
        opened.map_err(|error| storage.locate(error))?;
        let (changes, _) = broadcast::channel(config.watch_buffer.max(1));
        Ok(Replica {
            shared: Arc::new(Shared {
                device,
                storage,
                config,
                changes,
                round_gate: Arc::new(tokio::sync::Mutex::new(())),
                work: TaskTracker::new(),
                closing: CancellationToken::new(),
            }),
        })
    }

    /// [`open`](Self::open), with the store work done on tokio's blocking
    /// pool: for async code, such as a supervisor's start function, which
    /// then needs no `spawn_blocking` of its own.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open); [`Error::Closed`] if the runtime shuts
    /// down before the work is done.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the open goes on on the blocking pool and
    /// its replica is dropped when done; the store is then closed.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub async fn open_async(
        device: DeviceId,
        storage: Storage,
        config: ReplicaConfig,
    ) -> Result<Replica, Error> {
        off_thread(move || Replica::open(device, storage, config)).await
    }

    /// Runs `read` on a snapshot of the store, naming the store's file in
    /// a storage error.
    fn read<T>(&self, read: impl FnOnce(&Reader) -> Result<T, Error>) -> Result<T, Error> {
        let storage = &self.shared.storage;
        storage
            .read()
            .and_then(|reader| read(&reader))
            .map_err(|error| storage.locate(error))
    }

    /// This replica's device.
    pub fn device(&self) -> &DeviceId {
        &self.shared.device
    }

    /// The value of `key`, if it has one.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.read(|reader| Ok(reader.value(key)?.flatten()))
    }

    /// Every live key starting with `prefix`, with its value, in key order.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, Error> {
        self.read(|reader| reader.scan(prefix))
    }

    /// The current version of `key` (also for a deleted key), if it has
    /// ever had one.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn head(&self, key: &[u8]) -> Result<Option<VersionId>, Error> {
        self.read(|reader| Ok(reader.head(key)?.map(|head| head.version)))
    }

    /// Every key's current version, in key order: two replicas that have
    /// converged have equal heads.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn heads(&self) -> Result<Vec<(Vec<u8>, VersionId)>, Error> {
        self.read(|reader| reader.heads())
    }

    /// Checks the store's invariants: the vector is not ahead of the log,
    /// every head is in the DAG, every DAG node has its record and parents.
    /// Returns a description of the first breach as `Ok(Err(..))`. Meant
    /// for tests and for checking a store after a crash; it reads
    /// everything.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`] when the store cannot be
    /// read at all.
    pub fn verify(&self) -> Result<Result<(), String>, Error> {
        self.read(|reader| reader.verify())
    }

    /// Collects garbage: removes the log records, and the DAG versions, that
    /// every known device already holds, keeping each key's current
    /// version. What a device holds is the vector it reported in a round
    /// with this replica or that a peer relayed of it (a vector only grows,
    /// so a relayed one is a floor), whichever says more; a device known
    /// only as an author, never told of, holds everything of its log back.
    /// A device that has not been heard of for longer than
    /// `evict_after` stops holding collection back; if it comes back, it is
    /// sent what the log still has, which includes every current value (a
    /// full-state transfer) instead of a delta.
    ///
    /// Does not wait for a sync round under way (the round may be waiting
    /// for a slow peer): it fails at once with [`Error::RoundUnderway`]
    /// instead, to be tried again later. While it runs, it holds the next
    /// round back (for as long as one write transaction takes).
    ///
    /// # Errors
    ///
    /// [`Error::RoundUnderway`], [`Error::Closed`], [`Error::Storage`] or
    /// [`Error::Corrupt`]; nothing is removed then.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the collection may or may not be
    /// committed; it is never half done.
    pub async fn collect_garbage(&self, evict_after: Duration) -> Result<GcStats, Error> {
        let no_round = Arc::clone(&self.shared.round_gate)
            .try_lock_owned()
            .map_err(|_| Error::RoundUnderway)?;
        let shared = Arc::clone(&self.shared);
        blocking(&self.shared, move || {
            let _no_round = no_round;
            shared.collect_garbage(evict_after)
        })
        .await
    }

    /// What garbage collection has removed: this log may lack the records
    /// of these generations.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn collected(&self) -> Result<GenVector, Error> {
        self.read(|reader| reader.collected())
    }

    /// Whether this replica has `version` of any key in its DAG.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn knows(&self, version: &VersionId) -> Result<bool, Error> {
        self.read(|reader| reader.knows(version))
    }

    /// The generation vector: what this replica holds of every device's log.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn vector(&self) -> Result<GenVector, Error> {
        self.read(|reader| reader.vector())
    }

    /// The history of `key`: its current version and every version that
    /// one descends from which garbage collection has left, oldest first
    /// (parents before their children). Empty for a key never written. It
    /// reads the whole history, so it is for people and status pages, not
    /// for hot paths.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    ///
    /// # Example
    ///
    /// ```
    /// use flotilla_core_types::DeviceId;
    /// use flotilla_gensync::{Replica, ReplicaConfig, Storage};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flotilla_gensync::Error> {
    /// let device = DeviceId::new("laptop").expect("valid id");
    /// let replica = Replica::open(device, Storage::in_memory()?, ReplicaConfig::default())?;
    /// let first = replica.put(b"k".to_vec(), b"1".to_vec()).await?;
    /// let second = replica.put(b"k".to_vec(), b"2".to_vec()).await?;
    /// let history = replica.history(b"k")?;
    /// assert_eq!(history.len(), 2);
    /// assert_eq!((history[0].version, history[0].is_head), (first, false));
    /// assert_eq!(history[1].parents, [first]);
    /// assert_eq!((history[1].version, history[1].is_head), (second, true));
    /// # Ok(())
    /// # }
    /// ```
    pub fn history(&self, key: &[u8]) -> Result<Vec<VersionInfo>, Error> {
        self.read(|reader| reader.history(key))
    }

    /// The device table: every other device this replica has heard of, in
    /// id order, with what it is known to hold and when it was last heard
    /// of. This replica's own holdings are [`vector`](Self::vector).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`]; [`Error::Closed`] once the
    /// replica's [`wait`](Worker::wait) has returned.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        self.read(|reader| reader.devices())
    }

    /// How many records the log holds.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`]; [`Error::Closed`] once the replica's
    /// [`wait`](Worker::wait) has returned.
    pub fn log_len(&self) -> Result<u64, Error> {
        self.read(|reader| reader.log_len())
    }

    /// Every change from now on, local or replicated.
    pub fn watch(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// Sets `key` to `value`, durably, and returns the new version.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for an oversized key or value (nothing written);
    /// [`Error::Storage`] when the store fails.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the write may or may not be committed.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<VersionId, Error> {
        let mut versions = self.write_batch(vec![(key, Some(value))]).await?;
        Ok(versions.remove(0))
    }

    /// Deletes `key` (writes a tombstone, which replicates like a value).
    ///
    /// # Errors
    ///
    /// As for [`put`](Self::put).
    ///
    /// # Cancel safety
    ///
    /// As for [`put`](Self::put).
    pub async fn delete(&self, key: Vec<u8>) -> Result<VersionId, Error> {
        let mut versions = self.write_batch(vec![(key, None)]).await?;
        Ok(versions.remove(0))
    }

    /// Applies `writes` in one durable transaction, in order, and returns
    /// each one's version.
    ///
    /// # Errors
    ///
    /// As for [`put`](Self::put); an oversized entry rejects the whole
    /// batch before anything is written.
    ///
    /// # Cancel safety
    ///
    /// As for [`put`](Self::put).
    pub async fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<VersionId>, Error> {
        for (key, value) in &writes {
            check_limits(key, value.as_deref())?;
        }
        let shared = Arc::clone(&self.shared);
        let (versions, changes) =
            blocking(&self.shared, move || shared.write_local(writes)).await?;
        for change in changes {
            let _ = self.shared.changes.send(change);
        }
        Ok(versions)
    }
}

/// A replica is a [`Worker`] over its store work: [`kill`](Worker::kill)
/// refuses new writes, sync rounds and collections with [`Error::Closed`]
/// (reads go on working until `wait` returns), and [`wait`](Worker::wait)
/// returns once the work already under way has ended and the store is
/// closed: its file is free to be opened again at once, however many clones
/// of the replica (or responders, initiators and collectors holding one)
/// remain. Those get [`Error::Closed`] for reads and writes from then on.
///
/// Its [`report`](Worker::report) is a JSON object: `device`, `state`
/// (`"running"`, `"stopping"` once killed, `"closed"` once its store is),
/// `closed` (a boolean), and while the store is open `vector` (device to
/// generation), `log_len` and `heads` (how many keys have a version).
impl Worker for Replica {
    fn kill(&self) {
        self.shared.closing.cancel();
        self.shared.work.close();
    }

    fn wait(&self) -> WaitFuture<'_> {
        Box::pin(async {
            self.shared.work.wait().await;
            // Closing flushes the file: off the async threads, unless the
            // runtime is shutting down and has none to give.
            let shared = Arc::clone(&self.shared);
            if let Err(join_error) =
                tokio::task::spawn_blocking(move || shared.storage.close()).await
            {
                if join_error.is_panic() {
                    std::panic::resume_unwind(join_error.into_panic())
                }
                self.shared.storage.close();
            }
            Ok(())
        })
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let shared = Arc::clone(&self.shared);
        Some(Box::pin(async move {
            let closed = shared.storage.is_closed();
            let state = match (closed, shared.closing.is_cancelled()) {
                (true, _) => "closed",
                (false, true) => "stopping",
                (false, false) => "running",
            };
            let mut report = serde_json::json!({
                "device": shared.device.as_str(),
                "state": state,
                "closed": closed,
            });
            if closed {
                return report;
            }
            let read = Arc::clone(&shared);
            let stats = off_thread(move || {
                let reader = read.storage.read()?;
                Ok((reader.vector()?, reader.log_len()?, reader.heads_len()?))
            })
            .await;
            match stats {
                Ok((vector, log_len, heads)) => {
                    let vector: serde_json::Map<String, serde_json::Value> = vector
                        .iter()
                        .map(|(device, generation)| (device.to_string(), generation.into()))
                        .collect();
                    report["vector"] = vector.into();
                    report["log_len"] = log_len.into();
                    report["heads"] = heads.into();
                }
                Err(error) => report["error"] = shared.storage.locate(error).to_string().into(),
            }
            report
        }))
    }
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("device", &self.shared.device)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Collects garbage; the caller holds `round_gate`.
    fn collect_garbage(&self, evict_after: Duration) -> Result<GcStats, Error> {
        let txn = self.storage.write()?;
        let mut writer = txn.tables()?;
        let ours = writer.vector()?;
        let now_ms = (self.config.clock)();
        let evict_after_ms = u64::try_from(evict_after.as_millis()).unwrap_or(u64::MAX);
        let mut evicted = Vec::new();
        let mut listening = Vec::new();
        for (device, peer) in writer.peers()? {
            if device == self.device {
                continue;
            }
            if now_ms.saturating_sub(peer.last_seen_ms) > evict_after_ms {
                evicted.push(device);
            } else {
                listening.push((device, peer.vector));
            }
        }
        // A generation can go once every device still listened to has it.
        // Devices we hold records of but never heard from cannot be
        // counted on; `heard_of` lists every one, so they hold it back.
        let heard: std::collections::BTreeSet<&DeviceId> = listening
            .iter()
            .map(|(device, _)| device)
            .chain(evicted.iter())
            .collect();
        let mut threshold = GenVector::new();
        for (device, held) in ours.iter() {
            let unknown_author = device != &self.device && !heard.contains(device);
            let everyone = listening
                .iter()
                .map(|(_, vector)| vector.get(device))
                .fold(held, u64::min);
            threshold.raise(device, if unknown_author { 0 } else { everyone });
        }
        let (records_pruned, versions_pruned) = writer.collect(&threshold)?;
        let finished = writer.finish()?;
        txn.commit(finished)?;
        Ok(GcStats {
            records_pruned,
            versions_pruned,
            evicted,
            collected: threshold,
        })
    }

    fn write_local(&self, writes: Vec<Write>) -> Result<(Vec<VersionId>, Vec<Change>), Error> {
        let txn = self.storage.write()?;
        let mut writer = txn.tables()?;
        let timestamp_ms = (self.config.clock)();
        let mut versions = Vec::with_capacity(writes.len());
        let mut changes = Vec::with_capacity(writes.len());
        for (key, value) in writes {
            let (generation, sequence) = writer.open_slot();
            let version = VersionId::of_write(&self.device, generation, sequence);
            let parents = writer
                .head(&key)?
                .map(|head| vec![head.version])
                .unwrap_or_default();
            let record = LogRecord {
                device: self.device.clone(),
                generation,
                sequence,
                key,
                version,
                parents,
                value,
                writer: self.device.clone(),
                timestamp_ms,
            };
            let (log_index, _) = writer.append(&record)?;
            writer.set_head(&record.key, &Head { version, log_index })?;
            writer.fill_slot(generation, sequence);
            if sequence >= self.config.max_generation_records {
                writer.seal(&self.device)?;
            }
            versions.push(version);
            changes.push(Change {
                key: record.key,
                value: record.value,
                version,
                origin: Origin::Local,
            });
        }
        let finished = writer.finish()?;
        txn.commit(finished)?;
        Ok((versions, changes))
    }
}

/// Checks a key and value against [`MAX_KEY_LEN`] and [`MAX_VALUE_LEN`]:
/// the same limits for a local write, a record a peer sends and a merge, so
/// that whatever is stored can be rewritten and deleted here, and sent on.
pub(crate) fn check_limits(key: &[u8], value: Option<&[u8]>) -> Result<(), Error> {
    check_len("key", key.len(), MAX_KEY_LEN)?;
    if let Some(value) = value {
        check_len("value", value.len(), MAX_VALUE_LEN)?;
    }
    Ok(())
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::TooLarge { what, len, max });
    }
    Ok(())
}

/// Runs store work off the async threads (a commit waits for the disk),
/// tracked so that [`Replica::wait`](Worker::wait) sees it, and refused once
/// the replica is killed.
pub(crate) async fn blocking<T: Send + 'static>(
    shared: &Shared,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    joined(start_blocking(shared, work)?).await
}

/// Starts store work as [`blocking`] does, for a caller with something to
/// do before it waits for the result with [`joined`].
pub(crate) fn start_blocking<T: Send + 'static>(
    shared: &Shared,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<T, Error>>, Error> {
    // Counted as work under way before the check: a `kill` and `wait`
    // racing this call then wait for the work it spawns, instead of
    // closing the store under it.
    let _counted = shared.work.token();
    if shared.closing.is_cancelled() {
        return Err(Error::Closed);
    }
    let path = shared.storage.shared_path();
    Ok(shared
        .work
        .spawn_blocking(move || work().map_err(|error| error.located(path.as_ref()))))
}

/// The result of store work started by [`start_blocking`]; a panic in it
/// goes on in the caller.
pub(crate) async fn joined<T>(
    handle: tokio::task::JoinHandle<Result<T, Error>>,
) -> Result<T, Error> {
    handle.await.unwrap_or_else(|join_error| {
        if join_error.is_panic() {
            std::panic::resume_unwind(join_error.into_panic())
        }
        Err(Error::Closed)
    })
}
