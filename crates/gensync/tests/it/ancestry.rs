//! The ancestor a resolver is given: the newest version both sides of a
//! conflict descend from, whatever the version ids and the order of a
//! merge's parents.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_gensync::wire::Message;
use flotilla_gensync::{Conflict, ReplicaConfig, Resolution, Resolver, VersionId};

use crate::harness::Node;
use crate::hostile::{record, scripted, vector};

/// Keeps our side, and notes the ancestor of every conflict it settles.
#[derive(Default, Clone)]
struct Recording {
    ancestors: Arc<Mutex<Vec<Option<VersionId>>>>,
}

impl Resolver for Recording {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        let ancestor = conflict.ancestor.as_ref().map(|side| side.version);
        self.ancestors
            .lock()
            .expect("no test thread panics holding it")
            .push(ancestor);
        Resolution::Ours
    }
}

/// O, then N replacing it, both from device x; we write `a` on N. Then a
/// peer's device sends `q` (branched from O), `p` (on N) and `b`, their
/// merge, with `q` first among its parents. The newest version that `a`
/// and `b` both descend from is N; a walk back from `a`'s side that stops
/// at the first version shared finds O first when the ids order the sides
/// one way. Several device names, so that both orders occur.
#[tokio::test]
async fn the_resolver_gets_the_newest_common_ancestor_whatever_the_ids() {
    for name in ["y", "y2", "y3", "y4", "y5", "y6"] {
        let resolver = Recording::default();
        let mut config = ReplicaConfig::default();
        config.resolver = Arc::new(resolver.clone());
        let node = Node::with_config("me", config);

        let old = record("x", 1, 1, "k", vec![]);
        let newer = record("x", 1, 2, "k", vec![old.version]);
        let (address, _peer) = scripted(
            "x",
            vec![
                Message::Record(old.clone()),
                Message::Record(newer.clone()),
                Message::Done {
                    vector: vector(&[("x", 1)]),
                },
            ],
        )
        .await;
        node.pull_from(address)
            .await
            .expect("the first round completes");
        node.put("k", "ours").await;

        let branch = record(name, 1, 1, "k", vec![old.version]);
        let on_newer = record(name, 1, 2, "k", vec![newer.version]);
        let merge = record(name, 1, 3, "k", vec![branch.version, on_newer.version]);
        let (address, _peer) = scripted(
            name,
            vec![
                Message::Record(branch),
                Message::Record(on_newer),
                Message::Record(merge),
                Message::Done {
                    vector: vector(&[("x", 1), (name, 1)]),
                },
            ],
        )
        .await;
        let stats = node
            .pull_from(address)
            .await
            .expect("the second round completes");
        assert_eq!(stats.conflicts, 1, "{name}");
        let ancestors = resolver
            .ancestors
            .lock()
            .expect("no test thread panics holding it")
            .clone();
        assert_eq!(ancestors, [Some(newer.version)], "peer {name}");
    }
}

/// Counts the conflicts it settles, keeping our side; past `limit` it
/// panics, which ends the round and the test.
struct Counting {
    calls: Arc<AtomicUsize>,
    limit: usize,
}

impl Resolver for Counting {
    fn resolve(&self, _: &Conflict) -> Resolution {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(calls <= self.limit, "the resolver was called {calls} times");
        Resolution::Ours
    }
}

/// A lattice of criss-cross merges: a root, then `LEVELS` levels of
/// `width` versions, each with the whole level below as parents. Every
/// level has the level below as its newest common ancestors, so a merge
/// base that merged those recursively, each pair against its own base,
/// without remembering any, would make `width - 1` times as many calls at
/// each level as at the one above: billions, in one write transaction.
/// Settling one key may call the resolver 64 times to make virtual
/// ancestors, and `width - 1` times to fold its frontier.
#[tokio::test]
async fn a_lattice_of_criss_cross_merges_costs_a_bounded_number_of_resolutions() {
    const LEVELS: u64 = 40;
    for width in [3, 4] {
        let messages = lattice(LEVELS, width);
        let mut heads = Vec::new();
        for name in ["me", "you"] {
            let calls = Arc::new(AtomicUsize::new(0));
            let mut config = ReplicaConfig::default();
            config.resolver = Arc::new(Counting {
                calls: Arc::clone(&calls),
                limit: 10_000,
            });
            let node = Node::with_config(name, config);
            let (address, _peer) = scripted("x", messages.clone()).await;
            let stats = node.pull_from(address).await.expect("the round completes");
            assert_eq!(stats.conflicts, 1, "the top level conflicts");
            let calls = calls.load(Ordering::SeqCst);
            assert!(
                calls <= width - 1 + 64,
                "width {width}: {calls} resolutions"
            );
            assert_eq!(node.replica.verify().expect("reads"), Ok(()));
            heads.push(node.replica.heads().expect("reads"));
        }
        assert_eq!(heads[0], heads[1], "every replica makes the same merge");
    }
}

/// The messages of a round that sends the lattice, from device x.
fn lattice(levels: u64, width: usize) -> Vec<Message> {
    let root = record("x", 1, 1, "k", vec![]);
    let mut messages = vec![Message::Record(root.clone())];
    let mut below = vec![root.version];
    let mut sequence = 1;
    for _ in 0..levels {
        let mut level = Vec::new();
        for _ in 0..width {
            sequence += 1;
            let merge = record("x", 1, sequence, "k", below.clone());
            level.push(merge.version);
            messages.push(Message::Record(merge));
        }
        below = level;
    }
    messages.push(Message::Done {
        vector: vector(&[("x", 1)]),
    });
    messages
}
