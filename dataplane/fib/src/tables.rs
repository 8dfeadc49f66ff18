//! The tables a worker consults, compiled into one immutable [`Fib`] snapshot.
//!
//! The control side edits a [`FibBuilder`] (routes, remote nodes, local endpoints, the
//! node's VTEP settings) and publishes; workers see either the whole old snapshot or the
//! whole new one, never a mix, and never wait.

use crate::lpm::{self, LpmBuilder, Prefix};
use arc_swap::ArcSwap;
use core::net::Ipv4Addr;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use xlane_wire::Mac;
use xlane_wire::encap::{EncapParams, EncapTemplate};
use xlane_wire::vxlan::VNI_MAX;

/// A dataplane port (an AF_XDP socket set, a vhost-user device, or an in-memory port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl core::fmt::Display for PortId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// The node's own overlay settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// Our VTEP (underlay) address.
    pub vtep_ip: Ipv4Addr,
    /// Our VTEP MAC: inner source on encap; inner destination we accept on decap
    /// (flannel's `VtepMAC`).
    pub vtep_mac: Mac,
    /// The uplink port and its MAC (outer source).
    pub uplink_port: PortId,
    /// MAC of the uplink interface.
    pub uplink_mac: Mac,
    /// Uplink MTU; pods get this minus the 50-byte VXLAN overhead.
    pub uplink_mtu: u16,
    /// VXLAN network identifier (flannel default 1).
    pub vni: u32,
    /// VXLAN UDP port (flannel default 8472).
    pub vxlan_port: u16,
    /// Outer UDP source ports are drawn from this range by flow hash.
    pub src_port_min: u16,
    /// Upper bound (inclusive) of the source port range.
    pub src_port_max: u16,
    /// Outer IPv4 TTL.
    pub outer_ttl: u8,
    /// The pods' gateway: the node subnet's first address, which the host port holds.
    /// The source of the ICMP errors the engine originates (time exceeded, fragmentation
    /// needed), so traceroute names this node by it; `None` (no subnet yet): no errors,
    /// the offending packet is only dropped.
    pub gateway_ip: Option<Ipv4Addr>,
}

impl NodeConfig {
    /// Defaults that match flannel's kernel VXLAN: VNI 1, port 8472, TTL 64, and RFC
    /// 7348's dynamic port range for source ports.
    #[must_use]
    pub fn new(vtep_ip: Ipv4Addr, vtep_mac: Mac, uplink_port: PortId, uplink_mac: Mac) -> Self {
        Self {
            vtep_ip,
            vtep_mac,
            uplink_port,
            uplink_mac,
            uplink_mtu: 1500,
            vni: 1,
            vxlan_port: xlane_wire::VXLAN_PORT_LINUX,
            src_port_min: 49152,
            src_port_max: 65535,
            outer_ttl: 64,
            gateway_ip: None,
        }
    }

    /// The MTU pods must use: the largest inner IPv4 packet that fits the uplink.
    #[must_use]
    pub fn pod_mtu(&self) -> u16 {
        self.uplink_mtu.saturating_sub(xlane_wire::VXLAN_OVERHEAD_U16)
    }
}

/// A remote node as the remote-node table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode {
    /// The node's underlay (VTEP) address.
    pub underlay_ip: Ipv4Addr,
    /// Its VTEP MAC (inner destination).
    pub vtep_mac: Mac,
    /// The underlay next hop's MAC (outer destination): the node itself on a shared L2,
    /// or a router.
    pub next_hop_mac: Mac,
}

/// A compiled remote node: the table entry plus its outer-header template.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    /// The entry it was built from.
    pub node: RemoteNode,
    /// Outer headers for this destination.
    pub template: EncapTemplate,
}

/// A pod attached to a local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
    /// The port its traffic enters and leaves by.
    pub port: PortId,
    /// The pod interface's MAC (destination of frames to the pod).
    pub mac: Mac,
    /// The host-side MAC: the source of frames to the pod and the answer to the pod's
    /// ARP requests (proxy ARP), so every pod frame reaches the engine.
    pub gateway_mac: Mac,
}

