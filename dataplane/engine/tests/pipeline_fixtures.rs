//! Byte-exact checks of the pipeline against frames built by an independent encoder
//! (Scapy; see fixtures/make_fixtures.py).

use xlane_engine::DropReason;
use xlane_engine::fixtures::{IPV4_DST, IPV4_SRC, fill_ipv4_checksum, fixture, set_ipv4_addr};
use xlane_engine::mem::MemDataplane;
use xlane_engine::testbed::{self, UPLINK};
use xlane_fib::{FibHandle, PortId};

const POD1: PortId = PortId(1);
const POD2: PortId = PortId(2);

fn node() -> MemDataplane {
    let h = FibHandle::new();
    testbed::tables(2, 3).publish(&h);
    MemDataplane::new(&h, 4)
}

/// Inject `input` on `ingress` and expect exactly `expected` out of `egress`.
fn check(ingress: PortId, input: &str, egress: PortId, expected: &str) {
    let mut dp = node();
    dp.inject(ingress, &fixture(input)).unwrap();
    dp.run_until_idle();
    let out = dp.take_tx(egress).unwrap();
    let c = dp.counters();
    assert_eq!(c.dropped(), 0, "{input}: drops {:?}", c.drops);
    assert_eq!(out.len(), 1, "{input}: one frame out of {egress}");
    let want = fixture(expected);
    assert!(out[0] == want, "{input}:\n got  {:02x?}\n want {:02x?}", out[0], want);
    assert!(c.conserved());
}

#[test]
fn encap_udp() {
    check(POD1, "encap_udp_in", UPLINK, "encap_udp_out");
}

#[test]
fn encap_tcp_syn_with_options() {
    check(POD1, "encap_tcp_in", UPLINK, "encap_tcp_out");
}

#[test]
fn encap_icmp_with_ip_options() {
    check(POD1, "encap_icmp_options_in", UPLINK, "encap_icmp_options_out");
}

#[test]
fn encap_strips_ethernet_padding() {
    check(POD1, "encap_padded_in", UPLINK, "encap_padded_out");
}

#[test]
fn decap_udp_zero_checksum() {
    check(UPLINK, "decap_udp_in", POD1, "decap_udp_out");
}

#[test]
fn decap_udp_with_checksum() {
    check(UPLINK, "decap_udp_csum_in", POD1, "decap_udp_csum_out");
}

/// The outer UDP checksum is not verified (RFC 7348 §5): one a sender left partial for
/// a NIC (a veth underlay passes it so) decapsulates like a complete one.
#[test]
fn decap_ignores_the_outer_udp_checksum() {
    let mut dp = node();
    let mut frame = fixture("decap_udp_csum_in");
    frame[40] ^= 0xff;
    dp.inject(UPLINK, &frame).unwrap();
    dp.run_until_idle();
    assert_eq!(dp.take_tx(POD1).unwrap(), vec![fixture("decap_udp_csum_out")]);
}

#[test]
fn arp_proxy_reply() {
    check(POD1, "arp_request_in", POD1, "arp_reply_out");
}

#[test]
fn arp_proxy_reply_padded() {
    check(POD1, "arp_request_padded_in", POD1, "arp_reply_padded_out");
}

#[test]
fn local_delivery() {
    check(POD1, "local_in", POD2, "local_out");
}

/// The fixtures, altered one field at a time, must each land on their own drop reason.
/// (An expired TTL is answered with an ICMP error: `icmp_errors.rs`.)
#[test]
fn mutated_fixtures_drop_with_reason() {
    type Mutation = fn(&mut Vec<u8>);
    let cases: &[(&str, PortId, Mutation, DropReason)] = &[
        ("encap_udp_in", POD1, |f| f[12..14].copy_from_slice(&[0x86, 0xdd]), DropReason::NotIpv4),
        ("encap_udp_in", POD1, |f| f.truncate(13), DropReason::Truncated),
        ("encap_udp_in", POD1, |f| f.truncate(40), DropReason::Ipv4Malformed),
        ("encap_udp_in", POD1, |f| f[14] = 0x65, DropReason::Ipv4Malformed),
        ("encap_udp_in", POD1, |f| f[24] ^= 1, DropReason::Ipv4Checksum),
        ("encap_udp_in", POD1, |f| set_ipv4_addr(f, 14, IPV4_DST, [10, 99, 0, 1]), DropReason::NoRoute),
        ("encap_udp_in", POD1, |f| set_ipv4_addr(f, 14, IPV4_SRC, [10, 244, 1, 77]), DropReason::SpoofedSource),
        ("arp_request_in", POD1, |f| f[21] = 2, DropReason::ArpNotRequest),
        ("arp_request_in", POD1, |f| f[38..42].copy_from_slice(&[10, 244, 1, 2]), DropReason::ArpOwnAddress),
        ("arp_request_in", POD1, |f| f[28..32].copy_from_slice(&[10, 244, 1, 9]), DropReason::SpoofedSource),
        ("arp_request_in", POD1, |f| f[15] = 6, DropReason::ArpMalformed),
        ("arp_request_in", POD1, |f| f.truncate(30), DropReason::ArpMalformed),
        ("decap_udp_in", UPLINK, |f| f[37] = 0x13, DropReason::NotVxlan),
        ("decap_udp_in", UPLINK, |f| set_ipv4_addr(f, 14, IPV4_DST, [192, 168, 50, 9]), DropReason::NotVxlan),
        ("decap_udp_in", UPLINK, |f| f[42] = 0, DropReason::VxlanNoVni),
        ("decap_udp_in", UPLINK, |f| f[48] = 2, DropReason::VxlanWrongVni),
        ("decap_udp_in", UPLINK, |f| f[55] = 9, DropReason::VxlanInnerMac),
        ("decap_udp_in", UPLINK, |f| set_ipv4_addr(f, 64, IPV4_DST, [10, 244, 2, 5]), DropReason::OverlayTransit),
        (
            "decap_udp_in",
            UPLINK,
            |f| {
                f[20] = 0x20;
                fill_ipv4_checksum(f, 14);
            },
            DropReason::VxlanFragment,
        ),
        ("decap_udp_in", UPLINK, |f| f.truncate(60), DropReason::Ipv4Malformed),
        ("local_in", PortId(3), |_| {}, DropReason::UnknownPort),
    ];
    for (name, port, mutate, reason) in cases {
        let mut dp = node();
        let mut frame = fixture(name);
        mutate(&mut frame);
        dp.inject(*port, &frame).unwrap();
        dp.run_until_idle();
        let c = dp.counters();
        assert_eq!(c.drop_count(*reason), 1, "{name} → {reason:?}; drops {:?}", c.drops);
        assert_eq!((c.rx, c.tx, c.dropped()), (1, 0, 1), "{name} → {reason:?}");
    }
}

