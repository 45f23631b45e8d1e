//! The ancestor a resolver is given: the newest version both sides of a
//! conflict descend from, whatever the version ids and the order of a
//! merge's parents.

use std::sync::{Arc, Mutex};

use flotilla_gensync::wire::Message;
use flotilla_gensync::{
    Conflict, ReplicaConfig, Resolution, Resolver, SyncConfig, VersionId, sync_with,
};

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
        sync_with(&node.replica, address, &SyncConfig::default())
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
        let stats = sync_with(&node.replica, address, &SyncConfig::default())
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
