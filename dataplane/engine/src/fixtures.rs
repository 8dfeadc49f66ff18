//! Test frames (feature `test-utils`): the fixtures of `tests/fixtures` (built by an
//! independent encoder, Scapy: `make_fixtures.py`), the one way to alter an address in
//! them, and builders for the frames a test, bench or example makes from a pod.
//!
//! Builders write the bytes by hand and fill every checksum (IPv4 header, UDP, ICMP);
//! the tests below read them back through `xlane_wire`'s (smoltcp's) views. MACs are
//! plain `[u8; 6]`, so every crate's MAC type converts to them.

use core::net::Ipv4Addr;
use xlane_wire::checksum;

/// Offset of the source address in an IPv4 header, for [`set_ipv4_addr`].
pub const IPV4_SRC: usize = 12;
/// Offset of the destination address in an IPv4 header, for [`set_ipv4_addr`].
pub const IPV4_DST: usize = 16;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const PROTO_ICMP: u8 = 1;
const PROTO_UDP: u8 = 17;

/// The fixture `tests/fixtures/<name>.bin` of this crate, from any crate's tests.
///
/// # Panics
/// If it cannot be read (the message names the path).
#[must_use]
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Recompute the header checksum of the IPv4 header at `ip_offset` (options included).
///
/// # Panics
/// If the frame is shorter than the header its IHL announces.
pub fn fill_ipv4_checksum(frame: &mut [u8], ip_offset: usize) {
    let ip = &mut frame[ip_offset..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    ip[10..12].fill(0);
    let c = !checksum::sum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Write `addr` at `field_offset` ([`IPV4_SRC`] or [`IPV4_DST`]) of the IPv4 header at
/// `ip_offset`, keeping its header checksum right. Transport checksums are left alone
/// (the fixtures' inner UDP carries none).
///
/// # Panics
/// If the frame is too short.
pub fn set_ipv4_addr(frame: &mut [u8], ip_offset: usize, field_offset: usize, addr: impl Into<Ipv4Addr>) {
    let at = ip_offset + field_offset;
    frame[at..at + 4].copy_from_slice(&addr.into().octets());
    fill_ipv4_checksum(frame, ip_offset);
}

/// The IPv4 header fields a builder lets the caller choose; [`Ipv4::new`] gives the
/// rest as a Linux sender would (TTL 64, DF set, identification 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live.
    pub ttl: u8,
    /// Identification.
    pub ident: u16,
    /// The don't-fragment flag.
    pub dont_fragment: bool,
}

impl Ipv4 {
    /// `src` to `dst`, TTL 64, DF, identification 0.
    #[must_use]
    pub const fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self { src, dst, ttl: 64, ident: 0, dont_fragment: true }
    }
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).expect("a frame shorter than 64 KiB")
}

/// Ethernet + IPv4 (no options) carrying `l4` as `protocol`, header checksum filled.
fn ipv4_frame(src_mac: [u8; 6], dst_mac: [u8; 6], ip: Ipv4, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETHERTYPE_IPV4);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&len_u16(20 + l4.len()).to_be_bytes());
    f.extend_from_slice(&ip.ident.to_be_bytes());
    f.extend_from_slice(&[if ip.dont_fragment { 0x40 } else { 0 }, 0, ip.ttl, protocol, 0, 0]);
    f.extend_from_slice(&ip.src.octets());
    f.extend_from_slice(&ip.dst.octets());
    fill_ipv4_checksum(&mut f, 14);
    f.extend_from_slice(l4);
    f
}

/// An Ethernet/IPv4/UDP frame from `src_mac` to `dst_mac` (a pod sends to its gateway
/// MAC), `src_port` → `dst_port`, carrying `payload`; IPv4 and UDP checksums filled.
#[must_use]
pub fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], ip: Ipv4, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = len_u16(8 + payload.len());
    let mut l4 = Vec::with_capacity(usize::from(len));
    l4.extend_from_slice(&src_port.to_be_bytes());
    l4.extend_from_slice(&dst_port.to_be_bytes());
    l4.extend_from_slice(&len.to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let pseudo = [checksum::sum(&ip.src.octets()), checksum::sum(&ip.dst.octets()), u16::from(PROTO_UDP), len];
    let c = !checksum::combine(&[checksum::combine(&pseudo), checksum::sum(&l4)]);
    // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
    l4[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    ipv4_frame(src_mac, dst_mac, ip, PROTO_UDP, &l4)
}

/// An ICMP echo message: request (type 8) or reply (type 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Echo request.
    Request {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
    },
    /// Echo reply.
    Reply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
    },
}

