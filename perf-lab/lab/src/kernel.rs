//! Kernel dataplanes on a bare lab node, set up exactly as flanneld and its CNI do it:
//! the flannel-style VXLAN node (a `vxlan` device `flannel.1` without learning, a route
//! per remote subnet via the remote's subnet address on-link, permanent neighbour and FDB
//! entries for the remote VTEP, a `cni0` bridge for the pods) — the interop peer and the
//! kernel VXLAN baseline — and plain host-gw routing (a reference ceiling).

use std::io;
use std::net::Ipv4Addr;
use xlane_netlab::{Netns, Node};

/// A node's pod subnet as flannel hands it out: a /24 here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet(pub Ipv4Addr);

impl Subnet {
    /// "10.244.2.0/24".
    #[must_use]
    pub fn cidr(self) -> String {
        format!("{}/24", self.0)
    }

    /// The bridge's (pods' gateway) address: the first host.
    #[must_use]
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0) + 1)
    }

    /// Pod `k`'s address (from .2 on).
    #[must_use]
    pub fn pod(self, k: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0) + 2 + u32::from(k))
    }
}

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
/// `ip` failures.
pub fn cni0(node: &Node, subnet: Subnet, mtu: u16) -> io::Result<()> {
    let ns = &node.ns;
    ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
    ns.ip(&["addr", "add", &format!("{}/24", subnet.gateway()), "dev", "cni0"])?;
    ns.ip(&["link", "set", "cni0", "mtu", &mtu.to_string(), "up"])?;
    enable_forwarding(ns)
}

/// A pod on `cni0`: a veth pair, the pod end `eth0` with `ip`/24 and a default route via
/// the bridge's address. Returns the pod's namespace.
///
/// # Errors
/// Namespace or `ip` failures.
pub fn bridge_pod(node: &Node, subnet: Subnet, k: u8, mtu: u16) -> io::Result<Netns> {
    let pod = Netns::new(&format!("{}-kp{k}", node.ns.name().split('-').next().unwrap_or("xl")))?;
    let host_if = format!("veth{k}");
    let m = mtu.to_string();
    node.ns.ip(&[
        "link",
        "add",
        &host_if,
        "mtu",
        &m,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        &m,
        "netns",
        pod.name(),
    ])?;
    node.ns.ip(&["link", "set", &host_if, "master", "cni0", "up"])?;
    pod.ip(&["addr", "add", &format!("{}/24", subnet.pod(k)), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "default", "via", &subnet.gateway().to_string()])?;
    Ok(pod)
}

/// flanneld's VXLAN device on `node`; returns its MAC (the lease's `VtepMAC`).
///
/// # Errors
/// `ip` failures.
pub fn flannel_vtep(node: &Node, subnet: Subnet, vni: u32, port: u16) -> io::Result<String> {
    let ns = &node.ns;
    ns.ip(&[
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
    // The uplink's MTU less the 50 bytes of VXLAN over IPv4.
    ns.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"])?;
    ns.ip(&["addr", "add", &format!("{}/32", subnet.0), "dev", "flannel.1"])?;
    ns.mac("flannel.1")
}

/// What flanneld programs for one remote node: route, permanent neighbour, FDB entry.
///
/// # Errors
/// `ip`/`bridge` failures.
pub fn flannel_remote(node: &Node, remote: Subnet, remote_underlay: Ipv4Addr, remote_vtep_mac: &str) -> io::Result<()> {
    let ns = &node.ns;
    let gw = remote.0.to_string();
    ns.ip(&["route", "replace", &remote.cidr(), "via", &gw, "dev", "flannel.1", "onlink"])?;
    ns.ip(&["neigh", "replace", &gw, "lladdr", remote_vtep_mac, "dev", "flannel.1", "nud", "permanent"])?;
    let out = ns
        .command("bridge")
        .args(["fdb", "replace", remote_vtep_mac, "dev", "flannel.1", "dst", &remote_underlay.to_string()])
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
/// `ip` failures.
pub fn host_gw_remote(node: &Node, remote: Subnet, remote_underlay: Ipv4Addr) -> io::Result<()> {
    node.ns.ip(&["route", "replace", &remote.cidr(), "via", &remote_underlay.to_string()]).map(drop)
}
