//! The VXLAN outer-header template.
//!
//! Everything in the 50 outer bytes except three fields is fixed per remote VTEP, so the
//! control side builds them once (as VPP's vxlan "rewrite" string) and the hot path
//! copies 50 bytes and patches the IPv4 total length, the UDP length and the UDP source
//! port. The IPv4 checksum is stored for total length 0 and patched incrementally.

use crate::checksum;
use crate::vxlan::{FLAG_I, VXLAN_HEADER_LEN};
use crate::{ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, Mac, UDP_HEADER_LEN, VXLAN_OVERHEAD};
use core::net::Ipv4Addr;

/// What a template is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapParams {
    /// Our uplink MAC (outer source).
    pub src_mac: Mac,
    /// The underlay next hop's MAC (outer destination): the remote node, or a router.
    pub dst_mac: Mac,
    /// Our VTEP address (outer source IP).
    pub src_ip: Ipv4Addr,
    /// The remote VTEP address.
    pub dst_ip: Ipv4Addr,
    /// The VXLAN UDP destination port (8472 for flannel/Linux, 4789 IANA).
    pub dst_port: u16,
    /// The 24-bit VNI.
    pub vni: u32,
    /// Outer TTL (the kernel's default for VXLAN is 64).
    pub ttl: u8,
}

const IP: usize = ETHERNET_HEADER_LEN;
const UDP: usize = IP + IPV4_HEADER_LEN;
const VXLAN: usize = UDP + UDP_HEADER_LEN;
/// Outer IPv4 + UDP + VXLAN bytes counted in the IPv4 total length besides the inner frame.
#[expect(clippy::cast_possible_truncation, reason = "36 fits in u16")]
const IP_OVERHEAD: u16 = (IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN) as u16;
#[expect(clippy::cast_possible_truncation, reason = "16 fits in u16")]
const UDP_OVERHEAD: u16 = (UDP_HEADER_LEN + VXLAN_HEADER_LEN) as u16;

/// A prebuilt outer Ethernet/IPv4/UDP/VXLAN header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EncapTemplate {
    bytes: [u8; VXLAN_OVERHEAD],
    /// IPv4 header checksum with total length 0.
    base_checksum: u16,
}

impl core::fmt::Debug for EncapTemplate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EncapTemplate").field("bytes", &format_args!("{:02x?}", self.bytes)).finish()
    }
}

impl EncapTemplate {
    /// Build the template: DF set, identification 0 (RFC 6864 allows any value with DF),
    /// TOS 0, UDP checksum 0 (RFC 7348 §5 allows it over IPv4 and the kernel's default).
    #[must_use]
    pub fn new(p: &EncapParams) -> Self {
        let mut b = [0u8; VXLAN_OVERHEAD];
        b[0..6].copy_from_slice(p.dst_mac.as_bytes());
        b[6..12].copy_from_slice(p.src_mac.as_bytes());
        b[12..14].copy_from_slice(&crate::ethertype::IPV4.to_be_bytes());
        let ip = &mut b[IP..UDP];
        ip[0] = 0x45;
        ip[6] = 0x40; // DF
        ip[8] = p.ttl;
        ip[9] = 17; // UDP
        ip[12..16].copy_from_slice(&p.src_ip.octets());
        ip[16..20].copy_from_slice(&p.dst_ip.octets());
        let base_checksum = !checksum::sum(ip);
        b[UDP + 2..UDP + 4].copy_from_slice(&p.dst_port.to_be_bytes());
        b[VXLAN] = FLAG_I;
        b[VXLAN + 4..VXLAN + 7].copy_from_slice(&p.vni.to_be_bytes()[1..4]);
        Self { bytes: b, base_checksum }
    }

    /// Write the outer headers for an inner Ethernet frame of `inner_len` bytes into
    /// `out` (the 50 bytes in front of it), with UDP source port `src_port`.
    ///
    /// `inner_len` must be at most 65535 − 36 (the caller's MTU check guarantees far less).
    #[inline]
    pub fn write(&self, out: &mut [u8; VXLAN_OVERHEAD], inner_len: u16, src_port: u16) {
        *out = self.bytes;
        let ip_len = inner_len.wrapping_add(IP_OVERHEAD);
        let udp_len = inner_len.wrapping_add(UDP_OVERHEAD);
        out[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
        out[IP + 10..IP + 12].copy_from_slice(&checksum::add_word(self.base_checksum, ip_len).to_be_bytes());
        out[UDP..UDP + 2].copy_from_slice(&src_port.to_be_bytes());
        out[UDP + 4..UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
    }

    /// The template bytes (length fields and source port zero).
    #[must_use]
    pub fn bytes(&self) -> &[u8; VXLAN_OVERHEAD] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ipv4Packet, UdpPacket, VxlanPacket, VxlanRepr};

    fn params() -> EncapParams {
        EncapParams {
            src_mac: Mac([0x02, 0, 0, 0, 0, 1]),
            dst_mac: Mac([0x02, 0, 0, 0, 0, 2]),
            src_ip: Ipv4Addr::new(192, 168, 50, 1),
            dst_ip: Ipv4Addr::new(192, 168, 50, 2),
            dst_port: 8472,
            vni: 1,
            ttl: 64,
        }
    }

    #[test]
    fn written_header_parses_with_valid_checksum() {
        let t = EncapTemplate::new(&params());
        let inner_len = 64u16;
        let mut frame = vec![0u8; VXLAN_OVERHEAD + usize::from(inner_len)];
        let out: &mut [u8; VXLAN_OVERHEAD] = (&mut frame[..VXLAN_OVERHEAD]).try_into().unwrap();
        t.write(out, inner_len, 50_000);
        let ip = Ipv4Packet::new_checked(&frame[IP..]).unwrap();
        assert!(ip.verify_checksum());
        assert!(ip.dont_frag());
        assert_eq!(usize::from(ip.total_len()), frame.len() - ETHERNET_HEADER_LEN);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port(), udp.checksum()), (50_000, 8472, 0));
        assert_eq!(usize::from(udp.len()), ip.payload().len());
        let vx = VxlanPacket::new_checked(udp.payload()).unwrap();
        assert_eq!(VxlanRepr::parse(&vx), Ok(VxlanRepr { vni: 1 }));
    }

    #[test]
    fn checksum_valid_for_every_length() {
        let t = EncapTemplate::new(&params());
        let mut out = [0u8; VXLAN_OVERHEAD];
        for len in (0..=9000u16).step_by(7) {
            t.write(&mut out, len, 1);
            let ip = Ipv4Packet::new_unchecked(&out[IP..UDP]);
            assert!(ip.verify_checksum(), "inner length {len}");
        }
    }
}
