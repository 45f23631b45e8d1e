//! The etcd backend against real etcd processes started by
//! flotilla-testkit. These run on the real clock: every wait is for a
//! condition, bounded, and a test fails (never skips) when etcd is missing.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use flotilla_core_types::{Endpoint, Name, Worker};
use flotilla_publisher::{
    Error, EtcdNamespace, NameChange, Namespace, NamespaceError, Publisher, PublisherConfig,
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
async fn eventually<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if probe().await? {
            return Ok(started.elapsed());
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

    let mut client = cluster.client().await?;
    client
        .put("flotilla/names/x/#not-an-endpoint", "{}", None)
        .await?;
    match etcd.resolve(&name("x")).await {
        Err(NamespaceError::Corrupt { key, .. }) => {
            ensure!(key == "flotilla/names/x/#not-an-endpoint");
        }
        other => bail!("expected a corrupt entry, got {other:?}"),
    }
    client
        .put("flotilla/names/y/#10.0.0.1:1", "not json", None)
        .await?;
    ensure!(matches!(
        etcd.resolve(&name("y")).await,
        Err(NamespaceError::Corrupt { .. })
    ));
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
