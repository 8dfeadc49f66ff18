//! The header fields a trace records and a filter matches: a read-only parse of a frame,
//! tolerant of anything (a truncated or malformed frame yields what could be read).
//!
//! This is not the pipeline's validation: the pipeline decides, this only describes what
//! it saw. Overlay frames (UDP to the node's VXLAN port) are described by their inner
//! packet, with the tunnel in [`Headers::outer`].

use core::net::Ipv4Addr;
use xlane_wire::{ETHERNET_HEADER_LEN, Mac, VXLAN_HEADER_LEN, ethertype};

const ETH: usize = ETHERNET_HEADER_LEN;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// An IPv4 header's deciding fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Fields {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// Total length as announced.
    pub total_len: u16,
    /// Whether the header checksum verifies.
    pub checksum_ok: bool,
}

/// The transport header, as far as a trace cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// None, or not read (truncated, a later fragment, another protocol).
    #[default]
    None,
    /// TCP or UDP ports.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// ICMP type and code.
    Icmp {
        /// Type.
        kind: u8,
        /// Code.
        code: u8,
    },
}

/// An ARP body's deciding fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFields {
    /// Operation (1 request, 2 reply).
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: Mac,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// A VXLAN tunnel's outer headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// Outer Ethernet source.
    pub eth_src: Mac,
    /// Outer Ethernet destination.
    pub eth_dst: Mac,
    /// Outer IPv4 header.
    pub ip: Ipv4Fields,
    /// Outer UDP source port (the flow entropy).
    pub src_port: u16,
    /// Outer UDP destination port.
    pub dst_port: u16,
    /// VXLAN network identifier (`None`: the I flag is clear).
    pub vni: Option<u32>,
}

/// What a frame carries. For an overlay frame, every field but [`outer`](Self::outer)
/// describes the inner frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Headers {
    /// Frame length in bytes.
    pub len: u32,
    /// Ethernet source (`None`: shorter than an Ethernet header).
    pub eth_src: Option<Mac>,
    /// Ethernet destination.
    pub eth_dst: Option<Mac>,
    /// EtherType.
    pub ethertype: u16,
    /// The tunnel, for an overlay frame.
    pub outer: Option<Tunnel>,
    /// IPv4 header.
    pub ipv4: Option<Ipv4Fields>,
    /// Transport header.
    pub transport: Transport,
    /// ARP body.
    pub arp: Option<ArpFields>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac(b: &[u8], at: usize) -> Option<Mac> {
    Some(Mac(b.get(at..at + 6)?.try_into().ok()?))
}

fn addr(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// The IPv4 header at the start of `ip`, its header length and payload (clipped to
/// what the frame holds). Without `checksums`, `checksum_ok` is left false.
fn ipv4(ip: &[u8], checksums: bool) -> Option<(Ipv4Fields, &[u8])> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let header = ip.get(..ihl.max(20))?;
    let fields = Ipv4Fields {
        src: addr(ip, 12)?,
        dst: addr(ip, 16)?,
        proto: ip[9],
        ttl: ip[8],
        total_len: be16(ip, 2)?,
        checksum_ok: checksums && ihl >= 20 && xlane_wire::checksum::sum(header) == 0xffff,
    };
    let later_fragment = be16(ip, 6)? & 0x1fff != 0;
    let end = usize::from(fields.total_len).clamp(header.len(), ip.len());
    let payload = if later_fragment { &[][..] } else { &ip[header.len()..end] };
    Some((fields, payload))
}

fn transport(proto: u8, l4: &[u8]) -> Transport {
    match proto {
        PROTO_TCP | PROTO_UDP => match (be16(l4, 0), be16(l4, 2)) {
            (Some(src), Some(dst)) => Transport::Ports { src, dst },
            _ => Transport::None,
        },
        PROTO_ICMP if l4.len() >= 2 => Transport::Icmp { kind: l4[0], code: l4[1] },
        _ => Transport::None,
    }
}

/// Describe `frame`. A UDP packet to `vxlan_port` (the node's, when it has one) is read as
/// an overlay frame.
#[must_use]
pub fn parse(frame: &[u8], vxlan_port: Option<u16>) -> Headers {
    parse_with(frame, vxlan_port, true)
}

