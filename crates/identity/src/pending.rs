//! [`PendingHandshakes`]: how many connections a server lets wait in their
//! handshake, in all and from one address, so that sockets opened by
//! anyone who reaches the port cannot take every place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The places for connections that have not proved who they are yet: at
/// most `total` at once, and at most `per_address` from one IP address.
/// A server takes a place before its handshake ([`try_start`](Self::try_start))
/// and gives it back when the handshake is over, so that connections that
/// have proved themselves are limited apart, and strangers from one
/// address cannot crowd out peers from others.
///
/// ```
/// use flotilla_identity::PendingHandshakes;
///
/// let pending = PendingHandshakes::new(2, 1);
/// let here = "10.0.0.1".parse().expect("an address");
/// let there = "10.0.0.2".parse().expect("an address");
/// let first = pending.try_start(here).expect("a place");
/// assert!(pending.try_start(here).is_none(), "one per address");
/// let _second = pending.try_start(there).expect("another address");
/// drop(first);
/// assert!(pending.try_start(here).is_some(), "given back");
/// ```
#[derive(Clone)]
pub struct PendingHandshakes {
    inner: Arc<Places>,
}

struct Places {
    total: usize,
    per_address: usize,
    taken: Mutex<HashMap<IpAddr, usize>>,
}

/// A place taken for one handshake; given back when dropped.
#[must_use = "the place is given back when this is dropped"]
pub struct PendingHandshake {
    places: Arc<Places>,
    address: IpAddr,
}

impl PendingHandshakes {
    /// At most `total` handshakes at once, `per_address` of them from one
    /// IP address (each at least 1).
    pub fn new(total: usize, per_address: usize) -> PendingHandshakes {
        PendingHandshakes {
            inner: Arc::new(Places {
                total: total.max(1),
                per_address: per_address.max(1),
                taken: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A place for a handshake from `address`, or `None` when every place,
    /// or every place for that address, is taken.
    pub fn try_start(&self, address: IpAddr) -> Option<PendingHandshake> {
        let mut taken = self
            .inner
            .taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let in_all: usize = taken.values().sum();
        let here = taken.get(&address).copied().unwrap_or(0);
        if in_all >= self.inner.total || here >= self.inner.per_address {
            return None;
        }
        *taken.entry(address).or_insert(0) += 1;
        Some(PendingHandshake {
            places: Arc::clone(&self.inner),
            address,
        })
    }

    /// How many handshakes hold a place now.
    pub fn len(&self) -> usize {
        self.inner
            .taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }

    /// Whether no handshake holds a place.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut taken = self
            .places
            .taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = taken.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                taken.remove(&self.address);
            }
        }
    }
}

impl std::fmt::Debug for PendingHandshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingHandshakes")
            .field("total", &self.inner.total)
            .field("per_address", &self.inner.per_address)
            .field("taken", &self.len())
            .finish()
    }
}

impl std::fmt::Debug for PendingHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingHandshake")
            .field("address", &self.address)
            .finish()
    }
}
