//! The outer header a [`super::UdpReceiver`] writes in front of each datagram it hands
//! out: what the wire carried, so the pipeline decapsulates it as a frame from the wire.

use super::{FRAME_HEAD, Message, OUTER};
use std::net::Ipv4Addr;
use xlane_engine::Packet;
use xlane_engine::offload::{Jumbo, OffloadMeta};
use xlane_wire::checksum;

/// A received frame of a `len`-byte datagram behind its outer header.
pub(super) fn frame_packet<B>(buf: B, len: usize) -> Packet<B> {
    #[expect(clippy::cast_possible_truncation, reason = "within a buffer")]
    Packet { buf, head: FRAME_HEAD as u32, len: (OUTER + len) as u32 }
}

/// Record message `msg`, read across the slots of `jumbo` from `first` on (`size`
/// bytes each, behind room for the outer header) with datagram k whole in slot
/// `first + k` ([`Message::lands_in_slots`]), as its datagrams where they lie: each
/// behind an outer header to `at` (VTEP address and port), after the `before`
/// ordinary frames of the burst. Returns the slots it took.
pub(super) fn record_in_place(
    jumbo: &mut Jumbo,
    first: usize,
    before: usize,
    msg: &Message,
    size: usize,
    (vtep, port): (Ipv4Addr, u16),
) -> usize {
    let mut slot = first;
    for at in (0..msg.len).step_by(size) {
        let len = size.min(msg.len - at);
        write_outer(&mut jumbo.data_mut(slot)[..OUTER], msg, vtep, port, len);
        jumbo.push(slot, before, OUTER + len, OffloadMeta::default());
        slot += 1;
    }
    slot - first
}

/// Write `payload` (a datagram of `msg`) into `out` behind its outer header
/// ([`write_outer`]); `out` is exactly [`OUTER`] + its length.
pub(super) fn write_datagram(out: &mut [u8], msg: &Message, vtep: Ipv4Addr, port: u16, payload: &[u8]) {
    let (outer, body) = out.split_at_mut(OUTER);
    write_outer(outer, msg, vtep, port, payload.len());
    body.copy_from_slice(payload);
}

/// Write the outer header of a datagram of `len` bytes from `msg`'s sender to
/// `vtep`:`port` into `out` ([`OUTER`] bytes): what the wire carried, but for the MACs
/// (zero: the pipeline does not read them) and the UDP checksum (0: not verified).
pub(super) fn write_outer(out: &mut [u8], msg: &Message, vtep: Ipv4Addr, port: u16, len: usize) {
    out[..12].fill(0);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut out[14..34];
    #[expect(clippy::cast_possible_truncation, reason = "a datagram is below 64 KiB")]
    let total = (20 + 8 + len) as u16;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].fill(0);
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&msg.src.octets());
    ip[16..20].copy_from_slice(&vtep.octets());
    let c = !checksum::sum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut out[34..42];
    udp[0..2].copy_from_slice(&msg.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp[4..6].copy_from_slice(&(total - 20).to_be_bytes());
    udp[6..8].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlane_wire::{Ipv4Packet, UdpPacket};

    #[test]
    fn the_outer_header_is_what_the_wire_carried() {
        let msg = Message { start: 0, len: 100, segment: 100, src: Ipv4Addr::new(10, 0, 0, 2), src_port: 40_000 };
        let mut f = [0xaa; OUTER + 100];
        write_outer(&mut f[..OUTER], &msg, Ipv4Addr::new(10, 0, 0, 1), 4789, 100);
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (msg.src, Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(usize::from(ip.total_len()), 20 + 8 + 100);
        assert!(ip.dont_frag() && !ip.more_frags() && ip.frag_offset() == 0);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port(), udp.len()), (40_000, 4789, 108));
        assert_eq!(&f[12..14], &[0x08, 0x00]);
    }
}
