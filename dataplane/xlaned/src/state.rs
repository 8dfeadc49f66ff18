//! The control thread's model of the node, and the handling of every request.
//!
//! All table edits go through the [`FibBuilder`] and are published as one snapshot per
//! request (a batch is all or nothing). Ports are opened by the workers before the
//! tables route anything to them, and removed from the tables before their sockets
//! close, so no frame is routed to a port that cannot send it.

use crate::worker::{Command, NodePort, WorkerHandle};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use xlane_api::{
    Change, Counters, EndpointSpec, ErrorCode, Mac, NodeInfo, Op, PortInfo, Reply, RouteInfo, Status, Table,
    VhostUserInfo, Vtep,
};
use xlane_engine::{CounterSnapshot, DropReason};
use xlane_engine::{Driver, PortCounters};
use xlane_fib::{Endpoint, FibBuilder, FibHandle, NodeConfig, PortId, Prefix, RemoteNode};
use xlane_netlink::{Link, NeighEvent, Netlink};
use xlane_vhost::backend::{PortIo, VhostUserPort};
use xlane_vhost::port::VhostPort;
use xlane_wire::EthernetAddress;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment, XdpMode};
use xlane_xdp::port::{KernelStats, XdpPort};
use xlane_xdp::programs::{PodFilter, UplinkFilter};
use xlane_xdp::xsk::{BindMode, Umem};

/// The uplink is always port 0.
pub const UPLINK: PortId = PortId(0);
/// The gateway MAC VM-based pods see (answering their ARP, source of frames to them):
/// there is no host-side interface to take one from. Locally administered, unicast,
/// the same for every such pod (as Calico does with ee:ee:ee:ee:ee:ee).
pub const VHOST_GATEWAY_MAC: Mac = Mac([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
/// Frames queued each way between a vhost-user backend and the workers.
const VHOST_QUEUE: usize = 1024;
/// How long a worker may take to open a port's sockets.
const PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings the control thread needs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Uplink interface.
    pub uplink: String,
    /// Uplink queues to serve (empty: all).
    pub uplink_queues: Vec<u32>,
    /// Cluster CIDR (what pod ports steer to the engine).
    pub cluster_cidr: Ipv4Net,
    /// Host port interface name (None: no host port).
    pub host_port: Option<String>,
    /// XDP attach preference.
    pub xdp: ModePreference,
    /// Fill-ring level per uplink queue.
    pub uplink_fill: u32,
    /// Fill-ring level per pod queue.
    pub pod_fill: u32,
    /// Whether workers busy-poll (for status).
    pub busy_poll: bool,
    /// AF_XDP bind mode.
    pub bind: BindMode,
}

/// The daemon's workers: UMEMs with AF_XDP sockets and vhost-user guests.
pub type Workers = Vec<WorkerHandle<Umem, NodePort>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Uplink,
    Host,
    Pod,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Uplink => "uplink",
            Self::Host => "host",
            Self::Pod => "pod",
        }
    }
}

/// How a port's frames reach the engine.
#[derive(Debug)]
enum PortKind {
    /// AF_XDP sockets on an interface's queues, behind its XDP program.
    Xdp {
        attach: Arc<XdpAttachment>,
        queues: u32,
        zero_copy: bool,
        /// The kernel's socket statistics, one per worker.
        kernel: Vec<Arc<KernelStats>>,
    },
    /// A vhost-user-net backend on a unix socket (a VM-based pod). Dropping it cuts the
    /// frontend off and removes the socket.
    VhostUser(VhostUserPort),
}

#[derive(Debug)]
struct Port {
    role: Role,
    ifname: String,
    ip: Option<Ipv4Addr>,
    kind: PortKind,
    /// One per worker.
    counters: Vec<Arc<PortCounters>>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    vtep_mac: Mac,
    requested: Option<Mac>,
    /// The underlay next hop (gateway or the node itself) and its interface.
    next_hop: Option<(Ipv4Addr, u32)>,
    resolved: Option<Mac>,
}

impl Node {
    fn mac(&self) -> Option<Mac> {
        self.requested.or(self.resolved)
    }
}

/// A failed request: its code and message.
type Failure = (ErrorCode, String);

