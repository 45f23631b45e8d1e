//! The etcd backend against real etcd processes started by
//! flotilla-testkit. These run on the real clock: every wait is for a
//! condition, bounded, and a test fails (never skips) when etcd is missing.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use flotilla_core_types::etcd::{EtcdConnectError, EtcdOptions};
use flotilla_core_types::{Endpoint, Name, Worker};
use flotilla_publisher::{
    Error, EtcdNamespace, MountFlags, MountState, NameChange, Namespace, NamespaceError, Publisher,
    PublisherConfig, RemovedMount,
};
use flotilla_testkit::EtcdCluster;
use tokio::time::Instant;

use crate::harness::{name, server};

const PREFIX: &str = "flotilla/names";

/// Period 1 s, TTL 2 s: the shortest etcd honours with room to spare.
const PERIOD: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(2);

/// How long any condition may take to come true before the test fails: far
/// above what each needs, so that a loaded machine does not fail them.
const PATIENCE: Duration = Duration::from_secs(30);

fn config() -> PublisherConfig {
    let mut config = PublisherConfig::default().with_period(PERIOD, TTL - PERIOD);
    config.retry_delay = Duration::from_millis(100);
    config.max_retry_delay = Duration::from_secs(1);
    config.operation_timeout = Duration::from_secs(2);
    config
}

async fn namespace(cluster: &EtcdCluster) -> Result<EtcdNamespace> {
    let endpoints = cluster.endpoints();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    Ok(EtcdNamespace::connect(&endpoints, PREFIX).await?)
}

async fn publishing(etcd: &EtcdNamespace, names: &[&str], servers: &[u16]) -> Result<Publisher> {
    let publisher = Publisher::start(etcd.fresh_session(), config())?;
    for text in names {
        publisher.add_name(name(text)).await?;
    }
    for port in servers {
        publisher.add_server(server(*port)).await?;
    }
    all_mounted(&publisher).await?;
    Ok(publisher)
}

async fn all_mounted(publisher: &Publisher) -> Result<()> {
    let mut watch = publisher.watch().await?;
    tokio::time::timeout(PATIENCE, watch.wait_for(|s| s.all_mounted()))
        .await
        .context("not all mounted in time")??;
    Ok(())
}

/// The servers etcd has under `name` now.
async fn servers(etcd: &EtcdNamespace, name: &Name) -> Result<Vec<Endpoint>> {
    match etcd.resolve(name).await {
        Ok(resolution) => Ok(resolution.endpoints()),
        Err(NamespaceError::NotFound { .. }) => Ok(Vec::new()),
        Err(error) => Err(error.into()),
    }
}

/// Polls `probe` every 50 ms until it answers `true`, for at most `limit`.
/// It says only whether, never how fast: speed is for the benchmarks.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if probe().await? {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{what}: not true after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mounts_resolve_and_stay_mounted_across_many_ttls() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let publisher = publishing(&etcd, &["api", "api/v2"], &[1, 2]).await?;
    let reader = namespace(&cluster).await?;
    assert_eq!(
        servers(&reader, &name("api")).await?,
        [server(1), server(2)]
    );
    assert_eq!(
        servers(&reader, &name("api/v2")).await?,
        [server(1), server(2)]
    );
    let published = publisher.published().await?;
    assert!(published[0].rooted.starts_with("etcd://127.0.0.1:"));
    assert!(published[0].rooted.ends_with("/flotilla/names/api"));

    // Three TTLs: without keep-alives the lease would have gone twice over.
    let started = Instant::now();
    while started.elapsed() < TTL * 3 {
        assert_eq!(
            servers(&reader, &name("api")).await?,
            [server(1), server(2)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = publisher.status().await?;
    assert!(status.all_mounted());
    assert!(status.mounts.iter().all(|m| m.ttl_left().is_some()));
    publisher.stop().await;
    publisher.wait().await?;
    Ok(())
}

#[tokio::test]
async fn all_mounts_share_one_lease() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let session = etcd.fresh_session();
    let publisher = Publisher::start(session, config())?;
    publisher.add_name(name("a")).await?;
    for port in 1..=20 {
        publisher.add_server(server(port)).await?;
    }
    all_mounted(&publisher).await?;
    let mut client = cluster.client().await?;
    let keys = client
        .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    ensure!(keys.kvs().len() == 20);
    let leases: std::collections::BTreeSet<i64> = keys.kvs().iter().map(|kv| kv.lease()).collect();
    ensure!(
        leases.len() == 1 && !leases.contains(&0),
        "one lease for all: {leases:?}"
    );
    let key = keys.kvs()[0].key_str()?;
    ensure!(
        key == "flotilla/names/a/#10.0.0.1:1",
        "the documented layout: {key}"
    );
    publisher.stop().await;
    publisher.wait().await?;
    Ok(())
}

#[tokio::test]
async fn an_aborted_publisher_s_mounts_expire_by_their_ttl() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let reader = namespace(&cluster).await?;
    // The publisher lives on a runtime of its own, which is then torn down
    // under it: no stop, no revoke, as when a process dies.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let endpoints = cluster.endpoints();
    let publisher = doomed
        .spawn(async move {
            let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
            let etcd = EtcdNamespace::connect(&endpoints, PREFIX).await?;
            publishing(&etcd, &["a"], &[1]).await
        })
        .await??;
    assert_eq!(servers(&reader, &name("a")).await?, [server(1)]);
    doomed.shutdown_background();
    drop(publisher);

    let mut changes = reader.watch_name(&name("a")).await?;
    let first = changes.next().await?;
    ensure!(
        first
            == Some(NameChange::Mounted {
                server: server(1),
                flags: Default::default()
            })
    );
    let gone = tokio::time::timeout(TTL + PATIENCE, changes.next())
        .await
        .context("the mount outlived its lease")??;
    ensure!(
        gone == Some(NameChange::Unmounted { server: server(1) }),
        "{gone:?}"
    );
    assert_eq!(servers(&reader, &name("a")).await?, []);
    Ok(())
}

