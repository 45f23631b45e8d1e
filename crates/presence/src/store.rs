//! [`PresenceStore`]: what presence needs from the place its records live,
//! and the records it exchanges with it.
//!
//! A store holds, per scope, three kinds of record:
//! - **beings**: each incarnation of a key, allocated by
//!   [`begin`](PresenceStore::begin) from a per-scope counter, with the slot
//!   it was born in (a birth counts as a ping);
//! - **slot records**: per slot, the set of incarnations that pinged in it,
//!   written by [`write_pings`](PresenceStore::write_pings) as set unions,
//!   so a retried or repeated write changes nothing;
//! - **tombstones**: incarnations stopped gracefully
//!   ([`mark_stopped`](PresenceStore::mark_stopped)); a tombstone is final.
//!
//! Readers consult only each key's latest incarnation, its tombstone, and
//! the slot records of the current and the previous slot. That is the
//! pruning rule ([`PruneRule`]): everything else may go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;

use flotilla_core_types::Name;

use crate::{Slot, StoreError};

/// One incarnation of a key: each start of a pinger is a new one, numbered
/// from a per-scope counter, so a restart is visible to watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "incarnation {}", self.0)
    }
}

/// The pings of one flush: per scope and slot, the incarnations that
/// pinged. Written in one store operation; its size is the number of
/// (scope, slot) records it touches, whatever the number of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingBatch {
    records: BTreeMap<(Name, Slot), BTreeSet<Incarnation>>,
}

impl PingBatch {
    /// An empty batch.
    pub fn new() -> PingBatch {
        PingBatch::default()
    }

    /// Adds a ping of `incarnation` in `slot` of `scope`.
    pub fn add(&mut self, scope: &Name, slot: Slot, incarnation: Incarnation) {
        self.records
            .entry((scope.clone(), slot))
            .or_default()
            .insert(incarnation);
    }

    /// Adds every ping of `other`.
    pub fn merge(&mut self, other: PingBatch) {
        for (record, incarnations) in other.records {
            self.records.entry(record).or_default().extend(incarnations);
        }
    }

    /// The (scope, slot) records, each with its incarnations.
    pub fn records(&self) -> impl Iterator<Item = (&Name, Slot, &BTreeSet<Incarnation>)> {
        self.records
            .iter()
            .map(|((scope, slot), incarnations)| (scope, *slot, incarnations))
    }

    /// How many (scope, slot) records the batch touches.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// How many pings it holds in all.
    pub fn ping_count(&self) -> usize {
        self.records.values().map(BTreeSet::len).sum()
    }

    /// Whether it holds no pings.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// What a store knows of a key's latest incarnation, as of a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's latest incarnation.
    pub incarnation: Incarnation,
    /// Whether that incarnation was stopped gracefully.
    pub stopped: bool,
    /// Whether it was born or pinged in the slot the load asked about or
    /// later.
    pub seen_since: bool,
}

impl KeyRecord {
    /// Whether this record says the key is alive: seen lately and not
    /// stopped.
    pub fn alive(&self) -> bool {
        self.seen_since && !self.stopped
    }
}

/// What a [`prune`](PresenceStore::prune) may remove. Readers consult each
/// key's latest incarnation and slots from the previous one on, so:
/// - slot records before `keep_slots_from` go;
/// - incarnations superseded by a newer one of the same key go, with their
///   tombstones;
/// - a key's latest incarnation goes too, with its tombstone, once it was
///   last born or pinged before `forget_dead_before`, so dead since then
///   (stopped or expired). A reader then sees the key as never seen, which
///   is no change for a watcher that saw it dead;
/// - slot records left empty go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneRule {
    /// The oldest slot whose record is kept.
    pub keep_slots_from: Slot,
    /// Dead latest incarnations last seen before this slot are forgotten.
    pub forget_dead_before: Slot,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Slot records removed.
    pub slots: usize,
    /// Incarnations removed (superseded or forgotten).
    pub incarnations: usize,
    /// Tombstones removed with them.
    pub tombstones: usize,
}

/// Where presence's records live: the embedded [`MemoryStore`] or a shared
/// backend. Every operation is one request to the store (one transaction
/// where the store has them), and every write is idempotent, so a caller may
/// retry any of them after a failure or a timeout.
///
/// [`MemoryStore`]: crate::MemoryStore
pub trait PresenceStore: Clone + Send + Sync + 'static {
    /// Allocates the next incarnation of `key` in `scope` (atomically: two
    /// callers never get the same number) and records it as born in
    /// `slot`.
    fn begin(
        &self,
        scope: &Name,
        key: &Name,
        slot: Slot,
    ) -> impl Future<Output = Result<Incarnation, StoreError>> + Send;

    /// Adds every ping of `batch` to its slot records (set union).
    fn write_pings(&self, batch: &PingBatch)
    -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes the tombstone of `incarnation` in `scope`.
    fn mark_stopped(
        &self,
        scope: &Name,
        incarnation: Incarnation,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest incarnation of each of `keys` that has one, with whether
    /// it was seen in `since` or later.
    fn load(
        &self,
        scope: &Name,
        keys: &[Name],
        since: Slot,
    ) -> impl Future<Output = Result<HashMap<Name, KeyRecord>, StoreError>> + Send;

    /// Removes, in every scope, what `rule` says no reader will consult.
    fn prune(
        &self,
        rule: PruneRule,
    ) -> impl Future<Output = Result<PruneReport, StoreError>> + Send;

    /// Removes every record of `scope` but its incarnation counter, so that
    /// an incarnation number is never handed out twice.
    fn remove_scope(&self, scope: &Name) -> impl Future<Output = Result<(), StoreError>> + Send;
}
