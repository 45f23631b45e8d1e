//! [`MemoryStore`]: the embedded, in-process [`PresenceStore`], the default.
//!
//! One mutex guards every scope's records; each operation holds it for its
//! whole run and never across an `.await`, so each is atomic, as a
//! transaction on a shared store would be.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flotilla_core_types::Name;

use crate::store::{KeyRecord, PingBatch, PresenceStore, PruneReport, PruneRule};
use crate::{Incarnation, Slot, StoreError};

/// The embedded presence store: every scope's beings, slot records and
/// tombstones in this process's memory. Clones share the same records.
///
/// # Example
///
/// ```
/// use flotilla_core_types::Name;
/// use flotilla_presence::{MemoryStore, PresenceStore, Slot};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let store = MemoryStore::new();
/// let scope = Name::new("model-1")?;
/// let key = Name::new("machine-0")?;
/// let first = store.begin(&scope, &key, Slot(10)).await?;
/// let second = store.begin(&scope, &key, Slot(11)).await?;
/// assert!(second > first);
/// let records = store.load(&scope, &[key.clone()], Slot(11)).await?;
/// assert_eq!(records[&key].incarnation, second);
/// assert!(records[&key].alive());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    scopes: Arc<Mutex<HashMap<Name, ScopeRecords>>>,
}

/// How many records a store holds for one scope, for tests and status
/// pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Incarnations held (superseded ones included until pruned).
    pub incarnations: usize,
    /// Tombstones held.
    pub tombstones: usize,
    /// Slot records held.
    pub slots: usize,
    /// Pings held in all slot records.
    pub pings: usize,
}

#[derive(Debug, Default)]
struct ScopeRecords {
    next_incarnation: u64,
    /// Each key's incarnations, oldest first.
    beings: HashMap<Name, Vec<Being>>,
    /// Which key each held incarnation belongs to.
    owners: HashMap<Incarnation, Name>,
    slots: BTreeMap<Slot, HashSet<Incarnation>>,
    tombstones: HashSet<Incarnation>,
}

#[derive(Debug, Clone, Copy)]
struct Being {
    incarnation: Incarnation,
    /// The latest slot it was born or pinged in.
    last_seen: Slot,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many records `scope` holds now.
    pub fn counts(&self, scope: &Name) -> StoreCounts {
        let scopes = self.lock();
        let Some(records) = scopes.get(scope) else {
            return StoreCounts::default();
        };
        StoreCounts {
            incarnations: records.owners.len(),
            tombstones: records.tombstones.len(),
            slots: records.slots.len(),
            pings: records.slots.values().map(HashSet::len).sum(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Name, ScopeRecords>> {
        // Every operation leaves the records whole before anything that
        // could panic, so a poisoned lock still guards consistent data.
        self.scopes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PresenceStore for MemoryStore {
    async fn begin(&self, scope: &Name, key: &Name, slot: Slot) -> Result<Incarnation, StoreError> {
        let mut scopes = self.lock();
        let records = scopes.entry(scope.clone()).or_default();
        let number = records.next_incarnation.checked_add(1).ok_or_else(|| {
            StoreError::IncarnationsExhausted {
                scope: scope.clone(),
            }
        })?;
        records.next_incarnation = number;
        let incarnation = Incarnation(number);
        records.beings.entry(key.clone()).or_default().push(Being {
            incarnation,
            last_seen: slot,
        });
        records.owners.insert(incarnation, key.clone());
        Ok(incarnation)
    }

    async fn write_pings(&self, batch: &PingBatch) -> Result<(), StoreError> {
        let mut scopes = self.lock();
        for (scope, slot, incarnations) in batch.records() {
            let records = scopes.entry(scope.clone()).or_default();
            let ScopeRecords {
                beings,
                owners,
                slots,
                ..
            } = records;
            slots
                .entry(slot)
                .or_default()
                .extend(incarnations.iter().copied());
            for incarnation in incarnations {
                let Some(key) = owners.get(incarnation) else {
                    continue;
                };
                if let Some(being) = beings
                    .get_mut(key)
                    .and_then(|all| all.iter_mut().find(|b| b.incarnation == *incarnation))
                {
                    being.last_seen = being.last_seen.max(slot);
                }
            }
        }
        Ok(())
    }

    async fn mark_stopped(&self, scope: &Name, incarnation: Incarnation) -> Result<(), StoreError> {
        let mut scopes = self.lock();
        let records = scopes.entry(scope.clone()).or_default();
        // A tombstone of an incarnation already pruned would never be read.
        if records.owners.contains_key(&incarnation) {
            records.tombstones.insert(incarnation);
        }
        Ok(())
    }

    async fn load(
        &self,
        scope: &Name,
        keys: &[Name],
        since: Slot,
    ) -> Result<HashMap<Name, KeyRecord>, StoreError> {
        let scopes = self.lock();
        let Some(records) = scopes.get(scope) else {
            return Ok(HashMap::new());
        };
        let mut answer = HashMap::with_capacity(keys.len());
        for key in keys {
            let Some(latest) = records.beings.get(key).and_then(|all| all.last()) else {
                continue;
            };
            let seen_since = latest.last_seen >= since
                || records
                    .slots
                    .range(since..)
                    .any(|(_, pinged)| pinged.contains(&latest.incarnation));
            answer.insert(
                key.clone(),
                KeyRecord {
                    incarnation: latest.incarnation,
                    stopped: records.tombstones.contains(&latest.incarnation),
                    seen_since,
                },
            );
        }
        Ok(answer)
    }

    async fn prune(&self, rule: PruneRule) -> Result<PruneReport, StoreError> {
        let mut scopes = self.lock();
        let mut report = PruneReport::default();
        for records in scopes.values_mut() {
            let kept = records.slots.split_off(&rule.keep_slots_from);
            report.slots += records.slots.len();
            records.slots = kept;

            let mut removed = Vec::new();
            records.beings.retain(|_, all| {
                let superseded = all.len().saturating_sub(1);
                removed.extend(all.drain(..superseded).map(|being| being.incarnation));
                match all.last() {
                    Some(latest) if latest.last_seen < rule.forget_dead_before => {
                        removed.push(latest.incarnation);
                        false
                    }
                    Some(_) => true,
                    None => false,
                }
            });
            for incarnation in removed {
                records.owners.remove(&incarnation);
                report.incarnations += 1;
                if records.tombstones.remove(&incarnation) {
                    report.tombstones += 1;
                }
                for pinged in records.slots.values_mut() {
                    pinged.remove(&incarnation);
                }
            }
            let before = records.slots.len();
            records.slots.retain(|_, pinged| !pinged.is_empty());
            report.slots += before - records.slots.len();
        }
        Ok(report)
    }

    async fn remove_scope(&self, scope: &Name) -> Result<(), StoreError> {
        let mut scopes = self.lock();
        if let Some(records) = scopes.get_mut(scope) {
            let next_incarnation = records.next_incarnation;
            *records = ScopeRecords {
                next_incarnation,
                ..ScopeRecords::default()
            };
        }
        Ok(())
    }
}
