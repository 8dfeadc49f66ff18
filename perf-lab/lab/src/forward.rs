//! The I/O-ceiling forwarders: frames in on an interface's AF_XDP socket, MAC addresses
//! swapped, frames out of the same socket — no lookup, no encapsulation. xlane's own
//! (on the same socket code as xlaned: `xlane_xdp`'s UMEM, sockets and pod program) and
//! DPDK testpmd's (`net_af_xdp`, `--forward-mode=macswap`), the reference AF_XDP peer.
//! And the two-node ceiling: a relay per node on xlaned's exact path (pod veth ⇄ uplink
//! on each node), both sockets in one UMEM as a worker's, frames moved by descriptor
//! with their MACs rewritten — everything xlane does but the pipeline.

use anyhow::Context as _;
use std::os::fd::AsFd as _;

use std::sync::atomic::{AtomicBool, Ordering};
use xlane_engine::Packet;
use xlane_netlab::Netns;
use xlane_netlab::dpdk::Testpmd;
use xlane_wire::Mac;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment};
use xlane_xdp::programs::PodFilter;
use xlane_xdp::xsk::{BindMode, Umem, UmemSettings, XskPort, wait_readable};

/// Forward with MAC swap on `dev` (in `ns`) until `stop`; returns the frames forwarded.
/// Steers what xlaned's pod program steers (ARP and IPv4 to 10.244.0.0/16): xlaned's
/// socket code and its worker's loop shape (receive a burst, rewrite, transmit, restock;
/// sleep in poll(2) when idle), no pipeline.
///
/// # Errors
/// Attach or socket failures.
pub fn xlane_macswap(ns: &Netns, dev: &str, stop: &AtomicBool) -> anyhow::Result<u64> {
    let ifindex = ns.ifindex(dev)?;
    ns.enter(|| -> anyhow::Result<u64> {
        let mut umem = Umem::new(UmemSettings { frames: 8192, ..UmemSettings::default() })?;
        let (_att, port) = open_steered(&mut umem, dev, ifindex, "xlane_macswap")?;
        let mut ports = [port];
        let mut forwarded = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let (received, sent) = relay_burst(&mut umem, &mut ports, 0, 0, |eth| {
                let (dst, src) = eth[..12].split_at_mut(6);
                dst.swap_with_slice(src);
                true
            });
            forwarded += sent as u64;
            if received == 0 {
                let [port] = &mut ports;
                port.flush_tx(8);
                umem.refill(port, 2048, 64);
                wait_readable(&[port.poll_fd()], 10)?;
            }
        }
        let [port] = ports;
        umem.close_port(port);
        Ok(forwarded)
    })?
}

/// Both directions of one node of the two-node path: IPv4 frames steered (by the pod
/// program, as xlaned's) from the pod's host veth go out of the uplink with the
/// addresses of `to_uplink`, and those from the uplink out of the pod's veth with the
/// addresses of `to_pod`; anything else (ARP: the pods' gateways are static entries)
/// is dropped. One UMEM, one thread, xlaned's worker shape and idle policy — so
/// pod-to-pod TCP and request/response run over it, not only a one-way flood. Returns
/// the frames sent.
///
/// # Errors
/// Attach or socket failures.
pub fn xlane_relay_both(
    ns: &Netns,
    pod_if: &str,
    uplink: &str,
    to_uplink: (Mac, Mac),
    to_pod: (Mac, Mac),
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let headers = [header(to_uplink), header(to_pod)];
    let ifindexes = [ns.ifindex(pod_if)?, ns.ifindex(uplink)?];
    ns.enter(|| -> anyhow::Result<u64> {
        let mut umem = Umem::new(UmemSettings { frames: 8192, ..UmemSettings::default() })?;
        let (pod_att, pod) = open_steered(&mut umem, pod_if, ifindexes[0], "xlane_relay")?;
        let (uplink_att, up) = open_steered(&mut umem, uplink, ifindexes[1], "xlane_relay")?;
        let mut ports = [pod, up];
        let mut forwarded = 0u64;
        let mut idle = xlane_engine::Idle::new(false);
        while !stop.load(Ordering::Relaxed) {
            let mut work = 0;
            for (from, header) in headers.iter().enumerate() {
                let (received, sent) = relay_burst(&mut umem, &mut ports, from, 1 - from, |eth| rewrite(eth, header));
                work += received;
                forwarded += sent as u64;
            }
            // xlaned's worker's way of waiting: yield after each empty poll, sleep
            // after many.
            if idle.after_poll(work, true) {
                for p in &mut ports {
                    p.flush_tx(8);
                    umem.refill(p, 2048, 64);
                }
                wait_readable(&[ports[0].poll_fd(), ports[1].poll_fd()], 10)?;
            }
        }
        for p in ports {
            umem.close_port(p);
        }
        drop((pod_att, uplink_att));
        Ok(forwarded)
    })?
}

