//! What the control thread asks of the node, behind one trait: interfaces, XDP
//! programs, the host port, the kernel's routes and neighbours, and how a worker opens
//! an interface's queues as ports.
//!
//! The daemon runs on [`System`] (netlink, bpf(2), AF_XDP sockets in a UMEM); the unit
//! tests run the same [`State`](crate::state::State) on a fake with in-memory ports, so
//! every request path is tested without privileges.

use crate::config::UplinkRx;
use crate::handover::Pool;
use crate::hostport::HostPortSpec;
use crate::ready_sockets::ReadySockets;
use crate::worker::NodePort;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use xlane_api::Mac;
use xlane_engine::{Driver, FrameMemory, Port, PortCounters};
use xlane_fib::PortId;
use xlane_netlink::netdev::XdpFeatures;
use xlane_netlink::{Link, Netlink};
use xlane_vhost::backend::PortIo;
use xlane_vhost::port::VhostPort;
use xlane_vhost::server::VhostUserPort;
use xlane_xdp::attach::{HostStackBlock, ModePreference, Program, XdpAttachment, XdpMode};
use xlane_xdp::packet::{PacketPort, PacketStats, ReadySocket, RxPath};
use xlane_xdp::port::{KernelStats, OpenError, PortHandover, QueueSpec, XdpPort};
use xlane_xdp::programs::PodFilter;
use xlane_xdp::udp_gro::{UdpReceiver, UdpRxStats};
use xlane_xdp::udp_gso::{UdpGsoSender, UdpGsoStats};
use xlane_xdp::xsk::{BindMode, PreparedSocket, TxChecksum, UmemId, Umems};

/// What one worker opens of an interface: its share of the queues, as port `id`.
#[derive(Debug)]
pub struct OpenSpec<A> {
    /// Pipeline port id.
    pub id: PortId,
    /// The worker opening it.
    pub worker: usize,
    /// Interface.
    pub ifname: String,
    /// The queues this worker serves.
    pub queues: Vec<u32>,
    /// The interface's XDP program (steers the queues to the sockets).
    pub attach: Arc<A>,
    /// Frames to keep in each queue's fill ring.
    pub fill_target: u32,
    /// The port's counters on this worker.
    pub counters: Arc<PortCounters>,
    /// The kernel's socket statistics on this worker.
    pub kernel: Arc<KernelStats>,
    /// On the uplink: counters of the UDP GSO sockets to open beside the first queue's
    /// socket, which transmits for the port.
    pub udp_gso: Option<Arc<UdpGsoStats>>,
    /// On an uplink without an XDP program: the UDP GRO socket to open beside the first
    /// queue's socket, which then receives for the port.
    pub udp_rx: Option<UdpRxSpec>,
    /// Which of the worker's UMEMs the sockets go in.
    pub placement: Placement,
    /// The checksum requests a UMEM of their own asks for.
    pub own_tx_checksum: TxChecksum,
}

/// Where an uplink without an XDP program receives: the VTEP's address and VXLAN port.
#[derive(Debug)]
pub struct UdpRxSpec {
    /// The VTEP address.
    pub vtep: std::net::Ipv4Addr,
    /// The VXLAN port.
    pub port: u16,
    /// The receiver's counters on this worker.
    pub stats: Arc<UdpRxStats>,
    /// The uplink's MTU (where a peer of the same MTU cuts its trains of datagrams).
    pub mtu: u32,
    /// The socket a predecessor received through (a handover), else a new one is opened.
    pub inherited: Option<std::os::fd::OwnedFd>,
    /// Read through a packet tap on the uplink (this index), not a UDP socket.
    pub tap: Option<u32>,
}

impl UdpRxSpec {
    /// Reading `vtep`:`port` of an uplink of MTU `mtu` through a UDP socket, or with
    /// `tap` through a packet tap on that interface index, counting from zero.
    #[must_use]
    pub fn new(vtep: std::net::Ipv4Addr, port: u16, mtu: u32, tap: Option<u32>) -> Self {
        Self { vtep, port, stats: Arc::default(), mtu, inherited: None, tap }
    }
}

