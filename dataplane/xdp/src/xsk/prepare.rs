//! Opening a socket in three steps, so that `bind(2)` runs off the worker that serves
//! the UMEM: binding an AF_XDP socket to a veth takes the kernel 20–45 ms here (the
//! whole cost of opening one; the socket and its rings take ~0.1 ms), and a worker
//! held that long stops forwarding for every other port it serves.
//!
//! 1. [`Umem::prepare_port`] on the worker: the socket, its fill/completion and RX/TX
//!    rings, mapped; no frame given yet.
//! 2. [`PreparedSocket::bind`] on any thread: it needs only the socket, the UMEM's own
//!    socket and the address.
//! 3. [`Umem::adopt_port`] on the worker: the socket becomes an [`XskPort`] of the UMEM.
//!
//! Only sockets that share a UMEM already bound are opened so. The UMEM's first socket
//! decides its mode, and the zero-copy fallback re-registers the UMEM: both need the
//! worker ([`Umem::open_port`] does the three steps in one).

use super::kernel::{self, Rings, SockAddrXdp, XDP_SHARED_UMEM};
use super::{Umem, XDP_COPY, XDP_USE_NEED_WAKEUP, XDP_USE_SG, XDP_ZEROCOPY, XskError, XskPort};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a bind retries a queue still busy with its previous socket.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// A socket with its rings, made for one UMEM, to be bound (anywhere) and adopted by
/// that UMEM. Dropping it closes the socket; it holds no frame.
pub struct PreparedSocket {
    // Field order is drop order: rings before the socket they are mapped from.
    rings: Rings,
    fd: Arc<OwnedFd>,
    ifname: String,
    ifindex: u32,
    queue: u32,
    /// The registration socket of the UMEM it was made for (held, so the bind can run
    /// after the worker moved on; `fd` itself for the UMEM's first socket). A UMEM
    /// adopts only sockets made for its current registration.
    umem: Arc<OwnedFd>,
    flags: u16,
    bound: bool,
}

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
        if !Arc::ptr_eq(&self.fd, &self.umem) {
            addr.flags |= XDP_SHARED_UMEM;
            addr.shared_umem_fd = u32::try_from(self.umem.as_raw_fd()).expect("descriptors are non-negative");
        }
        let t0 = Instant::now();
        loop {
            match kernel::bind(self.fd.as_raw_fd(), &addr) {
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

impl Umem {
    /// Step 1 of opening a socket off the worker (see the [module](self)): a socket on
    /// `ifname` queue `queue` with its rings, for this UMEM, not bound yet.
    ///
    /// # Errors
    /// [`XskError::Settings`] if the UMEM has no bound socket yet (its first one opens
    /// with [`open_port`](Self::open_port)); [`XskError::Socket`] naming the failed step.
    pub fn prepare_port(&mut self, ifname: &str, queue: u32) -> Result<PreparedSocket, XskError> {
        if !self.bound {
            return Err(XskError::Settings("a UMEM's first socket binds on its worker (open_port)"));
        }
        self.prepare(ifname, queue, true, 0)
    }

    /// Step 3: make a socket prepared for this UMEM and bound since one of its ports.
    ///
    /// # Errors
    /// [`XskError::Settings`] if it was made for another UMEM (or a registration of
    /// this one that was replaced) or is not bound: it is closed.
    pub fn adopt_port(&mut self, socket: PreparedSocket) -> Result<XskPort, XskError> {
        if !Arc::ptr_eq(&socket.umem, &self.fd) {
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
                self.prepare(ifname, queue, false, flags)?
            }
            None => self.prepare_port(ifname, queue)?,
        };
        socket.bind()?;
        Ok(self.adopt(socket, zero_copy))
    }

    /// A socket with its rings: a new one `shared` with the UMEM, else the UMEM's own.
    fn prepare(&mut self, ifname: &str, queue: u32, shared: bool, flags: u16) -> Result<PreparedSocket, XskError> {
        let fail = |step, source| XskError::Socket { step, ifname: ifname.to_owned(), queue, source };
        let name =
            CString::new(ifname).map_err(|_| fail("interface name", io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(fail("interface lookup", io::Error::last_os_error()));
        }
        // The first socket is the UMEM's own descriptor; later ones get their own. Each
        // (interface, queue) has its own fill and completion rings.
        let fd = if shared { Arc::new(kernel::socket().map_err(|e| fail("socket", e))?) } else { Arc::clone(&self.fd) };
        let (fill, rx_tx) = (self.settings.fill_ring, self.settings.rx_tx_ring);
        kernel::set_fill_completion(fd.as_fd(), fill).map_err(|e| fail("fill/completion rings", e))?;
        kernel::set_rx_tx(fd.as_fd(), rx_tx).map_err(|e| fail("rx/tx rings", e))?;
        let rings = kernel::map_rings(fd.as_fd(), fill, rx_tx).map_err(|e| fail("map rings", e))?;
        Ok(PreparedSocket {
            rings,
            fd,
            ifname: ifname.to_owned(),
            ifindex,
            queue,
            umem: Arc::clone(&self.fd),
            flags,
            bound: false,
        })
    }

    /// A bound socket as a port of this UMEM.
    fn adopt(&mut self, socket: PreparedSocket, zero_copy: Option<bool>) -> XskPort {
        let PreparedSocket { rings, fd, ifname, ifindex, queue, .. } = socket;
        if let Some(zc) = zero_copy {
            self.bound = true;
            self.zero_copy = zc;
        }
        let tx_budget = if self.zero_copy || !self.settings.raise_tx_budget {
            super::DEFAULT_TX_BUDGET
        } else {
            super::raise_tx_budget(fd.as_raw_fd(), self.settings.rx_tx_ring)
        };
        self.next_token = self.next_token.wrapping_add(1);
        self.open_ports += 1;
        XskPort {
            rings,
            fd,
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
