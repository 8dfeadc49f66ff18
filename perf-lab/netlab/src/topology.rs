//! The lab topology: a fabric namespace with a bridge as the underlay, nodes attached
//! to it by their uplink, and pods attached to nodes by veth pairs.
//!
//! ```text
//!   pod ns ── eth0 ═══ vpN ── node ns ── eth0 ═══ nN ── fabric ns (br0, 192.168.50.254)
//! ```
//! Node `i` (0-based) is 192.168.50.(i+1) with pod subnet 10.244.(i+1).0/24; pod `k` of
//! a node is .(k+2) with the gateway .1, MTU 1450 (uplink 1500 − 50).

use crate::Netns;
use std::io;
use std::net::Ipv4Addr;
use xlane_netlink::{Netlink, Route, Veth, VethEnd};

/// Underlay prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;
/// Pod MTU: uplink 1500 − 50 bytes of VXLAN.
pub const POD_MTU: u16 = 1450;
/// The underlay's MTU unless a lab is built with another.
pub const UPLINK_MTU: u16 = 1500;

/// A node's pod subnet as flannel hands them out, a /24 (held by its network address):
/// the subnet's first host is the pods' gateway, the pods take the addresses after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet(pub Ipv4Addr);

impl Subnet {
    /// Its prefix length.
    pub const PREFIX_LEN: u8 = 24;

    /// "10.244.2.0/24".
    #[must_use]
    pub fn cidr(self) -> String {
        format!("{}/{}", self.0, Self::PREFIX_LEN)
    }

    /// The pods' gateway: the subnet's first host.
    #[must_use]
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0) + 1)
    }

    /// Pod `k`'s address: the `k`-th after the gateway (from .2 on).
    #[must_use]
    pub fn pod(self, k: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway()) + 1 + u32::from(k))
    }
}

/// A node: its namespace and uplink.
#[derive(Debug)]
pub struct Node {
    /// The node's namespace.
    pub ns: Netns,
    /// Uplink interface name inside the node.
    pub uplink: String,
    /// Underlay address.
    pub ip: Ipv4Addr,
    /// Pod subnet.
    pub subnet: Subnet,
    pods: u8,
}

impl Node {
    /// The pod subnet as "a.b.c.d/24".
    #[must_use]
    pub fn subnet_cidr(&self) -> String {
        self.subnet.cidr()
    }

    /// The pods' gateway (the subnet's first host).
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }
}

/// A pod: its namespace, address and the host-side interface in its node.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// Index of its node.
    pub node: usize,
    /// Host-side veth name (in the node).
    pub host_if: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// Pod interface MAC.
    pub mac: String,
}

/// A lab: fabric, nodes, pods. Dropping it removes every namespace (pods first).
#[derive(Debug)]
pub struct Lab {
    /// Pods (dropped first).
    pub pods: Vec<Pod>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// The underlay.
    pub fabric: Netns,
    /// Queues per pod veth (the uplinks' are set at creation).
    queues: u16,
    /// MTU of the underlay (node uplinks); pods get 50 less.
    uplink_mtu: u16,
}

/// The bridge-netfilter switches of a namespace: present where `br_netfilter` is
/// loaded (by a container engine, kube-proxy's set-up), and then on in every new
/// namespace.
pub const BRIDGE_NETFILTER: [&str; 3] =
    ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"];

