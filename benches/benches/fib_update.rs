//! Control-side cost of route churn: 100k route changes (insert or withdraw) applied in
//! batches and published to the workers, the figure behind "100k route changes in ≤ 1 s".

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use xlane_engine::testbed;
use xlane_fib::{FibHandle, Prefix};

const CHANGES: u32 = 100_000;

fn fib_update(c: &mut Criterion) {
    let mut g = c.benchmark_group("fib_update");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(CHANGES)));
    for batch in [1_000u32, 10_000] {
        g.bench_function(format!("100k_changes_batch_{batch}"), |b| {
            b.iter_batched(
                || (testbed::tables(2, 1_000), FibHandle::new()),
                |(mut tables, handle)| {
                    let via = testbed::remote(0).1.underlay_ip;
                    for start in (0..CHANGES).step_by(batch as usize) {
                        for i in start..start + batch {
                            // 50k host routes in 10.128.0.0/9 arrive, then all are withdrawn.
                            let k = i % (CHANGES / 2);
                            let p = Prefix::new((0x0a80_0000 + k * 4).into(), 30).expect("valid");
                            if i < CHANGES / 2 {
                                tables.insert_route(p, via);
                            } else {
                                tables.remove_route(p);
                            }
                        }
                        tables.publish(&handle);
                    }
                    handle
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, fib_update);
criterion_main!(benches);
