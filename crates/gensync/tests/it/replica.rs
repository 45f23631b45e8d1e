//! One replica on its own: reads, writes, the log, generations, watch and
//! durability across a reopen.

use flotilla_gensync::{
    Error, MAX_KEY_LEN, MAX_VALUE_LEN, Origin, Replica, ReplicaConfig, Storage,
};

use crate::harness::{Node, device};

#[tokio::test]
async fn put_get_delete_and_scan() {
    let node = Node::new("a");
    node.put("fruit/apple", "red").await;
    node.put("fruit/banana", "yellow").await;
    node.put("veg/leek", "green").await;
    node.put("fruit/apple", "green").await;
    assert_eq!(node.get("fruit/apple").as_deref(), Some("green"));
    node.replica
        .delete(b"fruit/banana".to_vec())
        .await
        .expect("deletes");
    assert_eq!(node.get("fruit/banana"), None);
    let fruit = node.replica.scan(b"fruit/").expect("scans");
    assert_eq!(fruit, [(b"fruit/apple".to_vec(), b"green".to_vec())]);
    assert_eq!(node.replica.scan(b"").expect("scans").len(), 2);
    assert_eq!(
        node.replica.log_len().expect("reads"),
        5,
        "every mutation is a record"
    );
}

#[tokio::test]
async fn each_write_replaces_the_previous_version() {
    let node = Node::new("a");
    let first = node
        .replica
        .put(b"k".to_vec(), b"1".to_vec())
        .await
        .expect("writes");
    let second = node
        .replica
        .put(b"k".to_vec(), b"2".to_vec())
        .await
        .expect("writes");
    assert_ne!(first, second);
    assert_eq!(node.replica.head(b"k").expect("reads"), Some(second));
    let deleted = node.replica.delete(b"k".to_vec()).await.expect("deletes");
    assert_eq!(
        node.replica.head(b"k").expect("reads"),
        Some(deleted),
        "a tombstone is a version"
    );
}

#[tokio::test]
async fn oversized_keys_and_values_are_refused_and_nothing_is_written() {
    let node = Node::new("a");
    let key = vec![b'k'; MAX_KEY_LEN + 1];
    let refused = node.replica.put(key, b"v".to_vec()).await;
    assert!(matches!(refused, Err(Error::TooLarge { what: "key", .. })));
    let value = vec![0; MAX_VALUE_LEN + 1];
    let batch = vec![
        (b"ok".to_vec(), Some(b"v".to_vec())),
        (b"big".to_vec(), Some(value)),
    ];
    let refused = node.replica.write_batch(batch).await;
    assert!(matches!(
        refused,
        Err(Error::TooLarge { what: "value", .. })
    ));
    assert_eq!(
        node.replica.log_len().expect("reads"),
        0,
        "the whole batch was refused"
    );
}

#[tokio::test]
async fn watchers_see_local_changes() {
    let node = Node::new("a");
    let mut changes = node.replica.watch();
    node.put("k", "v").await;
    let change = changes.recv().await.expect("a change");
    assert_eq!(
        (change.key.as_slice(), change.value.as_deref()),
        (&b"k"[..], Some(&b"v"[..]))
    );
    assert_eq!(change.origin, Origin::Local);
}

#[tokio::test]
async fn a_generation_is_sealed_when_it_is_full() {
    let mut config = ReplicaConfig::default();
    config.max_generation_records = 3;
    let node = Node::with_config("a", config);
    for i in 0..7 {
        node.put(&format!("k{i}"), "v").await;
    }
    assert_eq!(
        node.replica.vector().expect("reads").get(&device("a")),
        2,
        "two full generations"
    );
}

#[tokio::test]
async fn a_reopened_store_has_every_committed_write() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("replica.redb");
    {
        let storage = Storage::open(&path).expect("creates");
        let replica = Replica::open(device("a"), storage, ReplicaConfig::default()).expect("opens");
        let batch = (0..100)
            .map(|i| (format!("k{i}").into_bytes(), Some(b"v".to_vec())))
            .collect();
        replica.write_batch(batch).await.expect("writes");
        replica
            .put(b"last".to_vec(), b"word".to_vec())
            .await
            .expect("writes");
    }
    let storage = Storage::open(&path).expect("reopens");
    let replica = Replica::open(device("a"), storage, ReplicaConfig::default()).expect("opens");
    assert_eq!(replica.scan(b"").expect("scans").len(), 101);
    assert_eq!(replica.get(b"last").expect("reads"), Some(b"word".to_vec()));
    assert_eq!(replica.log_len().expect("reads"), 101);
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("garbage");
    std::fs::write(&path, vec![0xAB; 10_000]).expect("writes");
    let error = Storage::open(&path).expect_err("not a store");
    assert!(matches!(error, Error::Storage { .. }), "{error:?}");
    assert!(
        error.to_string().contains("garbage"),
        "names the file: {error}"
    );
}

#[tokio::test]
async fn a_killed_replica_refuses_writes_and_syncs_but_still_reads_until_waited_for() {
    use flotilla_core_types::Worker;
    let node = Node::new("a");
    node.put("k", "v").await;
    node.replica.kill();
    assert!(matches!(
        node.replica.put(b"k".to_vec(), b"w".to_vec()).await,
        Err(Error::Closed)
    ));
    let hour = std::time::Duration::from_secs(3600);
    assert!(matches!(
        node.replica.collect_garbage(hour).await,
        Err(Error::Closed)
    ));
    assert_eq!(node.get("k").as_deref(), Some("v"));
    let other = Node::new("b");
    let responder = other.serve().await;
    let refused = flotilla_gensync::sync_with(
        &node.replica,
        &node.transport,
        responder.local_addr(),
        &Default::default(),
    )
    .await;
    assert!(matches!(refused, Err(Error::Closed)));
    crate::harness::stop(responder).await;
    node.replica.wait().await.expect("ends cleanly");
    assert!(matches!(node.replica.get(b"k"), Err(Error::Closed)));
}
