//! [`Publisher`]: the cheap, cloneable handle to a publisher's actor task.

use std::fmt;
use std::sync::Arc;

use flotilla_core_types::{Endpoint, Name, ReportFuture, TaskWorker, Worker, delegate_worker};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::actor::{Actor, Command};
use crate::{Error, MountStatus, Namespace, Phase, Published, PublisherConfig, PublisherStatus};

/// How many commands may queue before callers wait: enough for bursts of
/// adds, few enough that a flood is paced by the actor.
const COMMAND_QUEUE: usize = 256;

/// Keeps every (name, server) pair of its names and servers mounted in a
/// [`Namespace`]. Cloning is cheap: every clone is a handle to the same
/// publisher.
///
/// Adding a name mounts it for every server; adding a server mounts it
/// under every name; adding what is there already changes nothing. Each
/// mount is refreshed on its own jittered deadline before its TTL runs out
/// (or, on a session backend such as etcd, one keep-alive a period covers
/// them all); failures are retried with jittered exponential backoff, the
/// mount closest to expiry first; and when the backend comes back from an
/// outage or turns out to have lost the mounts, everything is mounted again
/// at once.
///
/// The publisher is a [`Worker`]. [`stop`](Publisher::stop) (or
/// [`kill`](Worker::kill), or dropping every handle) is irreversible: from
/// then on nothing is mounted, everything is unmounted with one bounded
/// attempt each, and [`wait`](Worker::wait) returns when that is done, with
/// [`Error::UnmountIncomplete`] if something could not be unmounted.
/// Calls on a stopped publisher return [`Error::Stopped`].
///
/// Its [`report`](Worker::report), for an operator (a supervisor such as
/// `flotilla-depengine` shows it), is a JSON object: the worker `state` (as
/// [`TaskWorker`] reports it), the `phase` and the `root`; and, while the
/// publisher runs, how many `names`, `servers` and `pairs` it holds; of the
/// wanted pairs how many are `mounted` (and not lapsed), `mounting` (not
/// yet, lapsed, or retrying) and `replaced`; how many pairs no longer
/// wanted are `unmounting`; how many of all are `failing` (their last
/// operation failed, whatever their state); the `tightest_ttl_left_ms` of a
/// mounted pair (null when none is); and the `last_error` of any operation,
/// with `last_error_ago_ms`, kept after a later success. Once the publisher
/// is stopping only `state`, `phase` and `root` remain.
///
/// # Example
///
/// ```
/// use flotilla_core_types::{Endpoint, Name, Worker};
/// use flotilla_publisher::{MountTable, Namespace, Publisher, PublisherConfig};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> anyhow::Result<()> {
/// let table = MountTable::start();
/// let publisher = Publisher::start(table.clone(), PublisherConfig::default())?;
/// let api = Name::new("api")?;
/// let server: Endpoint = "10.0.0.7:8080".parse()?;
/// publisher.add_name(api.clone()).await?;
/// publisher.add_server(server.clone()).await?;
///
/// // Wait until the pair is mounted, then resolve it as anyone would.
/// publisher.wait_mounted(&api, &server).await?;
/// assert_eq!(table.resolve(&api).await?.endpoints(), [server]);
///
/// // Stopping unmounts everything.
/// publisher.stop().await;
/// publisher.wait().await?;
/// assert!(table.resolve(&api).await.is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    commands: mpsc::Sender<Command>,
    worker: TaskWorker,
    phase: watch::Receiver<Phase>,
    root: Arc<str>,
}

impl Publisher {
    /// Validates `config`, checks that `namespace` accepts the TTL it
    /// implies, and starts a publisher with no names and no servers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `config` does not validate, or the
    /// backend cannot honour `config.ttl()`.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with a timer.
    pub fn start<N: Namespace>(namespace: N, config: PublisherConfig) -> Result<Publisher, Error> {
        config.validate()?;
        namespace
            .validate_ttl(config.ttl())
            .map_err(|error| Error::InvalidConfig {
                field: "ttl",
                reason: error.to_string(),
            })?;
        let root: Arc<str> = Arc::from(namespace.root());
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let (phase_tx, phase) = watch::channel(Phase::Running);
        let span = tracing::info_span!("publisher", root = %root);
        let actor = Actor::new(namespace, config, phase_tx);
        let worker = TaskWorker::spawn(move |stop| actor.run(queue, stop).instrument(span));
        Ok(Publisher {
            commands,
            worker,
            phase,
            root,
        })
    }

    /// Publishes `name`: mounts it for every server. Adding a name that is
    /// published already changes nothing.
    ///
    /// Returns once the publisher has taken the change in; the mounts follow
    /// (see [`watch`](Self::watch)).
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the publisher is stopped.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the change may or may not have been taken.
    pub async fn add_name(&self, name: Name) -> Result<(), Error> {
        self.request(|done| Command::AddName(name, done)).await
    }

    /// Stops publishing `name`: unmounts it from every server.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the publisher is stopped.
    ///
    /// # Cancel safety
    ///
    /// As for [`add_name`](Self::add_name).
    pub async fn remove_name(&self, name: Name) -> Result<(), Error> {
        self.request(|done| Command::RemoveName(name, done)).await
    }

    /// Publishes `server` under every name. Adding a server that is
    /// published already changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the publisher is stopped.
    ///
    /// # Cancel safety
    ///
    /// As for [`add_name`](Self::add_name).
    pub async fn add_server(&self, server: Endpoint) -> Result<(), Error> {
        self.request(|done| Command::AddServer(server, done)).await
    }

    /// Stops publishing `server`: unmounts it from every name.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the publisher is stopped.
    ///
    /// # Cancel safety
    ///
    /// As for [`add_name`](Self::add_name).
    pub async fn remove_server(&self, server: Endpoint) -> Result<(), Error> {
        self.request(|done| Command::RemoveServer(server, done))
            .await
    }

