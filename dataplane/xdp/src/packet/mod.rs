//! A pod's veth read and written through an AF_PACKET socket with a virtio-net header,
//! as the engine's [`Port`]: the pod keeps its offloads (TSO, checksum offload), so its
//! bulk TCP arrives as 64 KiB super-packets instead of MTU-sized frames (issue #14).
//!
//! * Receive: through the socket's receive ring ([`ring`]: the kernel copies each frame
//!   into a shared slot, no syscall per burst): a frame that fits a buffer of the
//!   worker's memory (after [`RX_HEADROOM`], as an AF_XDP frame) and has no GSO is copied
//!   there (a partial checksum completed); a super-packet, or any frame larger than a
//!   slot, waits whole on the socket's queue and is read with `recvmsg` into a buffer and
//!   the matching slot of the driver's jumbo store beyond what the buffer holds, then
//!   recorded in the store. A socket inherited without a ring (from a process before
//!   rings) is read with `recvmmsg` of up to [`BURST`] messages the same way.
//! * Transmit: a burst is coalesced first (GRO: in-order segments of one flow become one
//!   super-packet with a GSO header); singles go out from the memory's buffers with an
//!   all-zero header, merged ones gathered from their headers (written per unit) and
//!   their segments' payloads where they lie in the buffers; one `sendmmsg` per batch.
//! * The host's stack must not also take the pod's frames (a packet tap does not steal
//!   them): attach [`HostStackBlock`](crate::attach::HostStackBlock) to the same veth end.
//!
//! The port keeps up to [`BURST`] buffers of the memory between calls, ready to receive
//! into (its "fill ring"); [`Port::close`] gives them back.

mod ring;
mod sock;

pub use sock::FanoutMode;

use crate::programs::PodFilter;
use arrayvec::ArrayVec;
use ring::{RxRing, Slot};
use sock::{Batch, RX_IOVS};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use xlane_engine::offload::{self, Coalesced, JUMBO_MAX, Jumbo, OffloadMeta, VIRTIO_NET_HDR_LEN};
use xlane_engine::{BURST, FrameMemory, Offloads, Packet, Port, PortCounters, bump};
use xlane_fib::PortId;

/// Where a received frame starts in its buffer (the room AF_XDP leaves,
/// `XDP_PACKET_HEADROOM`), so the pipeline can push outer headers in place.
pub const RX_HEADROOM: usize = crate::xsk::XDP_PACKET_HEADROOM as usize;

const _: () = assert!(RX_IOVS == 3);

/// What the port counts beyond [`PortCounters`]. Single writer (the port's worker),
/// read by anyone.
#[derive(Debug, Default)]
pub struct PacketStats {
    rx_malformed: AtomicU64,
    rx_truncated: AtomicU64,
    rx_oversize: AtomicU64,
    rx_no_buffer: AtomicU64,
    rx_kernel_dropped: AtomicU64,
    tx_errors: AtomicU64,
    gro_merged: AtomicU64,
    gro_segments: AtomicU64,
}

/// A snapshot of [`PacketStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStatsSnapshot {
    /// Received frames whose virtio-net header (or partial checksum) was refused.
    pub rx_malformed: u64,
    /// Received frames larger than the buffer and jumbo slot together (`MSG_TRUNC`).
    pub rx_truncated: u64,
    /// Super-packets (or frames larger than a buffer) received through
    /// [`Port::receive`], which has no jumbo store to put them in.
    pub rx_oversize: u64,
    /// Frames discarded because the memory had no free buffer to receive them into
    /// (the socket is drained anyway, as a NIC with an empty ring drops: a worker
    /// waiting on a readable socket must not spin).
    pub rx_no_buffer: u64,
    /// Frames the kernel dropped before the socket (its receive ring, or buffer, full;
    /// `PACKET_STATISTICS`, as of the last [`Port::refresh_stats`]).
    pub rx_kernel_dropped: u64,
    /// Sends the kernel refused for a reason other than a full socket (a header it
    /// rejects, EINVAL): each one frame or super-packet dropped.
    pub tx_errors: u64,
    /// Super-packets made by coalescing on transmit.
    pub gro_merged: u64,
    /// Segments that went into them.
    pub gro_segments: u64,
}

