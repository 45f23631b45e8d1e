//! Typed input keys: [`Input<T>`] names a manifold and the type of the
//! resource it offers, once, for both sides of the edge.
//!
//! A dependent declares the key with [`Manifold::input`] and reads it with
//! [`StartContext::get`]; the provider says what it offers with
//! [`Manifold::offers`]. The engine compares the two types when the second
//! of the pair is installed, so a type mismatch is an install error rather
//! than a start that fails, backs off and fails again. Plain names (`&str`,
//! `String`) still work everywhere a key does, for graphs built at run time.
//!
//! [`Manifold::input`]: crate::Manifold::input
//! [`Manifold::offers`]: crate::Manifold::offers
//! [`StartContext::get`]: crate::StartContext::get

use std::any::TypeId;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// The name of a manifold together with the type of the resource it offers:
/// one constant for the provider, its dependents and anyone reading the
/// resource from outside ([`Engine::resource`](crate::Engine::resource)).
///
/// # Example
///
/// ```
/// use flotilla_core_types::TaskWorker;
/// use flotilla_depengine::{Engine, EngineConfig, Input, Manifold, Started};
///
/// #[derive(Clone)]
/// struct Settings {
///     url: String,
/// }
///
/// const SETTINGS: Input<Settings> = Input::new("settings");
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> anyhow::Result<()> {
/// let idle = || TaskWorker::spawn(|stop| async move {
///     stop.cancelled().await;
///     Ok(())
/// });
/// let engine = Engine::start(EngineConfig::default())?;
/// engine
///     .install(
///         Manifold::new(SETTINGS.name(), move |_ctx| async move {
///             let settings = Settings { url: "db://primary".into() };
///             Ok(Started::new(idle()).with_resource(settings))
///         })
///         .offers::<Settings>(),
///     )
///     .await?;
/// engine
///     .install(
///         Manifold::new("api", move |ctx| async move {
///             let settings = ctx.get(&SETTINGS)?; // a Settings, no annotation
///             assert_eq!(settings.url, "db://primary");
///             Ok(Started::new(idle()))
///         })
///         .input(&SETTINGS),
///     )
///     .await?;
/// let settings = engine.wait_for_resource(&SETTINGS).await?;
/// assert_eq!(settings.url, "db://primary");
/// # flotilla_core_types::Worker::kill(&engine);
/// # flotilla_core_types::Worker::wait(&engine).await?;
/// # Ok(())
/// # }
/// ```
pub struct Input<T> {
    name: Cow<'static, str>,
    resource: PhantomData<fn() -> T>,
}

impl<T> Input<T> {
    /// A key for the manifold called `name`, offering a `T`.
    pub const fn new(name: &'static str) -> Self {
        Input {
            name: Cow::Borrowed(name),
            resource: PhantomData,
        }
    }

    /// A key whose name is made at run time.
    pub fn named(name: impl Into<String>) -> Self {
        Input {
            name: Cow::Owned(name.into()),
            resource: PhantomData,
        }
    }

    /// The manifold's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T> Clone for Input<T> {
    fn clone(&self) -> Self {
        Input {
            name: self.name.clone(),
            resource: PhantomData,
        }
    }
}

impl<T> PartialEq for Input<T> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl<T> Eq for Input<T> {}

impl<T> std::hash::Hash for Input<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl<T> fmt::Debug for Input<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .field("resource", &std::any::type_name::<T>())
            .finish()
    }
}

/// A type as the engine compares it: its id, and its name for errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TypeTag {
    pub(crate) id: TypeId,
    pub(crate) name: &'static str,
}

impl TypeTag {
    pub(crate) fn of<T: 'static>() -> Self {
        TypeTag {
            id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
        }
    }

    pub(crate) fn from_parts((id, name): (TypeId, &'static str)) -> Self {
        TypeTag { id, name }
    }
}

/// What names an input when a manifold declares it: a plain name (`&str`,
/// `String`), whose type is checked only when the start reads it, or a
/// typed [`Input`], checked at install.
///
/// Sealed: implemented only by this crate's types.
pub trait InputName: sealed::Sealed {
    /// The name, and the type a typed key expects.
    #[doc(hidden)]
    fn into_declaration(self) -> (String, Option<(TypeId, &'static str)>);
}

/// What names an input when a `T` is read from it: a plain name, or an
/// [`Input<T>`] (whose `T` then needs no annotation).
///
/// Sealed: implemented only by this crate's types.
pub trait InputKey<T>: sealed::Sealed {
    /// The name of the manifold read.
    fn key_name(&self) -> &str;
}

impl InputName for &str {
    fn into_declaration(self) -> (String, Option<(TypeId, &'static str)>) {
        (self.to_owned(), None)
    }
}

impl InputName for String {
    fn into_declaration(self) -> (String, Option<(TypeId, &'static str)>) {
        (self, None)
    }
}

impl InputName for &String {
    fn into_declaration(self) -> (String, Option<(TypeId, &'static str)>) {
        (self.clone(), None)
    }
}

impl<T: 'static> InputName for &Input<T> {
    fn into_declaration(self) -> (String, Option<(TypeId, &'static str)>) {
        (
            self.name.to_string(),
            Some((TypeId::of::<T>(), std::any::type_name::<T>())),
        )
    }
}

impl<T: 'static> InputName for Input<T> {
    fn into_declaration(self) -> (String, Option<(TypeId, &'static str)>) {
        (
            self.name.into_owned(),
            Some((TypeId::of::<T>(), std::any::type_name::<T>())),
        )
    }
}

impl<T> InputKey<T> for &str {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> InputKey<T> for &String {
    fn key_name(&self) -> &str {
        self
    }
}

impl<T> InputKey<T> for &Input<T> {
    fn key_name(&self) -> &str {
        &self.name
    }
}

impl<T> InputKey<T> for Input<T> {
    fn key_name(&self) -> &str {
        &self.name
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for &String {}
    impl<T> Sealed for &super::Input<T> {}
    impl<T> Sealed for super::Input<T> {}
}
