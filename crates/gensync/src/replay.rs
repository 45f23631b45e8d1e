//! Applying one sync round: the records a peer sent, in chunks of pending
//! records, through the version DAG.
//!
//! For each record not already covered by our vector: it must fit the
//! local key and value limits, its parents must be known (or arrive earlier
//! in the round), and it joins the log and the DAG. Per key, the round
//! keeps the *frontier*: the versions that nothing else known descends
//! from, starting from the key's head. A version that descends from the
//! head replaces it (a fast-forward); two or more versions left at the end
//! are a conflict. It is settled once per key per round: the resolver folds
//! the frontier (in version id order) into one value, each step given the
//! newest common ancestor as its base (several are merged into a virtual
//! one, within a budget of resolver calls and walked versions per key, so
//! that a crafted history cannot keep the round's last transaction open
//! for ever), and that becomes a merge version
//! whose parents are the whole frontier and whose id is derived from them
//! and its content. Every replica that knows the same versions has the same
//! frontier and makes the same merge, so merges do not pile up on each
//! other. The merge is a record of our own log and travels like any other
//! write.
//!
//! The records are written as they come, a chunk per transaction, each
//! record marked pending, so that a round of any size needs only a chunk's
//! memory. A chunk is gathered from the network first and written after,
//! so a write transaction (redb has one at a time) is never held while the
//! peer is waited for: a slow or stalling peer cannot hold up local writes
//! for longer than one chunk's commit. Nothing a reader sees changes until
//! the end: the heads and the vector move, and the pending marks go, in one
//! last, durable transaction, after the peer's vector has been checked
//! against what it sent. If the round fails before that (or the process
//! dies), its pending records are removed and the store is as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use flotilla_core_types::DeviceId;
use tokio::sync::OwnedSemaphorePermit;

use crate::replica::{Shared, check_limits};
use crate::resolver::{Conflict, Resolution, Side};
use crate::storage::{Head, Writer};
use crate::wire::KnownPeer;
use crate::{Error, GenVector, LogRecord, VersionId};

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundStats {
    /// Records received and new to this replica.
    pub applied: u64,
    /// Records received that this replica already had.
    pub duplicates: u64,
    /// Conflicts settled (each wrote a merge version).
    pub conflicts: u64,
}

/// The most bytes of [`KnownPeer`]s (as [`known_held_len`] counts them) a
/// round keeps.
const MAX_KNOWN_BYTES: usize = 4 * 1024 * 1024;

/// How many items (records, and the one `Collected`) a round writes per
/// transaction: enough to make commits rare, few enough that a
/// transaction's dirty pages stay small.
const CHUNK_RECORDS: usize = 1024;

/// How deep [`Round::virtual_base`] recurses into criss-cross merges: far
/// beyond any real history, and a bound on the stack a crafted DAG can
/// take. (Depth alone does not bound the cost: each level may fan out.)
const MAX_MERGE_BASE_DEPTH: usize = 32;

/// How many times settling one key may call the resolver to make virtual
/// ancestors (merges of several newest common ancestors): criss-cross
/// merges in real histories need a handful; a crafted lattice would need
/// more than could ever finish.
const MAX_BASE_RESOLUTIONS: usize = 64;

/// How many DAG nodes settling one key may visit walking ancestries before
/// it stops making virtual ancestors: a few walks of a long history.
const MAX_BASE_VISITS: usize = 1 << 20;

/// How many bytes of items a round holds in memory before it writes them,
/// whatever the count, as [`held_len`] measures them: keys, values, parent
/// ids and device ids, not the payload alone (a record of a few bytes may
/// carry two mebibytes of parents). A chunk of large records is written
/// sooner, so a round's memory stays near this (plus the channel's).
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// A key whose head a round moved.
pub(crate) struct Moved {
    pub(crate) key: Vec<u8>,
    pub(crate) head: Head,
}

/// What the network side of a round hands the applier.
pub(crate) enum Item {
    /// The peer has collected these generations (sent before its records).
    Collected(GenVector),
    /// A record, and its encoding as it came (the store's), when known.
    Record(LogRecord, Option<Bytes>),
    /// What the peer knows of other devices (sent after its records).
    Known(Vec<KnownPeer>),
    /// The round is complete: the peer's vector.
    Done(GenVector),
}

