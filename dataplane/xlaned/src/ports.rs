//! Ports as the control thread sees them, and their lifecycle on the workers.
//!
//! A port is opened on every worker (each serves its share of the queues, and transmits
//! on its own), by a job the control thread sends; each job answers with a
//! [`WorkerEvent`]. An endpoint's attach does not wait for those answers: it is kept in
//! `attaching` with the requests waiting for it, and finished (routed, published,
//! answered) when the last worker has answered, or failed (sockets closed again,
//! answered with the reason) when one could not open its queues, has exited, or has not
//! answered in time. Closing is asynchronous too: the tables stop routing to the port
//! first, then the workers close it; its id is not reused until they have. The uplink
//! and host port are opened at start-up and wait for the workers.

use crate::config::UplinkRx;
use crate::host::{Bound, Hold, Host, OpenJob, OpenSpec, OpenStep, PacketSpec, Placement, UdpRxSpec};
use crate::state::{Failure, State, Ticket, failed, invalid};
use crate::worker::WorkerHandle;
use crossbeam_channel::Sender;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::{Duration, Instant};
use xlane_api::{EndpointSpec, Mac, Reply, VethIo};
use xlane_engine::{FrameMemory, PortCounters};
use xlane_fib::{Endpoint, PortId};
use xlane_vhost::backend::PortIo;
use xlane_vhost::port::VhostPort;
use xlane_vhost::server::VhostUserPort;
use xlane_xdp::attach::Program;
use xlane_xdp::packet::PacketStats;
use xlane_xdp::port::KernelStats;
use xlane_xdp::programs::PodFilter;
use xlane_xdp::udp_gro::UdpRxStats;
use xlane_xdp::udp_gso::UdpGsoStats;
use xlane_xdp::xsk::TxChecksum;

/// The gateway MAC VM-based pods see (answering their ARP, source of frames to them):
/// there is no host-side interface to take one from. Locally administered, unicast,
/// the same for every such pod (as Calico does with ee:ee:ee:ee:ee:ee).
pub const VHOST_GATEWAY_MAC: Mac = Mac([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
/// Frames queued each way between a vhost-user backend and the workers.
const VHOST_QUEUE: usize = 1024;
/// How long the workers may take to open a port.
pub(crate) const PORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Uplink,
    Host,
    Pod,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Uplink => "uplink",
            Self::Host => "host",
            Self::Pod => "pod",
        }
    }
}

/// How a port's frames reach the engine.
#[derive(Debug)]
pub(crate) enum PortKind<A> {
    /// Sockets on an interface's queues, behind its XDP program.
    Xdp {
        attach: Arc<A>,
        queues: u32,
        zero_copy: bool,
        /// In a UMEM of their own (not the one the veths share).
        own_umem: bool,
        /// The checksum requests its UMEM carries (on the workers that bound it).
        tx_checksum: TxChecksum,
        /// The kernel's socket statistics, one per worker.
        kernel: Vec<Arc<KernelStats>>,
        /// The uplink's UDP GSO senders' counters, one per worker (none elsewhere).
        udp_gso: Vec<Arc<UdpGsoStats>>,
        /// The uplink's datagram receivers' counters, one per worker (`--uplink-rx udp`
        /// or `packet`).
        udp_rx: Vec<Arc<UdpRxStats>>,
        /// They read packet taps (`--uplink-rx packet`), not UDP sockets.
        udp_rx_tap: bool,
    },
    /// A vhost-user-net backend on a unix socket (a VM-based pod). Dropping it cuts the
    /// frontend off and removes the socket.
    VhostUser(VhostUserPort),
    /// An AF_PACKET socket per worker on a pod veth's host end, which keeps the pod's
    /// offloads; `block` keeps the node's stack off its frames until dropped.
    Packet {
        // Held for its drop, which detaches the program.
        _block: Hold,
        /// The sockets' own counters, one per worker.
        stats: Vec<Arc<PacketStats>>,
    },
}

#[derive(Debug)]
pub(crate) struct Port<A> {
    pub(crate) role: Role,
    pub(crate) ifname: String,
    pub(crate) ip: Option<Ipv4Addr>,
    /// The request that attached it (a pod's endpoint), to rebuild it elsewhere.
    pub(crate) spec: Option<EndpointSpec>,
    pub(crate) kind: PortKind<A>,
    /// One per worker.
    pub(crate) counters: Vec<Arc<PortCounters>>,
}