/// What a port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortRole {
    /// Not in the tables: frames from it are dropped.
    #[default]
    Unknown,
    /// The underlay uplink (carries VXLAN).
    Uplink,
    /// A pod's port.
    Pod(Endpoint),
    /// The host port: the node itself (kubelet probes, node → pod traffic). Routed like a
    /// pod, but its source addresses are not checked (the host sends from any of its
    /// addresses).
    Host(Endpoint),
}

impl PortRole {
    /// The endpoint behind a pod or host port.
    #[must_use]
    pub fn endpoint(&self) -> Option<&Endpoint> {
        match self {
            Self::Pod(ep) | Self::Host(ep) => Some(ep),
            _ => None,
        }
    }
}

/// Where a longest-prefix match sends a packet. Packed into the LPM's `u32` value:
/// two kind bits above a 29-bit index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// Encapsulate to a remote node (index into [`Fib::remote`]).
    Remote(u32),
    /// Deliver to a local pod.
    Endpoint(PortId),
    /// A route whose remote node is not (yet) known.
    Unresolved,
}

const KIND_SHIFT: u32 = 29;
const INDEX_MASK: u32 = (1 << KIND_SHIFT) - 1;

impl NextHop {
    fn encode(self) -> u32 {
        match self {
            Self::Remote(i) => i & INDEX_MASK,
            Self::Endpoint(p) => (1 << KIND_SHIFT) | u32::from(p.0),
            Self::Unresolved => 2 << KIND_SHIFT,
        }
    }

    /// Unpack a value stored in the LPM.
    #[inline]
    #[must_use]
    pub fn decode(v: u32) -> Self {
        match v >> KIND_SHIFT {
            0 => Self::Remote(v & INDEX_MASK),
            #[expect(clippy::cast_possible_truncation, reason = "encoded from a u16")]
            1 => Self::Endpoint(PortId((v & INDEX_MASK) as u16)),
            _ => Self::Unresolved,
        }
    }
}

const _: () = assert!((3 << KIND_SHIFT) - 1 <= lpm::MAX_VALUE);

/// An immutable snapshot of every table a worker reads.
#[derive(Debug, Clone, Default)]
pub struct Fib {
    generation: u64,
    node: Option<NodeConfig>,
    lpm: lpm::Lpm,
    remotes: Vec<Option<Remote>>,
    ports: Vec<PortRole>,
}

impl Fib {
    /// Publication counter: 0 for the empty table, +1 per publish.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The node settings, if configured.
    #[inline]
    #[must_use]
    pub fn node(&self) -> Option<&NodeConfig> {
        self.node.as_ref()
    }

    /// The role of a port.
    #[inline]
    #[must_use]
    pub fn port(&self, id: PortId) -> PortRole {
        self.ports.get(usize::from(id.0)).copied().unwrap_or_default()
    }

    /// A compiled remote node.
    #[inline]
    #[must_use]
    pub fn remote(&self, index: u32) -> Option<&Remote> {
        self.remotes.get(index as usize).and_then(Option::as_ref)
    }

    /// The longest-prefix-match table; values decode with [`NextHop::decode`].
    #[inline]
    #[must_use]
    pub fn lpm(&self) -> &lpm::Lpm {
        &self.lpm
    }

    /// Route one address.
    #[must_use]
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<NextHop> {
        self.lpm.lookup(dst.into()).map(NextHop::decode)
    }
}

/// A table change the builder refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FibError {
    /// VNI above 24 bits.
    #[error("VNI {0} does not fit in 24 bits")]
    VniOutOfRange(u32),
    /// The uplink MTU leaves no room for a minimal IPv4 packet after encapsulation.
    #[error("uplink MTU {0} is below the minimum of 118 (68 for IPv4 + 50 for VXLAN)")]
    MtuTooSmall(u16),
    /// A gateway address that cannot be the source of an ICMP error (RFC 1812
    /// 4.2.2.11: not zero, loopback, broadcast or multicast).
    #[error("{0} cannot be the pods' gateway address")]
    BadGateway(Ipv4Addr),
    /// Empty or inverted source-port range.
    #[error("source port range {0}-{1} is empty")]
    BadPortRange(u16, u16),
    /// The port is already the uplink, or another pod's.
    #[error("{port} is already in use as {role}")]
    PortInUse {
        /// The port.
        port: PortId,
        /// What it is used for.
        role: &'static str,
    },
    /// Another port already has this pod address.
    #[error("address {ip} already belongs to {port}")]
    AddressInUse {
        /// The address.
        ip: Ipv4Addr,
        /// Its port.
        port: PortId,
    },
    /// More remote nodes than the next-hop encoding holds.
    #[error("too many remote nodes (limit {INDEX_MASK})")]
    TooManyRemotes,
}

