//! The uplink's VXLAN traffic read off a packet tap (`xlaned --uplink-rx packet`): an
//! AF_PACKET socket per worker on the uplink, with the pod ports' receive ring
//! ([`super::ring`]), a classic BPF filter that takes only IPv4 UDP to the VTEP's VXLAN
//! port ([`socket_uplink_filter`]) and a hash fanout group spreading flows over the
//! workers. The host's stack never sees that traffic: a tcx program drops it after the
//! taps ([`HostStackBlock::uplink`](crate::attach::HostStackBlock::uplink)).
//!
//! Why a tap rather than the UDP sockets of [`crate::udp_gro`]: each datagram to a UDP
//! socket goes through the kernel's IP receive, route and socket lookups and a socket
//! queue, all inside the sender's softirq (perf: most of a 64-byte flood's cost on the
//! veth lab). A tap sees the frame first and copies it into the ring; the tcx program
//! then frees it. Like the UDP socket, and unlike an XDP program, it leaves a peer's
//! UDP GSO send whole: it arrives as one super-packet (virtio-net `gso_type` UDP_L4,
//! too large for a slot: read with `recvmsg`), which the receiver cuts by `gso_size`.
//!
//! The tap hands the receiver each frame's UDP payload in a staging area as a
//! [`Message`], as a UDP socket's read would be: the receiver writes the outer header
//! afresh for each datagram, so frames from the tap and from a UDP socket are handed to
//! the pipeline alike.

use super::ring::{RxRing, Slot, Slots};
use super::{OpenError, sock};
use crate::programs::{UplinkFilter, socket_uplink_filter};
use crate::udp_gro::Message;
use arrayvec::ArrayVec;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use xlane_engine::offload::{GsoKind, OffloadMeta, VIRTIO_NET_HDR_LEN};
use xlane_wire::checksum;

/// Why a frame off the tap was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TapDrop {
    /// Larger than the staging area, or the kernel kept no copy of it (its receive
    /// buffer full).
    Truncated,
    /// Not an unfragmented IPv4 UDP datagram with a valid header and virtio-net header
    /// (the filter passes only those; a process sharing the ring scribbled on it).
    Malformed,
}

/// Bytes in front of a frame's payload that [`UplinkTap::read_scattered`] reads into the
/// staging area: the virtio-net header and the Ethernet, IPv4 (no options) and UDP
/// headers.
pub(crate) const SCATTER_HEAD: usize = VIRTIO_NET_HDR_LEN + 14 + 20 + 8;
/// Parts a scattered read fills at most: a 64 KiB super-packet of 1 KiB datagrams.
const MAX_PARTS: usize = 64;

/// Where [`UplinkTap::read_scattered`] put a frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scattered {
    /// In the staging area, from the message's `start`.
    Staged(Message),
    /// Datagram k whole at the start of part k.
    InPlace(Message),
}

/// One worker's packet tap on the uplink.
pub struct UplinkTap {
    fd: OwnedFd,
    /// Boxed: the receiver holding it stays small to move.
    ring: Box<RxRing>,
}

impl core::fmt::Debug for UplinkTap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UplinkTap").field("fd", &self.fd).field("ring", &self.ring).finish()
    }
}

impl UplinkTap {
    /// A tap on the uplink `ifindex` (in the current network namespace) taking VXLAN to
    /// `filter`'s VTEP, in hash fanout group `group` with the other workers' (a group
    /// id names one interface's group in the namespace: the pod ports use their
    /// ifindex's low 16 bits, and so does the uplink).
    ///
    /// # Errors
    /// [`OpenError`] with the failing step; nothing stays open.
    pub fn open(ifindex: u32, group: u16, filter: &UplinkFilter) -> Result<Self, OpenError> {
        let err = |(step, source)| OpenError { ifindex, step, source };
        let fd = sock::prepare(true, Some(Slots::UPLINK)).map_err(err)?;
        let ring = RxRing::map(fd.as_fd(), Slots::UPLINK).map_err(|source| OpenError {
            ifindex,
            step: "mmap(rx ring)",
            source,
        })?;
        sock::join(&fd, ifindex, Some((group, Some(&socket_uplink_filter(filter))))).map_err(err)?;
        Ok(Self { fd, ring: Box::new(ring) })
    }

