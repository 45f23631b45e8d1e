//! [`PingBatcher`]: many pingers' pings, gathered in a sharded concurrent
//! map and written in one store operation per flush; [`PingRecorder`]: what
//! a pinger pings through; [`DirectRecorder`]: a recorder that writes each
//! ping itself.
//!
//! A ping is an insert into a sharded map keyed by (scope, incarnation),
//! keeping the latest slot: it never waits for the store or the flush, and
//! a key that pings many times between two flushes costs one entry. A flush
//! drains the map into the batcher's pending set, merging by the latest
//! slot, and writes the pending set as one [`PingBatch`]: one record per
//! (scope, slot) touched, whatever the number of keys. A failed write keeps
//! the pending set for the next flush; since the store merges pings by set
//! union, writing the same pings twice is harmless.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_core_types::{Name, ReportFuture, TaskWorker, WorkerResult, delegate_worker};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{PingBatch, PresenceStore};
use crate::{Config, Error, Incarnation, Slot, StoreError};

/// Something a [`Pinger`](crate::Pinger) records its pings through: a
/// [`PingBatcher`] in production, a [`DirectRecorder`] (or a test's own)
/// where one write per ping is wanted.
pub trait PingRecorder: Clone + Send + Sync + 'static {
    /// Records that `incarnation` of a key in `scope` is alive now.
    fn record(
        &self,
        scope: &Name,
        incarnation: Incarnation,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Gathers pings from any number of pingers and writes them on a jittered
/// interval, one store operation per flush. Clones are handles to the same
/// batcher; it is a [`Worker`](flotilla_core_types::Worker): killing it
/// makes one last flush (bounded by the config's `store_timeout`) and stops.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{Name, Worker};
/// use flotilla_presence::{Config, MemoryStore, PingBatcher, PresenceStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let store = MemoryStore::new();
/// let config = Config::default();
/// let batcher = PingBatcher::start(store.clone(), config.clone())?;
/// let scope = Name::new("model-1")?;
/// let incarnation = store.begin(&scope, &Name::new("machine-0")?, config.current_slot()).await?;
/// batcher.ping(&scope, incarnation)?;
/// let flushed = batcher.sync().await?;
/// assert_eq!((flushed.records, flushed.pings), (1, 1));
/// batcher.kill();
/// batcher.wait().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PingBatcher {
    pings: Arc<PingMap>,
    config: Arc<Config>,
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<BatcherStatus>,
    task: TaskWorker,
}

delegate_worker!(PingBatcher, task, report = PingBatcher::report);

/// Pings gathered since the last drain: the latest slot each incarnation
/// pinged in, split over shards, each behind its own lock, so that pingers
/// on different threads rarely wait for each other and a drain holds each
/// lock only long enough to swap its map out.
#[derive(Debug)]
struct PingMap {
    hasher: RandomState,
    shards: Box<[Mutex<PingShard>]>,
}

type PingShard = HashMap<(Name, Incarnation), Slot>;

impl PingMap {
    /// Four shards per core, rounded up to a power of two, as sharded maps
    /// usually size themselves.
    fn new() -> PingMap {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let count = (cores * 4).next_power_of_two();
        PingMap {
            hasher: RandomState::new(),
            shards: (0..count).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Keeps the later of `slot` and the slot already recorded for `key`.
    fn record(&self, key: (Name, Incarnation), slot: Slot) {
        let shard = &self.shards[self.shard_of(&key)];
        // A panic while a shard was locked cannot leave its map torn (every
        // update is one insert), so a poisoned lock is safe to use.
        let mut pings = shard.lock().unwrap_or_else(PoisonError::into_inner);
        pings
            .entry(key)
            .and_modify(|latest| *latest = (*latest).max(slot))
            .or_insert(slot);
    }

    /// Takes every ping out, shard by shard.
    fn drain(&self, mut into: impl FnMut((Name, Incarnation), Slot)) {
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
            for (key, slot) in taken {
                into(key, slot);
            }
        }
    }

    fn shard_of(&self, key: &(Name, Incarnation)) -> usize {
        // The shard count is a power of two: the mask keeps the low bits.
        (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)
    }
}

/// How a batcher's flushes are going.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BatcherStatus {
    /// Pings drained from the map and not yet written (kept across failed
    /// flushes). Pings still in the map are not counted.
    pub pending: usize,
    /// Flushes that wrote something.
    pub flushes: u64,
    /// Flushes whose write failed.
    pub failed_flushes: u64,
    /// Failed flushes since the last one that succeeded: above zero, the
    /// batcher is failing and is keeping its pings for the next try.
    pub consecutive_failures: u32,
    /// The error of the last failed flush, cleared when one succeeds.
    pub last_error: Option<StoreError>,
    /// What the last successful flush wrote.
    pub last_flush: Option<FlushReport>,
}

