//! The inner-flow hash that picks the outer UDP source port.
//!
//! RFC 7348 §5 recommends deriving the source port from a hash of the inner headers so
//! the underlay's ECMP and the receiver's RSS spread flows while keeping each flow in
//! order; the kernel does the same (`udp_flow_src_port`). The function is fixed and
//! documented here because the test fixtures' independent encoder
//! (`tests/fixtures/make_fixtures.py`) recomputes it.
//!
//! Key: source and destination address, protocol, and for unfragmented TCP, UDP and SCTP
//! the 32 bits of ports; mixed by two rounds of MurmurHash3's 64-bit finalizer.

/// MurmurHash3 `fmix64`.
#[inline]
const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Hash an IPv4 packet (header already validated, `ip.len() >= 20`).
///
/// Always inlined: once the (cold) ICMP error path became a second caller, LLVM
/// outlined it from the encap stage, +36 instructions a frame (callgrind).
#[inline(always)]
#[must_use]
pub fn ipv4_flow_hash(ip: &[u8]) -> u32 {
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let proto = ip[9];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let ports = match (proto, fragmented, ip.get(ihl..ihl + 4)) {
        (6 | 17 | 132, false, Some(p)) => u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
        _ => 0,
    };
    let k1 = (u64::from(src) << 32) | u64::from(dst);
    let k2 = (u64::from(ports) << 8) | u64::from(proto);
    (fmix64(k1 ^ fmix64(k2)) >> 32) as u32
}

/// Map a hash onto `min..=max` without division (as the kernel does).
#[inline]
#[must_use]
pub fn source_port(hash: u32, min: u16, max: u16) -> u16 {
    let span = u64::from(max - min) + 1;
    #[expect(clippy::cast_possible_truncation, reason = "(hash * span) >> 32 < span <= 65536")]
    let off = ((u64::from(hash) * span) >> 32) as u16;
    min + off
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4/UDP 10.244.1.2:1234 → 10.244.2.3:80, checksum not needed for hashing.
    const UDP: [u8; 28] =
        [0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 244, 1, 2, 10, 244, 2, 3, 0x04, 0xd2, 0, 80, 0, 8, 0, 0];

    #[test]
    fn known_value() {
        // Cross-checked by make_fixtures.py's implementation.
        assert_eq!(ipv4_flow_hash(&UDP), 0xc780_4d7a);
    }

    #[test]
    fn ports_matter_unless_fragmented() {
        let mut other = UDP;
        other[21] = 0xd3;
        assert_ne!(ipv4_flow_hash(&UDP), ipv4_flow_hash(&other));
        let (mut a, mut b) = (UDP, other);
        a[6] = 0x20; // MF
        b[6] = 0x20;
        assert_eq!(ipv4_flow_hash(&a), ipv4_flow_hash(&b));
    }

    #[test]
    fn port_range_bounds() {
        assert_eq!(source_port(0, 49152, 65535), 49152);
        assert_eq!(source_port(u32::MAX, 49152, 65535), 65535);
        assert_eq!(source_port(u32::MAX, 1, 1), 1);
        assert_eq!(source_port(u32::MAX, 1, 65535), 65535);
    }
}
