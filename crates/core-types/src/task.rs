//! [`TaskWorker`]: the `Worker` contract implemented by one tokio task.
//!
//! The task runs a future built from a [`CancellationToken`]; the future is
//! expected to return soon after that token is cancelled. When the future
//! ends (by returning or by panicking) the task drops it, cancels the token
//! so that anything it spawned with child tokens stops too, and records the
//! result in a `watch` channel that every `wait` reads. A task dropped by the
//! runtime before it recorded anything reads as [`WorkerError::Vanished`].

use std::fmt;
use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{ReportFuture, WaitFuture, Worker, WorkerError, WorkerResult, catch_panic};

/// A worker made of one tokio task. Cheap to clone; every clone is a handle
/// to the same task.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{TaskWorker, Worker, WorkerError};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // A worker that ticks until it is asked to stop.
/// let ticker = TaskWorker::spawn(|stop| async move {
///     let mut interval = tokio::time::interval(Duration::from_secs(1));
///     loop {
///         tokio::select! {
///             _ = stop.cancelled() => return Ok(()),
///             _ = interval.tick() => {}
///         }
///     }
/// });
/// ticker.kill();
/// assert!(ticker.wait().await.is_ok());
///
/// // A worker that fails on its own.
/// let failing = TaskWorker::spawn(|_stop| async { Err(WorkerError::msg("no disk")) });
/// assert_eq!(failing.wait().await.unwrap_err().to_string(), "no disk");
/// # }
/// ```
#[derive(Clone)]
pub struct TaskWorker {
    stop: CancellationToken,
    outcome: watch::Receiver<Option<WorkerResult>>,
}

impl TaskWorker {
    /// Spawns `run(stop)` as a new task on the current tokio runtime.
    ///
    /// The task runs in the caller's tracing span.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = WorkerResult> + Send + 'static,
    {
        Self::spawn_with_token(CancellationToken::new(), run)
    }

    /// Like [`spawn`](Self::spawn), with a token of the caller's. Passing a
    /// parent's `child_token()` makes the worker stop when the parent does.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn_with_token<F, Fut>(stop: CancellationToken, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = WorkerResult> + Send + 'static,
    {
        let (record, outcome) = watch::channel(None);
        let future = run(stop.clone());
        let stop_when_done = stop.clone();
        tokio::spawn(
            async move {
                let result = catch_panic(future).await.and_then(|result| result);
                stop_when_done.cancel();
                record.send_replace(Some(result));
            }
            .in_current_span(),
        );
        TaskWorker { stop, outcome }
    }

    /// Whether the worker has been asked to stop, or has ended.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Its state in a word, as its report says it: `running`, `stopping`
    /// (asked to stop, not yet stopped), `stopped`, or `failed: ` and the
    /// error. For the reports of workers built on a `TaskWorker`.
    pub fn state(&self) -> String {
        match self.result() {
            None if self.is_stopping() => "stopping".to_owned(),
            None => "running".to_owned(),
            Some(Ok(())) => "stopped".to_owned(),
            Some(Err(error)) => format!("failed: {error}"),
        }
    }

    /// How the worker ended, or `None` while it is still running.
    pub fn result(&self) -> Option<WorkerResult> {
        self.outcome.borrow().clone()
    }
}

impl Worker for TaskWorker {
    fn kill(&self) {
        self.stop.cancel();
    }

    fn wait(&self) -> WaitFuture<'_> {
        let mut outcome = self.outcome.clone();
        Box::pin(async move {
            match outcome.wait_for(Option::is_some).await {
                Ok(result) => result.clone().unwrap_or(Err(WorkerError::Vanished)),
                Err(_closed) => Err(WorkerError::Vanished),
            }
        })
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let state = self.state();
        Some(Box::pin(
            async move { serde_json::json!({ "state": state }) },
        ))
    }
}

impl fmt::Debug for TaskWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskWorker")
            .field("stopping", &self.is_stopping())
            .field("result", &self.result())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn kill_stops_a_worker_that_honours_its_token() {
        let worker = TaskWorker::spawn(|stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        assert!(worker.result().is_none());
        worker.kill();
        worker.kill(); // idempotent
        assert!(worker.wait().await.is_ok());
        assert!(worker.is_stopping());
    }

    #[tokio::test]
    async fn every_wait_sees_the_same_failure() {
        let worker = TaskWorker::spawn(|_| async { Err(WorkerError::msg("broken")) });
        let first = worker.wait().await.expect_err("fails").to_string();
        let second = worker.clone().wait().await.expect_err("fails").to_string();
        assert_eq!(first, "broken");
        assert_eq!(second, "broken");
    }

    #[tokio::test]
    async fn a_panic_becomes_an_error_and_the_future_is_dropped_before_wait_returns() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        fn explode() {
            panic!("kaboom")
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = SetOnDrop(dropped.clone());
        let worker = TaskWorker::spawn(move |_| async move {
            let _guard = guard;
            tokio::task::yield_now().await;
            explode();
            Ok(())
        });
        let error = worker.wait().await.expect_err("panics");
        assert!(error.is_panic());
        assert_eq!(error.to_string(), "worker panicked: kaboom");
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn ending_cancels_the_token_so_children_stop() {
        let child_stopped = Arc::new(AtomicBool::new(false));
        let seen = child_stopped.clone();
        let worker = TaskWorker::spawn(move |stop| async move {
            let child = stop.child_token();
            tokio::spawn(async move {
                child.cancelled().await;
                seen.store(true, Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(WorkerError::msg("done early"))
        });
        assert!(worker.wait().await.is_err());
        tokio::task::yield_now().await;
        assert!(child_stopped.load(Ordering::SeqCst));
    }

    #[test]
    fn a_worker_whose_runtime_is_gone_reads_as_vanished() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds");
        let worker = runtime.block_on(async {
            TaskWorker::spawn(|stop| async move {
                stop.cancelled().await;
                Ok(())
            })
        });
        drop(runtime);
        let waiter = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds");
        let result = waiter.block_on(worker.wait());
        assert!(matches!(result, Err(WorkerError::Vanished)));
    }

    #[tokio::test]
    async fn report_tells_the_state() {
        let worker = TaskWorker::spawn(|stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        let running = worker.report().expect("task workers report").await;
        assert_eq!(running["state"], "running");
        worker.kill();
        worker.wait().await.expect("clean stop");
        let stopped = worker.report().expect("task workers report").await;
        assert_eq!(stopped["state"], "stopped");
        assert_eq!(worker.state(), "stopped");
    }

    #[tokio::test]
    async fn state_words_stopping_and_failure() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let slow = TaskWorker::spawn(|stop| async move {
            stop.cancelled().await;
            let _ = released.await;
            Ok(())
        });
        slow.kill();
        assert_eq!(slow.state(), "stopping");
        let _ = release.send(());
        slow.wait().await.expect("clean stop");
        assert_eq!(slow.state(), "stopped");

        let failing = TaskWorker::spawn(|_| async {
            Err(WorkerError::new(std::io::Error::other("disk gone")))
        });
        let _ = failing.wait().await;
        assert_eq!(failing.state(), "failed: disk gone");
    }
}
