//! ICMP errors the engine originates, as a router on the pods' path does: time exceeded
//! (RFC 792) so traceroute sees the node, and fragmentation needed (RFC 1191) so path
//! MTU discovery learns the pod MTU.
//!
//! An error is built in place over the offending frame: the IPv4 and ICMP headers go
//! into the 28 bytes of headroom in front of the offending IPv4 header, which with the
//! first 8 bytes of its payload becomes the quoted part; the rest is cut off. Nothing is
//! copied or allocated. The pipeline then routes the error to the offending packet's
//! source like any other packet.
//!
//! Never sent in answer to what RFC 1812 §4.3.2.7 forbids ([`may_answer`]); time exceeded
//! is rate limited per source and per core as the kernel does ([`RateLimit`]).

use crate::frame::Frame;
use core::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;
use xlane_wire::{
    ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4TimeExceeded,
    IpProtocol, Ipv4Packet, ethertype,
};

const ETH: usize = ETHERNET_HEADER_LEN;
const ICMP_HEADER_LEN: usize = 8;
const PROTOCOL_ICMP: u8 = 1;
/// Headroom an error needs in front of the offending IPv4 header: its own IPv4 and ICMP
/// headers (the Ethernet header moves forward with them).
pub const ERROR_OVERHEAD: usize = IPV4_HEADER_LEN + ICMP_HEADER_LEN;
/// Bytes of the offending datagram's payload quoted after its header (RFC 792: 64 bits,
/// enough for the ports that traceroute and the kernel's socket lookup match on).
pub const QUOTED_PAYLOAD: usize = 8;
/// TTL of the errors (the kernel's default `ip_default_ttl`).
pub const ERROR_TTL: u8 = 64;
/// DSCP of the errors: class selector 6, internetwork control (RFC 1812 §4.3.2.5 asks
/// for precedence 6 or 7; the kernel sends 6).
const DSCP_CS6: u8 = 48;

/// Per source: one error a second with a burst of six, the kernel's per-peer limit
/// (`net.ipv4.icmp_ratelimit` = 1000 ms, `XRLIM_BURST_FACTOR` = 6). traceroute's three
/// probes per hop and `ping -t 1` once a second are all answered.
pub const SOURCE_INTERVAL_MS: u64 = 1000;
/// Errors a quiet source may get back to back.
pub const SOURCE_BURST: u64 = 6;
/// Per core, all sources together: the kernel's global limit (`icmp_msgs_per_sec` =
/// 1000, `icmp_msgs_burst` = 50). The kernel's is per host; this one per worker.
pub const CORE_PER_SECOND: u64 = 1000;
/// Errors a core may send back to back.
pub const CORE_BURST: u64 = 50;
/// Per-source buckets per core, found by a hash of the source address. Sources that
/// collide share a bucket: stricter than the kernel's per-peer entries, never looser,
/// and a fixed table (no allocation, no eviction).
pub const SOURCE_SLOTS: usize = 256;

/// An error the engine sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Type 11 code 0: the TTL would reach zero at this hop.
    TimeExceeded,
    /// Type 3 code 4: the datagram has DF set and is larger than `mtu`, the next hop's.
    FragNeeded {
        /// The next-hop MTU (RFC 1191), written into the error.
        mtu: u16,
    },
}

/// Why an offending frame gets no error (it is only dropped, for its own reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RFC 1812 §4.3.2.7 forbids an error for it ([`may_answer`]), or (fragmentation
    /// needed) it does not have DF set.
    NotAnswered,
    /// Less than [`ERROR_OVERHEAD`] bytes of headroom.
    NoHeadroom,
    /// Its source, or this core, is over its rate.
    RateLimited,
}

/// Whether an error may answer `frame` (Ethernet, then an IPv4 packet the pipeline has
/// validated): RFC 1812 §4.3.2.7 forbids one for a link-layer broadcast or multicast, a
/// datagram to a broadcast or multicast address, a non-initial fragment, a source that is
/// not a single host, and an ICMP error (no error about an error, no storms).
#[must_use]
pub fn may_answer(frame: &[u8]) -> bool {
    // The group bit of the destination MAC: broadcast or multicast.
    if frame[0] & 1 != 0 {
        return false;
    }
    let ip = Ipv4Packet::new_unchecked(&frame[ETH..]);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if !single_host(src) || dst.is_broadcast() || dst.is_multicast() || ip.frag_offset() != 0 {
        return false;
    }
    // The protocol byte, not smoltcp's `next_header()`: a second caller of that (a
    // large match) got it outlined from the decap stage (callgrind).
    if frame[ETH + 9] != PROTOCOL_ICMP {
        return true;
    }
    // The first payload byte is the ICMP type; a first fragment holds it unless the
    // packet is too short to have one (then, as the kernel does, no answer).
    let payload = usize::from(ip.total_len()).saturating_sub(usize::from(ip.header_len()));
    payload > 0 && is_icmp_query(frame[ETH + usize::from(ip.header_len())])
}

