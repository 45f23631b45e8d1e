//! [`Resolver`]: how a conflict between two versions of a key is settled,
//! and the default, [`LastWriterWins`].

use flotilla_core_types::DeviceId;

use crate::VersionId;

/// One side of a conflict: a version and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// The version.
    pub version: VersionId,
    /// Its value (`None`: deleted).
    pub value: Option<Vec<u8>>,
    /// Who wrote the value.
    pub writer: DeviceId,
    /// When, by the writer's clock, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Two versions of a key of which neither descends from the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key.
    pub key: Vec<u8>,
    /// The newest version both sides descend from (one that no other
    /// shared version descends from), whatever the version ids: the base
    /// of a three-way merge. When there are several such (after
    /// criss-cross merges), their merge by this resolver, each against its
    /// own base, whose `version` is in no DAG; the resolver is called for
    /// at most 64 such merges per key settled (and a crafted history's
    /// walks are bounded too), after which the first of them, in version
    /// id order, stands for them all, alike on every replica. `None` when
    /// no shared version is left (never shared, or collected).
    pub ancestor: Option<Side>,
    /// This replica's head. When more than two versions conflict they are
    /// folded in version id order, and `ours` is the fold so far (its
    /// ancestors, for `ancestor`, are those of every version folded).
    pub ours: Side,
    /// The version that arrived.
    pub theirs: Side,
}

/// What a resolution keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// This replica's value.
    Ours,
    /// The arriving value.
    Theirs,
    /// A new value (`None`: deleted), such as a merge of the two.
    Merged(Option<Vec<u8>>),
}

/// Settles conflicts. Called while a sync round is applied, so it must not
/// block for long.
///
/// Replicas converge only if every replica settles a conflict alike: a
/// resolver must be deterministic and symmetric (swapping `ours` and
/// `theirs` swaps `Ours` and `Theirs`, and keeps a `Merged` value).
///
/// A `Merged` value is held to [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN), as
/// a local write is: a larger one fails the round with
/// [`Error::TooLarge`](crate::Error::TooLarge).
pub trait Resolver: Send + Sync + 'static {
    /// Settles `conflict`.
    fn resolve(&self, conflict: &Conflict) -> Resolution;
}

/// The default resolver: the later timestamp wins, and between equal
/// timestamps the greater device id, so that every replica picks the same
/// side.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastWriterWins;

impl Resolver for LastWriterWins {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        let ours = (conflict.ours.timestamp_ms, &conflict.ours.writer);
        let theirs = (conflict.theirs.timestamp_ms, &conflict.theirs.writer);
        if theirs > ours {
            Resolution::Theirs
        } else {
            Resolution::Ours
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(writer: &str, timestamp_ms: u64) -> Side {
        let writer = DeviceId::new(writer).expect("valid");
        Side {
            version: VersionId::of_write(&writer, 1, timestamp_ms),
            value: Some(writer.as_str().as_bytes().to_vec()),
            writer,
            timestamp_ms,
        }
    }

    fn check(ours: Side, theirs: Side, expected: Resolution) {
        let conflict = Conflict {
            key: b"k".to_vec(),
            ancestor: None,
            ours: ours.clone(),
            theirs: theirs.clone(),
        };
        assert_eq!(LastWriterWins.resolve(&conflict), expected);
        let swapped = Conflict {
            ours: theirs,
            theirs: ours,
            ..conflict
        };
        let mirrored = match expected {
            Resolution::Ours => Resolution::Theirs,
            Resolution::Theirs => Resolution::Ours,
            merged @ Resolution::Merged(_) => merged,
        };
        assert_eq!(LastWriterWins.resolve(&swapped), mirrored, "symmetric");
    }

    #[test]
    fn the_later_write_wins_then_the_greater_device() {
        check(side("a", 5), side("b", 4), Resolution::Ours);
        check(side("a", 4), side("b", 5), Resolution::Theirs);
        check(side("a", 5), side("b", 5), Resolution::Theirs);
        check(side("b", 5), side("a", 5), Resolution::Ours);
    }
}
