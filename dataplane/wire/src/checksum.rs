//! Internet checksum helpers for the hot path.
//!
//! Full computation is smoltcp's (`smoltcp::wire::checksum`); what smoltcp lacks is the
//! incremental update of RFC 1624, which lets the forwarder change one 16-bit word
//! (TTL, total length) without re-summing the header.

pub use smoltcp::wire::checksum::{combine, data as sum};

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
