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
    /// (0600), and each file is written whole and synced before it takes
    /// its name, the key first. A key whose certificate is missing (a crash
    /// between the two) gets a new certificate, with the same fingerprint;
    /// a certificate without its key is an error. A key file that group or
    /// others can read is refused, as ssh refuses such a key: it may have
    /// been copied.
    ///
    /// One process at a time may use a directory: two making an identity
    /// in it at once could each keep a different one. The key's owner is
    /// not checked (only its permission bits), nor is the directory's:
    /// keep the directory writable by its owner only. A key found without
    /// its certificate is taken as `device`'s.
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
    /// - [`IdentityError::Incomplete`]: the certificate is there without the
    ///   key.
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
            (false, true) => recertify(dir, &certificate_path, &key_path, device),
        }
    }
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists()
        .map_err(|error| IdentityError::io(path, error))
}

/// The most bytes an identity's file is read to: far more than a key or a
/// certificate takes, so that a file that is neither cannot fill memory.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// `path`'s bytes, read through one handle whose metadata is checked: a
/// regular file, at most [`MAX_FILE_BYTES`], and with `owner_only`, no
/// permission for group or others (checked on the file opened, so it
/// cannot be swapped between the check and the read).
fn read_file(path: &Path, owner_only: bool) -> Result<Vec<u8>, IdentityError> {
    use std::io::Read;
    let io = |error| IdentityError::io(path, error);
    let file = fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(IdentityError::malformed(path, "not a regular file"));
    }
    if owner_only {
        check_owner_only(path, &metadata)?;
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(IdentityError::malformed(
            path,
            format!(
                "{} bytes, more than an identity's file holds",
                metadata.len()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

fn read_key(key_path: &Path) -> Result<PrivatePkcs8KeyDer<'static>, IdentityError> {
    let key_pem = read_file(key_path, true)?;
    PrivatePkcs8KeyDer::from_pem_slice(&key_pem).map_err(|error| {
        IdentityError::malformed(
            key_path,
            format!("not a PKCS#8 private key in PEM: {error}"),
        )
    })
}

/// A key without its certificate: a new certificate of the same key.
fn recertify(
    dir: &Path,
    certificate_path: &Path,
    key_path: &Path,
    device: &DeviceId,
) -> Result<Identity, IdentityError> {
    let key = read_key(key_path)?;
    let identity = Identity::with_key(device, &key).map_err(|_| {
        IdentityError::malformed(key_path, "a private key no certificate can be made for")
    })?;
    write_whole(
        certificate_path,
        pem("CERTIFICATE", identity.certificate()).as_bytes(),
        0o644,
    )?;
    sync_dir(dir)?;
    tracing::warn!(device = %device, fingerprint = %identity.fingerprint(), dir = %dir.display(), "the identity's certificate was missing; made a new one of its key");
    Ok(identity)
}

fn load(
    certificate_path: &Path,
    key_path: &Path,
    device: &DeviceId,
) -> Result<Identity, IdentityError> {
    let key = read_key(key_path)?;
    let certificate_pem = read_file(certificate_path, false)?;
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
    sync_dir(dir)?;
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

/// A name beside `path` no other writer uses: the process id, the time
/// and a counter (a crash may leave one behind; none is ever reused).
fn temporary_beside(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(format!(".new-{}-{nanos}-{count}", std::process::id()));
    path.with_file_name(name)
}

/// Syncs `dir`, so that the names given to its files last through a power
/// loss.
fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| IdentityError::io(dir, error))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Refuses a key file that group or others may read or write. (On other
/// systems than Unix there are no such bits to check, and none is.)
fn check_owner_only(path: &Path, metadata: &fs::Metadata) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyReadableByOthers {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, metadata);
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
