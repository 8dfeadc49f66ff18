//! Outer headers for the segments of an encapsulated super-packet.
//!
//! The pipeline encapsulates a super-packet once, as any frame: its VXLAN outer headers
//! (from the remote node's template, with the flow's UDP source port) sit in front of
//! it, their lengths meaningless for a packet that will never travel whole. Each
//! segment gets a copy of them with its own lengths and IPv4 header checksum, which is
//! what the template would have written for a frame of that size.
//!
//! Or the kernel writes them: [`write_datagrams`] lays the segments out behind their
//! VXLAN headers for a UDP socket with `UDP_SEGMENT`, so a super-packet crosses the
//! host's stack to the uplink as one buffer (the port that does this promises
//! [`Offloads::tunnel_segmentation`](crate::Offloads)).

use super::headers::{be16, ip};
use super::{GsoPlan, OffloadError, OffloadMeta};
use crate::driver::MAX_SEGMENTS;
use arrayvec::ArrayVec;
use core::net::Ipv4Addr;
use xlane_wire::{ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN, VXLAN_HEADER_LEN, VXLAN_OVERHEAD, checksum};

const IP: usize = ETHERNET_HEADER_LEN;
const UDP: usize = IP + IPV4_HEADER_LEN;
const VXLAN: usize = UDP + UDP_HEADER_LEN;

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

/// Where the kernel sends the datagrams [`write_datagrams`] wrote, read from the outer
/// headers the pipeline put in front of the super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagrams {
    /// Segments written, one datagram each.
    pub segments: usize,
    /// Bytes of every datagram but the last (which may be shorter): the UDP GSO size.
    pub stride: usize,
    /// Bytes written in all.
    pub len: usize,
    /// Outer source address (the node's VTEP).
    pub src: Ipv4Addr,
    /// The flow's outer UDP source port (its hash, for the underlay's ECMP).
    pub src_port: u16,
    /// The remote VTEP.
    pub dst: Ipv4Addr,
    /// The VXLAN port.
    pub dst_port: u16,
    /// Outer TTL.
    pub ttl: u8,
}

/// Cut an encapsulated super-packet (`frame`: the outer headers the pipeline wrote, then
/// the inner super-packet that `meta` describes) into MSS-sized inner segments, each
/// behind a copy of its VXLAN header, back to back in `out`: the payload of one
/// `sendmsg` with `UDP_SEGMENT` = [`Datagrams::stride`], after which the kernel adds
/// outer IPv4/UDP headers per datagram (and the NIC, or the kernel's GSO, cuts them).
/// At most [`MAX_SEGMENTS`] segments, as the driver cuts. A frame without GSO metadata
/// (one larger than a buffer, from a jumbo pod) is one datagram, its partial checksum
/// completed.
///
/// # Errors
/// What [`gso::plan`](super::gso::plan) (or, without GSO, completing the checksum)
/// refuses; more than [`MAX_SEGMENTS`] segments ([`OffloadError::TooManySegments`]);
/// `out` too small ([`OffloadError::BufferTooSmall`]).
pub fn write_datagrams(frame: &[u8], meta: &OffloadMeta, out: &mut [u8]) -> Result<Datagrams, OffloadError> {
    let (outer, inner) = split(frame)?;
    let vxlan = &outer[VXLAN..VXLAN_OVERHEAD];
    if meta.gso.is_none() {
        let len = VXLAN_HEADER_LEN + inner.len();
        let out = out.get_mut(..len).ok_or(OffloadError::BufferTooSmall)?;
        out[..VXLAN_HEADER_LEN].copy_from_slice(vxlan);
        out[VXLAN_HEADER_LEN..].copy_from_slice(inner);
        super::complete_checksum(&mut out[VXLAN_HEADER_LEN..], meta)?;
        return Ok(datagrams(outer, 1, len, len));
    }
    let (plan, stride, len) = plan(inner, meta)?;
    let out = out.get_mut(..len).ok_or(OffloadError::BufferTooSmall)?;
    let mut slices: ArrayVec<&mut [u8], MAX_SEGMENTS> = out.chunks_mut(stride).collect();
    plan.write_range(inner, 0, VXLAN_HEADER_LEN, &mut slices)?;
    for s in &mut slices {
        s[..VXLAN_HEADER_LEN].copy_from_slice(vxlan);
    }
    Ok(datagrams(outer, plan.segments(), stride, len))
}

/// Where one datagram of [`datagram_parts`] comes from: its headers, then its payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatagramPart {
    /// Its VXLAN and inner headers, in the caller's header buffer.
    pub header: core::ops::Range<usize>,
    /// Its share of the super-packet's payload, in the encapsulated frame.
    pub payload: core::ops::Range<usize>,
}

