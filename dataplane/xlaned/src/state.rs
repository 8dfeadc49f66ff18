//! The control thread's model of the node, and the handling of every request.
//!
//! All table edits go through the [`FibBuilder`] and are published as one snapshot per
//! request (a batch is all or nothing). Ports are opened by the workers before the
//! tables route anything to them, and removed from the tables before their sockets
//! close, so no frame is routed to a port that cannot send it (and if one were, the
//! driver counts it as `no_egress_port`).
//!
//! Opening an endpoint's port takes the workers a while (binding sockets can wait out a
//! closing one for up to a second), so it does not hold the control loop: the request
//! is answered [`Handled::Later`], other requests are served meanwhile, and the reply
//! comes out of [`State::on_wake`] once every worker has answered (see `ports.rs`).

use crate::host::Host;
use crate::hostport::HostPortSpec;
use crate::ports::{Attaching, Port, Role, WorkerEvent};
use crate::worker::{Command, WorkerHandle, WorkerShared};
use crossbeam_channel::{Receiver, Sender};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use xlane_api::{Change, Counters, ErrorCode, Mac, NodeInfo, Op, Reply, RouteInfo, Status, Table, Vtep};
use xlane_engine::{CounterSnapshot, DropReason, OffloadError};
use xlane_fib::{Endpoint, FibBuilder, FibHandle, NodeConfig, PortId, Prefix, RemoteNode};
use xlane_netlink::{Link, NeighEvent};
use xlane_xdp::attach::Program;
use xlane_xdp::programs::UplinkFilter;

/// The uplink is always port 0.
pub const UPLINK: PortId = PortId(0);

/// The largest uplink MTU xlane takes (jumbo frames, received multi-buffer): the
/// largest common NIC and switch jumbo MTU.
pub const MAX_JUMBO_MTU: u32 = 9216;

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
    /// Fill-ring level per uplink queue.
    pub uplink_fill: u32,
    /// Fill-ring level per pod queue.
    pub pod_fill: u32,
    /// Whether workers busy-poll (for status).
    pub busy_poll: bool,
    /// Where capture sockets are made (beside the control socket).
    pub runtime_dir: std::path::PathBuf,
    /// The largest Ethernet frame a port's memory takes in one buffer (a UMEM frame
    /// less the kernel's headroom): what an AF_XDP pod's MTU must fit.
    pub max_frame: u32,
    /// The largest Ethernet frame the uplink takes: `max_frame`, or, received in
    /// several buffers (copy-mode multi-buffer AF_XDP) and sent through the UDP GSO
    /// sockets, a jumbo frame ([`MAX_JUMBO_MTU`]).
    pub max_uplink_frame: u32,
    /// Send TCP super-packets bound for other nodes through UDP GSO sockets on the
    /// uplink (else the engine cuts them into AF_XDP frames).
    pub uplink_udp_gso: bool,
    /// AF_XDP transmit checksum requests (`--xsk-tx-checksum`).
    pub xsk_tx_checksum: crate::config::XskTxChecksumArg,
    /// How the uplink's VXLAN is read.
    pub uplink_rx: crate::config::UplinkRx,
    /// Which UMEM the uplink's sockets go in on each worker.
    pub uplink_umem: crate::host::Placement,
}

/// The workers of a node on host `H`.
pub type Workers<H> = Vec<WorkerHandle<<H as Host>::Mem, <H as Host>::Port>>;