/// The control-side, mutable form of the tables.
#[derive(Debug, Default)]
pub struct FibBuilder {
    generation: u64,
    node: Option<NodeConfig>,
    lpm: LpmBuilder,
    /// Overlay routes: prefix → remote VTEP address.
    routes: BTreeMap<Prefix, Ipv4Addr>,
    routes_by_vtep: HashMap<Ipv4Addr, BTreeSet<Prefix>>,
    nodes: HashMap<Ipv4Addr, u32>,
    remotes: Vec<Option<Remote>>,
    free_remotes: Vec<u32>,
    endpoints: HashMap<Ipv4Addr, Endpoint>,
    ports: Vec<PortRole>,
}

impl FibBuilder {
    /// Empty tables.
    #[must_use]
    pub fn new() -> Self {
        Self { lpm: LpmBuilder::new(), ..Self::default() }
    }

    /// Set (or change) the node's VTEP settings; every encap template is rebuilt.
    ///
    /// # Errors
    /// [`FibError`] for a VNI over 24 bits, an MTU too small, or an empty port range.
    pub fn set_node(&mut self, node: NodeConfig) -> Result<(), FibError> {
        if node.vni > VNI_MAX {
            return Err(FibError::VniOutOfRange(node.vni));
        }
        if node.uplink_mtu < 118 {
            return Err(FibError::MtuTooSmall(node.uplink_mtu));
        }
        if node.src_port_min > node.src_port_max || node.src_port_min == 0 {
            return Err(FibError::BadPortRange(node.src_port_min, node.src_port_max));
        }
        if let Some(gw) = node.gateway_ip
            && (gw.is_unspecified() || gw.is_loopback() || gw.is_broadcast() || gw.is_multicast())
        {
            return Err(FibError::BadGateway(gw));
        }
        if let PortRole::Pod(_) = self.role(node.uplink_port) {
            return Err(FibError::PortInUse { port: node.uplink_port, role: "a pod port" });
        }
        if let Some(old) = self.node {
            self.set_role(old.uplink_port, PortRole::Unknown);
        }
        self.set_role(node.uplink_port, PortRole::Uplink);
        self.node = Some(node);
        for r in self.remotes.iter_mut().flatten() {
            r.template = EncapTemplate::new(&encap_params(&node, &r.node));
        }
        Ok(())
    }

    /// The node settings.
    #[must_use]
    pub fn node(&self) -> Option<&NodeConfig> {
        self.node.as_ref()
    }

    /// Add or update a remote node (keyed by underlay address). Routes naming it resolve.
    ///
    /// # Errors
    /// [`FibError::TooManyRemotes`] past 2^29 nodes.
    pub fn upsert_remote(&mut self, node: RemoteNode) -> Result<(), FibError> {
        let template = EncapTemplate::new(&self.node.map_or_else(placeholder_params, |n| encap_params(&n, &node)));
        let entry = Some(Remote { node, template });
        if let Some(&i) = self.nodes.get(&node.underlay_ip) {
            self.remotes[i as usize] = entry;
            return Ok(());
        }
        let i = if let Some(i) = self.free_remotes.pop() {
            self.remotes[i as usize] = entry;
            i
        } else {
            let i =
                u32::try_from(self.remotes.len()).ok().filter(|&i| i < INDEX_MASK).ok_or(FibError::TooManyRemotes)?;
            self.remotes.push(entry);
            i
        };
        self.nodes.insert(node.underlay_ip, i);
        self.refresh_routes_of(node.underlay_ip);
        Ok(())
    }

    /// Remove a remote node; its routes stay but become unresolved (counted drops).
    pub fn remove_remote(&mut self, underlay_ip: Ipv4Addr) -> Option<RemoteNode> {
        let i = self.nodes.remove(&underlay_ip)?;
        let old = self.remotes[i as usize].take();
        self.free_remotes.push(i);
        self.refresh_routes_of(underlay_ip);
        old.map(|r| r.node)
    }

