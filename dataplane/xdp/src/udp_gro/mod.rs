//! The uplink's VXLAN traffic received through a UDP socket with `UDP_GRO`, instead of
//! an XDP program and AF_XDP (`xlaned --uplink-rx udp`).
//!
//! Any XDP program on a veth (or a virtio-net NIC, which then drops LRO) makes the
//! kernel cut every GSO packet in front of it: a peer's 64 KiB UDP GSO send crosses
//! the underlay whole but reaches xlane's AF_XDP socket as ~45 datagrams, each its own
//! skb, XDP run and copy (kernel VXLAN on the same veth: 10.8 → 4.7 Gbit/s with the
//! pinhole attached; perf-lab/RESULTS.md). With no program on the uplink, such a send
//! stays one skb up to a socket that accepts GRO'd datagrams (`UDP_GRO`), and arrives
//! in one `recvmsg` with its segment size in a control message.
//!
//! The same receiver reads a packet tap on the uplink instead (`xlaned --uplink-rx
//! packet`, [`UdpReceiver::open_tap`], [`crate::packet::UplinkTap`]): the tap sees each
//! frame before the kernel's IP and UDP receive, which a tcx program then keeps from
//! the frame; a super-packet arrives whole there too. What the tap reads is staged as a
//! socket's messages are and handed out alike.
//!
//! Every datagram reaches the pipeline behind a synthesized outer Ethernet/IPv4/UDP
//! header (source from the message's address, destination the bound VTEP address and
//! port), so it is decapsulated as a frame from the wire is. The inner checksums are
//! untouched: GRO in front of a pod verifies them before it merges. Two ways in:
//!
//! - **Scattered into jumbo slots** where the uplink's datagrams are larger than a frame
//!   (jumbo underlays): each message is read across [`SLOTS_PER_MESSAGE`] slots, one
//!   iovec of the uplink's datagram size S (MTU − 28) each, after room for the outer
//!   header. A peer of the same MTU sends trains of S-byte datagrams, so datagram k of a
//!   message lands whole in its k-th slot and is handed out where it lies: no copy.
//!   A message of another segment size is gathered into a staging area and handed out
//!   as below; a single small datagram is copied into a frame.
//! - **Staged**: a batch of messages is read whole into 64 KiB staging areas (a
//!   message's segment count is not known until it arrives), then each datagram is
//!   copied into a frame (or a jumbo slot). The batch is 32 messages while they are
//!   single datagrams (small packets: fewer system calls) and 4 once they are trains
//!   (what waits in the staging areas stays in the cache until it is copied).
//!
//! The sockets of a node's workers share the port (`SO_REUSEPORT`): the kernel spreads
//! flows across them by hash, as RSS spreads them across NIC queues.

mod outer;
mod stats;
mod tap_rx;

pub use stats::{UdpRxStats, UdpRxTotals};

use crate::packet::UplinkTap;
use crate::sys::{self, set_socket_buffer, setsockopt_int};
use arrayvec::ArrayVec;
use outer::{frame_packet, record_in_place, write_datagram};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use xlane_engine::offload::{JUMBO_MAX, Jumbo, OffloadMeta};
use xlane_engine::port::bump;
use xlane_engine::{BURST, FrameMemory, Packet};

/// Bytes of the outer header written in front of each datagram: Ethernet, IPv4, UDP.
pub const OUTER: usize = 14 + 20 + 8;
/// Where a datagram's outer header starts in a frame: room in front for the outer
/// headers of a frame the pipeline sends on (transit), as AF_XDP leaves.
const FRAME_HEAD: usize = 256;
/// Messages one `recvmmsg` reads into the staging areas: at most, and while messages
/// are single datagrams.
const MESSAGES: usize = 32;
/// ... and once they are trains.
const TRAIN_BATCH: usize = 4;
/// A message's staging area: the largest GRO'd skb (64 KiB) with room to spare, so a
/// truncation means a bug (counted), not a normal event.
const STAGE: usize = 65_536 + 4_096;
/// The socket's receive buffer: a few GRO'd messages per worker in flight.
const RECEIVE_BUFFER: libc::c_int = 16 << 20;

