//! [`Prober`]: how the registry checks one server, what a check can answer
//! ([`ProbeOutcome`]), and the plain TCP-connect prober ([`TcpProber`]).

use std::fmt;
use std::future::Future;

use flotilla_core_types::Endpoint;

use crate::{FeatureSet, Partition, ProbeError};

/// What one health check of a server found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProbeOutcome<F> {
    /// The server answered that it serves, with what it provides.
    Serving {
        /// The features it provides.
        features: F,
        /// The partition it holds, if the data is partitioned.
        partition: Option<Partition>,
    },
    /// The server answered, and said it is not serving (draining, starting,
    /// lost its backend). The view turns unhealthy at once.
    NotServing,
    /// The server answered, but offers no health service this prober can
    /// ask. Counts as one failed check.
    NoHealthService,
    /// The check got no usable answer. Counts as one failed check.
    Failed(ProbeError),
}

impl<F> ProbeOutcome<F> {
    /// A serving answer with `features` and no partition.
    pub fn serving(features: F) -> Self {
        ProbeOutcome::Serving {
            features,
            partition: None,
        }
    }
}

/// A health check of one server, asked by the registry for each endpoint on
/// its schedule.
///
/// The registry bounds every check with
/// [`RegistryConfig::probe_timeout`](crate::RegistryConfig::probe_timeout)
/// and runs checks of different endpoints concurrently, so a check that
/// hangs costs only its own endpoint a failure. A check may be dropped at
/// any await point (timeout, endpoint gone, registry stopped).
pub trait Prober<F: FeatureSet>: Send + Sync + 'static {
    /// Checks the server at `endpoint`.
    fn probe(&self, endpoint: &Endpoint) -> impl Future<Output = ProbeOutcome<F>> + Send;
}

/// The plainest check: a server is serving when a TCP connection to its
/// endpoint opens. It cannot tell features or partition: every serving
/// server provides the features this prober was made with.
///
/// # Example
///
/// ```
/// use std::collections::BTreeSet;
/// use flotilla_viewreg::{ProbeOutcome, Prober, TcpProber};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let endpoint = listener.local_addr()?.try_into()?;
/// let prober = TcpProber::with_features(BTreeSet::from(["kv"]));
/// assert!(matches!(prober.probe(&endpoint).await, ProbeOutcome::Serving { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct TcpProber<F> {
    features: F,
}

impl<F: FeatureSet> TcpProber<F> {
    /// A prober whose serving servers provide no features.
    pub fn new() -> Self {
        TcpProber::default()
    }

    /// A prober whose serving servers provide `features`.
    pub fn with_features(features: F) -> Self {
        TcpProber { features }
    }
}

impl<F: FeatureSet> Prober<F> for TcpProber<F> {
    async fn probe(&self, endpoint: &Endpoint) -> ProbeOutcome<F> {
        match tokio::net::TcpStream::connect((endpoint.host(), endpoint.port())).await {
            Ok(_stream) => ProbeOutcome::serving(self.features.clone()),
            Err(error) => ProbeOutcome::Failed(ProbeError::unreachable(endpoint, error)),
        }
    }
}

impl<F: fmt::Debug> fmt::Debug for TcpProber<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProber")
            .field("features", &self.features)
            .finish()
    }
}