#[tokio::test]
async fn stop_revokes_the_lease_and_with_it_every_mount() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let session = etcd.fresh_session();
    let publisher = Publisher::start(session, config())?;
    publisher.add_name(name("a")).await?;
    publisher.add_server(server(1)).await?;
    publisher.add_server(server(2)).await?;
    all_mounted(&publisher).await?;
    publisher.stop().await;
    publisher.wait().await?;
    // Gone at once, not a TTL later.
    assert_eq!(servers(&etcd, &name("a")).await?, []);
    assert!(matches!(
        publisher.add_server(server(3)).await,
        Err(Error::Stopped)
    ));
    Ok(())
}

#[tokio::test]
async fn a_lease_revoked_behind_its_back_is_replaced_and_everything_mounted_again() -> Result<()> {
    revoke_and_recover(0).await
}

#[tokio::test]
async fn a_lease_revoked_while_its_keep_alive_stream_is_open_is_replaced_too() -> Result<()> {
    // After two keep-alives the stream is open, and the loss shows as an
    // answer on it rather than as an error opening it.
    revoke_and_recover(2).await
}

/// Mounts five servers, lets `keep_alives` keep-alives succeed, revokes the
/// lease from another client, and waits for all five to come back on a new
/// lease.
async fn revoke_and_recover(keep_alives: usize) -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let session = etcd.fresh_session();
    let publisher = Publisher::start(session, config())?;
    publisher.add_name(name("a")).await?;
    for port in 1..=5 {
        publisher.add_server(server(port)).await?;
    }
    all_mounted(&publisher).await?;
    for _ in 0..keep_alives {
        let expiry = |publisher: &Publisher| {
            let publisher = publisher.clone();
            async move { anyhow::Ok(publisher.status().await?.mounts[0].expires_at) }
        };
        let before = expiry(&publisher).await?;
        eventually("a keep-alive", PATIENCE, || async {
            Ok(expiry(&publisher).await? != before)
        })
        .await?;
    }
    let mut client = cluster.client().await?;
    let keys = client
        .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    let old_lease = keys.kvs()[0].lease();
    client.lease_revoke(old_lease).await?;
    assert_eq!(servers(&etcd, &name("a")).await?, []);

    eventually("all five back", PATIENCE, || async {
        Ok(servers(&etcd, &name("a")).await?.len() == 5)
    })
    .await?;
    let keys = client
        .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    ensure!(
        keys.kvs()
            .iter()
            .all(|kv| kv.lease() != old_lease && kv.lease() != 0)
    );
    all_mounted(&publisher).await?;
    publisher.stop().await;
    publisher.wait().await?;
    Ok(())
}

