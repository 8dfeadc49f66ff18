//! Super-packets in memory: segmenting a 64 KB TCPv4 super-packet at MSS 1398 (pod MTU
//! 1450 with timestamps) and 8948 (MTU 9000) into buffers with VXLAN headroom, and
//! coalescing 44 segments (MSS 1448) into one super-packet, checksums verified.
//! Throughput is payload bytes; ns per segment is the time over the segment count
//! printed with each group.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use xlane_engine::BURST;
use xlane_engine::offload::build::TcpSuper;
use xlane_engine::offload::{Coalesced, coalesce, gso};
use xlane_wire::VXLAN_OVERHEAD;

/// The payload of a 64 KB super-packet with timestamps (65535 − 20 − 32).
const PAYLOAD: usize = 65_483;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 253).expect("below 253")).collect()
}

fn segment(c: &mut Criterion) {
    let mut g = c.benchmark_group("gso");
    for mss in [1398u16, 8948] {
        let (frame, meta) = TcpSuper::new(pattern(PAYLOAD), mss).build();
        let plan = gso::plan(&frame, &meta).expect("valid super-packet");
        let mut bufs = vec![vec![0u8; VXLAN_OVERHEAD + plan.max_segment_len()]; plan.segments()];
        println!("gso/segment_64KB_mss{mss}: {} segments", plan.segments());
        g.throughput(Throughput::Bytes(PAYLOAD as u64));
        g.bench_function(format!("segment_64KB_mss{mss}"), |b| {
            b.iter(|| {
                let plan = gso::plan(black_box(&frame), &meta).expect("valid");
                let mut out: arrayvec::ArrayVec<&mut [u8], BURST> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
                black_box(plan.write(&frame, VXLAN_OVERHEAD, &mut out).expect("fits"))
            });
        });
    }
    g.finish();
}

fn coalesce_44(c: &mut Criterion) {
    let (frame, meta) = TcpSuper::new(pattern(44 * 1448), 1448).build();
    let plan = gso::plan(&frame, &meta).expect("valid super-packet");
    let mut bufs = vec![vec![0u8; plan.max_segment_len()]; plan.segments()];
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    plan.write(&frame, 0, &mut out).expect("fits");
    let segs: Vec<&[u8]> = bufs.iter().enumerate().map(|(i, b)| &b[..plan.segment_len(i)]).collect();
    assert_eq!(segs.len(), 44);
    let mut merged = vec![0u8; 65_536];
    let mut units = [Coalesced::default(); BURST];

    let mut g = c.benchmark_group("gro");
    g.throughput(Throughput::Bytes((44 * 1448) as u64));
    g.bench_function("coalesce_44_segments", |b| {
        b.iter(|| {
            let n = coalesce(black_box(&segs), true, &mut units);
            let Coalesced::Merged(m) = units[0] else { panic!("not merged: {:?}", &units[..n]) };
            black_box(m.write(&segs, &mut merged).expect("fits"))
        });
    });
    g.finish();
}

criterion_group!(benches, segment, coalesce_44);
criterion_main!(benches);
