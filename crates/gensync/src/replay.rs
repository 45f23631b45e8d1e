//! Applying one sync round: the records a peer sent, in one write
//! transaction, through the version DAG.
//!
//! For each record not already covered by our vector: its parents must be
//! known (or arrive earlier in the round), and it joins the log and the DAG.
//! Per key, the round keeps the *frontier*: the versions that nothing else
//! known descends from, starting from the key's head. A version that
//! descends from the head replaces it (a fast-forward); two or more versions
//! left at the end are a conflict. It is settled once per key per round: the
//! resolver folds the frontier (in version id order) into one value, and
//! that becomes a merge version whose parents are the whole frontier and
//! whose id is derived from them and its content. Every replica that knows
//! the same versions has the same frontier and makes the same merge, so
//! merges do not pile up on each other. The merge is a record of our own
//! log and travels like any other write.
//!
//! At the end the peer's vector is checked against what it sent, merged
//! into ours, and everything is committed at once; an error anywhere drops
//! the transaction and leaves the store as it was.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use flotilla_core_types::DeviceId;

use crate::replica::{Change, Origin, Shared};
use crate::resolver::{Conflict, Resolution, Side};
use crate::storage::{Finished, Head, WriteTxn, Writer};
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

pub(crate) struct Round<'a> {
    shared: &'a Shared,
    writer: Writer<'a>,
    ours: GenVector,
    /// The peer, whose vector this round teaches us.
    peer: DeviceId,
    /// What the peer has collected, when it says it sends a collected log
    /// (its records of those generations may be missing, and so may
    /// parents).
    collected: Option<GenVector>,
    received: BTreeMap<DeviceId, BTreeSet<u64>>,
    /// Per key touched by the round, the versions nothing known descends
    /// from.
    frontiers: BTreeMap<Vec<u8>, Vec<VersionId>>,
    changes: Vec<Change>,
    stats: RoundStats,
}

