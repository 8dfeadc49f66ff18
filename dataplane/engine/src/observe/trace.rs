//! Packet trace (as VPP's `trace add` / `show trace`): for each frame that matches a
//! filter, a fixed-size [`TraceRecord`] of what the pipeline saw and decided.
//!
//! The record is taken around the real pipeline, not re-derived: the frame's headers are
//! read before [`Pipeline::process`](crate::Pipeline::process), its verdict is the one the
//! pipeline wrote (and the driver's, for a frame no port can take), the rewrite is read
//! from the frame as it leaves, and the route is the table's answer for the destination
//! the pipeline looked up. So a trace can never disagree with forwarding, whatever the
//! pipeline learns to do.
//!
//! Records go to one bounded [`TraceBuffer`] the workers share: its capacity is the
//! trace's frame count, claimed with one atomic add per traced frame, so memory is fixed
//! when the trace starts and nothing allocates per frame.

use super::headers::{self, Headers, Transport};
use crate::drop::DropReason;
use crate::pipeline::Verdict;
use core::net::Ipv4Addr;
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use xlane_fib::{Fib, NextHop, PortId, PortRole};

/// Largest trace (frames): bounds the memory a trace takes.
pub const MAX_TRACE: usize = 100_000;

/// Which frames a filter selects, by their (inner) headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameMatch {
    /// Source or destination IPv4 address in this network.
    Net {
        /// Network address.
        addr: Ipv4Addr,
        /// Prefix length.
        len: u8,
    },
    /// This IP protocol (1 ICMP, 6 TCP, 17 UDP, …).
    Proto(u8),
    /// ARP.
    Arp,
    /// TCP or UDP with this source or destination port.
    L4Port(u16),
}

/// A filter's text was not a CIDR, an address, a protocol name or a port number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad match {0:?}: expected a CIDR (10.244.0.0/16), an address, icmp|tcp|udp|arp, or a port number")]
pub struct BadMatch(pub String);

impl core::str::FromStr for FrameMatch {
    type Err = BadMatch;

    fn from_str(s: &str) -> Result<Self, BadMatch> {
        let bad = || BadMatch(s.to_owned());
        Ok(match s.to_ascii_lowercase().as_str() {
            "icmp" => Self::Proto(1),
            "tcp" => Self::Proto(6),
            "udp" => Self::Proto(17),
            "arp" => Self::Arp,
            t if t.contains('.') => {
                let (a, l) = t.split_once('/').unwrap_or((t, "32"));
                let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
                let len: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
                if u32::from(addr) & !mask(len) != 0 {
                    return Err(bad());
                }
                Self::Net { addr, len }
            }
            t => Self::L4Port(t.parse().map_err(|_| bad())?),
        })
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

impl FrameMatch {
    /// Whether a frame with these headers matches.
    #[must_use]
    pub fn matches(&self, h: &Headers) -> bool {
        match *self {
            Self::Net { addr, len } => {
                let m = mask(len);
                let within = |a: Ipv4Addr| u32::from(a) & m == u32::from(addr);
                h.ipv4.is_some_and(|ip| within(ip.src) || within(ip.dst))
                    || h.arp.is_some_and(|a| within(a.sender_ip) || within(a.target_ip))
            }
            Self::Proto(p) => h.ipv4.is_some_and(|ip| ip.proto == p),
            Self::Arp => h.arp.is_some(),
            Self::L4Port(p) => matches!(h.transport, Transport::Ports { src, dst } if src == p || dst == p),
        }
    }
}

/// Which frames to trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceFilter {
    /// Only frames received on this port.
    pub port: Option<PortId>,
    /// Only frames whose headers match.
    pub frames: Option<FrameMatch>,
}

/// What the ingress port is, as the pipeline saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// A pod's port (its source address is checked).
    Pod(Ipv4Addr),
    /// The host port.
    Host(Ipv4Addr),
    /// The uplink (overlay traffic).
    Uplink,
    /// A port with no role.
    Unknown,
}

/// The pipeline stage that decided a frame's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Classification and validation (and decap on the uplink, and the ARP proxy).
    Classify,
    /// The route lookup.
    Route,
    /// The rewrite (local delivery, encap).
    Rewrite,
    /// Placement on an egress port (the driver).
    Egress,
}