/// An Ethernet/IPv4/ICMP echo frame carrying `payload`; both checksums filled.
#[must_use]
pub fn icmp_echo(src_mac: [u8; 6], dst_mac: [u8; 6], ip: Ipv4, echo: Echo, payload: &[u8]) -> Vec<u8> {
    let (kind, ident, seq) = match echo {
        Echo::Request { ident, seq } => (8, ident, seq),
        Echo::Reply { ident, seq } => (0, ident, seq),
    };
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&[kind, 0, 0, 0]);
    l4.extend_from_slice(&ident.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(payload);
    let c = !checksum::sum(&l4);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(src_mac, dst_mac, ip, PROTO_ICMP, &l4)
}

/// A broadcast ARP request (Ethernet/IPv4, 42 bytes): who has `target_ip`, tell
/// `sender_ip` at `sender_mac`.
#[must_use]
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&ETHERTYPE_ARP);
    // Hardware Ethernet, protocol IPv4, lengths 6 and 4, operation request.
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlane_wire::{
        ArpHardware, ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, UdpPacket,
    };

    const POD: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];
    const GW: [u8; 6] = [0xee, 0xee, 0, 0, 0x01, 0x02];
    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

    /// The Ethernet and IPv4 layers as a parser sees them; returns the IPv4 payload.
    fn ipv4_payload(f: &[u8], ip: Ipv4, protocol: IpProtocol) -> Vec<u8> {
        let eth = EthernetFrame::new_checked(f).unwrap();
        assert_eq!((eth.dst_addr().as_bytes(), eth.src_addr().as_bytes()), (&GW[..], &POD[..]));
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
        let p = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(p.verify_checksum(), "IPv4 header checksum");
        assert_eq!((p.src_addr(), p.dst_addr(), p.next_header()), (ip.src, ip.dst, protocol));
        assert_eq!((p.hop_limit(), p.ident(), p.dont_frag()), (ip.ttl, ip.ident, ip.dont_fragment));
        assert_eq!(usize::from(p.total_len()), f.len() - 14);
        p.payload().to_vec()
    }

    #[test]
    fn udp_checksums_verify() {
        for (payload, ip) in [
            (&b""[..], Ipv4::new(A, B)),
            (&[0x5a; 18][..], Ipv4 { ttl: 3, ident: 0xbeef, dont_fragment: false, ..Ipv4::new(A, B) }),
            (&b"odd"[..], Ipv4::new(B, A)),
        ] {
            let f = udp(POD, GW, ip, 12345, 80, payload);
            let l4 = ipv4_payload(&f, ip, IpProtocol::Udp);
            let u = UdpPacket::new_checked(&l4[..]).unwrap();
            assert_ne!(u.checksum(), 0, "a checksum, not 'none'");
            assert!(u.verify_checksum(&ip.src.into(), &ip.dst.into()), "UDP checksum");
            assert_eq!((u.src_port(), u.dst_port(), u.payload()), (12345, 80, payload));
        }
    }

    #[test]
    fn icmp_echo_checksums_verify() {
        let ip = Ipv4::new(A, B);
        for (echo, kind) in [(Echo::Request { ident: 0x1234, seq: 7 }, 8), (Echo::Reply { ident: 1, seq: 65535 }, 0)] {
            for payload in [&b""[..], &b"abc"[..]] {
                let f = icmp_echo(POD, GW, ip, echo, payload);
                let l4 = ipv4_payload(&f, ip, IpProtocol::Icmp);
                assert_eq!(checksum::sum(&l4), 0xffff, "ICMP checksum (RFC 1071: the sum verifies to all ones)");
                assert_eq!(l4[0], kind);
                assert_eq!(&l4[8..], payload);
            }
        }
    }

    #[test]
    fn arp_request_parses() {
        let f = arp_request(POD, A, Ipv4Addr::new(10, 244, 1, 1));
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((eth.dst_addr().as_bytes(), eth.ethertype()), (&[0xff; 6][..], EthernetProtocol::Arp));
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!((arp.hardware_type(), arp.protocol_type()), (ArpHardware::Ethernet, EthernetProtocol::Ipv4));
        assert_eq!(arp.operation(), ArpOperation::Request);
        assert_eq!((arp.source_hardware_addr(), arp.source_protocol_addr()), (&POD[..], &A.octets()[..]));
        assert_eq!(arp.target_protocol_addr(), &[10, 244, 1, 1]);
    }

    #[test]
    fn set_ipv4_addr_keeps_the_checksum_right_with_options() {
        let mut f = fixture("encap_icmp_options_in");
        set_ipv4_addr(&mut f, 14, IPV4_DST, [10, 99, 0, 1]);
        let p = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(p.header_len() > 20, "the fixture has options");
        assert!(p.verify_checksum());
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 99, 0, 1));
    }
}
