//! Crash safety: a child process (this test binary, re-run as
//! `crash::crashing_child`) writes to two durable replicas and syncs them
//! with each other, and is SIGKILLed at a random moment, five times over the
//! same files. After each kill both stores reopen, pass their invariants,
//! hold every write the child reported as acknowledged, and sync again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flotilla_gensync::{Replica, ReplicaConfig, Storage, SyncConfig, initiate_over, respond_over};

use crate::harness::{device, pipe, transport};

/// Set in the child's environment to the directory of its stores.
const CHILD_DIR: &str = "FLOTILLA_GENSYNC_CRASH_DIR";
const NAMES: [&str; 2] = ["a", "b"];
/// Writes per replica per step: enough that a round spans several of the
/// transactions a round is written in, so kills land inside rounds too.
const WRITES_PER_STEP: usize = 700;

fn open(dir: &Path, name: &str) -> Replica {
    let storage = Storage::open(dir.join(format!("{name}.redb"))).expect("opens");
    let mut config = ReplicaConfig::default();
    config.max_generation_records = 50;
    Replica::open(device(name), storage, config).expect("opens")
}

async fn sync(into: &Replica, from: &Replica) {
    let (near, far) = pipe(
        &transport(into.device().as_str()),
        &transport(from.device().as_str()),
        64 * 1024,
    )
    .await;
    let config = SyncConfig::default();
    let (pulled, served) =
        tokio::join!(initiate_over(into, near), respond_over(from, far, &config));
    pulled.expect("the round completes");
    served.expect("the round is served");
}

/// In the parent, a short honest run of what the child does; in the child
/// (with `CHILD_DIR` set), writes and syncs until killed, printing
/// `ack <store> <key>` for every write that returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_child() {
    let temporary;
    let (dir, forever) = match std::env::var_os(CHILD_DIR) {
        Some(dir) => (PathBuf::from(dir), true),
        None => {
            temporary = tempfile::tempdir().expect("a directory");
            (temporary.path().to_path_buf(), false)
        }
    };
    let replicas = [open(&dir, NAMES[0]), open(&dir, NAMES[1])];
    let start = replicas[0].log_len().expect("reads") + replicas[1].log_len().expect("reads");
    for round in start.. {
        if !forever && round > start + 20 {
            break;
        }
        for (index, replica) in replicas.iter().enumerate() {
            let key = format!("{}-{round}", NAMES[index]);
            let batch = (0..WRITES_PER_STEP)
                .map(|i| (format!("{key}-{i}").into_bytes(), Some(vec![7; 100])))
                .collect();
            replica.write_batch(batch).await.expect("writes");
            println!("ack {index} {key}");
        }
        sync(&replicas[0], &replicas[1]).await;
        sync(&replicas[1], &replicas[0]).await;
    }
    for replica in &replicas {
        assert_eq!(replica.verify().expect("reads"), Ok(()));
    }
    assert_eq!(
        replicas[0].scan(b"").expect("scans"),
        replicas[1].scan(b"").expect("scans")
    );
}

#[test]
fn killed_at_random_moments_the_stores_reopen_whole_and_sync_on() {
    let dir = tempfile::tempdir().expect("a directory");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut acknowledged: Vec<(usize, String)> = Vec::new();
    for run in 0..5 {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "crash::crashing_child",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the child starts");
        let stdout = child.stdout.take().expect("piped");
        let (lines, acks) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledged write (libtest prints a header
        // first), then kill at a random moment after it.
        let first = loop {
            let line = acks
                .recv_timeout(Duration::from_secs(60))
                .expect("the child makes progress");
            if line.starts_with("ack ") {
                break line;
            }
        };
        std::thread::sleep(Duration::from_millis(fastrand::u64(20..400)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("the reader ends with the pipe");
        for line in std::iter::once(first).chain(acks.try_iter()) {
            let mut words = line.split_whitespace();
            if let (Some("ack"), Some(store), Some(key)) =
                (words.next(), words.next(), words.next())
            {
                acknowledged.push((store.parse().expect("a store index"), key.to_owned()));
            }
        }

        runtime.block_on(async {
            let replicas = [open(dir.path(), NAMES[0]), open(dir.path(), NAMES[1])];
            for replica in &replicas {
                assert_eq!(replica.verify().expect("reads"), Ok(()), "run {run}");
            }
            for (store, key) in &acknowledged {
                for i in 0..WRITES_PER_STEP {
                    let key = format!("{key}-{i}");
                    assert!(
                        replicas[*store]
                            .get(key.as_bytes())
                            .expect("reads")
                            .is_some(),
                        "run {run}: acknowledged {key} lost on {store}"
                    );
                }
            }
            sync(&replicas[0], &replicas[1]).await;
            sync(&replicas[1], &replicas[0]).await;
            assert_eq!(
                replicas[0].scan(b"").expect("scans"),
                replicas[1].scan(b"").expect("scans")
            );
        });
    }
    assert!(
        acknowledged.len() >= 5,
        "the child acknowledged writes in every run"
    );
}