    /// Route `prefix` through the remote VTEP `via`.
    pub fn insert_route(&mut self, prefix: Prefix, via: Ipv4Addr) {
        if let Some(old) = self.routes.insert(prefix, via)
            && let Some(set) = self.routes_by_vtep.get_mut(&old)
        {
            set.remove(&prefix);
        }
        self.routes_by_vtep.entry(via).or_default().insert(prefix);
        self.refresh_prefix(prefix);
    }

    /// Withdraw a route; returns the VTEP it pointed to.
    pub fn remove_route(&mut self, prefix: Prefix) -> Option<Ipv4Addr> {
        let via = self.routes.remove(&prefix)?;
        if let Some(set) = self.routes_by_vtep.get_mut(&via) {
            set.remove(&prefix);
            if set.is_empty() {
                self.routes_by_vtep.remove(&via);
            }
        }
        self.refresh_prefix(prefix);
        Some(via)
    }

    /// Attach a pod: its /32 routes to `ep.port`, and the port becomes a pod port.
    ///
    /// # Errors
    /// [`FibError`] if the port is the uplink or another endpoint's, or the address is taken.
    pub fn upsert_endpoint(&mut self, ep: Endpoint) -> Result<(), FibError> {
        self.attach(ep, PortRole::Pod(ep))
    }

    /// Attach the host port (the node's own interface into the overlay, `xlane0`), whose
    /// address is usually the node subnet's gateway.
    ///
    /// # Errors
    /// As [`upsert_endpoint`](Self::upsert_endpoint).
    pub fn upsert_host(&mut self, ep: Endpoint) -> Result<(), FibError> {
        self.attach(ep, PortRole::Host(ep))
    }

    fn attach(&mut self, ep: Endpoint, role: PortRole) -> Result<(), FibError> {
        match self.role(ep.port) {
            PortRole::Uplink => {
                return Err(FibError::PortInUse { port: ep.port, role: "the uplink" });
            }
            PortRole::Pod(old) | PortRole::Host(old) if old.ip != ep.ip => {
                return Err(FibError::PortInUse { port: ep.port, role: "another endpoint's port" });
            }
            _ => {}
        }
        if let Some(other) = self.endpoints.get(&ep.ip)
            && other.port != ep.port
        {
            return Err(FibError::AddressInUse { ip: ep.ip, port: other.port });
        }
        self.endpoints.insert(ep.ip, ep);
        self.set_role(ep.port, role);
        self.refresh_prefix(host_prefix(ep.ip));
        Ok(())
    }

    /// Detach the pod with this address.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Option<Endpoint> {
        let ep = self.endpoints.remove(&ip)?;
        self.set_role(ep.port, PortRole::Unknown);
        self.refresh_prefix(host_prefix(ip));
        Some(ep)
    }

    /// Routes in prefix order.
    pub fn routes(&self) -> impl Iterator<Item = (Prefix, Ipv4Addr)> + '_ {
        self.routes.iter().map(|(p, v)| (*p, *v))
    }

    /// Remote nodes (unordered).
    pub fn remotes(&self) -> impl Iterator<Item = &RemoteNode> + '_ {
        self.remotes.iter().flatten().map(|r| &r.node)
    }

    /// Local endpoints (unordered).
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.endpoints.values()
    }

    /// Compile the changes and build an immutable snapshot.
    pub fn snapshot(&mut self) -> Fib {
        self.generation += 1;
        Fib {
            generation: self.generation,
            node: self.node,
            lpm: self.lpm.compile().clone(),
            remotes: self.remotes.clone(),
            ports: self.ports.clone(),
        }
    }

    /// Compile, snapshot and publish to the workers.
    pub fn publish(&mut self, handle: &FibHandle) -> u64 {
        let fib = self.snapshot();
        let generation = fib.generation;
        handle.store(fib);
        generation
    }

    fn role(&self, port: PortId) -> PortRole {
        self.ports.get(usize::from(port.0)).copied().unwrap_or_default()
    }

    fn set_role(&mut self, port: PortId, role: PortRole) {
        let i = usize::from(port.0);
        if self.ports.len() <= i {
            self.ports.resize(i + 1, PortRole::Unknown);
        }
        self.ports[i] = role;
    }

    fn refresh_routes_of(&mut self, vtep: Ipv4Addr) {
        let prefixes: Vec<Prefix> =
            self.routes_by_vtep.get(&vtep).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for p in prefixes {
            self.refresh_prefix(p);
        }
    }

    /// Recompute the LPM value of one prefix: a local endpoint beats an overlay route.
    fn refresh_prefix(&mut self, p: Prefix) {
        let endpoint = (p.len() == 32).then(|| self.endpoints.get(&p.addr())).flatten();
        let hop = if let Some(ep) = endpoint {
            Some(NextHop::Endpoint(ep.port))
        } else {
            self.routes.get(&p).map(|via| self.nodes.get(via).map_or(NextHop::Unresolved, |&i| NextHop::Remote(i)))
        };
        match hop {
            Some(h) => {
                self.lpm.insert(p, h.encode()).expect("encoded next hops are below MAX_VALUE");
            }
            None => {
                self.lpm.remove(p);
            }
        }
    }
}

