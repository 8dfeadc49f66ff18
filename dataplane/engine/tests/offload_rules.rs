//! One rule at a time: each malformed super-packet is refused for its own reason, and
//! each of the kernel's GRO flush conditions keeps a segment out of its flow's
//! super-packet.

use xlane_engine::BURST;
use xlane_engine::offload::build::TcpSuper;
use xlane_engine::offload::{
    Coalesced, GsoKind, OffloadError, OffloadMeta, PartialCsum, coalesce, coalesce_whole, gso,
};
use xlane_wire::checksum;

const HEADROOM: usize = 50;

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i % 251).expect("below 251")).collect()
}

/// A valid 3000-byte super-packet at MSS 1000 and its metadata.
fn valid() -> (Vec<u8>, OffloadMeta) {
    TcpSuper::new(payload(3000), 1000).build()
}

/// Recompute both checksums of a segment (IHL 5) after an edit.
fn refit(f: &mut [u8]) {
    f[24..26].fill(0);
    let c = !checksum::sum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let tcp_len = u16::try_from(f.len() - 34).unwrap();
    f[50..52].fill(0);
    let c = !checksum::combine(&[
        checksum::pseudo_ipv4([10, 244, 1, 2], [10, 244, 2, 3], 6, tcp_len),
        checksum::sum(&f[34..]),
    ]);
    f[50..52].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn malformed_super_packets_each_refused_for_their_reason() {
    let (frame, meta) = valid();
    assert_eq!(gso::plan(&frame, &meta).map(|p| p.segments()), Ok(3));
    let refused = |f: &[u8], m: &OffloadMeta| gso::plan(f, m).err();
    let with_meta = |edit: fn(&mut OffloadMeta)| {
        let mut m = meta;
        edit(&mut m);
        refused(&frame, &m)
    };
    let with_frame = |edit: fn(&mut Vec<u8>)| {
        let mut f = frame.clone();
        edit(&mut f);
        refused(&f, &meta)
    };
    assert_eq!(with_meta(|m| m.gso = None), Some(OffloadError::NotGso));
    assert_eq!(with_meta(|m| m.gso.as_mut().unwrap().size = 0), Some(OffloadError::GsoSizeZero));
    assert_eq!(with_meta(|m| m.gso.as_mut().unwrap().kind = GsoKind::TcpV6), Some(OffloadError::GsoUnsupported));
    assert_eq!(with_meta(|m| m.gso.as_mut().unwrap().kind = GsoKind::UdpL4), Some(OffloadError::GsoUnsupported));
    assert_eq!(with_meta(|m| m.csum = Some(PartialCsum { start: 34, offset: 6 })), Some(OffloadError::CsumNotTcp));
    assert_eq!(with_meta(|m| m.csum = Some(PartialCsum { start: 14, offset: 16 })), Some(OffloadError::CsumNotTcp));
    assert_eq!(with_frame(|f| f[12] = 0x86), Some(OffloadError::NotIpv4));
    assert_eq!(with_frame(|f| f.truncate(33)), Some(OffloadError::NotIpv4));
    assert_eq!(with_frame(|f| f[14] = 0x65), Some(OffloadError::Ipv4Malformed), "version 6");
    assert_eq!(with_frame(|f| f[14] = 0x44), Some(OffloadError::Ipv4Malformed), "IHL 4");
    assert_eq!(with_frame(|f| f.truncate(f.len() - 1)), Some(OffloadError::Ipv4Malformed), "total length past the end");
    assert_eq!(with_frame(|f| f[20] |= 0x20), Some(OffloadError::Ipv4Fragment), "MF");
    assert_eq!(with_frame(|f| f[21] = 1), Some(OffloadError::Ipv4Fragment), "fragment offset");
    assert_eq!(with_frame(|f| f[23] = 17), Some(OffloadError::NotTcp));
    assert_eq!(with_frame(|f| f[34 + 12] = 0x40), Some(OffloadError::TcpMalformed), "data offset 4");
    let headers_only = |f: &mut Vec<u8>| {
        f.truncate(66);
        f[16..18].copy_from_slice(&52u16.to_be_bytes());
    };
    assert_eq!(with_frame(headers_only), Some(OffloadError::GsoEmpty));
    let tcp_past_end = |f: &mut Vec<u8>| {
        f.truncate(60);
        f[16..18].copy_from_slice(&46u16.to_be_bytes());
    };
    assert_eq!(with_frame(tcp_past_end), Some(OffloadError::TcpMalformed));
    let options_past_end = |f: &mut Vec<u8>| {
        f[34 + 12] = 0xf0;
        f[16..18].copy_from_slice(&79u16.to_be_bytes());
    };
    assert_eq!(with_frame(options_past_end), Some(OffloadError::TcpMalformed), "60-byte TCP header, 59 bytes");
}

#[test]
fn output_buffers_checked_before_writing() {
    let (frame, meta) = valid();
    let plan = gso::plan(&frame, &meta).unwrap();
    assert_eq!(plan.max_segment_len(), 66 + 1000);
    let mut bufs = vec![vec![0u8; HEADROOM + 1066]; 3];
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    assert_eq!(plan.write(&frame, HEADROOM, &mut out[..2]).err(), Some(OffloadError::TooFewBuffers));
    assert_eq!(plan.write(&frame, HEADROOM + 1, &mut out).err(), Some(OffloadError::BufferTooSmall));
    assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 0)), "nothing written");
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    let done = plan.write(&frame, HEADROOM, &mut out).unwrap();
    assert_eq!((done.segments, done.bytes), (3, 3 * 66 + 3000));
    assert!(bufs.iter().all(|b| b[..HEADROOM].iter().all(|&x| x == 0)), "headroom left alone");
}

