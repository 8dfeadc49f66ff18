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
mod rx;
mod sock;
mod tap;

pub use sock::FanoutMode;
pub use tap::UplinkTap;
pub(crate) use tap::{Scattered, TapDrop};

use crate::programs::PodFilter;
use arrayvec::ArrayVec;
use ring::{RxRing, Slots};
use sock::{Batch, RX_IOVS};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use xlane_engine::offload::{self, Coalesced, Jumbo, OffloadMeta, VIRTIO_NET_HDR_LEN};
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
        let fd = sock::prepare(true, ring.then_some(Slots::POD)).map_err(|(step, source)| OpenError {
            ifindex: 0,
            step,
            source,
        })?;
        let ring = if ring {
            let mapped = RxRing::map(fd.as_fd(), Slots::POD).map_err(|source| OpenError {
                ifindex: 0,
                step: "mmap(rx ring)",
                source,
            })?;
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
            _ => RxRing::inherit(fd.as_fd(), Slots::POD)
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
        let fd = sock::prepare(false, None).map_err(|(step, source)| OpenError { ifindex, step, source })?;
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

impl<B: Copy> PacketPort<B> {
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
