//! Trace records against the real pipeline: one record per drop reason of the drop
//! table, verdicts equal to what the pipeline and driver did for any frame, the filter
//! and the bound.

use super::Observer;
use super::trace::{FrameMatch, Ingress, RouteHop, Stage, TraceBuffer, TraceFilter, TraceRecord};
use crate::fixtures::{IPV4_DST, IPV4_SRC, fill_ipv4_checksum, fixture, set_ipv4_addr};
use crate::mem::{HEADROOM, MemFrames, MemPort};
use crate::offload::build::TcpSuper;
use crate::testbed::{self, UPLINK};
use crate::{CoreCounters, Driver, DropReason, FrameMemory, OffloadMeta, Packet, Verdict};
use core::net::Ipv4Addr;
use proptest::prelude::*;
use std::sync::Arc;
use xlane_fib::{Fib, FibBuilder, PortId, Prefix};

const POD1: PortId = PortId(1);

/// A driver with ports `0..ports` over `tables`, tracing everything into a buffer of
/// `count` records.
struct Traced {
    driver: Driver<MemFrames, MemPort>,
    fib: Fib,
    buffer: Arc<TraceBuffer>,
}

impl Traced {
    fn new(mut tables: FibBuilder, ports: u16, count: usize, filter: TraceFilter) -> Self {
        let mut driver = Driver::new(MemFrames::default(), Arc::new(CoreCounters::default()));
        for id in 0..ports {
            // Pod 1 keeps offloads, as a pod read through a virtio-net header: it also
            // receives ordinary frames as any port does.
            driver.add_port(if id == 1 { MemPort::offloading(PortId(id)) } else { MemPort::new(PortId(id)) });
        }
        let buffer = Arc::new(TraceBuffer::new(count));
        let mut observer = Observer::new(7);
        observer.set_trace(Arc::clone(&buffer), filter);
        driver.set_observer(Some(Box::new(observer)));
        Self { driver, fib: tables.snapshot(), buffer }
    }

    /// Receive `frame` on `port` with `head` bytes of headroom.
    fn inject(&mut self, port: PortId, frame: &[u8], head: usize) {
        let mem = self.driver.mem_mut();
        let buf = mem.alloc().unwrap();
        mem.with_buffers(&[buf], |b| b[0][head..head + frame.len()].copy_from_slice(frame));
        let p = Packet { buf, head: u32::try_from(head).unwrap(), len: u32::try_from(frame.len()).unwrap() };
        self.driver.ports_mut()[usize::from(port.0)].rx.push_back(p);
    }

    /// Forward everything waiting; the verdict of each frame as the counters and the
    /// ports saw it (one frame in flight at a time; an ICMP error sent back is a `Tx`).
    /// With `meta`, the frame is a super-packet (on an offloading port).
    fn verdict_of(&mut self, port: PortId, frame: &[u8], head: usize, meta: Option<OffloadMeta>) -> Verdict {
        let before = self.driver.counters().snapshot();
        match meta {
            Some(m) => self.driver.ports_mut()[usize::from(port.0)].push_super(frame, m),
            None => self.inject(port, frame, head),
        }
        self.driver.poll(&self.fib);
        let after = self.driver.counters().snapshot();
        // A frame answered with an ICMP error counts its drop reason too, and is sent.
        let answered = after.icmp_errors > before.icmp_errors;
        if let Some(r) = DropReason::ALL.iter().find(|r| after.drop_count(**r) > before.drop_count(**r))
            && !answered
        {
            return Verdict::Drop(*r);
        }
        let out = self
            .driver
            .ports_mut()
            .iter_mut()
            .find(|p| !p.tx.is_empty() || !p.tx_super.is_empty())
            .expect("forwarded somewhere");
        out.tx_super.clear();
        let (id, sent) = (crate::Port::id(out), out.tx.drain(..).collect::<Vec<_>>());
        for p in sent {
            self.driver.mem_mut().release(p.buf);
        }
        Verdict::Tx(id)
    }

