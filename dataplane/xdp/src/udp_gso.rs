//! Encapsulated super-packets out through the host's stack: UDP sockets with
//! `UDP_SEGMENT` (UDP GSO, Linux 4.18+) beside the uplink's AF_XDP sockets.
//!
//! AF_XDP carries frames of one chunk, so a super-packet bound for another node would be
//! cut by the engine into ~45 frames, each crossing copy-mode TX alone: an skb, the
//! uplink's driver and the underlay once per frame. Instead the engine writes each
//! segment's VXLAN and inner headers ([`datagram_parts`]) and one `sendmmsg` gathers
//! them with the payloads where they lie in the super-packet (no copy before the
//! kernel's own) and hands the kernel one buffer: one route lookup, one skb through the stack
//! and the underlay, cut into datagrams by the NIC (UDP segmentation offload) or by the
//! kernel's GSO where the device cannot. The inner TCP is still cut by the engine: the
//! kernel takes tunnel GSO only from a tap (routed through the host's FORWARD chain),
//! never from a packet socket (refused on 6.18).
//!
//! The kernel writes the outer IPv4/UDP headers from what the template says: the source
//! address and TTL per message (`IP_PKTINFO`, `IP_TTL`), the destination address and
//! port, DF (`IP_PMTUDISC_PROBE`: the device's MTU, as AF_XDP frames have). The UDP
//! source port is the socket's: a flow keeps one of [`SOCKETS`] ephemeral ports, picked
//! by its hash, so the underlay's ECMP sees up to that many flows per peer node. The
//! UDP checksum is the kernel's (UDP GSO requires one; RFC 7348 lets a sender set it).
//! The sockets are bound to the uplink (`SO_BINDTODEVICE`): the datagrams leave where
//! the AF_XDP frames do, and after them, since the driver flushes a burst's earlier
//! frames before it sends a super-packet.

use crate::sys::{self, set_socket_buffer, setsockopt_int};
use arrayvec::ArrayVec;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use xlane_engine::MAX_SEGMENTS;
use xlane_engine::offload::{DatagramPart, Datagrams, OffloadError, OffloadMeta, datagram_parts, write_datagrams};
use xlane_engine::port::bump;

/// Sockets (outer UDP source ports) per sender.
pub const SOCKETS: usize = 8;
/// Bytes of a UDP datagram's payload over IPv4 (65535 − 20 − 8).
const MAX_UDP_PAYLOAD: usize = 65_507;
/// Segments one message may carry: the kernel's `UDP_MAX_SEGMENTS` is 128 since 5.x,
/// 64 before; 64 is within both.
const MAX_SEGMENTS_PER_MESSAGE: usize = 64;
/// Messages one super-packet needs at most: its segments' bytes exceed one datagram's
/// payload limit by the headers each segment repeats.
const MESSAGES: usize = 4;
/// Room for every datagram of a super-packet: 64 KiB of payload plus, per segment of
/// the engine's most, a VXLAN header and the inner headers (at most 14 + 60 + 60).
const SCRATCH: usize = 65_536 + MAX_SEGMENTS * (8 + 134);
/// A socket's send buffer: a few super-packets in flight on a NIC queue.
const SEND_BUFFER: libc::c_int = 4 << 20;

/// What a sender did, on one worker. Single writer: relaxed load + store.
#[derive(Debug, Default)]
pub struct UdpGsoStats {
    /// Super-packets handed to the kernel.
    pub super_packets: AtomicU64,
    /// Datagrams they made.
    pub datagrams: AtomicU64,
    /// Super-packets the engine refused to lay out (counted by reason in the pipeline's
    /// drops as well) or the kernel refused to take (a full send buffer, no route).
    pub failed: AtomicU64,
}

