//! Property tests: arbitrary and mutated frames through the whole pipeline never panic,
//! every frame is either forwarded or counted as a drop (an ICMP error made of a
//! dropped frame is counted once more), and what leaves is well formed, ICMP errors
//! included; valid pod traffic survives a round trip through two nodes.

use proptest::prelude::*;
use xlane_engine::DropReason;
use xlane_engine::fixtures::{self, fixture};
use xlane_engine::mem::MemDataplane;
use xlane_engine::testbed::{self, UPLINK};
use xlane_fib::{FibHandle, PortId};
use xlane_wire::{EthernetFrame, Icmpv4Packet, IpProtocol, Ipv4Packet, Mac, UdpPacket, VxlanPacket};

const FIXTURES: &[&str] = &[
    "encap_udp_in",
    "encap_tcp_in",
    "encap_icmp_options_in",
    "encap_padded_in",
    "decap_udp_in",
    "decap_udp_csum_in",
    "arp_request_in",
    "arp_request_padded_in",
    "local_in",
    "te_udp_in",
    "te_icmp_options_in",
    "te_decap_in",
    "frag_needed_in",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Truncate(usize),
    Extend(Vec<u8>),
}

fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        0..FIXTURES.len(),
        prop::collection::vec(
            prop_oneof![
                (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
                any::<usize>().prop_map(Mutation::Truncate),
                prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Extend),
            ],
            0..4,
        ),
    )
        .prop_map(|(i, muts)| {
            let mut f = fixture(FIXTURES[i]);
            for m in muts {
                match m {
                    Mutation::Flip { at, xor } if !f.is_empty() => {
                        let n = f.len();
                        f[at % n] ^= xor;
                    }
                    Mutation::Truncate(n) => f.truncate(n % (f.len() + 1)),
                    Mutation::Extend(b) => f.extend(b),
                    Mutation::Flip { .. } => {}
                }
            }
            f
        });
    prop_oneof![3 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..200)]
}

/// Check a frame leaving `port` of node A looks like what that port should carry.
fn assert_well_formed(port: PortId, f: &[u8]) {
    let eth = EthernetFrame::new_checked(f).expect("ethernet");
    if port == UPLINK {
        let ip = Ipv4Packet::new_checked(eth.payload()).expect("outer ipv4");
        assert!(ip.verify_checksum(), "outer checksum");
        assert_eq!(ip.src_addr(), testbed::A_VTEP_IP);
        assert_eq!(usize::from(ip.total_len()), f.len() - 14);
        let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert_eq!(udp.dst_port(), 8472);
        assert!(udp.src_port() >= 49152);
        let vx = VxlanPacket::new_checked(udp.payload()).expect("vxlan");
        assert_eq!((vx.vni_valid(), vx.vni()), (true, 1));
        let inner = EthernetFrame::new_checked(vx.payload()).expect("inner ethernet");
        let inner_ip = Ipv4Packet::new_checked(inner.payload()).expect("inner ipv4");
        assert!(inner_ip.verify_checksum(), "inner checksum");
        assert!(usize::from(inner_ip.total_len()) <= 1450);
        assert_error_well_formed(inner.payload());
    } else {
        let pod = testbed::pod(u8::try_from(port.0).unwrap());
        assert_eq!(Mac::from(eth.dst_addr()), pod.mac);
        assert_eq!(Mac::from(eth.src_addr()), pod.gateway_mac);
        if eth.ethertype() == xlane_wire::EthernetProtocol::Ipv4 {
            assert!(Ipv4Packet::new_checked(eth.payload()).expect("ipv4").verify_checksum());
            assert_error_well_formed(eth.payload());
        }
    }
}

