//! The burst pipeline: classify → (ARP proxy | VXLAN decap | IPv4 checks) → LPM → rewrite
//! (local delivery or VXLAN encap), one verdict per frame.
//!
//! A burst comes from one ingress port. Stage 1 parses and validates every frame and
//! answers ARP in place; stage 2 looks up all surviving destinations in one burst LPM
//! call; stage 3 rewrites each frame in place (MACs, TTL, outer headers pushed into the
//! headroom). Nothing allocates; the only per-packet state is a few stack arrays.
//!
//! A packet whose TTL runs out, or that is too large for the overlay with DF set, is
//! turned into an ICMP error in place ([`crate::icmp`]). One from a pod or the host port
//! goes straight back out of its ingress port (its sender is behind it; no lookup); one
//! raised after decapsulation joins stage 2 towards its source, usually a pod on the
//! node it came from, and stage 3 re-encapsulates it: the node originates it, so the
//! no-transit rule does not apply.

use crate::counters::{CoreCounters, CounterSnapshot};
use crate::drop::DropReason;
use crate::flow;
use crate::frame::Frame;
use crate::icmp::{Clock, IcmpError, Originator, Refusal};
use crate::offload::OffloadMeta;
use core::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;
use xlane_fib::{Endpoint, Fib, NextHop, NodeConfig, PortId, PortRole, Remote};
use xlane_wire::{
    ARP_ETH_IPV4_LEN, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, IpProtocol, Ipv4Packet, Mac, UDP_HEADER_LEN, UdpPacket,
    VXLAN_HEADER_LEN, VXLAN_OVERHEAD, VxlanPacket, checksum, ethertype,
};

/// Largest burst the pipeline takes.
pub const BURST: usize = 64;

/// What happens to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit on this port.
    Tx(PortId),
    /// Drop and count.
    Drop(DropReason),
}

const ETH: usize = ETHERNET_HEADER_LEN;

/// One worker's pipeline: its counters and its ICMP error state.
#[derive(Debug)]
pub struct Pipeline {
    counters: Arc<CoreCounters>,
    icmp: Originator,
}

impl Pipeline {
    /// A pipeline adding to `counters` (one per core).
    #[must_use]
    pub fn new(counters: Arc<CoreCounters>) -> Self {
        Self::with_clock(counters, Clock::Monotonic(Instant::now()))
    }

    /// A pipeline whose ICMP rate limits read `clock` (a test's, to step time).
    #[must_use]
    pub fn with_clock(counters: Arc<CoreCounters>, clock: Clock) -> Self {
        Self { counters, icmp: Originator::new(clock) }
    }

    /// This pipeline's counters.
    #[must_use]
    pub fn counters(&self) -> &Arc<CoreCounters> {
        &self.counters
    }

    /// Process a burst of at most [`BURST`] frames received on `ingress`, writing one
    /// verdict per frame into `verdicts[..frames.len()]`. Frames are rewritten in place.
    ///
    /// # Panics
    /// If `frames` is longer than [`BURST`] or `verdicts` shorter than `frames`.
    pub fn process(&mut self, fib: &Fib, ingress: PortId, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        self.process_with::<false>(fib, ingress, frames, &mut [], verdicts);
    }