/// Why a super-packet was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It could not be laid out as datagrams.
    #[error("{0}")]
    Offload(#[from] OffloadError),
    /// The kernel refused it.
    #[error("sendmmsg: {0}")]
    Kernel(#[from] io::Error),
}

/// Control messages of one `sendmsg`: the segment size, the source address, the TTL.
/// Aligned as `cmsghdr` wants; filled by [`Control::write`].
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

const fn cmsg_align(n: usize) -> usize {
    (n + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}
const CMSG_HDR: usize = cmsg_align(size_of::<libc::cmsghdr>());
const fn cmsg_space(n: usize) -> usize {
    CMSG_HDR + cmsg_align(n)
}
const CONTROL_LEN: usize =
    cmsg_space(size_of::<u16>()) + cmsg_space(size_of::<libc::in_pktinfo>()) + cmsg_space(size_of::<libc::c_int>());

impl Control {
    /// Write the three messages for datagrams of `stride` bytes from `src` with `ttl`.
    fn write(&mut self, stride: u16, src: std::net::Ipv4Addr, ttl: u8) {
        let mut at = 0;
        let mut put = |level: libc::c_int, kind: libc::c_int, data: &[u8]| {
            // SAFETY: cmsghdr is plain old data; all-zero is a valid value.
            let mut h: libc::cmsghdr = unsafe { std::mem::zeroed() };
            h.cmsg_len = CMSG_HDR + data.len();
            h.cmsg_level = level;
            h.cmsg_type = kind;
            // SAFETY: `at + size_of::<cmsghdr>()` ≤ CONTROL_LEN (the layout above), and an
            // unaligned write has no alignment requirement.
            unsafe { std::ptr::write_unaligned(self.0.as_mut_ptr().add(at).cast::<libc::cmsghdr>(), h) };
            self.0[at + CMSG_HDR..at + CMSG_HDR + data.len()].copy_from_slice(data);
            at += cmsg_space(data.len());
        };
        put(libc::SOL_UDP, libc::UDP_SEGMENT, &stride.to_ne_bytes());
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // SAFETY: in_pktinfo is plain old data without padding (three 4-byte fields);
        // viewing it as its bytes reads initialised memory only.
        let info = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&info).cast::<u8>(), size_of::<libc::in_pktinfo>())
        };
        put(libc::IPPROTO_IP, libc::IP_PKTINFO, info);
        put(libc::IPPROTO_IP, libc::IP_TTL, &libc::c_int::from(ttl).to_ne_bytes());
    }
}

/// UDP sockets on the uplink that send encapsulated super-packets as UDP GSO datagrams.
pub struct UdpGsoSender {
    socks: Vec<OwnedFd>,
    /// The datagrams' headers of the super-packet being sent, or a whole datagram
    /// without GSO (allocated once).
    scratch: Box<[u8]>,
    msgs: [libc::mmsghdr; MESSAGES],
    /// Two per datagram (headers, payload) when gathering.
    iovs: [libc::iovec; 2 * MAX_SEGMENTS],
    /// Where each datagram's pieces lie (see `datagram_parts`).
    parts: ArrayVec<DatagramPart, MAX_SEGMENTS>,
    dst: libc::sockaddr_in,
    /// The messages of one super-packet share their destination and control messages.
    control: Control,
    stats: Arc<UdpGsoStats>,
}

// SAFETY: the raw pointers in `msgs` and `iovs` are rewritten before every `sendmmsg`
// that reads them (into `scratch`, `dst`, `control`, all owned by the sender) and are
// never dereferenced by Rust code; moving the sender between threads moves plain bytes.
unsafe impl Send for UdpGsoSender {}

impl core::fmt::Debug for UdpGsoSender {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UdpGsoSender").field("sockets", &self.socks.len()).finish_non_exhaustive()
    }
}

/// One non-blocking UDP socket bound to `ifname` and an ephemeral port.
fn open_socket(ifname: &str) -> Result<OwnedFd, (&'static str, io::Error)> {
    sys::udp_socket(ifname, Ipv4Addr::UNSPECIFIED, 0, |s| {
        setsockopt_int(s, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE)
            .map_err(|e| ("IP_MTU_DISCOVER", e))?;
        set_socket_buffer(s, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SEND_BUFFER).map_err(|e| ("SO_SNDBUF", e))?;
        // Nothing is ever sent to these ports; the smallest buffer drops whatever is.
        setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, 1).map_err(|e| ("SO_RCVBUF", e))
    })
}

