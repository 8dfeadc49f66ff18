//! xlane-agent: the per-node control process.
//!
//! * [`netconf`]: the network configuration in flannel's format;
//! * [`lease`]: subnet leases in flannel's schema;
//! * [`store`]: the datastore trait and its `file` implementation;
//! * [`ipam`]: pod address allocation for the node subnet, persisted;
//! * [`sync`]: leases → the remote nodes and routes xlaned should hold, and the diff.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod ipam;
pub mod lease;
mod link;
pub mod netconf;
pub mod store;
pub mod sync;
