//! The publisher's actor: it owns the desired names and servers, a record
//! per (name, server) pair, and a schedule of when each pair needs work.
//!
//! Scheduling: every pair has at most one due time (`next_attempt_at`),
//! kept in a min-heap with lazy deletion (an entry whose time no longer
//! matches its pair is skipped). Pairs that are due move to a ready queue
//! ordered by how soon their mount lapses, and at most
//! `max_in_flight` operations run at once, as futures polled by the actor
//! itself. So one slow backend call delays nothing but itself, and when many
//! pairs are due together the one closest to expiry goes first.
//!
//! Losses: a refresh that finds its mount gone or a session that is gone
//! makes every pair due now; mounts the backend reports removed by someone
//! else are due now, each. Operations that were under way when a loss was
//! seen carry an older `loss_epoch`, and their success does not count as a
//! mount.
//!
//! Outages: only a backend-wide outage ends with everything due at once. A
//! transport failure opens an [`Outage`]; it becomes widespread when a
//! second, different operation fails before anything succeeds. The first
//! success after a widespread outage, of an operation sent after the
//! outage began, makes due the pairs whose failures began within it; a
//! pair that was failing before, alone, keeps its own backoff, however many
//! other pairs succeed around it. A success of an operation sent before the
//! outage began shows the backend was answering all along, and wakes
//! nothing. A pair woken so whose retry fails again is failing on its own:
//! until it succeeds, its failures count toward no outage and no recovery
//! wakes it, so two pairs failing alone cannot keep each other in step.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core_types::{Endpoint, Name, WorkerError, WorkerResult};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Error, MountOutcome, MountReport, MountState, MountStatus, Namespace, NamespaceError, Phase,
    Published, PublisherConfig, PublisherStatus, RefreshStyle, RemovedMount,
};

/// A request from a [`Publisher`](crate::Publisher) handle.
pub(crate) enum Command {
    AddName(Name, oneshot::Sender<()>),
    RemoveName(Name, oneshot::Sender<()>),
    AddServer(Endpoint, oneshot::Sender<()>),
    RemoveServer(Endpoint, oneshot::Sender<()>),
    Published(oneshot::Sender<Vec<Published>>),
    Status(oneshot::Sender<PublisherStatus>),
    Watch(oneshot::Sender<watch::Receiver<PublisherStatus>>),
    /// The counts and the last error of [`Worker::report`](flotilla_core_types::Worker::report).
    Report(oneshot::Sender<serde_json::Value>),
}

/// A (name, server) pair. Shared by reference count between the map of
/// pairs and the schedule, so that scheduling copies no strings.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct MountKey {
    name: Name,
    server: Endpoint,
}

/// What the publisher knows and wants of one pair.
#[derive(Debug)]
struct Mount {
    desired: MountState,
    observed: MountState,
    in_flight: bool,
    /// Whether a mount may have reached the backend since the last
    /// confirmed unmount (a mount that timed out may still have landed).
    written: bool,
    consecutive_failures: u32,
    /// When the current run of failures began (its first failure ended).
    failing_since: Option<Instant>,
    /// The end of an outage made this pair due, and it has not succeeded
    /// since: its failures are its own, so they neither make an outage
    /// widespread nor get it woken by the next recovery.
    woken_by_recovery: bool,
    next_attempt_at: Option<Instant>,
    expires_at: Option<Instant>,
    last_mounted_at: Option<Instant>,
    last_unmounted_at: Option<Instant>,
    /// Boxed: errors are rare, and a mount record is kept per pair.
    last_error: Option<Box<NamespaceError>>,
    /// The first unreadable entry under the name that the last successful
    /// mount reported (someone else's, left alone).
    unreadable: Option<Box<NamespaceError>>,
    /// Removals by someone else in a row, each within a refresh period of
    /// the one before: the backoff of restoring this pair.
    removals_in_a_row: u32,
    last_removed_at: Option<Instant>,
}

impl Mount {
    fn wanted() -> Mount {
        Mount {
            desired: MountState::Mounted,
            observed: MountState::Unmounted,
            in_flight: false,
            written: false,
            consecutive_failures: 0,
            failing_since: None,
            woken_by_recovery: false,
            next_attempt_at: None,
            expires_at: None,
            last_mounted_at: None,
            last_unmounted_at: None,
            last_error: None,
            unreadable: None,
            removals_in_a_row: 0,
            last_removed_at: None,
        }
    }

    /// Counts a removal by someone else at `now`, and says how long to wait
    /// before mounting the pair again: not at all the first time, then the
    /// pair's retry backoff while removals keep coming within a refresh
    /// period of each other. So no pattern of removals (two publishers
    /// undoing each other, a script deleting in a loop) makes a pair
    /// re-mount at network speed.
    fn restore_delay(&mut self, config: &PublisherConfig, now: Instant, unit: f64) -> Duration {
        let recently = self
            .last_removed_at
            .is_some_and(|at| now.saturating_duration_since(at) < config.refresh_period);
        self.removals_in_a_row = if recently {
            self.removals_in_a_row.saturating_add(1)
        } else {
            1
        };
        self.last_removed_at = Some(now);
        if self.removals_in_a_row <= 1 {
            Duration::ZERO
        } else {
            config.retry_after(self.removals_in_a_row - 1, unit)
        }
    }
}