#[tokio::test]
async fn killing_the_leader_loses_no_mount_for_longer_than_a_ttl() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    let etcd = namespace(&cluster).await?;
    let publisher = publishing(&etcd, &["a"], &[1]).await?;

    let leader = cluster.leader().await?;
    cluster.kill(leader)?;
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.endpoint(i))
        .collect();
    let survivors: Vec<&str> = survivors.iter().map(String::as_str).collect();
    let reader = EtcdNamespace::connect(&survivors, PREFIX).await?;

    // Watch for three TTLs. A read that fails (no leader yet) says nothing;
    // a read that succeeds without the server is an absence.
    let started = Instant::now();
    let mut absent_since: Option<Instant> = None;
    let mut longest_absence = Duration::ZERO;
    let mut answers = 0;
    while started.elapsed() < TTL * 3 {
        if let Ok(resolution) = reader.resolve(&name("a")).await.map(|r| r.endpoints()) {
            answers += 1;
            if resolution == [server(1)] {
                absent_since = None;
            } else {
                let since = *absent_since.get_or_insert_with(Instant::now);
                longest_absence = longest_absence.max(since.elapsed());
            }
        } else if let Some(since) = absent_since {
            longest_absence = longest_absence.max(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(answers > 0, "the surviving members never answered");
    ensure!(
        longest_absence < TTL,
        "the mount was gone for {longest_absence:?}, longer than the TTL"
    );
    eventually("mounted at the end", PATIENCE, || async {
        Ok(servers(&reader, &name("a")).await.unwrap_or_default() == [server(1)])
    })
    .await?;
    all_mounted(&publisher).await?;
    cluster.restart(leader).await?;
    publisher.stop().await;
    publisher.wait().await?;
    Ok(())
}

#[tokio::test]
async fn watch_name_streams_the_current_servers_then_each_change() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    // Changes under "a/child" are not changes of "a".
    let publisher = publishing(&etcd, &["a", "a/child"], &[1]).await?;
    let mut changes = etcd.watch_name(&name("a")).await?;
    let mounted = |port| NameChange::Mounted {
        server: server(port),
        flags: Default::default(),
    };
    assert_eq!(next(&mut changes).await?, Some(mounted(1)));
    publisher.add_server(server(2)).await?;
    assert_eq!(next(&mut changes).await?, Some(mounted(2)));
    publisher.remove_server(server(1)).await?;
    assert_eq!(
        next(&mut changes).await?,
        Some(NameChange::Unmounted { server: server(1) })
    );
    publisher.stop().await;
    publisher.wait().await?;
    Ok(())
}

async fn next(changes: &mut flotilla_publisher::NameWatch) -> Result<Option<NameChange>> {
    Ok(tokio::time::timeout(PATIENCE, changes.next())
        .await
        .context("no change in time")??)
}

#[tokio::test]
async fn bad_prefixes_ttls_and_foreign_entries_get_typed_errors() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let endpoint = cluster.endpoint(0);
    for prefix in ["", "names/", "na#mes"] {
        let result = EtcdNamespace::connect(&[endpoint.as_str()], prefix).await;
        ensure!(
            matches!(
                result,
                Err(Error::InvalidConfig {
                    field: "prefix",
                    ..
                })
            ),
            "prefix {prefix:?} accepted"
        );
    }
    let etcd = namespace(&cluster).await?;
    let short = PublisherConfig::default()
        .with_period(Duration::from_millis(300), Duration::from_millis(300));
    ensure!(matches!(
        Publisher::start(etcd.fresh_session(), short),
        Err(Error::InvalidConfig { field: "ttl", .. })
    ));

    // A foreign entry beside a real server: the server resolves, and the
    // entry is reported, not fatal for every client.
    let mut client = cluster.client().await?;
    client
        .put("flotilla/names/x/#not-an-endpoint", "{}", None)
        .await?;
    client
        .put(etcd.key(&name("x"), &server(1)), "{}", None)
        .await?;
    let resolution = etcd.resolve(&name("x")).await?;
    ensure!(resolution.endpoints() == [server(1)], "{resolution:?}");
    match &resolution.unreadable[..] {
        [NamespaceError::Corrupt { key, .. }] => {
            ensure!(key == "flotilla/names/x/#not-an-endpoint");
        }
        other => bail!("expected the corrupt entry reported, got {other:?}"),
    }
    // Only an unreadable entry under a name: nothing to resolve to, and
    // the name's ancestor answers if it can (here it cannot).
    client
        .put("flotilla/names/y/#10.0.0.1:1", "not json", None)
        .await?;
    ensure!(matches!(
        etcd.resolve(&name("y")).await,
        Err(NamespaceError::NotFound { .. })
    ));
    client
        .put(etcd.key(&name("y"), &server(2)), "{}", None)
        .await?;
    let resolution = etcd.resolve(&name("y/z")).await?;
    ensure!(
        resolution.mounted_name == name("y")
            && resolution.endpoints() == [server(2)]
            && resolution.unreadable.len() == 1,
        "{resolution:?}"
    );
    Ok(())
}

#[tokio::test]
async fn flags_conflict_and_replace_as_on_the_embedded_table() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?.fresh_session();
    let table = flotilla_publisher::MountFlags {
        serves_mount_table: true,
        ..Default::default()
    };
    let leaf = flotilla_publisher::MountFlags {
        leaf: true,
        ..Default::default()
    };
    etcd.mount(&name("a"), &server(1), TTL, table).await?;
    ensure!(matches!(
        etcd.mount(&name("a"), &server(2), TTL, leaf).await,
        Err(NamespaceError::FlagsConflict { .. })
    ));
    let replace = flotilla_publisher::MountFlags {
        replace: true,
        ..leaf
    };
    etcd.mount(&name("a"), &server(2), TTL, replace).await?;
    assert_eq!(servers(&etcd, &name("a")).await?, [server(2)]);
    let beneath = etcd.resolve(&name("a/b")).await;
    ensure!(
        matches!(beneath, Err(NamespaceError::NotFound { .. })),
        "a leaf: {beneath:?}"
    );
    etcd.mount(&name("mt"), &server(3), TTL, table).await?;
    let resolution = etcd.resolve(&name("mt/x")).await?;
    ensure!(resolution.mounted_name == name("mt") && resolution.suffix == "x");
    etcd.release().await?;
    assert_eq!(servers(&etcd, &name("a")).await?, []);
    Ok(())
}

