//! [`MountTable`]: the embedded naming backend, an in-process mount table
//! whose entries expire by their TTL.
//!
//! The table is plain data behind a mutex (no lock is held across an
//! `.await`), so mounts and resolves from any number of tasks are a lock and
//! a map lookup. Expiry is exact without depending on a timer: every read
//! ignores entries whose deadline has passed. A reaper task sleeps until the
//! earliest deadline and drops expired entries, so their memory comes back
//! even when nobody resolves them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_core_types::{
    Endpoint, EndpointSource, EndpointWatch, EndpointsFuture, Name, ReportFuture, SourceError,
    TaskWorker, WaitFuture, Worker,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::error::ShownDuration;
use crate::namespace::{is_at_or_beneath, resolution_at, resolution_candidates};
use crate::{
    ListedName, Listing, MountFlags, MountOutcome, MountReport, MountedServer, Namespace,
    NamespaceError, RefreshStyle, Resolution,
};

/// The longest TTL the table accepts: long enough for any refresh period,
/// short enough that a deadline never overflows the clock.
pub const MAX_TABLE_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// An in-process mount table, the default naming backend. Cloning is cheap:
/// every clone is a handle to the same table, so publishers and resolvers in
/// one process share it.
///
/// The table is a [`Worker`] (its reaper task): [`kill`](Worker::kill) shuts
/// it down, after which every operation answers [`NamespaceError::Closed`].
/// Dropping every handle shuts it down too. Its
/// [`report`](Worker::report) gives the reaper's `state`, the `names` and
/// `entries` held and whether it is `closed`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use flotilla_core_types::{Endpoint, Name};
/// use flotilla_publisher::{MountFlags, MountTable, Namespace};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> anyhow::Result<()> {
/// let table = MountTable::start();
/// let name = Name::new("api")?;
/// let server: Endpoint = "10.0.0.7:8080".parse()?;
/// table.mount(&name, &server, Duration::from_secs(30), MountFlags::NONE).await?;
/// assert_eq!(table.resolve(&name).await?.endpoints(), [server]);
///
/// tokio::time::sleep(Duration::from_secs(30)).await;
/// assert!(table.resolve(&name).await.is_err(), "expired exactly at its deadline");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MountTable {
    inner: Arc<TableInner>,
}

struct TableInner {
    state: Arc<Mutex<TableState>>,
    wake_reaper: Arc<Notify>,
    /// Bumped whenever a server appears under a name or leaves it, and when
    /// the table closes: what endpoint watches wait on.
    changes: Arc<watch::Sender<u64>>,
    reaper: TaskWorker,
}

impl Drop for TableInner {
    fn drop(&mut self) {
        self.reaper.kill();
    }
}

impl MountTable {
    /// An empty table, with its reaper running.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with a timer.
    pub fn start() -> MountTable {
        let state = Arc::new(Mutex::new(TableState::default()));
        let wake_reaper = Arc::new(Notify::new());
        let changes = Arc::new(watch::channel(0).0);
        let reaper = {
            let state = Arc::clone(&state);
            let wake = Arc::clone(&wake_reaper);
            let changes = Arc::clone(&changes);
            TaskWorker::spawn(move |stop| async move {
                reap(&state, &wake, &changes, stop).await;
                Ok(())
            })
        };
        MountTable {
            inner: Arc::new(TableInner {
                state,
                wake_reaper,
                changes,
                reaper,
            }),
        }
    }

    /// Drops every entry at once, as a restarted table would. Publishers
    /// notice when a refresh finds its mount gone, and mount everything
    /// again.
    pub fn reset(&self) {
        let mut state = self.lock();
        state.names.clear();
        state.expiries.clear();
        drop(state);
        self.changed();
    }

    /// Tells endpoint watches to look again.
    fn changed(&self) {
        self.inner.changes.send_modify(|count| *count += 1);
    }

