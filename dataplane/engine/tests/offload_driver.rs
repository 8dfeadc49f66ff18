//! Super-packets through the driver, between in-memory ports that keep offloads (the
//! test double of a veth read through a virtio-net header) and ports that do not:
//! routed once, cut into segments towards the uplink with outer headers per segment,
//! merged back (GRO) in front of the receiving pod, delivered whole between local
//! offloading pods and, encapsulated, to an uplink that has the kernel cut them, in arrival order with ordinary frames, refusals counted.

use proptest::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use xlane_engine::DropReason;
use xlane_engine::OffloadMeta;
use xlane_engine::fixtures::fixture;
use xlane_engine::mem::MemDataplane;
use xlane_engine::mem::MemPort;
use xlane_engine::offload::build::TcpSuper;
use xlane_engine::offload::{GsoKind, OffloadError, complete_checksum, push_outer, write_datagrams};
use xlane_engine::testbed::{self, UPLINK};
use xlane_fib::{FibHandle, PortId};
use xlane_wire::{Ipv4Packet, TcpPacket, UdpPacket, VXLAN_OVERHEAD};

const POD: PortId = PortId(1);
const BUFFERS: usize = 512;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i.to_le_bytes()[0]).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// The TCP payload of an Ethernet/IPv4/TCP frame whose IPv4 and TCP checksums are
/// valid (panics otherwise).
fn checked_tcp_payload(frame: &[u8]) -> Vec<u8> {
    let ip = Ipv4Packet::new_checked(&frame[14..]).expect("IPv4");
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    let tcp = TcpPacket::new_checked(ip.payload()).expect("TCP");
    assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()), "TCP checksum");
    tcp.payload().to_vec()
}

/// Check a VXLAN segment's outer headers against its size; return the inner frame.
fn inner_of(segment: &[u8]) -> &[u8] {
    let ip = Ipv4Packet::new_checked(&segment[14..]).expect("outer IPv4");
    assert!(ip.verify_checksum(), "outer IPv4 checksum");
    assert_eq!(usize::from(ip.total_len()), segment.len() - 14, "outer IPv4 length");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (testbed::A_VTEP_IP, testbed::B_VTEP_IP));
    let udp = UdpPacket::new_checked(ip.payload()).expect("outer UDP");
    assert_eq!(usize::from(udp.len()), segment.len() - 34, "outer UDP length");
    &segment[VXLAN_OVERHEAD..]
}

#[test]
fn a_super_packet_crosses_nodes_as_segments_and_reaches_the_pod_merged() {
    let (mut a, mut b) = testbed::two_nodes_with(1, BUFFERS, &[POD]);
    let data = payload(64_000, 1);
    let (frame, meta) = TcpSuper::new(data.clone(), 1398).build();
    a.inject_super(POD, &frame, meta).unwrap();
    a.run_until_idle();

    let segments = a.take_tx(UPLINK).unwrap();
    assert_eq!(segments.len(), 64_000usize.div_ceil(1398));
    let mut sent = Vec::new();
    for s in &segments {
        assert!(s.len() <= 1500 + 14, "a segment fits the uplink MTU: {}", s.len());
        sent.extend(checked_tcp_payload(inner_of(s)));
    }
    assert_eq!(sent, data, "the segments carry the byte stream in order");
    let c = a.counters();
    assert_eq!((c.rx, c.tx, c.encapsulated, c.gso_packets, c.gso_segments), (1, 1, 1, 1, segments.len() as u64));
    assert!(c.conserved());

    for s in &segments {
        b.inject(UPLINK, s).unwrap();
    }
    b.run_until_idle();
    let merged = b.take_tx_super(POD).unwrap();
    assert_eq!(merged.len(), 1, "one burst of in-order segments becomes one super-packet");
    let (bytes, m) = &merged[0];
    assert_eq!(m.gso.map(|g| (g.kind, g.size)), Some((GsoKind::TcpV4, 1398)));
    assert!(m.csum.is_some(), "merged with a partial checksum");
    let tcp = Ipv4Packet::new_checked(&bytes[14..]).unwrap();
    assert_eq!(TcpPacket::new_checked(tcp.payload()).unwrap().payload(), &data[..]);
    assert!(b.take_tx(POD).unwrap().is_empty());
    assert!(b.counters().conserved());
}

