//! An AF_XDP socket on one queue of an interface, as the engine's [`Port`]: receive
//! restocks the fill ring at once, transmit drains a full TX ring before giving up,
//! service keeps the fill ring at its target, close takes every frame back. The socket
//! lives in one UMEM of its worker's [`Umems`]; frames of another UMEM sent to it are
//! copied into its own first. An uplink's port may also send encapsulated super-packets
//! through UDP GSO sockets ([`XdpPort::set_udp_gso`]), and receive through a UDP GRO
//! socket instead of its AF_XDP socket ([`XdpPort::set_udp_receiver`]).

use crate::attach::XdpAttachment;
use crate::udp_gro::UdpReceiver;
use crate::udp_gso::UdpGsoSender;
use crate::xsk::handover::SocketHandover;
use crate::xsk::{BindMode, PreparedSocket, SocketStats, TxChecksum, Umem, UmemId, Umems, XskError, XskPort};
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use xlane_engine::offload::{Jumbo, OffloadMeta, PartialCsum};
use xlane_engine::{BURST, Offloads, Packet, Port, PortCounters, bump};
use xlane_fib::PortId;

/// Wakeups per TX flush: copy mode sends 32 descriptors per wakeup, so 8 cover a burst
/// of 64 with room for backlog.
const TX_FLUSH_WAKEUPS: u32 = 8;

/// The kernel's statistics of one socket (`XDP_STATISTICS`), refreshed about once a
/// second by the worker and read by the control thread.
#[derive(Debug, Default)]
pub struct KernelStats {
    rx_dropped: AtomicU64,
    rx_invalid_descs: AtomicU64,
    tx_invalid_descs: AtomicU64,
    rx_ring_full: AtomicU64,
    rx_fill_ring_empty_descs: AtomicU64,
    tx_ring_empty_descs: AtomicU64,
}

impl KernelStats {
    /// The last refreshed values.
    #[must_use]
    pub fn get(&self) -> SocketStats {
        SocketStats {
            rx_dropped: self.rx_dropped.load(Relaxed),
            rx_invalid_descs: self.rx_invalid_descs.load(Relaxed),
            tx_invalid_descs: self.tx_invalid_descs.load(Relaxed),
            rx_ring_full: self.rx_ring_full.load(Relaxed),
            rx_fill_ring_empty_descs: self.rx_fill_ring_empty_descs.load(Relaxed),
            tx_ring_empty_descs: self.tx_ring_empty_descs.load(Relaxed),
        }
    }

    fn set(&self, s: &SocketStats) {
        self.rx_dropped.store(s.rx_dropped, Relaxed);
        self.rx_invalid_descs.store(s.rx_invalid_descs, Relaxed);
        self.tx_invalid_descs.store(s.tx_invalid_descs, Relaxed);
        self.rx_ring_full.store(s.rx_ring_full, Relaxed);
        self.rx_fill_ring_empty_descs.store(s.rx_fill_ring_empty_descs, Relaxed);
        self.tx_ring_empty_descs.store(s.tx_ring_empty_descs, Relaxed);
    }
}

fn reserve_for(sockets: usize) -> usize {
    BURST * sockets.clamp(1, 16)
}

