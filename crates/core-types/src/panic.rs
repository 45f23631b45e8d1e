//! Turning a panic inside a future into a [`WorkerError`].
//!
//! A supervisor must survive the code it runs: a worker that panics is a
//! worker that failed, with the panic message as its error.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::Poll;

use crate::WorkerError;

/// Runs `future` to completion, turning a panic in any of its polls into
/// [`WorkerError::Panicked`].
///
/// The future is treated as unwind-safe: after a panic it is dropped and never
/// polled again, and the caller only sees the error, so no broken invariant
/// can be observed through it.
///
/// # Example
///
/// ```
/// use flotilla_core_types::catch_panic;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// fn explode() {
///     panic!("boom")
/// }
///
/// let failed = catch_panic(async { explode() }).await;
/// assert_eq!(failed.unwrap_err().to_string(), "worker panicked: boom");
/// # }
/// ```
///
/// # Cancel safety
///
/// Exactly as cancel safe as `future`: dropping this drops it.
pub async fn catch_panic<F: Future>(future: F) -> Result<F::Output, WorkerError> {
    let mut future = pin!(future);
    std::future::poll_fn(move |cx| {
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(WorkerError::from_panic(&*payload))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_output_through() {
        assert_eq!(catch_panic(async { 5 }).await.ok(), Some(5));
    }

    #[tokio::test]
    async fn a_panic_after_a_suspension_point_is_caught() {
        fn explode(n: u32) {
            panic!("late {n}")
        }
        let result = catch_panic(async {
            tokio::task::yield_now().await;
            explode(3);
        })
        .await;
        assert_eq!(
            result.err().map(|e| e.to_string()).as_deref(),
            Some("worker panicked: late 3")
        );
    }
}
