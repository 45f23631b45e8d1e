//! [`Watcher`]: loads the state of the keys its subscribers watch, one store
//! read per load, and tells each subscriber every transition once.
//!
//! # Transitions
//!
//! A key's state is its latest incarnation, whether that incarnation is
//! alive (born or pinged in the current or the previous slot, and not
//! stopped) and whether it was stopped. A load compares each key's new state
//! with the last one and produces at most one [`Change`]:
//! dead to alive is [`Reason::Started`]; alive to alive in a newer
//! incarnation is [`Reason::Restarted`]; alive to dead is
//! [`Reason::Stopped`] (a tombstone), [`Reason::Expired`] (no pings) or
//! [`Reason::Removed`] (its records were removed). Anything else (a key that
//! stays alive, or a newer incarnation that was born and died between two
//! loads) changes nothing a subscriber sees.
//!
//! # Out of touch
//!
//! A load that fails reports no change from the stale state the watcher
//! holds: the watcher turns [`Touch::OutOfTouch`], each subscriber gets one
//! [`Event::OutOfTouch`], and the keys keep their last state. When a load
//! succeeds again every subscriber gets [`Event::BackInTouch`], and for the
//! next two jittered flush intervals expirations are held back (a stop with
//! a tombstone is not): the store was likely unreachable for the batchers
//! too, and their kept pings reach it within that time.
//!
//! # Slow subscribers
//!
//! Each subscriber has its own buffer holding at most one pending change per
//! key (and one touch event): a change to a key whose last change was not
//! yet taken replaces it, and a change back to what the subscriber last took
//! cancels it. The watcher never waits for a subscriber, and a subscriber
//! always reads the latest state; [`Subscription::coalesced`] counts what it
//! skipped.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flotilla_core_types::{Name, ReportFuture, TaskWorker, WorkerResult, delegate_worker};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batcher::TimedOut;
use crate::store::{KeyRecord, PresenceStore};
use crate::{Config, Error, Incarnation, StoreError};

/// Why a key's state changed, or what its first state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// It turned alive (or is alive when first watched).
    Started,
    /// It is alive in a newer incarnation than before: its pinger restarted.
    Restarted,
    /// Its pinger stopped gracefully (a tombstone).
    Stopped,
    /// Its pings stopped without a tombstone: a crash, a hang, a partition.
    Expired,
    /// Its records were removed
    /// ([`remove_scope`](crate::PresenceStore::remove_scope), or forgotten
    /// by the pruner).
    Removed,
    /// Only as a first state: the store has no record of the key.
    NeverSeen,
}

/// A key's new state, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Name,
    /// Whether it is alive now.
    pub alive: bool,
    /// Its latest incarnation, if the store has one.
    pub incarnation: Option<Incarnation>,
    /// What happened.
    pub reason: Reason,
}

/// What a [`Subscription`] receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A watched key's first state, or a change of it.
    Change(Change),
    /// The watcher's loads fail: no change is reported until one succeeds.
    OutOfTouch {
        /// Why the load failed.
        error: StoreError,
    },
    /// A load succeeded again after [`OutOfTouch`](Event::OutOfTouch).
    BackInTouch,
}

/// Whether a watcher's loads succeed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Touch {
    /// The last load succeeded (or none was needed yet).
    InTouch,
    /// The last load failed.
    OutOfTouch {
        /// Why.
        error: StoreError,
    },
}

impl Touch {
    /// Whether the last load succeeded.
    pub fn is_in_touch(&self) -> bool {
        matches!(self, Touch::InTouch)
    }
}

/// A watcher's counters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatcherStatus {
    /// Whether its loads succeed.
    pub touch: Touch,
    /// Keys watched by at least one subscriber.
    pub keys: usize,
    /// Live subscriptions.
    pub subscribers: usize,
    /// Loads that succeeded.
    pub loads: u64,
    /// Loads that failed.
    pub failed_loads: u64,
}