impl PacketStats {
    /// The current values.
    #[must_use]
    pub fn get(&self) -> PacketStatsSnapshot {
        PacketStatsSnapshot {
            rx_malformed: self.rx_malformed.load(Relaxed),
            rx_truncated: self.rx_truncated.load(Relaxed),
            rx_oversize: self.rx_oversize.load(Relaxed),
            rx_no_buffer: self.rx_no_buffer.load(Relaxed),
            rx_kernel_dropped: self.rx_kernel_dropped.load(Relaxed),
            tx_errors: self.tx_errors.load(Relaxed),
            gro_merged: self.gro_merged.load(Relaxed),
            gro_segments: self.gro_segments.load(Relaxed),
        }
    }
}

/// How a [`PacketPort`]'s socket hands it received frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxPath {
    /// A receive ring shared with the kernel ([`ring`]): no syscall, lock or skb per
    /// frame on the worker; 2 MiB of kernel memory per socket, held while idle.
    Ring,
    /// `recvmmsg` off the socket's queue: nothing held while idle; a syscall per burst
    /// and the queue's lock per frame. What a socket inherited from a process before
    /// rings is read with.
    Queue,
}

/// A receiving socket made ready ahead of its interface: its options set and, for
/// [`RxPath::Ring`], its receive ring set up and mapped.
/// [`PacketPort::open_ready`] binds it.
///
/// Made ahead because a ring's set-up waits for an RCU grace period (the kernel's
/// `packet_set_ring` calls `synchronize_net`): ~20 ms on this lab's VM, which must
/// fall neither on a pod's CNI ADD nor on a worker that stops forwarding meanwhile.
/// Several made at once share one grace period.
pub struct ReadySocket {
    fd: OwnedFd,
    ring: Option<Box<RxRing>>,
}

impl core::fmt::Debug for ReadySocket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadySocket").field("fd", &self.fd).field("ring", &self.ring).finish()
    }
}

impl ReadySocket {
    /// A socket (in the current network namespace) that will receive through `rx`.
    ///
    /// # Errors
    /// [`OpenError`] (its `ifindex` 0) with the failing step; nothing stays open.
    pub fn new(rx: RxPath) -> Result<Self, OpenError> {
        let ring = rx == RxPath::Ring;
        let fd = sock::prepare(true, ring).map_err(|(step, source)| OpenError { ifindex: 0, step, source })?;
        let ring = if ring {
            let mapped =
                RxRing::map(fd.as_fd()).map_err(|source| OpenError { ifindex: 0, step: "mmap(rx ring)", source })?;
            Some(Box::new(mapped))
        } else {
            None
        };
        Ok(Self { fd, ring })
    }

    /// How the socket will receive.
    #[must_use]
    pub fn rx_path(&self) -> RxPath {
        if self.ring.is_some() { RxPath::Ring } else { RxPath::Queue }
    }
}

/// Failure to open a [`PacketPort`].
#[derive(Debug, thiserror::Error)]
#[error("AF_PACKET port on ifindex {ifindex}: {step}: {source}")]
pub struct OpenError {
    /// Interface.
    pub ifindex: u32,
    /// The step that failed (a syscall or socket option).
    pub step: &'static str,
    /// The kernel's error.
    #[source]
    pub source: io::Error,
}

/// A merged super-packet's head: virtio-net header, then Ethernet, IPv4 and TCP headers
/// with options at their largest.
const HEAD: usize = VIRTIO_NET_HDR_LEN + 14 + 60 + 60;

/// Messages a receive sets up at least (see `PacketPort::rx_armed`).
const MIN_ARMED: usize = 8;

/// One worker's AF_PACKET socket on a pod's host-side veth end, serving pipeline port
/// `id`, over a memory whose buffers are `B`.
pub struct PacketPort<B> {
    id: PortId,
    fd: OwnedFd,
    ifindex: u32,
    fanout: FanoutMode,
    /// The socket's receive ring; `None` on a socket that only transmits, or one
    /// inherited from a process that read the socket's queue. Boxed: the port is a
    /// variant of xlaned's port enum, sized by its largest.
    ring: Option<Box<RxRing>>,
    batch: Box<Batch>,
    /// Buffers kept to receive into, one per message of a burst.
    rx_bufs: ArrayVec<B, BURST>,
    /// Messages to set up for the next `recvmmsg` (no ring): doubled while bursts fill them, halved
    /// while they stay mostly empty. Setting up all 64 on every poll of an idle pod
    /// cost more than the rest of the worker (perf: 13% of all samples in a TCP run).
    rx_armed: usize,
    /// Per merged super-packet of a burst: its virtio-net header, then its headers.
    heads: Box<[[u8; HEAD]; BURST]>,
    counters: Arc<PortCounters>,
    stats: Arc<PacketStats>,
}

