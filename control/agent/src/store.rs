//! Where leases live: a trait with two engines.
//!
//! * [`file::FileStore`]: the embedded default, for a single host, the lab and tests.
//!   Several agents on one machine share a directory; mutations are serialized with
//!   flock(2) and written atomically (write, fsync, rename).
//! * [`etcd::EtcdStore`] (v3 API, flannel's key schema): the distributed engine for real
//!   clusters. Behind the `etcd` feature, because its client needs protoc to build.
//! * [`kube::KubeStore`] (flannel's `--kube-subnet-mgr`): the lease is the Node's podCIDR,
//!   peers publish flannel's Node annotations. Behind the `kube` feature (kube-rs, hyper,
//!   rustls: a large tree that only Kubernetes deployments need).

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
#[cfg(feature = "kube")]
pub mod kube;

use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::NetConfig;
use ipnet::Ipv4Net;
use std::time::Duration;

/// An opaque position in the store's history (watch cursor).
pub type Revision = u64;

/// A change seen by [`Datastore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A lease appeared or changed.
    Upsert(Lease),
    /// A lease was released or expired.
    Removed(Ipv4Net),
}

/// Apply `events`, in order, to a map of leases by subnet.
pub fn apply(leases: &mut std::collections::BTreeMap<Ipv4Net, Lease>, events: impl IntoIterator<Item = Event>) {
    for ev in events {
        match ev {
            Event::Upsert(l) => {
                leases.insert(l.subnet, l);
            }
            Event::Removed(s) => {
                leases.remove(&s);
            }
        }
    }
}

/// Datastore failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem or network I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Every subnet in the configured range is leased.
    #[error("no free subnet in {0} (all leased)")]
    Full(Ipv4Net),
    /// Our lease is gone or held by another node now.
    #[error("lease on {0} was lost")]
    Lost(Ipv4Net),
    /// The datastore assigns a lease the agent cannot use (kube: a podCIDR outside the
    /// network config, or none at all).
    #[error("{what}: {reason}")]
    Refused {
        /// The lease or object refused.
        what: String,
        /// Why.
        reason: String,
    },
    /// A stored value could not be read.
    #[error("stored value at {key} is unreadable: {reason}")]
    Corrupt {
        /// The key or file.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The operations the agent needs from a datastore.
pub trait Datastore: Send {
    /// The stored network configuration (flannel's `<prefix>/config`), if any.
    ///
    /// # Errors
    /// [`StoreError`].
    fn network_config(&mut self) -> Result<Option<String>, StoreError>;

    /// Live leases and the revision they reflect.
    ///
    /// # Errors
    /// [`StoreError`].
    fn leases(&mut self) -> Result<(Vec<Lease>, Revision), StoreError>;

    /// Acquire a lease for `attrs`: the subnet a live lease with the same public IP
    /// holds (a restart keeps its subnet), else `preferred` if free, else the first
    /// free subnet of `cfg`.
    ///
    /// # Errors
    /// [`StoreError::Full`] when nothing is free.
    fn acquire(
        &mut self,
        cfg: &NetConfig,
        attrs: &LeaseAttrs,
        preferred: Option<Ipv4Net>,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;

    /// Extend our lease by `ttl` from now.
    ///
    /// # Errors
    /// [`StoreError::Lost`] if it expired and is gone or taken.
    fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<(), StoreError>;

    /// Give our lease up.
    ///
    /// # Errors
    /// [`StoreError`].
    fn release(&mut self, lease: &Lease) -> Result<(), StoreError>;

    /// Changes after `since`, waiting up to `timeout` for the first; returns them and the
    /// new revision.
    ///
    /// # Errors
    /// [`StoreError`].
    fn watch(&mut self, since: Revision, timeout: Duration) -> Result<(Vec<Event>, Revision), StoreError>;
}
