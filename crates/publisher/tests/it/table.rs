//! The embedded mount table: exact expiry, reclaimed memory, the flags and
//! resolution beneath mounted names.

use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_publisher::{MountFlags, MountOutcome, MountTable, Namespace, NamespaceError};
use tokio::time::{Instant, sleep, sleep_until};

use crate::harness::{name, resolved, server, settle};

const TTL: Duration = Duration::from_secs(30);

const LEAF: MountFlags = MountFlags {
    leaf: true,
    ..MountFlags::NONE
};
const MOUNT_TABLE: MountFlags = MountFlags {
    serves_mount_table: true,
    ..MountFlags::NONE
};
const REPLACE: MountFlags = MountFlags {
    replace: true,
    ..MountFlags::NONE
};

#[tokio::test(start_paused = true)]
async fn an_entry_disappears_exactly_at_its_deadline() {
    let table = MountTable::start();
    table
        .mount(&name("a"), &server(1), TTL, MountFlags::NONE)
        .await
        .expect("mounts");
    let deadline = Instant::now() + TTL;
    // The paused clock moves in whole milliseconds.
    sleep_until(deadline - Duration::from_millis(1)).await;
    assert_eq!(resolved(&table, &name("a")).await, [server(1)]);
    sleep_until(deadline).await;
    assert_eq!(resolved(&table, &name("a")).await, []);
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_reclaimed_without_anyone_resolving_them() {
    let table = MountTable::start();
    for port in 1..=100 {
        let ttl = TTL + Duration::from_secs(u64::from(port));
        table
            .mount(&name("a"), &server(port), ttl, MountFlags::NONE)
            .await
            .expect("mounts");
    }
    assert_eq!(table.entry_count(), 100);
    sleep(TTL + Duration::from_secs(50)).await;
    settle().await; // the reaper wakes at the same instant as this test
    assert_eq!(
        table.entry_count(),
        50,
        "the first fifty expired and were dropped"
    );
    sleep(Duration::from_secs(50)).await;
    settle().await;
    assert_eq!(table.entry_count(), 0);
    assert_eq!(
        format!("{table:?}"),
        "MountTable { names: 0, entries: 0, closed: false }"
    );
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_added_later_is_still_reaped_on_time() {
    let table = MountTable::start();
    table
        .mount(&name("a"), &server(1), TTL * 10, MountFlags::NONE)
        .await
        .expect("mounts");
    table
        .mount(&name("b"), &server(1), TTL, MountFlags::NONE)
        .await
        .expect("mounts");
    sleep(TTL).await;
    settle().await;
    assert_eq!(table.entry_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_mount_says_whether_it_refreshed_or_created() {
    let table = MountTable::start();
    let (a, one) = (name("a"), server(1));
    let mount = || table.mount(&a, &one, TTL, MountFlags::NONE);
    assert_eq!(
        mount().await.expect("mounts").outcome,
        MountOutcome::Created
    );
    sleep(TTL / 2).await;
    assert_eq!(
        mount().await.expect("mounts").outcome,
        MountOutcome::Refreshed
    );
    sleep(TTL - Duration::from_secs(1)).await;
    assert_eq!(
        resolved(&table, &name("a")).await,
        [server(1)],
        "the refresh moved the deadline"
    );
    sleep(TTL).await;
    assert_eq!(
        mount().await.expect("mounts").outcome,
        MountOutcome::Created,
        "an expired entry is gone"
    );
    table.reset();
    assert_eq!(
        mount().await.expect("mounts").outcome,
        MountOutcome::Created,
        "a reset table forgot it"
    );
}

#[tokio::test(start_paused = true)]
async fn unmount_removes_one_server_and_tolerates_absent_ones() {
    let table = MountTable::start();
    for port in [1, 2] {
        table
            .mount(&name("a"), &server(port), TTL, MountFlags::NONE)
            .await
            .expect("mounts");
    }
    table
        .unmount(&name("a"), &server(1))
        .await
        .expect("unmounts");
    assert_eq!(resolved(&table, &name("a")).await, [server(2)]);
    table
        .unmount(&name("a"), &server(1))
        .await
        .expect("absent is fine");
    table
        .unmount(&name("zzz"), &server(1))
        .await
        .expect("absent is fine");
    assert_eq!(table.entry_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn replace_takes_the_place_of_every_other_server() {
    let table = MountTable::start();
    for port in [1, 2] {
        table
            .mount(&name("a"), &server(port), TTL, MountFlags::NONE)
            .await
            .expect("mounts");
    }
    table
        .mount(&name("a"), &server(3), TTL, REPLACE)
        .await
        .expect("mounts");
    assert_eq!(resolved(&table, &name("a")).await, [server(3)]);
    assert_eq!(table.entry_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn servers_of_another_kind_conflict_unless_replacing() {
    let table = MountTable::start();
    table
        .mount(&name("a"), &server(1), TTL, MOUNT_TABLE)
        .await
        .expect("mounts");
    let error = table
        .mount(&name("a"), &server(2), TTL, LEAF)
        .await
        .expect_err("a leaf beside a mount table");
    assert!(
        matches!(error, NamespaceError::FlagsConflict { existing, .. } if existing == MOUNT_TABLE)
    );
    assert!(
        error
            .to_string()
            .contains("cannot mount 10.0.0.1:2 under a")
    );
    // A server may change its own flags, and replace overrides.
    table
        .mount(&name("a"), &server(1), TTL, LEAF)
        .await
        .expect("own flags");
    table
        .mount(
            &name("a"),
            &server(2),
            TTL,
            MountFlags {
                replace: true,
                ..MOUNT_TABLE
            },
        )
        .await
        .expect("replace");
    assert_eq!(resolved(&table, &name("a")).await, [server(2)]);
    // An expired server conflicts with nothing.
    sleep(TTL).await;
    table
        .mount(&name("a"), &server(3), TTL, LEAF)
        .await
        .expect("the old one expired");
}

#[tokio::test(start_paused = true)]
async fn names_beneath_a_mount_resolve_to_it_unless_it_is_a_leaf() {
    let table = MountTable::start();
    table
        .mount(&name("mt"), &server(1), TTL, MOUNT_TABLE)
        .await
        .expect("mounts");
    table
        .mount(&name("svc"), &server(2), TTL, MountFlags::NONE)
        .await
        .expect("mounts");
    table
        .mount(&name("leaf"), &server(3), TTL, LEAF)
        .await
        .expect("mounts");

    let beneath_table = table.resolve(&name("mt/x/y")).await.expect("resolves");
    assert_eq!(beneath_table.mounted_name, name("mt"));
    assert_eq!(beneath_table.suffix, "x/y");
    assert!(beneath_table.servers[0].flags.serves_mount_table);

    let beneath_server = table.resolve(&name("svc/method")).await.expect("resolves");
    assert_eq!(
        (beneath_server.mounted_name, beneath_server.suffix.as_str()),
        (name("svc"), "method")
    );

    assert!(matches!(
        table.resolve(&name("leaf/x")).await,
        Err(NamespaceError::NotFound { .. })
    ));
    assert_eq!(resolved(&table, &name("leaf")).await, [server(3)]);
    assert!(matches!(
        table.resolve(&name("nothing/here")).await,
        Err(NamespaceError::NotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn ttls_out_of_range_are_refused_before_anything_is_written() {
    let table = MountTable::start();
    for ttl in [
        Duration::ZERO,
        flotilla_publisher::MAX_TABLE_TTL + Duration::from_secs(1),
    ] {
        let error = table
            .mount(&name("a"), &server(1), ttl, MountFlags::NONE)
            .await
            .expect_err("refused");
        assert!(
            matches!(error, NamespaceError::InvalidTtl { .. }),
            "{error}"
        );
    }
    assert_eq!(table.entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_killed_table_answers_closed_and_its_reaper_ends() {
    let table = MountTable::start();
    table.kill();
    assert!(table.wait().await.is_ok());
    assert!(matches!(
        table
            .mount(&name("a"), &server(1), TTL, MountFlags::NONE)
            .await,
        Err(NamespaceError::Closed)
    ));
    assert!(matches!(
        table.resolve(&name("a")).await,
        Err(NamespaceError::Closed)
    ));
    assert!(matches!(
        table.unmount(&name("a"), &server(1)).await,
        Err(NamespaceError::Closed)
    ));
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_the_reaper() {
    let baseline = crate::harness::alive_tasks();
    let table = MountTable::start();
    let clone = table.clone();
    drop(table);
    assert_eq!(
        crate::harness::alive_tasks(),
        baseline + 1,
        "a handle is left"
    );
    drop(clone);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(crate::harness::alive_tasks(), baseline);
}

#[tokio::test(start_paused = true)]
async fn list_gives_the_live_names_at_or_beneath_a_prefix_with_their_servers() {
    let table = MountTable::start();
    let entries = [("a", 2), ("a", 1), ("a/b", 1), ("ab", 1), ("c/d", 3)];
    for (text, port) in entries {
        table
            .mount(&name(text), &server(port), TTL, MountFlags::NONE)
            .await
            .expect("mounts");
    }
    table
        .mount(&name("a/short"), &server(1), TTL / 2, LEAF)
        .await
        .expect("mounts");
    let listed = |listing: flotilla_publisher::Listing| -> Vec<(String, Vec<u16>)> {
        assert!(listing.unreadable.is_empty());
        listing
            .names
            .iter()
            .map(|l| {
                let ports = l.servers.iter().map(|m| m.server.port()).collect();
                (l.name.to_string(), ports)
            })
            .collect()
    };
    let under_a = table.list(Some(&name("a"))).await.expect("lists");
    assert_eq!(under_a.names[2].servers[0].flags, LEAF);
    assert_eq!(under_a.names[0].servers[0].ttl_left, Some(TTL));
    assert_eq!(
        listed(under_a),
        [
            (String::from("a"), vec![1, 2]),
            (String::from("a/b"), vec![1]),
            (String::from("a/short"), vec![1]),
        ],
        "`ab` is not beneath `a`"
    );
    assert_eq!(
        listed(table.list(Some(&name("c"))).await.expect("lists")),
        [(String::from("c/d"), vec![3])]
    );
    assert_eq!(
        listed(table.list(Some(&name("x"))).await.expect("lists")),
        []
    );

    sleep(TTL / 2).await;
    let everything = listed(table.list(None).await.expect("lists"));
    let names: Vec<&str> = everything.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["a", "a/b", "ab", "c/d"],
        "the expired mount is left out"
    );

    table.kill();
    assert!(matches!(
        table.list(None).await,
        Err(NamespaceError::Closed)
    ));
}
