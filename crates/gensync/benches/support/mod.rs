//! What the gensync benchmarks share: their runtime, a replica on a file,
//! a store filled with records of 1 KiB, and the TLS every round runs over.

use std::path::Path;

use flotilla_core_types::DeviceId;
use flotilla_gensync::{Replica, ReplicaConfig, Secured, Storage, Transport};
use flotilla_identity::LocalCluster;
use tokio::io::{AsyncRead, AsyncWrite};

/// The runtime every benchmark runs on: two workers, as the machine has
/// two cores.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

/// A replica of device `name` on the file `name.redb` in `dir`.
pub(crate) fn replica(dir: &Path, name: &str) -> Replica {
    let storage = Storage::open(dir.join(format!("{name}.redb"))).expect("opens");
    let device = DeviceId::new(name).expect("valid id");
    Replica::open(device, storage, ReplicaConfig::default()).expect("opens")
}

/// Writes `records` (a multiple of 1,000) keys of 1 KiB values into
/// `replica`, 1,000 to a transaction.
#[allow(dead_code, reason = "not every benchmark fills a store this way")]
pub(crate) async fn fill_kib(replica: &Replica, records: usize) {
    for chunk in 0..records / 1_000 {
        let batch = (0..1_000)
            .map(|i| {
                (
                    format!("k/{chunk:04}/{i:04}").into_bytes(),
                    Some(vec![7; 1024]),
                )
            })
            .collect();
        replica.write_batch(batch).await.expect("writes");
    }
}

/// A TLS transport for each of `names`, their identities issued by a
/// cluster made for the run, so that they all trust each other.
pub(crate) fn tls_transports<const N: usize>(names: [&str; N]) -> [Transport; N] {
    let cluster = LocalCluster::new("benchmarks").expect("a cluster");
    names.map(|name| {
        let device = DeviceId::new(name).expect("valid id");
        cluster.transport(&device).expect("a TLS configuration")
    })
}

/// `near` and `far`, the two ends of one connection, secured: `dialler`
/// dials from `near`, `acceptor` accepts on `far`.
#[allow(dead_code, reason = "not every benchmark speaks over a pipe")]
pub(crate) async fn secure<A, B>(
    dialler: &Transport,
    near: A,
    acceptor: &Transport,
    far: B,
) -> (Secured<A>, Secured<B>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (dialled, accepted) = tokio::join!(dialler.connect(near, None), acceptor.accept(far));
    (
        dialled.expect("the run's devices trust each other"),
        accepted.expect("the run's devices trust each other"),
    )
}
