//! IPv4 longest-prefix match: a DIR-16-8-8 multibit trie with leaf pushing.
//!
//! Hand-written rather than taken from a crate because this is the per-packet lookup:
//! general tries (prefix-trie, treebitmap) walk several nodes with branches per level,
//! while here a lookup is one load from a 256 KiB root table for prefixes up to /16, two
//! for up to /24 (every node subnet) and three for /32 (local pods), with no branch on
//! prefix length. `benches/` compares it with `prefix-trie` in the same run.
//!
//! Updates are made on the control side by [`LpmBuilder`], which keeps the routes (the
//! RIB) and recompiles only the /16 slots a change touches; the compiled [`Lpm`] is then
//! cloned into an immutable snapshot and published (see [`crate::FibHandle`]).

use std::collections::BTreeMap;

/// Entry flag: the low 31 bits index a child chunk instead of holding a value.
const CHILD: u32 = 1 << 31;
/// Entry value meaning "no route".
const NONE: u32 = CHILD - 1;
/// Largest value a route may carry.
pub const MAX_VALUE: u32 = NONE - 1;

const ROOT_SLOTS: usize = 1 << 16;
type Chunk = [u32; 256];

/// An IPv4 prefix: network address (host bits zero) and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: u32,
    len: u8,
}

/// A prefix length above 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("prefix length {0} is longer than 32")]
pub struct BadPrefixLen(pub u8);

impl Prefix {
    /// A prefix from any address inside it; host bits are cleared.
    ///
    /// # Errors
    /// [`BadPrefixLen`] when `len > 32`.
    pub fn new(addr: core::net::Ipv4Addr, len: u8) -> Result<Self, BadPrefixLen> {
        if len > 32 {
            return Err(BadPrefixLen(len));
        }
        Ok(Self { addr: u32::from(addr) & mask(len), len })
    }

    /// Network address.
    #[must_use]
    pub fn addr(self) -> core::net::Ipv4Addr {
        self.addr.into()
    }

    /// Prefix length.
    #[must_use]
    #[expect(clippy::len_without_is_empty, reason = "a prefix length, not a container size")]
    pub fn len(self) -> u8 {
        self.len
    }

    /// Whether `addr` is inside this prefix.
    #[must_use]
    pub fn contains(self, addr: core::net::Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.len) == self.addr
    }
}

impl From<ipnet::Ipv4Net> for Prefix {
    fn from(n: ipnet::Ipv4Net) -> Self {
        Self { addr: u32::from(n.network()), len: n.prefix_len() }
    }
}

impl From<Prefix> for ipnet::Ipv4Net {
    fn from(p: Prefix) -> Self {
        ipnet::Ipv4Net::new(p.addr(), p.len).expect("length checked on construction")
    }
}

impl core::fmt::Display for Prefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

const fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// A compiled, immutable lookup table. Values are `u32` next-hop ids ≤ [`MAX_VALUE`].
#[derive(Clone)]
pub struct Lpm {
    root: Box<[u32; ROOT_SLOTS]>,
    chunks: Vec<Chunk>,
}

impl core::fmt::Debug for Lpm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Lpm").field("chunks", &self.chunks.len()).finish_non_exhaustive()
    }
}

impl Default for Lpm {
    fn default() -> Self {
        let root: Box<[u32; ROOT_SLOTS]> = vec![NONE; ROOT_SLOTS].into_boxed_slice().try_into().expect("exact length");
        Self { root, chunks: Vec::new() }
    }
}