/// How many bytes of items may wait between the network and the applier:
/// with the chunk being gathered, a round holds at most about twice
/// [`CHUNK_BYTES`] of the peer's data, however large its frames.
pub(crate) const QUEUE_BYTES: usize = CHUNK_BYTES;

/// An item on its way to the applier, holding its share of
/// [`QUEUE_BYTES`] until the applier takes it.
pub(crate) type Queued = (Item, OwnedSemaphorePermit);

/// The share of [`QUEUE_BYTES`] that `item` holds while queued: its
/// [`held_len`], capped so that one item larger than the whole budget
/// still passes (alone).
pub(crate) fn queue_share(item: &Item) -> u32 {
    let held = match item {
        Item::Collected(vector) => vector_held_len(vector),
        Item::Record(record, encoded) => record_held_len(record, encoded.as_ref()),
        Item::Known(peers) => known_held_len(peers),
        Item::Done(_) => 0,
    };
    u32::try_from(held.min(QUEUE_BYTES)).unwrap_or(u32::MAX)
}

/// Applies a round's items as they arrive on `queue`, in chunks of up to
/// [`CHUNK_RECORDS`] pending records, then finishes it in one durable
/// transaction. A chunk is gathered before its transaction opens, so no
/// write transaction is held while the peer is waited for. If anything fails (or the queue closes before `Done`), the
/// pending records are removed again and the store is as it was.
pub(crate) fn apply_round(
    shared: &Shared,
    peer: DeviceId,
    queue: &mut tokio::sync::mpsc::Receiver<Queued>,
) -> Result<(RoundStats, Vec<Moved>), Error> {
    let result = run_round(shared, peer, queue);
    if result.is_err() {
        shared.storage.discard_pending()?;
    }
    result
}

fn run_round(
    shared: &Shared,
    peer: DeviceId,
    queue: &mut tokio::sync::mpsc::Receiver<Queued>,
) -> Result<(RoundStats, Vec<Moved>), Error> {
    let mut round = Round::begin(shared, peer)?;
    let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
    loop {
        // No transaction is open while the peer is waited for: a local
        // write waits at most for one chunk's commit, whatever the peer does.
        let done = gather(queue, &mut chunk)?;
        let mut txn = shared.storage.write()?;
        txn.not_durable();
        let mut writer = txn.tables()?;
        for item in chunk.drain(..) {
            match item {
                Gathered::Collected(vector) => round.accept_collected(vector),
                Gathered::Record(record, encoded) => {
                    round.apply(&mut writer, record, encoded.as_deref())?;
                }
                Gathered::Known(peers) => round.accept_known(peers),
            }
        }
        let Some(theirs) = done else {
            let finished = writer.finish()?;
            txn.commit(finished)?;
            continue;
        };
        // The last transaction is durable, and makes the earlier ones so.
        let outcome = round.finish(&mut writer, &theirs)?;
        let finished = writer.finish()?;
        txn.durable();
        txn.commit(finished)?;
        return Ok(outcome);
    }
}

/// An item of a chunk, in the order it came.
enum Gathered {
    Collected(GenVector),
    Record(LogRecord, Option<Bytes>),
    Known(Vec<KnownPeer>),
}

/// Takes items off `queue` into `chunk` until it holds [`CHUNK_RECORDS`]
/// items or [`CHUNK_BYTES`] of them (every item counts, each by
/// [`held_len`]), or `Done` comes (returned). Called with no transaction
/// open: this is where the round waits for the peer.
fn gather(
    queue: &mut tokio::sync::mpsc::Receiver<Queued>,
    chunk: &mut Vec<Gathered>,
) -> Result<Option<GenVector>, Error> {
    let mut bytes = 0;
    while chunk.len() < CHUNK_RECORDS && bytes < CHUNK_BYTES {
        // The item's share of the queue's budget is released as it moves
        // into the chunk, which counts it from here.
        let gathered = match queue.blocking_recv().map(|(item, _share)| item) {
            Some(Item::Collected(vector)) => Gathered::Collected(vector),
            Some(Item::Record(record, encoded)) => Gathered::Record(record, encoded),
            Some(Item::Known(peers)) => Gathered::Known(peers),
            Some(Item::Done(vector)) => return Ok(Some(vector)),
            None => return Err(Error::Disconnected),
        };
        bytes += held_len(&gathered);
        chunk.push(gathered);
    }
    Ok(None)
}

