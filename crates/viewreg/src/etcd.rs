//! [`EtcdLocator`]: the endpoints under an etcd key prefix, listed once and
//! then followed with a watch that resumes where it left off.
//!
//! The design: the locator keeps every readable entry under the prefix by
//! key, and the revision it is in step with. The first call lists the
//! prefix in pages, every page read at the revision of the first, so the
//! listing is one consistent cut however many keys there are. After that
//! it watches the prefix from the revision after, applies each batch of
//! events etcd sends together and answers the whole set when it changed.
//! When the watch breaks, the next call opens it again from the revision
//! after the last event seen, so nothing changed in between is missed and
//! nothing is listed again; only when etcd has compacted that revision
//! away (the watch answers with a compact revision) does the locator list
//! the prefix afresh.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, GetOptions, KeyValue, WatchOptions, WatchResponse, WatchStream};
use flotilla_core_types::etcd::{
    Access, EtcdConnectError, EtcdOptions, prefix_end, retry_connect_failures,
};
use flotilla_core_types::{Endpoint, Name};
use tokio::sync::watch;
use tonic::Code;

use crate::{EndpointSet, Locator, LocatorError};

/// How many keys one read of the prefix asks for at most, by default: our
/// entries are a few hundred bytes at most, so a page stays far below the
/// client's 4 MiB decode limit, and few round trips list any prefix.
const DEFAULT_PAGE_SIZE: usize = 1000;

/// The shortest interval [`EtcdLocator::with_progress_every`] takes.
const MIN_PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// How many times a listing starts over when etcd compacts the revision it
/// was reading at between two pages. Compactions are minutes apart, so a
/// second failure in a row means something else is wrong.
const LISTING_ATTEMPTS: u32 = 3;

/// How long one request (a page of a listing, the opening of a watch) may
/// take before the locator gives up on it and reports etcd unavailable.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an entry's endpoint is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointFrom {
    /// The key's value is the endpoint's text, such as `10.0.0.7:8080`
    /// (surrounding white space ignored).
    Value,
    /// The rest of the key after the prefix is the endpoint's text; the
    /// value is ignored. This is how flotilla-publisher lays out its keys.
    KeyAfterPrefix,
}

/// What an [`EtcdLocator`] has done so far, for tests, logs and status
/// pages: read it through [`EtcdLocator::status`], which stays readable
/// after the locator has been handed to a registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdLocatorStatus {
    /// The revision the locator's set is in step with: that of its last
    /// listing or of the last event it applied. `None` before the first
    /// listing.
    pub revision: Option<i64>,
    /// How many times the prefix was listed in full: once at the start,
    /// then once after each compaction that the watch could not resume
    /// across.
    pub listings: u64,
    /// How many times the watch was opened after a failure (a watch that
    /// broke, or could not be opened) from the revision after the last one
    /// seen, without listing, and etcd confirmed it (a `created` response
    /// that did not cancel it).
    pub resumes: u64,
    /// How many times the watch found its revision compacted away, so that
    /// the prefix was listed again.
    pub compactions: u64,
    /// The entries under the prefix now that could not be read as an
    /// endpoint, by key, with why. They are left out of the set.
    pub unreadable: BTreeMap<String, String>,
    /// How many times in all an entry was skipped as unreadable (in a
    /// listing or in a put event).
    pub skipped: u64,
}

