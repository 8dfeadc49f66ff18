//! Coalescing of in-order TCPv4 segments within a burst, by the kernel's rules
//! (`inet_gro_receive`, `tcp_gro_receive`, `eth_gro_receive`):
//!
//! * one flow: the same Ethernet header, IPv4 addresses and TCP ports;
//! * IPv4: header length 20 (no options), not a fragment, the same TOS, TTL and DF,
//!   identification incrementing by one per segment, a valid header checksum, the total
//!   length matching the frame (no padding);
//! * TCP: the sequence number continuing the previous segment's; the same ack number,
//!   data offset, window, flags (but FIN and PSH) and option bytes (timestamps included,
//!   so they must be equal, as the kernel compares every option word);
//! * every segment at most the first one's payload (the MSS); a shorter one is the last;
//! * SYN, RST, URG or CWR: never merged (the kernel flushes on them); PSH or FIN ends a
//!   super-packet, merged as its last segment, and the merged header carries it;
//! * at most 65535 bytes of IPv4 packet; segments without payload pass alone.
//!
//! With `verify_checksums` each segment's TCP checksum is checked before it merges (the
//! kernel's `skb_gro_checksum_validate`): the merged packet goes out with a partial
//! checksum the receiver trusts, so a corrupt segment must not hide in it.
//!
//! Differences from the kernel, each on the safe side: a segment that cannot join its
//! flow's open super-packet starts a new one (the kernel passes it up alone); a fixed
//! IPv4 identification (the kernel's `ip_fixedid`) does not merge, since a virtio-net
//! header cannot say "fixed" and the receiver would re-segment with incrementing ids.
//!
//! At most [`MAX_FLOWS`] flows are open at once; a new flow closes the oldest, as the
//! kernel's `MAX_GRO_SKBS` does. Output units keep the order of their first segments,
//! so every flow keeps its own order.

use super::headers::{L3, Layout, be16, be32, fill_ip_checksum, ip, pseudo_base, tcp};
use super::{Gso, GsoKind, OffloadError, OffloadMeta, PartialCsum};
use crate::pipeline::BURST;
use arrayvec::ArrayVec;
use xlane_wire::checksum;

/// Flows open at once within a burst.
pub const MAX_FLOWS: usize = 8;

/// One unit of a coalesced burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coalesced {
    /// `frames[i]`, unchanged.
    Single(usize),
    /// Several segments to write as one super-packet.
    Merged(Merged),
}

/// A placeholder to fill an output array with before [`coalesce`] writes it.
impl Default for Coalesced {
    fn default() -> Self {
        Self::Single(0)
    }
}

/// Segments of one flow to merge: which frames, and the super-packet's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Bit i: `frames[i]` is a member (BURST = 64 frames).
    members: u64,
    first: u8,
    segments: u8,
    l4: u16,
    hdr_len: u16,
    payload: u32,
    mss: u16,
    /// FIN and PSH of the last segment, for the merged header.
    tail_flags: u8,
}

impl Merged {
    /// Segments merged.
    #[must_use]
    pub fn segments(&self) -> usize {
        usize::from(self.segments)
    }

