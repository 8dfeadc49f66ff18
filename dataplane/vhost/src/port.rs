//! A vhost-user guest as the engine's [`Port`], over any [`FrameMemory`].
//!
//! Receive reads the guest's transmitted frames straight into free buffers of the
//! worker's memory (one copy, out of guest memory), leaving headroom for encapsulation;
//! transmit copies frames into the guest's receive ring (guest memory is not the
//! worker's memory) and gives the buffers back. Exactly one worker receives from a
//! guest; every worker may transmit to it.

use crate::backend::PortIo;
use crate::net::FrameSink;
use std::os::fd::RawFd;
use std::sync::Arc;
use xlane_engine::{BURST, FrameMemory, Packet, Port, PortCounters};
use xlane_fib::PortId;

/// Headroom in front of a guest's frame in its buffer: room to encapsulate.
pub const GUEST_HEADROOM: u32 = 256;

/// A guest's queues as one worker sees them.
#[derive(Debug)]
pub struct VhostPort {
    id: PortId,
    io: Arc<PortIo>,
    /// Whether this worker takes the guest's frames (exactly one worker does).
    poll_rx: bool,
    counters: Arc<PortCounters>,
}

impl VhostPort {
    /// Pipeline port `id` over the queues `io`; `poll_rx` on the one worker that receives.
    #[must_use]
    pub fn new(id: PortId, io: Arc<PortIo>, poll_rx: bool, counters: Arc<PortCounters>) -> Self {
        Self { id, io, poll_rx, counters }
    }
}

/// A guest's frames read straight into lent buffers.
struct Sink<'a, 'b> {
    bufs: &'a mut [&'b mut [u8]],
    next: usize,
    lens: [u32; BURST],
}

impl FrameSink for Sink<'_, '_> {
    fn buffer(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.bufs.get_mut(self.next)?[GUEST_HEADROOM as usize..])
    }

    fn commit(&mut self, len: usize) {
        self.lens[self.next] = u32::try_from(len).expect("a frame fits its buffer");
        self.next += 1;
    }
}

impl<M: FrameMemory> Port<M> for VhostPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn counters(&self) -> &PortCounters {
        &self.counters
    }

    fn receive(&mut self, mem: &mut M, out: &mut [Packet<M::Buf>; BURST]) -> usize {
        if !self.poll_rx {
            return 0;
        }
        // Buffers only for what the guest queued: an idle guest costs a ring read.
        let waiting = self.io.guest_frames_waiting().min(BURST);
        let mut bufs = [M::Buf::default(); BURST];
        let mut k = 0;
        while k < waiting
            && let Some(b) = mem.alloc()
        {
            bufs[k] = b;
            k += 1;
        }
        if k == 0 {
            return 0;
        }
        let io = &self.io;
        let (n, lens) = mem.with_buffers(&bufs[..k], |slices| {
            let mut sink = Sink { bufs: slices, next: 0, lens: [0; BURST] };
            let _ = io.drain_from_guest(&mut sink, k);
            (sink.next, sink.lens)
        });
        for &b in &bufs[n..k] {
            mem.release(b);
        }
        for i in 0..n {
            out[i] = Packet { buf: bufs[i], head: GUEST_HEADROOM, len: lens[i] };
        }
        n
    }

    fn transmit(&mut self, mem: &mut M, pkts: &[Packet<M::Buf>]) -> usize {
        let mut bufs = [M::Buf::default(); BURST];
        for (b, p) in bufs.iter_mut().zip(pkts) {
            *b = p.buf;
        }
        let bufs = &bufs[..pkts.len()];
        let io = &self.io;
        let taken = mem.with_buffers(bufs, |slices| {
            io.send_burst_to_guest(slices.iter().zip(pkts).map(|(b, p)| &b[p.head as usize..(p.head + p.len) as usize]))
        });
        for &b in bufs {
            mem.release(b);
        }
        usize::try_from(taken).unwrap_or(usize::MAX)
    }

    fn close(self, _mem: &mut M) {
        // A guest port holds no buffer between bursts.
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.poll_rx.then(|| self.io.ready_fd())
    }

    fn prepare_sleep(&mut self) -> bool {
        // Guests kick their rings only when asked; if one queued frames meanwhile, poll on.
        self.poll_rx && self.io.arm_guest_kick()
    }

    fn after_sleep(&mut self) {
        if self.poll_rx {
            self.io.clear_ready();
            self.io.disarm_guest_kick();
        }
    }
}
