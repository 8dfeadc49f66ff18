//! Kernel dataplanes on a bare lab node, set up exactly as flanneld and its CNI do it:
//! the flannel-style VXLAN node (a `vxlan` device `flannel.1` without learning, a route
//! per remote subnet via the remote's subnet address on-link, permanent neighbour and FDB
//! entries for the remote VTEP, a `cni0` bridge for the pods) — the interop peer and the
//! kernel VXLAN baseline — and plain host-gw routing (a reference ceiling).
//!
//! Links, addresses and routes go through `xlane_netlink` like every other lab and xlane
//! set-up (the pods' veth pairs through [`Veth`]). flanneld's own VXLAN objects — the
//! `vxlan` device, the on-link route via a remote VTEP, its permanent neighbour and FDB
//! entries — are still made with `ip`/`bridge`: xlane never programs any of them, so
//! `xlane_netlink` has no requests for them, and four requests plus an on-link route
//! flag that only this baseline would use do not belong in the dataplane's netlink crate.

use std::io;
use std::net::Ipv4Addr;
use xlane_netlab::topology::{POD_MTU, UPLINK_MTU};
use xlane_netlab::{Lab, Netns, Node, Subnet};
use xlane_netlink::{Netlink, Route, Veth, VethEnd};
use xlane_wire::Mac;

/// Forwarding on, as on every Kubernetes node.
///
/// # Errors
/// The sysctl cannot be written.
pub fn enable_forwarding(ns: &Netns) -> io::Result<()> {
    ns.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
}

/// The `cni0` bridge with the subnet's gateway address, as flannel's `bridge` CNI
/// configuration creates it.
///
/// # Errors
/// Netlink failures.
pub fn cni0(node: &Node, subnet: Subnet, mtu: u16) -> io::Result<()> {
    let mut nl = Netlink::in_netns(&node.ns.path())?;
    nl.add_bridge("cni0")?;
    let cni0 = nl.link("cni0")?.ifindex;
    nl.replace_addr(cni0, subnet.gateway(), Subnet::PREFIX_LEN)?;
    nl.set_up(cni0, Some(u32::from(mtu)))?;
    enable_forwarding(&node.ns)
}

/// A pod on `cni0`: a veth pair, the pod end `eth0` with its address in `subnet` and a
/// default route via the bridge's address. Returns the pod's namespace.
///
/// # Errors
/// Namespace or netlink failures.
pub fn bridge_pod(node: &Node, subnet: Subnet, k: u8, mtu: u16) -> io::Result<Netns> {
    let pod = Netns::new(&format!("{}-kp{k}", node.ns.name().split('-').next().unwrap_or("xl")))?;
    let host_if = format!("veth{k}");
    let (host, _) = Veth {
        local: VethEnd { name: &host_if, netns: Some(&node.ns.path()), ..VethEnd::default() },
        peer: VethEnd {
            name: "eth0",
            netns: Some(&pod.path()),
            addrs: &[(subnet.pod(k), Subnet::PREFIX_LEN)],
            routes: &[Route::default_via(subnet.gateway())],
        },
        mtu: Some(u32::from(mtu)),
        queues: 1,
        reuse: false,
    }
    .create()?;
    let mut nl = Netlink::in_netns(&node.ns.path())?;
    let cni0 = nl.link("cni0")?.ifindex;
    nl.set_master(host.ifindex, cni0)?;
    Ok(pod)
}

/// flanneld's VXLAN device on `node`; returns its MAC (the lease's `VtepMAC`).
///
/// # Errors
/// `ip` or netlink failures.
pub fn flannel_vtep(node: &Node, subnet: Subnet, vni: u32, port: u16, mtu: u16) -> io::Result<Mac> {
    node.ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        &vni.to_string(),
        "local",
        &node.ip.to_string(),
        "dev",
        &node.uplink,
        "dstport",
        &port.to_string(),
        "nolearning",
    ])?;
    let mut nl = Netlink::in_netns(&node.ns.path())?;
    let vtep = nl.link("flannel.1")?;
    // The uplink's MTU less the 50 bytes of VXLAN over IPv4.
    nl.set_up(vtep.ifindex, Some(u32::from(mtu)))?;
    nl.replace_addr(vtep.ifindex, subnet.0, 32)?;
    Ok(vtep.mac)
}

