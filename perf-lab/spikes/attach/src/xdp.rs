//! (a) Today's attach: native XDP on the host end of each pod veth redirecting to an
//! AF_XDP socket in copy mode — xlane's own `XdpPort` (dataplane/xdp/src/port.rs) and
//! `Umem`, both ports in one UMEM, so a frame received on one port is transmitted on the
//! other by moving its descriptor. The XDP program is xlane's pod pinhole with a /0
//! cluster CIDR (every IPv4 frame and ARP to the socket).

use crate::fwd::{DirStats, MAC_A, MAC_B, Stop, report, rewrite, wait};
use std::net::Ipv4Addr;
use std::sync::Arc;
use xlane_engine::{BURST, Packet, Port, PortCounters};
use xlane_fib::PortId;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment, XdpMode};
use xlane_xdp::port::{KernelStats, XdpPort};
use xlane_xdp::programs::PodFilter;
use xlane_xdp::xsk::{BindMode, Umem, UmemSettings};

const FILL: u32 = 2048;

fn open(umem: &mut Umem, id: u16, ifname: &str) -> anyhow::Result<(XdpPort, Arc<KernelStats>)> {
    let ifindex = nix::net::if_::if_nametoindex(ifname)?;
    let filter = PodFilter { cluster: Ipv4Addr::UNSPECIFIED, prefix_len: 0 };
    let attach = Arc::new(XdpAttachment::attach(
        ifindex,
        &format!("spk_{ifname}"),
        1,
        Program::Pod(filter),
        ModePreference::Only(XdpMode::Native),
    )?);
    let kernel = Arc::new(KernelStats::default());
    let port = XdpPort::open(
        umem,
        PortId(id),
        ifname,
        0,
        BindMode::Copy,
        attach,
        FILL,
        Arc::new(PortCounters::default()),
        Arc::clone(&kernel),
    )?;
    Ok((port, kernel))
}

fn pass(
    umem: &mut Umem,
    src: &mut XdpPort,
    dst: &mut XdpPort,
    burst: &mut [Packet<u64>; BURST],
    mac: &[u8; 6],
    st: &mut DirStats,
) -> usize {
    let n = src.receive(umem, burst);
    if n == 0 {
        return 0;
    }
    st.bursts += 1;
    let bufs: Vec<u64> = burst[..n].iter().map(|p| p.buf).collect();
    umem.buffers_mut(&bufs, |frames| {
        for (f, p) in frames.iter_mut().zip(&burst[..n]) {
            let frame = &mut f[p.head as usize..(p.head + p.len) as usize];
            st.frame(frame.len());
            rewrite(frame, mac);
        }
    });
    let sent = dst.transmit(umem, &burst[..n]);
    st.dropped += (n - sent) as u64;
    n
}

pub fn run(a: &str, b: &str, stop: &Stop) -> anyhow::Result<()> {
    let settings = UmemSettings { frame_size: 2048, frames: 16_384, fill_ring: FILL, rx_tx_ring: 2048, ..UmemSettings::default() };
    let mut umem = Umem::new(settings)?;
    let (mut pa, ka) = open(&mut umem, 1, a)?;
    let (mut pb, kb) = open(&mut umem, 2, b)?;
    let mut burst = [Packet { buf: 0u64, head: 0, len: 0 }; BURST];
    let (mut ab, mut ba) = (DirStats::default(), DirStats::default());
    println!("ready");
    while !stop.now() {
        let mut moved = 0;
        for _ in 0..64 {
            let k = pass(&mut umem, &mut pa, &mut pb, &mut burst, &MAC_B, &mut ab)
                + pass(&mut umem, &mut pb, &mut pa, &mut burst, &MAC_A, &mut ba);
            moved += k;
            if k == 0 {
                break;
            }
        }
        pa.service(&mut umem);
        pb.service(&mut umem);
        if moved == 0 {
            let sleep_a = pa.prepare_sleep();
            let sleep_b = pb.prepare_sleep();
            let _ = (sleep_a, sleep_b);
            let fds: Vec<_> = [pa.wait_fd(), pb.wait_fd()].into_iter().flatten().collect();
            wait(&fds, 10);
        }
    }
    pa.refresh_stats();
    pb.refresh_stats();
    let k = |s: &KernelStats| {
        let s = s.get();
        serde_json::json!({"rx_dropped": s.rx_dropped, "rx_ring_full": s.rx_ring_full,
            "rx_fill_ring_empty_descs": s.rx_fill_ring_empty_descs, "tx_ring_empty_descs": s.tx_ring_empty_descs})
    };
    report("xdp", &ab, &ba, serde_json::json!({"a": k(&ka), "b": k(&kb)}));
    pa.close(&mut umem);
    pb.close(&mut umem);
    Ok(())
}
