//! [`Pinger`]: keeps one key alive while it runs.
//!
//! Starting a pinger allocates a new incarnation of its key from the store
//! (the birth counts as a first ping), then pings through its recorder every
//! ping interval. Killing it stops the pings and writes the incarnation's
//! tombstone, so watchers see a graceful stop on their next load;
//! [`abort`](Pinger::abort) stops the pings and writes nothing, as a crash
//! would, and the key expires within the death bound.

use std::sync::Arc;

use flotilla_core_types::{Name, ReportFuture, TaskWorker, Worker, WorkerResult, delegate_worker};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batcher::{PingRecorder, TimedOut};
use crate::store::PresenceStore;
use crate::{Config, Error, Incarnation, StoreError};

/// Keeps a key alive while it runs; a [`Worker`] (killing it is a graceful
/// stop). Clones are handles to the same pinger.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{Name, Worker};
/// use flotilla_presence::{Config, MemoryStore, PingBatcher, Pinger, PresenceStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let store = MemoryStore::new();
/// let config = Config::default();
/// let batcher = PingBatcher::start(store.clone(), config.clone())?;
/// let (scope, key) = (Name::new("model-1")?, Name::new("machine-0")?);
/// let pinger = Pinger::start(store.clone(), batcher.clone(), scope.clone(), key.clone(), config.clone()).await?;
/// let since = config.current_slot().previous();
/// assert!(store.load(&scope, &[key.clone()], since).await?[&key].alive());
///
/// pinger.kill();
/// pinger.wait().await?;
/// let record = store.load(&scope, &[key.clone()], since).await?[&key];
/// assert!(record.stopped && !record.alive());
/// # batcher.kill();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Pinger {
    scope: Name,
    key: Name,
    incarnation: Incarnation,
    abort: CancellationToken,
    task: TaskWorker,
}

delegate_worker!(Pinger, task, report = Pinger::report);

impl Pinger {
    /// Validates `config`, allocates a new incarnation of `key` in `scope`
    /// from `store`, and starts pinging it through `recorder`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `config` does not validate;
    /// [`Error::Store`] if the incarnation could not be allocated.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped after the store allocated the incarnation,
    /// that incarnation was born and expires like a crashed one.
    pub async fn start<S: PresenceStore, R: PingRecorder>(
        store: S,
        recorder: R,
        scope: Name,
        key: Name,
        config: Config,
    ) -> Result<Pinger, Error> {
        config.validate()?;
        let begin = store.begin(&scope, &key, config.current_slot());
        let incarnation = match timeout(config.store_timeout, begin).await {
            Ok(incarnation) => incarnation?,
            Err(_elapsed) => {
                return Err(
                    StoreError::unavailable("begin", TimedOut(config.store_timeout)).into(),
                );
            }
        };
        let abort = CancellationToken::new();
        let pings = Pings {
            store,
            recorder,
            scope: scope.clone(),
            incarnation,
            config: Arc::new(config),
            abort: abort.clone(),
        };
        let span = tracing::info_span!("presence_pinger", scope = %scope, key = %key, incarnation = incarnation.0);
        let task = TaskWorker::spawn(|stop| pings.run(stop).instrument(span));
        Ok(Pinger {
            scope,
            key,
            incarnation,
            abort,
            task,
        })
    }

    /// The incarnation this pinger keeps alive.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The key it keeps alive.
    pub fn key(&self) -> &Name {
        &self.key
    }

    /// The scope of its key.
    pub fn scope(&self) -> &Name {
        &self.scope
    }

    /// Stops pinging without writing a tombstone, as a crash would: the
    /// key is reported expired within the death bound. [`wait`](Worker::wait)
    /// reports how it ended.
    pub fn abort(&self) {
        self.abort.cancel();
        self.task.kill();
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let state = self.task.state();
        let (scope, key, incarnation) = (
            self.scope.to_string(),
            self.key.to_string(),
            self.incarnation.0,
        );
        Some(Box::pin(async move {
            serde_json::json!({ "state": state, "scope": scope, "key": key, "incarnation": incarnation })
        }))
    }
}

/// The pinger's task.
struct Pings<S, R> {
    store: S,
    recorder: R,
    scope: Name,
    incarnation: Incarnation,
    config: Arc<Config>,
    abort: CancellationToken,
}

impl<S: PresenceStore, R: PingRecorder> Pings<S, R> {
    async fn run(self, stop: CancellationToken) -> WorkerResult {
        let interval = self.config.effective_ping_interval();
        let mut next_ping = Instant::now() + interval;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = sleep_until(next_ping) => {
                    next_ping += interval;
                    match self.recorder.record(&self.scope, self.incarnation).await {
                        Ok(()) => {}
                        Err(error @ Error::Stopped { .. }) => return Err(error.into()),
                        Err(error) => tracing::warn!(%error, "ping failed; trying again next interval"),
                    }
                }
            }
        }
        if self.abort.is_cancelled() {
            return Ok(());
        }
        let stopped = self.store.mark_stopped(&self.scope, self.incarnation);
        match timeout(self.config.store_timeout, stopped).await {
            Ok(written) => written.map_err(|error| Error::Store(error).into()),
            Err(_elapsed) => Err(Error::from(StoreError::unavailable(
                "mark_stopped",
                TimedOut(self.config.store_timeout),
            ))
            .into()),
        }
    }
}