/// One message read and not yet handed out in full (in the staging area of its index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Message {
    /// Where its payload starts in its staging area.
    pub(crate) start: usize,
    /// Bytes of payload.
    pub(crate) len: usize,
    /// Bytes per datagram (the last may be shorter).
    pub(crate) segment: usize,
    pub(crate) src: Ipv4Addr,
    pub(crate) src_port: u16,
}

impl Message {
    /// Whether it is one datagram (not a GRO'd train).
    pub(crate) fn single(&self) -> bool {
        self.segment >= self.len
    }

    /// Whether read across slots of `size` bytes each, datagram k lands whole in slot k:
    /// a train of `size`-byte datagrams (a peer of the same MTU), or one datagram that
    /// fits a slot.
    pub(crate) fn lands_in_slots(&self, size: usize) -> bool {
        self.segment == size || (self.single() && self.len <= size)
    }
}

/// Control buffer of one message: room for the `UDP_GRO` segment size.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 64]);

/// Where a [`UdpReceiver`] reads.
#[derive(Debug)]
enum Source {
    /// A UDP socket with `UDP_GRO` bound to the VTEP's address and VXLAN port.
    Socket(OwnedFd),
    /// A packet tap on the uplink, and beside it a UDP socket as [`Source::Socket`]'s
    /// that receives nothing (the tcx block drops the traffic after the tap) but makes
    /// a NIC's GRO merge the datagrams into trains: the kernel merges UDP only for a
    /// socket that asked (`udp_gro_receive`). Best effort: without it (no such address
    /// on the node), datagrams arrive one by one.
    Tap { tap: UplinkTap, gro_anchor: Result<OwnedFd, (&'static str, io::Error)> },
}

/// The VXLAN datagrams to the VTEP's address and port, read GRO'd: from a UDP socket
/// bound there, or from a packet tap on the uplink ([`UdpReceiver::open_tap`]).
pub struct UdpReceiver {
    source: Source,
    vtep: Ipv4Addr,
    port: u16,
    /// The uplink's datagram size (its MTU − 28): where a peer of the same MTU cuts its
    /// trains, and so the length of each scattered read's iovecs.
    datagram: usize,
    staging: Box<[u8]>,
    msgs: [libc::mmsghdr; MESSAGES],
    /// A staged read's iovecs: one staging area per message.
    iovs: [libc::iovec; MESSAGES],
    /// A scattered read's iovecs: one per jumbo slot.
    slot_iovs: [libc::iovec; BURST],
    names: [libc::sockaddr_in; MESSAGES],
    controls: [Control; MESSAGES],
    /// Messages in the staging areas, and the next datagram to hand out: which message
    /// and where in it.
    read: ArrayVec<Message, MESSAGES>,
    next: (usize, usize),
    /// Messages the next staged read asks for.
    batch: usize,
    /// Read nothing more ([`hold_reads`](Self::hold_reads)).
    held: bool,
    stats: Arc<UdpRxStats>,
}

// SAFETY: the raw pointers in `msgs`, `iovs` and `slot_iovs` point into the receiver's
// own boxed or inline fields, or a caller's jumbo store, and are rewritten before every
// `recvmmsg` that reads them; Rust code never dereferences them, so moving the receiver
// to its worker moves plain bytes.
unsafe impl Send for UdpReceiver {}

impl core::fmt::Debug for UdpReceiver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UdpReceiver")
            .field("vtep", &self.vtep)
            .field("port", &self.port)
            .field("datagram", &self.datagram)
            .finish_non_exhaustive()
    }
}