fn invalid(msg: impl Into<String>) -> Failure {
    (ErrorCode::Invalid, msg.into())
}

fn failed(msg: impl Into<String>) -> Failure {
    (ErrorCode::Failed, msg.into())
}

fn eth(m: Mac) -> EthernetAddress {
    EthernetAddress(m.0)
}

/// The control thread's state.
pub struct State {
    cfg: ControlConfig,
    fib: FibHandle,
    tables: FibBuilder,
    generation: u64,
    nl: Netlink,
    uplink: Link,
    vtep: Option<Vtep>,
    nodes: BTreeMap<Ipv4Addr, Node>,
    ports: BTreeMap<PortId, Port>,
    endpoints: HashMap<Ipv4Addr, PortId>,
    workers: Workers,
    metrics: Arc<crate::metrics::MetricPorts>,
}

impl core::fmt::Debug for State {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("State").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl State {
    /// Look the uplink up and take its queues into the workers (the pinhole program is
    /// attached once the VTEP is known).
    ///
    /// # Errors
    /// Missing uplink or netlink failure.
    pub fn new(
        cfg: ControlConfig,
        fib: FibHandle,
        workers: Workers,
        metrics: Arc<crate::metrics::MetricPorts>,
    ) -> anyhow::Result<Self> {
        let mut nl = Netlink::new()?;
        let uplink = nl.link(&cfg.uplink).map_err(|e| anyhow::anyhow!("uplink {}: {e}", cfg.uplink))?;
        Ok(Self {
            cfg,
            fib,
            tables: FibBuilder::new(),
            generation: 0,
            nl,
            uplink,
            vtep: None,
            nodes: BTreeMap::new(),
            ports: BTreeMap::new(),
            endpoints: HashMap::new(),
            workers,
            metrics,
        })
    }

    /// Handle one request.
    pub fn handle(&mut self, op: Op) -> Reply {
        let r = match op {
            Op::SetVtep(v) => self.set_vtep(v),
            Op::Apply { changes } => self.apply(&changes),
            Op::AddEndpoint(spec) => self.add_endpoint(&spec),
            Op::DelEndpoint { ip } => Ok(Reply::EndpointRemoved { existed: self.del_endpoint(ip) }),
            Op::Dump { table } => Ok(self.dump(table)),
            Op::Counters => Ok(Reply::Counters(Box::new(self.counters()))),
            Op::Status => Ok(Reply::Status(Box::new(self.status()))),
        };
        r.unwrap_or_else(|(code, message)| Reply::Error { code, message })
    }

    fn publish(&mut self) -> u64 {
        self.generation = self.tables.publish(&self.fib);
        self.generation
    }

    fn pod_mtu(&self) -> u16 {
        u16::try_from(self.uplink.mtu).unwrap_or(u16::MAX).saturating_sub(xlane_wire::VXLAN_OVERHEAD_U16)
    }

    fn free_port_id(&self) -> Result<PortId, Failure> {
        (1..=u16::MAX).map(PortId).find(|p| !self.ports.contains_key(p)).ok_or_else(|| failed("out of port ids"))
    }

    /// Queues of a port this many workers can serve: every worker needs a queue of every
    /// port (it transmits on its own), so a port needs at least as many queues as workers.
    fn spread(&self, ifname: &str, queues: &[u32]) -> Result<Vec<Vec<u32>>, Failure> {
        let n = self.workers.len();
        if queues.len() < n {
            return Err(invalid(format!(
                "{ifname} has {} queue(s) but xlaned runs {n} workers; give it at least {n} (e.g. veth numrxqueues/numtxqueues)",
                queues.len()
            )));
        }
        let mut per = vec![Vec::new(); n];
        for (i, &q) in queues.iter().enumerate() {
            per[i % n].push(q);
        }
        Ok(per)
    }