/// Watches keys of one scope for any number of subscribers; a
/// [`Worker`](flotilla_core_types::Worker). Clones are handles to the same
/// watcher.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use flotilla_core_types::{Name, Worker};
/// use flotilla_presence::{Config, Event, MemoryStore, PingBatcher, Pinger, Reason, Watcher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let store = MemoryStore::new();
/// let config = Config::default();
/// let scope = Name::new("model-1")?;
/// let key = Name::new("machine-0")?;
/// let batcher = PingBatcher::start(store.clone(), config.clone())?;
/// let watcher = Watcher::start(store.clone(), scope.clone(), config.clone())?;
///
/// let mut changes = watcher.subscribe();
/// changes.watch(key.clone()).await?;
/// let Some(Event::Change(first)) = changes.next().await else { panic!("a first state") };
/// assert_eq!((first.alive, first.reason), (false, Reason::NeverSeen));
///
/// let pinger = Pinger::start(store.clone(), batcher.clone(), scope, key.clone(), config).await?;
/// watcher.wait_alive(&key, Duration::from_secs(5)).await?;
/// let Some(Event::Change(started)) = changes.next().await else { panic!("a change") };
/// assert_eq!((started.alive, started.reason), (true, Reason::Started));
///
/// pinger.kill();
/// pinger.wait().await?;
/// watcher.sync().await?;
/// let Some(Event::Change(stopped)) = changes.next().await else { panic!("a change") };
/// assert_eq!((stopped.alive, stopped.reason), (false, Reason::Stopped));
/// # watcher.kill(); batcher.kill();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Watcher {
    scope: Name,
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<WatcherStatus>,
    next_subscriber: Arc<AtomicU64>,
    task: TaskWorker,
}

delegate_worker!(Watcher, task, report = Watcher::report);

enum Command {
    Subscribe {
        id: u64,
        queue: Arc<Queue>,
    },
    Unsubscribe {
        id: u64,
    },
    Watch {
        id: u64,
        keys: Vec<Name>,
        reply: oneshot::Sender<()>,
    },
    Unwatch {
        id: u64,
        key: Name,
        reply: oneshot::Sender<()>,
    },
    Sync {
        reply: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    Alive {
        keys: Vec<Name>,
        reply: oneshot::Sender<Result<Vec<bool>, StoreError>>,
    },
}

impl Watcher {
    /// Validates `config` and starts a watcher of `scope` reading `store`.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `config` does not validate.
    pub fn start<S: PresenceStore>(
        store: S,
        scope: Name,
        config: Config,
    ) -> Result<Watcher, Error> {
        config.validate()?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(WatcherStatus {
            touch: Touch::InTouch,
            keys: 0,
            subscribers: 0,
            loads: 0,
            failed_loads: 0,
        });
        let loader = Loader {
            store,
            scope: scope.clone(),
            config,
            keys: HashMap::new(),
            subscribers: HashMap::new(),
            in_touch: true,
            hold_expiries_until: None,
            status: status_tx,
        };
        let span = tracing::info_span!("presence_watcher", scope = %scope);
        let task = TaskWorker::spawn(|stop| loader.run(stop, inbox).instrument(span));
        Ok(Watcher {
            scope,
            commands,
            status,
            next_subscriber: Arc::new(AtomicU64::new(0)),
            task,
        })
    }

    /// The scope it watches.
    pub fn scope(&self) -> &Name {
        &self.scope
    }

    /// A new subscription, watching no key yet. Dropping it unwatches its
    /// keys.
    pub fn subscribe(&self) -> Subscription {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::default());
        if self
            .commands
            .send(Command::Subscribe {
                id,
                queue: queue.clone(),
            })
            .is_err()
        {
            queue.close();
        }
        Subscription {
            id,
            queue,
            commands: self.commands.clone(),
        }
    }

