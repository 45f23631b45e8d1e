//! What users give the engine: [`Manifold`]s, and what a manifold's start
//! function sees ([`StartContext`]) and returns ([`Started`]).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flotilla_core_types::{Name, Worker, WorkerError};
use tokio_util::sync::CancellationToken;

use crate::input::{InputKey, InputName, TypeTag};

/// The future a manifold's start function returns.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<Started, WorkerError>> + Send>>;

type StartFn = dyn Fn(StartContext) -> StartFuture + Send + Sync;
type FilterFn = dyn Fn(WorkerError) -> WorkerError + Send + Sync;

/// A named slot in the engine: its inputs, how to start its worker, and
/// (through [`Started::with_resource`]) what it offers its dependents.
///
/// Names are checked when the manifold is installed, so building one never
/// fails.
///
/// # Example
///
/// ```
/// use flotilla_core_types::TaskWorker;
/// use flotilla_depengine::{Manifold, Started};
///
/// let api = Manifold::new("api", |ctx| async move {
///     let database_url: String = ctx.get("config")?; // required input
///     ctx.require("metrics").ok(); // optional input, existence only
///     let worker = TaskWorker::spawn(|stop| async move {
///         let _ = database_url;
///         stop.cancelled().await;
///         Ok(())
///     });
///     Ok(Started::new(worker))
/// })
/// .input("config")
/// .optional_input("metrics");
/// assert_eq!(api.inputs().collect::<Vec<_>>(), ["config", "metrics"]);
/// ```
#[derive(Clone)]
pub struct Manifold {
    pub(crate) name: String,
    pub(crate) inputs: Vec<InputSpec>,
    pub(crate) start: Arc<StartFn>,
    pub(crate) filter: Option<Arc<FilterFn>>,
    pub(crate) restart: RestartPolicy,
    /// The type of resource it declares it offers, if it declares one.
    pub(crate) offers: Option<TypeTag>,
}

/// When the engine starts a manifold's worker again after it ended, as OTP
/// supervisors decide per child.
///
/// Whatever the policy, an error that [`EngineConfig::is_fatal`] accepts
/// stops the engine, and every restart counts against the
/// [`RestartLimit`](crate::RestartLimit) (a temporary manifold has none).
///
/// [`EngineConfig::is_fatal`]: crate::EngineConfig::is_fatal
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Always run: restarted with backoff after a failure, after the bounce
    /// delay when it asks to be bounced or its inputs change, and, after a
    /// clean exit, as soon as one of its inputs changes. The default.
    #[default]
    Permanent,
    /// Run until it succeeds: as [`Permanent`](Self::Permanent), except that
    /// a clean exit (`Ok(())`) is final. The manifold stays installed,
    /// stopped as [`StoppedReason::Completed`], and is not started again even
    /// when its inputs change. Bounces caused by input changes while it runs
    /// still restart it: it had not finished.
    ///
    /// [`StoppedReason::Completed`]: crate::StoppedReason::Completed
    Transient,
    /// Run once: however its one attempt ends (cleanly, with an error, a
    /// panic, a bounce request, a missing input, or stopped because its
    /// inputs changed), the manifold is uninstalled, and its dependents see
    /// it as missing.
    Temporary,
}

/// One declared input of a manifold.
#[derive(Clone, Debug)]
pub(crate) struct InputSpec {
    pub(crate) name: String,
    pub(crate) required: bool,
    /// The resource type a typed key expects of it.
    pub(crate) expects: Option<TypeTag>,
}

