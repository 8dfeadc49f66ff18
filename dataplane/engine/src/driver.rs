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
use crate::offload::{self, JUMBO_HEADROOM, Jumbo, OffloadError, OffloadMeta, PartialCsum};
use crate::pipeline::{BURST, Pipeline, Verdict};
use crate::port::{FrameMemory, Offloads, Packet, Port, PortCounters, bump};
use arrayvec::ArrayVec;
use std::sync::Arc;
use xlane_fib::{Fib, PortId, PortRole};
use xlane_wire::VXLAN_OVERHEAD;

/// Where a segment's inner packet starts in its buffer: the outer headers go in front,
/// as in a received frame's headroom.
const SEGMENT_HEAD: usize = 256;
/// Most segments one super-packet is cut into: 64 KiB at an MSS of 512. A smaller
/// segment size from a pod is refused rather than multiplied into thousands of frames.
pub const MAX_SEGMENTS: usize = 128;

/// What [`Driver::receive`] took from a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The port's id.
    pub ingress: PortId,
    /// Ordinary frames, in the caller's array.
    pub frames: usize,
    /// Super-packets, held by the driver until the next [`Driver::forward`].
    pub supers: usize,
}

impl Received {
    /// Nothing was received.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.frames == 0 && self.supers == 0
    }
}

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
    /// Per entry of `ports`: what it carries beyond plain frames (super-packets in and
    /// out, encapsulated ones out).
    offloading: Vec<Offloads>,
    /// Super-packets of the burst just received, once a port that keeps offloads is
    /// served (4 MiB of address space, touched as super-packets use it).
    jumbo: Option<Box<Jumbo>>,
    /// Super-packets of the burst routed whole to one port, sent together
    /// ([`Port::transmit_offloaded_burst`]) before anything else goes to that port.
    wholes: Wholes,
}

/// A routed super-packet waiting in its jumbo slot to be sent whole.
#[derive(Debug, Clone, Copy)]
struct Whole {
    /// Its record in the jumbo store.
    index: u8,
    /// Where the frame lies in its slot after the pipeline (decapsulation moves it).
    head: u32,
    len: u32,
    meta: OffloadMeta,
}

/// The super-packets of a burst on their way to one port whole.
#[derive(Debug, Default)]
struct Wholes {
    /// The entry of `ports` they go to.
    port: Option<usize>,
    frames: ArrayVec<Whole, BURST>,
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
            offloading: Vec::new(),
            jumbo: None,
            wholes: Wholes::default(),
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

    /// The ports and the frame memory at once (to work on ports in their memory).
    pub fn ports_and_mem(&mut self) -> (&mut [P], &mut M) {
        (&mut self.ports, &mut self.mem)
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
        if port.offloads().receives_large() && self.jumbo.is_none() {
            self.jumbo = Some(Box::new(Jumbo::new()));
        }
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
        self.offloading.clear();
        for p in self.ports.drain(..) {
            p.close(&mut self.mem);
        }
    }

    fn reindex(&mut self) {
        self.offloading.clear();
        self.offloading.extend(self.ports.iter().map(Port::offloads));
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
        let r = self.receive(index, rx);
        if !r.is_empty() {
            self.forward(fib, r.ingress, &rx[..r.frames]);
        }
        r.frames + r.supers
    }

