//! Two xlane nodes joined by an in-memory wire: a pod on node A pings a pod on node B
//! through the real pipeline (proxy ARP, VXLAN encap, decap), then a bounded burst test
//! reports the in-memory forwarding rate and checks that every frame is accounted for.
//!
//! Run: `cargo run --release -p xlane-engine --example two_nodes`

use core::net::Ipv4Addr;
use std::time::{Duration, Instant};
use xlane_engine::fixtures::{self, Echo, Ipv4};
use xlane_engine::testbed::{self, UPLINK};
use xlane_engine::{CounterSnapshot, DropReason};
use xlane_wire::{EthernetFrame, Ipv4Packet, Mac, UdpPacket, VxlanPacket};

/// Frames in the bounded rate test (and a time cap, whichever comes first).
const RATE_FRAMES: u64 = 2_000_000;
const RATE_TIME_CAP: Duration = Duration::from_secs(10);

/// An echo request (or reply) from `src` to `dst` at `dst_mac`, with ping's 56 bytes.
fn ping(src: &xlane_fib::Endpoint, dst: Ipv4Addr, dst_mac: [u8; 6], echo: Echo) -> Vec<u8> {
    let payload: Vec<u8> = (0..56u8).map(|i| i.wrapping_mul(7)).collect();
    fixtures::icmp_echo(src.mac.0, dst_mac, Ipv4::new(src.ip, dst), echo, &payload)
}

fn describe_outer(f: &[u8]) -> String {
    let eth = EthernetFrame::new_checked(f).expect("ethernet");
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("ipv4");
    let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
    let vx = VxlanPacket::new_checked(udp.payload()).expect("vxlan");
    format!(
        "{} bytes: {} → {} UDP {} → {} VNI {} (inner {} bytes)",
        f.len(),
        ip.src_addr(),
        ip.dst_addr(),
        udp.src_port(),
        udp.dst_port(),
        vx.vni(),
        vx.payload().len()
    )
}

fn print_counters(node: &str, c: &CounterSnapshot) {
    println!(
        "  {node}: rx {} tx {} (encap {} decap {} local {} arp {}) dropped {}{}",
        c.rx,
        c.tx,
        c.encapsulated,
        c.decapsulated,
        c.local,
        c.arp_replies,
        c.dropped(),
        if c.conserved() { ", conserved" } else { ", NOT CONSERVED" }
    );
    for r in DropReason::ALL {
        if c.drop_count(*r) > 0 {
            println!("      drop {:<16} {:>10}  {}", r.name(), c.drop_count(*r), r.description());
        }
    }
}

fn main() {
    // Buffers for the rate test below, allocated before anything is timed.
    let (mut a, mut b) = testbed::two_nodes(1, 512);
    let (pa, pb) = (testbed::pod(1), testbed::b_pod());
    println!("xlane two-node demo (in-memory ports; AF_XDP lab: see README)");
    println!("  node A  VTEP {}  pod {} on {}", testbed::A_VTEP_IP, pa.ip, pa.port);
    println!("  node B  VTEP {}  pod {} on {}", testbed::B_VTEP_IP, pb.ip, pb.port);

    // 1. The pod resolves its gateway: answered by the proxy with the host-side MAC.
    a.inject(pa.port, &fixtures::arp_request(pa.mac.0, pa.ip, Ipv4Addr::new(10, 244, 1, 1))).expect("inject");
    a.run_until_idle();
    let reply = a.take_tx(pa.port).expect("port").pop().expect("proxy ARP reply");
    let gw_mac: [u8; 6] = reply[22..28].try_into().expect("6 bytes");
    println!("\n1. ARP who-has 10.244.1.1 → is-at {} (the host-side veth MAC)", Mac(gw_mac));

    // 2. Ping across nodes.
    let mut rtts = Vec::new();
    for seq in 1..=3u16 {
        let t0 = Instant::now();
        a.inject(pa.port, &ping(&pa, pb.ip, gw_mac, Echo::Request { ident: 0x1234, seq })).expect("inject");
        a.run_until_idle();
        let wire = a.take_tx(UPLINK).expect("port");
        assert_eq!(wire.len(), 1, "A encapsulated the echo request");
        if seq == 1 {
            println!("2. echo request on the wire: {}", describe_outer(&wire[0]));
        }
        b.inject(UPLINK, &wire[0]).expect("inject");
        b.run_until_idle();
        let at_pod = b.take_tx(pb.port).expect("port").pop().expect("B delivered the request");
        // Pod B answers (the demo plays its IP stack).
        let reply = ping(&pb, pa.ip, at_pod[6..12].try_into().expect("6 bytes"), Echo::Reply { ident: 0x1234, seq });
        b.inject(pb.port, &reply).expect("inject");
        b.run_until_idle();
        b.wire_to(UPLINK, &mut a, UPLINK).expect("ports");
        a.run_until_idle();
        let back = a.take_tx(pa.port).expect("port").pop().expect("A delivered the reply");
        assert_eq!(back[34], 0, "echo reply");
        rtts.push(t0.elapsed());
        println!(
            "   64 bytes from {}: icmp_seq={seq} ttl={} time={:.1} µs",
            pb.ip,
            back[22],
            t0.elapsed().as_secs_f64() * 1e6
        );
    }

    // 3. Bounded rate test: A encapsulates, the wire carries, B decapsulates.
    // The smallest echo request (no data): 42 bytes.
    let frame =
        fixtures::icmp_echo(pa.mac.0, gw_mac, Ipv4::new(pa.ip, pb.ip), Echo::Request { ident: 0x1234, seq: 0 }, &[]);
    let (mut sent, mut delivered) = (0u64, 0u64);
    let t0 = Instant::now();
    while sent < RATE_FRAMES && t0.elapsed() < RATE_TIME_CAP {
        for _ in 0..256 {
            a.inject(pa.port, &frame).expect("inject");
        }
        sent += 256;
        a.run_until_idle();
        a.wire_to(UPLINK, &mut b, UPLINK).expect("ports");
        b.run_until_idle();
        delivered += b.drain_tx(pb.port, |_| {}).expect("port") as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let mpps = delivered as f64 / secs / 1e6;
    println!(
        "\n3. {sent} frames A→B in {secs:.2} s: {delivered} delivered, {mpps:.2} Mpps through encap + decap on one core"
    );

    println!("\ncounters:");
    let (ca, cb) = (a.counters(), b.counters());
    print_counters("node A", &ca);
    print_counters("node B", &cb);
    let ok = ca.conserved() && cb.conserved() && delivered == sent && rtts.len() == 3;
    println!("\n{}", if ok { "demo OK: 3/3 pings answered, every frame delivered or counted" } else { "demo FAILED" });
    if !ok {
        std::process::exit(1);
    }
}
