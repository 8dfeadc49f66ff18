//! The host port: a veth pair through which the node itself reaches every pod in the
//! cluster (kubelet probes, kube-proxy paths) and pods reach the node.
//!
//! `xlane0` stays in the host with the node subnet's gateway address (/32) and a route
//! for the cluster CIDR; its peer (`xlane0-e`) is served by the engine like a pod port.
//! Rare, one-time setup, done with iproute2's `ip` (present on every node; the hot
//! paths and the neighbour table use netlink directly).

use ipnet::Ipv4Net;
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

/// The engine-side name for host port `host`.
#[must_use]
pub fn engine_end(host: &str) -> String {
    let mut s: String = host.chars().take(13).collect();
    s.push_str("-e");
    s
}

fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Create the pair if missing (an existing pair is reused), address `host` with `gateway`/32, route `cluster` into it,
/// set the pod MTU and software checksums.
///
/// # Errors
/// The failing `ip` command or ioctl.
/// The pair gets `queues` queues each way, one per worker.
pub fn ensure(
    host: &str,
    engine: &str,
    gateway: Ipv4Addr,
    cluster: Ipv4Net,
    mtu: u16,
    queues: usize,
) -> io::Result<()> {
    if ip(&["link", "show", "dev", host]).is_err() {
        let q = queues.to_string();
        let mut args = vec!["link", "add", host, "numtxqueues", &q, "numrxqueues", &q, "type", "veth"];
        args.extend(["peer", "name", engine, "numtxqueues", &q, "numrxqueues", &q]);
        ip(&args)?;
    }
    let mtu = mtu.to_string();
    for dev in [host, engine] {
        ip(&["link", "set", dev, "mtu", &mtu, "up"])?;
    }
    ip(&["addr", "replace", &format!("{gateway}/32"), "dev", host])?;
    ip(&["route", "replace", &cluster.to_string(), "dev", host, "src", &gateway.to_string()])?;
    // The host's offloaded checksums would reach the engine unfinished.
    xlane_xdp::sys::set_tx_checksum(host, false)?;
    Ok(())
}
