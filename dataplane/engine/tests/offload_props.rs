//! Segmenting then coalescing any TCPv4 super-packet (random payload, MSS, IP and TCP
//! options, flags, partial or complete checksum) gives every segment valid headers and
//! checksums, and gives back the same byte stream; without IP options, URG or CWR, and
//! within one burst, it gives back the super-packet itself (checksum in partial form).
//! Laid out as UDP GSO datagrams behind their VXLAN headers, the segments are the same
//! bytes.
#![expect(clippy::cast_possible_truncation, reason = "sequence numbers, identifications and test bytes wrap by design")]

use proptest::prelude::*;
use xlane_engine::BURST;
use xlane_engine::MAX_SEGMENTS;
use xlane_engine::offload::build::{self, TcpSuper};
use xlane_engine::offload::{
    Coalesced, GsoKind, OffloadError, OffloadMeta, coalesce, complete_checksum, datagram_parts, gso, write_datagrams,
};
use xlane_wire::{IpProtocol, Ipv4Packet, TcpPacket, checksum};

const HEADROOM: usize = 50;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const URG: u8 = 0x20;
const CWR: u8 = 0x80;

fn super_packets() -> impl Strategy<Value = TcpSuper> {
    let options = |max: usize| (0..=max / 4).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4));
    (
        // Half without IP options: only those can merge back into one super-packet.
        (any::<u16>(), 1..=255u8, any::<u8>(), prop_oneof![Just(Vec::new()), options(40)], any::<u32>(), any::<u32>()),
        (prop::sample::select(vec![0u8, PSH, FIN, PSH | FIN, CWR, CWR | PSH, URG, 0x40]), any::<u16>(), options(40)),
        (1..=65_000usize, 88..=9000u16, any::<bool>(), any::<u8>()),
    )
        .prop_map(
            |((ident, ttl, tos, ip_options, seq, ack), (flags, window, tcp_options), (len, mss, partial, fill))| {
                let headers = 40 + ip_options.len() + tcp_options.len();
                let len = len.min(65_535 - headers);
                let payload = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(fill)).collect();
                TcpSuper {
                    ident,
                    ttl,
                    tos,
                    ip_options,
                    src: [10, 244, 1, 2],
                    dst: [10, 244, 2, 3],
                    seq,
                    ack,
                    flags: 0x10 | flags,
                    window,
                    urgent: if flags & URG != 0 { 7 } else { 0 },
                    tcp_options,
                    payload,
                    mss,
                    partial,
                }
            },
        )
}

/// A valid IPv4/TCP frame: header and TCP checksums, lengths. Returns (seq, flags, payload).
fn check_valid(f: &[u8]) -> (u32, u8, &[u8]) {
    let ip = Ipv4Packet::new_checked(&f[14..]).expect("IPv4");
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    assert_eq!(usize::from(ip.total_len()), f.len() - 14);
    assert_eq!(ip.next_header(), IpProtocol::Tcp);
    let ihl = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(&f[14 + ihl..]).expect("TCP");
    assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()), "TCP checksum");
    let thl = usize::from(tcp.header_len());
    (tcp.seq_number().0 as u32, f[14 + ihl + 13], &f[14 + ihl + thl..])
}

