//! The burst driver end to end in memory: node A's driver takes 64 pod frames,
//! encapsulates them and places them on its uplink; the wire moves them to node B, whose
//! driver decapsulates and delivers them to its pod. Time per frame covers two drivers'
//! placement and transmission around the pipeline (the two-node example's path, measured
//! by criterion rather than a wall clock).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xlane_engine::fixtures;
use xlane_engine::testbed::{self, UPLINK};

const BURST: u64 = 64;

/// A minimum-size UDP frame (60 bytes, 64 with the FCS) from pod 1 on node A to node B's pod.
fn udp_pod_a_to_pod_b() -> Vec<u8> {
    let (a, b) = (testbed::pod(1), testbed::b_pod());
    fixtures::udp(a.mac.0, a.gateway_mac.0, fixtures::Ipv4::new(a.ip, b.ip), 12345, 80, &[0x5a; 18])
}

fn driver(c: &mut Criterion) {
    let (mut a, mut b) = testbed::two_nodes(10_000, 256);
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