    /// Length of the super-packet (Ethernet frame).
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.hdr_len) + self.payload as usize
    }

    /// Never empty (at least two segments with payload); for clippy's `len` rule.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The members' indices in `frames`, in order.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        (0..64).filter(|i| self.members & (1 << i) != 0)
    }

    /// Bytes of headers of the super-packet (its first segment's).
    #[must_use]
    pub fn header_len(&self) -> usize {
        usize::from(self.hdr_len)
    }

    /// Write the super-packet into `out[..len()]` and return its metadata: GSO TCPv4 with
    /// the first segment's payload size, `NEEDS_CSUM` at the TCP checksum, whose field
    /// holds the pseudo-header sum (what a virtio-net device hands the kernel).
    ///
    /// # Errors
    /// `out` shorter than [`len`](Self::len); `frames` not the slice that was coalesced
    /// (a member missing).
    pub fn write<F: AsRef<[u8]>>(&self, frames: &[F], out: &mut [u8]) -> Result<OffloadMeta, OffloadError> {
        let hdr_len = self.header_len();
        if out.len() < self.len() {
            return Err(OffloadError::BufferTooSmall);
        }
        let (hdr, body) = out.split_at_mut(hdr_len);
        let meta = self.write_header(frames, hdr)?;
        let mut at = 0;
        for payload in self.payloads(frames) {
            let payload = payload?;
            body.get_mut(at..at + payload.len()).ok_or(OffloadError::BufferTooSmall)?.copy_from_slice(payload);
            at += payload.len();
        }
        Ok(meta)
    }

    /// [`write`](Self::write) of the headers alone, into `out` ([`header_len`](Self::header_len)
    /// bytes), for a sender that gathers the payloads from the segments themselves
    /// ([`payloads`](Self::payloads)).
    ///
    /// # Errors
    /// `out` shorter than the headers; `frames` not the slice that was coalesced.
    pub fn write_header<F: AsRef<[u8]>>(&self, frames: &[F], out: &mut [u8]) -> Result<OffloadMeta, OffloadError> {
        let (l4, hdr_len, len) = (usize::from(self.l4), self.header_len(), self.len());
        let head = frames.get(usize::from(self.first)).ok_or(OffloadError::TooFewBuffers)?.as_ref();
        let out = out.get_mut(..hdr_len).ok_or(OffloadError::BufferTooSmall)?;
        out.copy_from_slice(head.get(..hdr_len).ok_or(OffloadError::TooFewBuffers)?);
        let (ip_len, tcp_len) = (u16::try_from(len - L3), u16::try_from(len - l4));
        let (Ok(ip_len), Ok(tcp_len)) = (ip_len, tcp_len) else { return Err(OffloadError::Ipv4Malformed) };
        out[L3 + ip::TOTAL_LEN..L3 + ip::TOTAL_LEN + 2].copy_from_slice(&ip_len.to_be_bytes());
        fill_ip_checksum(out, l4);
        out[l4 + tcp::FLAGS] |= self.tail_flags;
        let pseudo = checksum::combine(&[pseudo_base(out), tcp_len]);
        out[l4 + tcp::CHECKSUM..l4 + tcp::CHECKSUM + 2].copy_from_slice(&pseudo.to_be_bytes());
        Ok(OffloadMeta {
            csum: Some(PartialCsum { start: self.l4, offset: tcp::CHECKSUM_OFFSET }),
            gso: Some(Gso { kind: GsoKind::TcpV4, size: self.mss, ecn: false }),
            hdr_len: self.hdr_len,
            data_valid: false,
        })
    }

    /// The members' payloads in order: after [`write_header`](Self::write_header)'s
    /// headers, the super-packet's bytes. An error where `frames` is not the slice that
    /// was coalesced.
    pub fn payloads<'a, F: AsRef<[u8]>>(
        &'a self,
        frames: &'a [F],
    ) -> impl Iterator<Item = Result<&'a [u8], OffloadError>> + 'a {
        let hdr_len = self.header_len();
        self.members().map(move |i| {
            let seg = frames.get(i).ok_or(OffloadError::TooFewBuffers)?.as_ref();
            seg.get(hdr_len..).ok_or(OffloadError::TooFewBuffers)
        })
    }
}

/// A segment that may merge.
struct Candidate {
    layout: Layout,
    payload: usize,
    flags: u8,
}

/// Flags that never merge: the kernel flushes on each.
const ALONE: u8 = tcp::SYN | tcp::RST | tcp::URG | tcp::CWR;
/// Flags that end a super-packet (as its last segment).
const ENDS: u8 = tcp::FIN | tcp::PSH;

fn candidate(f: &[u8], verify_checksums: bool) -> Option<Candidate> {
    let layout = Layout::parse(f).ok()?;
    let payload = layout.payload_len();
    let flags = f[layout.l4 + tcp::FLAGS];
    if f[L3] != 0x45 || f.len() != layout.end || payload == 0 || flags & ALONE != 0 {
        return None;
    }
    if checksum::sum(&f[L3..layout.l4]) != 0xffff {
        return None;
    }
    if verify_checksums {
        let tcp_len = u16::try_from(layout.end - layout.l4).ok()?;
        if checksum::combine(&[pseudo_base(f), tcp_len, checksum::sum(&f[layout.l4..])]) != 0xffff {
            return None;
        }
    }
    Some(Candidate { layout, payload, flags })
}

/// An open super-packet.
struct Open {
    /// Its place in the output.
    unit: usize,
    merged: Merged,
    next_seq: u32,
    next_id: u16,
}

impl Open {
    /// A super-packet starting with `frames[i]` (`f`), at output place `unit`.
    #[expect(clippy::cast_possible_truncation, reason = "i < BURST; offsets and payload < 65536")]
    fn new(unit: usize, i: usize, f: &[u8], c: &Candidate) -> Self {
        let l4 = c.layout.l4;
        Self {
            unit,
            merged: Merged {
                members: 1 << i,
                first: i as u8,
                segments: 1,
                l4: l4 as u16,
                hdr_len: c.layout.hdr_len as u16,
                payload: c.payload as u32,
                mss: c.payload as u16,
                tail_flags: 0,
            },
            next_seq: be32(f, l4 + tcp::SEQ).wrapping_add(c.payload as u32),
            next_id: be16(f, L3 + ip::ID).wrapping_add(1),
        }
    }

