//! Per-core counters.
//!
//! Each worker owns one [`CoreCounters`] (cache-line aligned so two cores never share a
//! line) and is its only writer: it tallies a burst in plain integers and adds them with
//! relaxed load + store (no locked instruction). Readers sum all cores into a
//! [`CounterSnapshot`] (as Firecracker's metrics do).

use crate::drop::DropReason;
use crate::offload::OffloadError;
use crate::port::bump;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! pipeline_counters {
    ($($field:ident => $desc:literal;)*) => {
        /// One core's counters. Written only by its worker.
        #[derive(Debug, Default)]
        #[repr(align(64))]
        pub struct CoreCounters {
            $(#[doc = $desc] $field: AtomicU64,)*
            drops: [AtomicU64; DropReason::COUNT],
            offload: [AtomicU64; OffloadError::COUNT],
        }

        /// A plain-number copy of counters, summed over cores.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $(#[doc = $desc] pub $field: u64,)*
            /// Drops, indexed by [`DropReason::index`].
            pub drops: [u64; DropReason::COUNT],
            /// Why super-packets were refused (each also a
            /// [`DropReason::SuperPacket`] drop), indexed by [`OffloadError::index`].
            pub offload: [u64; OffloadError::COUNT],
        }

        impl Default for CounterSnapshot {
            fn default() -> Self {
                Self { $($field: 0,)* drops: [0; DropReason::COUNT], offload: [0; OffloadError::COUNT] }
            }
        }

        impl CoreCounters {
            /// Add a burst's tally. Single writer: load + store, no atomic RMW.
            pub fn add(&self, t: &CounterSnapshot) {
                $(bump(&self.$field, t.$field);)*
                for (c, &n) in self.drops.iter().zip(&t.drops) {
                    bump(c, n);
                }
                for (c, &n) in self.offload.iter().zip(&t.offload) {
                    bump(c, n);
                }
            }

            /// Frames the pipeline counted as forwarded that its caller could not place
            /// (no port serves their egress): move `n` of them from `tx` to the drop
            /// `reason`. Single writer, so the wrapping subtraction is exact.
            pub fn reclassify_tx(&self, n: u64, reason: DropReason) {
                bump(&self.tx, n.wrapping_neg());
                bump(&self.drops[reason.index()], n);
            }

            /// Read this core's counters.
            #[must_use]
            pub fn snapshot(&self) -> CounterSnapshot {
                let mut s = CounterSnapshot { $($field: self.$field.load(Relaxed),)* ..CounterSnapshot::default() };
                for (d, c) in s.drops.iter_mut().zip(&self.drops) {
                    *d = c.load(Relaxed);
                }
                for (d, c) in s.offload.iter_mut().zip(&self.offload) {
                    *d = c.load(Relaxed);
                }
                s
            }
        }

        impl CounterSnapshot {
            /// Add another snapshot (summing cores).
            pub fn merge(&mut self, o: &Self) {
                $(self.$field += o.$field;)*
                for (d, s) in self.drops.iter_mut().zip(&o.drops) {
                    *d += s;
                }
                for (d, s) in self.offload.iter_mut().zip(&o.offload) {
                    *d += s;
                }
            }

            /// Named non-drop counters, for printing and metrics.
            #[must_use]
            pub fn named(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($field), $desc, self.$field),)*]
            }
        }
    };
}

pipeline_counters! {
    rx => "frames handed to the pipeline";
    tx => "frames the pipeline forwarded (the four kinds below and the ICMP errors)";
    bursts => "bursts processed";
    encapsulated => "frames encapsulated towards a remote node";
    decapsulated => "frames decapsulated and delivered to a local pod";
    local => "frames routed between local pods";
    arp_replies => "ARP requests answered by the proxy";
    icmp_errors => "ICMP errors originated (time exceeded, fragmentation needed), each for a frame counted as a drop";
    icmp_rate_limited => "ICMP time-exceeded errors not sent: over the source's or the core's rate";
    gso_packets => "TCP super-packets (GSO) received from ports that keep offloads, each routed once and counted once in rx";
    gso_segments => "segments the engine cut super-packets into, towards ports without offloads";
}

impl CoreCounters {
    /// A super-packet the pipeline forwarded was cut into `n` segments.
    pub fn add_gso_segments(&self, n: u64) {
        bump(&self.gso_segments, n);
    }

    /// A super-packet the pipeline forwarded could not be delivered: move it from `tx`
    /// to [`DropReason::SuperPacket`], and count why.
    pub fn refuse_super(&self, why: OffloadError) {
        self.reclassify_tx(1, DropReason::SuperPacket);
        bump(&self.offload[why.index()], 1);
    }
}

impl CounterSnapshot {
    /// Total drops.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Drops for one reason.
    #[must_use]
    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }

    /// Conservation: every frame in, and every ICMP error the pipeline made out of a
    /// dropped one, was forwarded or counted as a drop.
    #[must_use]
    pub fn conserved(&self) -> bool {
        self.rx + self.icmp_errors == self.tx + self.dropped()
    }

    /// Sum a set of per-core counters.
    pub fn sum<'a>(cores: impl IntoIterator<Item = &'a CoreCounters>) -> Self {
        let mut s = Self::default();
        for c in cores {
            s.merge(&c.snapshot());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_snapshot_and_sum() {
        let a = CoreCounters::default();
        let b = CoreCounters::default();
        let mut t = CounterSnapshot { rx: 3, tx: 2, ..Default::default() };
        t.drops[DropReason::NoRoute.index()] = 1;
        a.add(&t);
        a.add(&t);
        b.add(&t);
        let s = CounterSnapshot::sum([&a, &b]);
        assert_eq!((s.rx, s.tx, s.drop_count(DropReason::NoRoute)), (9, 6, 3));
        assert!(s.conserved());
        assert_eq!(core::mem::align_of::<CoreCounters>(), 64);
    }
}
