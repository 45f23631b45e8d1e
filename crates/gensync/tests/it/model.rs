//! A proptest model of replication: random writes and deletes on three
//! replicas, sync rounds between random pairs (in any order, repeated, some
//! blocked by partitions), garbage collection, then a healing exchange.
//! After it every replica passes its invariants and holds the same values,
//! vectors and heads; each key holds its last acknowledged write
//! (timestamps here increase with every write, so last-writer-wins must
//! pick the last one), and that write's version is known everywhere.
//! Versions a later write superseded may be collected.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_gensync::{SyncConfig, VersionId, initiate_over, respond_over};
use proptest::prelude::*;

use crate::harness::{Node, assert_converged, tls_pipe};

const REPLICAS: usize = 3;
const KEYS: [&str; 4] = ["a", "b", "c", "d/e"];

#[derive(Debug, Clone)]
enum Step {
    Write {
        on: usize,
        key: usize,
        value: u8,
    },
    Delete {
        on: usize,
        key: usize,
    },
    Sync {
        into: usize,
        from: usize,
    },
    /// Collects garbage on one replica.
    Collect {
        on: usize,
    },
    /// Cuts (true) or heals (false) the link between two replicas.
    Partition {
        between: (usize, usize),
        cut: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let replica = 0..REPLICAS;
    prop_oneof![
        4 => (replica.clone(), 0..KEYS.len(), any::<u8>()).prop_map(|(on, key, value)| Step::Write { on, key, value }),
        1 => (replica.clone(), 0..KEYS.len()).prop_map(|(on, key)| Step::Delete { on, key }),
        4 => (replica.clone(), replica.clone()).prop_filter("two replicas", |(a, b)| a != b).prop_map(|(into, from)| Step::Sync { into, from }),
        1 => (replica.clone()).prop_map(|on| Step::Collect { on }),
        1 => (replica.clone(), replica, any::<bool>()).prop_map(|(a, b, cut)| Step::Partition { between: (a.min(b), a.max(b)), cut }),
    ]
}

/// One round, `into` initiating, over an in-memory pipe.
async fn sync(into: &Node, from: &Node) {
    let (near, far) = tls_pipe(into, from).await;
    let config = SyncConfig::default();
    let (pulled, served) = tokio::join!(
        initiate_over(&into.replica, near),
        respond_over(&from.replica, far, &config)
    );
    pulled.expect("the round completes");
    served.expect("the round is served");
}

/// Which pairs of replicas may ever sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// Every pair (unless a partition cuts it for a while).
    Mesh,
    /// r0 - r1 - r2: r0 and r2 never meet, and learn of each other's
    /// vectors only through r1.
    Line,
}

impl Topology {
    fn links(self, into: usize, from: usize) -> bool {
        into != from && (self == Topology::Mesh || into.abs_diff(from) == 1)
    }
}

