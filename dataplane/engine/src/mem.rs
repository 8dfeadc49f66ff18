//! In-memory ports: a test double for AF_XDP sockets (feature `test-utils`).
//!
//! [`MemFrames`] is a pool of fixed-size buffers with headroom, as UMEM chunks are;
//! [`MemPort`] is an RX and a TX queue of packets in it. Both implement the engine's
//! [`FrameMemory`] and [`Port`], so the same [`Driver`] that runs the AF_XDP and
//! vhost-user ports runs these. [`MemDataplane`] is one driver with ports `0..n` and a
//! way to inject, collect and wire frames between two of them. After warm-up nothing
//! allocates.

use crate::CoreCounters;
use crate::counters::CounterSnapshot;
use crate::driver::Driver;
use crate::observe::Observer;
use crate::offload::{self, Coalesced, Jumbo, OffloadMeta, PartialCsum};
use crate::pipeline::BURST;
use crate::port::{FrameMemory, Offloads, Packet, Port, PortCounters};
use arrayvec::ArrayVec;
use std::collections::VecDeque;
use std::sync::Arc;
use xlane_fib::{FibHandle, FibReader, PortId};

/// Size of a frame buffer (an AF_XDP default chunk size).
pub const FRAME_SIZE: usize = 2048;
/// Headroom left in front of received frames (room for the 50 outer bytes and more,
/// like `XDP_PACKET_HEADROOM`).
pub const HEADROOM: usize = 256;

type Buffer = Box<[u8; FRAME_SIZE]>;

/// A pool of frame buffers; a buffer is named by its slot.
#[derive(Debug, Default)]
pub struct MemFrames {
    /// `None` while the slot's buffer is lent out by `with_buffers`.
    slots: Vec<Option<Buffer>>,
    free: Vec<u32>,
}

impl MemFrames {
    /// Make sure `n` buffers exist (free or in use), so later traffic allocates nothing.
    pub fn preallocate(&mut self, n: usize) {
        self.free.reserve(n);
        while self.slots.len() < n {
            let i = self.grow();
            self.free.push(i);
        }
    }

    fn grow(&mut self) -> u32 {
        self.slots.push(Some(Box::new([0; FRAME_SIZE])));
        u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 buffers")
    }

    /// Buffers on the free list.
    #[must_use]
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// The bytes of a packet.
    #[must_use]
    pub fn bytes(&self, p: &Packet<u32>) -> &[u8] {
        let b = self.slots[p.buf as usize].as_ref().expect("buffer not lent");
        &b[p.head as usize..(p.head + p.len) as usize]
    }

    fn slot(&mut self, i: u32) -> &mut Buffer {
        self.slots[i as usize].as_mut().expect("buffer not lent")
    }
}

impl FrameMemory for MemFrames {
    type Buf = u32;

    fn buffer_size(&self) -> usize {
        FRAME_SIZE
    }

    /// A free buffer; the pool grows when none is free (a test double has no fixed size).
    fn alloc(&mut self) -> Option<u32> {
        Some(self.free.pop().unwrap_or_else(|| self.grow()))
    }

    fn release(&mut self, buf: u32) {
        self.free.push(buf);
    }

    fn with_buffers<R>(&mut self, bufs: &[u32], f: impl FnOnce(&mut [&mut [u8]]) -> R) -> R {
        // Buffers are taken out of their slots for the call, so each is borrowed once
        // without index juggling; a slot lent twice panics.
        let mut taken: ArrayVec<Buffer, BURST> =
            bufs.iter().map(|&i| self.slots[i as usize].take().expect("buffer lent twice")).collect();
        let r = {
            let mut slices: ArrayVec<&mut [u8], BURST> = taken.iter_mut().map(|b| &mut b[..]).collect();
            f(&mut slices)
        };
        for (&i, b) in bufs.iter().zip(taken) {
            self.slots[i as usize] = Some(b);
        }
        r
    }
}