    /// Whether `key` is alive: from the watcher's last load if some
    /// subscriber watches it and the watcher is in touch, else from one
    /// store read.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store read failed; [`Error::Stopped`] if the
    /// watcher has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn alive(&self, key: &Name) -> Result<bool, Error> {
        let answer = self.alive_many(std::slice::from_ref(key)).await?;
        Ok(answer.first().copied().unwrap_or(false))
    }

    /// Whether each of `keys` is alive, in their order, as
    /// [`alive`](Watcher::alive) says, with at most one store read for all
    /// of them.
    ///
    /// # Errors
    ///
    /// As [`alive`](Watcher::alive).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn alive_many(&self, keys: &[Name]) -> Result<Vec<bool>, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Alive {
            keys: keys.to_vec(),
            reply,
        })?;
        Ok(answer.await.map_err(|_| stopped())??)
    }

    /// Loads every watched key now, and returns once every event that load
    /// produced is in its subscribers' buffers.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the load failed (the watcher is then out of
    /// touch); [`Error::Stopped`] if the watcher has stopped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the load it asked for.
    pub async fn sync(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Sync { reply: Some(reply) })?;
        Ok(answer.await.map_err(|_| stopped())??)
    }

    /// Asks for a load now without waiting for it.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the watcher has stopped.
    pub fn start_sync(&self) -> Result<(), Error> {
        self.send(Command::Sync { reply: None })
    }

    /// Waits until `key` is reported alive, or `limit` has passed (juju's
    /// `WaitAgentPresence`).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] after `limit`; [`Error::Stopped`] if the watcher
    /// stops first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_alive(&self, key: &Name, limit: Duration) -> Result<(), Error> {
        let mut subscription = self.subscribe();
        let wait = async {
            subscription.watch(key.clone()).await?;
            while let Some(event) = subscription.next().await {
                if let Event::Change(change) = event
                    && change.alive
                {
                    return Ok(());
                }
            }
            Err(stopped())
        };
        timeout(limit, wait).await.unwrap_or_else(|_| {
            Err(Error::Timeout {
                key: key.clone(),
                timeout: limit,
            })
        })
    }

    /// Its counters now.
    pub fn status(&self) -> WatcherStatus {
        self.status.borrow().clone()
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| stopped())
    }

    fn report(&self) -> Option<ReportFuture<'_>> {
        let status = self.status();
        let state = self.task.state();
        Some(Box::pin(async move {
            serde_json::json!({
                "state": state,
                "in_touch": status.touch.is_in_touch(),
                "keys": status.keys,
                "subscribers": status.subscribers,
                "loads": status.loads,
                "failed_loads": status.failed_loads,
            })
        }))
    }
}

fn stopped() -> Error {
    Error::Stopped { part: "watcher" }
}

/// One subscriber's view of a [`Watcher`]: the keys it watches and a buffer
/// of their events (see the module docs on slow subscribers).
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    queue: Arc<Queue>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    /// Watches `key`: its current state arrives first (as a change whose
    /// reason is [`Reason::Started`], [`Reason::Stopped`],
    /// [`Reason::Expired`] or [`Reason::NeverSeen`]), then every change.
    /// Watching a key this subscription already watches does nothing.
    ///
    /// Returns once the first state is in the buffer, or, if the watcher is
    /// out of touch, once the key is registered (its first state follows
    /// the first load that succeeds).
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the watcher has stopped.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped the key may or may not be watched.
    pub async fn watch(&self, key: Name) -> Result<(), Error> {
        self.watch_many(vec![key]).await
    }

    /// Watches each of `keys` as [`watch`](Subscription::watch) does, with
    /// one store read for all of them.
    ///
    /// # Errors
    ///
    /// As [`watch`](Subscription::watch).
    ///
    /// # Cancel safety
    ///
    /// As [`watch`](Subscription::watch).
    pub async fn watch_many(&self, keys: Vec<Name>) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Watch {
                id: self.id,
                keys,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    /// Stops watching `key` and drops its pending change.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the watcher has stopped.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped the key may or may not be unwatched.
    pub async fn unwatch(&self, key: &Name) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Unwatch {
                id: self.id,
                key: key.clone(),
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?;
        self.queue.forget(key);
        Ok(())
    }

    /// The next event; `None` once the watcher has stopped and the buffer
    /// is empty.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken from the buffer only when returned.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let ready = self.queue.ready.notified();
            if let Some(event) = self.queue.pop() {
                return Some(event);
            }
            if self.queue.is_closed() {
                return None;
            }
            tokio::select! {
                () = ready => {}
                // The watcher ended before it took this subscription.
                () = self.commands.closed() => self.queue.close(),
            }
        }
    }

    /// The next event if one is buffered.
    pub fn try_next(&mut self) -> Option<Event> {
        self.queue.pop()
    }

    /// How many events this subscription skipped because a newer one
    /// replaced or cancelled them before it took them.
    pub fn coalesced(&self) -> u64 {
        self.queue.lock().coalesced
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe { id: self.id });
    }
}