fn check(steps: &[Step], topology: Topology) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let nodes: Vec<Node> = (0..REPLICAS).map(|i| Node::new(&format!("r{i}"))).collect();
        let mut cut = BTreeSet::new();
        let mut clock = 10_000;
        let mut last_write: BTreeMap<&str, Option<Vec<u8>>> = BTreeMap::new();
        // Per key, the version of its last acknowledged write. (Versions a
        // later write superseded may be collected, once every replica known
        // at the time had them.)
        let mut last_version: BTreeMap<&str, VersionId> = BTreeMap::new();
        for step in steps {
            match *step {
                Step::Write { on, key, value } => {
                    clock += 1;
                    nodes[on].set_clock(clock);
                    let version = nodes[on]
                        .replica
                        .put(KEYS[key].as_bytes().to_vec(), vec![value])
                        .await
                        .expect("writes");
                    last_version.insert(KEYS[key], version);
                    last_write.insert(KEYS[key], Some(vec![value]));
                }
                Step::Delete { on, key } => {
                    clock += 1;
                    nodes[on].set_clock(clock);
                    let version = nodes[on]
                        .replica
                        .delete(KEYS[key].as_bytes().to_vec())
                        .await
                        .expect("deletes");
                    last_version.insert(KEYS[key], version);
                    last_write.insert(KEYS[key], None);
                }
                Step::Sync { into, from } => {
                    if topology.links(into, from)
                        && !cut.contains(&(into.min(from), into.max(from)))
                    {
                        sync(&nodes[into], &nodes[from]).await;
                    }
                }
                Step::Collect { on } => {
                    let hour = std::time::Duration::from_secs(3600);
                    nodes[on]
                        .replica
                        .collect_garbage(hour)
                        .await
                        .expect("collects");
                }
                Step::Partition { between, cut: true } => {
                    cut.insert(between);
                }
                Step::Partition {
                    between,
                    cut: false,
                } => {
                    cut.remove(&between);
                }
            }
        }

        // Heal: passes of every ordered pair the topology links (a line
        // needs more for a record to go end to end).
        let heal = |passes: usize| {
            let nodes = &nodes;
            async move {
                for _ in 0..passes {
                    for into in 0..REPLICAS {
                        for from in 0..REPLICAS {
                            if topology.links(into, from) {
                                sync(&nodes[into], &nodes[from]).await;
                            }
                        }
                    }
                }
            }
        };
        heal(match topology {
            Topology::Mesh => 2,
            Topology::Line => 3,
        })
        .await;
        for pair in nodes.windows(2) {
            assert_converged(&pair[0], &pair[1]);
            prop_assert_eq!(
                pair[0].replica.vector().expect("reads"),
                pair[1].replica.vector().expect("reads")
            );
        }
        for node in &nodes {
            prop_assert_eq!(node.replica.verify().expect("reads"), Ok(()));
        }
        for (key, value) in &last_write {
            prop_assert_eq!(
                &nodes[0].replica.get(key.as_bytes()).expect("reads"),
                value,
                "key {}",
                key
            );
        }
        for version in last_version.values() {
            for node in &nodes {
                prop_assert!(
                    node.replica.knows(version).expect("reads"),
                    "{:?} lost on {:?}",
                    version,
                    node.replica.device()
                );
            }
        }
        // Quiet rounds until every replica's vector, first- or second-hand,
        // has reached every other: then each collects all that every
        // replica holds, whoever it has met.
        heal(3).await;
        for node in &nodes {
            let stats = node
                .replica
                .collect_garbage(std::time::Duration::from_secs(3600))
                .await
                .expect("collects");
            prop_assert_eq!(
                stats.collected,
                node.replica.vector().expect("reads"),
                "{:?} collected less than every replica holds",
                node.replica.device()
            );
            prop_assert_eq!(node.replica.verify().expect("reads"), Ok(()));
        }
        for (key, value) in &last_write {
            for node in &nodes {
                prop_assert_eq!(
                    &node.replica.get(key.as_bytes()).expect("reads"),
                    value,
                    "key {} after collection",
                    key
                );
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge_on_the_last_writes_and_lose_none(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        check(&steps, Topology::Mesh)?;
    }

    #[test]
    fn replicas_in_a_line_converge_and_collect_through_the_middle_one(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        check(&steps, Topology::Line)?;
    }
}

/// The model again with a three-way-merge resolver, which needs the right
/// ancestor: each key holds a set of elements, a write adds a fresh element
/// or removes one the writer sees, and a conflict keeps what both sides
/// hold plus what either added since their newest common ancestor. Given
/// that ancestor, every replica ends with exactly the elements added and
/// never removed; given an older one, a removal is undone.
mod three_way {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use flotilla_gensync::{Conflict, ReplicaConfig, Resolution, Resolver};
    use proptest::prelude::*;

    use super::sync;
    use crate::harness::{Node, assert_converged};

    const REPLICAS: usize = 3;
    const KEYS: [&str; 2] = ["a", "b"];

    /// Merges sets of elements (big-endian u32s) against their ancestor.
    struct ThreeWay;

    impl Resolver for ThreeWay {
        fn resolve(&self, conflict: &Conflict) -> Resolution {
            let base = conflict
                .ancestor
                .as_ref()
                .map(|side| decode(side.value.as_deref()))
                .unwrap_or_default();
            let ours = decode(conflict.ours.value.as_deref());
            let theirs = decode(conflict.theirs.value.as_deref());
            let merged: BTreeSet<u32> = ours
                .iter()
                .chain(&theirs)
                .filter(|e| (ours.contains(e) && theirs.contains(e)) || !base.contains(e))
                .copied()
                .collect();
            Resolution::Merged(Some(encode(&merged)))
        }
    }

    fn decode(value: Option<&[u8]>) -> BTreeSet<u32> {
        value
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|chunk| u32::from_be_bytes(chunk.try_into().expect("chunks of 4")))
            .collect()
    }

    fn encode(set: &BTreeSet<u32>) -> Vec<u8> {
        set.iter().flat_map(|e| e.to_be_bytes()).collect()
    }

    #[derive(Debug, Clone)]
    enum Step {
        Add { on: usize, key: usize },
        Remove { on: usize, key: usize, pick: usize },
        Sync { into: usize, from: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        let replica = 0..REPLICAS;
        prop_oneof![
            3 => (replica.clone(), 0..KEYS.len()).prop_map(|(on, key)| Step::Add { on, key }),
            2 => (replica.clone(), 0..KEYS.len(), any::<usize>()).prop_map(|(on, key, pick)| Step::Remove { on, key, pick }),
            4 => (replica.clone(), replica).prop_filter("two replicas", |(a, b)| a != b).prop_map(|(into, from)| Step::Sync { into, from }),
        ]
    }

    fn check(steps: &[Step]) -> Result<(), TestCaseError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let nodes: Vec<Node> = (0..REPLICAS)
                .map(|i| {
                    let mut config = ReplicaConfig::default();
                    config.resolver = Arc::new(ThreeWay);
                    Node::with_config(&format!("r{i}"), config)
                })
                .collect();
            let mut next_element = 0;
            let mut added: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
            let mut removed: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
            for step in steps {
                match *step {
                    Step::Add { on, key } => {
                        let key = KEYS[key];
                        let mut set = decode(
                            nodes[on]
                                .replica
                                .get(key.as_bytes())
                                .expect("reads")
                                .as_deref(),
                        );
                        next_element += 1;
                        set.insert(next_element);
                        added.entry(key).or_default().insert(next_element);
                        nodes[on]
                            .replica
                            .put(key.as_bytes().to_vec(), encode(&set))
                            .await
                            .expect("writes");
                    }
                    Step::Remove { on, key, pick } => {
                        let key = KEYS[key];
                        let mut set = decode(
                            nodes[on]
                                .replica
                                .get(key.as_bytes())
                                .expect("reads")
                                .as_deref(),
                        );
                        let Some(&element) = set.iter().nth(pick % set.len().max(1)) else {
                            continue;
                        };
                        set.remove(&element);
                        removed.entry(key).or_default().insert(element);
                        nodes[on]
                            .replica
                            .put(key.as_bytes().to_vec(), encode(&set))
                            .await
                            .expect("writes");
                    }
                    Step::Sync { into, from } => sync(&nodes[into], &nodes[from]).await,
                }
            }
            for _ in 0..2 {
                for into in 0..REPLICAS {
                    for from in 0..REPLICAS {
                        if into != from {
                            sync(&nodes[into], &nodes[from]).await;
                        }
                    }
                }
            }
            for pair in nodes.windows(2) {
                assert_converged(&pair[0], &pair[1]);
            }
            for key in KEYS {
                let expected: BTreeSet<u32> = added
                    .get(key)
                    .cloned()
                    .unwrap_or_default()
                    .difference(&removed.get(key).cloned().unwrap_or_default())
                    .copied()
                    .collect();
                let held = decode(
                    nodes[0]
                        .replica
                        .get(key.as_bytes())
                        .expect("reads")
                        .as_deref(),
                );
                prop_assert_eq!(held, expected, "key {}", key);
            }
            for node in &nodes {
                prop_assert_eq!(node.replica.verify().expect("reads"), Ok(()));
            }
            Ok(())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn a_three_way_merge_gets_the_newest_common_ancestor_and_loses_no_edit(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            check(&steps)?;
        }
    }
}

/// A case the model found (2026-12-06): a key written on two replicas, a
/// collection on one, then a full-state round into the third.
#[test]
fn a_full_state_round_after_a_collection_finds_every_parent() {
    use Step::{Collect, Sync, Write};
    let steps = [
        Write {
            on: 0,
            key: 3,
            value: 0,
        },
        Write {
            on: 0,
            key: 0,
            value: 0,
        },
        Sync { into: 1, from: 0 },
        Write {
            on: 0,
            key: 3,
            value: 0,
        },
        Write {
            on: 1,
            key: 3,
            value: 0,
        },
        Sync { into: 0, from: 1 },
        Sync { into: 0, from: 1 },
        Write {
            on: 1,
            key: 3,
            value: 0,
        },
        Collect { on: 1 },
        Sync { into: 2, from: 1 },
    ];
    check(&steps, Topology::Mesh).expect("the model holds");
}
