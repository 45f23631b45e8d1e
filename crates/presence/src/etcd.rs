//! [`EtcdStore`]: presence's records in etcd, shared by every process that
//! points at the same cluster and prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use flotilla_core_types::Name;
use flotilla_core_types::etcd::{
    Access, EtcdConnectError, EtcdOptions, prefix_end, retry_connect_failures,
};

use crate::store::{KeyRecord, PingBatch, PresenceStore, PruneReport, PruneRule};
use crate::{Config, Incarnation, Slot, StoreError};

/// The prefix every key lives under unless [`EtcdStore::with_prefix`] says
/// otherwise.
pub const DEFAULT_PREFIX: &str = "flotilla/presence/";

/// How long one request may take before it counts as failed.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys read per page of a range read.
const PAGE_SIZE: i64 = 1000;

/// Operations per transaction: below etcd's default `--max-txn-ops` (128).
const OPS_PER_TXN: usize = 64;

/// How often [`begin`](PresenceStore::begin) tries again when another
/// process moved the counter between its read and its write.
const BEGIN_ATTEMPTS: u32 = 64;

/// The largest slot record written: below etcd's default request limit
/// (1.5 MiB) with room for the rest of the transaction.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The presence store on etcd: many processes share one cluster, each with
/// its own batcher, and their watchers agree on what they read.
///
/// # Key layout
///
/// Under the prefix `P` ([`DEFAULT_PREFIX`] unless
/// [`with_prefix`](Self::with_prefix) says otherwise), for a scope `s`:
///
/// | key | value | written by |
/// |-----|-------|------------|
/// | `P#counter/s` | the last incarnation allocated, decimal | [`begin`](PresenceStore::begin), a transaction comparing its mod revision |
/// | `P s/#being/k#i` | the slot incarnation `i` of key `k` was born in, decimal | `begin`, in the same transaction |
/// | `P s/#stopped/i` | empty: incarnation `i` stopped gracefully | [`mark_stopped`](PresenceStore::mark_stopped) |
/// | `P s/#slot/n/w` | the incarnations writer `w` saw ping in slot `n` | [`write_pings`](PresenceStore::write_pings), on a lease of 3 slots |
///
/// Incarnations and slots are written as 20 decimal digits, so keys sort
/// by number; a writer is one `EtcdStore` and its clones, named by a random
/// 64-bit id (16 hex digits). `#` is not allowed in a [`Name`], so no scope
/// or key can reach into another's records. A slot record is a JSON array:
/// the smallest incarnation, then the gap to each next one.
///
/// # What each operation costs
///
/// - `begin`: one transaction (two when another process allocated in the
///   scope since this store last did).
/// - `write_pings`: one transaction per 64 (scope, slot) records the batch
///   touches, whatever the number of keys, and one lease grant per slot
///   (once a slot length). Each writer rewrites its own record of a slot as
///   the union of everything it saw in that slot, so a retried write
///   changes nothing; etcd drops the record when its lease ends, three
///   slot lengths after the grant, by when no reader consults it.
/// - `load`: one transaction reading, at one revision, the scope's
///   tombstones, its slot records from the asked slot on, and its beings
///   written since the last load through this store (the beings are kept
///   between loads, the latest incarnation of each key), with a count of
///   all of them; another read per 1,000 further keys of a range. A count
///   that does not match what is kept (after a prune or a removal deleted
///   beings) reads every being again at the same revision.
/// - `mark_stopped`: one put. `remove_scope`: one range delete.
/// - `prune`: per scope, one transaction to read and one per 64 records
///   deleted.
///
/// Every request is bounded by a timeout
/// ([`with_request_timeout`](Self::with_request_timeout), 5 s by default);
/// one that fails or times out is [`StoreError::Unavailable`], and every
/// operation may be tried again.
///
/// Watchers learn only by loads: a new key is reported within a flush and
/// a load, as on the embedded store. An etcd watch on the beings could
/// report it within a flush alone; that is not done.
///
/// # Differences from the embedded store
///
/// - A tombstone is written even for an incarnation already pruned; the
///   next prune removes it (no reader consults it meanwhile).
/// - Slot records of pruned incarnations are not rewritten: they end with
///   their lease. [`PruneReport::slots`] counts etcd keys (one per writer
///   and slot).
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use etcd_client::{Client, ConnectOptions};
/// use flotilla_core_types::Name;
/// use flotilla_presence::{Config, EtcdStore, PingBatcher, Pinger, Watcher};
///
/// # async fn example() -> anyhow::Result<()> {
/// let options = ConnectOptions::new()
///     .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
///     .with_require_leader(true);
/// let client = Client::connect(["http://127.0.0.1:2379"], Some(options)).await?;
/// let config = Config::with_slot_length(Duration::from_secs(5));
/// let store = EtcdStore::new(client, &config).with_prefix("my-app/presence/");
///
/// let scope = Name::new("cluster-1")?;
/// let batcher = PingBatcher::start(store.clone(), config.clone())?;
/// let watcher = Watcher::start(store.clone(), scope.clone(), config.clone())?;
/// let key = Name::new("machine-0")?;
/// let _pinger = Pinger::start(store, batcher, scope, key.clone(), config).await?;
/// watcher.wait_alive(&key, Duration::from_secs(10)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: Arc<[u8]>,
    slot_lease_seconds: i64,
    request_timeout: Duration,
    shared: Arc<Shared>,
}