/// About how many bytes of memory `item` holds: its variable parts, whose
/// sum the peer controls, and its fixed size.
fn held_len(item: &Gathered) -> usize {
    match item {
        Gathered::Collected(vector) => vector_held_len(vector),
        Gathered::Record(record, encoded) => record_held_len(record, encoded.as_ref()),
        Gathered::Known(peers) => known_held_len(peers),
    }
}

fn known_held_len(peers: &[KnownPeer]) -> usize {
    peers
        .iter()
        .map(|peer| {
            size_of::<KnownPeer>() + peer.device.as_str().len() + vector_held_len(&peer.vector)
        })
        .sum()
}

fn vector_held_len(vector: &GenVector) -> usize {
    vector
        .iter()
        .map(|(device, _)| device.as_str().len() + size_of::<(DeviceId, u64)>())
        .sum()
}

fn record_held_len(record: &LogRecord, encoded: Option<&Bytes>) -> usize {
    encoded.map_or(0, Bytes::len)
        + size_of::<LogRecord>()
        + record.payload_len()
        + record.parents.len() * size_of::<VersionId>()
        + record.device.as_str().len()
        + record.writer.as_str().len()
}

pub(crate) struct Round<'a> {
    shared: &'a Shared,
    ours: GenVector,
    /// The peer, whose vector this round teaches us.
    peer: DeviceId,
    /// What the peer has collected, when it says it sends a collected log
    /// (its records of those generations may be missing, and so may
    /// parents).
    collected: Option<GenVector>,
    /// Whether this replica's own history has gaps: it collected garbage,
    /// or took a peer's collected log. A parent it does not know may then
    /// be one collected before it ever saw it (a full-state round brings
    /// the current values, not the ids of every version collected before
    /// them), so an unknown parent is taken as collected, not refused.
    history_cut: bool,
    received: BTreeMap<DeviceId, BTreeSet<u64>>,
    /// What the peer told of other devices, noted when the round ends, and
    /// the bytes it holds (at most [`MAX_KNOWN_BYTES`]).
    known: Vec<KnownPeer>,
    known_bytes: usize,
    /// Per device, the (generation, sequence) of its newest record in this
    /// round so far.
    last_origin: HashMap<DeviceId, (u64, u64)>,
    /// Per key touched by the round, the versions nothing known descends
    /// from.
    frontiers: BTreeMap<Vec<u8>, Vec<VersionId>>,
    /// The heads the round moved, announced to watchers after the commit.
    /// Values are not kept here: a round may carry gigabytes of them.
    moved: Vec<Moved>,
    stats: RoundStats,
}

