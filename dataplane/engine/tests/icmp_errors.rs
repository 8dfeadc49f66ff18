//! ICMP errors the pipeline originates, byte for byte against Scapy's encoding
//! (fixtures/make_fixtures.py, `icmp_errors`), and the rules that keep it quiet: RFC
//! 1812's "never answer", DF for fragmentation needed, no gateway, the rate limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use xlane_engine::fixtures::{self, Echo, IPV4_SRC, fill_ipv4_checksum, fixture, set_ipv4_addr};
use xlane_engine::icmp::Clock;
use xlane_engine::mem::{HEADROOM, MemDataplane};
use xlane_engine::testbed::{self, UPLINK};
use xlane_engine::{CoreCounters, DropReason, Frame, Pipeline, Verdict};
use xlane_fib::{Endpoint, Fib, FibBuilder, FibHandle, NodeConfig, PortId};

const POD1: PortId = PortId(1);
const HOST: PortId = PortId(3);

/// Node A of the fixtures with two pods, three remote nodes and the host port on port 3
/// (testbed pod 3's MACs, the gateway address), as make_fixtures.py's `HOST`.
fn tables() -> FibBuilder {
    let mut t = testbed::tables(2, 3);
    t.upsert_host(Endpoint { ip: testbed::A_GATEWAY, ..testbed::pod(3) }).unwrap();
    t
}

fn node_with(tables: &mut FibBuilder) -> MemDataplane {
    let h = FibHandle::new();
    tables.publish(&h);
    MemDataplane::new(&h, 4)
}

/// Inject `input` on `ingress`; exactly `expected` must come out of `egress`: the
/// error made from the frame, which is counted as a drop for `reason`.
fn check(ingress: PortId, input: &str, egress: PortId, expected: &str, reason: DropReason) {
    let mut dp = node_with(&mut tables());
    dp.inject(ingress, &fixture(input)).unwrap();
    dp.run_until_idle();
    let out = dp.take_tx(egress).unwrap();
    let c = dp.counters();
    assert_eq!(out.len(), 1, "{input}: one frame out of {egress}; drops {:?}", c.drops);
    let want = fixture(expected);
    assert!(out[0] == want, "{input}:\n got  {:02x?}\n want {:02x?}", out[0], want);
    assert_eq!((c.rx, c.tx, c.icmp_errors, c.dropped(), c.drop_count(reason)), (1, 1, 1, 1, 1), "{input}");
    assert!(c.conserved());
}

#[test]
fn time_exceeded_for_a_udp_probe() {
    check(POD1, "te_udp_in", POD1, "te_udp_out", DropReason::TtlExpired);
}

#[test]
fn time_exceeded_quotes_ip_options() {
    check(POD1, "te_icmp_options_in", POD1, "te_icmp_options_out", DropReason::TtlExpired);
}

#[test]
fn time_exceeded_after_decap_goes_back_through_the_overlay() {
    check(UPLINK, "te_decap_in", UPLINK, "te_decap_out", DropReason::TtlExpired);
}

#[test]
fn frag_needed_for_a_df_packet_from_a_pod() {
    check(POD1, "frag_needed_in", POD1, "frag_needed_out", DropReason::MtuExceeded);
}

#[test]
fn frag_needed_for_a_df_packet_from_the_host_port() {
    check(HOST, "frag_needed_host_in", HOST, "frag_needed_host_out", DropReason::MtuExceeded);
}

/// A packet too large for the pod MTU arriving from the overlay (the sender's node let
/// it through): fragmentation needed back to its source, encapsulated.
#[test]
fn frag_needed_after_decap() {
    let mut frame = fixture("te_decap_in");
    let inner_ip = 64;
    let ip_len = 1451;
    frame.truncate(inner_ip + 28);
    frame.resize(inner_ip + ip_len, 0x5a);
    frame[inner_ip + 2..inner_ip + 4].copy_from_slice(&u16::try_from(ip_len).unwrap().to_be_bytes());
    frame[inner_ip + 6] = 0x40; // DF
    frame[inner_ip + 8] = 9; // TTL
    fill_ipv4_checksum(&mut frame, inner_ip);
    let outer_len = u16::try_from(frame.len() - 14).unwrap();
    frame[16..18].copy_from_slice(&outer_len.to_be_bytes());
    frame[38..40].copy_from_slice(&(outer_len - 20).to_be_bytes());
    fill_ipv4_checksum(&mut frame, 14);
    let mut dp = node_with(&mut tables());
    dp.inject(UPLINK, &frame).unwrap();
    dp.run_until_idle();
    let out = dp.take_tx(UPLINK).unwrap();
    assert_eq!(out.len(), 1, "{:?}", dp.counters().drops);
    let err = &out[0][64..];
    assert_eq!(&err[12..20], &[10, 244, 1, 1, 10, 244, 2, 3], "gateway → the remote source");
    assert_eq!(&err[20..22], &[3, 4]);
    assert_eq!(&err[26..28], &1450u16.to_be_bytes(), "next-hop MTU: the pod MTU");
    assert_eq!(&err[28..], &frame[inner_ip..inner_ip + 28]);
    assert_eq!(dp.counters().drop_count(DropReason::MtuExceeded), 1);
}

