//! The AF_PACKET socket under a [`PacketPort`](super::PacketPort), and the batch I/O on
//! it: `sendmmsg`, and `recvmmsg` for frames its receive ring could not hold, over
//! message and iovec arrays allocated once per port.
//!
//! libc directly rather than nix's `recvmmsg`/`sendmmsg`: nix ties every iovec to one
//! lifetime shared with its `MultiHeaders` and the results iterator, while ours point at
//! three owners at once (the port's header array, buffers lent by
//! `FrameMemory::with_buffers`, the driver's jumbo store) for exactly one call; and a
//! packet socket needs no address or control message per message, which nix's
//! interface carries per call.

use super::ring::Slots;
use crate::programs::ClassicInsn;
use crate::sys::{set_socket_buffer, setsockopt_int};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use xlane_engine::BURST;
use xlane_engine::offload::VIRTIO_NET_HDR_LEN;

/// Receive and send buffer size asked for (SO_RCVBUFFORCE, else SO_RCVBUF capped by
/// `net.core.rmem_max`): a 64 KiB super-packet costs ~70 KiB of socket memory, so the
/// default 208 KiB holds three and drops the fourth.
pub(super) const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// How the socket joins its fanout group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FanoutMode {
    /// `PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_IGNORE_OUTGOING`: the group ignores
    /// frames the host sends out of the interface (Linux 6.x).
    HashIgnoringOutgoing,
    /// `PACKET_FANOUT_HASH` alone (the flag was refused): frames the host itself sends
    /// out of the veth reach the group too. The port's own sends do not either way
    /// (`PACKET_QDISC_BYPASS` skips the taps).
    Hash,
    /// In no group, receiving nothing (bound with protocol 0): a socket that only
    /// transmits.
    TransmitOnly,
}

