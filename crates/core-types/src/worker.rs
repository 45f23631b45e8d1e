//! The `Worker` contract and the error a worker ends with.
//!
//! A worker is anything long-lived that runs on its own: it is asked to stop
//! with [`Worker::kill`], which returns at once, and reports how it ended with
//! [`Worker::wait`], which any number of callers may await, any number of
//! times, each seeing the same result. Because the result is shared,
//! [`WorkerError`] is cheap to clone and keeps the original error (and its
//! `source` chain) behind an `Arc`.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future returned by [`Worker::wait`].
pub type WaitFuture<'a> = Pin<Box<dyn Future<Output = WorkerResult> + Send + 'a>>;

/// The future returned by [`Worker::report`].
pub type ReportFuture<'a> = Pin<Box<dyn Future<Output = serde_json::Value> + Send + 'a>>;

/// How a worker ended: `Ok(())` for a clean stop.
pub type WorkerResult = Result<(), WorkerError>;

/// The contract every long-lived Flotilla component honours.
///
/// The trait is object-safe: supervisors hold workers as `Arc<dyn Worker>`.
///
/// Implementations must make these promises:
/// - `kill` returns at once, never blocks, and may be called any number of
///   times, before or after the worker has ended.
/// - `wait` resolves once the worker has ended and released what it owns (no
///   task of the worker is left running); every call returns the same result.
/// - A worker ends by itself (with `Ok` or an error) or because it was killed;
///   a worker that was killed and stopped cleanly returns `Ok(())`.
///
/// [`TaskWorker`](crate::TaskWorker) keeps all of these for you.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{TaskWorker, Worker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let worker = TaskWorker::spawn(|stop| async move {
///     stop.cancelled().await; // run until asked to stop
///     Ok(())
/// });
/// let as_object: Box<dyn Worker> = Box::new(worker);
/// as_object.kill();
/// assert!(as_object.wait().await.is_ok());
/// # }
/// ```
pub trait Worker: Send + Sync + 'static {
    /// Asks the worker to stop. Returns at once; calling it again does nothing.
    fn kill(&self);

    /// Waits until the worker has ended, and returns how.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the worker untouched, and a new
    /// call waits again.
    fn wait(&self) -> WaitFuture<'_>;

    /// A snapshot of the worker's own state for diagnostics, if it offers one.
    ///
    /// Supervisors call this with a deadline, so an implementation that takes
    /// locks or talks to the network cannot hang a whole report. The default
    /// offers none.
    fn report(&self) -> Option<ReportFuture<'_>> {
        None
    }
}

impl<W: Worker + ?Sized> Worker for Arc<W> {
    fn kill(&self) {
        (**self).kill();
    }

    fn wait(&self) -> WaitFuture<'_> {
        (**self).wait()
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        (**self).report()
    }
}

impl<W: Worker + ?Sized> Worker for Box<W> {
    fn kill(&self) {
        (**self).kill();
    }

    fn wait(&self) -> WaitFuture<'_> {
        (**self).wait()
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        (**self).report()
    }
}

/// Why a worker ended other than cleanly.
///
/// Cloning is cheap: the error a worker failed with sits behind an `Arc`, so
/// every waiter sees the very same value and can [`downcast_ref`] it.
///
/// [`downcast_ref`]: WorkerError::downcast_ref
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker's code panicked; the message is the panic's payload.
    #[error("worker panicked: {message}")]
    Panicked {
        /// The panic message, or a placeholder when the payload was not text.
        message: String,
    },
    /// The worker's task was dropped before it recorded a result, as happens
    /// when the tokio runtime shuts down under it.
    #[error("worker vanished: its task was dropped before it recorded how it ended")]
    Vanished,
    /// The worker failed with an error of its own.
    #[error(transparent)]
    Failed(Arc<dyn StdError + Send + Sync + 'static>),
}

impl WorkerError {
    /// Wraps an error the worker failed with.
    pub fn new<E>(error: E) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        WorkerError::Failed(Arc::new(error))
    }

    /// A failure described only by a message.
    pub fn msg(message: impl Into<String>) -> Self {
        WorkerError::new(MessageError(message.into()))
    }

    /// Whether the worker panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, WorkerError::Panicked { .. })
    }

    /// The error the worker failed with, if it is of type `E`.
    ///
    /// Looks only at the outermost error; see [`find`](Self::find) to search
    /// the `source` chain too.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            WorkerError::Failed(inner) => inner.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// The first error of type `E` in the chain made of the failure and its
    /// `source`s.
    pub fn find<E: StdError + 'static>(&self) -> Option<&E> {
        let WorkerError::Failed(inner) = self else {
            return None;
        };
        let mut current: Option<&(dyn StdError + 'static)> = Some(&**inner);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<E>() {
                return Some(found);
            }
            current = error.source();
        }
        None
    }

    /// Turns a panic payload (as caught by `catch_unwind` or found in a
    /// tokio `JoinError`) into [`WorkerError::Panicked`].
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&'static str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "panic payload is not a string".to_owned()
        };
        WorkerError::Panicked { message }
    }
}

impl fmt::Debug for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerError::Panicked { message } => f
                .debug_struct("Panicked")
                .field("message", message)
                .finish(),
            WorkerError::Vanished => f.write_str("Vanished"),
            WorkerError::Failed(inner) => f.debug_tuple("Failed").field(inner).finish(),
        }
    }
}

/// A failure that is only a message.
#[derive(Debug)]
struct MessageError(String);

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for MessageError {}

/// So that `Name::new(text)?` works in a worker or a supervisor's start
/// function.
impl From<crate::InvalidId> for WorkerError {
    fn from(error: crate::InvalidId) -> Self {
        WorkerError::new(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error, PartialEq)]
    #[error("inner {0}")]
    struct Inner(u32);

    #[test]
    fn downcast_sees_only_the_outermost_error_and_find_walks_the_chain() {
        let error = WorkerError::new(Outer(Inner(7)));
        assert!(error.downcast_ref::<Outer>().is_some());
        assert!(error.downcast_ref::<Inner>().is_none());
        assert_eq!(error.find::<Inner>(), Some(&Inner(7)));
        assert_eq!(error.to_string(), "outer");
    }

    #[test]
    fn an_invalid_id_converts_with_question_mark() {
        fn start(text: &str) -> Result<crate::Name, WorkerError> {
            Ok(crate::Name::new(text)?)
        }
        let error = start("not a name!").expect_err("invalid");
        assert!(error.downcast_ref::<crate::InvalidId>().is_some());
        assert!(start("fine").is_ok());
    }

    #[test]
    fn panic_payloads_become_messages() {
        let text: Box<dyn std::any::Any + Send> = Box::new("boom");
        let owned: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        let other: Box<dyn std::any::Any + Send> = Box::new(42_u8);
        assert_eq!(
            WorkerError::from_panic(&*text).to_string(),
            "worker panicked: boom"
        );
        assert_eq!(
            WorkerError::from_panic(&*owned).to_string(),
            "worker panicked: bang"
        );
        assert!(WorkerError::from_panic(&*other).is_panic());
    }

    #[test]
    fn message_errors_display_their_message_and_clone_cheaply() {
        let error = WorkerError::msg("disk full");
        let copy = error.clone();
        assert_eq!(copy.to_string(), "disk full");
        assert!(format!("{copy:?}").contains("disk full"));
    }
}
