//! Test backends and helpers.
//!
//! [`Flaky`] wraps a real [`MountTable`] and can be told to fail, to be
//! slow, or to hang; it counts operations and records every mount, so
//! tests can ask what the publisher did and when. [`LeaseTable`] is a
//! session-style backend on the paused clock (a lease with a TTL that a
//! keep-alive extends), for the paths etcd takes, tested deterministically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_core_types::{Endpoint, Name, Worker};
use flotilla_publisher::{
    ListedName, Listing, MountFlags, MountOutcome, MountReport, MountTable, MountedServer,
    Namespace, NamespaceError, Publisher, PublisherConfig, PublisherStatus, RefreshStyle,
    RemovedMount, Resolution,
};
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) fn name(text: &str) -> Name {
    Name::new(text).expect("test names are valid")
}

pub(crate) fn server(port: u16) -> Endpoint {
    Endpoint::new("10.0.0.1", port).expect("test endpoints are valid")
}

/// A config with fixed jitter seed and round numbers: period 60 s, TTL 80 s,
/// retries from 1 s doubling to 30 s.
pub(crate) fn config() -> PublisherConfig {
    PublisherConfig::default().with_rng_seed(7)
}

/// Lets every task that can run, run, without moving the paused clock
/// more than a millisecond.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Waits on the paused clock until `status` satisfies `condition`, for at
/// most an hour of (virtual) time.
pub(crate) async fn until(
    publisher: &Publisher,
    condition: impl FnMut(&PublisherStatus) -> bool,
) -> PublisherStatus {
    let mut watch = publisher.watch().await.expect("publisher running");
    let waited = tokio::time::timeout(Duration::from_secs(3600), watch.wait_for(condition)).await;
    let status = waited
        .expect("the condition did not hold within an hour")
        .expect("publisher ended before the condition held");
    status.clone()
}

/// The servers `table` resolves `name` to, exactly (no ancestors).
pub(crate) async fn resolved(table: &MountTable, name: &Name) -> Vec<Endpoint> {
    match table.resolve(name).await {
        Ok(resolution) if resolution.suffix.is_empty() => resolution.endpoints(),
        _ => Vec::new(),
    }
}

/// Stops `publisher`, waits for it, and checks that no task outlived it.
pub(crate) async fn stop_and_check(publisher: Publisher) -> flotilla_core_types::WorkerResult {
    publisher.stop().await;
    let result = publisher.wait().await;
    drop(publisher);
    settle().await;
    result
}

/// How many tasks the runtime has alive.
pub(crate) fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// How one pair's operations fail while the rest of the backend works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairFault {
    /// As if that pair's requests never got an answer in time.
    Unavailable,
    /// Refused outright, never written (as etcd refuses a key it denies).
    Rejected,
}

/// A [`MountTable`] with faults on demand.
#[derive(Clone)]
pub(crate) struct Flaky {
    pub(crate) table: MountTable,
    state: Arc<Mutex<FlakyState>>,
}

#[derive(Default)]
struct FlakyState {
    fail_mounts: bool,
    fail_unmounts: bool,
    hang: bool,
    delay: Duration,
    /// Pairs whose every operation fails on its own, and how.
    failing_pairs: HashMap<(Name, Endpoint), PairFault>,
    mounts: u64,
    unmounts: u64,
    /// Every successful mount: (when it was sent, name, server).
    mount_log: Vec<(Instant, Name, Endpoint)>,
    /// Every mount attempt, failed or not.
    attempts: Vec<(Instant, Name, Endpoint)>,
    /// Every unmount attempt (once any delay is over), failed or not.
    unmount_attempts: Vec<(Instant, Name, Endpoint)>,
    /// The longest gap seen between two successful mounts of one pair.
    longest_gap: Duration,
    last_mount: HashMap<(Name, Endpoint), Instant>,
}

impl Flaky {
    pub(crate) fn new() -> Flaky {
        Flaky {
            table: MountTable::start(),
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, FlakyState> {
        self.state
            .lock()
            .expect("no test panics while holding this lock")
    }

    /// Every operation fails as if the backend were unreachable.
    pub(crate) fn set_down(&self, down: bool) {
        let mut state = self.state();
        state.fail_mounts = down;
        state.fail_unmounts = down;
    }

    /// Every operation on (`name`, `server`) fails with `fault` (or, with
    /// `None`, works again), whatever happens to the other pairs.
    pub(crate) fn set_pair_fault(&self, name: &Name, server: &Endpoint, fault: Option<PairFault>) {
        let pair = (name.clone(), server.clone());
        let mut state = self.state();
        match fault {
            Some(fault) => state.failing_pairs.insert(pair, fault),
            None => state.failing_pairs.remove(&pair),
        };
    }

    fn pair_fault(&self, name: &Name, server: &Endpoint) -> Result<(), NamespaceError> {
        let pair = (name.clone(), server.clone());
        match self.state().failing_pairs.get(&pair) {
            None => Ok(()),
            Some(PairFault::Unavailable) => Err(unreachable_error()),
            Some(PairFault::Rejected) => Err(NamespaceError::rejected(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "injected refusal",
            ))),
        }
    }

    pub(crate) fn set_fail_unmounts(&self, fail: bool) {
        self.state().fail_unmounts = fail;
    }

    /// Every operation waits forever.
    pub(crate) fn set_hang(&self, hang: bool) {
        self.state().hang = hang;
    }

    /// Every operation takes `delay`.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    pub(crate) fn mounts(&self) -> u64 {
        self.state().mounts
    }

