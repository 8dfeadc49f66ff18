//! The two ethtool operations xlane needs, over ethtool's generic netlink family
//! (Linux ≥ 5.6) rather than the `SIOCETHTOOL` ioctl, so no `unsafe` is needed:
//! turning transmit checksum offload off (`ETHTOOL_MSG_FEATURES_SET`) and counting the
//! receive queues in use (`ETHTOOL_MSG_CHANNELS_GET`).
//!
//! Like every other socket here, the one these functions open works in the calling
//! thread's network namespace (wrap a call in [`crate::in_netns`] for a pod's).

use crate::genl::{Attr, Family, Genl, Message};
use netlink_packet_core::{NLA_F_NESTED, NlasIterator};
use std::io;

/// ethtool's generic netlink family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EthtoolFamily;

impl Family for EthtoolFamily {
    const NAME: &'static str = "ethtool";
}

/// An ethtool message.
type Ethtool = Message<EthtoolFamily>;

const ETHTOOL_MSG_FEATURES_SET: u8 = 12;
const ETHTOOL_MSG_CHANNELS_GET: u8 = 17;

const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
const ETHTOOL_FLAG_OMIT_REPLY: u32 = 1 << 1;

/// `ETHTOOL_A_FEATURES_HEADER`, `ETHTOOL_A_CHANNELS_HEADER`: every request's first.
const ETHTOOL_A_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSETS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;
const ETHTOOL_A_CHANNELS_RX_COUNT: u16 = 6;
const ETHTOOL_A_CHANNELS_COMBINED_COUNT: u16 = 9;

/// What `ethtool -K dev tx on|off` switches: every transmit checksum feature.
const TX_CHECKSUM_FEATURES: [&str; 5] =
    ["tx-checksum-ipv4", "tx-checksum-ip-generic", "tx-checksum-ipv6", "tx-checksum-fcoe-crc", "tx-checksum-sctp"];

/// A request header naming the device, `flags` as given.
fn header(ifname: &str, flags: u32) -> Attr {
    let mut h = vec![Attr::Str(ETHTOOL_A_HEADER_DEV_NAME, ifname.to_owned())];
    if flags != 0 {
        h.push(Attr::U32(ETHTOOL_A_HEADER_FLAGS, flags));
    }
    Attr::Nested(ETHTOOL_A_HEADER, h)
}

/// `ETHTOOL_MSG_FEATURES_SET` switching every transmit checksum feature.
fn tx_checksum_request(ifname: &str, on: bool) -> Ethtool {
    let bits = TX_CHECKSUM_FEATURES
        .iter()
        .map(|name| {
            let mut bit = vec![Attr::Str(ETHTOOL_A_BITSET_BIT_NAME, (*name).to_owned())];
            if on {
                bit.push(Attr::Flag(ETHTOOL_A_BITSET_BIT_VALUE));
            }
            Attr::Nested(ETHTOOL_A_BITSETS_BIT, bit)
        })
        .collect();
    // A bit list without NOMASK: the listed bits are the mask, those with VALUE are set.
    let wanted = Attr::Nested(ETHTOOL_A_FEATURES_WANTED, vec![Attr::Nested(ETHTOOL_A_BITSET_BITS, bits)]);
    Ethtool::new(ETHTOOL_MSG_FEATURES_SET, vec![header(ifname, ETHTOOL_FLAG_OMIT_REPLY), wanted])
}

/// Turn transmit checksum offload on or off (`ethtool -K dev tx on|off`).
///
/// A packet an interface sends with offloaded checksums carries only a partial checksum
/// for the device to finish; an AF_XDP socket on the other end of a veth receives it
/// unfinished. Interfaces whose traffic reaches xlane (pod ends, the host port) therefore
/// compute checksums in software. Features the device cannot change are left alone.
///
/// # Errors
/// Unknown interface (`ENODEV`), no ethtool netlink family, or the kernel's error.
pub fn set_tx_checksum(ifname: &str, on: bool) -> io::Result<()> {
    Genl::<EthtoolFamily>::open()?.request(tx_checksum_request(ifname, on), 0).map(drop)
}

/// Receive queues in use on an interface (ethtool channels: combined + rx). Devices
/// without channel support have one.
///
/// `IFLA_NUM_RX_QUEUES` is not the answer: it counts allocated queues (veth allocates
/// one per CPU but activates one), and binding an inactive queue fails.
///
/// # Errors
/// Unknown interface, or the kernel's error.
pub fn rx_queues(ifname: &str) -> io::Result<u32> {
    let get = Ethtool::new(ETHTOOL_MSG_CHANNELS_GET, vec![header(ifname, 0)]);
    let replies = match Genl::<EthtoolFamily>::open()?.request(get, 0) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(1),
        Err(e) => return Err(e),
    };
    let mut count = 0u32;
    for reply in &replies {
        for nla in NlasIterator::new(&reply.received).flatten() {
            let kind = nla.kind() & !NLA_F_NESTED;
            if matches!(kind, ETHTOOL_A_CHANNELS_RX_COUNT | ETHTOOL_A_CHANNELS_COMBINED_COUNT)
                && let Ok(v) = <[u8; 4]>::try_from(nla.value())
            {
                count = count.saturating_add(u32::from_ne_bytes(v));
            }
        }
    }
    Ok(count.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn tx_checksum_off_request_bytes() {
        let msg = tx_checksum_request("eth0", false);
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        // Header: nested(1){ dev_name(2)="eth0\0", flags(3)=OMIT_REPLY }.
        let header = [
            24, 0, 1, 0x80, // nested, kind 1, 4 + 12 + 8 bytes
            9, 0, 2, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0, // "eth0\0" padded
            8, 0, 3, 0, 2, 0, 0, 0, // flags = 1 << 1
        ];
        assert_eq!(&buf[..24], &header);
        // Wanted: nested(3){ bits nested(3){ bit nested(1){ name(2) } × 5 } }, no VALUE.
        assert_eq!(&buf[24 + 2..24 + 4], &[3, 0x80]);
        assert_eq!(&buf[28 + 2..28 + 4], &[3, 0x80]);
        assert_eq!(&buf[32..52], b"\x1c\x00\x01\x80\x15\x00\x02\x00tx-checksum-");
        assert!(!buf.windows(4).any(|w| w == [4, 0, 3, 0]), "no VALUE flag when turning off");
        let on = tx_checksum_request("eth0", true);
        let mut buf = vec![0; on.buffer_len()];
        on.emit(&mut buf);
        assert_eq!(buf.windows(4).filter(|w| *w == [4, 0, 3, 0]).count(), 5, "VALUE on every bit");
    }
}
