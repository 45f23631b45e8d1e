//! An identity kept in a directory: made once and found again, its key
//! written for its owner only, and every way the directory can be wrong
//! refused with its own error, leaving the files as they were. And, in
//! `handshake`, real TLS handshakes between identities.

mod handshake;
mod transport;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Result;
use flotilla_core_types::DeviceId;
use flotilla_identity::{Identity, IdentityError, device_of_certificate};

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("a valid id")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("exists").permissions().mode() & 0o777
}

#[test]
fn an_identity_is_made_once_and_found_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("node");
    let made = Identity::load_or_create(&home, &device("laptop"))?;
    assert_eq!(mode(&home.join("identity.key")), 0o600);
    assert_eq!(mode(&home), 0o700);
    let found = Identity::load_or_create(&home, &device("laptop"))?;
    assert_eq!(found.fingerprint(), made.fingerprint());
    assert_eq!(found.certificate(), made.certificate());
    assert_eq!(
        found.private_key().secret_pkcs8_der(),
        made.private_key().secret_pkcs8_der()
    );
    assert_eq!(
        device_of_certificate(found.certificate()).map_err(anyhow::Error::msg)?,
        (device("laptop"), made.fingerprint())
    );
    // Nothing else was left in the directory.
    let mut names: Vec<_> = fs::read_dir(&home)?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["identity.crt", "identity.key"]);
    Ok(())
}

#[test]
fn a_key_others_can_read_is_refused_and_left_as_it_is() -> Result<()> {
    let dir = tempfile::tempdir()?;
    Identity::load_or_create(dir.path(), &device("laptop"))?;
    let key = dir.path().join("identity.key");
    let before = fs::read(&key)?;
    for loose in [0o640, 0o604, 0o644, 0o660] {
        fs::set_permissions(&key, fs::Permissions::from_mode(loose))?;
        let error = Identity::load_or_create(dir.path(), &device("laptop")).expect_err("refused");
        match &error {
            IdentityError::KeyReadableByOthers { path, mode } => {
                assert_eq!((path.as_path(), *mode), (key.as_path(), loose));
            }
            other => panic!("expected a refused key, got {other:?}"),
        }
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
    assert_eq!(fs::read(&key)?, before, "the key is untouched");
    // Owner-only again: accepted (read-only for the owner too).
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400))?;
    Identity::load_or_create(dir.path(), &device("laptop"))?;
    Ok(())
}

#[test]
fn another_devices_identity_is_not_taken_over() -> Result<()> {
    let dir = tempfile::tempdir()?;
    Identity::load_or_create(dir.path(), &device("laptop"))?;
    let error = Identity::load_or_create(dir.path(), &device("desktop")).expect_err("refused");
    assert!(
        matches!(&error, IdentityError::OtherDevice { found, wanted, .. }
            if found == &device("laptop") && wanted == &device("desktop")),
        "{error:?}"
    );
    Ok(())
}

#[test]
fn a_lost_certificate_is_made_again_and_a_lost_key_is_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let made = Identity::load_or_create(dir.path(), &device("laptop"))?;
    // The certificate lost (a crash between the two writes): a new one of
    // the same key, so the same fingerprint.
    fs::remove_file(dir.path().join("identity.crt"))?;
    let again = Identity::load_or_create(dir.path(), &device("laptop"))?;
    assert_eq!(again.fingerprint(), made.fingerprint());
    assert!(dir.path().join("identity.crt").exists());
    assert_eq!(
        Identity::load_or_create(dir.path(), &device("laptop"))?.fingerprint(),
        made.fingerprint()
    );
    // The key lost: nothing to make the identity from; refused, not
    // replaced by a new one.
    fs::remove_file(dir.path().join("identity.key"))?;
    let error = Identity::load_or_create(dir.path(), &device("laptop")).expect_err("refused");
    match &error {
        IdentityError::Incomplete { missing, .. } => {
            assert_eq!(missing, &dir.path().join("identity.key"));
        }
        other => panic!("expected incomplete, got {other:?}"),
    }
    assert!(
        !dir.path().join("identity.key").exists(),
        "nothing was made"
    );
    Ok(())
}

#[test]
fn files_that_are_not_an_identity_are_named_errors() -> Result<()> {
    let other = Identity::generate(&device("laptop"))?;
    let dir = tempfile::tempdir()?;
    Identity::load_or_create(dir.path(), &device("laptop"))?;
    let key = dir.path().join("identity.key");
    let certificate = dir.path().join("identity.crt");
    let good_key = fs::read(&key)?;
    let good_certificate = fs::read(&certificate)?;

    fs::write(&key, b"not a key")?;
    let error = Identity::load_or_create(dir.path(), &device("laptop")).expect_err("refused");
    assert!(
        matches!(&error, IdentityError::Malformed { path, .. } if path == &key),
        "{error:?}"
    );
    fs::write(&key, &good_key)?;

    fs::write(
        &certificate,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    let error = Identity::load_or_create(dir.path(), &device("laptop")).expect_err("refused");
    assert!(
        matches!(&error, IdentityError::Malformed { path, .. } if path == &certificate),
        "{error:?}"
    );

    // Another identity's certificate for the same device: the key is not
    // its key.
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", other.certificate().to_vec()));
    fs::write(&certificate, pem)?;
    let error = Identity::load_or_create(dir.path(), &device("laptop")).expect_err("refused");
    assert!(
        matches!(&error, IdentityError::KeyMismatch { path } if path == &key),
        "{error:?}"
    );
    fs::write(&certificate, &good_certificate)?;
    Identity::load_or_create(dir.path(), &device("laptop"))?;
    Ok(())
}

#[test]
fn a_key_that_is_not_a_regular_file_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    Identity::load_or_create(dir.path(), &device("laptop"))?;
    let key = dir.path().join("identity.key");
    fs::remove_file(&key)?;
    fs::create_dir(&key)?;
    let error = Identity::load_or_create(dir.path(), &device("laptop")).expect_err("refused");
    assert!(
        matches!(&error, IdentityError::Malformed { path, .. } | IdentityError::Io { path, .. } if path == &key),
        "{error:?}"
    );
    Ok(())
}
