//! [`EtcdNamespace`]: the naming backend on a real etcd cluster. Its doc
//! comment gives the key layout and how the lease works.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Mutex as SyncMutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, DeleteOptions, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions, WatchStream,
};
use flotilla_core_types::etcd::{Access, EtcdOptions, prefix_end, retry_connect_failures};
use flotilla_core_types::{
    Endpoint, EndpointSource, EndpointWatch, EndpointsFuture, Name, SourceError,
};
use tokio::sync::{Mutex, Notify};
use tonic::Code;

use crate::error::ShownDuration;
use crate::namespace::{is_at_or_beneath, resolution_at, resolution_candidates};
use crate::{
    Error, ListedName, Listing, MountFlags, MountOutcome, MountReport, MountedServer, Namespace,
    NamespaceError, RefreshStyle, RemovedMount, Resolution,
};

/// How many keys one read of a prefix asks for at most, by default: far
/// below what would bring a response near the client's 4 MiB decode limit
/// (our entries are a few hundred bytes), few enough round trips for any
/// listing.
const DEFAULT_PAGE_SIZE: usize = 1000;

/// The most operations etcd accepts in one transaction (its
/// `--max-txn-ops` default).
const MAX_TXN_OPS: usize = 128;

/// The longest TTL etcd grants (its `MaxLeaseTTL`).
const MAX_ETCD_TTL: Duration = Duration::from_secs(9_000_000_000);

/// The naming backend on etcd.
///
/// # Key layout
///
/// A server mounted under a name is one key:
///
/// ```text
/// {prefix}/{name}/#{server}   →   {"serves_mount_table":false,"leaf":false}
/// ```
///
/// for example `flotilla/names/api/v1/#10.0.0.7:8080`. `#` cannot occur in
/// a [`Name`], so the keys of name `api` (prefix `…/api/#`) never include
/// those of `api/v1` (prefix `…/api/v1/#`), and resolving a name is one
/// range read. The value holds the mount's flags as JSON.
///
/// # Sessions
///
/// Every key one `EtcdNamespace` writes is attached to its lease, granted
/// on the first mount with the publisher's TTL (rounded up to whole
/// seconds). [`keep_alive`](Namespace::keep_alive) extends it: one message a
/// period on a stream kept open, however many mounts. When etcd says the
/// lease is gone (it expired during an outage, or was revoked), the
/// operation answers [`NamespaceError::EntriesLost`] and forgets the lease,
/// and the next mount grants a new one. [`release`](Namespace::release) revokes it, which
/// deletes every key on it at once. So give each publisher its own
/// `EtcdNamespace` ([`EtcdNamespace::fresh_session`] shares the connection).
///
/// # Keys removed by someone else
///
/// The keep-alive keeps the lease, not the keys: a key deleted by an
/// operator, a script or another publisher would stay gone. So each
/// session also follows its own keys' removals with one watch stream on
/// the prefix (delete events only, so mounts elsewhere cost it nothing),
/// and [`removed_mounts`](Namespace::removed_mounts) hands every key of
/// ours deleted after our last write of it to the publisher, which mounts
/// it again at once. **Time to restore**: one watch event plus one mount,
/// milliseconds on a healthy cluster; at most
/// [`operation_timeout`](crate::PublisherConfig::operation_timeout) after
/// etcd reports the delete, and retried with backoff if that mount fails.
/// A pair removed again within a refresh period of its last removal is
/// restored after the pair's retry backoff instead, so that no pattern of
/// deletes makes it re-mount at network speed.
/// When the watch breaks, the next call checks our own keys once (in
/// transactions of at most 128 reads, all at one revision; never the whole
/// prefix, which may hold more than one response can carry), reports ours
/// that are missing and watches on from that revision, so nothing removed
/// in between is missed. [`list`](Namespace::list) reads in pages
/// ([`EtcdNamespace::with_page_size`]).
///
/// A delete that came in the same revision as a put of another server
/// under the name is a **replacement**, not a removal: that is what a mount
/// with [`MountFlags::replace`] does, in one transaction. It is reported
/// with [`RemovedMount::replaced`], and the publisher leaves the pair
/// replaced ([`MountState::Replaced`](crate::MountState::Replaced)) instead
/// of undoing the replacement. A replacement made while the watch was down
/// is seen only as a removal, and so undone once.
///
/// # Two publishers of one pair
///
/// A pair is one key, so two publishers of the same (name, server) share
/// it: it hangs on the lease of whichever wrote it last, and when that one
/// stops (its revoke deletes the key) or dies (its lease expires), the
/// other sees the delete and writes the key back on its own lease. The rule
/// is: **a pair stays published as long as any of its publishers runs**,
/// with a gap of the restore time above when the holder leaves. Removing a
/// pair from one publisher deletes the key too, and the other restores it
/// the same way. Resolvers and [`watch_name`](EtcdNamespace::watch_name)
/// see one server, never a duplicate.
///
/// Publishers of one name with different servers, mounting with
/// [`MountFlags::replace`], follow the rule of replacement instead: **the
/// last replacer wins**. Its transaction deletes the others' keys, and they
/// leave their pairs replaced rather than restore them (which would replace
/// the replacer in turn, forever: the rolling deploy where old and new
/// versions replace each other). The same holds when only the last one
/// replaces: the others do not silently undo it.
///
/// # Unreadable entries
///
/// An entry under the prefix that this crate cannot read (someone else
/// wrote it) never stops a mount: it is left alone, never taken for a
/// server, logged, and reported in [`MountReport::unreadable`] (the
/// publisher shows it in [`MountStatus::unreadable`]). Listings and watches
/// report such entries beside the readable ones, and so does
/// [`resolve`](Namespace::resolve), in [`Resolution::unreadable`], with the
/// readable servers: one foreign key never makes a name unresolvable.
///
/// [`MountStatus::unreadable`]: crate::MountStatus::unreadable
///
/// # Example
///
/// ```no_run
/// use flotilla_core_types::Name;
/// use flotilla_publisher::{EtcdNamespace, Namespace, Publisher, PublisherConfig};
///
/// # async fn example() -> anyhow::Result<()> {
/// let etcd = EtcdNamespace::connect(&["http://127.0.0.1:2379"], "flotilla/names").await?;
/// let publisher = Publisher::start(etcd.fresh_session(), PublisherConfig::default())?;
/// publisher.add_name(Name::new("api")?).await?;
/// publisher.add_server("10.0.0.7:8080".parse()?).await?;
///
/// // Anyone can resolve, and follow a name's servers as they change.
/// let servers = etcd.resolve(&Name::new("api")?).await?;
/// let mut changes = etcd.watch_name(&Name::new("api")?).await?;
/// while let Some(change) = changes.next().await? {
///     println!("{change:?}");
/// }
/// # Ok(())
/// # }
/// ```
pub struct EtcdNamespace {
    client: Client,
    prefix: String,
    root: String,
    lease: Mutex<Option<Lease>>,
    keeper: Mutex<Option<Keeper>>,
    /// The keys this session wrote, for [`Namespace::removed_mounts`].
    owned: SyncMutex<Owned>,
    /// The watch on the prefix's deletes, once opened.
    removals: Mutex<Option<WatchStream>>,
    /// Woken when a removal is recorded other than from the watch (once a
    /// write's revision shows that a delete seen during it came after it).
    removal_recorded: Notify,
    /// How many keys one read or transaction covers at most.
    page_size: usize,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
}

