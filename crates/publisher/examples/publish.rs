//! A tour of the publisher on the embedded mount table, in real time (about
//! five seconds): names and servers mounted as a cross product, resolved by
//! another client, kept alive by refreshes, mounted again when the table
//! loses everything, unmounted by a remove and by the stop.
//!
//! Run with `cargo run -p flotilla-publisher --example publish`
//! (`RUST_LOG=debug` shows every mount and unmount).

use std::time::Duration;

use anyhow::Result;
use flotilla_core_types::{Endpoint, Name, Worker};
use flotilla_publisher::{MountTable, Namespace, Publisher, PublisherConfig};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    // A one-second period, so the tour is short: each mount lives for two
    // seconds unless refreshed.
    let table = MountTable::start();
    let config =
        PublisherConfig::default().with_period(Duration::from_secs(1), Duration::from_secs(1));
    let publisher = Publisher::start(table.clone(), config)?;
    let api = Name::new("api")?;
    let (one, two): (Endpoint, Endpoint) = ("10.0.0.7:8080".parse()?, "10.0.0.8:8080".parse()?);
    publisher.add_name(api.clone()).await?;
    publisher.add_name(Name::new("api/v2")?).await?;
    publisher.add_server(one.clone()).await?;
    publisher.add_server(two.clone()).await?;
    publisher.wait_all_mounted().await?;
    println!("1. two names x two servers, all mounted:");
    for published in publisher.published().await? {
        println!("   {} -> {}", published.rooted, list(&published.servers));
    }

    println!(
        "2. three seconds later (past the two-second TTL), still resolvable thanks to refreshes:"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resolution = table.resolve(&api).await?;
    for mounted in &resolution.servers {
        println!(
            "   {} (TTL left {:?})",
            mounted.server,
            mounted.ttl_left.unwrap_or_default()
        );
    }

    println!("3. the table loses every entry, as a restarted table would:");
    table.reset();
    let reset_at = Instant::now();
    println!("   entries right after the reset: {}", table.entry_count());
    while table.entry_count() < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "   all 4 back after {:.1?}: the first refresh found its mount gone and re-mounted everything",
        reset_at.elapsed()
    );

    println!("4. removing a server unmounts it under every name:");
    let mut status = publisher.watch().await?;
    publisher.remove_server(one).await?;
    status
        .wait_for(|s| s.all_settled() && s.mounts.len() == 2)
        .await?;
    println!(
        "   api -> {}",
        list(&table.resolve(&api).await?.endpoints())
    );

    println!("5. stopping unmounts the rest:");
    publisher.stop().await;
    publisher.wait().await?;
    println!(
        "   entries left: {}; add_server now says: {}",
        table.entry_count(),
        publisher
            .add_server(two)
            .await
            .map_or_else(|e| e.to_string(), |()| "ok".into())
    );
    Ok(())
}

fn list(servers: &[Endpoint]) -> String {
    let shown: Vec<String> = servers.iter().map(ToString::to_string).collect();
    shown.join(", ")
}