    pub(crate) fn unmounts(&self) -> u64 {
        self.state().unmounts
    }

    pub(crate) fn mount_log(&self) -> Vec<(Instant, Name, Endpoint)> {
        self.state().mount_log.clone()
    }

    pub(crate) fn attempts(&self) -> Vec<(Instant, Name, Endpoint)> {
        self.state().attempts.clone()
    }

    pub(crate) fn unmount_attempts(&self) -> Vec<(Instant, Name, Endpoint)> {
        self.state().unmount_attempts.clone()
    }

    pub(crate) fn longest_gap(&self) -> Duration {
        self.state().longest_gap
    }

    async fn before_operation(&self) -> Result<(), NamespaceError> {
        let (delay, hang) = {
            let state = self.state();
            (state.delay, state.hang)
        };
        if hang {
            std::future::pending::<()>().await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

fn unreachable_error() -> NamespaceError {
    NamespaceError::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "injected outage",
    ))
}

impl Namespace for Flaky {
    fn refresh_style(&self) -> RefreshStyle {
        RefreshStyle::PerMount
    }

    fn root(&self) -> String {
        self.table.root()
    }

    fn validate_ttl(&self, ttl: Duration) -> Result<(), NamespaceError> {
        self.table.validate_ttl(ttl)
    }

    async fn mount(
        &self,
        name: &Name,
        server: &Endpoint,
        ttl: Duration,
        flags: MountFlags,
    ) -> Result<MountReport, NamespaceError> {
        let sent_at = Instant::now();
        self.state()
            .attempts
            .push((sent_at, name.clone(), server.clone()));
        self.before_operation().await?;
        if self.state().fail_mounts {
            return Err(unreachable_error());
        }
        self.pair_fault(name, server)?;
        let outcome = self.table.mount(name, server, ttl, flags).await?;
        let mut state = self.state();
        state.mounts += 1;
        state
            .mount_log
            .push((sent_at, name.clone(), server.clone()));
        let pair = (name.clone(), server.clone());
        if let Some(previous) = state.last_mount.insert(pair, sent_at) {
            state.longest_gap = state.longest_gap.max(sent_at - previous);
        }
        Ok(outcome)
    }

    async fn unmount(&self, name: &Name, server: &Endpoint) -> Result<(), NamespaceError> {
        self.before_operation().await?;
        self.state()
            .unmount_attempts
            .push((Instant::now(), name.clone(), server.clone()));
        if self.state().fail_unmounts {
            return Err(unreachable_error());
        }
        self.pair_fault(name, server)?;
        self.table.unmount(name, server).await?;
        let mut state = self.state();
        state.unmounts += 1;
        state.last_mount.remove(&(name.clone(), server.clone()));
        Ok(())
    }

    async fn resolve(&self, name: &Name) -> Result<Resolution, NamespaceError> {
        self.table.resolve(name).await
    }

    async fn list(&self, prefix: Option<&Name>) -> Result<Listing, NamespaceError> {
        self.table.list(prefix).await
    }
}

/// A session-style backend on the paused clock: mounts hang on one lease
/// whose TTL the first mount sets and each keep-alive extends.
#[derive(Clone, Default)]
pub(crate) struct LeaseTable {
    state: Arc<Mutex<LeaseState>>,
    removal: Arc<Notify>,
}

#[derive(Default)]
struct LeaseState {
    lease: Option<LeaseRecord>,
    next_lease: u64,
    grants: u64,
    mounts: u64,
    keep_alives: u64,
    /// Pairs removed behind the publisher's back, not yet reported.
    removed: Vec<RemovedMount>,
    /// Calls of `removed_mounts` so far.
    removal_calls: u64,
}

struct LeaseRecord {
    id: u64,
    ttl: Duration,
    expires_at: Instant,
    entries: BTreeMap<Name, BTreeSet<Endpoint>>,
}

impl LeaseTable {
    fn state(&self) -> MutexGuard<'_, LeaseState> {
        self.state
            .lock()
            .expect("no test panics while holding this lock")
    }

    /// Revokes the lease behind the publisher's back.
    pub(crate) fn revoke(&self) {
        self.state().lease = None;
    }

    /// Deletes one mount behind the publisher's back, as an operator
    /// would, and reports it as etcd's watch does.
    pub(crate) fn remove_behind_back(&self, name: &Name, server: &Endpoint) {
        self.take_away(name, server, false);
    }

    /// Deletes one mount as another server's `replace` mount would, and
    /// reports it so.
    pub(crate) fn replace_behind_back(&self, name: &Name, server: &Endpoint) {
        self.take_away(name, server, true);
    }