impl<B> core::fmt::Debug for PacketPort<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PacketPort")
            .field("id", &self.id)
            .field("fd", &self.fd)
            .field("fanout", &self.fanout)
            .field("ring", &self.ring)
            .field("rx_bufs", &self.rx_bufs.len())
            .finish_non_exhaustive()
    }
}

/// What became of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// A complete frame (after its partial checksum is completed) in the buffer.
    Plain(usize, OffloadMeta),
    /// A super-packet, or a frame larger than the buffer: to the jumbo store.
    Super(usize, OffloadMeta),
    /// Dropped, counted in the named counter.
    Malformed,
    Truncated,
    Oversize,
}

/// Classify a received message: `total` bytes (header included), `flags` its
/// `msg_flags`, `cap` the bytes the buffer holds, `jumbo` whether a jumbo slot was there.
fn classify(hdr: &[u8], total: usize, flags: libc::c_int, cap: usize, jumbo: bool) -> Arrival {
    if flags & libc::MSG_TRUNC != 0 {
        return if jumbo { Arrival::Truncated } else { Arrival::Oversize };
    }
    let Some(len) = total.checked_sub(VIRTIO_NET_HDR_LEN) else { return Arrival::Malformed };
    let Ok(meta) = OffloadMeta::from_virtio(hdr) else { return Arrival::Malformed };
    if meta.check(len).is_err() {
        return Arrival::Malformed;
    }
    match (len <= cap && meta.gso.is_none(), jumbo) {
        (true, _) => Arrival::Plain(len, meta),
        (false, true) => Arrival::Super(len, meta),
        (false, false) => Arrival::Oversize,
    }
}

impl<B: Copy> PacketPort<B> {
    /// Open this worker's socket on the host-side veth end `ifindex` (in the current
    /// network namespace) in hash fanout group `fanout_group`: every worker serving the
    /// interface opens one with the same group id, and the kernel spreads flows across
    /// them. A group id names one interface's group within a network namespace (the
    /// kernel refuses a second interface joining it), e.g. the ifindex's low 16 bits.
    /// With `filter`, the socket takes only what the pod pinhole gives the engine (ARP,
    /// IPv4 to the cluster CIDR; [`socket_pod_filter`](crate::programs::socket_pod_filter)),
    /// the rest being the host's ([`HostStackBlock::pinhole`](crate::attach::HostStackBlock::pinhole)).
    ///
    /// # Errors
    /// [`OpenError`] with the failing step; nothing stays open.
    pub fn open(
        id: PortId,
        ifindex: u32,
        fanout_group: u16,
        filter: Option<&PodFilter>,
        rx: RxPath,
        counters: Arc<PortCounters>,
        stats: Arc<PacketStats>,
    ) -> Result<Self, OpenError> {
        let ready = ReadySocket::new(rx).map_err(|e| OpenError { ifindex, ..e })?;
        Self::open_ready(ready, id, ifindex, fanout_group, filter, counters, stats)
    }

    /// [`open`](Self::open) on a socket made ready beforehand.
    ///
    /// # Errors
    /// [`OpenError`] with the failing step; nothing stays open.
    pub fn open_ready(
        ready: ReadySocket,
        id: PortId,
        ifindex: u32,
        fanout_group: u16,
        filter: Option<&PodFilter>,
        counters: Arc<PortCounters>,
        stats: Arc<PacketStats>,
    ) -> Result<Self, OpenError> {
        let program = filter.map(crate::programs::socket_pod_filter);
        let ReadySocket { fd, ring } = ready;
        let fanout = sock::join(&fd, ifindex, Some((fanout_group, program.as_deref())))
            .map_err(|(step, source)| OpenError { ifindex, step, source })?;
        Ok(Self::with(id, fd, ifindex, fanout, ring, counters, stats))
    }