impl<A> Port<A> {
    pub(crate) fn kernel(&self) -> &[Arc<KernelStats>] {
        match &self.kind {
            PortKind::Xdp { kernel, .. } => kernel,
            PortKind::VhostUser(_) | PortKind::Packet { .. } => &[],
        }
    }

    fn serves(&self, spec: &EndpointSpec) -> bool {
        self.ifname == spec.ifname
            && self.role == Role::Pod
            && match (&self.kind, &spec.vhost_user) {
                (PortKind::Xdp { .. }, None) => spec.veth_io == VethIo::AfXdp,
                (PortKind::Packet { .. }, None) => spec.veth_io == VethIo::AfPacket,
                (PortKind::VhostUser(v), Some(socket)) => v.path() == socket,
                _ => false,
            }
    }
}

/// A worker's answer to a job of the control thread.
#[derive(Debug)]
pub(crate) enum WorkerEvent {
    /// A port's queues are open on the worker (zero-copy or not), or why not.
    Opened { id: PortId, result: Result<Bound, String> },
    /// A port is closed on the worker.
    Closed { id: PortId },
}

/// An endpoint whose port the workers are opening.
#[derive(Debug)]
pub(crate) struct Attaching<A> {
    pub(crate) ip: Ipv4Addr,
    spec: EndpointSpec,
    gateway_mac: Mac,
    port: Port<A>,
    /// Workers yet to answer.
    pending: usize,
    error: Option<String>,
    deadline: Instant,
    /// Set when the attach is given up: opening steps not run yet are dropped.
    abandon: Arc<AtomicBool>,
    /// Requests answered when the attach ends.
    pub(crate) waiters: Vec<Ticket>,
}

/// A port being opened: what the control thread keeps of it.
struct Opening<A> {
    kind: PortKind<A>,
    counters: Vec<Arc<PortCounters>>,
    queues: usize,
    /// Given up on: see [`run_open`].
    abandon: Arc<AtomicBool>,
}

impl<H: Host> State<H> {
    pub(crate) fn free_port_id(&self) -> Result<PortId, Failure> {
        (1..=u16::MAX)
            .map(PortId)
            .find(|p| !self.ports.contains_key(p) && !self.attaching.contains_key(p) && !self.closing.contains_key(p))
            .ok_or_else(|| failed("out of port ids"))
    }

    /// A port's queues dealt out to the workers, round robin. A worker left without one
    /// (a port with fewer queues than workers) still transmits to the port, through a
    /// socket that only sends: every worker can route frames there.
    fn spread(&self, queues: &[u32]) -> Vec<Vec<u32>> {
        let n = self.workers.len();
        let mut per = vec![Vec::new(); n];
        for (i, &q) in queues.iter().enumerate() {
            per[i % n].push(q);
        }
        per
    }