    /// Attach `program` to `ifname` and have the workers open its queues.
    fn open_port(
        &mut self,
        id: PortId,
        role: Role,
        ifname: &str,
        ip: Option<Ipv4Addr>,
        program: Program,
    ) -> Result<(), Failure> {
        let link = self.nl.link(ifname).map_err(|e| invalid(format!("{ifname}: {e}")))?;
        let queues: Vec<u32> = if role == Role::Uplink && !self.cfg.uplink_queues.is_empty() {
            self.cfg.uplink_queues.clone()
        } else {
            let n = xlane_netlink::ethtool::rx_queues(ifname).map_err(|e| invalid(format!("{ifname}: {e}")))?;
            (0..n).collect()
        };
        let per_worker = self.spread(ifname, &queues)?;
        let name = format!("xlane_{}", role.name());
        let max_queue = queues.iter().max().copied().unwrap_or(0) + 1;
        let attach = Arc::new(
            XdpAttachment::attach(link.ifindex, &name, max_queue, program, self.cfg.xdp)
                .map_err(|e| failed(e.to_string()))?,
        );
        let fill = if role == Role::Uplink { self.cfg.uplink_fill } else { self.cfg.pod_fill };
        let (mut counters, mut kernel, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        for (w, qs) in self.workers.iter().zip(per_worker) {
            let spec = XdpSpec {
                id,
                ifname: ifname.to_owned(),
                queues: qs,
                bind: self.cfg.bind,
                attach: Arc::clone(&attach),
                fill_target: fill,
                counters: Arc::new(PortCounters::default()),
                kernel: Arc::new(KernelStats::default()),
            };
            counters.push(Arc::clone(&spec.counters));
            kernel.push(Arc::clone(&spec.kernel));
            let (tx, rx) = crossbeam_channel::bounded(1);
            w.run(move |d| {
                let _ = tx.send(spec.open(d));
            });
            replies.push(rx);
        }
        let mut zero_copy = false;
        let mut error = None;
        for rx in replies {
            match rx.recv_timeout(PORT_TIMEOUT) {
                Ok(Ok(zc)) => zero_copy |= zc,
                Ok(Err(e)) => error = Some(e),
                Err(_) => error = Some("worker did not answer".to_owned()),
            }
        }
        if let Some(e) = error {
            self.close_sockets(id);
            return Err(failed(format!("opening AF_XDP sockets on {ifname}: {e}")));
        }
        let mode = attach.mode();
        tracing::info!(port = %id, ifname, role = role.name(), queues = queues.len(), ?mode, zero_copy, "port ready");
        self.ports.insert(
            id,
            Port {
                role,
                ifname: ifname.to_owned(),
                ip,
                kind: PortKind::Xdp {
                    attach,
                    queues: u32::try_from(queues.len()).unwrap_or(u32::MAX),
                    zero_copy,
                    kernel,
                },
                counters,
            },
        );
        self.export_ports();
        Ok(())
    }

    fn close_sockets(&mut self, id: PortId) {
        let mut waits = Vec::new();
        for w in &self.workers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            w.run(move |d| {
                d.remove_port(id);
                let _ = tx.send(());
            });
            waits.push(rx);
        }
        for rx in waits {
            let _ = rx.recv_timeout(PORT_TIMEOUT);
        }
    }

    fn set_vtep(&mut self, v: Vtep) -> Result<Reply, Failure> {
        if let Some(s) = v.subnet
            && s.network() != s.addr()
        {
            return Err(invalid(format!("subnet {s} has host bits set")));
        }
        if v.port == 0 {
            return Err(invalid("VXLAN port 0"));
        }
        let mut node = NodeConfig::new(v.ip, eth(v.mac.unwrap_or(self.uplink.mac)), UPLINK, eth(self.uplink.mac));
        node.vni = v.vni;
        node.vxlan_port = v.port;
        node.uplink_mtu = u16::try_from(self.uplink.mtu).unwrap_or(u16::MAX);
        // Validate before touching the interface.
        FibBuilder::new().set_node(node).map_err(|e| invalid(e.to_string()))?;

        let pinhole_changed = self.vtep.is_none_or(|old| old.ip != v.ip || old.port != v.port);
        if pinhole_changed {
            // Take the uplink out of the tables, re-attach the pinhole for the new VTEP.
            if self.ports.contains_key(&UPLINK) {
                self.remove_port(UPLINK);
            }
            let uplink = self.cfg.uplink.clone();
            let program = Program::Uplink(UplinkFilter { vtep_ip: v.ip, vxlan_port: v.port });
            self.open_port(UPLINK, Role::Uplink, &uplink, Some(v.ip), program)?;
        }
        self.tables.set_node(node).map_err(|e| invalid(e.to_string()))?;
        if let Some(subnet) = v.subnet
            && self.vtep.and_then(|o| o.subnet) != Some(subnet)
        {
            self.setup_host_port(subnet)?;
        }
        self.vtep = Some(v);
        let generation = self.publish();
        tracing::info!(vtep = %v.ip, vni = v.vni, port = v.port, generation, "VTEP set");
        Ok(Reply::Applied { generation, changes: 1 })
    }