    /// Port `id` on a socket on `ifindex` another process opened and handed over
    /// ([`hand_over`](Self::hand_over)): its receive ring, if it has one, is mapped
    /// again and read from where the other process stopped.
    ///
    /// # Errors
    /// [`OpenError`] if the socket's ring cannot be mapped (not the shape this build
    /// makes).
    pub fn on(
        id: PortId,
        fd: OwnedFd,
        ifindex: u32,
        fanout: FanoutMode,
        counters: Arc<PortCounters>,
        stats: Arc<PacketStats>,
    ) -> Result<Self, OpenError> {
        let ring = match fanout {
            FanoutMode::TransmitOnly => None,
            _ => RxRing::inherit(fd.as_fd())
                .map_err(|source| OpenError { ifindex, step: "mmap(rx ring)", source })?
                .map(Box::new),
        };
        Ok(Self::with(id, fd, ifindex, fanout, ring, counters, stats))
    }

    fn with(
        id: PortId,
        fd: OwnedFd,
        ifindex: u32,
        fanout: FanoutMode,
        ring: Option<Box<RxRing>>,
        counters: Arc<PortCounters>,
        stats: Arc<PacketStats>,
    ) -> Self {
        Self {
            id,
            fd,
            ifindex,
            fanout,
            ring,
            batch: Batch::new(),
            rx_bufs: ArrayVec::new(),
            rx_armed: MIN_ARMED,
            heads: Box::new([[0; HEAD]; BURST]),
            counters,
            stats,
        }
    }

    /// A socket on `ifindex` that only transmits, for a worker that serves none of the
    /// interface's queues (an AF_XDP port with fewer queues than workers): frames the
    /// worker routes there are sent whole and complete (the port promises no offload,
    /// so the engine segments super-packets and completes checksums first), as
    /// copy-mode AF_XDP would (it copies each frame into an skb too).
    ///
    /// # Errors
    /// [`OpenError`] with the failing step; nothing stays open.
    pub fn open_transmit_only(
        id: PortId,
        ifindex: u32,
        counters: Arc<PortCounters>,
        stats: Arc<PacketStats>,
    ) -> Result<Self, OpenError> {
        let fd = sock::prepare(false, false).map_err(|(step, source)| OpenError { ifindex, step, source })?;
        sock::join(&fd, ifindex, None).map_err(|(step, source)| OpenError { ifindex, step, source })?;
        Ok(Self::with(id, fd, ifindex, FanoutMode::TransmitOnly, None, counters, stats))
    }

    /// Hand the socket over to another process (a hitless restart): a duplicate of it
    /// (its fanout group, filter, receive ring and queued frames go with it) and how it
    /// joined its group. The buffers it keeps to receive into are the application's: free frames
    /// in the other process's view of the memory.
    ///
    /// # Errors
    /// The descriptor could not be duplicated.
    pub fn hand_over(&self) -> io::Result<(OwnedFd, FanoutMode)> {
        Ok((self.fd.try_clone()?, self.fanout))
    }

    /// The interface.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// How the socket hands over received frames.
    #[must_use]
    pub fn rx_path(&self) -> RxPath {
        if self.ring.is_some() { RxPath::Ring } else { RxPath::Queue }
    }

    /// Whether the socket only transmits ([`open_transmit_only`](Self::open_transmit_only)).
    #[must_use]
    pub fn transmit_only(&self) -> bool {
        self.fanout == FanoutMode::TransmitOnly
    }

    /// How the socket joined its fanout group.
    #[must_use]
    pub fn fanout(&self) -> FanoutMode {
        self.fanout
    }

    /// The port's own counters.
    #[must_use]
    pub fn stats(&self) -> &Arc<PacketStats> {
        &self.stats
    }