/// Which of a worker's UMEMs an interface's sockets go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The shared one, in copy mode (veths, the host port; the uplink if told so).
    Shared,
    /// A new one of their own, bound as `--bind-mode` says (frames to and from the
    /// shared one copied once).
    Own,
    /// Their own if they bind zero-copy (which a UMEM shared with veths cannot), else the
    /// shared one (`--bind-mode copy` goes straight there).
    OwnIfZeroCopy,
}

/// How a worker bound an interface's sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bound {
    /// Zero-copy.
    pub zero_copy: bool,
    /// In a UMEM of their own.
    pub own_umem: bool,
    /// The checksum requests their UMEM carries.
    pub tx_checksum: TxChecksum,
}

/// What one worker opens of a pod veth read through AF_PACKET: its socket in the
/// interface's fanout group, as port `id`.
#[derive(Debug)]
pub struct PacketSpec {
    /// Pipeline port id.
    pub id: PortId,
    /// Interface (the host end of the pod's veth).
    pub ifname: String,
    /// Its index.
    pub ifindex: u32,
    /// The worker opening it.
    pub worker: usize,
    /// The port's counters on this worker.
    pub counters: Arc<PortCounters>,
    /// The socket's own counters on this worker.
    pub stats: Arc<PacketStats>,
    /// What the engine takes of the pod's traffic (the rest is the host's).
    pub filter: PodFilter,
}

/// Something held for as long as a port lives, released by dropping it (a BPF link).
pub type Hold = Box<dyn Held>;

/// What a [`Hold`] may be: anything (a handover looks at what it is).
pub trait Held: std::any::Any + core::fmt::Debug + Send + Sync {}

impl<T: std::any::Any + core::fmt::Debug + Send + Sync> Held for T {}

/// Work a worker runs to open ports.
pub type OpenJob<M, P> = Box<dyn FnOnce(&mut Driver<M, P>) -> OpenStep<M, P> + Send>;

/// What an [`OpenJob`] comes to.
pub enum OpenStep<M: FrameMemory, P: Port<M>> {
    /// How the ports were bound, or why they could not be opened (then nothing stays
    /// open).
    Done(Result<Bound, String>),
    /// Work to run off the worker (binding sockets: tens of milliseconds in the kernel,
    /// during which the worker would forward nothing); it returns the job that finishes
    /// the opening on the same worker. Dropped instead of run, it closes what it holds.
    Off(Box<dyn FnOnce() -> OpenJob<M, P> + Send>),
}

impl<M: FrameMemory, P: Port<M>> core::fmt::Debug for OpenStep<M, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Self::Off(_) => f.write_str("Off"),
        }
    }
}

/// The node as the control thread sees it.
pub trait Host {
    /// A worker's frame memory.
    type Mem: FrameMemory + 'static;
    /// A worker's port.
    type Port: Port<Self::Mem> + 'static;
    /// An interface's XDP program, shared by the sockets of its queues.
    type Attachment: core::fmt::Debug + Send + Sync + 'static;

    /// An interface's index, MAC and MTU.
    ///
    /// # Errors
    /// No such interface, or the kernel's error.
    fn link(&mut self, ifname: &str) -> io::Result<Link>;

    /// How many receive queues an interface has.
    ///
    /// # Errors
    /// No such interface, or the kernel's error.
    fn rx_queues(&mut self, ifname: &str) -> io::Result<u32>;

    /// Load `program` with an XSKMAP of `queues` entries and attach it to `link`.
    ///
    /// # Errors
    /// Why the program could not be loaded or attached.
    fn attach(&mut self, link: &Link, name: &str, queues: u32, program: Program) -> Result<Self::Attachment, String>;

    /// What the driver of `link` offers XDP and AF_XDP (zero-copy, TX checksum
    /// metadata), if it can be asked.
    fn xdp_features(&mut self, _link: &Link) -> Option<XdpFeatures> {
        None
    }

    /// The XDP mode an attachment got ("native", "generic").
    fn xdp_mode(attachment: &Self::Attachment) -> &'static str;