/// A subscriber's buffer: written by the watcher, read by the subscriber.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Keys (or the touch event) in the order their pending event arrived.
    /// An entry whose event was cancelled is skipped when reached.
    order: VecDeque<Pending>,
    /// Each key's pending change.
    changes: HashMap<Name, PendingChange>,
    touch: Option<Event>,
    /// Whether the last touch event the subscriber took was out of touch.
    taken_out_of_touch: bool,
    coalesced: u64,
    closed: bool,
}

/// A change not yet taken, and the state of its key the subscriber was
/// given before it: a newer change back to that state cancels the pending
/// one.
///
/// Nothing is kept per key once its change is taken: with nothing pending
/// the subscriber holds the state the watcher last gave it, and the watcher
/// passes that state with its next change.
#[derive(Debug)]
struct PendingChange {
    change: Change,
    taken_before: Option<(bool, Option<Incarnation>)>,
}

impl QueueState {
    fn pop(&mut self) -> Option<Event> {
        while let Some(pending) = self.order.pop_front() {
            match pending {
                Pending::Key(key) => {
                    if let Some(pending) = self.changes.remove(&key) {
                        return Some(Event::Change(pending.change));
                    }
                }
                Pending::Touch => {
                    if let Some(event) = self.touch.take() {
                        self.taken_out_of_touch = matches!(event, Event::OutOfTouch { .. });
                        return Some(event);
                    }
                }
            }
        }
        None
    }
}

/// The capacity a subscriber's drained buffer keeps for the next events.
const DRAINED_CAPACITY: usize = 64;

#[derive(Debug)]
enum Pending {
    Key(Name),
    Touch,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Each method leaves the state whole before anything that could
        // panic, so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffers `change`; `taken_before` is the state the subscriber was
    /// last given of its key, if it was given one.
    fn push_change(&self, change: Change, taken_before: Option<(bool, Option<Incarnation>)>) {
        let mut state = self.lock();
        let seen = (change.alive, change.incarnation);
        if let Some(pending) = state.changes.get_mut(&change.key) {
            let back_to_taken = pending.taken_before == Some(seen);
            if back_to_taken {
                state.changes.remove(&change.key);
            } else {
                pending.change = change;
            }
            state.coalesced += 1;
            return;
        }
        state.order.push_back(Pending::Key(change.key.clone()));
        state.changes.insert(
            change.key.clone(),
            PendingChange {
                change,
                taken_before,
            },
        );
        drop(state);
        self.ready.notify_one();
    }