#[test]
fn a_super_packet_within_one_segment_is_one_segment() {
    let (frame, meta) = TcpSuper::new(payload(500), 1000).build();
    let plan = gso::plan(&frame, &meta).unwrap();
    assert_eq!((plan.segments(), plan.segment_len(0)), (1, frame.len()));
}

/// Segments of one 10-segment super-packet (MSS 1000, ACK only), one frame each.
fn segments() -> Vec<Vec<u8>> {
    let mut sp = TcpSuper::new(payload(10_000), 1000);
    sp.flags = 0x10;
    let (frame, meta) = sp.build();
    let plan = gso::plan(&frame, &meta).unwrap();
    let mut bufs = vec![vec![0u8; 1066]; plan.segments()];
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    plan.write(&frame, 0, &mut out).unwrap();
    bufs
}

/// The units of `frames` as (first frame, segments).
fn units(frames: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let mut out = [Coalesced::default(); BURST];
    let n = coalesce(frames, true, &mut out);
    out[..n]
        .iter()
        .map(|u| match u {
            Coalesced::Single(i) => (*i, 1),
            Coalesced::Merged(m) => (m.members().next().unwrap(), m.segments()),
        })
        .collect()
}

/// Segments `from..` changed by `edit` (checksums fixed after), then coalesced.
fn edited(from: core::ops::Range<usize>, edit: impl Fn(&mut Vec<u8>)) -> Vec<(usize, usize)> {
    let mut segs = segments();
    for f in &mut segs[from] {
        edit(f);
        refit(f);
    }
    units(&segs)
}

#[test]
fn in_order_segments_merge_into_one() {
    assert_eq!(units(&segments()), [(0, 10)]);
}

/// Whole frames merge only when none carries metadata: a super-packet's segment size or
/// a partial checksum would be lost in a merge.
#[test]
fn whole_frames_merge_only_without_metadata() {
    let segs = segments();
    let shape = |metas: &[OffloadMeta]| {
        let mut out = [Coalesced::default(); BURST];
        let n = coalesce_whole(&segs, metas, &mut out);
        out[..n].iter().map(|u| matches!(u, Coalesced::Merged(_))).collect::<Vec<_>>()
    };
    assert_eq!(shape(&[OffloadMeta::default(); 10]), [true]);
    let mut metas = [OffloadMeta::default(); 10];
    metas[4].csum = Some(PartialCsum { start: 34, offset: 16 });
    assert_eq!(shape(&metas), [false; 10], "each alone, in order");
}

