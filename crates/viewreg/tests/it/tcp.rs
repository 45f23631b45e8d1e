//! The TCP-connect prober against real loopback sockets (real clock: no
//! timing is asserted).

use flotilla_core_types::Endpoint;
use flotilla_viewreg::{ProbeError, ProbeOutcome, Prober, TcpProber};

use crate::harness::{Features, features};

#[tokio::test]
async fn a_listening_port_serves_and_a_closed_one_is_unreachable() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let open: Endpoint = listener.local_addr()?.try_into()?;
    let prober = TcpProber::with_features(features(&["kv"]));
    match prober.probe(&open).await {
        ProbeOutcome::Serving {
            features: served,
            partition,
        } => {
            assert_eq!(served, features(&["kv"]));
            assert_eq!(partition, None);
        }
        other => panic!("expected serving, got {other:?}"),
    }
    drop(listener);
    let closed = prober.probe(&open).await;
    assert!(
        matches!(&closed, ProbeOutcome::Failed(ProbeError::Unreachable { endpoint, .. }) if *endpoint == open),
        "{closed:?}"
    );
    let plain = TcpProber::<Features>::new();
    assert!(matches!(plain.probe(&open).await, ProbeOutcome::Failed(_)));
    Ok(())
}