/// An in-memory port: frames to receive, frames transmitted.
#[derive(Debug)]
pub struct MemPort {
    id: PortId,
    /// Waiting to be received.
    pub rx: VecDeque<Packet<u32>>,
    /// Transmitted, waiting to be collected.
    pub tx: VecDeque<Packet<u32>>,
    /// Most frames `tx` holds; beyond it a transmit drops (as a full TX ring).
    pub tx_capacity: usize,
    counters: Arc<PortCounters>,
    /// What the port keeps of the kernel's offloads (set before the driver serves it).
    offloads: Offloads,
    /// Super-packets to receive, each after the ordinary frame count (received and
    /// queued) it was injected behind.
    rx_super: VecDeque<(u64, Vec<u8>, OffloadMeta)>,
    /// Ordinary frames received so far.
    rx_taken: u64,
    /// Super-packets sent whole, and merged by its coalescing transmit.
    pub tx_super: VecDeque<(Vec<u8>, OffloadMeta)>,
    /// For each frame of `tx` sent with its checksum left partial (a port with
    /// `tx_checksum`), where that checksum lies.
    pub tx_partial: VecDeque<PartialCsum>,
}

impl MemPort {
    /// An empty port with an unbounded TX queue.
    #[must_use]
    pub fn new(id: PortId) -> Self {
        Self::with_counters(id, Arc::new(PortCounters::default()))
    }

    /// An empty port counting into `counters` (shared with a reader).
    #[must_use]
    pub fn with_counters(id: PortId, counters: Arc<PortCounters>) -> Self {
        Self {
            id,
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            tx_capacity: usize::MAX,
            counters,
            offloads: Offloads::default(),
            rx_super: VecDeque::new(),
            rx_taken: 0,
            tx_super: VecDeque::new(),
            tx_partial: VecDeque::new(),
        }
    }

    /// The port's counters, shared: read them after the driver took the port.
    #[must_use]
    pub fn counters_handle(&self) -> Arc<PortCounters> {
        Arc::clone(&self.counters)
    }

    /// An empty port that completes partial checksums itself, as an AF_XDP socket whose
    /// UMEM carries TX checksum requests: frames sent partial land in `tx` as they are,
    /// their checksum's place in `tx_partial`.
    #[must_use]
    pub fn checksum_offloading(id: PortId) -> Self {
        Self { offloads: Offloads { tx_checksum: true, ..Offloads::default() }, ..Self::new(id) }
    }

    /// An empty port that keeps offloads, as a veth read through a virtio-net header:
    /// it receives super-packets, is sent them whole, and coalesces (GRO) what it sends.
    #[must_use]
    pub fn offloading(id: PortId) -> Self {
        Self {
            offloads: Offloads { partial_checksum: true, tcp_segmentation: true, ..Offloads::default() },
            ..Self::new(id)
        }
    }

    /// An empty uplink that has encapsulated super-packets cut past the host's stack and
    /// takes jumbo frames (as the AF_XDP uplink with its UDP segmentation sockets and
    /// multi-buffer receive): encapsulated super-packets land whole, outer headers first,
    /// in `tx_super`; frames queued with [`push_super`](Self::push_super) arrive as
    /// frames larger than a buffer.
    #[must_use]
    pub fn tunnel_offloading(id: PortId) -> Self {
        let offloads = Offloads { tunnel_segmentation: true, large_frames: true, ..Offloads::default() };
        Self { offloads, ..Self::new(id) }
    }

    /// Queue a super-packet (or any frame with metadata) to receive after the frames
    /// queued so far. Test doubles allocate; the driver's path does not.
    pub fn push_super(&mut self, bytes: &[u8], meta: OffloadMeta) {
        self.rx_super.push_back((self.rx_taken + self.rx.len() as u64, bytes.to_vec(), meta));
    }