impl UdpGsoSender {
    /// [`SOCKETS`] UDP sockets bound to `ifname` (the uplink), counting into `stats`.
    ///
    /// # Errors
    /// The failing step's name and the kernel's error (no `CAP_NET_RAW` for
    /// `SO_BINDTODEVICE`, no such interface).
    pub fn open(ifname: &str, stats: Arc<UdpGsoStats>) -> Result<Self, (&'static str, io::Error)> {
        let socks = (0..SOCKETS).map(|_| open_socket(ifname)).collect::<Result<Vec<_>, _>>()?;
        // SAFETY: mmsghdr is plain old data; all-zero is valid (null pointers, no iovecs).
        let msg = unsafe { std::mem::zeroed::<libc::mmsghdr>() };
        let dst = sys::sockaddr_in(Ipv4Addr::UNSPECIFIED, 0);
        Ok(Self {
            socks,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            msgs: [msg; MESSAGES],
            iovs: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2 * MAX_SEGMENTS],
            parts: ArrayVec::new(),
            dst,
            control: Control([0; CONTROL_LEN]),
            stats,
        })
    }

    /// The sender's counters.
    #[must_use]
    pub fn stats(&self) -> &Arc<UdpGsoStats> {
        &self.stats
    }

    /// Send `frame` (outer headers, then the inner super-packet `meta` describes) as
    /// datagrams of one segment each; returns how many. Never blocks: a full send buffer
    /// refuses the super-packet (TCP retransmits, as after a loss on the wire).
    ///
    /// # Errors
    /// [`SendError`]; counted in `failed`.
    pub fn send(&mut self, frame: &[u8], meta: &OffloadMeta) -> Result<usize, SendError> {
        let r = self.try_send(frame, meta);
        match &r {
            Ok(n) => {
                bump(&self.stats.super_packets, 1);
                bump(&self.stats.datagrams, *n as u64);
            }
            Err(_) => bump(&self.stats.failed, 1),
        }
        r
    }

    fn try_send(&mut self, frame: &[u8], meta: &OffloadMeta) -> Result<usize, SendError> {
        // A super-packet is gathered: each datagram from its headers (written to
        // `scratch`) and its payload where it lies in `frame`, so the kernel's copy into
        // the socket is the only one. A frame without GSO is one datagram whose
        // checksum must be completed: copied whole into `scratch`.
        let gather = meta.gso.is_some();
        let d: Datagrams = if gather {
            datagram_parts(frame, meta, &mut self.scratch, &mut self.parts)?
        } else {
            write_datagrams(frame, meta, &mut self.scratch)?
        };
        let stride = u16::try_from(d.stride).map_err(|_| OffloadError::BufferTooSmall)?;
        self.dst.sin_port = d.dst_port.to_be();
        self.dst.sin_addr = libc::in_addr { s_addr: u32::from(d.dst).to_be() };
        let per_message = (MAX_UDP_PAYLOAD / d.stride).clamp(1, MAX_SEGMENTS_PER_MESSAGE);
        let messages = d.segments.div_ceil(per_message);
        if messages > MESSAGES {
            return Err(OffloadError::TooManySegments.into());
        }
        self.control.write(stride, d.src, d.ttl);
        let scratch = self.scratch.as_mut_ptr();
        // The kernel only reads what a send's iovecs point at.
        let payload = frame.as_ptr().cast_mut();
        let mut iov = 0;
        for m in 0..messages {
            let first_iov = iov;
            if gather {
                for part in self.parts.iter().skip(m * per_message).take(per_message) {
                    // SAFETY: the parts lie inside `scratch` (headers) and `frame`
                    // (payloads): `datagram_parts` made them from those slices.
                    let (h, p) = unsafe { (scratch.add(part.header.start), payload.add(part.payload.start)) };
                    self.iovs[iov] = libc::iovec { iov_base: h.cast(), iov_len: part.header.len() };
                    self.iovs[iov + 1] = libc::iovec { iov_base: p.cast(), iov_len: part.payload.len() };
                    iov += 2;
                }
            } else {
                // One datagram (no GSO): all of it at the start of `scratch`.
                self.iovs[iov] = libc::iovec { iov_base: scratch.cast(), iov_len: d.len };
                iov += 1;
            }
            let h = &mut self.msgs[m].msg_hdr;
            h.msg_name = std::ptr::from_mut(&mut self.dst).cast();
            h.msg_namelen = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("16");
            h.msg_iov = std::ptr::from_mut(&mut self.iovs[first_iov]);
            h.msg_iovlen = iov - first_iov;
            h.msg_control = self.control.0.as_mut_ptr().cast();
            h.msg_controllen = CONTROL_LEN;
            h.msg_flags = 0;
            self.msgs[m].msg_len = 0;
        }
        let sock = self.socks[usize::from(d.src_port) % self.socks.len()].as_raw_fd();
        let count = libc::c_uint::try_from(messages).expect("at most MESSAGES");
        // SAFETY: `msgs[..messages]` point at live iovecs (into `scratch`, owned by `self`,
        // and into `frame`, borrowed for this call), at `dst` and at `control`, none
        // touched during the call; the kernel copies the data before returning.
        let sent = unsafe { libc::sendmmsg(sock, self.msgs.as_mut_ptr(), count, libc::MSG_DONTWAIT) };
        match usize::try_from(sent) {
            Err(_) => Err(io::Error::last_os_error().into()),
            Ok(n) if n < messages => Err(io::Error::new(io::ErrorKind::WouldBlock, "send buffer full mid-way").into()),
            Ok(_) => Ok(d.segments),
        }
    }
}
