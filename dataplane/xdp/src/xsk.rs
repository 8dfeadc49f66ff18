//! UMEM and AF_XDP sockets for one worker.
//!
//! A worker owns one [`Umem`]: an mmap'd area of equal-sized frames registered with the
//! kernel, shared by the sockets of every port the worker serves (a port here is one
//! (interface, queue) pair). Because the memory is shared, a frame received on one port
//! is transmitted on another by moving its descriptor — no copy — and encapsulation
//! prepends headers into the frame's headroom.
//!
//! Every frame has an owner at all times, tracked here: the free list, a fill ring, the
//! application (received, being processed), or a TX ring. The tracking is what makes
//! [`Umem::buffers_mut`] sound: it hands out `&mut` slices only for distinct frames the
//! application owns, whatever descriptors a buggy kernel or caller presents.
//!
//! Frames cross this API as the engine's [`Packet<u64>`]: the frame's base address in
//! the UMEM, and the packet's offset and length in it. [`Umem`] is the engine's
//! [`FrameMemory`] for AF_XDP ports.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use xlane_engine::offload::PartialCsum;
use xlane_engine::{FrameMemory, Packet};

mod closer;
pub mod handover;
mod kernel;
mod large;
mod prepare;
mod ring;
mod socket;
mod umems;

pub use prepare::PreparedSocket;
pub use ring::Desc;
use socket::raise_tx_budget;
pub use socket::{DEFAULT_TX_BUDGET, SocketStats, XskPort, wait_readable};
pub use umems::{UmemId, Umems};

/// How to bind a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy otherwise.
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only (fails on drivers without support).
    ZeroCopy,
}

const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// Multi-buffer packets: a frame larger than a UMEM frame arrives in several
/// descriptors (Linux 6.6+, copy mode on any driver with `NETDEV_XDP_ACT_RX_SG`).
const XDP_USE_SG: u16 = 1 << 4;

/// UMEM geometry and ring sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UmemSettings {
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Number of frames.
    pub frames: u32,
    /// Entries in each port's fill and completion rings (a power of two).
    pub fill_ring: u32,
    /// Entries in each socket's RX and TX rings (a power of two).
    pub rx_tx_ring: u32,
    /// Have copy-mode sockets send their whole TX ring per wakeup
    /// (`XDP_MAX_TX_SKB_BUDGET`, where the kernel has it): one `sendto` per burst
    /// instead of one per 32 frames.
    pub raise_tx_budget: bool,
    /// Checksum requests on transmit: asked for here, and after [`Umem::new`] what the
    /// kernel granted (a kernel without them registers the UMEM without).
    #[serde(default)]
    pub tx_checksum: TxChecksum,
}

impl Default for UmemSettings {
    fn default() -> Self {
        Self {
            frame_size: 2048,
            frames: 16_384,
            fill_ring: 2048,
            rx_tx_ring: 2048,
            raise_tx_budget: true,
            tx_checksum: TxChecksum::Off,
        }
    }
}

/// Checksum requests on AF_XDP transmit (`XDP_TXMD_FLAGS_CHECKSUM`, Linux 6.8+): a
/// frame's checksum left partial by the engine, completed where the frame leaves.
/// Frames are sent with 16 bytes of metadata before them (`tx_metadata_len`), which
/// the 256-byte headroom every xlane frame has leaves room for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxChecksum {
    /// No requests: every frame is sent complete.
    #[default]
    Off,
    /// Requests for the device: a driver that offers them (netdev `xsk-features`
    /// tx-checksum) completes the checksum in zero-copy mode; in copy mode the kernel
    /// hands the device a partial-checksum packet (its checksum offload, or the stack's
    /// software fallback, completes it).
    Device,
    /// Requests the kernel completes in software as it copies the frame
    /// (`XDP_UMEM_TX_SW_CSUM`, copy mode): for veth labs, whose peer would otherwise
    /// receive the checksum unfinished (an AF_XDP socket there would see it wrong).
    Software,
}

