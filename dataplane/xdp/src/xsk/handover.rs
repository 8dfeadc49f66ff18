//! Handing a UMEM and its sockets to another process: what a hitless restart passes so
//! that the new process forwards on the same rings, with no frame in them lost or sent
//! twice.
//!
//! Everything that carries traffic lives in the kernel or in shared memory: the frames
//! (a memfd), the UMEM registration and each socket (descriptors), and each ring's
//! producer and consumer indices (in the rings' own mappings, which the new process
//! maps from the socket and picks up where they stand). What lives only in the old
//! process is the bookkeeping of who holds each frame; [`UmemState`] carries it: the
//! frames in some socket's fill or TX ring (the kernel still holds them and will hand
//! them back through that socket's RX or completion ring), everything else free.
//!
//! The old process hands over between bursts: nothing it read from a ring is left
//! unreleased and nothing it wrote is left unsubmitted (the [`Producer`]/[`Consumer`]
//! calls release and submit in the same call). A frame the old process held itself
//! (received and not yet sent on) is free in the new one: it was the old one's to drop.
//!
//! Descriptors travel beside the state (SCM_RIGHTS, by the caller); the state is plain
//! data (serde), with no descriptor number in it.
//!
//! [`Producer`]: super::ring::Producer
//! [`Consumer`]: super::ring::Consumer

use super::{Area, Owner, Umem, UmemSettings, XskError, XskPort, kernel};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// A frame some socket's ring holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldFrame {
    /// Its base address in the UMEM.
    pub addr: u64,
    /// The token of the socket whose ring holds it.
    pub token: u32,
    /// In a TX ring (else a fill ring).
    pub tx: bool,
}

/// A UMEM's bookkeeping, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UmemState {
    /// Geometry and ring sizes.
    pub settings: UmemSettings,
    /// Frames held by sockets' rings; every other frame is free.
    pub held: Vec<HeldFrame>,
    /// The last socket token given out.
    pub next_token: u32,
    /// Whether its own socket is bound (and in which mode).
    pub bound: bool,
    /// Zero-copy.
    pub zero_copy: bool,
    /// Sockets open on it.
    pub open_ports: usize,
    /// Fill-ring growth its ports have taken.
    pub grown: usize,
}

/// A UMEM on its way to another process: its frames, its registration socket and its
/// bookkeeping.
#[derive(Debug)]
pub struct UmemHandover {
    /// The frames (a memfd).
    pub memory: OwnedFd,
    /// The registration socket (also the first port's socket).
    pub registration: OwnedFd,
    /// Who holds which frame.
    pub state: UmemState,
}

/// A socket's identity and settings, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SocketState {
    /// Interface.
    pub ifname: String,
    /// Its index.
    pub ifindex: u32,
    /// Queue.
    pub queue: u32,
    /// The token tagging the frames its rings hold.
    pub token: u32,
    /// The UMEM's own socket (travels as the UMEM's registration).
    pub umem_socket: bool,
    /// Descriptors the kernel sends per TX wakeup (a socket option already set).
    pub tx_budget: u32,
}

/// An AF_XDP socket on its way to another process.
#[derive(Debug)]
pub struct SocketHandover {
    /// The socket; `None` for the UMEM's own (see [`SocketState::umem_socket`]).
    pub fd: Option<OwnedFd>,
    /// What it is.
    pub state: SocketState,
}

impl Umem {
    /// Hand this UMEM over: duplicates of its memory and registration descriptors and
    /// its bookkeeping. Its sockets go separately ([`XskPort::hand_over`]), before or
    /// after. Dropping the UMEM afterwards unmaps this process's view only: the kernel
    /// keeps the registration for as long as a descriptor of it lives.
    ///
    /// # Errors
    /// A socket it is still closing did not close within a second (its frames would
    /// have no owner), or a descriptor could not be duplicated.
    pub fn hand_over(&mut self) -> Result<UmemHandover, XskError> {
        let fail = |step, source| XskError::Socket { step, ifname: String::new(), queue: 0, source };
        if !self.wait_closed(Duration::from_secs(1)) {
            return Err(fail("hand-over", std::io::Error::other("a socket is still closing")));
        }
        let held = self
            .owner
            .iter()
            .zip(&self.holder)
            .enumerate()
            .filter(|(_, (o, _))| matches!(o, Owner::Fill | Owner::Tx))
            .map(|(i, (&o, &token))| HeldFrame { addr: (i as u64) << self.shift, token, tx: o == Owner::Tx })
            .collect();
        Ok(UmemHandover {
            memory: self.area.memfd.try_clone().map_err(|e| fail("dup UMEM memory", e))?,
            registration: self.fd.try_clone().map_err(|e| fail("dup UMEM socket", e))?,
            state: UmemState {
                settings: self.settings,
                held,
                next_token: self.next_token,
                bound: self.bound,
                zero_copy: self.zero_copy,
                open_ports: self.open_ports,
                grown: self.grown,
            },
        })
    }