/// The stage that drops a frame for `reason`, received on a port of role `ingress`.
/// Exhaustive on purpose: a new reason must say where it happens.
#[must_use]
pub fn drop_stage(reason: DropReason, ingress: Ingress) -> Stage {
    use DropReason as R;
    let uplink = ingress == Ingress::Uplink;
    match reason {
        R::Truncated
        | R::NotIpv4
        | R::Ipv4Malformed
        | R::Ipv4Checksum
        | R::TtlExpired
        | R::SpoofedSource
        | R::ArpMalformed
        | R::ArpNotRequest
        | R::ArpOwnAddress
        | R::NotVxlan
        | R::VxlanFragment
        | R::VxlanNoVni
        | R::VxlanWrongVni
        | R::VxlanInnerMac => Stage::Classify,
        R::UnknownPort if ingress == Ingress::Unknown => Stage::Classify,
        R::NotConfigured | R::MtuExceeded if uplink => Stage::Classify,
        R::NoRoute | R::UnresolvedVtep | R::OverlayTransit | R::UnknownPort => Stage::Route,
        R::NotConfigured | R::MtuExceeded | R::NoHeadroom => Stage::Rewrite,
        R::NoEgressPort | R::SuperPacket => Stage::Egress,
    }
}

/// Where the table sends a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteHop {
    /// No route.
    None,
    /// A route whose remote node is not known.
    Unresolved,
    /// A local port (pod or host).
    Local(PortId),
    /// A remote node's VTEP.
    Remote(Ipv4Addr),
}

/// A route lookup: the destination looked up and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    /// The (inner) destination address.
    pub dst: Ipv4Addr,
    /// The next hop.
    pub hop: RouteHop,
}

/// One traced frame. `Copy` and fixed-size: no strings, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRecord {
    /// Order among the trace's frames (0-based, across workers).
    pub seq: u64,
    /// When its burst was forwarded, nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// The worker that forwarded it.
    pub worker: u16,
    /// The port it was received on.
    pub ingress: PortId,
    /// That port's role.
    pub role: Ingress,
    /// The frame as received.
    pub input: Headers,
    /// The route looked up, if the frame got that far.
    pub route: Option<RouteLookup>,
    /// The frame as transmitted (`None` for a drop).
    pub output: Option<Headers>,
    /// What became of it.
    pub verdict: Verdict,
}

impl TraceRecord {
    /// The stage that decided: for a transmitted frame, the last one it went through.
    #[must_use]
    pub fn stage(&self) -> Stage {
        match self.verdict {
            Verdict::Drop(r) => drop_stage(r, self.role),
            Verdict::Tx(_) if self.route.is_some() => Stage::Rewrite,
            Verdict::Tx(_) => Stage::Classify,
        }
    }
}

/// The records of one trace, shared by the workers (writers) and the control thread.
#[derive(Debug)]
pub struct TraceBuffer {
    records: ArrayQueue<TraceRecord>,
    claimed: AtomicU64,
    limit: u64,
}

impl TraceBuffer {
    /// Room for `count` frames (at most [`MAX_TRACE`]); all of it is allocated now.
    #[must_use]
    pub fn new(count: usize) -> Self {
        let count = count.clamp(1, MAX_TRACE);
        Self { records: ArrayQueue::new(count), claimed: AtomicU64::new(0), limit: count as u64 }
    }

    /// Frames this trace takes in all.
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether every frame the trace takes has been claimed.
    #[must_use]
    pub fn full(&self) -> bool {
        self.claimed.load(Relaxed) >= self.limit
    }

    /// Claim the next sequence number, if the trace has room left.
    fn claim(&self) -> Option<u64> {
        if self.full() {
            return None;
        }
        let seq = self.claimed.fetch_add(1, Relaxed);
        (seq < self.limit).then_some(seq)
    }

    /// Move the records written so far to `out`.
    pub fn drain_into(&self, out: &mut Vec<TraceRecord>) {
        while let Some(r) = self.records.pop() {
            out.push(r);
        }
    }
}

/// A worker's side of a trace: the filter, and the records of the current burst.
#[derive(Debug)]
pub(crate) struct Tracer {
    buffer: std::sync::Arc<TraceBuffer>,
    filter: TraceFilter,
    /// Per frame of the burst: index into `pending`, or `NONE`.
    slot: [u8; crate::BURST],
    pending: arrayvec::ArrayVec<TraceRecord, { crate::BURST }>,
    ingress: PortId,
    role: Ingress,
    vxlan_port: Option<u16>,
}

const NONE: u8 = u8::MAX;

impl Tracer {
    pub(crate) fn new(buffer: std::sync::Arc<TraceBuffer>, filter: TraceFilter) -> Self {
        Self {
            buffer,
            filter,
            slot: [NONE; crate::BURST],
            pending: arrayvec::ArrayVec::new(),
            ingress: PortId(0),
            role: Ingress::Unknown,
            vxlan_port: None,
        }
    }