impl Lpm {
    /// Longest-prefix match for one address.
    #[inline]
    #[must_use]
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        let mut e = self.root[(addr >> 16) as usize];
        if e & CHILD != 0 {
            e = self.chunks[(e & !CHILD) as usize][((addr >> 8) & 0xff) as usize];
            if e & CHILD != 0 {
                e = self.chunks[(e & !CHILD) as usize][(addr & 0xff) as usize];
            }
        }
        if e == NONE { None } else { Some(e) }
    }

    /// Look up a burst of addresses. Issuing every root load before the dependent chunk
    /// loads lets the CPU overlap their cache misses (as DPDK's `rte_lpm_lookupx4`).
    #[inline]
    pub fn lookup_burst(&self, addrs: &[u32], out: &mut [Option<u32>]) {
        let n = addrs.len().min(out.len());
        let mut first = [0u32; 64];
        for chunk in (0..n).step_by(64) {
            let end = (chunk + 64).min(n);
            for (i, a) in addrs[chunk..end].iter().enumerate() {
                first[i] = self.root[(a >> 16) as usize];
            }
            for (i, (a, o)) in addrs[chunk..end].iter().zip(&mut out[chunk..end]).enumerate() {
                let mut e = first[i];
                if e & CHILD != 0 {
                    e = self.chunks[(e & !CHILD) as usize][((a >> 8) & 0xff) as usize];
                    if e & CHILD != 0 {
                        e = self.chunks[(e & !CHILD) as usize][(a & 0xff) as usize];
                    }
                }
                *o = if e == NONE { None } else { Some(e) };
            }
        }
    }

    /// Bytes of table memory (root and chunks).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        ROOT_SLOTS * 4 + self.chunks.len() * core::mem::size_of::<Chunk>()
    }
}

/// The value a route carries is larger than [`MAX_VALUE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("route value {0} exceeds the maximum {MAX_VALUE}")]
pub struct ValueTooLarge(pub u32);

/// The control-side route table that compiles into an [`Lpm`].
#[derive(Clone, Default)]
pub struct LpmBuilder {
    /// All routes, ordered by (network, length) so the routes inside one /16 are a range.
    rib: BTreeMap<(u32, u8), u32>,
    /// Leaf value per /16 slot from routes of length ≤ 16, and the length that owns it.
    short_value: Vec<u32>,
    short_len: Vec<u8>,
    /// Chunks owned by each slot, to free them when the slot is recompiled.
    slot_chunks: BTreeMap<u16, Vec<u32>>,
    free_chunks: Vec<u32>,
    lpm: Lpm,
    dirty: Vec<u16>,
    dirty_all: bool,
}

impl core::fmt::Debug for LpmBuilder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LpmBuilder").field("routes", &self.rib.len()).finish_non_exhaustive()
    }
}

