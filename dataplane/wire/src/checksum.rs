//! Internet checksum helpers for the hot path.
//!
//! Full computation is smoltcp's (`smoltcp::wire::checksum`); what smoltcp lacks is the
//! incremental update of RFC 1624, which lets the forwarder change one 16-bit word
//! (TTL, total length) without re-summing the header.

pub use smoltcp::wire::checksum::{combine, data as sum};

/// The folded, uncomplemented IPv4 pseudo-header sum (RFC 793: source, destination,
/// protocol, transport length) — what a partial checksum field holds before completion.
#[inline]
#[must_use]
pub fn pseudo_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u16 {
    combine(&[sum(&src), sum(&dst), u16::from(proto), len])
}

/// Complete a partial checksum in place (virtio-net `NEEDS_CSUM`, the kernel's
/// `skb_checksum_help`): the field at `start + offset` already holds the pseudo-header
/// sum, so the one's-complement sum of `data[start..]` (field included) complemented is
/// the checksum. A result of 0 is stored as 0xffff (equal in one's complement, and what
/// UDP needs). `false`, and no change, if the field lies outside `data`.
#[inline]
pub fn complete_partial(data: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else { return false };
    if at.checked_add(2).is_none_or(|end| end > data.len()) {
        return false;
    }
    let c = match !sum(&data[start..]) {
        0 => 0xffff,
        c => c,
    };
    data[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Update a stored (one's-complement) checksum after a 16-bit word changed from `old`
/// to `new` (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline]
#[must_use]
pub fn update_word(stored: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!stored) + u32::from(!old) + u32::from(new);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = acc as u16;
    !folded
}

/// Add `delta` (a plain 16-bit value, one's-complement arithmetic) to a stored checksum
/// whose covered word increased by `delta` from zero. Used by the encap template, whose
/// checksum was computed with total length 0.
#[inline]
#[must_use]
pub fn add_word(stored: u16, delta: u16) -> u16 {
    update_word(stored, 0, delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 header from RFC 1071-style worked example (Wikipedia's "IPv4 header checksum").
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];

    fn full(h: &[u8]) -> u16 {
        let mut c = h.to_vec();
        c[10] = 0;
        c[11] = 0;
        !sum(&c)
    }

    #[test]
    fn reference_header_checksum() {
        assert_eq!(full(&HDR), 0xb861);
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        for ttl in 1..=255u8 {
            let mut h = HDR;
            h[8] = ttl;
            let c = full(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let old = u16::from_be_bytes([h[8], h[9]]);
            h[8] = ttl - 1;
            let new = u16::from_be_bytes([h[8], h[9]]);
            assert_eq!(update_word(c, old, new), full(&h), "ttl {ttl}");
        }
    }

    #[test]
    fn partial_completion_matches_full_checksum() {
        // A UDP datagram 10.0.0.1:1000 -> 10.0.0.2:2000, 5 bytes of payload (odd length).
        let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let mut udp = [0x03, 0xe8, 0x07, 0xd0, 0x00, 0x0d, 0, 0, b'h', b'e', b'l', b'l', b'o'];
        let full = !combine(&[pseudo_ipv4(src, dst, 17, 13), sum(&udp)]);
        udp[6..8].copy_from_slice(&pseudo_ipv4(src, dst, 17, 13).to_be_bytes());
        let mut framed = [[0xaa; 4].as_slice(), &udp].concat();
        assert!(complete_partial(&mut framed, 4, 6));
        assert_eq!(u16::from_be_bytes([framed[10], framed[11]]), full);
        // The completed datagram sums to zero with its pseudo-header.
        assert_eq!(!combine(&[pseudo_ipv4(src, dst, 17, 13), sum(&framed[4..])]), 0);
        assert!(!complete_partial(&mut framed, 4, 12), "field past the end");
        assert!(!complete_partial(&mut framed, usize::MAX, 1), "overflowing offsets");
    }

    #[test]
    fn length_patch_matches_full_recompute() {
        let mut h = HDR;
        h[2] = 0;
        h[3] = 0;
        let base = full(&h);
        for len in [20u16, 84, 1500, 0xffff] {
            h[2..4].copy_from_slice(&len.to_be_bytes());
            assert_eq!(add_word(base, len), full(&h), "len {len}");
        }
    }
}
