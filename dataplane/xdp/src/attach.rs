//! An XDP program on one interface: its XSKMAP, the loaded program, and the BPF link
//! that keeps it attached. Dropping it (or the process dying) detaches the program.

use crate::programs::{self, PodFilter, UplinkFilter, XDP_PASS};
use crate::sys;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Which program to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// The uplink pinhole (VXLAN to the local VTEP only).
    Uplink(UplinkFilter),
    /// A pod or host port (ARP and the cluster CIDR).
    Pod(PodFilter),
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (SKB) XDP: works on every device, slower.
    Generic,
}

/// Which modes to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModePreference {
    /// Native, falling back to generic.
    Auto,
    /// Only this mode.
    Only(XdpMode),
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Failure to put a program on an interface.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The XSKMAP could not be created.
    #[error("creating the XSKMAP for ifindex {ifindex}: {source}")]
    Map {
        /// Interface.
        ifindex: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The verifier rejected the program.
    #[error(transparent)]
    Load(#[from] sys::LoadError),
    /// No mode could attach (EBUSY: another XDP program is attached).
    #[error("attaching XDP to ifindex {ifindex} ({tried}): {source}")]
    Link {
        /// Interface.
        ifindex: u32,
        /// Modes tried.
        tried: &'static str,
        /// The last kernel error.
        #[source]
        source: io::Error,
    },
}

/// A program attached to an interface.
#[derive(Debug)]
pub struct XdpAttachment {
    // Drop order: the link first (detaches), then program and map.
    /// None: loaded for its XSKMAP only, never attached ([`XdpAttachment::load`]).
    link: Option<OwnedFd>,
    prog: OwnedFd,
    xskmap: OwnedFd,
    ifindex: u32,
    mode: XdpMode,
    /// The program takes multi-buffer packets (the uplink's).
    multi_buffer: bool,
    /// For an uplink read through packet taps: keeps its VXLAN off the host's stack
    /// ([`block_host_vxlan`](Self::block_host_vxlan)).
    host_block: Option<HostStackBlock>,
}

impl XdpAttachment {
    /// Create an XSKMAP of `queues` entries, load `program` against it and attach it to
    /// `ifindex` with a BPF link.
    ///
    /// # Errors
    /// [`AttachError`] for the step that failed.
    pub fn attach(
        ifindex: u32,
        name: &str,
        queues: u32,
        program: Program,
        prefer: ModePreference,
    ) -> Result<Self, AttachError> {
        let Self { prog, xskmap, multi_buffer, .. } = Self::load(ifindex, name, queues, program)?;
        let (modes, tried): (&[XdpMode], _) = match prefer {
            ModePreference::Auto => (&[XdpMode::Native, XdpMode::Generic], "native, then generic"),
            ModePreference::Only(XdpMode::Native) => (&[XdpMode::Native], "native"),
            ModePreference::Only(XdpMode::Generic) => (&[XdpMode::Generic], "generic"),
        };
        let mut last = None;
        for &mode in modes {
            let flags = match mode {
                XdpMode::Native => XDP_FLAGS_DRV_MODE,
                XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            };
            match sys::link_xdp(prog.as_fd(), ifindex, flags) {
                Ok(link) => {
                    return Ok(Self { link: Some(link), prog, xskmap, ifindex, mode, multi_buffer, host_block: None });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(AttachError::Link { ifindex, tried, source: last.expect("at least one mode tried") })
    }

    /// Create the XSKMAP and load `program` against it, attached nowhere: sockets can
    /// be inserted (and transmit), the interface's traffic all goes to the kernel. An
    /// uplink read through UDP GRO sockets has this (`xlaned --uplink-rx udp`): any
    /// XDP program on it would make the kernel cut GSO packets in front of it.
    ///
    /// # Errors
    /// [`AttachError`] for the step that failed.
    pub fn load(ifindex: u32, name: &str, queues: u32, program: Program) -> Result<Self, AttachError> {
        let xskmap = sys::create_xskmap(name, queues.max(1)).map_err(|source| AttachError::Map { ifindex, source })?;
        // The uplink's program takes multi-buffer packets (jumbo frames; it reads only
        // the headers); a pod's stays single-buffer, which also keeps its veth's MTU
        // within one AF_XDP frame.
        let multi_buffer = matches!(program, Program::Uplink(_));
        let prog = match program {
            Program::Uplink(f) => sys::load_xdp_frags(name, &programs::uplink(&f, xskmap.as_raw_fd(), XDP_PASS))?,
            Program::Pod(f) => sys::load_xdp(name, &programs::pod(&f, xskmap.as_raw_fd(), XDP_PASS))?,
        };
        Ok(Self { link: None, prog, xskmap, ifindex, mode: XdpMode::Generic, multi_buffer, host_block: None })
    }

    /// Steer queue `queue`'s matching traffic to the socket `xsk`.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn insert_socket(&self, queue: u32, xsk: BorrowedFd<'_>) -> io::Result<()> {
        sys::map_update_fd(self.xskmap.as_fd(), queue, xsk)
    }

    /// Stop steering queue `queue` (its traffic passes to the kernel again).
    ///
    /// # Errors
    /// The kernel's error.
    pub fn remove_socket(&self, queue: u32) -> io::Result<()> {
        sys::map_delete(self.xskmap.as_fd(), queue)
    }

    /// Take the program off the interface now, while sockets (on workers that have yet to
    /// close them) still hold this attachment: the interface is free for a new one at
    /// once, and its traffic goes to the kernel again.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn detach(&self) -> io::Result<()> {
        if let Some(b) = &self.host_block {
            sys::link_detach(b.link())?;
        }
        self.link.as_ref().map_or(Ok(()), |l| sys::link_detach(l.as_fd()))
    }

    /// Keep the interface's VXLAN to `filter`'s VTEP from the host's stack
    /// ([`HostStackBlock::uplink`]) for as long as the attachment lives or until
    /// [`detach`](Self::detach): an uplink read through packet taps
    /// ([`crate::packet::UplinkTap`]), which see each frame before the block drops it.
    /// An attachment taken over from another process gets a block of its own: the
    /// other's stays until that process exits, so the two overlap and VXLAN never
    /// reaches the host meanwhile.
    ///
    /// # Errors
    /// [`HostBlockError`]; the attachment is as it was.
    pub fn block_host_vxlan(&mut self, filter: &programs::UplinkFilter) -> Result<(), HostBlockError> {
        self.host_block = Some(HostStackBlock::uplink(self.ifindex, filter)?);
        Ok(())
    }

    /// Whether the program passes multi-buffer packets to its sockets (the uplink's:
    /// jumbo frames); a pod's never does.
    #[must_use]
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The mode that attached.
    #[must_use]
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The interface.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The program descriptor (for test runs).
    #[must_use]
    pub fn program(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// The link descriptor, if attached.
    #[must_use]
    pub fn link(&self) -> Option<BorrowedFd<'_>> {
        self.link.as_ref().map(AsFd::as_fd)
    }
}

/// What an attachment is, beside its descriptors, as plain data (for a handover).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachmentState {
    /// Interface.
    pub ifindex: u32,
    /// Attached in native mode (else generic).
    pub native: bool,
    /// The program takes multi-buffer packets.
    pub multi_buffer: bool,
    /// Attached through a link (else only loaded: an uplink read through UDP sockets);
    /// from an older xlaned, always.
    #[serde(default = "attached")]
    pub linked: bool,
}

fn attached() -> bool {
    true
}

/// An attachment on its way to another process: duplicates of its link, program and
/// XSKMAP. The program stays attached, and the map keeps naming the sockets, for as long
/// as a process holds the link.
#[derive(Debug)]
pub struct AttachmentHandover {
    /// The BPF link (none for a program only loaded).
    pub link: Option<OwnedFd>,
    /// The program.
    pub prog: OwnedFd,
    /// Its XSKMAP.
    pub xskmap: OwnedFd,
    /// What it is.
    pub state: AttachmentState,
}

impl XdpAttachment {
    /// Hand the attachment over (see [`AttachmentHandover`]).
    ///
    /// # Errors
    /// A descriptor could not be duplicated.
    pub fn hand_over(&self) -> io::Result<AttachmentHandover> {
        Ok(AttachmentHandover {
            link: self.link.as_ref().map(OwnedFd::try_clone).transpose()?,
            prog: self.prog.try_clone()?,
            xskmap: self.xskmap.try_clone()?,
            state: AttachmentState {
                ifindex: self.ifindex,
                native: self.mode == XdpMode::Native,
                multi_buffer: self.multi_buffer,
                linked: self.link.is_some(),
            },
        })
    }

    /// An attachment another process handed over.
    #[must_use]
    pub fn take_over(h: AttachmentHandover) -> Self {
        let AttachmentHandover { link, prog, xskmap, state } = h;
        let mode = if state.native { XdpMode::Native } else { XdpMode::Generic };
        Self { link, prog, xskmap, ifindex: state.ifindex, mode, multi_buffer: state.multi_buffer, host_block: None }
    }
}

/// Failure to keep the host's stack off an interface.
#[derive(Debug, thiserror::Error)]
pub enum HostBlockError {
    /// The verifier rejected the program.
    #[error(transparent)]
    Load(#[from] sys::LoadError),
    /// The tcx link could not be created.
    #[error(
        "attaching the host-block program at tcx ingress of ifindex {ifindex} (needs Linux 6.6+ and CAP_BPF + CAP_NET_ADMIN): {source}"
    )]
    Link {
        /// Interface.
        ifindex: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// A drop-all tc program at tcx ingress of a pod's host-side veth end, for a pod read
/// through AF_PACKET ([`crate::packet::PacketPort`]): the socket still sees every frame
/// (packet taps run before tc ingress), the host's stack none. Dropping it (or the
/// process dying) detaches the program, and the host sees the pod's frames again.
///
/// What else the host end needs (checked in `tests/packet_port.rs`): no IPv4 address and
/// IPv6 disabled on it (`net.ipv6.conf.<dev>.disable_ipv6 = 1`), so the host sends
/// nothing into the pod by itself (no router or neighbour solicitations); the pod's ARP
/// is answered by the engine's proxy.
#[derive(Debug)]
pub struct HostStackBlock {
    // Drop order: the link first (detaches), then the program.
    link: OwnedFd,
    prog: OwnedFd,
    ifindex: u32,
}

impl HostStackBlock {
    /// Load [`programs::tc_drop_all`] and attach it at tcx ingress of `ifindex`: the
    /// host's stack sees nothing of the interface.
    ///
    /// # Errors
    /// [`HostBlockError`] for the step that failed; nothing stays attached.
    pub fn attach(ifindex: u32) -> Result<Self, HostBlockError> {
        Self::attach_program(ifindex, &programs::tc_drop_all())
    }

    /// Load the pod pinhole [`programs::tc_pod`] and attach it at tcx ingress of
    /// `ifindex`: the host's stack sees what the engine does not take (traffic out of
    /// the cluster, to the node, IPv6), as behind the XDP pod program.
    ///
    /// # Errors
    /// [`HostBlockError`] for the step that failed; nothing stays attached.
    pub fn pinhole(ifindex: u32, filter: &programs::PodFilter) -> Result<Self, HostBlockError> {
        Self::attach_program(ifindex, &programs::tc_pod(filter))
    }

    /// Load the uplink pinhole [`programs::tc_uplink`] and attach it at tcx ingress of
    /// `ifindex`: the host's stack sees everything but the VXLAN the engine takes.
    ///
    /// # Errors
    /// [`HostBlockError`] for the step that failed; nothing stays attached.
    pub fn uplink(ifindex: u32, filter: &programs::UplinkFilter) -> Result<Self, HostBlockError> {
        Self::attach_program(ifindex, &programs::tc_uplink(filter))
    }

    fn attach_program(ifindex: u32, insns: &[u64]) -> Result<Self, HostBlockError> {
        let prog = sys::load_tcx_ingress("xlane_hostblock", insns)?;
        let link =
            sys::link_tcx_ingress(prog.as_fd(), ifindex).map_err(|source| HostBlockError::Link { ifindex, source })?;
        Ok(Self { link, prog, ifindex })
    }

    /// The interface.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The program descriptor (for test runs).
    #[must_use]
    pub fn program(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// The link descriptor.
    #[must_use]
    pub fn link(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }
}

impl HostStackBlock {
    /// Hand the block over to another process: duplicates of its link and program (it
    /// stays attached for as long as a process holds the link).
    ///
    /// # Errors
    /// A descriptor could not be duplicated.
    pub fn hand_over(&self) -> io::Result<(OwnedFd, OwnedFd)> {
        Ok((self.link.try_clone()?, self.prog.try_clone()?))
    }

    /// A block another process handed over ([`hand_over`](Self::hand_over)) on `ifindex`.
    #[must_use]
    pub fn take_over(link: OwnedFd, prog: OwnedFd, ifindex: u32) -> Self {
        Self { link, prog, ifindex }
    }
}