fn segment(frame: &[u8], meta: &OffloadMeta, bufs: &mut [Vec<u8>]) -> Vec<Vec<u8>> {
    let plan = gso::plan(frame, meta).expect("a valid super-packet");
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let done = plan.write(frame, HEADROOM, &mut out).expect("enough buffers");
    assert_eq!(done.segments, plan.segments());
    (0..plan.segments()).map(|i| bufs[i][HEADROOM..HEADROOM + plan.segment_len(i)].to_vec()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn segment_then_coalesce_round_trips(sp in super_packets()) {
        let (frame, meta) = sp.build();
        let mss = usize::from(sp.mss);
        let bufs_needed = sp.payload.len().div_ceil(mss);
        let mut bufs = vec![vec![0xa5u8; HEADROOM + 9000 + 200]; bufs_needed];
        let segs = segment(&frame, &meta, &mut bufs);
        prop_assert_eq!(segs.len(), bufs_needed);
        let hdr_len = usize::from(meta.hdr_len);
        let l4 = 14 + 20 + sp.ip_options.len();
        let last = segs.len() - 1;
        let mut stream = Vec::with_capacity(sp.payload.len());
        for (i, s) in segs.iter().enumerate() {
            let (seq, flags, payload) = check_valid(s);
            prop_assert!(payload.len() <= mss && !payload.is_empty());
            prop_assert_eq!(seq, sp.seq.wrapping_add(stream.len() as u32), "contiguous sequence");
            let ident = u16::from_be_bytes([s[18], s[19]]);
            prop_assert_eq!(ident, sp.ident.wrapping_add(i as u16));
            let mut want = 0x10 | (sp.flags & (URG | 0x40));
            if i == last { want |= sp.flags & (FIN | PSH) }
            if i == 0 { want |= sp.flags & CWR }
            prop_assert_eq!(flags, want, "flags of segment {}", i);
            // Everything else in the headers is the super-packet's.
            let mut h = s[..hdr_len].to_vec();
            let mut o = frame[..hdr_len].to_vec();
            for r in [16..20, 24..26, l4 + 4..l4 + 8, l4 + 13..l4 + 14, l4 + 16..l4 + 18] {
                h[r.clone()].fill(0);
                o[r].fill(0);
            }
            prop_assert_eq!(h, o);
            stream.extend_from_slice(payload);
        }
        prop_assert_eq!(&stream, &sp.payload);

        // The same segments as UDP GSO datagrams, each behind its VXLAN header.
        let encapsulated = build::encapsulated(&frame, 41_234, 64);
        let mut out = vec![0u8; 200_000];
        match write_datagrams(&encapsulated, &meta, &mut out) {
            Ok(d) => {
                prop_assert!(segs.len() <= MAX_SEGMENTS);
                prop_assert_eq!(d.segments, segs.len());
                prop_assert_eq!((d.src_port, d.dst_port, d.dst.octets(), d.src.octets()), (41_234, 8472, [192, 168, 50, 2], [192, 168, 50, 1]));
                let datagrams: Vec<&[u8]> = out[..d.len].chunks(d.stride).collect();
                prop_assert_eq!(datagrams.len(), segs.len());
                for (dg, seg) in datagrams.iter().zip(&segs) {
                    prop_assert_eq!(&dg[..8], &encapsulated[42..50]);
                    prop_assert_eq!(&dg[8..], &seg[..]);
                }
                // Gathered from headers and the super-packet's own payload: the same bytes.
                let mut headers = vec![0u8; MAX_SEGMENTS * 200];
                let mut parts = arrayvec::ArrayVec::new();
                let g = datagram_parts(&encapsulated, &meta, &mut headers, &mut parts).unwrap();
                prop_assert_eq!(g, d);
                let gathered: Vec<u8> =
                    parts.iter().flat_map(|p| [&headers[p.header.clone()], &encapsulated[p.payload.clone()]].concat()).collect();
                prop_assert!(gathered == out[..d.len], "gathered datagrams differ");
            }
            Err(e) => {
                prop_assert!(segs.len() > MAX_SEGMENTS);
                prop_assert_eq!(e, OffloadError::TooManySegments);
            }
        }

        // Coalesce burst by burst; the units' payloads in order are the stream again.
        let mut units = [Coalesced::default(); BURST];
        let mut merged_buf = vec![0u8; 65_536 + 14];
        let mut again = Vec::with_capacity(sp.payload.len());
        let mut merged_units = Vec::new();
        for burst in segs.chunks(BURST) {
            let n = coalesce(burst, true, &mut units);
            let mut seen = 0;
            for u in &units[..n] {
                match u {
                    Coalesced::Single(i) => {
                        seen += 1;
                        again.extend_from_slice(check_valid(&burst[*i]).2);
                    }
                    Coalesced::Merged(m) => {
                        seen += m.segments();
                        let meta = m.write(burst, &mut merged_buf).unwrap();
                        let gso = meta.gso.unwrap();
                        prop_assert_eq!((gso.kind, usize::from(gso.size)), (GsoKind::TcpV4, mss));
                        prop_assert_eq!(meta.csum.map(|c| (usize::from(c.start), c.offset)), Some((l4, 16)));
                        let mut full = merged_buf[..m.len()].to_vec();
                        let partial = full.clone();
                        complete_checksum(&mut full, &meta).unwrap();
                        again.extend_from_slice(check_valid(&full).2);
                        merged_units.push((partial, meta, m.segments()));
                    }
                }
            }
            prop_assert_eq!(seen, burst.len(), "every segment in one unit");
        }
        prop_assert_eq!(&again, &sp.payload);

        let mergeable = sp.ip_options.is_empty() && sp.flags & (URG | CWR) == 0;
        if !mergeable {
            prop_assert!(merged_units.is_empty() || sp.flags & CWR != 0);
        } else if segs.len() > 1 && segs.len() <= BURST {
            // One super-packet: the original, its checksum in partial form.
            prop_assert_eq!(merged_units.len(), 1);
            let (bytes, meta, n) = &merged_units[0];
            prop_assert_eq!(*n, segs.len());
            let mut want = frame.clone();
            let pseudo = checksum::pseudo_ipv4([10, 244, 1, 2], [10, 244, 2, 3], 6, (frame.len() - l4) as u16);
            want[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
            prop_assert!(bytes == &want, "merged super-packet differs from the original");
            prop_assert_eq!(usize::from(meta.hdr_len), hdr_len);
            // And it segments again into the same segments.
            let mut bufs2 = vec![vec![0u8; HEADROOM + 9000 + 200]; segs.len()];
            prop_assert_eq!(segment(bytes, meta, &mut bufs2), segs);
        }
    }

    /// Left partial for the port (AF_XDP TX checksum requests), each segment is the
    /// complete one once its checksum is completed where the plan says.
    #[test]
    fn segments_left_partial_complete_to_the_same_bytes(sp in super_packets()) {
        let (frame, meta) = sp.build();
        let n = sp.payload.len().div_ceil(usize::from(sp.mss));
        let mut bufs = vec![vec![0u8; HEADROOM + 9000 + 200]; n];
        let complete = segment(&frame, &meta, &mut bufs);
        let plan = gso::plan(&frame, &meta).unwrap().leaving_checksums();
        let c = plan.partial_checksum();
        prop_assert_eq!((usize::from(c.start), c.offset), (14 + 20 + sp.ip_options.len(), 16));
        let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        plan.write(&frame, HEADROOM, &mut out).unwrap();
        let partial = OffloadMeta { csum: Some(c), ..OffloadMeta::default() };
        for (i, want) in complete.iter().enumerate() {
            let seg = &mut bufs[i][HEADROOM..HEADROOM + plan.segment_len(i)];
            complete_checksum(seg, &partial).unwrap();
            prop_assert_eq!(&seg[..], &want[..], "segment {}", i);
        }
    }
}

/// A valid super-packet with up to eight bytes overwritten anywhere, and its length cut.
fn mangled() -> impl Strategy<Value = (Vec<u8>, OffloadMeta)> {
    (
        1..4000usize,
        88..2000u16,
        any::<bool>(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(len, mss, partial, edits, cut)| {
            let mut sp = TcpSuper::new(vec![0x42; len], mss);
            sp.partial = partial;
            let (mut frame, meta) = sp.build();
            for (at, v) in edits {
                let at = at.index(frame.len());
                frame[at] = v;
            }
            let keep = frame.len() - cut.index(frame.len() / 8 + 1);
            frame.truncate(keep);
            (frame, meta)
        })
}

proptest! {
    /// Whatever the bytes, the parsers answer (a plan or a reason) and never panic, and
    /// what they accept they write without panicking.
    #[test]
    fn mangled_input_never_panics((frame, meta) in mangled(), hdr in proptest::collection::vec(any::<u8>(), 0..14)) {
        let _ = OffloadMeta::from_virtio(&hdr);
        if let Ok(plan) = gso::plan(&frame, &meta) {
            let mut bufs = vec![vec![0u8; HEADROOM + plan.max_segment_len()]; plan.segments()];
            let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
            let done = plan.write(&frame, HEADROOM, &mut out).expect("buffers sized by the plan");
            for (i, b) in bufs.iter().enumerate().take(done.segments) {
                check_valid(&b[HEADROOM..HEADROOM + plan.segment_len(i)]);
            }
        }
        // Coalesce the mangled frame among segments of its own flow.
        let (good, good_meta) = TcpSuper::new(vec![0x42; 3000], 1000).build();
        let plan = gso::plan(&good, &good_meta).unwrap();
        let mut bufs = vec![vec![0u8; plan.max_segment_len()]; plan.segments()];
        let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
        plan.write(&good, 0, &mut out).unwrap();
        let mut burst: Vec<Vec<u8>> = bufs.iter().enumerate().map(|(i, b)| b[..plan.segment_len(i)].to_vec()).collect();
        burst.insert(1, frame);
        let mut units = [Coalesced::default(); BURST];
        let n = coalesce(&burst, true, &mut units);
        let mut merged = vec![0u8; 65_536];
        let mut seen = 0;
        for u in &units[..n] {
            match u {
                Coalesced::Single(_) => seen += 1,
                Coalesced::Merged(m) => {
                    seen += m.segments();
                    let meta = m.write(&burst, &mut merged).unwrap();
                    let mut full = merged[..m.len()].to_vec();
                    complete_checksum(&mut full, &meta).unwrap();
                    check_valid(&full);
                }
            }
        }
        prop_assert_eq!(seen, burst.len());
    }
}