/// [`parse`] without verifying IPv4 header checksums (`checksum_ok` is false): enough to
/// match a filter, and cheaper, for the frames a trace does not take.
#[must_use]
pub fn parse_unverified(frame: &[u8], vxlan_port: Option<u16>) -> Headers {
    parse_with(frame, vxlan_port, false)
}

fn parse_with(frame: &[u8], vxlan_port: Option<u16>, checksums: bool) -> Headers {
    let (mut h, l4) = parse_plain(frame, checksums);
    if let (Some(ip), Transport::Ports { src, dst }, Some(port)) = (h.ipv4, h.transport, vxlan_port)
        && ip.proto == PROTO_UDP
        && dst == port
        && let Some(vx) = l4.get(8..)
        && vx.len() >= VXLAN_HEADER_LEN
    {
        let vni = (vx[0] & 0x08 != 0).then(|| u32::from_be_bytes([0, vx[4], vx[5], vx[6]]));
        let tunnel = Tunnel {
            eth_src: h.eth_src.unwrap_or(Mac([0; 6])),
            eth_dst: h.eth_dst.unwrap_or(Mac([0; 6])),
            ip,
            src_port: src,
            dst_port: dst,
            vni,
        };
        h = Headers { len: h.len, outer: Some(tunnel), ..parse_plain(&vx[VXLAN_HEADER_LEN..], checksums).0 };
    }
    h
}

/// The frame's own headers (no tunnel), and its IPv4 payload (empty if none).
fn parse_plain(frame: &[u8], checksums: bool) -> (Headers, &[u8]) {
    #[expect(clippy::cast_possible_truncation, reason = "frames are far smaller than 4 GiB")]
    let mut h = Headers { len: frame.len() as u32, ..Headers::default() };
    let mut l4: &[u8] = &[];
    let (Some(dst), Some(src), Some(et)) = (mac(frame, 0), mac(frame, 6), be16(frame, 12)) else {
        return (h, l4);
    };
    (h.eth_dst, h.eth_src, h.ethertype) = (Some(dst), Some(src), et);
    let body = &frame[ETH..];
    match et {
        ethertype::IPV4 => {
            if let Some((ip, payload)) = ipv4(body, checksums) {
                h.ipv4 = Some(ip);
                h.transport = transport(ip.proto, payload);
                l4 = payload;
            }
        }
        ethertype::ARP => {
            h.arp = (|| {
                Some(ArpFields {
                    op: be16(body, 6)?,
                    sender_mac: mac(body, 8)?,
                    sender_ip: addr(body, 14)?,
                    target_ip: addr(body, 24)?,
                })
            })();
        }
        _ => {}
    }
    (h, l4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;

    #[test]
    fn reads_a_pod_frame_an_overlay_frame_and_arp() {
        let h = parse(&fixture("encap_udp_in"), Some(8472));
        let ip = h.ipv4.unwrap();
        assert_eq!(
            (ip.src, ip.dst, ip.proto, ip.checksum_ok),
            ("10.244.1.2".parse().unwrap(), "10.244.2.3".parse().unwrap(), 17, true)
        );
        assert!(h.outer.is_none());
        let h = parse(&fixture("encap_udp_out"), Some(8472));
        let t = h.outer.unwrap();
        assert_eq!((t.ip.dst, t.dst_port, t.vni), ("192.168.50.2".parse().unwrap(), 8472, Some(1)));
        assert_eq!(h.ipv4.unwrap().dst, "10.244.2.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            parse_unverified(&fixture("encap_udp_out"), Some(8472)),
            Headers { outer: Some(Tunnel { ip: unverified(t.ip), ..t }), ipv4: h.ipv4.map(unverified), ..h },
            "the same fields, checksums not verified"
        );
        // Not the node's VXLAN port: described as the plain UDP packet it is.
        assert!(parse(&fixture("encap_udp_out"), Some(4789)).outer.is_none());
        let a = parse(&fixture("arp_request_in"), None).arp.unwrap();
        assert_eq!(a.op, 1);
    }

    /// The fields as [`parse_unverified`] leaves them.
    fn unverified(ip: Ipv4Fields) -> Ipv4Fields {
        Ipv4Fields { checksum_ok: false, ..ip }
    }

    #[test]
    fn any_prefix_of_a_frame_parses() {
        let f = fixture("decap_udp_csum_in");
        for n in 0..f.len() {
            let _ = parse(&f[..n], Some(8472));
        }
    }
}
