//! A fixed amount of forwarding work, for instruction counts that do not depend on how
//! busy the machine is (criterion's wall clock does): run it under
//! `valgrind --tool=callgrind` with two burst counts and divide the difference by the
//! extra frames, so set-up (tables with 10k routes) cancels out.
//!
//! `cargo run --release -p xlane-benches --example fixed_work -- WORKLOAD BURSTS`
//!
//! `driver`: the in-memory two-node path (node A's driver encapsulates 64 pod frames,
//! the wire moves them, node B's driver decapsulates and delivers them);
//! `driver-trace-miss`: the same with both nodes tracing, every frame checked against a
//! filter it misses; `driver-capture`: with node A capturing its pod's frames (a reader
//! emptying the ring every burst);
//! `encap`/`decap`: the pipeline alone on one burst, restored between runs;
//! `gso-1398`/`gso-8948`: one 64 KB TCP super-packet segmented per "burst";
//! `gro`: 44 segments (MSS 1448) coalesced and written as one super-packet per "burst".

use std::sync::Arc;
use xlane_engine::fixtures::{IPV4_DST, fixture, set_ipv4_addr};
use xlane_engine::mem::{FRAME_SIZE, HEADROOM};
use xlane_engine::observe::Observer;
use xlane_engine::observe::capture::{CaptureFilter, CaptureRing};
use xlane_engine::observe::trace::{FrameMatch, TraceBuffer, TraceFilter};
use xlane_engine::offload::build::TcpSuper;
use xlane_engine::offload::{Coalesced, coalesce, gso};
use xlane_engine::testbed::{self, UPLINK};
use xlane_engine::{BURST, CoreCounters, Frame, Pipeline, Verdict};
use xlane_fib::PortId;

/// What the two-node path observes.
#[derive(Clone, Copy)]
enum Observe {
    Nothing,
    TraceMiss,
    Capture,
}

fn driver(bursts: u64, observe: Observe) {
    let (mut a, mut b) = testbed::two_nodes(10_000, 256);
    // A capture's reader, emptying the ring after each burst.
    let mut ring = None;
    match observe {
        Observe::Nothing => {}
        Observe::TraceMiss => {
            let miss = TraceFilter { port: None, frames: Some(FrameMatch::L4Port(9)) };
            for dp in [&mut a, &mut b] {
                let mut o = Observer::new(0);
                o.set_trace(Arc::new(TraceBuffer::new(1)), miss);
                dp.set_observer(Some(Box::new(o)));
            }
        }
        Observe::Capture => {
            let rx = CaptureFilter { port: testbed::pod(1).port, rx: true, tx: false, drops: false };
            let r = Arc::new(CaptureRing::new(rx, 128, 256, 1));
            let mut o = Observer::new(0);
            o.set_capture(Arc::clone(&r));
            a.set_observer(Some(Box::new(o)));
            ring = Some(r);
        }
    }
    let mut frame = fixture("encap_udp_in");
    set_ipv4_addr(&mut frame, 14, IPV4_DST, testbed::b_pod().ip);
    let mut delivered = 0;
    for _ in 0..bursts {
        for _ in 0..BURST {
            a.inject(testbed::pod(1).port, &frame).expect("port 1");
        }
        a.run_until_idle();
        a.wire_to(UPLINK, &mut b, UPLINK).expect("uplinks");
        b.run_until_idle();
        delivered += b.drain_tx(testbed::b_pod().port, |_| {}).expect("pod port");
        if let Some(r) = &ring {
            while let Some(f) = r.pop() {
                r.recycle(f);
            }
        }
    }
    assert_eq!(delivered as u64, bursts * BURST as u64, "every frame delivered");
}

fn pipeline(bursts: u64, name: &str, ingress: PortId) {
    let fib = testbed::tables(2, 10_000).snapshot();
    let bytes = fixture(name);
    let mut pipeline = Pipeline::new(Arc::new(CoreCounters::default()));
    let mut bufs: Vec<Box<[u8; FRAME_SIZE]>> = (0..BURST).map(|_| Box::new([0; FRAME_SIZE])).collect();
    let mut verdicts = [Verdict::Tx(PortId(0)); BURST];
    for _ in 0..bursts {
        let mut frames: Vec<Frame<'_>> = bufs
            .iter_mut()
            .map(|b| {
                b[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(&bytes);
                Frame::new(&mut b[..], HEADROOM, bytes.len()).expect("fits")
            })
            .collect();
        pipeline.process(&fib, ingress, &mut frames, &mut verdicts);
        assert!(verdicts.iter().all(|v| matches!(v, Verdict::Tx(_))), "{verdicts:?}");
    }
}

/// The payload of a 64 KB super-packet with timestamps (65535 − 20 − 32).
const SUPER_PAYLOAD: usize = 65_483;

fn segment(times: u64, mss: u16) {
    let (frame, meta) = TcpSuper::new(vec![0x5a; SUPER_PAYLOAD], mss).build();
    let plan = gso::plan(&frame, &meta).expect("valid super-packet");
    let mut bufs = vec![vec![0u8; 50 + plan.max_segment_len()]; plan.segments()];
    let mut made = 0;
    for _ in 0..times {
        let plan = gso::plan(std::hint::black_box(&frame), &meta).expect("valid");
        let mut out: arrayvec::ArrayVec<&mut [u8], BURST> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
        made += plan.write(&frame, 50, &mut out).expect("fits").segments;
    }
    println!("{made} segments");
}

fn merge(times: u64) {
    let (frame, meta) = TcpSuper::new(vec![0x5a; 44 * 1448], 1448).build();
    let plan = gso::plan(&frame, &meta).expect("valid super-packet");
    let mut bufs = vec![vec![0u8; plan.max_segment_len()]; plan.segments()];
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    plan.write(&frame, 0, &mut out).expect("fits");
    let segs: Vec<&[u8]> = bufs.iter().enumerate().map(|(i, b)| &b[..plan.segment_len(i)]).collect();
    let mut merged = vec![0u8; 65_536];
    let mut units = [Coalesced::default(); BURST];
    let mut segments = 0;
    for _ in 0..times {
        coalesce(std::hint::black_box(&segs), true, &mut units);
        let Coalesced::Merged(m) = units[0] else { panic!("not merged") };
        m.write(&segs, &mut merged).expect("fits");
        segments += m.segments();
    }
    println!("{segments} segments merged");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "driver".into());
    let bursts: u64 = args.next().map_or(1000, |b| b.parse().expect("a burst count"));
    match what.as_str() {
        "driver" => driver(bursts, Observe::Nothing),
        "driver-trace-miss" => driver(bursts, Observe::TraceMiss),
        "driver-capture" => driver(bursts, Observe::Capture),
        "encap" => pipeline(bursts, "encap_udp_in", PortId(1)),
        "decap" => pipeline(bursts, "decap_udp_in", UPLINK),
        "gso-1398" => segment(bursts, 1398),
        "gso-8948" => segment(bursts, 8948),
        "gro" => merge(bursts),
        other => panic!(
            "unknown workload {other}: driver, driver-trace-miss, driver-capture, encap, decap, gso-1398, gso-8948 or gro"
        ),
    }
}
