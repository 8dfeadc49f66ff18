//! What a [`super::UdpReceiver`] counts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a receiver did, on one worker. Single writer: relaxed load + store.
#[derive(Debug, Default)]
pub struct UdpRxStats {
    /// Messages read (each one datagram or a GRO'd train of them).
    pub messages: AtomicU64,
    /// Datagrams handed to the pipeline.
    pub datagrams: AtomicU64,
    /// Messages longer than their staging area (dropped whole).
    pub truncated: AtomicU64,
    /// Datagrams dropped for want of a frame in the worker's memory.
    pub no_buffer: AtomicU64,
    /// Datagrams too large for a frame, read where no jumbo store was given.
    pub oversize: AtomicU64,
    /// Receives the kernel failed (other than "nothing waiting").
    pub errors: AtomicU64,
    /// Frames off a packet tap that were not unfragmented IPv4 UDP with valid headers.
    pub malformed: AtomicU64,
    /// Datagrams handed out where the kernel wrote them (a jumbo slot each): no copy.
    pub in_place: AtomicU64,
    /// Datagrams the kernel dropped at the socket since it was made (its receive buffer
    /// full): `SK_MEMINFO_DROPS`, as of the last [`UdpReceiver::refresh_stats`].
    pub kernel_dropped: AtomicU64,
}

impl UdpRxStats {
    /// The counters as a user reads them: every drop reason summed.
    #[must_use]
    pub fn totals(&self) -> UdpRxTotals {
        let get = |c: &AtomicU64| c.load(Relaxed);
        UdpRxTotals {
            messages: get(&self.messages),
            datagrams: get(&self.datagrams),
            in_place: get(&self.in_place),
            dropped: get(&self.truncated)
                + get(&self.no_buffer)
                + get(&self.oversize)
                + get(&self.errors)
                + get(&self.malformed),
            kernel_dropped: get(&self.kernel_dropped),
        }
    }
}

/// [`UdpRxStats::totals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpRxTotals {
    /// Messages read.
    pub messages: u64,
    /// Datagrams handed to the pipeline.
    pub datagrams: u64,
    /// ... of which where the kernel wrote them.
    pub in_place: u64,
    /// Datagrams dropped by the receiver, for any reason.
    pub dropped: u64,
    /// Datagrams the kernel dropped at the sockets (receive buffers full).
    pub kernel_dropped: u64,
}

impl core::iter::Sum for UdpRxTotals {
    /// A node's totals over its workers' receivers.
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, t| Self {
            messages: a.messages + t.messages,
            datagrams: a.datagrams + t.datagrams,
            in_place: a.in_place + t.in_place,
            dropped: a.dropped + t.dropped,
            kernel_dropped: a.kernel_dropped + t.kernel_dropped,
        })
    }
}
