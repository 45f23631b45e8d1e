//! The replicated data: version ids, generation vectors and log records.
//!
//! Every mutation is a [`LogRecord`] in its device's log, numbered by
//! generation and sequence. A [`GenVector`] says, per device, the newest
//! generation a replica holds; generations are whole and contiguous (a
//! replica that has generation 5 of a device has 1 to 4 too), so a vector is
//! a complete summary of what a replica knows, and the difference of two
//! vectors is exactly what one must send the other.

use std::collections::BTreeMap;
use std::fmt;

use flotilla_core_types::DeviceId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The id of one version of one key: 16 bytes derived by hashing what
/// defines the version, so every replica derives the same id for the same
/// version, and a merge that two replicas make alike gets one id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionId(pub [u8; 16]);

impl VersionId {
    /// The id of the version a device wrote at (generation, sequence).
    pub fn of_write(device: &DeviceId, generation: u64, sequence: u64) -> VersionId {
        let mut hash = Sha256::new();
        hash.update(b"write\0");
        hash.update(device.as_str().as_bytes());
        hash.update([0]);
        hash.update(generation.to_be_bytes());
        hash.update(sequence.to_be_bytes());
        VersionId::from_digest(&hash.finalize())
    }

    /// The id of the merge of `parents` into `value`, written by `writer` at
    /// `timestamp_ms`: the same on every replica that resolves the same
    /// conflict the same way.
    pub fn of_merge(
        parents: &[VersionId],
        value: Option<&[u8]>,
        writer: &DeviceId,
        timestamp_ms: u64,
    ) -> VersionId {
        let mut sorted = parents.to_vec();
        sorted.sort();
        let mut hash = Sha256::new();
        hash.update(b"merge\0");
        for parent in &sorted {
            hash.update(parent.0);
        }
        match value {
            Some(value) => {
                hash.update([1]);
                hash.update((value.len() as u64).to_be_bytes());
                hash.update(value);
            }
            None => hash.update([0]),
        }
        hash.update(writer.as_str().as_bytes());
        hash.update([0]);
        hash.update(timestamp_ms.to_be_bytes());
        VersionId::from_digest(&hash.finalize())
    }

    fn from_digest(digest: &[u8]) -> VersionId {
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        VersionId(id)
    }
}

/// The short form people read in messages and logs: `v` and the first six
/// bytes in hex, as the `Debug` form shows it too.
impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Per device, the newest generation a replica holds (all older ones
/// included). A device that is absent counts as generation 0: nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenVector(BTreeMap<DeviceId, u64>);

impl GenVector {
    /// An empty vector: nothing known.
    pub fn new() -> GenVector {
        GenVector::default()
    }

    /// The newest generation of `device` this vector covers.
    pub fn get(&self, device: &DeviceId) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    /// Raises `device`'s entry to `generation` (never lowers it).
    pub fn raise(&mut self, device: &DeviceId, generation: u64) {
        let entry = self.0.entry(device.clone()).or_insert(0);
        *entry = (*entry).max(generation);
    }

    /// Raises every entry to at least `other`'s.
    pub fn merge(&mut self, other: &GenVector) {
        for (device, generation) in &other.0 {
            self.raise(device, *generation);
        }
    }

    /// The entries of `devices`, each lowered to `other`'s (absent counts
    /// as 0): what both vectors cover, for those devices.
    pub fn meet(&self, other: &GenVector) -> GenVector {
        GenVector(
            self.0
                .iter()
                .map(|(device, generation)| (device.clone(), (*generation).min(other.get(device))))
                .collect(),
        )
    }

    /// The entries of this vector for devices `bound` has too, each at most
    /// `bound`'s: what of this vector a replica holding `bound` can vouch
    /// for.
    ///
    /// ```
    /// use flotilla_gensync::{DeviceId, GenVector};
    ///
    /// let (a, b) = (DeviceId::new("a")?, DeviceId::new("b")?);
    /// let mut claimed = GenVector::new();
    /// claimed.raise(&a, 9);
    /// claimed.raise(&b, 2);
    /// let mut held = GenVector::new();
    /// held.raise(&a, 5);
    /// let bounded = claimed.bounded_by(&held);
    /// assert_eq!((bounded.get(&a), bounded.get(&b)), (5, 0));
    /// assert_eq!(bounded.iter().count(), 1);
    /// # Ok::<(), flotilla_gensync::InvalidId>(())
    /// ```
    pub fn bounded_by(&self, bound: &GenVector) -> GenVector {
        GenVector(
            self.0
                .iter()
                .filter_map(|(device, generation)| {
                    let held = bound.get(device);
                    (held > 0 && *generation > 0).then(|| (device.clone(), (*generation).min(held)))
                })
                .collect(),
        )
    }

    /// Whether this vector covers the record at `device`'s `generation`.
    pub fn covers(&self, device: &DeviceId, generation: u64) -> bool {
        generation <= self.get(device)
    }

    /// Whether every entry of `other` is covered by this vector.
    pub fn dominates(&self, other: &GenVector) -> bool {
        other
            .0
            .iter()
            .all(|(device, generation)| self.covers(device, *generation))
    }

    /// The entries, by device.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, u64)> {
        self.0
            .iter()
            .map(|(device, generation)| (device, *generation))
    }
}