impl TxChecksum {
    /// `(flags, tx_metadata_len)` of a UMEM registration that grants it.
    fn registration(self) -> (u32, u32) {
        match self {
            Self::Off => (0, 0),
            Self::Device => (kernel::XDP_UMEM_TX_METADATA_LEN, kernel::TX_METADATA_LEN),
            Self::Software => (kernel::XDP_UMEM_TX_METADATA_LEN | kernel::XDP_UMEM_TX_SW_CSUM, kernel::TX_METADATA_LEN),
        }
    }
}

/// Where the kernel puts a received frame in its UMEM frame (copy mode and the
/// drivers alike leave `XDP_PACKET_HEADROOM`): the room xlane pushes outer headers into.
pub const XDP_PACKET_HEADROOM: u32 = 256;

impl UmemSettings {
    /// The frame area's size in bytes, if the settings are valid.
    fn check(&self) -> Result<usize, XskError> {
        if !matches!(self.frame_size, 2048 | 4096) {
            return Err(XskError::Settings("frame size must be 2048 or 4096"));
        }
        if self.frames == 0 || !self.fill_ring.is_power_of_two() || !self.rx_tx_ring.is_power_of_two() {
            return Err(XskError::Settings("frames must be > 0 and ring sizes powers of two"));
        }
        Ok(self.frame_size as usize * self.frames as usize)
    }

    /// The largest Ethernet frame one UMEM frame receives; larger ones arrive in several
    /// (multi-buffer, copy mode: [`Umem::receive_large`]) or, on a zero-copy socket,
    /// are dropped by the kernel.
    #[must_use]
    pub fn max_frame(&self) -> u32 {
        self.frame_size - XDP_PACKET_HEADROOM
    }
}

/// A failure to set up AF_XDP.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// mmap of the frame area failed.
    #[error("mmap of a {bytes}-byte UMEM: {source}")]
    Mmap {
        /// Size requested.
        bytes: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Bad settings.
    #[error("invalid UMEM settings: {0}")]
    Settings(&'static str),
    /// A step of socket setup failed.
    #[error("{step} on {ifname} queue {queue}: {source}")]
    Socket {
        /// What was being done.
        step: &'static str,
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A new socket with `area` registered as its UMEM, with the checksum requests
/// `settings` asks for if the kernel grants them (else without: what it granted is
/// returned).
fn register(area: &Area, settings: &UmemSettings) -> Result<(Arc<OwnedFd>, TxChecksum), XskError> {
    register_as(area, settings, TxChecksum::registration)
}

/// [`register`], the registration's flags and metadata length for each mode given by
/// `registration`.
fn register_as(
    area: &Area,
    settings: &UmemSettings,
    registration: impl Fn(TxChecksum) -> (u32, u32),
) -> Result<(Arc<OwnedFd>, TxChecksum), XskError> {
    let fail = |source| XskError::Socket { step: "UMEM registration", ifname: String::new(), queue: 0, source };
    let mut granted = settings.tx_checksum;
    loop {
        let fd = kernel::socket().map_err(fail)?;
        let (flags, metadata) = registration(granted);
        // The kernel pins the area's pages for as long as the registration lives; `Umem`
        // drops the socket before unmapping the area (field order).
        match kernel::register_umem(fd.as_fd(), area.ptr(), area.len(), settings.frame_size, flags, metadata) {
            Ok(()) => return Ok((Arc::new(fd), granted)),
            // A kernel before 6.8 (no metadata) or 6.11 (no software completion)
            // refuses the flags: the engine completes checksums itself.
            Err(e) if granted != TxChecksum::Off && e.raw_os_error() == Some(libc::EINVAL) => {
                granted = TxChecksum::Off;
            }
            Err(e) => return Err(fail(e)),
        }
    }
}

/// Memory for frames: a memfd mapped shared, unmapped on drop. A memfd rather than an
/// anonymous mapping so that another process can map the same frames (a hitless
/// restart hands the descriptor over, see [`handover`]).
struct Area {
    map: crate::sys::SharedMapping,
    memfd: OwnedFd,
}

impl Area {
    fn new(len: usize) -> io::Result<Self> {
        let memfd = crate::sys::memfd(c"xlane-umem", len)?;
        Self::map(memfd, len)
    }

    /// Map `len` bytes of `memfd` (made by [`new`](Self::new), here or in another process).
    fn map(memfd: OwnedFd, len: usize) -> io::Result<Self> {
        let size = crate::sys::file_size(memfd.as_fd())?;
        if size != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame memory is {size} bytes, not {len}"),
            ));
        }
        // The file is `len` bytes long (checked above), so every mapped page is backed.
        Ok(Self { map: crate::sys::SharedMapping::map(memfd.as_fd(), len, 0)?, memfd })
    }

    /// The first byte.
    fn ptr(&self) -> NonNull<u8> {
        self.map.base()
    }

    /// Bytes.
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Who holds a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Free,
    Fill,
    App,
    Tx,
}

