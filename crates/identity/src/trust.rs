//! [`Trust`]: which devices a peer accepts, each pinned to its key.

use std::collections::BTreeMap;

use flotilla_core_types::DeviceId;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::{Fingerprint, Identity, device_of_certificate};

/// The devices trusted, two ways, both at once if need be:
///
/// - **Pinned** (Syncthing's model): a device on the list with the
///   fingerprint of its key. A pinned device's certificate's validity dates
///   are not consulted: the pin is the trust, as in Syncthing and ssh's
///   known hosts. To stop trusting it, unpin it; to move it to a new key,
///   pin the new fingerprint.
/// - **By a cluster CA** ([`ClusterCa`](crate::ClusterCa),
///   [`with_cluster_ca`](Self::with_cluster_ca)): any device whose
///   certificate the CA signed, within the certificate's validity.
///
/// A pin comes first: a pinned device with another key is refused even if
/// a trusted CA signed that key.
///
/// ```
/// use flotilla_core_types::DeviceId;
/// use flotilla_identity::{Identity, Trust, TrustError};
///
/// # fn main() -> anyhow::Result<()> {
/// let laptop = Identity::generate(&DeviceId::new("laptop")?)?;
/// let stranger = Identity::generate(&DeviceId::new("laptop")?)?;
/// let trust = Trust::of([&laptop]);
/// assert_eq!(trust.check(laptop.certificate())?, *laptop.device());
/// // The same name with another key is not the laptop.
/// assert!(matches!(trust.check(stranger.certificate()), Err(TrustError::WrongKey { .. })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    pinned: BTreeMap<DeviceId, Fingerprint>,
    /// The cluster CAs' certificates.
    authorities: Vec<CertificateDer<'static>>,
}

/// Why a peer's certificate is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate cannot be read, or names no device.
    #[error("the peer's certificate is unreadable: {reason}")]
    Unreadable {
        /// What is wrong with it.
        reason: String,
    },
    /// The device it names is not trusted at all.
    #[error("{device} (key {fingerprint}) is not a trusted device")]
    UnknownDevice {
        /// The device the certificate names.
        device: DeviceId,
        /// Its key's fingerprint.
        fingerprint: Fingerprint,
    },
    /// The device is trusted, but with another key: someone else claims
    /// its name.
    #[error("{device} is trusted with key {pinned}, but this peer's key is {presented}")]
    WrongKey {
        /// The device the certificate names.
        device: DeviceId,
        /// The key it is trusted with.
        pinned: Fingerprint,
        /// The key the peer presented.
        presented: Fingerprint,
    },
    /// The certificate names a device that is not pinned, and no trusted
    /// cluster CA vouches for it (another CA signed it, or none, or it has
    /// expired).
    #[error(
        "{device} is not pinned, and its certificate is not valid under a trusted cluster CA: {reason}"
    )]
    NotSignedByClusterCa {
        /// The device the certificate names.
        device: DeviceId,
        /// What the chain's verification said.
        reason: String,
    },
    /// A certificate given as a cluster CA's is not one.
    #[error("not a cluster CA's certificate: {reason}")]
    NotAnAuthority {
        /// Why.
        reason: String,
    },
    /// The peer is a trusted device, but not the one asked for.
    #[error("expected {expected}, but the peer is {presented}")]
    NotTheExpectedDevice {
        /// The device dialled.
        expected: DeviceId,
        /// The device that answered.
        presented: DeviceId,
    },
}

impl Trust {
    /// Trusts nobody yet.
    pub fn new() -> Trust {
        Trust::default()
    }

