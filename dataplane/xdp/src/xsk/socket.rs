//! One AF_XDP socket on an (interface, queue): its rings, the kernel's statistics, TX
//! wakeups and the per-wakeup budget; the frames it moves are the [`Umem`](super::Umem)'s.

use super::kernel::{self, Rings, SOL_XDP};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Socket option (Linux 6.17+): descriptors a copy-mode socket's TX sends per wakeup,
/// from [`DEFAULT_TX_BUDGET`] up to its TX ring's size.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// What a copy-mode socket sends per wakeup where `XDP_MAX_TX_SKB_BUDGET` is missing
/// (or not asked for): the kernel's `TX_BATCH_SIZE`.
pub const DEFAULT_TX_BUDGET: u32 = 32;

/// Per-port AF_XDP statistics from the kernel (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Frames dropped for reasons other than a full ring.
    pub rx_dropped: u64,
    /// Invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// One AF_XDP socket bound to an (interface, queue), with its rings.
pub struct XskPort {
    // Field order is drop order: rings before the socket they are mapped from.
    pub(super) rings: Rings,
    /// The socket (the UMEM's own, shared with it, for its first port).
    pub(super) fd: Arc<OwnedFd>,
    pub(super) ifname: String,
    pub(super) ifindex: u32,
    pub(super) queue: u32,
    pub(super) zero_copy: bool,
    /// Frames this port holds in its fill ring and TX ring.
    pub(super) in_fill: u32,
    pub(super) in_tx: u32,
    /// Tags the frames this port's rings hold, to take them back when it closes.
    pub(super) token: u32,
    /// Bound through the UMEM's own descriptor, which outlives the port.
    pub(super) umem_socket: bool,
    /// Descriptors the kernel sends per TX wakeup.
    pub(super) tx_budget: u32,
    /// TX wakeups (`sendto`) made (a `Cell`: kicks take `&self`).
    pub(super) tx_wakeups: std::cell::Cell<u64>,
}

impl core::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XskPort")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("zero_copy", &self.zero_copy)
            .finish_non_exhaustive()
    }
}

impl XskPort {
    /// The socket descriptor (for the XSKMAP and for poll(2)).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Interface name.
    #[must_use]
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Interface index.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Queue id.
    #[must_use]
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the socket is bound in zero-copy mode.
    #[must_use]
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Frames waiting in the RX ring.
    #[must_use]
    pub fn rx_pending(&self) -> u32 {
        self.rings.rx.available()
    }

    /// The kernel's statistics for this socket.
    ///
    /// # Errors
    /// The getsockopt error.
    pub fn stats(&self) -> io::Result<SocketStats> {
        let s = kernel::statistics(self.fd())?;
        Ok(SocketStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Frames in the fill ring the kernel has not taken yet: 0 means it ran dry (frames
    /// arriving now are dropped until it is restocked).
    #[must_use]
    pub fn fill_pending(&self) -> u32 {
        self.rings.fill.pending()
    }

    /// Whether the kernel wants a wakeup to process the fill ring (need_wakeup mode).
    #[must_use]
    pub fn fill_needs_wakeup(&self) -> bool {
        self.rings.fill.needs_wakeup()
    }

    /// Kick the kernel to send what is in the TX ring, if it asked for it.
    pub fn kick_tx(&self) {
        if self.rings.tx.needs_wakeup() {
            self.wake_tx();
        }
    }

    fn wake_tx(&self) {
        kernel::wake_tx(self.fd());
        self.tx_wakeups.set(self.tx_wakeups.get() + 1);
    }

    /// Descriptors the kernel sends per TX wakeup: the whole TX ring where
    /// `XDP_MAX_TX_SKB_BUDGET` took, else [`DEFAULT_TX_BUDGET`] (zero-copy drivers send
    /// from their own NAPI budget).
    #[must_use]
    pub fn tx_budget(&self) -> u32 {
        self.tx_budget
    }

    /// TX wakeups (`sendto`) made so far.
    #[must_use]
    pub fn tx_wakeups(&self) -> u64 {
        self.tx_wakeups.get()
    }

    /// Descriptors in the TX ring the kernel has not taken yet.
    #[must_use]
    pub fn tx_pending(&self) -> u32 {
        self.rings.tx.pending()
    }

    /// Make the kernel send what is queued. In copy mode one wakeup sends at most
    /// [`tx_budget`](Self::tx_budget) descriptors (32 unless raised), so a single kick
    /// per burst could let the ring back up; wake it until the ring is drained, it stops
    /// making progress (completion ring full), or `max_wakeups` is reached.
    pub fn flush_tx(&self, max_wakeups: u32) {
        for _ in 0..max_wakeups {
            let before = self.rings.tx.pending();
            if before == 0 || !self.rings.tx.needs_wakeup() {
                return;
            }
            self.wake_tx();
            if self.rings.tx.pending() >= before {
                return;
            }
        }
    }
}

/// Ask the kernel to send up to `ring` descriptors per wakeup of copy-mode socket `fd`
/// (its TX ring's size); returns the budget in force: `ring`, or the kernel's default
/// where the option does not exist (before 6.17: `ENOPROTOOPT`) or is refused.
pub(super) fn raise_tx_budget(fd: RawFd, ring: u32) -> u32 {
    let Ok(value) = libc::c_int::try_from(ring) else { return DEFAULT_TX_BUDGET };
    match crate::sys::setsockopt_int(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, value) {
        Ok(()) => ring,
        Err(_) => DEFAULT_TX_BUDGET,
    }
}

/// Wait until one of `fds` is readable or `timeout_ms` passes (poll(2)).
///
/// # Errors
/// The poll error (EINTR is reported as `Ok(false)`).
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: pfds is a live, correctly sized array of pollfd for the duration of the call.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(r > 0)
}

impl XskPort {
    /// The raw descriptor, for [`wait_readable`].
    #[must_use]
    pub fn poll_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
