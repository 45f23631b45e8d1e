//! Typed input keys checked at install, and resources read from outside the
//! engine.

use std::time::Duration;

use flotilla_core_types::{TaskWorker, Worker};
use flotilla_depengine::{Engine, Error, Input, Manifold, Started};

use crate::harness::*;

const GREETING: Input<String> = Input::new("greeting");
const COUNT: Input<u32> = Input::new("greeting");

fn idle() -> TaskWorker {
    TaskWorker::spawn(|stop| async move {
        stop.cancelled().await;
        Ok(())
    })
}

fn greeting_provider() -> Manifold {
    Manifold::new(GREETING.name(), |_ctx| async {
        Ok(Started::new(idle()).with_resource(String::from("hello")))
    })
    .offers::<String>()
}

fn reader(name: &str, key: &Input<u32>) -> Manifold {
    let read = key.clone();
    Manifold::new(name, move |ctx| {
        let read = read.clone();
        async move {
            let _count: u32 = ctx.get(&read)?;
            Ok(Started::new(idle()))
        }
    })
    .input(key)
}

#[tokio::test(start_paused = true)]
async fn a_typed_input_reads_its_resource_without_an_annotation() {
    let engine = Engine::start(test_config()).expect("valid config");
    engine.install(greeting_provider()).await.expect("installs");
    engine
        .install(
            Manifold::new("shout", |ctx| async move {
                let greeting = ctx.get(&GREETING)?;
                Ok(Started::new(idle()).with_resource(greeting.to_uppercase()))
            })
            .input(&GREETING)
            .offers::<String>(),
        )
        .await
        .expect("installs");
    settle().await;
    let shout: String = engine.resource("shout").await.expect("running");
    assert_eq!(shout, "HELLO");
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_type_mismatch_is_refused_at_install_whichever_comes_second() {
    // The provider first.
    let engine = Engine::start(test_config()).expect("valid config");
    engine.install(greeting_provider()).await.expect("installs");
    let refused = engine.install(reader("counter", &COUNT)).await;
    match refused {
        Err(Error::InputType {
            manifold,
            input,
            expected,
            offered,
        }) => {
            assert_eq!(manifold.as_str(), "counter");
            assert_eq!(input.as_str(), "greeting");
            assert_eq!(expected, "u32");
            assert_eq!(offered, "alloc::string::String");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    assert!(report(&engine).await.manifold("counter").is_none());
    shut_down(engine).await.expect("clean stop");

    // The dependent first: the provider is refused, naming the dependent.
    let engine = Engine::start(test_config()).expect("valid config");
    engine
        .install(reader("counter", &COUNT))
        .await
        .expect("installs");
    let refused = engine.install(greeting_provider()).await;
    assert!(
        matches!(&refused, Err(Error::InputType { manifold, .. }) if manifold.as_str() == "counter"),
        "{refused:?}"
    );
    let message = refused.expect_err("refused").to_string();
    assert_eq!(
        message,
        "manifold counter reads input greeting as u32, but greeting offers alloc::string::String"
    );
    assert!(report(&engine).await.manifold("greeting").is_none());
    // A provider of the right type installs fine in its place.
    engine
        .install(
            Manifold::new("greeting", |_ctx| async {
                Ok(Started::new(idle()).with_resource(7u32))
            })
            .offers::<u32>(),
        )
        .await
        .expect("installs");
    settle().await;
    assert!(
        report(&engine)
            .await
            .manifolds
            .iter()
            .all(|m| m.state.is_started())
    );
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_start_that_breaks_its_declared_offer_fails_and_its_worker_is_stopped() {
    let engine = Engine::start(test_config()).expect("valid config");
    let made = TaskWorker::spawn(|stop| async move {
        stop.cancelled().await;
        Ok(())
    });
    let observed = made.clone();
    engine
        .install(
            Manifold::new("liar", move |_ctx| {
                let made = made.clone();
                async move { Ok(Started::new(made).with_resource(5u64)) }
            })
            .offers::<String>(),
        )
        .await
        .expect("installs");
    settle().await;
    let report = report(&engine).await;
    let liar = report.manifold("liar").expect("installed");
    assert_eq!(
        liar.last_error.as_deref(),
        Some("manifold liar declares it offers alloc::string::String, but its start returned u64")
    );
    assert!(!liar.state.is_started());
    assert!(
        observed.result().is_some(),
        "the worker it made was stopped"
    );
    shut_down(engine).await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn resources_are_read_from_outside_the_engine() {
    let lab = Lab::default();
    let engine = Engine::start(test_config()).expect("valid config");
    let spawner = lab.clone();
    engine
        .install(
            Manifold::new("waits", move |ctx| {
                let lab = spawner.clone();
                async move {
                    ctx.require("greeting")?;
                    Ok(lab.spawn_worker("waits", &[]))
                }
            })
            .input("greeting"),
        )
        .await
        .expect("installs");
    settle().await;
    assert!(matches!(
        engine.resource::<String>("nothing").await,
        Err(Error::NotInstalled { .. })
    ));
    assert!(matches!(
        engine.resource::<Token>("waits").await,
        Err(Error::NotRunning { ref name }) if name == "waits"
    ));

    // wait_for_resource waits until the worker runs.
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.wait_for_resource::<Token>("waits").await }
    });
    advance(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    engine.install(greeting_provider()).await.expect("installs");
    let token = waiting.await.expect("joins").expect("started");
    assert!(lab.alive_tokens().contains(&token.0));
    assert_eq!(engine.resource(&GREETING).await.expect("running"), "hello");
    assert!(matches!(
        engine.resource::<u8>("greeting").await,
        Err(Error::ResourceType {
            requested: "u8",
            ..
        })
    ));

    // A waiter learns that the manifold it waits for was uninstalled.
    engine.uninstall("greeting").await.expect("uninstalls");
    settle().await;
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.wait_for_resource::<Token>("waits").await }
    });
    settle().await;
    engine.uninstall("waits").await.expect("uninstalls");
    let answer = waiting.await.expect("joins");
    assert!(
        matches!(answer, Err(Error::NotInstalled { .. })),
        "{answer:?}"
    );
    engine
        .install(
            Manifold::new("waits", |ctx| async move {
                ctx.require("greeting")?;
                Ok(Started::new(idle()))
            })
            .input("greeting"),
        )
        .await
        .expect("installs");

    // A waiter learns that the engine is stopping.
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.wait_for_resource::<Token>("waits").await }
    });
    settle().await;
    engine.kill();
    let answer = waiting.await.expect("joins");
    assert!(matches!(answer, Err(Error::Stopped)), "{answer:?}");
    engine.wait().await.expect("clean stop");
}