    /// The live servers mounted under exactly `name`.
    fn endpoints_now(&self, name: &Name) -> Result<BTreeSet<Endpoint>, NamespaceError> {
        let now = Instant::now();
        let state = self.lock();
        if state.closed {
            return Err(NamespaceError::Closed);
        }
        Ok(state
            .names
            .get(name)
            .map(|servers| {
                servers
                    .iter()
                    .filter(|(_, entry)| entry.expires_at > now)
                    .map(|(server, _)| server.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// How many entries the table holds in memory, expired ones not yet
    /// reaped included.
    pub fn entry_count(&self) -> usize {
        self.lock().expiries.len()
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        lock(&self.inner.state)
    }

    fn mount_now(
        &self,
        name: &Name,
        server: &Endpoint,
        ttl: Duration,
        flags: MountFlags,
    ) -> Result<MountOutcome, NamespaceError> {
        self.validate_ttl(ttl)?;
        let now = Instant::now();
        let expires_at = now + ttl;
        let mut state = self.lock();
        if state.closed {
            return Err(NamespaceError::Closed);
        }
        // Expired entries dropped here are changes a watch must hear of,
        // whatever comes of this mount: the reaper will not find them.
        let mut removed_others = state.drop_expired_under(name, now);
        if flags.replace {
            removed_others |= state.remove_others(name, server);
        } else if let Some(existing) = state.conflicting_flags(name, server, flags) {
            drop(state);
            if removed_others {
                self.changed();
            }
            return Err(NamespaceError::FlagsConflict {
                name: name.clone(),
                server: server.clone(),
                existing,
                requested: flags,
            });
        }
        let sequence = state.next_sequence();
        let previous = state.names.entry(name.clone()).or_default().insert(
            server.clone(),
            Entry {
                flags,
                expires_at,
                sequence,
            },
        );
        let outcome = match previous {
            Some(old) => {
                state.expiries.remove(&(old.expires_at, old.sequence));
                MountOutcome::Refreshed
            }
            None => MountOutcome::Created,
        };
        let earliest_before = state.expiries.keys().next().map(|(at, _)| *at);
        state
            .expiries
            .insert((expires_at, sequence), (name.clone(), server.clone()));
        drop(state);
        if earliest_before.is_none_or(|earliest| expires_at < earliest) {
            self.inner.wake_reaper.notify_one();
        }
        if removed_others || outcome == MountOutcome::Created {
            self.changed();
        }
        Ok(outcome)
    }

    fn unmount_now(&self, name: &Name, server: &Endpoint) -> Result<(), NamespaceError> {
        let mut state = self.lock();
        if state.closed {
            return Err(NamespaceError::Closed);
        }
        let removed = state.remove(name, server);
        drop(state);
        if removed {
            self.changed();
        }
        Ok(())
    }

    fn resolve_now(&self, name: &Name) -> Result<Resolution, NamespaceError> {
        let now = Instant::now();
        let state = self.lock();
        if state.closed {
            return Err(NamespaceError::Closed);
        }
        for candidate in resolution_candidates(name) {
            if let Some(servers) = state.live_servers(candidate, now) {
                return resolution_at(name, candidate, servers);
            }
        }
        Err(NamespaceError::NotFound { name: name.clone() })
    }

    fn list_now(&self, prefix: Option<&Name>) -> Result<Listing, NamespaceError> {
        let now = Instant::now();
        let state = self.lock();
        if state.closed {
            return Err(NamespaceError::Closed);
        }
        let mut names: Vec<ListedName> = state
            .names
            .keys()
            .filter(|name| is_at_or_beneath(name.as_str(), prefix))
            .filter_map(|name| {
                let servers = state.live_servers(name.as_str(), now)?;
                Some(ListedName {
                    name: name.clone(),
                    servers,
                })
            })
            .collect();
        drop(state);
        names.sort_by(|a, b| a.name.cmp(&b.name));
        // Everything in the table was written through `mount`, so nothing
        // in it is unreadable.
        Ok(Listing {
            names,
            unreadable: Vec::new(),
        })
    }
}

impl Namespace for MountTable {
    fn refresh_style(&self) -> RefreshStyle {
        RefreshStyle::PerMount
    }

    fn root(&self) -> String {
        String::from("mem:")
    }

    fn validate_ttl(&self, ttl: Duration) -> Result<(), NamespaceError> {
        if ttl.is_zero() || ttl > MAX_TABLE_TTL {
            return Err(NamespaceError::InvalidTtl {
                ttl,
                reason: format!(
                    "the mount table accepts from 1 ns to {}",
                    ShownDuration(MAX_TABLE_TTL)
                ),
            });
        }
        Ok(())
    }

    async fn mount(
        &self,
        name: &Name,
        server: &Endpoint,
        ttl: Duration,
        flags: MountFlags,
    ) -> Result<MountReport, NamespaceError> {
        self.mount_now(name, server, ttl, flags)
            .map(MountReport::from)
    }

    async fn unmount(&self, name: &Name, server: &Endpoint) -> Result<(), NamespaceError> {
        self.unmount_now(name, server)
    }

    async fn resolve(&self, name: &Name) -> Result<Resolution, NamespaceError> {
        self.resolve_now(name)
    }

    async fn list(&self, prefix: Option<&Name>) -> Result<Listing, NamespaceError> {
        self.list_now(prefix)
    }
}

impl Worker for MountTable {
    fn kill(&self) {
        self.lock().closed = true;
        self.changed();
        self.inner.reaper.kill();
    }

    fn wait(&self) -> WaitFuture<'_> {
        self.inner.reaper.wait()
    }

    /// The reaper's `state` (as [`TaskWorker`] reports it), how many
    /// `names` and `entries` the table holds in memory (expired ones not
    /// yet reaped included, as [`entry_count`](MountTable::entry_count)
    /// counts them), and whether it is `closed`.
    fn report(&self) -> Option<ReportFuture<'_>> {
        let (names, entries, closed) = {
            let state = self.lock();
            (state.names.len(), state.expiries.len(), state.closed)
        };
        let reaper = self.inner.reaper.report();
        Some(Box::pin(async move {
            let state = match reaper {
                Some(report) => report.await.get("state").cloned(),
                None => None,
            };
            serde_json::json!({
                "state": state,
                "names": names,
                "entries": entries,
                "closed": closed,
            })
        }))
    }
}

impl fmt::Debug for MountTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MountTable")
            .field("names", &state.names.len())
            .field("entries", &state.expiries.len())
            .field("closed", &state.closed)
            .finish()
    }
}

/// The table as an [`EndpointSource`]: a watch answers the servers live
/// under exactly the name, again whenever one is mounted, unmounted, replaced
/// or expires (the reaper removes an expired entry at its deadline), and
/// [`SourceError::Closed`] once the table is killed. Nothing is polled.
impl EndpointSource for MountTable {
    fn watch_endpoints(&self, name: &Name) -> Box<dyn EndpointWatch> {
        Box::new(TableWatch {
            table: Arc::downgrade(&self.inner),
            name: name.clone(),
            changes: self.inner.changes.subscribe(),
            last: None,
        })
    }
}

/// [`MountTable`]'s [`EndpointWatch`]. It holds the table weakly: a watch
/// nobody drives does not keep a table alive that every handle has let go.
struct TableWatch {
    table: std::sync::Weak<TableInner>,
    name: Name,
    changes: watch::Receiver<u64>,
    /// The set last answered; `None` before the first answer.
    last: Option<BTreeSet<Endpoint>>,
}

impl EndpointWatch for TableWatch {
    fn next(&mut self) -> EndpointsFuture<'_> {
        Box::pin(async move {
            loop {
                // Marked seen before reading, so a change made after the
                // read wakes the wait below.
                self.changes.borrow_and_update();
                let Some(inner) = self.table.upgrade() else {
                    return Err(SourceError::Closed);
                };
                let now = match (MountTable { inner }).endpoints_now(&self.name) {
                    Ok(now) => now,
                    Err(_closed) => return Err(SourceError::Closed),
                };
                if self.last.as_ref() != Some(&now) {
                    self.last = Some(now.clone());
                    return Ok(now);
                }
                if self.changes.changed().await.is_err() {
                    return Err(SourceError::Closed);
                }
            }
        })
    }
}