/// To an uplink that has the host's stack cut encapsulated super-packets (UDP GSO), a
/// super-packet leaves whole behind its outer headers; the datagrams the kernel makes of
/// it reach the other node's pod merged, the byte stream intact.
#[test]
fn to_an_uplink_with_udp_segmentation_a_super_packet_leaves_whole() {
    let (mut a, mut b) = testbed::two_nodes_with(1, BUFFERS, &[POD]);
    a.serve(MemPort::tunnel_offloading(UPLINK));
    let data = payload(60_000, 7);
    let (frame, meta) = TcpSuper::new(data.clone(), 1398).build();
    a.inject_super(POD, &frame, meta).unwrap();
    a.run_until_idle();

    assert!(a.take_tx(UPLINK).unwrap().is_empty(), "nothing cut by the engine");
    let whole = a.take_tx_super(UPLINK).unwrap();
    assert_eq!(whole.len(), 1);
    let (encapsulated, m) = &whole[0];
    assert_eq!(m, &meta, "the inner super-packet's metadata");
    // Routed as any packet (inner MACs rewritten, TTL down by one); TCP untouched.
    assert!(encapsulated[VXLAN_OVERHEAD + 34..] == frame[34..], "the inner TCP segment, unchanged");
    assert_eq!(encapsulated[VXLAN_OVERHEAD + 22], frame[22] - 1, "TTL");
    let c = a.counters();
    assert_eq!((c.rx, c.tx, c.encapsulated, c.gso_packets), (1, 1, 1, 1));
    assert!(c.conserved());

    // What the kernel's UDP segmentation sends: each datagram behind outer headers.
    let mut out = vec![0u8; 80_000];
    let d = write_datagrams(encapsulated, m, &mut out).unwrap();
    assert_eq!((d.dst, d.src, d.dst_port), (testbed::B_VTEP_IP, testbed::A_VTEP_IP, 8472));
    assert_eq!(d.segments, 60_000usize.div_ceil(1398));
    let outer: &[u8; VXLAN_OVERHEAD] = encapsulated[..VXLAN_OVERHEAD].try_into().unwrap();
    for dg in out[..d.len].chunks(d.stride) {
        let mut wire = outer[..VXLAN_OVERHEAD - 8].to_vec();
        wire.extend_from_slice(dg);
        push_outer(outer, &mut wire);
        inner_of(&wire);
        b.inject(UPLINK, &wire).unwrap();
    }
    b.run_until_idle();
    let merged = b.take_tx_super(POD).unwrap();
    assert_eq!(merged.len(), 1);
    let tcp = Ipv4Packet::new_checked(&merged[0].0[14..]).unwrap();
    assert_eq!(TcpPacket::new_checked(tcp.payload()).unwrap().payload(), &data[..]);
    assert!(b.counters().conserved());
}

