//! [`Namespace`]: what the publisher needs from a naming backend, and the
//! small types that cross that boundary.
//!
//! A backend keeps mounts alive in one of two ways, named by
//! [`RefreshStyle`]: each mount carries its own TTL and must be written again
//! before it runs out (the embedded [`MountTable`](crate::MountTable), as in
//! Vanadium), or all of one publisher's mounts hang on a session that a
//! single keep-alive extends (etcd's lease). The publisher schedules its work
//! by that style, so the lease backend costs one operation per period however
//! many mounts it holds.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use flotilla_core_types::{Endpoint, Name};
use serde::{Deserialize, Serialize};

use crate::NamespaceError;

/// A naming backend: where (name, server) pairs are mounted with a TTL and
/// resolved by others.
///
/// One value serves one publisher: a session-style backend keeps that
/// publisher's session (lease) inside it. Resolving needs no session, so any
/// value can resolve.
///
/// Every method is cancel safe in the sense the publisher needs: dropping a
/// future leaves the backend either with or without that one change.
pub trait Namespace: Send + Sync + 'static {
    /// How this backend keeps mounts alive.
    fn refresh_style(&self) -> RefreshStyle;

    /// Where this backend lives, as the root of a rooted name: a name `api`
    /// published here is reachable as `{root}/api`.
    fn root(&self) -> String;

    /// Checks that the backend can honour `ttl`, before anything is written.
    ///
    /// # Errors
    ///
    /// [`NamespaceError::InvalidTtl`] when it cannot.
    fn validate_ttl(&self, ttl: Duration) -> Result<(), NamespaceError>;

    /// Mounts `server` under `name` for `ttl`, or refreshes that mount.
    /// Says whether the mount was there already, so that a refresh that
    /// finds its mount gone reveals a backend that lost its entries.
    ///
    /// An entry under `name` that the backend cannot read (someone else
    /// wrote it) does not stop the mount: it is left alone, never taken for
    /// a server, and reported in [`MountReport::unreadable`].
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe in this sense: if the future is dropped, the
    /// mount may or may not have been written (the publisher then treats
    /// it as possibly written, as after a timeout), and nothing else is.
    fn mount(
        &self,
        name: &Name,
        server: &Endpoint,
        ttl: Duration,
        flags: MountFlags,
    ) -> impl Future<Output = Result<MountReport, NamespaceError>> + Send;

    /// The publisher has forgotten the pair without unmounting it, because
    /// it holds that nothing of it is in the backend (every mount of it was
    /// refused outright, or another server's `replace` mount took its
    /// place). A backend that keeps track of its own writes drops what it
    /// holds for the pair. The default does nothing.
    fn forgotten(&self, name: &Name, server: &Endpoint) {
        let _ = (name, server);
    }

    /// Removes the mount of `server` under `name`. Removing a mount that is
    /// not there succeeds.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe: if the future is dropped, the mount is either
    /// still there or gone, and the publisher unmounts it again.
    fn unmount(
        &self,
        name: &Name,
        server: &Endpoint,
    ) -> impl Future<Output = Result<(), NamespaceError>> + Send;

    /// Extends this publisher's session by its TTL. Only called on
    /// [`RefreshStyle::Session`] backends, and only once something has been
    /// mounted.
    ///
    /// # Errors
    ///
    /// [`NamespaceError::EntriesLost`] when the session is gone (and with it
    /// every mount on it); the next [`mount`](Self::mount) opens a new one.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe: if the future is dropped, the session was
    /// extended or not, and the next call works as usual.
    fn keep_alive(&self) -> impl Future<Output = Result<(), NamespaceError>> + Send {
        async { Ok(()) }
    }

    /// Ends this publisher's session, removing every mount on it at once.
    /// Does nothing on [`RefreshStyle::PerMount`] backends.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe: if the future is dropped, the session is ended
    /// or not; one that is not expires by its TTL.
    fn release(&self) -> impl Future<Output = Result<(), NamespaceError>> + Send {
        async { Ok(()) }
    }

    /// The servers mounted under `name` now (expired mounts excluded), or
    /// under the nearest mounted ancestor of `name` that lets resolution
    /// continue beneath it. Entries the backend cannot read are skipped and
    /// reported in [`Resolution::unreadable`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads, so dropping the future changes nothing.
    fn resolve(
        &self,
        name: &Name,
    ) -> impl Future<Output = Result<Resolution, NamespaceError>> + Send;

    /// Every name at or beneath `prefix` (component by component: `api`
    /// covers `api` and `api/v2`, not `apis`), or every name when `prefix`
    /// is `None`, with its live servers; Vanadium's mount table had glob
    /// for this. What one publisher wrote and what others wrote alike:
    /// this is the backend's view, for status pages and operators.
    ///
    /// An entry the backend cannot read does not spoil the listing: it is
    /// left out of the names and reported in [`Listing::unreadable`].
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_core_types::Name;
    /// use flotilla_publisher::{MountFlags, MountTable, Namespace};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> anyhow::Result<()> {
    /// let table = MountTable::start();
    /// let ttl = Duration::from_secs(30);
    /// for name in ["api", "api/v2", "apis"] {
    ///     table.mount(&Name::new(name)?, &"10.0.0.7:8080".parse()?, ttl, MountFlags::NONE).await?;
    /// }
    /// let listing = table.list(Some(&Name::new("api")?)).await?;
    /// let names: Vec<&str> = listing.names.iter().map(|listed| listed.name.as_str()).collect();
    /// assert_eq!(names, ["api", "api/v2"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Required, with no default: only the backend knows what it holds,
    /// and an empty listing by default would say, wrongly, that it holds
    /// nothing.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads, so dropping the future changes nothing
    /// (a listing read in pages is simply not finished).
    fn list(
        &self,
        prefix: Option<&Name>,
    ) -> impl Future<Output = Result<Listing, NamespaceError>> + Send;

    /// Waits until the backend sees mounts of this publisher removed by
    /// someone else (an operator, a script, another publisher whose session
    /// ended), and returns those pairs, so that the publisher can mount them
    /// again at once. A mount that another server's `replace` mount under
    /// the same name took away comes with [`RemovedMount::replaced`] set:
    /// the publisher leaves that one as it is (mounting it again would undo
    /// the replacement, and two replacing publishers would undo each other
    /// forever).
    ///
    /// Only [`RefreshStyle::Session`] backends need this: a per-mount
    /// backend's refresh finds a missing mount by itself. The default never
    /// returns. The publisher keeps one call of this under way at all times
    /// (so a backend can serve it from one stream), calls it again after it
    /// returns, and after an error waits out a backoff first.
    ///
    /// # Errors
    ///
    /// Whatever stopped the backend from watching, such as
    /// [`NamespaceError::Unavailable`]; the next call starts again and
    /// misses nothing removed in between.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe: a removal seen but not yet returned is kept for
    /// the next call.
    fn removed_mounts(
        &self,
    ) -> impl Future<Output = Result<Vec<RemovedMount>, NamespaceError>> + Send {
        std::future::pending()
    }
}

