//! Software segmentation of a TCPv4 super-packet, as the kernel's `tcp_gso_segment` and
//! `inet_gso_segment` do it:
//!
//! * every segment carries the super-packet's Ethernet, IPv4 (options included) and TCP
//!   (options included) headers, and up to `gso_size` bytes of its payload, in order;
//! * IPv4: identification + i (wrapping), total length, header checksum per segment;
//! * TCP: sequence number + i × `gso_size`; FIN and PSH only on the last segment, CWR
//!   only on the first; the checksum completed per segment from one pseudo-header sum
//!   (addresses and protocol, summed once) plus the segment's length, header and payload.
//!   URG and the urgent pointer are copied to every segment, as the kernel does.
//!
//! The input's TCP checksum field is ignored, so a partial checksum (`NEEDS_CSUM`, the
//! field holding the pseudo-header sum) and a complete one give the same segments. Like
//! the kernel, a super-packet whose full checksum was wrong is not detected: its
//! segments are correct. Likewise each IPv4 header checksum is computed afresh; the
//! pipeline has checked the super-packet's own on the way in.

use super::headers::{L3, Layout, be16, be32, fill_ip_checksum, ip, pseudo_base, tcp};
use super::{GsoKind, OffloadError, OffloadMeta};
use xlane_wire::checksum;

/// A checked super-packet and how it will be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoPlan {
    layout: Layout,
    mss: usize,
    segments: usize,
}

/// What [`GsoPlan::write`] produced, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmented {
    /// Segments written (`out[..segments]`).
    pub segments: usize,
    /// Bytes written in all, headroom excluded.
    pub bytes: usize,
}

/// Check a super-packet and its metadata, and plan its segments. Nothing is written:
/// the caller allocates [`segments`](GsoPlan::segments) buffers and calls
/// [`write`](GsoPlan::write).
///
/// # Errors
/// No GSO metadata, a GSO type other than TCPv4, segment size 0, a frame that is not an
/// unfragmented IPv4/TCP packet with headers inside its length, a partial checksum not at
/// the TCP checksum field, no payload.
pub fn plan(frame: &[u8], meta: &OffloadMeta) -> Result<GsoPlan, OffloadError> {
    let gso = meta.gso.ok_or(OffloadError::NotGso)?;
    if gso.kind != GsoKind::TcpV4 {
        return Err(OffloadError::GsoUnsupported);
    }
    if gso.size == 0 {
        return Err(OffloadError::GsoSizeZero);
    }
    let layout = Layout::parse(frame)?;
    if let Some(c) = meta.csum
        && (usize::from(c.start) != layout.l4 || usize::from(c.offset) != tcp::CHECKSUM)
    {
        return Err(OffloadError::CsumNotTcp);
    }
    let payload = layout.payload_len();
    if payload == 0 {
        return Err(OffloadError::GsoEmpty);
    }
    let mss = usize::from(gso.size);
    Ok(GsoPlan { layout, mss, segments: payload.div_ceil(mss) })
}

impl GsoPlan {
    /// How many segments the super-packet makes.
    #[must_use]
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Length of segment `i` (headers and its share of the payload), headroom excluded.
    #[must_use]
    pub fn segment_len(&self, i: usize) -> usize {
        let payload = self.layout.payload_len();
        self.layout.hdr_len + self.mss.min(payload.saturating_sub(i * self.mss))
    }

    /// The largest segment, headroom excluded: what each output buffer must hold after
    /// its headroom.
    #[must_use]
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    /// Write segment `i` of `frame` (the frame [`plan`] checked) at
    /// `out[i][headroom..headroom + segment_len(i)]`, for every `i < segments()`. The
    /// headroom's bytes are left alone (the caller pushes the outer headers there).
    ///
    /// # Errors
    /// Fewer buffers than segments, or a buffer shorter than `headroom` + its segment;
    /// checked before anything is written.
    pub fn write(&self, frame: &[u8], headroom: usize, out: &mut [&mut [u8]]) -> Result<Segmented, OffloadError> {
        if out.len() < self.segments {
            return Err(OffloadError::TooFewBuffers);
        }
        self.write_range(frame, 0, headroom, &mut out[..self.segments])
    }

    /// Write segments `first..first + out.len()` (fewer if the plan ends sooner) into
    /// `out`, as [`write`](Self::write) does for all of them: for a caller that sends a
    /// long super-packet in bursts of buffers.
    ///
    /// # Errors
    /// A buffer shorter than `headroom` + its segment; checked before anything is
    /// written.
    pub fn write_range(
        &self,
        frame: &[u8],
        first: usize,
        headroom: usize,
        out: &mut [&mut [u8]],
    ) -> Result<Segmented, OffloadError> {
        let Layout { l4, hdr_len, end } = self.layout;
        let count = out.len().min(self.segments.saturating_sub(first));
        let out = &mut out[..count];
        if out.iter().enumerate().any(|(k, b)| b.len() < headroom + self.segment_len(first + k)) {
            return Err(OffloadError::BufferTooSmall);
        }
        let hdr = &frame[..hdr_len];
        let id0 = be16(hdr, L3 + ip::ID);
        let seq0 = be32(hdr, l4 + tcp::SEQ);
        let flags0 = hdr[l4 + tcp::FLAGS];
        let pseudo = pseudo_base(hdr);
        let last = self.segments - 1;
        let mut bytes = 0;
        let chunks = frame[hdr_len..end].chunks(self.mss).enumerate().skip(first);
        for (buf, (i, chunk)) in out.iter_mut().zip(chunks) {
            let seg = &mut buf[headroom..headroom + hdr_len + chunk.len()];
            seg[..hdr_len].copy_from_slice(hdr);
            seg[hdr_len..].copy_from_slice(chunk);
            // i < segments ≤ 65535 and i × mss < payload ≤ 65535: the casts keep every bit
            // the fields need (both wrap by design).
            #[expect(clippy::cast_possible_truncation, reason = "IPv4 identification wraps at 16 bits")]
            let id = id0.wrapping_add(i as u16);
            #[expect(clippy::cast_possible_truncation, reason = "i × mss < 65536")]
            let seq = seq0.wrapping_add((i * self.mss) as u32);
            let flags = match i {
                _ if i == last && i == 0 => flags0,
                0 => flags0 & !(tcp::FIN | tcp::PSH),
                _ if i == last => flags0 & !tcp::CWR,
                _ => flags0 & !(tcp::FIN | tcp::PSH | tcp::CWR),
            };
            let ip_len = u16::try_from(seg.len() - L3).map_err(|_| OffloadError::Ipv4Malformed)?;
            let tcp_len = u16::try_from(seg.len() - l4).map_err(|_| OffloadError::Ipv4Malformed)?;
            seg[L3 + ip::TOTAL_LEN..L3 + ip::TOTAL_LEN + 2].copy_from_slice(&ip_len.to_be_bytes());
            seg[L3 + ip::ID..L3 + ip::ID + 2].copy_from_slice(&id.to_be_bytes());
            fill_ip_checksum(seg, l4);
            let th = &mut seg[l4..];
            th[tcp::SEQ..tcp::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
            th[tcp::FLAGS] = flags;
            th[tcp::CHECKSUM..tcp::CHECKSUM + 2].fill(0);
            let c = !checksum::combine(&[pseudo, tcp_len, checksum::sum(th)]);
            th[tcp::CHECKSUM..tcp::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
            bytes += seg.len();
        }
        Ok(Segmented { segments: count, bytes })
    }
}
