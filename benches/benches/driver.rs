//! The burst driver end to end in memory: node A's driver takes 64 pod frames,
//! encapsulates them and places them on its uplink; the wire moves them to node B, whose
//! driver decapsulates and delivers them to its pod. Time per frame covers two drivers'
//! placement and transmission around the pipeline (the two-node example's path, measured
//! by criterion rather than a wall clock).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xlane_engine::mem::MemDataplane;
use xlane_engine::testbed::{self, UPLINK};
use xlane_fib::FibHandle;

const BURST: u64 = 64;

fn udp_pod_a_to_pod_b() -> Vec<u8> {
    let (a, b) = (testbed::pod(1), testbed::b_pod());
    let mut f = Vec::new();
    f.extend_from_slice(a.gateway_mac.as_bytes());
    f.extend_from_slice(a.mac.as_bytes());
    f.extend_from_slice(&[0x08, 0, 0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&a.ip.octets());
    f.extend_from_slice(&b.ip.octets());
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 26, 0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    let c = !xlane_wire::checksum::sum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn driver(c: &mut Criterion) {
    let (ha, hb) = (FibHandle::new(), FibHandle::new());
    testbed::tables(1, 10_000).publish(&ha);
    testbed::tables_b().publish(&hb);
    let (mut a, mut b) = (MemDataplane::new(&ha, 2), MemDataplane::new(&hb, 2));
    a.preallocate(256);
    b.preallocate(256);
    let frame = udp_pod_a_to_pod_b();
    let pod_b = testbed::b_pod().port;
    let mut g = c.benchmark_group("driver");
    g.throughput(Throughput::Elements(BURST));
    g.bench_function("two_nodes_encap_wire_decap_64B", |bench| {
        bench.iter(|| {
            for _ in 0..BURST {
                a.inject(testbed::pod(1).port, &frame).expect("port 1");
            }
            a.run_until_idle();
            a.wire_to(UPLINK, &mut b, UPLINK).expect("uplinks");
            b.run_until_idle();
            let n = b.drain_tx(pod_b, |_| {}).expect("pod port");
            assert_eq!(n as u64, BURST);
        });
    });
    g.finish();
}

criterion_group!(benches, driver);
criterion_main!(benches);
