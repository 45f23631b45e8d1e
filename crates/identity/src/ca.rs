//! [`ClusterCa`]: a certificate authority for a cluster, the other way to
//! trust devices: any certificate it signed, naming a device, is that
//! device.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_core_types::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::{DEVICE_URI_SCHEME, Identity, IdentityError};

/// A cluster's certificate authority: it issues each device an
/// [`Identity`] whose certificate it signs, and a [`Trust`](crate::Trust)
/// made [`with_cluster_ca`](crate::Trust::with_cluster_ca) of its
/// certificate accepts every device it issued, within the certificate's
/// validity.
///
/// The CA's key lives in memory only: keep it where a cluster's secrets
/// are kept; a node needs only the CA's certificate.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use flotilla_core_types::DeviceId;
/// use flotilla_identity::{ClusterCa, Trust};
///
/// # fn main() -> anyhow::Result<()> {
/// let ca = ClusterCa::generate("cluster-1")?;
/// let now = SystemTime::now();
/// let laptop = ca.issue(&DeviceId::new("laptop")?, now..now + Duration::from_secs(86_400))?;
/// let trust = Trust::new().with_cluster_ca(ca.certificate().clone())?;
/// assert_eq!(trust.check(laptop.certificate())?, *laptop.device());
/// # Ok(())
/// # }
/// ```
pub struct ClusterCa {
    params: CertificateParams,
    key: KeyPair,
    certificate: CertificateDer<'static>,
}

impl ClusterCa {
    /// A new authority named `name`, with a fresh ECDSA P-256 key and a
    /// self-signed CA certificate that may sign device certificates only.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Authority`] if rcgen fails.
    pub fn generate(name: &str) -> Result<ClusterCa, IdentityError> {
        let failed = |error: rcgen::Error| IdentityError::Authority {
            reason: error.to_string(),
        };
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        // Device certificates only: no CA below it.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).map_err(failed)?;
        Ok(ClusterCa {
            certificate: certificate.der().clone(),
            params,
            key,
        })
    }

    /// The authority's certificate: what a [`Trust`](crate::Trust) needs.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// A new identity for `device`, its certificate signed by this
    /// authority and valid over `valid` (to the second).
    ///
    /// # Errors
    ///
    /// [`IdentityError::Authority`] if rcgen fails, or `valid` starts
    /// before 1970 or is empty.
    pub fn issue(
        &self,
        device: &DeviceId,
        valid: Range<SystemTime>,
    ) -> Result<Identity, IdentityError> {
        let failed = |reason: String| IdentityError::Authority { reason };
        if valid.end <= valid.start {
            return Err(failed(String::from("an empty validity")));
        }
        let key = KeyPair::generate().map_err(|error| failed(error.to_string()))?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, device.as_str());
        params.distinguished_name = subject;
        let uri = format!("{DEVICE_URI_SCHEME}:{}", device.as_str());
        params.subject_alt_names = vec![SanType::URI(
            uri.try_into()
                .map_err(|error: rcgen::Error| failed(error.to_string()))?,
        )];
        params.not_before = moment(valid.start).map_err(failed)?;
        params.not_after = moment(valid.end).map_err(failed)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params
            .signed_by(&key, &issuer)
            .map_err(|error| failed(error.to_string()))?;
        Identity::from_parts(
            certificate.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
        .map_err(failed)
    }
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn moment(at: SystemTime) -> Result<time::OffsetDateTime, String> {
    let seconds = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| String::from("a validity before 1970"))?
        .as_secs();
    let seconds = i64::try_from(seconds).map_err(|_| String::from("a validity too far ahead"))?;
    time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|error| error.to_string())
}