impl UdpReceiver {
    /// A non-blocking socket on `ifname` (of MTU `mtu`) bound to `vtep`:`port` with
    /// `UDP_GRO`, sharing the port with the other workers' (`SO_REUSEPORT`), counting
    /// into `stats`.
    ///
    /// # Errors
    /// The failing step and the kernel's error (no such address on the node, the port
    /// taken by a socket that does not share it, such as a kernel VXLAN device's).
    pub fn open(
        ifname: &str,
        vtep: Ipv4Addr,
        port: u16,
        mtu: u32,
        stats: Arc<UdpRxStats>,
    ) -> Result<Self, (&'static str, io::Error)> {
        let sock = gro_socket(ifname, vtep, port, RECEIVE_BUFFER)?;
        Ok(Self::adopt(sock, vtep, port, mtu, stats))
    }

    /// A receiver reading a new packet tap on `ifname` (index `ifindex`, of MTU `mtu`)
    /// in fanout group `group` ([`UplinkTap::open`]), taking VXLAN to `vtep`:`port`,
    /// counting into `stats`. The host's stack must be kept off that traffic
    /// ([`HostStackBlock::uplink`](crate::attach::HostStackBlock::uplink)).
    ///
    /// # Errors
    /// [`OpenError`](crate::packet::OpenError) with the failing step.
    pub fn open_tap(
        ifname: &str,
        ifindex: u32,
        group: u16,
        (vtep, port): (Ipv4Addr, u16),
        mtu: u32,
        stats: Arc<UdpRxStats>,
    ) -> Result<Self, crate::packet::OpenError> {
        let tap = UplinkTap::open(ifindex, group, &crate::programs::UplinkFilter { vtep_ip: vtep, vxlan_port: port })?;
        Ok(Self::with_tap(tap, ifname, (vtep, port), mtu, stats))
    }

    /// A receiver reading a tap another process opened and handed over
    /// ([`hand_over`](Self::hand_over)), from where that process stopped.
    ///
    /// # Errors
    /// [`OpenError`](crate::packet::OpenError): the socket has no ring this build reads.
    pub fn adopt_tap(
        fd: OwnedFd,
        ifname: &str,
        ifindex: u32,
        (vtep, port): (Ipv4Addr, u16),
        mtu: u32,
        stats: Arc<UdpRxStats>,
    ) -> Result<Self, crate::packet::OpenError> {
        let tap = UplinkTap::adopt(fd, ifindex)?;
        Ok(Self::with_tap(tap, ifname, (vtep, port), mtu, stats))
    }

    fn with_tap(tap: UplinkTap, ifname: &str, (vtep, port): (Ipv4Addr, u16), mtu: u32, stats: Arc<UdpRxStats>) -> Self {
        // A small buffer: it should never hold anything.
        let gro_anchor = gro_socket(ifname, vtep, port, 64 << 10);
        Self::with(Source::Tap { tap, gro_anchor }, vtep, port, mtu, stats)
    }

    /// Why no UDP socket stands beside its tap to have a NIC's GRO merge datagrams
    /// ([`open_tap`](Self::open_tap)), if none could be bound.
    #[must_use]
    pub fn gro_anchor_error(&self) -> Option<(&'static str, &io::Error)> {
        match &self.source {
            Source::Tap { gro_anchor: Err((what, e)), .. } => Some((what, e)),
            _ => None,
        }
    }

    /// Whether it reads a packet tap (else a UDP socket).
    #[must_use]
    pub fn reads_tap(&self) -> bool {
        matches!(self.source, Source::Tap { .. })
    }

    /// A receiver on `sock`, a socket [`open`](Self::open) made (in this process or the
    /// one that handed it over: what waits in it is read from here on).
    #[must_use]
    pub fn adopt(sock: OwnedFd, vtep: Ipv4Addr, port: u16, mtu: u32, stats: Arc<UdpRxStats>) -> Self {
        Self::with(Source::Socket(sock), vtep, port, mtu, stats)
    }