    /// Coalesce `pkts` as a port with a virtio-net header would before writing them:
    /// merged flows go to `tx_super`, the rest to `tx`; returns how many were taken.
    fn transmit_coalesced(&mut self, mem: &mut MemFrames, pkts: &[Packet<u32>]) -> usize {
        let bufs: ArrayVec<u32, BURST> = pkts.iter().map(|p| p.buf).collect();
        let mut single = [false; BURST];
        let tx_super = &mut self.tx_super;
        mem.with_buffers(&bufs, |slices| {
            let frames: ArrayVec<&[u8], BURST> =
                slices.iter().zip(pkts).map(|(s, p)| &s[p.head as usize..(p.head + p.len) as usize]).collect();
            let mut units = [Coalesced::default(); BURST];
            let n = offload::coalesce(&frames, true, &mut units);
            for u in &units[..n] {
                match u {
                    Coalesced::Single(i) => single[*i] = true,
                    Coalesced::Merged(m) => tx_super.push_back(merged_bytes(m, &frames)),
                }
            }
        });
        let mut taken = 0;
        for (p, &keep) in pkts.iter().zip(&single) {
            if !keep {
                mem.release(p.buf);
                taken += 1;
            } else if self.tx.len() < self.tx_capacity {
                self.tx.push_back(*p);
                taken += 1;
            } else {
                mem.release(p.buf);
            }
        }
        taken
    }
}

/// A merged unit of `frames` written out, as a port with a virtio-net header sends it.
fn merged_bytes(m: &offload::Merged, frames: &[&[u8]]) -> (Vec<u8>, OffloadMeta) {
    let mut bytes = vec![0; m.len()];
    let meta = m.write(frames, &mut bytes).expect("a merge of these frames");
    (bytes, meta)
}

impl Port<MemFrames> for MemPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn counters(&self) -> &PortCounters {
        &self.counters
    }

    fn receive(&mut self, _mem: &mut MemFrames, out: &mut [Packet<u32>; BURST]) -> usize {
        let n = self.rx.len().min(BURST);
        for (o, p) in out.iter_mut().zip(self.rx.drain(..n)) {
            *o = p;
        }
        n
    }

    fn offloads(&self) -> Offloads {
        self.offloads
    }

    fn receive_offloaded(&mut self, _mem: &mut MemFrames, out: &mut [Packet<u32>; BURST], jumbo: &mut Jumbo) -> usize {
        let mut n = 0;
        loop {
            if self.rx_super.front().is_some_and(|s| s.0 <= self.rx_taken) {
                if jumbo.len() == BURST {
                    break;
                }
                let (_, bytes, meta) = self.rx_super.pop_front().expect("checked");
                let slot = jumbo.len();
                jumbo.data_mut(slot)[..bytes.len()].copy_from_slice(&bytes);
                jumbo.push(slot, n, bytes.len(), meta);
                continue;
            }
            match self.rx.pop_front() {
                Some(p) if n < BURST => {
                    out[n] = p;
                    n += 1;
                    self.rx_taken += 1;
                }
                Some(p) => {
                    self.rx.push_front(p);
                    break;
                }
                None => break,
            }
        }
        n
    }

    fn transmit_offloaded(&mut self, _mem: &mut MemFrames, frame: &[u8], meta: &OffloadMeta) -> bool {
        self.tx_super.push_back((frame.to_vec(), *meta));
        true
    }

    /// Merged as a port with a virtio-net header merges them: each unit in `tx_super`.
    fn transmit_offloaded_burst(&mut self, _mem: &mut MemFrames, frames: &[&[u8]], metas: &[OffloadMeta]) -> usize {
        let mut units = [Coalesced::default(); BURST];
        let n = offload::coalesce_whole(frames, metas, &mut units);
        for u in &units[..n] {
            self.tx_super.push_back(match u {
                Coalesced::Single(i) => (frames[*i].to_vec(), metas[*i]),
                Coalesced::Merged(m) => merged_bytes(m, frames),
            });
        }
        frames.len()
    }

    fn transmit_partial(&mut self, mem: &mut MemFrames, pkts: &[Packet<u32>], csum: PartialCsum) -> usize {
        if !self.offloads.tx_checksum {
            crate::port::complete_partial(mem, pkts, csum);
            return self.transmit(mem, pkts);
        }
        let sent = self.transmit(mem, pkts);
        self.tx_partial.extend(std::iter::repeat_n(csum, sent));
        sent
    }

    fn transmit(&mut self, mem: &mut MemFrames, pkts: &[Packet<u32>]) -> usize {
        if self.offloads.tcp_segmentation {
            return self.transmit_coalesced(mem, pkts);
        }
        let room = self.tx_capacity.saturating_sub(self.tx.len()).min(pkts.len());
        self.tx.extend(&pkts[..room]);
        for p in &pkts[room..] {
            mem.release(p.buf);
        }
        room
    }

    fn close(self, mem: &mut MemFrames) {
        for p in self.rx.into_iter().chain(self.tx) {
            mem.release(p.buf);
        }
    }
}

