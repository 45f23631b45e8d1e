//! A replica's life under a supervisor: its store is closed when `wait`
//! returns, so it can be opened again at once; opening is offered in async
//! forms; errors name the store's file.

use flotilla_core_types::Worker;
use flotilla_gensync::{Error, Replica, ReplicaConfig, Storage, SyncConfig};

use crate::harness::{device, transport};

fn open_file(path: &std::path::Path, name: &str) -> Replica {
    let storage = Storage::open(path).expect("opens");
    Replica::open(device(name), storage, ReplicaConfig::default()).expect("opens")
}

#[tokio::test]
async fn after_wait_the_file_opens_again_at_once_and_old_clones_get_closed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("a.redb");
    let replica = open_file(&path, "a");
    replica
        .put(b"k".to_vec(), b"v".to_vec())
        .await
        .expect("writes");
    let clone = replica.clone();
    // A responder holds a clone too, and is left running.
    let address = "127.0.0.1:0".parse().expect("an address");
    let responder = flotilla_gensync::Responder::bind(
        clone.clone(),
        transport("a"),
        address,
        SyncConfig::default(),
    )
    .await
    .expect("binds");

    replica.kill();
    replica.wait().await.expect("ends cleanly");

    let again = open_file(&path, "a");
    assert_eq!(again.get(b"k").expect("reads"), Some(b"v".to_vec()));
    assert!(matches!(clone.get(b"k"), Err(Error::Closed)));
    assert!(matches!(clone.vector(), Err(Error::Closed)));
    assert!(matches!(
        clone.put(b"k".to_vec(), b"w".to_vec()).await,
        Err(Error::Closed)
    ));
    // A second wait returns at once, the same.
    clone.wait().await.expect("ends cleanly");
    responder.kill();
    responder.wait().await.expect("clean stop");
    again.kill();
    again.wait().await.expect("ends cleanly");
}

#[tokio::test]
async fn an_open_of_a_locked_file_names_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("locked.redb");
    let _first = Storage::open(&path).expect("opens");
    let error = Storage::open(&path).expect_err("locked");
    let Error::Locked { path: named } = &error else {
        panic!("expected Error::Locked, got {error:?}");
    };
    assert_eq!(&**named, path.as_path());
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn a_store_written_by_another_device_is_refused_naming_both_ids_and_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("laptop.redb");
    let laptop = open_file(&path, "laptop");
    laptop
        .put(b"k".to_vec(), b"v".to_vec())
        .await
        .expect("writes");
    laptop.kill();
    laptop.wait().await.expect("ends cleanly");

    let storage = Storage::open(&path).expect("opens");
    let error = Replica::open(device("phone"), storage, ReplicaConfig::default())
        .expect_err("another device's store");
    let Error::ForeignStore {
        path: Some(named),
        stored,
        opened_as,
    } = &error
    else {
        panic!("expected Error::ForeignStore, got {error:?}");
    };
    assert_eq!(
        (&**named, stored, opened_as),
        (path.as_path(), &device("laptop"), &device("phone"))
    );
    let message = error.to_string();
    for part in ["laptop", "phone", &path.display().to_string()] {
        assert!(message.contains(part), "{message} names {part}");
    }
    // Nothing was changed: the owner opens it as before.
    let laptop = open_file(&path, "laptop");
    assert_eq!(laptop.get(b"k").expect("reads"), Some(b"v".to_vec()));
}

/// On a current-thread runtime, as a supervisor's start function runs: the
/// async forms do their file work on the blocking pool.
#[tokio::test(flavor = "current_thread")]
async fn the_async_opens_open_and_fail_as_the_blocking_ones_do() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("async.redb");
    let storage = Storage::open_async(&path).await.expect("opens");
    assert_eq!(storage.path(), Some(path.as_path()));
    let replica = Replica::open_async(device("a"), storage, ReplicaConfig::default())
        .await
        .expect("opens");
    replica
        .put(b"k".to_vec(), b"v".to_vec())
        .await
        .expect("writes");

    let locked = Storage::open_with_cache_async(&path, 1024 * 1024)
        .await
        .expect_err("locked");
    assert!(matches!(locked, Error::Locked { .. }), "{locked:?}");

    replica.kill();
    replica.wait().await.expect("ends cleanly");
    let storage = Storage::open_with_cache_async(&path, 1024 * 1024)
        .await
        .expect("free again");
    let foreign = Replica::open_async(device("b"), storage, ReplicaConfig::default())
        .await
        .expect_err("a's store");
    assert!(matches!(foreign, Error::ForeignStore { .. }), "{foreign:?}");
}

/// What a supervisor's start function looks like: `?` on ids and on this
/// crate's errors, into the error a worker ends with.
#[tokio::test]
async fn errors_convert_with_question_marks_into_worker_errors() {
    use flotilla_core_types::{DeviceId, WorkerError};

    fn device_of(name: &str) -> Result<DeviceId, Error> {
        Ok(DeviceId::new(name)?)
    }
    async fn start(path: std::path::PathBuf) -> Result<Replica, WorkerError> {
        let device = device_of("a")?;
        let storage = Storage::open_async(path).await?;
        Ok(Replica::open_async(device, storage, ReplicaConfig::default()).await?)
    }

    let invalid = device_of("no spaces allowed").expect_err("invalid");
    assert!(matches!(invalid, Error::InvalidId(_)), "{invalid:?}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("start.redb");
    let replica = start(path.clone()).await.expect("starts");
    let failed = start(path).await.expect_err("the file is locked");
    assert!(
        matches!(failed.downcast_ref::<Error>(), Some(Error::Locked { .. })),
        "{failed:?}"
    );
    replica.kill();
    replica.wait().await.expect("ends cleanly");

    fn decode_in_a_worker(bytes: &[u8]) -> Result<flotilla_gensync::wire::Message, WorkerError> {
        Ok(flotilla_gensync::wire::decode(bytes)?)
    }
    let garbage = decode_in_a_worker(&[0xff, 0xff]).expect_err("not a message");
    assert!(
        garbage
            .downcast_ref::<flotilla_gensync::wire::WireError>()
            .is_some(),
        "{garbage:?}"
    );
}