fn host_prefix(ip: Ipv4Addr) -> Prefix {
    Prefix::new(ip, 32).expect("32 is a valid length")
}

fn encap_params(node: &NodeConfig, remote: &RemoteNode) -> EncapParams {
    EncapParams {
        src_mac: node.uplink_mac,
        dst_mac: remote.next_hop_mac,
        src_ip: node.vtep_ip,
        dst_ip: remote.underlay_ip,
        dst_port: node.vxlan_port,
        vni: node.vni,
        ttl: node.outer_ttl,
    }
}

/// Before the node is configured nothing is encapsulated (the pipeline drops with
/// `not_configured`); templates are rebuilt by [`FibBuilder::set_node`].
fn placeholder_params() -> EncapParams {
    EncapParams {
        src_mac: Mac([0; 6]),
        dst_mac: Mac([0; 6]),
        src_ip: Ipv4Addr::UNSPECIFIED,
        dst_ip: Ipv4Addr::UNSPECIFIED,
        dst_port: 0,
        vni: 0,
        ttl: 0,
    }
}

/// The published tables: one writer swaps, any number of workers read.
#[derive(Debug, Clone)]
pub struct FibHandle {
    current: Arc<ArcSwap<Fib>>,
}

impl Default for FibHandle {
    fn default() -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(Fib::default())) }
    }
}

impl FibHandle {
    /// A handle holding empty tables.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the published tables. Readers holding the old snapshot keep it until
    /// their burst ends; it is freed by whoever drops the last reference.
    pub fn store(&self, fib: Fib) {
        self.current.store(Arc::new(fib));
    }

    /// The current snapshot (wait-free).
    #[must_use]
    pub fn load(&self) -> Arc<Fib> {
        self.current.load_full()
    }

    /// A per-worker reader that re-reads the shared pointer only when it changed.
    #[must_use]
    pub fn reader(&self) -> FibReader {
        FibReader { cache: arc_swap::Cache::new(Arc::clone(&self.current)) }
    }
}

/// A worker's view of the published tables (one per worker; not shared).
#[derive(Debug)]
pub struct FibReader {
    cache: arc_swap::Cache<Arc<ArcSwap<Fib>>, Arc<Fib>>,
}