/// Make `fabric`'s bridge a plain switch: where `br_netfilter` is loaded, a bridge runs
/// every frame it forwards through the IP stack's netfilter hooks, which cost the
/// sending CPU a fifth of a 64-byte frame's path here (perf, session 19) and which no
/// underlay switch has. Off in the fabric only: a node's own bridge (kernel VXLAN's
/// `cni0`) keeps what its host has, as a real node does.
fn switch_only(fabric: &Netns) -> io::Result<()> {
    fabric.enter(|| {
        for name in BRIDGE_NETFILTER {
            let path = format!("/proc/sys/net/bridge/{name}");
            match std::fs::write(&path, "0") {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    })?
}

impl Lab {
    /// A fabric with `nodes` nodes and no pods; every veth has one queue.
    ///
    /// # Errors
    /// Namespace or interface setup failures.
    pub fn new(prefix: &str, nodes: u8) -> io::Result<Self> {
        Self::with_queues(prefix, nodes, 1)
    }

    /// As [`Lab::new`], with `queues` queues each way on every veth (uplinks and the
    /// pods added later), for multi-worker dataplanes. What dead runs with the same
    /// prefix left behind is swept first ([`crate::sweep::sweep`]).
    ///
    /// # Errors
    /// Namespace or interface setup failures.
    pub fn with_queues(prefix: &str, nodes: u8, queues: u16) -> io::Result<Self> {
        Self::with_mtu(prefix, nodes, queues, UPLINK_MTU)
    }

    /// As [`Lab::with_queues`], the underlay at `uplink_mtu` (9000: jumbo frames) and
    /// pods at 50 less.
    ///
    /// # Errors
    /// Namespace or interface setup failures.
    pub fn with_mtu(prefix: &str, nodes: u8, queues: u16, uplink_mtu: u16) -> io::Result<Self> {
        // A run killed before its drops ran (SIGKILL, a CI timeout) left its namespaces
        // and daemons: remove those of dead runs with this prefix before building anew.
        crate::sweep::sweep(prefix)?;
        let fabric = Netns::new(&format!("{prefix}-fab"))?;
        switch_only(&fabric)?;
        let mut fab = Netlink::in_netns(&fabric.path())?;
        fab.add_bridge("br0")?;
        let br0 = fab.link("br0")?.ifindex;
        fab.replace_addr(br0, Ipv4Addr::new(192, 168, 50, 254), UNDERLAY_PREFIX)?;
        fab.set_up(br0, None)?;
        let mut lab = Self { pods: Vec::new(), nodes: Vec::new(), fabric, queues, uplink_mtu };
        for i in 0..nodes {
            let ns = Netns::new(&format!("{prefix}-n{i}"))?;
            let fab_end = format!("n{i}");
            let ip = Ipv4Addr::new(192, 168, 50, i + 1);
            let (uplink, _) = Veth {
                local: VethEnd { name: &fab_end, netns: Some(&lab.fabric.path()), ..VethEnd::default() },
                peer: VethEnd { name: "eth0", netns: Some(&ns.path()), addrs: &[(ip, UNDERLAY_PREFIX)], routes: &[] },
                mtu: (uplink_mtu != UPLINK_MTU).then_some(u32::from(uplink_mtu)),
                queues: u32::from(queues),
                reuse: false,
            }
            .create()?;
            fab.set_master(uplink.ifindex, br0)?;
            lab.nodes.push(Node {
                ns,
                uplink: "eth0".into(),
                ip,
                subnet: Subnet(Ipv4Addr::new(10, 244, i + 1, 0)),
                pods: 0,
            });
        }
        Ok(lab)
    }

    /// Give pods added from now on `queues` queues each way (the uplinks keep theirs):
    /// a pod with fewer queues than the dataplane has workers.
    pub fn set_pod_queues(&mut self, queues: u16) {
        self.queues = queues;
    }

    /// The underlay's MTU (the nodes' uplinks).
    #[must_use]
    pub fn uplink_mtu(&self) -> u16 {
        self.uplink_mtu
    }

    /// Attach a new pod to node `node` with the next address of the node's subnet;
    /// returns its index in [`Lab::pods`].
    ///
    /// # Errors
    /// Namespace or interface setup failures.
    pub fn add_pod(&mut self, node: usize) -> io::Result<usize> {
        self.add_pod_with(node, false)
    }

    /// [`add_pod`](Self::add_pod); with `offloads`, the pod's veth keeps its checksum
    /// and segmentation offloads (for a dataplane that reads it with a virtio-net
    /// header), otherwise its checksum offload is off (AF_XDP would see unfinished
    /// checksums).
    ///
    /// # Errors
    /// Namespace or interface setup failures.
    pub fn add_pod_with(&mut self, node: usize, offloads: bool) -> io::Result<usize> {
        let n = &self.nodes[node];
        let (ip, gw) = (n.subnet.pod(n.pods), n.gateway());
        self.create_pod(node, ip, Subnet::PREFIX_LEN, gw, offloads)
    }

    /// Attach a new pod to node `node` with a given address (e.g. one the agent
    /// allocated); returns its index in [`Lab::pods`].
    ///
    /// # Errors
    /// Namespace or interface setup failures.
    pub fn add_pod_at(&mut self, node: usize, ip: Ipv4Addr, prefix_len: u8, gw: Ipv4Addr) -> io::Result<usize> {
        self.create_pod(node, ip, prefix_len, gw, false)
    }

    /// A pod on `node` at `ip`, keeping its checksum (and so segmentation) offloads if
    /// `offloads`.
    fn create_pod(
        &mut self,
        node: usize,
        ip: Ipv4Addr,
        prefix_len: u8,
        gw: Ipv4Addr,
        offloads: bool,
    ) -> io::Result<usize> {
        let k = self.pods.len();
        let n = &mut self.nodes[node];
        let ns = Netns::new(&format!("{}-p{k}", n.ns.name()))?;
        let host_if = format!("vp{k}");
        // As the CNI plugin does: both ends at the pod MTU, the pod end addressed and
        // routed through the gateway.
        Veth {
            local: VethEnd { name: &host_if, netns: Some(&n.ns.path()), ..VethEnd::default() },
            peer: VethEnd {
                name: "eth0",
                netns: Some(&ns.path()),
                addrs: &[(ip, prefix_len)],
                routes: &[Route::default_via(gw)],
            },
            mtu: Some(u32::from(self.uplink_mtu - (UPLINK_MTU - POD_MTU))),
            queues: u32::from(self.queues),
            reuse: false,
        }
        .create()?;
        n.pods += 1;
        // The pod's offloaded checksums would reach an AF_XDP socket unfinished; a
        // dataplane reading the veth with a virtio-net header finishes them itself.
        if !offloads {
            ns.enter(|| xlane_netlink::ethtool::set_tx_checksum("eth0", false))??;
        }
        let mac = ns.mac("eth0")?;
        self.pods.push(Pod { ns, node, host_if, ip, mac });
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subnets_first_host_is_the_gateway_and_pods_follow() {
        let s = Subnet(Ipv4Addr::new(10, 244, 2, 0));
        assert_eq!(s.cidr(), "10.244.2.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!((s.pod(0), s.pod(3)), (Ipv4Addr::new(10, 244, 2, 2), Ipv4Addr::new(10, 244, 2, 5)));
    }
}