/// The lease of `key` now, or `None` when it is gone.
async fn lease_of(cluster: &EtcdCluster, key: &str) -> Result<Option<i64>> {
    let mut client = cluster.client().await?;
    let found = client.get(key, None).await?;
    Ok(found.kvs().first().map(|kv| kv.lease()))
}

/// How many watchers etcd serves now, from its own metrics.
async fn watchers(cluster: &EtcdCluster) -> Result<u64> {
    let endpoint = cluster.endpoint(0);
    let address = endpoint
        .strip_prefix("http://")
        .context("a plain http endpoint")?
        .to_owned();
    let body = tokio::task::spawn_blocking(move || -> Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    })
    .await??;
    let line = body
        .lines()
        .find(|line| line.starts_with("etcd_debugging_mvcc_watcher_total "))
        .context("etcd reports its watchers")?;
    let value = line
        .rsplit(' ')
        .next()
        .context("a metric value")?
        .parse::<f64>()?;
    Ok(value as u64)
}

#[tokio::test]
async fn a_key_deleted_by_someone_else_is_mounted_again_at_once_by_one_watch() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let ports: Vec<u16> = (1..=10).collect();
    let publisher = publishing(&etcd, &["a", "b"], &ports).await?;
    eventually("the publisher watches", PATIENCE, || async {
        Ok(watchers(&cluster).await? == 1)
    })
    .await?;

    let key = etcd.key(&name("a"), &server(3));
    let lease = lease_of(&cluster, &key).await?.context("mounted")?;
    let mut client = cluster.client().await?;
    client.delete(key.as_str(), None).await?;
    // The watch brings it back (the restore time is documented on
    // `EtcdNamespace`; how fast is for the benchmarks, not this test).
    eventually("the key is back", PATIENCE, || async {
        Ok(lease_of(&cluster, &key).await?.is_some())
    })
    .await?;
    ensure!(
        lease_of(&cluster, &key).await? == Some(lease),
        "on our lease"
    );
    all_mounted(&publisher).await?;
    ensure!(
        watchers(&cluster).await? == 1,
        "still one watch stream, whatever was deleted"
    );

    // Several at once, in one transaction, come back too.
    let keys: Vec<String> = (1..=10)
        .map(|port| etcd.key(&name("b"), &server(port)))
        .collect();
    let deletes: Vec<etcd_client::TxnOp> = keys
        .iter()
        .map(|key| etcd_client::TxnOp::delete(key.as_str(), None))
        .collect();
    client
        .txn(etcd_client::Txn::new().and_then(deletes))
        .await?;
    eventually("all ten back", PATIENCE, || async {
        Ok(servers(&etcd, &name("b")).await?.len() == 10)
    })
    .await?;
    all_mounted(&publisher).await?;
    publisher.stop().await;
    publisher.wait().await?;
    ensure!(
        servers(&etcd, &name("a")).await?.is_empty(),
        "stop removed all"
    );
    Ok(())
}

#[tokio::test]
async fn a_pair_two_publishers_share_stays_published_while_either_runs() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let key = etcd.key(&name("a"), &server(1));
    let first = publishing(&etcd, &["a"], &[1]).await?;
    let first_lease = lease_of(&cluster, &key).await?.context("mounted")?;
    let second = publishing(&etcd, &["a"], &[1, 2]).await?;
    let second_lease = lease_of(&cluster, &key).await?.context("mounted")?;
    ensure!(
        second_lease != first_lease,
        "the second write moved the key onto the second lease"
    );

    // The holder stops: its revoke deletes the key, and the first puts it
    // back on its own lease.
    second.stop().await;
    second.wait().await?;
    eventually("back on the first publisher's lease", PATIENCE, || async {
        Ok(lease_of(&cluster, &key).await? == Some(first_lease))
    })
    .await?;
    assert_eq!(servers(&etcd, &name("a")).await?, [server(1)]);
    all_mounted(&first).await?;

    // The same when the holder only stops publishing the pair.
    let third = publishing(&etcd, &["a"], &[1]).await?;
    ensure!(lease_of(&cluster, &key).await? != Some(first_lease));
    third.remove_server(server(1)).await?;
    eventually("back after the third unmounted it", PATIENCE, || async {
        Ok(lease_of(&cluster, &key).await? == Some(first_lease))
    })
    .await?;
    third.stop().await;
    third.wait().await?;
    first.stop().await;
    first.wait().await?;
    assert_eq!(servers(&etcd, &name("a")).await?, []);
    Ok(())
}