/// ICMP queries (echo, timestamp, information, address mask and their replies), which
/// may be answered. Everything else is an error (3, 4, 5, 11, 12) or a type the kernel
/// also treats as one (unassigned, deprecated, router discovery).
fn is_icmp_query(kind: u8) -> bool {
    matches!(kind, 0 | 8 | 13..=18)
}

/// Whether `a` names one host: not zero, loopback, broadcast, multicast or class E
/// (RFC 1812 §4.3.2.7 and §5.3.7).
fn single_host(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_broadcast() || a.is_multicast() || a.octets()[0] >= 240)
}

/// Where the pipeline reads the time: only when an error is about to be sent, once per
/// burst at most.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Milliseconds since this instant.
    Monotonic(Instant),
    /// Milliseconds a test sets by hand.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The time in milliseconds.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        match self {
            Self::Monotonic(origin) => u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX),
            Self::Manual(ms) => ms.load(Relaxed),
        }
    }
}

/// A token bucket whose credit is in "milliseconds of refill": it earns `rate` a
/// millisecond up to `cap` and an error costs `cost`. Starts full.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    credit: u64,
    at_ms: u64,
}

impl Bucket {
    const fn full(cap: u64) -> Self {
        Self { credit: cap, at_ms: 0 }
    }

    fn refill(&mut self, now_ms: u64, rate: u64, cap: u64) {
        // A clock that went back earns nothing (and does not re-earn later).
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.credit = self.credit.saturating_add(elapsed.saturating_mul(rate)).min(cap);
        self.at_ms = self.at_ms.max(now_ms);
    }
}

const SOURCE_CAP: u64 = SOURCE_BURST * SOURCE_INTERVAL_MS;
/// A core's bucket earns [`CORE_PER_SECOND`] a millisecond and an error costs 1000.
const CORE_COST: u64 = 1000;
const CORE_CAP: u64 = CORE_BURST * CORE_COST;
const _: () = assert!(SOURCE_SLOTS.is_power_of_two());

/// The rate limits of one core: a bucket per source (hash slot) and one for the core.
#[derive(Clone)]
pub struct RateLimit {
    sources: [Bucket; SOURCE_SLOTS],
    core: Bucket,
}

impl core::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RateLimit").field("core", &self.core).finish_non_exhaustive()
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { sources: [Bucket::full(SOURCE_CAP); SOURCE_SLOTS], core: Bucket::full(CORE_CAP) }
    }
}

impl RateLimit {
    /// Whether an error to `dst` may be sent at `now_ms`; if so, it is paid for.
    pub fn allow(&mut self, dst: Ipv4Addr, now_ms: u64) -> bool {
        let source = &mut self.sources[slot(dst)];
        source.refill(now_ms, 1, SOURCE_CAP);
        self.core.refill(now_ms, CORE_PER_SECOND, CORE_CAP);
        if source.credit < SOURCE_INTERVAL_MS || self.core.credit < CORE_COST {
            return false;
        }
        source.credit -= SOURCE_INTERVAL_MS;
        self.core.credit -= CORE_COST;
        true
    }
}

/// The bucket of an address: the top bits of a multiplicative (Fibonacci) hash, so
/// neighbouring pod addresses spread over the table.
fn slot(a: Ipv4Addr) -> usize {
    (u32::from(a).wrapping_mul(0x9e37_79b1) >> (32 - SOURCE_SLOTS.trailing_zeros())) as usize
}

/// One core's error originator: rate limits, the clock, the next IPv4 identification.
#[derive(Debug)]
pub struct Originator {
    clock: Clock,
    limit: RateLimit,
    /// Errors go without DF, so RFC 6864 wants their identification to vary.
    next_ident: u16,
}

impl Originator {
    /// An originator reading `clock`, every bucket full.
    #[must_use]
    pub fn new(clock: Clock) -> Self {
        Self { clock, limit: RateLimit::default(), next_ident: 0 }
    }

