//! [`delegate_worker!`](crate::delegate_worker): a type is a [`Worker`] by
//! way of one of its fields.
//!
//! Most long-lived components are a handle around one [`TaskWorker`] (or
//! another worker) plus the channels that drive it; their `Worker` impl only
//! forwards to that field. The macro writes that impl once, the same way
//! everywhere, so a new crate does not repeat it.
//!
//! [`Worker`]: crate::Worker
//! [`TaskWorker`]: crate::TaskWorker

/// Implements [`Worker`](crate::Worker) for `$type` by forwarding
/// [`kill`](crate::Worker::kill), [`wait`](crate::Worker::wait) and
/// [`report`](crate::Worker::report) to its field `$field`, which must itself
/// be a `Worker` (a [`TaskWorker`](crate::TaskWorker), an `Arc<dyn Worker>`,
/// another component).
///
/// With `report = path`, the report comes from `path(&self)` instead, a
/// function `fn(&$type) -> Option<ReportFuture<'_>>`, while kill and wait
/// still go to the field.
///
/// `$type` is a type without generic parameters; a generic type writes its
/// impl by hand.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{ReportFuture, TaskWorker, Worker, delegate_worker};
///
/// /// A handle to a counter task: the task is the worker.
/// struct Counter {
///     task: TaskWorker,
///     count: u64,
/// }
/// delegate_worker!(Counter, task);
///
/// /// The same, reporting its count.
/// struct ReportingCounter {
///     task: TaskWorker,
///     count: u64,
/// }
/// impl ReportingCounter {
///     fn report(&self) -> Option<ReportFuture<'_>> {
///         let count = self.count;
///         Some(Box::pin(async move { serde_json::json!({ "count": count }) }))
///     }
/// }
/// delegate_worker!(ReportingCounter, task, report = ReportingCounter::report);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let idle = || TaskWorker::spawn(|stop| async move {
///     stop.cancelled().await;
///     Ok(())
/// });
/// let counter = Counter { task: idle(), count: 0 };
/// // The task's own report: its state.
/// let report = Worker::report(&counter).expect("reports").await;
/// assert_eq!(report["state"], "running");
/// counter.kill();
/// assert!(counter.wait().await.is_ok());
///
/// let reporting = ReportingCounter { task: idle(), count: 3 };
/// let report = Worker::report(&reporting).expect("reports").await;
/// assert_eq!(report["count"], 3);
/// reporting.kill();
/// assert!(reporting.wait().await.is_ok());
/// # let _ = counter.count;
/// # }
/// ```
#[macro_export]
macro_rules! delegate_worker {
    ($type:ty, $field:ident) => {
        $crate::delegate_worker!(@impl $type, $field, this => $crate::Worker::report(&this.$field));
    };
    ($type:ty, $field:ident, report = $report:path) => {
        $crate::delegate_worker!(@impl $type, $field, this => $report(this));
    };
    (@impl $type:ty, $field:ident, $this:ident => $report:expr) => {
        impl $crate::Worker for $type {
            fn kill(&self) {
                $crate::Worker::kill(&self.$field);
            }

            fn wait(&self) -> $crate::WaitFuture<'_> {
                $crate::Worker::wait(&self.$field)
            }

            fn report(&self) -> ::core::option::Option<$crate::ReportFuture<'_>> {
                let $this = self;
                $report
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::{ReportFuture, TaskWorker, WaitFuture, Worker};

    /// A worker that counts the calls it gets, to prove each is forwarded.
    #[derive(Default)]
    struct Counting {
        kills: AtomicUsize,
        waits: AtomicUsize,
        reports: AtomicUsize,
    }

    impl Worker for Counting {
        fn kill(&self) {
            self.kills.fetch_add(1, Ordering::SeqCst);
        }

        fn wait(&self) -> WaitFuture<'_> {
            self.waits.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }

        fn report(&self) -> Option<ReportFuture<'_>> {
            self.reports.fetch_add(1, Ordering::SeqCst);
            Some(Box::pin(async { serde_json::json!("inner") }))
        }
    }

    struct Forwarding {
        inner: Arc<Counting>,
    }
    delegate_worker!(Forwarding, inner);

    struct OwnReport {
        inner: Arc<Counting>,
    }
    impl OwnReport {
        fn own_report(&self) -> Option<ReportFuture<'_>> {
            Some(Box::pin(async { serde_json::json!("own") }))
        }
    }
    delegate_worker!(OwnReport, inner, report = OwnReport::own_report);

    struct OverTask {
        task: TaskWorker,
    }
    delegate_worker!(OverTask, task);

    #[tokio::test]
    async fn every_call_reaches_the_field() {
        let inner = Arc::new(Counting::default());
        let handle = Forwarding {
            inner: Arc::clone(&inner),
        };
        handle.kill();
        handle.wait().await.expect("ends cleanly");
        let report = handle.report().expect("forwarded").await;
        assert_eq!(report, serde_json::json!("inner"));
        assert_eq!(inner.kills.load(Ordering::SeqCst), 1);
        assert_eq!(inner.waits.load(Ordering::SeqCst), 1);
        assert_eq!(inner.reports.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_report_of_its_own_replaces_the_fields() {
        let inner = Arc::new(Counting::default());
        let handle = OwnReport {
            inner: Arc::clone(&inner),
        };
        let report = handle.report().expect("own report").await;
        assert_eq!(report, serde_json::json!("own"));
        assert_eq!(inner.reports.load(Ordering::SeqCst), 0);
        handle.kill();
        assert_eq!(inner.kills.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_task_worker_field_stops_when_the_handle_is_killed() {
        let handle = OverTask {
            task: TaskWorker::spawn(|stop| async move {
                stop.cancelled().await;
                Err(crate::WorkerError::msg("stopped on request"))
            }),
        };
        handle.kill();
        let error = handle.wait().await.expect_err("the task's own result");
        assert_eq!(error.to_string(), "stopped on request");
        let report = handle.report().expect("the task reports").await;
        assert_eq!(report["state"], "failed: stopped on request");
    }
}
