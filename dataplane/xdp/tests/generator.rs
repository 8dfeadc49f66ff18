//! The live-frames generator for real on a veth pair (needs root): frames it sends
//! arrive at the peer, carry many different UDP source ports, and short frames are
//! dropped by the program rather than sent malformed.

use std::collections::HashSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;
use xlane_netlab::Netns;
use xlane_xdp::generator::{Generator, udp_template};

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns.command("cat").arg(format!("/sys/class/net/{dev}/statistics/rx_packets")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn generated_frames_arrive_with_many_source_ports() {
    if !xlane_netlab::privileged("generated_frames_arrive_with_many_source_ports") {
        return;
    }
    let ns = Netns::new("xlt-gen").unwrap();
    ns.ip(&["link", "add", "g0", "type", "veth", "peer", "name", "g1"]).unwrap();
    ns.ip(&["addr", "add", "10.9.0.2/24", "dev", "g1"]).unwrap();
    ns.ip(&["link", "set", "g0", "up"]).unwrap();
    ns.ip(&["link", "set", "g1", "up"]).unwrap();
    let g0 = ns.ifindex("g0").unwrap();
    let mac: Vec<u8> = ns.mac("g1").unwrap().split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    let src_mac = [0x02, 0, 0, 0, 0, 0x01];
    let frame =
        udp_template(mac.try_into().unwrap(), src_mac, Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2), 9);
    let generator = Generator::new().unwrap();
    assert_eq!(generator.verdict(&frame).unwrap(), 3, "XDP_TX");
    assert_eq!(generator.verdict(&frame[..40]).unwrap(), 1, "a frame too short for UDP is dropped");
    ns.enter(|| {
        // XDP-transmitted frames reach a veth peer without XDP only through GRO.
        xlane_xdp::sys::set_gro("g1", true).unwrap();
        let sock = UdpSocket::bind((Ipv4Addr::new(10, 9, 0, 2), 9)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let before = rx_packets(&ns, "g1");
        generator.send(&frame, g0, 200_000).unwrap();
        let arrived = rx_packets(&ns, "g1") - before;
        assert!(arrived >= 100_000, "{arrived} of 200000 frames arrived");
        // The socket buffer holds the first few dozen (the rest are counted drops).
        let (mut ports, mut got) = (HashSet::new(), 0);
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(n, 18);
            ports.insert(from.port());
            got += 1;
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        }
        assert!(got >= 20, "only {got} datagrams delivered");
        assert!(ports.len() * 10 >= got * 9, "{} distinct source ports in {got} datagrams", ports.len());
    })
    .unwrap();
}