impl<'a> Round<'a> {
    /// A round with `peer`, against what the store holds now.
    pub(crate) fn begin(shared: &'a Shared, peer: DeviceId) -> Result<Round<'a>, Error> {
        let reader = shared.storage.read()?;
        let ours = reader.vector()?;
        let history_cut = reader.collected()? != GenVector::new();
        Ok(Round {
            shared,
            ours,
            peer,
            collected: None,
            history_cut,
            received: BTreeMap::new(),
            known: Vec::new(),
            known_bytes: 0,
            last_origin: HashMap::new(),
            frontiers: BTreeMap::new(),
            moved: Vec::new(),
            stats: RoundStats::default(),
        })
    }

    /// The peer has collected `vector`: accept its log as it is.
    pub(crate) fn accept_collected(&mut self, vector: GenVector) {
        self.collected = Some(vector);
    }

    /// The peer knows `peers`' vectors: noted when the round ends.
    /// The peer knows `peers`' vectors: noted when the round ends. Past
    /// [`MAX_KNOWN_BYTES`] in a round the rest is dropped: it only lets
    /// garbage collection count more devices, and a round must not hold
    /// unbounded memory for it.
    pub(crate) fn accept_known(&mut self, peers: Vec<KnownPeer>) {
        for peer in peers {
            let bytes = known_held_len(std::slice::from_ref(&peer));
            if self.known_bytes + bytes > MAX_KNOWN_BYTES {
                tracing::debug!(peer = %self.peer, "more known devices than a round keeps; the rest are dropped");
                return;
            }
            self.known_bytes += bytes;
            self.known.push(peer);
        }
    }

    /// Applies one record of the round; `encoded` is its encoding as it
    /// came, kept as it is in the log (it decoded to `record`).
    pub(crate) fn apply(
        &mut self,
        writer: &mut Writer<'_>,
        record: LogRecord,
        encoded: Option<&[u8]>,
    ) -> Result<(), Error> {
        // A record this replica could not have written locally could not be
        // overwritten or deleted here either: it is bad input.
        check_limits(&record.key, record.value.as_deref())?;
        if self.ours.covers(&record.device, record.generation) {
            self.stats.duplicates += 1;
            return Ok(());
        }
        if record.device == self.shared.device {
            return Err(Error::Protocol {
                expected: "records of other devices (ours are all covered by our vector)",
                got: format!("generation {} of this replica's own log", record.generation),
            });
        }
        // Sent twice in this round: the first stays. A responder sends each
        // device's records in the order of its log, so one after the last
        // seen of its device is new (records from before this round are
        // all covered by our vector); only one out of that order is looked
        // up.
        let origin = (record.generation, record.sequence);
        // (Looked up before it is inserted, so that the device's id is
        // copied once a round, not once a record.)
        let in_order = match self.last_origin.get_mut(&record.device) {
            Some(last) if origin > *last => {
                *last = origin;
                true
            }
            Some(_) => false,
            None => {
                self.last_origin.insert(record.device.clone(), origin);
                true
            }
        };
        if !in_order && writer.has_origin(&record)? {
            self.stats.duplicates += 1;
            return Ok(());
        }
        // Each parent once: a peer may repeat one id thousands of times.
        let mut checked = HashSet::with_capacity(record.parents.len().min(64));
        for parent in &record.parents {
            if !checked.insert(parent) || writer.knows(parent)? {
                continue;
            }
            // An honest peer sends parents before what descends from them,
            // unless they were collected (by it, or before this replica's
            // history was cut).
            if self.collected.is_none() && !self.history_cut {
                return Err(Error::MissingParent {
                    version: record.version,
                    parent: *parent,
                });
            }
            // Collected before we had it.
            writer.mark_collected(parent)?;
        }
        match self.received.get_mut(&record.device) {
            Some(generations) => {
                generations.insert(record.generation);
            }
            None => {
                self.received
                    .insert(record.device.clone(), BTreeSet::from([record.generation]));
            }
        }
        let (index, new) = writer.append_encoded(&record, encoded)?;
        writer.mark_pending(index);
        if !new {
            // A version we have already (the same merge, made here too).
            self.stats.duplicates += 1;
            return Ok(());
        }
        self.stats.applied += 1;
        self.advance_frontier(writer, record)
    }

    /// Checks the peer's claims, moves the heads and the vector, and keeps
    /// the round's records, all in `writer`'s transaction, the last of the
    /// round.
    pub(crate) fn finish(
        mut self,
        writer: &mut Writer<'_>,
        theirs: &GenVector,
    ) -> Result<(RoundStats, Vec<Moved>), Error> {
        for (device, generations) in &self.received {
            if let Some(&beyond) = generations.iter().find(|&&g| g > theirs.get(device)) {
                return Err(Error::UnclaimedRecord {
                    device: device.clone(),
                    generation: beyond,
                });
            }
        }
        let collected = self.collected.take().unwrap_or_default();
        for (device, claimed) in theirs.iter() {
            let empty = BTreeSet::new();
            let received = self.received.get(device).unwrap_or(&empty);
            let from = self.ours.get(device).max(collected.get(device)) + 1;
            let first_missing = (from..=claimed).find(|g| !received.contains(g));
            if let Some(generation) = first_missing {
                return Err(Error::UnbackedClaim {
                    device: device.clone(),
                    generation,
                });
            }
        }
        for (key, frontier) in std::mem::take(&mut self.frontiers) {
            self.settle(writer, key, frontier)?;
        }
        // Local writes during the round may have sealed generations of
        // ours: start from the vector as it is now.
        let mut vector = writer.vector()?;
        vector.merge(theirs);
        writer.set_vector(&vector)?;
        writer.raise_collected(&collected.meet(&vector))?;
        let now_ms = (self.shared.config.clock)();
        writer.heard_of(&self.peer, Some(theirs), now_ms)?;
        for (device, _) in theirs.iter() {
            if device != &self.shared.device {
                writer.heard_of(device, None, now_ms)?;
            }
        }
        // Second-hand: a vector only grows, so what the peer heard of a
        // device is a floor of what that device holds, however old. Only
        // devices whose records we hold count (garbage collection asks of
        // no other), and of each only what the peer itself holds: a peer
        // cannot vouch for more than it has, nor add devices to our table.
        // The peer says how long ago it heard of one, which our clock turns
        // into a time whatever the peer's clock says: a device that falls
        // silent ages alike everywhere, and is evicted in time.
        for known in std::mem::take(&mut self.known) {
            let relevant = known.device != self.shared.device
                && known.device != self.peer
                && vector.get(&known.device) > 0;
            if relevant {
                let vouched = known.vector.bounded_by(theirs).bounded_by(&vector);
                writer.heard_of(
                    &known.device,
                    Some(&vouched),
                    now_ms.saturating_sub(known.heard_ms_ago),
                )?;
            }
        }
        writer.clear_pending()?;
        Ok((self.stats, self.moved))
    }

    /// Adds `record`'s version to its key's frontier, dropping what it
    /// descends from. Records arrive parents first and are new to us, so
    /// nothing known descends from them.
    fn advance_frontier(&mut self, writer: &Writer<'_>, record: LogRecord) -> Result<(), Error> {
        let frontier = match self.frontiers.remove(&record.key) {
            Some(frontier) => frontier,
            None => writer
                .head(&record.key)?
                .map(|head| vec![head.version])
                .unwrap_or_default(),
        };
        let mut kept = Vec::with_capacity(frontier.len() + 1);
        for version in frontier {
            let replaced =
                record.parents.contains(&version) || descends(writer, record.version, version)?;
            if !replaced {
                kept.push(version);
            }
        }
        kept.push(record.version);
        self.frontiers.insert(record.key, kept);
        Ok(())
    }

    /// Makes the key's head the one version left on its frontier, or the
    /// merge of all of them. A local write made while the round ran joins
    /// the frontier, in place of what it replaced.
    fn settle(
        &mut self,
        writer: &mut Writer<'_>,
        key: Vec<u8>,
        mut frontier: Vec<VersionId>,
    ) -> Result<(), Error> {
        let current = writer.head(&key)?.map(|head| head.version);
        if let Some(current) = current
            && !frontier.contains(&current)
        {
            let mut covered = false;
            for &member in &frontier {
                covered |= descends(writer, member, current)?;
            }
            if !covered {
                let mut kept = Vec::with_capacity(frontier.len() + 1);
                for member in frontier {
                    if !descends(writer, current, member)? {
                        kept.push(member);
                    }
                }
                kept.push(current);
                frontier = kept;
            }
        }
        if let [only] = frontier.as_slice() {
            if current == Some(*only) {
                return Ok(());
            }
            return self.set_head(writer, key, *only);
        }
        self.stats.conflicts += 1;
        frontier.sort();
        let mut search = BaseSearch::new();
        let mut kept = side(writer, frontier[0])?;
        for (folded, &next) in frontier.iter().enumerate().skip(1) {
            let theirs = side(writer, next)?;
            // `kept` holds the members folded so far: its ancestors are
            // theirs, whatever version the fold left in it.
            let ancestor =
                self.merge_base(writer, &key, &frontier[..folded], next, 0, &mut search)?;
            kept = self.resolve(Conflict {
                key: key.clone(),
                ancestor,
                ours: kept,
                theirs,
            });
        }
        // A merge travels like a write: it must fit the same limits, or
        // every peer would refuse it.
        check_limits(&key, kept.value.as_deref())?;
        let version = VersionId::of_merge(
            &frontier,
            kept.value.as_deref(),
            &kept.writer,
            kept.timestamp_ms,
        );
        if writer.dag_node(&version)?.is_none() {
            let (generation, sequence) = writer.open_slot();
            let merge = LogRecord {
                device: self.shared.device.clone(),
                generation,
                sequence,
                key: key.clone(),
                version,
                parents: frontier,
                value: kept.value.clone(),
                writer: kept.writer,
                timestamp_ms: kept.timestamp_ms,
            };
            writer.append(&merge)?;
            writer.fill_slot(generation, sequence);
        }
        self.set_head(writer, key, version)
    }

    /// The resolver's answer to `conflict`, as a side.
    fn resolve(&self, conflict: Conflict) -> Side {
        match self.shared.config.resolver.resolve(&conflict) {
            Resolution::Ours => conflict.ours,
            Resolution::Theirs => conflict.theirs,
            Resolution::Merged(value) => Side {
                version: conflict.theirs.version,
                value,
                writer: conflict.ours.writer.max(conflict.theirs.writer),
                timestamp_ms: conflict.ours.timestamp_ms.max(conflict.theirs.timestamp_ms),
            },
        }
    }

    /// The ancestor the resolver is given for `ours` (the versions folded
    /// so far) against `theirs`: the newest version both descend from,
    /// whatever the ids. When several are equally new (criss-cross
    /// merges), none alone holds what both sides share, so they are merged
    /// into a virtual ancestor ([`virtual_base`](Self::virtual_base)).
    /// Collected ancestors are left out; with none left, there is no
    /// ancestor.
    fn merge_base(
        &self,
        writer: &Writer<'_>,
        key: &[u8],
        ours: &[VersionId],
        theirs: VersionId,
        depth: usize,
        search: &mut BaseSearch,
    ) -> Result<Option<Side>, Error> {
        let mut newest = Vec::new();
        for version in lowest_common_ancestors(writer, ours, theirs, &mut search.visits_left)? {
            if writer.dag_node(&version)?.is_some() {
                newest.push(version);
            }
        }
        match newest.as_slice() {
            [] => Ok(None),
            [only] => Ok(Some(side(writer, *only)?)),
            _ => self.virtual_base(writer, key, newest, depth, search),
        }
    }

    /// The merge of `newest` (two or more newest common ancestors, in id
    /// order) with the resolver, each against its own merge base, as git's
    /// recursive strategy does; its version is derived as a merge's would
    /// be and is in no DAG.
    ///
    /// Its cost is bounded, whatever the DAG: each set's merge is made once
    /// per settle and remembered (a lattice of criss-crosses meets the
    /// same sets again and again), and past [`MAX_MERGE_BASE_DEPTH`], or
    /// once the settle has spent [`MAX_BASE_RESOLUTIONS`] or
    /// [`MAX_BASE_VISITS`], the first of the set, in id order, stands for
    /// it all. Every replica that knows the same versions walks them in
    /// the same order, so it spends its budget alike and makes the same
    /// merge.
    fn virtual_base(
        &self,
        writer: &Writer<'_>,
        key: &[u8],
        newest: Vec<VersionId>,
        depth: usize,
        search: &mut BaseSearch,
    ) -> Result<Option<Side>, Error> {
        if let Some(known) = search.merged.get(&newest) {
            return Ok(known.clone());
        }
        let first = side(writer, newest[0])?;
        let merged = self.fold_bases(writer, key, &newest, first.clone(), depth, search)?;
        let base = Some(merged.unwrap_or(first));
        search.merged.insert(newest, base.clone());
        Ok(base)
    }

    /// Folds `newest` into `base` (its first), or `None` once the budget
    /// runs out or the depth is reached.
    fn fold_bases(
        &self,
        writer: &Writer<'_>,
        key: &[u8],
        newest: &[VersionId],
        mut base: Side,
        depth: usize,
        search: &mut BaseSearch,
    ) -> Result<Option<Side>, Error> {
        for (folded, &next) in newest.iter().enumerate().skip(1) {
            if depth >= MAX_MERGE_BASE_DEPTH || search.is_spent() {
                return Ok(None);
            }
            let theirs = side(writer, next)?;
            let ancestor =
                self.merge_base(writer, key, &newest[..folded], next, depth + 1, search)?;
            if search.is_spent() {
                return Ok(None);
            }
            search.resolutions_left -= 1;
            base = self.resolve(Conflict {
                key: key.to_vec(),
                ancestor,
                ours: base,
                theirs,
            });
        }
        base.version = VersionId::of_merge(
            newest,
            base.value.as_deref(),
            &base.writer,
            base.timestamp_ms,
        );
        Ok(Some(base))
    }

    fn set_head(
        &mut self,
        writer: &mut Writer<'_>,
        key: Vec<u8>,
        version: VersionId,
    ) -> Result<(), Error> {
        let log_index = writer
            .dag_node(&version)?
            .ok_or(Error::Corrupt {
                what: "dag (a new head without a node)",
                source: postcard::Error::DeserializeUnexpectedEnd,
            })?
            .log_index;
        let head = Head { version, log_index };
        writer.set_head(&key, &head)?;
        self.moved.push(Moved { key, head });
        Ok(())
    }
}

/// What the merge bases of one settle have found and may still spend (see
/// [`Round::virtual_base`]).
struct BaseSearch {
    /// Each set of newest common ancestors met, and its virtual ancestor.
    merged: HashMap<Vec<VersionId>, Option<Side>>,
    resolutions_left: usize,
    visits_left: usize,
}

impl BaseSearch {
    fn new() -> BaseSearch {
        BaseSearch {
            merged: HashMap::new(),
            resolutions_left: MAX_BASE_RESOLUTIONS,
            visits_left: MAX_BASE_VISITS,
        }
    }