#[tokio::test]
async fn an_unreadable_foreign_entry_does_not_stop_our_mounts_and_is_reported() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let mut client = cluster.client().await?;
    let foreign = "flotilla/names/x/#not-an-endpoint";
    client.put(foreign, "{}", None).await?;
    client
        .put("flotilla/names/x/#10.0.0.9:9", "not json", None)
        .await?;
    let leaf = flotilla_publisher::MountFlags {
        leaf: true,
        ..Default::default()
    };
    let publisher = Publisher::start(etcd.fresh_session(), config().with_flags(leaf))?;
    publisher.add_name(name("x")).await?;
    publisher.add_server(server(1)).await?;
    all_mounted(&publisher).await?;
    let status = publisher.status().await?;
    let mount = status.mount(&name("x"), &server(1)).context("wanted")?;
    match &mount.unreadable {
        Some(NamespaceError::Corrupt { key, .. }) => ensure!(
            [foreign, "flotilla/names/x/#10.0.0.9:9"].contains(&key.as_str()),
            "{key}"
        ),
        other => bail!("expected the foreign entry reported, got {other:?}"),
    }
    ensure!(mount.last_error.is_none());
    // Left alone, not adopted: both foreign entries are as they were.
    let kept = client
        .get(
            "flotilla/names/x/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    ensure!(kept.kvs().len() == 3, "ours and the two foreign entries");
    ensure!(
        kept.kvs()
            .iter()
            .filter(|kv| kv
                .key_str()
                .is_ok_and(|k| k != etcd.key(&name("x"), &server(1))))
            .all(|kv| kv.lease() == 0)
    );
    publisher.stop().await;
    publisher.wait().await?;
    ensure!(lease_of(&cluster, foreign).await?.is_some(), "still there");
    Ok(())
}

#[tokio::test]
async fn watch_name_delivers_the_valid_changes_beside_an_unreadable_one() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let mut client = cluster.client().await?;
    client.put("flotilla/names/w/#bad", "{}", None).await?;
    let mut changes = etcd.watch_name(&name("w")).await?;
    ensure!(
        matches!(next(&mut changes).await?, Some(NameChange::Unreadable { key, .. }) if key == "flotilla/names/w/#bad"),
        "the initial state reports it too"
    );
    // One revision: an unreadable put first, then a valid one.
    let good = etcd.key(&name("w"), &server(1));
    client
        .txn(etcd_client::Txn::new().and_then([
            etcd_client::TxnOp::put("flotilla/names/w/#10.0.0.1:2", "not json", None),
            etcd_client::TxnOp::put(good.as_str(), "{}", None),
        ]))
        .await?;
    match next(&mut changes).await? {
        Some(NameChange::Unreadable { key, reason }) => {
            ensure!(key == "flotilla/names/w/#10.0.0.1:2" && !reason.is_empty());
        }
        other => bail!("expected the unreadable change, got {other:?}"),
    }
    assert_eq!(
        next(&mut changes).await?,
        Some(NameChange::Mounted {
            server: server(1),
            flags: Default::default()
        }),
        "the valid change of the same revision is delivered"
    );
    client.delete(good.as_str(), None).await?;
    assert_eq!(
        next(&mut changes).await?,
        Some(NameChange::Unmounted { server: server(1) })
    );
    Ok(())
}

#[tokio::test]
async fn list_gives_the_names_beneath_a_prefix_and_reports_unreadable_entries() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let publisher = publishing(&etcd, &["a", "a/b", "ab", "c/d"], &[2, 1]).await?;
    let mut client = cluster.client().await?;
    client.put("flotilla/names/a/b/#junk", "{}", None).await?;
    client.put("flotilla/names/stray-key", "{}", None).await?;
    let summary = |listing: &flotilla_publisher::Listing| -> Vec<(String, Vec<u16>)> {
        listing
            .names
            .iter()
            .map(|l| {
                let ports = l.servers.iter().map(|m| m.server.port()).collect();
                (l.name.to_string(), ports)
            })
            .collect()
    };
    let under_a = etcd.list(Some(&name("a"))).await?;
    assert_eq!(
        summary(&under_a),
        [
            (String::from("a"), vec![1, 2]),
            (String::from("a/b"), vec![1, 2]),
        ],
        "`ab` is not beneath `a`"
    );
    ensure!(
        matches!(&under_a.unreadable[..], [NamespaceError::Corrupt { key, .. }] if key == "flotilla/names/a/b/#junk"),
        "{:?}",
        under_a.unreadable
    );
    let everything = etcd.list(None).await?;
    let names: Vec<String> = summary(&everything).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "a/b", "ab", "c/d"]);
    ensure!(
        everything.unreadable.len() == 2,
        "{:?}",
        everything.unreadable
    );
    ensure!(etcd.list(Some(&name("zzz"))).await?.names.is_empty());
    publisher.stop().await;
    publisher.wait().await?;
    ensure!(etcd.list(None).await?.names.is_empty());
    Ok(())
}

fn removal(text: &str, port: u16) -> RemovedMount {
    RemovedMount {
        name: name(text),
        server: server(port),
        replaced: false,
    }
}

