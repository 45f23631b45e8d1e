//! `EtcdLocator` against real etcd processes started by flotilla-testkit:
//! puts and deletes, paging, a resume after a member the locator talks to
//! is killed, a listing again after a compaction, and a registry that
//! follows a flotilla-publisher's servers through a leader kill. These run
//! on the real clock; every wait is for a condition, bounded by a
//! deadline, and a test fails (never skips) when etcd is missing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::Client;
use flotilla_core_types::{Endpoint, Name, Worker};
use flotilla_publisher::{EtcdNamespace, Publisher, PublisherConfig};
use flotilla_testkit::EtcdCluster;
use flotilla_viewreg::{
    EndpointFrom, EndpointSet, EtcdLocator, Locator, LocatorError, RegistryConfig, Snapshot,
    WaitLimit,
};
use tokio::time::Instant;

use crate::harness::{Client as TestClient, Features, Scripted, ep, start};

/// How long any condition may take to come true before the test fails: far
/// above what each needs, so that a loaded machine does not fail them.
const PATIENCE: Duration = Duration::from_secs(30);

/// The pause between a failed call and the next, as a registry's backoff
/// would make (the first of which is a second; shorter here).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

const PREFIX: &str = "services/kv/";

fn set(endpoints: &[Endpoint]) -> EndpointSet {
    endpoints.iter().cloned().collect()
}

/// A client of member `index` alone, so that killing it disconnects the
/// client.
async fn member_client(cluster: &EtcdCluster, index: usize) -> Result<Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    Ok(Client::connect([cluster.endpoint(index)], Some(options)).await?)
}

/// A client of every member but `index`.
async fn others_client(cluster: &EtcdCluster, index: usize) -> Result<Client> {
    let endpoints: Vec<String> = (0..cluster.size())
        .filter(|&member| member != index)
        .map(|member| cluster.endpoint(member))
        .collect();
    Ok(Client::connect(endpoints, None).await?)
}

/// Writes `key`, again after a failure (a cluster that just lost a member
/// may time a request out), until it succeeds or [`PATIENCE`] runs out.
async fn put(client: &mut Client, key: &str, value: &str) -> Result<i64> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.put(key, value, None).await {
            Ok(response) => return Ok(response.header().map_or(0, |header| header.revision())),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, key, "put failed; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => return Err(error).context(format!("putting {key}")),
        }
    }
}

/// Deletes `key`, again after a failure, as [`put`] writes.
async fn delete(client: &mut Client, key: &str) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.delete(key, None).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, key, "delete failed; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => return Err(error).context(format!("deleting {key}")),
        }
    }
}

/// A member that is not the leader, so that killing it starts no election.
async fn a_follower(cluster: &EtcdCluster) -> Result<usize> {
    let leader = cluster.leader().await?;
    Ok((leader + 1) % cluster.size())
}

/// The locator's next answer, which must come within [`PATIENCE`].
async fn next_answer(locator: &mut EtcdLocator) -> Result<Result<EndpointSet, LocatorError>> {
    tokio::time::timeout(PATIENCE, locator.next_endpoints())
        .await
        .context("no answer in time")?
        .context("the locator ended")
}

