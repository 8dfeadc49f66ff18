//! What `xlanectl ports` shows of a port: its counters summed over the workers, with
//! what each kind adds (AF_XDP socket and UMEM, UDP offload sockets, AF_PACKET socket,
//! vhost-user device).

use crate::host::Host;
use crate::ports::{Port, PortKind};
use std::sync::atomic::Ordering::Relaxed;
use xlane_api::{PacketInfo, PortInfo, UdpGsoInfo, UdpRxInfo, UmemInfo, VhostUserInfo};
use xlane_fib::PortId;
use xlane_xdp::udp_gro::UdpRxTotals;
use xlane_xdp::xsk::TxChecksum;

impl<A> Port<A> {
    /// What `xlanectl ports` shows.
    pub(crate) fn info<H: Host<Attachment = A>>(&self, id: PortId) -> PortInfo {
        let (mut rx, mut tx, mut tx_dropped) = (0, 0, 0);
        for c in &self.counters {
            let (r, t, d) = c.get();
            (rx, tx, tx_dropped) = (rx + r, tx + t, tx_dropped + d);
        }
        let kernel = |f: fn(&xlane_xdp::xsk::SocketStats) -> u64| self.kernel().iter().map(|k| f(&k.get())).sum();
        let (mut packet, mut udp_gso_info, mut udp_rx_info, mut umem) = (None, None, None, None);
        let (queues, xdp_mode, zero_copy, vhost_user) = match &self.kind {
            PortKind::Xdp { attach, queues, zero_copy, own_umem, tx_checksum, udp_gso, udp_rx, udp_rx_tap, .. } => {
                let copied_in = self.counters.iter().map(|c| c.tx_copied.load(Relaxed)).sum();
                let partial_csum = self.counters.iter().map(|c| c.tx_partial_csum.load(Relaxed)).sum();
                let tx_checksum = (*tx_checksum != TxChecksum::Off).then(|| format!("{tx_checksum:?}").to_lowercase());
                umem = Some(UmemInfo { own: *own_umem, copied_in, tx_checksum, partial_csum });
                if !udp_gso.is_empty() {
                    let mut sum = UdpGsoInfo::default();
                    for s in udp_gso {
                        sum.super_packets += s.super_packets.load(Relaxed);
                        sum.datagrams += s.datagrams.load(Relaxed);
                        sum.failed += s.failed.load(Relaxed);
                    }
                    udp_gso_info = Some(sum);
                }
                udp_rx_info = (!udp_rx.is_empty()).then(|| {
                    let t: UdpRxTotals = udp_rx.iter().map(|s| s.totals()).sum();
                    UdpRxInfo {
                        messages: t.messages,
                        datagrams: t.datagrams,
                        in_place: t.in_place,
                        dropped: t.dropped,
                        kernel_dropped: t.kernel_dropped,
                        tap: *udp_rx_tap,
                    }
                });
                (*queues, H::xdp_mode(attach), *zero_copy, None)
            }
            PortKind::Packet { stats, .. } => {
                let mut sum = PacketInfo::default();
                for s in stats.iter().map(|s| s.get()) {
                    sum.rx_malformed += s.rx_malformed;
                    sum.rx_truncated += s.rx_truncated + s.rx_oversize;
                    sum.rx_kernel_dropped += s.rx_kernel_dropped;
                    sum.rx_no_buffer += s.rx_no_buffer;
                    sum.tx_errors += s.tx_errors;
                    sum.gro_merged += s.gro_merged;
                    sum.gro_segments += s.gro_segments;
                }
                packet = Some(sum);
                (u32::try_from(stats.len()).unwrap_or(u32::MAX), "none", false, None)
            }
            PortKind::VhostUser(v) => {
                let c = &v.io().counters;
                let info = VhostUserInfo {
                    socket: v.path().to_owned(),
                    connected: c.connected.load(Relaxed),
                    connections: c.connections.load(Relaxed),
                    from_guest: c.from_guest.load(Relaxed),
                    to_guest: c.to_guest.load(Relaxed),
                    malformed: c.malformed.load(Relaxed),
                    dropped: c.dropped.load(Relaxed),
                };
                (1, "none", false, Some(info))
            }
        };
        PortInfo {
            id: id.0,
            role: self.role.name().to_owned(),
            ifname: self.ifname.clone(),
            ip: self.ip,
            queues,
            xdp_mode: xdp_mode.to_owned(),
            zero_copy,
            rx,
            tx,
            tx_ring_full: tx_dropped,
            rx_fill_ring_empty: kernel(|k| k.rx_fill_ring_empty_descs),
            rx_ring_full: kernel(|k| k.rx_ring_full),
            rx_dropped: kernel(|k| k.rx_dropped),
            rx_invalid_descs: kernel(|k| k.rx_invalid_descs),
            tx_invalid_descs: kernel(|k| k.tx_invalid_descs),
            tx_ring_empty_descs: kernel(|k| k.tx_ring_empty_descs),
            vhost_user,
            packet,
            udp_gso: udp_gso_info,
            udp_rx: udp_rx_info,
            umem,
        }
    }
}