/// Errors opening an [`XdpPort`].
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The socket could not be opened or bound.
    #[error(transparent)]
    Socket(#[from] XskError),
    /// The XSKMAP refused the socket.
    #[error("XSKMAP insert for {ifname} queue {queue}: {source}")]
    Steer {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// One AF_XDP socket serving pipeline port `id` on one queue.
#[derive(Debug)]
pub struct XdpPort {
    id: PortId,
    xsk: XskPort,
    /// The UMEM of its worker's set the socket is bound in.
    umem: UmemId,
    attach: Arc<XdpAttachment>,
    /// Frames to keep in the fill ring: the first target, doubled (up to the ring's
    /// size) each time a receive finds the ring run dry, within the UMEM's allowance.
    fill_target: u32,
    /// The first target (the growth above it goes back to the UMEM at close).
    fill_base: u32,
    counters: Arc<PortCounters>,
    kernel: Arc<KernelStats>,
    /// On an uplink: sends encapsulated super-packets through the host's stack.
    udp_gso: Option<Box<UdpGsoSender>>,
    /// On an uplink without an XDP program: where its VXLAN traffic arrives (the AF_XDP
    /// socket then only transmits).
    udp_rx: Option<Box<UdpReceiver>>,
    /// The checksum requests its UMEM carries (frames may be sent partial).
    tx_checksum: TxChecksum,
}

/// An [`XdpPort`] on its way to another process.
#[derive(Debug)]
pub struct PortHandover {
    /// The index of its UMEM in the worker's set.
    pub umem: u8,
    /// The socket.
    pub socket: SocketHandover,
    /// Its fill target, grown under bursts.
    pub fill_target: u32,
    /// Its first fill target.
    pub fill_base: u32,
    /// The UDP GRO socket it received through (an uplink without XDP), to
    /// [`UdpReceiver::adopt`].
    pub udp_rx: Option<OwnedFd>,
}

/// What a queue's socket serves, beside the socket itself.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Pipeline port id.
    pub id: PortId,
    /// The interface's XDP program (its XSKMAP steers the queue to the socket).
    pub attach: Arc<XdpAttachment>,
    /// Frames to keep in the fill ring.
    pub fill_target: u32,
    /// The port's counters on this worker.
    pub counters: Arc<PortCounters>,
    /// The kernel's socket statistics on this worker.
    pub kernel: Arc<KernelStats>,
}

impl XdpPort {
    /// Open a socket on `ifname` queue `queue` in UMEM `umem` of `umems`, stock its fill
    /// ring and steer the queue's traffic to it as `spec` says.
    ///
    /// # Errors
    /// [`OpenError`]; nothing stays open.
    pub fn open(
        umems: &mut Umems,
        umem: UmemId,
        ifname: &str,
        queue: u32,
        bind: BindMode,
        spec: QueueSpec,
    ) -> Result<Self, OpenError> {
        let xsk = umems.get_mut(umem).open_port(ifname, queue, bind)?;
        Self::serve(umems, umem, xsk, spec)
    }

    /// The same for a socket prepared in UMEM `umem` and bound since, off the worker
    /// (see [`PreparedSocket`]).
    ///
    /// # Errors
    /// [`OpenError`]; nothing stays open.
    pub fn adopt(umems: &mut Umems, umem: UmemId, socket: PreparedSocket, spec: QueueSpec) -> Result<Self, OpenError> {
        let xsk = umems.get_mut(umem).adopt_port(socket)?;
        Self::serve(umems, umem, xsk, spec)
    }

    fn serve(umems: &mut Umems, umem_id: UmemId, mut xsk: XskPort, spec: QueueSpec) -> Result<Self, OpenError> {
        let QueueSpec { id, attach, fill_target, counters, kernel } = spec;
        let umem = umems.get_mut(umem_id);
        let tx_checksum = umem.tx_checksum();
        // A socket taken over from another process comes with its ring stocked.
        let missing = fill_target.saturating_sub(Umem::fill_level(&xsk));
        umem.refill(&mut xsk, missing, 0);
        if let Err(source) = attach.insert_socket(xsk.queue(), xsk.fd()) {
            let (ifname, queue) = (xsk.ifname().to_owned(), xsk.queue());
            umem.close_port(xsk);
            return Err(OpenError::Steer { ifname, queue, source });
        }
        Ok(Self {
            id,
            xsk,
            umem: umem_id,
            attach,
            fill_target,
            fill_base: fill_target,
            counters,
            kernel,
            udp_gso: None,
            udp_rx: None,
            tx_checksum,
        })
    }

    /// Hand the port over to another process (see [`crate::xsk::handover`]): its
    /// socket, the UMEM it is in, its fill target and the UDP GRO socket it receives
    /// through. The UDP GSO sockets stay (the new process opens its own: they hold
    /// nothing in flight). Datagrams the receiver read and has not handed out are not in
    /// the handover: [`hold_udp_reads`](Self::hold_udp_reads) first, and forward until
    /// none is [`udp_pending`](Self::udp_pending).
    ///
    /// # Errors
    /// A descriptor could not be duplicated.
    pub fn hand_over(&self) -> Result<PortHandover, XskError> {
        let udp_rx =
            self.udp_rx.as_deref().map(UdpReceiver::hand_over).transpose().map_err(|source| XskError::Socket {
                step: "dup UDP socket",
                ifname: self.xsk.ifname().to_owned(),
                queue: self.xsk.queue(),
                source,
            })?;
        Ok(PortHandover {
            umem: self.umem.index(),
            socket: self.xsk.hand_over()?,
            fill_target: self.fill_target,
            fill_base: self.fill_base,
            udp_rx,
        })
    }

    /// See [`UdpReceiver::hold_reads`] (nothing without a receiver).
    pub fn hold_udp_reads(&mut self, hold: bool) {
        if let Some(rx) = self.udp_rx.as_deref_mut() {
            rx.hold_reads(hold);
        }
    }

    /// Whether its receiver holds datagrams not handed out yet.
    #[must_use]
    pub fn udp_pending(&self) -> bool {
        self.udp_rx.as_deref().is_some_and(UdpReceiver::pending)
    }

    /// Before a handover: stock the fill ring beyond its target, with up to `budget`
    /// frames more (never past the ring, keeping the UMEM's reserve), so that the queue
    /// keeps receiving while no process serves it. Returns how many were given.
    pub fn stock_for_handover(&mut self, umems: &mut Umems, budget: u32) -> u32 {
        if self.fill_base == 0 {
            // It receives nothing (an uplink read through UDP sockets).
            return 0;
        }
        let umem = umems.get_mut(self.umem);
        let room = umem.settings().fill_ring.saturating_sub(Umem::fill_level(&self.xsk));
        let reserve = Self::reserve(umem);
        umem.refill(&mut self.xsk, room.min(budget), reserve)
    }

    /// A port another process handed over, in the UMEM set it handed over too, serving
    /// as `spec` says on the rings as they stand. The queue's XSKMAP entry is written
    /// again (it already names the socket; an inherited map keeps it).
    ///
    /// # Errors
    /// [`OpenError`]: the UMEM or the rings do not fit, or the XSKMAP refused.
    pub fn take_over(umems: &mut Umems, h: PortHandover, spec: QueueSpec) -> Result<Self, OpenError> {
        let umem = UmemId::from_index(h.umem);
        if !umems.contains(umem) {
            return Err(OpenError::Socket(XskError::Settings("a port handed over in a UMEM that was not")));
        }
        let xsk = umems.get_mut(umem).take_over_port(h.socket)?;
        let mut port = Self::serve(umems, umem, xsk, QueueSpec { fill_target: h.fill_base, ..spec })?;
        port.fill_target = h.fill_target.max(h.fill_base);
        Ok(port)
    }

    /// Have encapsulated super-packets routed here sent by `sender` (the port then
    /// promises [`Offloads::tunnel_segmentation`]): an uplink's.
    pub fn set_udp_gso(&mut self, sender: UdpGsoSender) {
        self.udp_gso = Some(Box::new(sender));
    }

    /// Receive through `receiver` instead of the AF_XDP socket: an uplink with no XDP
    /// program (the port then takes frames larger than a buffer into the jumbo store).
    pub fn set_udp_receiver(&mut self, receiver: UdpReceiver) {
        self.udp_rx = Some(Box::new(receiver));
    }

    /// Transmit packets of this port's UMEM (addresses in it): as many as the TX ring
    /// takes after one drain, the rest released. Returns how many were queued.
    fn transmit_own(&mut self, umem: &mut Umem, pkts: &[Packet<u64>], csum: Option<PartialCsum>) -> usize {
        let put = |umem: &mut Umem, xsk: &mut XskPort, pkts: &[Packet<u64>]| match csum {
            None => umem.transmit(xsk, pkts),
            Some(c) => umem.transmit_partial(xsk, pkts, c),
        };
        let mut sent = put(umem, &mut self.xsk, pkts);
        if sent < pkts.len() {
            // Ring full: let the kernel drain it, take back completed frames, retry.
            self.xsk.flush_tx(TX_FLUSH_WAKEUPS);
            umem.reap_completions(&mut self.xsk);
            sent += put(umem, &mut self.xsk, &pkts[sent..]);
        }
        for p in &pkts[sent..] {
            umem.release(p.buf);
        }
        self.xsk.flush_tx(TX_FLUSH_WAKEUPS);
        sent
    }

    /// Transmit `pkts` (their checksums at `csum` partial, if given): frames of another
    /// UMEM copied into this port's first.
    fn transmit_with(&mut self, umems: &mut Umems, pkts: &[Packet<u64>], csum: Option<PartialCsum>) -> usize {
        let id = self.umem;
        // Frames of the shared UMEM to a socket in it (every port but a zero-copy
        // uplink's): by descriptor, as they are.
        if id.is_shared() && pkts.iter().all(|p| UmemId::of(p.buf).is_shared()) {
            return self.transmit_own(umems.get_mut(id), pkts, csum);
        }
        // Otherwise frames of another UMEM are copied into this one first, in order; a
        // frame this UMEM has no room for is dropped (counted by the driver).
        assert!(pkts.len() <= BURST, "bursts are at most {BURST} frames");
        let mut own = [Packet::default(); BURST];
        let (mut n, mut copied) = (0, 0);
        for p in pkts {
            let q = if UmemId::of(p.buf) == id {
                Some(*p)
            } else {
                let q = umems.copy_into(*p, id);
                copied += u64::from(q.is_some());
                q
            };
            if let Some(q) = q {
                own[n] = Packet { buf: UmemId::address(q.buf), ..q };
                n += 1;
            }
        }
        bump(&self.counters.tx_copied, copied);
        self.transmit_own(umems.get_mut(id), &own[..n], csum)
    }

    /// After a receive took frames: give the kernel new ones at once (a fill ring left
    /// short while other ports are processed is where frames get dropped under load).
    fn restock(&mut self, umem: &mut Umem) {
        if self.xsk.fill_pending() == 0 {
            self.grow(umem);
        }
        let level = Umem::fill_level(&self.xsk);
        if level < self.fill_target {
            umem.refill(&mut self.xsk, self.fill_target - level, BURST);
        }
    }

    /// The ring ran dry (the kernel took every frame before the worker came back, and
    /// drops what arrives meanwhile): double the target, up to the ring's size, if the
    /// UMEM's growth allowance has the frames. Pod ports start at 256 so that a UMEM
    /// holds a node's pods; the few that see bursts grow.
    #[cold]
    fn grow(&mut self, umem: &mut Umem) {
        let max = umem.settings().fill_ring;
        let by = self.fill_target.min(max.saturating_sub(self.fill_target));
        if by > 0 && umem.grow_fill(by as usize) {
            self.fill_target += by;
        }
    }

    /// The checksum requests its UMEM carries: frames may be sent to it partial.
    #[must_use]
    pub fn tx_checksum(&self) -> TxChecksum {
        self.tx_checksum
    }

    /// Frames the fill ring is kept at now (grown from the first target under bursts).
    #[must_use]
    pub fn fill_target(&self) -> u32 {
        self.fill_target
    }

    /// The socket.
    #[must_use]
    pub fn socket(&self) -> &XskPort {
        &self.xsk
    }

    /// Frames received from its UMEM are named by their address in the set.
    fn tag_received(&self, out: &mut [Packet<u64>]) {
        if !self.umem.is_shared() {
            for p in out {
                p.buf = self.umem.tag(p.buf);
            }
        }
    }

    /// Frames kept off the fill rings so TX completions can lag: a burst per socket,
    /// capped so a node with a hundred pods does not park thousands of frames.
    fn reserve(umem: &Umem) -> usize {
        reserve_for(umem.open_ports())
    }

    /// Free frames `umem` needs to open `queues` more sockets that each keep
    /// `fill_target` frames in their fill ring, with the reserve still kept.
    #[must_use]
    pub fn frames_to_open(umem: &Umem, fill_target: u32, queues: usize) -> usize {
        Self::frames_for(umem.open_ports(), fill_target, queues)
    }

    /// [`frames_to_open`](Self::frames_to_open) in a UMEM with `open` sockets already
    /// (0: one about to be made for these).
    #[must_use]
    pub fn frames_for(open: usize, fill_target: u32, queues: usize) -> usize {
        fill_target as usize * queues + reserve_for(open + queues)
    }
}

impl Port<Umems> for XdpPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn counters(&self) -> &PortCounters {
        &self.counters
    }

    fn offloads(&self) -> Offloads {
        Offloads {
            tunnel_segmentation: self.udp_gso.is_some(),
            // Copy-mode sockets are bound with XDP_USE_SG; only a multi-buffer program
            // (the uplink's) hands them packets of several buffers, so a pod's port
            // keeps the plain receive.
            large_frames: (!self.xsk.zero_copy() && self.attach.multi_buffer()) || self.udp_rx.is_some(),
            tx_checksum: self.tx_checksum != TxChecksum::Off,
            ..Offloads::default()
        }
    }

    fn receive_offloaded(&mut self, umems: &mut Umems, out: &mut [Packet<u64>; BURST], jumbo: &mut Jumbo) -> usize {
        if let Some(rx) = self.udp_rx.as_deref_mut() {
            umems.get_mut(self.umem).reap_completions(&mut self.xsk);
            return rx.receive(umems, out, Some(jumbo));
        }
        let umem = umems.get_mut(self.umem);
        umem.reap_completions(&mut self.xsk);
        let n = umem.receive_large(&mut self.xsk, out, jumbo);
        if n > 0 || !jumbo.is_empty() {
            self.restock(umem);
        }
        self.tag_received(&mut out[..n]);
        n
    }

    fn transmit_offloaded(&mut self, _umems: &mut Umems, frame: &[u8], meta: &OffloadMeta) -> bool {
        self.udp_gso.as_mut().is_some_and(|s| s.send(frame, meta).is_ok())
    }

    fn receive(&mut self, umems: &mut Umems, out: &mut [Packet<u64>; BURST]) -> usize {
        if let Some(rx) = self.udp_rx.as_deref_mut() {
            umems.get_mut(self.umem).reap_completions(&mut self.xsk);
            return rx.receive(umems, out, None);
        }
        let umem = umems.get_mut(self.umem);
        umem.reap_completions(&mut self.xsk);
        let n = umem.receive(&mut self.xsk, out);
        if n > 0 {
            self.restock(umem);
        }
        self.tag_received(&mut out[..n]);
        n
    }

    fn transmit(&mut self, umems: &mut Umems, pkts: &[Packet<u64>]) -> usize {
        self.transmit_with(umems, pkts, None)
    }

    fn transmit_partial(&mut self, umems: &mut Umems, pkts: &[Packet<u64>], csum: PartialCsum) -> usize {
        self.transmit_with(umems, pkts, Some(csum))
    }

    fn service(&mut self, umems: &mut Umems) {
        let umem = umems.get_mut(self.umem);
        umem.reclaim_closed();
        let level = Umem::fill_level(&self.xsk);
        if level < self.fill_target {
            let reserve = Self::reserve(umem);
            umem.refill(&mut self.xsk, self.fill_target - level, reserve);
        }
    }

    fn close(self, umems: &mut Umems) {
        // Stop steering first so the kernel passes the queue's traffic on, then close.
        let _ = self.attach.remove_socket(self.xsk.queue());
        let umem = umems.get_mut(self.umem);
        umem.shrink_fill((self.fill_target - self.fill_base) as usize);
        // Off the worker: the close waits out in-flight receives (see `closer`).
        umem.close_port_in_background(self.xsk);
        umems.remove_if_unused(self.umem);
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.udp_rx.as_deref().map_or_else(|| self.xsk.poll_fd(), UdpReceiver::fd))
    }

    fn prepare_sleep(&mut self) -> bool {
        // Make sure the kernel has frames to receive into and knows it.
        if self.xsk.fill_needs_wakeup() {
            self.xsk.kick_tx();
        }
        false
    }

    fn refresh_stats(&self) {
        if let Ok(s) = self.xsk.stats() {
            self.kernel.set(&s);
        }
        if let Some(rx) = self.udp_rx.as_deref() {
            rx.refresh_stats();
        }
    }
}
