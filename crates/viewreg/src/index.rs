//! The feature index a [`Snapshot`](crate::Snapshot) answers
//! `healthy_views` from: its views grouped by their feature set, so that a
//! query tests each distinct set once and then touches only the views it
//! returns.
//!
//! A [`FeatureSet`] is opaque (the registry can only ask whether one set
//! holds another, and whether two are equal), so the index cannot split a
//! set into features; it groups whole sets instead. Clusters have few
//! distinct sets (a role or two per server), so a query costs the number of
//! distinct sets plus what it returns. Past [`MAX_GROUPS`] distinct sets,
//! the views of further sets are kept in one list that each query filters
//! view by view.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{FeatureSet, View};

/// The most distinct feature sets indexed; views of any further set are
/// filtered one by one. High enough for any real cluster's roles, low
/// enough that building the index stays linear in the views.
pub(crate) const MAX_GROUPS: usize = 64;

/// Positions in the snapshot's view list (sorted by endpoint) of the views
/// sharing one feature set.
#[derive(Debug)]
struct Group<F> {
    features: F,
    /// Of its views, the healthy ones.
    healthy: Vec<u32>,
    /// All its views.
    all: Vec<u32>,
}

/// The views of a snapshot, grouped by feature set.
#[derive(Debug)]
pub(crate) struct FeatureIndex<F> {
    groups: Vec<Group<F>>,
    /// Views whose set came after [`MAX_GROUPS`] others.
    ungrouped: Vec<u32>,
    /// For each view in order, its group ([`UNGROUPED`] for none) and
    /// whether it is healthy: what a query returning much of the snapshot
    /// scans instead of merging the groups' lists.
    slots: Vec<(u8, bool)>,
}

/// The group of a view in no group.
const UNGROUPED: u8 = u8::MAX;

impl<F: FeatureSet> FeatureIndex<F> {
    /// Indexes `views`, which are sorted by endpoint.
    pub(crate) fn build<C>(views: &[View<F, C>]) -> Self {
        let mut index = FeatureIndex {
            groups: Vec::new(),
            ungrouped: Vec::new(),
            slots: Vec::with_capacity(views.len()),
        };
        let mut last_group = None;
        for (position, view) in views.iter().enumerate() {
            let position = u32::try_from(position).expect("a registry holds fewer than 2^32 views");
            let group = last_group
                .filter(|&group: &usize| index.groups[group].features == *view.features())
                .or_else(|| {
                    index
                        .groups
                        .iter()
                        .position(|group| group.features == *view.features())
                })
                .or_else(|| {
                    (index.groups.len() < MAX_GROUPS).then(|| {
                        index.groups.push(Group {
                            features: view.features().clone(),
                            healthy: Vec::new(),
                            all: Vec::new(),
                        });
                        index.groups.len() - 1
                    })
                });
            index.slots.push((
                group.map_or(UNGROUPED, |group| {
                    u8::try_from(group).expect("at most MAX_GROUPS groups")
                }),
                view.is_healthy(),
            ));
            match group {
                Some(group) => {
                    let entry = &mut index.groups[group];
                    entry.all.push(position);
                    if view.is_healthy() {
                        entry.healthy.push(position);
                    }
                    last_group = Some(group);
                }
                None => index.ungrouped.push(position),
            }
        }
        index
    }

    /// The positions, in order, of the views providing `wanted` that are
    /// healthy (or, with `every_health`, of any health).
    pub(crate) fn matching<C>(
        &self,
        views: &[View<F, C>],
        wanted: &F,
        every_health: bool,
    ) -> Vec<u32> {
        let matched: Vec<bool> = self
            .groups
            .iter()
            .map(|group| group.features.contains_all(wanted))
            .collect();
        let mut lists: Vec<&[u32]> = self
            .groups
            .iter()
            .zip(&matched)
            .filter(|(_, matched)| **matched)
            .map(|(group, _)| {
                if every_health {
                    group.all.as_slice()
                } else {
                    group.healthy.as_slice()
                }
            })
            .filter(|list| !list.is_empty())
            .collect();
        let ungrouped: Vec<u32> = self
            .ungrouped
            .iter()
            .copied()
            .filter(|&position| {
                let view = &views[position as usize];
                (every_health || view.is_healthy()) && view.features().contains_all(wanted)
            })
            .collect();
        if !ungrouped.is_empty() {
            lists.push(&ungrouped);
        }
        let total: usize = lists.iter().map(|list| list.len()).sum();
        if lists.len() > 1 && total * 8 >= self.slots.len() {
            // Much of the snapshot: one pass over the slots beats merging.
            let ungrouped_matches = |position: u32| ungrouped.binary_search(&position).is_ok();
            return (0u32..)
                .zip(&self.slots)
                .filter(
                    |&(position, &(group, healthy))| match matched.get(usize::from(group)) {
                        Some(&matched) => matched && (every_health || healthy),
                        None => ungrouped_matches(position),
                    },
                )
                .map(|(position, _)| position)
                .collect();
        }
        merge(&lists)
    }
}

/// Up to this many lists are merged by looking at every list's head for
/// each position (a few compares, no heap); more go through a heap.
const FEW_LISTS: usize = 8;

