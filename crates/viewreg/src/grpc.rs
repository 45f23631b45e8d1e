//! [`GrpcProber`]: the standard gRPC health check (`grpc.health.v1`
//! `Health/Check`, through tonic-health's generated client), so the
//! registry can watch any gRPC server that offers it, etcd members
//! included.

use std::fmt;
use std::time::Duration;

use flotilla_core_types::Endpoint;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{FeatureSet, ProbeError, ProbeOutcome, Prober};

/// How long opening a connection may take by default: well inside the
/// registry's default one-second probe timeout, so that a dead host shows
/// as unreachable, with the transport's reason, rather than as a timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

/// A health check by the standard gRPC health protocol: a `Check` of one
/// service name on the server's `grpc.health.v1.Health` service.
///
/// Each check opens its own connection and closes it after the answer, so
/// a server that died is seen as unreachable at the next check, however
/// its last connection ended, and nothing is kept per endpoint. What the
/// answers mean:
///
/// | the server answers | outcome |
/// |---|---|
/// | `SERVING` | [`ProbeOutcome::Serving`] with this prober's features |
/// | `NOT_SERVING`, `UNKNOWN`, `SERVICE_UNKNOWN` | [`ProbeOutcome::NotServing`] |
/// | status `NOT_FOUND` (the service name is not registered there) | [`ProbeOutcome::NotServing`] |
/// | status `UNIMPLEMENTED` (no health service at all) | [`ProbeOutcome::NoHealthService`] |
/// | no connection, status `UNAVAILABLE` | [`ProbeOutcome::Failed`] with [`ProbeError::Unreachable`] |
/// | any other status, or a status value not in the protocol | [`ProbeOutcome::Failed`] with [`ProbeError::Protocol`] |
///
/// A check that takes too long is cut by the registry's
/// [`probe_timeout`](crate::RegistryConfig::probe_timeout) and counts as a
/// failure.
///
/// The service name is `""` (the server as a whole) unless set with
/// [`with_service`](GrpcProber::with_service). etcd answers only for `""`.
/// Connections are plaintext HTTP/2: the name
/// [`plaintext`](GrpcProber::plaintext) says so.
///
/// # Example
///
/// ```no_run
/// use std::collections::BTreeSet;
/// use flotilla_viewreg::{GrpcProber, ProbeOutcome, Prober};
///
/// # async fn example() -> anyhow::Result<()> {
/// let prober = GrpcProber::plaintext().with_features(BTreeSet::from(["kv"]));
/// let outcome = prober.probe(&"127.0.0.1:2379".parse()?).await;
/// assert!(matches!(outcome, ProbeOutcome::Serving { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GrpcProber<F> {
    service: String,
    features: F,
    connect_timeout: Duration,
}

impl<F: FeatureSet> GrpcProber<F> {
    /// A prober over plaintext HTTP/2 asking for service `""`, whose
    /// serving servers provide no features.
    pub fn plaintext() -> Self {
        GrpcProber {
            service: String::new(),
            features: F::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Asks about the service `name` (such as `kv.Store`) instead of the
    /// server as a whole.
    pub fn with_service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// Serving servers provide `features`.
    pub fn with_features(mut self, features: F) -> Self {
        self.features = features;
        self
    }

    /// Gives up opening a connection after `timeout` (default 800 ms).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The service name asked about.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl<F: FeatureSet> Prober<F> for GrpcProber<F> {
    async fn probe(&self, endpoint: &Endpoint) -> ProbeOutcome<F> {
        let target = match tonic::transport::Endpoint::from_shared(format!("http://{endpoint}")) {
            Ok(target) => target.connect_timeout(self.connect_timeout),
            Err(error) => return ProbeOutcome::Failed(ProbeError::unreachable(endpoint, error)),
        };
        let channel = match target.connect().await {
            Ok(channel) => channel,
            Err(error) => return ProbeOutcome::Failed(ProbeError::unreachable(endpoint, error)),
        };
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        match HealthClient::new(channel).check(request).await {
            Ok(response) => self.outcome_of(endpoint, response.into_inner().status),
            Err(status) => outcome_of_status(endpoint, status),
        }
    }
}

impl<F: FeatureSet> GrpcProber<F> {
    fn outcome_of(&self, endpoint: &Endpoint, status: i32) -> ProbeOutcome<F> {
        match ServingStatus::try_from(status) {
            Ok(ServingStatus::Serving) => ProbeOutcome::serving(self.features.clone()),
            Ok(
                ServingStatus::NotServing | ServingStatus::Unknown | ServingStatus::ServiceUnknown,
            ) => ProbeOutcome::NotServing,
            Err(_) => ProbeOutcome::Failed(ProbeError::Protocol {
                endpoint: endpoint.clone(),
                reason: format!("serving status {status} is not in grpc.health.v1"),
            }),
        }
    }
}

fn outcome_of_status<F>(endpoint: &Endpoint, status: tonic::Status) -> ProbeOutcome<F> {
    match status.code() {
        Code::NotFound => ProbeOutcome::NotServing,
        Code::Unimplemented => ProbeOutcome::NoHealthService,
        Code::Unavailable => ProbeOutcome::Failed(ProbeError::unreachable(endpoint, status)),
        _ => ProbeOutcome::Failed(ProbeError::Protocol {
            endpoint: endpoint.clone(),
            reason: status.to_string(),
        }),
    }
}

impl<F: fmt::Debug> fmt::Debug for GrpcProber<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcProber")
            .field("service", &self.service)
            .field("features", &self.features)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    type Features = BTreeSet<&'static str>;

    fn endpoint() -> Endpoint {
        "10.0.0.1:80".parse().expect("valid")
    }

    fn prober() -> GrpcProber<Features> {
        GrpcProber::plaintext().with_features(BTreeSet::from(["kv"]))
    }

    #[test]
    fn serving_statuses_read_as_the_protocol_says() {
        let check = |status: i32| prober().outcome_of(&endpoint(), status);
        assert!(
            matches!(check(1), ProbeOutcome::Serving { features, .. } if features.contains("kv"))
        );
        assert!(matches!(check(0), ProbeOutcome::NotServing));
        assert!(matches!(check(2), ProbeOutcome::NotServing));
        assert!(matches!(check(3), ProbeOutcome::NotServing));
        assert!(matches!(
            check(7),
            ProbeOutcome::Failed(ProbeError::Protocol { .. })
        ));
    }

    #[test]
    fn error_statuses_read_as_the_protocol_says() {
        let check = |status| outcome_of_status::<Features>(&endpoint(), status);
        assert!(matches!(
            check(tonic::Status::not_found("unknown service")),
            ProbeOutcome::NotServing
        ));
        assert!(matches!(
            check(tonic::Status::unimplemented("")),
            ProbeOutcome::NoHealthService
        ));
        assert!(matches!(
            check(tonic::Status::unavailable("gone")),
            ProbeOutcome::Failed(ProbeError::Unreachable { .. })
        ));
        assert!(matches!(
            check(tonic::Status::internal("oops")),
            ProbeOutcome::Failed(ProbeError::Protocol { .. })
        ));
    }

    #[test]
    fn the_service_defaults_to_the_whole_server() {
        assert_eq!(prober().service(), "");
        assert_eq!(prober().with_service("kv.Store").service(), "kv.Store");
    }
}