/// The session of a [`RefreshStyle::Session`] backend, as far as the
/// publisher tracks it.
#[derive(Debug, Default)]
struct Session {
    /// A mount has succeeded since the session was last lost, so the
    /// backend holds a session to keep alive.
    active: bool,
    in_flight: bool,
    keep_alive_at: Option<Instant>,
    expires_at: Option<Instant>,
    consecutive_failures: u32,
    failing_since: Option<Instant>,
}

/// Transport failures seen since the last success of any operation.
#[derive(Debug)]
struct Outage {
    /// When the first of them ended.
    since: Instant,
    /// Which operation that was: a pair, or `None` for the keep-alive.
    first: Option<Arc<MountKey>>,
    /// A different operation has failed since, with nothing succeeding in
    /// between: the backend, not one pair, is failing.
    widespread: bool,
}

/// The most recent failure of any operation, for the report: kept after
/// the operation succeeds again, so an operator sees what went wrong last
/// (the report's `failing` count says whether it still does).
#[derive(Debug)]
struct LastError {
    at: Instant,
    /// What failed: `mount`, `unmount`, `keep-alive` or `removal watch`.
    operation: &'static str,
    /// The pair it failed for, if it was a pair's.
    pair: Option<Arc<MountKey>>,
    error: NamespaceError,
}

impl LastError {
    /// What an operator reads: `mount of 10.0.0.1:2 under b: naming
    /// backend unavailable: …`.
    fn describe(&self) -> String {
        match &self.pair {
            Some(key) => format!(
                "{} of {} under {}: {}",
                self.operation, key.server, key.name, self.error
            ),
            None => format!("{}: {}", self.operation, self.error),
        }
    }
}

/// A pair's place in the schedule.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    key: Arc<MountKey>,
}

/// A due pair waiting for a free operation slot; the soonest to lapse goes
/// first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Ready {
    lapses_at: Instant,
    key: Arc<MountKey>,
}

/// What a backend operation was, and for which pair.
enum Operation {
    Mount {
        key: Arc<MountKey>,
        was_mounted: bool,
        /// Whether the pair may have been in the backend before this
        /// attempt, to fall back on when the attempt is refused outright.
        was_written: bool,
    },
    Unmount {
        key: Arc<MountKey>,
    },
    KeepAlive,
}

/// A finished backend operation.
struct Done {
    operation: Operation,
    sent_at: Instant,
    loss_epoch: u64,
    result: Result<Option<MountReport>, NamespaceError>,
}

type OperationFuture = Pin<Box<dyn Future<Output = Done> + Send>>;

/// The one call of [`Namespace::removed_mounts`] the actor keeps under way.
type RemovalsFuture =
    Pin<Box<dyn Future<Output = Result<Vec<RemovedMount>, NamespaceError>> + Send>>;

pub(crate) struct Actor<N> {
    namespace: Arc<N>,
    config: PublisherConfig,
    ttl: Duration,
    style: RefreshStyle,
    root: String,
    names: BTreeSet<Name>,
    servers: BTreeSet<Endpoint>,
    mounts: HashMap<Arc<MountKey>, Mount>,
    schedule: BinaryHeap<Reverse<Due>>,
    ready: BinaryHeap<Reverse<Ready>>,
    in_flight: FuturesUnordered<OperationFuture>,
    session: Session,
    /// Bumped whenever the backend is found to have lost our mounts.
    loss_epoch: u64,
    /// Transport failures since the last success, if any.
    outage: Option<Outage>,
    /// Failures of `removed_mounts` in a row, for its backoff.
    removal_failures: u32,
    rng: fastrand::Rng,
    phase: watch::Sender<Phase>,
    status: Option<watch::Sender<PublisherStatus>>,
    status_changed: bool,
    last_error: Option<LastError>,
}

impl<N: Namespace> Actor<N> {
    pub(crate) fn new(
        namespace: N,
        config: PublisherConfig,
        phase: watch::Sender<Phase>,
    ) -> Actor<N> {
        let rng = config
            .rng_seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Actor {
            ttl: config.ttl(),
            style: namespace.refresh_style(),
            root: namespace.root(),
            namespace: Arc::new(namespace),
            config,
            names: BTreeSet::new(),
            servers: BTreeSet::new(),
            mounts: HashMap::new(),
            schedule: BinaryHeap::new(),
            ready: BinaryHeap::new(),
            in_flight: FuturesUnordered::new(),
            session: Session::default(),
            loss_epoch: 0,
            outage: None,
            removal_failures: 0,
            rng,
            phase,
            status: None,
            status_changed: false,
            last_error: None,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
    ) -> WorkerResult {
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut removals = self.watch_removals(Duration::ZERO);
        loop {
            self.dispatch_due();
            self.publish_status();
            let wake_at = self.next_wake();
            if let Some(at) = wake_at {
                timer.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.complete(done);
                    // Take in every other operation that has finished too,
                    // so that one status snapshot covers them all (at most
                    // `max_in_flight` of them).
                    while let Some(Some(done)) = self.in_flight.next().now_or_never() {
                        self.complete(done);
                    }
                }
                removed = &mut removals => {
                    let delay = self.removed(removed);
                    removals = self.watch_removals(delay);
                }
                () = &mut timer, if wake_at.is_some() => {}
            }
        }
        // Dropped before unmounting: the release's own deletes are no news.
        drop(removals);
        // Refuse whatever is queued: those callers get `Error::Stopped`.
        commands.close();
        while commands.try_recv().is_ok() {}
        self.shut_down().await
    }

