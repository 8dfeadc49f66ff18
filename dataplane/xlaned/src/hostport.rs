//! The host port: a veth pair through which the node itself reaches every pod in the
//! cluster (kubelet probes, kube-proxy paths) and pods reach the node.
//!
//! `xlane0` stays in the host with the node subnet's gateway address (/32) and a route
//! for the cluster CIDR; its peer (`xlane0-e`) is served by the engine like a pod port.
//! Set up over netlink (`xlane-netlink`), idempotently: an existing pair is reused.

use ipnet::Ipv4Net;
use std::io;
use std::net::Ipv4Addr;
use xlane_netlink::{Route, Veth, VethEnd};

/// The engine-side name for host port `host`.
#[must_use]
pub fn engine_end(host: &str) -> String {
    let mut s: String = host.chars().take(13).collect();
    s.push_str("-e");
    s
}

/// The host port as the node wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPortSpec<'a> {
    /// The end that stays in the host (`xlane0`).
    pub host: &'a str,
    /// The end the engine serves ([`engine_end`] of `host`).
    pub engine: &'a str,
    /// The node subnet's gateway address, given to `host` as a /32.
    pub gateway: Ipv4Addr,
    /// The cluster CIDR, routed into `host` from `gateway`.
    pub cluster: Ipv4Net,
    /// The pods' MTU.
    pub mtu: u16,
    /// Queues each way: one per worker.
    pub queues: usize,
}

/// Create the pair if missing (an existing pair is reused), address the host end with
/// the gateway/32, route the cluster into it, set the pod MTU and software checksums.
///
/// # Errors
/// The failing netlink request or ioctl.
pub fn ensure(spec: &HostPortSpec<'_>) -> io::Result<()> {
    let HostPortSpec { host, engine, gateway, cluster, mtu, queues } = *spec;
    let route = Route { dst: cluster.network(), prefix_len: cluster.prefix_len(), via: None, src: Some(gateway) };
    Veth {
        local: VethEnd { name: host, addrs: &[(gateway, 32)], routes: &[route], ..VethEnd::default() },
        peer: VethEnd { name: engine, ..VethEnd::default() },
        mtu: Some(u32::from(mtu)),
        queues: u32::try_from(queues).unwrap_or(1),
        reuse: true,
    }
    .create()?;
    // The host's offloaded checksums would reach the engine unfinished.
    xlane_netlink::ethtool::set_tx_checksum(host, false)?;
    Ok(())
}