/// A mount of this publisher's that someone else took away, as
/// [`Namespace::removed_mounts`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemovedMount {
    /// The name.
    pub name: Name,
    /// The server.
    pub server: Endpoint,
    /// Whether a `replace` mount of another server under the name took its
    /// place (in etcd: the delete came in the same revision as a put of
    /// another server under the name, which is what a replacing mount's
    /// transaction does). Otherwise it was simply removed.
    pub replaced: bool,
}

/// How a backend keeps mounts alive; see [`Namespace::refresh_style`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefreshStyle {
    /// Every mount has its own TTL and is refreshed by mounting it again.
    PerMount,
    /// Every mount of one publisher hangs on one session, extended by
    /// [`Namespace::keep_alive`] once per period.
    Session,
}

/// Properties of a mount, after Vanadium's mount flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct MountFlags {
    /// Replace every server mounted under the name instead of adding one.
    /// An instruction to the mount, not a property of it: never stored or
    /// serialised.
    #[serde(skip)]
    pub replace: bool,
    /// The server is itself a mount table: names beneath this one resolve
    /// there.
    pub serves_mount_table: bool,
    /// The server serves exactly this name: nothing resolves beneath it.
    pub leaf: bool,
}

impl MountFlags {
    /// No flags: add the server, which serves this name and may handle
    /// names beneath it.
    pub const NONE: MountFlags = MountFlags {
        replace: false,
        serves_mount_table: false,
        leaf: false,
    };