    fn take_away(&self, name: &Name, server: &Endpoint, replaced: bool) {
        let mut state = self.state();
        if let Some(lease) = LeaseTable::live_lease(&mut state)
            && let Some(servers) = lease.entries.get_mut(name)
        {
            servers.remove(server);
        }
        state.removed.push(RemovedMount {
            name: name.clone(),
            server: server.clone(),
            replaced,
        });
        drop(state);
        self.removal.notify_one();
    }

    /// How many times the publisher has asked for removals.
    pub(crate) fn removal_calls(&self) -> u64 {
        self.state().removal_calls
    }

    /// (grants, mounts, keep-alives) so far.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let state = self.state();
        (state.grants, state.mounts, state.keep_alives)
    }

    /// The pairs alive now.
    pub(crate) fn alive(&self) -> Vec<(Name, Endpoint)> {
        let now = Instant::now();
        let state = self.state();
        let Some(lease) = state.lease.as_ref().filter(|lease| lease.expires_at > now) else {
            return Vec::new();
        };
        lease
            .entries
            .iter()
            .flat_map(|(name, servers)| servers.iter().map(|s| (name.clone(), s.clone())))
            .collect()
    }

    fn live_lease(state: &mut LeaseState) -> Option<&mut LeaseRecord> {
        let now = Instant::now();
        if state
            .lease
            .as_ref()
            .is_some_and(|lease| lease.expires_at <= now)
        {
            state.lease = None;
        }
        state.lease.as_mut()
    }
}

impl Namespace for LeaseTable {
    fn refresh_style(&self) -> RefreshStyle {
        RefreshStyle::Session
    }

    fn root(&self) -> String {
        String::from("lease:")
    }

    fn validate_ttl(&self, _ttl: Duration) -> Result<(), NamespaceError> {
        Ok(())
    }

    async fn mount(
        &self,
        name: &Name,
        server: &Endpoint,
        ttl: Duration,
        _flags: MountFlags,
    ) -> Result<MountReport, NamespaceError> {
        let mut state = self.state();
        state.mounts += 1;
        if LeaseTable::live_lease(&mut state).is_none() {
            state.next_lease += 1;
            state.grants += 1;
            state.lease = Some(LeaseRecord {
                id: state.next_lease,
                ttl,
                expires_at: Instant::now() + ttl,
                entries: BTreeMap::new(),
            });
        }
        let lease = state.lease.as_mut().expect("granted above");
        let created = lease
            .entries
            .entry(name.clone())
            .or_default()
            .insert(server.clone());
        let outcome = if created {
            MountOutcome::Created
        } else {
            MountOutcome::Refreshed
        };
        Ok(outcome.into())
    }

    async fn unmount(&self, name: &Name, server: &Endpoint) -> Result<(), NamespaceError> {
        if let Some(lease) = LeaseTable::live_lease(&mut self.state())
            && let Some(servers) = lease.entries.get_mut(name)
        {
            servers.remove(server);
        }
        Ok(())
    }

    async fn keep_alive(&self) -> Result<(), NamespaceError> {
        let mut state = self.state();
        state.keep_alives += 1;
        match LeaseTable::live_lease(&mut state) {
            Some(lease) => {
                lease.expires_at = Instant::now() + lease.ttl;
                Ok(())
            }
            None => Err(NamespaceError::EntriesLost {
                reason: String::from("lease not found"),
            }),
        }
    }

    async fn release(&self) -> Result<(), NamespaceError> {
        self.state().lease = None;
        Ok(())
    }

    async fn resolve(&self, name: &Name) -> Result<Resolution, NamespaceError> {
        let mut state = self.state();
        let lease_id = LeaseTable::live_lease(&mut state).map(|lease| lease.id);
        let servers: Vec<MountedServer> = state
            .lease
            .as_ref()
            .filter(|_| lease_id.is_some())
            .and_then(|lease| lease.entries.get(name))
            .into_iter()
            .flatten()
            .map(|server| MountedServer {
                server: server.clone(),
                flags: MountFlags::NONE,
                ttl_left: None,
            })
            .collect();
        if servers.is_empty() {
            return Err(NamespaceError::NotFound { name: name.clone() });
        }
        Ok(Resolution {
            mounted_name: name.clone(),
            suffix: String::new(),
            servers,
            unreadable: Vec::new(),
        })
    }

    async fn list(&self, prefix: Option<&Name>) -> Result<Listing, NamespaceError> {
        let names = self
            .alive()
            .into_iter()
            .filter(|(name, _)| prefix.is_none_or(|prefix| name == prefix))
            .map(|(name, server)| ListedName {
                name,
                servers: vec![MountedServer {
                    server,
                    flags: MountFlags::NONE,
                    ttl_left: None,
                }],
            })
            .collect();
        Ok(Listing {
            names,
            unreadable: Vec::new(),
        })
    }

    async fn removed_mounts(&self) -> Result<Vec<RemovedMount>, NamespaceError> {
        self.state().removal_calls += 1;
        loop {
            let notified = self.removal.notified();
            let removed = std::mem::take(&mut self.state().removed);
            if !removed.is_empty() {
                return Ok(removed);
            }
            notified.await;
        }
    }
}