/// Called from worker threads when they have finished a job for the control thread:
/// it must get the control loop to call [`State::on_wake`].
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// Names a request whose reply comes later, from [`State::on_wake`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// What became of a request.
#[derive(Debug)]
pub enum Handled {
    /// The reply.
    Now(Reply),
    /// The reply comes later, from [`State::on_wake`], under this ticket.
    Later(Ticket),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
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
pub(crate) type Failure = (ErrorCode, String);

pub(crate) fn invalid(msg: impl Into<String>) -> Failure {
    (ErrorCode::Invalid, msg.into())
}

pub(crate) fn failed(msg: impl Into<String>) -> Failure {
    (ErrorCode::Failed, msg.into())
}

/// The control thread's state.
pub struct State<H: Host> {
    pub(crate) cfg: ControlConfig,
    pub(crate) fib: FibHandle,
    pub(crate) tables: FibBuilder,
    generation: u64,
    pub(crate) host: H,
    pub(crate) uplink: Link,
    vtep: Option<Vtep>,
    nodes: BTreeMap<Ipv4Addr, Node>,
    pub(crate) ports: BTreeMap<PortId, Port<H::Attachment>>,
    pub(crate) endpoints: HashMap<Ipv4Addr, PortId>,
    pub(crate) workers: Workers<H>,
    pub(crate) metrics: Arc<crate::metrics::MetricPorts>,
    /// Endpoints whose ports the workers are opening; their requests wait.
    pub(crate) attaching: BTreeMap<PortId, Attaching<H::Attachment>>,
    /// Ports the workers are closing, with how many workers have yet to: their ids are
    /// not reused before.
    pub(crate) closing: BTreeMap<PortId, usize>,
    pub(crate) events: (Sender<WorkerEvent>, Receiver<WorkerEvent>),
    pub(crate) notify: Notify,
    next_ticket: u64,
    /// Replies due that [`handle_now`](Self::handle_now) came across.
    stashed: Vec<(Ticket, Reply)>,
    /// Packet trace and capture.
    pub(crate) observe: crate::observe::Observation,
    pub(crate) captures: crate::capture::Captures,
}

impl<H: Host> core::fmt::Debug for State<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("State").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl<H: Host> State<H> {
    /// Look the uplink up (the pinhole program is attached once the VTEP is known).
    /// `notify` is called from worker threads when a job for this state has finished.
    ///
    /// # Errors
    /// Missing uplink.
    pub fn new(
        cfg: ControlConfig,
        mut host: H,
        fib: FibHandle,
        workers: Workers<H>,
        metrics: Arc<crate::metrics::MetricPorts>,
        notify: Notify,
    ) -> anyhow::Result<Self> {
        let uplink = host.link(&cfg.uplink).map_err(|e| anyhow::anyhow!("uplink {}: {e}", cfg.uplink))?;
        // A frame larger than a buffer would be dropped by the kernel, silently for the
        // user: refuse to start instead, with the remedy.
        let frame = uplink.mtu + 14;
        if frame > cfg.max_uplink_frame {
            let max_mtu = cfg.max_uplink_frame - 14;
            let why = if cfg.max_uplink_frame > cfg.max_frame {
                format!("xlane takes jumbo frames up to MTU {MAX_JUMBO_MTU}")
            } else {
                format!(
                    "they do not fit one AF_XDP buffer ({} bytes after the kernel's headroom); jumbo frames need \
                     copy-mode sockets (not --bind zero-copy) and --uplink-udp-gso, up to MTU {MAX_JUMBO_MTU}",
                    cfg.max_frame
                )
            };
            anyhow::bail!(
                "uplink {} has MTU {}: its frames ({frame} bytes) are too large: {why}. \
                 Or set the uplink's MTU to at most {max_mtu} (`ip link set {} mtu {max_mtu}`); pods get that less 50.",
                cfg.uplink,
                uplink.mtu,
                cfg.uplink
            );
        }
        Ok(Self {
            cfg,
            fib,
            tables: FibBuilder::new(),
            generation: 0,
            host,
            uplink,
            vtep: None,
            nodes: BTreeMap::new(),
            ports: BTreeMap::new(),
            endpoints: HashMap::new(),
            workers,
            metrics,
            attaching: BTreeMap::new(),
            closing: BTreeMap::new(),
            events: crossbeam_channel::unbounded(),
            notify,
            next_ticket: 0,
            stashed: Vec::new(),
            observe: crate::observe::Observation::default(),
            captures: crate::capture::Captures::default(),
        })
    }

    /// Who to call when workers finish jobs of this state (replacing the one given to
    /// [`new`](Self::new)): it must get the control loop to call [`on_wake`](Self::on_wake).
    pub fn set_notify(&mut self, notify: Notify) {
        self.notify = notify;
    }

    /// Handle one request: the reply, or a ticket for a reply [`on_wake`](Self::on_wake)
    /// gives later.
    pub fn handle(&mut self, op: Op) -> Handled {
        let r = match op {
            Op::SetVtep(v) => self.set_vtep(v),
            Op::Apply { changes } => self.apply(&changes),
            Op::AddEndpoint(spec) => match self.add_endpoint(&spec) {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) => return Handled::Later(self.wait_for_attach(spec.ip)),
                Err(e) => Err(e),
            },
            Op::DelEndpoint { ip } => self.del_endpoint(ip).map(|existed| Reply::EndpointRemoved { existed }),
            Op::Dump { table } => Ok(self.dump(table)),
            Op::Counters => Ok(Reply::Counters(Box::new(self.counters()))),
            Op::Status => Ok(Reply::Status(Box::new(self.status()))),
            Op::TraceStart(spec) => self.trace_start(&spec),
            Op::TraceStop => self.trace_stop(),
            Op::TraceShow => self.trace_show(),
            Op::CaptureStart(spec) => self.capture_start(&spec),
        };
        Handled::Now(r.unwrap_or_else(|(code, message)| Reply::Error { code, message }))
    }

