//! What a device's driver offers XDP and AF_XDP, from the kernel's `netdev` generic
//! netlink family (`DEV_GET`; Linux ≥ 6.3, AF_XDP TX metadata features ≥ 6.8): whether
//! sockets can bind zero-copy, and whether the driver completes a checksum an AF_XDP
//! sender leaves partial (`XDP_TXMD_FLAGS_CHECKSUM`). A kernel without an attribute
//! reports the feature absent.
//!
//! Like every other socket here, the one this opens works in the calling thread's
//! network namespace.

use crate::genl::{Attr, Family, Genl, Message};
use netlink_packet_core::{NLA_F_NESTED, NlasIterator};
use std::io;

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;
const NETDEV_A_DEV_XSK_FEATURES: u16 = 6;

/// The kernel's `netdev` generic netlink family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetdevFamily;

impl Family for NetdevFamily {
    const NAME: &'static str = "netdev";
}

/// What a device's driver offers XDP and AF_XDP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpFeatures {
    /// `NETDEV_A_DEV_XDP_FEATURES`: `NETDEV_XDP_ACT_*` bits.
    pub xdp: u64,
    /// `NETDEV_A_DEV_XDP_ZC_MAX_SEGS`: buffers a zero-copy frame may span.
    pub zc_max_segs: u32,
    /// `NETDEV_A_DEV_XSK_FEATURES`: `NETDEV_XSK_FLAGS_*` bits (AF_XDP TX metadata).
    pub xsk: u64,
}

impl XdpFeatures {
    /// `NETDEV_XDP_ACT_BASIC`: XDP_PASS, XDP_DROP, XDP_ABORTED, XDP_TX.
    pub const BASIC: u64 = 1 << 0;
    /// `NETDEV_XDP_ACT_REDIRECT`.
    pub const REDIRECT: u64 = 1 << 1;
    /// `NETDEV_XDP_ACT_XSK_ZEROCOPY`: AF_XDP sockets can bind zero-copy.
    pub const XSK_ZEROCOPY: u64 = 1 << 3;
    /// `NETDEV_XDP_ACT_RX_SG`: multi-buffer frames on receive.
    pub const RX_SG: u64 = 1 << 5;
    /// `NETDEV_XSK_FLAGS_TX_TIMESTAMP`.
    pub const TX_TIMESTAMP: u64 = 1 << 0;
    /// `NETDEV_XSK_FLAGS_TX_CHECKSUM`: the driver completes a partial checksum an
    /// AF_XDP sender asks for in its TX metadata.
    pub const TX_CHECKSUM: u64 = 1 << 1;

    /// Whether AF_XDP sockets on it can bind zero-copy.
    #[must_use]
    pub fn zero_copy(&self) -> bool {
        self.xdp & Self::XSK_ZEROCOPY != 0
    }

    /// Whether its driver completes checksums AF_XDP senders leave partial.
    #[must_use]
    pub fn tx_checksum(&self) -> bool {
        self.xsk & Self::TX_CHECKSUM != 0
    }

    /// From a `DEV_GET` reply's attributes.
    fn parse(attrs: &[u8]) -> Self {
        let mut f = Self::default();
        for nla in NlasIterator::new(attrs).flatten() {
            let v = nla.value();
            let u64_of = || v.try_into().map(u64::from_ne_bytes).unwrap_or(0);
            match nla.kind() & !NLA_F_NESTED {
                NETDEV_A_DEV_XDP_FEATURES => f.xdp = u64_of(),
                NETDEV_A_DEV_XSK_FEATURES => f.xsk = u64_of(),
                NETDEV_A_DEV_XDP_ZC_MAX_SEGS => f.zc_max_segs = v.try_into().map(u32::from_ne_bytes).unwrap_or(0),
                _ => {}
            }
        }
        f
    }
}

/// What the driver of interface `ifindex` offers XDP and AF_XDP.
///
/// # Errors
/// No such interface (`ENODEV`), a kernel without the `netdev` family (before 6.3:
/// `Unsupported`), or the kernel's error.
pub fn xdp_features(ifindex: u32) -> io::Result<XdpFeatures> {
    let get = Message::<NetdevFamily>::new(NETDEV_CMD_DEV_GET, vec![Attr::U32(NETDEV_A_DEV_IFINDEX, ifindex)]);
    let replies = Genl::<NetdevFamily>::open()?.request(get, 0)?;
    let reply = replies.first().ok_or_else(|| io::Error::other("no netdev DEV_GET reply"))?;
    Ok(XdpFeatures::parse(&reply.received))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `DEV_GET` reply as 6.18 sends it for a veth: ifindex, XDP features
    /// (BASIC | REDIRECT | NDO_XMIT | RX_SG | NDO_XMIT_SG), zero-copy segments 1, no
    /// AF_XDP TX metadata features.
    #[test]
    fn a_veth_reply() {
        let mut reply = Vec::new();
        for (kind, value) in [
            (NETDEV_A_DEV_IFINDEX, 7u32.to_ne_bytes().to_vec()),
            (NETDEV_A_DEV_XDP_FEATURES, 0x67u64.to_ne_bytes().to_vec()),
            (NETDEV_A_DEV_XDP_ZC_MAX_SEGS, 1u32.to_ne_bytes().to_vec()),
            (NETDEV_A_DEV_XSK_FEATURES, 0u64.to_ne_bytes().to_vec()),
        ] {
            reply.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
            reply.extend_from_slice(&kind.to_ne_bytes());
            reply.extend_from_slice(&value);
        }
        let f = XdpFeatures::parse(&reply);
        assert_eq!(f, XdpFeatures { xdp: 0x67, zc_max_segs: 1, xsk: 0 });
        assert!(!f.zero_copy() && !f.tx_checksum());
        let mlx5 = XdpFeatures { xdp: 0x7f, zc_max_segs: 1, xsk: XdpFeatures::TX_TIMESTAMP | XdpFeatures::TX_CHECKSUM };
        assert!(mlx5.zero_copy() && mlx5.tx_checksum());
        assert_eq!(XdpFeatures::parse(&[]), XdpFeatures::default(), "an older kernel's reply: nothing offered");
    }
}
