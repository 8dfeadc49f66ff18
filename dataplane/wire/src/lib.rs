//! Packet formats of the xlane dataplane.
//!
//! Ethernet II, ARP, IPv4 and UDP are smoltcp's zero-copy views (re-exported here so
//! the rest of the dataplane names one crate); VXLAN (RFC 7348) and the precomputed
//! outer-header template used by encapsulation are written here because smoltcp has
//! neither. Every view follows smoltcp's pattern: `new_checked` for input,
//! `new_unchecked` for emit into a reused frame, and no accessor panics once
//! `check_len` has passed.
//!
//! [`Mac`] is the one MAC address type of the workspace (tables, templates, netlink and
//! the control protocols); smoltcp's `EthernetAddress` appears only where its views
//! hand one out, and converts with `From`.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod encap;
pub mod mac;
pub mod vxlan;

pub use mac::{BadMac, Mac};
pub use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, ETHERNET_HEADER_LEN, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN,
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4TimeExceeded, IpProtocol, Ipv4Packet, TcpPacket,
    UDP_HEADER_LEN, UdpPacket,
};
pub use vxlan::{VXLAN_HEADER_LEN, VxlanPacket, VxlanRepr};

/// Bytes a VXLAN encapsulation prepends: outer Ethernet + IPv4 (no options) + UDP + VXLAN.
pub const VXLAN_OVERHEAD: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;

/// [`VXLAN_OVERHEAD`] as a `u16`, for MTU arithmetic.
#[expect(clippy::cast_possible_truncation, reason = "50 fits in u16")]
pub const VXLAN_OVERHEAD_U16: u16 = VXLAN_OVERHEAD as u16;

/// Length of an ARP payload for Ethernet/IPv4 (RFC 826 with hlen 6, plen 4).
pub const ARP_ETH_IPV4_LEN: usize = 28;

/// EtherType values the dataplane distinguishes, as raw big-endian numbers so the
/// classifier can match on a `u16` read at a fixed offset.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// The flannel and Linux default VXLAN UDP port.
pub const VXLAN_PORT_LINUX: u16 = 8472;
/// The IANA-assigned VXLAN UDP port (RFC 7348).
pub const VXLAN_PORT_IANA: u16 = 4789;