    /// Receive one burst from entry `index` into `rx` (counted on the port): ordinary
    /// frames in `rx[..frames]`, which the caller now owns, and super-packets the driver
    /// keeps. [`forward`](Self::forward) them next, before another receive (the two
    /// halves of what [`poll`](Self::poll) does per entry, for a caller that times the
    /// forwarding alone).
    ///
    /// # Panics
    /// If `index` is not an entry.
    pub fn receive(&mut self, index: usize, rx: &mut [Packet<M::Buf>; BURST]) -> Received {
        let port = &mut self.ports[index];
        let (n, supers) = match self.jumbo.as_deref_mut() {
            Some(jumbo) if self.offloading[index].receives_large() => {
                jumbo.clear();
                (port.receive_offloaded(&mut self.mem, rx, jumbo).min(BURST), jumbo.len())
            }
            _ => (port.receive(&mut self.mem, rx).min(BURST), 0),
        };
        bump(&port.counters().rx, (n + supers) as u64);
        Received { ingress: port.id(), frames: n, supers }
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
    /// each by its verdict and transmit; then the super-packets the last
    /// [`receive`](Self::receive) kept, each after the frames that arrived before it.
    pub fn forward(&mut self, fib: &Fib, ingress: PortId, rx: &[Packet<M::Buf>]) {
        // Super-packets in the burst: the same, in arrival order (one test per burst).
        if self.jumbo.as_ref().is_some_and(|j| !j.is_empty()) {
            self.forward_with_supers(fib, ingress, rx);
            return;
        }
        self.forward_frames(fib, ingress, rx);
    }

    /// [`forward`](Self::forward) of ordinary frames only.
    fn forward_frames(&mut self, fib: &Fib, ingress: PortId, rx: &[Packet<M::Buf>]) {
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
                        hook.unplaced(i, DropReason::NoEgressPort);
                    }
                }
            }
            hook.end(fib);
        }
        self.transmit_pending();
    }

    fn transmit_pending(&mut self) {
        for (port, q) in self.ports.iter_mut().zip(&mut self.pending) {
            flush(&mut self.mem, port, q);
        }
    }

    /// Forward a burst with super-packets: runs of ordinary frames and each super-packet
    /// in the order they arrived, every run transmitted before the next starts, so no
    /// flow is reordered on its way out.
    #[cold]
    fn forward_with_supers(&mut self, fib: &Fib, ingress: PortId, rx: &[Packet<M::Buf>]) {
        let supers = self.jumbo.as_ref().map_or(0, |j| j.len());
        let mut done = 0;
        for j in 0..supers {
            let before = self.jumbo.as_ref().map_or(0, |jb| usize::from(jb.frames()[j].before)).min(rx.len());
            if before > done {
                self.send_wholes();
                self.forward_frames(fib, ingress, &rx[done..before]);
                done = before;
            }
            if let Some((k, whole)) = self.forward_super(fib, ingress, j) {
                if self.wholes.port != Some(k) {
                    self.send_wholes();
                    self.wholes.port = Some(k);
                }
                self.wholes.frames.push(whole);
            }
        }
        self.send_wholes();
        if done < rx.len() {
            self.forward_frames(fib, ingress, &rx[done..]);
        }
        if let Some(j) = self.jumbo.as_deref_mut() {
            j.clear();
        }
    }

    /// Send the super-packets waiting to go whole to one port, in one call.
    fn send_wholes(&mut self) {
        let Self { mem, ports, jumbo, wholes, .. } = self;
        let Some(k) = wholes.port.take() else { return };
        let Some(jumbo) = jumbo.as_deref() else { return };
        let frames: ArrayVec<&[u8], BURST> = wholes
            .frames
            .iter()
            .map(|w| &jumbo.frame(usize::from(w.index)).0[w.head as usize..(w.head + w.len) as usize])
            .collect();
        let metas: ArrayVec<OffloadMeta, BURST> = wholes.frames.iter().map(|w| w.meta).collect();
        let port = &mut ports[k];
        let sent = port.transmit_offloaded_burst(mem, &frames, &metas).min(frames.len());
        bump(&port.counters().tx, sent as u64);
        bump(&port.counters().tx_dropped, (frames.len() - sent) as u64);
        wholes.frames.clear();
    }

    /// Route recorded super-packet `j` once, then send it whole to a port that keeps
    /// offloads (encapsulated, to an uplink that has the kernel cut it), or cut it into
    /// segments (each encapsulated if it was) for one that does not. Counted: the
    /// pipeline's verdict, then a refusal moved to the `super_packet` drop with its
    /// offload error. One going whole to a pod is returned with its port's entry instead
    /// of sent: the caller gathers a burst's for [`send_wholes`](Self::send_wholes).
    fn forward_super(&mut self, fib: &Fib, ingress: PortId, j: usize) -> Option<(usize, Whole)> {
        let Self { pipeline, mem, ports, egress, pending, offloading, jumbo, observer, .. } = self;
        let jumbo = jumbo.as_deref_mut()?;
        let (slot, rec) = jumbo.frame_mut(j);
        let Some(frame) = Frame::new(slot, JUMBO_HEADROOM, rec.len as usize) else {
            unreachable!("a slot holds any frame Jumbo::push accepts")
        };
        // Observed as a burst of one: trace and capture see super-packets too.
        let mut hook = observer.as_deref_mut();
        if let Some(h) = hook.as_deref_mut() {
            h.begin(fib, ingress);
            h.received(0, &frame);
        }
        let mut frames = [frame];
        let mut metas = [rec.meta];
        let mut verdict = [Verdict::Drop(DropReason::UnknownPort)];
        pipeline.process_offloaded(fib, ingress, &mut frames, &mut metas, &mut verdict);
        let ([frame], [meta], [verdict]) = (frames, metas, verdict);
        if let Some(h) = hook.as_deref_mut() {
            h.processed(0, &frame, verdict);
        }
        let mut whole_to = None;
        let refused = match verdict {
            Verdict::Drop(_) => None,
            Verdict::Tx(dst) => match egress.get(usize::from(dst.0)).copied().flatten().map(usize::from) {
                None => {
                    pipeline.counters().reclassify_tx(1, DropReason::NoEgressPort);
                    Some(DropReason::NoEgressPort)
                }
                Some(k) => {
                    // The pipeline encapsulates whatever it sends to the uplink.
                    let encapsulated = fib.port(dst) == PortRole::Uplink;
                    let port = &mut ports[k];
                    let whole =
                        if encapsulated { offloading[k].tunnel_segmentation } else { offloading[k].tcp_segmentation };
                    if whole && !encapsulated {
                        #[expect(clippy::cast_possible_truncation, reason = "within a jumbo slot")]
                        let w = Whole { index: j as u8, head: frame.head() as u32, len: frame.len() as u32, meta };
                        whole_to = Some((k, w));
                        None
                    } else if whole {
                        let sent = port.transmit_offloaded(mem, frame.data(), &meta);
                        let counters = port.counters();
                        bump(if sent { &counters.tx } else { &counters.tx_dropped }, 1);
                        None
                    } else {
                        let leave = offloading[k].tx_checksum;
                        let cut = segment(mem, port, &mut pending[k], frame.data(), encapsulated, &meta, leave);
                        match cut {
                            Ok(n) => {
                                pipeline.counters().add_gso_segments(n as u64);
                                None
                            }
                            Err(e) => {
                                pipeline.counters().refuse_super(e);
                                Some(DropReason::SuperPacket)
                            }
                        }
                    }
                }
            },
        };
        if let Some(h) = hook {
            if let Some(reason) = refused {
                h.unplaced(0, reason);
            }
            h.end(fib);
        }
        whole_to
    }
}