impl Manifold {
    /// A manifold called `name` whose worker is made by `start`.
    ///
    /// `start` is called each time the worker is to run, with a fresh
    /// snapshot of the inputs. It may be slow; the engine abandons it (drops
    /// its future, after cancelling [`StartContext::stop_token`]) when the
    /// engine stops or the manifold is bounced meanwhile.
    ///
    /// Its future is polled by the engine's own task, beside every other
    /// start and worker: it may await as long as it likes, but must not block
    /// the thread (move blocking work to `tokio::task::spawn_blocking`).
    pub fn new<F, Fut>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(StartContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Started, WorkerError>> + Send + 'static,
    {
        Manifold {
            name: name.into(),
            inputs: Vec::new(),
            start: Arc::new(move |ctx| Box::pin(start(ctx))),
            filter: None,
            restart: RestartPolicy::Permanent,
            offers: None,
        }
    }

    /// Declares that the worker offers a `T` (through
    /// [`Started::with_resource`]). The engine then refuses, at install, a
    /// dependent whose typed [`Input`](crate::Input) expects another type,
    /// and reads a start that returns another type (or none) as a failure.
    pub fn offers<T: Clone + Send + Sync + 'static>(mut self) -> Self {
        self.offers = Some(TypeTag::of::<T>());
        self
    }

    /// Sets when the worker is started again after it ends; see
    /// [`RestartPolicy`]. The default is [`RestartPolicy::Permanent`].
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Declares a required input: the worker is started only while the
    /// input's worker is running, and is bounced when that worker changes.
    ///
    /// `input` is a plain name, or a typed [`Input`](crate::Input) whose
    /// resource type is checked against what the input
    /// [`offers`](Self::offers) when both are installed.
    pub fn input(self, input: impl InputName) -> Self {
        self.declare(input, true)
    }

    /// Declares an optional input: the worker starts whether or not the
    /// input runs (asking for it then gives [`InputError::Missing`]), and is
    /// bounced when the input's worker starts or stops.
    pub fn optional_input(self, input: impl InputName) -> Self {
        self.declare(input, false)
    }

    fn declare(mut self, input: impl InputName, required: bool) -> Self {
        let (name, expects) = input.into_declaration();
        self.inputs.push(InputSpec {
            name,
            required,
            expects: expects.map(TypeTag::from_parts),
        });
        self
    }

    /// Sets a hook that sees every error the start function or the worker
    /// ends with, and may turn it into another before the engine reads it
    /// (for example, to mark a known error as [`Signal::Bounce`]).
    ///
    /// A filter that panics does not take the engine down: the engine reads
    /// the error as [`Error::CallbackPanicked`](crate::Error::CallbackPanicked),
    /// a failure of this manifold like any other, and never fatal.
    pub fn filter<F>(mut self, filter: F) -> Self
    where
        F: Fn(WorkerError) -> WorkerError + Send + Sync + 'static,
    {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// The manifold's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of the declared inputs, in declaration order.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|input| input.name.as_str())
    }

    /// When its worker is started again after it ends.
    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart
    }
}

impl fmt::Debug for Manifold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifold")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("filter", &self.filter.is_some())
            .field("restart", &self.restart)
            .field("offers", &self.offers.map(|tag| tag.name))
            .finish_non_exhaustive()
    }
}

/// What a start function returns: the running worker and, optionally, the
/// resource it offers to dependents.
pub struct Started {
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) resource: Option<Resource>,
}

impl Started {
    /// A started worker that offers no resource (dependents can still depend
    /// on it for existence with [`StartContext::require`]).
    pub fn new(worker: impl Worker) -> Self {
        Started {
            worker: Arc::new(worker),
            resource: None,
        }
    }

    /// Offers `resource` to dependents, which get a clone of it with
    /// [`StartContext::get`]. Offer a handle (cheap to clone), not the state.
    pub fn with_resource<T>(mut self, resource: T) -> Self
    where
        T: Clone + Send + Sync + 'static,
    {
        self.resource = Some(Resource {
            value: Arc::new(resource),
            type_name: std::any::type_name::<T>(),
        });
        self
    }
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field(
                "resource",
                &self.resource.as_ref().map(|resource| resource.type_name),
            )
            .finish_non_exhaustive()
    }
}

/// A resource offered by a running worker, with its type's name for errors.
#[derive(Clone)]
pub(crate) struct Resource {
    value: Arc<dyn Any + Send + Sync>,
    pub(crate) type_name: &'static str,
}

impl Resource {
    /// A clone of the value as a `T`, or the name of the type it is.
    pub(crate) fn downcast<T: Clone + 'static>(&self) -> Result<T, &'static str> {
        match self.value.downcast_ref::<T>() {
            Some(value) => Ok(value.clone()),
            None => Err(self.type_name),
        }
    }