/// What this session has written and not removed itself, and the removals
/// by others it has seen: a plain map behind a `std` mutex, never held
/// across an `.await`.
#[derive(Debug, Default)]
struct Owned {
    keys: HashMap<String, OwnedKey>,
    /// Removals seen and not yet returned by `removed_mounts`.
    removed: Vec<Removal>,
}

#[derive(Debug)]
struct OwnedKey {
    name: Name,
    server: Endpoint,
    /// The revision of our last write, or `None` while a write is under
    /// way (its revision is not known yet).
    written_at: Option<i64>,
    /// The latest delete seen while a write was under way, decided once
    /// the write's revision is known.
    deleted_at: Option<Deletion>,
}

/// When a key of ours was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deletion {
    revision: i64,
    /// Whether `revision` is the delete's own (a watch event), so that what
    /// else happened in it can be read; otherwise it is only a revision by
    /// which the key was gone (a read found it missing).
    exact: bool,
}

/// A removal of one of our keys by someone else, not yet returned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Removal {
    key: String,
    name: Name,
    server: Endpoint,
    deletion: Deletion,
}

impl Owned {
    /// A write of `key` starts. Returns what was known of our last write
    /// before it (`None`: never written), for [`Owned::refused`].
    fn begin_write(&mut self, key: &str, name: &Name, server: &Endpoint) -> Option<i64> {
        let owned = self.keys.entry(key.to_owned()).or_insert_with(|| OwnedKey {
            name: name.clone(),
            server: server.clone(),
            written_at: None,
            deleted_at: None,
        });
        owned.written_at.take()
    }

    /// Our write of `key` was refused outright: it did not take effect, so
    /// the key is ours only if an earlier write (at `before`, from
    /// [`Owned::begin_write`]) made it so. Returns whether that recorded a
    /// removal.
    fn refused(&mut self, key: &str, before: Option<i64>) -> bool {
        match before {
            Some(revision) => self.end_write(key, Some(revision)),
            None => {
                self.keys.remove(key);
                false
            }
        }
    }

    /// Our write of `key` landed at `revision` (or, with `None`, failed in a
    /// way that leaves it unknown: then any later delete is reported).
    /// Returns whether that recorded a removal.
    fn end_write(&mut self, key: &str, revision: Option<i64>) -> bool {
        let Some(owned) = self.keys.get_mut(key) else {
            return false; // unmounted meanwhile
        };
        let revision = revision.unwrap_or(0);
        owned.written_at = Some(revision);
        match owned.deleted_at.take() {
            Some(deletion) if deletion.revision > revision => {
                self.removed.push(Removal {
                    key: key.to_owned(),
                    name: owned.name.clone(),
                    server: owned.server.clone(),
                    deletion,
                });
                true
            }
            _ => false,
        }
    }

    /// Someone deleted `key` at (or, unless `deletion.exact`, by)
    /// `deletion.revision`.
    fn deleted(&mut self, key: &str, deletion: Deletion) {
        let Some(owned) = self.keys.get_mut(key) else {
            return; // not ours, or removed by us
        };
        match owned.written_at {
            None => {
                if owned
                    .deleted_at
                    .is_none_or(|seen| seen.revision < deletion.revision)
                {
                    owned.deleted_at = Some(deletion);
                }
            }
            Some(written) if deletion.revision > written => {
                tracing::warn!(
                    key,
                    revision = deletion.revision,
                    "a key of ours was removed by someone else"
                );
                self.removed.push(Removal {
                    key: key.to_owned(),
                    name: owned.name.clone(),
                    server: owned.server.clone(),
                    deletion,
                });
            }
            Some(_) => {} // a delete from before our last write
        }
    }

    /// `removals`, found so, are returned: out of the pending ones, and a
    /// replaced key is ours no more (unless we wrote it again since).
    fn returned(&mut self, removals: &[(Removal, bool)]) {
        self.removed
            .retain(|pending| !removals.iter().any(|(removal, _)| removal == pending));
        for (removal, replaced) in removals {
            let rewritten = self.keys.get(&removal.key).is_none_or(|owned| {
                owned
                    .written_at
                    .is_none_or(|written| written > removal.deletion.revision)
            });
            if *replaced && !rewritten {
                self.keys.remove(&removal.key);
            }
        }
    }
}

/// The open keep-alive stream of a lease: each keep-alive is one request and
/// one answer on it, so a period costs one message, not a new stream.
struct Keeper {
    lease_id: i64,
    requests: LeaseKeeper,
    answers: LeaseKeepAliveStream,
    /// A request was sent and its answer not yet read (the caller's future
    /// was dropped in between): the stream is out of step and is replaced.
    awaiting_answer: bool,
}