    /// Turn the offending frame `f` (Ethernet, then an IPv4 packet the pipeline has
    /// validated) into `error` from `source` to the packet's source, in place; returns
    /// that source (where to route the error). The Ethernet addresses are left for the
    /// routing to write. `now` caches the time for the rest of the burst.
    ///
    /// # Errors
    /// [`Refusal`]: the frame is left untouched and is only dropped.
    pub fn originate(
        &mut self,
        f: &mut Frame<'_>,
        error: IcmpError,
        source: Ipv4Addr,
        now: &mut Option<u64>,
    ) -> Result<Ipv4Addr, Refusal> {
        if !may_answer(f.data()) {
            return Err(Refusal::NotAnswered);
        }
        let ip = Ipv4Packet::new_unchecked(&f.data()[ETH..]);
        // xlane does not fragment: a datagram without DF that does not fit is dropped
        // (`mtu_exceeded`) with no error, where a router would have fragmented it.
        if matches!(error, IcmpError::FragNeeded { .. }) && !ip.dont_frag() {
            return Err(Refusal::NotAnswered);
        }
        let to = ip.src_addr();
        if f.head() < ERROR_OVERHEAD {
            return Err(Refusal::NoHeadroom);
        }
        // As the kernel's `icmp_ratemask`, fragmentation needed is not limited: path MTU
        // discovery must not stall, and each error answers one oversized packet.
        if error == IcmpError::TimeExceeded {
            let now = *now.get_or_insert_with(|| self.clock.now_ms());
            if !self.limit.allow(to, now) {
                return Err(Refusal::RateLimited);
            }
        }
        build(f, error, source, self.next_ident);
        self.next_ident = self.next_ident.wrapping_add(1);
        Ok(to)
    }
}