#[tokio::test]
async fn removed_mounts_misses_nothing_deleted_before_its_watch_opened() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let session = namespace(&cluster).await?.fresh_session();
    let flags = flotilla_publisher::MountFlags::NONE;
    for port in 1..=3 {
        session.mount(&name("a"), &server(port), TTL, flags).await?;
    }
    let mut client = cluster.client().await?;
    // Deleted before anyone watched: the opening read finds it missing.
    client
        .delete(session.key(&name("a"), &server(1)), None)
        .await?;
    // Deleted, then written again by us: not a removal.
    client
        .delete(session.key(&name("a"), &server(2)), None)
        .await?;
    session.mount(&name("a"), &server(2), TTL, flags).await?;
    let first = tokio::time::timeout(PATIENCE, session.removed_mounts())
        .await
        .context("the opening read reports at once")??;
    ensure!(first == [removal("a", 1)], "{first:?}");

    // Unmounted by us: not a removal either; deleted by someone else: one.
    session.unmount(&name("a"), &server(2)).await?;
    client
        .delete(session.key(&name("a"), &server(3)), None)
        .await?;
    let second = tokio::time::timeout(PATIENCE, session.removed_mounts())
        .await
        .context("the watch reports the delete")??;
    ensure!(second == [removal("a", 3)], "{second:?}");
    session.release().await?;
    Ok(())
}

/// etcd's current revision: every write bumps it, keep-alives do not.
async fn revision(cluster: &EtcdCluster) -> Result<i64> {
    let mut client = cluster.client().await?;
    let response = client
        .get(
            PREFIX,
            Some(etcd_client::GetOptions::new().with_count_only()),
        )
        .await?;
    response
        .header()
        .map(|header| header.revision())
        .context("a response header")
}

