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

/// How long one `Check` may take by default, sent to the server as its
/// deadline (`grpc-timeout`): inside the registry's default probe timeout
/// for the same reason.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

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
/// | no answer within the request timeout, status `DEADLINE_EXCEEDED` or `CANCELLED` | [`ProbeOutcome::Failed`] with [`ProbeError::TimedOut`] |
/// | any other status, or a status value not in the protocol | [`ProbeOutcome::Failed`] with [`ProbeError::Protocol`] |
///
/// A probe's `Check`s share one deadline (800 ms unless set with
/// [`with_request_timeout`](GrpcProber::with_request_timeout)), each sent
/// to the server as its `grpc-timeout` so the server can give up on it too;
/// a probe that passes it is
/// [`ProbeOutcome::Failed`] with [`ProbeError::TimedOut`]. A probe that
/// takes longer than the registry's
/// [`probe_timeout`](crate::RegistryConfig::probe_timeout) is cut there
/// and counts as a failure as well.
///
/// # Service names and features
///
/// The service name is `""` (the server as a whole) unless set with
/// [`with_service`](GrpcProber::with_service); etcd answers only for `""`.
/// A serving server provides the features given with
/// [`with_features`](GrpcProber::with_features), and, for each name given
/// with [`with_feature_service`](GrpcProber::with_feature_service), the
/// features of that name when the server answers `SERVING` for it too
/// (the per-feature checks go over the same connection). A feature name the
/// server does not serve, or does not know, leaves its features out; one
/// whose check fails fails the probe.
///
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
    /// Further service names, each with the features it stands for, and
    /// how to add them to a set (known where the names were given).
    feature_services: Vec<(String, F)>,
    merge: Option<fn(&mut F, F)>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl<F: FeatureSet> GrpcProber<F> {
    /// A prober over plaintext HTTP/2 asking for service `""`, whose
    /// serving servers provide no features.
    pub fn plaintext() -> Self {
        GrpcProber {
            service: String::new(),
            features: F::default(),
            feature_services: Vec::new(),
            merge: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
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

    /// Gives each probe's `Check`s one deadline, `timeout` (default 800 ms)
    /// after they start, sent to the server as `grpc-timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The service name asked about.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Also asks about the service `name`: a serving server that answers
    /// `SERVING` for it provides `features` as well (see the type's docs).
    ///
    /// ```
    /// use std::collections::BTreeSet;
    /// use flotilla_viewreg::GrpcProber;
    ///
    /// let prober = GrpcProber::plaintext()
    ///     .with_feature_service("kv.Store", BTreeSet::from(["kv"]))
    ///     .with_feature_service("search.Index", BTreeSet::from(["search"]));
    /// assert_eq!(prober.feature_services().count(), 2);
    /// ```
    pub fn with_feature_service(mut self, name: impl Into<String>, features: F) -> Self
    where
        F: IntoIterator + Extend<<F as IntoIterator>::Item>,
    {
        self.feature_services.push((name.into(), features));
        self.merge = Some(|into, more| into.extend(more));
        self
    }

    /// The service names asked about for features, in the order given.
    pub fn feature_services(&self) -> impl Iterator<Item = &str> {
        self.feature_services.iter().map(|(name, _)| name.as_str())
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
        let mut client = HealthClient::new(channel);
        // One deadline for every Check of the probe, so that the checks of
        // many features take no longer than one.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut outcome = match self
            .check(&mut client, endpoint, &self.service, deadline)
            .await
        {
            Ok(status) => self.outcome_of(endpoint, status),
            Err(outcome) => return outcome,
        };
        let (ProbeOutcome::Serving { features, .. }, Some(merge)) = (&mut outcome, self.merge)
        else {
            return outcome;
        };
        for (name, more) in &self.feature_services {
            match self.check(&mut client, endpoint, name, deadline).await {
                Ok(status) => match self.outcome_of(endpoint, status) {
                    ProbeOutcome::Serving { .. } => merge(features, more.clone()),
                    ProbeOutcome::Failed(error) => return ProbeOutcome::Failed(error),
                    _ => {}
                },
                Err(ProbeOutcome::NotServing) => {}
                Err(failed) => return failed,
            }
        }
        outcome
    }
}

impl<F: FeatureSet> GrpcProber<F> {
    /// One `Check` of `service`: the serving status it answered, or the
    /// outcome an error reads as.
    async fn check(
        &self,
        client: &mut HealthClient<tonic::transport::Channel>,
        endpoint: &Endpoint,
        service: &str,
        deadline: tokio::time::Instant,
    ) -> Result<i32, ProbeOutcome<F>> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        request.set_timeout(left.max(Duration::from_millis(1)));
        match tokio::time::timeout_at(deadline, client.check(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner().status),
            Ok(Err(status)) => Err(outcome_of_status(endpoint, status, self.request_timeout)),
            Err(_elapsed) => Err(ProbeOutcome::Failed(ProbeError::TimedOut {
                endpoint: endpoint.clone(),
                after: self.request_timeout,
            })),
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

fn outcome_of_status<F>(
    endpoint: &Endpoint,
    status: tonic::Status,
    request_timeout: Duration,
) -> ProbeOutcome<F> {
    match status.code() {
        Code::NotFound => ProbeOutcome::NotServing,
        // The server gave up on the Check at its deadline, or the client's
        // transport did (tonic cancels a call whose deadline passed).
        Code::DeadlineExceeded | Code::Cancelled => ProbeOutcome::Failed(ProbeError::TimedOut {
            endpoint: endpoint.clone(),
            after: request_timeout,
        }),
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
            .field("feature_services", &self.feature_services)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
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
        let check =
            |status| outcome_of_status::<Features>(&endpoint(), status, Duration::from_secs(1));
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
        for late in [
            tonic::Status::deadline_exceeded("too slow"),
            tonic::Status::cancelled("Timeout expired"),
        ] {
            assert!(matches!(
                check(late),
                ProbeOutcome::Failed(ProbeError::TimedOut { .. })
            ));
        }
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