/// What every clone of one store shares.
struct Shared {
    writer: u64,
    requests: AtomicU64,
    /// The last counter value and its mod revision seen per scope, so that
    /// `begin` usually needs one transaction.
    counters: Mutex<HashMap<Name, (u64, i64)>>,
    /// This writer's slot records as last written, for the unions. Held
    /// across each `write_pings`, so that two writes never race to put
    /// unions of different ages.
    written: tokio::sync::Mutex<BTreeMap<Slot, SlotWrites>>,
    /// Per scope, the beings as of the last load (see `read_for_load`).
    beings: Mutex<HashMap<Name, Arc<tokio::sync::Mutex<KeptBeings>>>>,
}

#[derive(Default)]
struct SlotWrites {
    /// The lease the slot's records are put on; `None` until granted, or
    /// after a write failed (the lease may have ended).
    lease: Option<i64>,
    scopes: HashMap<Name, BTreeSet<Incarnation>>,
}

impl EtcdStore {
    /// A store on `client` under [`DEFAULT_PREFIX`], whose slot records
    /// live three of `config`'s slot lengths. Give every part the same
    /// config (or at least the same slot length).
    pub fn new(client: Client, config: &Config) -> EtcdStore {
        let slot_seconds = config.slot_length.as_secs_f64().ceil();
        // Safe as a cast: a validated slot length is between 1 s and a day
        // or so; anything larger saturates, which is the intent.
        let slot_lease_seconds = (3.0 * slot_seconds).min(i64::MAX as f64) as i64;
        EtcdStore {
            client,
            prefix: Arc::from(DEFAULT_PREFIX.as_bytes()),
            slot_lease_seconds: slot_lease_seconds.max(3),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            shared: Arc::new(Shared {
                writer: fastrand::u64(..),
                requests: AtomicU64::new(0),
                counters: Mutex::new(HashMap::new()),
                written: tokio::sync::Mutex::new(BTreeMap::new()),
                beings: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A store under `prefix` on the etcd cluster `options` name (TLS, a
    /// client certificate, a user and password, as the cluster needs),
    /// after checking that etcd lets this client read and write the keys
    /// under `prefix`. Otherwise as [`new`](Self::new) and
    /// [`with_prefix`](Self::with_prefix).
    ///
    /// # Errors
    ///
    /// [`EtcdConnectError`] when connecting fails (no member answers, TLS
    /// fails, the user is refused) or the user may not use the prefix.
    pub async fn connect(
        options: &EtcdOptions,
        config: &Config,
        prefix: impl Into<Vec<u8>>,
    ) -> Result<EtcdStore, EtcdConnectError> {
        let prefix = prefix.into();
        let client = options.connect(&prefix, Access::ReadWrite).await?;
        Ok(EtcdStore::new(client, config).with_prefix(prefix))
    }

    /// The same store with its keys under `prefix` (add a trailing `/` to
    /// keep them apart from keys that merely begin the same way).
    pub fn with_prefix(mut self, prefix: impl Into<Vec<u8>>) -> EtcdStore {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The same store with each request bounded by `timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> EtcdStore {
        self.request_timeout = timeout;
        self
    }

    /// The prefix the keys live under.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// How many requests this store and its clones have sent to etcd: for
    /// status pages, and to measure what presence costs a cluster.
    pub fn requests_sent(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Sends one request, made by `request` from a client, bounded by the
    /// request timeout. A member that cannot be connected to (killed, or
    /// restarting) is tried again a few times, so that the client's
    /// balancer moves on to a live member: every request presence sends is
    /// safe to repeat (unions, compare-and-swap, reads, deletes).
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        mut request: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = retry_connect_failures(|| {
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
            request(self.client.clone())
        });
        match tokio::time::timeout(self.request_timeout, attempts).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(StoreError::unavailable(operation, error)),
            Err(_elapsed) => Err(StoreError::unavailable(
                operation,
                RequestTimedOut(self.request_timeout),
            )),
        }
    }

    async fn txn(&self, operation: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.call(operation, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    fn counter_key(&self, scope: &Name) -> Vec<u8> {
        self.key([b"#counter/", scope.as_str().as_bytes()])
    }

    fn counters_prefix(&self) -> Vec<u8> {
        self.key([b"#counter/".as_slice()])
    }

    /// The start of every record of `scope` but its counter.
    fn scope_prefix(&self, scope: &Name) -> Vec<u8> {
        self.key([scope.as_str().as_bytes(), b"/#"])
    }

    fn beings_prefix(&self, scope: &Name) -> Vec<u8> {
        self.key([scope.as_str().as_bytes(), b"/#being/"])
    }

    fn being_key(&self, scope: &Name, key: &Name, incarnation: Incarnation) -> Vec<u8> {
        let mut being = self.beings_prefix(scope);
        being.extend_from_slice(key.as_str().as_bytes());
        being.extend_from_slice(format!("#{:020}", incarnation.0).as_bytes());
        being
    }

    fn stopped_prefix(&self, scope: &Name) -> Vec<u8> {
        self.key([scope.as_str().as_bytes(), b"/#stopped/"])
    }

    fn stopped_key(&self, scope: &Name, incarnation: Incarnation) -> Vec<u8> {
        let mut stopped = self.stopped_prefix(scope);
        stopped.extend_from_slice(format!("{:020}", incarnation.0).as_bytes());
        stopped
    }

    fn slots_prefix(&self, scope: &Name) -> Vec<u8> {
        self.key([scope.as_str().as_bytes(), b"/#slot/"])
    }

    /// The first key of `slot`'s records: every record of an earlier slot
    /// sorts before it.
    fn slot_start(&self, scope: &Name, slot: Slot) -> Vec<u8> {
        let mut start = self.slots_prefix(scope);
        start.extend_from_slice(format!("{:020}/", slot.0).as_bytes());
        start
    }

    fn slot_key(&self, scope: &Name, slot: Slot) -> Vec<u8> {
        let mut key = self.slot_start(scope, slot);
        key.extend_from_slice(format!("{:016x}", self.shared.writer).as_bytes());
        key
    }

    fn key<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut key = self.prefix.to_vec();
        for part in parts {
            key.extend_from_slice(part);
        }
        key
    }

    /// Reads `ranges` at one revision (`at`, or the current one), in pages:
    /// the first page of each in one transaction, then the rest of each by
    /// itself.
    async fn read_ranges(
        &self,
        operation: &'static str,
        ranges: Vec<RangeRead>,
        at: Option<i64>,
    ) -> Result<RangesRead, StoreError> {
        let reads: Vec<TxnOp> = ranges
            .iter()
            .map(|range| TxnOp::get(range.start.clone(), Some(range.options(at))))
            .collect();
        let response = self.txn(operation, Txn::new().and_then(reads)).await?;
        let revision = response
            .header()
            .map(|header| header.revision())
            .filter(|revision| *revision > 0)
            .ok_or_else(|| StoreError::Corrupt {
                location: shown(&self.prefix),
                reason: "etcd answered a read without a revision".to_owned(),
            })?;
        let mut answers = Vec::with_capacity(ranges.len());
        for (range, page) in ranges.iter().zip(response.op_responses()) {
            let TxnOpResponse::Get(mut page) = page else {
                return Err(StoreError::Corrupt {
                    location: shown(&self.prefix),
                    reason: "etcd answered a range read with something else".to_owned(),
                });
            };
            let count = page.count();
            let mut kvs = page.take_kvs();
            let mut more = page.more();
            while more {
                let Some(last) = kvs.last() else { break };
                let mut after = last.key().to_vec();
                after.push(0);
                let options = range.options(Some(revision));
                let mut next: GetResponse = self
                    .call(operation, |mut client| {
                        let (after, options) = (after.clone(), options.clone());
                        async move { client.get(after, Some(options)).await }
                    })
                    .await?;
                more = next.more();
                kvs.extend(next.take_kvs());
            }
            answers.push(RangeAnswer { kvs, count });
        }
        if answers.len() != ranges.len() {
            return Err(StoreError::Corrupt {
                location: shown(&self.prefix),
                reason: "etcd answered fewer reads than were asked".to_owned(),
            });
        }
        Ok(RangesRead { revision, answers })
    }

    /// What `scope` holds: its beings, tombstones, and the incarnations in
    /// its slot records from `since` on, read at one revision.
    async fn read_scope(
        &self,
        operation: &'static str,
        scope: &Name,
        since: Slot,
    ) -> Result<ScopeView, StoreError> {
        let beings = self.beings_prefix(scope);
        let stopped = self.stopped_prefix(scope);
        let slots = self.slots_prefix(scope);
        let ranges = vec![
            RangeRead::all(&beings),
            RangeRead::all(&stopped),
            RangeRead::from(self.slot_start(scope, since), &slots),
        ];
        let read = self.read_ranges(operation, ranges, None).await?;
        let [being_kvs, stopped_kvs, slot_kvs] = read.kvs::<3>(&self.prefix)?;
        let mut view = ScopeView::default();
        for kv in &being_kvs {
            let (key, incarnation, born) = parse_being(kv.key(), kv.value(), beings.len())?;
            view.beings
                .entry(key)
                .or_default()
                .push((incarnation, born));
        }
        view.tombstones = parse_tombstones(&stopped_kvs, stopped.len())?;
        view.last_pinged = parse_slot_records(&slot_kvs, slots.len())?;
        Ok(view)
    }

    /// The beings kept between loads of `scope`.
    fn kept_beings(&self, scope: &Name) -> Arc<tokio::sync::Mutex<KeptBeings>> {
        self.shared
            .beings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(scope.clone())
            .or_default()
            .clone()
    }

    /// Brings `kept` to the beings of `scope` at the revision of this read,
    /// and reads the tombstones and the slot records from `since` on at
    /// that revision. Only the beings written since `kept` was read are
    /// sent, with a count of them all; a count that does not match what
    /// `kept` then holds (a prune or a removal deleted some, or one was
    /// changed by hand) reads them all again at the same revision.
    async fn read_for_load(
        &self,
        kept: &mut KeptBeings,
        scope: &Name,
        since: Slot,
    ) -> Result<(HashSet<Incarnation>, HashMap<Incarnation, Slot>), StoreError> {
        let beings = self.beings_prefix(scope);
        let stopped = self.stopped_prefix(scope);
        let slots = self.slots_prefix(scope);
        let ranges = vec![
            RangeRead::all(&beings).modified_after(kept.revision),
            RangeRead::all(&beings).count_only(),
            RangeRead::all(&stopped),
            RangeRead::from(self.slot_start(scope, since), &slots),
        ];
        let read = self.read_ranges("load", ranges, None).await?;
        let count = read.answers.get(1).map_or(0, |answer| answer.count);
        let revision = read.revision;
        let [written, _counted, stopped_kvs, slot_kvs] = read.kvs::<4>(&self.prefix)?;
        for kv in &written {
            let (key, incarnation, born) = parse_being(kv.key(), kv.value(), beings.len())?;
            kept.add(key, incarnation, born);
        }
        // A revision behind the kept one: etcd was restored from a backup,
        // and what was kept may be newer than what it holds.
        if kept.records != count || revision < kept.revision {
            tracing::debug!(%scope, kept = kept.records, count, "beings deleted or changed since the last load; reading them all");
            let all = self
                .read_ranges("load", vec![RangeRead::all(&beings)], Some(revision))
                .await?;
            let [all] = all.kvs::<1>(&self.prefix)?;
            *kept = KeptBeings::default();
            for kv in &all {
                let (key, incarnation, born) = parse_being(kv.key(), kv.value(), beings.len())?;
                kept.add(key, incarnation, born);
            }
        }
        kept.revision = revision;
        Ok((
            parse_tombstones(&stopped_kvs, stopped.len())?,
            parse_slot_records(&slot_kvs, slots.len())?,
        ))
    }

    /// Deletes `keys`, a transaction per [`OPS_PER_TXN`].
    async fn delete_keys(&self, keys: Vec<Vec<u8>>) -> Result<(), StoreError> {
        for chunk in keys.chunks(OPS_PER_TXN) {
            let deletes: Vec<TxnOp> = chunk
                .iter()
                .map(|key| TxnOp::delete(key.clone(), None))
                .collect();
            self.txn("prune", Txn::new().and_then(deletes)).await?;
        }
        Ok(())
    }

    async fn prune_scope(&self, scope: &Name, rule: PruneRule) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport::default();
        let view = self
            .read_scope("prune", scope, rule.forget_dead_before)
            .await?;

        let mut doomed = Vec::new();
        let mut kept = HashSet::new();
        for (key, mut incarnations) in view.beings {
            incarnations.sort_unstable();
            let Some(&(latest, born)) = incarnations.last() else {
                continue;
            };
            let superseded = &incarnations[..incarnations.len() - 1];
            doomed.extend(
                superseded
                    .iter()
                    .map(|(incarnation, _)| (key.clone(), *incarnation)),
            );
            let last_seen = view
                .last_pinged
                .get(&latest)
                .map_or(born, |pinged| (*pinged).max(born));
            if last_seen < rule.forget_dead_before {
                doomed.push((key, latest));
            } else {
                kept.insert(latest);
            }
        }
        let mut deletes = Vec::with_capacity(doomed.len());
        for (key, incarnation) in &doomed {
            deletes.push(self.being_key(scope, key, *incarnation));
            report.incarnations += 1;
        }
        for tombstone in view.tombstones {
            if !kept.contains(&tombstone) {
                deletes.push(self.stopped_key(scope, tombstone));
                report.tombstones += 1;
            }
        }
        self.delete_keys(deletes).await?;

        let options = DeleteOptions::new().with_range(self.slot_start(scope, rule.keep_slots_from));
        let slots = self.slots_prefix(scope);
        let deleted = self
            .call("prune", |mut client| {
                let (slots, options) = (slots.clone(), options.clone());
                async move { client.delete(slots, Some(options)).await }
            })
            .await?;
        report.slots = usize::try_from(deleted.deleted()).unwrap_or(usize::MAX);
        Ok(report)
    }

    /// Every scope with a counter.
    async fn scopes(&self) -> Result<Vec<Name>, StoreError> {
        let counters = self.counters_prefix();
        let read = self
            .read_ranges("prune", vec![RangeRead::all(&counters)], None)
            .await?;
        let [kvs] = read.kvs::<1>(&self.prefix)?;
        kvs.iter()
            .map(|kv| {
                let name = kv.key().get(counters.len()..).unwrap_or_default();
                std::str::from_utf8(name)
                    .ok()
                    .and_then(|name| Name::new(name).ok())
                    .ok_or_else(|| corrupt(kv.key(), "not a scope name".to_owned()))
            })
            .collect()
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &shown(&self.prefix))
            .field("writer", &format_args!("{:016x}", self.shared.writer))
            .field("slot_lease_seconds", &self.slot_lease_seconds)
            .field("request_timeout", &self.request_timeout)
            .field("requests_sent", &self.requests_sent())
            .finish()
    }
}

/// A scope's records as one read saw them.
#[derive(Default)]
struct ScopeView {
    /// Each key's incarnations with their birth slots, in no order.
    beings: HashMap<Name, Vec<(Incarnation, Slot)>>,
    tombstones: HashSet<Incarnation>,
    /// The latest slot read that each incarnation pinged in.
    last_pinged: HashMap<Incarnation, Slot>,
}

/// The beings of a scope as of a revision, kept between loads: the latest
/// incarnation of each key with its birth slot, and how many being records
/// there were.
#[derive(Debug, Default)]
struct KeptBeings {
    /// The revision they were read at; 0 before the first read.
    revision: i64,
    records: i64,
    latest: HashMap<Name, (Incarnation, Slot)>,
}

impl KeptBeings {
    fn add(&mut self, key: Name, incarnation: Incarnation, born: Slot) {
        self.records += 1;
        let latest = self.latest.entry(key).or_insert((incarnation, born));
        if incarnation > latest.0 {
            *latest = (incarnation, born);
        }
    }
}

/// One range of a read.
struct RangeRead {
    start: Vec<u8>,
    end: Vec<u8>,
    /// Only keys modified after this revision; 0 for all.
    modified_after: i64,
    count_only: bool,
}

impl RangeRead {
    /// Every key beginning with `prefix`.
    fn all(prefix: &[u8]) -> RangeRead {
        RangeRead::from(prefix.to_vec(), prefix)
    }

    /// The keys beginning with `prefix` from `start` on.
    fn from(start: Vec<u8>, prefix: &[u8]) -> RangeRead {
        RangeRead {
            start,
            end: prefix_end(prefix),
            modified_after: 0,
            count_only: false,
        }
    }

    fn modified_after(mut self, revision: i64) -> RangeRead {
        self.modified_after = revision;
        self
    }

    fn count_only(mut self) -> RangeRead {
        self.count_only = true;
        self
    }

    fn options(&self, at: Option<i64>) -> GetOptions {
        let mut options = GetOptions::new().with_range(self.end.clone());
        if self.count_only {
            options = options.with_count_only();
        } else {
            options = options.with_limit(PAGE_SIZE);
        }
        if self.modified_after > 0 {
            options = options.with_min_mod_revision(self.modified_after + 1);
        }
        if let Some(revision) = at {
            options = options.with_revision(revision);
        }
        options
    }
}

/// The answers of [`EtcdStore::read_ranges`], in the order asked.
struct RangesRead {
    revision: i64,
    answers: Vec<RangeAnswer>,
}

struct RangeAnswer {
    kvs: Vec<KeyValue>,
    /// How many keys the range holds (all of them, whatever the filters).
    count: i64,
}

impl RangesRead {
    /// The keys of each of `N` ranges.
    fn kvs<const N: usize>(self, prefix: &[u8]) -> Result<[Vec<KeyValue>; N], StoreError> {
        let kvs: Vec<Vec<KeyValue>> = self.answers.into_iter().map(|answer| answer.kvs).collect();
        kvs.try_into().map_err(|_| StoreError::Corrupt {
            location: shown(prefix),
            reason: "etcd answered another number of reads than were asked".to_owned(),
        })
    }
}

/// The tombstones among `kvs`, keys of 20-digit incarnations after
/// `prefix_len` bytes.
fn parse_tombstones(
    kvs: &[KeyValue],
    prefix_len: usize,
) -> Result<HashSet<Incarnation>, StoreError> {
    kvs.iter()
        .map(|kv| parse_number_key(kv.key(), prefix_len))
        .collect()
}

/// The latest slot each incarnation pinged in, from slot records `kvs`.
fn parse_slot_records(
    kvs: &[KeyValue],
    prefix_len: usize,
) -> Result<HashMap<Incarnation, Slot>, StoreError> {
    let mut last_pinged = HashMap::new();
    for kv in kvs {
        let slot = parse_slot_key(kv.key(), prefix_len)?;
        for incarnation in
            decode_incarnations(kv.value()).map_err(|reason| corrupt(kv.key(), reason))?
        {
            let last = last_pinged.entry(incarnation).or_insert(slot);
            *last = (*last).max(slot);
        }
    }
    Ok(last_pinged)
}

impl PresenceStore for EtcdStore {
    async fn begin(&self, scope: &Name, key: &Name, slot: Slot) -> Result<Incarnation, StoreError> {
        let counter = self.counter_key(scope);
        let mut seen = self
            .shared
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope)
            .copied();
        for _ in 0..BEGIN_ATTEMPTS {
            let (current, unchanged) = match seen {
                Some((number, revision)) => (
                    number,
                    Compare::mod_revision(counter.clone(), CompareOp::Equal, revision),
                ),
                None => (0, Compare::version(counter.clone(), CompareOp::Equal, 0)),
            };
            let number =
                current
                    .checked_add(1)
                    .ok_or_else(|| StoreError::IncarnationsExhausted {
                        scope: scope.clone(),
                    })?;
            let incarnation = Incarnation(number);
            let txn = Txn::new()
                .when([unchanged])
                .and_then([
                    TxnOp::put(counter.clone(), number.to_string(), None),
                    TxnOp::put(
                        self.being_key(scope, key, incarnation),
                        slot.0.to_string(),
                        None,
                    ),
                ])
                .or_else([TxnOp::get(counter.clone(), None)]);
            let response = self.txn("begin", txn).await?;
            if response.succeeded() {
                if let Some(header) = response.header() {
                    self.shared
                        .counters
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(scope.clone(), (number, header.revision()));
                }
                return Ok(incarnation);
            }
            seen = match response.op_responses().first() {
                Some(TxnOpResponse::Get(read)) => match read.kvs().first() {
                    Some(kv) => Some((parse_counter(kv.key(), kv.value())?, kv.mod_revision())),
                    None => None,
                },
                _ => {
                    return Err(corrupt(
                        &counter,
                        "etcd did not answer the counter's read".to_owned(),
                    ));
                }
            };
        }
        Err(StoreError::unavailable(
            "begin",
            Contended {
                attempts: BEGIN_ATTEMPTS,
            },
        ))
    }

    async fn write_pings(&self, batch: &PingBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut written = self.shared.written.lock().await;
        let slots: BTreeSet<Slot> = batch.records().map(|(_, slot, _)| slot).collect();
        for slot in slots {
            let writes = written.entry(slot).or_default();
            if writes.lease.is_none() {
                let ttl = self.slot_lease_seconds;
                let granted = self
                    .call("write_pings", |mut client| async move {
                        client.lease_grant(ttl, None).await
                    })
                    .await?;
                writes.lease = Some(granted.id());
            }
        }

        let mut merged = Vec::with_capacity(batch.record_count());
        let mut puts = Vec::with_capacity(batch.record_count());
        for (scope, slot, incarnations) in batch.records() {
            let writes = written.entry(slot).or_default();
            let mut all = writes.scopes.get(scope).cloned().unwrap_or_default();
            all.extend(incarnations.iter().copied());
            let key = self.slot_key(scope, slot);
            let value = encode_incarnations(&all);
            if value.len() > MAX_RECORD_BYTES {
                return Err(StoreError::RecordTooLarge {
                    location: shown(&key),
                    bytes: value.len(),
                    limit: MAX_RECORD_BYTES,
                });
            }
            let options = writes
                .lease
                .map(|lease| PutOptions::new().with_lease(lease));
            puts.push(TxnOp::put(key, value, options));
            merged.push((scope.clone(), slot, all));
        }

        for (chunk, records) in puts.chunks(OPS_PER_TXN).zip(merged.chunks(OPS_PER_TXN)) {
            if let Err(error) = self
                .txn("write_pings", Txn::new().and_then(chunk.to_vec()))
                .await
            {
                // The lease may have ended (a long outage); grant anew on
                // the retry. The unions stay: this writer's pings are real.
                for (_, slot, _) in records {
                    if let Some(writes) = written.get_mut(slot) {
                        writes.lease = None;
                    }
                }
                return Err(error);
            }
            for (scope, slot, all) in records {
                written
                    .entry(*slot)
                    .or_default()
                    .scopes
                    .insert(scope.clone(), all.clone());
            }
        }

        // Readers consult the current and the previous slot only; a later
        // write to an older slot starts its record afresh, which no reader
        // can tell.
        if let Some(newest) = written.keys().next_back().copied() {
            written.retain(|slot, _| *slot >= newest.previous());
        }
        Ok(())
    }

    async fn mark_stopped(&self, scope: &Name, incarnation: Incarnation) -> Result<(), StoreError> {
        let key = self.stopped_key(scope, incarnation);
        self.call("mark_stopped", |mut client| {
            let key = key.clone();
            async move { client.put(key, "", None).await }
        })
        .await?;
        Ok(())
    }

    async fn load(
        &self,
        scope: &Name,
        keys: &[Name],
        since: Slot,
    ) -> Result<HashMap<Name, KeyRecord>, StoreError> {
        let kept = self.kept_beings(scope);
        let mut kept = kept.lock().await;
        // Worked on apart, so that a failed read leaves nothing half
        // updated: the next load then reads every being.
        let mut next = std::mem::take(&mut *kept);
        let (tombstones, last_pinged) = self.read_for_load(&mut next, scope, since).await?;
        *kept = next;
        let mut answer = HashMap::with_capacity(keys.len());
        for key in keys {
            let Some(&(incarnation, born)) = kept.latest.get(key) else {
                continue;
            };
            answer.insert(
                key.clone(),
                KeyRecord {
                    incarnation,
                    stopped: tombstones.contains(&incarnation),
                    seen_since: born >= since || last_pinged.contains_key(&incarnation),
                },
            );
        }
        Ok(answer)
    }

    async fn prune(&self, rule: PruneRule) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport::default();
        for scope in self.scopes().await? {
            let pruned = self.prune_scope(&scope, rule).await?;
            report.slots += pruned.slots;
            report.incarnations += pruned.incarnations;
            report.tombstones += pruned.tombstones;
        }
        Ok(report)
    }

    async fn remove_scope(&self, scope: &Name) -> Result<(), StoreError> {
        let records = self.scope_prefix(scope);
        self.call("remove_scope", |mut client| {
            let records = records.clone();
            async move {
                client
                    .delete(records, Some(DeleteOptions::new().with_prefix()))
                    .await
            }
        })
        .await?;
        let mut written = self.shared.written.lock().await;
        for writes in written.values_mut() {
            writes.scopes.remove(scope);
        }
        drop(written);
        // What a load kept of the scope goes too (the next load would read
        // it all again anyway; a removed scope should hold no memory).
        self.shared
            .beings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope);
        Ok(())
    }
}

/// A request that took longer than the store's request timeout.
#[derive(Debug, thiserror::Error)]
#[error("etcd did not answer within {0:?}")]
struct RequestTimedOut(Duration);

/// `begin` lost the race for the counter every time it tried.
#[derive(Debug, thiserror::Error)]
#[error("the incarnation counter moved on each of {attempts} attempts")]
struct Contended {
    attempts: u32,
}

/// A slot record's value: the smallest incarnation, then the gap to each
/// next one, as a JSON array (small numbers, so a few bytes per ping).
pub(crate) fn encode_incarnations(incarnations: &BTreeSet<Incarnation>) -> Vec<u8> {
    let mut previous = 0;
    let gaps: Vec<u64> = incarnations
        .iter()
        .map(|incarnation| {
            let gap = incarnation.0 - previous;
            previous = incarnation.0;
            gap
        })
        .collect();
    // Serialising a Vec<u64> cannot fail.
    serde_json::to_vec(&gaps).unwrap_or_default()
}

/// Reads a slot record's value; any bytes give the incarnations or a
/// reason they are not a record.
pub(crate) fn decode_incarnations(value: &[u8]) -> Result<Vec<Incarnation>, String> {
    let gaps: Vec<u64> =
        serde_json::from_slice(value).map_err(|error| format!("not a slot record: {error}"))?;
    let mut incarnations = Vec::with_capacity(gaps.len());
    let mut current: u64 = 0;
    for (index, gap) in gaps.into_iter().enumerate() {
        if gap == 0 {
            return Err(format!("gap {index} is zero: incarnations must increase"));
        }
        current = current
            .checked_add(gap)
            .ok_or_else(|| format!("gap {index} runs past the largest incarnation"))?;
        incarnations.push(Incarnation(current));
    }
    Ok(incarnations)
}

fn parse_counter(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| corrupt(key, "the counter is not a decimal number".to_owned()))
}

/// A being's key `…#being/<key>#<incarnation>` and value `<born slot>`.
fn parse_being(
    key: &[u8],
    value: &[u8],
    prefix_len: usize,
) -> Result<(Name, Incarnation, Slot), StoreError> {
    let bad = |reason: &str| corrupt(key, reason.to_owned());
    let rest = key
        .get(prefix_len..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .ok_or_else(|| bad("not text"))?;
    let (name, number) = rest.rsplit_once('#').ok_or_else(|| bad("no incarnation"))?;
    let name = Name::new(name).map_err(|error| bad(&error.to_string()))?;
    let incarnation =
        parse_padded(number).ok_or_else(|| bad("the incarnation is not 20 digits"))?;
    let born = std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| bad("the birth slot is not a decimal number"))?;
    Ok((name, Incarnation(incarnation), Slot(born)))
}

/// A key ending in a 20-digit incarnation after `prefix_len` bytes.
fn parse_number_key(key: &[u8], prefix_len: usize) -> Result<Incarnation, StoreError> {
    key.get(prefix_len..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(parse_padded)
        .map(Incarnation)
        .ok_or_else(|| corrupt(key, "not a 20-digit incarnation".to_owned()))
}

/// A slot record's key `…#slot/<slot>/<writer>`.
fn parse_slot_key(key: &[u8], prefix_len: usize) -> Result<Slot, StoreError> {
    key.get(prefix_len..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(slot, _writer)| parse_padded(slot))
        .map(Slot)
        .ok_or_else(|| corrupt(key, "not a slot record's key".to_owned()))
}

/// Runs every decoder of what etcd holds on `key` and `value` (any bytes),
/// as each kind of record, and checks that a slot record that decodes
/// encodes back to an equal one. For the fuzz target in `fuzz/`; not an
/// API.
///
/// # Panics
///
/// If a decoded slot record does not round-trip: the defect the fuzz
/// target looks for.
#[doc(hidden)]
pub fn decode_any_record(key: &[u8], value: &[u8]) {
    let prefix_len = key
        .first()
        .map_or(0, |first| usize::from(*first) % (key.len() + 1));
    let _ = parse_counter(key, value);
    let _ = parse_being(key, value, prefix_len);
    let _ = parse_number_key(key, prefix_len);
    let _ = parse_slot_key(key, prefix_len);
    if let Ok(incarnations) = decode_incarnations(value) {
        let set: BTreeSet<Incarnation> = incarnations.iter().copied().collect();
        let again = decode_incarnations(&encode_incarnations(&set));
        assert_eq!(again, Ok(incarnations), "a slot record round-trips");
    }
}

fn parse_padded(digits: &str) -> Option<u64> {
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

fn corrupt(key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        location: shown(key),
        reason,
    }
}

fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_records_round_trip_in_a_few_bytes_per_ping() {
        let incarnations: BTreeSet<Incarnation> = (1_000_000..1_010_000).map(Incarnation).collect();
        let value = encode_incarnations(&incarnations);
        assert!(
            value.len() < 3 * incarnations.len(),
            "{} bytes",
            value.len()
        );
        let decoded = decode_incarnations(&value).expect("a record it wrote");
        assert_eq!(decoded, incarnations.into_iter().collect::<Vec<_>>());
        assert_eq!(decode_incarnations(b"[]"), Ok(Vec::new()));
    }

    #[test]
    fn bad_slot_records_are_refused_with_a_reason() {
        for (value, reason) in [
            (&b"nonsense"[..], "not a slot record"),
            (b"[1, 0]", "gap 1 is zero"),
            (b"[18446744073709551615, 1]", "gap 1 runs past"),
            (b"[-1]", "not a slot record"),
            (b"{\"a\": 1}", "not a slot record"),
        ] {
            let error = decode_incarnations(value).expect_err("a bad record");
            assert!(error.contains(reason), "{error}");
        }
    }

    #[test]
    fn padded_numbers_are_exactly_twenty_digits() {
        assert_eq!(parse_padded("00000000000000000042"), Some(42));
        assert_eq!(parse_padded("42"), None);
        assert_eq!(parse_padded("0000000000000000004x"), None);
        assert_eq!(parse_padded("99999999999999999999"), None);
    }
}