/// A worker's frame memory and the bookkeeping of who owns each frame.
pub struct Umem {
    // Field order is drop order: the registration socket before the area it points into.
    fd: Arc<OwnedFd>,
    area: Area,
    settings: UmemSettings,
    shift: u32,
    owner: Vec<Owner>,
    /// For frames in a fill or TX ring: the token of the port whose ring it is.
    holder: Vec<u32>,
    next_token: u32,
    free: Vec<u64>,
    /// Per-frame stamp of the last `buffers_mut` call that lent it out.
    lent: Vec<u32>,
    epoch: u32,
    /// Descriptors presented by the kernel for frames it did not own (counted, dropped).
    bad_descs: u64,
    /// Multi-buffer packets dropped: no slot left in the burst's jumbo store, longer
    /// than a slot, or a chain the ring broke off.
    large_dropped: u64,
    /// Whether the UMEM's own socket is bound to a port (later sockets share the UMEM
    /// through it).
    bound: bool,
    /// The mode the first port bound in (every port inherits it).
    zero_copy: bool,
    /// Sockets open on this UMEM.
    open_ports: usize,
    /// Frames fill rings may hold beyond their ports' first targets, together (a
    /// quarter of the UMEM), and how many of them they do.
    growth_allowance: usize,
    grown: usize,
    /// Sockets the closer thread is closing (their frames come back once it has).
    closing: Vec<closer::Closing>,
}

impl core::fmt::Debug for Umem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Umem").field("settings", &self.settings).field("free", &self.free.len()).finish_non_exhaustive()
    }
}

impl Umem {
    /// Map and register the frame area.
    ///
    /// # Errors
    /// [`XskError`] for bad settings or a kernel refusal.
    pub fn new(settings: UmemSettings) -> Result<Self, XskError> {
        let bytes = settings.check()?;
        let area = Area::new(bytes).map_err(|source| XskError::Mmap { bytes, source })?;
        let (fd, tx_checksum) = register(&area, &settings)?;
        Ok(Self::from_parts(UmemSettings { tx_checksum, ..settings }, area, fd))
    }

    /// A UMEM on `area`, registered as `fd`, every frame free.
    fn from_parts(settings: UmemSettings, area: Area, fd: Arc<OwnedFd>) -> Self {
        let frames = settings.frames as usize;
        Self {
            fd,
            area,
            settings,
            shift: settings.frame_size.trailing_zeros(),
            owner: vec![Owner::Free; frames],
            holder: vec![0; frames],
            next_token: 0,
            free: (0..u64::from(settings.frames)).rev().map(|i| i << settings.frame_size.trailing_zeros()).collect(),
            lent: vec![0; frames],
            epoch: 0,
            bad_descs: 0,
            large_dropped: 0,
            bound: false,
            zero_copy: false,
            open_ports: 0,
            growth_allowance: frames / 4,
            grown: 0,
            closing: Vec::new(),
        }
    }