/// Waits for `locator` to answer `expected`. On the way it may answer only
/// states of `passage` (the states the store went through before
/// `expected`, in order), each no earlier than the last it answered: a
/// catch-up may come in one answer or in several, but never goes back or
/// invents a state.
async fn until_set(
    locator: &mut EtcdLocator,
    expected: &EndpointSet,
    passage: &[EndpointSet],
) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    let mut last_error = None;
    let mut at = 0;
    loop {
        let answer = tokio::time::timeout_at(deadline, locator.next_endpoints())
            .await
            .with_context(|| {
                format!("never answered {expected:?} in time; last error: {last_error:?}")
            })?
            .context("the locator ended")?;
        match answer {
            Ok(answered) if answered == *expected => return Ok(()),
            Ok(answered) => {
                let found = passage[at..].iter().position(|state| *state == answered);
                let Some(step) = found else {
                    anyhow::bail!(
                        "answered {answered:?} on the way to {expected:?}, out of {passage:?} from step {at}"
                    );
                };
                at += step;
            }
            Err(error) => {
                last_error = Some(error.to_string());
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locator_sees_puts_and_deletes_under_its_prefix() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let mut client = cluster.client().await?;
    put(&mut client, "services/kv/a", "10.0.0.1:80").await?;
    put(&mut client, "services/kv/b", " 10.0.0.2:80\n").await?;
    // Outside the prefix, though it begins with the same letters.
    put(&mut client, "services/kvx", "10.0.0.9:80").await?;
    put(&mut client, "services/kw/a", "10.0.0.9:80").await?;
    // Under the prefix, but no endpoint: skipped and reported.
    put(&mut client, "services/kv/bad", "not an endpoint").await?;

    let mut locator = EtcdLocator::new(client.clone(), PREFIX, EndpointFrom::Value);
    let status = locator.status();
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(1), ep(2)]));
    {
        let status = status.borrow();
        assert_eq!(status.listings, 1);
        assert_eq!(status.skipped, 1);
        assert_eq!(
            status.unreadable.keys().collect::<Vec<_>>(),
            ["services/kv/bad"]
        );
    }

    put(&mut client, "services/kv/c", "10.0.0.3:80").await?;
    assert_eq!(
        next_answer(&mut locator).await??,
        set(&[ep(1), ep(2), ep(3)])
    );
    delete(&mut client, "services/kv/a").await?;
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(2), ep(3)]));

    // Changes outside the prefix are not answers: the next answer is the
    // change made after them.
    put(&mut client, "services/kvx", "10.0.0.8:80").await?;
    // Two keys naming one endpoint are one member, there while either is.
    put(&mut client, "services/kv/c2", "10.0.0.3:80").await?;
    delete(&mut client, "services/kv/c").await?;
    put(&mut client, "services/kv/d", "10.0.0.4:80").await?;
    assert_eq!(
        next_answer(&mut locator).await??,
        set(&[ep(2), ep(3), ep(4)])
    );

    // An entry turning unreadable leaves the set; fixed, it comes back, and
    // is no longer reported.
    put(&mut client, "services/kv/b", "garbage").await?;
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(3), ep(4)]));
    assert_eq!(status.borrow().unreadable.len(), 2);
    delete(&mut client, "services/kv/bad").await?;
    put(&mut client, "services/kv/b", "10.0.0.2:80").await?;
    assert_eq!(
        next_answer(&mut locator).await??,
        set(&[ep(2), ep(3), ep(4)])
    );
    let status = status.borrow().clone();
    assert!(status.unreadable.is_empty(), "{status:?}");
    assert_eq!(status.skipped, 2);
    assert_eq!(
        (status.listings, status.resumes, status.compactions),
        (1, 0, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_follows_every_key() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let mut client = cluster.client().await?;
    put(&mut client, "a", "10.0.0.1:80").await?;
    put(&mut client, "z/deep/key", "10.0.0.2:80").await?;

    // etcd takes an empty key as none: the locator must start at `\0`.
    let mut locator = EtcdLocator::new(client.clone(), "", EndpointFrom::Value);
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(1), ep(2)]));
    put(&mut client, "m", "10.0.0.3:80").await?;
    assert_eq!(
        next_answer(&mut locator).await??,
        set(&[ep(1), ep(2), ep(3)])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_answers_times_the_request_out() -> Result<()> {
    // A listener that accepts connections and never says a word, as a hung
    // member would.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = silent.local_addr()?;
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let client = Client::connect([format!("http://{address}")], None).await?;
    let mut locator = EtcdLocator::new(client, PREFIX, EndpointFrom::Value)
        .with_request_timeout(Duration::from_millis(300));
    let answer = next_answer(&mut locator).await?;
    accepting.abort();
    assert!(
        matches!(answer, Err(LocatorError::Unavailable { .. })),
        "{answer:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_reads_every_page() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let mut client = cluster.client().await?;
    let mut expected = BTreeSet::new();
    for n in 1..=23u16 {
        let endpoint = Endpoint::new("10.0.1.1", 1000 + n)?;
        put(
            &mut client,
            &format!("{PREFIX}{n:03}"),
            &endpoint.to_string(),
        )
        .await?;
        expected.insert(endpoint);
    }
    // Keys right after the prefix's range, which no page may take in.
    let last_write = put(&mut client, "services/kv0", "10.0.0.9:80").await?;

    let mut locator =
        EtcdLocator::new(client.clone(), PREFIX, EndpointFrom::Value).with_page_size(4);
    assert_eq!(next_answer(&mut locator).await??, expected);
    // Every page was read at the revision of the first: the one listing
    // is in step with the store as it was.
    let status = locator.status().borrow().clone();
    assert_eq!(status.revision, Some(last_write), "{status:?}");
    assert_eq!(status.listings, 1);

    // A page size of exactly the key count, and one of a single key.
    for page_size in [23, 1] {
        let mut locator =
            EtcdLocator::new(client.clone(), PREFIX, EndpointFrom::Value).with_page_size(page_size);
        assert_eq!(next_answer(&mut locator).await??, expected);
    }
    Ok(())
}

/// Keys that change while a listing pages through them: every page is read
/// at the first page's revision, so the listing is one state of the
/// store. A writer moves the first and the last key together, in one
/// transaction, to a new port each time; a listing that read its pages at
/// different revisions would show them with different ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_is_one_state_while_keys_change_under_it() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let mut client = cluster.client().await?;
    for n in 1..=23u16 {
        let endpoint = Endpoint::new(&format!("10.0.2.{n}"), 2000)?;
        put(
            &mut client,
            &format!("{PREFIX}{n:03}"),
            &endpoint.to_string(),
        )
        .await?;
    }
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (mut client, writing) = (client.clone(), Arc::clone(&writing));
        tokio::spawn(async move {
            let mut port = 2000u16;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                port = port.wrapping_add(1).max(2001);
                let txn = etcd_client::Txn::new().and_then([
                    etcd_client::TxnOp::put(
                        format!("{PREFIX}001"),
                        format!("10.0.2.1:{port}"),
                        None,
                    ),
                    etcd_client::TxnOp::put(
                        format!("{PREFIX}023"),
                        format!("10.0.2.23:{port}"),
                        None,
                    ),
                ]);
                client.txn(txn).await?;
            }
            anyhow::Ok(port)
        })
    };
    let port_of = |endpoints: &BTreeSet<Endpoint>, host: &str| {
        endpoints
            .iter()
            .find(|endpoint| endpoint.host() == host)
            .map(Endpoint::port)
    };
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let mut locator =
            EtcdLocator::new(client.clone(), PREFIX, EndpointFrom::Value).with_page_size(1);
        let listed = next_answer(&mut locator).await??;
        ensure!(listed.len() == 23, "{listed:?}");
        let (first, last) = (port_of(&listed, "10.0.2.1"), port_of(&listed, "10.0.2.23"));
        ensure!(
            first.is_some() && first == last,
            "pages from different revisions: {first:?} and {last:?}"
        );
        seen.insert(first);
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await??;
    ensure!(
        seen.len() > 1,
        "the keys changed between listings: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_read_from_the_key_after_the_prefix() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let mut client = cluster.client().await?;
    put(&mut client, "services/kv/10.0.0.1:80", "").await?;
    put(&mut client, "services/kv/10.0.0.2:80", "anything").await?;
    put(&mut client, "services/kv/nested/10.0.0.3:80", "").await?;
    let mut locator = EtcdLocator::new(client.clone(), PREFIX, EndpointFrom::KeyAfterPrefix);
    let status = locator.status();
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(1), ep(2)]));
    assert_eq!(
        status.borrow().unreadable.keys().collect::<Vec<_>>(),
        ["services/kv/nested/10.0.0.3:80"]
    );
    delete(&mut client, "services/kv/10.0.0.1:80").await?;
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(2)]));
    Ok(())
}