    fn records(&self) -> Vec<TraceRecord> {
        let mut v = Vec::new();
        self.buffer.drain_into(&mut v);
        v
    }
}

fn set_ttl(f: &mut [u8], at: usize, ttl: u8) {
    f[at + 8] = ttl;
    fill_ipv4_checksum(f, at);
}

fn with(name: &str, mutate: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = fixture(name);
    mutate(&mut f);
    f
}

/// A packet of `ip_len` bytes from pod 1 to a pod of node B.
fn sized(ip_len: usize) -> Vec<u8> {
    with("encap_udp_in", |f| {
        f.truncate(14 + 28);
        f.resize(14 + ip_len, 0xab);
        f[16..18].copy_from_slice(&u16::try_from(ip_len).unwrap().to_be_bytes());
        f[38..40].copy_from_slice(&u16::try_from(ip_len - 20).unwrap().to_be_bytes());
        f[40..42].fill(0);
        fill_ipv4_checksum(f, 14);
    })
}

/// `f` with the IPv4 "don't fragment" flag set or cleared.
fn with_df(mut f: Vec<u8>, df: bool) -> Vec<u8> {
    if df {
        f[14 + 6] |= 0x40;
    } else {
        f[14 + 6] &= !0x40;
    }
    fill_ipv4_checksum(&mut f, 14);
    f
}

/// Tables, ingress port, frame and headroom that make the pipeline (or the driver) drop
/// for `reason`, and the frame's metadata if it is a super-packet. Exhaustive: a new
/// reason needs a case here.
fn case(reason: DropReason) -> (FibBuilder, PortId, Vec<u8>, usize, Option<OffloadMeta>) {
    let (tables, port, frame, head) = match reason {
        // A segment size the engine refuses to cut 64 KiB into.
        DropReason::SuperPacket => {
            let (frame, meta) = TcpSuper::new(vec![7; 60_000], 100).build();
            return (testbed::tables(2, 3), POD1, frame, 0, Some(meta));
        }
        r => plain_case(r),
    };
    (tables, port, frame, head, None)
}

