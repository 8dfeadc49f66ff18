//! A reproducible node for tests, benches and the demo: this node ("A", port 0 the
//! uplink) with pods on ports 1.., and remote nodes with a /24 each.
//!
//! The constants are the scenario of `tests/fixtures/make_fixtures.py`; change both
//! together.

use crate::mem::MemDataplane;
use core::net::Ipv4Addr;
use xlane_fib::{Endpoint, FibBuilder, FibHandle, NodeConfig, PortId, Prefix, RemoteNode};
use xlane_wire::Mac;

/// Our uplink port.
pub const UPLINK: PortId = PortId(0);
/// Our VTEP address.
pub const A_VTEP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// Our uplink MAC.
pub const A_UPLINK_MAC: Mac = Mac([0x02, 0, 0xc0, 0xa8, 0x32, 0x01]);
/// Our VTEP MAC.
pub const A_VTEP_MAC: Mac = Mac([0x0e, 0, 0, 0, 0x01, 0x01]);
/// The first remote node's VTEP address.
pub const B_VTEP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// The first remote node's uplink MAC (our next hop to it).
pub const B_NEXT_HOP_MAC: Mac = Mac([0x02, 0, 0xc0, 0xa8, 0x32, 0x02]);
/// The first remote node's VTEP MAC.
pub const B_VTEP_MAC: Mac = Mac([0x0e, 0, 0, 0, 0x02, 0x01]);

/// Our pods' gateway (the subnet's first address): the source of our ICMP errors.
pub const A_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The first remote node's pods' gateway.
pub const B_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);

/// Our node subnet.
#[must_use]
pub fn node_subnet() -> Prefix {
    Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24).expect("valid")
}

/// This node's VTEP settings (flannel defaults: VNI 1, port 8472), with the pods'
/// gateway as xlaned sets it.
#[must_use]
pub fn node_config() -> NodeConfig {
    NodeConfig { gateway_ip: Some(A_GATEWAY), ..NodeConfig::new(A_VTEP_IP, A_VTEP_MAC, UPLINK, A_UPLINK_MAC) }
}

/// Pod `i` (1-based): 10.244.1.(i+1) on port `i`, MAC 0a:58:0a:f4:01:(i+1), gateway
/// (host-side) MAC ee:ee:00:00:01:(i+1).
#[must_use]
pub fn pod(i: u8) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 244, 1, i + 1),
        port: PortId(u16::from(i)),
        mac: Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, i + 1]),
        gateway_mac: Mac([0xee, 0xee, 0, 0, 0x01, i + 1]),
    }
}

/// Remote node `n` (0-based; node 0 is "B"): VTEP 192.168.(50 + n/250).(2 + n%250)
/// owning 10.(244 + n/256 wraps).x.0/24 — node 0 owns 10.244.2.0/24.
#[must_use]
pub fn remote(n: u32) -> (Prefix, RemoteNode) {
    if n == 0 {
        let p = Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24).expect("valid");
        return (p, RemoteNode { underlay_ip: B_VTEP_IP, vtep_mac: B_VTEP_MAC, next_hop_mac: B_NEXT_HOP_MAC });
    }
    let [_, b1, b2, b3] = (n + 2).to_be_bytes();
    let underlay_ip = Ipv4Addr::new(172, 16 + (b1 & 0x0f), b2, b3);
    // Subnets after 10.244.2.0/24, continuing through 10.245.0.0/16 and beyond.
    let subnet = 0x0af4_0200u32 + (n << 8);
    let m = n.to_be_bytes();
    let mac = |kind: u8| Mac([kind, m[0], m[1], m[2], m[3], 1]);
    (
        Prefix::new(subnet.into(), 24).expect("valid"),
        RemoteNode { underlay_ip, vtep_mac: mac(0x0e), next_hop_mac: mac(0x02) },
    )
}

