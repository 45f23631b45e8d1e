//! [`Identity::load_or_create`]: an identity kept in a directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flotilla_core_types::DeviceId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::{Identity, IdentityError};

/// The certificate's file in an identity's directory (PEM).
pub(crate) const CERTIFICATE_FILE: &str = "identity.crt";
/// The private key's file in an identity's directory (PKCS#8 PEM, 0600).
pub(crate) const KEY_FILE: &str = "identity.key";

impl Identity {
    /// The identity of `device` kept in `dir`: read from `identity.crt` and
    /// `identity.key` there, or made with [`generate`](Self::generate) and
    /// written there when neither file exists (the directory too, readable
    /// by its owner only).
    ///
    /// The key file is written readable and writable by its owner only
    /// (0600), and each file is written whole before it takes its name, so
    /// a crash leaves no half identity. A key file that group or others can
    /// read is refused, as ssh refuses such a key: it may have been copied.
    ///
    /// Blocks the calling thread on file I/O; in async code run it on
    /// tokio's blocking pool.
    ///
    /// # Errors
    ///
    /// - [`IdentityError::KeyReadableByOthers`]: the key file's mode lets
    ///   others than its owner read it.
    /// - [`IdentityError::OtherDevice`]: the identity there names another
    ///   device.
    /// - [`IdentityError::Incomplete`]: one file is there without the other.
    /// - [`IdentityError::Malformed`] or [`IdentityError::KeyMismatch`]: a
    ///   file holds something else, or the key is not the certificate's.
    /// - [`IdentityError::Io`]: reading or writing failed.
    pub fn load_or_create(dir: &Path, device: &DeviceId) -> Result<Identity, IdentityError> {
        let certificate_path = dir.join(CERTIFICATE_FILE);
        let key_path = dir.join(KEY_FILE);
        match (exists(&certificate_path)?, exists(&key_path)?) {
            (true, true) => load(&certificate_path, &key_path, device),
            (false, false) => create(dir, &certificate_path, &key_path, device),
            (true, false) => Err(IdentityError::Incomplete {
                found: certificate_path,
                missing: key_path,
            }),
            (false, true) => Err(IdentityError::Incomplete {
                found: key_path,
                missing: certificate_path,
            }),
        }
    }
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists()
        .map_err(|error| IdentityError::io(path, error))
}

fn load(
    certificate_path: &Path,
    key_path: &Path,
    device: &DeviceId,
) -> Result<Identity, IdentityError> {
    check_owner_only(key_path)?;
    let key_pem = fs::read(key_path).map_err(|error| IdentityError::io(key_path, error))?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&key_pem).map_err(|error| {
        IdentityError::malformed(
            key_path,
            format!("not a PKCS#8 private key in PEM: {error}"),
        )
    })?;
    let certificate_pem =
        fs::read(certificate_path).map_err(|error| IdentityError::io(certificate_path, error))?;
    let certificate = CertificateDer::from_pem_slice(&certificate_pem).map_err(|error| {
        IdentityError::malformed(
            certificate_path,
            format!("not a certificate in PEM: {error}"),
        )
    })?;
    let (found, _) = crate::device_of_certificate(&certificate)
        .map_err(|reason| IdentityError::malformed(certificate_path, reason))?;
    if &found != device {
        return Err(IdentityError::OtherDevice {
            path: certificate_path.to_path_buf(),
            found,
            wanted: device.clone(),
        });
    }
    Identity::from_parts(certificate, key).map_err(|_| IdentityError::KeyMismatch {
        path: key_path.to_path_buf(),
    })
}

fn create(
    dir: &Path,
    certificate_path: &Path,
    key_path: &Path,
    device: &DeviceId,
) -> Result<Identity, IdentityError> {
    create_dir(dir)?;
    let identity = Identity::generate(device)?;
    let key_pem = pem("PRIVATE KEY", identity.private_key().secret_pkcs8_der());
    let certificate_pem = pem("CERTIFICATE", identity.certificate());
    // The key first: a certificate without its key is never left behind
    // looking like an identity.
    write_whole(key_path, key_pem.as_bytes(), 0o600)?;
    write_whole(certificate_path, certificate_pem.as_bytes(), 0o644)?;
    tracing::info!(device = %device, fingerprint = %identity.fingerprint(), dir = %dir.display(), "made a new identity");
    Ok(identity)
}

fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|error| IdentityError::io(dir, error))
}

/// Writes `bytes` to a fresh file beside `path` with permissions `mode`,
/// syncs it, then renames it to `path`: `path` is either absent or whole.
fn write_whole(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let temporary = temporary_beside(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    written.map_err(|error| {
        let _ = fs::remove_file(&temporary);
        IdentityError::io(path, error)
    })
}

fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(format!(".new-{}", std::process::id()));
    path.with_file_name(name)
}

/// Refuses a key file that group or others may read or write.
fn check_owner_only(path: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|error| IdentityError::io(path, error))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyReadableByOthers {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `der` as a PEM block labelled `label`.
fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_block_reads_back() {
        let der: Vec<u8> = (0..=255).collect();
        let text = pem("CERTIFICATE", &der);
        assert!(text.lines().all(|line| line.len() <= 64));
        let read = CertificateDer::from_pem_slice(text.as_bytes()).expect("reads");
        assert_eq!(read.as_ref(), der.as_slice());
    }
}