/// The endpoints under an etcd key prefix, as a [`Locator`]: the prefix
/// listed in pages at one revision, then watched from the revision after,
/// each batch of changes answered as the whole set.
///
/// - **After a disconnect** (the watch fails or ends) the call answers
///   [`LocatorError::Unavailable`]; the registry asks again after its
///   backoff, and the locator opens the watch from the revision after the
///   last one it saw, so changes made in between arrive as events and none
///   is missed. The first answer after an error is the set as the locator
///   knows it, even when unchanged, so that the registry clears the error;
///   it comes only once etcd confirmed the new watch. A watch etcd refuses
///   (created and canceled at once) is an error: one for lack of
///   permission or authentication is [`LocatorError::Rejected`].
/// - **After a compaction** of that revision, the watch cannot resume: the
///   locator lists the prefix again and answers the set it finds. So that
///   a quiet prefix's revision does not fall behind the store's, the
///   locator can ask etcd for the open watch's progress
///   ([`with_progress_every`](Self::with_progress_every), off by default);
///   etcd's answer carries the revision every change up to which has been
///   sent, and a later resume starts there.
/// - **Unreadable entries** (a key or value that is not an endpoint's
///   text) are left out of the set, logged with a warning, and shown in
///   [`EtcdLocatorStatus::unreadable`]; they never make the locator fail.
/// - Several keys naming one endpoint (with [`EndpointFrom::Value`]) are
///   one member of the set, there while any of them is.
///
/// Event types are told apart by the key's version (etcd sends version 0
/// only for a delete), so no value etcd sends can make it panic.
///
/// # The client
///
/// The locator takes an [etcd-client `Client`][Client] as you built it.
/// Two of its [`ConnectOptions`][ConnectOptions] matter here: HTTP/2
/// keep-alive pings (`with_keep_alive`), so that a watch on a member whose
/// host vanished without closing its sockets breaks and resumes elsewhere
/// instead of waiting; and `with_require_leader(true)`, so that a member
/// cut off from the rest of its cluster ends the watch rather than leave it
/// silent. A client of several members moves the watch to a live one.
///
/// [Client]: https://docs.rs/etcd-client/0.21.1/etcd_client/struct.Client.html
/// [ConnectOptions]: https://docs.rs/etcd-client/0.21.1/etcd_client/struct.ConnectOptions.html
///
/// # Example
///
/// ```no_run
/// use std::collections::BTreeSet;
/// use std::time::Duration;
/// use flotilla_core_types::Worker;
/// use flotilla_viewreg::{EndpointFrom, EtcdLocator, Registry, RegistryConfig, TcpProber};
///
/// # async fn example() -> anyhow::Result<()> {
/// // Keep-alive pings break a watch on a vanished host; require-leader
/// // breaks one on a member cut off from its cluster.
/// let options = etcd_client::ConnectOptions::new()
///     .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
///     .with_require_leader(true);
/// let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], Some(options)).await?;
/// // Every value under `services/kv/` is a server's `host:port`.
/// let locator = EtcdLocator::new(client, "services/kv/", EndpointFrom::Value);
/// let status = locator.status();
/// let registry = Registry::start(
///     locator,
///     TcpProber::<BTreeSet<&str>>::new(),
///     |endpoint: &flotilla_viewreg::Endpoint| endpoint.clone(),
///     RegistryConfig::default(),
/// )?;
/// println!("{:?}", status.borrow().unreadable);
/// registry.kill();
/// registry.wait().await?;
/// # Ok(())
/// # }
/// ```
pub struct EtcdLocator {
    client: Client,
    key_prefix: Vec<u8>,
    range_end: Vec<u8>,
    from: EndpointFrom,
    page_size: i64,
    request_timeout: Duration,
    /// How long an open watch may stay quiet before the locator asks etcd
    /// for its progress; `None`: never.
    progress_every: Option<Duration>,
    /// Every readable entry under the prefix, by key.
    entries: BTreeMap<Vec<u8>, Endpoint>,
    /// The revision `entries` is in step with; `None` until listed, and
    /// again when a compaction makes a new listing necessary.
    revision: Option<i64>,
    /// The open watch; `None` before it is opened and after it broke.
    watch: Option<WatchStream>,
    /// Whether etcd confirmed the open watch with a `created` response
    /// that did not cancel it; until then the watch is not resumed.
    watch_created: bool,
    /// Whether a call failed since the last listing or watch opened, so
    /// that the next watch opened is a resume.
    resuming: bool,
    /// The set last answered.
    answered: Option<EndpointSet>,
    status: watch::Sender<EtcdLocatorStatus>,
}

impl EtcdLocator {
    /// Follows the entries whose keys begin with `key_prefix` (raw bytes:
    /// `services/kv/` covers `services/kv/a` but not `services/kvx`), each
    /// entry's endpoint read as `from` says.
    pub fn new(client: Client, key_prefix: impl Into<Vec<u8>>, from: EndpointFrom) -> Self {
        let key_prefix = key_prefix.into();
        EtcdLocator {
            client,
            range_end: prefix_end(&key_prefix),
            key_prefix,
            from,
            page_size: page_limit(DEFAULT_PAGE_SIZE),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            progress_every: None,
            entries: BTreeMap::new(),
            revision: None,
            watch: None,
            watch_created: false,
            resuming: false,
            answered: None,
            status: watch::Sender::new(EtcdLocatorStatus::default()),
        }
    }

