//! xlaned as a library: the dataplane daemon's parts, so they are unit-tested without
//! privileges and the binary is a thin `main`.
//!
//! * [`worker`]: a pinned thread running the engine's burst driver over its ports;
//! * [`host`]: what the control thread asks of the node ([`host::System`]: netlink,
//!   bpf(2), AF_XDP);
//! * [`state`] and `ports`: the control thread's model of the node and every request;
//!   endpoint attaches answered once the workers have opened the port, without holding
//!   the control loop;
//! * [`server`]: the control socket on `xlane-api`'s loop; [`metrics`]: Prometheus text;
//! * [`daemon`]: all of it wired together; [`config`]: flags, environment, file.
#![forbid(unsafe_code)]

pub mod capture;
pub mod config;
pub mod daemon;
#[cfg(test)]
mod fake;
pub mod fdstore;
pub mod handover;
pub mod host;
pub mod hostport;
pub mod metrics;
pub mod node_lock;
mod observe;
mod port_info;
mod ports;
mod ready_sockets;
pub mod server;
pub mod state;
#[cfg(test)]
mod state_tests;
pub mod worker;

pub use ports::VHOST_GATEWAY_MAC;