    /// A tap another process opened and handed over ([`hand_over`](Self::hand_over)):
    /// its ring read from where the other process stopped.
    ///
    /// # Errors
    /// [`OpenError`]: the socket has no ring of the shape this build makes.
    pub fn adopt(fd: OwnedFd, ifindex: u32) -> Result<Self, OpenError> {
        let err = |source| OpenError { ifindex, step: "mmap(rx ring)", source };
        let ring = RxRing::inherit(fd.as_fd(), Slots::UPLINK)
            .map_err(err)?
            .ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "a socket without a receive ring")))?;
        Ok(Self { fd, ring: Box::new(ring) })
    }

    /// A duplicate of the socket (its ring, filter, fanout group and queued frames go
    /// with it), for another process.
    ///
    /// # Errors
    /// The descriptor could not be duplicated.
    pub fn hand_over(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// The socket: readable when frames wait (what a sleeping worker polls).
    #[must_use]
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Frames the kernel dropped at the tap since the last call (its ring full).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn take_drops(&self) -> io::Result<u64> {
        sock::take_drops(self.fd.as_raw_fd())
    }

    /// The next frame's UDP payload, copied into `area` (a ring slot's frame) or read
    /// into it (a frame too large for a slot, with its headers in front of the payload:
    /// [`Message::start`]). `None` when nothing waits.
    pub(crate) fn read(&mut self, area: &mut [u8]) -> Option<Result<Message, TapDrop>> {
        let got = match self.ring.peek()? {
            Slot::Whole { vnet, frame } => datagrams(vnet, frame).map(|(msg, payload)| {
                let len = payload.len().min(area.len());
                area[..len].copy_from_slice(&payload[..len]);
                Message { start: 0, ..msg }
            }),
            Slot::Queued => self.read_queued(area),
            Slot::Truncated => Err(TapDrop::Truncated),
            Slot::Malformed => Err(TapDrop::Malformed),
        };
        self.ring.release();
        Some(got)
    }

    /// As [`read`](Self::read), but a frame too large for a slot is read scattered: its
    /// headers into `area`, its payload across `parts` (each `size` bytes, after room
    /// for the outer header the receiver writes there). Where datagram k of it is whole
    /// in part k (a single datagram, or a train of `size`-byte ones: a peer of the same
    /// MTU) it is [`Scattered::InPlace`]; otherwise the payload is gathered into `area`.
    pub(crate) fn read_scattered(
        &mut self,
        area: &mut [u8],
        parts: &mut [&mut [u8]],
        size: usize,
    ) -> Option<Result<Scattered, TapDrop>> {
        let got = match self.ring.peek()? {
            Slot::Queued => self.read_queued_scattered(area, parts, size),
            _ => return self.read(area).map(|r| r.map(Scattered::Staged)),
        };
        self.ring.release();
        Some(got)
    }

    fn read_queued_scattered(
        &self,
        area: &mut [u8],
        parts: &mut [&mut [u8]],
        size: usize,
    ) -> Result<Scattered, TapDrop> {
        let mut iov: ArrayVec<libc::iovec, { MAX_PARTS + 1 }> = ArrayVec::new();
        iov.push(libc::iovec { iov_base: area.as_mut_ptr().cast(), iov_len: SCATTER_HEAD });
        for p in parts.iter_mut().take(MAX_PARTS) {
            iov.push(libc::iovec { iov_base: p.as_mut_ptr().cast(), iov_len: size.min(p.len()) });
        }
        let room: usize = iov.iter().map(|v| v.iov_len).sum();
        // SAFETY: msghdr is plain old data; all-zero is valid (no name, no control).
        let mut msg = unsafe { std::mem::zeroed::<libc::msghdr>() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: every iovec points at memory exclusively borrowed by this function for
        // the length it names (`area` holds SCATTER_HEAD: the receiver's staging area),
        // untouched during the call; MSG_TRUNC makes the kernel report the whole length.
        let got = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
        let total = usize::try_from(got).map_err(|_| TapDrop::Truncated)?;
        if total > room || total > area.len() {
            return Err(TapDrop::Truncated);
        }
        if total < SCATTER_HEAD {
            return Err(TapDrop::Malformed);
        }
        let (vnet, head) = area[..SCATTER_HEAD].split_at(VIRTIO_NET_HDR_LEN);
        if let Ok((m, at)) = header(vnet, head, total - VIRTIO_NET_HDR_LEN)
            && at + VIRTIO_NET_HDR_LEN == SCATTER_HEAD
            && m.lands_in_slots(size)
        {
            return Ok(Scattered::InPlace(m));
        }
        // Headers of another length (IPv4 options), or another segment size: the parts
        // are not datagrams. Gather them behind the headers and read it whole.
        let mut at = SCATTER_HEAD;
        for p in parts.iter().take(iov.len() - 1) {
            let n = size.min(p.len()).min(total - at);
            area[at..at + n].copy_from_slice(&p[..n]);
            at += n;
        }
        let (vnet, frame) = area[..total].split_at(VIRTIO_NET_HDR_LEN);
        let (msg, payload) = datagrams(vnet, frame)?;
        let start = payload.as_ptr() as usize - area.as_ptr() as usize;
        Ok(Scattered::Staged(Message { start, ..msg }))
    }

    /// The frame queued for a slot marked `TP_STATUS_COPY`, read whole into `area`.
    fn read_queued(&self, area: &mut [u8]) -> Result<Message, TapDrop> {
        // SAFETY: `area` is a live, exclusively borrowed buffer of the length passed;
        // MSG_TRUNC makes the kernel report the frame's whole length, not write more.
        let got = unsafe {
            libc::recv(self.fd.as_raw_fd(), area.as_mut_ptr().cast(), area.len(), libc::MSG_DONTWAIT | libc::MSG_TRUNC)
        };
        // The kernel marks the slot only once the copy is queued: an error means the
        // socket's buffer had no room for it.
        let total = usize::try_from(got).map_err(|_| TapDrop::Truncated)?;
        if total > area.len() {
            return Err(TapDrop::Truncated);
        }
        let (vnet, frame) = area[..total].split_at_checked(VIRTIO_NET_HDR_LEN).ok_or(TapDrop::Malformed)?;
        let (msg, payload) = datagrams(vnet, frame)?;
        let start = payload.as_ptr() as usize - area.as_ptr() as usize;
        Ok(Message { start, ..msg })
    }
}

/// The datagram, or train of datagrams (a UDP GSO super-packet), in `frame` with
/// virtio-net header `vnet`: its message (`start` 0) and UDP payload.
///
/// # Errors
/// As [`header`].
fn datagrams<'a>(vnet: &[u8], frame: &'a [u8]) -> Result<(Message, &'a [u8]), TapDrop> {
    let (msg, at) = header(vnet, frame, frame.len())?;
    Ok((msg, &frame[at..at + msg.len]))
}