    /// Take an attachment's program off its interface now, though workers still hold it
    /// until they close their sockets: the interface can take a new one at once.
    fn detach(attachment: &Self::Attachment);

    /// A job for a worker that opens `spec`'s queues as ports of its driver and says
    /// whether they are zero-copy, or why not (then nothing stays open); it may bind the
    /// sockets off the worker ([`OpenStep::Off`]).
    fn opener(&self, spec: OpenSpec<Self::Attachment>) -> OpenJob<Self::Mem, Self::Port>;

    /// A vhost-user guest as a worker port.
    fn vhost(port: VhostPort) -> Self::Port;

    /// Serve a vhost-user socket at `path` for `io` (the device's `mac` and `mtu`).
    ///
    /// # Errors
    /// The socket cannot be created.
    fn serve_vhost(&mut self, path: PathBuf, io: Arc<PortIo>, mac: [u8; 6], mtu: u16) -> io::Result<VhostUserPort> {
        VhostUserPort::spawn(path, io, mac, mtu)
    }

    /// Keep the node's stack off the frames of a pod veth read through AF_PACKET that
    /// the engine forwards (a packet socket only taps them), and give it the rest
    /// (`filter`: the pod pinhole): held until dropped.
    ///
    /// # Errors
    /// Why it could not be installed.
    fn block_host_stack(&mut self, link: &Link, filter: PodFilter) -> Result<Hold, String>;

    /// A job for a worker that opens its AF_PACKET socket on `spec`'s interface as a
    /// port of its driver, or says why not (then nothing stays open).
    fn packet_opener(&self, spec: PacketSpec) -> OpenJob<Self::Mem, Self::Port>;

    /// Create (or reuse) the host port veth pair as `spec` says.
    ///
    /// # Errors
    /// The failing step.
    fn ensure_host_port(&mut self, spec: &HostPortSpec<'_>) -> io::Result<()>;

    /// The next hop towards `dst` (its gateway, or `dst` on-link) and the interface.
    ///
    /// # Errors
    /// No route.
    fn next_hop(&mut self, dst: Ipv4Addr) -> io::Result<(Ipv4Addr, u32)>;

    /// Ask the kernel to resolve and keep `ip` on `ifindex` fresh (a managed neighbour).
    ///
    /// # Errors
    /// The kernel's error.
    fn manage_neighbour(&mut self, ip: Ipv4Addr, ifindex: u32) -> io::Result<()>;

    /// The MAC the kernel knows for `ip` on `ifindex`, if resolved.
    ///
    /// # Errors
    /// The kernel's error.
    fn neighbour(&mut self, ip: Ipv4Addr, ifindex: u32) -> io::Result<Option<Mac>>;

    /// An interface's IPv4 addresses.
    fn addresses(&mut self, ifname: &str) -> Vec<Ipv4Addr>;
}

/// The real node: rtnetlink, bpf(2) and AF_XDP sockets in each worker's UMEM.
#[derive(Debug)]
pub struct System {
    nl: Netlink,
    xdp: ModePreference,
    bind: BindMode,
    /// How the uplink is read: without XDP (`--uplink-rx udp` or `packet`) its program
    /// is loaded, never attached.
    uplink_rx: UplinkRx,
    /// What a hitless restart inherited and the replayed requests have yet to take.
    pool: std::sync::Mutex<Pool>,
    /// Pod sockets made ahead ([`with_ready_sockets`](Self::with_ready_sockets)).
    ready: Option<ReadySockets>,
}

impl System {
    /// A netlink socket in the current namespace; programs attach as `xdp` prefers,
    /// sockets bind as `bind` says.
    ///
    /// # Errors
    /// The netlink socket could not be opened.
    pub fn new(xdp: ModePreference, bind: BindMode) -> io::Result<Self> {
        Ok(Self {
            nl: Netlink::new()?,
            xdp,
            bind,
            uplink_rx: UplinkRx::Xdp,
            pool: std::sync::Mutex::default(),
            ready: None,
        })
    }