/// The host port is routed like a pod, but the host may send (and ARP) from any of its
/// addresses: no anti-spoofing there.
#[test]
fn host_port_is_not_source_checked() {
    let h = FibHandle::new();
    let mut tables = testbed::tables(2, 3);
    let host = xlane_fib::Endpoint { ip: "10.244.1.1".parse().unwrap(), port: PortId(3), ..testbed::pod(3) };
    tables.upsert_host(host).unwrap();
    tables.publish(&h);
    let mut dp = MemDataplane::new(&h, 4);
    // The host (src 192.168.50.1, its uplink address) sends to pod 1 and to a remote pod.
    for (dst, egress) in [([10, 244, 1, 2], POD1), ([10, 244, 2, 3], UPLINK)] {
        let mut f = fixture("local_in");
        f[0..6].copy_from_slice(&host.gateway_mac.0);
        f[6..12].copy_from_slice(&host.mac.0);
        set_ipv4_addr(&mut f, 14, IPV4_SRC, [192, 168, 50, 1]);
        set_ipv4_addr(&mut f, 14, IPV4_DST, dst);
        dp.inject(PortId(3), &f).unwrap();
        dp.run_until_idle();
        assert_eq!(dp.take_tx(egress).unwrap().len(), 1, "to {dst:?}");
    }
    // The host resolving pod 1's address, asking as another of its addresses, is answered.
    let mut arp = fixture("arp_request_in");
    arp[6..12].copy_from_slice(&host.mac.0);
    arp[22..28].copy_from_slice(&host.mac.0);
    arp[28..32].copy_from_slice(&[192, 168, 50, 1]);
    arp[38..42].copy_from_slice(&[10, 244, 1, 2]);
    dp.inject(PortId(3), &arp).unwrap();
    dp.run_until_idle();
    assert_eq!(dp.take_tx(PortId(3)).unwrap().len(), 1);
    // A pod replying to the host's gateway address reaches the host port.
    let mut f = fixture("local_in");
    set_ipv4_addr(&mut f, 14, IPV4_DST, [10, 244, 1, 1]);
    dp.inject(POD1, &f).unwrap();
    dp.run_until_idle();
    assert_eq!(dp.take_tx(PortId(3)).unwrap().len(), 1);
    assert_eq!(dp.counters().dropped(), 0, "{:?}", dp.counters().drops);
}

/// Pod MTU = uplink MTU − 50: the largest packet that fits is encapsulated, one byte
/// more is a counted `mtu_exceeded` drop.
#[test]
fn pod_mtu_is_enforced() {
    let frame = |ip_len: usize| {
        let mut f = fixture("encap_udp_in");
        f.truncate(14 + 28);
        f.resize(14 + ip_len, 0xab);
        f[16..18].copy_from_slice(&u16::try_from(ip_len).unwrap().to_be_bytes());
        f[38..40].copy_from_slice(&u16::try_from(ip_len - 20).unwrap().to_be_bytes());
        f[40..42].fill(0);
        set_ipv4_addr(&mut f, 14, IPV4_DST, [10, 244, 2, 3]);
        f
    };
    let mut dp = node();
    dp.inject(POD1, &frame(1450)).unwrap();
    dp.inject(POD1, &frame(1451)).unwrap();
    dp.run_until_idle();
    let out = dp.take_tx(UPLINK).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 1500 + 14, "a full-size outer frame");
    assert_eq!(dp.counters().drop_count(DropReason::MtuExceeded), 1);
}