    /// Attach `program` to `ifname` and send every worker the job that opens its share
    /// of the queues; each answers on `events`.
    fn start_open(
        &mut self,
        id: PortId,
        role: Role,
        ifname: &str,
        program: Program,
        events: &Sender<WorkerEvent>,
        notify: bool,
    ) -> Result<Opening<H::Attachment>, Failure> {
        let link = self.host.link(ifname).map_err(|e| invalid(format!("{ifname}: {e}")))?;
        let queues: Vec<u32> = if role == Role::Uplink && !self.cfg.uplink_queues.is_empty() {
            self.cfg.uplink_queues.clone()
        } else {
            let n = self.host.rx_queues(ifname).map_err(|e| invalid(format!("{ifname}: {e}")))?;
            (0..n).collect()
        };
        let per_worker = self.spread(&queues);
        let name = format!("xlane_{}", role.name());
        let max_queue = queues.iter().max().copied().unwrap_or(0) + 1;
        // No program on the uplink (`--uplink-rx packet` or `udp`): a packet tap or UDP
        // GRO socket per worker reads it.
        let udp_rx_at = match &program {
            Program::Uplink(f) if self.cfg.uplink_rx.without_program() => Some((f.vtep_ip, f.vxlan_port)),
            _ => None,
        };
        let tap = (self.cfg.uplink_rx == UplinkRx::Packet).then_some(link.ifindex);
        let attach = Arc::new(self.host.attach(&link, &name, max_queue, program).map_err(failed)?);
        let features = if role == Role::Uplink { self.host.xdp_features(&link) } else { None };
        if let Some(f) = features {
            // Zero-copy binds where the driver offers it (--bind auto), and so do
            // checksum requests (--xsk-tx-checksum auto) in the UMEM it then gets.
            tracing::info!(
                ifname,
                zero_copy = f.zero_copy(),
                zc_max_segs = f.zc_max_segs,
                tx_checksum_offload = f.tx_checksum(),
                "uplink driver's AF_XDP features"
            );
        }
        let own_tx_checksum = self.cfg.xsk_tx_checksum.for_own(features.is_some_and(|f| f.tx_checksum()));
        // Read through UDP sockets, the uplink's AF_XDP sockets only transmit: frames
        // in their fill rings would wait there for good.
        let fill_target = match role {
            Role::Uplink if udp_rx_at.is_some() => 0,
            Role::Uplink => self.cfg.uplink_fill,
            _ => self.cfg.pod_fill,
        };
        let (mut counters, mut kernel, mut udp_gso, mut udp_rx) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let abandon = Arc::new(AtomicBool::new(false));
        for (i, qs) in per_worker.into_iter().enumerate() {
            let transmits_only = qs.is_empty();
            let spec = OpenSpec {
                id,
                worker: i,
                ifname: ifname.to_owned(),
                queues: qs,
                attach: Arc::clone(&attach),
                fill_target,
                counters: Arc::new(PortCounters::default()),
                kernel: Arc::new(KernelStats::default()),
                udp_gso: (role == Role::Uplink && self.cfg.uplink_udp_gso && !transmits_only).then(Arc::default),
                udp_rx: udp_rx_at
                    .filter(|_| !transmits_only)
                    .map(|(vtep, port)| UdpRxSpec::new(vtep, port, self.uplink.mtu, tap)),
                placement: if role == Role::Uplink { self.cfg.uplink_umem } else { Placement::Shared },
                own_tx_checksum,
            };
            counters.push(Arc::clone(&spec.counters));
            kernel.push(Arc::clone(&spec.kernel));
            udp_gso.extend(spec.udp_gso.clone());
            udp_rx.extend(spec.udp_rx.as_ref().map(|r| Arc::clone(&r.stats)));
            self.open_on_worker(i, id, events, notify, self.host.opener(spec), &abandon);
        }
        let queues = queues.len();
        let n = u32::try_from(queues).unwrap_or(u32::MAX);
        let kind = PortKind::Xdp {
            attach,
            queues: n,
            zero_copy: false,
            own_umem: false,
            tx_checksum: TxChecksum::Off,
            kernel,
            udp_gso,
            udp_rx,
            udp_rx_tap: tap.is_some(),
        };
        Ok(Opening { kind, counters, queues, abandon })
    }

    /// What the engine takes of a pod's traffic: ARP and IPv4 to the cluster CIDR.
    pub(crate) fn pod_filter(&self) -> PodFilter {
        let cluster = self.cfg.cluster_cidr;
        PodFilter { cluster: cluster.network(), prefix_len: cluster.prefix_len() }
    }

    /// Run an open `job` for port `id` on worker `i`, answering `Opened` on `events`
    /// (unless the opening is abandoned first).
    fn open_on_worker(
        &self,
        i: usize,
        id: PortId,
        events: &Sender<WorkerEvent>,
        notify: bool,
        job: OpenJob<H::Mem, H::Port>,
        abandon: &Arc<AtomicBool>,
    ) {
        let answer = Answer { id, events: events.clone(), wake: notify.then(|| Arc::clone(&self.notify)) };
        run_open(self.workers[i].clone(), i, answer, job, Arc::clone(abandon));
    }

    /// Run `job` on worker `i`; its event goes to `events` (and wakes the control loop
    /// if `notify`). A worker that has exited answers `gone()` at once.
    fn on_worker(
        &self,
        i: usize,
        events: &Sender<WorkerEvent>,
        notify: bool,
        job: impl FnOnce(&mut xlane_engine::Driver<H::Mem, H::Port>) -> WorkerEvent + Send + 'static,
        gone: impl FnOnce() -> WorkerEvent,
    ) {
        let tx = events.clone();
        let wake = notify.then(|| Arc::clone(&self.notify));
        let sent = self.workers[i].run(move |d| {
            let _ = tx.send(job(d));
            if let Some(wake) = wake {
                wake();
            }
        });
        if !sent {
            let _ = events.send(gone());
            if notify {
                (self.notify)();
            }
        }
    }