/// What flanneld programs for one remote node: route, permanent neighbour, FDB entry.
///
/// # Errors
/// `ip`/`bridge` failures.
pub fn flannel_remote(node: &Node, remote: Subnet, remote_underlay: Ipv4Addr, remote_vtep_mac: Mac) -> io::Result<()> {
    let ns = &node.ns;
    let (gw, mac) = (remote.0.to_string(), remote_vtep_mac.to_string());
    ns.ip(&["route", "replace", &remote.cidr(), "via", &gw, "dev", "flannel.1", "onlink"])?;
    ns.ip(&["neigh", "replace", &gw, "lladdr", &mac, "dev", "flannel.1", "nud", "permanent"])?;
    let out = ns
        .command("bridge")
        .args(["fdb", "replace", &mac, "dev", "flannel.1", "dst", &remote_underlay.to_string()])
        .args(["self", "permanent"])
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("bridge fdb: {}", String::from_utf8_lossy(&out.stderr))))
    }
}

/// host-gw: a plain route to the remote subnet via the remote node's underlay address.
///
/// # Errors
/// Netlink failures (no route to the remote node among them).
pub fn host_gw_remote(node: &Node, remote: Subnet, remote_underlay: Ipv4Addr) -> io::Result<()> {
    let mut nl = Netlink::in_netns(&node.ns.path())?;
    let (_, oif) = nl.next_hop(remote_underlay)?;
    nl.replace_route(remote.0, Subnet::PREFIX_LEN, Some(remote_underlay), oif, None)
}

/// A kernel dataplane between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// flannel-style VXLAN ([`flannel_vtep`], [`flannel_remote`]), pods at the VXLAN MTU.
    Vxlan,
    /// host-gw routes ([`host_gw_remote`]), pods at the uplink's MTU.
    HostGw,
}

/// The pods' MTU under `baseline` on an underlay of `uplink_mtu` (VXLAN takes 50
/// bytes of it).
#[must_use]
pub fn pod_mtu(baseline: Baseline, uplink_mtu: u16) -> u16 {
    match baseline {
        Baseline::Vxlan => uplink_mtu - (UPLINK_MTU - POD_MTU),
        Baseline::HostGw => uplink_mtu,
    }
}

/// The lab's first two nodes joined by `baseline`, with one pod on each node's `cni0`
/// (pod 0 of its subnet), as the bench runs them. Returns the pods' namespaces.
///
/// # Errors
/// Namespace, netlink, `ip` or `bridge` failures.
pub fn two_pods(lab: &Lab, baseline: Baseline) -> io::Result<[Netns; 2]> {
    let nodes = [&lab.nodes[0], &lab.nodes[1]];
    let mtu = pod_mtu(baseline, lab.uplink_mtu());
    let mut macs = Vec::new();
    for n in nodes {
        if baseline == Baseline::Vxlan {
            macs.push(flannel_vtep(n, n.subnet, 1, xlane_wire::VXLAN_PORT_LINUX, mtu)?);
        }
        cni0(n, n.subnet, mtu)?;
    }
    let pods = [bridge_pod(nodes[0], nodes[0].subnet, 0, mtu)?, bridge_pod(nodes[1], nodes[1].subnet, 0, mtu)?];
    for (i, n) in nodes.into_iter().enumerate() {
        let other = nodes[1 - i];
        match baseline {
            Baseline::Vxlan => flannel_remote(n, other.subnet, other.ip, macs[1 - i])?,
            Baseline::HostGw => host_gw_remote(n, other.subnet, other.ip)?,
        }
    }
    Ok(pods)
}