/// Each of these frames, one field changed from a fixture that gets an error, is
/// dropped for its reason with no error, as RFC 1812 §4.3.2.7 (or DF) requires.
#[test]
fn never_answered() {
    type Mutation = fn(&mut Vec<u8>);
    let probe = || fixture("te_udp_in");
    let decap = || fixture("te_decap_in");
    let icmp_type = |kind: u8| {
        let ip = fixtures::Ipv4 { ttl: 1, ..fixtures::Ipv4::new(testbed::pod(1).ip, testbed::b_pod().ip) };
        let p = testbed::pod(1);
        let mut f = fixtures::icmp_echo(p.mac.0, p.gateway_mac.0, ip, Echo::Request { ident: 1, seq: 1 }, b"x");
        f[34] = kind;
        f[36..38].fill(0);
        let c = !xlane_wire::checksum::sum(&f[34..]);
        f[36..38].copy_from_slice(&c.to_be_bytes());
        f
    };
    let cases: &[(&str, Vec<u8>, Mutation, DropReason)] = &[
        ("ICMP destination unreachable", icmp_type(3), |_| {}, DropReason::TtlExpired),
        ("ICMP time exceeded", icmp_type(11), |_| {}, DropReason::TtlExpired),
        ("ICMP parameter problem", icmp_type(12), |_| {}, DropReason::TtlExpired),
        ("ICMP redirect", icmp_type(5), |_| {}, DropReason::TtlExpired),
        (
            "non-initial fragment",
            probe(),
            |f| {
                f[20..22].copy_from_slice(&[0x00, 0xb9]);
                fill_ipv4_checksum(f, 14);
            },
            DropReason::TtlExpired,
        ),
        ("link-layer broadcast", probe(), |f| f[0..6].fill(0xff), DropReason::TtlExpired),
        ("to 255.255.255.255", probe(), |f| set_ipv4_addr(f, 14, 16, [255; 4]), DropReason::TtlExpired),
        ("to a multicast group", probe(), |f| set_ipv4_addr(f, 14, 16, [239, 0, 0, 1]), DropReason::TtlExpired),
        // Sources a pod may not send from (anti-spoofing drops them first) arrive over
        // the overlay, whose inner sources are not checked.
        ("from 0.0.0.0, decapsulated", decap(), |f| set_ipv4_addr(f, 64, IPV4_SRC, [0; 4]), DropReason::TtlExpired),
        (
            "from loopback, decapsulated",
            decap(),
            |f| set_ipv4_addr(f, 64, IPV4_SRC, [127, 0, 0, 1]),
            DropReason::TtlExpired,
        ),
        (
            "from multicast, decapsulated",
            decap(),
            |f| set_ipv4_addr(f, 64, IPV4_SRC, [224, 0, 0, 9]),
            DropReason::TtlExpired,
        ),
        ("from broadcast, decapsulated", decap(), |f| set_ipv4_addr(f, 64, IPV4_SRC, [255; 4]), DropReason::TtlExpired),
        (
            "not DF: xlane does not fragment",
            fixture("frag_needed_in"),
            |f| {
                f[20] = 0;
                fill_ipv4_checksum(f, 14);
            },
            DropReason::MtuExceeded,
        ),
        (
            "from a pod as another address",
            probe(),
            |f| set_ipv4_addr(f, 14, IPV4_SRC, [10, 244, 1, 9]),
            DropReason::SpoofedSource,
        ),
    ];
    for (what, frame, mutate, reason) in cases {
        let mut frame = frame.clone();
        mutate(&mut frame);
        let port = if what.ends_with("decapsulated") { UPLINK } else { POD1 };
        let mut dp = node_with(&mut tables());
        dp.inject(port, &frame).unwrap();
        dp.run_until_idle();
        let c = dp.counters();
        assert_eq!((c.rx, c.tx, c.icmp_errors, c.dropped()), (1, 0, 0, 1), "{what}: {:?}", c.drops);
        assert_eq!(c.drop_count(*reason), 1, "{what}: {:?}", c.drops);
    }
    // An echo request is a query: answered.
    let mut dp = node_with(&mut tables());
    dp.inject(POD1, &icmp_type(8)).unwrap();
    dp.run_until_idle();
    assert_eq!(dp.take_tx(POD1).unwrap().len(), 1);
}

