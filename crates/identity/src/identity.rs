//! [`Identity`]: a device's private key and the certificate naming it.

use std::fmt;
use std::sync::Arc;

use flotilla_core_types::DeviceId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;

use crate::{Fingerprint, IdentityError};

/// The scheme of the URI, in a certificate's subject alternative names,
/// that names its device: `flotilla-device:<id>`.
pub const DEVICE_URI_SCHEME: &str = "flotilla-device";

/// A device's identity: its id, its private key and a certificate that
/// names the id and carries the key's public half.
///
/// Cheap to clone. Its `Debug` form shows the device and the fingerprint,
/// never the key.
#[derive(Clone)]
pub struct Identity {
    device: DeviceId,
    certificate: CertificateDer<'static>,
    /// Shared: a key is not `Clone`, so that copies of it are deliberate.
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// A fresh identity for `device`: a new ECDSA P-256 key and a
    /// certificate it signs itself, naming `device` as its common name and
    /// as the URI `flotilla-device:<id>`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Generate`] if rcgen fails (it does not for a valid
    /// device id).
    pub fn generate(device: &DeviceId) -> Result<Identity, IdentityError> {
        let key = KeyPair::generate().map_err(|error| IdentityError::Generate {
            device: device.clone(),
            reason: error.to_string(),
        })?;
        Identity::certify(device, &key)
    }

    /// The identity of `device` with the private key `key` and a fresh
    /// certificate for it: the same fingerprint as any other certificate
    /// of that key.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Generate`] if the key is not one rcgen can sign with.
    pub fn with_key(
        device: &DeviceId,
        key: &PrivatePkcs8KeyDer<'_>,
    ) -> Result<Identity, IdentityError> {
        let pair = KeyPair::try_from(key).map_err(|error| IdentityError::Generate {
            device: device.clone(),
            reason: error.to_string(),
        })?;
        Identity::certify(device, &pair)
    }

    /// A self-signed certificate of `key` naming `device`, and the two as an
    /// identity.
    fn certify(device: &DeviceId, key: &KeyPair) -> Result<Identity, IdentityError> {
        let failed = |error: rcgen::Error| IdentityError::Generate {
            device: device.clone(),
            reason: error.to_string(),
        };
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, device.as_str());
        params.distinguished_name = name;
        let uri = format!("{DEVICE_URI_SCHEME}:{}", device.as_str());
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(failed)?)];
        let certificate = params.self_signed(key).map_err(failed)?;
        Identity::from_parts(
            certificate.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
        .map_err(|error| IdentityError::Generate {
            device: device.clone(),
            reason: error,
        })
    }

    /// The identity made of `certificate` and `key`, once they are checked
    /// to belong together and the certificate to name a device.
    pub(crate) fn from_parts(
        certificate: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Identity, String> {
        let (device, fingerprint) = read_certificate(&certificate)?;
        let pair =
            KeyPair::try_from(&key).map_err(|error| format!("not a private key: {error}"))?;
        if Fingerprint::of_public_key(&rcgen::PublicKeyData::subject_public_key_info(&pair))
            != fingerprint
        {
            return Err(String::from("the private key is not the certificate's"));
        }
        Ok(Identity {
            device,
            certificate,
            key: Arc::new(key),
            fingerprint,
        })
    }

    /// The device it names.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The fingerprint of its public key: what a peer pins to trust it.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Its certificate, DER-encoded: what it presents in a handshake.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// Its private key, PKCS#8 DER. Keep it to yourself.
    pub fn private_key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("device", &self.device)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The device a certificate names (its `flotilla-device:` URI) and the
/// fingerprint of its public key: what a peer's certificate tells once
/// the handshake proved the peer holds its key.
///
/// # Errors
///
/// A reason, if the bytes are not a certificate or it names no device, or
/// more than one.
pub fn device_of_certificate(
    certificate: &CertificateDer<'_>,
) -> Result<(DeviceId, Fingerprint), String> {
    read_certificate(certificate)
}

fn read_certificate(certificate: &[u8]) -> Result<(DeviceId, Fingerprint), String> {
    let (rest, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|error| format!("not a certificate: {error}"))?;
    if !rest.is_empty() {
        return Err(String::from("bytes after the certificate"));
    }
    let fingerprint = Fingerprint::of_public_key(parsed.public_key().raw);
    let names = parsed
        .subject_alternative_name()
        .map_err(|error| format!("unreadable subject alternative names: {error}"))?;
    let prefix = format!("{DEVICE_URI_SCHEME}:");
    let mut devices = names
        .into_iter()
        .flat_map(|names| names.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(prefix.as_str()),
            _ => None,
        });
    let (Some(device), None) = (devices.next(), devices.next()) else {
        return Err(format!(
            "the certificate must name exactly one device (a {DEVICE_URI_SCHEME}: URI)"
        ));
    };
    let device = DeviceId::new(device).map_err(|error| format!("the device it names: {error}"))?;
    Ok((device, fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid")
    }

    #[test]
    fn a_generated_identity_names_its_device_and_each_has_its_own_key() {
        let one = Identity::generate(&device("laptop")).expect("generates");
        let two = Identity::generate(&device("laptop")).expect("generates");
        assert_eq!(one.device(), &device("laptop"));
        assert_ne!(one.fingerprint(), two.fingerprint());
        let (named, fingerprint) = device_of_certificate(one.certificate()).expect("reads");
        assert_eq!((named, fingerprint), (device("laptop"), one.fingerprint()));
        let shown = format!("{one:?}");
        assert!(
            shown.contains("laptop") && !shown.contains("key:"),
            "{shown}"
        );
    }

    #[test]
    fn parts_that_do_not_belong_together_are_refused() {
        let one = Identity::generate(&device("a")).expect("generates");
        let two = Identity::generate(&device("b")).expect("generates");
        let mixed = Identity::from_parts(one.certificate().clone(), two.private_key().clone_key());
        assert!(mixed.is_err_and(|reason| reason.contains("not the certificate's")));
        let garbage = Identity::from_parts(
            CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]),
            one.private_key().clone_key(),
        );
        assert!(garbage.is_err_and(|reason| reason.contains("not a certificate")));
    }

    #[test]
    fn a_certificate_naming_no_device_or_two_names_none() {
        let key = KeyPair::generate().expect("a key");
        let plain = CertificateParams::new(vec![String::from("example.org")])
            .expect("params")
            .self_signed(&key)
            .expect("signs");
        assert!(device_of_certificate(plain.der()).is_err());
        let mut two = CertificateParams::default();
        two.subject_alt_names = ["a", "b"]
            .iter()
            .map(|id| {
                SanType::URI(
                    format!("{DEVICE_URI_SCHEME}:{id}")
                        .try_into()
                        .expect("ascii"),
                )
            })
            .collect();
        let two = two.self_signed(&key).expect("signs");
        assert!(
            device_of_certificate(two.der()).is_err_and(|reason| reason.contains("exactly one"))
        );
        let mut bad = CertificateParams::default();
        bad.subject_alt_names = vec![SanType::URI(
            format!("{DEVICE_URI_SCHEME}:has space")
                .try_into()
                .expect("ascii"),
        )];
        let bad = bad.self_signed(&key).expect("signs");
        assert!(device_of_certificate(bad.der()).is_err());
    }
}