#[tokio::test]
async fn two_publishers_replacing_one_name_settle_on_the_last_replacer() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let replace = MountFlags {
        replace: true,
        ..MountFlags::NONE
    };
    let start = |port: u16| {
        let publisher = Publisher::start(etcd.fresh_session(), config().with_flags(replace));
        async move {
            let publisher = publisher?;
            publisher.add_name(name("a")).await?;
            publisher.add_server(server(port)).await?;
            anyhow::Ok(publisher)
        }
    };
    let old = start(1).await?;
    all_mounted(&old).await?;
    eventually("the old publisher watches", PATIENCE, || async {
        Ok(watchers(&cluster).await? == 1)
    })
    .await?;
    // The new version comes up beside it, as in a rolling deploy.
    let new = start(2).await?;
    all_mounted(&new).await?;
    let mut watch = old.watch().await?;
    tokio::time::timeout(
        PATIENCE,
        watch.wait_for(|s| {
            s.mount(&name("a"), &server(1))
                .is_some_and(|m| m.observed == MountState::Replaced)
        }),
    )
    .await
    .context("the old publisher never saw the replacement")??;

    // Settled: over several refresh periods nobody writes, where
    // publishers undoing each other would write thousands of times.
    let before = revision(&cluster).await?;
    let window_end = Instant::now() + PERIOD * 4;
    while Instant::now() < window_end {
        ensure!(
            servers(&etcd, &name("a")).await? == [server(2)],
            "the last replacer holds the name"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes = revision(&cluster).await? - before;
    ensure!(writes == 0, "{writes} writes after the replacement");
    let status = old.status().await?;
    let replaced = status.mount(&name("a"), &server(1)).context("wanted")?;
    ensure!(replaced.observed == MountState::Replaced, "{replaced:?}");
    all_mounted(&new).await?;

    // The old one stops: nothing of the new one's goes with it.
    old.stop().await;
    old.wait().await?;
    ensure!(servers(&etcd, &name("a")).await? == [server(2)]);
    new.stop().await;
    new.wait().await?;
    ensure!(servers(&etcd, &name("a")).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_refused_or_forgotten_mount_is_never_reported_removed() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let flags = MountFlags::NONE;
    let mut client = cluster.client().await?;
    let sorted = |mut removed: Vec<RemovedMount>| {
        removed.sort_by(|a, b| (&a.name, &a.server).cmp(&(&b.name, &b.server)));
        removed
    };

    // The lease goes behind our back; a mount of a new pair is then refused
    // outright (etcd: lease not found), so it wrote nothing. The watch's
    // opening read reports the pairs the lease took with it, not that one.
    let session = etcd.fresh_session();
    for port in 1..=2 {
        session.mount(&name("a"), &server(port), TTL, flags).await?;
    }
    let lease = session.lease_id().await.context("a lease")?;
    client.lease_revoke(lease).await?;
    let refused = session.mount(&name("b"), &server(3), TTL, flags).await;
    ensure!(
        matches!(refused, Err(NamespaceError::EntriesLost { .. })),
        "{refused:?}"
    );
    let removed = tokio::time::timeout(PATIENCE, session.removed_mounts())
        .await
        .context("the opening read reports at once")??;
    ensure!(
        sorted(removed.clone()) == [removal("a", 1), removal("a", 2)],
        "{removed:?}"
    );
    session.release().await?;

    // A pair the publisher forgot is no news either when its key goes.
    let session = etcd.fresh_session();
    for port in 1..=2 {
        session.mount(&name("c"), &server(port), TTL, flags).await?;
    }
    session.forgotten(&name("c"), &server(1));
    for port in 1..=2 {
        client
            .delete(session.key(&name("c"), &server(port)), None)
            .await?;
    }
    let removed = tokio::time::timeout(PATIENCE, session.removed_mounts())
        .await
        .context("the opening read reports at once")??;
    ensure!(removed == [removal("c", 2)], "{removed:?}");
    session.release().await?;
    Ok(())
}

#[tokio::test]
async fn listings_and_the_removal_check_read_in_pages() -> Result<()> {
    // Pages of two keys: every read below takes several.
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?.with_page_size(2);
    let session = etcd.fresh_session();
    let flags = MountFlags::NONE;
    for text in ["a", "a/b", "c"] {
        for port in 1..=3 {
            session
                .mount(&name(text), &server(port), TTL, flags)
                .await?;
        }
    }
    let mut client = cluster.client().await?;
    // Others' keys the removal check must not read, and a junk one.
    for port in 10..=14 {
        client
            .put(etcd.key(&name("z"), &server(port)), "{}", None)
            .await?;
    }
    client.put("flotilla/names/a/#junk", "{}", None).await?;

    let everything = etcd.list(None).await?;
    let listed: Vec<(String, usize)> = everything
        .names
        .iter()
        .map(|l| (l.name.to_string(), l.servers.len()))
        .collect();
    assert_eq!(
        listed,
        [
            (String::from("a"), 3),
            (String::from("a/b"), 3),
            (String::from("c"), 3),
            (String::from("z"), 5),
        ]
    );
    ensure!(
        everything.unreadable.len() == 1,
        "{:?}",
        everything.unreadable
    );
    let under_a = etcd.list(Some(&name("a"))).await?;
    ensure!(under_a.names.len() == 2 && under_a.unreadable.len() == 1);

    // Nine keys of ours, checked in transactions of two reads: the ones
    // deleted before the watch opened are found, and only those.
    for (text, port) in [("a", 2), ("c", 3)] {
        client
            .delete(session.key(&name(text), &server(port)), None)
            .await?;
    }
    let removed = tokio::time::timeout(PATIENCE, session.removed_mounts())
        .await
        .context("the opening check reports at once")??;
    let mut removed: Vec<(String, u16)> = removed
        .iter()
        .map(|r| (r.name.to_string(), r.server.port()))
        .collect();
    removed.sort();
    assert_eq!(removed, [(String::from("a"), 2), (String::from("c"), 3)]);
    session.release().await?;
    Ok(())
}

#[tokio::test]
async fn a_prefix_larger_than_one_response_can_carry_still_lists_and_is_watched() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let session = etcd.fresh_session();
    session
        .mount(&name("ours"), &server(1), TTL, MountFlags::NONE)
        .await?;
    // About 5 MiB of others' entries: more than the client decodes in one
    // message (4 MiB).
    let mut client = cluster.client().await?;
    let filler = format!("{{\"note\":\"{}\"}}", "x".repeat(1024));
    for batch in 0..40 {
        let puts: Vec<etcd_client::TxnOp> = (0..128)
            .map(|index| {
                let key = etcd.key(&name("big"), &server(batch * 128 + index + 1));
                etcd_client::TxnOp::put(key, filler.as_str(), None)
            })
            .collect();
        client.txn(etcd_client::Txn::new().and_then(puts)).await?;
    }
    ensure!(
        client
            .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .is_err(),
        "one read of the whole prefix is too large for the client"
    );

    let everything = etcd.list(None).await?;
    let counts: Vec<(String, usize)> = everything
        .names
        .iter()
        .map(|l| (l.name.to_string(), l.servers.len()))
        .collect();
    assert_eq!(
        counts,
        [(String::from("big"), 40 * 128), (String::from("ours"), 1)]
    );
    // The removal watch opens (it reads only our own keys) and reports.
    client
        .delete(session.key(&name("ours"), &server(1)), None)
        .await?;
    let removed = tokio::time::timeout(PATIENCE, session.removed_mounts())
        .await
        .context("the watch opens and reports")??;
    ensure!(removed == [removal("ours", 1)], "{removed:?}");
    session.release().await?;
    Ok(())
}

#[tokio::test]
async fn wait_mounted_returns_once_another_client_resolves_the_pair() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let etcd = namespace(&cluster).await?;
    let reader = namespace(&cluster).await?;
    let publisher = Publisher::start(etcd.fresh_session(), config())?;
    publisher.add_name(name("api")).await?;
    publisher.add_server(server(1)).await?;
    let status = tokio::time::timeout(PATIENCE, publisher.wait_mounted(&name("api"), &server(1)))
        .await
        .context("not mounted in time")??;
    ensure!(status.observed == MountState::Mounted);
    // No waiting for the reader: the mount is in etcd when the wait returns.
    assert_eq!(servers(&reader, &name("api")).await?, [server(1)]);

    publisher.add_server(server(2)).await?;
    tokio::time::timeout(PATIENCE, publisher.wait_all_mounted())
        .await
        .context("not all mounted in time")??;
    assert_eq!(
        servers(&reader, &name("api")).await?,
        [server(1), server(2)]
    );

    let never = publisher.wait_mounted(&name("other"), &server(1)).await;
    ensure!(
        matches!(never, Err(Error::NotPublished { .. })),
        "{never:?}"
    );
    publisher.stop().await;
    let stopped = publisher.wait_mounted(&name("api"), &server(1)).await;
    ensure!(matches!(stopped, Err(Error::Stopped)), "{stopped:?}");
    publisher.wait().await?;
    assert_eq!(servers(&reader, &name("api")).await?, []);
    Ok(())
}

