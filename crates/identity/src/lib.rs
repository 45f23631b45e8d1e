//! A device's identity for flotilla's authenticated peers: a private key
//! and a certificate that names the device's [`DeviceId`](flotilla_core_types::DeviceId), so that a peer
//! can prove who it is before it is trusted with anything.
//!
//! - [`Identity::generate`] makes a fresh one (rcgen; an ECDSA P-256 key and
//!   a self-signed certificate whose subject alternative name is the URI
//!   `flotilla-device:<id>`, and whose common name is the id).
//! - [`Identity::load_or_create`] keeps one in a directory, as ssh keeps
//!   its keys: the key file is written readable by its owner only (0600),
//!   and a key file that others can read is refused, never used.
//! - [`Fingerprint`] names a certificate's public key (SHA-256 of its
//!   SubjectPublicKeyInfo): what a peer pins to trust a device, as
//!   Syncthing binds a device id to its certificate.
//! - [`Trust`] is the devices a peer accepts, each pinned to its key or
//!   vouched for by a [`ClusterCa`], and [`tls`] the rustls configurations
//!   (TLS 1.3, both sides presenting certificates) that accept only those.
//! - [`LocalCluster`] is the devices of one process trusting each other
//!   through a CA in memory, with no setup.
//! - [`Transport`] secures a connection with them (or, loudly named, does
//!   not: [`Transport::insecure_plaintext`]), and its [`Secured`] stream
//!   names the device on the other end.
//!
//! # Example
//!
//! ```
//! use flotilla_core_types::DeviceId;
//! use flotilla_identity::Identity;
//!
//! # fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let device = DeviceId::new("laptop")?;
//! let made = Identity::load_or_create(dir.path(), &device)?;
//! // The next start finds the same identity.
//! let found = Identity::load_or_create(dir.path(), &device)?;
//! assert_eq!(made.fingerprint(), found.fingerprint());
//! assert_eq!(found.device(), &device);
//! println!("trust laptop by {}", found.fingerprint());
//! # Ok(())
//! # }
//! ```

mod ca;
mod error;
mod fingerprint;
mod identity;
mod local;
mod pending;
mod stored;
pub mod tls;
mod transport;
mod trust;

pub use ca::ClusterCa;
pub use error::IdentityError;
pub use fingerprint::{Fingerprint, ParseFingerprintError};
pub use identity::{DEVICE_URI_SCHEME, Identity, device_of_certificate};
pub use local::LocalCluster;
pub use pending::{PendingHandshake, PendingHandshakes};
pub use transport::{Secured, Transport, TransportError};
pub use trust::{Trust, TrustError};
