//! [`Fingerprint`]: the SHA-256 of a certificate's public key.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: it names the key,
/// whatever certificate carries it, so a device keeps its fingerprint when
/// its certificate is renewed with the same key.
///
/// Written as 64 lowercase hex digits in groups of 8 joined by `-`; read
/// from that form, or without the dashes, in either case.
///
/// ```
/// use flotilla_identity::Fingerprint;
///
/// let text = "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd-0123abcd-0123abcd-0123abcd";
/// let fingerprint: Fingerprint = text.parse()?;
/// assert_eq!(fingerprint.to_string(), text);
/// assert_eq!(text.replace('-', "").to_uppercase().parse::<Fingerprint>()?, fingerprint);
/// assert!("0123".parse::<Fingerprint>().is_err());
/// # Ok::<(), flotilla_identity::ParseFingerprintError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a SubjectPublicKeyInfo, given as its DER bytes.
    pub fn of_public_key(spki_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(spki_der).into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (group, bytes) in self.0.chunks(4).enumerate() {
            if group > 0 {
                f.write_str("-")?;
            }
            for byte in bytes {
                write!(f, "{byte:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Text that is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fingerprint (64 hex digits, dashes allowed): {0}")]
pub struct ParseFingerprintError(String);

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(text: &str) -> Result<Fingerprint, ParseFingerprintError> {
        let bad = || ParseFingerprintError(text.chars().take(80).collect());
        let digits: Vec<u8> = text.bytes().filter(|byte| *byte != b'-').collect();
        if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_back_from_its_text() {
        let fingerprint = Fingerprint::of_public_key(b"some key");
        let text = fingerprint.to_string();
        assert_eq!(text.len(), 64 + 7);
        assert_eq!(text.parse::<Fingerprint>(), Ok(fingerprint));
        assert_eq!(
            text.replace('-', "").parse::<Fingerprint>(),
            Ok(fingerprint)
        );
        assert_ne!(Fingerprint::of_public_key(b"another key"), fingerprint);
    }

    #[test]
    fn text_that_is_not_a_fingerprint_is_an_error() {
        for text in [
            "",
            "00",
            &"0".repeat(63),
            &"0".repeat(65),
            &"g".repeat(64),
            &format!("{}é", "0".repeat(62)),
            &"+1".repeat(32),
        ] {
            assert!(text.parse::<Fingerprint>().is_err(), "{text:?}");
        }
    }
}