/// [`write_datagrams`] of a super-packet (with GSO metadata) without copying its payload,
/// for a sender that gathers each datagram from two pieces: segment i's VXLAN and inner
/// headers go to `headers`, back to back, and `parts[i]` says where they are and where
/// its payload lies in `frame`. The datagrams are the same bytes.
///
/// # Errors
/// As [`write_datagrams`]; [`OffloadError::NotGso`] for a frame without GSO metadata.
pub fn datagram_parts(
    frame: &[u8],
    meta: &OffloadMeta,
    headers: &mut [u8],
    parts: &mut ArrayVec<DatagramPart, MAX_SEGMENTS>,
) -> Result<Datagrams, OffloadError> {
    let (outer, inner) = split(frame)?;
    let (plan, stride, len) = plan(inner, meta)?;
    let hdr = VXLAN_HEADER_LEN + plan.header_len();
    let headers = headers.get_mut(..hdr * plan.segments()).ok_or(OffloadError::BufferTooSmall)?;
    parts.clear();
    for (i, h) in headers.chunks_exact_mut(hdr).enumerate() {
        h[..VXLAN_HEADER_LEN].copy_from_slice(&outer[VXLAN..VXLAN_OVERHEAD]);
        plan.write_header(inner, i, &mut h[VXLAN_HEADER_LEN..]);
        let payload = plan.payload_range(i);
        parts.push(DatagramPart {
            header: i * hdr..(i + 1) * hdr,
            payload: VXLAN_OVERHEAD + payload.start..VXLAN_OVERHEAD + payload.end,
        });
    }
    Ok(datagrams(outer, plan.segments(), stride, len))
}

/// The outer headers and the inner frame of an encapsulated frame.
fn split(frame: &[u8]) -> Result<(&[u8], &[u8]), OffloadError> {
    if frame.len() <= VXLAN_OVERHEAD {
        return Err(OffloadError::NotIpv4);
    }
    Ok(frame.split_at(VXLAN_OVERHEAD))
}

/// Plan a super-packet's datagrams: the plan, every datagram's size but the last's,
/// and their bytes in all.
fn plan(inner: &[u8], meta: &OffloadMeta) -> Result<(GsoPlan, usize, usize), OffloadError> {
    let plan = super::gso::plan(inner, meta)?;
    let segments = plan.segments();
    if segments > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments);
    }
    let stride = VXLAN_HEADER_LEN + plan.max_segment_len();
    let len = stride * (segments - 1) + VXLAN_HEADER_LEN + plan.segment_len(segments - 1);
    Ok((plan, stride, len))
}

/// What [`Datagrams`] says of datagrams sent under `outer`.
fn datagrams(outer: &[u8], segments: usize, stride: usize, len: usize) -> Datagrams {
    let addr = |at: usize| Ipv4Addr::new(outer[at], outer[at + 1], outer[at + 2], outer[at + 3]);
    Datagrams {
        segments,
        stride,
        len,
        src: addr(IP + 12),
        src_port: be16(outer, UDP),
        dst: addr(IP + 16),
        dst_port: be16(outer, UDP + 2),
        ttl: outer[IP + ip::TTL],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment's outer headers equal what the template writes for a frame of its size.
    #[test]
    fn segment_headers_match_the_template() {
        let t = crate::offload::build::template(64);
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

    /// A frame without GSO metadata (a jumbo pod's frame larger than a buffer) is one
    /// datagram: its VXLAN header, then the inner frame with its partial checksum
    /// completed.
    #[test]
    fn a_frame_without_gso_is_one_datagram_with_its_checksum_completed() {
        use crate::offload::build::TcpSuper;
        use xlane_wire::{Ipv4Packet, TcpPacket};
        let (inner, meta) = TcpSuper::new(vec![0x3c; 8000], 8000).build();
        let meta = OffloadMeta { gso: None, ..meta };
        assert!(meta.csum.is_some(), "left partial by the pod");
        let frame = crate::offload::build::encapsulated(&inner, 41_000, 9);
        let mut out = vec![0u8; 10_000];
        let d = write_datagrams(&frame, &meta, &mut out).unwrap();
        assert_eq!((d.segments, d.stride, d.len, d.src_port, d.ttl), (1, 8 + inner.len(), 8 + inner.len(), 41_000, 9));
        assert_eq!(out[..8], frame[42..50]);
        let ip = Ipv4Packet::new_checked(&out[8 + 14..d.len]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!(write_datagrams(&frame, &meta, &mut out[..100]), Err(OffloadError::BufferTooSmall));
    }
}