    /// Open a port and wait for the workers (the uplink and host port, at start-up).
    pub(crate) fn open_port_and_wait(
        &mut self,
        id: PortId,
        role: Role,
        ifname: &str,
        ip: Option<Ipv4Addr>,
        program: Program,
    ) -> Result<(), Failure> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut opening = self.start_open(id, role, ifname, program, &tx, false)?;
        let deadline = Instant::now() + PORT_TIMEOUT;
        let mut error = None;
        for _ in 0..self.workers.len() {
            match rx.recv_deadline(deadline) {
                Ok(WorkerEvent::Opened { result: Ok(b), .. }) => set_bound(&mut opening.kind, b),
                Ok(WorkerEvent::Opened { result: Err(e), .. }) => error = Some(e),
                Ok(WorkerEvent::Closed { .. }) => {}
                Err(_) => error = Some("worker did not answer".to_owned()),
            }
        }
        let port =
            Port { role, ifname: ifname.to_owned(), ip, spec: None, kind: opening.kind, counters: opening.counters };
        if let Some(e) = error {
            opening.abandon.store(true, Release);
            self.close_on_workers(id);
            return Err(failed(format!("opening AF_XDP sockets on {ifname}: {e}")));
        }
        tracing::info!(port = %id, ifname, role = role.name(), queues = opening.queues, "port ready");
        self.ports.insert(id, port);
        self.export_ports();
        Ok(())
    }

    /// Attach an endpoint. `Ok(Some(reply))`: done (it was attached already);
    /// `Ok(None)`: the workers are opening its port, and the reply comes with
    /// [`State::on_wake`](crate::state::State::on_wake).
    pub(crate) fn add_endpoint(&mut self, spec: &EndpointSpec) -> Result<Option<Reply>, Failure> {
        if !self.cfg.cluster_cidr.contains(&spec.ip) {
            return Err(invalid(format!("{} is outside the cluster CIDR {}", spec.ip, self.cfg.cluster_cidr)));
        }
        if spec.mac.0[0] & 1 == 1 || spec.mac.0 == [0; 6] {
            return Err(invalid(format!("{} is not a unicast MAC", spec.mac)));
        }
        if let Some(&id) = self.endpoints.get(&spec.ip) {
            let p = &self.ports[&id];
            if p.serves(spec) {
                let gateway_mac = match &p.kind {
                    PortKind::Xdp { .. } | PortKind::Packet { .. } => {
                        self.host.link(&spec.ifname).map_err(|e| invalid(format!("{}: {e}", spec.ifname)))?.mac
                    }
                    PortKind::VhostUser(_) => VHOST_GATEWAY_MAC,
                };
                return Ok(Some(Reply::EndpointReady { port: id.0, gateway_mac, mtu: self.pod_mtu() }));
            }
            return Err(invalid(format!("{} is already attached on {}", spec.ip, p.ifname)));
        }
        if let Some(a) = self.attaching.values().find(|a| a.ip == spec.ip || a.spec.ifname == spec.ifname) {
            if a.spec == *spec {
                return Ok(None);
            }
            return Err(invalid(format!("{} is being attached on {}", a.ip, a.spec.ifname)));
        }
        if self.ports.values().any(|p| p.ifname == spec.ifname) {
            return Err(invalid(format!("{} already serves another endpoint", spec.ifname)));
        }
        let id = self.free_port_id()?;
        let events = self.events.0.clone();
        let (opening, gateway_mac) = match &spec.vhost_user {
            None if spec.veth_io == VethIo::AfPacket => {
                let link = self.host.link(&spec.ifname).map_err(|e| invalid(format!("{}: {e}", spec.ifname)))?;
                (self.start_packet(id, &spec.ifname, &link, &events)?, link.mac)
            }
            None => {
                // An AF_XDP pod's frames must each fit one buffer (its program is
                // single-buffer, and transmit is one descriptor per frame).
                let frame = u32::from(self.pod_mtu()) + 14;
                if frame > self.cfg.max_frame {
                    return Err(invalid(format!(
                        "pods get MTU {} on this uplink, larger than an AF_XDP (veth-xdp) pod takes ({}): \
                         attach it as veth-offload (AF_PACKET; the CNI default) or vhost-user",
                        self.pod_mtu(),
                        self.cfg.max_frame - 14
                    )));
                }
                let link = self.host.link(&spec.ifname).map_err(|e| invalid(format!("{}: {e}", spec.ifname)))?;
                let program = Program::Pod(self.pod_filter());
                (self.start_open(id, Role::Pod, &spec.ifname, program, &events, true)?, link.mac)
            }
            Some(socket) => (self.start_vhost(id, spec, socket, &events)?, VHOST_GATEWAY_MAC),
        };
        let port = Port {
            role: Role::Pod,
            ifname: spec.ifname.clone(),
            ip: Some(spec.ip),
            spec: Some(spec.clone()),
            kind: opening.kind,
            counters: opening.counters,
        };
        let attaching = Attaching {
            ip: spec.ip,
            spec: spec.clone(),
            gateway_mac,
            port,
            pending: self.workers.len(),
            error: None,
            deadline: Instant::now() + PORT_TIMEOUT,
            abandon: opening.abandon,
            waiters: Vec::new(),
        };
        self.attaching.insert(id, attaching);
        Ok(None)
    }

    /// Serve a pod whose veth keeps its offloads: block the node's stack on the host end,
    /// then every worker opens a socket in the interface's fanout group (the kernel
    /// spreads the pod's flows over them; each worker transmits on its own).
    fn start_packet(
        &mut self,
        id: PortId,
        ifname: &str,
        link: &xlane_netlink::Link,
        events: &Sender<WorkerEvent>,
    ) -> Result<Opening<H::Attachment>, Failure> {
        let filter = self.pod_filter();
        let block = self.host.block_host_stack(link, filter).map_err(|e| failed(format!("{ifname}: {e}")))?;
        let (mut counters, mut stats) = (Vec::new(), Vec::new());
        let abandon = Arc::new(AtomicBool::new(false));
        for i in 0..self.workers.len() {
            let spec = PacketSpec {
                id,
                ifname: ifname.to_owned(),
                ifindex: link.ifindex,
                worker: i,
                counters: Arc::new(PortCounters::default()),
                stats: Arc::new(PacketStats::default()),
                filter,
            };
            counters.push(Arc::clone(&spec.counters));
            stats.push(Arc::clone(&spec.stats));
            self.open_on_worker(i, id, events, true, self.host.packet_opener(spec), &abandon);
        }
        let queues = counters.len();
        Ok(Opening { kind: PortKind::Packet { _block: block, stats }, counters, queues, abandon })
    }

    /// Serve a VM-based pod on a vhost-user socket: the backend listens at once (the VMM
    /// may connect later, and again after it restarts); one worker takes the guest's
    /// frames, every worker may send to it.
    fn start_vhost(
        &mut self,
        id: PortId,
        spec: &EndpointSpec,
        socket: &std::path::Path,
        events: &Sender<WorkerEvent>,
    ) -> Result<Opening<H::Attachment>, Failure> {
        if !socket.is_absolute() {
            return Err(invalid(format!("vhost-user socket {} is not an absolute path", socket.display())));
        }
        let in_use = |k: &PortKind<H::Attachment>| matches!(k, PortKind::VhostUser(v) if v.path() == socket);
        if self.ports.values().any(|p| in_use(&p.kind)) || self.attaching.values().any(|a| in_use(&a.port.kind)) {
            return Err(invalid(format!("vhost-user socket {} serves another endpoint", socket.display())));
        }
        let io = PortIo::new(VHOST_QUEUE).map_err(|e| failed(format!("vhost-user queues: {e}")))?;
        let mtu = self.pod_mtu();
        let server = self
            .host
            .serve_vhost(socket.to_owned(), Arc::clone(&io), spec.mac.0, mtu)
            .map_err(|e| invalid(e.to_string()))?;
        // Spread the guests' receive work over the workers by port id.
        let rx_worker = usize::from(id.0) % self.workers.len().max(1);
        let mut counters = Vec::new();
        for i in 0..self.workers.len() {
            let c = Arc::new(PortCounters::default());
            counters.push(Arc::clone(&c));
            let port = VhostPort::new(id, Arc::clone(&io), i == rx_worker, c);
            let add = move |d: &mut xlane_engine::Driver<H::Mem, H::Port>| {
                d.add_port(H::vhost(port));
                WorkerEvent::Opened { id, result: Ok(Bound::default()) }
            };
            self.on_worker(i, events, true, add, move || WorkerEvent::Opened {
                id,
                result: Err(format!("worker {i} has exited")),
            });
        }
        let abandon = Arc::new(AtomicBool::new(false));
        Ok(Opening { kind: PortKind::VhostUser(server), counters, queues: 1, abandon })
    }

    /// Take in one worker answer; replies now due go to `due`.
    pub(crate) fn worker_event(&mut self, ev: WorkerEvent, due: &mut Vec<(Ticket, Reply)>) {
        match ev {
            WorkerEvent::Opened { id, result } => {
                let Some(a) = self.attaching.get_mut(&id) else {
                    return; // An attach given up on: its sockets are being closed.
                };
                a.pending = a.pending.saturating_sub(1);
                match result {
                    Ok(b) => set_bound(&mut a.port.kind, b),
                    Err(e) => a.error = Some(e),
                }
                if a.pending == 0 {
                    let a = self.attaching.remove(&id).expect("present");
                    self.finish_attach(id, a, due);
                }
            }
            WorkerEvent::Closed { id } => {
                if let Some(n) = self.closing.get_mut(&id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.closing.remove(&id);
                    }
                }
            }
        }
    }

    /// Give up on attaches whose workers have not all answered in time.
    pub(crate) fn expire_attaches(&mut self, due: &mut Vec<(Ticket, Reply)>) {
        let now = Instant::now();
        let late: Vec<PortId> = self.attaching.iter().filter(|(_, a)| a.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            let mut a = self.attaching.remove(&id).expect("present");
            a.error = Some(format!("{} of {} workers did not answer in time", a.pending, self.workers.len()));
            self.finish_attach(id, a, due);
        }
    }

    /// Let every attach in progress run out of time now.
    #[cfg(test)]
    pub(crate) fn expire_attaches_for_test(&mut self) -> Vec<(Ticket, Reply)> {
        let now = Instant::now();
        for a in self.attaching.values_mut() {
            a.deadline = now;
        }
        let mut due = Vec::new();
        self.expire_attaches(&mut due);
        due
    }

    fn finish_attach(&mut self, id: PortId, a: Attaching<H::Attachment>, due: &mut Vec<(Ticket, Reply)>) {
        let Attaching { spec, gateway_mac, port, error, waiters, abandon, .. } = a;
        let reply = match error {
            Some(e) => {
                abandon.store(true, Release);
                detach::<H>(&port.kind);
                self.close_on_workers(id);
                tracing::info!(ip = %spec.ip, ifname = %spec.ifname, error = %e, "endpoint attach failed");
                Reply::error(xlane_api::ErrorCode::Failed, format!("opening the port of {}: {e}", spec.ifname))
            }
            None => {
                self.ports.insert(id, port);
                self.export_ports();
                match self.route_endpoint(id, &spec, gateway_mac) {
                    Ok(generation) => {
                        tracing::info!(ip = %spec.ip, ifname = %spec.ifname, port = %id, generation, "endpoint attached");
                        Reply::EndpointReady { port: id.0, gateway_mac, mtu: self.pod_mtu() }
                    }
                    Err((code, message)) => Reply::Error { code, message },
                }
            }
        };
        due.extend(waiters.into_iter().map(|t| (t, reply.clone())));
    }

    /// Route the pod's address to its open port `id` and publish; if the tables refuse
    /// the endpoint, the port is closed again. Returns the new generation.
    fn route_endpoint(&mut self, id: PortId, spec: &EndpointSpec, gateway_mac: Mac) -> Result<u64, Failure> {
        let ep = Endpoint { ip: spec.ip, port: id, mac: spec.mac, gateway_mac };
        if let Err(e) = self.tables.upsert_endpoint(ep) {
            self.remove_port(id);
            return Err(invalid(e.to_string()));
        }
        self.endpoints.insert(spec.ip, id);
        Ok(self.publish())
    }

    /// Detach an endpoint: out of the tables at once, its port closed by the workers
    /// after. Whether it existed.
    pub(crate) fn del_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, Failure> {
        if let Some(a) = self.attaching.values().find(|a| a.ip == ip) {
            return Err(failed(format!("{ip} is still being attached on {}; try again", a.spec.ifname)));
        }
        let Some(id) = self.endpoints.remove(&ip) else {
            return Ok(false);
        };
        self.tables.remove_endpoint(ip);
        self.publish();
        self.remove_port(id);
        tracing::info!(%ip, port = %id, "endpoint detached");
        Ok(true)
    }

    /// Forget a port and have the workers close it.
    pub(crate) fn remove_port(&mut self, id: PortId) {
        if let Some(p) = self.ports.get(&id) {
            detach::<H>(&p.kind);
        }
        self.close_on_workers(id);
        self.ports.remove(&id);
        self.export_ports();
    }

    fn close_on_workers(&mut self, id: PortId) {
        let events = self.events.0.clone();
        *self.closing.entry(id).or_insert(0) += self.workers.len();
        for i in 0..self.workers.len() {
            let close = move |d: &mut xlane_engine::Driver<H::Mem, H::Port>| {
                d.remove_port(id);
                WorkerEvent::Closed { id }
            };
            self.on_worker(i, &events, true, close, move || WorkerEvent::Closed { id });
        }
    }

    pub(crate) fn export_ports(&self) {
        let ports = self
            .ports
            .iter()
            .map(|(id, p)| crate::metrics::MetricPort {
                id: id.0,
                role: p.role.name(),
                ifname: p.ifname.clone(),
                counters: p.counters.clone(),
                kernel: p.kernel().to_vec(),
            })
            .collect();
        self.metrics.store(Arc::new(ports));
    }
}