    /// The next call of [`Namespace::removed_mounts`], after `delay`.
    fn watch_removals(&self, delay: Duration) -> RemovalsFuture {
        let namespace = Arc::clone(&self.namespace);
        Box::pin(
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                namespace.removed_mounts().await
            }
            .instrument(tracing::debug_span!("removed_mounts")),
        )
    }

    /// Takes in what [`Namespace::removed_mounts`] returned: every pair
    /// still wanted and confirmed mounted is mounted again, at once the
    /// first time and after the pair's own backoff when removals repeat; a
    /// pair another server's `replace` mount took the place of is left
    /// replaced. Returns how long to wait before asking again.
    fn removed(&mut self, removed: Result<Vec<RemovedMount>, NamespaceError>) -> Duration {
        let pairs = match removed {
            Ok(pairs) => {
                self.removal_failures = 0;
                pairs
            }
            Err(error) => {
                self.removal_failures = self.removal_failures.saturating_add(1);
                let delay = self
                    .config
                    .retry_after(self.removal_failures, self.rng.f64());
                tracing::warn!(%error, ?delay, "cannot follow removals of our mounts; trying again");
                self.record_error("removal watch", None, error);
                return delay;
            }
        };
        let now = Instant::now();
        for removed in pairs {
            let key = MountKey {
                name: removed.name,
                server: removed.server,
            };
            let unit = self.rng.f64();
            let Some(mount) = self.mounts.get_mut(&key) else {
                continue;
            };
            if mount.in_flight || mount.desired != MountState::Mounted {
                continue; // its own operation, under way or due, settles it
            }
            if removed.replaced {
                tracing::info!(name = %key.name, server = %key.server,
                    "another server's replace mount took our mount's place; left replaced");
                mount.observed = MountState::Replaced;
                mount.expires_at = None;
                mount.next_attempt_at = None;
                // Its key went in the replacing transaction.
                mount.written = false;
                self.status_changed = true;
                continue;
            }
            if mount.observed != MountState::Mounted {
                continue; // a mount is due already
            }
            let delay = mount.restore_delay(&self.config, now, unit);
            tracing::warn!(name = %key.name, server = %key.server, ?delay,
                "our mount was removed by someone else; mounting it again");
            mount.observed = MountState::Mounting;
            mount.expires_at = None;
            self.status_changed = true;
            let key = self.key_of(&key);
            self.schedule(&key, now + delay);
        }
        Duration::ZERO
    }

    // ---- commands ----

    fn handle(&mut self, command: Command) {
        match command {
            Command::AddName(name, done) => {
                if self.names.insert(name.clone()) {
                    let servers: Vec<Endpoint> = self.servers.iter().cloned().collect();
                    for server in servers {
                        self.want(&name, &server);
                    }
                }
                let _ = done.send(());
            }
            Command::RemoveName(name, done) => {
                if self.names.remove(&name) {
                    let servers: Vec<Endpoint> = self.servers.iter().cloned().collect();
                    for server in servers {
                        self.unwant(&name, &server);
                    }
                }
                let _ = done.send(());
            }
            Command::AddServer(server, done) => {
                if self.servers.insert(server.clone()) {
                    let names: Vec<Name> = self.names.iter().cloned().collect();
                    for name in names {
                        self.want(&name, &server);
                    }
                }
                let _ = done.send(());
            }
            Command::RemoveServer(server, done) => {
                if self.servers.remove(&server) {
                    let names: Vec<Name> = self.names.iter().cloned().collect();
                    for name in names {
                        self.unwant(&name, &server);
                    }
                }
                let _ = done.send(());
            }
            Command::Published(reply) => {
                let _ = reply.send(self.published());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Report(reply) => {
                let _ = reply.send(self.report());
            }
            Command::Watch(reply) => {
                let snapshot = self.snapshot();
                let receiver = match &self.status {
                    Some(sender) => {
                        sender.send_replace(snapshot);
                        sender.subscribe()
                    }
                    None => {
                        let (sender, receiver) = watch::channel(snapshot);
                        self.status = Some(sender);
                        receiver
                    }
                };
                self.status_changed = false;
                let _ = reply.send(receiver);
            }
        }
    }

    /// The pair is wanted mounted.
    fn want(&mut self, name: &Name, server: &Endpoint) {
        let key = MountKey {
            name: name.clone(),
            server: server.clone(),
        };
        let now = Instant::now();
        match self.mounts.get_mut(&key) {
            None => {
                let key = Arc::new(key);
                self.mounts.insert(Arc::clone(&key), Mount::wanted());
                self.schedule(&key, now);
            }
            Some(mount) => {
                mount.desired = MountState::Mounted;
                if !mount.in_flight {
                    let key = self.key_of(&key);
                    self.schedule(&key, now);
                }
            }
        }
        self.status_changed = true;
    }

    /// The pair is wanted unmounted.
    fn unwant(&mut self, name: &Name, server: &Endpoint) {
        let key = MountKey {
            name: name.clone(),
            server: server.clone(),
        };
        let Some(mount) = self.mounts.get_mut(&key) else {
            return;
        };
        mount.desired = MountState::Unmounted;
        self.status_changed = true;
        if mount.in_flight {
            return; // its completion schedules the unmount
        }
        if !mount.written {
            // Nothing can be in the backend: forget the pair.
            self.mounts.remove(&key);
            self.namespace.forgotten(&key.name, &key.server);
            return;
        }
        let key = self.key_of(&key);
        self.schedule(&key, Instant::now());
    }

    fn key_of(&self, key: &MountKey) -> Arc<MountKey> {
        let (shared, _) = self
            .mounts
            .get_key_value(key)
            .expect("key_of is called only for pairs in the map");
        Arc::clone(shared)
    }

    // ---- scheduling and dispatch ----

    fn schedule(&mut self, key: &Arc<MountKey>, at: Instant) {
        if let Some(mount) = self.mounts.get_mut(key) {
            mount.next_attempt_at = Some(at);
            self.schedule.push(Reverse(Due {
                at,
                key: Arc::clone(key),
            }));
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let pair = self.schedule.peek().map(|Reverse(due)| due.at);
        let keep_alive = if self.session.in_flight {
            None
        } else {
            self.session.keep_alive_at
        };
        match (pair, keep_alive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves every due pair to the ready queue, then starts operations up
    /// to the in-flight limit.
    fn dispatch_due(&mut self) {
        let now = Instant::now();
        if let Some(at) = self.session.keep_alive_at
            && at <= now
            && !self.session.in_flight
        {
            self.start_keep_alive(now);
        }
        while let Some(Reverse(due)) = self.schedule.peek() {
            if due.at > now {
                break;
            }
            let Some(Reverse(due)) = self.schedule.pop() else {
                break;
            };
            let Some(mount) = self.mounts.get(&due.key) else {
                continue;
            };
            if mount.in_flight || mount.next_attempt_at != Some(due.at) {
                continue; // superseded
            }
            let lapses_at = mount.expires_at.unwrap_or(due.at);
            self.ready.push(Reverse(Ready {
                lapses_at,
                key: due.key,
            }));
        }
        while self.in_flight.len() < self.config.max_in_flight {
            let Some(Reverse(ready)) = self.ready.pop() else {
                break;
            };
            let still_due = self.mounts.get(&ready.key).is_some_and(|mount| {
                !mount.in_flight && mount.next_attempt_at.is_some_and(|at| at <= now)
            });
            if still_due {
                self.start_operation(ready.key, now);
            }
        }
    }

    fn start_operation(&mut self, key: Arc<MountKey>, now: Instant) {
        let Some(mount) = self.mounts.get_mut(&key) else {
            return;
        };
        mount.in_flight = true;
        mount.next_attempt_at = None;
        let namespace = Arc::clone(&self.namespace);
        let timeout = self.config.operation_timeout;
        let loss_epoch = self.loss_epoch;
        if mount.desired == MountState::Mounted {
            let was_mounted = mount.observed == MountState::Mounted;
            if !was_mounted {
                mount.observed = MountState::Mounting;
                self.status_changed = true;
            }
            let was_written = std::mem::replace(&mut mount.written, true);
            let (ttl, flags) = (self.ttl, self.config.flags);
            let span = tracing::debug_span!("mount", name = %key.name, server = %key.server, refresh = was_mounted);
            self.in_flight.push(Box::pin(
                async move {
                    let result =
                        bounded(timeout, namespace.mount(&key.name, &key.server, ttl, flags)).await;
                    Done {
                        operation: Operation::Mount {
                            key,
                            was_mounted,
                            was_written,
                        },
                        sent_at: now,
                        loss_epoch,
                        result: result.map(Some),
                    }
                }
                .instrument(span),
            ));
        } else {
            mount.observed = MountState::Unmounting;
            self.status_changed = true;
            let span = tracing::debug_span!("unmount", name = %key.name, server = %key.server);
            self.in_flight.push(Box::pin(
                async move {
                    let result = bounded(timeout, namespace.unmount(&key.name, &key.server)).await;
                    Done {
                        operation: Operation::Unmount { key },
                        sent_at: now,
                        loss_epoch,
                        result: result.map(|()| None),
                    }
                }
                .instrument(span),
            ));
        }
    }

    fn start_keep_alive(&mut self, now: Instant) {
        self.session.in_flight = true;
        self.session.keep_alive_at = None;
        let namespace = Arc::clone(&self.namespace);
        let timeout = self.config.operation_timeout;
        let loss_epoch = self.loss_epoch;
        self.in_flight.push(Box::pin(
            async move {
                let result = bounded(timeout, namespace.keep_alive()).await;
                Done {
                    operation: Operation::KeepAlive,
                    sent_at: now,
                    loss_epoch,
                    result: result.map(|()| None),
                }
            }
            .instrument(tracing::debug_span!("keep_alive")),
        ));
    }

    // ---- completions ----

    fn complete(&mut self, done: Done) {
        let Done {
            operation,
            sent_at,
            loss_epoch,
            result,
        } = done;
        match operation {
            Operation::KeepAlive => self.keep_alive_done(sent_at, result.map(|_| ())),
            Operation::Mount {
                key,
                was_mounted,
                was_written,
            } => {
                self.mount_done(&key, was_mounted, was_written, sent_at, loss_epoch, result);
            }
            Operation::Unmount { key } => self.unmount_done(&key, sent_at, result.map(|_| ())),
        }
    }

    fn mount_done(
        &mut self,
        key: &Arc<MountKey>,
        was_mounted: bool,
        was_written: bool,
        sent_at: Instant,
        loss_epoch: u64,
        result: Result<Option<MountReport>, NamespaceError>,
    ) {
        let now = Instant::now();
        let report = match result {
            Ok(report) => report,
            Err(error) => {
                self.mount_failed(key, error, was_written, now);
                return;
            }
        };
        let outcome = report.as_ref().map(|report| report.outcome);
        let unreadable = report.and_then(|report| report.unreadable.into_iter().next());
        let found_gone = self.style == RefreshStyle::PerMount
            && was_mounted
            && outcome == Some(MountOutcome::Created);
        if found_gone {
            self.entries_lost("a refresh found its mount gone");
        } else if loss_epoch != self.loss_epoch {
            // Sent before a loss was seen: it may have landed on the lost
            // session. Mount it again.
            self.status_changed = true;
            if let Some(mount) = self.mounts.get_mut(key) {
                mount.in_flight = false;
                mount.observed = MountState::Mounting;
            }
            self.schedule(key, now);
            return;
        }
        self.end_outage(sent_at, now);
        if self.style == RefreshStyle::Session && !self.session.active {
            self.session.active = true;
            self.session.expires_at = Some(sent_at + self.ttl);
            self.session.keep_alive_at = Some(sent_at + self.refresh_after());
        }
        let clean_refresh = was_mounted
            && self
                .mounts
                .get(key)
                .is_some_and(|mount| mount.consecutive_failures == 0);
        let refresh_at = sent_at + self.next_refresh(clean_refresh);
        let (style, ttl, session_expiry) = (self.style, self.ttl, self.session.expires_at);
        let Some(mount) = self.mounts.get_mut(key) else {
            return;
        };
        self.status_changed |= !clean_refresh || mount.unreadable.is_some() != unreadable.is_some();
        mount.unreadable = unreadable.map(Box::new);
        mount.in_flight = false;
        mount.observed = MountState::Mounted;
        mount.consecutive_failures = 0;
        mount.failing_since = None;
        mount.woken_by_recovery = false;
        mount.last_error = None;
        mount.last_mounted_at = Some(now);
        mount.expires_at = match style {
            RefreshStyle::Session => session_expiry,
            _ => Some(sent_at + ttl),
        };
        tracing::debug!(name = %key.name, server = %key.server, refresh = was_mounted, "mounted");
        if mount.desired == MountState::Unmounted {
            self.schedule(key, now);
        } else if style == RefreshStyle::PerMount {
            self.schedule(key, refresh_at);
        }
    }

    fn mount_failed(
        &mut self,
        key: &Arc<MountKey>,
        error: NamespaceError,
        was_written: bool,
        now: Instant,
    ) {
        self.status_changed = true;
        tracing::warn!(name = %key.name, server = %key.server, %error, "mount failed");
        self.note_failure(&error, Some(key), now);
        self.record_error("mount", Some(key), error.clone());
        let unit = self.rng.f64();
        let Some(mount) = self.mounts.get_mut(key) else {
            return;
        };
        mount.in_flight = false;
        if !error.may_have_taken_effect() {
            // Refused outright: this attempt wrote nothing, so the pair is
            // in the backend only if it was before.
            mount.written = was_written;
        }
        count_failure(mount, now);
        let retry_at = now + self.config.retry_after(mount.consecutive_failures, unit);
        let lost = error.is_entries_lost();
        mount.last_error = Some(Box::new(error));
        if mount.desired == MountState::Unmounted {
            if mount.written {
                self.schedule(key, now);
            } else {
                tracing::debug!(name = %key.name, server = %key.server, "never written; forgotten");
                self.mounts.remove(key);
                self.namespace.forgotten(&key.name, &key.server);
            }
        } else if lost {
            self.entries_lost("the backend's session is gone");
        } else {
            self.schedule(key, retry_at);
        }
    }

    fn unmount_done(
        &mut self,
        key: &Arc<MountKey>,
        sent_at: Instant,
        result: Result<(), NamespaceError>,
    ) {
        self.status_changed = true;
        let now = Instant::now();
        let unit = self.rng.f64();
        match result {
            Ok(()) => {
                self.end_outage(sent_at, now);
                let Some(mount) = self.mounts.get_mut(key) else {
                    return;
                };
                tracing::debug!(name = %key.name, server = %key.server, "unmounted");
                mount.in_flight = false;
                mount.written = false;
                mount.observed = MountState::Unmounted;
                mount.expires_at = None;
                mount.consecutive_failures = 0;
                mount.failing_since = None;
                mount.woken_by_recovery = false;
                mount.last_error = None;
                mount.last_unmounted_at = Some(now);
                if mount.desired == MountState::Mounted {
                    self.schedule(key, now);
                } else {
                    self.mounts.remove(key);
                }
            }
            Err(error) => {
                tracing::warn!(name = %key.name, server = %key.server, %error, "unmount failed");
                self.note_failure(&error, Some(key), now);
                self.record_error("unmount", Some(key), error.clone());
                let Some(mount) = self.mounts.get_mut(key) else {
                    return;
                };
                mount.in_flight = false;
                count_failure(mount, now);
                mount.last_error = Some(Box::new(error));
                let at = if mount.desired == MountState::Mounted {
                    now
                } else {
                    now + self.config.retry_after(mount.consecutive_failures, unit)
                };
                self.schedule(key, at);
            }
        }
    }

    fn keep_alive_done(&mut self, sent_at: Instant, result: Result<(), NamespaceError>) {
        self.session.in_flight = false;
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.end_outage(sent_at, now);
                let clean = self.session.consecutive_failures == 0;
                self.session.consecutive_failures = 0;
                self.session.failing_since = None;
                self.session.expires_at = Some(sent_at + self.ttl);
                self.session.keep_alive_at = Some(sent_at + self.next_refresh(clean));
                let expires_at = self.session.expires_at;
                for mount in self.mounts.values_mut() {
                    if mount.observed == MountState::Mounted {
                        mount.expires_at = expires_at;
                    }
                }
            }
            Err(error) if error.is_entries_lost() => {
                tracing::warn!(%error, "session lost");
                self.record_error("keep-alive", None, error);
                self.entries_lost("the backend's session is gone");
            }
            Err(error) => {
                tracing::warn!(%error, "keep-alive failed");
                self.note_failure(&error, None, now);
                self.record_error("keep-alive", None, error);
                self.session.consecutive_failures =
                    self.session.consecutive_failures.saturating_add(1);
                self.session.failing_since.get_or_insert(now);
                let delay = self
                    .config
                    .retry_after(self.session.consecutive_failures, self.rng.f64());
                self.session.keep_alive_at = Some(now + delay);
            }
        }
    }

    /// The backend lost our mounts: every wanted pair is due now.
    fn entries_lost(&mut self, reason: &str) {
        self.status_changed = true;
        tracing::warn!(
            reason,
            "the backend lost our mounts; mounting everything again"
        );
        self.loss_epoch += 1;
        self.session = Session::default();
        let now = Instant::now();
        let due: Vec<Arc<MountKey>> = self
            .mounts
            .iter_mut()
            .filter(|(_, mount)| {
                mount.desired == MountState::Mounted
                    && !mount.in_flight
                    && mount.observed != MountState::Replaced
            })
            .map(|(key, mount)| {
                mount.observed = MountState::Mounting;
                mount.expires_at = None;
                Arc::clone(key)
            })
            .collect();
        for key in due {
            self.schedule(&key, now);
        }
    }

    /// Records a failure of `operation` (a pair, or `None` for the
    /// keep-alive) in the outage it may belong to.
    fn note_failure(
        &mut self,
        error: &NamespaceError,
        operation: Option<&Arc<MountKey>>,
        now: Instant,
    ) {
        if !is_transport_failure(error) {
            return;
        }
        let woken = operation
            .and_then(|key| self.mounts.get(key))
            .is_some_and(|mount| mount.woken_by_recovery);
        if woken {
            return; // failing on its own: see `Mount::woken_by_recovery`
        }
        match &mut self.outage {
            None => {
                self.outage = Some(Outage {
                    since: now,
                    first: operation.cloned(),
                    widespread: false,
                });
            }
            Some(outage) => {
                if !outage.widespread && outage.first.as_ref() != operation {
                    tracing::debug!("a second operation failed: the backend looks down");
                    outage.widespread = true;
                }
            }
        }
    }

    /// A success of an operation sent at `sent_at`. After a widespread
    /// outage the backend is back, so every operation whose failures began
    /// within the outage is due now; pairs that were failing before it, or
    /// failing alone, keep their backoff.
    ///
    /// An operation sent no later than the outage's first failure ended,
    /// and answered, shows that the backend was answering all along: the
    /// failures were each their own (pairs failing alone, back to back),
    /// and nothing is woken. Nor is a pair woken twice without a success in
    /// between.
    fn end_outage(&mut self, sent_at: Instant, now: Instant) {
        let Some(outage) = self.outage.take() else {
            return;
        };
        if !outage.widespread {
            return;
        }
        if sent_at <= outage.since {
            tracing::debug!("an operation sent before the failures succeeded: no outage");
            return;
        }
        tracing::info!("the backend answers again; retrying what the outage failed now");
        let began_in_outage = |since: Option<Instant>| since.is_some_and(|at| at >= outage.since);
        let due: Vec<Arc<MountKey>> = self
            .mounts
            .iter()
            .filter(|(_, mount)| {
                !mount.in_flight
                    && !mount.woken_by_recovery
                    && began_in_outage(mount.failing_since)
                    && mount
                        .last_error
                        .as_deref()
                        .is_some_and(is_transport_failure)
            })
            .map(|(key, _)| Arc::clone(key))
            .collect();
        for key in due {
            if let Some(mount) = self.mounts.get_mut(&key) {
                mount.woken_by_recovery = true;
            }
            self.schedule(&key, now);
        }
        if !self.session.in_flight && began_in_outage(self.session.failing_since) {
            self.session.keep_alive_at = Some(now);
        }
    }

    fn refresh_after(&mut self) -> Duration {
        self.config.refresh_after(self.rng.f64())
    }

    /// When the next refresh is due after one that succeeded. Only a first
    /// mount (or the first success after failures) draws a jittered, early
    /// deadline; a clean refresh keeps the phase it has, a whole period
    /// later. Mounts made together are spread once and stay spread, without
    /// every refresh coming early (which would cost a tenth more operations
    /// at the default jitter).
    fn next_refresh(&mut self, after_clean_refresh: bool) -> Duration {
        if after_clean_refresh {
            self.config.refresh_period
        } else {
            self.refresh_after()
        }
    }

    // ---- reporting ----

    fn record_error(
        &mut self,
        operation: &'static str,
        pair: Option<&Arc<MountKey>>,
        error: NamespaceError,
    ) {
        self.last_error = Some(LastError {
            at: Instant::now(),
            operation,
            pair: pair.cloned(),
            error,
        });
    }

    /// What an operator wants to see, as counts over every pair (one pass,
    /// no snapshot copied): see [`Publisher`](crate::Publisher)'s `report`.
    fn report(&self) -> serde_json::Value {
        let now = Instant::now();
        let (mut mounted, mut mounting, mut failing, mut replaced, mut unmounting) =
            (0_usize, 0_usize, 0_usize, 0_usize, 0_usize);
        let mut tightest: Option<Instant> = None;
        for mount in self.mounts.values() {
            if mount.consecutive_failures > 0 {
                failing += 1;
            }
            if mount.desired != MountState::Mounted {
                unmounting += 1;
                continue;
            }
            let live_until = mount.expires_at.filter(|at| *at > now);
            match (mount.observed, live_until) {
                (MountState::Mounted, Some(at)) => {
                    mounted += 1;
                    tightest = Some(tightest.map_or(at, |earliest| earliest.min(at)));
                }
                (MountState::Replaced, _) => replaced += 1,
                _ => mounting += 1,
            }
        }
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let last_error = self.last_error.as_ref();
        serde_json::json!({
            "phase": self.phase.borrow().as_str(),
            "root": self.root,
            "names": self.names.len(),
            "servers": self.servers.len(),
            "pairs": self.mounts.len(),
            "mounted": mounted,
            "mounting": mounting,
            "failing": failing,
            "replaced": replaced,
            "unmounting": unmounting,
            "tightest_ttl_left_ms": tightest.map(|at| millis(at - now)),
            "last_error": last_error.map(LastError::describe),
            "last_error_ago_ms": last_error.map(|last| millis(now - last.at)),
        })
    }

    fn publish_status(&mut self) {
        if !std::mem::take(&mut self.status_changed) {
            return;
        }
        let Some(sender) = &self.status else {
            return;
        };
        if sender.receiver_count() == 0 {
            self.status = None;
            return;
        }
        let snapshot = self.snapshot();
        if let Some(sender) = &self.status {
            sender.send_replace(snapshot);
        }
    }

    fn snapshot(&self) -> PublisherStatus {
        let now = Instant::now();
        let mut mounts: Vec<MountStatus> = self
            .mounts
            .iter()
            .map(|(key, mount)| {
                let lapsed = mount.observed == MountState::Mounted
                    && mount.expires_at.is_some_and(|at| at <= now);
                MountStatus {
                    name: key.name.clone(),
                    server: key.server.clone(),
                    desired: mount.desired,
                    observed: if lapsed {
                        MountState::Mounting
                    } else {
                        mount.observed
                    },
                    last_mounted_at: mount.last_mounted_at,
                    last_unmounted_at: mount.last_unmounted_at,
                    last_error: mount.last_error.as_deref().cloned(),
                    unreadable: mount.unreadable.as_deref().cloned(),
                    consecutive_failures: mount.consecutive_failures,
                    next_attempt_at: mount.next_attempt_at,
                    expires_at: mount.expires_at,
                }
            })
            .collect();
        mounts.sort_by(|a, b| (&a.name, &a.server).cmp(&(&b.name, &b.server)));
        PublisherStatus {
            phase: *self.phase.borrow(),
            names: self.names.iter().cloned().collect(),
            servers: self.servers.iter().cloned().collect(),
            mounts: mounts.into(),
        }
    }

    fn published(&self) -> Vec<Published> {
        let now = Instant::now();
        self.names
            .iter()
            .map(|name| Published {
                name: name.clone(),
                rooted: format!("{}/{name}", self.root),
                servers: self
                    .servers
                    .iter()
                    .filter(|server| {
                        let key = MountKey {
                            name: name.clone(),
                            server: (*server).clone(),
                        };
                        self.mounts.get(&key).is_some_and(|mount| {
                            mount.observed == MountState::Mounted
                                && mount.expires_at.is_none_or(|at| at > now)
                        })
                    })
                    .cloned()
                    .collect(),
            })
            .collect()
    }

    // ---- stopping ----

    /// Unmounts everything, one bounded attempt each (or releases the
    /// session), and reports what could not be undone.
    async fn shut_down(mut self) -> WorkerResult {
        // Operations under way are abandoned before anyone is told the
        // publisher is stopping; whatever they may have written is
        // unmounted below.
        self.in_flight = FuturesUnordered::new();
        self.phase.send_replace(Phase::Stopping);
        self.ready.clear();
        self.schedule.clear();
        for mount in self.mounts.values_mut() {
            mount.desired = MountState::Unmounted;
            mount.in_flight = false;
            mount.next_attempt_at = None;
        }
        self.status_changed = true;
        self.publish_status();
        let failures = match self.style {
            RefreshStyle::Session => self.release_session().await,
            _ => self.unmount_all().await,
        };
        self.phase.send_replace(Phase::Stopped);
        self.status_changed = true;
        self.publish_status();
        match failures.into_iter().next() {
            None => Ok(()),
            Some((failed, first)) => {
                Err(WorkerError::new(Error::UnmountIncomplete { failed, first }))
            }
        }
    }

    async fn release_session(&mut self) -> Option<(usize, NamespaceError)> {
        let timeout = self.config.operation_timeout;
        let result = bounded(timeout, self.namespace.release()).await;
        let now = Instant::now();
        for mount in self.mounts.values_mut() {
            match &result {
                Ok(()) => {
                    mount.observed = MountState::Unmounted;
                    mount.written = false;
                    mount.expires_at = None;
                    mount.last_unmounted_at = Some(now);
                }
                Err(error) => mount.last_error = Some(Box::new(error.clone())),
            }
        }
        match result {
            Ok(()) => {
                tracing::info!("session released; every mount removed");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "could not release the session; mounts expire by their TTL");
                Some((1, error))
            }
        }
    }

    async fn unmount_all(&mut self) -> Option<(usize, NamespaceError)> {
        let timeout = self.config.operation_timeout;
        let mut pending = self
            .mounts
            .iter()
            .filter(|(_, mount)| mount.written)
            .map(|(key, _)| Arc::clone(key))
            .collect::<Vec<_>>()
            .into_iter();
        let mut running = FuturesUnordered::new();
        let mut failed = 0;
        let mut first_error = None;
        loop {
            while running.len() < self.config.max_in_flight {
                let Some(key) = pending.next() else { break };
                let namespace = Arc::clone(&self.namespace);
                running.push(async move {
                    let result = bounded(timeout, namespace.unmount(&key.name, &key.server)).await;
                    (key, result)
                });
            }
            let Some((key, result)) = running.next().await else {
                break;
            };
            let Some(mount) = self.mounts.get_mut(&key) else {
                continue;
            };
            match result {
                Ok(()) => {
                    tracing::debug!(name = %key.name, server = %key.server, "unmounted");
                    mount.observed = MountState::Unmounted;
                    mount.written = false;
                    mount.expires_at = None;
                    mount.last_unmounted_at = Some(Instant::now());
                }
                Err(error) => {
                    tracing::warn!(name = %key.name, server = %key.server, %error, "unmount at stop failed");
                    failed += 1;
                    first_error.get_or_insert_with(|| error.clone());
                    mount.last_error = Some(Box::new(error));
                }
            }
        }
        // Pairs never written were never in the backend.
        for mount in self.mounts.values_mut() {
            if !mount.written {
                mount.observed = MountState::Unmounted;
            }
        }
        first_error.map(|first| (failed, first))
    }
}

/// Counts one more failure of `mount`, noting when the run began.
fn count_failure(mount: &mut Mount, now: Instant) {
    mount.consecutive_failures = mount.consecutive_failures.saturating_add(1);
    mount.failing_since.get_or_insert(now);
}

/// Whether `error` says the backend could not be reached, rather than that
/// it answered no.
fn is_transport_failure(error: &NamespaceError) -> bool {
    matches!(
        error,
        NamespaceError::Unavailable { .. } | NamespaceError::Timeout { .. }
    )
}

/// Runs `operation` for at most `timeout`.
async fn bounded<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, NamespaceError>>,
) -> Result<T, NamespaceError> {
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or(Err(NamespaceError::Timeout { after: timeout }))
}
