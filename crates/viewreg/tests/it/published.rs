//! Discovery of servers a flotilla-publisher advertises, through core-types'
//! `EndpointSource`: no glue code between the two crates.

use std::time::Duration;

use flotilla_core_types::{Name, Worker};
use flotilla_publisher::{MountTable, Publisher, PublisherConfig};
use flotilla_viewreg::{Health, NameLocator};

use crate::harness::{Scripted, config, ep, health_of, serve, start, until};

#[tokio::test(start_paused = true)]
async fn servers_a_publisher_mounts_are_discovered_checked_and_dropped() {
    let table = MountTable::start();
    let publisher =
        Publisher::start(table.clone(), PublisherConfig::default()).expect("a valid config");
    let name = Name::new("kv").expect("valid");
    publisher.add_name(name.clone()).await.expect("adds");
    publisher.add_server(ep(1)).await.expect("adds");
    publisher.add_server(ep(2)).await.expect("adds");
    publisher.wait_all_mounted().await.expect("mounted");

    let prober = Scripted::default();
    prober.set(&ep(1), serve(&["kv"]));
    prober.set(&ep(2), serve(&["kv"]));
    let (registry, _clients) = start(NameLocator::new(&table, &name), &prober, config());
    let snapshot = until(&registry, |snapshot| {
        health_of(snapshot, &ep(1)) == Some(Health::Healthy)
            && health_of(snapshot, &ep(2)) == Some(Health::Healthy)
    })
    .await;
    assert_eq!(snapshot.all_views().len(), 2);

    // The publisher stops advertising one: the registry drops its view.
    publisher.remove_server(ep(2)).await.expect("removes");
    let snapshot = until(&registry, |snapshot| snapshot.view(&ep(2)).is_none()).await;
    assert_eq!(health_of(&snapshot, &ep(1)), Some(Health::Healthy));

    // A publisher that stops unmounts everything: the registry follows.
    publisher.stop().await;
    let snapshot = until(&registry, |snapshot| snapshot.all_views().is_empty()).await;
    assert!(snapshot.all_views().is_empty());

    // A table that shuts down ends the locator; the registry keeps its set.
    table.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.kill();
    registry.wait().await.expect("stops cleanly");
    publisher.wait().await.expect("stopped");
}
