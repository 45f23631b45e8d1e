//! [`Pruner`]: keeps a store's records proportional to its live keys.
//!
//! Every prune interval it asks the store to remove what no reader will
//! consult again ([`PruneRule`]): readers read the current and the previous
//! slot, so slot records older than two slots back go (one slot of margin
//! for a load in flight across a slot boundary); superseded incarnations
//! go; and keys dead for longer than `forget_dead_after` are forgotten.

use flotilla_core_types::{ReportFuture, TaskWorker, WorkerResult, delegate_worker};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batcher::TimedOut;
use crate::store::{PresenceStore, PruneReport, PruneRule};
use crate::{Config, Error, Slot, StoreError};

/// Prunes a store on an interval; a [`Worker`](flotilla_core_types::Worker).
/// Clones are handles to the same pruner.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{Name, Worker};
/// use flotilla_presence::{Config, MemoryStore, PresenceStore, Pruner};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let store = MemoryStore::new();
/// let config = Config::default();
/// let (scope, key) = (Name::new("model-1")?, Name::new("machine-0")?);
/// let now = config.current_slot();
/// store.begin(&scope, &key, now).await?;
/// store.begin(&scope, &key, now).await?; // a restart supersedes the first
/// let pruner = Pruner::start(store.clone(), config)?;
/// assert_eq!(pruner.prune_now().await?.incarnations, 1);
/// assert_eq!(store.counts(&scope).incarnations, 1);
/// pruner.kill();
/// pruner.wait().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Pruner {
    commands: mpsc::UnboundedSender<oneshot::Sender<Result<PruneReport, StoreError>>>,
    status: watch::Receiver<PrunerStatus>,
    task: TaskWorker,
}

delegate_worker!(Pruner, task, report = Pruner::report);

/// What a pruner has done.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PrunerStatus {
    /// Prunes that succeeded.
    pub prunes: u64,
    /// Prunes that failed.
    pub failed_prunes: u64,
    /// Everything removed so far.
    pub removed: PruneReport,
    /// The error of the last failed prune, cleared when one succeeds.
    pub last_error: Option<StoreError>,
}

impl Pruner {
    /// Validates `config` and starts pruning `store` every prune interval.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `config` does not validate.
    pub fn start<S: PresenceStore>(store: S, config: Config) -> Result<Pruner, Error> {
        config.validate()?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(PrunerStatus::default());
        let span = tracing::info_span!("presence_pruner");
        let task =
            TaskWorker::spawn(|stop| run(store, config, stop, inbox, status_tx).instrument(span));
        Ok(Pruner {
            commands,
            status,
            task,
        })
    }

    /// Prunes now, and says what it removed.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store failed; [`Error::Stopped`] if the
    /// pruner has stopped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the prune it asked for.
    pub async fn prune_now(&self) -> Result<PruneReport, Error> {
        let stopped = || Error::Stopped { part: "pruner" };
        let (reply, answer) = oneshot::channel();
        self.commands.send(reply).map_err(|_| stopped())?;
        Ok(answer.await.map_err(|_| stopped())??)
    }

    /// What it has done so far.
    pub fn status(&self) -> PrunerStatus {
        self.status.borrow().clone()
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let status = self.status();
        let state = self.task.state();
        Some(Box::pin(async move {
            serde_json::json!({
                "state": state,
                "prunes": status.prunes,
                "failed_prunes": status.failed_prunes,
                "removed_incarnations": status.removed.incarnations,
                "removed_slots": status.removed.slots,
            })
        }))
    }
}

/// The rule for a prune when the clock is in slot `now`.
pub(crate) fn rule_at(now: Slot, config: &Config) -> PruneRule {
    let slot_nanos = config.slot_length.as_nanos().max(1);
    let forget_slots = config.forget_dead_after.as_nanos().div_ceil(slot_nanos);
    let forget_slots = u64::try_from(forget_slots).unwrap_or(u64::MAX);
    PruneRule {
        keep_slots_from: Slot(now.0.saturating_sub(2)),
        forget_dead_before: Slot(now.0.saturating_sub(forget_slots)),
    }
}

async fn run<S: PresenceStore>(
    store: S,
    config: Config,
    stop: CancellationToken,
    mut inbox: mpsc::UnboundedReceiver<oneshot::Sender<Result<PruneReport, StoreError>>>,
    status: watch::Sender<PrunerStatus>,
) -> WorkerResult {
    let interval = config.effective_prune_interval();
    let mut next_prune = Instant::now() + interval;
    let prune = || async {
        let rule = rule_at(config.current_slot(), &config);
        let pruned = match timeout(config.store_timeout, store.prune(rule)).await {
            Ok(pruned) => pruned,
            Err(_elapsed) => Err(StoreError::unavailable(
                "prune",
                TimedOut(config.store_timeout),
            )),
        };
        status.send_modify(|status| match &pruned {
            Ok(report) => {
                status.prunes += 1;
                status.removed.slots += report.slots;
                status.removed.incarnations += report.incarnations;
                status.removed.tombstones += report.tombstones;
                status.last_error = None;
            }
            Err(error) => {
                tracing::warn!(%error, "prune failed; trying again next interval");
                status.failed_prunes += 1;
                status.last_error = Some(error.clone());
            }
        });
        pruned
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = sleep_until(next_prune) => {
                let _ = prune().await;
                next_prune = Instant::now() + interval;
            }
            Some(reply) = inbox.recv() => {
                let _ = reply.send(prune().await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rule_keeps_two_slots_back_and_forgets_after_the_configured_time() {
        let config = Config {
            slot_length: Duration::from_secs(30),
            forget_dead_after: Duration::from_secs(61),
            ..Config::default()
        };
        let rule = rule_at(Slot(100), &config);
        assert_eq!(rule.keep_slots_from, Slot(98));
        assert_eq!(rule.forget_dead_before, Slot(97));
        let early = rule_at(Slot(1), &config);
        assert_eq!(
            (early.keep_slots_from, early.forget_dead_before),
            (Slot(0), Slot(0))
        );
    }
}
