//! [`Trust`]: which devices a peer accepts, each pinned to its key.

use std::collections::BTreeMap;

use flotilla_core_types::DeviceId;
use rustls_pki_types::CertificateDer;

use crate::{Fingerprint, Identity, device_of_certificate};

/// The devices trusted, each by the fingerprint of its key (Syncthing's
/// model): a peer is the device its certificate names only if that device
/// is on the list with that certificate's key.
///
/// A certificate's validity dates are not consulted: the pin is the trust,
/// as in Syncthing and ssh's known hosts. To stop trusting a device, take it
/// off the list; to move it to a new key, pin the new fingerprint.
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

    /// The device `certificate` proves, if it is trusted with that
    /// certificate's key. (That the peer holds the key is the handshake's
    /// part: see [`tls`](crate::tls).)
    ///
    /// # Errors
    ///
    /// [`TrustError::Unreadable`], [`TrustError::UnknownDevice`] or
    /// [`TrustError::WrongKey`].
    pub fn check(&self, certificate: &CertificateDer<'_>) -> Result<DeviceId, TrustError> {
        let (device, presented) = device_of_certificate(certificate)
            .map_err(|reason| TrustError::Unreadable { reason })?;
        match self.pinned.get(&device) {
            Some(pinned) if *pinned == presented => Ok(device),
            Some(pinned) => Err(TrustError::WrongKey {
                device,
                pinned: *pinned,
                presented,
            }),
            None => Err(TrustError::UnknownDevice {
                device,
                fingerprint: presented,
            }),
        }
    }
}