/// `dev` (`ifindex`) with the pod program steering to a socket on its queue 0 in
/// `umem`, its fill ring stocked. The program detaches when the attachment is dropped.
fn open_steered(umem: &mut Umem, dev: &str, ifindex: u32, name: &str) -> anyhow::Result<(XdpAttachment, XskPort)> {
    let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
    let att = XdpAttachment::attach(ifindex, name, 1, Program::Pod(filter), ModePreference::Auto)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut port = umem.open_port(dev, 0, BindMode::Auto)?;
    att.insert_socket(0, port.fd().as_fd())?;
    umem.refill(&mut port, 2048, 0);
    Ok((att, port))
}

/// One burst from `ports[from]` out of `ports[to]` (the same socket if equal), as a
/// worker moves it: completions reaped, frames received, each one's Ethernet header
/// handed to `rewrite` (false drops the frame), sent by descriptor, what the ring
/// refused released, the fill ring restocked. Returns (received, sent).
fn relay_burst(
    umem: &mut Umem,
    ports: &mut [XskPort],
    from: usize,
    to: usize,
    rewrite: impl Fn(&mut [u8]) -> bool,
) -> (usize, usize) {
    let mut burst = [Packet::default(); 64];
    umem.reap_completions(&mut ports[to]);
    let n = umem.receive(&mut ports[from], &mut burst);
    if n == 0 {
        return (0, 0);
    }
    let mut bufs = [0u64; 64];
    for (b, p) in bufs.iter_mut().zip(&burst[..n]) {
        *b = p.buf;
    }
    let mut keep = [false; 64];
    umem.buffers_mut(&bufs[..n], |frames| {
        for ((buf, p), k) in frames.iter_mut().zip(&burst).zip(&mut keep) {
            *k = rewrite(&mut buf[p.head as usize..][..14]);
        }
    });
    let mut out = [Packet::default(); 64];
    let mut m = 0;
    for (p, &k) in burst[..n].iter().zip(&keep) {
        if k {
            out[m] = *p;
            m += 1;
        } else {
            umem.release(p.buf);
        }
    }
    let sent = umem.transmit(&mut ports[to], &out[..m]);
    for p in &out[sent..m] {
        umem.release(p.buf);
    }
    ports[to].flush_tx(8);
    umem.refill(&mut ports[from], 2048, 64);
    (n, sent)
}