    fn with(source: Source, vtep: Ipv4Addr, port: u16, mtu: u32, stats: Arc<UdpRxStats>) -> Self {
        // SAFETY: mmsghdr is plain old data; all-zero is valid (null pointers, no iovecs).
        let msg = unsafe { std::mem::zeroed::<libc::mmsghdr>() };
        let iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        Self {
            source,
            vtep,
            port,
            // The IPv4 and UDP headers in front of each datagram.
            datagram: (mtu as usize).saturating_sub(28).max(1),
            staging: vec![0; STAGE * MESSAGES].into_boxed_slice(),
            msgs: [msg; MESSAGES],
            iovs: [iov; MESSAGES],
            slot_iovs: [iov; BURST],
            names: [sys::sockaddr_in(Ipv4Addr::UNSPECIFIED, 0); MESSAGES],
            controls: [Control([0; 64]); MESSAGES],
            read: ArrayVec::new(),
            next: (0, 0),
            batch: TRAIN_BATCH,
            held: false,
            stats,
        }
    }

    /// A duplicate of the socket, for another process ([`adopt`](Self::adopt)).
    ///
    /// # Errors
    /// The descriptor could not be duplicated.
    pub fn hand_over(&self) -> io::Result<OwnedFd> {
        match &self.source {
            Source::Socket(sock) => sock.try_clone(),
            Source::Tap { tap, .. } => tap.hand_over(),
        }
    }