/// A quiet prefix's revision keeps up with the store through progress
/// requests, so a watch broken after etcd compacted everything up to the
/// store's revision still resumes instead of listing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_prefix_keeps_up_with_the_store_and_resumes_after_a_compaction() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    let member = a_follower(&cluster).await?;
    let mut others = others_client(&cluster, member).await?;
    put(&mut others, "services/kv/a", "10.0.0.1:80").await?;
    let mut locator = EtcdLocator::new(
        member_client(&cluster, member).await?,
        PREFIX,
        EndpointFrom::Value,
    )
    // (The tests' etcd is 3.4.23, whose progress answers may run ahead of
    // unsent events; nothing under the prefix changes here, so none can.)
    .with_progress_every(Duration::from_millis(200));
    let mut status = locator.status();
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(1)]));
    let listed_at = status.borrow().revision.context("listed")?;

    // The locator is driven as a registry would drive it.
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(answer) = locator.next_endpoints().await {
            if answers.send(answer).is_err() {
                break;
            }
        }
    });
    // Writes elsewhere move the store on; the prefix stays quiet.
    let mut newest = listed_at;
    for n in 0..5 {
        newest = put(&mut others, &format!("unrelated/{n}"), "x").await?;
    }
    tokio::time::timeout(
        PATIENCE,
        status.wait_for(|seen| seen.revision >= Some(newest)),
    )
    .await
    .context("the revision never caught up with the store")??;

    others.compact(newest, None).await?;
    cluster.kill(member)?;
    cluster.restart(member).await?;
    // An error for the broken watch, then the set as it was, once resumed.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = tokio::time::timeout_at(deadline, answered.recv())
            .await
            .context("no answer after the restart")?
            .context("the locator ended")?;
        if let Ok(set_now) = answer {
            assert_eq!(set_now, set(&[ep(1)]));
            break;
        }
    }
    let seen = status.borrow().clone();
    assert_eq!(
        (seen.listings, seen.compactions),
        (1, 0),
        "resumed past the compaction, not listed again: {seen:?}"
    );
    assert!(seen.resumes >= 1, "{seen:?}");
    driver.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_broken_by_a_member_kill_resumes_without_missing_changes() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    let member = a_follower(&cluster).await?;
    let mut others = others_client(&cluster, member).await?;
    put(&mut others, "services/kv/a", "10.0.0.1:80").await?;
    put(&mut others, "services/kv/b", "10.0.0.2:80").await?;

    // The locator talks to that member only.
    let mut locator = EtcdLocator::new(
        member_client(&cluster, member).await?,
        PREFIX,
        EndpointFrom::Value,
    );
    let status = locator.status();
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(1), ep(2)]));
    put(&mut others, "services/kv/c", "10.0.0.3:80").await?;
    assert_eq!(
        next_answer(&mut locator).await??,
        set(&[ep(1), ep(2), ep(3)])
    );

    cluster.kill(member)?;
    // The watch breaks: an error, not a set.
    let broken = next_answer(&mut locator).await?;
    ensure!(broken.is_err(), "answered {broken:?} with its member dead");

    // Changes while the locator is disconnected.
    delete(&mut others, "services/kv/a").await?;
    put(&mut others, "services/kv/d", "10.0.0.4:80").await?;
    delete(&mut others, "services/kv/c").await?;
    let unchanged = set(&[ep(1), ep(2), ep(3)]);
    cluster.restart(member).await?;

    // The catch-up may come in one answer or step by step, in order.
    let passage = [unchanged, set(&[ep(2), ep(3)]), set(&[ep(2), ep(3), ep(4)])];
    until_set(&mut locator, &set(&[ep(2), ep(4)]), &passage).await?;
    let seen = status.borrow().clone();
    assert_eq!(seen.listings, 1, "resumed, not listed again: {seen:?}");
    assert!(seen.resumes >= 1, "{seen:?}");
    assert_eq!(seen.compactions, 0);

    // And it follows on from there.
    put(&mut others, "services/kv/e", "10.0.0.5:80").await?;
    until_set(&mut locator, &set(&[ep(2), ep(4), ep(5)]), &[]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_revision_was_compacted_lists_again() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    let member = a_follower(&cluster).await?;
    let mut others = others_client(&cluster, member).await?;
    put(&mut others, "services/kv/a", "10.0.0.1:80").await?;
    put(&mut others, "services/kv/b", "10.0.0.2:80").await?;

    let mut locator = EtcdLocator::new(
        member_client(&cluster, member).await?,
        PREFIX,
        EndpointFrom::Value,
    );
    let status = locator.status();
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(1), ep(2)]));
    // The watch is open (an answer came from it), then broken.
    put(&mut others, "services/kv/c", "10.0.0.3:80").await?;
    assert_eq!(
        next_answer(&mut locator).await??,
        set(&[ep(1), ep(2), ep(3)])
    );
    cluster.kill(member)?;
    let broken = next_answer(&mut locator).await?;
    ensure!(broken.is_err(), "answered {broken:?} with its member dead");

    // Changes, then a compaction of everything up to them: the revisions
    // the locator would resume from are gone.
    delete(&mut others, "services/kv/a").await?;
    put(&mut others, "services/kv/d", "10.0.0.4:80").await?;
    let revision = put(&mut others, "unrelated", "x").await?;
    others.compact(revision, None).await?;
    cluster.restart(member).await?;

    until_set(
        &mut locator,
        &set(&[ep(2), ep(3), ep(4)]),
        &[set(&[ep(1), ep(2), ep(3)])],
    )
    .await?;
    let seen = status.borrow().clone();
    assert_eq!(seen.compactions, 1, "{seen:?}");
    assert_eq!(seen.listings, 2, "{seen:?}");
    assert!(seen.revision >= Some(revision), "{seen:?}");

    put(&mut others, "services/kv/e", "10.0.0.5:80").await?;
    until_set(&mut locator, &set(&[ep(2), ep(3), ep(4), ep(5)]), &[]).await?;
    Ok(())
}

