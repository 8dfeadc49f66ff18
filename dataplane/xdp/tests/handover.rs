//! A UMEM and its sockets handed over mid-stream (needs root): frames already in the
//! receiving socket's RX ring, and frames still in the sending socket's TX or completion
//! ring, carry on through the new UMEM — each received exactly once, in order, every
//! transmitted frame completed — after the old UMEM's mapping is gone.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use xlane_engine::Packet;
use xlane_engine::fixtures;
use xlane_netlab::Netns;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment};
use xlane_xdp::programs::PodFilter;
use xlane_xdp::xsk::handover::{HeldFrame, UmemHandover};
use xlane_xdp::xsk::{BindMode, Umem, UmemSettings, XskPort, wait_readable};

/// A UDP frame into the cluster carrying `seq`.
fn frame(seq: u16) -> Vec<u8> {
    let ip = fixtures::Ipv4::new(Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 3));
    fixtures::udp([0x02, 0, 0, 0, 0, 0xa1], [0x02, 0, 0, 0, 0, 0xa0], ip, 12345, 80, &seq.to_be_bytes())
}

/// The `seq` a received frame carries.
fn seq_of(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[bytes.len() - 2], bytes[bytes.len() - 1]])
}

/// Send `seqs` from `port` (frames allocated in `umem`), without reaping completions.
fn send(umem: &mut Umem, port: &mut XskPort, seqs: std::ops::Range<u16>) {
    let frames: Vec<Packet<u64>> = seqs.map(|s| umem.alloc_with(256, &frame(s)).unwrap()).collect();
    for chunk in frames.chunks(32) {
        assert_eq!(umem.transmit(port, chunk), chunk.len());
        port.kick_tx();
    }
}

/// Receive until `n` frames have come or a second passes; returns their seqs.
fn receive(umem: &mut Umem, port: &mut XskPort, n: usize) -> Vec<u16> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut burst = [Packet::default(); 64];
    while got.len() < n && Instant::now() < deadline {
        let want = (n - got.len()).min(64);
        let k = umem.receive(port, &mut burst[..want]);
        for p in &burst[..k] {
            got.push(umem.with_packet(p, |b| seq_of(b)));
            umem.release(p.buf);
        }
        if k == 0 {
            wait_readable(&[port.poll_fd()], 20).unwrap();
        }
    }
    got
}

#[test]
fn sockets_keep_their_frames_across_a_handover() {
    if !xlane_netlab::privileged("sockets_keep_their_frames_across_a_handover") {
        return;
    }
    let ns = Netns::new("xlt-hand").unwrap();
    xlane_netlab::veth(&ns, "h0", &ns, "h1").unwrap();
    let h0 = ns.ifindex("h0").unwrap();
    ns.enter(|| {
        let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
        let att = XdpAttachment::attach(h0, "xlane_pod", 1, Program::Pod(filter), ModePreference::Auto).unwrap();
        let settings = UmemSettings { frames: 1024, fill_ring: 256, rx_tx_ring: 256, ..UmemSettings::default() };
        let mut old = Umem::new(settings).unwrap();
        // The receiver is the UMEM's own socket, the sender one sharing it.
        let mut rx = old.open_port("h0", 0, BindMode::Copy).unwrap();
        let mut tx = old.open_port("h1", 0, BindMode::Copy).unwrap();
        att.insert_socket(0, rx.fd().as_fd()).unwrap();
        assert_eq!(old.refill(&mut rx, 200, 0), 200);

        // 150 frames sent, 50 taken: ~100 wait in the RX ring, the sent ones in the
        // sender's completion ring.
        send(&mut old, &mut tx, 0..150);
        let mut got = receive(&mut old, &mut rx, 50);
        assert_eq!(got.len(), 50);
        let (in_use, free_before) = (settings.frames as usize - old.free_frames(), old.free_frames());

        let deadline = Instant::now() + Duration::from_secs(1);
        while rx.rx_pending() < 100 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(rx.rx_pending(), 100, "frames wait in the RX ring at the handover");
        let (rx_h, tx_h) = (rx.hand_over().unwrap(), tx.hand_over().unwrap());
        assert!(rx_h.fd.is_none() && rx_h.state.umem_socket, "the UMEM's own socket travels with the UMEM");
        let h = old.hand_over().unwrap();
        assert_eq!(h.state.held.len(), in_use, "every frame not free is held by a ring");
        // A copy of the state (as it crosses the process boundary: JSON).
        let state = serde_json::from_str(&serde_json::to_string(&h.state).unwrap()).unwrap();
        let h = UmemHandover { state, ..h };
        // The old process's view goes: its mapping, its socket descriptors.
        drop(old);

        // Bookkeeping that does not fit the memory is refused.
        let mut twice = h.state.clone();
        twice.held.push(twice.held[0]);
        let dup = |state| UmemHandover {
            memory: h.memory.try_clone().unwrap(),
            registration: h.registration.try_clone().unwrap(),
            state,
        };
        assert!(Umem::take_over(dup(twice)).is_err(), "a frame held twice");
        let mut outside = h.state.clone();
        outside.held.push(HeldFrame { addr: 1 << 30, token: 1, tx: false });
        assert!(Umem::take_over(dup(outside)).is_err(), "a frame outside the UMEM");

        let mut new = Umem::take_over(h).unwrap();
        assert_eq!(new.free_frames(), free_before, "the free frames are the old free frames");
        let mut rx = new.take_over_port(rx_h).unwrap();
        let mut tx = new.take_over_port(tx_h).unwrap();

        // The rest of the first 150 arrive exactly once, in order, then new traffic.
        got.extend(receive(&mut new, &mut rx, 100));
        send(&mut new, &mut tx, 150..200);
        new.refill(&mut rx, 100, 0);
        got.extend(receive(&mut new, &mut rx, 50));
        assert_eq!(got, (0..200).collect::<Vec<_>>(), "every frame once, in order");

        // Every frame sent, before or after, completes into the new UMEM.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut completed = 0;
        while completed < 200 && Instant::now() < deadline {
            completed += new.reap_completions(&mut tx);
            tx.kick_tx();
        }
        assert_eq!(completed, 200);
        assert_eq!(new.bad_descriptors(), 0);
        assert_eq!(rx.stats().unwrap().rx_invalid_descs, 0);
        // Only the receiver's fill ring holds frames now.
        assert_eq!(new.free_frames() + Umem::fill_level(&rx) as usize, settings.frames as usize);
    })
    .unwrap();
}