#[test]
fn each_flush_condition_ends_the_super_packet() {
    let add = |f: &mut Vec<u8>, at: usize, n: u32| {
        let v = u32::from_be_bytes(f[at..at + 4].try_into().unwrap()).wrapping_add(n);
        f[at..at + 4].copy_from_slice(&v.to_be_bytes());
    };
    // From segment 5 on something changes: two super-packets.
    let split = vec![(0, 5), (5, 5)];
    let rest = 5..10;
    assert_eq!(edited(rest.clone(), |f| f[15] = 4), split, "TOS");
    assert_eq!(edited(rest.clone(), |f| f[22] = 63), split, "TTL");
    assert_eq!(edited(rest.clone(), |f| f[20] &= !0x40), split, "DF");
    assert_eq!(edited(rest.clone(), |f| f[19] = f[19].wrapping_add(7)), split, "identification jumps");
    assert_eq!(edited(rest.clone(), |f| add(f, 34 + 4, 1)), split, "sequence gap");
    assert_eq!(edited(rest.clone(), |f| add(f, 34 + 8, 1)), split, "ack number");
    assert_eq!(edited(rest.clone(), |f| f[34 + 15] ^= 1), split, "window");
    assert_eq!(edited(rest.clone(), |f| f[34 + 13] |= 0x40), split, "ECE");
    assert_eq!(edited(rest.clone(), |f| f[34 + 27] ^= 1), split, "timestamp option");
    let mut other_mac = segments();
    other_mac[5..].iter_mut().for_each(|f| f[11] ^= 1);
    assert_eq!(units(&other_mac), split, "Ethernet header (another flow)");
    // Never merged: passes alone between two super-packets.
    let alone = vec![(0, 5), (5, 1), (6, 4)];
    assert_eq!(edited(5..6, |f| f[34 + 13] |= 0x80), alone, "CWR");
    assert_eq!(edited(5..6, |f| f[34 + 13] |= 0x20), alone, "URG");
    assert_eq!(edited(5..6, |f| f[34 + 13] |= 0x04), alone, "RST");
    assert_eq!(edited(5..6, |f| f[34 + 13] |= 0x02), alone, "SYN");
    // PSH and FIN end the super-packet they join.
    let ends = vec![(0, 6), (6, 4)];
    assert_eq!(edited(5..6, |f| f[34 + 13] |= 0x08), ends, "PSH");
    assert_eq!(edited(5..6, |f| f[34 + 13] |= 0x01), ends, "FIN");
}

#[test]
fn corrupt_or_odd_segments_pass_alone() {
    let mut segs = segments();
    segs[5][100] ^= 1;
    assert_eq!(units(&segs), [(0, 5), (5, 1), (6, 4)], "TCP checksum wrong");
    let mut out = [Coalesced::default(); BURST];
    assert_eq!(coalesce(&segs, false, &mut out), 1, "checksums trusted: one super-packet");

    let mut segs = segments();
    segs[5][24] ^= 1;
    assert_eq!(units(&segs), [(0, 5), (5, 1), (6, 4)], "IPv4 header checksum wrong");

    let mut segs = segments();
    segs[5].push(0);
    assert_eq!(units(&segs), [(0, 5), (5, 1), (6, 4)], "padding after the IPv4 packet");

    // A shorter segment is the last; a longer one cannot follow.
    let mut segs = segments();
    segs[3].truncate(1066 - 10);
    segs[3][16..18].copy_from_slice(&(1052 - 10u16).to_be_bytes());
    refit(&mut segs[3]);
    // The sequence no longer continues after it: the rest start a new super-packet.
    assert_eq!(units(&segs), [(0, 4), (4, 6)], "merged up to the short segment");
}

/// Segment `seg` of flow `flow` (a source port of its own).
fn flow_segment(flow: u16, seg: usize) -> Vec<u8> {
    let mut f = segments()[seg].clone();
    f[34..36].copy_from_slice(&(40_000 + flow).to_be_bytes());
    refit(&mut f);
    f
}

#[test]
fn flows_interleave_and_the_table_is_bounded() {
    // Eight flows interleaved, then a ninth: nine super-packets of three, in the order
    // of their first segments (each flow keeps its order).
    let mut frames: Vec<_> = (0..3).flat_map(|seg| (0..8).map(move |flow| flow_segment(flow, seg))).collect();
    frames.extend((0..3).map(|seg| flow_segment(8, seg)));
    let u = units(&frames);
    assert_eq!(u.len(), 9, "{u:?}");
    assert!(u.iter().all(|x| x.1 == 3), "{u:?}");
    assert!(u.windows(2).all(|w| w[0].0 < w[1].0), "{u:?}");

    // Nine interleaved: each new flow evicts the oldest before its next segment comes,
    // as with the kernel's eight GRO lists; nothing merges, nothing is lost.
    let frames: Vec<_> = (0..3).flat_map(|seg| (0..9).map(move |flow| flow_segment(flow, seg))).collect();
    assert_eq!(units(&frames), (0..27).map(|i| (i, 1)).collect::<Vec<_>>());
}
