//! The hot path makes no heap allocation per packet: after warm-up, polling bursts of
//! every kind of frame (encap, decap, ARP, local, ICMP errors sent and rate limited,
//! drops) allocates nothing; nor do segmenting a 64 KiB TCP super-packet into buffers
//! and coalescing the segments back into one, nor the driver's path that routes
//! super-packets and cuts them into the worker's buffers.
//!
//! A plain `main` (harness = false) so no test-harness thread allocates while we count.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;
use xlane_engine::BURST;
use xlane_engine::fixtures::fixture;
use xlane_engine::mem::MemDataplane;
use xlane_engine::observe::Observer;
use xlane_engine::observe::capture::{CaptureFilter, CaptureRing, MIN_BUFFERS};
use xlane_engine::observe::trace::{TraceBuffer, TraceFilter};
use xlane_engine::offload::build::TcpSuper;
use xlane_engine::offload::{Coalesced, coalesce, complete_checksum, gso};
use xlane_engine::testbed::{self, UPLINK};
use xlane_fib::{FibHandle, PortId};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let h = FibHandle::new();
    testbed::tables(2, 10_000).publish(&h);
    let mut dp = MemDataplane::new(&h, 3);
    dp.preallocate(1024);
    let pod_frames: Vec<Vec<u8>> = [
        "encap_udp_in",
        "encap_tcp_in",
        "arp_request_in",
        "local_in",
        "encap_padded_in",
        "te_udp_in",
        "frag_needed_in",
    ]
    .iter()
    .map(|n| fixture(n))
    .collect();
    let mut bad = fixture("encap_udp_in");
    bad[24] ^= 0xff;
    let uplink_frames = [fixture("decap_udp_in"), fixture("decap_udp_csum_in"), fixture("te_decap_in")];

    let round = |dp: &mut MemDataplane| {
        for i in 0..64 {
            dp.inject(PortId(1), &pod_frames[i % pod_frames.len()]).unwrap();
            dp.inject(UPLINK, &uplink_frames[i % uplink_frames.len()]).unwrap();
        }
        dp.inject(PortId(1), &bad).unwrap();
    };
    let drain = |dp: &mut MemDataplane| {
        for p in 0..3 {
            dp.drain_tx(PortId(p), |_| {}).unwrap();
        }
    };
    // Warm-up: queues and the buffer pool reach their steady capacity.
    round(&mut dp);
    dp.run_until_idle();
    drain(&mut dp);

    let measure = |dp: &mut MemDataplane, what: &str| {
        let mut polled = 0;
        let mut allocations = 0;
        for _ in 0..20 {
            round(dp);
            let region = Region::new(GLOBAL);
            polled += dp.run_until_idle();
            allocations += region.change().allocations + region.change().reallocations;
            drain(dp);
        }
        assert!(polled >= 20 * 129, "polled {polled}");
        assert_eq!(allocations, 0, "heap allocations while forwarding {polled} frames {what}");
        println!("no_alloc: {polled} frames forwarded or dropped {what} with 0 heap allocations");
    };
    measure(&mut dp, "unobserved");
    let c = dp.counters();
    assert!(c.encapsulated > 0 && c.decapsulated > 0 && c.arp_replies > 0 && c.local > 0 && c.dropped() > 0, "{c:?}");
    assert!(c.icmp_errors > 0 && c.icmp_rate_limited > 0, "{c:?}");

    // Tracing every frame (more than the trace takes, so it also fills up).
    let trace = Arc::new(TraceBuffer::new(2000));
    let mut observer = Observer::new(0);
    observer.set_trace(Arc::clone(&trace), TraceFilter::default());
    dp.set_observer(Some(Box::new(observer)));
    measure(&mut dp, "while tracing");
    assert!(trace.full());

    // Capturing every frame of two ports both ways, with a reader that keeps up and
    // one that does not (losses).
    let mut observer = Observer::new(0);
    let both = CaptureFilter { port: PortId(1), rx: true, tx: true, drops: true };
    let ring = Arc::new(CaptureRing::new(both, 256, MIN_BUFFERS, 1));
    observer.set_capture(Arc::clone(&ring));
    dp.set_observer(Some(Box::new(observer)));
    measure(&mut dp, "while capturing (reader stalled)");
    let mut frames = Vec::with_capacity(MIN_BUFFERS);
    frames.extend(std::iter::from_fn(|| ring.pop()));
    let (captured, lost) = ring.counts()[0];
    assert!(captured == MIN_BUFFERS as u64 && lost > 0, "{captured} captured, {lost} lost");
    for f in frames.drain(..) {
        ring.recycle(f);
    }
    offloads();
    driver_supers();
}