/// [`merge`] for a few lists: each step takes the smallest of their heads.
fn merge_few(lists: &[&[u32]]) -> Vec<u32> {
    let total = lists.iter().map(|list| list.len()).sum();
    let mut merged = Vec::with_capacity(total);
    let mut at = [0usize; FEW_LISTS];
    loop {
        let mut smallest: Option<(u32, usize)> = None;
        for (list, positions) in lists.iter().enumerate() {
            if let Some(&head) = positions.get(at[list])
                && smallest.is_none_or(|(least, _)| head < least)
            {
                smallest = Some((head, list));
            }
        }
        let Some((position, list)) = smallest else {
            return merged;
        };
        merged.push(position);
        at[list] += 1;
    }
}

/// Sorted lists of positions merged into one sorted list.
fn merge(lists: &[&[u32]]) -> Vec<u32> {
    match lists {
        [] => Vec::new(),
        [only] => only.to_vec(),
        _ if lists.len() <= FEW_LISTS => merge_few(lists),
        _ => {
            let total = lists.iter().map(|list| list.len()).sum();
            let mut merged = Vec::with_capacity(total);
            let mut heads: BinaryHeap<Reverse<(u32, usize, usize)>> = lists
                .iter()
                .enumerate()
                .filter_map(|(list, positions)| {
                    positions.first().map(|&first| Reverse((first, list, 0)))
                })
                .collect();
            while let Some(Reverse((position, list, at))) = heads.pop() {
                merged.push(position);
                if let Some(&next) = lists[list].get(at + 1) {
                    heads.push(Reverse((next, list, at + 1)));
                }
            }
            merged
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use flotilla_core_types::Endpoint;
    use proptest::prelude::*;
    use tokio::time::Instant;

    use super::*;
    use crate::Health;
    use crate::view::ViewInner;

    fn views(specs: &[(BTreeSet<u8>, Health)]) -> Vec<View<BTreeSet<u8>, ()>> {
        specs
            .iter()
            .enumerate()
            .map(|(n, (features, health))| {
                View::new(ViewInner {
                    endpoint: Endpoint::new("10.0.0.1", u16::try_from(n + 1).expect("few"))
                        .expect("valid"),
                    features: features.clone(),
                    partition: None,
                    health: *health,
                    last_changed: Instant::now(),
                    last_error: None,
                    client: (),
                    incarnation: 0,
                })
            })
            .collect()
    }

    fn health() -> impl Strategy<Value = Health> {
        prop_oneof![
            Just(Health::Healthy),
            Just(Health::Unhealthy),
            Just(Health::Unknown)
        ]
    }

    proptest! {
        /// The index answers exactly what testing every view would, in the
        /// same order: with few distinct sets, and with more than it groups
        /// (features drawn from 0..10 give up to 1,024 distinct sets).
        #[test]
        fn the_index_answers_what_a_scan_would(
            specs in proptest::collection::vec(
                (proptest::collection::btree_set(0u8..10, 0..5), health()), 0..300),
            few in any::<bool>(),
            wanted in proptest::collection::btree_set(0u8..10, 0..3),
            every_health in any::<bool>(),
        ) {
            let specs: Vec<_> = specs
                .into_iter()
                .map(|(features, health)| {
                    let features = if few { features.into_iter().filter(|f| *f < 2).collect() } else { features };
                    (features, health)
                })
                .collect();
            let views = views(&specs);
            let index = FeatureIndex::build(&views);
            let expected: Vec<u32> = (0..views.len())
                .filter(|&n| {
                    (every_health || views[n].is_healthy()) && views[n].features().is_superset(&wanted)
                })
                .map(|n| u32::try_from(n).expect("few"))
                .collect();
            prop_assert_eq!(index.matching(&views, &wanted, every_health), expected);
            prop_assert!(index.groups.len() <= MAX_GROUPS);
        }
    }

    #[test]
    fn merging_keeps_order_and_every_position() {
        assert_eq!(merge(&[]), Vec::<u32>::new());
        assert_eq!(merge(&[&[1, 4]]), vec![1, 4]);
        assert_eq!(
            merge(&[&[1, 4, 9], &[0, 5], &[2, 3, 10]]),
            vec![0, 1, 2, 3, 4, 5, 9, 10]
        );
        // Past FEW_LISTS the heap merges: the same answer.
        let many: Vec<Vec<u32>> = (0..20u32).map(|n| vec![n, n + 20, n + 40]).collect();
        let lists: Vec<&[u32]> = many.iter().map(Vec::as_slice).collect();
        assert_eq!(merge(&lists), (0..60).collect::<Vec<u32>>());
        assert_eq!(merge_few(&lists[..FEW_LISTS]).len(), 3 * FEW_LISTS);
    }

    proptest! {
        /// Both merges give every position of every list, in order.
        #[test]
        fn both_merges_agree_with_a_sort(
            lists in proptest::collection::vec(
                proptest::collection::btree_set(0u32..500, 0..40), 0..12)
        ) {
            let lists: Vec<Vec<u32>> = lists.into_iter().map(|set| set.into_iter().collect()).collect();
            let slices: Vec<&[u32]> = lists.iter().map(Vec::as_slice).collect();
            let mut expected: Vec<u32> = lists.iter().flatten().copied().collect();
            expected.sort_unstable();
            prop_assert_eq!(&merge(&slices), &expected);
            if slices.len() <= FEW_LISTS {
                prop_assert_eq!(&merge_few(&slices), &expected);
            }
        }
    }
}