    /// The socket.
    #[must_use]
    pub fn socket(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Take one frame off socket `fd`'s queue and drop it; false if none waits.
fn discard_one(fd: RawFd) -> bool {
    // Room for the virtio-net header, which the kernel insists on writing (a smaller
    // buffer is EINVAL); the frame's bytes are truncated away.
    let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
    // SAFETY: `hdr` is a live local of exactly the length passed, the whole buffer the
    // kernel may write; MSG_TRUNC only makes it report and discard the rest.
    let got = unsafe { libc::recv(fd, hdr.as_mut_ptr().cast(), hdr.len(), libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
    got >= 0
}

/// The frames a receive hands the caller: `pkts[..n]`.
struct Received<'a, B> {
    pkts: &'a mut [Packet<B>; BURST],
    n: usize,
}

/// Land message `slot` of a burst, received into buffer `b` (`buf`: its bytes after
/// [`RX_HEADROOM`]) and beyond it into the jumbo store's slot `slot`, as `arrival`
/// says: a plain frame (its checksum completed) to `out`; a super-packet's first part
/// moved in front of the rest in the store and the frame recorded there; the rest
/// counted. Returns whether the buffer went to `out`.
fn land<B: Copy>(
    arrival: Arrival,
    buf: &mut [u8],
    b: B,
    slot: usize,
    jumbo: Option<&mut Jumbo>,
    stats: &PacketStats,
    out: &mut Received<'_, B>,
) -> bool {
    match arrival {
        Arrival::Plain(len, meta) => {
            if offload::complete_checksum(&mut buf[..len], &meta).is_err() {
                bump(&stats.rx_malformed, 1);
                return false;
            }
            #[expect(clippy::cast_possible_truncation, reason = "within a buffer")]
            let p = Packet { buf: b, head: RX_HEADROOM as u32, len: len as u32 };
            out.pkts[out.n] = p;
            out.n += 1;
            return true;
        }
        Arrival::Super(whole, meta) => {
            let j = jumbo.expect("classified with a jumbo store");
            let in_buf = whole.min(buf.len());
            j.data_mut(slot)[..in_buf].copy_from_slice(&buf[..in_buf]);
            j.push(slot, out.n, whole, meta);
        }
        Arrival::Malformed => bump(&stats.rx_malformed, 1),
        Arrival::Truncated => bump(&stats.rx_truncated, 1),
        Arrival::Oversize => bump(&stats.rx_oversize, 1),
    }
    false
}

impl<B: Copy> PacketPort<B> {
    /// No buffer to receive into: take up to a burst of frames off the ring or socket
    /// and count them dropped, so the socket does not stay readable (a sleeping worker
    /// would wake for it over and over) and stale frames do not fill it.
    #[cold]
    fn discard_burst(&mut self) {
        let fd = self.fd.as_raw_fd();
        let mut n = 0;
        while n < BURST {
            let gone = match self.ring.as_mut() {
                None => discard_one(fd),
                Some(r) => {
                    let Some(slot) = r.peek() else { break };
                    if slot == Slot::Queued {
                        discard_one(fd);
                    }
                    r.release();
                    true
                }
            };
            if !gone {
                break;
            }
            n += 1;
        }
        bump(&self.stats.rx_no_buffer, n as u64);
    }

    /// One burst: plain frames to `out`, the rest to `jumbo` if given.
    fn receive_burst<M: FrameMemory<Buf = B>>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<B>; BURST],
        jumbo: Option<&mut Jumbo>,
    ) -> usize {
        while !self.rx_bufs.is_full() {
            match mem.alloc() {
                Some(b) => self.rx_bufs.push(b),
                None => break,
            }
        }
        let Some(cap) = mem.buffer_size().checked_sub(RX_HEADROOM).filter(|&c| c > 0 && c <= JUMBO_MAX) else {
            return 0;
        };
        if self.rx_bufs.is_empty() {
            self.discard_burst();
            return 0;
        }
        let (n, taken) = if self.ring.is_some() {
            self.receive_ring(mem, out, jumbo, cap)
        } else {
            self.receive_queue(mem, out, jumbo, cap)
        };
        // The buffers of plain frames now belong to the caller; keep the rest.
        if taken != 0 {
            let mut keep = 0;
            for i in 0..self.rx_bufs.len() {
                if taken & (1 << i) == 0 {
                    self.rx_bufs[keep] = self.rx_bufs[i];
                    keep += 1;
                }
            }
            self.rx_bufs.truncate(keep);
        }
        n
    }

    /// Up to a burst of frames off the receive ring. Returns the frames put in `out`
    /// and which of the kept buffers they took (bit i: `rx_bufs[i]`).
    fn receive_ring<M: FrameMemory<Buf = B>>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<B>; BURST],
        mut jumbo: Option<&mut Jumbo>,
        cap: usize,
    ) -> (usize, u64) {
        let Self { fd, ring, batch, rx_bufs, stats, .. } = self;
        let ring = ring.as_mut().expect("called with a ring");
        let fd = fd.as_raw_fd();
        let bufs: &[B] = rx_bufs;
        mem.with_buffers(bufs, |slices| {
            // Buffers are taken in order: `slices[out.n]` is the next free one.
            let mut out = Received { pkts: out, n: 0 };
            for k in 0..BURST {
                let n = out.n;
                if n == slices.len() {
                    break;
                }
                let Some(slot) = ring.peek() else { break };
                let buf = &mut slices[n][RX_HEADROOM..];
                match slot {
                    Slot::Whole { vnet, frame } => {
                        let total = VIRTIO_NET_HDR_LEN + frame.len();
                        match classify(vnet, total, 0, cap, jumbo.is_some()) {
                            Arrival::Plain(len, meta) => {
                                buf[..len].copy_from_slice(frame);
                                land(Arrival::Plain(len, meta), buf, bufs[n], k, None, stats, &mut out);
                            }
                            Arrival::Super(len, meta) => {
                                // Whole in the slot: straight to the store.
                                let j = jumbo.as_deref_mut().expect("classified with a jumbo store");
                                j.data_mut(k)[..len].copy_from_slice(frame);
                                j.push(k, n, len, meta);
                            }
                            other => {
                                land(other, buf, bufs[n], k, None, stats, &mut out);
                            }
                        }
                    }
                    Slot::Queued => {
                        batch.clear();
                        batch.push_rx(buf, jumbo.as_deref_mut().map(|j| &mut j.data_mut(k)[cap..]));
                        // SAFETY: the message points at a buffer lent for this closure
                        // and at a slot of `jumbo`, borrowed mutably by this function;
                        // neither is touched until the call returns.
                        let arrival = match unsafe { batch.recv(fd) } {
                            Ok(1) => {
                                let (total, flags) = batch.received(0);
                                classify(&batch.hdrs[0], total, flags, cap, jumbo.is_some())
                            }
                            // The kernel marks the slot only once the copy is queued.
                            _ => Arrival::Truncated,
                        };
                        let buf = &mut slices[n][RX_HEADROOM..];
                        land(arrival, buf, bufs[n], k, jumbo.as_deref_mut(), stats, &mut out);
                    }
                    Slot::Truncated => bump(&stats.rx_truncated, 1),
                    Slot::Malformed => bump(&stats.rx_malformed, 1),
                }
                ring.release();
            }
            // The first `n` buffers went to `out`.
            let n = out.n;
            (n, u64::MAX.checked_shr(u32::try_from(BURST - n).expect("at most BURST")).unwrap_or(0))
        })
    }

    /// One `recvmmsg` burst off the socket's queue (no ring). Returns as
    /// [`receive_ring`](Self::receive_ring) does.
    fn receive_queue<M: FrameMemory<Buf = B>>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<B>; BURST],
        mut jumbo: Option<&mut Jumbo>,
        cap: usize,
    ) -> (usize, u64) {
        let Self { fd, batch, rx_bufs, stats, rx_armed, .. } = self;
        let armed = (*rx_armed).min(rx_bufs.len());
        let (fd, bufs): (RawFd, &[B]) = (fd.as_raw_fd(), &rx_bufs[..armed]);
        let mut taken = 0u64;
        let n = mem.with_buffers(bufs, |slices| {
            batch.clear();
            match jumbo.as_deref_mut() {
                Some(j) => {
                    for (s, area) in slices.iter_mut().zip(j.data_areas()) {
                        batch.push_rx(&mut s[RX_HEADROOM..], Some(&mut area[cap..]));
                    }
                }
                None => {
                    for s in slices.iter_mut() {
                        batch.push_rx(&mut s[RX_HEADROOM..], None);
                    }
                }
            }
            // SAFETY: every message points at a buffer lent for this closure or at a slot
            // of `jumbo`, borrowed mutably by this function; neither is touched until the
            // call returns.
            let Ok(got) = (unsafe { batch.recv(fd) }) else {
                *rx_armed = (*rx_armed / 2).max(MIN_ARMED);
                return 0;
            };
            *rx_armed = if got >= armed {
                (armed * 2).min(BURST)
            } else if got * 4 < armed {
                (*rx_armed / 2).max(MIN_ARMED)
            } else {
                *rx_armed
            };
            let mut out = Received { pkts: out, n: 0 };
            for (i, s) in slices.iter_mut().enumerate().take(got) {
                let (total, flags) = batch.received(i);
                let arrival = classify(&batch.hdrs[i], total, flags, cap, jumbo.is_some());
                if land(arrival, &mut s[RX_HEADROOM..], bufs[i], i, jumbo.as_deref_mut(), stats, &mut out) {
                    taken |= 1 << i;
                }
            }
            out.n
        });
        (n, taken)
    }

    /// Send the messages set up in the batch, `weights[i]` frames each; returns the
    /// frames sent. A full socket or device (EAGAIN, ENOBUFS) ends the batch; another
    /// error drops its message (counted) and the rest are still tried.
    fn send_batch(&mut self, weights: &[u16]) -> usize {
        let fd = self.fd.as_raw_fd();
        let (mut at, mut sent) = (0, 0);
        while at < self.batch.len() {
            // SAFETY: the callers set up every message with frames that stay borrowed
            // (lent buffers, the heads, the caller's frame) until this returns.
            match unsafe { self.batch.send(fd, at) } {
                Ok(k) => {
                    sent += weights[at..at + k].iter().map(|&w| usize::from(w)).sum::<usize>();
                    at += k;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => break,
                Err(_) => {
                    bump(&self.stats.tx_errors, 1);
                    at += 1;
                }
            }
        }
        self.batch.clear();
        sent
    }

    /// Transmit up to [`BURST`] frames: coalesce, then send singles from their buffers
    /// and each merged super-packet gathered from its headers (in `heads`) and its
    /// segments' payloads. Releases every buffer; returns the frames sent.
    fn transmit_burst<M: FrameMemory<Buf = B>>(&mut self, mem: &mut M, pkts: &[Packet<B>]) -> usize {
        let bufs: ArrayVec<B, BURST> = pkts.iter().map(|p| p.buf).collect();
        let sent = mem.with_buffers(&bufs, |slices| {
            let frames: ArrayVec<&[u8], BURST> =
                slices.iter().zip(pkts).map(|(s, p)| &s[p.head as usize..(p.head + p.len) as usize]).collect();
            let mut units = [Coalesced::default(); BURST];
            let n = offload::coalesce(&frames, true, &mut units);
            self.send_units(&frames, None, &units[..n])
        });
        for b in bufs {
            mem.release(b);
        }
        sent
    }

    /// Send `units` of `frames` in one batch: singles as they are (with their metadata
    /// from `metas`, if given), each merged super-packet gathered from its headers
    /// (written to `heads`) and its segments' payloads. Returns the frames sent.
    fn send_units(&mut self, frames: &[&[u8]], metas: Option<&[OffloadMeta]>, units: &[Coalesced]) -> usize {
        let mut weights = [0u16; BURST];
        self.batch.clear();
        for (k, u) in units.iter().enumerate() {
            match u {
                Coalesced::Single(i) => {
                    weights[self.batch.len()] = 1;
                    match metas.map(|m| m[*i]).filter(|m| *m != OffloadMeta::default()) {
                        None => self.batch.push_plain(frames[*i]),
                        Some(meta) => {
                            let slot = self.batch.len();
                            meta.to_virtio(&mut self.batch.hdrs[slot]);
                            self.batch.push_with_hdr(slot, frames[*i]);
                        }
                    }
                }
                Coalesced::Merged(m) => {
                    let head = &mut self.heads[k];
                    let (vnet, hdrs) = head.split_at_mut(VIRTIO_NET_HDR_LEN);
                    let Ok(meta) = m.write_header(frames, hdrs) else {
                        bump(&self.stats.tx_errors, 1);
                        continue;
                    };
                    meta.to_virtio(vnet);
                    bump(&self.stats.gro_merged, 1);
                    bump(&self.stats.gro_segments, m.segments() as u64);
                    #[expect(clippy::cast_possible_truncation, reason = "at most BURST segments")]
                    let w = m.segments() as u16;
                    weights[self.batch.len()] = w;
                    // Each unit has its own head, untouched until the batch is sent; the
                    // payloads are the caller's frames. `write_header` checked that
                    // `frames` holds every member.
                    let head: &[u8] = &self.heads[k][..VIRTIO_NET_HDR_LEN + m.header_len()];
                    self.batch.push_gathered(head, m.payloads(frames).map_while(Result::ok));
                }
            }
        }
        self.send_batch(&weights)
    }
}