    /// Create (or reuse) the host port veth pair and route the cluster CIDR into it.
    fn setup_host_port(&mut self, subnet: Ipv4Net) -> Result<(), Failure> {
        let Some(host) = self.cfg.host_port.clone() else {
            return Ok(());
        };
        let engine_end = crate::hostport::engine_end(&host);
        let gateway = subnet.hosts().next().ok_or_else(|| invalid(format!("subnet {subnet} has no host address")))?;
        crate::hostport::ensure(&host, &engine_end, gateway, self.cfg.cluster_cidr, self.pod_mtu(), self.workers.len())
            .map_err(|e| failed(format!("host port {host}: {e}")))?;
        if let Some(old) = self.ports.iter().find(|(_, p)| p.role == Role::Host).map(|(id, _)| *id) {
            self.remove_port(old);
        }
        let host_link = self.nl.link(&host).map_err(|e| failed(format!("{host}: {e}")))?;
        let engine_link = self.nl.link(&engine_end).map_err(|e| failed(format!("{engine_end}: {e}")))?;
        let id = self.free_port_id()?;
        let program = Program::Pod(PodFilter {
            cluster: self.cfg.cluster_cidr.network(),
            prefix_len: self.cfg.cluster_cidr.prefix_len(),
        });
        self.open_port(id, Role::Host, &engine_end, Some(gateway), program)?;
        let ep = Endpoint { ip: gateway, port: id, mac: eth(host_link.mac), gateway_mac: eth(engine_link.mac) };
        if let Err(e) = self.tables.upsert_host(ep) {
            self.remove_port(id);
            return Err(invalid(e.to_string()));
        }
        self.endpoints.insert(gateway, id);
        Ok(())
    }

    fn apply(&mut self, changes: &[Change]) -> Result<Reply, Failure> {
        // Validate everything first: a batch is all or nothing.
        for c in changes {
            if let Change::AddRoute { prefix, .. } | Change::DelRoute { prefix } = c
                && prefix.network() != prefix.addr()
            {
                return Err(invalid(format!("route {prefix} has host bits set (did you mean {}?)", prefix.trunc())));
            }
            if let Change::AddRoute { via, .. } = c
                && (via.is_unspecified() || via.is_broadcast() || via.is_multicast())
            {
                return Err(invalid(format!("{via} cannot be a VTEP")));
            }
        }
        for c in changes {
            match *c {
                Change::AddRoute { prefix, via } => self.tables.insert_route(Prefix::from(prefix), via),
                Change::DelRoute { prefix } => {
                    self.tables.remove_route(Prefix::from(prefix));
                }
                Change::AddNode { underlay_ip, vtep_mac, next_hop_mac } => {
                    let mut node = Node { vtep_mac, requested: next_hop_mac, next_hop: None, resolved: None };
                    if next_hop_mac.is_none() {
                        self.resolve(underlay_ip, &mut node);
                    }
                    self.nodes.insert(underlay_ip, node);
                    self.program_node(underlay_ip)?;
                }
                Change::DelNode { underlay_ip } => {
                    self.nodes.remove(&underlay_ip);
                    self.tables.remove_remote(underlay_ip);
                }
            }
        }
        let generation = self.publish();
        Ok(Reply::Applied { generation, changes: changes.len() })
    }