    /// Trusts each of `identities`' devices with its key.
    pub fn of<'a>(identities: impl IntoIterator<Item = &'a Identity>) -> Trust {
        let mut trust = Trust::new();
        for identity in identities {
            trust.pin(identity.device().clone(), identity.fingerprint());
        }
        trust
    }

    /// Trusts `device` with the key of `fingerprint` (replacing any key it
    /// was trusted with before).
    pub fn pin(&mut self, device: DeviceId, fingerprint: Fingerprint) -> &mut Trust {
        self.pinned.insert(device, fingerprint);
        self
    }

    /// The same trust, also trusting every device the cluster CA whose
    /// certificate is `authority` signed.
    ///
    /// Only the CA's subject and key are kept as the trust anchor: the
    /// CA's own validity dates and path length are not enforced, so keep
    /// a CA's key to device certificates only (as [`ClusterCa`](crate::ClusterCa) does).
    ///
    /// # Errors
    ///
    /// [`TrustError::NotAnAuthority`] if `authority` is not a CA's
    /// certificate: not readable, not marked a CA, without the right to
    /// sign certificates, or naming a device (a device's certificate taken
    /// for a CA would let its key vouch for every other device).
    pub fn with_cluster_ca(
        mut self,
        authority: CertificateDer<'static>,
    ) -> Result<Trust, TrustError> {
        check_authority(&authority).map_err(|reason| TrustError::NotAnAuthority { reason })?;
        self.authorities.push(authority);
        Ok(self)
    }

    /// Stops trusting `device`; returns the key it was trusted with.
    pub fn unpin(&mut self, device: &DeviceId) -> Option<Fingerprint> {
        self.pinned.remove(device)
    }

    /// The key `device` is trusted with.
    pub fn pinned(&self, device: &DeviceId) -> Option<Fingerprint> {
        self.pinned.get(device).copied()
    }

    /// The devices trusted, in id order, each with its key.
    pub fn devices(&self) -> impl Iterator<Item = (&DeviceId, Fingerprint)> {
        self.pinned
            .iter()
            .map(|(device, fingerprint)| (device, *fingerprint))
    }

    /// The device `certificate` proves now, if it is trusted: pinned with
    /// that certificate's key, or signed by a trusted cluster CA for either
    /// use (client or server). (That the peer holds the key is the
    /// handshake's part: see [`tls`](crate::tls).)
    ///
    /// # Errors
    ///
    /// [`TrustError::Unreadable`], [`TrustError::UnknownDevice`],
    /// [`TrustError::WrongKey`] or [`TrustError::NotSignedByClusterCa`].
    pub fn check(&self, certificate: &CertificateDer<'_>) -> Result<DeviceId, TrustError> {
        self.check_as(certificate, &[], UnixTime::now(), None)
    }

    /// [`check`](Self::check), with the chain's `intermediates`, at `now`,
    /// for the handshake role `role` (`None`: either).
    pub(crate) fn check_as(
        &self,
        certificate: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Option<Role>,
    ) -> Result<DeviceId, TrustError> {
        let (device, presented) = device_of_certificate(certificate)
            .map_err(|reason| TrustError::Unreadable { reason })?;
        match self.pinned.get(&device) {
            Some(pinned) if *pinned == presented => Ok(device),
            Some(pinned) => Err(TrustError::WrongKey {
                device,
                pinned: *pinned,
                presented,
            }),
            None if self.authorities.is_empty() => Err(TrustError::UnknownDevice {
                device,
                fingerprint: presented,
            }),
            None => match self.signed_by_authority(certificate, intermediates, now, role) {
                Ok(()) => Ok(device),
                Err(reason) => Err(TrustError::NotSignedByClusterCa { device, reason }),
            },
        }
    }

    /// Whether a trusted cluster CA signed `certificate` for `role`, and it
    /// is valid at `now`.
    fn signed_by_authority(
        &self,
        certificate: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Option<Role>,
    ) -> Result<(), String> {
        let anchors = self
            .authorities
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("a trusted CA's certificate is unreadable: {error}"))?;
        let end_entity = webpki::EndEntityCert::try_from(certificate)
            .map_err(|error| format!("unreadable: {error}"))?;
        let algorithms = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        let verify = |usage| {
            end_entity
                .verify_for_usage(algorithms, &anchors, intermediates, now, usage, None, None)
                .map(|_| ())
                .map_err(|error| error.to_string())
        };
        match role {
            Some(Role::Client) => verify(webpki::KeyUsage::client_auth()),
            Some(Role::Server) => verify(webpki::KeyUsage::server_auth()),
            None => verify(webpki::KeyUsage::client_auth())
                .or_else(|_| verify(webpki::KeyUsage::server_auth())),
        }
    }
}

/// Why `certificate` cannot be a cluster CA's, if it cannot.
fn check_authority(certificate: &CertificateDer<'_>) -> Result<(), String> {
    if device_of_certificate(certificate).is_ok() {
        return Err(String::from("it names a device"));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|error| format!("not a certificate: {error}"))?;
    let is_ca = parsed
        .basic_constraints()
        .map_err(|error| format!("unreadable basic constraints: {error}"))?
        .is_some_and(|constraints| constraints.value.ca);
    if !is_ca {
        return Err(String::from("it is not marked a CA (basic constraints)"));
    }
    let usage = parsed
        .key_usage()
        .map_err(|error| format!("unreadable key usage: {error}"))?;
    if usage.is_some_and(|usage| !usage.value.key_cert_sign()) {
        return Err(String::from(
            "its key may not sign certificates (key usage)",
        ));
    }
    Ok(())
}

/// Which side of a handshake a certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}
