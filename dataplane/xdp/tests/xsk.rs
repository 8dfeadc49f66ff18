//! AF_XDP for real on a veth pair in a namespace (needs root): one UMEM shared by a
//! socket on each end; frames sent from one end arrive through the pod-port program at
//! the other, and a received frame is sent back out by moving its descriptor.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use xlane_engine::Packet;
use xlane_engine::fixtures;
use xlane_netlab::Netns;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment};
use xlane_xdp::programs::PodFilter;
use xlane_xdp::xsk::{BindMode, Umem, UmemSettings, XskPort, wait_readable};

/// A UDP frame from a pod (10.244.1.2) to `dst`, its one byte of data `seq`.
fn frame(dst: [u8; 4], seq: u8) -> Vec<u8> {
    let ip = fixtures::Ipv4::new(Ipv4Addr::new(10, 244, 1, 2), dst.into());
    fixtures::udp([0x02, 0, 0, 0, 0, 0xa1], [0x02, 0, 0, 0, 0, 0xa0], ip, 12345, 80, &[seq])
}

fn receive_n(umem: &mut Umem, port: &mut XskPort, n: usize) -> Vec<(Packet<u64>, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut burst = [Packet::default(); 64];
    while got.len() < n && Instant::now() < deadline {
        umem.refill(port, 64, 0);
        let k = umem.receive(port, &mut burst);
        for fr in &burst[..k] {
            let bytes = umem.with_packet(fr, |b| b.to_vec());
            got.push((*fr, bytes));
        }
        if k == 0 {
            wait_readable(&[port.poll_fd()], 50).unwrap();
        }
    }
    got
}

#[test]
fn shared_umem_across_a_veth_pair() {
    if !xlane_netlab::privileged("shared_umem_across_a_veth_pair") {
        return;
    }
    let ns = Netns::new("xlt-xsk").unwrap();
    xlane_netlab::veth(&ns, "a0", &ns, "a1").unwrap();
    let a0 = ns.ifindex("a0").unwrap();
    ns.enter(|| {
        let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
        let att = XdpAttachment::attach(a0, "xlane_pod", 1, Program::Pod(filter), ModePreference::Auto).unwrap();
        let settings = UmemSettings { frames: 1024, fill_ring: 256, rx_tx_ring: 256, ..UmemSettings::default() };
        let mut umem = Umem::new(settings).unwrap();
        let mut rx_port = umem.open_port("a0", 0, BindMode::Auto).unwrap();
        let mut tx_port = umem.open_port("a1", 0, BindMode::Auto).unwrap();
        assert!(!rx_port.zero_copy(), "veth has no zero-copy: fell back to copy mode");
        att.insert_socket(0, rx_port.fd().as_fd()).unwrap();
        assert_eq!(umem.refill(&mut rx_port, 128, 0), 128);

        // 8 frames into the cluster (to the engine) and 4 to the internet (to the kernel).
        let mut sent = Vec::new();
        let mut out = Vec::new();
        for seq in 0..12u8 {
            let dst = if seq % 3 == 2 { [93, 184, 216, 34] } else { [10, 244, 2, 3] };
            let f = frame(dst, seq);
            let fr = umem.alloc_with(256, &f).unwrap();
            if dst[0] == 10 {
                sent.push(f);
            }
            out.push(fr);
        }
        assert_eq!(umem.transmit(&mut tx_port, &out), 12);
        tx_port.kick_tx();

        let got = receive_n(&mut umem, &mut rx_port, sent.len());
        let bytes: Vec<_> = got.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(bytes, sent, "exactly the cluster frames arrive, in order, intact");

        // Completions on the sending port give the 12 frames back.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut completed = 0;
        while completed < 12 && Instant::now() < deadline {
            completed += umem.reap_completions(&mut tx_port);
        }
        assert_eq!(completed, 12);

        // Forward a received frame out of a1 by moving its descriptor (with the packet
        // moved 50 bytes into its headroom, as encapsulation does): it comes back to a0.
        let (fr, original) = got[0].clone();
        let off = fr.head as usize;
        umem.buffers_mut(&[fr.buf], |b| b[0].copy_within(off..off + original.len(), off - 50));
        assert_eq!(umem.transmit(&mut tx_port, &[Packet { head: fr.head - 50, ..fr }]), 1);
        for (fr, _) in &got[1..] {
            umem.release(fr.buf);
        }
        tx_port.kick_tx();
        let again = receive_n(&mut umem, &mut rx_port, 1);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1, original);
        assert_eq!(umem.bad_descriptors(), 0);
        let stats = rx_port.stats().unwrap();
        assert_eq!(stats.rx_invalid_descs, 0);
    })
    .unwrap();
}

