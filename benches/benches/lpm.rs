//! LPM lookups: xlane's DIR-16-8-8 table against the `prefix-trie` crate, same routes,
//! same probe addresses, same run. Throughput is lookups per second.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use xlane_benches::{probes, route_set};
use xlane_fib::{LpmBuilder, Prefix};

const PROBES: usize = 4096;

fn lpm(c: &mut Criterion) {
    let mut g = c.benchmark_group("lpm");
    g.throughput(Throughput::Elements(PROBES as u64));
    for n in [1_000usize, 10_000, 100_000] {
        let routes = route_set(n, 7);
        let addrs = probes(&routes, PROBES, 11);

        let mut b = LpmBuilder::new();
        let mut trie = prefix_trie::PrefixMap::<(u32, u8), u32>::new();
        for &(addr, len, v) in &routes {
            b.insert(Prefix::new(addr.into(), len).expect("valid"), v).expect("value in range");
            trie.insert((addr, len), v);
        }
        let table = b.compile().clone();
        // Same answers, or the comparison means nothing.
        for &a in &addrs {
            assert_eq!(table.lookup(a), trie.get_lpm(&(a, 32)).map(|(_, v)| *v));
        }

        g.bench_with_input(BenchmarkId::new("xlane_burst", n), &addrs, |bch, addrs| {
            let mut out = [None; 64];
            bch.iter(|| {
                let mut hits = 0usize;
                for chunk in addrs.chunks(64) {
                    table.lookup_burst(black_box(chunk), &mut out[..chunk.len()]);
                    hits += out[..chunk.len()].iter().flatten().count();
                }
                hits
            });
        });
        g.bench_with_input(BenchmarkId::new("xlane_single", n), &addrs, |bch, addrs| {
            bch.iter(|| addrs.iter().filter_map(|&a| table.lookup(black_box(a))).fold(0u32, u32::wrapping_add));
        });
        g.bench_with_input(BenchmarkId::new("prefix_trie", n), &addrs, |bch, addrs| {
            bch.iter(|| {
                addrs
                    .iter()
                    .filter_map(|&a| trie.get_lpm(&(black_box(a), 32)).map(|(_, v)| *v))
                    .fold(0u32, u32::wrapping_add)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, lpm);
criterion_main!(benches);