    /// Keep `stock` pod sockets ready ahead of pods (a thread makes them), so that a
    /// `veth-offload` pod's sockets, one per worker, are there when it comes. Without,
    /// each worker makes its own as the pod comes, waiting for a grace period.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn with_ready_sockets(self, stock: usize) -> io::Result<Self> {
        Ok(Self { ready: Some(ReadySockets::start(stock)?), ..self })
    }

    /// Read the uplink as `rx` says: without XDP its program is loaded for its XSKMAP,
    /// never attached, and for packet taps a tcx program keeps its VXLAN from the
    /// host's stack.
    #[must_use]
    pub fn with_uplink_rx(self, rx: UplinkRx) -> Self {
        Self { uplink_rx: rx, ..self }
    }

    /// Take the objects of `pool` (inherited from the xlaned this one took over from)
    /// instead of making new ones, as requests come to them.
    #[must_use]
    pub fn with_pool(self, pool: Pool) -> Self {
        Self { pool: std::sync::Mutex::new(pool), ..self }
    }

    /// The inherited objects not taken yet.
    pub(crate) fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Host for System {
    type Mem = Umems;
    type Port = NodePort;
    type Attachment = XdpAttachment;

    fn link(&mut self, ifname: &str) -> io::Result<Link> {
        self.nl.link(ifname)
    }

    fn rx_queues(&mut self, ifname: &str) -> io::Result<u32> {
        xlane_netlink::ethtool::rx_queues(ifname)
    }

    fn attach(&mut self, link: &Link, name: &str, queues: u32, program: Program) -> Result<XdpAttachment, String> {
        let uplink = match program {
            Program::Uplink(f) => Some(f),
            Program::Pod(_) => None,
        };
        let mut attachment = if let Some(h) = self.pool().attachment(link.ifindex) {
            XdpAttachment::take_over(h)
        } else if uplink.is_some() && self.uplink_rx.without_program() {
            XdpAttachment::load(link.ifindex, name, queues, program).map_err(|e| e.to_string())?
        } else {
            XdpAttachment::attach(link.ifindex, name, queues, program, self.xdp).map_err(|e| e.to_string())?
        };
        if let Some(f) = uplink.filter(|_| self.uplink_rx == UplinkRx::Packet) {
            // Taken over too: the predecessor's block stays until it exits, so the two
            // overlap.
            attachment
                .block_host_vxlan(&f)
                .map_err(|e| format!("{e} (the uplink is read through packet taps; --uplink-rx udp needs no tcx)"))?;
        }
        Ok(attachment)
    }

    fn xdp_features(&mut self, link: &Link) -> Option<XdpFeatures> {
        xlane_netlink::netdev::xdp_features(link.ifindex)
            .inspect_err(|e| tracing::info!(ifindex = link.ifindex, error = %e, "asking the driver's XDP features"))
            .ok()
    }

    fn detach(attachment: &XdpAttachment) {
        if let Err(e) = attachment.detach() {
            tracing::warn!(ifindex = attachment.ifindex(), error = %e, "detaching XDP");
        }
    }

    fn xdp_mode(attachment: &XdpAttachment) -> &'static str {
        match attachment.mode() {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }

    fn opener(&self, spec: OpenSpec<XdpAttachment>) -> OpenJob<Umems, NodePort> {
        if let Some(handed) = self.pool().sockets(spec.worker, spec.attach.ifindex(), &spec.queues) {
            return Box::new(move |d| take_over_sockets(spec, handed, d));
        }
        let bind = self.bind;
        Box::new(move |d| open_sockets(spec, bind, d))
    }

    fn vhost(port: VhostPort) -> NodePort {
        NodePort::Vhost(port)
    }

    fn serve_vhost(&mut self, path: PathBuf, io: Arc<PortIo>, mac: [u8; 6], mtu: u16) -> io::Result<VhostUserPort> {
        if let Some(h) = self.pool().vhost(&path) {
            return VhostUserPort::take_over(path, io, mac, mtu, h);
        }
        VhostUserPort::spawn(path, io, mac, mtu)
    }

    fn block_host_stack(&mut self, link: &Link, filter: PodFilter) -> Result<Hold, String> {
        if let Some((l, prog)) = self.pool().block(link.ifindex) {
            return Ok(Box::new(HostStackBlock::take_over(l, prog, link.ifindex)));
        }
        HostStackBlock::pinhole(link.ifindex, &filter).map(|b| Box::new(b) as Hold).map_err(|e| e.to_string())
    }

    fn packet_opener(&self, spec: PacketSpec) -> OpenJob<Umems, NodePort> {
        if let Some((fd, fanout)) = self.pool().packet(spec.worker, spec.ifindex) {
            return Box::new(move |d| {
                let taken = PacketPort::on(spec.id, fd, spec.ifindex, fanout, spec.counters, spec.stats)
                    .map(|port| {
                        d.add_port(NodePort::Packet(port));
                        Bound::default()
                    })
                    .map_err(|e| format!("{}: {e}", spec.ifname));
                OpenStep::Done(taken)
            });
        }
        // Taken here, on the control thread: the worker only binds it.
        let ready = self.ready.as_ref().and_then(ReadySockets::take);
        Box::new(move |d| {
            // One fanout group per interface: its index's low 16 bits.
            #[expect(clippy::cast_possible_truncation, reason = "a group id is 16 bits; the index names the interface")]
            let group = spec.ifindex as u16;
            // None ready (a burst of pods emptied the stock): made here, the worker
            // waiting for the ring's grace period.
            let ready = ready.map_or_else(|| ReadySocket::new(RxPath::Ring), Ok);
            let opened = ready
                .and_then(|r| {
                    PacketPort::open_ready(
                        r,
                        spec.id,
                        spec.ifindex,
                        group,
                        Some(&spec.filter),
                        spec.counters,
                        spec.stats,
                    )
                })
                .map(|port| {
                    d.add_port(NodePort::Packet(port));
                    Bound::default()
                })
                .map_err(|e| format!("{}: {e}", spec.ifname));
            OpenStep::Done(opened)
        })
    }

    fn ensure_host_port(&mut self, spec: &HostPortSpec<'_>) -> io::Result<()> {
        crate::hostport::ensure(spec)
    }

    fn next_hop(&mut self, dst: Ipv4Addr) -> io::Result<(Ipv4Addr, u32)> {
        self.nl.next_hop(dst)
    }

    fn manage_neighbour(&mut self, ip: Ipv4Addr, ifindex: u32) -> io::Result<()> {
        self.nl.manage_neighbour(ip, ifindex)
    }

    fn neighbour(&mut self, ip: Ipv4Addr, ifindex: u32) -> io::Result<Option<Mac>> {
        self.nl.neighbour(ip, ifindex)
    }

    fn addresses(&mut self, ifname: &str) -> Vec<Ipv4Addr> {
        nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter(|a| a.interface_name == ifname)
                    .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// On a worker: one AF_XDP socket per queue of `spec`, in the UMEM its placement says.
/// Sockets joining the shared UMEM bind off the worker (the pods attached while others
/// forward); the first socket of a UMEM binds on it (it decides the UMEM's mode), as do
/// an own UMEM's (the uplink's, at start-up).
fn open_sockets(
    spec: OpenSpec<XdpAttachment>,
    bind: BindMode,
    d: &mut Driver<Umems, NodePort>,
) -> OpenStep<Umems, NodePort> {
    if spec.queues.is_empty() {
        // More workers than queues: this one only transmits to the interface.
        let stats = Arc::new(PacketStats::default());
        let opened = PacketPort::open_transmit_only(spec.id, spec.attach.ifindex(), spec.counters, stats)
            .map(|port| {
                d.add_port(NodePort::Packet(port));
                Bound::default()
            })
            .map_err(|e| format!("{}: {e}", spec.ifname));
        return OpenStep::Done(opened);
    }
    let own = match (spec.placement, bind) {
        (Placement::Shared, _) | (Placement::OwnIfZeroCopy, BindMode::Copy) => None,
        (Placement::Own, _) => Some(bind),
        // Only zero-copy earns a UMEM of its own; a refusal leaves the queue to the
        // shared one, in copy mode.
        (Placement::OwnIfZeroCopy, BindMode::Auto | BindMode::ZeroCopy) => Some(BindMode::ZeroCopy),
    };
    if let Some(mode) = own {
        match open_in_own_umem(&spec, mode, d) {
            Ok(ports) => return OpenStep::Done(add_xdp_ports(spec, ports, true, d)),
            Err(e) if spec.placement == Placement::OwnIfZeroCopy && bind == BindMode::Auto => {
                tracing::info!(ifname = %spec.ifname, "no zero-copy ({e}): sockets in the shared UMEM, copy mode");
            }
            Err(e) => return OpenStep::Done(Err(e)),
        }
    }
    if let Err(e) = shared_has_room(&spec, d) {
        return OpenStep::Done(Err(e));
    }
    if !d.mem().shared().bound() {
        let opened = open_queues(&spec, UmemId::SHARED, BindMode::Copy, d);
        return OpenStep::Done(opened.and_then(|ports| add_xdp_ports(spec, ports, false, d)));
    }
    let mut sockets = Vec::with_capacity(spec.queues.len());
    for &q in &spec.queues {
        match d.mem_mut().get_mut(UmemId::SHARED).prepare_port(&spec.ifname, q) {
            Ok(s) => sockets.push(s),
            // The ones prepared close as they drop.
            Err(e) => return OpenStep::Done(Err(e.to_string())),
        }
    }
    OpenStep::Off(Box::new(move || {
        let bound = sockets.iter_mut().try_for_each(PreparedSocket::bind);
        Box::new(move |d| {
            OpenStep::Done(
                bound
                    .map_err(|e| e.to_string())
                    .and_then(|()| shared_has_room(&spec, d))
                    .and_then(|()| adopt_queues(&spec, sockets, d))
                    .and_then(|ports| add_xdp_ports(spec, ports, false, d)),
            )
        })
    }))
}

/// On a worker: `spec`'s queues on the sockets inherited for them (a hitless restart),
/// on their rings as they stand.
fn take_over_sockets(
    mut spec: OpenSpec<XdpAttachment>,
    mut handed: Vec<PortHandover>,
    d: &mut Driver<Umems, NodePort>,
) -> OpenStep<Umems, NodePort> {
    let own = handed.first().is_some_and(|h| h.umem != UmemId::SHARED.index());
    let udp = handed.iter_mut().find_map(|h| h.udp_rx.take());
    if let Some(rx) = spec.udp_rx.as_mut() {
        rx.inherited = udp;
    }
    let opened = all_or_none(handed, d, |h, m| XdpPort::take_over(m, h, queue_spec(&spec)));
    OpenStep::Done(opened.and_then(|ports| add_xdp_ports(spec, ports, own, d)))
}

/// Whether the shared UMEM can stock `spec`'s queues: a port it cannot would attach and
/// silently receive nothing, so it is refused with the remedy instead.
fn shared_has_room(spec: &OpenSpec<XdpAttachment>, d: &mut Driver<Umems, NodePort>) -> Result<(), String> {
    let needed = XdpPort::frames_to_open(d.mem().shared(), spec.fill_target, spec.queues.len());
    let shared = d.mem_mut().get_mut(UmemId::SHARED);
    if shared.free_frames() < needed && shared.closing() > 0 {
        // Ports just removed still hold frames while their sockets close: wait for
        // them (only when short of frames; otherwise they come back unnoticed).
        shared.wait_closed(std::time::Duration::from_secs(1));
    }
    let free = d.mem().shared().free_frames();
    if free < needed {
        return Err(format!(
            "UMEM exhausted: {free} free frames, port {} needs {needed}; start xlaned with a larger --umem-frames",
            spec.ifname
        ));
    }
    Ok(())
}

/// `spec`'s queues in a new UMEM of the worker, sized for their rings, bound as `bind`
/// says; nothing stays open (the UMEM neither) on failure.
fn open_in_own_umem(
    spec: &OpenSpec<XdpAttachment>,
    bind: BindMode,
    d: &mut Driver<Umems, NodePort>,
) -> Result<Vec<XdpPort>, String> {
    // Each queue's fill ring full and its TX ring full of frames copied in from pods,
    // plus the reserve kept for completions.
    let per_queue = spec.fill_target + d.mem().shared().settings().rx_tx_ring;
    let frames = u32::try_from(XdpPort::frames_for(0, per_queue, spec.queues.len()))
        .map_err(|_| format!("{}: own UMEM: too many frames", spec.ifname))?;
    let id = d.mem_mut().add(frames, spec.own_tx_checksum).map_err(|e| format!("{}: own UMEM: {e}", spec.ifname))?;
    let opened = open_queues(spec, id, bind, d);
    if opened.is_err() {
        d.mem_mut().remove_if_unused(id);
    }
    opened
}

/// One socket per queue of `spec` in UMEM `id`, or none and the first failure.
fn open_queues(
    spec: &OpenSpec<XdpAttachment>,
    id: UmemId,
    bind: BindMode,
    d: &mut Driver<Umems, NodePort>,
) -> Result<Vec<XdpPort>, String> {
    all_or_none(spec.queues.iter(), d, |&q, m| XdpPort::open(m, id, &spec.ifname, q, bind, queue_spec(spec)))
}

/// The shared UMEM's ports on `sockets`, prepared and bound off the worker; or none and
/// the first failure.
fn adopt_queues(
    spec: &OpenSpec<XdpAttachment>,
    sockets: Vec<PreparedSocket>,
    d: &mut Driver<Umems, NodePort>,
) -> Result<Vec<XdpPort>, String> {
    all_or_none(sockets, d, |s, m| XdpPort::adopt(m, UmemId::SHARED, s, queue_spec(spec)))
}

/// What each queue's port of `spec` serves.
fn queue_spec(spec: &OpenSpec<XdpAttachment>) -> QueueSpec {
    QueueSpec {
        id: spec.id,
        attach: Arc::clone(&spec.attach),
        fill_target: spec.fill_target,
        counters: Arc::clone(&spec.counters),
        kernel: Arc::clone(&spec.kernel),
    }
}

/// A port opened from each of `items`: all of them, or none (those opened closed again,
/// the items left dropped) and the first failure.
fn all_or_none<T>(
    items: impl IntoIterator<Item = T>,
    d: &mut Driver<Umems, NodePort>,
    mut open: impl FnMut(T, &mut Umems) -> Result<XdpPort, OpenError>,
) -> Result<Vec<XdpPort>, String> {
    let mut opened = Vec::new();
    for item in items {
        match open(item, d.mem_mut()) {
            Ok(p) => opened.push(p),
            Err(e) => {
                for p in opened {
                    Port::close(p, d.mem_mut());
                }
                return Err(e.to_string());
            }
        }
    }
    Ok(opened)
}

/// Say so when a UMEM (the `shared` one, or an interface's own) was granted other
/// checksum requests than it asked for: the kernel refused them, the engine completes
/// checksums.
pub(crate) fn warn_if_refused(umem: &str, asked: TxChecksum, granted: TxChecksum) {
    if granted != asked {
        tracing::warn!(umem, ?asked, "the kernel refused AF_XDP checksum requests; the engine completes checksums");
    }
}

/// Serve `opened` (the uplink's first queue with UDP GSO sockets beside it, and its
/// UDP GRO receiver, if asked).
///
/// # Errors
/// The receiver could not be opened (the ports are closed: without it the uplink
/// would receive nothing).
fn add_xdp_ports(
    spec: OpenSpec<XdpAttachment>,
    mut opened: Vec<XdpPort>,
    own_umem: bool,
    d: &mut Driver<Umems, NodePort>,
) -> Result<Bound, String> {
    let zero_copy = opened.first().is_some_and(|p| p.socket().zero_copy());
    let tx_checksum = opened.first().map_or(TxChecksum::Off, XdpPort::tx_checksum);
    if own_umem {
        warn_if_refused(&spec.ifname, spec.own_tx_checksum, tx_checksum);
    }
    if let (Some(stats), Some(first)) = (spec.udp_gso, opened.first_mut()) {
        // Without them the engine cuts super-packets into frames itself: slower, not wrong.
        match UdpGsoSender::open(&spec.ifname, stats) {
            Ok(sender) => first.set_udp_gso(sender),
            Err((what, e)) => {
                tracing::warn!(uplink = %spec.ifname, "UDP GSO sockets: {what}: {e}; the engine segments instead")
            }
        }
    }
    if let (Some(rx), Some(first)) = (spec.udp_rx, opened.first_mut()) {
        let receiver = match rx.tap {
            Some(ifindex) => open_tap(&spec.ifname, spec.worker, ifindex, rx),
            None => open_udp_receiver(&spec.ifname, rx),
        };
        match receiver {
            Ok(receiver) => first.set_udp_receiver(receiver),
            Err(e) => {
                for p in opened {
                    p.close(d.mem_mut());
                }
                return Err(e);
            }
        }
    }
    for p in opened {
        d.add_port(NodePort::Xdp(p));
    }
    Ok(Bound { zero_copy, own_umem, tx_checksum })
}

/// The uplink's receiver on a worker reading its VXLAN through a packet tap: the one a
/// predecessor handed over, else a new one.
fn open_tap(ifname: &str, worker: usize, ifindex: u32, rx: UdpRxSpec) -> Result<UdpReceiver, String> {
    let at = (rx.vtep, rx.port);
    let receiver = match rx.inherited {
        Some(fd) => {
            tracing::info!(uplink = %ifname, "packet tap taken over from the previous xlaned");
            UdpReceiver::adopt_tap(fd, ifname, ifindex, at, rx.mtu, rx.stats)
        }
        // One fanout group per interface: its index's low 16 bits, as for pods.
        #[expect(clippy::cast_possible_truncation, reason = "a group id is 16 bits; the index names the interface")]
        None => UdpReceiver::open_tap(ifname, ifindex, ifindex as u16, at, rx.mtu, rx.stats),
    }
    .map_err(|e| format!("{ifname}: {e}"))?;
    if let Some((what, e)) = receiver.gro_anchor_error().filter(|_| worker == 0) {
        tracing::warn!(
            uplink = %ifname,
            "no UDP socket on {}:{} beside the packet taps ({what}: {e}): a NIC's GRO will not merge the \
             uplink's datagrams into trains",
            rx.vtep,
            rx.port
        );
    }
    Ok(receiver)
}

/// The uplink's receiver on a worker reading its VXLAN through a UDP GRO socket: the
/// one a predecessor handed over, else a new one.
fn open_udp_receiver(ifname: &str, rx: UdpRxSpec) -> Result<UdpReceiver, String> {
    if let Some(sock) = rx.inherited {
        tracing::info!(uplink = %ifname, "UDP receive socket taken over from the previous xlaned");
        return Ok(UdpReceiver::adopt(sock, rx.vtep, rx.port, rx.mtu, rx.stats));
    }
    UdpReceiver::open(ifname, rx.vtep, rx.port, rx.mtu, rx.stats).map_err(|(what, e)| {
        let remedy = match e.raw_os_error() {
            // Only a local address receives: XDP steers by address, the kernel's
            // sockets by route.
            Some(libc::EADDRNOTAVAIL) => {
                " (the VTEP must be an address of this node for the uplink to be read through UDP sockets: \
                 add it, or use --uplink-rx packet or xdp)"
            }
            Some(libc::EADDRINUSE) => {
                " (another socket holds the VXLAN port, such as a kernel VXLAN device: remove it, or use \
                 --uplink-rx packet or xdp, which take the traffic before the kernel)"
            }
            _ => "",
        };
        format!("{ifname}: UDP receive socket on {}:{}: {what}: {e}{remedy}", rx.vtep, rx.port)
    })
}
