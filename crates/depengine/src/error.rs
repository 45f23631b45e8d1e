//! [`Error`]: everything the engine's operations can fail with.

use std::time::Duration;

use flotilla_core_types::{InvalidId, Name, WorkerError};

/// An engine operation failed, or (inside the [`WorkerError`] that
/// [`Engine::wait`](crate::Engine) returns) the engine stopped because of a
/// crash loop.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting in [`EngineConfig`](crate::EngineConfig) is out of range.
    #[error("invalid engine config: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifold or input name is not a valid [`Name`].
    #[error(transparent)]
    InvalidName(#[from] InvalidId),
    /// A manifold of that name is installed already (or appears twice in one
    /// group).
    #[error("manifold {name} is already installed")]
    AlreadyInstalled {
        /// The name.
        name: Name,
    },
    /// A manifold declares the same input twice.
    #[error("manifold {manifold} declares input {input} twice")]
    DuplicateInput {
        /// The manifold.
        manifold: Name,
        /// The input.
        input: Name,
    },
    /// Installing would close a dependency cycle. The path starts and ends
    /// with the manifold being installed; each name depends on the next.
    #[error("installing would close the dependency cycle {}", display_path(.path))]
    Cycle {
        /// The cycle, in "depends on" order.
        path: Vec<Name>,
    },
    /// No manifold of that name is installed.
    #[error("manifold {name} is not installed")]
    NotInstalled {
        /// The name.
        name: String,
    },
    /// The engine has stopped, or is stopping.
    #[error("the engine has stopped")]
    Stopped,
    /// A manifold restarted more often than its restart limit allows.
    #[error(
        "manifold {name} restarted {restarts} times within {window:?}, more than the limit; last error: {last_error}"
    )]
    CrashLoop {
        /// The manifold.
        name: Name,
        /// Restarts counted within the window.
        restarts: usize,
        /// The window.
        window: Duration,
        /// The error that tipped it over.
        last_error: WorkerError,
    },
}

fn display_path(path: &[Name]) -> String {
    path.iter()
        .map(Name::as_str)
        .collect::<Vec<_>>()
        .join(" -> ")
}