/// A jumbo underlay: a frame larger than a buffer (received in several, as multi-buffer
/// AF_XDP does) is decapsulated and delivered whole to a pod that keeps offloads; one
/// from that pod leaves whole, encapsulated, to the uplink's UDP sockets.
#[test]
fn jumbo_frames_cross_whole() {
    let (mut a, mut b) = testbed::two_nodes_jumbo(BUFFERS, &[POD], 9000);
    let (mut inner, _) = TcpSuper::new(payload(8000, 3), 8000).build();
    // Complete and no GSO: what a pod at MTU 8950 sends in one frame.
    let meta = OffloadMeta::default();
    let l4 = 34;
    inner[l4 + 16..l4 + 18].fill(0);
    let ip = Ipv4Packet::new_checked(&inner[14..]).unwrap();
    let sum = {
        let mut tcp = TcpPacket::new_unchecked(inner[l4..].to_vec());
        tcp.fill_checksum(&ip.src_addr().into(), &ip.dst_addr().into());
        tcp.checksum()
    };
    inner[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
    a.inject_super(POD, &inner, meta).unwrap();
    a.run_until_idle();
    let out = a.take_tx_super(UPLINK).unwrap();
    assert_eq!(out.len(), 1, "leaves whole");
    let (encapsulated, m) = &out[0];
    assert_eq!(m.gso, None);
    let wire = on_the_wire(encapsulated, m);
    assert_eq!(wire.len(), 1, "one datagram");
    let wire = &wire[0];
    assert!(wire.len() > xlane_engine::mem::FRAME_SIZE, "larger than a buffer: {}", wire.len());
    b.inject_super(UPLINK, wire, OffloadMeta::default()).unwrap();
    b.run_until_idle();
    let delivered = b.take_tx_super(POD).unwrap();
    assert_eq!(delivered.len(), 1, "delivered whole");
    assert_eq!(checked_tcp_payload(&delivered[0].0), payload(8000, 3));
    for (i, dp) in [&a, &b].into_iter().enumerate() {
        let c = dp.counters();
        assert!(c.conserved() && c.dropped() == 0, "node {i}: {:?}", c.drops);
    }
}

/// What a jumbo underlay carries for an encapsulated super-packet an uplink was sent
/// whole: the kernel's datagrams, each behind the outer headers.
fn on_the_wire(encapsulated: &[u8], meta: &OffloadMeta) -> Vec<Vec<u8>> {
    let mut dg = vec![0u8; 70_000];
    let d = write_datagrams(encapsulated, meta, &mut dg).unwrap();
    let outer: &[u8; VXLAN_OVERHEAD] = encapsulated[..VXLAN_OVERHEAD].try_into().unwrap();
    let wire: Vec<Vec<u8>> = dg[..d.len]
        .chunks(d.stride)
        .map(|datagram| {
            let mut wire = outer[..VXLAN_OVERHEAD - 8].to_vec();
            wire.extend_from_slice(datagram);
            push_outer(outer, &mut wire);
            wire
        })
        .collect();
    assert_eq!(wire.len(), d.segments);
    wire
}

/// A jumbo underlay's frames of one flow, received in one burst, reach the pod as one
/// super-packet (as the kernel's GRO hands a receiver 64 KiB), not one send each; a
/// corrupt one in the middle goes alone and is never merged.
#[test]
fn jumbo_frames_of_one_flow_reach_the_pod_merged() {
    let (mut a, mut b) = testbed::two_nodes_jumbo(BUFFERS, &[POD], 9000);
    let data = payload(7 * 8000, 4);
    let (frame, meta) = TcpSuper::new(data.clone(), 8000).build();
    a.inject_super(POD, &frame, meta).unwrap();
    a.run_until_idle();
    let out = a.take_tx_super(UPLINK).unwrap();
    assert_eq!(out.len(), 1, "leaves whole");
    let wire = on_the_wire(&out[0].0, &out[0].1);
    assert_eq!(wire.len(), 7);
    for w in &wire {
        assert!(w.len() > xlane_engine::mem::FRAME_SIZE && w.len() <= 9014, "a jumbo frame: {}", w.len());
        b.inject_super(UPLINK, w, OffloadMeta::default()).unwrap();
    }
    b.run_until_idle();
    let delivered = b.take_tx_super(POD).unwrap();
    assert_eq!(delivered.len(), 1, "merged into one");
    let (bytes, m) = &delivered[0];
    assert_eq!(m.gso.map(|g| (g.kind, g.size)), Some((GsoKind::TcpV4, 8000)));
    let mut bytes = bytes.clone();
    complete_checksum(&mut bytes[..], m).unwrap();
    assert_eq!(checked_tcp_payload(&bytes), data);
    let pod = b.counters();
    assert!(pod.conserved() && pod.dropped() == 0, "{:?}", pod.drops);

    // The same with the fourth frame's inner payload corrupted: 1-3 merged, 4 alone,
    // 5-7 merged; the pod's kernel drops the corrupt one, as it would from the wire.
    for (i, w) in wire.iter().enumerate() {
        let mut w = w.clone();
        if i == 3 {
            let last = w.len() - 1;
            w[last] ^= 0xff;
        }
        b.inject_super(UPLINK, &w, OffloadMeta::default()).unwrap();
    }
    b.run_until_idle();
    let sizes: Vec<Option<u16>> = b.take_tx_super(POD).unwrap().iter().map(|(_, m)| m.gso.map(|g| g.size)).collect();
    assert_eq!(sizes, [Some(8000), None, Some(8000)]);
}

#[test]
fn between_local_pods_that_keep_offloads_a_super_packet_travels_whole() {
    let h = FibHandle::new();
    testbed::tables(2, 1).publish(&h);
    let mut dp = MemDataplane::with_offloading(&h, 3, &[PortId(1), PortId(2)]);
    dp.preallocate(64);
    let mut s = TcpSuper::new(payload(60_000, 2), 1398);
    s.dst = testbed::pod(2).ip.octets();
    let (frame, meta) = s.build();
    dp.inject_super(PortId(1), &frame, meta).unwrap();
    dp.run_until_idle();
    let out = dp.take_tx_super(PortId(2)).unwrap();
    assert_eq!(out.len(), 1);
    let (bytes, m) = &out[0];
    assert_eq!(*m, meta, "metadata kept: the receiving pod's kernel finishes the job");
    assert_eq!(bytes.len(), frame.len());
    assert_eq!(&bytes[0..6], testbed::pod(2).mac.as_bytes());
    assert_eq!(bytes[14 + 8] + 1, frame[14 + 8], "TTL decremented");
    assert_eq!(bytes[34..], frame[34..], "TCP header and payload untouched");
    let c = dp.counters();
    assert_eq!((c.local, c.gso_packets, c.gso_segments), (1, 1, 0));
    assert_eq!(dp.buffers_owned(), 64);
}

#[test]
fn towards_a_pod_without_offloads_a_super_packet_is_cut_and_completed() {
    let h = FibHandle::new();
    testbed::tables(2, 1).publish(&h);
    let mut dp = MemDataplane::with_offloading(&h, 3, &[PortId(1)]);
    dp.preallocate(128);
    let data = payload(10_000, 3);
    let mut s = TcpSuper::new(data.clone(), 1000);
    s.dst = testbed::pod(2).ip.octets();
    let (frame, meta) = s.build();
    assert!(meta.csum.is_some());
    dp.inject_super(PortId(1), &frame, meta).unwrap();
    dp.run_until_idle();
    let segs = dp.take_tx(PortId(2)).unwrap();
    assert_eq!(segs.len(), 10);
    let got: Vec<u8> = segs.iter().flat_map(|f| checked_tcp_payload(f)).collect();
    assert_eq!(got, data);
    assert_eq!(dp.counters().gso_segments, 10);
    assert_eq!(dp.buffers_owned(), 128);
}

/// To a port that completes checksums itself (an AF_XDP uplink whose UMEM carries TX
/// checksum requests), segments leave with their TCP checksums partial, each frame
/// naming where: completing them there gives the segments the engine would have made.
#[test]
fn to_a_port_that_completes_checksums_segments_leave_partial() {
    let data = payload(50_000, 9);
    let (frame, meta) = TcpSuper::new(data.clone(), 1398).build();
    let run = |port: MemPort| {
        let (mut a, _) = testbed::two_nodes_with(1, BUFFERS, &[POD]);
        let counters = port.counters_handle();
        a.serve(port);
        a.inject_super(POD, &frame, meta).unwrap();
        a.run_until_idle();
        assert!(a.counters().conserved());
        (a.take_tx(UPLINK).unwrap(), a.take_tx_partial(UPLINK).unwrap(), counters)
    };
    let (complete, none, plain) = run(MemPort::new(UPLINK));
    let (mut partial, csums, offloading) = run(MemPort::checksum_offloading(UPLINK));
    assert!(none.is_empty());
    assert_eq!(plain.tx_partial_csum.load(Relaxed), 0);
    assert_eq!(partial.len(), 50_000usize.div_ceil(1398));
    assert_eq!(csums.len(), partial.len(), "every segment left partial");
    assert_eq!(offloading.tx_partial_csum.load(Relaxed), partial.len() as u64);
    for ((seg, c), whole) in partial.iter_mut().zip(&csums).zip(&complete) {
        // Outer headers (50 bytes), inner Ethernet and IPv4 (34): the inner TCP header.
        assert_eq!((c.start, c.offset), (50 + 34, 16));
        assert_ne!(seg, whole, "the payload was not summed");
        let meta = OffloadMeta { csum: Some(*c), ..OffloadMeta::default() };
        complete_checksum(seg, &meta).unwrap();
        assert_eq!(seg, whole, "completed where it leaves, the same segment");
    }
}

#[test]
fn super_packets_and_ordinary_frames_leave_in_arrival_order() {
    let (mut a, _) = testbed::two_nodes_with(1, BUFFERS, &[POD]);
    let udp = fixture("encap_udp_in");
    let (frame, meta) = TcpSuper::new(payload(5_000, 4), 1398).build();
    a.inject(POD, &udp).unwrap();
    a.inject_super(POD, &frame, meta).unwrap();
    a.inject(POD, &udp).unwrap();
    a.inject(POD, &udp).unwrap();
    a.inject_super(POD, &frame, meta).unwrap();
    a.run_until_idle();
    let kinds: String = a
        .take_tx(UPLINK)
        .unwrap()
        .iter()
        .map(|f| if Ipv4Packet::new_checked(&inner_of(f)[14..]).unwrap().next_header() == 6.into() { 'T' } else { 'u' })
        .collect();
    assert_eq!(kinds, "uTTTTuuTTTT");
}

#[test]
fn refused_super_packets_are_counted_drops_with_their_reason() {
    let (mut a, _) = testbed::two_nodes_with(1, BUFFERS, &[POD]);
    // A segment size that would make thousands of frames.
    let (frame, meta) = TcpSuper::new(payload(60_000, 5), 64).build();
    a.inject_super(POD, &frame, meta).unwrap();
    // A GSO type the engine does not segment.
    let (frame2, mut meta2) = TcpSuper::new(payload(3_000, 6), 1398).build();
    meta2.gso.as_mut().unwrap().kind = GsoKind::UdpL4;
    a.inject_super(POD, &frame2, meta2).unwrap();
    a.run_until_idle();
    assert!(a.take_tx(UPLINK).unwrap().is_empty());
    let c = a.counters();
    assert_eq!(c.drop_count(DropReason::SuperPacket), 2);
    assert_eq!(c.offload[OffloadError::TooManySegments.index()], 1);
    assert_eq!(c.offload[OffloadError::GsoUnsupported.index()], 1);
    assert!(c.conserved());
    assert_eq!(a.buffers_owned(), BUFFERS);
}

#[test]
fn a_super_packet_whose_segments_exceed_the_mtu_gets_fragmentation_needed_back() {
    let (mut a, _) = testbed::two_nodes_with(1, BUFFERS, &[POD]);
    // Segments of 20 + 32 + 1448 bytes: 1500 > the pod MTU (1450); DF is set.
    let (frame, meta) = TcpSuper::new(payload(20_000, 7), 1448).build();
    a.inject_super(POD, &frame, meta).unwrap();
    a.run_until_idle();
    let back = a.take_tx_super(POD).unwrap();
    assert_eq!(back.len(), 1, "the ICMP error goes back to the pod");
    let (icmp, m) = &back[0];
    assert_eq!(*m, OffloadMeta::default(), "an error is a plain frame");
    let ip = Ipv4Packet::new_checked(&icmp[14..]).unwrap();
    assert_eq!(ip.next_header(), 1.into());
    assert_eq!(&ip.payload()[..2], &[3, 4], "destination unreachable, fragmentation needed");
    assert_eq!(u16::from_be_bytes([ip.payload()[6], ip.payload()[7]]), 1450);
    let c = a.counters();
    assert_eq!((c.icmp_errors, c.drop_count(DropReason::MtuExceeded)), (1, 1));
    assert!(a.take_tx(UPLINK).unwrap().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any super-packet a pod can send crosses the overlay and arrives as the same byte
    /// stream: cut at node A, merged at node B, checksums valid all the way.
    #[test]
    fn any_super_packet_crosses_the_overlay_intact(
        len in 1usize..65_000,
        mss in 536u16..=1398,
        seed in any::<u8>(),
        partial in any::<bool>(),
    ) {
        let (mut a, mut b) = testbed::two_nodes_with(1, BUFFERS, &[POD]);
        let data = payload(len, seed);
        let mut s = TcpSuper::new(data.clone(), mss);
        s.partial = partial;
        let (frame, meta) = s.build();
        a.inject_super(POD, &frame, meta).unwrap();
        a.run_until_idle();
        a.wire_to(UPLINK, &mut b, UPLINK).unwrap();
        b.run_until_idle();
        let mut got = Vec::new();
        for (bytes, _) in b.take_tx_super(POD).unwrap() {
            let ip = Ipv4Packet::new_checked(&bytes[14..]).unwrap();
            got.extend_from_slice(TcpPacket::new_checked(ip.payload()).unwrap().payload());
        }
        for f in b.take_tx(POD).unwrap() {
            got.extend(checked_tcp_payload(&f));
        }
        prop_assert_eq!(got, data);
        prop_assert!(a.counters().conserved() && b.counters().conserved());
        prop_assert_eq!((a.buffers_owned(), b.buffers_owned()), (BUFFERS, BUFFERS));
    }
}
