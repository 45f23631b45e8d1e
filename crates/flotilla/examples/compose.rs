//! A user's first program: the crates composed.
//!
//! An engine supervises four workers wired through typed resources: an
//! embedded mount table, a gensync replica on a file, the replica's sync
//! responder on a loopback port, and a publisher that advertises the
//! responder under a name. A second replica, outside the engine, finds the
//! responder by that name and syncs over TLS: each device has an identity
//! (the engine's is kept in its data directory), and each trusts the
//! other's key. Then the replica is bounced (its file
//! opens again at once, and the responder and publisher follow it), and
//! the engine stops, dependents first.
//!
//! Run with `cargo run -p flotilla --features full --example compose`
//! (`RUST_LOG=info` shows the engine at work). CI runs it too.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use flotilla::core_types::{DeviceId, Endpoint, Name, Worker};
use flotilla::depengine::{Engine, EngineConfig, Input, Manifold, Started};
use flotilla::gensync::{Replica, ReplicaConfig, Responder, Storage, SyncConfig, sync_with};
use flotilla::identity::{Identity, Transport, Trust};
use flotilla::publisher::{MountTable, Namespace, Publisher, PublisherConfig};

/// The typed keys of the graph: each names a manifold and what it offers.
const TABLE: Input<MountTable> = Input::new("table");
const REPLICA: Input<Replica> = Input::new("replica");
const RESPONDER: Input<SocketAddr> = Input::new("responder");
const PUBLISHER: Input<Publisher> = Input::new("publisher");

/// The name the responder is published under.
const SERVICE: &str = "demo/sync";

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let data = tempfile::tempdir().context("a data directory")?;
    let store = data.path().join("replica.redb");

    // Two devices, each with an identity, trusting each other's key.
    let engine_key =
        Identity::load_or_create(&data.path().join("identity"), &DeviceId::new("engine")?)?;
    let visitor_key = Identity::generate(&DeviceId::new("visitor")?)?;
    let trust = Arc::new(Trust::of([&engine_key, &visitor_key]));
    let ours_transport = Transport::tls(&engine_key, Arc::clone(&trust))?;
    let visiting = Transport::tls(&visitor_key, trust)?;

    let engine = Engine::start(EngineConfig::default())?;
    engine
        .install_group([
            table(),
            replica(store.clone()),
            responder(ours_transport),
            publisher(),
        ])
        .await?;

    // The publisher says when the responder's address is mounted: no
    // polling of the table.
    let publisher = engine.wait_for_resource(&PUBLISHER).await?;
    publisher.wait_all_mounted().await?;
    let table = engine.wait_for_resource(&TABLE).await?;
    let ours = engine.wait_for_resource(&REPLICA).await?;
    ours.put(b"greeting".to_vec(), b"hello from the engine".to_vec())
        .await?;
    println!(
        "1. the engine runs a replica, its responder, and a publisher:\n\n{}",
        engine.report().await?
    );

    // Another device finds the responder by name and syncs.
    let theirs = Replica::open(
        DeviceId::new("visitor")?,
        Storage::in_memory()?,
        ReplicaConfig::default(),
    )?;
    let address = resolve(&table).await?;
    let stats = sync_with(&theirs, &visiting, address, &SyncConfig::default()).await?;
    let got = theirs.get(b"greeting")?;
    println!(
        "2. the visitor resolved {SERVICE} to {address} and synced {} records: greeting = {:?}",
        stats.applied,
        got.as_deref().map(String::from_utf8_lossy)
    );
    ensure!(
        got.as_deref() == Some(&b"hello from the engine"[..]),
        "the greeting did not arrive"
    );

    // Bounce the replica: uninstall it and install it again on the same
    // file. Its dependents follow it down and up; the handle `ours` still
    // held here no longer keeps the file locked.
    engine.uninstall(REPLICA.name()).await?;
    engine.install(replica(store.clone())).await?;
    let again = engine.wait_for_resource(&REPLICA).await?;
    ensure!(
        again.get(b"greeting")?.is_some(),
        "the reopened replica lost its data"
    );
    let publisher = engine.wait_for_resource(&PUBLISHER).await?;
    publisher.wait_all_mounted().await?;
    let address = resolve(&table).await?;
    again
        .put(b"second".to_vec(), b"after the bounce".to_vec())
        .await?;
    sync_with(&theirs, &visiting, address, &SyncConfig::default()).await?;
    println!(
        "3. after a bounce of the replica, the visitor synced again from {address}: second = {:?}",
        theirs
            .get(b"second")?
            .as_deref()
            .map(String::from_utf8_lossy)
    );
    ensure!(
        theirs.get(b"second")?.is_some(),
        "the second value did not arrive"
    );

    // Stop: the publisher unmounts before the responder closes, and the
    // responder before the replica; the table, which they all use, last.
    engine.kill();
    engine.wait().await?;
    ensure!(
        again.put(b"late".to_vec(), Vec::new()).await.is_err(),
        "the replica still takes writes after the engine stopped"
    );
    println!("4. the engine stopped, dependents first; the replica is closed and its file free");
    Ok(())
}

/// The embedded mount table, offered to the publisher and to `main`.
fn table() -> Manifold {
    Manifold::new(TABLE.name(), |_ctx| async {
        let table = MountTable::start();
        Ok(Started::new(table.clone()).with_resource(table))
    })
    .offers::<MountTable>()
}

/// A replica on the file `store`, opened off the async threads.
fn replica(store: std::path::PathBuf) -> Manifold {
    Manifold::new(REPLICA.name(), move |_ctx| {
        let store = store.clone();
        async move {
            let storage = Storage::open_async(store).await?;
            let replica =
                Replica::open_async(DeviceId::new("engine")?, storage, ReplicaConfig::default())
                    .await?;
            Ok(Started::new(replica.clone()).with_resource(replica))
        }
    })
    .offers::<Replica>()
}

/// The replica's sync responder over `transport`, offering its address.
fn responder(transport: Transport) -> Manifold {
    Manifold::new(RESPONDER.name(), move |ctx| {
        let transport = transport.clone();
        async move {
            let replica = ctx.get(&REPLICA)?;
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let responder =
                Responder::bind(replica, transport, loopback, SyncConfig::default()).await?;
            let address = responder.local_addr();
            Ok(Started::new(responder).with_resource(address))
        }
    })
    .input(&REPLICA)
    .offers::<SocketAddr>()
}

/// A publisher that keeps the responder's address mounted under
/// [`SERVICE`].
fn publisher() -> Manifold {
    Manifold::new(PUBLISHER.name(), |ctx| async move {
        let table = ctx.get(&TABLE)?;
        let address = ctx.get(&RESPONDER)?;
        let publisher = Publisher::start(table, PublisherConfig::default())?;
        publisher.add_name(Name::new(SERVICE)?).await?;
        publisher.add_server(Endpoint::try_from(address)?).await?;
        Ok(Started::new(publisher.clone()).with_resource(publisher))
    })
    .input(&TABLE)
    .input(&RESPONDER)
    .offers::<Publisher>()
}

/// The first server mounted under [`SERVICE`], as a socket address.
async fn resolve(table: &MountTable) -> Result<SocketAddr> {
    let resolution = table.resolve(&Name::new(SERVICE)?).await?;
    let server = resolution
        .servers
        .first()
        .context("nothing is mounted under the name")?;
    server
        .server
        .to_socket_addr()
        .context("the mounted server is not an IP address")
}
