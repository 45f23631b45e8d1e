//! Fuzzes what a peer's handshake hands the trust check: any bytes as a
//! certificate must name a device or give a reason, never panic, and the
//! trust must accept or refuse them with a typed error; any text as a
//! fingerprint must parse or be an error, and one that parses must print
//! as it reads back.
#![no_main]

use std::sync::OnceLock;

use flotilla_identity::{ClusterCa, Fingerprint, Trust, device_of_certificate};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

/// A trust with a cluster CA, so that unpinned certificates go through
/// webpki's chain check too.
fn trust() -> &'static Trust {
    static TRUST: OnceLock<Trust> = OnceLock::new();
    TRUST.get_or_init(|| {
        let ca = ClusterCa::generate("fuzz").expect("a CA");
        Trust::new()
            .with_cluster_ca(ca.certificate().clone())
            .expect("a CA's certificate")
    })
}

fuzz_target!(|bytes: &[u8]| {
    let certificate = CertificateDer::from(bytes.to_vec());
    let _ = device_of_certificate(&certificate);
    let _ = trust().check(&certificate);
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(fingerprint) = text.parse::<Fingerprint>()
    {
        assert_eq!(fingerprint.to_string().parse::<Fingerprint>(), Ok(fingerprint));
    }
});
