//! Outer headers for the segments of an encapsulated super-packet.
//!
//! The pipeline encapsulates a super-packet once, as any frame: its VXLAN outer headers
//! (from the remote node's template, with the flow's UDP source port) sit in front of
//! it, their lengths meaningless for a packet that will never travel whole. Each
//! segment gets a copy of them with its own lengths and IPv4 header checksum, which is
//! what the template would have written for a frame of that size.

use super::headers::{be16, ip};
use xlane_wire::{ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN, VXLAN_OVERHEAD, checksum};

const IP: usize = ETHERNET_HEADER_LEN;
const UDP: usize = IP + IPV4_HEADER_LEN;

/// Copy the outer headers `outer` in front of the inner segment at
/// `seg[VXLAN_OVERHEAD..]` and set the outer IPv4 total length, header checksum and UDP
/// length for it. The outer UDP checksum stays as the template has it (zero: RFC 7348
/// allows it over IPv4, and the receiver checks the inner TCP checksum).
///
/// # Panics
/// If `seg` is not longer than [`VXLAN_OVERHEAD`] or its inner part exceeds what IPv4
/// can carry (a segment is at most an MTU).
pub fn push_outer(outer: &[u8; VXLAN_OVERHEAD], seg: &mut [u8]) {
    let inner = seg.len().checked_sub(VXLAN_OVERHEAD).filter(|&n| n > 0).expect("a segment behind the outer headers");
    let udp_len = u16::try_from(inner + VXLAN_OVERHEAD - UDP).expect("a segment fits IPv4");
    let ip_len = udp_len + u16::try_from(IPV4_HEADER_LEN).expect("20");
    let h = &mut seg[..VXLAN_OVERHEAD];
    h.copy_from_slice(outer);
    h[IP + ip::TOTAL_LEN..IP + ip::TOTAL_LEN + 2].copy_from_slice(&ip_len.to_be_bytes());
    h[UDP + 4..UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
    h[IP + ip::CHECKSUM..IP + ip::CHECKSUM + 2].fill(0);
    let c = !checksum::sum(&h[IP..IP + IPV4_HEADER_LEN]);
    h[IP + ip::CHECKSUM..IP + ip::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    debug_assert_eq!(be16(h, UDP + 4), udp_len);
    debug_assert_eq!(usize::from(udp_len), UDP_HEADER_LEN + 8 + inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlane_wire::Mac;
    use xlane_wire::encap::{EncapParams, EncapTemplate};

    /// A segment's outer headers equal what the template writes for a frame of its size.
    #[test]
    fn segment_headers_match_the_template() {
        let t = EncapTemplate::new(&EncapParams {
            src_mac: Mac([2, 0, 0, 0, 0, 1]),
            dst_mac: Mac([2, 0, 0, 0, 0, 2]),
            src_ip: core::net::Ipv4Addr::new(192, 168, 50, 1),
            dst_ip: core::net::Ipv4Addr::new(192, 168, 50, 2),
            dst_port: 8472,
            vni: 1,
            ttl: 64,
        });
        let mut outer = [0u8; VXLAN_OVERHEAD];
        // As the pipeline leaves it on a super-packet: a length that means nothing.
        t.write(&mut outer, 60_000, 41_234);
        for inner in [60usize, 1000, 1464] {
            let mut seg = vec![0xaau8; VXLAN_OVERHEAD + inner];
            push_outer(&outer, &mut seg);
            let mut want = [0u8; VXLAN_OVERHEAD];
            t.write(&mut want, u16::try_from(inner).unwrap(), 41_234);
            assert_eq!(seg[..VXLAN_OVERHEAD], want, "inner {inner}");
            assert!(seg[VXLAN_OVERHEAD..].iter().all(|&b| b == 0xaa));
        }
    }
}
