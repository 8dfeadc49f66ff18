//! The burst driver end to end in memory: node A's driver takes 64 pod frames,
//! encapsulates them and places them on its uplink; the wire moves them to node B, whose
//! driver decapsulates and delivers them to its pod. Time per frame covers two drivers'
//! placement and transmission around the pipeline (the two-node example's path, measured
//! by criterion rather than a wall clock).
//!
//! The same path with observation on: a trace whose filter every frame is checked
//! against (and misses), and a capture of node A's pod port with a reader that keeps up.
//! Observation off costs one test per burst (see `Driver::forward`): compare the first
//! case with its figure before observation existed, by instruction counts
//! (`examples/fixed_work.rs`), not by this wall clock.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use xlane_engine::fixtures;
use xlane_engine::mem::MemDataplane;
use xlane_engine::observe::Observer;
use xlane_engine::observe::capture::{CaptureFilter, CaptureRing};
use xlane_engine::observe::trace::{FrameMatch, TraceBuffer, TraceFilter};
use xlane_engine::testbed::{self, UPLINK};

const BURST: u64 = 64;

/// A minimum-size UDP frame (60 bytes, 64 with the FCS) from pod 1 on node A to node B's pod.
fn udp_pod_a_to_pod_b() -> Vec<u8> {
    let (a, b) = (testbed::pod(1), testbed::b_pod());
    fixtures::udp(a.mac.0, a.gateway_mac.0, fixtures::Ipv4::new(a.ip, b.ip), 12345, 80, &[0x5a; 18])
}

/// One burst from A's pod to B's pod, every frame delivered.
fn round(a: &mut MemDataplane, b: &mut MemDataplane, frame: &[u8]) {
    for _ in 0..BURST {
        a.inject(testbed::pod(1).port, frame).expect("port 1");
    }
    a.run_until_idle();
    a.wire_to(UPLINK, b, UPLINK).expect("uplinks");
    b.run_until_idle();
    let n = b.drain_tx(testbed::b_pod().port, |_| {}).expect("pod port");
    assert_eq!(n as u64, BURST);
}

fn driver(c: &mut Criterion) {
    let (mut a, mut b) = testbed::two_nodes(10_000, 256);
    let frame = udp_pod_a_to_pod_b();
    let mut g = c.benchmark_group("driver");
    g.throughput(Throughput::Elements(BURST));
    g.bench_function("two_nodes_encap_wire_decap_64B", |bench| bench.iter(|| round(&mut a, &mut b, &frame)));

    // Both nodes trace, every frame checked against a filter it misses (TCP/UDP port 9).
    let miss = TraceFilter { port: None, frames: Some(FrameMatch::L4Port(9)) };
    for dp in [&mut a, &mut b] {
        let mut o = Observer::new(0);
        o.set_trace(Arc::new(TraceBuffer::new(1)), miss);
        dp.set_observer(Some(Box::new(o)));
    }
    g.bench_function("two_nodes_encap_wire_decap_64B_trace_filter_miss", |bench| {
        bench.iter(|| round(&mut a, &mut b, &frame));
    });

    // A captures every frame its pod sends; the reader empties the ring each burst.
    let rx = CaptureFilter { port: testbed::pod(1).port, rx: true, tx: false, drops: false };
    let ring = Arc::new(CaptureRing::new(rx, 128, 256, 1));
    let mut o = Observer::new(0);
    o.set_capture(Arc::clone(&ring));
    a.set_observer(Some(Box::new(o)));
    b.set_observer(None);
    g.bench_function("two_nodes_encap_wire_decap_64B_capture_rx", |bench| {
        bench.iter(|| {
            round(&mut a, &mut b, &frame);
            while let Some(f) = ring.pop() {
                ring.recycle(f);
            }
        });
    });
    g.finish();
}

criterion_group!(benches, driver);
criterion_main!(benches);
