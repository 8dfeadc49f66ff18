//! The bench's packet-rate run on xlane, briefly (numbers too short to mean anything):
//! it says where the generator's offered frames went, xlane's ring drops included, and
//! the places add up to the loss; nothing is left behind. (The report's table of these
//! ledgers is checked in `report.rs`.) The jumbo testbeds carry full-size packets.

use std::sync::atomic::AtomicBool;
use xlane_lab::bench::{Contender, Testbed};
use xlane_lab::losses::Stage;
use xlane_netlab::privileged;

#[test]
fn xlane_packet_rate_says_where_offered_frames_went() {
    if !privileged("xlane_packet_rate_says_where_offered_frames_went") {
        return;
    }
    let tb = Testbed::setup(Contender::Xlane).unwrap();
    let run = tb.packet_rate(100_000, 1, &AtomicBool::new(false)).unwrap();
    drop(tb);
    let l = &run.ledger;
    assert!(l.offered > 0 && l.delivered > 0, "{l:?}");
    // The same run as the rates: delivered over offered is the received over the offered rate.
    let fraction = run.received_pps / run.offered_pps;
    assert!((l.delivered as f64 / l.offered as f64 - fraction).abs() < 1e-9, "{run:?}");
    // The receiving pod's interface counts delivery; a stray frame of other traffic
    // (an ARP refresh, IPv6 neighbour discovery) may be counted with the test's.
    assert!(l.unaccounted().abs() <= 10, "lost frames no counter explains: {}", l.summary());
    assert_eq!(l.at(Stage::Receiver), 0, "delivery is counted before the receiver's socket");
    assert_eq!(xlane_netlab::namespaces_of("xbx", std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
}

/// The testbeds of the bench's jumbo run: pods at the underlay's MTU less 50 (VXLAN),
/// whose full-size packets cross unfragmented (`setup_mtu` checks it with DF pings) —
/// through the uplinks' XDP program too (multi-buffer, passing them on).
#[test]
fn jumbo_testbeds_carry_full_size_packets() {
    if !privileged("jumbo_testbeds_carry_full_size_packets") {
        return;
    }
    for c in [Contender::XlaneOffload, Contender::KernelVxlan, Contender::KernelVxlanXdp] {
        let tb = Testbed::setup_mtu(c, xlane_lab::bench::JUMBO_MTU).unwrap_or_else(|e| panic!("{}: {e:#}", c.name()));
        assert_eq!(tb.sender_mtu().unwrap(), 8950, "{}", c.name());
    }
}

/// The two-node ceiling, briefly: the generator's frames cross both nodes' relays (pod
/// veth → uplink → fabric → uplink → pod veth) and arrive at node 1's pod; requests
/// and a TCP stream cross them both ways; nothing is left behind.
#[test]
fn the_two_node_relay_carries_frames_across_both_nodes() {
    if !privileged("the_two_node_relay_carries_frames_across_both_nodes") {
        return;
    }
    let w = xlane_lab::bench::Workload { udp_frames: 50_000, repeats: 1, ..xlane_lab::bench::Workload::QUICK };
    let r =
        xlane_lab::bench::io_ceiling(xlane_lab::bench::Forwarder::XlaneTwoNode, w, &AtomicBool::new(false)).unwrap();
    assert!(r.forwarded_pps > 0.0 && r.forwarded_pps <= r.offered_pps * 1.001, "{r:?}");
    let latency = r.latency.expect("request/response measured");
    assert!(latency.p50_us > 0.0 && latency.p50_us <= latency.p99_us, "{r:?}");
    assert!(r.tcp1_gbit.is_some_and(|g| g > 0.0), "{r:?}");
    assert_eq!(xlane_netlab::namespaces_of("xbr", std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
}

/// The offload ceiling, briefly: TCP crosses both nodes' packet-socket relays (super-
/// packets whole) and the one-node relay between two pods, on both underlays; nothing
/// is left behind.
#[test]
fn the_offload_relay_carries_tcp_across_nodes_and_on_one() {
    if !privileged("the_offload_relay_carries_tcp_across_nodes_and_on_one") {
        return;
    }
    let w = xlane_lab::bench::Workload::QUICK;
    let r = xlane_lab::bench::io_ceiling(xlane_lab::bench::Forwarder::XlaneOffloadRelay, w, &AtomicBool::new(false))
        .unwrap();
    let positive = |g: Option<f64>| g.is_some_and(|g| g > 0.1);
    assert!(positive(r.tcp1_gbit) && positive(r.tcp4_gbit) && positive(r.tcp1_local_gbit), "{r:?}");
    let jumbo = r.jumbo.expect("the jumbo underlay measured");
    assert!(jumbo.tcp1_gbit > 0.1 && jumbo.tcp1_local_gbit > 0.1, "{r:?}");
    assert_eq!(xlane_netlab::namespaces_of("xbq", std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
}
