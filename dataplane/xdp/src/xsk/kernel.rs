//! The AF_XDP socket calls (`<linux/if_xdp.h>`): socket, UMEM registration, ring sizes
//! and mappings, bind, statistics, wakeups.
//!
//! Written here rather than taken from `xdpilone` for two things it lacks: registering a
//! UMEM with TX metadata room (`tx_metadata_len`, for checksum offload requests), and
//! mapping the rings of a socket it did not create (one inherited over a hitless
//! restart).

use super::ring::{Consumer, Desc, Producer, RingOffsets};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

pub(super) const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;

const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

/// `xdp_umem_reg.flags`: complete TX checksum requests in software (copy mode).
pub(super) const XDP_UMEM_TX_SW_CSUM: u32 = 1 << 1;
/// `xdp_umem_reg.flags`: `tx_metadata_len` is set (without it 6.8+ ignores the length).
pub(super) const XDP_UMEM_TX_METADATA_LEN: u32 = 1 << 2;
/// Bytes of `struct xsk_tx_metadata` xlane uses (flags, checksum start and offset),
/// kept before every transmitted packet in a UMEM registered with them.
pub(super) const TX_METADATA_LEN: u32 = 16;
/// TX descriptor `options`: metadata lies before the packet.
pub(super) const XDP_TX_METADATA: u32 = 1 << 1;
/// `xsk_tx_metadata.flags`: complete the checksum at `csum_start + csum_offset`.
pub(super) const XDP_TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;

/// `sxdp_flags`: bind to the UMEM of `sxdp_shared_umem_fd`.
pub(super) const XDP_SHARED_UMEM: u16 = 1 << 0;

/// `struct xdp_umem_reg` (Linux 6.8+ layout; older kernels take its prefix by size).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MmapOffsets {
    rx: RingOffsets,
    tx: RingOffsets,
    fill: RingOffsets,
    completion: RingOffsets,
}

/// `struct xdp_statistics` (Linux 5.9+).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Statistics {
    pub(super) rx_dropped: u64,
    pub(super) rx_invalid_descs: u64,
    pub(super) tx_invalid_descs: u64,
    pub(super) rx_ring_full: u64,
    pub(super) rx_fill_ring_empty_descs: u64,
    pub(super) tx_ring_empty_descs: u64,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SockAddrXdp {
    pub(super) family: u16,
    pub(super) flags: u16,
    pub(super) ifindex: u32,
    pub(super) queue_id: u32,
    pub(super) shared_umem_fd: u32,
}

/// A new AF_XDP socket.
pub(super) fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2), owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T: Copy>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    crate::sys::setsockopt(fd.as_raw_fd(), SOL_XDP, name, value)
}

fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<T> {
    crate::sys::getsockopt(fd.as_raw_fd(), SOL_XDP, name).map_err(|e| match e.kind() {
        io::ErrorKind::Unsupported => {
            io::Error::new(io::ErrorKind::Unsupported, "kernel too old: unexpected AF_XDP option layout")
        }
        _ => e,
    })
}

/// Register `len` bytes at `area` as the UMEM of socket `fd`, in frames of `frame_size`
/// with `tx_metadata_len` bytes of TX metadata room before each packet (0: none) and
/// `flags` (`XDP_UMEM_*`).
pub(super) fn register_umem(
    fd: BorrowedFd<'_>,
    area: NonNull<u8>,
    len: usize,
    frame_size: u32,
    flags: u32,
    tx_metadata_len: u32,
) -> io::Result<()> {
    let reg = UmemReg {
        addr: area.as_ptr() as u64,
        len: len as u64,
        chunk_size: frame_size,
        headroom: 0,
        flags,
        tx_metadata_len,
    };
    setsockopt(fd, XDP_UMEM_REG, &reg)
}

/// Size the fill and completion rings of socket `fd` (the UMEM's own socket, or one
/// sharing the UMEM on another interface queue).
pub(super) fn set_fill_completion(fd: BorrowedFd<'_>, size: u32) -> io::Result<()> {
    setsockopt(fd, XDP_UMEM_FILL_RING, &size)?;
    setsockopt(fd, XDP_UMEM_COMPLETION_RING, &size)
}

/// Size the RX and TX rings of socket `fd`.
pub(super) fn set_rx_tx(fd: BorrowedFd<'_>, size: u32) -> io::Result<()> {
    setsockopt(fd, XDP_RX_RING, &size)?;
    setsockopt(fd, XDP_TX_RING, &size)
}

/// The four rings of socket `fd`, sized `fill` (fill and completion) and `rx_tx`.
pub(super) struct Rings {
    pub(super) rx: Consumer<Desc>,
    pub(super) tx: Producer<Desc>,
    pub(super) fill: Producer<u64>,
    pub(super) completion: Consumer<u64>,
}

/// Map the rings of socket `fd`, whose sizes were set (by this process or the one that
/// made the socket).
pub(super) fn map_rings(fd: BorrowedFd<'_>, fill: u32, rx_tx: u32) -> io::Result<Rings> {
    let off: MmapOffsets = getsockopt(fd, XDP_MMAP_OFFSETS)?;
    Ok(Rings {
        rx: Consumer::map(fd, XDP_PGOFF_RX_RING, off.rx, rx_tx)?,
        tx: Producer::map(fd, XDP_PGOFF_TX_RING, off.tx, rx_tx)?,
        fill: Producer::map(fd, XDP_UMEM_PGOFF_FILL_RING, off.fill, fill)?,
        completion: Consumer::map(fd, XDP_UMEM_PGOFF_COMPLETION_RING, off.completion, fill)?,
    })
}

/// Bind socket `fd` as `addr` says.
pub(super) fn bind(fd: RawFd, addr: &SockAddrXdp) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<SockAddrXdp>()).expect("a sockaddr's size fits");
    // SAFETY: `addr` is a valid `sockaddr_xdp` that outlives the call, and `len` is its
    // size; `fd` is a socket the caller owns.
    let r = unsafe { libc::bind(fd, core::ptr::from_ref(addr).cast::<libc::sockaddr>(), len) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The kernel's counters of socket `fd`.
pub(super) fn statistics(fd: BorrowedFd<'_>) -> io::Result<Statistics> {
    getsockopt(fd, XDP_STATISTICS)
}

/// Make the kernel process socket `fd`'s TX ring (copy mode sends from this call).
pub(super) fn wake_tx(fd: BorrowedFd<'_>) {
    // SAFETY: sendto(2) with no buffer and no address: only the wakeup. Errors (EAGAIN
    // with a full completion ring, ENOBUFS, ENETDOWN) leave the ring for the next kick.
    unsafe { libc::sendto(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
}
