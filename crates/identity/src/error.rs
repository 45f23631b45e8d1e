//! [`IdentityError`]: what can go wrong making, keeping or reading an
//! identity.

use std::path::PathBuf;

use flotilla_core_types::DeviceId;

/// Why an identity could not be made, kept or read. Each names the file
/// (where there is one) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Making the key or the certificate failed.
    #[error("making an identity for {device}: {reason}")]
    Generate {
        /// The device it was for.
        device: DeviceId,
        /// What rcgen said.
        reason: String,
    },
    /// A cluster CA could not be made, or could not issue a certificate.
    #[error("cluster CA: {reason}")]
    Authority {
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing a file of the identity failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The key file can be read by others than its owner: it is refused,
    /// as ssh refuses such a key, since it may have been copied.
    #[error(
        "{}: the private key can be read by others (mode {mode:o}); make it readable by its owner only (chmod 600) or remove it",
        path.display()
    )]
    KeyReadableByOthers {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file does not hold what an identity's file holds.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate names another device than the one asked for: the
    /// directory belongs to another device.
    #[error("{}: the identity there is {found}'s, not {wanted}'s", path.display())]
    OtherDevice {
        /// The certificate file.
        path: PathBuf,
        /// The device it names.
        found: DeviceId,
        /// The device asked for.
        wanted: DeviceId,
    },
    /// The key and the certificate do not belong together.
    #[error("{}: the private key is not the certificate's", path.display())]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
    },
    /// The certificate is there without its key: the identity cannot be
    /// used, and making a new one would hide that something removed the
    /// key.
    #[error(
        "{}: found, but not {}; restore it, or remove both to make a new identity",
        found.display(),
        missing.display()
    )]
    Incomplete {
        /// The file that is there.
        found: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
}

impl IdentityError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> IdentityError {
        IdentityError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> IdentityError {
        IdentityError::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
