//! Both backends as core-types' `EndpointSource`: the servers of a name as
//! they change, whole sets, nothing polled. The table on the paused clock;
//! etcd (when the feature is on) on real etcd.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_core_types::{Endpoint, EndpointSource, EndpointWatch, SourceError, Worker};
use flotilla_publisher::{MountFlags, MountTable, Namespace};

use crate::harness::{name, server};

fn set(ports: &[u16]) -> BTreeSet<Endpoint> {
    ports.iter().map(|&port| server(port)).collect()
}

/// The next answer, or `None` when none comes within `within` (on the
/// paused clock: when nothing is due to change it).
async fn answer(
    watch: &mut Box<dyn EndpointWatch>,
    within: Duration,
) -> Option<Result<BTreeSet<Endpoint>, SourceError>> {
    tokio::time::timeout(within, watch.next()).await.ok()
}

#[tokio::test(start_paused = true)]
async fn a_table_watch_answers_each_change_of_the_name_and_only_those() {
    let table = MountTable::start();
    let ttl = Duration::from_secs(30);
    let api = name("api");
    let mut watch = table.watch_endpoints(&api);
    let wait = Duration::from_secs(1);
    assert_eq!(
        answer(&mut watch, wait).await,
        Some(Ok(set(&[]))),
        "the current set first"
    );

    table
        .mount(&api, &server(1), ttl, MountFlags::NONE)
        .await
        .expect("mounts");
    assert_eq!(answer(&mut watch, wait).await, Some(Ok(set(&[1]))));
    // A refresh, and a name beneath, change nothing of this name.
    table
        .mount(&api, &server(1), ttl, MountFlags::NONE)
        .await
        .expect("refreshes");
    table
        .mount(&name("api/v2"), &server(9), ttl, MountFlags::NONE)
        .await
        .expect("mounts");
    assert_eq!(
        answer(&mut watch, wait).await,
        None,
        "no answer without a change"
    );

    table
        .mount(&api, &server(2), ttl, MountFlags::NONE)
        .await
        .expect("mounts");
    assert_eq!(answer(&mut watch, wait).await, Some(Ok(set(&[1, 2]))));
    table.unmount(&api, &server(1)).await.expect("unmounts");
    assert_eq!(answer(&mut watch, wait).await, Some(Ok(set(&[2]))));

    // Expiry is an answer at the deadline, without anyone resolving.
    let answered = tokio::time::timeout(ttl * 2, watch.next()).await;
    assert_eq!(answered.ok(), Some(Ok(set(&[]))), "server 2 expired");

    let replace = MountFlags {
        replace: true,
        ..MountFlags::NONE
    };
    table
        .mount(&api, &server(3), ttl, MountFlags::NONE)
        .await
        .expect("mounts");
    assert_eq!(answer(&mut watch, wait).await, Some(Ok(set(&[3]))));
    table
        .mount(&api, &server(4), ttl, replace)
        .await
        .expect("replaces");
    assert_eq!(answer(&mut watch, wait).await, Some(Ok(set(&[4]))));

    table.kill();
    assert_eq!(
        answer(&mut watch, wait).await,
        Some(Err(SourceError::Closed))
    );
    table.wait().await.expect("stops");
}

#[tokio::test(start_paused = true)]
async fn a_table_watch_dropped_mid_wait_loses_no_change() {
    let table = MountTable::start();
    let api = name("api");
    let mut watch = table.watch_endpoints(&api);
    assert_eq!(
        answer(&mut watch, Duration::from_secs(1)).await,
        Some(Ok(set(&[])))
    );
    // A wait given up on...
    assert_eq!(answer(&mut watch, Duration::from_secs(1)).await, None);
    // ...and a change made after it is answered by the next call.
    table
        .mount(&api, &server(5), Duration::from_secs(30), MountFlags::NONE)
        .await
        .expect("mounts");
    assert_eq!(
        answer(&mut watch, Duration::from_secs(1)).await,
        Some(Ok(set(&[5])))
    );
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use anyhow::{Context, Result, ensure};
    use flotilla_publisher::EtcdNamespace;
    use flotilla_testkit::EtcdCluster;

    /// Far above what any step needs: a bound, not a speed.
    const PATIENCE: Duration = Duration::from_secs(30);

    async fn next(watch: &mut Box<dyn EndpointWatch>) -> Result<BTreeSet<Endpoint>> {
        Ok(tokio::time::timeout(PATIENCE, watch.next())
            .await
            .context("no answer in time")??)
    }

    #[tokio::test]
    async fn an_etcd_watch_answers_mounts_unmounts_and_survives_a_restart() -> Result<()> {
        let mut cluster = EtcdCluster::single().await?;
        let endpoints = cluster.endpoints();
        let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let etcd = EtcdNamespace::connect(&endpoints, "flotilla/names").await?;
        let api = name("api");
        let mut watch = etcd.watch_endpoints(&api);
        ensure!(next(&mut watch).await? == set(&[]), "the current set first");

        let ttl = Duration::from_secs(30);
        etcd.mount(&api, &server(1), ttl, MountFlags::NONE).await?;
        ensure!(next(&mut watch).await? == set(&[1]));
        etcd.mount(&api, &server(2), ttl, MountFlags::NONE).await?;
        ensure!(next(&mut watch).await? == set(&[1, 2]));
        etcd.unmount(&api, &server(1)).await?;
        ensure!(next(&mut watch).await? == set(&[2]));

        // The member restarts: the watch says it is out of touch (or
        // follows on), and answers the set as it is once etcd is back,
        // including what changed while it was away.
        cluster.kill(0)?;
        let during = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .context("no answer")?;
        ensure!(
            matches!(during, Err(SourceError::Unavailable(_))),
            "expected unavailable, got {during:?}"
        );
        cluster.restart(0).await?;
        let mut client = cluster.client().await?;
        client
            .delete(etcd.key(&api, &server(2)).as_str(), None)
            .await?;
        let reconnected = tokio::time::timeout(PATIENCE, async {
            loop {
                match watch.next().await {
                    Ok(set) => return Ok(set),
                    // Still reconnecting: retry after a pause, as a
                    // consumer would.
                    Err(SourceError::Unavailable(_)) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(other) => return Err(other),
                }
            }
        });
        let after = reconnected.await.context("never reconnected")??;
        ensure!(
            after == set(&[]),
            "missed the delete made while away: {after:?}"
        );
        Ok(())
    }
}