/// The table's data. Every entry is in `names` and, by its deadline, in
/// `expiries`; the two always hold the same entries.
#[derive(Default)]
struct TableState {
    names: HashMap<Name, BTreeMap<Endpoint, Entry>>,
    /// Deadline order, for the reaper. The sequence number tells apart
    /// entries that expire at the same instant.
    expiries: BTreeMap<(Instant, u64), (Name, Endpoint)>,
    sequence: u64,
    closed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    flags: MountFlags,
    expires_at: Instant,
    sequence: u64,
}

impl TableState {
    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    fn live_servers(&self, name: &str, now: Instant) -> Option<Vec<MountedServer>> {
        let servers: Vec<MountedServer> = self
            .names
            .get(name)?
            .iter()
            .filter(|(_, entry)| entry.expires_at > now)
            .map(|(server, entry)| MountedServer {
                server: server.clone(),
                flags: entry.flags,
                ttl_left: Some(entry.expires_at - now),
            })
            .collect();
        (!servers.is_empty()).then_some(servers)
    }

    /// The flags of a live server under `name`, other than `server`, whose
    /// kind differs from `flags`.
    fn conflicting_flags(
        &self,
        name: &Name,
        server: &Endpoint,
        flags: MountFlags,
    ) -> Option<MountFlags> {
        self.names
            .get(name)?
            .iter()
            .find(|(other, entry)| *other != server && !entry.flags.same_kind(flags))
            .map(|(_, entry)| entry.flags)
    }