    /// [`process`](Self::process) for frames from a port that keeps offloads, with their
    /// metadata: a TCP super-packet passes the MTU check by the size of the segments it
    /// will be cut into, not its own, and is counted once (and in `gso_packets`). A frame
    /// turned into an ICMP error here loses its metadata (`metas[i]` reset).
    ///
    /// # Panics
    /// As [`process`](Self::process), or if `metas` is shorter than `frames`.
    pub fn process_offloaded(
        &mut self,
        fib: &Fib,
        ingress: PortId,
        frames: &mut [Frame<'_>],
        metas: &mut [OffloadMeta],
        verdicts: &mut [Verdict],
    ) {
        assert!(metas.len() >= frames.len(), "one metadata per frame");
        self.process_with::<true>(fib, ingress, frames, metas, verdicts);
    }

    /// The pipeline; `OFFLOADED` is a constant, so [`process`](Self::process) is the loop
    /// without any of the metadata's tests. With two instances, LLVM stopped inlining
    /// the stages (from_pod, decap, deliver, encap became calls: +7% instructions on
    /// encap, callgrind): they are `inline(always)`.
    #[inline(always)]
    fn process_with<const OFFLOADED: bool>(
        &mut self,
        fib: &Fib,
        ingress: PortId,
        frames: &mut [Frame<'_>],
        metas: &mut [OffloadMeta],
        verdicts: &mut [Verdict],
    ) {
        let n = frames.len();
        assert!(n <= BURST && verdicts.len() >= n, "burst of {n} frames, {} verdicts", verdicts.len());
        let mut tally = CounterSnapshot { rx: n as u64, bursts: 1, ..CounterSnapshot::default() };
        if OFFLOADED {
            tally.gso_packets = metas[..n].iter().filter(|m| m.gso.is_some()).count() as u64;
        }
        // Frames still routing after stage 1 (index and destination), compacted so stage 2
        // looks up only those.
        let mut pending = [0u8; BURST];
        let mut keys = [0u32; BURST];
        let mut m = 0;
        let mut route = |i: usize, dst: u32| {
            #[expect(clippy::cast_possible_truncation, reason = "i < BURST = 64")]
            let idx = i as u8;
            pending[m] = idx;
            keys[m] = dst;
            m += 1;
            Verdict::Drop(DropReason::NoRoute)
        };
        // A burst has one ingress: everything routed in it came from a pod (or the host
        // port), or everything was decapsulated from the overlay.
        let role = fib.port(ingress);
        let from_overlay = role == PortRole::Uplink;
        // Source of ICMP errors; without it none are sent.
        let gateway = fib.node().and_then(|n| n.gateway_ip);
        // Read once per burst, and only when an error is about to be sent.
        let mut now = None;
        // Bit i: frame i is an ICMP error this node made, routing to its destination
        // (only a burst from the overlay has any: the others are answered in stage 1).
        let mut originated = 0u64;

        // Stage 1: classify, validate, ARP proxy, decap.
        match (role, fib.node()) {
            // Without a node config only local delivery works; encap checks for it.
            (PortRole::Pod(ep) | PortRole::Host(ep), _) => {
                let check_source = matches!(role, PortRole::Pod(_));
                for i in 0..n {
                    verdicts[i] = match from_pod(&mut frames[i], &ep, check_source) {
                        Ok(FromPod::Arp) => {
                            tally.arp_replies += 1;
                            Verdict::Tx(ingress)
                        }
                        Ok(FromPod::Ipv4(d)) => route(i, d),
                        Err(DropReason::TtlExpired) => {
                            let err = (IcmpError::TimeExceeded, DropReason::TtlExpired);
                            if OFFLOADED {
                                metas[i] = OffloadMeta::default();
                            }
                            self.answer_sender(&mut frames[i], ingress, role, err, gateway, &mut now, &mut tally)
                        }
                        Err(r) => Verdict::Drop(r),
                    };
                }
            }
            (PortRole::Uplink, Some(node)) => {
                for i in 0..n {
                    verdicts[i] = match decap(&mut frames[i], node) {
                        Ok(d) => route(i, d),
                        Err(r @ (DropReason::TtlExpired | DropReason::MtuExceeded)) => {
                            let error = if r == DropReason::TtlExpired {
                                IcmpError::TimeExceeded
                            } else {
                                IcmpError::FragNeeded { mtu: node.pod_mtu() }
                            };
                            match self.originate(&mut frames[i], (error, r), gateway, &mut now, &mut tally) {
                                Ok(to) => {
                                    originated |= 1 << i;
                                    route(i, u32::from(to))
                                }
                                Err(v) => v,
                            }
                        }
                        Err(r) => Verdict::Drop(r),
                    };
                }
            }
            (PortRole::Uplink, None) => verdicts[..n].fill(Verdict::Drop(DropReason::NotConfigured)),
            (PortRole::Unknown, _) => verdicts[..n].fill(Verdict::Drop(DropReason::UnknownPort)),
        }

        // Stage 2: one burst lookup for every frame still routing.
        let mut hops = [None; BURST];
        fib.lpm().lookup_burst(&keys[..m], &mut hops[..m]);

        // Stage 3: rewrite.
        for (&i, hop) in pending[..m].iter().zip(&hops[..m]) {
            let i = usize::from(i);
            // Tested only where it matters, and after the burst-wide `originated != 0`:
            // this loop is the hot path (callgrind).
            let made_here = || originated & (1 << i) != 0;
            verdicts[i] = match hop.map(NextHop::decode) {
                None => Verdict::Drop(DropReason::NoRoute),
                Some(NextHop::Unresolved) => Verdict::Drop(DropReason::UnresolvedVtep),
                Some(NextHop::Endpoint(port)) => match fib.port(port) {
                    PortRole::Pod(ep) | PortRole::Host(ep) => {
                        if originated != 0 && made_here() {
                            // It starts here: no TTL to decrement, no traffic to count.
                            set_macs(frames[i].data_mut(), ep.mac, ep.gateway_mac);
                        } else {
                            deliver(&mut frames[i], &ep);
                            if from_overlay {
                                tally.decapsulated += 1;
                            } else {
                                tally.local += 1;
                            }
                        }
                        Verdict::Tx(port)
                    }
                    _ => Verdict::Drop(DropReason::UnknownPort),
                },
                // The node originates its errors: they are not transit.
                Some(NextHop::Remote(r)) if from_overlay && made_here() => encap_error(&mut frames[i], fib, r),
                Some(NextHop::Remote(_)) if from_overlay => Verdict::Drop(DropReason::OverlayTransit),
                Some(NextHop::Remote(r)) => match (fib.node(), fib.remote(r)) {
                    (Some(node), Some(remote)) => {
                        let d = frames[i].data();
                        let ip_len = if OFFLOADED { segment_ip_len(d, &metas[i]) } else { ip_total_len(d) };
                        match encap(&mut frames[i], node, remote, ip_len) {
                            Ok(()) => {
                                tally.encapsulated += 1;
                                Verdict::Tx(node.uplink_port)
                            }
                            // Only pods and the host port reach here (not from_overlay).
                            Err(DropReason::MtuExceeded) => {
                                let err = (IcmpError::FragNeeded { mtu: node.pod_mtu() }, DropReason::MtuExceeded);
                                if OFFLOADED {
                                    metas[i] = OffloadMeta::default();
                                }
                                self.answer_sender(&mut frames[i], ingress, role, err, gateway, &mut now, &mut tally)
                            }
                            Err(reason) => Verdict::Drop(reason),
                        }
                    }
                    (None, _) => Verdict::Drop(DropReason::NotConfigured),
                    (_, None) => Verdict::Drop(DropReason::UnresolvedVtep),
                },
            };
        }

        for v in &verdicts[..n] {
            match v {
                Verdict::Tx(_) => tally.tx += 1,
                Verdict::Drop(r) => tally.drops[r.index()] += 1,
            }
        }
        self.counters.add(&tally);
    }

    /// Make `error` from `source` (none without a gateway: no errors) out of a frame
    /// dropped for `reason` and return where it goes (the offending packet's source),
    /// counting it; or the frame's drop, with no error.
    #[cold]
    fn originate(
        &mut self,
        f: &mut Frame<'_>,
        (error, reason): (IcmpError, DropReason),
        source: Option<Ipv4Addr>,
        now: &mut Option<u64>,
        tally: &mut CounterSnapshot,
    ) -> Result<Ipv4Addr, Verdict> {
        let Some(source) = source else {
            return Err(Verdict::Drop(reason));
        };
        match self.icmp.originate(f, error, source, now) {
            Ok(to) => {
                // The offending frame is still a drop for its reason; the error is a
                // new frame, counted in `tx` or as a drop wherever it ends.
                tally.drops[reason.index()] += 1;
                tally.icmp_errors += 1;
                Ok(to)
            }
            Err(refusal) => {
                tally.icmp_rate_limited += u64::from(refusal == Refusal::RateLimited);
                Err(Verdict::Drop(reason))
            }
        }
    }

    /// Answer a frame from a pod or the host port (`role`) with `error`: its sender is
    /// behind the port it came in by (a pod sends only as itself; the host owns whatever
    /// address it sends from), so the error goes straight back out of it.
    ///
    /// The host holds the gateway address itself and drops a packet from its own address
    /// as a martian, so the engine has no address of its own to answer the host from.
    /// Fragmentation needed, which path MTU discovery cannot do without, comes from the
    /// offending packet's destination (the kernel matches it to the route and socket by
    /// the quoted header, not by its source); time exceeded is not sent (the host's
    /// traceroute shows no reply for this hop rather than a wrong address).
    #[cold]
    #[expect(clippy::too_many_arguments, reason = "the burst's state, passed down to a cold helper")]
    fn answer_sender(
        &mut self,
        f: &mut Frame<'_>,
        ingress: PortId,
        role: PortRole,
        error: (IcmpError, DropReason),
        gateway: Option<Ipv4Addr>,
        now: &mut Option<u64>,
        tally: &mut CounterSnapshot,
    ) -> Verdict {
        let (source, ep) = match role {
            PortRole::Pod(ep) => (gateway, ep),
            PortRole::Host(ep) => match error.0 {
                IcmpError::FragNeeded { .. } => (gateway.map(|_| ipv4_dst(f.data())), ep),
                IcmpError::TimeExceeded => return Verdict::Drop(error.1),
            },
            PortRole::Uplink | PortRole::Unknown => return Verdict::Drop(error.1),
        };
        match self.originate(f, error, source, now, tally) {
            Ok(_) => {
                set_macs(f.data_mut(), ep.mac, ep.gateway_mac);
                Verdict::Tx(ingress)
            }
            Err(v) => v,
        }
    }
}

/// Encapsulate an ICMP error this node made towards the node its destination lives
/// on, its TTL as it was made (it starts here).
#[cold]
fn encap_error(f: &mut Frame<'_>, fib: &Fib, remote: u32) -> Verdict {
    // The node is configured: the error was made after decapsulation.
    let (Some(node), Some(remote)) = (fib.node(), fib.remote(remote)) else {
        return Verdict::Drop(DropReason::UnresolvedVtep);
    };
    if f.head() < VXLAN_OVERHEAD {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    match push_vxlan(f, node, remote) {
        Ok(()) => Verdict::Tx(node.uplink_port),
        Err(reason) => Verdict::Drop(reason),
    }
}

enum FromPod {
    /// ARP request answered in place.
    Arp,
    /// Valid IPv4 to this destination.
    Ipv4(u32),
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
/// Classify a frame from a pod or the host port. `check_source`: anti-spoofing (pods
/// only; the host sends from any of its addresses).
fn from_pod(f: &mut Frame<'_>, ep: &Endpoint, check_source: bool) -> Result<FromPod, DropReason> {
    if f.len() < ETH {
        return Err(DropReason::Truncated);
    }
    match be16(f.data(), 12) {
        ethertype::IPV4 => {
            // A packet whose TTL ran out gets an error back: only if the pod sent it as
            // itself, as any packet routed on.
            match check_ipv4(f, ETH) {
                Ok(_) | Err(DropReason::TtlExpired)
                    if check_source && f.data()[ETH + 12..ETH + 16] != ep.ip.octets() =>
                {
                    Err(DropReason::SpoofedSource)
                }
                Ok(dst) => Ok(FromPod::Ipv4(dst)),
                Err(r) => Err(r),
            }
        }
        ethertype::ARP => arp_proxy(f.data_mut(), ep, check_source).map(|()| FromPod::Arp),
        _ => Err(DropReason::NotIpv4),
    }
}

/// Validate the IPv4 packet at `off`, trim Ethernet padding after it, and return its
/// destination. TTL must allow one more hop.
#[inline(always)]
fn check_ipv4(f: &mut Frame<'_>, off: usize) -> Result<u32, DropReason> {
    let ip = Ipv4Packet::new_checked(&f.data()[off..]).map_err(|_| DropReason::Ipv4Malformed)?;
    if ip.version() != 4 {
        return Err(DropReason::Ipv4Malformed);
    }
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4Checksum);
    }
    if ip.hop_limit() <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let dst = u32::from(ip.dst_addr());
    let total = usize::from(ip.total_len());
    f.truncate(off + total);
    Ok(dst)
}

/// Byte offsets in an Ethernet/IPv4 ARP body (RFC 826 with hlen 6, plen 4).
mod arp {
    pub(super) const HTYPE: usize = 0;
    pub(super) const PTYPE: usize = 2;
    pub(super) const HLEN: usize = 4;
    pub(super) const PLEN: usize = 5;
    pub(super) const OPER: usize = 6;
    pub(super) const SHA: core::ops::Range<usize> = 8..14;
    pub(super) const SPA: core::ops::Range<usize> = 14..18;
    pub(super) const THA: core::ops::Range<usize> = 18..24;
    pub(super) const TPA: core::ops::Range<usize> = 24..28;
    pub(super) const REQUEST: u16 = 1;
    pub(super) const REPLY: u16 = 2;
}

/// Answer an ARP request in place with the gateway (host-side) MAC.
///
/// Written at fixed offsets instead of through smoltcp's `ArpPacket`: its accessors
/// derive each field's range from hlen/plen at run time and its setters are out-of-line
/// `memmove` calls, which the `pipeline/arp_proxy` bench showed at ~22 ns/frame. Once
/// hlen = 6 and plen = 4 are checked the layout is fixed.
#[inline]
fn arp_proxy(data: &mut [u8], ep: &Endpoint, check_source: bool) -> Result<(), DropReason> {
    let Some(body) = data.get(ETH..ETH + ARP_ETH_IPV4_LEN) else {
        return Err(DropReason::ArpMalformed);
    };
    if be16(body, arp::HTYPE) != 1
        || be16(body, arp::PTYPE) != ethertype::IPV4
        || body[arp::HLEN] != 6
        || body[arp::PLEN] != 4
    {
        return Err(DropReason::ArpMalformed);
    }
    if be16(body, arp::OPER) != arp::REQUEST {
        return Err(DropReason::ArpNotRequest);
    }
    let sender_ip: [u8; 4] = body[arp::SPA].try_into().expect("4 bytes");
    let target_ip: [u8; 4] = body[arp::TPA].try_into().expect("4 bytes");
    if target_ip == ep.ip.octets() {
        return Err(DropReason::ArpOwnAddress);
    }
    // A pod may only ask as itself (or as 0.0.0.0, an RFC 5227 probe), from its own
    // MAC: otherwise it could aim replies at another station.
    if check_source && ((sender_ip != ep.ip.octets() && sender_ip != [0; 4]) || body[arp::SHA] != ep.mac.0) {
        return Err(DropReason::SpoofedSource);
    }
    let requester: [u8; 6] = body[arp::SHA].try_into().expect("6 bytes");
    let body = &mut data[ETH..ETH + ARP_ETH_IPV4_LEN];
    body[arp::OPER..arp::OPER + 2].copy_from_slice(&arp::REPLY.to_be_bytes());
    body[arp::THA].copy_from_slice(&requester);
    body[arp::TPA].copy_from_slice(&sender_ip);
    body[arp::SHA].copy_from_slice(&ep.gateway_mac.0);
    body[arp::SPA].copy_from_slice(&target_ip);
    data[0..6].copy_from_slice(&requester);
    data[6..12].copy_from_slice(&ep.gateway_mac.0);
    Ok(())
}

/// Strip and check the outer headers; returns the inner destination address.
#[inline(always)]
fn decap(f: &mut Frame<'_>, node: &NodeConfig) -> Result<u32, DropReason> {
    let data = f.data();
    if data.len() < ETH {
        return Err(DropReason::Truncated);
    }
    if be16(data, 12) != ethertype::IPV4 {
        return Err(DropReason::NotVxlan);
    }
    let ip = Ipv4Packet::new_checked(&data[ETH..]).map_err(|_| DropReason::Ipv4Malformed)?;
    if ip.version() != 4 {
        return Err(DropReason::Ipv4Malformed);
    }
    if ip.next_header() != IpProtocol::Udp || ip.dst_addr() != node.vtep_ip {
        return Err(DropReason::NotVxlan);
    }
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4Checksum);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::VxlanFragment);
    }
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|_| DropReason::Truncated)?;
    if udp.dst_port() != node.vxlan_port {
        return Err(DropReason::NotVxlan);
    }
    // The outer UDP checksum is not verified (RFC 7348 §5 lets a VTEP skip it): the inner
    // packet's own checksums cover what the pod receives, and GRO checks them before it
    // merges. Verifying would cost a pass over every frame, and would refuse what a
    // sender leaves for the NIC to finish when no NIC does (a veth underlay: the kernel's
    // VXLAN and UDP GSO both send a partial checksum there).
    let vx = VxlanPacket::new_checked(udp.payload()).map_err(|_| DropReason::Truncated)?;
    if !vx.vni_valid() {
        return Err(DropReason::VxlanNoVni);
    }
    if vx.vni() != node.vni {
        return Err(DropReason::VxlanWrongVni);
    }
    let inner = vx.payload();
    if inner.len() < ETH {
        return Err(DropReason::Truncated);
    }
    if inner[0..6] != *node.vtep_mac.as_bytes() {
        return Err(DropReason::VxlanInnerMac);
    }
    if be16(inner, 12) != ethertype::IPV4 {
        return Err(DropReason::NotIpv4);
    }
    let outer = ETH + usize::from(ip.header_len()) + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
    let inner_end = ETH + usize::from(ip.total_len());
    f.truncate(inner_end);
    f.pull_head(outer);
    let dst = check_ipv4(f, ETH)?;
    if ip_total_len(f.data()) > node.pod_mtu() {
        return Err(DropReason::MtuExceeded);
    }
    Ok(dst)
}