#[tokio::test]
async fn a_published_prefix_must_be_one_the_publisher_takes() -> Result<()> {
    // Building a client does not connect; nothing listens there.
    let client = Client::connect(["http://127.0.0.1:1"], None)
        .await
        .context("a client is built without connecting")?;
    let name = Name::new("kv")?;
    for bad in ["", "flotilla/", "flo#tilla"] {
        let made = EtcdLocator::for_published_name(client.clone(), bad, &name);
        ensure!(
            matches!(made, Err(LocatorError::InvalidPrefix { .. })),
            "{bad:?} was taken"
        );
    }
    let locator = EtcdLocator::for_published_name(client.clone(), "flotilla/names", &name)?;
    assert_eq!(locator.key_prefix(), b"flotilla/names/kv/#");
    // The publisher's own key for a server is that prefix and the server.
    let namespace = EtcdNamespace::from_client(client, "flotilla/names")?;
    for server in [
        ep(1),
        Endpoint::new("::1", 8080)?,
        Endpoint::new("db.internal", 5432)?,
    ] {
        let key = namespace.key(&name, &server);
        let rest = key
            .as_bytes()
            .strip_prefix(locator.key_prefix())
            .with_context(|| format!("{key} is not under the locator's prefix"))?;
        assert_eq!(Endpoint::parse(std::str::from_utf8(rest)?)?, server);
    }
    Ok(())
}