/// DPDK testpmd forwarding with MAC swap on `dev` in `ns` (AF_XDP PMD, no hugepages),
/// once it forwards; stopped when dropped.
///
/// # Errors
/// testpmd missing (`apt-get install dpdk`) or not starting.
pub fn testpmd_macswap(ns: &Netns, dev: &str) -> anyhow::Result<Testpmd> {
    let mut t = Testpmd::spawn(
        Some(ns),
        "0-1",
        &[&format!("net_af_xdp0,iface={dev},start_queue=0,queue_count=1,busy_budget=0")],
        &["--forward-mode=macswap", "--total-num-mbufs=16384", "--stats-period=0"],
    )
    .context("running dpdk-testpmd (apt-get install dpdk)")?;
    // Ready once its AF_XDP PMD has attached its XDP program (its stdout is block
    // buffered through a pipe, so its own "forwarding" line comes late).
    let t0 = std::time::Instant::now();
    loop {
        anyhow::ensure!(t.running(), "dpdk-testpmd exited before forwarding");
        if ns.has_xdp(dev)? {
            break;
        }
        anyhow::ensure!(t0.elapsed().as_secs() < 30, "dpdk-testpmd did not attach to {dev} in 30 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(t)
}

/// The offload path's ceiling: frames relayed both ways between interfaces `ifs` (in
/// `ns`) through xlaned's `veth-offload` sockets (AF_PACKET with a virtio-net header, a
/// receive ring, the pod filter: IPv4 to 10.244.0.0/16), MACs rewritten to `macs[i]`
/// (destination, source) for frames leaving through `ifs[i]`, super-packets moved whole with their offload
/// metadata — no lookup, no encapsulation, no segmentation, no coalescing: everything
/// xlane does on these sockets but the pipeline. The host's stack is kept off the same
/// frames (xlaned's pod pinhole at tcx). Between a pod veth and an uplink it is the
/// two-node offload ceiling; between two pods' veths, the one-node one. Returns the
/// frames forwarded (a super-packet counts once).
///
/// # Errors
/// Attach or socket failures.
pub fn packet_relay(ns: &Netns, ifs: [&str; 2], macs: [(Mac, Mac); 2], stop: &AtomicBool) -> anyhow::Result<u64> {
    use std::sync::Arc;
    use xlane_engine::offload::{JUMBO_HEADROOM, Jumbo};
    use xlane_engine::{BURST, FrameMemory as _, Port as _, PortCounters};
    use xlane_xdp::attach::HostStackBlock;
    use xlane_xdp::packet::{PacketPort, PacketStats, RxPath};

    let ifindexes = [ns.ifindex(ifs[0])?, ns.ifindex(ifs[1])?];
    let headers = macs.map(header);
    let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
    ns.enter(|| -> anyhow::Result<u64> {
        let mut blocks = Vec::new();
        let mut ports = Vec::new();
        for (i, &ifindex) in ifindexes.iter().enumerate() {
            blocks.push(HostStackBlock::pinhole(ifindex, &filter).map_err(|e| anyhow::anyhow!("{e}"))?);
            #[expect(clippy::cast_possible_truncation, reason = "a fanout group per interface")]
            let (id, group) = (xlane_engine::port::PortId(i as u16), ifindex as u16);
            let counters = Arc::new(PortCounters::default());
            let port = PacketPort::<u64>::open(
                id,
                ifindex,
                group,
                Some(&filter),
                RxPath::Ring,
                counters,
                Arc::new(PacketStats::default()),
            )?;
            ports.push(port);
        }
        // xlaned's worker memory: frames of a UMEM (registered, never bound here).
        let mut mem = Umem::new(UmemSettings { frames: 8192, ..UmemSettings::default() })?;
        let mut jumbo = Jumbo::new();
        let (mut forwarded, mut idle) = (0u64, xlane_engine::Idle::new(false));
        let mut burst = [Packet::default(); BURST];
        while !stop.load(Ordering::Relaxed) {
            let mut work = 0;
            for from in 0..2 {
                let to = 1 - from;
                jumbo.clear();
                let n = ports[from].receive_offloaded(&mut mem, &mut burst, &mut jumbo);
                work += n + jumbo.len();
                let mut bufs = [0u64; BURST];
                for (b, p) in bufs.iter_mut().zip(&burst[..n]) {
                    *b = p.buf;
                }
                let mut keep = [false; BURST];
                mem.with_buffers(&bufs[..n], |frames| {
                    for ((f, p), k) in frames.iter_mut().zip(&burst).zip(&mut keep) {
                        *k = rewrite(&mut f[p.head as usize..], &headers[to]);
                    }
                });
                // Plain frames and super-packets leave in the order they came.
                let mut at = 0;
                for j in 0..jumbo.len() {
                    let (frame, rec) = jumbo.frame_mut(j);
                    let before = usize::from(rec.before).min(n);
                    forwarded += send_plain(&mut ports[to], &mut mem, &burst[at..before], &keep[at..before]);
                    at = before;
                    let frame = &mut frame[JUMBO_HEADROOM..][..rec.len as usize];
                    if rewrite(frame, &headers[to]) && ports[to].transmit_offloaded(&mut mem, frame, &rec.meta) {
                        forwarded += 1;
                    }
                }
                forwarded += send_plain(&mut ports[to], &mut mem, &burst[at..n], &keep[at..n]);
            }
            if idle.after_poll(work, true) {
                let fds: Vec<_> = ports.iter().filter_map(xlane_engine::Port::<Umem>::wait_fd).collect();
                wait_readable(&fds, 10)?;
            }
        }
        for p in ports {
            p.close(&mut mem);
        }
        drop(blocks);
        Ok(forwarded)
    })?
}

/// A (destination, source) MAC pair as the first 12 bytes of an Ethernet header.
fn header((dst, src): (Mac, Mac)) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..6].copy_from_slice(&dst.0);
    h[6..].copy_from_slice(&src.0);
    h
}