    /// Find the node's next hop and ask the kernel to keep it resolved.
    fn resolve(&mut self, underlay_ip: Ipv4Addr, node: &mut Node) {
        match self.nl.next_hop(underlay_ip) {
            Ok((via, oif)) => {
                if oif != 0 && oif != self.uplink.ifindex {
                    tracing::warn!(%underlay_ip, %via, oif, "route to the VTEP leaves by another interface than the uplink");
                }
                let oif = self.uplink.ifindex;
                node.next_hop = Some((via, oif));
                // Nodes behind one router share its neighbour entry: it is already managed,
                // and on_neighbour updates every node that uses it. Only a new next hop
                // needs the entry added and the table read.
                if let Some(known) = self.nodes.values().find(|n| n.next_hop == Some((via, oif))) {
                    node.resolved = known.resolved;
                    return;
                }
                if let Err(e) = self.nl.manage_neighbour(via, oif) {
                    tracing::warn!(%via, error = %e, "could not add a managed neighbour entry");
                }
                node.resolved = self.nl.neighbour(via, oif).ok().flatten();
            }
            Err(e) => tracing::warn!(%underlay_ip, error = %e, "no route to remote VTEP"),
        }
    }

    /// Put a node into the tables if its next-hop MAC is known, else leave its routes
    /// unresolved.
    fn program_node(&mut self, underlay_ip: Ipv4Addr) -> Result<(), Failure> {
        let Some(node) = self.nodes.get(&underlay_ip).copied() else {
            return Ok(());
        };
        match node.mac() {
            Some(mac) => self
                .tables
                .upsert_remote(RemoteNode { underlay_ip, vtep_mac: eth(node.vtep_mac), next_hop_mac: eth(mac) })
                .map_err(|e| invalid(e.to_string())),
            None => {
                self.tables.remove_remote(underlay_ip);
                Ok(())
            }
        }
    }

    /// A neighbour changed: update every node whose next hop it is.
    pub fn on_neighbour(&mut self, ev: &NeighEvent) {
        let affected: Vec<Ipv4Addr> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.requested.is_none() && n.next_hop == Some((ev.ip, ev.ifindex)) && n.resolved != ev.mac)
            .map(|(ip, _)| *ip)
            .collect();
        if affected.is_empty() {
            return;
        }
        for ip in &affected {
            if let Some(n) = self.nodes.get_mut(ip) {
                n.resolved = ev.mac;
            }
            if let Err((_, e)) = self.program_node(*ip) {
                tracing::warn!(node = %ip, error = e, "could not program node");
            }
        }
        let generation = self.publish();
        tracing::info!(next_hop = %ev.ip, mac = ?ev.mac.map(|m| m.to_string()), nodes = affected.len(), generation, "next hop changed");
    }

    fn add_endpoint(&mut self, spec: &EndpointSpec) -> Result<Reply, Failure> {
        if !self.cfg.cluster_cidr.contains(&spec.ip) {
            return Err(invalid(format!("{} is outside the cluster CIDR {}", spec.ip, self.cfg.cluster_cidr)));
        }
        if spec.mac.0[0] & 1 == 1 || spec.mac.0 == [0; 6] {
            return Err(invalid(format!("{} is not a unicast MAC", spec.mac)));
        }
        if let Some(socket) = &spec.vhost_user {
            return self.add_vhost_endpoint(spec, socket);
        }
        let link = self.nl.link(&spec.ifname).map_err(|e| invalid(format!("{}: {e}", spec.ifname)))?;
        if let Some(&id) = self.endpoints.get(&spec.ip) {
            let p = &self.ports[&id];
            if p.ifname == spec.ifname && p.role == Role::Pod && matches!(p.kind, PortKind::Xdp { .. }) {
                return Ok(Reply::EndpointReady { port: id.0, gateway_mac: link.mac, mtu: self.pod_mtu() });
            }
            return Err(invalid(format!("{} is already attached on {}", spec.ip, p.ifname)));
        }
        if self.ports.values().any(|p| p.ifname == spec.ifname) {
            return Err(invalid(format!("{} already serves another endpoint", spec.ifname)));
        }
        let id = self.free_port_id()?;
        let program = Program::Pod(PodFilter {
            cluster: self.cfg.cluster_cidr.network(),
            prefix_len: self.cfg.cluster_cidr.prefix_len(),
        });
        self.open_port(id, Role::Pod, &spec.ifname, Some(spec.ip), program)?;
        let generation = self.route_endpoint(id, spec, link.mac)?;
        tracing::info!(ip = %spec.ip, ifname = %spec.ifname, port = %id, generation, "endpoint attached");
        Ok(Reply::EndpointReady { port: id.0, gateway_mac: link.mac, mtu: self.pod_mtu() })
    }