/// If `ip` is an ICMP error from this node (source: its gateway), it is a time exceeded
/// or fragmentation needed with both checksums right, quoting a header and 8 bytes.
fn assert_error_well_formed(ip: &[u8]) {
    let ip = Ipv4Packet::new_checked(ip).expect("ipv4");
    if ip.src_addr() != testbed::A_GATEWAY || ip.next_header() != IpProtocol::Icmp {
        return;
    }
    assert!(ip.verify_checksum());
    assert_eq!((ip.hop_limit(), ip.dont_frag(), ip.header_len()), (64, false, 20));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("icmp");
    assert!(icmp.verify_checksum(), "ICMP checksum");
    let kind = (ip.payload()[0], ip.payload()[1]);
    assert!(kind == (11, 0) || kind == (3, 4), "{kind:?}");
    // The quoted header as received: its length and total length say how much follows.
    let quoted = &ip.payload()[8..];
    let header_len = usize::from(quoted[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([quoted[2], quoted[3]]));
    assert_eq!(quoted.len(), header_len + (total_len - header_len).min(8), "a header and 8 bytes quoted");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_input_is_forwarded_or_counted(frames in prop::collection::vec((frame_strategy(), 0u16..5), 1..150)) {
        let h = FibHandle::new();
        testbed::tables(2, 3).publish(&h);
        let mut dp = MemDataplane::new(&h, 4);
        let mut injected = 0u64;
        for (f, port) in &frames {
            // Port 4 does not exist: inject refuses it, nothing is queued.
            if dp.inject(PortId(*port), f).is_ok() {
                injected += 1;
            }
        }
        dp.run_until_idle();
        let c = dp.counters();
        prop_assert_eq!(c.rx, injected);
        prop_assert!(c.conserved(), "rx {} tx {} dropped {}", c.rx, c.tx, c.dropped());
        let mut out = 0;
        for p in 0..4 {
            let port = PortId(p);
            out += dp.drain_tx(port, |f| assert_well_formed(port, f)).unwrap() as u64;
        }
        prop_assert_eq!(out, c.tx);
        prop_assert_eq!(c.drop_count(DropReason::NoEgressPort), 0);
    }

    /// A probe whose TTL runs out at node A (TTL ≤ 1) or at node B (TTL 2) comes back
    /// to the pod as exactly one time exceeded from that node's gateway, quoting the
    /// probe as that node received it; from B it crosses the overlay back.
    #[test]
    fn expiring_probes_come_back_from_the_node_where_they_expire(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        sport in any::<u16>(), dport in any::<u16>(), ttl in 0u8..=2, ident in any::<u16>(), df in any::<bool>(),
    ) {
        let (mut a, mut b) = testbed::two_nodes(1, 0);
        let pod = testbed::pod(1);
        let ip = fixtures::Ipv4 { ttl, ident, dont_fragment: df, ..fixtures::Ipv4::new(pod.ip, testbed::b_pod().ip) };
        let probe = fixtures::udp(pod.mac.0, pod.gateway_mac.0, ip, sport, dport, &payload);
        a.inject(pod.port, &probe).unwrap();
        a.run_until_idle();
        let expected_from = if ttl <= 1 { testbed::A_GATEWAY } else { testbed::B_GATEWAY };
        if ttl == 2 {
            prop_assert_eq!(a.wire_to(UPLINK, &mut b, UPLINK).unwrap(), 1);
            b.run_until_idle();
            prop_assert_eq!(b.wire_to(UPLINK, &mut a, UPLINK).unwrap(), 1, "B's error, encapsulated to A");
            a.run_until_idle();
        }
        let got = a.take_tx(pod.port).unwrap();
        prop_assert_eq!(got.len(), 1, "a: {:?} b: {:?}", a.counters(), b.counters());
        let err = &got[0];
        prop_assert_eq!((&err[0..6], &err[6..12]), (&pod.mac.0[..], &pod.gateway_mac.0[..]));
        assert_error_well_formed(&err[14..]);
        let ip = Ipv4Packet::new_checked(&err[14..]).unwrap();
        prop_assert_eq!((ip.src_addr(), ip.dst_addr()), (expected_from, pod.ip));
        prop_assert_eq!(&ip.payload()[..2], &[11, 0]);
        // Quoted as received where it expired: A's hop took one off the TTL (and
        // patched the checksum) before B saw it.
        let quoted = &ip.payload()[8..];
        let sent = &probe[14..14 + quoted.len()];
        prop_assert_eq!((&quoted[..8], &quoted[12..]), (&sent[..8], &sent[12..]));
        prop_assert_eq!(quoted[8], if ttl == 2 { 1 } else { ttl });
        prop_assert!(Ipv4Packet::new_unchecked(quoted).verify_checksum());
        for c in [a.counters(), b.counters()] {
            prop_assert!(c.conserved(), "{:?}", c);
        }
    }

    #[test]
    fn pod_traffic_round_trips_two_nodes(
        payload in prop::collection::vec(any::<u8>(), 0..1400),
        sport in any::<u16>(), dport in any::<u16>(), ttl in 3u8..=255, ident in any::<u16>(), df in any::<bool>(),
    ) {
        let (mut a, mut b) = testbed::two_nodes(1, 0);
        let pod = testbed::pod(1);
        let peer = testbed::b_pod();

        let ip = fixtures::Ipv4 { ttl, ident, dont_fragment: df, ..fixtures::Ipv4::new(pod.ip, peer.ip) };
        let f = fixtures::udp(pod.mac.0, pod.gateway_mac.0, ip, sport, dport, &payload);

        a.inject(pod.port, &f).unwrap();
        a.run_until_idle();
        prop_assert_eq!(a.wire_to(UPLINK, &mut b, UPLINK).unwrap(), 1);
        b.run_until_idle();
        let got = b.take_tx(peer.port).unwrap();
        prop_assert_eq!(got.len(), 1, "a: {:?} b: {:?}", a.counters().drops, b.counters().drops);
        let got = &got[0];
        prop_assert_eq!(&got[0..6], peer.mac.as_bytes());
        prop_assert_eq!(&got[6..12], peer.gateway_mac.as_bytes());
        prop_assert_eq!(got[22], ttl - 2, "one hop on each node");
        let ip = Ipv4Packet::new_checked(&got[14..]).unwrap();
        prop_assert!(ip.verify_checksum());
        // Everything but TTL and header checksum is untouched.
        prop_assert_eq!(&got[14..22], &f[14..22]);
        prop_assert_eq!(&got[23..24], &f[23..24]);
        prop_assert_eq!(&got[26..], &f[26..]);
    }
}
