//! Where an initiator finds its peers: an async source of endpoints whose
//! host names resolve at connect time, and sources that fail or hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_core_types::{Endpoint, Worker};
use flotilla_gensync::{Error, Initiator, Peers, SyncConfig};

use crate::harness::{Node, stop};

fn quick() -> SyncConfig {
    let mut config = SyncConfig::default();
    config.interval = Duration::from_millis(50);
    config.round_timeout = Duration::from_secs(5);
    config
}

#[tokio::test]
async fn an_initiator_syncs_with_localhost_endpoints_from_an_async_source() {
    let (a, b) = (Node::new("a"), Node::new("b"));
    let serve_a = a.serve().await;
    a.put("k", "1").await;
    let port = serve_a.local_addr().port();
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&asked);
    let peers = Peers::resolved(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::task::yield_now().await;
            Ok::<_, flotilla_core_types::InvalidId>(vec![Endpoint::new("localhost", port)?])
        }
    });
    let initiator = Initiator::start(b.replica.clone(), b.transport.clone(), peers, quick());
    let mut passes = initiator.passes();
    passes
        .wait_for(|&done| done >= 2)
        .await
        .expect("initiator running");
    assert_eq!(b.get("k").as_deref(), Some("1"));
    assert!(asked.load(Ordering::SeqCst) >= 2, "asked every pass");
    initiator.kill();
    initiator.wait().await.expect("clean stop");
    stop(serve_a).await;
}

#[tokio::test(start_paused = true)]
async fn a_peer_source_that_hangs_or_fails_does_not_stall_the_initiator() {
    let node = Node::new("b");
    let hanging = Peers::resolved(std::future::pending::<Result<Vec<Endpoint>, Error>>);
    let failing = Peers::resolved(|| async { Err::<Vec<Endpoint>, _>("registry down") });
    for peers in [hanging, failing] {
        let initiator =
            Initiator::start(node.replica.clone(), node.transport.clone(), peers, quick());
        let mut passes = initiator.passes();
        // On the paused clock, the source's timeout and the interval pass
        // as soon as everything waits on time.
        tokio::time::timeout(Duration::from_secs(60), passes.wait_for(|&done| done >= 3))
            .await
            .expect("passes go on")
            .expect("initiator running");
        initiator.kill();
        initiator.wait().await.expect("clean stop");
    }
}
