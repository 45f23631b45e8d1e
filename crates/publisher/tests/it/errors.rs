//! What the crate's errors say, and that they convert into `WorkerError`, so
//! that `?` works in a `flotilla-depengine` start function.

use std::time::Duration;

use flotilla_core_types::{Name, Worker, WorkerError};
use flotilla_depengine::{Engine, EngineConfig, Input, Manifold, Started};
use flotilla_publisher::{
    Error, MountFlags, MountTable, Namespace, NamespaceError, Publisher, PublisherConfig,
};

use serde_json::json;

use crate::harness::{name, server};

fn check(error: impl std::error::Error, expected: &str) {
    assert_eq!(error.to_string(), expected);
}

#[test]
fn messages_read_as_plain_text() {
    let leaf = MountFlags {
        leaf: true,
        ..MountFlags::NONE
    };
    check(
        NamespaceError::Timeout {
            after: Duration::from_millis(2500),
        },
        "naming backend did not answer within 2500 ms",
    );
    check(
        NamespaceError::Timeout {
            after: Duration::from_secs(10),
        },
        "naming backend did not answer within 10 s",
    );
    check(
        NamespaceError::FlagsConflict {
            name: name("api"),
            server: server(2),
            existing: leaf,
            requested: MountFlags::NONE,
        },
        "cannot mount 10.0.0.1:2 under api with no flags: servers mounted there have flags leaf",
    );
    check(
        NamespaceError::Corrupt {
            key: String::from("/flotilla/api/#x"),
            reason: String::from("not an endpoint"),
        },
        "unreadable entry at key /flotilla/api/#x in the naming backend: not an endpoint",
    );
    check(
        NamespaceError::NotFound { name: name("api") },
        "nothing is mounted under api",
    );
    check(
        Error::UnmountIncomplete {
            failed: 2,
            first: NamespaceError::Closed,
        },
        "stopping left 2 mount(s) in place (they expire by their TTL): the naming backend is shut down",
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_limits_are_given_in_units_a_person_reads() {
    let table = MountTable::start();
    check(
        table.validate_ttl(Duration::ZERO).expect_err("zero"),
        "invalid TTL 0 s: the mount table accepts from 1 ns to 365 days",
    );
    let config = PublisherConfig::default()
        .with_period(Duration::from_secs(400 * 86_400), Duration::from_secs(1));
    check(
        Publisher::start(table, config).expect_err("too long for the table"),
        "invalid publisher config: ttl invalid TTL 34560001 s: the mount table accepts from 1 ns to 365 days",
    );
}

#[test]
fn flags_display_every_flag_that_is_set() {
    let all = MountFlags {
        replace: true,
        serves_mount_table: true,
        leaf: true,
    };
    assert_eq!(MountFlags::NONE.to_string(), "no flags");
    assert_eq!(all.to_string(), "flags replace, serves_mount_table, leaf");
}

#[test]
fn both_errors_become_worker_errors_that_still_downcast() {
    let stopped = WorkerError::from(Error::Stopped);
    assert!(matches!(
        stopped.downcast_ref::<Error>(),
        Some(Error::Stopped)
    ));
    assert_eq!(stopped.to_string(), "the publisher is stopped");
    let closed = WorkerError::from(NamespaceError::Closed);
    assert!(matches!(
        closed.downcast_ref::<NamespaceError>(),
        Some(NamespaceError::Closed)
    ));
}

const TABLE: Input<MountTable> = Input::new("table");
const PUBLISHER: Input<Publisher> = Input::new("publisher");

/// An engine that stops at the first publisher or backend error, so the
/// test can read it back from `wait`.
fn engine() -> Engine {
    let config = EngineConfig::default().with_is_fatal(|error| {
        error.find::<Error>().is_some() || error.find::<NamespaceError>().is_some()
    });
    Engine::start(config).expect("the default engine config is valid")
}

async fn install_table(engine: &Engine) {
    engine
        .install(
            Manifold::new(TABLE.name(), |_ctx| async {
                let table = MountTable::start();
                Ok(Started::new(table.clone()).with_resource(table))
            })
            .offers::<MountTable>(),
        )
        .await
        .expect("installs");
}

/// A start function written with `?` on publisher calls, as a user's would.
async fn start_publisher(
    table: MountTable,
    config: PublisherConfig,
    api: Name,
) -> Result<Started, WorkerError> {
    let publisher = Publisher::start(table, config)?;
    publisher.add_name(api).await?;
    publisher.add_server(server(1)).await?;
    Ok(Started::new(publisher.clone()).with_resource(publisher))
}

#[tokio::test(start_paused = true)]
async fn a_publisher_starts_under_the_engine_with_question_marks() {
    let engine = engine();
    install_table(&engine).await;
    engine
        .install(
            Manifold::new(PUBLISHER.name(), |ctx| async move {
                let table = ctx.get(&TABLE)?;
                start_publisher(table, PublisherConfig::default(), name("api")).await
            })
            .input(&TABLE)
            .offers::<Publisher>(),
        )
        .await
        .expect("installs");
    let publisher = engine.wait_for_resource(PUBLISHER).await.expect("starts");
    let mut status = publisher.watch().await.expect("running");
    status
        .wait_for(|status| status.all_mounted())
        .await
        .expect("mounts");
    let report = engine.report().await.expect("running");
    let worker = report
        .manifold(PUBLISHER.name())
        .and_then(|manifold| manifold.worker.clone())
        .expect("the engine shows the publisher's own report");
    assert_eq!(
        (&worker["phase"], &worker["mounted"]),
        (&json!("running"), &json!(1))
    );
    let table = engine.resource(TABLE).await.expect("running");
    assert_eq!(
        table
            .resolve(&name("api"))
            .await
            .expect("mounted")
            .endpoints(),
        [server(1)]
    );
    engine.kill();
    engine.wait().await.expect("stops cleanly");
    assert!(
        table.resolve(&name("api")).await.is_err(),
        "unmounted at stop"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bad_config_fails_the_start_function_through_question_mark() {
    let engine = engine();
    install_table(&engine).await;
    engine
        .install(
            Manifold::new(PUBLISHER.name(), |ctx| async move {
                let table = ctx.get(&TABLE)?;
                let mut config = PublisherConfig::default();
                config.max_in_flight = 0;
                start_publisher(table, config, name("api")).await
            })
            .input(&TABLE),
        )
        .await
        .expect("installs");
    let error = engine.wait().await.expect_err("the bad config is fatal");
    assert!(
        matches!(
            error.find::<Error>(),
            Some(Error::InvalidConfig {
                field: "max_in_flight",
                ..
            })
        ),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_error_fails_the_start_function_through_question_mark() {
    let engine = engine();
    install_table(&engine).await;
    engine
        .install(
            Manifold::new("resolver", |ctx| async move {
                let table = ctx.get(&TABLE)?;
                // Nothing is mounted: `NotFound`, passed on by `?`.
                let resolution = table.resolve(&name("api")).await?;
                Ok(Started::new(table).with_resource(resolution.endpoints()))
            })
            .input(&TABLE),
        )
        .await
        .expect("installs");
    let error = engine.wait().await.expect_err("the backend error is fatal");
    assert!(
        matches!(
            error.find::<NamespaceError>(),
            Some(NamespaceError::NotFound { .. })
        ),
        "{error:?}"
    );
}