impl EtcdNamespace {
    /// Connects to the etcd cluster at `endpoints` (URLs such as
    /// `http://127.0.0.1:2379`) and keeps names under `prefix`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty or malformed prefix or no
    /// endpoints; [`Error::InvalidConfig`] naming `endpoints` when the
    /// client cannot be built from them.
    pub async fn connect(endpoints: &[&str], prefix: &str) -> Result<EtcdNamespace, Error> {
        let Some(first) = endpoints.first() else {
            return Err(Error::InvalidConfig {
                field: "endpoints",
                reason: String::from("must name at least one etcd endpoint"),
            });
        };
        validate_prefix(prefix)?;
        let options = EtcdOptions::new(endpoints.iter().copied()).connect_options();
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|error| Error::InvalidConfig {
                field: "endpoints",
                reason: error.to_string(),
            })?;
        Ok(EtcdNamespace::from_client(client, prefix)?.with_root(first, prefix))
    }

    /// Connects to the etcd cluster `options` name (TLS, a client
    /// certificate, a user and password, as the cluster needs), checks
    /// that etcd lets this client read and write the keys under `prefix`,
    /// and keeps names there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty or malformed prefix;
    /// [`Error::Etcd`] when connecting fails (no member answers, TLS
    /// fails, the user is refused) or the user may not use the prefix.
    /// Nothing is retried but a request that reached no member, a few
    /// times.
    pub async fn connect_with(options: &EtcdOptions, prefix: &str) -> Result<EtcdNamespace, Error> {
        validate_prefix(prefix)?;
        let checked = format!("{prefix}/");
        let client = options
            .connect(checked.as_bytes(), Access::ReadWrite)
            .await?;
        let first = options.endpoints().first().map_or("", String::as_str);
        Ok(EtcdNamespace::from_client(client, prefix)?.with_root(first, prefix))
    }

    /// The same backend, its root naming the endpoint `first` (a URL).
    fn with_root(mut self, first: &str, prefix: &str) -> EtcdNamespace {
        let host = first.split_once("://").map_or(first, |(_, rest)| rest);
        self.root = format!("etcd://{host}/{prefix}");
        self
    }

    /// A backend on an existing client, keeping names under `prefix`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an empty or malformed prefix.
    pub fn from_client(client: Client, prefix: &str) -> Result<EtcdNamespace, Error> {
        validate_prefix(prefix)?;
        Ok(EtcdNamespace {
            client,
            root: format!("etcd:/{prefix}"),
            prefix: prefix.to_owned(),
            lease: Mutex::new(None),
            keeper: Mutex::new(None),
            owned: SyncMutex::default(),
            removals: Mutex::new(None),
            removal_recorded: Notify::new(),
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// Another backend on the same connection and prefix, with a session
    /// (lease) of its own: one for each publisher.
    pub fn fresh_session(&self) -> EtcdNamespace {
        EtcdNamespace {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            root: self.root.clone(),
            lease: Mutex::new(None),
            keeper: Mutex::new(None),
            owned: SyncMutex::default(),
            removals: Mutex::new(None),
            removal_recorded: Notify::new(),
            page_size: self.page_size,
        }
    }

    /// Reads prefixes in pages of at most `entries` keys (default 1,000;
    /// at least 1), and checks this session's own keys in transactions of
    /// at most that many reads (and never more than etcd's 128). Every
    /// response stays under the client's 4 MiB decode limit, however many
    /// entries the prefix holds.
    pub fn with_page_size(mut self, entries: usize) -> EtcdNamespace {
        self.page_size = entries.max(1);
        self
    }

    /// The client, for whatever else the caller wants of etcd.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The id of the lease this backend's mounts hang on, once one is
    /// granted.
    pub async fn lease_id(&self) -> Option<i64> {
        self.lease.lock().await.map(|lease| lease.id)
    }

    /// The key of `server` under `name` (see the key layout in the
    /// [type's documentation](EtcdNamespace)).
    pub fn key(&self, name: &Name, server: &Endpoint) -> String {
        format!("{}#{server}", self.name_prefix(name.as_str()))
    }

    /// Follows the servers mounted under `name` (exactly that name): first
    /// every server mounted now, as [`NameChange::Mounted`], then each change
    /// as etcd commits it, with nothing missed in between. An entry this
    /// crate cannot read comes as [`NameChange::Unreadable`], in its place
    /// among the others.
    ///
    /// # Errors
    ///
    /// [`NamespaceError::Unavailable`] when etcd cannot be reached.
    pub async fn watch_name(&self, name: &Name) -> Result<NameWatch, NamespaceError> {
        let (mut initial, mut watch) =
            open_name_watch(self.client.clone(), self.name_prefix(name.as_str())).await?;
        initial.reverse();
        watch.pending = initial;
        Ok(watch)
    }

    /// Runs one etcd call, again on a fresh pick of endpoint when it could
    /// not reach the member it was sent to: the client balances over every
    /// endpoint and may send a call to a member that just died. Only
    /// connection failures are retried, and only idempotent calls are made
    /// this way; the publisher's operation timeout bounds the whole.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retry_connect_failures(|| call(self.client.clone())).await
    }

    fn name_prefix(&self, name: &str) -> String {
        format!("{}/{name}/", self.prefix)
    }

    fn owned(&self) -> MutexGuard<'_, Owned> {
        // Every method leaves `Owned` consistent before it could panic, so
        // a poisoned lock is safe to keep using.
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the watch on the prefix's deletes: first a check of our own
    /// keys (only those: the prefix may hold far more than one response
    /// can carry), in transactions of reads at one revision, to report
    /// ours that are gone already; then the watch from the revision after.
    async fn open_removals(&self) -> Result<WatchStream, NamespaceError> {
        let all_keys = format!("{}/", self.prefix);
        let ours: Vec<String> = self.owned().keys.keys().cloned().collect();
        let batch = self.page_size.min(MAX_TXN_OPS);
        let mut revision = None;
        let mut missing = Vec::new();
        for keys in ours.chunks(batch) {
            let mut options = GetOptions::new().with_count_only();
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            let reads: Vec<TxnOp> = keys
                .iter()
                .map(|key| TxnOp::get(key.as_str(), Some(options.clone())))
                .collect();
            let txn = Txn::new().and_then(reads);
            let response = self
                .call(|mut client| {
                    let txn = txn.clone();
                    async move { client.txn(txn).await }
                })
                .await
                .map_err(classify)?;
            // A transaction of reads leaves the revision as it is: the
            // first one's is the one every later batch reads at.
            let read_at = *revision.get_or_insert(header_revision(response.header()));
            for (key, answer) in keys.iter().zip(response.op_responses()) {
                if let TxnOpResponse::Get(answer) = answer
                    && answer.count() == 0
                {
                    missing.push(key.clone());
                }
            }
            tracing::trace!(read_at, keys = keys.len(), "our keys checked");
        }
        let revision = match revision {
            Some(revision) => revision,
            None => {
                // We own nothing: only the revision to watch from.
                let response = self
                    .call(|mut client| {
                        let all_keys = all_keys.clone();
                        async move {
                            client
                                .get(all_keys, Some(GetOptions::new().with_count_only()))
                                .await
                        }
                    })
                    .await
                    .map_err(classify)?;
                header_revision(response.header())
            }
        };
        {
            let mut owned = self.owned();
            for key in missing {
                owned.deleted(
                    &key,
                    Deletion {
                        revision,
                        exact: false,
                    },
                );
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_filters([WatchFilterType::NoPut]);
        let mut client = self.client.clone();
        let stream = client
            .watch(all_keys, Some(options))
            .await
            .map_err(classify)?;
        tracing::debug!(revision, "watching for removals of our keys");
        Ok(stream)
    }

    /// Every entry under `range_prefix`, read in pages of at most
    /// `page_size` keys, all at the revision of the first.
    async fn read_prefix(&self, range_prefix: &str) -> Result<Vec<KeyValue>, NamespaceError> {
        let range_end = prefix_end(range_prefix.as_bytes());
        let limit = i64::try_from(self.page_size).unwrap_or(i64::MAX);
        let mut start = range_prefix.as_bytes().to_vec();
        let mut revision = 0; // the newest, for the first page
        let mut entries = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(limit)
                .with_revision(revision);
            let mut response = self
                .call(|mut client| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { client.get(start, Some(options)).await }
                })
                .await
                .map_err(classify)?;
            if revision == 0 {
                revision = header_revision(response.header());
            }
            let more = response.more();
            let page = response.take_kvs();
            let Some(last) = page.last() else {
                return Ok(entries);
            };
            // The next page starts just after the last key of this one.
            start = last.key().to_vec();
            start.push(0);
            entries.extend(page);
            if !more {
                return Ok(entries);
            }
        }
    }

    /// Every readable entry under `name`, and the unreadable ones apart.
    async fn entries_under(
        &self,
        name: &str,
    ) -> Result<(Vec<MountedServer>, Vec<BadEntry>), NamespaceError> {
        let key_prefix = self.name_prefix(name);
        let servers_prefix = format!("{key_prefix}#");
        let response = self
            .call(|mut client| {
                let servers_prefix = servers_prefix.clone();
                async move {
                    client
                        .get(servers_prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
            .map_err(classify)?;
        let mut servers = Vec::with_capacity(response.kvs().len());
        let mut unreadable = Vec::new();
        for kv in response.kvs() {
            match parse_entry(&key_prefix, kv.key(), kv.value()) {
                Ok((server, flags)) => servers.push(MountedServer {
                    server,
                    flags,
                    ttl_left: None,
                }),
                Err(bad) => unreadable.push(bad),
            }
        }
        servers.sort_by(|a, b| a.server.cmp(&b.server));
        Ok((servers, unreadable))
    }

    async fn session_lease(&self, ttl: Duration) -> Result<Lease, NamespaceError> {
        let mut lease = self.lease.lock().await;
        if let Some(lease) = *lease {
            return Ok(lease);
        }
        let granted = self
            .call(|mut client| async move { client.lease_grant(ttl_seconds(ttl), None).await })
            .await
            .map_err(classify)?;
        let granted = Lease { id: granted.id() };
        tracing::debug!(lease = granted.id, ttl = ?ttl, "lease granted");
        *lease = Some(granted);
        Ok(granted)
    }

    /// Forgets `lost` if it is still the session's lease, and says so.
    async fn forget_lease(&self, lost: Lease, how: &str) -> NamespaceError {
        let mut lease = self.lease.lock().await;
        if lease.is_some_and(|current| current.id == lost.id) {
            *lease = None;
        }
        NamespaceError::EntriesLost {
            reason: format!("etcd lease {:x} {how}", lost.id),
        }
    }

    /// Whether `removal` was a replacement: its delete came in the same
    /// revision as a put of another server under the name, which is what a
    /// `replace` mount's transaction does (etcd gives every operation of a
    /// transaction one revision). Read from etcd's history at that
    /// revision; a removal known only from a read (the watch was down) or
    /// whose revision was compacted away counts as a plain removal.
    async fn was_replaced(&self, removal: &Removal) -> Result<bool, NamespaceError> {
        if !removal.deletion.exact {
            return Ok(false);
        }
        let servers_prefix = format!("{}#", self.name_prefix(removal.name.as_str()));
        let revision = removal.deletion.revision;
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_revision(revision);
        let response = self
            .call(|mut client| {
                let (servers_prefix, options) = (servers_prefix.clone(), options.clone());
                async move { client.get(servers_prefix, Some(options)).await }
            })
            .await;
        let response = match response.map_err(classify) {
            Ok(response) => response,
            Err(error @ NamespaceError::Rejected { .. }) => {
                tracing::debug!(%error, revision, "cannot read the removal's revision; a plain removal");
                return Ok(false);
            }
            Err(error) => return Err(error),
        };
        Ok(response
            .kvs()
            .iter()
            .any(|kv| kv.mod_revision() == revision && kv.key() != removal.key.as_bytes()))
    }
}

impl Namespace for EtcdNamespace {
    fn refresh_style(&self) -> RefreshStyle {
        RefreshStyle::Session
    }

    fn root(&self) -> String {
        self.root.clone()
    }

    fn validate_ttl(&self, ttl: Duration) -> Result<(), NamespaceError> {
        if ttl < Duration::from_secs(1) || ttl > MAX_ETCD_TTL {
            return Err(NamespaceError::InvalidTtl {
                ttl,
                reason: format!(
                    "etcd leases last from 1 s to {}, in whole seconds",
                    ShownDuration(MAX_ETCD_TTL)
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
        self.validate_ttl(ttl)?;
        let lease = self.session_lease(ttl).await?;
        let key = self.key(name, server);
        let (others, unreadable) = self.entries_under(name.as_str()).await?;
        for bad in &unreadable {
            tracing::warn!(key = %bad.key, reason = %bad.reason, %name,
                "unreadable entry under the name; left alone");
        }
        let unreadable: Vec<NamespaceError> =
            unreadable.into_iter().map(BadEntry::into_error).collect();
        let value = encode_flags(flags);
        let put = PutOptions::new().with_lease(lease.id).with_prev_key();
        let replaced: Vec<String> = others
            .iter()
            .filter(|other| &other.server != server)
            .map(|other| self.key(name, &other.server))
            .collect();
        if !flags.replace
            && let Some(conflict) = others
                .iter()
                .find(|other| &other.server != server && !other.flags.same_kind(flags))
        {
            return Err(NamespaceError::FlagsConflict {
                name: name.clone(),
                server: server.clone(),
                existing: conflict.flags,
                requested: flags,
            });
        }
        let written_before = self.owned().begin_write(&key, name, server);
        let result = if flags.replace {
            let mut operations: Vec<TxnOp> = replaced
                .iter()
                .map(|other| TxnOp::delete(other.as_str(), None))
                .collect();
            let existed = others.iter().any(|other| &other.server == server);
            operations.push(TxnOp::put(key.as_str(), value, Some(put)));
            let txn = Txn::new().and_then(operations);
            self.call(|mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await
            .map(|response| (existed, response.header().map(|h| h.revision())))
        } else {
            self.call(|mut client| {
                let (key, value, put) = (key.clone(), value.clone(), put.clone());
                async move { client.put(key, value, Some(put)).await }
            })
            .await
            .map(|response| {
                let existed = response.prev_key().is_some();
                (existed, response.header().map(|h| h.revision()))
            })
        };
        let outcome = match result {
            Ok((existed, revision)) => {
                let mut owned = self.owned();
                if flags.replace {
                    // Our own other keys that we just deleted are not
                    // removals by someone else.
                    for other in &replaced {
                        owned.keys.remove(other);
                    }
                }
                if owned.end_write(&key, revision) {
                    self.removal_recorded.notify_one();
                }
                if existed {
                    MountOutcome::Refreshed
                } else {
                    MountOutcome::Created
                }
            }
            Err(error) => {
                let lease_gone = is_lease_not_found(&error);
                let error = if lease_gone {
                    self.forget_lease(lease, "is gone").await
                } else {
                    classify(error)
                };
                let mut owned = self.owned();
                let removal = if error.may_have_taken_effect() {
                    owned.end_write(&key, None)
                } else {
                    owned.refused(&key, written_before)
                };
                drop(owned);
                if removal {
                    self.removal_recorded.notify_one();
                }
                return Err(error);
            }
        };
        Ok(MountReport {
            outcome,
            unreadable,
        })
    }

    fn forgotten(&self, name: &Name, server: &Endpoint) {
        // Never written, as far as the publisher knows: its deletes are no
        // news, now or at any reopening of the watch.
        self.owned().keys.remove(&self.key(name, server));
    }

    async fn unmount(&self, name: &Name, server: &Endpoint) -> Result<(), NamespaceError> {
        let key = self.key(name, server);
        // Ours no more: its delete is not a removal by someone else.
        self.owned().keys.remove(&key);
        self.call(|mut client| {
            let key = key.clone();
            async move { client.delete(key, None::<DeleteOptions>).await }
        })
        .await
        .map(drop)
        .map_err(classify)
    }

    async fn keep_alive(&self) -> Result<(), NamespaceError> {
        let Some(lease) = *self.lease.lock().await else {
            return Ok(());
        };
        let mut keeper = self.keeper.lock().await;
        let reusable = keeper
            .as_ref()
            .is_some_and(|k| k.lease_id == lease.id && !k.awaiting_answer);
        if !reusable {
            // Opening the stream sends one keep-alive and reads its answer.
            *keeper = None;
            let opened = self
                .call(|mut client| async move { client.lease_keep_alive(lease.id).await })
                .await;
            return match opened {
                Ok((requests, answers)) => {
                    *keeper = Some(Keeper {
                        lease_id: lease.id,
                        requests,
                        answers,
                        awaiting_answer: false,
                    });
                    Ok(())
                }
                Err(error) if is_lease_not_found(&error) => {
                    Err(self.forget_lease(lease, "expired or was revoked").await)
                }
                Err(error) => Err(classify(error)),
            };
        }
        let open = keeper.as_mut().expect("checked reusable above");
        open.awaiting_answer = true;
        let answer = match open.requests.keep_alive().await {
            Ok(()) => open.answers.message().await,
            Err(error) => Err(error),
        };
        open.awaiting_answer = false;
        match answer {
            Ok(Some(answer)) if answer.ttl() > 0 => Ok(()),
            Ok(Some(_)) => {
                *keeper = None;
                Err(self.forget_lease(lease, "expired or was revoked").await)
            }
            Ok(None) => {
                *keeper = None;
                Err(NamespaceError::unavailable(StreamEnded("lease keep-alive")))
            }
            Err(error) => {
                *keeper = None;
                Err(classify(error))
            }
        }
    }

    async fn release(&self) -> Result<(), NamespaceError> {
        *self.keeper.lock().await = None;
        // The revoke deletes our keys; those deletes are ours.
        *self.owned() = Owned::default();
        let Some(lease) = self.lease.lock().await.take() else {
            return Ok(());
        };
        let revoked = self
            .call(|mut client| async move { client.lease_revoke(lease.id).await })
            .await;
        match revoked {
            Ok(_) => Ok(()),
            Err(error) if is_lease_not_found(&error) => Ok(()),
            Err(error) => Err(classify(error)),
        }
    }

    async fn resolve(&self, name: &Name) -> Result<Resolution, NamespaceError> {
        let mut unreadable = Vec::new();
        for candidate in resolution_candidates(name) {
            let (servers, bad) = self.entries_under(candidate).await?;
            for bad in &bad {
                tracing::warn!(key = %bad.key, reason = %bad.reason, %name,
                    "unreadable entry skipped in a resolve");
            }
            unreadable.extend(bad.into_iter().map(BadEntry::into_error));
            if !servers.is_empty() {
                let mut resolution = resolution_at(name, candidate, servers)?;
                resolution.unreadable = unreadable;
                return Ok(resolution);
            }
        }
        Err(NamespaceError::NotFound { name: name.clone() })
    }

    async fn list(&self, prefix: Option<&Name>) -> Result<Listing, NamespaceError> {
        // `{prefix}/{name}/` covers the name's own keys (`…/#server`) and
        // every name beneath it, and nothing else.
        let range = match prefix {
            Some(name) => self.name_prefix(name.as_str()),
            None => format!("{}/", self.prefix),
        };
        let entries = self.read_prefix(&range).await?;
        let mut names: Vec<ListedName> = Vec::new();
        let mut unreadable = Vec::new();
        let root = format!("{}/", self.prefix);
        for kv in &entries {
            match parse_listed(&root, kv.key(), kv.value()) {
                Ok((name, mounted)) if is_at_or_beneath(name.as_str(), prefix) => {
                    match names.last_mut() {
                        Some(listed) if listed.name == name => listed.servers.push(mounted),
                        _ => names.push(ListedName {
                            name,
                            servers: vec![mounted],
                        }),
                    }
                }
                Ok(_) => {}
                Err(bad) => unreadable.push(bad.into_error()),
            }
        }
        // etcd returns keys in byte order, which keeps a name's keys
        // together only if no character of a longer name sorts below `#`:
        // sort and merge rather than rely on it.
        names.sort_by(|a, b| a.name.cmp(&b.name));
        names.dedup_by(|later, earlier| {
            if later.name == earlier.name {
                earlier.servers.append(&mut later.servers);
                true
            } else {
                false
            }
        });
        for listed in &mut names {
            listed.servers.sort_by(|a, b| a.server.cmp(&b.server));
        }
        Ok(Listing { names, unreadable })
    }

    async fn removed_mounts(&self) -> Result<Vec<RemovedMount>, NamespaceError> {
        let mut removals = self.removals.lock().await;
        loop {
            // Cancel safe: removals stay pending until they are returned.
            let pending = self.owned().removed.clone();
            if !pending.is_empty() {
                let mut found = Vec::with_capacity(pending.len());
                for removal in pending {
                    let replaced = self.was_replaced(&removal).await?;
                    found.push((removal, replaced));
                }
                self.owned().returned(&found);
                return Ok(found
                    .into_iter()
                    .map(|(removal, replaced)| RemovedMount {
                        name: removal.name,
                        server: removal.server,
                        replaced,
                    })
                    .collect());
            }
            let Some(stream) = removals.as_mut() else {
                // The opening read may have found removals already.
                *removals = Some(self.open_removals().await?);
                continue;
            };
            // Cancel safe: a message is taken off the stream and recorded
            // in `owned` with no `.await` in between, and a removal recorded
            // by a write stays in `owned` until returned.
            let recorded = self.removal_recorded.notified();
            let message = tokio::select! {
                message = stream.message() => message,
                () = recorded => continue,
            };
            let message = match message {
                Ok(Some(message)) if !message.canceled() => message,
                Ok(Some(message)) => {
                    *removals = None;
                    return Err(NamespaceError::Rejected {
                        source: std::sync::Arc::new(WatchCanceled(
                            message.cancel_reason().to_owned(),
                        )),
                    });
                }
                Ok(None) => {
                    *removals = None;
                    return Err(NamespaceError::unavailable(StreamEnded("watch")));
                }
                Err(error) => {
                    *removals = None;
                    return Err(classify(error));
                }
            };
            let mut owned = self.owned();
            for event in message.events() {
                // A deleted key has version 0 (read from the record, not
                // from `event_type`, which panics on a type it does not
                // know).
                if let Some(kv) = event.kv()
                    && kv.version() == 0
                    && let Ok(key) = std::str::from_utf8(kv.key())
                {
                    owned.deleted(
                        key,
                        Deletion {
                            revision: kv.mod_revision(),
                            exact: true,
                        },
                    );
                }
            }
        }
    }
}

impl fmt::Debug for EtcdNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdNamespace")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// A change to the servers under one name; see
/// [`EtcdNamespace::watch_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameChange {
    /// The server is mounted (or its mount was rewritten).
    Mounted {
        /// The server.
        server: Endpoint,
        /// Its flags.
        flags: MountFlags,
    },
    /// The server's mount is gone: unmounted, or its lease ended.
    Unmounted {
        /// The server.
        server: Endpoint,
    },
    /// An entry under the name that this crate cannot read was written or
    /// deleted (someone else wrote it). Reported apart, so that the valid
    /// changes around it are delivered all the same.
    Unreadable {
        /// Its key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The stream of [`NameChange`]s from [`EtcdNamespace::watch_name`].
pub struct NameWatch {
    key_prefix: String,
    /// Changes received but not yet returned, last first.
    pending: Vec<NameChange>,
    stream: WatchStream,
}

/// Lists the servers under `key_prefix` (a name's prefix) and opens a watch
/// from just after that listing: the listing as changes, and the watch with
/// nothing pending.
async fn open_name_watch(
    mut client: Client,
    key_prefix: String,
) -> Result<(Vec<NameChange>, NameWatch), NamespaceError> {
    // Exactly this name's servers: `…/{name}/` alone would also cover the
    // names beneath it.
    let servers_prefix = format!("{key_prefix}#");
    let current = client
        .get(
            servers_prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(classify)?;
    let revision = current.header().map_or(0, |header| header.revision());
    let mut initial = Vec::new();
    for kv in current.kvs() {
        initial.push(match parse_entry(&key_prefix, kv.key(), kv.value()) {
            Ok((server, flags)) => NameChange::Mounted { server, flags },
            Err(bad) => bad.into_change(),
        });
    }
    let stream = client
        .watch(
            servers_prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(classify)?;
    Ok((
        initial,
        NameWatch {
            key_prefix,
            pending: Vec::new(),
            stream,
        },
    ))
}

/// etcd as an [`EndpointSource`]: a watch lists the name's servers, then
/// follows them with one etcd watch ([`EtcdNamespace::watch_name`]'s),
/// answering the whole set after each batch of changes etcd commits
/// together. Unreadable entries are left out (and logged). When the
/// connection fails the watch answers [`SourceError::Unavailable`]; the next
/// call lists again and follows from there, so nothing is missed.
impl EndpointSource for EtcdNamespace {
    fn watch_endpoints(&self, name: &Name) -> Box<dyn EndpointWatch> {
        Box::new(EtcdEndpointWatch {
            client: self.client.clone(),
            key_prefix: self.name_prefix(name.as_str()),
            watch: None,
            current: BTreeSet::new(),
            last: None,
        })
    }
}

/// [`EtcdNamespace`]'s [`EndpointWatch`].
struct EtcdEndpointWatch {
    client: Client,
    key_prefix: String,
    /// The open watch; `None` before the first call and after a failure.
    watch: Option<NameWatch>,
    /// The servers as the watch has followed them.
    current: BTreeSet<Endpoint>,
    /// The set last answered.
    last: Option<BTreeSet<Endpoint>>,
}

impl EtcdEndpointWatch {
    fn apply(&mut self, change: NameChange) {
        match change {
            NameChange::Mounted { server, .. } => {
                self.current.insert(server);
            }
            NameChange::Unmounted { server } => {
                self.current.remove(&server);
            }
            // A server whose entry became unreadable is left out, as a
            // fresh listing would leave it out.
            NameChange::Unreadable { key, .. } => {
                if let Ok(server) = parse_server(&self.key_prefix, key.as_bytes()) {
                    self.current.remove(&server);
                }
            }
        }
    }
}

impl EndpointWatch for EtcdEndpointWatch {
    fn next(&mut self) -> EndpointsFuture<'_> {
        Box::pin(async move {
            loop {
                match self.watch.as_mut() {
                    None => {
                        let (initial, watch) =
                            open_name_watch(self.client.clone(), self.key_prefix.clone())
                                .await
                                .map_err(|error| SourceError::Unavailable(error.to_string()))?;
                        self.current.clear();
                        for change in initial {
                            self.apply(change);
                        }
                        self.watch = Some(watch);
                    }
                    Some(watch) => match watch.next().await {
                        Ok(Some(change)) => {
                            // The rest of etcd's batch, already received:
                            // answered as one set, not step by step.
                            let mut batch = vec![change];
                            while !watch.pending.is_empty() {
                                match watch.next().await {
                                    Ok(Some(change)) => batch.push(change),
                                    _ => break,
                                }
                            }
                            for change in batch {
                                self.apply(change);
                            }
                        }
                        // etcd ended the watch: list again and follow on.
                        Ok(None) => self.watch = None,
                        Err(error) => {
                            self.watch = None;
                            return Err(SourceError::Unavailable(error.to_string()));
                        }
                    },
                }
                if self.last.as_ref() != Some(&self.current) {
                    self.last = Some(self.current.clone());
                    return Ok(self.current.clone());
                }
            }
        })
    }
}

impl NameWatch {
    /// The next change, or `None` when etcd ended the watch. Unreadable
    /// entries come as [`NameChange::Unreadable`], never as an error, so
    /// nothing after them is lost.
    ///
    /// # Errors
    ///
    /// [`NamespaceError::Unavailable`] when the connection fails,
    /// [`NamespaceError::Rejected`] when etcd cancels the watch (its history
    /// was compacted).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a change received is kept for the next call.
    pub async fn next(&mut self) -> Result<Option<NameChange>, NamespaceError> {
        loop {
            if let Some(change) = self.pending.pop() {
                return Ok(Some(change));
            }
            let Some(response) = self.stream.message().await.map_err(classify)? else {
                return Ok(None);
            };
            if response.canceled() {
                return Err(NamespaceError::Rejected {
                    source: std::sync::Arc::new(WatchCanceled(response.cancel_reason().to_owned())),
                });
            }
            let mut changes = Vec::with_capacity(response.events().len());
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                // A deleted key has version 0 (read from the record, not
                // from `event_type`, which panics on a type it does not
                // know).
                let parsed = if kv.version() == 0 {
                    parse_server(&self.key_prefix, kv.key())
                        .map(|server| NameChange::Unmounted { server })
                } else {
                    parse_entry(&self.key_prefix, kv.key(), kv.value())
                        .map(|(server, flags)| NameChange::Mounted { server, flags })
                };
                let change = parsed.unwrap_or_else(|bad| {
                    tracing::warn!(key = %bad.key, reason = %bad.reason, "unreadable entry in a watched name");
                    bad.into_change()
                });
                changes.push(change);
            }
            changes.reverse();
            self.pending = changes;
        }
    }
}

impl fmt::Debug for NameWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameWatch")
            .field("key_prefix", &self.key_prefix)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("etcd canceled the watch: {0}")]
struct WatchCanceled(String);

#[derive(Debug, thiserror::Error)]
#[error("etcd ended the {0} stream")]
struct StreamEnded(&'static str);

/// An entry this crate cannot read: what [`NamespaceError::Corrupt`] and
/// [`NameChange::Unreadable`] say.
#[derive(Debug)]
struct BadEntry {
    key: String,
    reason: String,
}

impl BadEntry {
    fn into_change(self) -> NameChange {
        NameChange::Unreadable {
            key: self.key,
            reason: self.reason,
        }
    }

    /// What a backend call reports of it: a [`NamespaceError::Corrupt`]. A
    /// method, not a `From`, so that no public impl names this private type.
    fn into_error(self) -> NamespaceError {
        NamespaceError::Corrupt {
            key: self.key,
            reason: self.reason,
        }
    }
}

/// The revision a response was served at.
fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |header| header.revision())
}

fn validate_prefix(prefix: &str) -> Result<(), Error> {
    let fail = |reason: String| {
        Err(Error::InvalidConfig {
            field: "prefix",
            reason,
        })
    };
    if prefix.is_empty() {
        return fail(String::from("must not be empty"));
    }
    if prefix.ends_with('/') {
        return fail(format!("{prefix} ends with '/' (the layout adds it)"));
    }
    if prefix.contains('#') {
        return fail(format!("{prefix} contains '#', which the layout reserves"));
    }
    Ok(())
}

/// `ttl` in whole seconds, rounded up, as etcd wants it.
fn ttl_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

fn encode_flags(flags: MountFlags) -> String {
    serde_json::to_string(&flags).expect("MountFlags serialises to JSON infallibly")
}

/// The server and flags of the entry `key` → `value` under `key_prefix`.
fn parse_entry(
    key_prefix: &str,
    key: &[u8],
    value: &[u8],
) -> Result<(Endpoint, MountFlags), BadEntry> {
    let server = parse_server(key_prefix, key)?;
    let flags = parse_flags(key, value)?;
    Ok((server, flags))
}

fn parse_flags(key: &[u8], value: &[u8]) -> Result<MountFlags, BadEntry> {
    serde_json::from_slice(value).map_err(|error| bad_entry(key, error.to_string()))
}

/// The server whose entry under `key_prefix` is `key`.
fn parse_server(key_prefix: &str, key: &[u8]) -> Result<Endpoint, BadEntry> {
    let text = std::str::from_utf8(key).map_err(|error| bad_entry(key, error.to_string()))?;
    let server_text = text
        .strip_prefix(key_prefix)
        .and_then(|rest| rest.strip_prefix('#'))
        .ok_or_else(|| bad_entry(key, format!("not under {key_prefix}#")))?;
    Endpoint::parse(server_text).map_err(|error| bad_entry(key, error.to_string()))
}

/// The name and mount of the entry `key` → `value` anywhere under `root`
/// (`{prefix}/`): the name is what comes before the first `/#`, as `#`
/// cannot occur in a name.
fn parse_listed(root: &str, key: &[u8], value: &[u8]) -> Result<(Name, MountedServer), BadEntry> {
    let text = std::str::from_utf8(key).map_err(|error| bad_entry(key, error.to_string()))?;
    let name_text = text
        .strip_prefix(root)
        .and_then(|rest| rest.split_once("/#"))
        .map(|(name, _)| name)
        .ok_or_else(|| bad_entry(key, format!("not of the form {root}{{name}}/#{{server}}")))?;
    let name = Name::new(name_text).map_err(|error| bad_entry(key, error.to_string()))?;
    let server = parse_server(&format!("{root}{name_text}/"), key)?;
    let flags = parse_flags(key, value)?;
    Ok((
        name,
        MountedServer {
            server,
            flags,
            ttl_left: None,
        },
    ))
}

fn bad_entry(key: &[u8], reason: String) -> BadEntry {
    BadEntry {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

/// Sorts an etcd error into the publisher's terms: transport trouble is
/// [`NamespaceError::Unavailable`] (retried, and its end triggers a
/// re-mount of everything), anything else is [`NamespaceError::Rejected`].
fn classify(error: etcd_client::Error) -> NamespaceError {
    use etcd_client::Error as E;
    let transient = match &error {
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => true,
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
        ),
        _ => false,
    };
    if transient {
        NamespaceError::unavailable(error)
    } else {
        NamespaceError::rejected(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Keys and values under the prefix are written by anyone with
        /// access to etcd: whatever the bytes, reading them gives an entry
        /// or a `BadEntry` naming the key, never a panic.
        #[test]
        fn any_bytes_read_as_an_entry_or_a_bad_entry(
            key in prop::collection::vec(any::<u8>(), 0..64),
            value in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let root = "/flotilla/";
            let mut full_key = root.as_bytes().to_vec();
            full_key.extend_from_slice(&key);
            let named = String::from_utf8_lossy(&full_key).into_owned();
            if let Err(bad) = parse_entry("/flotilla/api", &full_key, &value) {
                prop_assert_eq!(&bad.key, &named);
            }
            if let Err(bad) = parse_listed(root, &full_key, &value) {
                prop_assert_eq!(&bad.key, &named);
            }
        }

        /// Keys of the right shape with arbitrary text in them.
        #[test]
        fn shaped_keys_with_any_text_never_panic(
            name in "\\PC{0,12}",
            server in "\\PC{0,24}",
            value in "\\PC{0,32}",
        ) {
            let key = format!("/flotilla/{name}/#{server}");
            let _ = parse_listed("/flotilla/", key.as_bytes(), value.as_bytes());
            let _ = parse_entry(&format!("/flotilla/{name}"), key.as_bytes(), value.as_bytes());
        }
    }

    #[test]
    fn a_well_formed_entry_reads_back() {
        let flags = encode_flags(MountFlags::default());
        let (name, mounted) = parse_listed(
            "/flotilla/",
            b"/flotilla/api/v2/#127.0.0.1:80",
            flags.as_bytes(),
        )
        .expect("reads");
        assert_eq!(name.as_str(), "api/v2");
        assert_eq!(mounted.server.to_string(), "127.0.0.1:80");
        let bad = parse_listed("/flotilla/", b"/flotilla/api/#", b"{}").expect_err("no server");
        assert!(bad.key.ends_with("api/#"), "{bad:?}");
    }
}