    /// Whether datagrams already read wait to be handed out.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.next.0 < self.read.len()
    }

    /// While `hold`, hand out what was read but read nothing more: before a handover,
    /// so that what the socket holds is left for the next process.
    pub fn hold_reads(&mut self, hold: bool) {
        self.held = hold;
    }

    /// Read the kernel's drop count of the socket into the stats
    /// ([`UdpRxStats::kernel_dropped`]); kept as it was if the kernel does not say.
    pub fn refresh_stats(&self) {
        let sock = match &self.source {
            Source::Socket(sock) => sock,
            Source::Tap { tap, .. } => {
                // The tap's counter restarts at every read.
                if let Ok(d) = tap.take_drops() {
                    bump(&self.stats.kernel_dropped, d);
                }
                return;
            }
        };
        // SO_MEMINFO (asm-generic/socket.h; libc has only its offsets): the socket's
        // memory counters, SK_MEMINFO_DROPS among them.
        const SO_MEMINFO: libc::c_int = 55;
        let info: io::Result<[u32; 9]> = sys::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_MEMINFO);
        let at = usize::try_from(libc::SK_MEMINFO_DROPS).expect("8");
        if let Ok(info) = info {
            self.stats.kernel_dropped.store(u64::from(info[at]), Relaxed);
        }
    }

    /// The socket (readable when datagrams wait): what a sleeping worker polls.
    #[must_use]
    pub fn fd(&self) -> RawFd {
        match &self.source {
            Source::Socket(sock) => sock.as_raw_fd(),
            Source::Tap { tap, .. } => tap.fd(),
        }
    }

    /// Hand out up to [`BURST`] datagrams as frames with outer headers: into buffers of
    /// `mem` (in `out`, in order; returns how many) or, larger than a buffer, into the
    /// slots of `jumbo` (recorded after the frames that came before them). Reads at most
    /// one `recvmmsg`; what does not fit this call is handed out by the next.
    pub fn receive<M: FrameMemory>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<M::Buf>; BURST],
        mut jumbo: Option<&mut Jumbo>,
    ) -> usize {
        let room = mem.buffer_size().saturating_sub(FRAME_HEAD + OUTER);
        if self.next.0 >= self.read.len() {
            if self.held {
                return 0;
            }
            match jumbo.as_deref_mut() {
                // Only where the uplink's datagrams need jumbo slots, and a message's
                // slots fit a burst's.
                Some(j) if self.datagram > room && j.is_empty() && STAGE.div_ceil(self.datagram) <= BURST => {
                    return if self.reads_tap() {
                        self.receive_tap_scattered(mem, out, j, room)
                    } else {
                        self.receive_scattered(mem, out, j, room)
                    };
                }
                _ if self.reads_tap() => self.read_tap(),
                _ => self.read_staged(),
            }
        }
        // Where each datagram of this call goes: (message, offset, length) into a frame
        // (`out[k]`) or a jumbo slot.
        let mut frames: ArrayVec<(usize, usize, usize), BURST> = ArrayVec::new();
        while let Some((m, at, len)) = self.peek() {
            if len <= room {
                if frames.is_full() {
                    break;
                }
                let Some(buf) = mem.alloc() else {
                    bump(&self.stats.no_buffer, 1);
                    self.advance(len);
                    continue;
                };
                out[frames.len()] = frame_packet(buf, len);
                frames.push((m, at, len));
            } else if let Some(j) = jumbo.as_deref_mut() {
                if j.len() == BURST {
                    break;
                }
                if OUTER + len > JUMBO_MAX {
                    bump(&self.stats.oversize, 1);
                    self.advance(len);
                    continue;
                }
                // Slots in use are recorded ones (a scattered read hands all of its out in
                // its own call).
                let slot = j.len();
                let payload = &self.staging[m * STAGE + self.read[m].start + at..][..len];
                write_datagram(&mut j.data_mut(slot)[..OUTER + len], &self.read[m], self.vtep, self.port, payload);
                j.push(slot, frames.len(), OUTER + len, OffloadMeta::default());
            } else {
                bump(&self.stats.oversize, 1);
            }
            self.advance(len);
        }
        let n = frames.len();
        let bufs: ArrayVec<M::Buf, BURST> = out[..n].iter().map(|p| p.buf).collect();
        let (staging, read, vtep, port) = (&self.staging, &self.read, self.vtep, self.port);
        mem.with_buffers(&bufs, |slices| {
            for (s, &(m, at, len)) in slices.iter_mut().zip(&frames) {
                let payload = &staging[m * STAGE + read[m].start + at..][..len];
                write_datagram(&mut s[FRAME_HEAD..FRAME_HEAD + OUTER + len], &read[m], vtep, port, payload);
            }
        });
        let handed = n + jumbo.map_or(0, |j| j.len());
        bump(&self.stats.datagrams, handed as u64);
        n
    }

    /// One `recvmmsg` straight into the slots of `jumbo` (empty): each message across as
    /// many slots as the largest message needs at the uplink's datagram size. Datagrams
    /// that landed whole in their slot are recorded where they lie; a lone datagram
    /// small enough for a frame is copied into one; a message of another segment size
    /// is gathered into the staging area for the next calls.
    fn receive_scattered<M: FrameMemory>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<M::Buf>; BURST],
        jumbo: &mut Jumbo,
        room: usize,
    ) -> usize {
        self.read.clear();
        self.next = (0, 0);
        let (size, per) = (self.datagram, STAGE.div_ceil(self.datagram));
        let count = (BURST / per).min(MESSAGES);
        for (k, area) in jumbo.data_areas().take(count * per).enumerate() {
            // Behind room for the outer header; OUTER + size ≤ JUMBO_MAX (a datagram is
            // below 64 KiB).
            self.slot_iovs[k] = libc::iovec { iov_base: area[OUTER..].as_mut_ptr().cast(), iov_len: size };
        }
        for m in 0..count {
            let iov = std::ptr::from_mut(&mut self.slot_iovs[m * per]);
            self.prepare(m, iov, per);
        }
        let got = self.recv(count);
        // Datagrams to copy into frames: (frame index in `out`, slot, message).
        let mut small: ArrayVec<(usize, usize, Message), BURST> = ArrayVec::new();
        let mut n = 0;
        let mut in_place = 0u64;
        for m in 0..got {
            let Some(msg) = self.message(m) else { continue };
            let first = m * per;
            if msg.single() && msg.len <= room {
                let Some(buf) = mem.alloc() else {
                    bump(&self.stats.no_buffer, 1);
                    continue;
                };
                out[n] = frame_packet(buf, msg.len);
                small.push((n, first, msg));
                n += 1;
            } else if msg.lands_in_slots(size) {
                in_place += record_in_place(jumbo, first, n, &msg, size, (self.vtep, self.port)) as u64;
            } else {
                // Another segment size: datagram boundaries are not slot boundaries.
                let area = self.read.len();
                for (k, at) in (0..msg.len).step_by(size).enumerate() {
                    let len = size.min(msg.len - at);
                    self.staging[area * STAGE + at..][..len]
                        .copy_from_slice(&jumbo.data(first + k)[OUTER..OUTER + len]);
                }
                self.read.push(Message { start: 0, ..msg });
            }
        }
        let bufs: ArrayVec<M::Buf, BURST> = small.iter().map(|&(k, _, _)| out[k].buf).collect();
        let (vtep, port) = (self.vtep, self.port);
        mem.with_buffers(&bufs, |slices| {
            for (s, &(_, slot, msg)) in slices.iter_mut().zip(&small) {
                let payload = &jumbo.data(slot)[OUTER..OUTER + msg.len];
                write_datagram(&mut s[FRAME_HEAD..FRAME_HEAD + OUTER + msg.len], &msg, vtep, port, payload);
            }
        });
        bump(&self.stats.in_place, in_place);
        bump(&self.stats.datagrams, n as u64 + in_place);
        n
    }

    /// The next datagram to hand out: (message, offset, length).
    fn peek(&self) -> Option<(usize, usize, usize)> {
        let (m, at) = self.next;
        let msg = self.read.get(m)?;
        Some((m, at, msg.segment.min(msg.len - at)))
    }

    /// Past the datagram [`peek`](Self::peek) gave (of `len` bytes).
    fn advance(&mut self, len: usize) {
        let (m, at) = self.next;
        self.next = if at + len >= self.read[m].len { (m + 1, 0) } else { (m, at + len) };
    }

    /// One `recvmmsg` of `batch` messages into the staging areas.
    fn read_staged(&mut self) {
        self.read.clear();
        self.next = (0, 0);
        let base = self.staging.as_mut_ptr();
        let count = self.batch;
        for m in 0..count {
            // SAFETY: message m's area lies inside `staging` (MESSAGES areas of STAGE).
            self.iovs[m] = libc::iovec { iov_base: unsafe { base.add(m * STAGE) }.cast(), iov_len: STAGE };
            let iov = std::ptr::from_mut(&mut self.iovs[m]);
            self.prepare(m, iov, 1);
        }
        let got = self.recv(count);
        for m in 0..got {
            if let Some(msg) = self.message(m) {
                self.read.push(msg);
            }
        }
        if got > 0 {
            self.batch = if self.read.iter().all(Message::single) { MESSAGES } else { TRAIN_BATCH };
        }
    }

    /// Point message header `m` at `iovlen` iovecs from `iov`, its name and control
    /// buffers.
    fn prepare(&mut self, m: usize, iov: *mut libc::iovec, iovlen: usize) {
        let h = &mut self.msgs[m].msg_hdr;
        h.msg_name = std::ptr::from_mut(&mut self.names[m]).cast();
        h.msg_namelen = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("16");
        h.msg_iov = iov;
        h.msg_iovlen = iovlen;
        h.msg_control = self.controls[m].0.as_mut_ptr().cast();
        h.msg_controllen = self.controls[m].0.len();
        h.msg_flags = 0;
        self.msgs[m].msg_len = 0;
    }

    /// `recvmmsg` of the first `count` prepared messages; how many arrived.
    fn recv(&mut self, count: usize) -> usize {
        let count = libc::c_uint::try_from(count).expect("small");
        // SAFETY: every message was prepared to point at live memory sized as its
        // lengths say (staging areas or the caller's jumbo slots, its own name and
        // control buffers), none touched during the call.
        let got = unsafe {
            libc::recvmmsg(self.fd(), self.msgs.as_mut_ptr(), count, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        let Ok(got) = usize::try_from(got) else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                bump(&self.stats.errors, 1);
            }
            return 0;
        };
        bump(&self.stats.messages, got as u64);
        got
    }

    /// Message `m` of the last `recvmmsg`, unless it was truncated (counted) or empty.
    fn message(&self, m: usize) -> Option<Message> {
        let len = self.msgs[m].msg_len as usize;
        let h = &self.msgs[m].msg_hdr;
        if h.msg_flags & libc::MSG_TRUNC != 0 {
            bump(&self.stats.truncated, 1);
            return None;
        }
        if len == 0 {
            return None;
        }
        // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into the
        // message's own control buffer, which `h` points at.
        let segment = unsafe { gro_segment(h) }.filter(|&s| s > 0).unwrap_or(len);
        let name = &self.names[m];
        Some(Message {
            start: 0,
            len,
            segment,
            src: Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
            src_port: u16::from_be(name.sin_port),
        })
    }
}

