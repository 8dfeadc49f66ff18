//! VXLAN header (RFC 7348 §5).
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! Receivers must check the I flag and ignore the reserved bits (RFC 7348 §5); senders
//! set every reserved bit to zero. smoltcp has no VXLAN view, so this one follows its
//! `Packet`/`Repr` pattern.

use core::fmt;

mod field {
    pub(super) const FLAGS: usize = 0;
    pub(super) const VNI: core::ops::Range<usize> = 4..7;
    pub(super) const PAYLOAD: core::ops::RangeFrom<usize> = 8..;
}

/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = field::PAYLOAD.start;

/// The "VNI present" flag (bit 3 of the first byte).
pub const FLAG_I: u8 = 0x08;

/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// The buffer is too short to hold a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("buffer shorter than a VXLAN header")
    }
}

impl std::error::Error for Truncated {}

/// A read/write view of a VXLAN header and the inner Ethernet frame after it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wrap a buffer without checking its length (for emit into a reused frame).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap a buffer, checking it holds at least a full header.
    ///
    /// # Errors
    /// [`Truncated`] if the buffer is shorter than [`VXLAN_HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensure no accessor panics.
    ///
    /// # Errors
    /// [`Truncated`] if the buffer is shorter than [`VXLAN_HEADER_LEN`].
    pub fn check_len(&self) -> Result<(), Truncated> {
        if self.buffer.as_ref().len() < VXLAN_HEADER_LEN { Err(Truncated) } else { Ok(()) }
    }

    /// The raw flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag (VNI valid) is set.
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// Return the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Write the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Write the VNI; bits above 24 are ignored.
    pub fn set_vni(&mut self, vni: u32) {
        let b = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zero the reserved fields (bytes 1..4 and 7).
    pub fn clear_reserved(&mut self) {
        let buf = self.buffer.as_mut();
        buf[1..4].fill(0);
        buf[7] = 0;
    }

    /// The encapsulated Ethernet frame, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A parsed VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The 24-bit network identifier.
    pub vni: u32,
}

/// Why a header does not parse as a valid VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the header.
    Truncated,
    /// The I flag is clear: the VNI field is not valid (RFC 7348 §5).
    NoVni,
}

impl VxlanRepr {
    /// Parse a header. Reserved bits are ignored, as RFC 7348 asks of receivers.
    ///
    /// # Errors
    /// [`ParseError`] when the header is truncated or the I flag is clear.
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Self, ParseError> {
        packet.check_len().map_err(|Truncated| ParseError::Truncated)?;
        if !packet.vni_valid() {
            return Err(ParseError::NoVni);
        }
        Ok(Self { vni: packet.vni() })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        VXLAN_HEADER_LEN
    }

    /// Write the header: I flag set, reserved bits zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VNI 1 as flannel sends it, then the first two bytes of an inner frame.
    const VNI1: [u8; 10] = [0x08, 0, 0, 0, 0x00, 0x00, 0x01, 0x00, 0xaa, 0xbb];
    /// VNI 0xabcdef with every reserved bit set (receivers must ignore them).
    const RESERVED_SET: [u8; 8] = [0xf7 | FLAG_I, 0xff, 0xff, 0xff, 0xab, 0xcd, 0xef, 0xff];

    #[test]
    fn deconstruct() {
        let p = VxlanPacket::new_checked(&VNI1[..]).unwrap();
        assert!(p.vni_valid());
        assert_eq!(p.vni(), 1);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn reserved_bits_ignored_on_parse() {
        let p = VxlanPacket::new_checked(&RESERVED_SET[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 0x00ab_cdef }));
    }

    #[test]
    fn missing_i_flag_rejected() {
        let mut b = VNI1;
        b[0] = 0;
        let p = VxlanPacket::new_checked(&b[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Err(ParseError::NoVni));
    }

    #[test]
    fn truncated_rejected() {
        assert_eq!(VxlanPacket::new_checked(&VNI1[..7]).unwrap_err(), Truncated);
    }

    #[test]
    fn emit_into_dirty_buffer() {
        let mut buf = [0xffu8; 10];
        let mut p = VxlanPacket::new_unchecked(&mut buf[..]);
        VxlanRepr { vni: 1 }.emit(&mut p);
        assert_eq!(&buf[..8], &VNI1[..8]);
    }

    #[test]
    fn vni_max_round_trips() {
        let mut buf = [0u8; 8];
        VxlanRepr { vni: VNI_MAX }.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p).unwrap().vni, VNI_MAX);
    }
}