#[inline]
fn ip_total_len(frame: &[u8]) -> u16 {
    be16(frame, ETH + 2)
}

/// The IPv4 length of the packets a frame leaves as: a TCP super-packet's segments
/// (IPv4 and TCP headers and at most one segment of payload), or the frame's own.
/// What does not parse as a TCP super-packet is measured whole (segmenting refuses it).
fn segment_ip_len(frame: &[u8], meta: &OffloadMeta) -> u16 {
    let total = ip_total_len(frame);
    let Some(gso) = meta.gso else { return total };
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    match frame.get(ETH + ihl + 12) {
        Some(&off) if frame[ETH + 9] == 6 => {
            let headers = ihl + usize::from(off >> 4) * 4;
            let seg = u16::try_from(headers).unwrap_or(u16::MAX).saturating_add(gso.size);
            seg.min(total)
        }
        _ => total,
    }
}

fn ipv4_dst(frame: &[u8]) -> Ipv4Addr {
    let d: [u8; 4] = frame[ETH + 16..ETH + 20].try_into().expect("4 bytes");
    d.into()
}

/// Decrement the TTL and patch the header checksum (RFC 1624).
#[inline]
fn decrement_ttl(frame: &mut [u8]) {
    let ip = &mut frame[ETH..ETH + IPV4_HEADER_LEN];
    let old = be16(ip, 8);
    ip[8] -= 1;
    let new = be16(ip, 8);
    let c = checksum::update_word(be16(ip, 10), old, new);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Rewrite for delivery to a local pod: from the gateway MAC to the pod's MAC.
#[inline(always)]
fn deliver(f: &mut Frame<'_>, ep: &Endpoint) {
    let d = f.data_mut();
    d[0..6].copy_from_slice(ep.mac.as_bytes());
    d[6..12].copy_from_slice(ep.gateway_mac.as_bytes());
    decrement_ttl(d);
}

/// Route towards a remote node: MTU (`ip_len`: the IPv4 length of the packets that will
/// leave, the frame's own or a super-packet's segments'; checked before anything changes,
/// so an error can quote the packet as received), TTL, then [`push_vxlan`].
#[inline(always)]
fn encap(f: &mut Frame<'_>, node: &NodeConfig, remote: &Remote, ip_len: u16) -> Result<(), DropReason> {
    if ip_len > node.pod_mtu() {
        return Err(DropReason::MtuExceeded);
    }
    if f.head() < VXLAN_OVERHEAD {
        return Err(DropReason::NoHeadroom);
    }
    decrement_ttl(f.data_mut());
    push_vxlan(f, node, remote)
}

/// Inner MACs (our VTEP MAC → theirs, as the kernel's VXLAN device does), then the
/// outer headers in the headroom, which the caller has checked.
#[inline(always)]
fn push_vxlan(f: &mut Frame<'_>, node: &NodeConfig, remote: &Remote) -> Result<(), DropReason> {
    // A super-packet may be longer than 16 bits can say: its outer lengths are rewritten
    // per segment ([`crate::offload::push_outer`]).
    let inner_len = u16::try_from(f.len()).unwrap_or(u16::MAX);
    let port = {
        let d = f.data_mut();
        set_macs(d, remote.node.vtep_mac, node.vtep_mac);
        let h = flow::ipv4_flow_hash(&d[ETH..]);
        flow::source_port(h, node.src_port_min, node.src_port_max)
    };
    f.push_head(VXLAN_OVERHEAD);
    let out: &mut [u8; VXLAN_OVERHEAD] =
        (&mut f.data_mut()[..VXLAN_OVERHEAD]).try_into().expect("pushed exactly VXLAN_OVERHEAD bytes");
    remote.template.write(out, inner_len, port);
    Ok(())
}

#[inline]
fn set_macs(d: &mut [u8], dst: Mac, src: Mac) {
    d[0..6].copy_from_slice(dst.as_bytes());
    d[6..12].copy_from_slice(src.as_bytes());
}
