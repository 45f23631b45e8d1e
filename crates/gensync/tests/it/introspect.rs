//! Introspection: a key's history (why a conflict resolved as it did) and
//! the device table (what is known of each peer).

use flotilla_gensync::{VersionId, VersionInfo};

use crate::harness::{Node, device, pull, stop};
use crate::hostile::vector;

/// What a test compares of a [`VersionInfo`]: version, parents, value,
/// writer, timestamp, logged by, head.
type Seen = (
    VersionId,
    Vec<VersionId>,
    Option<String>,
    String,
    u64,
    String,
    bool,
);

fn seen(history: Vec<VersionInfo>) -> Vec<Seen> {
    history
        .into_iter()
        .map(|info| {
            (
                info.version,
                info.parents,
                info.value
                    .map(|value| String::from_utf8(value).expect("test values are text")),
                info.writer.to_string(),
                info.timestamp_ms,
                info.logged_by.to_string(),
                info.is_head,
            )
        })
        .collect()
}

#[tokio::test]
async fn history_shows_both_sides_of_a_conflict_their_ancestor_and_the_merge() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let serve_a = a.serve().await;
    a.set_clock(5_000);
    let first = a
        .replica
        .put(b"k".to_vec(), b"1".to_vec())
        .await
        .expect("writes");
    pull(&b, &serve_a).await;
    a.set_clock(6_000);
    let theirs = a
        .replica
        .put(b"k".to_vec(), b"a's".to_vec())
        .await
        .expect("writes");
    b.set_clock(7_000);
    let ours = b
        .replica
        .put(b"k".to_vec(), b"b's".to_vec())
        .await
        .expect("writes");
    assert_eq!(pull(&b, &serve_a).await.conflicts, 1);

    let merge = b.replica.head(b"k").expect("reads").expect("a head");
    let mut merged_parents = vec![ours, theirs];
    merged_parents.sort();
    let text = |value: &str| Some(value.to_string());
    assert_eq!(
        seen(b.replica.history(b"k").expect("reads")),
        [
            (
                first,
                vec![],
                text("1"),
                "a".into(),
                5_000,
                "a".into(),
                false
            ),
            (
                ours,
                vec![first],
                text("b's"),
                "b".into(),
                7_000,
                "b".into(),
                false
            ),
            (
                theirs,
                vec![first],
                text("a's"),
                "a".into(),
                6_000,
                "a".into(),
                false
            ),
            // The later write won, and the merge says whose it was.
            (
                merge,
                merged_parents,
                text("b's"),
                "b".into(),
                7_000,
                "b".into(),
                true
            ),
        ]
    );
    assert_eq!(
        seen(a.replica.history(b"k").expect("reads")),
        [
            (
                first,
                vec![],
                text("1"),
                "a".into(),
                5_000,
                "a".into(),
                false
            ),
            (
                theirs,
                vec![first],
                text("a's"),
                "a".into(),
                6_000,
                "a".into(),
                true
            ),
        ],
        "the responder has not seen the conflict"
    );
    assert_eq!(b.replica.history(b"never").expect("reads"), []);
    stop(serve_a).await;
}

#[tokio::test]
async fn the_device_table_shows_each_peer_s_vector_and_when_it_was_heard_of() {
    let (a, b, c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    assert_eq!(a.replica.devices().expect("reads"), []);
    a.put("k", "v").await;
    c.put("j", "w").await;
    let (serve_a, serve_c) = (a.serve().await, c.serve().await);

    a.set_clock(5_000);
    b.set_clock(4_000);
    pull(&b, &serve_a).await;
    let table = |node: &Node| -> Vec<(String, flotilla_gensync::GenVector, u64)> {
        node.replica
            .devices()
            .expect("reads")
            .into_iter()
            .map(|info| (info.device.to_string(), info.vector, info.last_heard_ms))
            .collect()
    };
    // The initiator learns the responder's vector from `Done`, the
    // responder the initiator's from `GetDeltas`.
    assert_eq!(table(&b), [("a".into(), vector(&[("a", 1)]), 4_000)]);
    assert_eq!(table(&a), [("b".into(), vector(&[]), 5_000)]);

    // a learns c's records from c; b then hears of c through a only, and
    // a relays the vector it heard from c (at 6,000 by a's clock; b has
    // heard of c as an author at 8,000 by its own).
    a.set_clock(6_000);
    pull(&a, &serve_c).await;
    b.set_clock(8_000);
    pull(&b, &serve_a).await;
    assert_eq!(
        table(&b),
        [
            ("a".into(), vector(&[("a", 1), ("c", 1)]), 8_000),
            ("c".into(), vector(&[("c", 1)]), 8_000),
        ]
    );
    assert_eq!(
        table(&a),
        [
            ("b".into(), vector(&[("a", 1)]), 6_000),
            ("c".into(), vector(&[("c", 1)]), 6_000),
        ]
    );
    assert!(
        b.replica
            .devices()
            .expect("reads")
            .iter()
            .all(|info| info.device != device("b")),
        "a replica is not in its own table"
    );
    stop(serve_a).await;
    stop(serve_c).await;
}