/// Write `error` from `from` over `f` in place (see the module doc); the caller checked
/// the headroom and that the IPv4 packet at [`ETH`] is valid.
fn build(f: &mut Frame<'_>, error: IcmpError, from: Ipv4Addr, ident: u16) {
    let (header_len, payload_len, to) = {
        let ip = Ipv4Packet::new_unchecked(&f.data()[ETH..]);
        let header_len = usize::from(ip.header_len());
        (header_len, usize::from(ip.total_len()) - header_len, ip.src_addr())
    };
    let quoted = header_len + payload_len.min(QUOTED_PAYLOAD);
    let pushed = f.push_head(ERROR_OVERHEAD);
    debug_assert!(pushed, "headroom checked by the caller");
    f.truncate(ETH + ERROR_OVERHEAD + quoted);
    let d = f.data_mut();
    d[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());

    let mut ip = Ipv4Packet::new_unchecked(&mut d[ETH..ETH + IPV4_HEADER_LEN]);
    ip.set_version(4);
    #[expect(clippy::cast_possible_truncation, reason = "20")]
    ip.set_header_len(IPV4_HEADER_LEN as u8);
    ip.set_dscp(DSCP_CS6);
    ip.set_ecn(0);
    // At most 28 + 60 + 8 bytes.
    #[expect(clippy::cast_possible_truncation, reason = "at most 96")]
    ip.set_total_len((ERROR_OVERHEAD + quoted) as u16);
    ip.set_ident(ident);
    ip.clear_flags();
    ip.set_frag_offset(0);
    ip.set_hop_limit(ERROR_TTL);
    ip.set_next_header(IpProtocol::Icmp);
    ip.set_src_addr(from);
    ip.set_dst_addr(to);
    ip.fill_checksum();

    let icmp = &mut d[ETH + IPV4_HEADER_LEN..];
    // Bytes 4..8: unused, except the next-hop MTU in 6..8 of fragmentation needed.
    let mtu = match error {
        IcmpError::TimeExceeded => 0,
        IcmpError::FragNeeded { mtu } => mtu,
    };
    icmp[4..6].fill(0);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let mut icmp = Icmpv4Packet::new_unchecked(icmp);
    match error {
        IcmpError::TimeExceeded => {
            icmp.set_msg_type(Icmpv4Message::TimeExceeded);
            icmp.set_msg_code(Icmpv4TimeExceeded::TtlExpired.into());
        }
        IcmpError::FragNeeded { .. } => {
            icmp.set_msg_type(Icmpv4Message::DstUnreachable);
            icmp.set_msg_code(Icmpv4DstUnreachable::FragRequired.into());
        }
    }
    // Over the ICMP header and the quoted bytes (the frame ends with them).
    icmp.fill_checksum();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Echo, Ipv4};
    use xlane_wire::checksum;

    const POD: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];
    const GW_MAC: [u8; 6] = [0xee, 0xee, 0, 0, 0x01, 0x02];
    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
    const HEAD: usize = 64;

    fn udp(ip: Ipv4, payload: &[u8]) -> Vec<u8> {
        fixtures::udp(POD, GW_MAC, ip, 1000, 33434, payload)
    }

    /// `frame` in a buffer with `HEAD` bytes of headroom, run through `originate`.
    fn originate(o: &mut Originator, frame: &[u8], error: IcmpError) -> (Result<Ipv4Addr, Refusal>, Vec<u8>) {
        let mut buf = vec![0u8; HEAD + frame.len()];
        buf[HEAD..].copy_from_slice(frame);
        let mut f = Frame::new(&mut buf, HEAD, frame.len()).unwrap();
        let r = o.originate(&mut f, error, GW, &mut None);
        (r, f.data().to_vec())
    }

    fn manual() -> (Originator, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(0));
        (Originator::new(Clock::Manual(Arc::clone(&t))), t)
    }

    #[test]
    fn time_exceeded_quotes_the_header_and_eight_bytes() {
        let (mut o, _) = manual();
        let input = udp(Ipv4 { ttl: 1, ..Ipv4::new(A, B) }, b"0123456789abcdef");
        let (r, out) = originate(&mut o, &input, IcmpError::TimeExceeded);
        assert_eq!(r, Ok(A));
        assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8);
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr(), ip.hop_limit()), (GW, A, 64));
        assert_eq!((ip.next_header(), ip.dont_frag(), ip.dscp()), (IpProtocol::Icmp, false, 48));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (Icmpv4Message::TimeExceeded, 0));
        assert_eq!(&ip.payload()[8..], &input[14..14 + 28], "quoted header + 8 bytes, as received");
        // The next error gets the next identification.
        let (_, second) = originate(&mut o, &input, IcmpError::TimeExceeded);
        assert_eq!(Ipv4Packet::new_checked(&second[14..]).unwrap().ident(), ip.ident().wrapping_add(1));
    }

    #[test]
    fn short_payloads_are_quoted_whole() {
        let (mut o, _) = manual();
        let input = udp(Ipv4 { ttl: 1, ..Ipv4::new(A, B) }, b"");
        let (_, out) = originate(&mut o, &input, IcmpError::TimeExceeded);
        assert_eq!(&out[42..], &input[14..], "20 + 8 (the UDP header) bytes");
        assert_eq!(checksum::sum(&out[34..]), 0xffff);
    }

    #[test]
    fn frag_needed_carries_the_mtu_and_needs_df() {
        let (mut o, _) = manual();
        let input = udp(Ipv4::new(A, B), &[7; 100]);
        let (r, out) = originate(&mut o, &input, IcmpError::FragNeeded { mtu: 1450 });
        assert_eq!(r, Ok(A));
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (Icmpv4Message::DstUnreachable, 4));
        assert_eq!(&ip.payload()[4..8], &[0, 0, 0x05, 0xaa]);
        let no_df = udp(Ipv4 { dont_fragment: false, ..Ipv4::new(A, B) }, &[7; 100]);
        let (r, out) = originate(&mut o, &no_df, IcmpError::FragNeeded { mtu: 1450 });
        assert_eq!((r, out), (Err(Refusal::NotAnswered), no_df), "refused frames are left as they were");
    }

    #[test]
    fn never_answered() {
        let ttl1 = Ipv4 { ttl: 1, ..Ipv4::new(A, B) };
        let icmp = |kind: u8| {
            let mut f = fixtures::icmp_echo(POD, GW_MAC, ttl1, Echo::Request { ident: 1, seq: 1 }, b"x");
            f[34] = kind;
            f
        };
        let with = |ip: Ipv4| udp(ip, b"x");
        let mut broadcast_mac = with(ttl1);
        broadcast_mac[0..6].fill(0xff);
        let mut multicast_mac = with(ttl1);
        multicast_mac[0..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
        let mut later_fragment = with(ttl1);
        later_fragment[20..22].copy_from_slice(&[0x20, 0x01]);
        fixtures::fill_ipv4_checksum(&mut later_fragment, 14);
        let mut no_icmp_type = icmp(8);
        no_icmp_type.truncate(34);
        no_icmp_type[16..18].copy_from_slice(&20u16.to_be_bytes());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("destination unreachable", icmp(3)),
            ("source quench", icmp(4)),
            ("redirect", icmp(5)),
            ("time exceeded", icmp(11)),
            ("parameter problem", icmp(12)),
            ("unassigned ICMP type", icmp(42)),
            ("ICMP without a type", no_icmp_type),
            ("non-initial fragment", later_fragment),
            ("link-layer broadcast", broadcast_mac),
            ("link-layer multicast", multicast_mac),
            ("to 255.255.255.255", with(Ipv4 { dst: Ipv4Addr::BROADCAST, ..ttl1 })),
            ("to a multicast group", with(Ipv4 { dst: Ipv4Addr::new(239, 1, 2, 3), ..ttl1 })),
            ("from 0.0.0.0", with(Ipv4 { src: Ipv4Addr::UNSPECIFIED, ..ttl1 })),
            ("from loopback", with(Ipv4 { src: Ipv4Addr::new(127, 0, 0, 9), ..ttl1 })),
            ("from multicast", with(Ipv4 { src: Ipv4Addr::new(224, 0, 0, 5), ..ttl1 })),
            ("from broadcast", with(Ipv4 { src: Ipv4Addr::BROADCAST, ..ttl1 })),
            ("from class E", with(Ipv4 { src: Ipv4Addr::new(240, 0, 0, 1), ..ttl1 })),
        ];
        for (what, frame) in cases {
            assert!(!may_answer(&frame), "{what}");
        }
        for (what, frame) in [("echo request", icmp(8)), ("echo reply", icmp(0)), ("timestamp", icmp(13))] {
            assert!(may_answer(&frame), "{what} is a query");
        }
        // A first fragment (MF set, offset 0) is answered.
        let mut first = with(ttl1);
        first[20] |= 0x20;
        fixtures::fill_ipv4_checksum(&mut first, 14);
        assert!(may_answer(&first));
    }

    #[test]
    fn no_headroom_no_error() {
        let (mut o, _) = manual();
        let input = udp(Ipv4 { ttl: 1, ..Ipv4::new(A, B) }, b"x");
        let mut buf = input.clone();
        buf.splice(0..0, [0; ERROR_OVERHEAD - 1]);
        let mut f = Frame::new(&mut buf, ERROR_OVERHEAD - 1, input.len()).unwrap();
        assert_eq!(o.originate(&mut f, IcmpError::TimeExceeded, GW, &mut None), Err(Refusal::NoHeadroom));
        assert_eq!(f.data(), &input[..]);
    }

    #[test]
    fn per_source_burst_then_one_a_second() {
        let mut l = RateLimit::default();
        let (a, b) = (A, Ipv4Addr::new(10, 244, 1, 3));
        assert_ne!(slot(a), slot(b), "pods next to each other get their own buckets");
        let burst = u32::try_from(SOURCE_BURST).unwrap();
        assert!((0..burst).all(|_| l.allow(a, 5000)), "a burst of {SOURCE_BURST}");
        assert!(!l.allow(a, 5000), "then suppressed");
        assert!(!l.allow(a, 5999), "less than a second later");
        assert!(l.allow(b, 5999), "another source is not held back");
        assert!(l.allow(a, 6000), "one more a second later");
        assert!(!l.allow(a, 6000));
        // A source answered once a second never runs dry (ping -t 1).
        assert!((7..100).all(|s| l.allow(a, s * 1000)));
        // Quiet for a long time: the burst is back, not more.
        let t = 1_000_000;
        assert_eq!((0..10).filter(|_| l.allow(a, t)).count(), 6);
        // A clock going back earns nothing.
        assert!(!l.allow(a, t - 10_000));
    }

    #[test]
    fn per_core_limit_over_all_sources() {
        let mut l = RateLimit::default();
        let sources = (0..=u32::MAX).step_by(1 << 16).map(Ipv4Addr::from);
        let allowed = sources.take(200).filter(|&s| l.allow(s, 0)).count();
        assert_eq!(allowed, 50, "{CORE_BURST} at once, whatever the sources");
        // 1000 a second: 10 ms earns 10 more (sources with credit left).
        let more = (0..=u32::MAX).step_by(1 << 12).map(Ipv4Addr::from).skip(1).take(200);
        assert_eq!(more.filter(|&s| l.allow(s, 10)).count(), 10);
    }

    #[test]
    fn the_rate_limit_applies_to_time_exceeded_only() {
        let (mut o, t) = manual();
        t.store(42_000, Relaxed);
        let expired = udp(Ipv4 { ttl: 1, ..Ipv4::new(A, B) }, b"x");
        let results: Vec<_> = (0..8).map(|_| originate(&mut o, &expired, IcmpError::TimeExceeded).0).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 6);
        assert_eq!(results[7], Err(Refusal::RateLimited));
        let big = udp(Ipv4::new(A, B), &[0; 64]);
        assert!((0..20).all(|_| originate(&mut o, &big, IcmpError::FragNeeded { mtu: 1450 }).0.is_ok()));
        t.store(43_000, Relaxed);
        assert_eq!(originate(&mut o, &expired, IcmpError::TimeExceeded).0, Ok(A), "refilled a second later");
    }
}