impl<M: FrameMemory> Port<M> for PacketPort<M::Buf> {
    fn id(&self) -> PortId {
        self.id
    }

    fn counters(&self) -> &PortCounters {
        &self.counters
    }

    fn offloads(&self) -> Offloads {
        if self.transmit_only() {
            // Beside AF_XDP ports of the same interface: what they take, complete frames.
            return Offloads::default();
        }
        Offloads { partial_checksum: true, tcp_segmentation: true, ..Offloads::default() }
    }

    /// Without a jumbo store: super-packets and frames larger than a buffer are dropped
    /// (counted `rx_oversize`). The driver calls
    /// [`receive_offloaded`](Port::receive_offloaded) instead.
    fn receive(&mut self, mem: &mut M, out: &mut [Packet<M::Buf>; BURST]) -> usize {
        if self.transmit_only() {
            return 0;
        }
        self.receive_burst(mem, out, None)
    }

    fn receive_offloaded(&mut self, mem: &mut M, out: &mut [Packet<M::Buf>; BURST], jumbo: &mut Jumbo) -> usize {
        self.receive_burst(mem, out, Some(jumbo))
    }

    fn transmit_offloaded(&mut self, _mem: &mut M, frame: &[u8], meta: &OffloadMeta) -> bool {
        self.send_units(&[frame], Some(std::slice::from_ref(meta)), &[Coalesced::Single(0)]) == 1
    }

