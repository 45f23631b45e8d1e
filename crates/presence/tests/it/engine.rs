//! The parts under flotilla-depengine: start functions written with `?`,
//! and a pinger bounced by the engine is a restart to watchers.

use flotilla_core_types::{Worker, WorkerError};
use flotilla_depengine::{Engine, EngineConfig, Input, Manifold, Started};
use flotilla_presence::{Config, Error, MemoryStore, PingBatcher, Pinger, Reason, Watcher};

use crate::harness::{fast_config, key, next_change, scope};

const BATCHER: Input<PingBatcher> = Input::new("batcher");
const WATCHER: Input<Watcher> = Input::new("watcher");

async fn start_pinger(
    store: MemoryStore,
    batcher: PingBatcher,
    config: Config,
) -> Result<Started, WorkerError> {
    let pinger = Pinger::start(store, batcher, scope(), key(1), config).await?;
    Ok(Started::new(pinger))
}

async fn install_batcher(engine: &Engine, store: &MemoryStore, config: &Config) {
    let (store, config) = (store.clone(), config.clone());
    engine
        .install(
            Manifold::new(BATCHER.name(), move |_ctx| {
                let (store, config) = (store.clone(), config.clone());
                async move {
                    let batcher = PingBatcher::start(store, config)?;
                    Ok(Started::new(batcher.clone()).with_resource(batcher))
                }
            })
            .offers::<PingBatcher>(),
        )
        .await
        .expect("installs");
}

#[tokio::test(start_paused = true)]
async fn a_pinger_under_the_engine_stops_with_its_batcher_and_comes_back_with_a_new_one() {
    let engine = Engine::start(EngineConfig::default()).expect("valid");
    let store = MemoryStore::new();
    let config = fast_config();
    install_batcher(&engine, &store, &config).await;
    let (watcher_store, watcher_config) = (store.clone(), config.clone());
    engine
        .install(
            Manifold::new(WATCHER.name(), move |_ctx| {
                let (store, config) = (watcher_store.clone(), watcher_config.clone());
                async move {
                    let watcher = Watcher::start(store, scope(), config)?;
                    Ok(Started::new(watcher.clone()).with_resource(watcher))
                }
            })
            .offers::<Watcher>(),
        )
        .await
        .expect("installs");
    let watcher = engine.wait_for_resource(WATCHER).await.expect("starts");
    let mut changes = watcher.subscribe();
    changes.watch(key(1)).await.expect("watches");
    assert_eq!(next_change(&mut changes).await.reason, Reason::NeverSeen);

    let (pinger_store, pinger_config) = (store.clone(), config.clone());
    engine
        .install(
            Manifold::new("pinger", move |ctx| {
                let (store, config) = (pinger_store.clone(), pinger_config.clone());
                async move { start_pinger(store, ctx.get(&BATCHER)?, config).await }
            })
            .input(&BATCHER),
        )
        .await
        .expect("installs");
    let started = next_change(&mut changes).await;
    assert_eq!((started.alive, started.reason), (true, Reason::Started));

    // A batcher that stops takes its pinger down with it: a graceful stop.
    let batcher = engine.resource(BATCHER).await.expect("running");
    batcher.kill();
    let stopped = next_change(&mut changes).await;
    assert_eq!((stopped.alive, stopped.reason), (false, Reason::Stopped));
    assert_eq!(stopped.incarnation, started.incarnation);

    // A new batcher brings the pinger back in a newer incarnation.
    engine.uninstall(BATCHER.name()).await.expect("uninstalls");
    install_batcher(&engine, &store, &config).await;
    let back = next_change(&mut changes).await;
    assert_eq!((back.alive, back.reason), (true, Reason::Started));
    assert!(back.incarnation > started.incarnation);

    engine.kill();
    engine.wait().await.expect("stops cleanly");
}

#[test]
fn errors_become_worker_errors_that_keep_their_kind() {
    let stopped = WorkerError::from(Error::Stopped { part: "watcher" });
    assert!(matches!(
        stopped.downcast_ref::<Error>(),
        Some(Error::Stopped { part: "watcher" })
    ));
    assert_eq!(stopped.to_string(), "the presence watcher is stopped");
}
