//! Opening a socket in three steps, so that `bind(2)` runs off the worker that serves
//! the UMEM: binding an AF_XDP socket to a veth takes the kernel 20–45 ms here (the
//! whole cost of opening one; the socket and its rings take ~0.1 ms), and a worker
//! held that long stops forwarding for every other port it serves.
//!
//! 1. [`Umem::prepare_port`] on the worker: the socket, its fill/completion and RX/TX
//!    rings, mapped; no frame given yet.
//! 2. [`PreparedSocket::bind`] on any thread: it needs only the socket, a duplicate of
//!    the UMEM's own socket and the address.
//! 3. [`Umem::adopt_port`] on the worker: the socket becomes an [`XskPort`] of the UMEM.
//!
//! Only sockets that share a UMEM already bound are opened so. The UMEM's first socket
//! decides its mode, and the zero-copy fallback re-registers the UMEM: both need the
//! worker ([`Umem::open_port`] does the three steps in one).

use super::{Umem, XDP_COPY, XDP_USE_NEED_WAKEUP, XDP_USE_SG, XDP_ZEROCOPY, XskError, XskPort, errno};
use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdpilone::xdp::SockAddrXdp;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, User};

/// `sxdp_flags`: bind to the UMEM of `sxdp_shared_umem_fd`.
const XDP_SHARED_UMEM: u16 = 1 << 0;

/// How long a bind retries a queue still busy with its previous socket.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Numbers UMEM registrations, so a socket is adopted only by the UMEM it was made for.
static REGISTRATIONS: AtomicU64 = AtomicU64::new(1);

/// A new registration's number.
pub(super) fn next_registration() -> u64 {
    REGISTRATIONS.fetch_add(1, Ordering::Relaxed)
}

/// A socket with its rings, made for one UMEM, to be bound (anywhere) and adopted by
/// that UMEM. Dropping it closes the socket; it holds no frame.
pub struct PreparedSocket {
    // Field order is drop order: rings before the device queue and socket they map.
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
    ifname: String,
    ifindex: u32,
    queue: u32,
    /// The UMEM's own socket, duplicated so the bind can run after the worker moved on
    /// (`None`: this is that socket).
    umem_fd: Option<OwnedFd>,
    flags: u16,
    registration: u64,
    bound: bool,
}

// SAFETY: the only parts that are not `Send` are xdpilone's ring pointers, which point
// into mappings owned by the socket descriptors this value holds (their `Arc`s are
// cloned only into these same fields), so moving the whole to another thread moves
// every user of those mappings with it. The device registration set the `DeviceQueue`
// updates on drop is xdpilone's lock-protected `Send + Sync` set. Nothing touches the
// rings before `Umem::adopt_port` brings them back to the UMEM's thread.
unsafe impl Send for PreparedSocket {}

impl core::fmt::Debug for PreparedSocket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PreparedSocket")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl PreparedSocket {
    /// Interface name.
    #[must_use]
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Queue id.
    #[must_use]
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Bind the socket to its (interface, queue), on any thread. A queue whose previous
    /// socket just closed stays busy until the kernel's deferred pool release runs
    /// (`xp_release_deferred`): a quick re-bind (a restarted daemon, a re-added port)
    /// gets EBUSY for a few milliseconds, so that is retried for up to a second.
    ///
    /// # Errors
    /// [`XskError::Socket`] at step "bind".
    pub fn bind(&mut self) -> Result<(), XskError> {
        if self.bound {
            return Ok(());
        }
        let mut addr = SockAddrXdp {
            family: u16::try_from(libc::AF_XDP).expect("AF_XDP is 44"),
            flags: self.flags,
            ifindex: self.ifindex,
            queue_id: self.queue,
            shared_umem_fd: 0,
        };
        if let Some(umem) = &self.umem_fd {
            addr.flags |= XDP_SHARED_UMEM;
            addr.shared_umem_fd = u32::try_from(umem.as_raw_fd()).expect("descriptors are non-negative");
        }
        let t0 = Instant::now();
        loop {
            match bind(self.user.as_raw_fd(), &addr) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t0.elapsed() < BUSY_RETRY => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(XskError::Socket {
                        step: "bind",
                        ifname: self.ifname.clone(),
                        queue: self.queue,
                        source,
                    });
                }
            }
        }
        self.bound = true;
        Ok(())
    }
}