    fn push_touch(&self, event: Event) {
        let mut state = self.lock();
        let out_of_touch = matches!(event, Event::OutOfTouch { .. });
        if state.touch.is_some() {
            state.coalesced += 1;
            state.touch = (out_of_touch != state.taken_out_of_touch).then_some(event);
            return;
        }
        if out_of_touch == state.taken_out_of_touch {
            return;
        }
        state.order.push_back(Pending::Touch);
        state.touch = Some(event);
        drop(state);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Event> {
        let mut state = self.lock();
        let event = state.pop();
        if state.order.is_empty() {
            // A burst (the first states of many keys) leaves its capacity
            // behind; a drained buffer gives it back.
            state.order.shrink_to(DRAINED_CAPACITY);
            state.changes.shrink_to(DRAINED_CAPACITY);
        }
        event
    }

    fn forget(&self, key: &Name) {
        let mut state = self.lock();
        state.changes.remove(key);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// A key's state as of the last load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyState {
    incarnation: Option<Incarnation>,
    alive: bool,
    stopped: bool,
}

impl KeyState {
    fn from_record(record: Option<&KeyRecord>) -> KeyState {
        match record {
            None => KeyState {
                incarnation: None,
                alive: false,
                stopped: false,
            },
            Some(record) => KeyState {
                incarnation: Some(record.incarnation),
                alive: record.alive(),
                stopped: record.stopped,
            },
        }
    }

    /// The reason a first state is given.
    fn first_reason(self) -> Reason {
        match self {
            KeyState { alive: true, .. } => Reason::Started,
            KeyState {
                incarnation: None, ..
            } => Reason::NeverSeen,
            KeyState { stopped: true, .. } => Reason::Stopped,
            KeyState { .. } => Reason::Expired,
        }
    }

    /// The reason of the change from `self` to `next`, if it is one a
    /// subscriber sees.
    fn transition(self, next: KeyState) -> Option<Reason> {
        match (self.alive, next.alive) {
            (false, true) => Some(Reason::Started),
            (true, true) if next.incarnation != self.incarnation => Some(Reason::Restarted),
            (true, false) if next.incarnation.is_none() => Some(Reason::Removed),
            (true, false) if next.stopped => Some(Reason::Stopped),
            (true, false) => Some(Reason::Expired),
            _ => None,
        }
    }

    fn change(self, key: &Name, reason: Reason) -> Change {
        Change {
            key: key.clone(),
            alive: self.alive,
            incarnation: self.incarnation,
            reason,
        }
    }
}

/// A watched key: its last state (`None` until a load answered for it) and
/// the subscribers watching it.
#[derive(Debug)]
struct KeyWatch {
    state: Option<KeyState>,
    subscribers: SubscriberIds,
}

/// The ids of a key's subscribers. Most keys have one, kept inline: a
/// vector's allocation per key would be a third of the watcher's memory.
#[derive(Debug)]
enum SubscriberIds {
    One(u64),
    Many(Vec<u64>),
}

impl SubscriberIds {
    fn contains(&self, id: u64) -> bool {
        match self {
            SubscriberIds::One(only) => *only == id,
            SubscriberIds::Many(ids) => ids.contains(&id),
        }
    }

    fn push(&mut self, id: u64) {
        match self {
            SubscriberIds::One(only) => *self = SubscriberIds::Many(vec![*only, id]),
            SubscriberIds::Many(ids) => ids.push(id),
        }
    }

    /// Removes `id`; returns whether any subscriber is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            SubscriberIds::One(only) => *only != id,
            SubscriberIds::Many(ids) => {
                ids.retain(|subscriber| *subscriber != id);
                if let [only] = ids[..] {
                    *self = SubscriberIds::One(only);
                }
                true
            }
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, u64> {
        match self {
            SubscriberIds::One(only) => std::slice::from_ref(only).iter(),
            SubscriberIds::Many(ids) => ids.iter(),
        }
    }
}

/// The watcher's task: owns the watched keys and the subscribers' buffers.
struct Loader<S> {
    store: S,
    scope: Name,
    config: Config,
    keys: HashMap<Name, KeyWatch>,
    subscribers: HashMap<u64, Arc<Queue>>,
    in_touch: bool,
    /// After touch is regained, expirations wait until then.
    hold_expiries_until: Option<Instant>,
    status: watch::Sender<WatcherStatus>,
}

impl<S: PresenceStore> Loader<S> {
    async fn run(
        mut self,
        stop: CancellationToken,
        mut inbox: mpsc::UnboundedReceiver<Command>,
    ) -> WorkerResult {
        let interval = self.config.effective_load_interval();
        let mut next_load = Instant::now() + interval;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = sleep_until(next_load) => {
                    // A failure is the out-of-touch state; the next load retries.
                    let _ = self.load_all().await;
                    next_load = Instant::now() + interval;
                }
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
            }
        }
        Ok(())
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe { id, queue } => {
                self.subscribers.insert(id, queue);
                self.publish_status();
            }
            Command::Unsubscribe { id } => {
                self.subscribers.remove(&id);
                self.keys.retain(|_, watch| watch.subscribers.remove(id));
                self.publish_status();
            }
            Command::Watch { id, keys, reply } => {
                self.watch(id, keys).await;
                let _ = reply.send(());
            }
            Command::Unwatch { id, key, reply } => {
                if let Some(watch) = self.keys.get_mut(&key)
                    && !watch.subscribers.remove(id)
                {
                    self.keys.remove(&key);
                }
                self.publish_status();
                let _ = reply.send(());
            }
            Command::Sync { reply } => {
                let loaded = self.load_all().await;
                if let Some(reply) = reply {
                    let _ = reply.send(loaded);
                }
            }
            Command::Alive { keys, reply } => {
                let _ = reply.send(self.alive(&keys).await);
            }
        }
    }

    async fn watch(&mut self, id: u64, keys: Vec<Name>) {
        let Some(queue) = self.subscribers.get(&id).cloned() else {
            return;
        };
        let mut unknown = Vec::new();
        for key in keys {
            let watch = match self.keys.entry(key.clone()) {
                Entry::Vacant(vacant) => vacant.insert(KeyWatch {
                    state: None,
                    subscribers: SubscriberIds::One(id),
                }),
                Entry::Occupied(occupied) => {
                    let watch = occupied.into_mut();
                    if watch.subscribers.contains(id) {
                        continue;
                    }
                    watch.subscribers.push(id);
                    watch
                }
            };
            match watch.state {
                Some(state) => queue.push_change(state.change(&key, state.first_reason()), None),
                None => unknown.push(key),
            }
        }
        self.publish_status();
        if !unknown.is_empty() {
            // A failure is the out-of-touch state; the first states follow
            // the first load that succeeds.
            let _ = self.load(unknown).await;
        }
    }

    async fn alive(&self, keys: &[Name]) -> Result<Vec<bool>, StoreError> {
        let cached = |key: &Name| {
            self.in_touch
                .then(|| self.keys.get(key).and_then(|watch| watch.state))
                .flatten()
                .map(|state| state.alive)
        };
        let missing: Vec<Name> = keys
            .iter()
            .filter(|key| cached(key).is_none())
            .cloned()
            .collect();
        let loaded = if missing.is_empty() {
            HashMap::new()
        } else {
            self.read(&missing).await?
        };
        Ok(keys
            .iter()
            .map(|key| cached(key).unwrap_or_else(|| loaded.get(key).is_some_and(KeyRecord::alive)))
            .collect())
    }

    async fn load_all(&mut self) -> Result<(), StoreError> {
        let keys: Vec<Name> = self.keys.keys().cloned().collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.load(keys).await
    }

    /// Loads `keys` and tells their subscribers what changed.
    async fn load(&mut self, keys: Vec<Name>) -> Result<(), StoreError> {
        let started = Instant::now();
        let records = match self.read(&keys).await {
            Ok(records) => records,
            Err(error) => {
                self.lose_touch(error.clone());
                return Err(error);
            }
        };
        self.regain_touch(started);
        let hold_expiries = self
            .hold_expiries_until
            .is_some_and(|until| started < until);
        for key in keys {
            let Some(watch) = self.keys.get_mut(&key) else {
                continue;
            };
            let next = KeyState::from_record(records.get(&key));
            let given = watch.state.map(|last| (last.alive, last.incarnation));
            let reason = match watch.state {
                None => Some(next.first_reason()),
                Some(last) => match last.transition(next) {
                    Some(Reason::Expired) if hold_expiries => continue,
                    reason => reason,
                },
            };
            watch.state = Some(next);
            let Some(reason) = reason else {
                continue;
            };
            let change = next.change(&key, reason);
            for subscriber in watch.subscribers.iter() {
                if let Some(queue) = self.subscribers.get(subscriber) {
                    queue.push_change(change.clone(), given);
                }
            }
        }
        self.status.send_modify(|status| status.loads += 1);
        Ok(())
    }

    async fn read(&self, keys: &[Name]) -> Result<HashMap<Name, KeyRecord>, StoreError> {
        let since = self.config.current_slot().previous();
        let read = self.store.load(&self.scope, keys, since);
        match timeout(self.config.store_timeout, read).await {
            Ok(records) => records,
            Err(_elapsed) => Err(StoreError::unavailable(
                "load",
                TimedOut(self.config.store_timeout),
            )),
        }
    }

    fn lose_touch(&mut self, error: StoreError) {
        self.status.send_modify(|status| status.failed_loads += 1);
        if !self.in_touch {
            return;
        }
        tracing::warn!(%error, "out of touch with the presence store; no changes until a load succeeds");
        self.in_touch = false;
        for queue in self.subscribers.values() {
            queue.push_touch(Event::OutOfTouch {
                error: error.clone(),
            });
        }
        self.status
            .send_modify(|status| status.touch = Touch::OutOfTouch { error });
    }

    fn regain_touch(&mut self, load_started: Instant) {
        if self.in_touch {
            return;
        }
        tracing::info!("back in touch with the presence store");
        self.in_touch = true;
        self.hold_expiries_until = Some(load_started + self.config.max_flush_delay() * 2);
        for queue in self.subscribers.values() {
            queue.push_touch(Event::BackInTouch);
        }
        self.status
            .send_modify(|status| status.touch = Touch::InTouch);
    }

    fn publish_status(&self) {
        let (keys, subscribers) = (self.keys.len(), self.subscribers.len());
        self.status.send_modify(|status| {
            status.keys = keys;
            status.subscribers = subscribers;
        });
    }
}

