//! `GrpcProber` against in-process tonic-health servers told what to
//! answer, and against real etcd members (etcd serves `grpc.health.v1`):
//! what each kind of answer reads as, and a registry over a three-member
//! cluster in which a member killed with SIGKILL turns unhealthy within
//! the stated bound and healthy again once restarted. Real clock; every
//! wait is for a condition with a deadline.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_core_types::{Endpoint, Worker};
use flotilla_testkit::EtcdCluster;
use flotilla_viewreg::{
    GrpcProber, Health, ProbeError, ProbeOutcome, Prober, Registry, RegistryConfig, Snapshot,
    StaticLocator, WaitLimit,
};
use tokio::time::Instant;

use crate::harness::{Features, features};

/// How long a member may take to come back and be seen healthy.
const PATIENCE: Duration = Duration::from_secs(30);

type GrpcRegistry = Registry<Features, Endpoint>;

fn member(cluster: &EtcdCluster, index: usize) -> Result<Endpoint> {
    let url = cluster.endpoint(index);
    let address = url.strip_prefix("http://").context("an http URL")?;
    Ok(address.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_member_answers_the_standard_health_check() -> Result<()> {
    let cluster = EtcdCluster::single().await?;
    let endpoint = member(&cluster, 0)?;
    let prober = GrpcProber::plaintext().with_features(features(&["kv"]));
    match prober.probe(&endpoint).await {
        ProbeOutcome::Serving { features, .. } => ensure!(features.contains("kv")),
        other => anyhow::bail!("etcd answered {other:?}"),
    }
    // etcd knows only the service "": any other is not served there.
    let named = prober.clone().with_service("etcdserverpb.KV");
    let outcome = named.probe(&endpoint).await;
    ensure!(
        matches!(outcome, ProbeOutcome::NotServing),
        "a service etcd does not name answered {outcome:?}"
    );

    // Nothing listens on a port just freed: unreachable, quickly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let closed = Endpoint::new("127.0.0.1", port)?;
    let outcome = tokio::time::timeout(PATIENCE, prober.probe(&closed)).await?;
    ensure!(
        matches!(
            outcome,
            ProbeOutcome::Failed(ProbeError::Unreachable { .. })
        ),
        "a closed port answered {outcome:?}"
    );

    // A server that is not gRPC at all (it accepts and says nothing) does
    // not pass for serving.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_endpoint: Endpoint = silent.local_addr()?.try_into()?;
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let outcome =
        tokio::time::timeout(Duration::from_secs(2), prober.probe(&silent_endpoint)).await;
    ensure!(
        !matches!(outcome, Ok(ProbeOutcome::Serving { .. })),
        "a silent server answered {outcome:?}"
    );
    held.abort();
    Ok(())
}

/// Serves `routes` on a fresh loopback port until the returned task is
/// aborted.
async fn serve(routes: tonic::service::Routes) -> Result<(Endpoint, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint: Endpoint = listener.local_addr()?.try_into()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming(incoming);
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::warn!(%error, "test health server ended");
        }
    });
    Ok((endpoint, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_health_answer_reads_as_documented() -> Result<()> {
    use tonic_health::ServingStatus;

    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("kv.Store", ServingStatus::Serving)
        .await;
    let (endpoint, server) = serve(tonic::service::Routes::new(service)).await?;
    let whole = GrpcProber::plaintext().with_features(features(&["kv"]));
    let store = whole.clone().with_service("kv.Store");

    let outcome = store.probe(&endpoint).await;
    ensure!(
        matches!(&outcome, ProbeOutcome::Serving { features, .. } if features.contains("kv")),
        "{outcome:?}"
    );
    // A service that says it is not serving, or whose state is unknown.
    for status in [ServingStatus::NotServing, ServingStatus::Unknown] {
        reporter.set_service_status("kv.Store", status).await;
        let outcome = store.probe(&endpoint).await;
        ensure!(
            matches!(outcome, ProbeOutcome::NotServing),
            "{status:?}: {outcome:?}"
        );
    }
    // The whole server still serves; a name it never registered does not.
    let outcome = whole.probe(&endpoint).await;
    ensure!(
        matches!(outcome, ProbeOutcome::Serving { .. }),
        "{outcome:?}"
    );
    let outcome = whole
        .clone()
        .with_service("other.Service")
        .probe(&endpoint)
        .await;
    ensure!(matches!(outcome, ProbeOutcome::NotServing), "{outcome:?}");
    // Back to serving.
    reporter
        .set_service_status("kv.Store", ServingStatus::Serving)
        .await;
    let outcome = store.probe(&endpoint).await;
    ensure!(
        matches!(outcome, ProbeOutcome::Serving { .. }),
        "{outcome:?}"
    );
    server.abort();

    // A gRPC server without the health service.
    let (endpoint, server) = serve(tonic::service::Routes::default()).await?;
    let outcome = whole.probe(&endpoint).await;
    ensure!(
        matches!(outcome, ProbeOutcome::NoHealthService),
        "{outcome:?}"
    );
    server.abort();
    Ok(())
}

/// Each feature's service name is asked over the probe's connection; the
/// features of the names served are added, the others left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_come_from_the_service_names_the_server_serves() -> Result<()> {
    use tonic_health::ServingStatus;

    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("kv.Store", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("search.Index", ServingStatus::NotServing)
        .await;
    let (endpoint, server) = serve(tonic::service::Routes::new(service)).await?;
    let prober = GrpcProber::plaintext()
        .with_features(features(&["base"]))
        .with_feature_service("kv.Store", features(&["kv"]))
        .with_feature_service("search.Index", features(&["search"]))
        .with_feature_service("never.Registered", features(&["ghost"]));
    let served = |outcome: ProbeOutcome<Features>| match outcome {
        ProbeOutcome::Serving { features, .. } => Ok(features),
        other => anyhow::bail!("not serving: {other:?}"),
    };
    ensure!(served(prober.probe(&endpoint).await)? == features(&["base", "kv"]));
    reporter
        .set_service_status("search.Index", ServingStatus::Serving)
        .await;
    ensure!(served(prober.probe(&endpoint).await)? == features(&["base", "kv", "search"]));
    // The server as a whole not serving: no features at all.
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let outcome = prober.probe(&endpoint).await;
    ensure!(matches!(outcome, ProbeOutcome::NotServing), "{outcome:?}");
    server.abort();
    Ok(())
}

/// A health service that takes every Check and never answers, telling the
/// test the deadline each one carried.
struct Stalled(tokio::sync::mpsc::UnboundedSender<Option<String>>);

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Stalled {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let _ = self.0.send(deadline);
        std::future::pending().await
    }

    type WatchStream = tonic::codegen::tokio_stream::Empty<
        Result<tonic_health::pb::HealthCheckResponse, tonic::Status>,
    >;

    async fn watch(
        &self,
        _request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

/// A Check carries what is left of the probe's deadline to the server, and
/// one the server never answers is a timeout of the prober's own, not a
/// hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_carries_its_deadline_and_a_stalled_one_times_out() -> Result<()> {
    let (told, mut deadlines) = tokio::sync::mpsc::unbounded_channel();
    let service = tonic_health::pb::health_server::HealthServer::new(Stalled(told));
    let (endpoint, server) = serve(tonic::service::Routes::new(service)).await?;
    let prober = GrpcProber::plaintext()
        .with_features(features(&["kv"]))
        .with_request_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let outcome = tokio::time::timeout(PATIENCE, prober.probe(&endpoint)).await?;
    ensure!(
        matches!(
            &outcome,
            ProbeOutcome::Failed(ProbeError::TimedOut { after, .. }) if *after == Duration::from_millis(300)
        ),
        "{outcome:?}"
    );
    ensure!(started.elapsed() >= Duration::from_millis(300));
    let deadline = deadlines.recv().await.context("the server saw the Check")?;
    // gRPC writes a timeout as digits and a unit; 300 ms, however written.
    let deadline = deadline.context("a grpc-timeout header")?;
    let (digits, unit) = deadline.split_at(deadline.len() - 1);
    let nanos_per_unit: u64 = match unit {
        "H" => 3_600_000_000_000,
        "M" => 60_000_000_000,
        "S" => 1_000_000_000,
        "m" => 1_000_000,
        "u" => 1_000,
        "n" => 1,
        other => anyhow::bail!("unit {other} in {deadline}"),
    };
    let nanos = digits.parse::<u64>()? * nanos_per_unit;
    // What is left of the probe's 300 ms when the Check goes out.
    ensure!(
        (200_000_000..=300_000_000).contains(&nanos),
        "grpc-timeout {deadline}"
    );
    server.abort();
    Ok(())
}

/// Checks every 500 ms, each bounded by 1 s, unhealthy after 3 failures:
/// a member that dies is unhealthy within 3 × (0.5 s + 1 s) = 4.5 s, the
/// bound the crate docs state for these settings.
fn config() -> RegistryConfig {
    let mut config = RegistryConfig::default().with_rng_seed(7);
    config.probe_interval = Duration::from_millis(500);
    config.probe_timeout = Duration::from_secs(1);
    config.probe_jitter = 0.0;
    config.max_backoff = Duration::from_secs(1);
    config
}

fn stated_bound(config: &RegistryConfig) -> Duration {
    (config.probe_interval + config.probe_timeout) * config.unhealthy_threshold
}

async fn until(
    registry: &GrpcRegistry,
    limit: Duration,
    mut condition: impl FnMut(&Snapshot<Features, Endpoint>) -> bool,
) -> Result<Arc<Snapshot<Features, Endpoint>>> {
    let limit = WaitLimit::timeout(limit);
    let mut snapshot = registry.snapshot();
    while !condition(&snapshot) {
        snapshot = registry
            .wait_for_change(snapshot.stamp(), &limit)
            .await
            .with_context(|| format!("the condition did not hold in time:\n{}", snapshot.dump()))?;
    }
    Ok(snapshot)
}

fn health_of(snapshot: &Snapshot<Features, Endpoint>, endpoint: &Endpoint) -> Option<Health> {
    snapshot.view(endpoint).map(|view| view.health())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_turns_unhealthy_within_the_bound_and_healthy_after_restart() -> Result<()>
{
    let mut cluster = EtcdCluster::three().await?;
    let members: Vec<Endpoint> = (0..3)
        .map(|index| member(&cluster, index))
        .collect::<Result<_>>()?;
    let config = config();
    let bound = stated_bound(&config);
    assert_eq!(config.unhealthy_threshold, 3, "the default threshold");
    let registry = Registry::start(
        StaticLocator::new(members.clone()),
        GrpcProber::plaintext().with_features(features(&["etcd"])),
        |endpoint: &Endpoint| endpoint.clone(),
        config,
    )?;
    until(&registry, PATIENCE, |snapshot| {
        snapshot.healthy_views(&features(&["etcd"])).len() == 3
    })
    .await?;

    // A follower, so that the others keep a leader and stay serving.
    let leader = cluster.leader().await?;
    let victim = (leader + 1) % 3;
    let victim_endpoint = members[victim].clone();
    let killed_at = Instant::now();
    cluster.kill(victim)?;
    until(&registry, bound, |snapshot| {
        health_of(snapshot, &victim_endpoint) == Some(Health::Unhealthy)
    })
    .await
    .context("not unhealthy within the stated bound")?;
    let took = killed_at.elapsed();
    ensure!(took <= bound, "unhealthy after {took:?}, beyond {bound:?}");
    let snapshot = registry.snapshot();
    for (index, endpoint) in members.iter().enumerate() {
        if index != victim {
            assert_eq!(health_of(&snapshot, endpoint), Some(Health::Healthy));
        }
    }

    cluster.restart(victim).await?;
    until(&registry, PATIENCE, |snapshot| {
        health_of(snapshot, &victim_endpoint) == Some(Health::Healthy)
    })
    .await
    .context("not healthy again after the restart")?;
    until(&registry, PATIENCE, |snapshot| {
        snapshot.healthy_views(&features(&["etcd"])).len() == 3
    })
    .await?;

    registry.kill();
    registry.wait().await?;
    Ok(())
}