/// Rewrite an IPv4 frame's MACs; false for anything else (the relays forward IPv4 only).
fn rewrite(eth: &mut [u8], header: &[u8; 12]) -> bool {
    if eth.len() < 14 || eth[12..14] != [0x08, 0x00] {
        return false;
    }
    eth[..12].copy_from_slice(header);
    true
}

/// Transmit the `keep`-marked frames of `pkts` on `port`, release the rest; the count sent.
fn send_plain(
    port: &mut xlane_xdp::packet::PacketPort<u64>,
    mem: &mut Umem,
    pkts: &[Packet<u64>],
    keep: &[bool],
) -> u64 {
    use xlane_engine::{BURST, Port as _};
    let (mut out, mut m) = ([Packet::default(); BURST], 0);
    for (p, &k) in pkts.iter().zip(keep) {
        if k {
            out[m] = *p;
            m += 1;
        } else {
            mem.release(p.buf);
        }
    }
    port.transmit(mem, &out[..m]) as u64
}

/// Run `measure` while a thread runs `relay` on each of `legs` until it is done; the
/// relays stop after, and a relay's failure is the result before `measure`'s. Nothing is
/// measured once `stop` is raised.
///
/// # Errors
/// A relay failing or panicking, `measure`'s errors, `stop`.
pub fn while_relaying<L: Sync, T>(
    legs: &[L],
    relay: impl Fn(&L, &AtomicBool) -> anyhow::Result<u64> + Sync,
    stop: &AtomicBool,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let relay_stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let relays: Vec<_> = legs.iter().map(|leg| sc.spawn(|| relay(leg, &relay_stop))).collect();
        // Sockets bound and programs attached before the first frame.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let measured = if stop.load(Ordering::Relaxed) { Err(anyhow::anyhow!("interrupted")) } else { measure() };
        relay_stop.store(true, Ordering::Relaxed);
        for r in relays {
            r.join().map_err(|_| anyhow::anyhow!("a relay panicked"))??;
        }
        measured
    })
}

/// Make `mac` the pod's (in `pod_ns`) neighbour entry for `ip`, permanently: the relays
/// answer no ARP (xlaned's proxy would), so each pod's gateway, and on one node the
/// other pod, resolve to the pod's host veth.
///
/// # Errors
/// `ip neigh` failing.
pub fn pin_neighbour(pod_ns: &Netns, ip: std::net::Ipv4Addr, mac: &str) -> anyhow::Result<()> {
    let ip = ip.to_string();
    pod_ns.ip(&["neigh", "replace", &ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"])?;
    Ok(())
}