    /// Whether the value is of the type `tag` names.
    pub(crate) fn is(&self, tag: TypeTag) -> bool {
        (*self.value).type_id() == tag.id
    }
}

/// One input as a start function sees it.
#[derive(Clone)]
pub(crate) struct InputValue {
    pub(crate) name: Name,
    /// The input's running worker and what it offers; `None` when it is not
    /// running.
    pub(crate) running: Option<Option<Resource>>,
}

/// What a start function is given: the snapshot of its inputs taken when the
/// engine decided to start it, and a token cancelled if the start is
/// abandoned.
pub struct StartContext {
    pub(crate) name: Name,
    pub(crate) inputs: Vec<InputValue>,
    pub(crate) stop: CancellationToken,
}

impl StartContext {
    /// The name of the manifold being started.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// A clone of the resource offered by `input`, as a `T`.
    ///
    /// # Errors
    ///
    /// [`InputError::Undeclared`] if the manifold did not declare `input`,
    /// [`InputError::Missing`] if its worker is not running (returning this
    /// error from the start function means "wait for my inputs"), and
    /// [`InputError::TypeMismatch`] if it offers no resource or one of
    /// another type.
    pub fn get<T: Clone + 'static>(&self, input: impl InputKey<T>) -> Result<T, InputError> {
        let input = input.key_name();
        let resource = self.running(input)?;
        let mismatch = |offered| InputError::TypeMismatch {
            input: input.to_owned(),
            requested: std::any::type_name::<T>(),
            offered,
        };
        let Some(resource) = resource else {
            return Err(mismatch("no resource"));
        };
        resource.downcast().map_err(mismatch)
    }

    /// Checks that `input`'s worker is running, for a dependency on its
    /// existence only.
    ///
    /// # Errors
    ///
    /// [`InputError::Undeclared`] or [`InputError::Missing`], as for
    /// [`get`](Self::get).
    pub fn require(&self, input: &str) -> Result<(), InputError> {
        self.running(input).map(|_| ())
    }

    /// A token cancelled when this start is abandoned (the engine stops or
    /// the manifold is bounced before the start returns). A slow start
    /// should stop early when it fires; a worker made here can take a child
    /// of it so that it ends with the attempt.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    fn running(&self, input: &str) -> Result<Option<&Resource>, InputError> {
        let Some(value) = self
            .inputs
            .iter()
            .find(|value| value.name.as_str() == input)
        else {
            return Err(InputError::Undeclared {
                manifold: self.name.to_string(),
                input: input.to_owned(),
            });
        };
        match &value.running {
            Some(resource) => Ok(resource.as_ref()),
            None => Err(InputError::Missing {
                input: input.to_owned(),
            }),
        }
    }
}

impl fmt::Debug for StartContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let running: Vec<(&str, bool)> = self
            .inputs
            .iter()
            .map(|value| (value.name.as_str(), value.running.is_some()))
            .collect();
        f.debug_struct("StartContext")
            .field("name", &self.name)
            .field("inputs", &running)
            .finish_non_exhaustive()
    }
}

/// Why an input could not be read from a [`StartContext`].
///
/// Converts into a [`WorkerError`], so `ctx.get("x")?` works in a start
/// function; [`InputError::Missing`] then reads as "wait for my inputs".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The input's worker is not running.
    #[error("input {input} is not running")]
    Missing {
        /// The input's name.
        input: String,
    },
    /// The manifold asked for an input it did not declare.
    #[error("manifold {manifold} asked for input {input}, which it did not declare")]
    Undeclared {
        /// The manifold being started.
        manifold: String,
        /// The input asked for.
        input: String,
    },
    /// The input offers no resource, or one of another type.
    #[error("input {input} offers {offered}, not the requested {requested}")]
    TypeMismatch {
        /// The input's name.
        input: String,
        /// The type asked for.
        requested: &'static str,
        /// The type offered, or "no resource".
        offered: &'static str,
    },
}

impl From<InputError> for WorkerError {
    fn from(error: InputError) -> Self {
        WorkerError::new(error)
    }
}