    /// Serve a VM-based pod on a vhost-user socket: the backend listens at once (the VMM
    /// may connect later, and again after it restarts); one worker takes the guest's
    /// frames, every worker may send to it.
    fn add_vhost_endpoint(&mut self, spec: &EndpointSpec, socket: &std::path::Path) -> Result<Reply, Failure> {
        let ready = |id: PortId, mtu| Reply::EndpointReady { port: id.0, gateway_mac: VHOST_GATEWAY_MAC, mtu };
        if let Some(&id) = self.endpoints.get(&spec.ip) {
            let p = &self.ports[&id];
            if p.ifname == spec.ifname && matches!(&p.kind, PortKind::VhostUser(v) if v.path() == socket) {
                return Ok(ready(id, self.pod_mtu()));
            }
            return Err(invalid(format!("{} is already attached on {}", spec.ip, p.ifname)));
        }
        if self.ports.values().any(|p| p.ifname == spec.ifname) {
            return Err(invalid(format!("{} already serves another endpoint", spec.ifname)));
        }
        if !socket.is_absolute() {
            return Err(invalid(format!("vhost-user socket {} is not an absolute path", socket.display())));
        }
        if self.ports.values().any(|p| matches!(&p.kind, PortKind::VhostUser(v) if v.path() == socket)) {
            return Err(invalid(format!("vhost-user socket {} serves another endpoint", socket.display())));
        }
        let id = self.free_port_id()?;
        let io = PortIo::new(VHOST_QUEUE).map_err(|e| failed(format!("vhost-user queues: {e}")))?;
        let server = VhostUserPort::spawn(socket.to_owned(), Arc::clone(&io), spec.mac.0, self.pod_mtu())
            .map_err(|e| invalid(e.to_string()))?;
        // Spread the guests' receive work over the workers by port id.
        let rx_worker = usize::from(id.0) % self.workers.len().max(1);
        let mut counters = Vec::new();
        let mut replies = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let c = Arc::new(PortCounters::default());
            counters.push(Arc::clone(&c));
            let port = VhostPort::new(id, Arc::clone(&io), i == rx_worker, c);
            let (tx, rx) = crossbeam_channel::bounded(1);
            w.run(move |d| {
                d.add_port(NodePort::Vhost(port));
                let _ = tx.send(());
            });
            replies.push(rx);
        }
        if replies.iter().any(|rx| rx.recv_timeout(PORT_TIMEOUT).is_err()) {
            self.close_sockets(id);
            return Err(failed("a worker did not take the vhost-user port"));
        }
        self.ports.insert(
            id,
            Port {
                role: Role::Pod,
                ifname: spec.ifname.clone(),
                ip: Some(spec.ip),
                kind: PortKind::VhostUser(server),
                counters,
            },
        );
        self.export_ports();
        let generation = self.route_endpoint(id, spec, VHOST_GATEWAY_MAC)?;
        tracing::info!(ip = %spec.ip, name = %spec.ifname, socket = %socket.display(), port = %id, generation, "vhost-user endpoint attached");
        Ok(ready(id, self.pod_mtu()))
    }

    /// Route the pod's address to its open port `id` and publish; if the tables refuse
    /// the endpoint, the port is closed again. Returns the new generation.
    fn route_endpoint(&mut self, id: PortId, spec: &EndpointSpec, gateway_mac: Mac) -> Result<u64, Failure> {
        let ep = Endpoint { ip: spec.ip, port: id, mac: eth(spec.mac), gateway_mac: eth(gateway_mac) };
        if let Err(e) = self.tables.upsert_endpoint(ep) {
            self.remove_port(id);
            return Err(invalid(e.to_string()));
        }
        self.endpoints.insert(spec.ip, id);
        Ok(self.publish())
    }

    fn del_endpoint(&mut self, ip: Ipv4Addr) -> bool {
        let Some(id) = self.endpoints.remove(&ip) else {
            return false;
        };
        self.tables.remove_endpoint(ip);
        self.publish();
        self.remove_port(id);
        tracing::info!(%ip, port = %id, "endpoint detached");
        true
    }

    fn remove_port(&mut self, id: PortId) {
        self.close_sockets(id);
        self.ports.remove(&id);
        self.export_ports();
    }

    fn export_ports(&self) {
        let ports = self
            .ports
            .iter()
            .map(|(id, p)| crate::metrics::MetricPort {
                id: id.0,
                role: p.role.name(),
                ifname: p.ifname.clone(),
                counters: p.counters.clone(),
                kernel: match &p.kind {
                    PortKind::Xdp { kernel, .. } => kernel.clone(),
                    PortKind::VhostUser(_) => Vec::new(),
                },
            })
            .collect();
        self.metrics.store(Arc::new(ports));
    }

    fn port_info(&self, id: PortId, p: &Port) -> PortInfo {
        let (mut rx, mut tx, mut tx_dropped) = (0, 0, 0);
        for c in &p.counters {
            let (r, t, d) = c.get();
            (rx, tx, tx_dropped) = (rx + r, tx + t, tx_dropped + d);
        }
        let no_kernel = Vec::new();
        let kernel_stats = match &p.kind {
            PortKind::Xdp { kernel, .. } => kernel,
            PortKind::VhostUser(_) => &no_kernel,
        };
        let kernel = |f: fn(&xlane_xdp::xsk::SocketStats) -> u64| kernel_stats.iter().map(|k| f(&k.get())).sum();
        let (queues, xdp_mode, zero_copy, vhost_user) = match &p.kind {
            PortKind::Xdp { attach, queues, zero_copy, .. } => {
                let mode = match attach.mode() {
                    XdpMode::Native => "native",
                    XdpMode::Generic => "generic",
                };
                (*queues, mode, *zero_copy, None)
            }
            PortKind::VhostUser(v) => {
                let c = &v.io().counters;
                let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                let info = VhostUserInfo {
                    socket: v.path().to_owned(),
                    connected: c.connected.load(std::sync::atomic::Ordering::Relaxed),
                    connections: get(&c.connections),
                    from_guest: get(&c.from_guest),
                    to_guest: get(&c.to_guest),
                    malformed: get(&c.malformed),
                    dropped: get(&c.dropped),
                };
                (1, "none", false, Some(info))
            }
        };
        PortInfo {
            id: id.0,
            role: p.role.name().to_owned(),
            ifname: p.ifname.clone(),
            ip: p.ip,
            queues,
            xdp_mode: xdp_mode.to_owned(),
            zero_copy,
            rx,
            tx,
            tx_ring_full: tx_dropped,
            rx_fill_ring_empty: kernel(|k| k.rx_fill_ring_empty_descs),
            rx_ring_full: kernel(|k| k.rx_ring_full),
            vhost_user,
        }
    }

    fn dump(&self, table: Table) -> Reply {
        match table {
            Table::Routes => Reply::Routes {
                routes: self
                    .tables
                    .routes()
                    .map(|(p, via)| RouteInfo {
                        prefix: p.into(),
                        via,
                        resolved: self.nodes.get(&via).is_some_and(|n| n.mac().is_some()),
                    })
                    .collect(),
            },
            Table::Nodes => Reply::Nodes {
                nodes: self
                    .nodes
                    .iter()
                    .map(|(ip, n)| NodeInfo {
                        underlay_ip: *ip,
                        vtep_mac: n.vtep_mac,
                        next_hop_mac: n.mac(),
                        source: match (n.requested, n.resolved) {
                            (Some(_), _) => "request",
                            (None, Some(_)) => "neighbor",
                            (None, None) => "unresolved",
                        }
                        .to_owned(),
                    })
                    .collect(),
            },
            Table::Endpoints => Reply::Endpoints {
                endpoints: self
                    .ports
                    .iter()
                    .filter(|(_, p)| p.role != Role::Uplink)
                    .map(|(id, p)| self.port_info(*id, p))
                    .collect(),
            },
            Table::Ports => Reply::Ports { ports: self.ports.iter().map(|(id, p)| self.port_info(*id, p)).collect() },
        }
    }

    /// Pipeline counters summed over workers.
    #[must_use]
    pub fn pipeline_counters(&self) -> CounterSnapshot {
        CounterSnapshot::sum(self.workers.iter().map(|w| w.shared.counters.as_ref()))
    }

    fn counters(&self) -> Counters {
        let c = self.pipeline_counters();
        let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).expect("static bounds");
        let mut burst = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 64, 2).expect("static bounds");
        for w in &self.workers {
            let _ = latency.add(&**w.shared.latency.load());
            let _ = burst.add(&**w.shared.burst.load());
        }
        let pct = |h: &hdrhistogram::Histogram<u64>| -> BTreeMap<String, u64> {
            if h.is_empty() {
                return BTreeMap::new();
            }
            [("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)]
                .into_iter()
                .map(|(k, q)| (k.to_owned(), h.value_at_quantile(q / 100.0)))
                .chain([("max".to_owned(), h.max())])
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        };
        Counters {
            pipeline: c.named().into_iter().map(|(k, _, v)| (k.to_owned(), v)).collect(),
            drops: DropReason::ALL.iter().map(|r| (r.name().to_owned(), c.drop_count(*r))).collect(),
            ports: self.ports.iter().map(|(id, p)| self.port_info(*id, p)).collect(),
            latency_ns: pct(&latency),
            burst_size: pct(&burst),
            worker_rx: self.workers.iter().map(|w| w.shared.counters.snapshot().rx).collect(),
        }
    }

    fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: xlane_api::VERSION,
            generation: self.generation,
            vtep: self.vtep,
            uplink: self.cfg.uplink.clone(),
            uplink_mac: self.uplink.mac,
            uplink_ips: uplink_ips(&self.cfg.uplink),
            uplink_mtu: u16::try_from(self.uplink.mtu).unwrap_or(u16::MAX),
            pod_mtu: self.pod_mtu(),
            cluster_cidr: self.cfg.cluster_cidr,
            workers: self.workers.len(),
            busy_poll: self.cfg.busy_poll,
        }
    }

    /// Stop the workers and drop every attachment (detaching the XDP programs).
    pub fn shutdown(&mut self) {
        for w in &self.workers {
            w.send(Command::Stop);
        }
        self.ports.clear();
    }
}

