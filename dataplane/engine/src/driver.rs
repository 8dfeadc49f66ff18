//! The burst driver: one loop for every kind of port.
//!
//! A driver owns a worker's [`FrameMemory`], its ports and its [`Pipeline`]. Polling a
//! port receives a burst, runs the pipeline over it in place, places each frame by its
//! verdict (a queue per egress port, or back to memory), transmits every queue once and
//! counts everything: each frame ends as a pipeline drop (with its reason, including a
//! route to a port this driver does not serve), a transmitted frame, or a port's
//! `tx_dropped`. As VPP has one graph dispatcher, a new port kind is a new [`Port`]
//! impl, not a new loop.

use crate::counters::CoreCounters;
use crate::drop::DropReason;
use crate::frame::Frame;
use crate::observe::{BurstHook, Observer, Unobserved};
use crate::pipeline::{BURST, Pipeline, Verdict};
use crate::port::{FrameMemory, Packet, Port, bump};
use arrayvec::ArrayVec;
use std::sync::Arc;
use xlane_fib::{Fib, PortId};

/// A worker's ports, their memory and the pipeline between them.
/// Dropping a driver closes its ports (giving their buffers back) before its memory
/// goes: an AF_XDP socket must close before its UMEM is unregistered.
#[derive(Debug)]
pub struct Driver<M: FrameMemory, P: Port<M>> {
    pipeline: Pipeline,
    // Closed by `Drop` (which needs the memory), so before `mem` either way.
    ports: Vec<P>,
    mem: M,
    /// `PortId` → index into `ports` of the entry that transmits for it.
    egress: Vec<Option<u16>>,
    /// Per entry of `ports`: frames to transmit once the current burst is placed.
    pending: Vec<ArrayVec<Packet<M::Buf>, BURST>>,
    /// Trace and capture, when on (see [`crate::observe`]).
    observer: Option<Box<Observer>>,
}

impl<M: FrameMemory, P: Port<M>> Driver<M, P> {
    /// A driver with no ports, adding to `counters` (one per worker).
    #[must_use]
    pub fn new(mem: M, counters: Arc<CoreCounters>) -> Self {
        Self {
            pipeline: Pipeline::new(counters),
            mem,
            ports: Vec::new(),
            egress: Vec::new(),
            pending: Vec::new(),
            observer: None,
        }
    }

    /// The frame memory.
    #[must_use]
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The frame memory, mutably (to open ports in it).
    pub fn mem_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The ports, in polling order.
    #[must_use]
    pub fn ports(&self) -> &[P] {
        &self.ports
    }

    /// The ports, mutably.
    pub fn ports_mut(&mut self) -> &mut [P] {
        &mut self.ports
    }

    /// The pipeline's counters.
    #[must_use]
    pub fn counters(&self) -> &Arc<CoreCounters> {
        self.pipeline.counters()
    }

    /// Install (or, with `None`, remove) what this worker observes; returns the previous.
    pub fn set_observer(&mut self, observer: Option<Box<Observer>>) -> Option<Box<Observer>> {
        std::mem::replace(&mut self.observer, observer)
    }

    /// What this worker observes, if anything.
    pub fn observer_mut(&mut self) -> Option<&mut Observer> {
        self.observer.as_deref_mut()
    }

    /// Serve `port` (after the ports already served).
    pub fn add_port(&mut self, port: P) {
        self.ports.push(port);
        self.pending.push(ArrayVec::new());
        self.reindex();
    }