/// Errors that ask the engine for something rather than report a failure.
///
/// Return one from a start function or a worker (`Err(Signal::Bounce.into())`),
/// or anywhere in the `source` chain of the error returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Signal {
    /// An input this worker needs is not available: wait until an input
    /// changes, spending no restart budget.
    #[error("a required input is missing")]
    Missing,
    /// Restart this worker after the bounce delay.
    #[error("restart requested")]
    Bounce,
    /// Stop this worker and uninstall its manifold.
    #[error("uninstall requested")]
    Uninstall,
}

impl From<Signal> for WorkerError {
    fn from(signal: Signal) -> Self {
        WorkerError::new(signal)
    }
}

/// How the engine reads an error a worker or start ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    Missing,
    Bounce,
    Uninstall,
    Failure,
}

pub(crate) fn classify(error: &WorkerError) -> ErrorClass {
    if let Some(signal) = error.find::<Signal>() {
        return match signal {
            Signal::Missing => ErrorClass::Missing,
            Signal::Bounce => ErrorClass::Bounce,
            Signal::Uninstall => ErrorClass::Uninstall,
        };
    }
    match error.find::<InputError>() {
        Some(InputError::Missing { .. }) => ErrorClass::Missing,
        _ => ErrorClass::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(inputs: Vec<InputValue>) -> StartContext {
        StartContext {
            name: Name::new("me").expect("valid"),
            inputs,
            stop: CancellationToken::new(),
        }
    }

    fn input(name: &str, running: Option<Option<Resource>>) -> InputValue {
        InputValue {
            name: Name::new(name).expect("valid"),
            running,
        }
    }

    /// A worker that never runs: only its resource matters here.
    struct Inert;

    impl Worker for Inert {
        fn kill(&self) {}
        fn wait(&self) -> flotilla_core_types::WaitFuture<'_> {
            Box::pin(async { Ok(()) })
        }
    }

    fn resource<T: Clone + Send + Sync + 'static>(value: T) -> Option<Option<Resource>> {
        Some(Started::new(Inert).with_resource(value).resource)
    }

    #[test]
    fn get_reads_typed_resources_and_says_why_it_cannot() {
        let ctx = context(vec![
            input("text", resource(String::from("hi"))),
            input("bare", Some(None)),
            input("down", None),
        ]);
        assert_eq!(ctx.get::<String>("text"), Ok("hi".to_owned()));
        assert_eq!(
            ctx.get::<u32>("text"),
            Err(InputError::TypeMismatch {
                input: "text".into(),
                requested: "u32",
                offered: "alloc::string::String"
            })
        );
        assert_eq!(
            ctx.get::<u32>("bare"),
            Err(InputError::TypeMismatch {
                input: "bare".into(),
                requested: "u32",
                offered: "no resource"
            })
        );
        assert_eq!(ctx.require("bare"), Ok(()));
        assert_eq!(
            ctx.require("down"),
            Err(InputError::Missing {
                input: "down".into()
            })
        );
        assert_eq!(
            ctx.get::<String>("other"),
            Err(InputError::Undeclared {
                manifold: "me".into(),
                input: "other".into()
            })
        );
    }

    #[test]
    fn errors_are_classified_through_their_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapped(#[source] Signal);

        assert_eq!(classify(&Signal::Bounce.into()), ErrorClass::Bounce);
        assert_eq!(
            classify(&WorkerError::new(Wrapped(Signal::Uninstall))),
            ErrorClass::Uninstall
        );
        assert_eq!(
            classify(&InputError::Missing { input: "x".into() }.into()),
            ErrorClass::Missing
        );
        assert_eq!(classify(&Signal::Missing.into()), ErrorClass::Missing);
        assert_eq!(
            classify(
                &InputError::Undeclared {
                    manifold: "a".into(),
                    input: "b".into()
                }
                .into()
            ),
            ErrorClass::Failure
        );
        assert_eq!(classify(&WorkerError::msg("disk")), ErrorClass::Failure);
        assert_eq!(
            classify(&WorkerError::Panicked {
                message: "x".into()
            }),
            ErrorClass::Failure
        );
    }
}