/// Segment (at the pod MTU's MSS, with VXLAN headroom) and coalesce in steady state.
fn offloads() {
    const HEADROOM: usize = 50;
    let (frame, meta) = TcpSuper::new(vec![7; 64_000], 1398).build();
    let plan = gso::plan(&frame, &meta).expect("valid super-packet");
    assert!(plan.segments() <= BURST);
    let mut bufs = vec![vec![0u8; 2048]; plan.segments()];
    let mut merged = vec![0u8; 65_536];
    let mut units = [Coalesced::default(); BURST];
    let mut round = |bufs: &mut Vec<Vec<u8>>| {
        let plan = gso::plan(&frame, &meta).expect("valid super-packet");
        let mut out: [&mut [u8]; BURST] = core::array::from_fn(|_| <&mut [u8]>::default());
        for (o, b) in out.iter_mut().zip(bufs.iter_mut()) {
            *o = b.as_mut_slice();
        }
        let done = plan.write(&frame, HEADROOM, &mut out[..plan.segments()]).expect("buffers fit");
        let mut views: [&[u8]; BURST] = [&[]; BURST];
        for (i, v) in views.iter_mut().enumerate().take(done.segments) {
            *v = &bufs[i][HEADROOM..HEADROOM + plan.segment_len(i)];
        }
        let n = coalesce(&views[..done.segments], true, &mut units);
        let Coalesced::Merged(m) = units[0] else { panic!("not merged: {:?}", &units[..n]) };
        let meta = m.write(&views[..done.segments], &mut merged).expect("fits");
        complete_checksum(&mut merged[..m.len()], &meta).expect("in the frame");
        (done.segments, n, m.segments())
    };
    round(&mut bufs);
    let region = Region::new(GLOBAL);
    let mut segments = 0;
    for _ in 0..20 {
        let (made, units, merged) = round(&mut bufs);
        assert_eq!((units, merged), (1, made));
        segments += made;
    }
    let allocations = region.change().allocations + region.change().reallocations;
    assert_eq!(allocations, 0, "heap allocations while segmenting and coalescing");
    println!("no_alloc: {segments} segments made from 20 super-packets and merged back with 0 heap allocations");
}

/// The driver's super-packet path: a super-packet from a pod that keeps offloads,
/// routed once, cut into buffers of the worker's memory and encapsulated per segment.
/// (Injecting allocates in the test double, outside the measured region; the merging
/// side's double allocates its output, so GRO is measured above, not here.)
fn driver_supers() {
    let (mut a, _) = testbed::two_nodes_with(1, 1024, &[PortId(1)]);
    let (frame, meta) = TcpSuper::new(vec![7; 64_000], 1398).build();
    let round = |a: &mut MemDataplane| {
        for _ in 0..4 {
            a.inject_super(PortId(1), &frame, meta).unwrap();
        }
        a.inject(PortId(1), &fixture("encap_udp_in")).unwrap();
    };
    round(&mut a);
    a.run_until_idle();
    a.drain_tx(UPLINK, |_| {}).unwrap();
    let mut allocations = 0;
    for _ in 0..20 {
        round(&mut a);
        let region = Region::new(GLOBAL);
        a.run_until_idle();
        allocations += region.change().allocations + region.change().reallocations;
        a.drain_tx(UPLINK, |_| {}).unwrap();
    }
    let c = a.counters();
    assert_eq!(c.gso_packets, 84);
    assert!(c.gso_segments >= 84 * 46 && c.conserved(), "{c:?}");
    assert_eq!(allocations, 0, "heap allocations while the driver segmented {} super-packets", c.gso_packets);
    println!(
        "no_alloc: {} super-packets routed and cut into {} segments with 0 heap allocations",
        c.gso_packets, c.gso_segments
    );
}
