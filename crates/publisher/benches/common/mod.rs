//! What the publisher's benchmarks share: a backend wrapper that counts
//! operations, a backend that does nothing, and the 10,000 pairs.

#![allow(dead_code, unreachable_pub)] // each bench binary uses part of this

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_core_types::{Endpoint, Name};
use flotilla_publisher::{
    Listing, MountFlags, MountOutcome, MountReport, Namespace, NamespaceError, Publisher,
    RefreshStyle, RemovedMount, Resolution,
};

/// 100 names × 100 servers.
pub const SIDE: u16 = 100;
pub const MOUNTS: u64 = SIDE as u64 * SIDE as u64;

pub fn name(index: u16) -> Name {
    Name::new(format!("service-{index}")).expect("valid name")
}

pub fn server(port: u16) -> Endpoint {
    Endpoint::new("10.0.0.1", port).expect("valid endpoint")
}

/// Adds 100 names and 100 servers to `publisher` and waits until all
/// 10,000 pairs are mounted.
pub async fn publish_10k(publisher: &Publisher) {
    for index in 0..SIDE {
        publisher.add_name(name(index)).await.expect("running");
        publisher
            .add_server(server(index + 1))
            .await
            .expect("running");
    }
    let mut watch = publisher.watch().await.expect("running");
    watch
        .wait_for(|status| status.all_mounted())
        .await
        .expect("publisher running");
}

/// Counts every operation the publisher asks of the backend it wraps.
/// Clones share the backend and the count.
pub struct Counting<N> {
    inner: Arc<N>,
    operations: Arc<AtomicU64>,
}

impl<N> Clone for Counting<N> {
    fn clone(&self) -> Self {
        Counting {
            inner: Arc::clone(&self.inner),
            operations: Arc::clone(&self.operations),
        }
    }
}

impl<N> Counting<N> {
    pub fn new(inner: N) -> Self {
        Counting {
            inner: Arc::new(inner),
            operations: Arc::default(),
        }
    }

    /// Operations so far.
    pub fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }

    pub fn inner(&self) -> &N {
        &self.inner
    }

    fn count(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }
}

impl<N: Namespace> Namespace for Counting<N> {
    fn refresh_style(&self) -> RefreshStyle {
        self.inner.refresh_style()
    }

    fn root(&self) -> String {
        self.inner.root()
    }

    fn validate_ttl(&self, ttl: Duration) -> Result<(), NamespaceError> {
        self.inner.validate_ttl(ttl)
    }

    async fn mount(
        &self,
        name: &Name,
        server: &Endpoint,
        ttl: Duration,
        flags: MountFlags,
    ) -> Result<MountReport, NamespaceError> {
        self.count();
        self.inner.mount(name, server, ttl, flags).await
    }

    fn forgotten(&self, name: &Name, server: &Endpoint) {
        self.inner.forgotten(name, server);
    }

    async fn unmount(&self, name: &Name, server: &Endpoint) -> Result<(), NamespaceError> {
        self.count();
        self.inner.unmount(name, server).await
    }

    async fn keep_alive(&self) -> Result<(), NamespaceError> {
        self.count();
        self.inner.keep_alive().await
    }

    async fn release(&self) -> Result<(), NamespaceError> {
        self.count();
        self.inner.release().await
    }

    async fn resolve(&self, name: &Name) -> Result<Resolution, NamespaceError> {
        self.inner.resolve(name).await
    }

    async fn list(&self, prefix: Option<&Name>) -> Result<Listing, NamespaceError> {
        self.inner.list(prefix).await
    }

    async fn removed_mounts(&self) -> Result<Vec<RemovedMount>, NamespaceError> {
        self.inner.removed_mounts().await
    }
}

/// A backend that accepts everything and keeps nothing: the publisher's
/// own costs, alone.
#[derive(Debug, Clone, Copy)]
pub struct NullNamespace;

impl Namespace for NullNamespace {
    fn refresh_style(&self) -> RefreshStyle {
        RefreshStyle::PerMount
    }

    fn root(&self) -> String {
        String::from("null:")
    }

    fn validate_ttl(&self, _ttl: Duration) -> Result<(), NamespaceError> {
        Ok(())
    }

    async fn mount(
        &self,
        _name: &Name,
        _server: &Endpoint,
        _ttl: Duration,
        _flags: MountFlags,
    ) -> Result<MountReport, NamespaceError> {
        Ok(MountOutcome::Refreshed.into())
    }

    async fn unmount(&self, _name: &Name, _server: &Endpoint) -> Result<(), NamespaceError> {
        Ok(())
    }

    async fn resolve(&self, name: &Name) -> Result<Resolution, NamespaceError> {
        Err(NamespaceError::NotFound { name: name.clone() })
    }

    async fn list(&self, _prefix: Option<&Name>) -> Result<Listing, NamespaceError> {
        Ok(Listing::default())
    }
}
