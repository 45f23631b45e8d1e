//! Replicas and responders for tests, every one of them speaking TLS
//! under an identity a test cluster CA issued, so that any two trust each
//! other (as nodes of one cluster do).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use flotilla_core_types::{DeviceId, Worker};
use flotilla_gensync::{
    Identity, Replica, ReplicaConfig, Responder, Secured, Storage, SyncConfig, Transport, Trust,
};
use flotilla_identity::LocalCluster;
use tokio::io::DuplexStream;

pub(crate) fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("test device ids are valid")
}

fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| LocalCluster::new("gensync tests").expect("a test cluster"))
}

/// An identity for `name` the test cluster issued.
pub(crate) fn identity(name: &str) -> Identity {
    cluster().identity(&device(name)).expect("issues")
}

/// An identity for `device` the test cluster CA issued, valid over `valid`.
pub(crate) fn issue(device: &DeviceId, valid: std::ops::Range<SystemTime>) -> Identity {
    cluster().ca().issue(device, valid).expect("issues")
}

/// The trust of every test node: the test cluster's CA.
pub(crate) fn cluster_trust() -> Arc<Trust> {
    cluster().trust()
}

/// TLS as `name`, trusting every device of the test cluster.
pub(crate) fn transport(name: &str) -> Transport {
    cluster()
        .transport(&device(name))
        .expect("a TLS configuration")
}

/// An in-memory pipe of `capacity` bytes from `dialler` (the initiator's
/// end, first) to `acceptor`, secured by each side's transport.
pub(crate) async fn pipe(
    dialler: &Transport,
    acceptor: &Transport,
    capacity: usize,
) -> (Secured<DuplexStream>, Secured<DuplexStream>) {
    let (near, far) = tokio::io::duplex(capacity);
    let (dialled, accepted) = tokio::join!(dialler.connect(near, None), acceptor.accept(far));
    (
        dialled.expect("the test cluster's devices trust each other"),
        accepted.expect("the test cluster's devices trust each other"),
    )
}

/// An in-memory pipe from `into` (the initiator's end, first) to `from`,
/// secured by TLS between the two.
pub(crate) async fn tls_pipe(
    into: &Node,
    from: &Node,
) -> (Secured<DuplexStream>, Secured<DuplexStream>) {
    pipe(&into.transport, &from.transport, 64 * 1024).await
}

/// A replica in memory whose clock is a counter the test controls.
pub(crate) struct Node {
    pub(crate) replica: Replica,
    pub(crate) clock: Arc<AtomicU64>,
    pub(crate) transport: Transport,
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
        Node {
            replica,
            clock,
            transport: transport(name),
        }
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

    /// One round with the responder at `address`, this node initiating.
    pub(crate) async fn pull_from(
        &self,
        address: SocketAddr,
    ) -> Result<flotilla_gensync::RoundStats, flotilla_gensync::Error> {
        flotilla_gensync::sync_with(
            &self.replica,
            &self.transport,
            address,
            &SyncConfig::default(),
        )
        .await
    }

    pub(crate) async fn serve(&self) -> Responder {
        self.serve_with(SyncConfig::default()).await
    }

    /// A responder of this node on a loopback port, under `config`.
    pub(crate) async fn serve_with(&self, config: SyncConfig) -> Responder {
        let address: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Responder::bind(
            self.replica.clone(),
            self.transport.clone(),
            address,
            config,
        )
        .await
        .expect("binds")
    }
}

/// Syncs `from` into `into` (one round, `into` initiating).
pub(crate) async fn pull(into: &Node, from: &Responder) -> flotilla_gensync::RoundStats {
    into.pull_from(from.local_addr())
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