fn plain_case(reason: DropReason) -> (FibBuilder, PortId, Vec<u8>, usize) {
    use DropReason as R;
    let node = || testbed::tables(2, 3);
    let pod = |f: Vec<u8>| (node(), POD1, f, HEADROOM);
    let uplink = |f: Vec<u8>| (node(), UPLINK, f, HEADROOM);
    match reason {
        R::Truncated => pod(with("encap_udp_in", |f| f.truncate(13))),
        R::NotIpv4 => pod(with("encap_udp_in", |f| f[12..14].copy_from_slice(&[0x86, 0xdd]))),
        R::Ipv4Malformed => pod(with("encap_udp_in", |f| f[14] = 0x65)),
        R::Ipv4Checksum => pod(with("encap_udp_in", |f| f[24] ^= 1)),
        // Answered with an ICMP error unless the rules forbid it (to a broadcast address).
        R::TtlExpired => pod(with("encap_udp_in", |f| {
            set_ipv4_addr(f, 14, IPV4_DST, [255, 255, 255, 255]);
            set_ttl(f, 14, 1);
        })),
        R::NoRoute => pod(with("encap_udp_in", |f| set_ipv4_addr(f, 14, IPV4_DST, [10, 99, 0, 1]))),
        R::UnresolvedVtep => {
            let mut t = node();
            t.insert_route(Prefix::new(Ipv4Addr::new(10, 50, 0, 0), 16).unwrap(), Ipv4Addr::new(192, 0, 2, 9));
            (t, POD1, with("encap_udp_in", |f| set_ipv4_addr(f, 14, IPV4_DST, [10, 50, 0, 1])), HEADROOM)
        }
        R::UnknownPort => (node(), PortId(3), fixture("local_in"), HEADROOM),
        R::NotConfigured => {
            let mut t = FibBuilder::new();
            t.upsert_endpoint(testbed::pod(1)).unwrap();
            let (prefix, b) = testbed::remote(0);
            t.upsert_remote(b).unwrap();
            t.insert_route(prefix, b.underlay_ip);
            (t, POD1, fixture("encap_udp_in"), HEADROOM)
        }
        R::SpoofedSource => pod(with("encap_udp_in", |f| set_ipv4_addr(f, 14, IPV4_SRC, [10, 244, 1, 77]))),
        R::ArpMalformed => pod(with("arp_request_in", |f| f[15] = 6)),
        R::ArpNotRequest => pod(with("arp_request_in", |f| f[21] = 2)),
        R::ArpOwnAddress => pod(with("arp_request_in", |f| f[38..42].copy_from_slice(&[10, 244, 1, 2]))),
        R::NotVxlan => uplink(with("decap_udp_in", |f| f[37] = 0x13)),
        R::VxlanFragment => uplink(with("decap_udp_in", |f| {
            f[20] = 0x20;
            fill_ipv4_checksum(f, 14);
        })),
        R::VxlanNoVni => uplink(with("decap_udp_in", |f| f[42] = 0)),
        R::VxlanWrongVni => uplink(with("decap_udp_in", |f| f[48] = 2)),
        R::VxlanInnerMac => uplink(with("decap_udp_in", |f| f[55] = 9)),
        R::OverlayTransit => uplink(with("decap_udp_in", |f| set_ipv4_addr(f, 64, IPV4_DST, [10, 244, 2, 5]))),
        // Without DF (with it, the pod gets "fragmentation needed" back).
        R::MtuExceeded => pod(with_df(sized(1451), false)),
        R::NoHeadroom => (node(), POD1, fixture("encap_udp_in"), 10),
        R::NoEgressPort => {
            // Pod 5's port is in the tables but not served by this driver (ports 0..4).
            let mut t = node();
            t.upsert_endpoint(testbed::pod(5)).unwrap();
            (t, POD1, with("local_in", |f| set_ipv4_addr(f, 14, IPV4_DST, [10, 244, 1, 6])), HEADROOM)
        }
        R::SuperPacket => unreachable!("a super-packet case"),
    }
}

#[test]
fn a_record_for_every_drop_reason() {
    for &reason in DropReason::ALL {
        let (tables, port, frame, head, meta) = case(reason);
        let mut t = Traced::new(tables, 4, 8, TraceFilter::default());
        assert_eq!(t.verdict_of(port, &frame, head, meta), Verdict::Drop(reason), "the case for {reason:?}");
        let records = t.records();
        assert_eq!(records.len(), 1, "{reason:?}");
        let r = &records[0];
        assert_eq!((r.verdict, r.ingress, r.worker, r.seq), (Verdict::Drop(reason), port, 7, 0), "{reason:?}");
        assert!(r.output.is_none() && r.unix_ns > 0, "{reason:?}: {r:?}");
        assert_eq!(r.input.len as usize, frame.len());
        // The route is recorded exactly when the frame got past classification.
        assert_eq!(r.route.is_some(), r.stage() != Stage::Classify, "{reason:?}: {r:?}");
    }
}

#[test]
fn an_encapsulated_frame_shows_its_route_and_rewrite() {
    let mut t = Traced::new(testbed::tables(2, 3), 4, 8, TraceFilter::default());
    assert_eq!(t.verdict_of(POD1, &fixture("encap_udp_in"), HEADROOM, None), Verdict::Tx(UPLINK));
    let r = t.records()[0];
    assert_eq!(r.role, Ingress::Pod(testbed::pod(1).ip));
    let dst = Ipv4Addr::new(10, 244, 2, 3);
    assert_eq!(r.route.map(|l| (l.dst, l.hop)), Some((dst, RouteHop::Remote(testbed::B_VTEP_IP))));
    let out = r.output.unwrap();
    let tunnel = out.outer.unwrap();
    assert_eq!((tunnel.ip.src, tunnel.ip.dst, tunnel.vni), (testbed::A_VTEP_IP, testbed::B_VTEP_IP, Some(1)));
    assert_eq!(out.ipv4.unwrap().ttl + 1, r.input.ipv4.unwrap().ttl);
    assert_eq!(r.stage(), Stage::Rewrite);
}

