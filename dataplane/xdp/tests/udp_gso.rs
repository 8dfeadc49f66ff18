//! The uplink's UDP GSO sender for real (needs root), on a veth pair between two
//! namespaces: an encapsulated super-packet leaves as one buffer and arrives as one
//! datagram per segment, each the segment behind its VXLAN header, from the node's
//! address and one source port; what cannot be sent is refused and counted.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use xlane_engine::offload::build::TcpSuper;
use xlane_engine::offload::{Gso, GsoKind, OffloadError, OffloadMeta, write_datagrams};
use xlane_netlab::Netns;
use xlane_wire::encap::{EncapParams, EncapTemplate};
use xlane_wire::{Mac, VXLAN_OVERHEAD};
use xlane_xdp::udp_gso::{SendError, UdpGsoSender, UdpGsoStats};

const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

/// The outer headers the pipeline writes for node B, then `inner`.
fn encapsulated(inner: &[u8], src_port: u16) -> Vec<u8> {
    let t = EncapTemplate::new(&EncapParams {
        src_mac: Mac([2, 0, 0, 0, 0, 1]),
        dst_mac: Mac([2, 0, 0, 0, 0, 2]),
        src_ip: NODE_A,
        dst_ip: NODE_B,
        dst_port: 8472,
        vni: 1,
        ttl: 64,
    });
    let mut f = vec![0u8; VXLAN_OVERHEAD];
    t.write((&mut f[..]).try_into().unwrap(), 60_000, src_port);
    f.extend_from_slice(inner);
    f
}

#[test]
fn a_super_packet_leaves_as_one_datagram_per_segment() {
    if !xlane_netlab::privileged("a_super_packet_leaves_as_one_datagram_per_segment") {
        return;
    }
    let a = Netns::new("xlt-uga").unwrap();
    let b = Netns::new("xlt-ugb").unwrap();
    xlane_netlab::veth(&a, "u0", &b, "u1").unwrap();
    a.ip(&["addr", "add", "192.168.77.1/24", "dev", "u0"]).unwrap();
    b.ip(&["addr", "add", "192.168.77.2/24", "dev", "u1"]).unwrap();
    a.ip(&["link", "set", "u0", "up"]).unwrap();
    b.ip(&["link", "set", "u1", "up"]).unwrap();
    let rx = b.enter(|| UdpSocket::bind("0.0.0.0:8472")).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let stats = Arc::new(UdpGsoStats::default());
    let mut sender = a.enter(|| UdpGsoSender::open("u0", Arc::clone(&stats))).unwrap().unwrap_or_else(|(w, e)| {
        panic!("{w}: {e}");
    });

    let payload: Vec<u8> = (0..60_000u32).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
    let (inner, meta) = TcpSuper::new(payload, 1398).build();
    let mut source_port = None;
    for (round, hash) in [40_001u16, 40_009].into_iter().enumerate() {
        let frame = encapsulated(&inner, hash);
        let mut want = vec![0u8; 100_000];
        let d = write_datagrams(&frame, &meta, &mut want).unwrap();
        let n = sender.send(&frame, &meta).unwrap();
        assert_eq!(n, d.segments);
        let mut buf = vec![0u8; 2048];
        for (i, expected) in want[..d.len].chunks(d.stride).enumerate() {
            let (len, from) = rx.recv_from(&mut buf).unwrap_or_else(|e| panic!("datagram {i} of {}: {e}", d.segments));
            assert!(buf[..len] == *expected, "datagram {i}: the segment behind its VXLAN header");
            let SocketAddr::V4(from) = from else { panic!("IPv4") };
            assert_eq!(*from.ip(), NODE_A);
            // One source port per flow hash: every datagram of a super-packet shares it.
            if i == 0 && round == 0 {
                source_port = Some(from.port());
            }
            if round == 0 {
                assert_eq!(Some(from.port()), source_port);
            }
        }
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv_from(&mut buf).is_err(), "nothing more");
        rx.set_nonblocking(false).unwrap();
    }
    assert_eq!(stats.super_packets.load(Relaxed), 2);
    assert_eq!(stats.datagrams.load(Relaxed), 2 * 60_000u64.div_ceil(1398));
    assert_eq!(stats.failed.load(Relaxed), 0);

    // A super-packet the engine cannot lay out is refused, counted, nothing sent.
    let frame = encapsulated(&inner, 40_001);
    let gso = meta.gso.map(|g| Gso { kind: GsoKind::TcpV6, ..g });
    let bad = OffloadMeta { gso, ..meta };
    assert!(matches!(sender.send(&frame, &bad), Err(SendError::Offload(OffloadError::GsoUnsupported))));
    // Datagrams larger than the uplink's MTU (lowered under the sender) are refused by
    // the kernel, counted.
    a.ip(&["link", "set", "u0", "mtu", "1400"]).unwrap();
    assert!(matches!(sender.send(&frame, &meta), Err(SendError::Kernel(_))));
    assert_eq!(stats.failed.load(Relaxed), 2);
    assert_eq!(stats.super_packets.load(Relaxed), 2);
}