/// One mutation, as it travels between replicas and sits in their logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The device whose log this record is in.
    pub device: DeviceId,
    /// Its generation in that log, from 1.
    pub generation: u64,
    /// Its place in the generation, from 1.
    pub sequence: u64,
    /// The key it changes.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The version it creates.
    pub version: VersionId,
    /// The versions it replaces: none for a key's first version, one for an
    /// update, two for a merge.
    pub parents: Vec<VersionId>,
    /// The new value, or `None` for a deletion (a tombstone).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Who wrote the value: `device` for a plain write; for a merge, the
    /// writer of the value the merge kept, so that every replica ranks the
    /// merge alike in later conflicts.
    pub writer: DeviceId,
    /// When the value was written, in milliseconds since the Unix epoch, by
    /// the writer's clock.
    pub timestamp_ms: u64,
}

impl LogRecord {
    /// The size of the record's payload: key and value bytes, the measure
    /// "bytes of the missing records" in the wire benchmarks uses.
    pub fn payload_len(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid device id")
    }

    #[test]
    fn a_version_reads_as_v_and_twelve_hex_digits() {
        let version = VersionId::of_write(&device("a"), 1, 1);
        let text = version.to_string();
        assert_eq!(text.len(), 13, "{text}");
        assert!(text.starts_with('v'));
        assert!(text[1..].chars().all(|c| c.is_ascii_hexdigit()), "{text}");
        let error = crate::Error::MissingParent {
            version,
            parent: VersionId::of_write(&device("b"), 1, 1),
        };
        assert!(!error.to_string().contains("VersionId"), "{error}");
    }

    #[test]
    fn a_vector_covers_everything_up_to_each_entry() {
        let (a, b) = (device("a"), device("b"));
        let mut vector = GenVector::new();
        vector.raise(&a, 3);
        vector.raise(&a, 2);
        assert_eq!(vector.get(&a), 3, "raise never lowers");
        assert!(vector.covers(&a, 3) && !vector.covers(&a, 4));
        assert!(!vector.covers(&b, 1));
        let mut other = GenVector::new();
        other.raise(&b, 1);
        assert!(!vector.dominates(&other));
        vector.merge(&other);
        assert!(vector.dominates(&other));
    }

    /// Keys and values encode as byte strings, which postcard writes as
    /// it wrote them as sequences of bytes: stores and peers written
    /// before read the same.
    #[test]
    fn a_record_encodes_as_it_did_before_byte_strings() {
        #[derive(Serialize)]
        struct Before {
            device: DeviceId,
            generation: u64,
            sequence: u64,
            key: Vec<u8>,
            version: VersionId,
            parents: Vec<VersionId>,
            value: Option<Vec<u8>>,
            writer: DeviceId,
            timestamp_ms: u64,
        }
        let a = device("a");
        let record = LogRecord {
            device: a.clone(),
            generation: 3,
            sequence: 300,
            key: b"some/key".to_vec(),
            version: VersionId::of_write(&a, 3, 300),
            parents: vec![VersionId::of_write(&a, 2, 1)],
            value: Some(vec![0xff; 200]),
            writer: a.clone(),
            timestamp_ms: 1_700_000_000_000,
        };
        let before = Before {
            device: a.clone(),
            generation: 3,
            sequence: 300,
            key: record.key.clone(),
            version: record.version,
            parents: record.parents.clone(),
            value: record.value.clone(),
            writer: a,
            timestamp_ms: record.timestamp_ms,
        };
        let now = postcard::to_allocvec(&record).expect("encodes");
        assert_eq!(now, postcard::to_allocvec(&before).expect("encodes"));
        let deleted = LogRecord {
            value: None,
            ..record
        };
        let before = Before {
            value: None,
            ..before
        };
        assert_eq!(
            postcard::to_allocvec(&deleted).expect("encodes"),
            postcard::to_allocvec(&before).expect("encodes")
        );
        assert_eq!(
            postcard::from_bytes::<LogRecord>(&now)
                .expect("decodes")
                .key,
            b"some/key"
        );
    }

    #[test]
    fn merge_ids_depend_on_the_merge_and_not_on_who_computes_it() {
        let (a, b) = (device("a"), device("b"));
        let x = VersionId::of_write(&a, 1, 1);
        let y = VersionId::of_write(&b, 1, 1);
        assert_ne!(x, y);
        let merged = VersionId::of_merge(&[x, y], Some(b"v"), &a, 5);
        assert_eq!(merged, VersionId::of_merge(&[y, x], Some(b"v"), &a, 5));
        assert_ne!(merged, VersionId::of_merge(&[x, y], Some(b"w"), &a, 5));
        assert_ne!(merged, VersionId::of_merge(&[x, y], None, &a, 5));
    }
}
