//! The uplink read through a packet tap for real (needs root): a veth pair between a
//! "node" namespace (the tap, the tcx block, a host UDP socket) and a "peer" namespace
//! whose UDP sockets send to the node's VTEP, with and without UDP GSO, at MTU 9000.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use xlane_engine::mem::MemFrames;
use xlane_engine::offload::Jumbo;
use xlane_engine::{BURST, FrameMemory, Packet};
use xlane_netlab::Netns;
use xlane_wire::{Ipv4Packet, UdpPacket};
use xlane_xdp::attach::HostStackBlock;
use xlane_xdp::programs::UplinkFilter;
use xlane_xdp::sys::setsockopt_int;
use xlane_xdp::udp_gro::{UdpReceiver, UdpRxStats, UdpRxTotals};

const VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const VXLAN: u16 = 4789;

struct Lab {
    node: Netns,
    peer: Netns,
    ifindex: u32,
}

fn lab() -> Lab {
    let node = Netns::new("xlt-tapn").unwrap();
    let peer = Netns::new("xlt-tapp").unwrap();
    xlane_netlab::veth(&node, "up0", &peer, "up1").unwrap();
    for (ns, dev, addr) in [(&node, "up0", "10.0.0.1/24"), (&peer, "up1", "10.0.0.2/24")] {
        ns.ip(&["link", "set", dev, "mtu", "9000"]).unwrap();
        ns.ip(&["addr", "add", addr, "dev", dev]).unwrap();
    }
    let ifindex = node.ifindex("up0").unwrap();
    Lab { node, peer, ifindex }
}

/// Datagram `i`'s bytes: a pattern of its own.
fn datagram(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(131)).to_le_bytes()[0]).collect()
}

/// Send `count` datagrams from `tx` to the VTEP in one UDP GSO send of segment size
/// `segment` (the last `last` bytes long), or one by one if `count` is 1.
fn send(tx: &UdpSocket, first: usize, segment: usize, count: usize, last: usize) -> Vec<Vec<u8>> {
    let dgrams: Vec<Vec<u8>> =
        (0..count).map(|k| datagram(first + k, if k + 1 == count { last } else { segment })).collect();
    let gso = if count > 1 { i32::try_from(segment).unwrap() } else { 0 };
    setsockopt_int(tx.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, gso).unwrap();
    assert_eq!(tx.send_to(&dgrams.concat(), (VTEP, VXLAN)).unwrap(), dgrams.iter().map(Vec::len).sum::<usize>());
    dgrams
}

/// The datagram behind a received frame's outer header, checking the header.
fn payload_of(frame: &[u8]) -> Vec<u8> {
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (PEER, VTEP));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (40_000, VXLAN));
    assert_eq!(usize::from(udp.len()), frame.len() - 14 - 20);
    frame[14 + 28..].to_vec()
}