    /// Removes the expired entries under `name`; whether there were any.
    fn drop_expired_under(&mut self, name: &Name, now: Instant) -> bool {
        let Some(servers) = self.names.get(name) else {
            return false;
        };
        let expired: Vec<Endpoint> = servers
            .iter()
            .filter(|(_, entry)| entry.expires_at <= now)
            .map(|(server, _)| server.clone())
            .collect();
        let mut removed = false;
        for server in expired {
            removed |= self.remove(name, &server);
        }
        removed
    }

    /// Removes every server under `name` but `keep`; whether there was one.
    fn remove_others(&mut self, name: &Name, keep: &Endpoint) -> bool {
        let Some(servers) = self.names.get(name) else {
            return false;
        };
        let others: Vec<Endpoint> = servers.keys().filter(|s| *s != keep).cloned().collect();
        let mut removed = false;
        for server in others {
            removed |= self.remove(name, &server);
        }
        removed
    }

    /// Removes `server`'s entry under `name`; whether there was one.
    fn remove(&mut self, name: &Name, server: &Endpoint) -> bool {
        let Some(servers) = self.names.get_mut(name) else {
            return false;
        };
        let removed = servers.remove(server);
        if let Some(entry) = &removed {
            self.expiries.remove(&(entry.expires_at, entry.sequence));
        }
        if servers.is_empty() {
            self.names.remove(name);
        }
        removed.is_some()
    }

    /// Removes every entry whose deadline is at or before `now`, and returns
    /// the next deadline and whether anything was removed.
    fn reap(&mut self, now: Instant) -> (Option<Instant>, bool) {
        let mut reaped = false;
        while let Some(((expires_at, _), _)) = self.expiries.first_key_value() {
            if *expires_at > now {
                return (Some(*expires_at), reaped);
            }
            reaped = true;
            let Some((_, (name, server))) = self.expiries.pop_first() else {
                break;
            };
            if let Some(servers) = self.names.get_mut(&name) {
                servers.remove(&server);
                if servers.is_empty() {
                    self.names.remove(&name);
                }
            }
        }
        (None, reaped)
    }
}

fn lock(state: &Mutex<TableState>) -> MutexGuard<'_, TableState> {
    // The state holds no invariant a panicking holder could break halfway
    // (every method leaves it consistent before it can panic), so a poisoned
    // lock is safe to keep using.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The reaper: sleeps until the earliest deadline (or until an earlier one
/// is added) and drops what has expired.
async fn reap(
    state: &Mutex<TableState>,
    wake: &Notify,
    changes: &watch::Sender<u64>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let (next_deadline, reaped) = lock(state).reap(Instant::now());
        if reaped {
            changes.send_modify(|count| *count += 1);
        }
        let sleep = async {
            match next_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = sleep => {}
        }
    }
}