/// An AF_PACKET `SOCK_RAW` socket bound to no interface yet (non-blocking,
/// close-on-exec) with a 10-byte virtio-net header on every frame, qdisc bypass,
/// outgoing frames ignored and large socket buffers; if it is to `receive`, a receive
/// ring ([`super::ring`]) of `ring` slots too, if given. [`join`] binds it.
///
/// # Errors
/// The failing step's name and the kernel's error.
pub(super) fn prepare(receive: bool, ring: Option<Slots>) -> Result<OwnedFd, (&'static str, io::Error)> {
    // Protocol 0: the socket receives nothing until bound to an interface, so no frame
    // of another interface slips in before.
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(("socket(AF_PACKET, SOCK_RAW)", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let s = fd.as_raw_fd();
    let opt = |what, level, name, v| setsockopt_int(s, level, name, v).map_err(|e| (what, e));
    opt("PACKET_VNET_HDR", libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
    opt("PACKET_QDISC_BYPASS", libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
    opt("PACKET_IGNORE_OUTGOING", libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
    let buffers =
        [(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF"), (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF")];
    for &(force, plain, what) in &buffers[..if receive { 2 } else { 1 }] {
        set_socket_buffer(s, force, plain, SOCKET_BUFFER).map_err(|e| (what, e))?;
    }
    if let Some(slots) = ring.filter(|_| receive) {
        // Before the bind: every frame the socket takes goes through the ring.
        super::ring::configure(fd.as_fd(), slots)?;
    }
    Ok(fd)
}

/// Bind socket `fd` from [`prepare`] to `ifindex`: to receive, with its filter, in hash
/// fanout group `group` (`receive`); else only to transmit.
///
/// # Errors
/// The failing step's name and the kernel's error.
pub(super) fn join(
    fd: &OwnedFd,
    ifindex: u32,
    receive: Option<(u16, Option<&[ClassicInsn]>)>,
) -> Result<FanoutMode, (&'static str, io::Error)> {
    let s = fd.as_raw_fd();
    let Some((group, filter)) = receive else {
        // Protocol 0 binds the interface for sending and registers no receive hook;
        // sent frames take their protocol from their Ethernet header.
        bind(s, ifindex, 0)?;
        return Ok(FanoutMode::TransmitOnly);
    };
    // Before the bind: no frame the filter refuses is ever queued.
    if let Some(f) = filter {
        let mut code: Vec<libc::sock_filter> =
            f.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
        let len = u16::try_from(code.len())
            .map_err(|_| ("SO_ATTACH_FILTER", io::Error::from(io::ErrorKind::InvalidInput)))?;
        let prog = libc::sock_fprog { len, filter: code.as_mut_ptr() };
        let size = libc::socklen_t::try_from(size_of::<libc::sock_fprog>()).expect("16");
        // SAFETY: `prog` points at `code`, both live for the call; the kernel copies the
        // program and keeps no pointer into either.
        let r = unsafe {
            libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, std::ptr::from_ref(&prog).cast(), size)
        };
        if r < 0 {
            return Err(("SO_ATTACH_FILTER", io::Error::last_os_error()));
        }
    }
    bind(s, ifindex, u16::try_from(libc::ETH_P_ALL).expect("0x0003").to_be())?;
    let fanout = |flags: libc::c_uint| {
        let arg = libc::c_int::try_from(u32::from(group) | (flags << 16)).map_err(|_| io::ErrorKind::InvalidInput)?;
        setsockopt_int(s, libc::SOL_PACKET, libc::PACKET_FANOUT, arg)
    };
    match fanout(libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING) {
        Ok(()) => Ok(FanoutMode::HashIgnoringOutgoing),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            fanout(libc::PACKET_FANOUT_HASH).map_err(|e| ("PACKET_FANOUT", e))?;
            Ok(FanoutMode::Hash)
        }
        Err(e) => Err(("PACKET_FANOUT", e)),
    }
}

/// Bind packet socket `s` to `ifindex` for `protocol` (network byte order).
fn bind(s: RawFd, ifindex: u32, protocol: u16) -> Result<(), (&'static str, io::Error)> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).expect("17");
    addr.sll_protocol = protocol;
    addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| ("ifindex", io::Error::from(io::ErrorKind::InvalidInput)))?;
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("20");
    // SAFETY: `addr` is a live sockaddr_ll for the call and `len` its size.
    if unsafe { libc::bind(s, std::ptr::from_ref(&addr).cast(), len) } < 0 {
        return Err(("bind(AF_PACKET, ifindex)", io::Error::last_os_error()));
    }
    Ok(())
}

/// Drops the kernel counted on the socket since the last call (`PACKET_STATISTICS`,
/// which resets on read): frames it could not take (receive ring, or buffer, full).
pub(super) fn take_drops(fd: RawFd) -> io::Result<u64> {
    let st: libc::tpacket_stats = crate::sys::getsockopt(fd, libc::SOL_PACKET, libc::PACKET_STATISTICS)?;
    Ok(u64::from(st.tp_drops))
}

/// Iovecs per received message: virtio-net header, buffer, jumbo spill.
pub(super) const RX_IOVS: usize = 3;
/// Iovecs of a batch, taken in order by its messages: a burst of receives, or of sends
/// (a frame takes two; a merged super-packet one for its headers and one per segment).
const IOVS: usize = RX_IOVS * BURST;

/// The port's message arrays: one `mmsghdr` per message of a burst, its iovecs, and the
/// virtio-net header of each. Allocated once (boxed), rewired per call: every pointer
/// is written right before the syscall that uses it.
pub(super) struct Batch {
    msgs: [libc::mmsghdr; BURST],
    iovs: [libc::iovec; IOVS],
    /// Iovecs taken by the messages set up.
    iovs_used: usize,
    /// Received headers; for sends, the header of the message with metadata.
    pub(super) hdrs: [[u8; VIRTIO_NET_HDR_LEN]; BURST],
    /// The header of a frame without metadata (all zero: complete, no GSO).
    zero: [u8; VIRTIO_NET_HDR_LEN],
    /// Messages set up for the next call.
    len: usize,
}

// SAFETY: the raw pointers in `msgs` and `iovs` are only meaningful during one call of a
// method of the port that owns the batch: each is rewritten before the syscall that
// reads it and never dereferenced by Rust code, so moving the batch to another thread
// between calls moves plain bytes.
unsafe impl Send for Batch {}

const EMPTY_IOV: libc::iovec = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };

impl Batch {
    pub(super) fn new() -> Box<Self> {
        // SAFETY: mmsghdr is plain old data (pointers, lengths, flags); all-zero is a
        // valid value (null pointers, no iovecs).
        let msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Box::new(Self {
            msgs: [msg; BURST],
            iovs: [EMPTY_IOV; IOVS],
            iovs_used: 0,
            hdrs: [[0; VIRTIO_NET_HDR_LEN]; BURST],
            zero: [0; VIRTIO_NET_HDR_LEN],
            len: 0,
        })
    }

    /// Messages set up.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Forget the messages set up.
    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.iovs_used = 0;
    }

    fn push(&mut self, parts: &[libc::iovec]) {
        self.push_iter(parts.iter().copied());
    }

    fn push_iter(&mut self, parts: impl IntoIterator<Item = libc::iovec>) {
        let i = self.len;
        assert!(i < BURST, "a burst of messages");
        let first = self.iovs_used;
        for p in parts {
            assert!(self.iovs_used < IOVS, "iovecs of a burst");
            self.iovs[self.iovs_used] = p;
            self.iovs_used += 1;
        }
        let iovs = &mut self.iovs[first..self.iovs_used];
        let hdr = &mut self.msgs[i].msg_hdr;
        hdr.msg_iov = iovs.as_mut_ptr();
        hdr.msg_iovlen = iovs.len();
        hdr.msg_flags = 0;
        self.msgs[i].msg_len = 0;
        self.len += 1;
    }

    /// Set up a receive into: header `i`, then `buf`, then `spill` (if any).
    pub(super) fn push_rx(&mut self, buf: &mut [u8], spill: Option<&mut [u8]>) {
        let i = self.len;
        let hdr = libc::iovec { iov_base: self.hdrs[i].as_mut_ptr().cast(), iov_len: VIRTIO_NET_HDR_LEN };
        let buf = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        match spill {
            Some(s) => self.push(&[hdr, buf, libc::iovec { iov_base: s.as_mut_ptr().cast(), iov_len: s.len() }]),
            None => self.push(&[hdr, buf]),
        }
    }

    /// Set up a send of `frame` with an all-zero header.
    pub(super) fn push_plain(&mut self, frame: &[u8]) {
        let hdr = libc::iovec { iov_base: self.zero.as_mut_ptr().cast(), iov_len: VIRTIO_NET_HDR_LEN };
        // The kernel only reads a send's iovecs: the cast to *mut does not license writes.
        self.push(&[hdr, libc::iovec { iov_base: frame.as_ptr().cast_mut().cast(), iov_len: frame.len() }]);
    }

    /// Set up a send of `frame` with header `hdrs[slot]`.
    pub(super) fn push_with_hdr(&mut self, slot: usize, frame: &[u8]) {
        let hdr = libc::iovec { iov_base: self.hdrs[slot].as_mut_ptr().cast(), iov_len: VIRTIO_NET_HDR_LEN };
        self.push(&[hdr, libc::iovec { iov_base: frame.as_ptr().cast_mut().cast(), iov_len: frame.len() }]);
    }

    /// Set up a send gathered from `head` (header and the frame's headers) and then
    /// `pieces`, in order.
    pub(super) fn push_gathered<'a>(&mut self, head: &[u8], pieces: impl Iterator<Item = &'a [u8]>) {
        // The kernel only reads a send's iovecs: the casts to *mut do not license writes.
        let iov = |b: &[u8]| libc::iovec { iov_base: b.as_ptr().cast_mut().cast(), iov_len: b.len() };
        self.push_iter(std::iter::once(iov(head)).chain(pieces.map(iov)));
    }

    /// Received message `i`: bytes (header included) and `msg_flags`.
    pub(super) fn received(&self, i: usize) -> (usize, libc::c_int) {
        (self.msgs[i].msg_len as usize, self.msgs[i].msg_hdr.msg_flags)
    }

    /// One `recvmmsg` into the messages set up; returns how many arrived (0 if none
    /// waits, or on an error).
    ///
    /// # Safety
    /// Every buffer a message was set up with ([`push_rx`](Self::push_rx)) must still be
    /// valid for writes of its length and not otherwise borrowed.
    pub(super) unsafe fn recv(&mut self, fd: RawFd) -> Result<usize, io::Error> {
        let vlen = libc::c_uint::try_from(self.len).expect("at most BURST");
        // SAFETY: the first `len` messages point at this batch's iovecs, which point at
        // its headers and at buffers the caller guarantees are writable; the kernel writes
        // only within the iovec lengths, and msg_len/msg_flags of each message.
        let r = unsafe { libc::recvmmsg(fd, self.msgs.as_mut_ptr(), vlen, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        self.clear();
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(usize::try_from(r).expect("non-negative")) }
    }

    /// `sendmmsg` of messages `from..len`; returns how many the kernel took, or its error
    /// for message `from` (EAGAIN/ENOBUFS: the socket or device is full).
    ///
    /// # Safety
    /// Every frame a message was set up with must still be valid for reads of its length.
    pub(super) unsafe fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let vlen = libc::c_uint::try_from(self.len - from).expect("at most BURST");
        // SAFETY: messages from..len point at this batch's iovecs, which point at its
        // headers and at frames the caller guarantees readable; the kernel reads within
        // the iovec lengths and writes each message's msg_len.
        let r = unsafe { libc::sendmmsg(fd, self.msgs[from..].as_mut_ptr(), vlen, libc::MSG_DONTWAIT) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(usize::try_from(r).expect("non-negative")) }
    }
}