/// Receive until `want` datagrams arrived or two seconds passed, in arrival order.
fn receive(rx: &mut UdpReceiver, mem: &mut MemFrames, want: usize) -> Vec<Vec<u8>> {
    let mut jumbo = Jumbo::new();
    let mut out = [Packet { buf: 0u32, head: 0, len: 0 }; BURST];
    let mut got = Vec::new();
    for _ in 0..1000 {
        if got.len() >= want {
            break;
        }
        jumbo.clear();
        let n = rx.receive(mem, &mut out, Some(&mut jumbo));
        // The jumbo frames come after the `before` ordinary ones.
        let mut k = 0;
        for i in 0..=jumbo.len() {
            let before = jumbo.frames().get(i).map_or(n, |f| usize::from(f.before));
            for p in &out[k..before] {
                got.push(payload_of(mem.bytes(p)));
                mem.release(p.buf);
            }
            k = before;
            if let Some(f) = jumbo.frames().get(i) {
                got.push(payload_of(&jumbo.data(usize::from(f.slot))[..f.len as usize]));
            }
        }
        if n == 0 && jumbo.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    got
}

/// IPv4 packets the namespace's stack delivered to its transport protocols
/// (`Ip: InDelivers`, counted as they are delivered, not as a socket reads them).
fn delivered(ns: &Netns) -> u64 {
    let snmp = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp")).unwrap().unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "InDelivers").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Datagrams and GSO trains of every size reach the receiver once, byte for byte, each
/// behind a valid outer header; each train is one frame of the tap (a super-packet,
/// not cut on the way). The host's stack gets the UDP that is not VXLAN, and no VXLAN
/// while the block is attached; once it is gone, VXLAN reaches the host's stack again.
#[test]
fn the_tap_takes_vxlan_whole_and_leaves_the_host_the_rest() {
    if !xlane_netlab::privileged("the_tap_takes_vxlan_whole_and_leaves_the_host_the_rest") {
        return;
    }
    let Lab { node, peer, ifindex } = lab();
    let filter = UplinkFilter { vtep_ip: VTEP, vxlan_port: VXLAN };
    let block = node.enter(|| HostStackBlock::uplink(ifindex, &filter)).unwrap().unwrap();
    let stats = Arc::new(UdpRxStats::default());
    let mut rx = node
        .enter(|| UdpReceiver::open_tap("up0", ifindex, 7, (VTEP, VXLAN), 9000, Arc::clone(&stats)))
        .unwrap()
        .unwrap();
    assert!(rx.reads_tap());
    assert!(rx.gro_anchor_error().is_none(), "{:?}", rx.gro_anchor_error());
    let host = node.enter(|| UdpSocket::bind((VTEP, 5000))).unwrap().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = peer.enter(|| UdpSocket::bind((PEER, 40_000))).unwrap().unwrap();
    let before = delivered(&node);

    // (segment size, datagrams, last datagram's size): trains of MTU-sized and of
    // smaller datagrams, single ones small, MTU 1500-sized and jumbo.
    let sends = [(8972, 3, 8972), (1000, 5, 300), (50, 1, 50), (1400, 1, 1400), (8000, 1, 8000), (100, 10, 60)];
    let mut expected = Vec::new();
    for &(segment, count, last) in &sends {
        expected.extend(send(&tx, expected.len(), segment, count, last));
    }
    tx.send_to(b"for the host", (VTEP, 5000)).unwrap();
    let mut mem = MemFrames::default();
    let mut got = receive(&mut rx, &mut mem, expected.len());
    got.sort();
    expected.sort();
    assert!(got == expected, "{} datagrams of {} expected arrived as sent", got.len(), expected.len());
    rx.refresh_stats();
    let t = stats.totals();
    // In place: the train of MTU-sized datagrams (3) and the lone jumbo one, read
    // straight into jumbo slots.
    let want = UdpRxTotals { messages: sends.len() as u64, datagrams: 21, in_place: 4, dropped: 0, kernel_dropped: 0 };
    assert_eq!(t, want, "one frame per send, every datagram handed out");
    let mut buf = [0u8; 64];
    let (n, from) = host.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"for the host"[..], (PEER, 40_000).into()));
    assert_eq!(delivered(&node) - before, 1, "the host's stack got only its own datagram");

    // Without the block the host's stack takes VXLAN too (the UDP socket beside the
    // tap receives it): the block is what kept it off.
    drop(block);
    send(&tx, 100, 500, 1, 500);
    assert_eq!(receive(&mut rx, &mut mem, 1).len(), 1, "the tap still sees it");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while delivered(&node) - before < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(delivered(&node) - before, 2, "the host's stack got the VXLAN datagram");
}

/// A tap handed over mid-stream: what the first receiver did not read is read by the
/// second from where the first stopped, so every datagram arrives exactly once. (An
/// uplink of MTU 1500 for the receiver: frames staged, not scattered into jumbo slots.)
#[test]
fn a_tap_handed_over_loses_and_repeats_nothing() {
    if !xlane_netlab::privileged("a_tap_handed_over_loses_and_repeats_nothing") {
        return;
    }
    let Lab { node, peer, ifindex } = lab();
    let stats = Arc::new(UdpRxStats::default());
    let at = (VTEP, VXLAN);
    let mut first =
        node.enter(|| UdpReceiver::open_tap("up0", ifindex, 7, at, 1500, Arc::clone(&stats))).unwrap().unwrap();
    let tx = peer.enter(|| UdpSocket::bind((PEER, 40_000))).unwrap().unwrap();
    let mut mem = MemFrames::default();
    // 7900 through first, so that the handover falls where the ring (8192 slots) wraps.
    for k in 0..7900 {
        send(&tx, k, 64, 1, 64);
        if k % 500 == 499 {
            assert_eq!(receive(&mut first, &mut mem, 500).len(), 500);
        }
    }
    assert_eq!(receive(&mut first, &mut mem, 400).len(), 400);
    let mut expected = Vec::new();
    for k in 0..600 {
        expected.extend(send(&tx, k, 64, 1, 64));
    }
    let mut got = receive(&mut first, &mut mem, 100);
    assert!(got.len() >= 100 && got.len() < 600, "read {}", got.len());
    // As xlaned hands over: read nothing more, hand out what was read.
    first.hold_reads(true);
    while first.pending() {
        got.extend(receive(&mut first, &mut mem, 1));
    }
    let fd = first.hand_over().unwrap();
    drop(first);
    let mut second =
        node.enter(|| UdpReceiver::adopt_tap(fd, "up0", ifindex, at, 1500, Arc::clone(&stats))).unwrap().unwrap();
    // Fewer than the ring's free slots: nothing is dropped for want of room.
    for k in 600..900 {
        expected.extend(send(&tx, k, 64, 1, 64));
    }
    got.extend(receive(&mut second, &mut mem, expected.len() - got.len()));
    second.refresh_stats();
    assert_eq!(stats.totals().kernel_dropped, 0);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "in order, each once");
}