/// IPv4 addresses of an interface (for the agent's default public IP).
fn uplink_ips(ifname: &str) -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter(|a| a.interface_name == ifname)
                .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())))
                .collect()
        })
        .unwrap_or_default()
}

/// A port's queues one worker opens.
struct XdpSpec {
    id: PortId,
    ifname: String,
    queues: Vec<u32>,
    bind: BindMode,
    attach: Arc<XdpAttachment>,
    fill_target: u32,
    counters: Arc<PortCounters>,
    kernel: Arc<KernelStats>,
}

impl XdpSpec {
    /// On the worker: open a socket per queue and serve them; whether they are
    /// zero-copy. A port the UMEM cannot stock would attach and silently receive
    /// nothing: it is refused with the remedy instead. On any failure nothing stays open.
    fn open(self, d: &mut Driver<Umem, NodePort>) -> Result<bool, String> {
        let needed = XdpPort::frames_to_open(d.mem(), self.fill_target, self.queues.len());
        let free = d.mem().free_frames();
        if free < needed {
            return Err(format!(
                "UMEM exhausted: {free} free frames, port {} needs {needed}; start xlaned with a larger --umem-frames",
                self.ifname
            ));
        }
        let mut opened = Vec::new();
        for &q in &self.queues {
            let port = XdpPort::open(
                d.mem_mut(),
                self.id,
                &self.ifname,
                q,
                self.bind,
                Arc::clone(&self.attach),
                self.fill_target,
                Arc::clone(&self.counters),
                Arc::clone(&self.kernel),
            );
            match port {
                Ok(p) => opened.push(p),
                Err(e) => {
                    for p in opened {
                        xlane_engine::Port::close(p, d.mem_mut());
                    }
                    return Err(e.to_string());
                }
            }
        }
        let zero_copy = opened.first().is_some_and(|p| p.socket().zero_copy());
        for p in opened {
            d.add_port(NodePort::Xdp(p));
        }
        tracing::debug!(port = %self.id, ifname = %self.ifname, "port added");
        Ok(zero_copy)
    }
}
