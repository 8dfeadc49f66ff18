//! AF_XDP transmit checksum requests for real on a veth pair (needs root): a TCP frame
//! whose checksum is partial (the field holding the pseudo-header sum), sent through
//! [`Umem::transmit_partial`] in each of the three modes, and what arrives at the other
//! end's socket.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use xlane_engine::Packet;
use xlane_engine::offload::build::TcpSuper;
use xlane_engine::offload::{OffloadMeta, PartialCsum, complete_checksum};
use xlane_netlab::Netns;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment};
use xlane_xdp::programs::PodFilter;
use xlane_xdp::xsk::{BindMode, TxChecksum, Umem, UmemSettings, XskPort, wait_readable};

/// Ethernet (14) + IPv4 without options (20): the TCP header.
const CSUM: PartialCsum = PartialCsum { start: 34, offset: 16 };

fn receive_one(umem: &mut Umem, port: &mut XskPort) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut burst = [Packet::default(); 64];
    while Instant::now() < deadline {
        umem.refill(port, 64, 0);
        let k = umem.receive(port, &mut burst);
        if k > 0 {
            let bytes = umem.with_packet(&burst[0], |b| b.to_vec());
            for p in &burst[..k] {
                umem.release(p.buf);
            }
            return Some(bytes);
        }
        wait_readable(&[port.poll_fd()], 50).unwrap();
    }
    None
}

/// Send one partial TCP frame from a1 to a0 in a UMEM asking for `mode`; returns what
/// the UMEM granted, the frame sent (partial), the same frame completed, and what a0's
/// socket received.
fn send_partial(ns: &Netns, mode: TxChecksum) -> (TxChecksum, Vec<u8>, Vec<u8>, Vec<u8>) {
    let a0 = ns.ifindex("a0").unwrap();
    ns.enter(|| {
        let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
        let att = XdpAttachment::attach(a0, "xlane_pod", 1, Program::Pod(filter), ModePreference::Auto).unwrap();
        let settings = UmemSettings {
            frames: 1024,
            fill_ring: 256,
            rx_tx_ring: 256,
            tx_checksum: mode,
            ..UmemSettings::default()
        };
        let mut umem = Umem::new(settings).unwrap();
        let mut rx_port = umem.open_port("a0", 0, BindMode::Copy).unwrap();
        let mut tx_port = umem.open_port("a1", 0, BindMode::Copy).unwrap();
        att.insert_socket(0, rx_port.fd().as_fd()).unwrap();
        umem.refill(&mut rx_port, 128, 0);

        let (partial, meta) = TcpSuper::new((0..1200u32).map(|i| (i * 7).to_le_bytes()[0]).collect(), 1448).build();
        assert_eq!(meta.csum, Some(CSUM), "the fixture's checksum is partial");
        let mut complete = partial.clone();
        complete_checksum(&mut complete, &OffloadMeta { csum: Some(CSUM), ..OffloadMeta::default() }).unwrap();
        assert_ne!(partial, complete);

        let p = umem.alloc_with(256, &partial).unwrap();
        assert_eq!(umem.transmit_partial(&mut tx_port, &[p], CSUM), 1);
        tx_port.kick_tx();
        let got = receive_one(&mut umem, &mut rx_port).expect("the frame arrives");
        let deadline = Instant::now() + Duration::from_secs(2);
        while umem.reap_completions(&mut tx_port) == 0 && Instant::now() < deadline {}
        assert_eq!(tx_port.stats().unwrap().tx_invalid_descs, 0, "the kernel took the descriptor");
        (umem.tx_checksum(), partial, complete, got)
    })
    .unwrap()
}

#[test]
fn partial_checksums_leave_complete_in_every_mode_the_lab_can_check() {
    if !xlane_netlab::privileged("partial_checksums_leave_complete_in_every_mode_the_lab_can_check") {
        return;
    }
    let ns = Netns::new("xlt-csum").unwrap();
    xlane_netlab::veth(&ns, "a0", &ns, "a1").unwrap();

    // The kernel completes the request as it copies the frame into its packet.
    let (granted, _, complete, got) = send_partial(&ns, TxChecksum::Software);
    assert_eq!(granted, TxChecksum::Software, "6.11+ grants software completion");
    assert_eq!(got, complete, "completed by the kernel");

    // Without requests the UMEM completes the checksum itself before sending.
    let (granted, _, complete, got) = send_partial(&ns, TxChecksum::Off);
    assert_eq!(granted, TxChecksum::Off);
    assert_eq!(got, complete, "completed before the descriptor was written");

    // For the device: the kernel takes the request (no invalid descriptor) and hands
    // veth a packet whose checksum is still to be completed; veth passes it on as it is
    // — the peer's stack would trust it, an AF_XDP socket there sees the field
    // unfinished. Why the lab uses "software" (whose completed bytes above show the
    // kernel read the request where xlane wrote it).
    let (granted, partial, _, got) = send_partial(&ns, TxChecksum::Device);
    assert_eq!(granted, TxChecksum::Device);
    assert_eq!(got, partial, "veth delivers the request unfinished");
}
