//! The flotilla diagnostics protocol: a server says whether it is serving,
//! with which features and which partition, and a registry asks.
//!
//! It is tiny on purpose: one request ("status?") and one answer, each a
//! length-delimited frame (the bytes are in [`wire`] and in
//! `docs/diagnostics.md`). A server runs [`DiagnosticsServer`] beside its
//! own service and sets its [`DiagnosticsStatus`] as it changes (starting,
//! serving, draining); a registry checks it with [`DiagnosticsProber`].
//! [`serve_diagnostics_over`] and [`ask_status_over`] speak the protocol
//! over any byte stream, for transports of your own.
//!
//! # Example
//!
//! Both sides speak over a [`Transport`](flotilla_identity::Transport):
//! with TLS, a registry checks only servers that prove to be devices it
//! trusts (any other is [`ProbeError::Handshake`](crate::ProbeError::Handshake),
//! never healthy), and a server answers only probers it trusts.
//!
//! ```
//! use std::collections::BTreeSet;
//! use flotilla_core_types::DeviceId;
//! use flotilla_identity::LocalCluster;
//! use flotilla_viewreg::{
//!     DiagnosticsConfig, DiagnosticsProber, DiagnosticsServer, DiagnosticsStatus, ProbeOutcome,
//!     Prober,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! // Two devices of one process; elsewhere each has its own identity and
//! // trusts the other's key or the cluster's CA.
//! let cluster = LocalCluster::new("example")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = DiagnosticsServer::start(
//!     listener,
//!     cluster.transport(&DeviceId::new("server")?)?,
//!     DiagnosticsStatus::serving(BTreeSet::from(["kv".to_owned()])),
//!     DiagnosticsConfig::default(),
//! )?;
//! let endpoint = server.local_addr().try_into()?;
//!
//! let prober = DiagnosticsProber::new(cluster.transport(&DeviceId::new("registry")?)?);
//! let ProbeOutcome::Serving { features, .. } = prober.probe(&endpoint).await else {
//!     anyhow::bail!("the server is serving");
//! };
//! assert!(features.contains("kv"));
//!
//! server.set_status(DiagnosticsStatus::not_serving());
//! assert!(matches!(prober.probe(&endpoint).await, ProbeOutcome::NotServing));
//! # Ok(())
//! # }
//! ```

mod prober;
mod server;
pub mod wire;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::Partition;

pub use prober::{DiagnosticsProber, ask_status_over};
pub use server::{DiagnosticsConfig, DiagnosticsServer, serve_diagnostics_over};

/// What a server says of itself when asked: whether it serves, the
/// features it provides and the partition it holds.
///
/// Features travel as names (at most [`wire::MAX_FEATURES`], each 1 to
/// [`wire::MAX_FEATURE_LEN`] bytes); a [`DiagnosticsProber`] turns them into
/// the registry's feature set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiagnosticsStatus {
    serving: bool,
    features: BTreeSet<String>,
    partition: Option<Partition>,
}

impl DiagnosticsStatus {
    /// Serving, providing `features`, no partition.
    pub fn serving(features: BTreeSet<String>) -> Self {
        DiagnosticsStatus {
            serving: true,
            features,
            partition: None,
        }
    }

    /// Not serving (starting, draining, lost its backend): a registry turns
    /// the view unhealthy at once.
    pub fn not_serving() -> Self {
        DiagnosticsStatus::default()
    }

    /// The same status, holding `partition`.
    #[must_use]
    pub fn with_partition(mut self, partition: Partition) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The same status, providing `features`.
    #[must_use]
    pub fn with_features(mut self, features: BTreeSet<String>) -> Self {
        self.features = features;
        self
    }

    /// Whether it serves.
    pub fn is_serving(&self) -> bool {
        self.serving
    }

    /// The features it provides.
    pub fn features(&self) -> &BTreeSet<String> {
        &self.features
    }

    /// The partition it holds, if the data is partitioned.
    pub fn partition(&self) -> Option<Partition> {
        self.partition
    }
}
