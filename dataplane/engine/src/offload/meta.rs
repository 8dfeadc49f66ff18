//! Offload metadata with `struct virtio_net_hdr` semantics (virtio 1.2 §5.1.6), and
//! checksum completion.

use super::OffloadError;
use xlane_wire::checksum;

/// Bytes of the legacy virtio-net header (no `num_buffers`).
pub const VIRTIO_NET_HDR_LEN: usize = 10;
/// Bytes of the header with `num_buffers` (`VIRTIO_NET_F_MRG_RXBUF` or VERSION_1).
pub const VIRTIO_NET_HDR_MRG_LEN: usize = 12;

const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
/// Receive-side coalescing info (only meaningful from a device with `GUEST_RSC`): accepted
/// and ignored.
const F_RSC_INFO: u8 = 4;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// A checksum the sender left to "the NIC": the field at `start + offset` holds the
/// pseudo-header sum; the sum from `start` to the end of the packet completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialCsum {
    /// Where the summed bytes start (the transport header), from the frame's first byte.
    pub start: u16,
    /// Offset of the checksum field from `start` (16 for TCP, 6 for UDP).
    pub offset: u16,
}

/// The kinds of super-packet a virtio-net header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GsoKind {
    /// TCP over IPv4 (the one the engine segments and coalesces).
    TcpV4 = GSO_TCPV4,
    /// UDP fragmentation offload (deprecated; carried, not segmented).
    Udp = GSO_UDP,
    /// TCP over IPv6.
    TcpV6 = GSO_TCPV6,
    /// UDP segmentation (USO).
    UdpL4 = GSO_UDP_L4,
}

/// A super-packet to cut into `size`-byte segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// What to segment.
    pub kind: GsoKind,
    /// Payload bytes per segment (the MSS for TCP); never 0.
    pub size: u16,
    /// The virtio ECN bit: the sender uses ECN, CWR must appear on the first segment only.
    pub ecn: bool,
}

/// What a frame carries beyond its bytes. `Default` is a plain, complete frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadMeta {
    /// `NEEDS_CSUM`: a partial checksum to complete.
    pub csum: Option<PartialCsum>,
    /// A GSO type other than NONE, with its segment size.
    pub gso: Option<Gso>,
    /// The header's `hdr_len`: a hint (Ethernet + IP + TCP header bytes), which the
    /// engine recomputes rather than trusts, as the kernel does.
    pub hdr_len: u16,
    /// `DATA_VALID`: the checksums were verified (only meaningful towards a guest).
    pub data_valid: bool,
}