    /// Open a socket on `ifname` queue `queue` sharing this UMEM.
    ///
    /// The first port decides the UMEM's mode: sockets that share a UMEM inherit the
    /// first one's zero-copy or copy binding (the kernel refuses mode flags on them), so
    /// `mode` only matters for the first port. With [`BindMode::Auto`] a refused
    /// zero-copy bind is retried in copy mode on a fresh registration (possible because
    /// no other port exists yet). A zero-copy UMEM therefore cannot also serve devices
    /// without zero-copy support (veth): give such a NIC its own worker UMEM.
    ///
    /// # Errors
    /// [`XskError::Socket`] naming the failed step.
    pub fn open_port(&mut self, ifname: &str, queue: u32, mode: BindMode) -> Result<XskPort, XskError> {
        if self.bound {
            return self.open_port_as(ifname, queue, None);
        }
        match mode {
            BindMode::Copy => self.open_port_as(ifname, queue, Some(false)),
            BindMode::ZeroCopy => self.open_port_as(ifname, queue, Some(true)),
            BindMode::Auto => match self.open_port_as(ifname, queue, Some(true)) {
                Err(XskError::Socket { step: "bind", .. }) => {
                    // The failed attempt configured rings on the UMEM's own socket; start
                    // over with a new registration of the same area.
                    self.reregister()?;
                    self.open_port_as(ifname, queue, Some(false))
                }
                other => other,
            },
        }
    }

    /// A new registration of the same area (after a failed first bind, which left rings
    /// configured on the old one). No port uses the old registration: none is bound.
    fn reregister(&mut self) -> Result<(), XskError> {
        (self.fd, self.settings.tx_checksum) = register(&self.area, &self.settings)?;
        Ok(())
    }

    /// The checksum requests its frames may carry on transmit (what the kernel granted).
    #[must_use]
    pub fn tx_checksum(&self) -> TxChecksum {
        self.settings.tx_checksum
    }

    /// Frame size in bytes.
    #[must_use]
    pub fn frame_size(&self) -> u32 {
        self.settings.frame_size
    }

    /// The geometry and ring sizes it was made with.
    #[must_use]
    pub fn settings(&self) -> UmemSettings {
        self.settings
    }

    /// Close `port` and take back the frames its fill and TX rings held; returns how
    /// many. Without this every removed port would leak a fill ring's worth of frames.
    /// Closing the socket unbinds it and waits out in-flight receives (`synchronize_net`
    /// in `xsk_release`), so the kernel no longer writes those frames. The UMEM's own
    /// socket stays bound while the UMEM lives: its frames stay with it.
    pub fn close_port(&mut self, port: XskPort) -> usize {
        let (token, umem_socket) = (port.token, port.umem_socket);
        drop(port);
        self.open_ports -= 1;
        if umem_socket {
            return 0;
        }
        self.take_back(token)
    }

    /// Let a port's fill ring hold `by` frames more than its first target, if the
    /// UMEM's growth allowance (a quarter of its frames, for all ports together) has
    /// room: a port that runs its ring dry under bursts takes more frames, while the
    /// other three quarters stay for ports' first targets (how many pods fit).
    pub fn grow_fill(&mut self, by: usize) -> bool {
        let ok = self.grown + by <= self.growth_allowance;
        if ok {
            self.grown += by;
        }
        ok
    }

    /// Give back growth a closing port had (see [`grow_fill`](Self::grow_fill)).
    pub fn shrink_fill(&mut self, by: usize) {
        self.grown = self.grown.saturating_sub(by);
    }

    /// Whether its first socket is bound (it decided the UMEM's mode): later ones may be
    /// prepared and bound off the worker ([`prepare_port`](Self::prepare_port)).
    #[must_use]
    pub fn bound(&self) -> bool {
        self.bound
    }

    /// Sockets open on this UMEM.
    #[must_use]
    pub fn open_ports(&self) -> usize {
        self.open_ports
    }

    /// Frames on the free list.
    #[must_use]
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Descriptors the kernel presented for frames it did not hold (dropped).
    #[must_use]
    pub fn bad_descriptors(&self) -> u64 {
        self.bad_descs
    }

    /// Multi-buffer packets dropped (see [`receive_large`](Self::receive_large)).
    #[must_use]
    pub fn large_dropped(&self) -> u64 {
        self.large_dropped
    }

    fn index(&self, addr: u64) -> Option<usize> {
        let i = usize::try_from(addr >> self.shift).ok()?;
        (i < self.owner.len()).then_some(i)
    }

