//! An AF_XDP port's fill ring under bursts (needs root): a port whose ring runs dry
//! doubles its target, up to the ring's size, within the UMEM's growth allowance (a
//! quarter of its frames), and gives the growth back when it closes.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use xlane_engine::{BURST, Packet, Port, PortCounters, fixtures};
use xlane_fib::PortId;
use xlane_netlab::Netns;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment};
use xlane_xdp::port::{KernelStats, QueueSpec, XdpPort};
use xlane_xdp::programs::PodFilter;
use xlane_xdp::xsk::{BindMode, Umem, UmemId, UmemSettings, Umems};

/// Bursts of 512 frames into `port`'s interface from the peer end, each drained
/// before the next; returns the port's fill target after each.
fn bursts(umems: &mut Umems, port: &mut XdpPort, rounds: usize) -> Vec<u32> {
    let mut sender =
        Umem::new(UmemSettings { frames: 1024, fill_ring: 512, rx_tx_ring: 512, ..UmemSettings::default() }).unwrap();
    let mut tx = sender.open_port("g1", 0, BindMode::Copy).unwrap();
    let ip = fixtures::Ipv4::new(Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 3));
    let frame = fixtures::udp([2, 0, 0, 0, 0, 0xa1], [2, 0, 0, 0, 0, 0xa0], ip, 1000, 80, &[0; 18]);
    let mut targets = Vec::new();
    for _ in 0..rounds {
        sender.reap_completions(&mut tx);
        let burst: Vec<Packet<u64>> = (0..512).filter_map(|_| sender.alloc_with(256, &frame)).collect();
        assert_eq!(sender.transmit(&mut tx, &burst), burst.len());
        // The kernel sends what the socket's send buffer allows, then more as the peer
        // frees what it took: keep waking it (and taking completions) until it is out.
        for _ in 0..500 {
            tx.flush_tx(64);
            sender.reap_completions(&mut tx);
            if tx.tx_pending() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(tx.tx_pending(), 0, "the burst went out");
        std::thread::sleep(Duration::from_millis(30));
        let mut rx = [Packet::default(); BURST];
        loop {
            let n = port.receive(umems, &mut rx);
            for p in &rx[..n] {
                xlane_engine::FrameMemory::release(umems, p.buf);
            }
            if n == 0 {
                break;
            }
        }
        targets.push(port.fill_target());
    }
    sender.close_port(tx);
    targets
}

#[test]
fn a_fill_ring_that_runs_dry_grows_within_the_umems_allowance() {
    if !xlane_netlab::privileged("a_fill_ring_that_runs_dry_grows_within_the_umems_allowance") {
        return;
    }
    let ns = Netns::new("xlt-grow").unwrap();
    xlane_netlab::veth(&ns, "g0", &ns, "g1").unwrap();
    let g0 = ns.ifindex("g0").unwrap();
    ns.enter(|| {
        // (UMEM frames, the targets it allows): 4096 frames allow 1024 of growth, enough
        // to reach the ring's 1024; 512 frames allow 128, so 64 → 128 and no further.
        for (frames, last) in [(4096, 1024), (512, 128)] {
            let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
            let att = Arc::new(
                XdpAttachment::attach(g0, "xlane_pod", 1, Program::Pod(filter), ModePreference::Auto).unwrap(),
            );
            let settings = UmemSettings { frames, fill_ring: 1024, rx_tx_ring: 1024, ..UmemSettings::default() };
            let mut umems = Umems::new(Umem::new(settings).unwrap());
            let counters = Arc::new(PortCounters::default());
            let spec = QueueSpec {
                id: PortId(1),
                attach: Arc::clone(&att),
                fill_target: 64,
                counters,
                kernel: Arc::new(KernelStats::default()),
            };
            let mut port = XdpPort::open(&mut umems, UmemId::SHARED, "g0", 0, BindMode::Copy, spec).unwrap();
            let targets = bursts(&mut umems, &mut port, 6);
            eprintln!("{frames}-frame UMEM: fill targets {targets:?}");
            assert_eq!(*targets.last().unwrap(), last, "{frames} frames: {targets:?}");
            assert!(targets.windows(2).all(|w| w[1] >= w[0]), "never shrinks while open: {targets:?}");
            // Closing gives the growth back: a new port may grow as far again.
            Port::close(port, &mut umems);
            assert!(umems.get_mut(UmemId::SHARED).grow_fill((last - 64) as usize));
        }
    })
    .unwrap();
}