/// A frame that does not fit into a buffer after the headroom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {0} bytes exceeds the {max} bytes a buffer holds", max = FRAME_SIZE - HEADROOM)]
pub struct FrameTooLarge(pub usize);

/// The referenced port does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not exist")]
pub struct NoSuchPort(pub PortId);

/// Errors of [`MemDataplane::inject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// See [`FrameTooLarge`].
    #[error(transparent)]
    TooLarge(#[from] FrameTooLarge),
    /// See [`NoSuchPort`].
    #[error(transparent)]
    NoPort(#[from] NoSuchPort),
}

/// A worker driving in-memory ports `0..n` through the pipeline.
#[derive(Debug)]
pub struct MemDataplane {
    driver: Driver<MemFrames, MemPort>,
    fib: FibReader,
}

impl MemDataplane {
    /// A dataplane with `ports` ports (ids `0..ports`) reading tables from `fib`.
    #[must_use]
    pub fn new(fib: &FibHandle, ports: u16) -> Self {
        Self::with_offloading(fib, ports, &[])
    }

    /// A dataplane with ports `0..ports`, those in `offloading` keeping offloads
    /// ([`MemPort::offloading`]).
    #[must_use]
    pub fn with_offloading(fib: &FibHandle, ports: u16, offloading: &[PortId]) -> Self {
        let mut driver = Driver::new(MemFrames::default(), Arc::new(CoreCounters::default()));
        for id in (0..ports).map(PortId) {
            driver.add_port(if offloading.contains(&id) { MemPort::offloading(id) } else { MemPort::new(id) });
        }
        Self { driver, fib: fib.reader() }
    }

    /// Serve `port` in place of the port with its id (another kind of port: one with
    /// [`MemPort::tunnel_offloading`] as the uplink).
    pub fn serve(&mut self, port: MemPort) {
        self.driver.remove_port(port.id());
        self.driver.add_port(port);
    }

    /// Queue a super-packet on `port` (one made with [`MemDataplane::with_offloading`]).
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn inject_super(&mut self, port: PortId, bytes: &[u8], meta: OffloadMeta) -> Result<(), NoSuchPort> {
        self.port(port)?.push_super(bytes, meta);
        Ok(())
    }

    /// Every super-packet `port` was sent whole or merged, with its metadata.
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn take_tx_super(&mut self, port: PortId) -> Result<Vec<(Vec<u8>, OffloadMeta)>, NoSuchPort> {
        Ok(self.port(port)?.tx_super.drain(..).collect())
    }

    /// Where the checksum of each frame `port` was sent partial lies (in `take_tx`'s
    /// order; only a port made with [`MemPort::checksum_offloading`] keeps them partial).
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn take_tx_partial(&mut self, port: PortId) -> Result<Vec<PartialCsum>, NoSuchPort> {
        Ok(self.port(port)?.tx_partial.drain(..).collect())
    }

    /// Reserve `frames` buffers up front so later traffic allocates nothing.
    pub fn preallocate(&mut self, frames: usize) {
        for p in self.driver.ports_mut() {
            p.rx.reserve(frames);
            p.tx.reserve(frames);
        }
        self.driver.mem_mut().preallocate(frames);
    }

    /// Install (or remove) what the driver observes; returns the previous.
    pub fn set_observer(&mut self, observer: Option<Box<Observer>>) -> Option<Box<Observer>> {
        self.driver.set_observer(observer)
    }

    fn port(&mut self, id: PortId) -> Result<&mut MemPort, NoSuchPort> {
        self.driver.ports_mut().iter_mut().find(|p| p.id() == id).ok_or(NoSuchPort(id))
    }

    /// Queue a copy of `bytes` for reception on `port`.
    ///
    /// # Errors
    /// [`InjectError`] for an unknown port or a frame larger than a buffer.
    pub fn inject(&mut self, port: PortId, bytes: &[u8]) -> Result<(), InjectError> {
        if bytes.len() > FRAME_SIZE - HEADROOM {
            return Err(FrameTooLarge(bytes.len()).into());
        }
        self.port(port)?;
        let mem = self.driver.mem_mut();
        let buf = mem.alloc().expect("the in-memory pool grows");
        mem.slot(buf)[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        #[expect(clippy::cast_possible_truncation, reason = "checked against FRAME_SIZE above")]
        let p = Packet { buf, head: HEADROOM as u32, len: bytes.len() as u32 };
        self.port(port)?.rx.push_back(p);
        Ok(())
    }

    /// Process at most one burst from every port with frames waiting; returns how many
    /// frames were processed.
    pub fn poll(&mut self) -> usize {
        let fib = self.fib.current();
        self.driver.poll(fib)
    }

    /// Poll until no port has frames waiting.
    pub fn run_until_idle(&mut self) -> usize {
        let mut total = 0;
        loop {
            let n = self.poll();
            if n == 0 {
                return total;
            }
            total += n;
        }
    }

    /// Hand every frame transmitted on `port` to `f`, then recycle its buffer.
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn drain_tx(&mut self, port: PortId, mut f: impl FnMut(&[u8])) -> Result<usize, NoSuchPort> {
        let mut n = 0;
        while let Some(p) = self.port(port)?.tx.pop_front() {
            let mem = self.driver.mem_mut();
            f(mem.bytes(&p));
            mem.release(p.buf);
            n += 1;
        }
        Ok(n)
    }

    /// Copies of every frame transmitted on `port` (a convenience for tests).
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn take_tx(&mut self, port: PortId) -> Result<Vec<Vec<u8>>, NoSuchPort> {
        let mut out = Vec::new();
        self.drain_tx(port, |b| out.push(b.to_vec()))?;
        Ok(out)
    }

    /// Move every frame transmitted on `from` of this dataplane into the RX queue of
    /// `to` on `peer` (a wire between two nodes' uplinks). Buffers move, bytes do not:
    /// each frame's buffer trades places with a free buffer of the peer's, so neither
    /// pool drains or grows.
    ///
    /// # Errors
    /// [`NoSuchPort`] if either port does not exist.
    pub fn wire_to(&mut self, from: PortId, peer: &mut Self, to: PortId) -> Result<usize, NoSuchPort> {
        peer.port(to)?;
        let mut n = 0;
        while let Some(p) = self.port(from)?.tx.pop_front() {
            let theirs = peer.driver.mem_mut().alloc().expect("the in-memory pool grows");
            let ours = self.driver.mem_mut().slot(p.buf);
            core::mem::swap(ours, peer.driver.mem_mut().slot(theirs));
            self.driver.mem_mut().release(p.buf);
            // Received frames start at the receiver's headroom, as on a real port.
            let (head, len) = (p.head as usize, p.len as usize);
            if head != HEADROOM {
                peer.driver.mem_mut().slot(theirs).copy_within(head..head + len, HEADROOM);
            }
            #[expect(clippy::cast_possible_truncation, reason = "HEADROOM < FRAME_SIZE")]
            let rx = Packet { buf: theirs, head: HEADROOM as u32, len: p.len };
            peer.port(to)?.rx.push_back(rx);
            n += 1;
        }
        Ok(n)
    }

    /// Buffers this dataplane accounts for (free, queued for RX, queued for TX): a
    /// buffer in none of these has leaked.
    #[must_use]
    pub fn buffers_owned(&self) -> usize {
        self.driver.mem().free() + self.driver.ports().iter().map(|p| p.rx.len() + p.tx.len()).sum::<usize>()
    }

    /// Pipeline counters of this dataplane.
    #[must_use]
    pub fn counters(&self) -> CounterSnapshot {
        self.driver.counters().snapshot()
    }

    /// A port's counters: (rx, tx, tx_dropped).
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn port_counters(&self, port: PortId) -> Result<(u64, u64, u64), NoSuchPort> {
        self.driver.ports().get(usize::from(port.0)).map(|p| p.counters().get()).ok_or(NoSuchPort(port))
    }

    /// Limit how many transmitted frames `port` holds (as a TX ring's size).
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn set_tx_capacity(&mut self, port: PortId, frames: usize) -> Result<(), NoSuchPort> {
        self.port(port)?.tx_capacity = frames;
        Ok(())
    }

    /// Stop serving `port` (its queued buffers come back): frames routed to it become
    /// counted drops, as on a worker whose port was just removed.
    pub fn remove_port(&mut self, port: PortId) -> usize {
        self.driver.remove_port(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DropReason, fixtures, testbed};

    /// A UDP frame from `pod` to `dst`.
    fn udp(pod: &xlane_fib::Endpoint, dst: core::net::Ipv4Addr) -> Vec<u8> {
        fixtures::udp(pod.mac.0, pod.gateway_mac.0, fixtures::Ipv4::new(pod.ip, dst), 1, 2, &[])
    }

    #[test]
    fn buffers_stay_with_their_owner_across_the_wire() {
        let (mut a, mut b) = testbed::two_nodes(1, 128);
        let frame = udp(&testbed::pod(1), testbed::b_pod().ip);
        for _ in 0..50 {
            for _ in 0..64 {
                a.inject(PortId(1), &frame).unwrap();
            }
            a.run_until_idle();
            assert_eq!(a.wire_to(testbed::UPLINK, &mut b, testbed::UPLINK).unwrap(), 64);
            b.run_until_idle();
            assert_eq!(b.drain_tx(PortId(1), |_| {}).unwrap(), 64);
            assert_eq!((a.buffers_owned(), b.buffers_owned()), (128, 128));
        }
        assert!(a.counters().conserved() && b.counters().conserved());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let h = FibHandle::new();
        let mut dp = MemDataplane::new(&h, 1);
        assert_eq!(dp.inject(PortId(1), &[0; 60]), Err(InjectError::NoPort(NoSuchPort(PortId(1)))));
        assert_eq!(dp.inject(PortId(0), &[0; FRAME_SIZE]), Err(InjectError::TooLarge(FrameTooLarge(FRAME_SIZE))));
        // Tables not configured: the frame is a counted drop, not an error.
        dp.inject(PortId(0), &[0; 60]).unwrap();
        dp.run_until_idle();
        assert_eq!(dp.counters().drop_count(DropReason::UnknownPort), 1);
    }

    #[test]
    fn a_frame_routed_to_a_port_the_driver_does_not_serve_is_a_counted_drop() {
        let h = FibHandle::new();
        testbed::tables(2, 1).publish(&h);
        // Pod 2 is in the tables (port 2) but this dataplane serves ports 0 and 1 only,
        // as a worker does while pod 2's port is still attaching.
        let mut dp = MemDataplane::new(&h, 3);
        dp.preallocate(16);
        dp.remove_port(PortId(2));
        let local = udp(&testbed::pod(1), testbed::pod(2).ip);
        for _ in 0..5 {
            dp.inject(PortId(1), &local).unwrap();
        }
        dp.run_until_idle();
        let c = dp.counters();
        assert_eq!((c.rx, c.tx, c.drop_count(DropReason::NoEgressPort)), (5, 0, 5));
        assert!(c.conserved());
        assert_eq!(dp.buffers_owned(), 16, "the dropped frames' buffers came back");
    }

    #[test]
    fn a_full_tx_queue_drops_and_counts_on_the_port() {
        let h = FibHandle::new();
        testbed::tables(1, 1).publish(&h);
        let mut dp = MemDataplane::new(&h, 2);
        dp.preallocate(64);
        dp.set_tx_capacity(testbed::UPLINK, 10).unwrap();
        let frame = udp(&testbed::pod(1), testbed::b_pod().ip);
        for _ in 0..30 {
            dp.inject(PortId(1), &frame).unwrap();
        }
        dp.run_until_idle();
        assert_eq!(dp.port_counters(PortId(1)).unwrap(), (30, 0, 0));
        assert_eq!(dp.port_counters(testbed::UPLINK).unwrap(), (0, 10, 20));
        assert_eq!(dp.counters().encapsulated, 30, "the pipeline forwarded all; the port took 10");
        assert_eq!(dp.drain_tx(testbed::UPLINK, |_| {}).unwrap(), 10);
        assert_eq!(dp.buffers_owned(), 64);
    }
}