/// Transmit `queue` on `port`, counting what it took and what it dropped.
fn flush<M: FrameMemory, P: Port<M>>(mem: &mut M, port: &mut P, queue: &mut ArrayVec<Packet<M::Buf>, BURST>) {
    flush_with(mem, port, queue, None);
}

/// [`flush`], the frames' checksums at `csum` left partial for the port if given.
fn flush_with<M: FrameMemory, P: Port<M>>(
    mem: &mut M,
    port: &mut P,
    queue: &mut ArrayVec<Packet<M::Buf>, BURST>,
    csum: Option<PartialCsum>,
) {
    if queue.is_empty() {
        return;
    }
    let sent = match csum {
        None => port.transmit(mem, queue),
        Some(c) => port.transmit_partial(mem, queue, c),
    }
    .min(queue.len());
    let c: &PortCounters = port.counters();
    bump(&c.tx, sent as u64);
    bump(&c.tx_dropped, (queue.len() - sent) as u64);
    if csum.is_some() {
        bump(&c.tx_partial_csum, sent as u64);
    }
    queue.clear();
}

/// Cut a routed super-packet (`frame`: outer headers first if `encapsulated`) into
/// buffers of `mem` sent to `port` (after the frames already in `queue`); or copy a
/// frame without GSO that fits a buffer, completing its checksum. With `leave_checksums`
/// (the port completes them: [`Offloads::tx_checksum`]) the segments' TCP checksums are
/// left partial. Returns the frames sent. A plan the frame fails sends nothing; running
/// out of buffers midway has sent the first segments (the sender retransmits the rest,
/// as after a loss).
fn segment<M: FrameMemory, P: Port<M>>(
    mem: &mut M,
    port: &mut P,
    queue: &mut ArrayVec<Packet<M::Buf>, BURST>,
    frame: &[u8],
    encapsulated: bool,
    meta: &OffloadMeta,
    leave_checksums: bool,
) -> Result<usize, OffloadError> {
    let outer = if encapsulated { VXLAN_OVERHEAD } else { 0 };
    if meta.gso.is_none() {
        let copied = copy_whole(mem, queue, frame, outer, meta, SEGMENT_HEAD - outer).map(|()| 1);
        flush(mem, port, queue);
        return copied;
    }
    let mut plan = offload::gso::plan(&frame[outer..], meta)?;
    let csum = leave_checksums.then(|| {
        // The queue's frames are complete: they go first, as they are.
        flush(mem, port, queue);
        plan = plan.leaving_checksums();
        let c = plan.partial_checksum();
        #[expect(clippy::cast_possible_truncation, reason = "outer headers are 50 bytes")]
        PartialCsum { start: c.start + outer as u16, offset: c.offset }
    });
    let cut = cut_segments(mem, port, queue, frame, encapsulated, &plan, csum);
    flush_with(mem, port, queue, csum);
    cut
}

