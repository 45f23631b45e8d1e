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
    /// A typed input and the manifold it names disagree on the type of the
    /// resource: found at install, whichever of the two came second.
    #[error("manifold {manifold} reads input {input} as {expected}, but {input} offers {offered}")]
    InputType {
        /// The dependent.
        manifold: Name,
        /// The input it reads.
        input: Name,
        /// The type its [`Input`](crate::Input) key expects.
        expected: &'static str,
        /// The type the input declares with [`Manifold::offers`](crate::Manifold::offers).
        offered: &'static str,
    },
    /// A manifold's start returned a resource of another type (or none)
    /// than the one it declares with [`Manifold::offers`](crate::Manifold::offers):
    /// the start's failure.
    #[error("manifold {manifold} declares it offers {declared}, but its start returned {returned}")]
    OfferMismatch {
        /// The manifold.
        manifold: Name,
        /// The declared type.
        declared: &'static str,
        /// What the start returned, or "no resource".
        returned: &'static str,
    },
    /// One of the callbacks the engine runs for the user (a manifold's
    /// [`filter`](crate::Manifold::filter),
    /// [`EngineConfig::is_fatal`](crate::EngineConfig::is_fatal),
    /// [`EngineConfig::worst_error`](crate::EngineConfig::worst_error))
    /// panicked. Read as a failure of the manifold whose error it was
    /// judging, and never fatal.
    #[error("{callback} panicked: {message}")]
    CallbackPanicked {
        /// Which callback.
        callback: &'static str,
        /// The panic's message.
        message: String,
    },
    /// No manifold of that name is installed.
    #[error("manifold {name} is not installed")]
    NotInstalled {
        /// The name.
        name: String,
    },
    /// The manifold is installed, but no worker of it is running.
    #[error("manifold {name} has no running worker")]
    NotRunning {
        /// The name.
        name: String,
    },
    /// The manifold's running worker offers no resource, or one of another
    /// type than the one asked for.
    #[error("manifold {name} offers {offered}, not the requested {requested}")]
    ResourceType {
        /// The name.
        name: String,
        /// The type asked for.
        requested: &'static str,
        /// The type offered, or "no resource".
        offered: &'static str,
    },
    /// The engine has stopped, or is stopping.
    #[error("the engine has stopped")]
    Stopped,
    /// A manifold restarted more often than its restart limit allows.
    #[error(
        "manifold {name} restarted {restarts} times within {}, more than the limit; last error: {last_error}", crate::report::human(*.window)
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

/// So that `?` on an engine operation works inside a start function or a
/// worker.
impl From<Error> for WorkerError {
    fn from(error: Error) -> Self {
        WorkerError::new(error)
    }
}

fn display_path(path: &[Name]) -> String {
    path.iter()
        .map(Name::as_str)
        .collect::<Vec<_>>()
        .join(" -> ")
}