    /// Follows the entries under `key_prefix` on the etcd cluster `options`
    /// name (TLS, a client certificate, a user and password, as the
    /// cluster needs), after checking that etcd lets this client read
    /// them. Otherwise as [`new`](Self::new).
    ///
    /// # Errors
    ///
    /// [`EtcdConnectError`] when connecting fails (no member answers, TLS
    /// fails, the user is refused) or the user may not read the prefix.
    pub async fn connect(
        options: &EtcdOptions,
        key_prefix: impl Into<Vec<u8>>,
        from: EndpointFrom,
    ) -> Result<Self, EtcdConnectError> {
        let key_prefix = key_prefix.into();
        let client = options.connect(&key_prefix, Access::Read).await?;
        Ok(EtcdLocator::new(client, key_prefix, from))
    }

    /// Follows the servers a flotilla-publisher publishes under `name`
    /// through its etcd backend (`EtcdNamespace`) made with
    /// `namespace_prefix`: exactly the keys `{namespace_prefix}/{name}/#…`,
    /// the publisher's layout, each server read from the key after the `#`.
    /// Names beneath `name` (`{name}/v1`) are not included, as `#` cannot
    /// occur in a name.
    ///
    /// # Errors
    ///
    /// [`LocatorError::InvalidPrefix`] when `namespace_prefix` is one the
    /// publisher refuses too: empty, ending with `/`, or holding `#`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use flotilla_core_types::Name;
    /// use flotilla_viewreg::{EtcdLocator, Locator};
    ///
    /// # async fn example() -> anyhow::Result<()> {
    /// let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
    /// // The publisher was made with `EtcdNamespace::connect(…, "flotilla/names")`.
    /// let mut locator =
    ///     EtcdLocator::for_published_name(client, "flotilla/names", &Name::new("api")?)?;
    /// while let Some(servers) = locator.next_endpoints().await {
    ///     println!("{:?}", servers?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn for_published_name(
        client: Client,
        namespace_prefix: &str,
        name: &Name,
    ) -> Result<Self, LocatorError> {
        let invalid = |reason: &str| {
            Err(LocatorError::InvalidPrefix {
                prefix: namespace_prefix.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if namespace_prefix.is_empty() {
            return invalid("must not be empty");
        }
        if namespace_prefix.ends_with('/') {
            return invalid("ends with '/' (the layout adds it)");
        }
        if namespace_prefix.contains('#') {
            return invalid("contains '#', which the layout reserves");
        }
        let key_prefix = format!("{namespace_prefix}/{}/#", name.as_str());
        Ok(EtcdLocator::new(
            client,
            key_prefix,
            EndpointFrom::KeyAfterPrefix,
        ))
    }

    /// Lists the prefix in pages of at most `entries` keys (default 1,000;
    /// at least 1), all at one revision.
    pub fn with_page_size(mut self, entries: usize) -> Self {
        self.page_size = page_limit(entries);
        self
    }

    /// Gives up on one request (a page of a listing, the opening of a
    /// watch) after `timeout` (default 5 s) and reports etcd unavailable,
    /// so that a member that accepts connections but never answers cannot
    /// hold the locator. A watch that is open but quiet is not timed out:
    /// quiet is what a watch of a stable prefix is.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Asks etcd for the open watch's progress after `every` without a
    /// response (at least 100 ms), keeping the revision a resume starts
    /// from close to the store's while the prefix is quiet, so that a
    /// resume after etcd compacted needs no new listing. Each ask is one
    /// small message on the watch's stream. Off by default.
    ///
    /// Needs etcd 3.4.25, 3.5.8 or later: before those, etcd could answer
    /// a progress request with a revision ahead of events it had not sent
    /// yet (etcd issue 15220), and a resume from there would miss them.
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.progress_every = Some(every.max(MIN_PROGRESS_EVERY));
        self
    }

    /// The key prefix followed.
    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }

    /// What the locator has done so far; the receiver stays current after
    /// the locator has been moved into a registry (`changed()` and
    /// `wait_for` wait for news).
    pub fn status(&self) -> watch::Receiver<EtcdLocatorStatus> {
        self.status.subscribe()
    }

    /// One step towards the next answer: a listing, an opened watch or one
    /// watch response applied.
    async fn step(&mut self) -> Result<(), LocatorError> {
        let Some(revision) = self.revision else {
            return self.list().await;
        };
        let Some(stream) = self.watch.as_mut() else {
            let options = WatchOptions::new()
                .with_range(self.range_end.clone())
                .with_start_revision(revision + 1);
            let key = self.first_key();
            let stream = call(&self.client, self.request_timeout, |mut client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.watch(key, Some(options)).await }
            })
            .await
            .map_err(classify)?;
            self.watch = Some(stream);
            self.watch_created = false;
            return Ok(());
        };
        let progress = self.progress_every.filter(|_| self.watch_created);
        let message = tokio::select! {
            message = stream.message() => message,
            () = sleep_or_never(progress) => {
                // Cancel safe: tonic's `message` loses nothing when dropped.
                let asked = match tokio::time::timeout(self.request_timeout, stream.request_progress()).await {
                    Ok(asked) => asked.map_err(classify),
                    Err(_elapsed) => Err(LocatorError::unavailable(WatchBroken(String::from(
                        "etcd took no progress request within the request timeout",
                    )))),
                };
                if asked.is_err() {
                    self.close_watch();
                }
                return asked;
            }
        };
        match message {
            Ok(Some(response)) if !self.watch_created => self.confirm(&response, revision),
            Ok(Some(response)) => self.apply(response),
            Ok(None) => {
                self.close_watch();
                Err(LocatorError::unavailable(WatchBroken(String::from(
                    "etcd ended the watch stream",
                ))))
            }
            Err(error) => {
                self.close_watch();
                Err(classify(error))
            }
        }
    }

    /// Forgets the open watch: the next step opens a new one.
    fn close_watch(&mut self) {
        self.watch = None;
        self.watch_created = false;
    }

    /// Reads every entry under the prefix, in pages at the revision of the
    /// first, and replaces what the locator knew with it.
    async fn list(&mut self) -> Result<(), LocatorError> {
        let mut attempt = 1;
        let (entries, revision) = loop {
            match self.read_pages().await {
                Ok(listing) => break listing,
                Err(error) if attempt < LISTING_ATTEMPTS && is_compacted(&error) => {
                    attempt += 1;
                    tracing::debug!(%error, "revision compacted while listing; listing again");
                }
                Err(error) => return Err(classify(error)),
            }
        };
        self.entries.clear();
        let mut unreadable = BTreeMap::new();
        for kv in &entries {
            match self.read_entry(kv) {
                Ok(endpoint) => {
                    self.entries.insert(kv.key().to_vec(), endpoint);
                }
                Err(reason) => {
                    unreadable.insert(shown_key(kv.key()), reason);
                }
            }
        }
        for (key, reason) in &unreadable {
            tracing::warn!(%key, %reason, "unreadable entry under the watched prefix; skipped");
        }
        self.revision = Some(revision);
        self.close_watch();
        self.resuming = false;
        self.status.send_modify(|status| {
            status.revision = Some(revision);
            status.listings += 1;
            status.skipped += unreadable.len() as u64;
            status.unreadable = unreadable;
        });
        Ok(())
    }

    async fn read_pages(&self) -> Result<(Vec<KeyValue>, i64), etcd_client::Error> {
        let mut start = self.first_key();
        let mut revision = 0; // the newest, for the first page
        let mut entries = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(self.range_end.clone())
                .with_limit(self.page_size)
                .with_revision(revision);
            let mut response = call(&self.client, self.request_timeout, |mut client| {
                let (start, options) = (start.clone(), options.clone());
                async move { client.get(start, Some(options)).await }
            })
            .await?;
            if revision == 0 {
                // Without the first page's revision the pages could not be
                // read at one revision, nor the watch started after it.
                revision = response
                    .header()
                    .map(|header| header.revision())
                    .filter(|revision| *revision > 0)
                    .ok_or_else(|| {
                        etcd_client::Error::GRpcStatus(tonic::Status::data_loss(
                            "etcd answered a listing without the revision it read at",
                        ))
                    })?;
            }
            let more = response.more();
            let page = response.take_kvs();
            let Some(last) = page.last() else {
                return Ok((entries, revision));
            };
            // The next page starts just after the last key of this one.
            start = last.key().to_vec();
            start.push(0);
            entries.extend(page);
            if !more {
                return Ok((entries, revision));
            }
        }
    }

    /// Reads the first response of a watch just opened: etcd's answer to
    /// the create request. Only a `created` response that does not cancel
    /// the watch means the watch is running (and, after a failure, that it
    /// resumed); etcd refuses a watch (no permission, say) with a response
    /// both created and canceled.
    fn confirm(&mut self, response: &WatchResponse, revision: i64) -> Result<(), LocatorError> {
        if response.compact_revision() > 0 || response.canceled() || !response.created() {
            return self.broken(response);
        }
        self.watch_created = true;
        if self.resuming {
            self.resuming = false;
            self.status.send_modify(|status| status.resumes += 1);
            tracing::debug!(from_revision = revision + 1, "etcd watch resumed");
        }
        Ok(())
    }

    /// Handles a response that compacts away, cancels or otherwise ends
    /// the watch (or one that should have been the created response and
    /// is not).
    fn broken(&mut self, response: &WatchResponse) -> Result<(), LocatorError> {
        self.close_watch();
        if response.compact_revision() > 0 {
            // The revision to resume from is gone: only a listing can
            // bring the set back in step.
            tracing::info!(
                compact_revision = response.compact_revision(),
                "etcd compacted the watched revision; listing again"
            );
            self.revision = None;
            self.status.send_modify(|status| status.compactions += 1);
            return Ok(());
        }
        if response.canceled() {
            return Err(watch_canceled(response.cancel_reason()));
        }
        Err(LocatorError::unavailable(WatchBroken(String::from(
            "etcd answered the watch's create request with something else",
        ))))
    }

    /// Applies one watch response.
    fn apply(&mut self, response: WatchResponse) -> Result<(), LocatorError> {
        if response.compact_revision() > 0 || response.canceled() {
            return self.broken(&response);
        }
        let mut revision = self.revision.unwrap_or(0);
        if response.events().is_empty() && !response.created() {
            // A progress report: every change up to its revision was sent.
            if let Some(header) = response.header() {
                revision = revision.max(header.revision());
            }
        }
        let mut newly_unreadable = Vec::new();
        let mut readable_again = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            // A delete event's key has version 0; a put's, 1 or more.
            if kv.version() == 0 {
                self.entries.remove(kv.key());
                readable_again.push(shown_key(kv.key()));
                continue;
            }
            match self.read_entry(kv) {
                Ok(endpoint) => {
                    self.entries.insert(kv.key().to_vec(), endpoint);
                    readable_again.push(shown_key(kv.key()));
                }
                Err(reason) => {
                    self.entries.remove(kv.key());
                    let key = shown_key(kv.key());
                    tracing::warn!(%key, %reason, "unreadable entry under the watched prefix; skipped");
                    newly_unreadable.push((key, reason));
                }
            }
        }
        self.revision = Some(revision);
        self.status.send_modify(|status| {
            status.revision = Some(revision);
            for key in readable_again {
                status.unreadable.remove(&key);
            }
            status.skipped += newly_unreadable.len() as u64;
            status.unreadable.extend(newly_unreadable);
        });
        Ok(())
    }

    /// The endpoint of one entry, or why it has none.
    fn read_entry(&self, kv: &KeyValue) -> Result<Endpoint, String> {
        let text = match self.from {
            EndpointFrom::Value => kv.value(),
            EndpointFrom::KeyAfterPrefix => kv
                .key()
                .strip_prefix(self.key_prefix.as_slice())
                .ok_or_else(|| String::from("not under the prefix"))?,
        };
        let text = std::str::from_utf8(text).map_err(|error| error.to_string())?;
        Endpoint::parse(text.trim()).map_err(|error| error.to_string())
    }

    /// The first key of the range followed: the prefix itself, or for an
    /// empty prefix (every key) etcd's lowest key, `\0`, since etcd takes an
    /// empty key as no key at all.
    fn first_key(&self) -> Vec<u8> {
        if self.key_prefix.is_empty() {
            vec![0]
        } else {
            self.key_prefix.clone()
        }
    }

    fn current_set(&self) -> EndpointSet {
        self.entries.values().cloned().collect()
    }
}

