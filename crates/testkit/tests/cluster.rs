//! The harness against real etcd: a single member serves reads and writes,
//! a three-member cluster survives the loss of its leader, and dropping a
//! cluster leaves no process behind.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_testkit::{EtcdCluster, READY_TIMEOUT};

#[tokio::test]
async fn a_single_member_serves_writes_and_reads() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    assert_eq!(cluster.size(), 1);
    let mut client = cluster.client().await?;
    client.put("greeting", "hello", None).await?;
    let answer = client.get("greeting", None).await?;
    assert_eq!(answer.kvs()[0].value(), b"hello");
    assert_eq!(cluster.leader().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_three_member_cluster_elects_a_new_leader_and_takes_the_old_one_back() -> Result<()> {
    let mut cluster = EtcdCluster::three().await?;
    let mut client = cluster.client().await?;
    client.put("before", "1", None).await?;

    let old_leader = cluster.leader().await?;
    cluster.kill(old_leader)?;
    assert!(!cluster.is_running(old_leader));
    let new_leader = wait_for_leader(&cluster).await?;
    ensure!(new_leader != old_leader, "the killed member cannot lead");

    client.put("during", "2", None).await?;
    cluster.restart(old_leader).await?;
    assert!(cluster.is_running(old_leader));
    // The restarted member caught up with what was written without it.
    let mut direct = etcd_client::Client::connect([cluster.endpoint(old_leader)], None).await?;
    let during = wait_for_key(&mut direct, "during").await?;
    assert_eq!(during, b"2");
    Ok(())
}

#[tokio::test]
async fn killing_a_stopped_member_or_restarting_a_running_one_is_refused() -> Result<()> {
    let mut cluster = EtcdCluster::single().await?;
    assert!(cluster.restart(0).await.is_err(), "member 0 is running");
    cluster.kill(0)?;
    assert!(cluster.kill(0).is_err(), "member 0 is already dead");
    assert!(cluster.kill(7).is_err(), "there is no member 7");
    Ok(())
}

#[tokio::test]
async fn dropping_the_cluster_kills_its_processes() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let endpoint = cluster.endpoint(0);
    drop(cluster);
    let address = endpoint.trim_start_matches("http://");
    ensure!(
        std::net::TcpStream::connect(address).is_err(),
        "nothing listens on {address} after the drop"
    );
    Ok(())
}

async fn wait_for_leader(cluster: &EtcdCluster) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match cluster.leader().await {
            Ok(leader) => return Ok(leader),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(error).context("no new leader in time");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn wait_for_key(client: &mut etcd_client::Client, key: &str) -> Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(answer) = client.get(key, None).await
            && let Some(kv) = answer.kvs().first()
        {
            return Ok(kv.value().to_vec());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{key} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