    /// Handle one request and wait for its reply (for requests at start-up, and tests);
    /// other replies that fall due meanwhile wait for the next [`on_wake`](Self::on_wake).
    pub fn handle_now(&mut self, op: Op) -> Reply {
        let t = match self.handle(op) {
            Handled::Now(r) => return r,
            Handled::Later(t) => t,
        };
        loop {
            let mut due = Vec::new();
            match self.events.1.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(ev) => self.worker_event(ev, &mut due),
                Err(_) => self.expire_attaches(&mut due),
            }
            let mine = due.iter().position(|(k, _)| *k == t).map(|i| due.swap_remove(i).1);
            self.stashed.extend(due);
            if let Some(r) = mine {
                return r;
            }
        }
    }

    /// A new ticket for the attach of `ip`'s endpoint, in progress.
    fn wait_for_attach(&mut self, ip: Ipv4Addr) -> Ticket {
        self.next_ticket += 1;
        let t = Ticket(self.next_ticket);
        if let Some(a) = self.attaching.values_mut().find(|a| a.ip == ip) {
            a.waiters.push(t);
        }
        t
    }

    /// Take in what the workers have finished, and give up on attaches they have not
    /// finished in time; returns the replies now due. Call it when notified, and about
    /// once a second while [`busy`](Self::busy).
    pub fn on_wake(&mut self) -> Vec<(Ticket, Reply)> {
        let mut due = std::mem::take(&mut self.stashed);
        while let Ok(ev) = self.events.1.try_recv() {
            self.worker_event(ev, &mut due);
        }
        self.expire_attaches(&mut due);
        self.retire_finished_trace();
        self.retire_finished_capture();
        due
    }

    /// Whether workers still have jobs of this state to finish.
    #[must_use]
    pub fn busy(&self) -> bool {
        !self.attaching.is_empty() || !self.closing.is_empty()
    }

    pub(crate) fn publish(&mut self) -> u64 {
        self.generation = self.tables.publish(&self.fib);
        self.generation
    }

    pub(crate) fn pod_mtu(&self) -> u16 {
        u16::try_from(self.uplink.mtu).unwrap_or(u16::MAX).saturating_sub(xlane_wire::VXLAN_OVERHEAD_U16)
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
        let mut node = NodeConfig::new(v.ip, v.mac.unwrap_or(self.uplink.mac), UPLINK, self.uplink.mac);
        node.vni = v.vni;
        node.vxlan_port = v.port;
        node.uplink_mtu = u16::try_from(self.uplink.mtu).unwrap_or(u16::MAX);
        // The address the host port gets (`setup_host_port`): the source of the engine's
        // ICMP errors, as a kernel router's would be its address on the pods' side.
        node.gateway_ip = v.subnet.and_then(|s| s.hosts().next());
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
            self.open_port_and_wait(UPLINK, Role::Uplink, &uplink, Some(v.ip), program)?;
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
        debug_assert_eq!(self.tables.node().and_then(|n| n.gateway_ip), Some(gateway), "set_vtep's gateway");
        let cluster = self.cfg.cluster_cidr;
        let spec = HostPortSpec {
            host: &host,
            engine: &engine_end,
            gateway,
            cluster,
            mtu: self.pod_mtu(),
            queues: self.workers.len(),
        };
        self.host.ensure_host_port(&spec).map_err(|e| failed(format!("host port {host}: {e}")))?;
        if let Some(old) = self.ports.iter().find(|(_, p)| p.role == Role::Host).map(|(id, _)| *id) {
            self.remove_port(old);
            self.endpoints.retain(|_, id| *id != old);
        }
        let host_link = self.host.link(&host).map_err(|e| failed(format!("{host}: {e}")))?;
        let engine_link = self.host.link(&engine_end).map_err(|e| failed(format!("{engine_end}: {e}")))?;
        let id = self.free_port_id()?;
        let program = Program::Pod(self.pod_filter());
        self.open_port_and_wait(id, Role::Host, &engine_end, Some(gateway), program)?;
        let ep = Endpoint { ip: gateway, port: id, mac: host_link.mac, gateway_mac: engine_link.mac };
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
        match self.host.next_hop(underlay_ip) {
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
                if let Err(e) = self.host.manage_neighbour(via, oif) {
                    tracing::warn!(%via, error = %e, "could not add a managed neighbour entry");
                }
                node.resolved = self.host.neighbour(via, oif).ok().flatten();
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
                .upsert_remote(RemoteNode { underlay_ip, vtep_mac: node.vtep_mac, next_hop_mac: mac })
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
                    .map(|(id, p)| p.info::<H>(*id))
                    .collect(),
            },
            Table::Ports => Reply::Ports { ports: self.ports.iter().map(|(id, p)| p.info::<H>(*id)).collect() },
        }
    }

    /// The requests that rebuild this state in another xlaned (a hitless restart): the
    /// VTEP, the nodes (with the next-hop MACs they were given), the routes and the
    /// endpoints, in that order.
    #[must_use]
    pub fn rebuild_ops(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = self.vtep.map(Op::SetVtep).into_iter().collect();
        let nodes = self.nodes.iter().map(|(ip, n)| Change::AddNode {
            underlay_ip: *ip,
            vtep_mac: n.vtep_mac,
            next_hop_mac: n.requested,
        });
        let routes = self.tables.routes().map(|(p, via)| Change::AddRoute { prefix: p.into(), via });
        let changes: Vec<Change> = nodes.chain(routes).collect();
        if !changes.is_empty() {
            ops.push(Op::Apply { changes });
        }
        ops.extend(self.ports.values().filter_map(|p| p.spec.clone()).map(Op::AddEndpoint));
        ops
    }

    /// Pipeline counters summed over workers.
    #[must_use]
    pub fn pipeline_counters(&self) -> CounterSnapshot {
        CounterSnapshot::sum(self.workers.iter().map(|w| w.shared.counters.as_ref()))
    }

    fn counters(&self) -> Counters {
        let c = self.pipeline_counters();
        let (latency, burst) = WorkerShared::merged(self.workers.iter().map(|w| w.shared.as_ref()));
        let pct = |h: &hdrhistogram::Histogram<u64>| -> BTreeMap<String, u64> {
            if h.is_empty() {
                return BTreeMap::new();
            }
            [("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)]
                .into_iter()
                .map(|(k, q)| (k.to_owned(), h.value_at_quantile(q / 100.0)))
                .chain([("max".to_owned(), h.max())])
                .collect()
        };
        // One snapshot per worker serves both its RX count and its own account.
        let workers: Vec<xlane_api::WorkerCounters> = self
            .workers
            .iter()
            .map(|w| {
                let s = w.shared.counters.snapshot();
                xlane_api::WorkerCounters {
                    rx: s.rx,
                    icmp_errors: s.icmp_errors,
                    tx: s.tx,
                    dropped: s.drops.iter().sum(),
                }
            })
            .collect();
        Counters {
            pipeline: c.named().into_iter().map(|(k, _, v)| (k.to_owned(), v)).collect(),
            drops: DropReason::ALL.iter().map(|r| (r.name().to_owned(), c.drop_count(*r))).collect(),
            offload_errors: OffloadError::ALL.iter().map(|e| (e.name().to_owned(), c.offload[e.index()])).collect(),
            ports: self.ports.iter().map(|(id, p)| p.info::<H>(*id)).collect(),
            latency_ns: pct(&latency),
            burst_size: pct(&burst),
            worker_rx: workers.iter().map(|w| w.rx).collect(),
            workers,
            capture: self.capture_stats(),
        }
    }

    fn status(&mut self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: xlane_api::VERSION,
            generation: self.generation,
            vtep: self.vtep,
            uplink: self.cfg.uplink.clone(),
            uplink_mac: self.uplink.mac,
            uplink_ips: self.host.addresses(&self.cfg.uplink),
            uplink_mtu: u16::try_from(self.uplink.mtu).unwrap_or(u16::MAX),
            pod_mtu: self.pod_mtu(),
            cluster_cidr: self.cfg.cluster_cidr,
            workers: self.workers.len(),
            busy_poll: self.cfg.busy_poll,
        }
    }

    /// Stop worker `i` behind the state's back (as a crashed worker thread would be).
    #[cfg(test)]
    pub(crate) fn stop_worker_for_test(&self, i: usize) {
        self.workers[i].send(Command::Stop);
    }

    /// Stop the workers (they close every port) and drop every attachment (detaching
    /// the XDP programs). Requests still waiting get an error.
    pub fn shutdown(&mut self) -> Vec<(Ticket, Reply)> {
        self.stop_capture();
        for w in &self.workers {
            w.send(Command::Stop);
        }
        self.ports.clear();
        let waiting = std::mem::take(&mut self.attaching);
        waiting
            .into_values()
            .flat_map(|a| a.waiters)
            .map(|t| (t, Reply::error(ErrorCode::Failed, "xlaned is shutting down")))
            .collect()
    }
}