    /// A burst from `ingress` starts; false if no frame of it can be traced.
    pub(crate) fn begin(&mut self, fib: &Fib, ingress: PortId) -> bool {
        self.slot = [NONE; crate::BURST];
        self.pending.clear();
        if self.buffer.full() || self.filter.port.is_some_and(|p| p != ingress) {
            return false;
        }
        self.ingress = ingress;
        self.role = match fib.port(ingress) {
            PortRole::Pod(ep) => Ingress::Pod(ep.ip),
            PortRole::Host(ep) => Ingress::Host(ep.ip),
            PortRole::Uplink => Ingress::Uplink,
            PortRole::Unknown => Ingress::Unknown,
        };
        self.vxlan_port = fib.node().map(|n| n.vxlan_port);
        true
    }

    pub(crate) fn received(&mut self, worker: u16, i: usize, frame: &[u8]) {
        // Match on the cheaper parse; verify checksums only for the frames recorded.
        if let Some(m) = self.filter.frames
            && !m.matches(&headers::parse_unverified(frame, self.vxlan_port))
        {
            return;
        }
        let input = headers::parse(frame, self.vxlan_port);
        let Some(seq) = self.buffer.claim() else { return };
        #[expect(clippy::cast_possible_truncation, reason = "at most BURST = 64 pending")]
        {
            self.slot[i] = self.pending.len() as u8;
        }
        self.pending.push(TraceRecord {
            seq,
            unix_ns: 0,
            worker,
            ingress: self.ingress,
            role: self.role,
            input,
            route: None,
            output: None,
            verdict: Verdict::Drop(DropReason::UnknownPort),
        });
    }

    pub(crate) fn processed(&mut self, i: usize, frame: &[u8], verdict: Verdict) {
        if let Some(r) = self.pending.get_mut(usize::from(self.slot[i])) {
            r.verdict = verdict;
            r.output = matches!(verdict, Verdict::Tx(_)).then(|| headers::parse(frame, self.vxlan_port));
        }
    }

    pub(crate) fn unplaced(&mut self, i: usize, reason: DropReason) {
        if let Some(r) = self.pending.get_mut(usize::from(self.slot[i])) {
            r.verdict = Verdict::Drop(reason);
            r.output = None;
        }
    }

    pub(crate) fn end(&mut self, fib: &Fib, unix_ns: u64) {
        for mut r in self.pending.drain(..) {
            r.unix_ns = unix_ns;
            r.route = route(fib, &r);
            // Capacity is the trace's count and every record claimed a place: never full.
            let _ = self.buffer.records.push(r);
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// The lookup the pipeline made for `r`, if it got past classification.
fn route(fib: &Fib, r: &TraceRecord) -> Option<RouteLookup> {
    let decided_early = match r.verdict {
        Verdict::Drop(reason) => drop_stage(reason, r.role) == Stage::Classify,
        // An ARP request answered in place is not routed.
        Verdict::Tx(_) => r.input.ipv4.is_none(),
    };
    if decided_early {
        return None;
    }
    let dst = r.input.ipv4?.dst;
    let hop = match fib.next_hop(dst) {
        None => RouteHop::None,
        Some(NextHop::Unresolved) => RouteHop::Unresolved,
        Some(NextHop::Endpoint(p)) => RouteHop::Local(p),
        Some(NextHop::Remote(i)) => {
            fib.remote(i).map_or(RouteHop::Unresolved, |rm| RouteHop::Remote(rm.node.underlay_ip))
        }
    };
    Some(RouteLookup { dst, hop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_parse_and_reject() {
        let ok = |s: &str| s.parse::<FrameMatch>().unwrap();
        assert_eq!(ok("ICMP"), FrameMatch::Proto(1));
        assert_eq!(ok("10.244.0.0/16"), FrameMatch::Net { addr: Ipv4Addr::new(10, 244, 0, 0), len: 16 });
        assert_eq!(ok("10.244.1.2"), FrameMatch::Net { addr: Ipv4Addr::new(10, 244, 1, 2), len: 32 });
        assert_eq!(ok("53"), FrameMatch::L4Port(53));
        for bad in ["10.244.1.0/33", "10.244.1.1/24", "10.300.0.0/16", "gre", "70000", ""] {
            assert!(bad.parse::<FrameMatch>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_buffer_claims_exactly_its_count() {
        let b = TraceBuffer::new(3);
        let seqs: Vec<_> = (0..5).filter_map(|_| b.claim()).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert!(b.full());
    }
}