/// [`segment`]'s cutting: `plan`'s segments into buffers queued on `queue`, sent
/// whenever it is full.
fn cut_segments<M: FrameMemory, P: Port<M>>(
    mem: &mut M,
    port: &mut P,
    queue: &mut ArrayVec<Packet<M::Buf>, BURST>,
    frame: &[u8],
    encapsulated: bool,
    plan: &offload::GsoPlan,
    csum: Option<PartialCsum>,
) -> Result<usize, OffloadError> {
    let (outer, inner) = if encapsulated { frame.split_at(VXLAN_OVERHEAD) } else { frame.split_at(0) };
    let outer: Option<&[u8; VXLAN_OVERHEAD]> = outer.try_into().ok();
    let head = SEGMENT_HEAD - outer.map_or(0, |o| o.len());
    if plan.segments() > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments);
    }
    if mem.buffer_size() < SEGMENT_HEAD + plan.max_segment_len() {
        return Err(OffloadError::BufferTooSmall);
    }
    let mut first = 0;
    while first < plan.segments() {
        if queue.is_full() {
            flush_with(mem, port, queue, csum);
        }
        let want = (plan.segments() - first).min(queue.remaining_capacity());
        let mut bufs: ArrayVec<M::Buf, BURST> = ArrayVec::new();
        while bufs.len() < want {
            match mem.alloc() {
                Some(b) => bufs.push(b),
                None => break,
            }
        }
        if bufs.is_empty() {
            return Err(OffloadError::TooFewBuffers);
        }
        let written = mem.with_buffers(&bufs, |slices| {
            let done = plan.write_range(inner, first, SEGMENT_HEAD, slices)?;
            if let Some(outer) = outer {
                for (k, s) in slices[..done.segments].iter_mut().enumerate() {
                    let len = plan.segment_len(first + k);
                    offload::push_outer(outer, &mut s[head..SEGMENT_HEAD + len]);
                }
            }
            Ok(done.segments)
        });
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                for b in bufs {
                    mem.release(b);
                }
                return Err(e);
            }
        };
        for (k, &buf) in bufs.iter().enumerate() {
            let len = plan.segment_len(first + k) + SEGMENT_HEAD - head;
            #[expect(clippy::cast_possible_truncation, reason = "within a buffer")]
            queue.push(Packet { buf, head: head as u32, len: len as u32 });
        }
        first += written;
        if written < want {
            return Err(OffloadError::TooFewBuffers);
        }
    }
    Ok(plan.segments())
}

/// A frame without GSO from a port that keeps offloads (an ICMP error made of a
/// super-packet; one larger than a buffer is refused): into one buffer at `head`, the
/// partial checksum of its packet (at `inner`, after any outer headers) completed.
fn copy_whole<M: FrameMemory>(
    mem: &mut M,
    queue: &mut ArrayVec<Packet<M::Buf>, BURST>,
    frame: &[u8],
    inner: usize,
    meta: &OffloadMeta,
    head: usize,
) -> Result<(), OffloadError> {
    if head + frame.len() > mem.buffer_size() {
        return Err(OffloadError::BufferTooSmall);
    }
    if queue.is_full() {
        return Err(OffloadError::TooFewBuffers);
    }
    let buf = mem.alloc().ok_or(OffloadError::TooFewBuffers)?;
    let done = mem.with_buffers(&[buf], |b| {
        let out = &mut b[0][head..head + frame.len()];
        out.copy_from_slice(frame);
        offload::complete_checksum(&mut out[inner..], meta)
    });
    if let Err(e) = done {
        mem.release(buf);
        return Err(e);
    }
    #[expect(clippy::cast_possible_truncation, reason = "within a buffer")]
    queue.push(Packet { buf, head: head as u32, len: frame.len() as u32 });
    Ok(())
}

impl<M: FrameMemory, P: Port<M>> Drop for Driver<M, P> {
    fn drop(&mut self) {
        self.close_all();
    }
}