impl<S> Drop for Loader<S> {
    fn drop(&mut self) {
        // However the task ends, subscribers must not wait forever.
        for queue in self.subscribers.values() {
            queue.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(alive: bool, incarnation: u64, reason: Reason) -> Change {
        Change {
            key: Name::new("agent").expect("valid"),
            alive,
            incarnation: Some(Incarnation(incarnation)),
            reason,
        }
    }

    #[test]
    fn a_change_back_to_what_was_given_cancels_the_pending_one() {
        let queue = Queue::default();
        queue.push_change(change(true, 1, Reason::Started), None);
        assert!(matches!(queue.pop(), Some(Event::Change(c)) if c.alive));
        // It dies and comes back before the subscriber looks: nothing.
        queue.push_change(
            change(false, 1, Reason::Expired),
            Some((true, Some(Incarnation(1)))),
        );
        queue.push_change(
            change(true, 1, Reason::Started),
            Some((false, Some(Incarnation(1)))),
        );
        assert!(queue.pop().is_none());
        assert_eq!(queue.lock().coalesced, 1);
        // It dies and comes back in a newer incarnation: the latest state.
        queue.push_change(
            change(false, 1, Reason::Expired),
            Some((true, Some(Incarnation(1)))),
        );
        queue.push_change(
            change(true, 2, Reason::Started),
            Some((false, Some(Incarnation(1)))),
        );
        let Some(Event::Change(latest)) = queue.pop() else {
            panic!("the latest change is pending");
        };
        assert_eq!(
            (latest.alive, latest.incarnation),
            (true, Some(Incarnation(2)))
        );
        assert!(queue.pop().is_none());
        assert_eq!(queue.lock().coalesced, 2);
    }

    #[test]
    fn subscriber_ids_go_from_one_to_many_and_back() {
        let mut ids = SubscriberIds::One(1);
        assert!(ids.contains(1) && !ids.contains(2));
        ids.push(2);
        ids.push(3);
        assert_eq!(ids.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(ids.remove(2));
        assert!(ids.remove(1));
        assert!(matches!(ids, SubscriberIds::One(3)));
        assert!(ids.remove(4), "an id it does not hold leaves it as it was");
        assert!(!ids.remove(3), "none left");
    }
}