impl<'a> Round<'a> {
    pub(crate) fn begin(
        shared: &'a Shared,
        txn: &'a WriteTxn,
        peer: DeviceId,
    ) -> Result<Round<'a>, Error> {
        let writer = txn.tables()?;
        let ours = writer.vector()?;
        Ok(Round {
            shared,
            writer,
            ours,
            peer,
            collected: None,
            received: BTreeMap::new(),
            frontiers: BTreeMap::new(),
            changes: Vec::new(),
            stats: RoundStats::default(),
        })
    }

    /// The peer has collected `vector`: accept its log as it is.
    pub(crate) fn accept_collected(&mut self, vector: GenVector) {
        self.collected = Some(vector);
    }

    pub(crate) fn apply(&mut self, record: LogRecord) -> Result<(), Error> {
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
        for parent in &record.parents {
            if self.writer.knows(parent)? {
                continue;
            }
            if self.collected.is_none() {
                return Err(Error::MissingParent {
                    version: record.version,
                    parent: *parent,
                });
            }
            // Collected by the peer before we had it.
            self.writer.mark_collected(parent)?;
        }
        self.received
            .entry(record.device.clone())
            .or_default()
            .insert(record.generation);
        if !self.writer.append(&record)? {
            // A version we have already (the same merge, made here too).
            self.stats.duplicates += 1;
            return Ok(());
        }
        self.stats.applied += 1;
        self.advance_frontier(&record)
    }

    pub(crate) fn finish(
        mut self,
        theirs: &GenVector,
    ) -> Result<(RoundStats, Vec<Change>, Finished), Error> {
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
            self.settle(key, frontier)?;
        }
        let mut vector = self.ours.clone();
        vector.merge(theirs);
        self.writer.set_vector(&vector)?;
        self.writer.raise_collected(&collected.meet(&vector))?;
        let now_ms = (self.shared.config.clock)();
        self.writer.heard_of(&self.peer, Some(theirs), now_ms)?;
        for (device, _) in theirs.iter() {
            if device != &self.shared.device {
                self.writer.heard_of(device, None, now_ms)?;
            }
        }
        let finished = self.writer.finish()?;
        Ok((self.stats, self.changes, finished))
    }

    /// Adds `record`'s version to its key's frontier, dropping what it
    /// descends from. Records arrive parents first and are new to us, so
    /// nothing known descends from them.
    fn advance_frontier(&mut self, record: &LogRecord) -> Result<(), Error> {
        let frontier = match self.frontiers.remove(&record.key) {
            Some(frontier) => frontier,
            None => self
                .writer
                .head(&record.key)?
                .map(|head| vec![head.version])
                .unwrap_or_default(),
        };
        let mut kept = Vec::with_capacity(frontier.len() + 1);
        for version in frontier {
            let replaced =
                record.parents.contains(&version) || self.descends(record.version, version)?;
            if !replaced {
                kept.push(version);
            }
        }
        kept.push(record.version);
        self.frontiers.insert(record.key.clone(), kept);
        Ok(())
    }

    /// Makes the key's head the one version left on its frontier, or the
    /// merge of all of them.
    fn settle(&mut self, key: Vec<u8>, mut frontier: Vec<VersionId>) -> Result<(), Error> {
        let current = self.writer.head(&key)?.map(|head| head.version);
        if let [only] = frontier.as_slice() {
            if current == Some(*only) {
                return Ok(());
            }
            let side = self.side(*only)?;
            return self.set_head(key, side.version, side.value);
        }
        self.stats.conflicts += 1;
        frontier.sort();
        let mut kept = self.side(frontier[0])?;
        for &next in &frontier[1..] {
            let theirs = self.side(next)?;
            // The ancestor may have been collected; the resolver then goes
            // without it.
            let ancestor = match self.common_ancestor(kept.version, theirs.version)? {
                Some(version) if self.writer.dag_node(&version)?.is_some() => {
                    Some(self.side(version)?)
                }
                _ => None,
            };
            let conflict = Conflict {
                key: key.clone(),
                ancestor,
                ours: kept,
                theirs,
            };
            kept = match self.shared.config.resolver.resolve(&conflict) {
                Resolution::Ours => conflict.ours,
                Resolution::Theirs => conflict.theirs,
                Resolution::Merged(value) => Side {
                    version: conflict.theirs.version,
                    value,
                    writer: conflict.ours.writer.max(conflict.theirs.writer),
                    timestamp_ms: conflict.ours.timestamp_ms.max(conflict.theirs.timestamp_ms),
                },
            };
        }
        let version = VersionId::of_merge(
            &frontier,
            kept.value.as_deref(),
            &kept.writer,
            kept.timestamp_ms,
        );
        if self.writer.dag_node(&version)?.is_none() {
            let (generation, sequence) = self.writer.open_slot();
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
            self.writer.append(&merge)?;
            self.writer.fill_slot(generation, sequence);
        }
        self.set_head(key, version, kept.value)
    }

    fn set_head(
        &mut self,
        key: Vec<u8>,
        version: VersionId,
        value: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        let head = Head {
            version,
            value: value.clone(),
        };
        self.writer.set_head(&key, &head)?;
        self.changes.push(Change {
            key,
            value,
            version,
            origin: Origin::Replicated,
        });
        Ok(())
    }

    /// Whether `descendant` has `ancestor` among its ancestors.
    fn descends(&self, descendant: VersionId, ancestor: VersionId) -> Result<bool, Error> {
        Ok(self
            .ancestors(descendant, |version| version == ancestor)?
            .is_some())
    }

    /// The nearest version both `a` and `b` descend from, if any is left.
    fn common_ancestor(&self, a: VersionId, b: VersionId) -> Result<Option<VersionId>, Error> {
        let mut of_a = HashSet::new();
        self.ancestors(a, |version| {
            of_a.insert(version);
            false
        })?;
        self.ancestors(b, |version| of_a.contains(&version))
    }

    /// Walks the ancestors of `start` (itself excluded) breadth first until
    /// `stop` accepts one, and returns it.
    fn ancestors(
        &self,
        start: VersionId,
        mut stop: impl FnMut(VersionId) -> bool,
    ) -> Result<Option<VersionId>, Error> {
        let mut queue = VecDeque::from([start]);
        let mut seen = HashSet::from([start]);
        while let Some(version) = queue.pop_front() {
            let Some(node) = self.writer.dag_node(&version)? else {
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
    fn side(&self, version: VersionId) -> Result<Side, Error> {
        let node = self.writer.dag_node(&version)?.ok_or(Error::Corrupt {
            what: "dag (a head without a node)",
            source: postcard::Error::DeserializeUnexpectedEnd,
        })?;
        let record = self
            .writer
            .record_at(node.log_index)?
            .ok_or(Error::Corrupt {
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
}