#[inline]
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl OffloadMeta {
    /// Read a virtio-net header (10 or 12 bytes, little-endian; `num_buffers` ignored).
    ///
    /// # Errors
    /// A short header, unknown flag bits or GSO type, the ECN bit alone, a GSO type with
    /// segment size 0.
    pub fn from_virtio(hdr: &[u8]) -> Result<Self, OffloadError> {
        if hdr.len() < VIRTIO_NET_HDR_LEN {
            return Err(OffloadError::HeaderShort);
        }
        let (flags, gso_type) = (hdr[0], hdr[1]);
        if flags & !(F_NEEDS_CSUM | F_DATA_VALID | F_RSC_INFO) != 0 {
            return Err(OffloadError::HeaderFlags);
        }
        let ecn = gso_type & GSO_ECN != 0;
        let kind = match gso_type & !GSO_ECN {
            GSO_NONE if ecn => return Err(OffloadError::HeaderGsoType),
            GSO_NONE => None,
            GSO_TCPV4 => Some(GsoKind::TcpV4),
            GSO_UDP => Some(GsoKind::Udp),
            GSO_TCPV6 => Some(GsoKind::TcpV6),
            GSO_UDP_L4 => Some(GsoKind::UdpL4),
            _ => return Err(OffloadError::HeaderGsoType),
        };
        let size = le16(hdr, 4);
        let gso = match kind {
            Some(_) if size == 0 => return Err(OffloadError::GsoSizeZero),
            Some(kind) => Some(Gso { kind, size, ecn }),
            None => None,
        };
        let csum = (flags & F_NEEDS_CSUM != 0).then(|| PartialCsum { start: le16(hdr, 6), offset: le16(hdr, 8) });
        Ok(Self { csum, gso, hdr_len: le16(hdr, 2), data_valid: flags & F_DATA_VALID != 0 })
    }

    /// Write the header into `out` (10 or 12 bytes; `num_buffers` = 1 in the 12-byte form,
    /// one buffer per frame). Returns the bytes written, or `None` if `out` is shorter
    /// than 10.
    pub fn to_virtio(&self, out: &mut [u8]) -> Option<usize> {
        let n = if out.len() >= VIRTIO_NET_HDR_MRG_LEN { VIRTIO_NET_HDR_MRG_LEN } else { VIRTIO_NET_HDR_LEN };
        let hdr = out.get_mut(..n)?;
        let flags = if self.csum.is_some() { F_NEEDS_CSUM } else { 0 } | if self.data_valid { F_DATA_VALID } else { 0 };
        let (gso_type, size) = match self.gso {
            Some(g) => (g.kind as u8 | if g.ecn { GSO_ECN } else { 0 }, g.size),
            None => (GSO_NONE, 0),
        };
        let (start, offset) = self.csum.map_or((0, 0), |c| (c.start, c.offset));
        hdr[0] = flags;
        hdr[1] = gso_type;
        hdr[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        hdr[4..6].copy_from_slice(&size.to_le_bytes());
        hdr[6..8].copy_from_slice(&start.to_le_bytes());
        hdr[8..10].copy_from_slice(&offset.to_le_bytes());
        if n == VIRTIO_NET_HDR_MRG_LEN {
            hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        }
        Some(n)
    }

    /// Check the metadata against the frame it describes: the partial checksum's field
    /// must lie inside the frame.
    ///
    /// # Errors
    /// [`OffloadError::CsumOutOfFrame`].
    pub fn check(&self, frame_len: usize) -> Result<(), OffloadError> {
        match self.csum {
            Some(c) if usize::from(c.start) + usize::from(c.offset) + 2 > frame_len => {
                Err(OffloadError::CsumOutOfFrame)
            }
            _ => Ok(()),
        }
    }
}

/// Complete the partial checksum `meta` names, if any (where a packet leaves the host:
/// to a port without `partial_checksum`, or onto the wire). `frame` is the packet and
/// nothing after it (the sum runs to its end, as virtio-net defines it; a frame from an
/// offloading port carries no Ethernet padding). The metadata no longer applies
/// afterwards: the caller clears `csum`.
///
/// # Errors
/// [`OffloadError::CsumOutOfFrame`] (the frame is left unchanged).
pub fn complete_checksum(frame: &mut [u8], meta: &OffloadMeta) -> Result<(), OffloadError> {
    match meta.csum {
        Some(c) if !checksum::complete_partial(frame, usize::from(c.start), usize::from(c.offset)) => {
            Err(OffloadError::CsumOutOfFrame)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a Linux tap hands out for a 64 KiB TSO packet with options (hdr_len 66,
    /// MSS 1448, checksum at 34 + 16), as `virtio_net_hdr_from_skb` writes it.
    const TSO_HDR: [u8; 12] = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 1, 0];

    #[test]
    fn reads_a_tso_header() {
        let m = OffloadMeta::from_virtio(&TSO_HDR).unwrap();
        assert_eq!(m.csum, Some(PartialCsum { start: 34, offset: 16 }));
        assert_eq!(m.gso, Some(Gso { kind: GsoKind::TcpV4, size: 1448, ecn: false }));
        assert_eq!((m.hdr_len, m.data_valid), (66, false));
        let mut out = [0u8; 12];
        assert_eq!(m.to_virtio(&mut out), Some(12));
        assert_eq!(out, TSO_HDR);
        let mut short = [0u8; 10];
        assert_eq!(m.to_virtio(&mut short), Some(10));
        assert_eq!(short, TSO_HDR[..10]);
        assert_eq!(m.to_virtio(&mut [0u8; 9]), None);
    }

    #[test]
    fn plain_frames_round_trip() {
        let none = OffloadMeta::default();
        let mut out = [0xffu8; 10];
        none.to_virtio(&mut out).unwrap();
        assert_eq!(out, [0; 10]);
        assert_eq!(OffloadMeta::from_virtio(&out), Ok(none));
        let valid = OffloadMeta { data_valid: true, ..none };
        valid.to_virtio(&mut out).unwrap();
        assert_eq!(OffloadMeta::from_virtio(&out), Ok(valid));
        let ecn = OffloadMeta { gso: Some(Gso { kind: GsoKind::UdpL4, size: 1200, ecn: true }), ..none };
        ecn.to_virtio(&mut out).unwrap();
        assert_eq!(out[1], 0x85);
        assert_eq!(OffloadMeta::from_virtio(&out), Ok(ecn));
    }

    #[test]
    fn malformed_headers_each_refused_for_their_reason() {
        let with = |at: usize, v: u8| {
            let mut h = TSO_HDR;
            h[at] = v;
            OffloadMeta::from_virtio(&h)
        };
        assert_eq!(OffloadMeta::from_virtio(&TSO_HDR[..9]), Err(OffloadError::HeaderShort));
        assert_eq!(with(0, 0x08), Err(OffloadError::HeaderFlags));
        assert_eq!(with(1, 2), Err(OffloadError::HeaderGsoType));
        assert_eq!(with(1, 0x86), Err(OffloadError::HeaderGsoType));
        assert_eq!(with(1, 0x80), Err(OffloadError::HeaderGsoType), "ECN without a GSO type");
        let mut zero = TSO_HDR;
        zero[4..6].fill(0);
        assert_eq!(OffloadMeta::from_virtio(&zero), Err(OffloadError::GsoSizeZero));
        assert!(with(0, F_RSC_INFO | F_NEEDS_CSUM).is_ok(), "RSC info is ignored");
    }

    #[test]
    fn partial_checksum_must_lie_in_the_frame() {
        let m = OffloadMeta::from_virtio(&TSO_HDR).unwrap();
        assert_eq!(m.check(52), Ok(()));
        assert_eq!(m.check(51), Err(OffloadError::CsumOutOfFrame));
        let mut frame = [0u8; 51];
        assert_eq!(complete_checksum(&mut frame, &m), Err(OffloadError::CsumOutOfFrame));
        assert_eq!(frame, [0; 51]);
        assert_eq!(complete_checksum(&mut frame, &OffloadMeta::default()), Ok(()));
    }

    #[test]
    fn metadata_stays_small() {
        // Beside a 16-byte `Packet<u64>` in a burst array: keep it within one more.
        assert!(core::mem::size_of::<OffloadMeta>() <= 16, "{}", core::mem::size_of::<OffloadMeta>());
    }
}