/// The host port gets fragmentation needed (above) but not time exceeded: the only
/// address the engine could send it from is the host's own, which the host drops.
#[test]
fn no_time_exceeded_to_the_host() {
    let mut probe = fixture("te_udp_in");
    let host = testbed::pod(3);
    probe[0..6].copy_from_slice(&host.gateway_mac.0);
    probe[6..12].copy_from_slice(&host.mac.0);
    set_ipv4_addr(&mut probe, 14, IPV4_SRC, testbed::A_GATEWAY);
    let mut dp = node_with(&mut tables());
    dp.inject(HOST, &probe).unwrap();
    dp.run_until_idle();
    let c = dp.counters();
    assert_eq!((c.tx, c.icmp_errors, c.drop_count(DropReason::TtlExpired)), (0, 0, 1));
}

/// Without the gateway address (no subnet set yet) the engine has no source for errors:
/// the frame is only dropped.
#[test]
fn no_gateway_no_error() {
    let mut t = tables();
    t.set_node(NodeConfig { gateway_ip: None, ..testbed::node_config() }).unwrap();
    let mut dp = node_with(&mut t);
    for (port, name) in [(POD1, "te_udp_in"), (POD1, "frag_needed_in"), (UPLINK, "te_decap_in")] {
        dp.inject(port, &fixture(name)).unwrap();
    }
    dp.run_until_idle();
    let c = dp.counters();
    assert_eq!((c.rx, c.tx, c.icmp_errors), (3, 0, 0));
    assert_eq!((c.drop_count(DropReason::TtlExpired), c.drop_count(DropReason::MtuExceeded)), (2, 1));
}

/// Run `frames` copies of `input` through `pipeline` as one burst from `ingress`;
/// returns how many became errors.
fn burst(pipeline: &mut Pipeline, fib: &Fib, ingress: PortId, input: &[u8], frames: usize) -> usize {
    let mut bufs = vec![vec![0u8; HEADROOM + input.len()]; frames];
    let mut fs: Vec<Frame<'_>> = bufs
        .iter_mut()
        .map(|b| {
            b[HEADROOM..].copy_from_slice(input);
            Frame::new(b, HEADROOM, input.len()).unwrap()
        })
        .collect();
    let mut verdicts = vec![Verdict::Drop(DropReason::NoRoute); frames];
    pipeline.process(fib, ingress, &mut fs, &mut verdicts);
    verdicts.iter().filter(|v| matches!(v, Verdict::Tx(_))).count()
}

/// traceroute's three probes and more from one pod in a burst: six answered, then
/// nothing until time passes (a hand-stepped clock); another pod is not held back.
#[test]
fn time_exceeded_is_rate_limited_per_source() {
    let fib = tables().snapshot();
    let ms = Arc::new(AtomicU64::new(10_000));
    let counters = Arc::new(CoreCounters::default());
    let mut p = Pipeline::with_clock(Arc::clone(&counters), Clock::Manual(Arc::clone(&ms)));
    let probe = fixture("te_udp_in");
    assert_eq!(burst(&mut p, &fib, POD1, &probe, 10), 6, "the burst");
    assert_eq!(burst(&mut p, &fib, POD1, &probe, 3), 0, "no time has passed");
    let pod2 = testbed::pod(2);
    let mut other = probe.clone();
    other[0..6].copy_from_slice(&pod2.gateway_mac.0);
    other[6..12].copy_from_slice(&pod2.mac.0);
    set_ipv4_addr(&mut other, 14, IPV4_SRC, pod2.ip);
    assert_eq!(burst(&mut p, &fib, pod2.port, &other, 3), 3, "another source");
    ms.store(12_500, Relaxed);
    assert_eq!(burst(&mut p, &fib, POD1, &probe, 5), 2, "two seconds earn two");
    // Fragmentation needed is not limited.
    assert_eq!(burst(&mut p, &fib, POD1, &fixture("frag_needed_in"), 20), 20);
    let c = counters.snapshot();
    assert_eq!((c.icmp_errors, c.icmp_rate_limited), (6 + 3 + 2 + 20, 4 + 3 + 3));
    assert_eq!(c.drop_count(DropReason::TtlExpired), 10 + 3 + 3 + 5);
    assert!(c.conserved(), "{c:?}");
}