    /// Every published name, rooted at the backend, with the servers
    /// confirmed mounted under it.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the publisher is stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn published(&self) -> Result<Vec<Published>, Error> {
        self.request(Command::Published).await
    }

    /// A fresh snapshot of every pair the publisher holds.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the publisher is stopped (a
    /// [`watch`](Self::watch) taken before that sees the final status).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn status(&self) -> Result<PublisherStatus, Error> {
        self.request(Command::Status).await
    }

    /// A receiver of status snapshots, starting with a fresh one and
    /// updated on every change of state (see [`PublisherStatus`]), up to
    /// and including the final, stopped one.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the publisher is stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn watch(&self) -> Result<watch::Receiver<PublisherStatus>, Error> {
        self.request(Command::Watch).await
    }

    /// Waits until the pair (`name`, `server`) is confirmed mounted, and
    /// returns its status then: from that moment anyone resolving `name`
    /// finds `server`. Returns at once when it is mounted already.
    ///
    /// It follows the status [`watch`](Self::watch) (no polling): the
    /// publisher's own schedule decides when the mount is tried and retried,
    /// and this only listens. Bound it with `tokio::time::timeout` to give
    /// up, for instance while the backend is down.
    ///
    /// # Errors
    ///
    /// - [`Error::NotPublished`] when `name` or `server` is not published
    ///   (add both first), or either is removed while this waits;
    /// - [`Error::Replaced`] when another server's `replace` mount takes the
    ///   pair's place, as it will then not be mounted again;
    /// - [`Error::Stopped`] when the publisher is stopped, or stops while
    ///   this waits.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only listens; dropping the future changes nothing.
    pub async fn wait_mounted(&self, name: &Name, server: &Endpoint) -> Result<MountStatus, Error> {
        let mut status = self.watch().await?;
        loop {
            // The guard is dropped at the end of the statement, before any
            // await.
            let outcome = status.borrow_and_update().mounted_outcome(name, server);
            if let Some(outcome) = outcome {
                return outcome;
            }
            status.changed().await.map_err(|_| Error::Stopped)?;
        }
    }

    /// Waits until every pair wanted when it is called (the cross product
    /// of the names and servers published then) is confirmed mounted, all
    /// in the same snapshot, and returns that snapshot. Pairs added while it
    /// waits are not waited for; with nothing published it returns at once.
    ///
    /// As [`wait_mounted`](Self::wait_mounted), it follows the status watch
    /// and never polls.
    ///
    /// # Errors
    ///
    /// As for [`wait_mounted`](Self::wait_mounted), for the first pair
    /// found removed or replaced: [`Error::NotPublished`],
    /// [`Error::Replaced`] or [`Error::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only listens; dropping the future changes nothing.
    pub async fn wait_all_mounted(&self) -> Result<PublisherStatus, Error> {
        let mut status = self.watch().await?;
        let (names, servers) = {
            let first = status.borrow();
            (Arc::clone(&first.names), Arc::clone(&first.servers))
        };
        loop {
            let outcome = all_mounted_outcome(&status.borrow_and_update(), &names, &servers);
            if let Some(outcome) = outcome {
                return outcome;
            }
            status.changed().await.map_err(|_| Error::Stopped)?;
        }
    }

    /// The names this publisher's backend roots names at, such as `mem:`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Stops the publisher for good, and returns once it has stopped
    /// mounting; [`wait`](Worker::wait) returns once everything has been
    /// unmounted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the stop has begun when the first poll returns, and
    /// cannot be undone.
    pub async fn stop(&self) {
        self.worker.kill();
        let mut phase = self.phase.clone();
        // An error means the actor is gone, which is stopped too.
        let _ = phase.wait_for(|phase| *phase != Phase::Running).await;
    }

    /// Whether [`stop`](Self::stop) or [`kill`](Worker::kill) has been
    /// called.
    pub fn is_stopped(&self) -> bool {
        self.worker.is_stopping()
    }

    /// The publisher's [`Worker::report`], as the type's docs describe it.
    fn worker_report(&self) -> Option<ReportFuture<'_>> {
        Some(Box::pin(async move {
            let state = match Worker::report(&self.worker) {
                Some(report) => report.await.get("state").cloned(),
                None => None,
            };
            let mut report = match self.request(Command::Report).await {
                Ok(report) => report,
                Err(_stopped) => serde_json::json!({
                    "phase": self.phase.borrow().as_str(),
                    "root": &*self.root,
                }),
            };
            if let Some(fields) = report.as_object_mut() {
                fields.insert(
                    String::from("state"),
                    state.unwrap_or(serde_json::Value::Null),
                );
            }
            report
        }))
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        if self.worker.is_stopping() {
            return Err(Error::Stopped);
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }
}

delegate_worker!(Publisher, worker, report = Publisher::worker_report);

/// What [`Publisher::wait_all_mounted`] comes to in `status`: `None` while a
/// pair of `names` × `servers` is still to be mounted, the snapshot once all
/// are, or the first reason one never will be.
fn all_mounted_outcome(
    status: &PublisherStatus,
    names: &[Name],
    servers: &[Endpoint],
) -> Option<Result<PublisherStatus, Error>> {
    if status.phase != Phase::Running {
        return Some(Err(Error::Stopped));
    }
    let mut pending = false;
    for name in names {
        for server in servers {
            match status.mounted_outcome(name, server) {
                None => pending = true,
                Some(Ok(_)) => {}
                Some(Err(error)) => return Some(Err(error)),
            }
        }
    }
    (!pending).then(|| Ok(status.clone()))
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("root", &self.root)
            .field("phase", &*self.phase.borrow())
            .finish()
    }
}