    /// Add `frames[i]`, which [`joins`] this one; true if it ends the super-packet (a
    /// short segment, PSH or FIN).
    #[expect(clippy::cast_possible_truncation, reason = "payload < 65536 (checked in `joins`)")]
    fn add(&mut self, i: usize, c: &Candidate) -> bool {
        let m = &mut self.merged;
        m.members |= 1 << i;
        m.segments += 1;
        m.payload += c.payload as u32;
        m.tail_flags = c.flags & ENDS;
        self.next_seq = self.next_seq.wrapping_add(c.payload as u32);
        self.next_id = self.next_id.wrapping_add(1);
        c.payload < usize::from(m.mss) || c.flags & ENDS != 0
    }

    /// The unit it makes: one segment is passed as it is.
    fn finish(self, out: &mut [Coalesced; BURST]) {
        out[self.unit] = if self.merged.segments > 1 {
            Coalesced::Merged(self.merged)
        } else {
            Coalesced::Single(usize::from(self.merged.first))
        };
    }
}

/// Same flow: Ethernet header, addresses and ports (IHL is 5 for both, so the ports
/// are at one offset).
fn same_flow(head: &[u8], f: &[u8]) -> bool {
    let ports = L3 + 20;
    head[..L3] == f[..L3] && head[L3 + ip::SRC..ports + 4] == f[L3 + ip::SRC..ports + 4]
}

/// May `f` (a candidate of `o`'s flow) join `o`? The kernel's flush conditions.
fn joins(o: &Open, head: &[u8], f: &[u8], c: &Candidate) -> bool {
    let l4 = usize::from(o.merged.l4);
    let hdr_len = usize::from(o.merged.hdr_len);
    let same = |r: core::ops::Range<usize>| head[r.clone()] == f[r];
    c.layout.hdr_len == hdr_len
        && same(L3 + ip::TOS..L3 + ip::TOS + 1)
        && same(L3 + ip::FRAG..L3 + ip::TTL + 1)
        && be16(f, L3 + ip::ID) == o.next_id
        && be32(f, l4 + tcp::SEQ) == o.next_seq
        && same(l4 + tcp::ACK..l4 + tcp::FLAGS)
        && head[l4 + tcp::FLAGS] == c.flags & !ENDS
        && same(l4 + tcp::FLAGS + 1..l4 + tcp::CHECKSUM)
        && same(l4 + 20..hdr_len)
        && c.payload <= usize::from(o.merged.mss)
        && o.merged.len() + c.payload - L3 <= usize::from(u16::MAX)
}

/// [`coalesce`] for whole frames sent with their metadata (super-packets, frames larger
/// than a buffer): only a burst of plain, complete frames (each `OffloadMeta::default()`,
/// as a jumbo uplink's decapsulated frames are) is coalesced; with any super-packet or
/// partial checksum among them every frame goes alone, with its own metadata, since a
/// merge would lose it.
///
/// # Panics
/// If `frames` holds more than [`BURST`] frames, or `metas` is shorter than `frames`.
pub fn coalesce_whole<F: AsRef<[u8]>>(frames: &[F], metas: &[OffloadMeta], out: &mut [Coalesced; BURST]) -> usize {
    assert!(metas.len() >= frames.len(), "a metadata per frame");
    if metas[..frames.len()].iter().all(|m| *m == OffloadMeta::default()) {
        return coalesce(frames, true, out);
    }
    for (i, u) in out.iter_mut().enumerate().take(frames.len()) {
        *u = Coalesced::Single(i);
    }
    frames.len()
}

/// Group `frames` (decapsulated inner Ethernet frames of one burst) into units: merged
/// super-packets and frames passed alone. Writes `out[..n]` and returns `n`; every
/// frame is in exactly one unit.
///
/// # Panics
/// If `frames` holds more than [`BURST`] frames.
pub fn coalesce<F: AsRef<[u8]>>(frames: &[F], verify_checksums: bool, out: &mut [Coalesced; BURST]) -> usize {
    assert!(frames.len() <= BURST, "burst of {} frames", frames.len());
    let mut open: ArrayVec<Open, MAX_FLOWS> = ArrayVec::new();
    let mut units = 0;
    for (i, f) in frames.iter().enumerate() {
        let f = f.as_ref();
        let Some(c) = candidate(f, verify_checksums) else {
            out[units] = Coalesced::Single(i);
            units += 1;
            continue;
        };
        let head = |o: &Open| frames[usize::from(o.merged.first)].as_ref();
        if let Some(k) = open.iter().position(|o| same_flow(head(o), f)) {
            if joins(&open[k], head(&open[k]), f, &c) {
                if open[k].add(i, &c) {
                    open.remove(k).finish(out);
                }
                continue;
            }
            // Flushed: the segment may start the flow's next super-packet.
            open.remove(k).finish(out);
        }
        out[units] = Coalesced::Single(i);
        units += 1;
        if c.flags & ENDS != 0 {
            continue;
        }
        if open.is_full() {
            open.remove(0).finish(out);
        }
        open.push(Open::new(units - 1, i, f, &c));
    }
    for o in open.drain(..) {
        o.finish(out);
    }
    units
}