/// Ports come and go (pods); the frames their rings held come back to the UMEM, so a
/// node that has attached and removed thousands of pods still has its whole UMEM.
#[test]
fn closed_ports_give_their_frames_back() {
    if !xlane_netlab::privileged("closed_ports_give_their_frames_back") {
        return;
    }
    let ns = Netns::new("xlt-xskc").unwrap();
    xlane_netlab::veth(&ns, "b0", &ns, "b1").unwrap();
    ns.enter(|| {
        let settings = UmemSettings { frames: 1024, fill_ring: 256, rx_tx_ring: 256, ..UmemSettings::default() };
        let mut umem = Umem::new(settings).unwrap();
        // The first socket is the UMEM's own and stays bound: it keeps its frames.
        let mut first = umem.open_port("b1", 0, BindMode::Auto).unwrap();
        umem.refill(&mut first, 64, 0);
        let baseline = umem.free_frames();
        for round in 0..50 {
            let mut p = umem.open_port("b0", 0, BindMode::Auto).unwrap();
            assert_eq!(umem.refill(&mut p, 200, 0), 200);
            // Some frames in flight on TX too.
            let frs: Vec<_> = (0..8u8).map(|s| umem.alloc_with(0, &frame([10, 244, 2, 3], s)).unwrap()).collect();
            assert_eq!(umem.transmit(&mut p, &frs), 8);
            assert_eq!(umem.close_port(p), 208, "round {round}");
            assert_eq!(umem.free_frames(), baseline, "round {round}: nothing leaked");
        }
        assert_eq!(umem.close_port(first), 0, "the UMEM's own socket keeps its frames");
    })
    .unwrap();
}

