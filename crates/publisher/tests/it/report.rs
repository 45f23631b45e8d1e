//! What `Worker::report` shows an operator of a publisher and of a table,
//! field by field, on tokio's paused clock.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_publisher::{MountFlags, MountTable, Namespace, Publisher};
use serde_json::{Value, json};
use tokio::time::sleep;

use crate::harness::{Flaky, LeaseTable, PairFault, config, name, server, stop_and_check, until};

async fn report_of(worker: &impl Worker) -> Value {
    worker.report().expect("reports").await
}

/// The fields of `report` named in `expected`, so that the comparison
/// reads as data.
fn fields(report: &Value, names: &[&str]) -> Value {
    let picked: serde_json::Map<String, Value> = names
        .iter()
        .map(|name| ((*name).to_owned(), report[*name].clone()))
        .collect();
    Value::Object(picked)
}

#[tokio::test(start_paused = true)]
async fn a_publisher_reports_its_phase_counts_tightest_ttl_and_last_error() {
    let flaky = Flaky::new();
    flaky.set_pair_fault(&name("b"), &server(2), Some(PairFault::Unavailable));
    let publisher = Publisher::start(flaky.clone(), config()).expect("valid");
    for text in ["a", "b"] {
        publisher.add_name(name(text)).await.expect("running");
    }
    for port in [1, 2] {
        publisher.add_server(server(port)).await.expect("running");
    }
    until(&publisher, |s| {
        s.mounts.iter().filter(|m| m.ttl_left().is_some()).count() == 3
    })
    .await;
    sleep(Duration::from_secs(10)).await;

    let report = report_of(&publisher).await;
    let status = publisher.status().await.expect("running");
    let tightest = status
        .mounts
        .iter()
        .filter_map(|m| m.ttl_left())
        .min()
        .expect("three are mounted");
    assert_eq!(
        fields(
            &report,
            &[
                "state",
                "phase",
                "root",
                "names",
                "servers",
                "pairs",
                "mounted",
                "mounting",
                "failing",
                "replaced",
                "unmounting"
            ]
        ),
        json!({
            "state": "running", "phase": "running", "root": "mem:",
            "names": 2, "servers": 2, "pairs": 4,
            "mounted": 3, "mounting": 1, "failing": 1, "replaced": 0, "unmounting": 0,
        })
    );
    assert_eq!(
        report["tightest_ttl_left_ms"],
        json!(tightest.as_millis()),
        "80 s less the 10 s since the mount"
    );
    assert_eq!(tightest, Duration::from_secs(70));
    assert_eq!(
        report["last_error"],
        "mount of 10.0.0.1:2 under b: naming backend unavailable: injected outage"
    );
    assert!(
        report["last_error_ago_ms"]
            .as_u64()
            .is_some_and(|ms| ms < 30_000)
    );

    // Unmounts that fail count as unmounting and failing.
    flaky.set_fail_unmounts(true);
    publisher.remove_server(server(1)).await.expect("running");
    until(&publisher, |s| {
        s.mounts
            .iter()
            .filter(|m| m.server == server(1) && m.consecutive_failures > 0)
            .count()
            == 2
    })
    .await;
    let report = report_of(&publisher).await;
    assert_eq!(
        fields(
            &report,
            &["pairs", "mounted", "mounting", "failing", "unmounting"]
        ),
        json!({ "pairs": 4, "mounted": 1, "mounting": 1, "failing": 3, "unmounting": 2 })
    );
    assert!(
        report["last_error"]
            .as_str()
            .is_some_and(|text| text.starts_with("unmount of 10.0.0.1:1 under ")),
        "{report}"
    );

    flaky.set_fail_unmounts(false);
    flaky.set_pair_fault(&name("b"), &server(2), None);
    assert!(stop_and_check(publisher.clone()).await.is_ok());
    assert_eq!(
        report_of(&publisher).await,
        json!({ "state": "stopped", "phase": "stopped", "root": "mem:" }),
        "a stopped publisher reports what it still knows"
    );
}

#[tokio::test(start_paused = true)]
async fn a_publisher_reports_replaced_pairs_and_nothing_mounted_as_null() {
    let backend = LeaseTable::default();
    let publisher = Publisher::start(backend.clone(), config()).expect("valid");
    let report = report_of(&publisher).await;
    assert_eq!(report["pairs"], 0);
    assert_eq!(report["tightest_ttl_left_ms"], Value::Null);
    assert_eq!(report["last_error"], Value::Null);
    assert_eq!(report["last_error_ago_ms"], Value::Null);

    publisher.add_name(name("a")).await.expect("running");
    for port in [1, 2] {
        publisher.add_server(server(port)).await.expect("running");
    }
    publisher.wait_all_mounted().await.expect("mounts");
    backend.replace_behind_back(&name("a"), &server(2));
    until(&publisher, |s| !s.all_mounted()).await;
    let report = report_of(&publisher).await;
    assert_eq!(
        fields(&report, &["mounted", "mounting", "replaced", "failing"]),
        json!({ "mounted": 1, "mounting": 0, "replaced": 1, "failing": 0 })
    );
    assert_eq!(
        report["tightest_ttl_left_ms"], 80_000,
        "the session's TTL, as nothing has passed"
    );
    publisher.stop().await;
    assert!(publisher.wait().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_table_reports_its_names_entries_and_whether_it_is_closed() {
    let table = MountTable::start();
    let ttl = Duration::from_secs(30);
    for (text, port) in [("a", 1), ("a", 2), ("b", 1)] {
        table
            .mount(&name(text), &server(port), ttl, MountFlags::NONE)
            .await
            .expect("mounts");
    }
    assert_eq!(
        report_of(&table).await,
        json!({ "state": "running", "names": 2, "entries": 3, "closed": false })
    );
    table.kill();
    table.wait().await.expect("the reaper ends cleanly");
    assert_eq!(
        report_of(&table).await,
        json!({ "state": "stopped", "names": 2, "entries": 3, "closed": true })
    );
}
