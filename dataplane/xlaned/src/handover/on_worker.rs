//! The running xlaned's side of a handover, on each worker between bursts: what the
//! worker's UMEMs and sockets are, with duplicates of their descriptors.

use super::{PacketOffer, SocketOffer, WorkerOffer};
use crate::worker::NodePort;
use std::os::fd::OwnedFd;
use xlane_engine::Driver;
use xlane_fib::FibReader;
use xlane_xdp::packet::FanoutMode;
use xlane_xdp::port::PortHandover;
use xlane_xdp::xsk::Umems;
use xlane_xdp::xsk::handover::{SocketHandover, UmemHandover};

/// On a worker, between bursts: its UMEMs and sockets.
pub(super) fn offer_worker(
    d: &mut Driver<Umems, NodePort>,
    fib: &mut FibReader,
) -> Result<(WorkerOffer, Vec<OwnedFd>), String> {
    drain_udp_receivers(d, fib);
    stock_for_the_gap(d);
    let mut w = WorkerOffer::default();
    let mut socket_fds = Vec::new();
    // The guest's port is rebuilt by its endpoint's request; the port's socket and
    // connection go separately (`park_and_collect`).
    for p in d.ports() {
        if let NodePort::Xdp(x) = p {
            let PortHandover { umem, socket, fill_target, fill_base, udp_rx } =
                x.hand_over().map_err(|e| e.to_string())?;
            let SocketHandover { fd, state } = socket;
            w.sockets.push(SocketOffer { umem, state, fill_target, fill_base, udp_rx: udp_rx.is_some() });
            socket_fds.extend(fd);
            socket_fds.extend(udp_rx);
        }
    }
    let mut packet_fds = Vec::new();
    for (ifindex, fanout, fd) in packet_sockets(d)? {
        w.packets.push(PacketOffer { ifindex, fanout });
        packet_fds.push(fd);
    }
    let mut fds = Vec::new();
    for u in d.mem_mut().hand_over().map_err(|e| e.to_string())? {
        w.umems.push(u.map(|UmemHandover { memory, registration, state }| {
            fds.extend([memory, registration]);
            state
        }));
    }
    fds.extend(socket_fds);
    fds.extend(packet_fds);
    Ok((w, fds))
}

/// On a worker: duplicates of its AF_PACKET sockets, by interface index. A
/// transmit-only socket holds nothing: a new worker opens its own.
pub(crate) fn packet_sockets(d: &Driver<Umems, NodePort>) -> Result<Vec<(u32, FanoutMode, OwnedFd)>, String> {
    let mut out = Vec::new();
    for p in d.ports() {
        if let NodePort::Packet(p) = p
            && !p.transmit_only()
        {
            let (fd, fanout) = p.hand_over().map_err(|e| e.to_string())?;
            out.push((p.ifindex(), fanout, fd));
        }
    }
    Ok(out)
}

/// Give the AF_XDP sockets' fill rings what the shared UMEM can spare, evenly: no
/// process reads the rings until the new one has rebuilt its tables, and a ring that
/// runs dry meanwhile drops what arrives. The new process finds them stocked.
fn stock_for_the_gap(d: &mut Driver<Umems, NodePort>) {
    let (ports, mem) = d.ports_and_mem();
    let sockets = ports.iter().filter(|p| matches!(p, NodePort::Xdp(_))).count();
    if sockets == 0 {
        return;
    }
    // Half the free frames: the other half stays for what the new process sends.
    let spare = mem.shared().free_frames() / 2 / sockets;
    let budget = u32::try_from(spare).unwrap_or(u32::MAX);
    for p in ports {
        if let NodePort::Xdp(x) = p {
            x.stock_for_handover(mem, budget);
        }
    }
}

/// Hand out what the uplink's UDP receivers have read and not handed out yet, reading
/// nothing more: what their sockets hold stays there for the next process, which
/// inherits the sockets. Bounded: a receiver holds at most a few hundred datagrams, at
/// most a burst of them handed out per poll.
fn drain_udp_receivers(d: &mut Driver<Umems, NodePort>, fib: &mut FibReader) {
    hold_udp_reads(d, true);
    for _ in 0..64 {
        if !d.ports().iter().any(|p| matches!(p, NodePort::Xdp(x) if x.udp_pending())) {
            return;
        }
        d.poll(fib.current());
    }
    tracing::warn!("UDP receivers still held datagrams when the worker parked: they are lost");
}

/// Stop (or, the handover abandoned, resume) the UDP receivers' reads.
pub(super) fn hold_udp_reads(d: &mut Driver<Umems, NodePort>, hold: bool) {
    for p in d.ports_mut() {
        if let NodePort::Xdp(x) = p {
            x.hold_udp_reads(hold);
        }
    }
}