/// A socket joining a UMEM is prepared on the UMEM's thread, bound on another (bind(2)
/// is slow; the worker must not wait for it) and adopted back: it then receives like
/// any other. Sockets the UMEM cannot adopt are refused, not misused.
#[test]
fn a_socket_bound_on_another_thread_joins_the_umem() {
    if !xlane_netlab::privileged("a_socket_bound_on_another_thread_joins_the_umem") {
        return;
    }
    let ns = Netns::new("xlt-xskb").unwrap();
    xlane_netlab::veth(&ns, "c0", &ns, "c1").unwrap();
    let c0 = ns.ifindex("c0").unwrap();
    ns.enter(|| {
        let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
        let att = XdpAttachment::attach(c0, "xlane_pod", 1, Program::Pod(filter), ModePreference::Auto).unwrap();
        let settings = UmemSettings { frames: 1024, fill_ring: 256, rx_tx_ring: 256, ..UmemSettings::default() };
        let mut umem = Umem::new(settings).unwrap();
        assert!(!umem.bound());
        let refused = umem.prepare_port("c0", 0).unwrap_err().to_string();
        assert!(refused.contains("first socket"), "{refused}");
        let mut tx_port = umem.open_port("c1", 0, BindMode::Copy).unwrap();
        assert!(umem.bound());

        // Not bound yet: not adopted (and closed).
        let unbound = umem.prepare_port("c0", 0).unwrap();
        assert!(umem.adopt_port(unbound).unwrap_err().to_string().contains("not bound"));
        // Made for another UMEM: not adopted either.
        let mut other = Umem::new(settings).unwrap();
        let mut foreign = umem.prepare_port("c0", 0).unwrap();
        foreign.bind().unwrap();
        assert!(other.adopt_port(foreign).unwrap_err().to_string().contains("another UMEM"));

        let free = umem.free_frames();
        let prepared = umem.prepare_port("c0", 0).unwrap();
        assert_eq!((umem.open_ports(), umem.free_frames()), (1, free), "prepared: not open, no frame given");
        let bound = std::thread::spawn(move || {
            let mut s = prepared;
            s.bind().map(|()| s)
        });
        let mut rx_port = umem.adopt_port(bound.join().unwrap().unwrap()).unwrap();
        assert_eq!(umem.open_ports(), 2);
        assert!(!rx_port.zero_copy(), "inherits the UMEM's copy mode");
        att.insert_socket(0, rx_port.fd().as_fd()).unwrap();
        assert_eq!(umem.refill(&mut rx_port, 128, 0), 128);

        let sent: Vec<_> = (0..8u8).map(|seq| frame([10, 244, 2, 3], seq)).collect();
        let out: Vec<_> = sent.iter().map(|f| umem.alloc_with(256, f).unwrap()).collect();
        assert_eq!(umem.transmit(&mut tx_port, &out), 8);
        tx_port.kick_tx();
        let got = receive_n(&mut umem, &mut rx_port, sent.len());
        let bytes: Vec<_> = got.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(bytes, sent, "the adopted socket receives every frame, in order");
        for (fr, _) in got {
            umem.release(fr.buf);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut completed = 0;
        while completed < 8 && Instant::now() < deadline {
            completed += umem.reap_completions(&mut tx_port);
        }
        assert!(umem.close_port(rx_port) > 0);
        assert_eq!(umem.free_frames(), free, "every frame back: the fill ring's, the sent and the received");
        assert_eq!(umem.bad_descriptors(), 0);
    })
    .unwrap();
}

/// A VXLAN frame to 192.168.77.1:8472 with `inner_len` bytes of inner frame.
fn vxlan_frame(inner_len: usize, seed: u8) -> Vec<u8> {
    let t = xlane_wire::encap::EncapTemplate::new(&xlane_wire::encap::EncapParams {
        src_mac: xlane_wire::Mac([2, 0, 0, 0, 0, 2]),
        dst_mac: xlane_wire::Mac([2, 0, 0, 0, 0, 1]),
        src_ip: Ipv4Addr::new(192, 168, 77, 2),
        dst_ip: Ipv4Addr::new(192, 168, 77, 1),
        dst_port: 8472,
        vni: 1,
        ttl: 64,
    });
    let mut f = vec![0u8; xlane_wire::VXLAN_OVERHEAD];
    t.write((&mut f[..]).try_into().unwrap(), u16::try_from(inner_len).unwrap(), 40_000);
    f.extend((0..inner_len).map(|i| i.to_le_bytes()[0].wrapping_mul(7).wrapping_add(seed)));
    f
}

/// A jumbo underlay (MTU 9000): the uplink's multi-buffer program and a copy-mode
/// socket (bound with XDP_USE_SG) take a 9014-byte frame in several descriptors; it is
/// assembled whole into the jumbo store, after the frames that came before it, and its
/// frames go back to the UMEM.
#[test]
fn jumbo_frames_arrive_whole_from_several_buffers() {
    use std::sync::Arc;
    use xlane_engine::mem::MemFrames;
    use xlane_engine::offload::{JUMBO_HEADROOM, Jumbo, OffloadMeta};
    use xlane_engine::{Port, PortCounters};
    use xlane_xdp::packet::{PacketPort, PacketStats, RxPath};
    use xlane_xdp::programs::UplinkFilter;

    if !xlane_netlab::privileged("jumbo_frames_arrive_whole_from_several_buffers") {
        return;
    }
    let ns = Netns::new("xlt-xskj").unwrap();
    ns.ip(&["link", "add", "j0", "mtu", "9000", "type", "veth", "peer", "name", "j1", "mtu", "9000"]).unwrap();
    ns.ip(&["link", "set", "j0", "up"]).unwrap();
    ns.ip(&["link", "set", "j1", "up"]).unwrap();
    let (j0, j1) = (ns.ifindex("j0").unwrap(), ns.ifindex("j1").unwrap());
    ns.enter(|| {
        let filter = UplinkFilter { vtep_ip: Ipv4Addr::new(192, 168, 77, 1), vxlan_port: 8472 };
        let att = XdpAttachment::attach(j0, "xlane_uplink", 1, Program::Uplink(filter), ModePreference::Auto).unwrap();
        let settings = UmemSettings { frames: 1024, fill_ring: 256, rx_tx_ring: 256, ..UmemSettings::default() };
        let mut umem = Umem::new(settings).unwrap();
        let mut rx = umem.open_port("j0", 0, BindMode::Auto).unwrap();
        att.insert_socket(0, rx.fd().as_fd()).unwrap();
        umem.refill(&mut rx, 128, 0);
        // The far end writes frames whole through a packet socket.
        let mut mem = MemFrames::default();
        let stats = Arc::new(PacketStats::default());
        let counters = Arc::new(PortCounters::default());
        // It only sends: no ring to hold memory for.
        let mut tx =
            PacketPort::<u32>::open(xlane_fib::PortId(1), j1, 7, None, RxPath::Queue, counters, stats).unwrap();
        let sent = [vxlan_frame(100, 1), vxlan_frame(8964, 2), vxlan_frame(200, 3), vxlan_frame(8964, 4)];
        for f in &sent {
            assert!(tx.transmit_offloaded(&mut mem, f, &OffloadMeta::default()));
        }

        let (mut small, mut large) = (Vec::new(), Vec::new());
        let mut jumbo = Jumbo::new();
        let mut out = [Packet::default(); 64];
        let deadline = Instant::now() + Duration::from_secs(3);
        while small.len() + large.len() < sent.len() && Instant::now() < deadline {
            jumbo.clear();
            let n = umem.receive_large(&mut rx, &mut out, &mut jumbo);
            for i in 0..jumbo.len() {
                let (slot, rec) = jumbo.frame_mut(i);
                let bytes = slot[JUMBO_HEADROOM..JUMBO_HEADROOM + rec.len as usize].to_vec();
                large.push((small.len() + usize::from(rec.before), bytes, rec.meta));
            }
            for p in &out[..n] {
                small.push(umem.with_packet(p, |b| b.to_vec()));
                umem.release(p.buf);
            }
            umem.refill(&mut rx, 64, 0);
            if n == 0 && jumbo.is_empty() {
                wait_readable(&[rx.poll_fd()], 50).unwrap();
            }
        }
        assert_eq!(small, vec![sent[0].clone(), sent[2].clone()], "single-buffer frames as ever");
        assert_eq!(large.len(), 2, "both jumbo frames");
        for ((before, bytes, meta), (want_before, want)) in large.iter().zip([(1, &sent[1]), (2, &sent[3])]) {
            assert_eq!(*before, want_before, "in arrival order among the others");
            assert!(bytes == want, "a 9014-byte frame, whole");
            assert_eq!(*meta, OffloadMeta::default(), "no offload metadata");
        }
        assert_eq!((umem.large_dropped(), umem.bad_descriptors()), (0, 0));
        let held = umem.free_frames() + Umem::fill_level(&rx) as usize;
        assert_eq!(held, 1024, "every frame of the chains back (free or in the fill ring)");
    })
    .unwrap();
}

/// Copy-mode TX sends `tx_budget` descriptors per wakeup: the whole ring where the
/// kernel has `XDP_MAX_TX_SKB_BUDGET` (6.17+), so a burst of 256 goes out in one
/// `sendto`; without it (the fallback, forced here) 32 per wakeup, eight of them. Every
/// frame completes either way.
#[test]
fn a_raised_tx_budget_sends_a_burst_in_one_wakeup_and_the_fallback_in_several() {
    if !xlane_netlab::privileged("a_raised_tx_budget_sends_a_burst_in_one_wakeup_and_the_fallback_in_several") {
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.trim().split(['.', '-']).map(|x| x.parse::<u32>().unwrap_or(0));
    let has_option = (v.next().unwrap(), v.next().unwrap()) >= (6, 17);
    let ns = Netns::new("xlt-budget").unwrap();
    xlane_netlab::veth(&ns, "t0", &ns, "t1").unwrap();
    ns.enter(|| {
        for raise in [true, false] {
            let settings = UmemSettings {
                frames: 1024,
                fill_ring: 256,
                rx_tx_ring: 512,
                raise_tx_budget: raise,
                ..UmemSettings::default()
            };
            let mut umem = Umem::new(settings).unwrap();
            let mut port = umem.open_port("t1", 0, BindMode::Copy).unwrap();
            let expected = if raise && has_option { 512 } else { xlane_xdp::xsk::DEFAULT_TX_BUDGET };
            assert_eq!(port.tx_budget(), expected, "raise {raise} on {release}");
            let burst: Vec<Packet<u64>> =
                (0..=255u8).map(|i| umem.alloc_with(256, &frame([10, 244, 2, 3], i)).unwrap()).collect();
            assert_eq!(umem.transmit(&mut port, &burst), 256);
            port.flush_tx(16);
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut completed = 0;
            while completed < 256 && Instant::now() < deadline {
                completed += umem.reap_completions(&mut port);
            }
            assert_eq!(completed, 256, "raise {raise}: every frame sent");
            let wakeups = port.tx_wakeups();
            assert_eq!(wakeups, u64::from(256_u32.div_ceil(expected)), "raise {raise}: wakeups for 256 frames");
            umem.close_port(port);
        }
    })
    .unwrap();
}