    fn base(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.settings.frame_size) - 1)
    }

    /// Give up to `max` free frames to the port's fill ring, keeping `reserve` frames on
    /// the free list. Returns how many were given.
    pub fn refill(&mut self, port: &mut XskPort, max: u32, reserve: usize) -> u32 {
        let avail = u32::try_from(self.free.len().saturating_sub(reserve)).unwrap_or(u32::MAX);
        let want = max.min(avail);
        if want == 0 {
            return 0;
        }
        let given = port.rings.fill.free(want);
        let from = self.free.len() - given as usize;
        for (k, &addr) in (0..given).zip(&self.free[from..]) {
            port.rings.fill.write(k, addr);
            let i = self.index(addr).expect("free-list addresses lie inside the UMEM");
            self.owner[i] = Owner::Fill;
            self.holder[i] = port.token;
        }
        port.rings.fill.submit(given);
        self.free.truncate(from);
        port.in_fill += given;
        given
    }

    /// Frames currently in the port's fill ring.
    #[must_use]
    pub fn fill_level(port: &XskPort) -> u32 {
        port.in_fill
    }

    /// Return frames whose transmission completed on `port` to the free list.
    pub fn reap_completions(&mut self, port: &mut XskPort) -> u32 {
        let ready = port.rings.completion.ready(port.in_tx.max(1));
        let mut n = 0;
        for k in 0..ready {
            let addr = port.rings.completion.read(k);
            match self.index(addr) {
                Some(i) if self.owner[i] == Owner::Tx => {
                    self.owner[i] = Owner::Free;
                    self.free.push(self.base(addr));
                    n += 1;
                }
                _ => self.bad_descs += 1,
            }
        }
        port.rings.completion.release(ready);
        port.in_tx = port.in_tx.saturating_sub(n);
        n
    }

    /// Take up to `out.len()` received frames from `port`; returns how many were stored.
    pub fn receive(&mut self, port: &mut XskPort, out: &mut [Packet<u64>]) -> usize {
        let max = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let ready = port.rings.rx.ready(max);
        let mut n = 0;
        for k in 0..ready {
            let Desc { addr, len, .. } = port.rings.rx.read(k);
            if let Some(p) = self.take_received(&mut port.in_fill, addr, len) {
                out[n] = p;
                n += 1;
            }
        }
        port.rings.rx.release(ready);
        n
    }

    /// The frame of a received descriptor, taken from a port's fill ring (`in_fill`, its
    /// count) for the application, as a packet. A descriptor overrunning its frame gives the frame back
    /// to the free list; one for a frame the ring did not hold is ignored; both are
    /// counted bad (`None`).
    fn take_received(&mut self, in_fill: &mut u32, addr: u64, len: u32) -> Option<Packet<u64>> {
        let base = self.base(addr);
        let fits =
            addr.checked_add(u64::from(len)).is_some_and(|end| end <= base + u64::from(self.settings.frame_size));
        match self.index(addr) {
            Some(i) if self.owner[i] == Owner::Fill => {
                *in_fill = in_fill.saturating_sub(1);
                if fits {
                    self.owner[i] = Owner::App;
                    #[expect(clippy::cast_possible_truncation, reason = "an offset within a frame")]
                    let head = (addr - base) as u32;
                    return Some(Packet { buf: base, head, len });
                }
                self.owner[i] = Owner::Free;
                self.free.push(base);
            }
            _ => {}
        }
        self.bad_descs += 1;
        None
    }

    /// Lend the application-owned frames `bufs` (base addresses, as in [`Packet::buf`])
    /// out as whole-frame slices, in order.
    ///
    /// # Panics
    /// If a frame is not application-owned or appears twice: the caller passed
    /// descriptors that did not come from [`receive`](Self::receive) or an allocation.
    pub fn buffers_mut<R>(&mut self, bufs: &[u64], f: impl FnOnce(&mut [&mut [u8]]) -> R) -> R {
        assert!(bufs.len() <= 64, "bursts are at most 64 frames");
        let mut lent: [&mut [u8]; 64] = std::array::from_fn(|_| &mut [][..]);
        let n = self.lend(bufs, 0, &mut lent);
        assert_eq!(n, bufs.len(), "every frame lent is an address of this UMEM");
        f(&mut lent[..bufs.len()])
    }

    /// Into `out[k]`, the whole frame of `bufs[k]` for every `k` whose UMEM tag (the
    /// address's top byte, see [`Umems`]) is `tag`; returns how many were lent.
    ///
    /// # Panics
    /// As [`buffers_mut`](Self::buffers_mut).
    fn lend<'a>(&'a mut self, bufs: &[u64], tag: u8, out: &mut [&'a mut [u8]]) -> usize {
        self.epoch = self.epoch.wrapping_add(1);
        let size = self.settings.frame_size as usize;
        let mut n = 0;
        for (slot, &buf) in out.iter_mut().zip(bufs) {
            let (t, addr) = umems::split(buf);
            if t != tag {
                continue;
            }
            let i = self.index(addr).expect("address inside the UMEM");
            assert!(self.owner[i] == Owner::App, "frame {i} is not the application's");
            assert!(self.lent[i] != self.epoch, "frame {i} lent twice in one call");
            self.lent[i] = self.epoch;
            // SAFETY: frame i lies inside the mapped area (index() checked i < frames);
            // the checks above make every frame lent here distinct and owned by the
            // application (not by a kernel ring), so no other reference to these bytes
            // exists while the slices live; they borrow `self` mutably for `'a`, so no
            // second call can lend them again before they are dropped.
            *slot = unsafe { std::slice::from_raw_parts_mut(self.area.ptr().as_ptr().add(i * size), size) };
            n += 1;
        }
        n
    }

    /// Queue application-owned packets for transmission on `port`. Returns how many were
    /// queued, in order; the caller must [`release`](Self::release) the rest.
    pub fn transmit(&mut self, port: &mut XskPort, pkts: &[Packet<u64>]) -> usize {
        self.transmit_with(port, pkts, None)
    }

    /// [`transmit`](Self::transmit) packets whose checksum at `csum` is partial: with a
    /// checksum request each if the UMEM has them ([`tx_checksum`](Self::tx_checksum)),
    /// completed here first otherwise.
    pub fn transmit_partial(&mut self, port: &mut XskPort, pkts: &[Packet<u64>], csum: PartialCsum) -> usize {
        if self.settings.tx_checksum == TxChecksum::Off {
            xlane_engine::port::complete_partial(self, pkts, csum);
            return self.transmit_with(port, pkts, None);
        }
        self.transmit_with(port, pkts, Some(csum))
    }

    fn transmit_with(&mut self, port: &mut XskPort, pkts: &[Packet<u64>], csum: Option<PartialCsum>) -> usize {
        let mut queued: u32 = 0;
        let room = port.rings.tx.free(u32::try_from(pkts.len()).unwrap_or(u32::MAX));
        // With metadata registered the kernel wants its room before every packet.
        let meta_room = if self.settings.tx_checksum == TxChecksum::Off { 0 } else { kernel::TX_METADATA_LEN };
        for p in &pkts[..room as usize] {
            let Some(i) = self.index(p.buf) else { break };
            if self.owner[i] != Owner::App
                || p.head < meta_room
                || p.head.checked_add(p.len).is_none_or(|end| end > self.settings.frame_size)
            {
                break;
            }
            let options = match csum {
                Some(c) => {
                    self.write_tx_metadata(i, p.head, c);
                    kernel::XDP_TX_METADATA
                }
                None => 0,
            };
            port.rings.tx.write(queued, Desc { addr: self.base(p.buf) + u64::from(p.head), len: p.len, options });
            self.owner[i] = Owner::Tx;
            self.holder[i] = port.token;
            queued += 1;
        }
        port.rings.tx.submit(queued);
        port.in_tx += queued;
        queued as usize
    }

    /// Write frame `i`'s checksum request (`struct xsk_tx_metadata`: flags, then
    /// `csum_start` and `csum_offset` from the packet's first byte) in the 16 bytes before
    /// its packet at `head` (≥ 16, checked by the caller).
    fn write_tx_metadata(&mut self, i: usize, head: u32, csum: PartialCsum) {
        let mut meta = [0u8; kernel::TX_METADATA_LEN as usize];
        meta[..8].copy_from_slice(&kernel::XDP_TXMD_FLAGS_CHECKSUM.to_ne_bytes());
        meta[8..10].copy_from_slice(&csum.start.to_ne_bytes());
        meta[10..12].copy_from_slice(&csum.offset.to_ne_bytes());
        let at = i * self.settings.frame_size as usize + head as usize - meta.len();
        // SAFETY: frame i lies inside the mapped area (the caller found it by `index`)
        // and is the application's (checked by the caller): no kernel ring holds it and
        // no slice of it is lent (lending borrows `self`), so nothing else touches these
        // bytes; `head` ≥ 16 keeps the write inside frame i.
        unsafe { std::ptr::copy_nonoverlapping(meta.as_ptr(), self.area.ptr().as_ptr().add(at), meta.len()) };
    }

    /// Return an application-owned frame (any address inside it) to the free list.
    pub fn release(&mut self, frame: u64) {
        if let Some(i) = self.index(frame)
            && self.owner[i] == Owner::App
        {
            self.owner[i] = Owner::Free;
            self.free.push(self.base(frame));
        }
    }

    /// Take a free frame for the application; returns its base address.
    pub fn alloc(&mut self) -> Option<u64> {
        let addr = self.free.pop()?;
        let i = self.index(addr).expect("free-list addresses lie inside the UMEM");
        self.owner[i] = Owner::App;
        Some(addr)
    }

    /// Write a packet into a free frame at offset `headroom` (for frames the application
    /// makes itself: generators, tests). Returns it, application-owned.
    pub fn alloc_with(&mut self, headroom: u32, bytes: &[u8]) -> Option<Packet<u64>> {
        let len = u32::try_from(bytes.len()).ok()?;
        if headroom.checked_add(len)? > self.settings.frame_size {
            return None;
        }
        let buf = self.alloc()?;
        self.buffers_mut(&[buf], |b| b[0][headroom as usize..][..bytes.len()].copy_from_slice(bytes));
        Some(Packet { buf, head: headroom, len })
    }

    /// The bytes of an application-owned packet, for reading (tests, generators).
    pub fn with_packet<R>(&mut self, p: &Packet<u64>, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.buffers_mut(&[p.buf], |b| f(&mut b[0][p.head as usize..(p.head + p.len) as usize]))
    }
}