    /// Whether two mounts under one name describe the same kind of server.
    /// `replace` is an instruction, not a property, so it is ignored.
    pub fn same_kind(self, other: MountFlags) -> bool {
        self.serves_mount_table == other.serves_mount_table && self.leaf == other.leaf
    }
}

/// The flags that are set, as a message names them: `no flags`, `flags
/// leaf`, `flags serves_mount_table, leaf`.
impl fmt::Display for MountFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set: Vec<&str> = [
            (self.replace, "replace"),
            (self.serves_mount_table, "serves_mount_table"),
            (self.leaf, "leaf"),
        ]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect();
        if set.is_empty() {
            f.write_str("no flags")
        } else {
            write!(f, "flags {}", set.join(", "))
        }
    }
}

/// What a [`Namespace::mount`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountOutcome {
    /// The mount was not there, and now is.
    Created,
    /// The mount was there; its TTL starts again.
    Refreshed,
}

/// The answer to [`Namespace::mount`]: what it did, and what it saw.
///
/// A backend that has nothing to report builds one from its outcome:
/// `MountReport::from(MountOutcome::Created)`.
#[derive(Debug, Clone)]
pub struct MountReport {
    /// Whether the mount was there already.
    pub outcome: MountOutcome,
    /// Entries under the name that the backend could not read, each a
    /// [`NamespaceError::Corrupt`]: left as they were, not counted as
    /// servers (so their flags cannot conflict with the mount).
    pub unreadable: Vec<NamespaceError>,
}

impl From<MountOutcome> for MountReport {
    fn from(outcome: MountOutcome) -> MountReport {
        MountReport {
            outcome,
            unreadable: Vec::new(),
        }
    }
}

/// The answer to [`Namespace::list`].
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Every name with live servers, in order.
    pub names: Vec<ListedName>,
    /// Entries the backend could not read, each a
    /// [`NamespaceError::Corrupt`], left out of `names`.
    pub unreadable: Vec<NamespaceError>,
}

/// One name in a [`Listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedName {
    /// The name.
    pub name: Name,
    /// Its live mounts, ordered by server.
    pub servers: Vec<MountedServer>,
}

/// Whether `name` is `prefix` or beneath it, component by component (see
/// [`Namespace::list`]).
pub(crate) fn is_at_or_beneath(name: &str, prefix: Option<&Name>) -> bool {
    let Some(prefix) = prefix else {
        return true;
    };
    match name.strip_prefix(prefix.as_str()) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The answer to [`Namespace::resolve`].
///
/// Not `PartialEq`: it carries [`NamespaceError`]s, which are not; compare
/// its fields.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The name that was found mounted: the name asked for, or an ancestor.
    pub mounted_name: Name,
    /// What is left of the name asked for beneath `mounted_name`, without a
    /// leading `/`; empty when the name itself is mounted.
    pub suffix: String,
    /// The live mounts under `mounted_name`, ordered by server.
    pub servers: Vec<MountedServer>,
    /// Entries under the names looked at that the backend could not read
    /// (someone else wrote them), each a [`NamespaceError::Corrupt`]: left
    /// out of `servers`, so that one foreign key cannot make a name
    /// unresolvable for everyone. Empty on the embedded table.
    pub unreadable: Vec<NamespaceError>,
}