    /// The UMEM another process handed over: its frames mapped here, its bookkeeping
    /// taken as is (sockets follow through [`take_over_port`](Self::take_over_port)).
    ///
    /// # Errors
    /// [`XskError::Settings`] for bookkeeping that does not fit the memory (a frame
    /// outside it, held twice, or not frame-aligned); [`XskError::Mmap`] if the memory
    /// is not the size the settings say or cannot be mapped.
    pub fn take_over(h: UmemHandover) -> Result<Self, XskError> {
        let UmemHandover { memory, registration, state } = h;
        let settings = state.settings;
        let bytes = settings.check()?;
        let area = Area::map(memory, bytes).map_err(|source| XskError::Mmap { bytes, source })?;
        let mut umem = Self::from_parts(settings, area, Arc::new(registration));
        for f in &state.held {
            let i = umem.index(f.addr).filter(|_| f.addr == umem.base(f.addr));
            let Some(i) = i.filter(|&i| umem.owner[i] == Owner::Free) else {
                return Err(XskError::Settings("a held frame outside the UMEM, misaligned or held twice"));
            };
            umem.owner[i] = if f.tx { Owner::Tx } else { Owner::Fill };
            umem.holder[i] = f.token;
        }
        let mut free = std::mem::take(&mut umem.free);
        free.retain(|&addr| umem.index(addr).is_some_and(|i| umem.owner[i] == Owner::Free));
        umem.free = free;
        umem.next_token = state.next_token;
        umem.bound = state.bound;
        umem.zero_copy = state.zero_copy;
        umem.open_ports = state.open_ports;
        umem.grown = state.grown;
        Ok(umem)
    }

    /// A socket of this UMEM another process handed over, on the rings as they stand.
    /// How many frames its fill and TX rings hold is counted from the bookkeeping.
    ///
    /// # Errors
    /// [`XskError::Settings`] for a token this UMEM never gave out or a socket without
    /// its descriptor; [`XskError::Socket`] if its rings cannot be mapped.
    pub fn take_over_port(&mut self, h: SocketHandover) -> Result<XskPort, XskError> {
        let SocketHandover { fd, state } = h;
        if state.token == 0 || state.token > self.next_token {
            return Err(XskError::Settings("a socket token this UMEM never gave out"));
        }
        let fd = match (state.umem_socket, fd) {
            (true, _) => Arc::clone(&self.fd),
            (false, Some(fd)) => Arc::new(fd),
            (false, None) => return Err(XskError::Settings("a socket handed over without its descriptor")),
        };
        let fail =
            |source| XskError::Socket { step: "map rings", ifname: state.ifname.clone(), queue: state.queue, source };
        let rings = kernel::map_rings(fd.as_fd(), self.settings.fill_ring, self.settings.rx_tx_ring).map_err(fail)?;
        let (mut in_fill, mut in_tx) = (0, 0);
        for (o, &t) in self.owner.iter().zip(&self.holder) {
            if t == state.token {
                in_fill += u32::from(*o == Owner::Fill);
                in_tx += u32::from(*o == Owner::Tx);
            }
        }
        Ok(XskPort {
            rings,
            fd,
            ifname: state.ifname,
            ifindex: state.ifindex,
            queue: state.queue,
            zero_copy: self.zero_copy,
            in_fill,
            in_tx,
            token: state.token,
            umem_socket: state.umem_socket,
            tx_budget: state.tx_budget,
            tx_wakeups: std::cell::Cell::new(0),
        })
    }
}

impl XskPort {
    /// Hand this socket over: a duplicate of its descriptor (none for the UMEM's own,
    /// which travels with the UMEM) and what it is. This process must not touch the
    /// socket's rings any more (unless the other never takes them).
    ///
    /// # Errors
    /// The descriptor could not be duplicated.
    pub fn hand_over(&self) -> Result<SocketHandover, XskError> {
        let fd = if self.umem_socket {
            None
        } else {
            Some(self.fd.try_clone().map_err(|source| XskError::Socket {
                step: "dup socket",
                ifname: self.ifname.clone(),
                queue: self.queue,
                source,
            })?)
        };
        let state = SocketState {
            ifname: self.ifname.clone(),
            ifindex: self.ifindex,
            queue: self.queue,
            token: self.token,
            umem_socket: self.umem_socket,
            tx_budget: self.tx_budget,
        };
        Ok(SocketHandover { fd, state })
    }
}
