//! The dataplanes a bench compares: xlane in each of its modes, and the kernel's.

use serde::{Deserialize, Serialize};

/// A dataplane under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// xlane with `veth-xdp` pods (AF_XDP), workers sleeping when idle.
    Xlane,
    /// xlane with `veth-xdp` pods and busy-polling workers.
    XlaneBusyPoll,
    /// xlane with `veth-xdp` pods and the uplink in a UMEM of its own
    /// (`--uplink-umem own`: the layout a zero-copy NIC gets, frames copied once
    /// between the uplink's UMEM and the pods').
    XlaneOwnUmem,
    /// xlane with pods attached `veth-offload` (AF_PACKET with a virtio-net header:
    /// the pods keep TSO/GSO, TCP travels as super-packets), the uplink read through
    /// its XDP program and AF_XDP (`--uplink-rx xdp`, as on a zero-copy NIC).
    XlaneOffload,
    /// `veth-offload` pods and `--uplink-rx udp`: no XDP program on the uplinks, their
    /// VXLAN traffic read through UDP GRO sockets (a peer's GSO sends arrive whole).
    XlaneUdpUplink,
    /// `veth-offload` pods and `--uplink-rx packet`: no XDP program on the uplinks,
    /// their VXLAN traffic read off packet taps (GSO sends arrive whole, no IP/UDP
    /// receive per datagram). What a user gets by default on this lab: the CNI's
    /// default attachment, and xlaned's on an uplink without AF_XDP zero-copy.
    XlaneTapUplink,
    /// flannel-style kernel VXLAN (vxlan device, cni0 bridge).
    KernelVxlan,
    /// Kernel VXLAN with xlane's uplink program attached to each node's uplink and no
    /// socket behind it (every frame passes to the kernel): the kernel's path paying
    /// what an XDP program costs on veth, which segments every GSO packet (and copies
    /// it) before the program sees it — what xlane's AF_XDP uplink always pays here.
    KernelVxlanXdp,
    /// Kernel routing without encapsulation (flannel's host-gw).
    HostGw,
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Self; 9] = [
        Self::Xlane,
        Self::XlaneBusyPoll,
        Self::XlaneOwnUmem,
        Self::XlaneOffload,
        Self::XlaneUdpUplink,
        Self::XlaneTapUplink,
        Self::KernelVxlan,
        Self::KernelVxlanXdp,
        Self::HostGw,
    ];

    /// Whether this is xlane (in any mode).
    #[must_use]
    pub fn is_xlane(self) -> bool {
        matches!(
            self,
            Self::Xlane
                | Self::XlaneBusyPoll
                | Self::XlaneOwnUmem
                | Self::XlaneOffload
                | Self::XlaneUdpUplink
                | Self::XlaneTapUplink
        )
    }

    /// Whether it runs on a jumbo underlay: xlane's `veth-xdp` pods take only frames of
    /// one AF_XDP buffer (xlaned refuses them at pod MTU 8950).
    #[must_use]
    pub fn takes_jumbo(self) -> bool {
        !matches!(self, Self::Xlane | Self::XlaneBusyPoll | Self::XlaneOwnUmem)
    }

    /// Report name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Xlane => "xlane",
            Self::XlaneBusyPoll => "xlane busy-poll",
            Self::XlaneOwnUmem => "xlane own-UMEM uplink",
            Self::XlaneOffload => "xlane veth-offload, AF_XDP uplink",
            Self::XlaneUdpUplink => "xlane veth-offload, UDP uplink",
            Self::XlaneTapUplink => "xlane defaults (veth-offload, packet-tap uplink)",
            Self::KernelVxlan => "kernel VXLAN",
            Self::KernelVxlanXdp => "kernel VXLAN, uplink XDP",
            Self::HostGw => "kernel host-gw",
        }
    }
}