/// Where a worker's `Opened` answer goes.
#[derive(Clone)]
struct Answer {
    id: PortId,
    events: Sender<WorkerEvent>,
    wake: Option<crate::state::Notify>,
}

impl Answer {
    fn send(self, result: Result<Bound, String>) {
        let _ = self.events.send(WorkerEvent::Opened { id: self.id, result });
        if let Some(wake) = self.wake {
            wake();
        }
    }
}

/// Run an open job on worker `i`, and what it hands off (binding sockets) on a thread of
/// its own, then the job that follows back on the worker, and so on until it is done.
/// Once `abandon` is set (the control thread gave up the opening and closes the port on
/// the workers) the next step is dropped unrun, which closes what it holds, and nothing
/// is answered: a late answer could be taken for a new port that reuses the id.
fn run_open<M: FrameMemory + 'static, P: xlane_engine::Port<M> + 'static>(
    worker: WorkerHandle<M, P>,
    i: usize,
    answer: Answer,
    job: OpenJob<M, P>,
    abandon: Arc<AtomicBool>,
) {
    let fallback = answer.clone();
    let again = worker.clone();
    let given_up = Arc::clone(&abandon);
    let sent = worker.run(move |d| {
        if abandon.load(Acquire) {
            return;
        }
        match job(d) {
            OpenStep::Done(result) => answer.send(result),
            OpenStep::Off(work) => {
                let fallback = answer.clone();
                let spawned = std::thread::Builder::new().name(format!("xlane-open{i}")).spawn(move || {
                    let next = work();
                    run_open(again, i, answer, next, abandon);
                });
                if let Err(e) = spawned {
                    fallback.send(Err(format!("open thread: {e}")));
                }
            }
        }
    });
    // An attach given up on meanwhile wants no answer.
    if !sent && !given_up.load(Acquire) {
        fallback.send(Err(format!("worker {i} has exited")));
    }
}

/// Free a port's interface for a new attachment now (the workers close the sockets
/// later), so a pod removed and added again at once attaches.
fn detach<H: Host>(kind: &PortKind<H::Attachment>) {
    if let PortKind::Xdp { attach, .. } = kind {
        H::detach(attach);
    }
}

fn set_bound<A>(kind: &mut PortKind<A>, bound: Bound) {
    if let PortKind::Xdp { zero_copy, own_umem, tx_checksum, .. } = kind {
        *zero_copy |= bound.zero_copy;
        *own_umem |= bound.own_umem;
        if bound.tx_checksum != TxChecksum::Off {
            *tx_checksum = bound.tx_checksum;
        }
    }
}
