//! xlane-agent: the per-node control process.
//!
//! * [`netconf`]: the network configuration in flannel's format;
//! * [`lease`]: subnet leases in flannel's schema;
//! * [`store`]: the datastore trait and its `file` implementation;
//! * [`ipam`]: pod address allocation for the node subnet, persisted.
#![forbid(unsafe_code)]

pub mod ipam;
pub mod lease;
pub mod netconf;
pub mod store;