/// Options for a TLS cluster: its CA, and a client certificate for
/// `user` unless `None`.
fn tls_options(cluster: &EtcdCluster, user: Option<&str>) -> Result<EtcdOptions> {
    Ok(cluster.options_as(user)?)
}

/// The prefix the test users of a cluster with authentication may use
/// (`flotilla_testkit::PREFIX`, less its slash: the namespace adds it).
const SECURE_PREFIX: &str = "flotilla";

#[tokio::test]
async fn a_publisher_mounts_and_a_name_resolves_over_tls_with_client_certificates() -> Result<()> {
    let cluster = EtcdCluster::with_tls(3).await?;
    let etcd =
        EtcdNamespace::connect_with(&tls_options(&cluster, Some("publisher"))?, PREFIX).await?;
    let publisher = publishing(&etcd, &["a"], &[1]).await?;
    // Another client, with a certificate of its own, resolves the name.
    let reader =
        EtcdNamespace::connect_with(&tls_options(&cluster, Some("reader"))?, PREFIX).await?;
    assert_eq!(servers(&reader, &name("a")).await?, [server(1)]);
    publisher.stop().await;
    publisher.wait().await?;
    assert!(servers(&reader, &name("a")).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_client_without_a_certificate_or_trusting_another_ca_gets_a_clear_error() -> Result<()> {
    let cluster = EtcdCluster::with_tls(1).await?;
    let started = Instant::now();
    let refused = EtcdNamespace::connect_with(&tls_options(&cluster, None)?, PREFIX).await;
    assert!(
        matches!(&refused, Err(Error::Etcd(EtcdConnectError::Tls { .. }))),
        "{refused:?}"
    );
    // Trusting a CA that did not sign the members' certificates.
    let other = EtcdCluster::with_tls(1).await?;
    let (certificate, key) = cluster.tls().context("TLS")?.client_certificate("x")?;
    let options = EtcdOptions::new(cluster.endpoints())
        .with_ca_pem(other.tls().context("TLS")?.ca_pem())
        .with_client_pem(certificate, key);
    let refused = EtcdNamespace::connect_with(&options, PREFIX).await;
    assert!(
        matches!(&refused, Err(Error::Etcd(EtcdConnectError::Tls { .. }))),
        "{refused:?}"
    );
    // Each came back once, after a few retries at most: no loop.
    ensure!(started.elapsed() < PATIENCE, "connecting kept retrying");
    Ok(())
}

#[tokio::test]
async fn users_are_held_to_their_roles_and_their_passwords() -> Result<()> {
    let cluster = EtcdCluster::with_tls_and_auth(1).await?;
    let as_user = |user: &str, password: &str| -> Result<EtcdOptions> {
        Ok(tls_options(&cluster, Some(user))?.with_user(user, password))
    };
    // (`options_as` gives the right password; `with_user` here replaces it.)
    // The user whose role covers the prefix publishes.
    let etcd = EtcdNamespace::connect_with(
        &as_user(flotilla_testkit::USER, flotilla_testkit::PASSWORD)?,
        SECURE_PREFIX,
    )
    .await?;
    let publisher = publishing(&etcd, &["a"], &[1]).await?;
    assert_eq!(servers(&etcd, &name("a")).await?, [server(1)]);
    publisher.stop().await;
    publisher.wait().await?;

    // One whose role covers other keys only is refused, at once.
    let refused = EtcdNamespace::connect_with(
        &as_user(flotilla_testkit::OUTSIDER, flotilla_testkit::PASSWORD)?,
        SECURE_PREFIX,
    )
    .await;
    match &refused {
        Err(Error::Etcd(EtcdConnectError::PermissionDenied { prefix, .. })) => {
            assert_eq!(prefix, "flotilla/");
        }
        other => bail!("the outsider was not refused for its role: {other:?}"),
    }
    // A wrong password.
    let refused =
        EtcdNamespace::connect_with(&as_user(flotilla_testkit::USER, "wrong")?, SECURE_PREFIX)
            .await;
    assert!(
        matches!(
            &refused,
            Err(Error::Etcd(EtcdConnectError::Unauthenticated { .. }))
        ),
        "{refused:?}"
    );
    Ok(())
}