impl FibReader {
    /// The newest snapshot; call once per burst.
    #[inline]
    pub fn current(&mut self) -> &Arc<Fib> {
        self.cache.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: Mac = Mac([2, 0, 0, 0, 0, 0xa]);
    const MAC_B: Mac = Mac([2, 0, 0, 0, 0, 0xb]);

    fn pfx(s: &str) -> Prefix {
        s.parse::<ipnet::Ipv4Net>().unwrap().into()
    }

    fn node() -> NodeConfig {
        NodeConfig::new(Ipv4Addr::new(192, 168, 50, 1), MAC_A, PortId(0), MAC_B)
    }

    fn remote(last: u8) -> RemoteNode {
        RemoteNode { underlay_ip: Ipv4Addr::new(192, 168, 50, last), vtep_mac: MAC_A, next_hop_mac: MAC_B }
    }

    #[test]
    fn route_resolves_when_node_arrives_and_unresolves_when_it_leaves() {
        let mut b = FibBuilder::new();
        b.set_node(node()).unwrap();
        b.insert_route(pfx("10.244.2.0/24"), remote(2).underlay_ip);
        let dst = Ipv4Addr::new(10, 244, 2, 9);
        assert_eq!(b.snapshot().next_hop(dst), Some(NextHop::Unresolved));
        b.upsert_remote(remote(2)).unwrap();
        let fib = b.snapshot();
        let Some(NextHop::Remote(i)) = fib.next_hop(dst) else { panic!("not resolved") };
        assert_eq!(fib.remote(i).unwrap().node, remote(2));
        b.remove_remote(remote(2).underlay_ip);
        assert_eq!(b.snapshot().next_hop(dst), Some(NextHop::Unresolved));
        b.remove_route(pfx("10.244.2.0/24"));
        assert_eq!(b.snapshot().next_hop(dst), None);
    }

    #[test]
    fn endpoint_beats_route_and_owns_its_port() {
        let mut b = FibBuilder::new();
        b.set_node(node()).unwrap();
        b.upsert_remote(remote(2)).unwrap();
        b.insert_route(pfx("10.244.0.0/16"), remote(2).underlay_ip);
        let ep = Endpoint { ip: Ipv4Addr::new(10, 244, 1, 5), port: PortId(3), mac: MAC_A, gateway_mac: MAC_B };
        b.upsert_endpoint(ep).unwrap();
        let fib = b.snapshot();
        assert_eq!(fib.next_hop(ep.ip), Some(NextHop::Endpoint(PortId(3))));
        assert_eq!(fib.port(PortId(3)), PortRole::Pod(ep));
        assert_eq!(fib.port(PortId(0)), PortRole::Uplink);
        assert_eq!(fib.port(PortId(99)), PortRole::Unknown);

        let clash = Endpoint { port: PortId(4), ..ep };
        assert_eq!(b.upsert_endpoint(clash), Err(FibError::AddressInUse { ip: ep.ip, port: PortId(3) }));
        let on_uplink = Endpoint { port: PortId(0), ip: Ipv4Addr::new(10, 244, 1, 6), ..ep };
        assert!(matches!(b.upsert_endpoint(on_uplink), Err(FibError::PortInUse { .. })));

        b.remove_endpoint(ep.ip);
        let fib = b.snapshot();
        assert!(matches!(fib.next_hop(ep.ip), Some(NextHop::Remote(_))));
        assert_eq!(fib.port(PortId(3)), PortRole::Unknown);
    }

    #[test]
    fn node_config_validated() {
        let mut b = FibBuilder::new();
        assert_eq!(b.set_node(NodeConfig { vni: 1 << 24, ..node() }), Err(FibError::VniOutOfRange(1 << 24)));
        assert_eq!(b.set_node(NodeConfig { uplink_mtu: 100, ..node() }), Err(FibError::MtuTooSmall(100)));
        assert_eq!(
            b.set_node(NodeConfig { src_port_min: 9, src_port_max: 8, ..node() }),
            Err(FibError::BadPortRange(9, 8))
        );
        for gw in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 1)] {
            assert_eq!(b.set_node(NodeConfig { gateway_ip: Some(gw), ..node() }), Err(FibError::BadGateway(gw)));
        }
        b.set_node(NodeConfig { gateway_ip: Some(Ipv4Addr::new(10, 244, 1, 1)), ..node() }).unwrap();
        assert_eq!(node().pod_mtu(), 1450);
    }

    #[test]
    fn templates_follow_node_changes() {
        let mut b = FibBuilder::new();
        b.upsert_remote(remote(2)).unwrap();
        b.set_node(NodeConfig { vni: 7, ..node() }).unwrap();
        let fib = b.snapshot();
        let t = fib.remote(0).unwrap().template.bytes();
        assert_eq!(&t[46..49], &[0, 0, 7], "VNI in the template");
        assert_eq!(&t[6..12], MAC_B.as_bytes(), "uplink MAC as outer source");
    }

    #[test]
    fn readers_see_whole_snapshots() {
        let h = FibHandle::new();
        let mut r = h.reader();
        assert_eq!(r.current().generation(), 0);
        let mut b = FibBuilder::new();
        b.set_node(node()).unwrap();
        let held = h.load();
        assert_eq!(b.publish(&h), 1);
        assert_eq!(r.current().generation(), 1);
        assert!(r.current().node().is_some());
        assert_eq!(held.generation(), 0, "an old snapshot stays valid while held");
    }
}