fn bind(fd: RawFd, addr: &SockAddrXdp) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<SockAddrXdp>()).expect("a sockaddr's size fits");
    // SAFETY: `addr` is a valid `sockaddr_xdp` (xdpilone's `repr(C)` mirror of it) that
    // outlives the call, and `len` is its size; `fd` is a socket the caller owns.
    let r = unsafe { libc::bind(fd, core::ptr::from_ref(addr).cast::<libc::sockaddr>(), len) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl Umem {
    /// Step 1 of opening a socket off the worker (see the [module](self)): a socket on
    /// `ifname` queue `queue` with its rings, for this UMEM, not bound yet.
    ///
    /// # Errors
    /// [`XskError::Settings`] if the UMEM has no bound socket yet (its first one opens
    /// with [`open_port`](Self::open_port)); [`XskError::Socket`] naming the failed step.
    pub fn prepare_port(&mut self, ifname: &str, queue: u32) -> Result<PreparedSocket, XskError> {
        let Some(own) = self.own_fd else {
            return Err(XskError::Settings("a UMEM's first socket binds on its worker (open_port)"));
        };
        // SAFETY: `own` is the UMEM's own socket, open as long as `self.umem` lives, and
        // `self` is borrowed for the whole call.
        let own = unsafe { BorrowedFd::borrow_raw(own) };
        let dup = own.try_clone_to_owned().map_err(|source| XskError::Socket {
            step: "duplicate the UMEM socket",
            ifname: ifname.to_owned(),
            queue,
            source,
        })?;
        self.prepare(ifname, queue, Some(dup), 0)
    }

    /// Step 3: make a socket prepared for this UMEM and bound since one of its ports.
    ///
    /// # Errors
    /// [`XskError::Settings`] if it was made for another UMEM (or a registration of
    /// this one that was replaced) or is not bound: it is closed.
    pub fn adopt_port(&mut self, socket: PreparedSocket) -> Result<XskPort, XskError> {
        if socket.registration != self.registration {
            return Err(XskError::Settings("the socket was prepared for another UMEM"));
        }
        if !socket.bound {
            return Err(XskError::Settings("the socket is not bound"));
        }
        Ok(self.adopt(socket, None))
    }

    /// The three steps in one, on the worker. `zero_copy`: `Some(mode)` for the UMEM's
    /// first socket, `None` for one that shares it (and inherits its mode).
    pub(super) fn open_port_as(
        &mut self,
        ifname: &str,
        queue: u32,
        zero_copy: Option<bool>,
    ) -> Result<XskPort, XskError> {
        let mut socket = match zero_copy {
            Some(zc) => {
                let flags = if zc {
                    XDP_USE_NEED_WAKEUP | XDP_ZEROCOPY
                } else {
                    // Multi-buffer in copy mode only: a zero-copy driver may not take it.
                    XDP_USE_NEED_WAKEUP | XDP_COPY | XDP_USE_SG
                };
                self.prepare(ifname, queue, None, flags)?
            }
            None => self.prepare_port(ifname, queue)?,
        };
        socket.bind()?;
        Ok(self.adopt(socket, zero_copy))
    }

    fn prepare(
        &mut self,
        ifname: &str,
        queue: u32,
        umem_fd: Option<OwnedFd>,
        flags: u16,
    ) -> Result<PreparedSocket, XskError> {
        let fail = |step, source| XskError::Socket { step, ifname: ifname.to_owned(), queue, source };
        let name =
            CString::new(ifname).map_err(|_| fail("interface name", io::Error::from(io::ErrorKind::InvalidInput)))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(|e| fail("interface lookup", errno(e)))?;
        info.set_queue(queue);
        // The first socket is the UMEM's own descriptor; later ones get their own. Each
        // (interface, queue) has its own fill and completion rings.
        let sock = if umem_fd.is_none() { Socket::with_shared(&info, &self.umem) } else { Socket::new(&info) }
            .map_err(|e| fail("socket", errno(e)))?;
        let device = self.umem.fq_cq(&sock).map_err(|e| fail("fill/completion rings", errno(e)))?;
        let ring = NonZeroU32::new(self.settings.rx_tx_ring).expect("checked non-zero");
        // The bind itself is ours (`PreparedSocket::bind`), so xdpilone's flags stay 0.
        let config = SocketConfig { rx_size: Some(ring), tx_size: Some(ring), bind_flags: 0 };
        let user = self.umem.rx_tx(&sock, &config).map_err(|e| fail("rx/tx rings", errno(e)))?;
        let rx = user.map_rx().map_err(|e| fail("map rx ring", errno(e)))?;
        let tx = user.map_tx().map_err(|e| fail("map tx ring", errno(e)))?;
        Ok(PreparedSocket {
            rx,
            tx,
            device,
            user,
            ifname: ifname.to_owned(),
            ifindex: info.ifindex(),
            queue,
            umem_fd,
            flags,
            registration: self.registration,
            bound: false,
        })
    }

    /// A bound socket as a port of this UMEM.
    fn adopt(&mut self, socket: PreparedSocket, zero_copy: Option<bool>) -> XskPort {
        let PreparedSocket { rx, tx, device, user, ifname, ifindex, queue, .. } = socket;
        if let Some(zc) = zero_copy {
            self.own_fd = Some(user.as_raw_fd());
            self.zero_copy = zc;
        }
        let tx_budget = if self.zero_copy || !self.settings.raise_tx_budget {
            super::DEFAULT_TX_BUDGET
        } else {
            super::raise_tx_budget(user.as_raw_fd(), self.settings.rx_tx_ring)
        };
        self.next_token = self.next_token.wrapping_add(1);
        self.open_ports += 1;
        XskPort {
            rx,
            tx,
            device,
            user,
            ifname,
            ifindex,
            queue,
            zero_copy: self.zero_copy,
            in_fill: 0,
            in_tx: 0,
            token: self.next_token,
            umem_socket: zero_copy.is_some(),
            tx_budget,
            tx_wakeups: std::cell::Cell::new(0),
        }
    }
}