impl Resolution {
    /// Just the servers' endpoints.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.servers
            .iter()
            .map(|mounted| mounted.server.clone())
            .collect()
    }
}

/// The names a resolve of `name` looks at, in order: `name` itself, then
/// each ancestor, nearest first. The first with live servers answers (see
/// [`resolution_at`]).
pub(crate) fn resolution_candidates(name: &Name) -> impl Iterator<Item = &str> {
    let text = name.as_str();
    std::iter::once(text).chain(
        text.char_indices()
            .rev()
            .filter(|&(_, ch)| ch == '/')
            .map(move |(slash, _)| &text[..slash]),
    )
}

/// How `name` resolves, given that `candidate` (from
/// [`resolution_candidates`]) is the first with live `servers`: the name
/// itself, or an ancestor that answers for the rest of the name unless it is
/// a leaf.
pub(crate) fn resolution_at(
    name: &Name,
    candidate: &str,
    servers: Vec<MountedServer>,
) -> Result<Resolution, NamespaceError> {
    if candidate == name.as_str() {
        return Ok(Resolution {
            mounted_name: name.clone(),
            suffix: String::new(),
            servers,
            unreadable: Vec::new(),
        });
    }
    if servers.iter().any(|mounted| mounted.flags.leaf) {
        return Err(NamespaceError::NotFound { name: name.clone() });
    }
    let mounted_name =
        Name::new(candidate).expect("an ancestor of a valid name, cut at a '/', is a valid name");
    Ok(Resolution {
        mounted_name,
        suffix: name.as_str()[candidate.len() + 1..].to_owned(),
        servers,
        unreadable: Vec::new(),
    })
}

/// One live mount, as seen by a resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedServer {
    /// Where the server listens.
    pub server: Endpoint,
    /// The flags it was mounted with.
    pub flags: MountFlags,
    /// How long the mount lives unless refreshed, when the backend can say.
    pub ttl_left: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_serialise_their_properties_but_not_the_replace_instruction() {
        let flags = MountFlags {
            replace: true,
            serves_mount_table: true,
            leaf: false,
        };
        let text = serde_json::to_string(&flags).expect("serialises");
        assert_eq!(text, r#"{"serves_mount_table":true,"leaf":false}"#);
        let back: MountFlags = serde_json::from_str(&text).expect("parses");
        assert_eq!(
            back,
            MountFlags {
                replace: false,
                ..flags
            }
        );
        let empty: MountFlags = serde_json::from_str("{}").expect("fields default");
        assert_eq!(empty, MountFlags::NONE);
    }

    #[test]
    fn resolution_looks_at_the_name_then_each_ancestor_nearest_first() {
        let name = Name::new("a/b/c").expect("valid");
        let candidates: Vec<&str> = resolution_candidates(&name).collect();
        assert_eq!(candidates, ["a/b/c", "a/b", "a"]);
        let single = Name::new("a").expect("valid");
        assert_eq!(resolution_candidates(&single).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn listing_prefixes_match_whole_components() {
        let api = Name::new("api").expect("valid");
        let cases = [
            ("api", true),
            ("api/v2", true),
            ("api/v2/x", true),
            ("apis", false),
            ("ap", false),
            ("other/api", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_at_or_beneath(name, Some(&api)), expected, "{name}");
            assert!(is_at_or_beneath(name, None), "{name}");
        }
    }

    #[test]
    fn kinds_ignore_replace() {
        let replacing = MountFlags {
            replace: true,
            ..MountFlags::NONE
        };
        assert!(replacing.same_kind(MountFlags::NONE));
        let leaf = MountFlags {
            leaf: true,
            ..MountFlags::NONE
        };
        assert!(!leaf.same_kind(MountFlags::NONE));
    }
}