    /// Close every entry serving `id`, giving their buffers back; returns how many.
    pub fn remove_port(&mut self, id: PortId) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.ports.len() {
            if self.ports[i].id() == id {
                self.pending.remove(i);
                self.ports.remove(i).close(&mut self.mem);
                removed += 1;
            } else {
                i += 1;
            }
        }
        self.reindex();
        removed
    }

    /// Close every port.
    pub fn close_all(&mut self) {
        self.pending.clear();
        self.egress.clear();
        for p in self.ports.drain(..) {
            p.close(&mut self.mem);
        }
    }

    fn reindex(&mut self) {
        self.egress.clear();
        for (i, p) in self.ports.iter().enumerate() {
            let k = usize::from(p.id().0);
            if self.egress.len() <= k {
                self.egress.resize(k + 1, None);
            }
            if self.egress[k].is_none() {
                self.egress[k] = Some(u16::try_from(i).expect("fewer than 65536 port entries"));
            }
        }
    }

    /// Receive one burst from entry `index` into `rx` and forward it; frames received.
    fn poll_port(&mut self, fib: &Fib, index: usize, rx: &mut [Packet<M::Buf>; BURST]) -> usize {
        let (ingress, n) = self.receive(index, rx);
        if n > 0 {
            self.forward(fib, ingress, &rx[..n]);
        }
        n
    }

    /// Receive one burst from entry `index` into `rx` (counted on the port); returns the
    /// port's id and how many frames. The caller owns them: [`forward`](Self::forward)
    /// them (the two halves of what [`poll`](Self::poll) does per entry, for a caller that times
    /// the forwarding alone).
    ///
    /// # Panics
    /// If `index` is not an entry.
    pub fn receive(&mut self, index: usize, rx: &mut [Packet<M::Buf>; BURST]) -> (PortId, usize) {
        let port = &mut self.ports[index];
        let n = port.receive(&mut self.mem, rx).min(BURST);
        bump(&port.counters().rx, n as u64);
        (port.id(), n)
    }

    /// One burst from every entry, then each entry's [`Port::service`]; returns frames
    /// received.
    pub fn poll(&mut self, fib: &Fib) -> usize {
        let mut work = 0;
        // One receive array for the pass: initialising it per port costs more than an
        // empty poll.
        let mut rx = [Packet::default(); BURST];
        for i in 0..self.ports.len() {
            work += self.poll_port(fib, i, &mut rx);
        }
        self.service();
        work
    }

    /// Let every entry take back completed buffers and restock its rings.
    pub fn service(&mut self) {
        for p in &mut self.ports {
            p.service(&mut self.mem);
        }
    }

    /// Run buffers the caller holds (received on `ingress`) through the pipeline, place
    /// each by its verdict and transmit.
    pub fn forward(&mut self, fib: &Fib, ingress: PortId, rx: &[Packet<M::Buf>]) {
        // Observation off costs this one test per burst; the rest is the plain loop.
        if self.observer.is_some() {
            self.forward_observed(fib, ingress, rx);
        } else {
            self.forward_with(fib, ingress, rx, &mut Unobserved);
        }
    }

    /// [`forward`](Self::forward) with the observer's calls. Out of line and cold, so the
    /// unobserved loop keeps the shape (and instruction count) it has without observers.
    #[cold]
    #[inline(never)]
    fn forward_observed(&mut self, fib: &Fib, ingress: PortId, rx: &[Packet<M::Buf>]) {
        if let Some(mut observer) = self.observer.take() {
            self.forward_with(fib, ingress, rx, &mut *observer);
            self.observer = Some(observer);
        }
    }

    /// The forwarding loop, with `hook`'s calls where it is active (`H::ACTIVE` is a
    /// constant: without an observer, this is the loop as it was before observers).
    #[inline(always)]
    fn forward_with<H: BurstHook>(&mut self, fib: &Fib, ingress: PortId, rx: &[Packet<M::Buf>], hook: &mut H) {
        let n = rx.len();
        assert!(n <= BURST, "bursts are at most {BURST} frames");
        let mut verdicts = [Verdict::Drop(DropReason::UnknownPort); BURST];
        // Where each packet lies after the pipeline moved its start (encap, decap).
        let mut placed = [(0u32, 0u32); BURST];
        let mut bufs = [M::Buf::default(); BURST];
        for (b, p) in bufs.iter_mut().zip(rx) {
            *b = p.buf;
        }
        let Self { pipeline, mem, .. } = self;
        mem.with_buffers(&bufs[..n], |slices| {
            let mut frames: ArrayVec<Frame<'_>, BURST> = ArrayVec::new();
            for (buf, p) in slices.iter_mut().zip(rx) {
                frames
                    .push(Frame::new(buf, p.head as usize, p.len as usize).expect("packets lie inside their buffers"));
            }
            if H::ACTIVE {
                hook.begin(fib, ingress);
                for (i, f) in frames.iter().enumerate() {
                    hook.received(i, f);
                }
            }
            pipeline.process(fib, ingress, &mut frames, &mut verdicts[..n]);
            if H::ACTIVE {
                for (i, (f, v)) in frames.iter().zip(&verdicts).enumerate() {
                    hook.processed(i, f, *v);
                }
            }
            for (p, f) in placed.iter_mut().zip(&frames) {
                // A frame lies inside its buffer, and buffers are far smaller than 4 GiB.
                #[expect(clippy::cast_possible_truncation, reason = "offsets within a buffer")]
                {
                    *p = (f.head() as u32, f.len() as u32);
                }
            }
        });
        let mut unplaced = 0;
        for ((&buf, v), (head, len)) in bufs[..n].iter().zip(verdicts).zip(placed) {
            match v {
                // The lookup that finds the queue also finds a port this driver does not
                // serve (still attaching, or just removed): no extra work per frame.
                Verdict::Tx(dst) => match self.egress.get(usize::from(dst.0)).copied().flatten() {
                    Some(k) => self.pending[usize::from(k)].push(Packet { buf, head, len }),
                    None => {
                        self.mem.release(buf);
                        unplaced += 1;
                    }
                },
                Verdict::Drop(_) => self.mem.release(buf),
            }
        }
        if unplaced > 0 {
            self.pipeline.counters().reclassify_tx(unplaced, DropReason::NoEgressPort);
        }
        if H::ACTIVE {
            // The same lookup again, for the observer only: which frames had no port.
            if unplaced > 0 {
                for (i, v) in verdicts[..n].iter().enumerate() {
                    if let Verdict::Tx(dst) = v
                        && self.egress.get(usize::from(dst.0)).copied().flatten().is_none()
                    {
                        hook.unplaced(i);
                    }
                }
            }
            hook.end(fib);
        }
        self.transmit_pending();
    }

    fn transmit_pending(&mut self) {
        for (port, q) in self.ports.iter_mut().zip(&mut self.pending) {
            if q.is_empty() {
                continue;
            }
            let sent = port.transmit(&mut self.mem, q).min(q.len());
            bump(&port.counters().tx, sent as u64);
            bump(&port.counters().tx_dropped, (q.len() - sent) as u64);
            q.clear();
        }
    }
}

impl<M: FrameMemory, P: Port<M>> Drop for Driver<M, P> {
    fn drop(&mut self) {
        self.close_all();
    }
}