impl Locator for EtcdLocator {
    async fn next_endpoints(&mut self) -> Option<Result<EndpointSet, LocatorError>> {
        loop {
            if let Err(error) = self.step().await {
                // Once back in step, answer even an unchanged set: that
                // is how the registry learns the trouble is over.
                self.answered = None;
                self.resuming = self.revision.is_some();
                return Some(Err(error));
            }
            if self.revision.is_none() {
                continue; // a compaction: list before answering
            }
            if self.watch.is_some() && !self.watch_created {
                continue; // a watch just opened: answer once etcd confirms it
            }
            let set = self.current_set();
            if self.answered.as_ref() != Some(&set) {
                self.answered = Some(set.clone());
                return Some(Ok(set));
            }
        }
    }
}

impl fmt::Debug for EtcdLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLocator")
            .field("key_prefix", &shown_key(&self.key_prefix))
            .field("from", &self.from)
            .field("page_size", &self.page_size)
            .field("progress_every", &self.progress_every)
            .field("request_timeout", &self.request_timeout)
            .field("revision", &self.revision)
            .field("entries", &self.entries.len())
            .field("watching", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}

/// The watch stopped for a reason etcd gave, or ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WatchBroken(String);

/// Runs one etcd call, again after a short pause when it could not reach
/// the member it was sent to. Only reads and watches are made this way.
async fn call<T, F, Fut>(
    client: &Client,
    limit: Duration,
    mut call: F,
) -> Result<T, etcd_client::Error>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    retry_connect_failures(|| {
        let attempt = tokio::time::timeout(limit, call(client.clone()));
        async move {
            attempt.await.unwrap_or_else(|_| {
                Err(etcd_client::Error::GRpcStatus(
                    tonic::Status::deadline_exceeded(format!(
                        "etcd did not answer within {limit:?}"
                    )),
                ))
            })
        }
    })
    .await
}

