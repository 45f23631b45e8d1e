//! TLS 1.3 with mutual authentication between devices: rustls
//! configurations for each side of a connection that present an
//! [`Identity`] and accept only a peer its [`Trust`] pins.
//!
//! Both sides present certificates. A peer is accepted when its
//! certificate names a device the trust accepts (pinned with that
//! certificate's key, or signed by a trusted cluster CA for the peer's
//! role and within its validity), and the handshake proved it holds the
//! key (rustls checks its signature over the handshake with the
//! certificate's key, by ring). Anything else fails the handshake with a
//! TLS alert, before any application byte is read; [`peer_device`] then
//! names the device on the connection. Sessions are never resumed: every
//! connection is checked by a full handshake against the trust as it is.
//!
//! ```
//! use std::sync::Arc;
//! use flotilla_core_types::DeviceId;
//! use flotilla_identity::{Identity, Trust, tls};
//!
//! # fn main() -> anyhow::Result<()> {
//! let me = Identity::generate(&DeviceId::new("a")?)?;
//! let peer = Identity::generate(&DeviceId::new("b")?)?;
//! let trust = Arc::new(Trust::of([&peer]));
//! let accepting = tls::server_config(&me, Arc::clone(&trust))?;
//! let dialling = tls::client_config(&me, trust, Some(peer.device().clone()))?;
//! # let _ = (accepting, dialling);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use flotilla_core_types::DeviceId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::trust::Role;
use crate::{Identity, Trust, TrustError};

/// The name a client sends as its server name (SNI): devices are told
/// apart by their certificates, not by names, so it is the same for all.
pub const SERVER_NAME: &str = "flotilla.invalid";

/// A TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[error("building the TLS configuration: {0}")]
pub struct TlsConfigError(#[from] rustls::Error);

/// The configuration for accepting connections: presents `identity`, asks
/// every client for its certificate, and accepts only those `trust`
/// accepts.
///
/// # Errors
///
/// [`TlsConfigError`] if rustls refuses the identity's key.
pub fn server_config(
    identity: &Identity,
    trust: Arc<Trust>,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(trust, None, &provider));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate().clone()], key_of(identity))?;
    let mut config = config;
    // No resumption: a resumed session is not checked against the trust
    // again.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// The configuration for dialling a peer: presents `identity` and accepts
/// a server only if `trust` accepts it, and if `expected` is given, only
/// if it is that device.
///
/// # Errors
///
/// [`TlsConfigError`] if rustls refuses the identity's key.
pub fn client_config(
    identity: &Identity,
    trust: Arc<Trust>,
    expected: Option<DeviceId>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(trust, expected, &provider));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate().clone()], key_of(identity))?;
    let mut config = config;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The server name a client gives rustls (see [`SERVER_NAME`]).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

/// The device on the other end of an established connection: the one its
/// certificate names, which the handshake checked against the trust.
///
/// # Errors
///
/// [`TrustError::NoCertificate`] before the handshake is done;
/// [`TrustError::Unreadable`] if the certificate names no device (the
/// verifiers accepted none such).
pub fn peer_device(connection: &rustls::CommonState) -> Result<DeviceId, TrustError> {
    let certificate = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(TrustError::NoCertificate)?;
    crate::device_of_certificate(certificate)
        .map(|(device, _)| device)
        .map_err(|reason| TrustError::Unreadable { reason })
}

/// Why this side refused its peer, if a handshake failed for that: the
/// [`TrustError`] inside the rustls error, or inside the I/O error that
/// tokio-rustls wraps it in. `None` for any other failure (including the
/// peer refusing us: that arrives as a TLS alert, without its reason).
pub fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a TrustError> {
    /// rustls refuses a client that sends no certificate before any
    /// verifier is asked; it is refused for that all the same.
    static NO_CERTIFICATE: TrustError = TrustError::NoCertificate;
    match rustls_error(error)? {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<TrustError>()
        }
        rustls::Error::NoCertificatesPresented => Some(&NO_CERTIFICATE),
        _ => None,
    }
}

/// Whether `error` is the peer refusing this side: a TLS alert it sent
/// (in TLS 1.3 a client learns of a server's refusal that way, on its
/// first read after a handshake that seemed to succeed).
pub fn refused_by_peer(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(rustls_error(error), Some(rustls::Error::AlertReceived(_)))
}

/// The rustls error in `error`, itself or inside the I/O error that
/// tokio-rustls wraps it in.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|inner| rustls_error(inner));
    }
    error.downcast_ref::<rustls::Error>()
}

/// The cipher suites, key exchanges and signature checks the
/// configurations use: ring's.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn key_of(identity: &Identity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(identity.private_key().clone_key())
}

/// Checks a peer's certificate against the trust (both sides use it), and
/// its handshake signature with ring.
#[derive(Debug)]
struct PeerVerifier {
    trust: Arc<Trust>,
    expected: Option<DeviceId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(trust: Arc<Trust>, expected: Option<DeviceId>, provider: &CryptoProvider) -> Self {
        PeerVerifier {
            trust,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<(), rustls::Error> {
        let refused = |error: TrustError| {
            tracing::debug!(%error, "peer refused in the TLS handshake");
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(error),
            )))
        };
        let device = self
            .trust
            .check_as(end_entity, intermediates, now, Some(role))
            .map_err(refused)?;
        match &self.expected {
            Some(expected) if *expected != device => {
                Err(refused(TrustError::NotTheExpectedDevice {
                    expected: expected.clone(),
                    presented: device,
                }))
            }
            _ => Ok(()),
        }
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Role::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Role::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
