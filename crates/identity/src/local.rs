//! [`LocalCluster`]: the devices of one process (a demo, a test, an
//! embedded deployment) trusting each other without any setup.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_core_types::DeviceId;

use crate::{ClusterCa, Identity, IdentityError, Transport, Trust};

/// How long before its making a [`LocalCluster`]'s certificate is valid:
/// room for clocks a little behind.
const VALID_BEFORE: Duration = Duration::from_secs(3_600);

/// How long a [`LocalCluster`]'s certificate stays valid.
const VALID_FOR: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A cluster whose CA lives in this process: it issues each device an
/// identity, and gives each a transport that trusts every device it
/// issued. For devices that start together in one process, where making
/// and pinning identities one by one would only be ceremony; devices on
/// other machines keep their identity on disk
/// ([`Identity::load_or_create`]) and trust by pins or a CA certificate
/// they are given.
///
/// Its CA's key is in memory only and goes with it. A device's
/// certificate is valid from an hour before it was issued for ten years.
///
/// ```
/// use flotilla_core_types::DeviceId;
/// use flotilla_identity::LocalCluster;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let cluster = LocalCluster::new("demo")?;
/// let (a, b) = (DeviceId::new("a")?, DeviceId::new("b")?);
/// let (at_a, at_b) = (cluster.transport(&a)?, cluster.transport(&b)?);
/// let (near, far) = tokio::io::duplex(64 * 1024);
/// let (dialled, accepted) = tokio::join!(at_a.connect(near, None), at_b.accept(far));
/// assert_eq!(dialled?.peer(), Some(&b));
/// assert_eq!(accepted?.peer(), Some(&a));
/// # Ok(())
/// # }
/// ```
pub struct LocalCluster {
    ca: ClusterCa,
    trust: Arc<Trust>,
}

impl LocalCluster {
    /// A new cluster with a fresh CA named `name`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Authority`] if the CA cannot be made.
    pub fn new(name: &str) -> Result<LocalCluster, IdentityError> {
        let ca = ClusterCa::generate(name)?;
        let trust = Trust::new()
            .with_cluster_ca(ca.certificate().clone())
            .map_err(|error| IdentityError::Authority {
                reason: error.to_string(),
            })?;
        Ok(LocalCluster {
            ca,
            trust: Arc::new(trust),
        })
    }

    /// A new identity for `device`, issued by the cluster's CA.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Authority`] if it cannot be issued.
    pub fn identity(&self, device: &DeviceId) -> Result<Identity, IdentityError> {
        let now = SystemTime::now();
        self.ca.issue(device, now - VALID_BEFORE..now + VALID_FOR)
    }

    /// TLS as a new identity for `device`, trusting every device of the
    /// cluster.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Authority`] if the identity cannot be issued, or
    /// rustls refuses it.
    pub fn transport(&self, device: &DeviceId) -> Result<Transport, IdentityError> {
        let identity = self.identity(device)?;
        Transport::tls(&identity, self.trust()).map_err(|error| IdentityError::Authority {
            reason: error.to_string(),
        })
    }

    /// The trust of every device the cluster issued (and of nobody else).
    pub fn trust(&self) -> Arc<Trust> {
        Arc::clone(&self.trust)
    }

    /// The cluster's CA, to issue identities of other validity or to hand
    /// its certificate to devices elsewhere.
    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").finish_non_exhaustive()
    }
}