/// Publisher settings for a cluster whose leader is killed: a TTL far
/// longer than an election, so that the keys outlive the outage, and
/// prompt retries.
fn publisher_config() -> PublisherConfig {
    let mut config =
        PublisherConfig::default().with_period(Duration::from_secs(2), Duration::from_secs(13));
    config.retry_delay = Duration::from_millis(100);
    config.max_retry_delay = Duration::from_secs(1);
    config.operation_timeout = Duration::from_secs(2);
    config
}

/// The registry's endpoints in `snapshot`.
fn endpoints_of(snapshot: &Snapshot<Features, TestClient>) -> EndpointSet {
    snapshot
        .all_views()
        .iter()
        .map(|view| view.endpoint().clone())
        .collect()
}

/// Waits on the registry's changes until its endpoints are `expected`;
/// every set on the way must be one of `allowed`.
async fn until_registry_has(
    registry: &crate::harness::TestRegistry,
    expected: &EndpointSet,
    allowed: impl Fn(&EndpointSet) -> bool,
) -> Result<Arc<Snapshot<Features, TestClient>>> {
    let limit = WaitLimit::timeout(PATIENCE);
    let mut snapshot = registry.snapshot();
    loop {
        let endpoints = endpoints_of(&snapshot);
        if endpoints == *expected {
            return Ok(snapshot);
        }
        ensure!(
            allowed(&endpoints),
            "the registry held {endpoints:?} on the way to {expected:?}"
        );
        snapshot = registry
            .wait_for_change(snapshot.stamp(), &limit)
            .await
            .with_context(|| format!("the registry never held {expected:?}"))?;
    }
}

