//! Inputs shared by the xlane benches: reproducible route sets and probe addresses.
#![forbid(unsafe_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A route set shaped like a real table: mostly /16–/24 (node subnets and aggregates),
/// some /25–/32 (host routes), a few short prefixes. `(network, length, value)`.
#[must_use]
pub fn route_set(n: usize, seed: u64) -> Vec<(u32, u8, u32)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len: u8 = match rng.gen_range(0..100) {
            0..=2 => rng.gen_range(8..16),
            3..=84 => rng.gen_range(16..=24),
            _ => rng.gen_range(25..=32),
        };
        let addr: u32 = rng.r#gen::<u32>() & (u32::MAX << (32 - u32::from(len)));
        if seen.insert((addr, len)) {
            let value = u32::try_from(out.len()).expect("fewer than 2^32 routes");
            out.push((addr, len, value));
        }
    }
    out
}

/// Probe addresses: 90% inside a random route of the set, 10% uniformly random.
#[must_use]
pub fn probes(routes: &[(u32, u8, u32)], n: usize, seed: u64) -> Vec<u32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if rng.gen_bool(0.9) {
                let (addr, len, _) = routes[rng.gen_range(0..routes.len())];
                let host_bits = if len == 32 { 0 } else { u32::MAX >> len };
                addr | (rng.r#gen::<u32>() & host_bits)
            } else {
                rng.r#gen()
            }
        })
        .collect()
}
