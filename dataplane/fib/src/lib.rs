//! Forwarding tables of the xlane dataplane.
//!
//! * [`lpm`]: IPv4 longest-prefix match (DIR-16-8-8) with a burst lookup.
//! * [`tables`]: the remote-node table (node subnet → underlay IP, VTEP MAC, next-hop
//!   MAC), the local endpoint table (pod IP → port, MAC) and the node's own VTEP
//!   settings, compiled by [`FibBuilder`] into one immutable [`Fib`] snapshot.
//! * [`FibHandle`]: publication by atomic pointer swap (RCU): workers load the current
//!   snapshot once per burst and never block; the control side builds the next one off
//!   the fast path.
#![forbid(unsafe_code)]

pub mod lpm;
pub mod tables;

pub use lpm::{Lpm, LpmBuilder, Prefix};
pub use tables::{
    Endpoint, Fib, FibBuilder, FibError, FibHandle, FibReader, NextHop, NodeConfig, PortId, PortRole, Remote,
    RemoteNode,
};
