//! What a publisher reports: [`PublisherStatus`] with a [`MountStatus`] per
//! (name, server) pair, and [`Published`] names.

use std::sync::Arc;
use std::time::Duration;

use flotilla_core_types::{Endpoint, Name};
use tokio::time::Instant;

use crate::{Error, NamespaceError};

/// Where a mount is, or is meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountState {
    /// Not confirmed mounted yet (or lapsed, or lost by the backend), and
    /// being mounted.
    Mounting,
    /// Confirmed mounted, and not past its TTL.
    Mounted,
    /// Being removed (or its removal failed and is being retried).
    Unmounting,
    /// Confirmed removed, or never written.
    Unmounted,
    /// Wanted, but another server's `replace` mount under the name took its
    /// place (see [`RemovedMount::replaced`](crate::RemovedMount::replaced)).
    /// Left so: mounting it again would undo that replacement. It is mounted
    /// again only when it is removed from the publisher and added back, or
    /// the publisher is started again.
    Replaced,
}

/// Whether a publisher is still publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Mounting and refreshing.
    Running,
    /// Stopped: unmounting everything; nothing new is mounted.
    Stopping,
    /// Done: `wait` has returned or is about to.
    Stopped,
}

impl Phase {
    /// The phase as a word, as reports show it: `running`, `stopping` or
    /// `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

/// One (name, server) pair as the publisher sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MountStatus {
    /// The name.
    pub name: Name,
    /// The server.
    pub server: Endpoint,
    /// What the publisher wants: [`MountState::Mounted`] or
    /// [`MountState::Unmounted`].
    pub desired: MountState,
    /// What the publisher last confirmed, or is doing about it.
    pub observed: MountState,
    /// When the backend last confirmed a mount (or refresh) of this pair.
    pub last_mounted_at: Option<Instant>,
    /// When the backend last confirmed an unmount of this pair.
    pub last_unmounted_at: Option<Instant>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<NamespaceError>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When the next operation on this pair is due, if one is scheduled.
    pub next_attempt_at: Option<Instant>,
    /// When the mount lapses unless refreshed, if it is mounted.
    pub expires_at: Option<Instant>,
    /// An entry under this pair's name that the backend could not read
    /// (someone else wrote it), as the last successful mount reported it: a
    /// [`NamespaceError::Corrupt`]. It did not stop the mount and was left
    /// alone; it is here for an operator to clean up. Cleared by a mount
    /// that finds none.
    pub unreadable: Option<NamespaceError>,
}

impl MountStatus {
    /// How long the mount lives unless refreshed, from now; zero once it has
    /// lapsed, `None` when it is not mounted.
    pub fn ttl_left(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the pair is where the publisher wants it.
    pub fn is_settled(&self) -> bool {
        self.desired == self.observed
    }
}

/// A snapshot of everything a publisher holds.
///
/// Snapshots sent to [`watch`](crate::Publisher::watch)ers are published on
/// every change of phase, desired or observed state, failure count or error;
/// a refresh that changes nothing else does not publish one (with ten
/// thousand mounts that would be ten thousand snapshots a period). Ask
/// [`status`](crate::Publisher::status) for fresh timestamps.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublisherStatus {
    /// Running, stopping or stopped.
    pub phase: Phase,
    /// The names being published, in order.
    pub names: Arc<[Name]>,
    /// The servers being published, in order.
    pub servers: Arc<[Endpoint]>,
    /// Every pair the publisher holds, by name then server: the cross
    /// product of `names` and `servers`, plus pairs no longer wanted whose
    /// unmount is not yet confirmed.
    pub mounts: Arc<[MountStatus]>,
}

impl PublisherStatus {
    /// Whether every wanted pair is confirmed mounted (true when nothing is
    /// wanted), and no pair is left to unmount.
    pub fn all_settled(&self) -> bool {
        self.mounts.iter().all(MountStatus::is_settled)
    }

    /// Whether the publisher is running and every pair of the cross product
    /// is mounted.
    pub fn all_mounted(&self) -> bool {
        self.phase == Phase::Running
            && self.mounts.len() == self.names.len() * self.servers.len()
            && self
                .mounts
                .iter()
                .all(|m| m.observed == MountState::Mounted)
    }

    /// The status of one pair.
    pub fn mount(&self, name: &Name, server: &Endpoint) -> Option<&MountStatus> {
        // `mounts` is sorted by name, then server.
        let index = self
            .mounts
            .binary_search_by(|m| (&m.name, &m.server).cmp(&(name, server)))
            .ok()?;
        self.mounts.get(index)
    }

    /// Whether the publisher wants the pair mounted: its name and its server
    /// are both published.
    pub(crate) fn wants(&self, name: &Name, server: &Endpoint) -> bool {
        self.names.binary_search(name).is_ok() && self.servers.binary_search(server).is_ok()
    }

    /// What waiting for the pair comes to in this snapshot: `None` while it
    /// is still to be mounted, the pair's status once it is mounted, or why
    /// it never will be.
    pub(crate) fn mounted_outcome(
        &self,
        name: &Name,
        server: &Endpoint,
    ) -> Option<Result<MountStatus, Error>> {
        if self.phase != Phase::Running {
            return Some(Err(Error::Stopped));
        }
        if !self.wants(name, server) {
            return Some(Err(Error::NotPublished {
                name: name.clone(),
                server: server.clone(),
            }));
        }
        let mount = self.mount(name, server)?;
        match mount.observed {
            MountState::Mounted => Some(Ok(mount.clone())),
            MountState::Replaced => Some(Err(Error::Replaced {
                name: name.clone(),
                server: server.clone(),
            })),
            MountState::Mounting | MountState::Unmounting | MountState::Unmounted => None,
        }
    }
}

/// One published name: where it can be resolved and which servers are
/// confirmed mounted under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The name.
    pub name: Name,
    /// The name rooted at the backend, such as `mem:/api` or
    /// `etcd://127.0.0.1:2379/flotilla/api`.
    pub rooted: String,
    /// The servers confirmed mounted under it, in order.
    pub servers: Vec<Endpoint>,
}
