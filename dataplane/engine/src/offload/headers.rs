//! Where the headers of an Ethernet/IPv4/TCP frame lie, checked once; field offsets
//! written by hand (fixed once IHL and the data offset are known), as the pipeline does.

use super::OffloadError;
use xlane_wire::{ETHERNET_HEADER_LEN, ethertype};

/// Offset of the IPv4 header (Ethernet II, no VLAN tag).
pub(super) const L3: usize = ETHERNET_HEADER_LEN;

/// IPv4 header fields (offsets from the IPv4 header).
pub(super) mod ip {
    pub(crate) const TOS: usize = 1;
    pub(crate) const TOTAL_LEN: usize = 2;
    pub(crate) const ID: usize = 4;
    pub(crate) const FRAG: usize = 6;
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTO: usize = 9;
    pub(crate) const CHECKSUM: usize = 10;
    pub(crate) const SRC: usize = 12;
    /// MF and the fragment offset.
    pub(crate) const FRAGMENTED: u16 = 0x3fff;
    pub(crate) const TCP: u8 = 6;
}

/// TCP header fields (offsets from the TCP header) and flag bits.
pub(super) mod tcp {
    pub(crate) const SEQ: usize = 4;
    pub(crate) const ACK: usize = 8;
    pub(crate) const DATA_OFFSET: usize = 12;
    pub(crate) const FLAGS: usize = 13;
    pub(crate) const CHECKSUM: usize = 16;
    /// [`CHECKSUM`] as the virtio-net header's `csum_offset`.
    pub(crate) const CHECKSUM_OFFSET: u16 = 16;
    pub(crate) const FIN: u8 = 0x01;
    pub(crate) const SYN: u8 = 0x02;
    pub(crate) const RST: u8 = 0x04;
    pub(crate) const PSH: u8 = 0x08;
    pub(crate) const URG: u8 = 0x20;
    pub(crate) const CWR: u8 = 0x80;
}

#[inline]
pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The checked layout of one Ethernet/IPv4/TCP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    /// Offset of the TCP header (`L3` + IHL × 4).
    pub(super) l4: usize,
    /// Offset of the payload (`l4` + data offset × 4): every header byte.
    pub(super) hdr_len: usize,
    /// End of the IPv4 packet (`L3` + total length); Ethernet padding lies after it.
    pub(super) end: usize,
}

impl Layout {
    /// Check `frame` is an unfragmented IPv4/TCP packet whose headers fit its total length,
    /// which fits the frame. Checksums are not looked at.
    pub(super) fn parse(frame: &[u8]) -> Result<Self, OffloadError> {
        if frame.len() < L3 + 20 || be16(frame, 12) != ethertype::IPV4 {
            return Err(OffloadError::NotIpv4);
        }
        let iph = &frame[L3..];
        let ihl = usize::from(iph[0] & 0x0f) * 4;
        let total = usize::from(be16(iph, ip::TOTAL_LEN));
        if iph[0] >> 4 != 4 || ihl < 20 || total < ihl || L3 + total > frame.len() {
            return Err(OffloadError::Ipv4Malformed);
        }
        if be16(iph, ip::FRAG) & ip::FRAGMENTED != 0 {
            return Err(OffloadError::Ipv4Fragment);
        }
        if iph[ip::PROTO] != ip::TCP {
            return Err(OffloadError::NotTcp);
        }
        let (l4, end) = (L3 + ihl, L3 + total);
        let thl = match frame.get(l4 + tcp::DATA_OFFSET) {
            Some(&b) if l4 + 20 <= end => usize::from(b >> 4) * 4,
            _ => return Err(OffloadError::TcpMalformed),
        };
        if thl < 20 || l4 + thl > end {
            return Err(OffloadError::TcpMalformed);
        }
        Ok(Self { l4, hdr_len: l4 + thl, end })
    }

    /// Payload bytes.
    pub(super) fn payload_len(&self) -> usize {
        self.end - self.hdr_len
    }
}

/// Sum of the pseudo-header's address and protocol words (the length is added per
/// packet), folded: one sum per super-packet.
pub(super) fn pseudo_base(frame: &[u8]) -> u16 {
    let a = L3 + ip::SRC;
    xlane_wire::checksum::combine(&[xlane_wire::checksum::sum(&frame[a..a + 8]), u16::from(ip::TCP)])
}

/// Recompute the IPv4 header checksum of the header `frame[L3..l4]`.
pub(super) fn fill_ip_checksum(frame: &mut [u8], l4: usize) {
    let at = L3 + ip::CHECKSUM;
    frame[at..at + 2].fill(0);
    let c = !xlane_wire::checksum::sum(&frame[L3..l4]);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}
