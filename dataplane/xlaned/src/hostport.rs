//! The host port: a veth pair through which the node itself reaches every pod in the
//! cluster (kubelet probes, kube-proxy paths) and pods reach the node.
//!
//! `xlane0` stays in the host with the node subnet's gateway address (/32) and a route
//! for the cluster CIDR; its peer (`xlane0-e`) is served by the engine like a pod port.
//! Set up over netlink (`xlane-netlink`), idempotently: an existing pair is reused.

use ipnet::Ipv4Net;
use std::io;
use std::net::Ipv4Addr;

/// The engine-side name for host port `host`.
#[must_use]
pub fn engine_end(host: &str) -> String {
    let mut s: String = host.chars().take(13).collect();
    s.push_str("-e");
    s
}

/// Create the pair if missing (an existing pair is reused), address `host` with `gateway`/32, route `cluster` into it,
/// set the pod MTU and software checksums.
///
/// # Errors
/// The failing netlink request or ioctl.
/// The pair gets `queues` queues each way, one per worker.
pub fn ensure(
    host: &str,
    engine: &str,
    gateway: Ipv4Addr,
    cluster: Ipv4Net,
    mtu: u16,
    queues: usize,
) -> io::Result<()> {
    let mut nl = xlane_netlink::Netlink::new()?;
    let queues = u32::try_from(queues).unwrap_or(1).max(1);
    match nl.add_veth(host, engine, None, u32::from(mtu), queues) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("creating {host}/{engine}: {e}"))),
    }
    let host_link = nl.link(host)?;
    for dev in [host, engine] {
        let l = nl.link(dev)?;
        nl.set_up(l.ifindex, Some(u32::from(mtu)))?;
    }
    nl.replace_addr(host_link.ifindex, gateway, 32)?;
    nl.replace_route(cluster.network(), cluster.prefix_len(), None, host_link.ifindex, Some(gateway))?;
    // The host's offloaded checksums would reach the engine unfinished.
    xlane_netlink::ethtool::set_tx_checksum(host, false)?;
    Ok(())
}