impl LpmBuilder {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self { short_value: vec![NONE; ROOT_SLOTS], short_len: vec![0; ROOT_SLOTS], ..Self::default() }
    }

    /// Number of routes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rib.len()
    }

    /// Whether there are no routes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rib.is_empty()
    }

    /// The value of exactly this prefix.
    #[must_use]
    pub fn get(&self, p: Prefix) -> Option<u32> {
        self.rib.get(&(p.addr, p.len)).copied()
    }

    /// Iterate over the routes in (network, length) order.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, u32)> + '_ {
        self.rib.iter().map(|(&(addr, len), &v)| (Prefix { addr, len }, v))
    }

    /// Add or replace a route; returns the previous value.
    ///
    /// # Errors
    /// [`ValueTooLarge`] when `value > MAX_VALUE`.
    pub fn insert(&mut self, p: Prefix, value: u32) -> Result<Option<u32>, ValueTooLarge> {
        if value > MAX_VALUE {
            return Err(ValueTooLarge(value));
        }
        let old = self.rib.insert((p.addr, p.len), value);
        if old != Some(value) {
            self.touch(p, Some(value));
        }
        Ok(old)
    }

    /// Remove a route; returns its value.
    pub fn remove(&mut self, p: Prefix) -> Option<u32> {
        let old = self.rib.remove(&(p.addr, p.len));
        if old.is_some() {
            self.touch(p, None);
        }
        old
    }

    fn touch(&mut self, p: Prefix, value: Option<u32>) {
        if p.len > 16 {
            self.dirty.push((p.addr >> 16) as u16);
            return;
        }
        let first = (p.addr >> 16) as usize;
        let count = 1usize << (16 - p.len);
        let slots = first..first + count;
        match value {
            Some(v) => {
                for s in slots.clone() {
                    if self.short_len[s] <= p.len {
                        self.short_value[s] = v;
                        self.short_len[s] = p.len;
                    }
                }
            }
            None => {
                // Slots this prefix owned fall back to the longest shorter prefix covering it.
                let (cover_value, cover_len) = self.covering_short(p);
                for s in slots.clone() {
                    if self.short_len[s] == p.len {
                        self.short_value[s] = cover_value;
                        self.short_len[s] = cover_len;
                    }
                }
            }
        }
        if count > 4096 {
            self.dirty_all = true;
        } else {
            self.dirty.extend(slots.filter_map(|s| u16::try_from(s).ok()));
        }
    }

    /// The longest route strictly shorter than `p` (and ≤ /16) that covers it.
    fn covering_short(&self, p: Prefix) -> (u32, u8) {
        (0..p.len)
            .rev()
            .find_map(|len| self.rib.get(&(p.addr & mask(len), len)).map(|&v| (v, len)))
            .unwrap_or((NONE, 0))
    }

    /// Recompile the slots touched since the last call and return the table.
    pub fn compile(&mut self) -> &Lpm {
        if self.dirty_all {
            self.dirty.clear();
            self.dirty_all = false;
            for s in 0..=u16::MAX {
                self.compile_slot(s);
            }
        } else {
            let mut dirty = core::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for &s in &dirty {
                self.compile_slot(s);
            }
            dirty.clear();
            self.dirty = dirty;
        }
        &self.lpm
    }

    fn alloc_chunk(&mut self, fill: u32) -> u32 {
        if let Some(i) = self.free_chunks.pop() {
            self.lpm.chunks[i as usize] = [fill; 256];
            i
        } else {
            self.lpm.chunks.push([fill; 256]);
            u32::try_from(self.lpm.chunks.len() - 1).expect("fewer than 2^31 chunks")
        }
    }

    fn compile_slot(&mut self, slot: u16) {
        if let Some(old) = self.slot_chunks.remove(&slot) {
            self.free_chunks.extend(old);
        }
        let base = u32::from(slot) << 16;
        let default = self.short_value[usize::from(slot)];
        let mut long: Vec<(u8, u32, u32)> =
            self.rib.range((base, 17)..=(base | 0xffff, 32)).map(|(&(addr, len), &v)| (len, addr, v)).collect();
        if long.is_empty() {
            self.lpm.root[usize::from(slot)] = default;
            return;
        }
        // Paint shorter prefixes first so longer ones overwrite them.
        long.sort_unstable();
        let mut owned = Vec::new();
        let l2 = self.alloc_chunk(default);
        owned.push(l2);
        for (len, addr, v) in long {
            let i2 = ((addr >> 8) & 0xff) as usize;
            if len <= 24 {
                let n = 1usize << (24 - len);
                self.lpm.chunks[l2 as usize][i2..i2 + n].fill(v);
            } else {
                let e = self.lpm.chunks[l2 as usize][i2];
                let l3 = if e & CHILD != 0 {
                    e & !CHILD
                } else {
                    let c = self.alloc_chunk(e);
                    owned.push(c);
                    self.lpm.chunks[l2 as usize][i2] = c | CHILD;
                    c
                };
                let i3 = (addr & 0xff) as usize;
                let n = 1usize << (32 - len);
                self.lpm.chunks[l3 as usize][i3..i3 + n].fill(v);
            }
        }
        self.lpm.root[usize::from(slot)] = l2 | CHILD;
        self.slot_chunks.insert(slot, owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use proptest::prelude::*;

    fn p(s: &str) -> Prefix {
        s.parse::<ipnet::Ipv4Net>().unwrap().into()
    }

    fn ip(s: &str) -> u32 {
        s.parse::<Ipv4Addr>().unwrap().into()
    }

    #[test]
    fn longest_match_wins_at_every_level() {
        let mut b = LpmBuilder::new();
        for (pfx, v) in [
            ("0.0.0.0/0", 1),
            ("10.0.0.0/8", 2),
            ("10.244.0.0/16", 3),
            ("10.244.1.0/24", 4),
            ("10.244.1.128/25", 5),
            ("10.244.1.7/32", 6),
        ] {
            b.insert(p(pfx), v).unwrap();
        }
        let l = b.compile().clone();
        assert_eq!(l.lookup(ip("192.0.2.1")), Some(1));
        assert_eq!(l.lookup(ip("10.1.2.3")), Some(2));
        assert_eq!(l.lookup(ip("10.244.2.1")), Some(3));
        assert_eq!(l.lookup(ip("10.244.1.1")), Some(4));
        assert_eq!(l.lookup(ip("10.244.1.200")), Some(5));
        assert_eq!(l.lookup(ip("10.244.1.7")), Some(6));
    }

    #[test]
    fn removal_restores_covering_route() {
        let mut b = LpmBuilder::new();
        b.insert(p("10.0.0.0/8"), 1).unwrap();
        b.insert(p("10.244.0.0/14"), 2).unwrap();
        b.insert(p("10.244.1.0/24"), 3).unwrap();
        assert_eq!(b.compile().lookup(ip("10.245.0.1")), Some(2));
        b.remove(p("10.244.0.0/14"));
        let l = b.compile();
        assert_eq!(l.lookup(ip("10.245.0.1")), Some(1));
        assert_eq!(l.lookup(ip("10.244.1.9")), Some(3));
        assert_eq!(l.lookup(ip("10.244.2.9")), Some(1));
        b.remove(p("10.0.0.0/8"));
        b.remove(p("10.244.1.0/24"));
        let l = b.compile();
        assert_eq!(l.lookup(ip("10.244.1.9")), None);
        assert_eq!(l.lookup(ip("10.1.1.1")), None);
    }

    #[test]
    fn default_route_change_reaches_every_slot() {
        let mut b = LpmBuilder::new();
        b.insert(p("10.244.1.0/24"), 3).unwrap();
        b.insert(p("0.0.0.0/0"), 9).unwrap();
        let l = b.compile();
        assert_eq!(l.lookup(ip("255.255.255.255")), Some(9));
        assert_eq!(l.lookup(ip("10.244.1.1")), Some(3));
        assert_eq!(l.lookup(ip("10.244.2.1")), Some(9));
    }

    #[test]
    fn rejects_out_of_range() {
        assert_eq!(Prefix::new(Ipv4Addr::UNSPECIFIED, 33), Err(BadPrefixLen(33)));
        assert_eq!(LpmBuilder::new().insert(p("1.0.0.0/8"), NONE), Err(ValueTooLarge(NONE)));
    }

    /// Reference: a linear scan over the route list.
    fn naive(routes: &BTreeMap<(u32, u8), u32>, a: u32) -> Option<u32> {
        routes.iter().filter(|((n, l), _)| a & mask(*l) == *n).max_by_key(|((_, l), _)| *l).map(|(_, v)| *v)
    }

    fn arb_prefix() -> impl Strategy<Value = Prefix> {
        // Cluster-like space so prefixes overlap often.
        (0u32..4, 0u32..=0xffff, 0u8..=32).prop_map(|(hi, lo, len)| {
            let addr = 0x0af4_0000 ^ (hi << 16) ^ (lo << (lo % 13));
            Prefix::new(addr.into(), len).unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn matches_linear_scan(ops in proptest::collection::vec((arb_prefix(), 0u32..1000, any::<bool>()), 1..120),
                               probes in proptest::collection::vec(0u32..0x0004_0000, 64)) {
            let mut b = LpmBuilder::new();
            let mut model = BTreeMap::new();
            for (i, (pfx, v, add)) in ops.iter().enumerate() {
                if *add { b.insert(*pfx, *v).unwrap(); model.insert((pfx.addr, pfx.len), *v); }
                else { b.remove(*pfx); model.remove(&(pfx.addr, pfx.len)); }
                // Compile at irregular points, as control batches do.
                if i % 7 == 0 { b.compile(); }
            }
            let l = b.compile().clone();
            let mut addrs: Vec<u32> = probes.iter().map(|x| 0x0af4_0000 ^ x).collect();
            addrs.extend(model.keys().map(|(n, _)| *n));
            addrs.extend(model.keys().map(|(n, l)| n | !mask(*l)));
            let mut out = vec![None; addrs.len()];
            l.lookup_burst(&addrs, &mut out);
            for (a, got) in addrs.iter().zip(out) {
                prop_assert_eq!(got, naive(&model, *a), "address {}", Ipv4Addr::from(*a));
                prop_assert_eq!(l.lookup(*a), got);
            }
        }
    }
}