/// Tables for node A with `pods` pods and `remotes` remote nodes.
///
/// # Panics
/// Never for `pods` ≤ 253 and `remotes` < 2^29 (the tables accept those).
#[must_use]
pub fn tables(pods: u8, remotes: u32) -> FibBuilder {
    let mut b = FibBuilder::new();
    b.set_node(node_config()).expect("valid node config");
    for i in 1..=pods {
        b.upsert_endpoint(pod(i)).expect("distinct pods");
    }
    for n in 0..remotes {
        let (prefix, node) = remote(n);
        b.upsert_remote(node).expect("room for remotes");
        b.insert_route(prefix, node.underlay_ip);
    }
    b
}

/// Pod 1 of node B (the first remote node): 10.244.2.3 on B's port 1.
#[must_use]
pub fn b_pod() -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 244, 2, 3),
        port: PortId(1),
        mac: Mac([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x03]),
        gateway_mac: Mac([0xee, 0xee, 0, 0, 0x02, 0x03]),
    }
}

/// Tables for node B, the other end of node A's first remote: one pod ([`b_pod`]) and a
/// route back to A's subnet. With [`tables`] this makes a two-node cluster.
#[must_use]
pub fn tables_b() -> FibBuilder {
    let mut b = FibBuilder::new();
    let node = NodeConfig::new(B_VTEP_IP, B_VTEP_MAC, UPLINK, B_NEXT_HOP_MAC);
    b.set_node(NodeConfig { gateway_ip: Some(B_GATEWAY), ..node }).expect("valid node config");
    b.upsert_endpoint(b_pod()).expect("one pod");
    b.upsert_remote(RemoteNode { underlay_ip: A_VTEP_IP, vtep_mac: A_VTEP_MAC, next_hop_mac: A_UPLINK_MAC })
        .expect("room for remotes");
    b.insert_route(node_subnet(), A_VTEP_IP);
    b
}

/// The two-node cluster in memory: node A ([`tables`] with one pod and `remotes` remote
/// nodes, the first of them B) and node B ([`tables_b`]), each a [`MemDataplane`] with
/// its uplink ([`UPLINK`]) and one pod port and `buffers` buffers preallocated. Join them
/// with [`MemDataplane::wire_to`]; B's pod is reachable from A when `remotes` ≥ 1.
///
/// The handles the tables were published to are dropped: a dataplane's reader keeps
/// them alive.
#[must_use]
pub fn two_nodes(remotes: u32, buffers: usize) -> (MemDataplane, MemDataplane) {
    two_nodes_with(remotes, buffers, &[])
}

/// [`two_nodes`] whose ports in `offloading` keep offloads on both nodes
/// ([`crate::mem::MemPort::offloading`]: super-packets in, whole or merged out).
#[must_use]
pub fn two_nodes_with(remotes: u32, buffers: usize, offloading: &[PortId]) -> (MemDataplane, MemDataplane) {
    let node = |mut tables: FibBuilder| {
        let h = FibHandle::new();
        tables.publish(&h);
        let mut dp = MemDataplane::with_offloading(&h, 2, offloading);
        dp.preallocate(buffers);
        dp
    };
    (node(tables(1, remotes)), node(tables_b()))
}

/// [`two_nodes_with`] on a jumbo underlay: both nodes' uplink MTU is `mtu` and their
/// uplinks take frames larger than a buffer and send super-packets whole
/// ([`crate::mem::MemPort::tunnel_offloading`]).
///
/// # Panics
/// If `mtu` is not a valid uplink MTU.
#[must_use]
pub fn two_nodes_jumbo(buffers: usize, offloading: &[PortId], mtu: u16) -> (MemDataplane, MemDataplane) {
    let node = |mut tables: FibBuilder| {
        let config = NodeConfig { uplink_mtu: mtu, ..*tables.node().expect("a node") };
        tables.set_node(config).expect("a valid MTU");
        let h = FibHandle::new();
        tables.publish(&h);
        let mut dp = MemDataplane::with_offloading(&h, 2, offloading);
        dp.serve(crate::mem::MemPort::tunnel_offloading(UPLINK));
        dp.preallocate(buffers);
        dp
    };
    (node(tables(1, 1)), node(tables_b()))
}