impl BatcherStatus {
    /// Whether the last flush failed.
    pub fn is_failing(&self) -> bool {
        self.consecutive_failures > 0
    }
}

/// What one flush wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// The (scope, slot) records written: the store writes of the flush.
    pub records: usize,
    /// The pings in them.
    pub pings: usize,
}

enum Command {
    Sync(oneshot::Sender<Result<FlushReport, StoreError>>),
}

impl PingBatcher {
    /// Validates `config` and starts a batcher writing to `store`. Must be
    /// called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `config` does not validate.
    pub fn start<S: PresenceStore>(store: S, config: Config) -> Result<PingBatcher, Error> {
        config.validate()?;
        let config = Arc::new(config);
        let pings = Arc::new(PingMap::new());
        let (commands, inbox) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(BatcherStatus::default());
        let actor = Flusher {
            store,
            config: config.clone(),
            pings: pings.clone(),
            pending: HashMap::new(),
            status: status_tx,
            rng: config
                .seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
        };
        let span = tracing::info_span!("presence_batcher");
        let task = TaskWorker::spawn(|stop| actor.run(stop, inbox).instrument(span));
        Ok(PingBatcher {
            pings,
            config,
            commands,
            status,
            task,
        })
    }

    /// Records a ping of `incarnation` in `scope`, in the slot the clock is
    /// in now. Never waits: the ping lands in a sharded map that the next
    /// flush drains.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the batcher is stopping.
    pub fn ping(&self, scope: &Name, incarnation: Incarnation) -> Result<(), Error> {
        if self.task.is_stopping() {
            return Err(Error::Stopped { part: "batcher" });
        }
        let slot = self.config.current_slot();
        self.pings.record((scope.clone(), incarnation), slot);
        Ok(())
    }

    /// Flushes now and returns once the pings gathered so far are written.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the write failed (the pings are kept for the
    /// next flush), [`Error::Stopped`] if the batcher has stopped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the flush it asked for.
    pub async fn sync(&self) -> Result<FlushReport, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Sync(reply))
            .map_err(|_| Error::Stopped { part: "batcher" })?;
        let written = answer
            .await
            .map_err(|_| Error::Stopped { part: "batcher" })?;
        Ok(written?)
    }

    /// How its flushes are going now.
    pub fn status(&self) -> BatcherStatus {
        self.status.borrow().clone()
    }

    /// Waits until its status changes, then returns the new one; `None`
    /// once the batcher has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn changed(&mut self) -> Option<BatcherStatus> {
        self.status.changed().await.ok()?;
        Some(self.status())
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let status = self.status();
        let state = self.task.state();
        Some(Box::pin(async move {
            serde_json::json!({
                "state": state,
                "pending": status.pending,
                "flushes": status.flushes,
                "failed_flushes": status.failed_flushes,
                "consecutive_failures": status.consecutive_failures,
                "last_error": status.last_error.map(|error| error.to_string()),
            })
        }))
    }
}

impl PingRecorder for PingBatcher {
    async fn record(&self, scope: &Name, incarnation: Incarnation) -> Result<(), Error> {
        self.ping(scope, incarnation)
    }
}

/// The batcher's task: owns the pending pings and writes them.
struct Flusher<S> {
    store: S,
    config: Arc<Config>,
    pings: Arc<PingMap>,
    /// Drained and not yet written: the latest slot of each incarnation.
    pending: HashMap<(Name, Incarnation), Slot>,
    status: watch::Sender<BatcherStatus>,
    rng: fastrand::Rng,
}

