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
use xlane_xdp::xsk::{BindMode, Umem, UmemSettings, wait_readable};

/// Forward with MAC swap on `dev` (in `ns`) until `stop`; returns the frames forwarded.
/// Steers what xlaned's pod program steers (ARP and IPv4 to 10.244.0.0/16).
///
/// # Errors
/// Attach or socket failures.
pub fn xlane_macswap(ns: &Netns, dev: &str, stop: &AtomicBool) -> anyhow::Result<u64> {
    forward(ns, dev, dev, "xlane_macswap", stop, |eth| {
        let (dst, src) = eth.split_at_mut(6);
        dst.swap_with_slice(src);
    })
}

/// Frames steered by the pod program from `from` (queue 0), their Ethernet addresses
/// (`rewrite` gets the first 12 bytes) rewritten, out of `to` (the same socket if it is
/// `from`), until `stop`: xlaned's socket code and its worker's loop shape (receive a
/// burst, rewrite, transmit, restock; sleep in poll(2) when idle), no pipeline. Returns
/// the frames sent.
fn forward(
    ns: &Netns,
    from: &str,
    to: &str,
    name: &str,
    stop: &AtomicBool,
    rewrite: impl Fn(&mut [u8]),
) -> anyhow::Result<u64> {
    let ifindex = ns.ifindex(from)?;
    ns.enter(|| -> anyhow::Result<u64> {
        let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
        let att = XdpAttachment::attach(ifindex, name, 1, Program::Pod(filter), ModePreference::Auto)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut umem = Umem::new(UmemSettings { frames: 8192, ..UmemSettings::default() })?;
        let mut rx = umem.open_port(from, 0, BindMode::Auto)?;
        let mut tx = if to == from { None } else { Some(umem.open_port(to, 0, BindMode::Auto)?) };
        att.insert_socket(0, rx.fd().as_fd())?;
        umem.refill(&mut rx, 2048, 0);
        let mut burst = [Packet::default(); 64];
        let mut bufs = [0u64; 64];
        let mut forwarded = 0u64;
        while !stop.load(Ordering::Relaxed) {
            umem.reap_completions(tx.as_mut().unwrap_or(&mut rx));
            let n = umem.receive(&mut rx, &mut burst);
            if n == 0 {
                tx.as_ref().unwrap_or(&rx).flush_tx(8);
                umem.refill(&mut rx, 2048, 64);
                wait_readable(&[rx.poll_fd()], 10)?;
                continue;
            }
            for (b, p) in bufs.iter_mut().zip(&burst[..n]) {
                *b = p.buf;
            }
            umem.buffers_mut(&bufs[..n], |frames| {
                for (buf, p) in frames.iter_mut().zip(&burst) {
                    rewrite(&mut buf[p.head as usize..][..12]);
                }
            });
            let out = tx.as_mut().unwrap_or(&mut rx);
            let sent = umem.transmit(out, &burst[..n]);
            for p in &burst[sent..n] {
                umem.release(p.buf);
            }
            out.flush_tx(8);
            forwarded += sent as u64;
            umem.refill(&mut rx, 2048, 64);
        }
        if let Some(tx) = tx {
            umem.close_port(tx);
        }
        umem.close_port(rx);
        Ok(forwarded)
    })?
}

/// Both directions of one node of the two-node path: IPv4 frames steered (by the pod
/// program, as xlaned's) from the pod's host veth go out of the uplink with the
/// addresses of `to_uplink`, and those from the uplink out of the pod's veth with the
/// addresses of `to_pod`; anything else (ARP: the pods' gateways are static entries)
/// is dropped. One UMEM, one thread, xlaned's worker shape and idle policy — so pod-to-pod TCP and
/// request/response run over it, not only a one-way flood. Returns the frames sent.
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
    let header = |(dst, src): (Mac, Mac)| {
        let mut h = [0u8; 12];
        h[..6].copy_from_slice(&dst.0);
        h[6..].copy_from_slice(&src.0);
        h
    };
    let headers = [header(to_uplink), header(to_pod)];
    let ifindexes = [ns.ifindex(pod_if)?, ns.ifindex(uplink)?];
    ns.enter(|| -> anyhow::Result<u64> {
        let filter = PodFilter { cluster: [10, 244, 0, 0].into(), prefix_len: 16 };
        let mut umem = Umem::new(UmemSettings { frames: 8192, ..UmemSettings::default() })?;
        let mut ports = Vec::new();
        let mut attachments = Vec::new();
        for (dev, ifindex) in [pod_if, uplink].into_iter().zip(ifindexes) {
            let att = XdpAttachment::attach(ifindex, "xlane_relay", 1, Program::Pod(filter), ModePreference::Auto)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut port = umem.open_port(dev, 0, BindMode::Auto)?;
            att.insert_socket(0, port.fd().as_fd())?;
            umem.refill(&mut port, 2048, 0);
            ports.push(port);
            attachments.push(att);
        }
        let mut burst = [Packet::default(); 64];
        let mut bufs = [0u64; 64];
        let mut keep = [false; 64];
        let mut out = [Packet::default(); 64];
        let mut forwarded = 0u64;
        let mut idle = xlane_engine::Idle::new(false);
        while !stop.load(Ordering::Relaxed) {
            let mut work = 0;
            for from in 0..2 {
                let to = 1 - from;
                umem.reap_completions(&mut ports[to]);
                let n = umem.receive(&mut ports[from], &mut burst);
                if n == 0 {
                    continue;
                }
                work += n;
                for (b, p) in bufs.iter_mut().zip(&burst[..n]) {
                    *b = p.buf;
                }
                umem.buffers_mut(&bufs[..n], |frames| {
                    for ((buf, p), k) in frames.iter_mut().zip(&burst).zip(&mut keep) {
                        let eth = &mut buf[p.head as usize..][..14];
                        *k = eth[12..14] == [0x08, 0x00];
                        eth[..12].copy_from_slice(&headers[from]);
                    }
                });
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
                forwarded += sent as u64;
                umem.refill(&mut ports[from], 2048, 64);
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
        drop(attachments);
        Ok(forwarded)
    })?
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