/// Waits on the registry's changes until `condition` holds.
async fn until_snapshot(
    registry: &crate::harness::TestRegistry,
    mut condition: impl FnMut(&Snapshot<Features, TestClient>) -> bool,
) -> Result<Arc<Snapshot<Features, TestClient>>> {
    let limit = WaitLimit::timeout(PATIENCE);
    let mut snapshot = registry.snapshot();
    while !condition(&snapshot) {
        snapshot = registry
            .wait_for_change(snapshot.stamp(), &limit)
            .await
            .with_context(|| format!("the condition did not hold in time:\n{}", snapshot.dump()))?;
    }
    Ok(snapshot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_shows_a_lost_watch_and_clears_it_once_resumed() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    let member = a_follower(&cluster).await?;
    let mut others = others_client(&cluster, member).await?;
    put(&mut others, "services/kv/a", "10.0.0.1:80").await?;
    let locator = EtcdLocator::new(
        member_client(&cluster, member).await?,
        PREFIX,
        EndpointFrom::Value,
    );
    let status = locator.status();
    let mut config = RegistryConfig::default();
    config.locator_retry_delay = Duration::from_millis(100);
    config.max_locator_retry_delay = Duration::from_millis(500);
    let (registry, _clients) = start(locator, &Scripted::default(), config);
    until_registry_has(&registry, &set(&[ep(1)]), |seen| seen.is_empty()).await?;

    cluster.kill(member)?;
    let snapshot = until_snapshot(&registry, |snapshot| {
        snapshot.summary().locator_error.is_some()
    })
    .await?;
    // The set is kept through the outage.
    assert_eq!(endpoints_of(&snapshot), set(&[ep(1)]));
    cluster.restart(member).await?;
    // Nothing changed meanwhile, and still the error clears.
    let snapshot = until_snapshot(&registry, |snapshot| {
        snapshot.summary().locator_error.is_none()
    })
    .await?;
    assert_eq!(endpoints_of(&snapshot), set(&[ep(1)]));
    let seen = status.borrow().clone();
    assert_eq!(seen.listings, 1, "{seen:?}");
    assert!(seen.resumes >= 1, "{seen:?}");
    registry.kill();
    registry.wait().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_follows_published_servers_through_a_leader_kill() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    let endpoints = cluster.endpoints();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let names = "flotilla/names";
    let etcd = EtcdNamespace::connect(&endpoints, names).await?;
    let name = Name::new("kv")?;
    let publisher = Publisher::start(etcd.fresh_session(), publisher_config())?;
    publisher.add_name(name.clone()).await?;
    for n in 1..=3 {
        publisher.add_server(ep(n)).await?;
    }
    // A server under another name, and one under a name beneath ours:
    // neither is ours.
    let other = Publisher::start(etcd.fresh_session(), publisher_config())?;
    other.add_name(Name::new("kv/v2")?).await?;
    other.add_name(Name::new("kvx")?).await?;
    other.add_server(ep(9)).await?;

    let locator = EtcdLocator::for_published_name(cluster.client().await?, names, &name)?;
    let status = locator.status();
    let mut config = RegistryConfig::default();
    config.locator_retry_delay = Duration::from_millis(100);
    config.max_locator_retry_delay = Duration::from_millis(500);
    let (registry, _clients) = start(locator, &Scripted::default(), config);

    let three = set(&[ep(1), ep(2), ep(3)]);
    // On the way there, only some of them: never another.
    until_registry_has(&registry, &three, |seen| seen.is_subset(&three)).await?;

    let leader = cluster.leader().await?;
    cluster.kill(leader)?;
    // Through the election and after it: exactly those servers, until a
    // fourth one published after the kill joins them.
    publisher.add_server(ep(4)).await?;
    let four = set(&[ep(1), ep(2), ep(3), ep(4)]);
    until_registry_has(&registry, &four, |seen| *seen == three).await?;
    cluster.restart(leader).await?;
    publisher.remove_server(ep(1)).await?;
    until_registry_has(&registry, &set(&[ep(2), ep(3), ep(4)]), |seen| {
        *seen == four
    })
    .await?;
    let seen = status.borrow().clone();
    ensure!(seen.unreadable.is_empty(), "{seen:?}");
    let summary = registry.summary();
    ensure!(summary.locator_error.is_none(), "{summary:?}");

    registry.kill();
    registry.wait().await?;
    for publisher in [publisher, other] {
        publisher.stop().await;
        publisher.wait().await?;
    }
    Ok(())
}

/// On a cluster with TLS and authentication, a locator made with the shared
/// options follows its prefix for a user whose role covers it; a user whose
/// role does not is refused when connecting, with why, and so is a client
/// without a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locator_connects_over_tls_as_a_user_held_to_its_role() -> Result<()> {
    use flotilla_core_types::etcd::EtcdConnectError;
    use flotilla_testkit::{OUTSIDER, PASSWORD, PREFIX as ALLOWED, USER};
    let cluster = EtcdCluster::with_tls_and_auth(1).await?;
    let options = |user: &str| cluster.options_as(Some(user));
    let prefix = format!("{ALLOWED}services/");
    let mut root = cluster.client().await?;
    put(&mut root, &format!("{prefix}a"), "10.0.0.1:80").await?;
    let mut locator =
        EtcdLocator::connect(&options(USER)?, prefix.clone(), EndpointFrom::Value).await?;
    assert_eq!(next_answer(&mut locator).await??, set(&[ep(1)]));

    let refused =
        EtcdLocator::connect(&options(OUTSIDER)?, prefix.clone(), EndpointFrom::Value).await;
    assert!(
        matches!(&refused, Err(EtcdConnectError::PermissionDenied { .. })),
        "{:?}",
        refused.err()
    );
    let anonymous = cluster.options_as(None)?.with_user(USER, PASSWORD);
    let refused = EtcdLocator::connect(&anonymous, prefix, EndpointFrom::Value).await;
    assert!(
        matches!(&refused, Err(EtcdConnectError::Tls { .. })),
        "{:?}",
        refused.err()
    );
    Ok(())
}