/// The message of a frame of `frame_len` bytes whose first bytes (its headers at least)
/// are `head`, with virtio-net header `vnet`, and where its UDP payload starts; the
/// message's `start` is 0.
///
/// # Errors
/// [`TapDrop::Malformed`]: not an unfragmented IPv4 UDP frame whose header checksum
/// holds and whose lengths fit the frame, or a virtio-net header refused or naming
/// another GSO type.
fn header(vnet: &[u8], head: &[u8], frame_len: usize) -> Result<(Message, usize), TapDrop> {
    const ETH: usize = 14;
    let meta = OffloadMeta::from_virtio(vnet).map_err(|_| TapDrop::Malformed)?;
    let ip = head.get(ETH..ETH + 20).ok_or(TapDrop::Malformed)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if head[12..14] != [0x08, 0x00] || ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || fragment {
        return Err(TapDrop::Malformed);
    }
    // The IPv4 total length, not the frame's: short frames carry Ethernet padding.
    let at = ETH + ihl + 8;
    let (ip, udp) = match head.get(ETH..at) {
        Some(h) if total >= ihl + 8 && ETH + total <= frame_len => h.split_at(ihl),
        _ => return Err(TapDrop::Malformed),
    };
    // What the pipeline checks of a frame from the wire, since the header it gets is
    // written afresh. A super-packet's header is the sender's own, valid too.
    if checksum::sum(ip) != 0xffff {
        return Err(TapDrop::Malformed);
    }
    let len = total - ihl - 8;
    if len == 0 {
        return Err(TapDrop::Malformed);
    }
    let segment = match meta.gso {
        None => len,
        Some(g) if g.kind == GsoKind::UdpL4 => usize::from(g.size),
        Some(_) => return Err(TapDrop::Malformed),
    };
    let msg = Message {
        start: 0,
        len,
        segment,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
    };
    Ok((msg, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 UDP frame from 10.0.0.2:40000 to 10.0.0.1:4789 with `payload`.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = u16::try_from(28 + payload.len()).unwrap();
        f[14] = 0x45;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[20] = 0x40;
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 2]);
        f[30..34].copy_from_slice(&[10, 0, 0, 1]);
        let c = !checksum::sum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[34..36].copy_from_slice(&40_000u16.to_be_bytes());
        f[36..38].copy_from_slice(&4789u16.to_be_bytes());
        f[38..40].copy_from_slice(&(total - 20).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    const PLAIN: [u8; 10] = [0; 10];
    /// `gso_type` UDP_L4, `gso_size` 1000.
    const UDP_L4: [u8; 10] = [0, 5, 42, 0, 0xe8, 0x03, 0, 0, 0, 0];

    #[test]
    fn a_datagram_and_a_train_are_found_behind_their_headers() {
        let payload: Vec<u8> = (0..2500u32).map(|i| i.to_le_bytes()[0]).collect();
        let f = frame(&payload[..50]);
        let (msg, p) = datagrams(&PLAIN, &f).unwrap();
        assert_eq!((msg.len, msg.segment, msg.src, msg.src_port), (50, 50, Ipv4Addr::new(10, 0, 0, 2), 40_000));
        assert_eq!(p, &payload[..50]);
        // Ethernet padding after a short datagram is not payload.
        let mut padded = frame(&payload[..4]);
        padded.resize(60, 0xee);
        assert_eq!(datagrams(&PLAIN, &padded).unwrap().1, &payload[..4]);
        let train = frame(&payload);
        let (msg, p) = datagrams(&UDP_L4, &train).unwrap();
        assert_eq!((msg.len, msg.segment), (2500, 1000));
        assert_eq!(p, &payload[..]);
    }

    #[test]
    fn anything_else_is_malformed() {
        let good = frame(&[7; 100]);
        let bad = |f: fn(&mut Vec<u8>)| {
            let mut v = good.clone();
            f(&mut v);
            datagrams(&PLAIN, &v).map(|_| ())
        };
        assert_eq!(bad(|_| ()), Ok(()));
        assert_eq!(bad(|f| f[24] ^= 1), Err(TapDrop::Malformed), "IPv4 header checksum");
        assert_eq!(bad(|f| f[23] = 6), Err(TapDrop::Malformed), "TCP");
        assert_eq!(bad(|f| f[12] = 0x86), Err(TapDrop::Malformed), "not IPv4");
        assert_eq!(bad(|f| f[20] = 0x20), Err(TapDrop::Malformed), "a fragment");
        assert_eq!(bad(|f| f.truncate(100)), Err(TapDrop::Malformed), "shorter than its total length");
        assert_eq!(bad(|f| f.truncate(30)), Err(TapDrop::Malformed), "cut in the IPv4 header");
        assert_eq!(datagrams(&PLAIN, &frame(&[])).map(|_| ()), Err(TapDrop::Malformed), "no payload");
        let tso = [0, 1, 42, 0, 0xe8, 0x03, 0, 0, 0, 0];
        assert_eq!(datagrams(&tso, &good).map(|_| ()), Err(TapDrop::Malformed), "a TCP GSO type");
        assert_eq!(datagrams(&[0xff; 10], &good).map(|_| ()), Err(TapDrop::Malformed), "unknown header flags");
    }
}
