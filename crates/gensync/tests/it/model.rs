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

use crate::harness::{Node, assert_converged};

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
    let (near, far) = tokio::io::duplex(64 * 1024);
    let config = SyncConfig::default();
    let (pulled, served) = tokio::join!(
        initiate_over(&into.replica, near),
        respond_over(&from.replica, far, &config)
    );
    pulled.expect("the round completes");
    served.expect("the round is served");
}

fn check(steps: &[Step]) -> Result<(), TestCaseError> {
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
                    if !cut.contains(&(into.min(from), into.max(from))) {
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

        // Heal: two passes of every ordered pair.
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
        check(&steps)?;
    }
}