/// Sleeps for `every`, or for ever with `None`.
async fn sleep_or_never(every: Option<Duration>) {
    match every {
        Some(every) => tokio::time::sleep(every).await,
        None => std::future::pending().await,
    }
}

fn page_limit(entries: usize) -> i64 {
    i64::try_from(entries.max(1)).unwrap_or(i64::MAX)
}

fn shown_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Whether etcd refused a read at a revision it has compacted away.
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == Code::OutOfRange || status.message().contains("compacted"))
}

/// What etcd's cancellation of a watch means to the locator: a refusal
/// (its reason names permission or authentication, as etcd's
/// "etcdserver: permission denied" does) is [`LocatorError::Rejected`],
/// since watching again will be refused again; any other reason is
/// [`LocatorError::Unavailable`].
fn watch_canceled(reason: &str) -> LocatorError {
    let broken = WatchBroken(format!("etcd canceled the watch: {reason}"));
    let lowered = reason.to_ascii_lowercase();
    let refused = lowered.contains("permission") || lowered.contains("auth");
    if refused {
        LocatorError::Rejected {
            source: std::sync::Arc::new(broken),
        }
    } else {
        LocatorError::unavailable(broken)
    }
}

/// Sorts an etcd error into a locator's terms: etcd's refusals (no
/// permission, a bad request) are [`LocatorError::Rejected`]; everything
/// else is transport trouble, [`LocatorError::Unavailable`].
fn classify(error: etcd_client::Error) -> LocatorError {
    let rejected = matches!(&error, etcd_client::Error::GRpcStatus(status) if matches!(
        status.code(),
        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
    ));
    if rejected {
        LocatorError::Rejected {
            source: std::sync::Arc::new(error),
        }
    } else {
        LocatorError::unavailable(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_watch_is_rejected_and_other_cancels_unavailable() {
        for reason in [
            "etcdserver: permission denied",
            "etcdserver: invalid auth token",
            "rpc error: authentication failed",
        ] {
            let error = watch_canceled(reason);
            let is_rejected = matches!(error, LocatorError::Rejected { .. });
            let is_auth = reason.contains("permission") || reason.contains("auth");
            assert_eq!(is_rejected, is_auth, "{reason}: {error}");
            assert!(error.to_string().contains(reason), "{error}");
        }
        for reason in [
            "",
            "etcdserver: mvcc: required revision is a future revision",
        ] {
            assert!(
                matches!(watch_canceled(reason), LocatorError::Unavailable { .. }),
                "{reason}"
            );
        }
    }

    #[test]
    fn page_sizes_are_at_least_one() {
        assert_eq!(page_limit(0), 1);
        assert_eq!(page_limit(5), 5);
        assert_eq!(page_limit(usize::MAX), i64::MAX);
    }
}
