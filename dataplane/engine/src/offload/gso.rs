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
//! With [`GsoPlan::leaving_checksums`] the TCP checksums are left partial instead (the
//! field holds the segment's pseudo-header sum, [`GsoPlan::partial_checksum`] says
//! where): for a port whose NIC or kernel completes them where the segment leaves
//! (AF_XDP TX checksum requests), which saves reading every payload byte once more.
//!
//! The input's TCP checksum field is ignored, so a partial checksum (`NEEDS_CSUM`, the
//! field holding the pseudo-header sum) and a complete one give the same segments. Like
//! the kernel, a super-packet whose full checksum was wrong is not detected: its
//! segments are correct. Likewise each IPv4 header checksum is computed afresh; the
//! pipeline has checked the super-packet's own on the way in.

use super::headers::{L3, Layout, be16, be32, fill_ip_checksum, ip, pseudo_base, tcp};
use super::{GsoKind, OffloadError, OffloadMeta, PartialCsum};
use xlane_wire::checksum;

/// A checked super-packet and how it will be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoPlan {
    layout: Layout,
    mss: usize,
    segments: usize,
    /// TCP checksums left partial for the port to complete.
    leave_checksums: bool,
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
    Ok(GsoPlan { layout, mss, segments: payload.div_ceil(mss), leave_checksums: false })
}

impl GsoPlan {
    /// The same plan, writing each segment's TCP checksum partial (the pseudo-header
    /// sum, [`partial_checksum`](Self::partial_checksum) naming it) for the port to
    /// complete.
    #[must_use]
    pub fn leaving_checksums(self) -> Self {
        Self { leave_checksums: true, ..self }
    }

    /// Where each segment's TCP checksum lies, from the segment's first byte: what a
    /// port completing partial checksums is told.
    #[must_use]
    pub fn partial_checksum(&self) -> PartialCsum {
        #[expect(clippy::cast_possible_truncation, reason = "the plan checked the headers lie in a 64 KiB frame")]
        PartialCsum { start: self.layout.l4 as u16, offset: tcp::CHECKSUM as u16 }
    }

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

    /// Bytes of headers every segment carries (Ethernet, IPv4 and TCP with options).
    #[must_use]
    pub fn header_len(&self) -> usize {
        self.layout.hdr_len
    }

    /// Where segment `i`'s payload lies in the super-packet.
    #[must_use]
    pub fn payload_range(&self, i: usize) -> core::ops::Range<usize> {
        let start = self.layout.hdr_len + i * self.mss;
        start..(start + self.mss).min(self.layout.end)
    }

    /// Write segment `i`'s headers (of [`write`](Self::write)'s segment, its checksums
    /// over its payload included) into `out`, [`header_len`](Self::header_len) bytes,
    /// without copying the payload: for a sender that gathers each segment from its
    /// headers and [`payload_range`](Self::payload_range) of `frame`.
    ///
    /// # Panics
    /// If `i` is not a segment of the plan or `out` is not `header_len()` bytes.
    pub fn write_header(&self, frame: &[u8], i: usize, out: &mut [u8]) {
        assert!(i < self.segments && out.len() == self.layout.hdr_len, "segment {i}, {} header bytes", out.len());
        out.copy_from_slice(&frame[..self.layout.hdr_len]);
        self.fill_header(frame, i, out, &frame[self.payload_range(i)]);
    }

    /// Set segment `i`'s fields in `hdr` (a copy of the super-packet's headers) for
    /// `payload`: length, identification, sequence number, flags, checksums.
    fn fill_header(&self, frame: &[u8], i: usize, hdr: &mut [u8], payload: &[u8]) {
        let Layout { l4, hdr_len, .. } = self.layout;
        let last = self.segments - 1;
        let flags0 = frame[l4 + tcp::FLAGS];
        // i < segments ≤ 65535 and i × mss < payload ≤ 65535: the casts keep every bit
        // the fields need (both wrap by design).
        #[expect(clippy::cast_possible_truncation, reason = "IPv4 identification wraps at 16 bits")]
        let id = be16(frame, L3 + ip::ID).wrapping_add(i as u16);
        #[expect(clippy::cast_possible_truncation, reason = "i × mss < 65536")]
        let seq = be32(frame, l4 + tcp::SEQ).wrapping_add((i * self.mss) as u32);
        let flags = match i {
            _ if i == last && i == 0 => flags0,
            0 => flags0 & !(tcp::FIN | tcp::PSH),
            _ if i == last => flags0 & !tcp::CWR,
            _ => flags0 & !(tcp::FIN | tcp::PSH | tcp::CWR),
        };
        #[expect(clippy::cast_possible_truncation, reason = "a segment is at most 65535 bytes (checked by the plan)")]
        let (ip_len, tcp_len) = ((hdr_len + payload.len() - L3) as u16, (hdr_len + payload.len() - l4) as u16);
        hdr[L3 + ip::TOTAL_LEN..L3 + ip::TOTAL_LEN + 2].copy_from_slice(&ip_len.to_be_bytes());
        hdr[L3 + ip::ID..L3 + ip::ID + 2].copy_from_slice(&id.to_be_bytes());
        fill_ip_checksum(hdr, l4);
        let th = &mut hdr[l4..];
        th[tcp::SEQ..tcp::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
        th[tcp::FLAGS] = flags;
        th[tcp::CHECKSUM..tcp::CHECKSUM + 2].fill(0);
        let c = if self.leave_checksums {
            // NEEDS_CSUM's form: the pseudo-header sum, not complemented.
            checksum::combine(&[pseudo_base(frame), tcp_len])
        } else {
            // The TCP header is a multiple of 4 bytes: its sum and the payload's add up.
            !checksum::combine(&[pseudo_base(frame), tcp_len, checksum::sum(th), checksum::sum(payload)])
        };
        th[tcp::CHECKSUM..tcp::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
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
        let Layout { hdr_len, end, .. } = self.layout;
        let count = out.len().min(self.segments.saturating_sub(first));
        let out = &mut out[..count];
        if out.iter().enumerate().any(|(k, b)| b.len() < headroom + self.segment_len(first + k)) {
            return Err(OffloadError::BufferTooSmall);
        }
        let mut bytes = 0;
        let chunks = frame[hdr_len..end].chunks(self.mss).enumerate().skip(first);
        for (buf, (i, chunk)) in out.iter_mut().zip(chunks) {
            let seg = &mut buf[headroom..headroom + hdr_len + chunk.len()];
            let (hdr, payload) = seg.split_at_mut(hdr_len);
            hdr.copy_from_slice(&frame[..hdr_len]);
            payload.copy_from_slice(chunk);
            self.fill_header(frame, i, hdr, chunk);
            bytes += seg.len();
        }
        Ok(Segmented { segments: count, bytes })
    }
}