impl<S: PresenceStore> Flusher<S> {
    async fn run(
        mut self,
        stop: CancellationToken,
        mut inbox: mpsc::UnboundedReceiver<Command>,
    ) -> WorkerResult {
        let mut next_flush = Instant::now() + self.flush_delay();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = sleep_until(next_flush) => {
                    // A failure is kept in the status and retried next time.
                    let _ = self.flush().await;
                    next_flush = Instant::now() + self.flush_delay();
                }
                Some(command) = inbox.recv() => match command {
                    Command::Sync(reply) => {
                        let _ = reply.send(self.flush().await);
                    }
                },
            }
        }
        // Pings a pinger made before stopping should reach the store.
        if let Err(error) = self.flush().await {
            tracing::warn!(%error, pending = self.pending.len(), "last flush failed; its pings are lost");
        }
        Ok(())
    }

    fn flush_delay(&mut self) -> Duration {
        let spread = self.config.flush_jitter * (self.rng.f64() * 2.0 - 1.0);
        self.config.flush_interval.mul_f64(1.0 + spread)
    }

    async fn flush(&mut self) -> Result<FlushReport, StoreError> {
        let pending = &mut self.pending;
        self.pings.drain(|key, slot| {
            let latest = pending.entry(key).or_insert(slot);
            *latest = (*latest).max(slot);
        });
        if self.pending.is_empty() {
            return Ok(FlushReport::default());
        }
        let mut batch = PingBatch::new();
        for ((scope, incarnation), slot) in &self.pending {
            batch.add(scope, *slot, *incarnation);
        }
        let report = FlushReport {
            records: batch.record_count(),
            pings: batch.ping_count(),
        };
        let written = match timeout(self.config.store_timeout, self.store.write_pings(&batch)).await
        {
            Ok(written) => written,
            Err(_elapsed) => Err(StoreError::unavailable(
                "write_pings",
                TimedOut(self.config.store_timeout),
            )),
        };
        match written {
            Ok(()) => {
                self.pending.clear();
                self.status.send_modify(|status| {
                    status.pending = 0;
                    status.flushes += 1;
                    status.consecutive_failures = 0;
                    status.last_error = None;
                    status.last_flush = Some(report);
                });
                tracing::trace!(records = report.records, pings = report.pings, "flushed");
                Ok(report)
            }
            Err(error) => {
                tracing::warn!(%error, pending = self.pending.len(), "flush failed; keeping its pings");
                let pending = self.pending.len();
                self.status.send_modify(|status| {
                    status.pending = pending;
                    status.failed_flushes += 1;
                    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                    status.last_error = Some(error.clone());
                });
                Err(error)
            }
        }
    }
}

/// A store operation that took longer than the config's `store_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(crate) struct TimedOut(pub(crate) Duration);

/// A recorder that writes each ping to the store itself, one write per
/// ping: for tests, and for a process with a handful of keys that wants no
/// batcher task.
#[derive(Debug, Clone)]
pub struct DirectRecorder<S> {
    store: S,
    config: Arc<Config>,
}

impl<S: PresenceStore> DirectRecorder<S> {
    /// A recorder writing to `store`, reading slots as `config` says.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `config` does not validate.
    pub fn new(store: S, config: Config) -> Result<DirectRecorder<S>, Error> {
        config.validate()?;
        Ok(DirectRecorder {
            store,
            config: Arc::new(config),
        })
    }
}

impl<S: PresenceStore> PingRecorder for DirectRecorder<S> {
    async fn record(&self, scope: &Name, incarnation: Incarnation) -> Result<(), Error> {
        let mut batch = PingBatch::new();
        batch.add(scope, self.config.current_slot(), incarnation);
        match timeout(self.config.store_timeout, self.store.write_pings(&batch)).await {
            Ok(written) => Ok(written?),
            Err(_elapsed) => Err(StoreError::unavailable(
                "write_pings",
                TimedOut(self.config.store_timeout),
            )
            .into()),
        }
    }
}
