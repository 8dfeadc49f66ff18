//! The burst pipeline in memory: encap, decap and proxy-ARP bursts of 64 frames with
//! 10k remote nodes (routes) in the table. Throughput is frames per second; ns/packet
//! is its inverse. Frames are rewritten in place, so their bytes are restored between
//! bursts outside the timed section.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xlane_engine::fixtures::{IPV4_DST, fixture, set_ipv4_addr};
use xlane_engine::mem::{FRAME_SIZE, HEADROOM};
use xlane_engine::testbed::{self, UPLINK};
use xlane_engine::{BURST, CoreCounters, Frame, Pipeline, Verdict};
use xlane_fib::{Fib, PortId};

const REMOTES: u32 = 10_000;

type Buf = Box<[u8; FRAME_SIZE]>;

fn load(bytes: &[u8]) -> (Buf, usize) {
    let mut b: Buf = Box::new([0; FRAME_SIZE]);
    b[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
    (b, bytes.len())
}

/// 64 frames from pod 1 to pods spread over all remote subnets.
fn encap_burst() -> Vec<(Buf, usize)> {
    let base = fixture("encap_udp_in");
    let mut rng = SmallRng::seed_from_u64(3);
    (0..BURST)
        .map(|_| {
            let mut f = base.clone();
            let (prefix, _) = testbed::remote(rng.gen_range(0..REMOTES));
            let mut dst = prefix.addr().octets();
            dst[3] = rng.gen_range(2..250);
            set_ipv4_addr(&mut f, 14, IPV4_DST, dst);
            load(&f)
        })
        .collect()
}

fn run(c: &mut Criterion, name: &str, fib: &Fib, ingress: PortId, burst: &[(Buf, usize)], expect: fn(Verdict) -> bool) {
    let mut pipeline = Pipeline::new(Arc::new(CoreCounters::default()));
    // Check once that the burst takes the path the bench is named for.
    let mut check = burst.to_vec();
    let mut verdicts = [Verdict::Tx(PortId(0)); BURST];
    {
        let mut frames: Vec<Frame<'_>> =
            check.iter_mut().map(|(b, len)| Frame::new(&mut b[..], HEADROOM, *len).unwrap()).collect();
        pipeline.process(fib, ingress, &mut frames, &mut verdicts);
    }
    assert!(verdicts.iter().all(|&v| expect(v)), "{name}: {verdicts:?}");

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(name, |b| {
        // One set of buffers reused, as an RX ring reuses its frames; restoring the
        // original bytes between bursts is outside the timed section.
        let mut bufs = burst.to_vec();
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                for ((buf, _), (orig, len)) in bufs.iter_mut().zip(burst) {
                    buf[HEADROOM..HEADROOM + len].copy_from_slice(&orig[HEADROOM..HEADROOM + len]);
                }
                let mut frames: arrayvec::ArrayVec<Frame<'_>, BURST> =
                    bufs.iter_mut().map(|(b, len)| Frame::new(&mut b[..], HEADROOM, *len).unwrap()).collect();
                let t0 = Instant::now();
                pipeline.process(fib, ingress, &mut frames, &mut verdicts);
                timed += t0.elapsed();
                black_box(&verdicts);
            }
            timed
        });
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let fib = testbed::tables(2, REMOTES).snapshot();
    run(c, "encap_64B_10k_routes", &fib, PortId(1), &encap_burst(), |v| v == Verdict::Tx(UPLINK));

    let decap: Vec<_> = (0..BURST).map(|_| load(&fixture("decap_udp_in"))).collect();
    run(c, "decap_64B_10k_routes", &fib, UPLINK, &decap, |v| v == Verdict::Tx(PortId(1)));

    let arp: Vec<_> = (0..BURST).map(|_| load(&fixture("arp_request_in"))).collect();
    run(c, "arp_proxy", &fib, PortId(1), &arp, |v| v == Verdict::Tx(PortId(1)));
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