/// A non-blocking UDP socket on `ifname` bound to `vtep`:`port` with `UDP_GRO`, sharing
/// the port with the other workers' (`SO_REUSEPORT`), with a receive buffer of `buffer`.
fn gro_socket(
    ifname: &str,
    vtep: Ipv4Addr,
    port: u16,
    buffer: libc::c_int,
) -> Result<OwnedFd, (&'static str, io::Error)> {
    // SO_REUSEPORT before the bind: the workers' sockets share the port.
    sys::udp_socket(ifname, vtep, port, |s| {
        setsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(|e| ("SO_REUSEPORT", e))?;
        setsockopt_int(s, libc::SOL_UDP, libc::UDP_GRO, 1).map_err(|e| ("UDP_GRO", e))?;
        set_socket_buffer(s, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, buffer).map_err(|e| ("SO_RCVBUF", e))
    })
}

/// The `UDP_GRO` segment size among a received message's control messages.
///
/// # Safety
/// `h` is a message header the kernel filled: its control pointer and length describe
/// initialised control messages.
unsafe fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: per the caller, `h` describes a valid control buffer; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within it and return null past its end.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use xlane_engine::mem::MemFrames;
    use xlane_wire::{Ipv4Packet, UdpPacket};

    /// Datagram `i`'s bytes: a pattern of its own.
    fn datagram(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(131)).to_le_bytes()[0]).collect()
    }

    /// The datagram behind a received frame's outer header, checking the header.
    fn payload_of(frame: &[u8], vtep: Ipv4Addr, port: u16) -> Vec<u8> {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (vtep, vtep));
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(udp.dst_port(), port);
        assert_eq!(usize::from(udp.len()), 8 + frame.len() - OUTER);
        frame[OUTER..].to_vec()
    }

    /// On an uplink of MTU 9000 (a namespace's loopback), trains cut at the uplink's
    /// datagram size are handed out where the kernel wrote them, one jumbo slot each;
    /// a lone small datagram is copied into a frame; trains of another segment size,
    /// larger or smaller than a frame, are gathered and handed out on the next call.
    /// Every datagram arrives once, byte for byte, behind a valid outer header.
    #[test]
    fn gro_trains_land_in_their_slots_and_other_sizes_are_gathered() {
        if !xlane_netlab::privileged("gro_trains_land_in_their_slots_and_other_sizes_are_gathered") {
            return;
        }
        let ns = xlane_netlab::Netns::new("xgro").unwrap();
        ns.ip(&["link", "set", "lo", "mtu", "9000", "up"]).unwrap();
        let (lo, port) = (Ipv4Addr::LOCALHOST, 4789);
        let stats = Arc::new(UdpRxStats::default());
        let (mut rx, tx) = ns
            .enter(|| {
                (UdpReceiver::open("lo", lo, port, 9000, stats.clone()).unwrap(), UdpSocket::bind((lo, 0)).unwrap())
            })
            .unwrap();
        assert_eq!(rx.datagram, 8972);
        // (segment size, datagrams, last datagram's size)
        let sends = [(8972, 8, 1000), (500, 1, 500), (3000, 5, 3000), (100, 10, 60)];
        let mut expected = Vec::new();
        for &(segment, count, last) in &sends {
            let dgrams: Vec<Vec<u8>> =
                (0..count).map(|k| datagram(expected.len() + k, if k + 1 == count { last } else { segment })).collect();
            setsockopt_int(tx.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, i32::try_from(segment).unwrap()).unwrap();
            assert_eq!(tx.send_to(&dgrams.concat(), (lo, port)).unwrap(), dgrams.iter().map(Vec::len).sum::<usize>());
            expected.extend(dgrams);
        }
        let (mut mem, mut jumbo) = (MemFrames::default(), Jumbo::new());
        let mut out = [Packet { buf: 0u32, head: 0, len: 0 }; BURST];
        let mut got = Vec::new();
        for _ in 0..200 {
            if got.len() >= expected.len() {
                break;
            }
            jumbo.clear();
            let n = rx.receive(&mut mem, &mut out, Some(&mut jumbo));
            // In arrival order: the jumbo frames after the `before` ordinary ones.
            let mut k = 0;
            for i in 0..=jumbo.len() {
                let before = jumbo.frames().get(i).map_or(n, |f| usize::from(f.before));
                for p in &out[k..before] {
                    got.push(payload_of(mem.bytes(p), lo, port));
                    mem.release(p.buf);
                }
                k = before;
                if let Some(f) = jumbo.frames().get(i) {
                    got.push(payload_of(&jumbo.data(usize::from(f.slot))[..f.len as usize], lo, port));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        got.sort();
        expected.sort();
        assert!(got == expected, "{} datagrams of {} expected arrived as sent", got.len(), expected.len());
        let t = stats.totals();
        assert_eq!(t, UdpRxTotals { messages: 4, datagrams: 24, in_place: 8, dropped: 0, kernel_dropped: 0 });
    }

    #[test]
    fn the_kernels_drops_at_a_full_socket_are_counted() {
        if !xlane_netlab::privileged("the_kernels_drops_at_a_full_socket_are_counted") {
            return;
        }
        let ns = xlane_netlab::Netns::new("xgrd").unwrap();
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        let (lo, port) = (Ipv4Addr::LOCALHOST, 4789);
        let stats = Arc::new(UdpRxStats::default());
        let (rx, tx) = ns
            .enter(|| {
                (UdpReceiver::open("lo", lo, port, 1500, stats.clone()).unwrap(), UdpSocket::bind((lo, 0)).unwrap())
            })
            .unwrap();
        rx.refresh_stats();
        assert_eq!(stats.totals().kernel_dropped, 0);
        // Far more than the receive buffer holds, never read: the kernel drops the rest.
        let sent = 60_000u64;
        for k in 0..sent {
            tx.send_to(&datagram(usize::try_from(k).unwrap(), 1400), (lo, port)).unwrap();
        }
        rx.refresh_stats();
        let dropped = stats.totals().kernel_dropped;
        // What the socket kept, read off it (single datagrams: the sender sent no GSO).
        let mut kept = 0u64;
        let mut buf = [0u8; 2048];
        // SAFETY: `buf` is a live buffer of the length passed, for each call.
        while unsafe { libc::recv(rx.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) } > 0 {
            kept += 1;
        }
        assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
        assert_eq!(kept + dropped, sent, "every datagram kept or counted dropped");
    }
}