impl FrameMemory for Umem {
    type Buf = u64;

    fn buffer_size(&self) -> usize {
        self.settings.frame_size as usize
    }

    fn alloc(&mut self) -> Option<u64> {
        Umem::alloc(self)
    }

    fn release(&mut self, buf: u64) {
        Umem::release(self, buf);
    }

    fn with_buffers<R>(&mut self, bufs: &[u64], f: impl FnOnce(&mut [&mut [u8]]) -> R) -> R {
        self.buffers_mut(bufs, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that refuses checksum requests (before 6.8, or 6.8–6.10 for software
    /// completion) answers the registration with EINVAL: the UMEM is registered without
    /// them and says so, and its frames are then completed by the engine.
    #[test]
    fn a_refused_checksum_registration_falls_back_to_none() {
        if !xlane_netlab::privileged("a_refused_checksum_registration_falls_back_to_none") {
            return;
        }
        let settings = UmemSettings { frames: 64, tx_checksum: TxChecksum::Software, ..UmemSettings::default() };
        let area = Area::new(settings.check().unwrap()).unwrap();
        // A metadata length no kernel takes (not a multiple of 8) stands in for flags an
        // older kernel does not know: both are EINVAL.
        let refused = |mode| if mode == TxChecksum::Off { (0, 0) } else { (kernel::XDP_UMEM_TX_METADATA_LEN, 12) };
        let (_fd, granted) = register_as(&area, &settings, refused).unwrap();
        assert_eq!(granted, TxChecksum::Off);
        // And granted where the kernel takes it.
        let (_fd, granted) = register(&area, &settings).unwrap();
        assert_eq!(granted, TxChecksum::Software);
    }
}