#[test]
fn an_expired_or_oversize_packet_is_traced_out_as_the_icmp_error_sent_back() {
    use super::headers::Transport;
    let cases = [
        (with("encap_udp_in", |f| set_ttl(f, 14, 1)), Transport::Icmp { kind: 11, code: 0 }),
        (with_df(sized(1451), true), Transport::Icmp { kind: 3, code: 4 }),
    ];
    for (frame, sent) in cases {
        let mut t = Traced::new(testbed::tables(2, 3), 4, 8, TraceFilter::default());
        assert_eq!(t.verdict_of(POD1, &frame, HEADROOM, None), Verdict::Tx(POD1));
        let r = t.records()[0];
        let out = r.output.expect("transmitted");
        let ip = out.ipv4.expect("IPv4");
        assert_eq!((ip.src, ip.dst, ip.proto), (testbed::A_GATEWAY, testbed::pod(1).ip, 1), "{r:?}");
        assert_eq!(out.transport, sent, "{r:?}");
    }
}

#[test]
fn the_filter_selects_and_the_count_bounds() {
    let icmp = TraceFilter { port: Some(POD1), frames: Some(FrameMatch::Proto(1)) };
    let mut t = Traced::new(testbed::tables(2, 3), 4, 2, icmp);
    for _ in 0..3 {
        t.inject(POD1, &fixture("encap_udp_in"), HEADROOM);
        t.inject(POD1, &fixture("encap_icmp_options_in"), HEADROOM);
        t.inject(PortId(2), &fixture("encap_icmp_options_in"), HEADROOM);
    }
    t.driver.poll(&t.fib);
    let records = t.records();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1]);
    assert!(records.iter().all(|r| r.ingress == POD1 && r.input.ipv4.unwrap().proto == 1), "{records:?}");
    assert!(t.buffer.full());
}

const FIXTURES: &[(&str, PortId)] = &[
    ("encap_udp_in", POD1),
    ("encap_tcp_in", POD1),
    ("encap_icmp_options_in", POD1),
    ("encap_padded_in", POD1),
    ("decap_udp_in", UPLINK),
    ("decap_udp_csum_in", UPLINK),
    ("arp_request_in", POD1),
    ("arp_request_padded_in", POD1),
    ("local_in", POD1),
    ("te_udp_in", POD1),
    ("frag_needed_in", POD1),
    ("te_decap_in", UPLINK),
];

proptest! {
    /// Whatever the frame (fixtures, fixtures with bytes flipped or cut, noise), its
    /// record says what the pipeline and the driver did with it.
    #[test]
    fn the_record_is_the_real_verdict(
        pick in 0..FIXTURES.len(),
        flips in prop::collection::vec((any::<usize>(), 1..=255u8), 0..3),
        cut in any::<Option<usize>>(),
        noise in prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..120)),
        port in 0u16..4,
    ) {
        let (name, usual) = FIXTURES[pick];
        let mut frame = noise.unwrap_or_else(|| fixture(name));
        let n = frame.len();
        for (at, x) in flips {
            if n > 0 { frame[at % n] ^= x; }
        }
        if let Some(c) = cut { frame.truncate(c % (n + 1)); }
        let port = if port == 0 { usual } else { PortId(port) };
        let mut t = Traced::new(testbed::tables(2, 3), 4, 4, TraceFilter::default());
        let verdict = t.verdict_of(port, &frame, HEADROOM, None);
        let records = t.records();
        prop_assert_eq!(records.len(), 1);
        prop_assert_eq!(records[0].verdict, verdict);
    }
}
