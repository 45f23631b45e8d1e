//! Replicas and responders for tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_core_types::{DeviceId, Worker};
use flotilla_gensync::{Replica, ReplicaConfig, Responder, Storage, SyncConfig};

pub(crate) fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("test device ids are valid")
}

/// A replica in memory whose clock is a counter the test controls.
pub(crate) struct Node {
    pub(crate) replica: Replica,
    pub(crate) clock: Arc<AtomicU64>,
}

impl Node {
    pub(crate) fn new(name: &str) -> Node {
        Node::with_config(name, ReplicaConfig::default())
    }

    pub(crate) fn with_config(name: &str, mut config: ReplicaConfig) -> Node {
        let clock = Arc::new(AtomicU64::new(1_000));
        let ticks = Arc::clone(&clock);
        config.clock = Arc::new(move || ticks.load(Ordering::SeqCst));
        let storage = Storage::in_memory().expect("an in-memory store");
        let replica = Replica::open(device(name), storage, config).expect("opens");
        Node { replica, clock }
    }

    pub(crate) fn set_clock(&self, ms: u64) {
        self.clock.store(ms, Ordering::SeqCst);
    }

    pub(crate) async fn put(&self, key: &str, value: &str) {
        self.replica
            .put(key.as_bytes().to_vec(), value.as_bytes().to_vec())
            .await
            .expect("writes");
    }

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.replica
            .get(key.as_bytes())
            .expect("reads")
            .map(|value| String::from_utf8(value).expect("test values are text"))
    }

    pub(crate) async fn serve(&self) -> Responder {
        let address: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Responder::bind(self.replica.clone(), address, SyncConfig::default())
            .await
            .expect("binds")
    }
}

/// Syncs `from` into `into` (one round, `into` initiating).
pub(crate) async fn pull(into: &Node, from: &Responder) -> flotilla_gensync::RoundStats {
    flotilla_gensync::sync_with(&into.replica, from.local_addr(), &SyncConfig::default())
        .await
        .expect("the round completes")
}

pub(crate) async fn stop(responder: Responder) {
    responder.kill();
    responder.wait().await.expect("clean stop");
}

/// Everything two replicas must agree on once converged.
pub(crate) fn assert_converged(a: &Node, b: &Node) {
    let (ra, rb) = (&a.replica, &b.replica);
    assert_eq!(
        ra.scan(b"").expect("scans"),
        rb.scan(b"").expect("scans"),
        "values"
    );
    assert_eq!(
        ra.heads().expect("heads"),
        rb.heads().expect("heads"),
        "heads"
    );
}