    fn transmit_offloaded_burst(&mut self, _mem: &mut M, frames: &[&[u8]], metas: &[OffloadMeta]) -> usize {
        let mut units = [Coalesced::default(); BURST];
        let n = offload::coalesce_whole(frames, metas, &mut units);
        self.send_units(frames, Some(metas), &units[..n])
    }

    fn transmit(&mut self, mem: &mut M, pkts: &[Packet<M::Buf>]) -> usize {
        pkts.chunks(BURST).map(|c| self.transmit_burst(mem, c)).sum()
    }

    fn close(mut self, mem: &mut M) {
        for b in self.rx_bufs.drain(..) {
            mem.release(b);
        }
    }

    fn wait_fd(&self) -> Option<RawFd> {
        (!self.transmit_only()).then(|| self.fd.as_raw_fd())
    }

    fn refresh_stats(&self) {
        if let Ok(d) = sock::take_drops(self.fd.as_raw_fd()) {
            bump(&self.stats.rx_kernel_dropped, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSO: [u8; 10] = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];

    #[test]
    fn messages_are_classified() {
        let plain = [0u8; 10];
        assert_eq!(classify(&plain, 10 + 60, 0, 1792, true), Arrival::Plain(60, OffloadMeta::default()));
        assert_eq!(classify(&plain, 10 + 1792, 0, 1792, true), Arrival::Plain(1792, OffloadMeta::default()));
        assert!(matches!(classify(&plain, 10 + 1793, 0, 1792, true), Arrival::Super(1793, _)));
        assert_eq!(classify(&plain, 10 + 1793, 0, 1792, false), Arrival::Oversize);
        let tso = OffloadMeta::from_virtio(&TSO).unwrap();
        assert_eq!(classify(&TSO, 10 + 600, 0, 1792, true), Arrival::Super(600, tso), "GSO always to the store");
        assert_eq!(classify(&TSO, 10 + 65_000, 0, 1792, true), Arrival::Super(65_000, tso));
        assert_eq!(classify(&TSO, 10 + 65_000, 0, 1792, false), Arrival::Oversize);
        assert_eq!(classify(&TSO, 10 + 65_000, libc::MSG_TRUNC, 1792, true), Arrival::Truncated);
        assert_eq!(classify(&TSO, 10 + 40, 0, 1792, true), Arrival::Malformed, "checksum beyond the frame");
        assert_eq!(classify(&TSO, 9, 0, 1792, true), Arrival::Malformed, "shorter than the header");
        let mut bad = TSO;
        bad[0] = 0x08;
        assert_eq!(classify(&bad, 10 + 600, 0, 1792, true), Arrival::Malformed, "unknown flag");
        bad = TSO;
        bad[4..6].fill(0);
        assert_eq!(classify(&bad, 10 + 600, 0, 1792, true), Arrival::Malformed, "GSO size 0");
    }
}