    /// Whether no more virtual ancestors may be made.
    fn is_spent(&self) -> bool {
        self.resolutions_left == 0 || self.visits_left == 0
    }
}

/// Whether `descendant` has `ancestor` among its ancestors.
fn descends(
    writer: &Writer<'_>,
    descendant: VersionId,
    ancestor: VersionId,
) -> Result<bool, Error> {
    Ok(ancestors(writer, descendant, |version| version == ancestor)?.is_some())
}

/// The versions that both `theirs` and one of `ours` are or descend from
/// and that no other such version descends from: the newest common
/// ancestors, in id order. (Walking back breadth first and stopping at the
/// first shared version finds an older one, for some DAGs and ids.)
/// Each version the walks visit takes one from `visits_left` (down to 0).
fn lowest_common_ancestors(
    writer: &Writer<'_>,
    ours: &[VersionId],
    theirs: VersionId,
    visits_left: &mut usize,
) -> Result<Vec<VersionId>, Error> {
    let of_ours = ancestry(writer, ours)?;
    let theirs = ancestry(writer, &[theirs])?;
    *visits_left = visits_left.saturating_sub(of_ours.len() + theirs.len());
    let common: HashSet<VersionId> = theirs
        .into_iter()
        .filter(|version| of_ours.contains(version))
        .collect();
    // The common versions are closed under "parent of": a common version
    // that is an ancestor of another is the parent of a common one.
    let mut older = HashSet::new();
    for version in &common {
        if let Some(node) = writer.dag_node(version)? {
            older.extend(node.parents);
        }
    }
    let mut newest: Vec<VersionId> = common.difference(&older).copied().collect();
    newest.sort();
    Ok(newest)
}

/// `starts` and every version they descend from (collected ones included,
/// though not what those descend from).
fn ancestry(writer: &Writer<'_>, starts: &[VersionId]) -> Result<HashSet<VersionId>, Error> {
    let mut seen: HashSet<VersionId> = starts.iter().copied().collect();
    let mut queue: VecDeque<VersionId> = starts.iter().copied().collect();
    while let Some(version) = queue.pop_front() {
        let Some(node) = writer.dag_node(&version)? else {
            continue;
        };
        for parent in node.parents {
            if seen.insert(parent) {
                queue.push_back(parent);
            }
        }
    }
    Ok(seen)
}

/// Walks the ancestors of `start` (itself excluded) breadth first until
/// `stop` accepts one, and returns it.
fn ancestors(
    writer: &Writer<'_>,
    start: VersionId,
    mut stop: impl FnMut(VersionId) -> bool,
) -> Result<Option<VersionId>, Error> {
    let mut queue = VecDeque::from([start]);
    let mut seen = HashSet::from([start]);
    while let Some(version) = queue.pop_front() {
        let Some(node) = writer.dag_node(&version)? else {
            continue;
        };
        for parent in node.parents {
            if !seen.insert(parent) {
                continue;
            }
            if stop(parent) {
                return Ok(Some(parent));
            }
            queue.push_back(parent);
        }
    }
    Ok(None)
}

/// A version as one side of a conflict, from its record.
fn side(writer: &Writer<'_>, version: VersionId) -> Result<Side, Error> {
    let node = writer.dag_node(&version)?.ok_or(Error::Corrupt {
        what: "dag (a head without a node)",
        source: postcard::Error::DeserializeUnexpectedEnd,
    })?;
    let record = writer.record_at(node.log_index)?.ok_or(Error::Corrupt {
        what: "log (a dag node without its record)",
        source: postcard::Error::DeserializeUnexpectedEnd,
    })?;
    Ok(Side {
        version,
        value: record.value,
        writer: record.writer,
        timestamp_ms: record.timestamp_ms,
    })
}
