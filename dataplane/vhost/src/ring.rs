//! The hot path of both queues: a split virtqueue (virtio 1.x §2.7) whose three areas
//! are resolved to host memory once per pass.
//!
//! virtio-queue translates a guest address on every access (the available index, each
//! ring entry, each descriptor, each used element) and stores the used index after
//! every chain, a write to a cache line the guest's core is polling. At tens of
//! millions of frames a second that is most of a frame's budget. Here a pass reads the
//! available index once, reads entries and descriptors through bounds-checked slices
//! of the rings, and publishes the used index once, as DPDK's vhost does. Queue state
//! (`next_avail`, `next_used`) still lives in virtio-queue's `Queue`, which the
//! vhost-user handshake reads and writes.

use crate::net::{FrameSink, HDR_LEN, MAX_FRAME, MAX_RX_BUFFERS, RxError, Tally, fill, header, read_frame, writable};
use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};
use virtio_queue::QueueT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryBackend, VolatileMemory as _, VolatileSlice};

const DESC_SIZE: usize = 16;
/// `flags` and `idx` in front of the available and used rings.
const RING_HEADER: usize = 4;
const AVAIL_ENTRY: usize = 2;
const USED_ENTRY: usize = 8;
/// Flags (virtio 1.x §2.7.5, §2.7.6): `VIRTQ_DESC_F_NEXT`, `VIRTQ_DESC_F_INDIRECT`,
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`.
const DESC_F_NEXT: u16 = 1;
const DESC_F_INDIRECT: u16 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// A split ring's areas in host memory.
pub(crate) struct SplitRing<'m, B: BitmapSlice> {
    size: u16,
    event_idx: bool,
    desc: VolatileSlice<'m, B>,
    avail: VolatileSlice<'m, B>,
    used: VolatileSlice<'m, B>,
}

/// The slices of one queue, if each area lies inside one memory region (virtually always:
/// a driver allocates a ring in one piece; a ring split across regions takes
/// virtio-queue's general path).
pub(crate) fn resolve<'m, Q: QueueT, M: GuestMemoryBackend>(
    q: &Q,
    mem: &'m M,
) -> Option<SplitRing<'m, vm_memory::bitmap::MS<'m, M>>> {
    let size = q.size();
    if !q.ready() || size == 0 || !size.is_power_of_two() {
        return None;
    }
    let n = usize::from(size);
    // The available ring ends in `used_event`, the used ring in `avail_event` (EVENT_IDX).
    let area = |addr: u64, len: usize| mem.get_slice(GuestAddress(addr), len).ok();
    Some(SplitRing {
        size,
        event_idx: q.event_idx_enabled(),
        desc: area(q.desc_table(), n * DESC_SIZE)?,
        avail: area(q.avail_ring(), RING_HEADER + n * AVAIL_ENTRY + 2)?,
        used: area(q.used_ring(), RING_HEADER + n * USED_ENTRY + 2)?,
    })
}

impl<'m, B: BitmapSlice> SplitRing<'m, B> {
    fn load_u16(&self, area: &VolatileSlice<'_, B>, off: usize, order: Ordering) -> Option<u16> {
        area.load::<u16>(off, order).ok().map(u16::from_le)
    }

    fn avail_entry(&self, i: Wrapping<u16>) -> Option<u16> {
        let off = RING_HEADER + usize::from(i.0 % self.size) * AVAIL_ENTRY;
        self.avail.get_ref::<u16>(off).ok().map(|r| u16::from_le(r.load()))
    }

    fn descriptor(&self, index: u16) -> Option<Descriptor> {
        self.desc.get_ref::<Descriptor>(usize::from(index) * DESC_SIZE).ok().map(|r| r.load())
    }

    /// The descriptors of the chain starting at `head`.
    fn chain(&self, head: u16) -> Chain<'_, 'm, B> {
        Chain { ring: self, next: Some(head), ttl: self.size, broken: false }
    }

    fn put_used(&self, i: Wrapping<u16>, head: u16, len: u32) -> Option<()> {
        let off = RING_HEADER + usize::from(i.0 % self.size) * USED_ENTRY;
        // `struct virtq_used_elem { le32 id; le32 len; }` as one little-endian store.
        let elem = (u64::from(len) << 32 | u64::from(head)).to_le();
        self.used.get_ref::<u64>(off).ok().map(|r| r.store(elem))
    }

    /// Start delivering frames into this (receive) ring.
    pub(crate) fn rx_pass<Q: QueueT>(self, q: &Q) -> RxPass<'m, B> {
        let (next_avail, used) = (Wrapping(q.next_avail()), Wrapping(q.next_used()));
        RxPass { ring: self, avail_idx: next_avail, next_avail, used, old_used: used }
    }

    /// Take up to `budget` chains, as [`crate::net::drain_tx`] documents.
    pub(crate) fn drain_tx<Q: QueueT, M: GuestMemoryBackend>(
        &self,
        q: &mut Q,
        mem: &M,
        sink: &mut impl FrameSink,
        budget: usize,
    ) -> Tally {
        let mut tally = Tally::default();
        let Some(avail_idx) = self.load_u16(&self.avail, 2, Ordering::Acquire) else {
            return tally;
        };
        let (next_avail, old_used) = (Wrapping(q.next_avail()), Wrapping(q.next_used()));
        let waiting = (Wrapping(avail_idx) - next_avail).0;
        if waiting > self.size {
            // The driver claims more chains than the ring holds: nothing it says is usable.
            tally.malformed += 1;
            return tally;
        }
        let take = usize::from(waiting).min(budget);
        let mut used = old_used;
        for i in 0..take {
            let slot = next_avail + Wrapping(u16::try_from(i).expect("at most a ring"));
            let Some(head) = self.avail_entry(slot).filter(|&h| h < self.size) else {
                // No chain to give back: the entry is consumed and counted.
                tally.malformed += 1;
                continue;
            };
            tally.take(sink, |buf| {
                let mut chain = self.chain(head);
                read_frame(&mut chain, mem, buf).filter(|_| !chain.broken)
            });
            if self.put_used(used, head, 0).is_none() {
                tally.malformed += 1;
                break;
            }
            used += Wrapping(1);
        }
        q.set_next_avail((next_avail + Wrapping(u16::try_from(take).expect("at most a ring"))).0);
        if used != old_used {
            // One store of the used index for the whole pass, after its elements.
            if self.used.store::<u16>(used.0.to_le(), 2, Ordering::Release).is_err() {
                tally.malformed += 1;
            }
            q.set_next_used(used.0);
            tally.notify = self.needs_notification(old_used, used);
        }
        tally
    }

    /// Whether the driver wants an interrupt for the chains between `old` and `new`
    /// (virtio 1.x §2.7.10: `vring_need_event` with EVENT_IDX, the NO_INTERRUPT flag
    /// without it).
    fn needs_notification(&self, old: Wrapping<u16>, new: Wrapping<u16>) -> bool {
        // The used index must be visible before the driver's event index is read.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event_off = RING_HEADER + usize::from(self.size) * AVAIL_ENTRY;
            let Some(event) = self.load_u16(&self.avail, event_off, Ordering::Relaxed) else { return true };
            new - Wrapping(event) - Wrapping(1) < new - old
        } else {
            self.load_u16(&self.avail, 0, Ordering::Relaxed).is_none_or(|f| f & AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

/// Frames into the receive queue, used index published once at [`finish`](Self::finish).
/// Same contract per frame as [`crate::net::deliver_rx`].
pub(crate) struct RxPass<'m, B: BitmapSlice> {
    ring: SplitRing<'m, B>,
    avail_idx: Wrapping<u16>,
    next_avail: Wrapping<u16>,
    used: Wrapping<u16>,
    old_used: Wrapping<u16>,
}

impl<B: BitmapSlice> RxPass<'_, B> {
    /// The head of the `k`-th chain from the next available one, reading the driver's
    /// index again only when the known entries run out.
    fn head(&mut self, k: u16) -> Result<u16, RxError> {
        let slot = self.next_avail + Wrapping(k);
        if slot == self.avail_idx {
            let ring = &self.ring;
            let idx = ring.load_u16(&ring.avail, 2, Ordering::Acquire).map(Wrapping).ok_or(RxError::Malformed)?;
            if (idx - self.next_avail).0 > ring.size {
                return Err(RxError::Malformed);
            }
            self.avail_idx = idx;
            if slot == idx {
                return Err(RxError::NoBuffers);
            }
        }
        Ok(self.ring.avail_entry(slot).unwrap_or(u16::MAX))
    }

    /// Take the next `n` chains as used and empty.
    fn give_back(&mut self, n: u16) {
        for k in 0..n {
            if let Some(head) = self.ring.avail_entry(self.next_avail + Wrapping(k)).filter(|&h| h < self.ring.size)
                && self.ring.put_used(self.used, head, 0).is_some()
            {
                self.used += Wrapping(1);
            }
        }
        self.next_avail += Wrapping(n);
    }

    pub(crate) fn deliver<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        frame: &[u8],
        mergeable: bool,
    ) -> Result<(), RxError> {
        if frame.len() > MAX_FRAME {
            return Err(RxError::TooLarge);
        }
        let need = HDR_LEN + frame.len();
        if self.one_buffer(mem, frame, need)? {
            return Ok(());
        }
        let most = if mergeable { MAX_RX_BUFFERS } else { 1 };
        // Count the buffers it takes before consuming any.
        let (mut n, mut room) = (0u16, 0usize);
        while room < need && usize::from(n) < most {
            let head = self.head(n)?;
            let cap = (head < self.ring.size).then(|| self.writable(mem, head)).flatten();
            match cap {
                Some(cap) if n > 0 || cap >= HDR_LEN => {
                    room += cap;
                    n += 1;
                }
                _ => {
                    // Unusable: what was measured and this one go back used and empty.
                    self.give_back(n + 1);
                    return Err(RxError::Malformed);
                }
            }
        }
        if room < need {
            self.give_back(1);
            return Err(RxError::Malformed);
        }
        let hdr = header(n);
        let mut parts = [&hdr[..], frame];
        for _ in 0..n {
            let head = self.ring.avail_entry(self.next_avail).ok_or(RxError::Malformed)?;
            let written = fill(self.ring.chain(head), mem, &mut parts).ok_or(RxError::Malformed)?;
            self.consume(head, written)?;
        }
        Ok(())
    }

    /// The common case in one walk: the next chain is a single writable descriptor
    /// with room for the header and the whole frame, in one memory region. True if the
    /// frame was written that way; false to take the general path.
    fn one_buffer<M: GuestMemoryBackend>(&mut self, mem: &M, frame: &[u8], need: usize) -> Result<bool, RxError> {
        let head = self.head(0)?;
        let Some(d) = (head < self.ring.size).then(|| self.ring.descriptor(head)).flatten() else {
            return Ok(false);
        };
        let single = d.flags() & (DESC_F_NEXT | DESC_F_INDIRECT) == 0 && d.is_write_only();
        let Some(slice) = (single && d.len() as usize >= need).then(|| mem.get_slice(d.addr(), need).ok()).flatten()
        else {
            return Ok(false);
        };
        let (h, f) = slice.split_at(HDR_LEN).map_err(|_| RxError::Malformed)?;
        h.copy_from(&header(1));
        f.copy_from(frame);
        self.consume(head, need)?;
        Ok(true)
    }

    /// The next available chain, `head`, goes back used with `written` bytes.
    fn consume(&mut self, head: u16, written: usize) -> Result<(), RxError> {
        let len = u32::try_from(written).expect("a frame is small");
        self.ring.put_used(self.used, head, len).ok_or(RxError::Malformed)?;
        self.used += Wrapping(1);
        self.next_avail += Wrapping(1);
        Ok(())
    }

    /// Bytes the device may write into the chain at `head`; `None` if it is broken, a
    /// descriptor is device-readable or lies outside guest memory.
    fn writable<M: GuestMemoryBackend>(&self, mem: &M, head: u16) -> Option<usize> {
        let mut chain = self.ring.chain(head);
        let cap = writable(&mut chain, mem)?;
        (!chain.broken).then_some(cap)
    }

    /// Publish the used index; whether the driver wants an interrupt.
    pub(crate) fn finish<Q: QueueT>(&self, q: &mut Q) -> bool {
        q.set_next_avail(self.next_avail.0);
        if self.used == self.old_used {
            return false;
        }
        let _ = self.ring.used.store::<u16>(self.used.0.to_le(), 2, Ordering::Release);
        q.set_next_used(self.used.0);
        self.ring.needs_notification(self.old_used, self.used)
    }
}

/// The descriptors of one chain, read from the table; `broken` once the chain turns
/// out unusable (a `next` outside the table, a loop, an indirect table that was never
/// negotiated).
struct Chain<'r, 'm, B: BitmapSlice> {
    ring: &'r SplitRing<'m, B>,
    next: Option<u16>,
    ttl: u16,
    broken: bool,
}

impl<B: BitmapSlice> Iterator for Chain<'_, '_, B> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        let index = self.next.take()?;
        let d = self.ring.descriptor(index);
        let usable = |d: &Descriptor| d.flags() & DESC_F_INDIRECT == 0;
        let Some(d) = d.filter(|d| usable(d) && self.ttl > 0) else {
            self.broken = true;
            return None;
        };
        self.ttl -= 1;
        if d.flags() & DESC_F_NEXT != 0 {
            if d.next() >= self.ring.size {
                self.broken = true;
                return None;
            }
            self.next = Some(d.next());
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net;
    use proptest::prelude::*;
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;

    const SIZE: u16 = 16;
    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const DATA: u64 = 0x1_0000;
    const NEXT: u16 = DESC_F_NEXT;

    /// A driver's side of a queue of 16, laid out by hand so tests choose where the
    /// indices start (the ring wraps) and which descriptor slots chains use.
    struct Driver {
        mem: GuestMemoryMmap,
        start: u16,
        avail_idx: Wrapping<u16>,
    }

    impl Driver {
        fn new(start: u16) -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            mem.write_obj(start.to_le(), GuestAddress(AVAIL + 2)).unwrap();
            mem.write_obj(start.to_le(), GuestAddress(USED + 2)).unwrap();
            Self { mem, start, avail_idx: Wrapping(start) }
        }

        fn queue(&self, event_idx: bool) -> Queue {
            let mut q = Queue::new(SIZE).unwrap();
            q.set_size(SIZE);
            q.set_desc_table_address(Some(u32::try_from(DESC).unwrap()), Some(0));
            q.set_avail_ring_address(Some(u32::try_from(AVAIL).unwrap()), Some(0));
            q.set_used_ring_address(Some(u32::try_from(USED).unwrap()), Some(0));
            q.set_event_idx(event_idx);
            q.set_ready(true);
            q.set_next_avail(self.start);
            q.set_next_used(self.start);
            q
        }

        fn desc(&self, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let d = Descriptor::new(addr, len, flags, next);
            self.mem.write_obj(d, GuestAddress(DESC + u64::from(slot) * 16)).unwrap();
        }

        /// Offer the chain starting at `head`.
        fn offer(&mut self, head: u16) {
            let at = AVAIL + 4 + u64::from(self.avail_idx.0 % SIZE) * 2;
            self.mem.write_obj(head.to_le(), GuestAddress(at)).unwrap();
            self.avail_idx += Wrapping(1);
            self.mem.write_obj(self.avail_idx.0.to_le(), GuestAddress(AVAIL + 2)).unwrap();
        }

        /// A frame of `len` bytes behind a zeroed header, in one descriptor at `slot`.
        fn frame(&mut self, slot: u16, len: usize) -> Vec<u8> {
            let at = DATA + u64::from(slot) * 0x800;
            let f: Vec<u8> = (0..len).map(|i| u8::try_from((i + usize::from(slot)) % 251).unwrap()).collect();
            self.mem.write_slice(&[0; HDR_LEN], GuestAddress(at)).unwrap();
            self.mem.write_slice(&f, GuestAddress(at + HDR_LEN as u64)).unwrap();
            self.desc(slot, at, u32::try_from(HDR_LEN + len).unwrap(), 0, 0);
            self.offer(slot);
            f
        }

        /// Lay `chains` over the descriptor table from slot `first` on (wrapping), each
        /// buffer at its slot's data address holding running bytes, for the device to
        /// read (`device_writes` false) or write; offer each. How many were offered (the
        /// table may run out).
        fn post(&mut self, chains: &[Posted], device_writes: bool, first: usize) -> usize {
            let mut slots: Vec<u16> = (0..SIZE).collect();
            slots.rotate_left(first % usize::from(SIZE));
            let mut free = slots.into_iter();
            let mut byte = 0u8;
            let mut offered = 0;
            for c in chains {
                let Some(idx) = c.parts.iter().map(|_| free.next()).collect::<Option<Vec<u16>>>() else { break };
                for (k, (&len, &slot)) in c.parts.iter().zip(&idx).enumerate() {
                    let at = DATA + u64::from(slot) * 0x800;
                    let bytes: Vec<u8> = (0..len)
                        .map(|_| {
                            byte = byte.wrapping_add(7);
                            byte
                        })
                        .collect();
                    self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
                    let last = k + 1 == idx.len();
                    let write = if device_writes != c.wrong_way { 2 } else { 0 };
                    self.desc(slot, at, len, if last { 0 } else { NEXT } | write, if last { 0 } else { idx[k + 1] });
                }
                self.offer(idx[0]);
                offered += 1;
            }
            offered
        }

        /// A second driver over a copy of this one's memory.
        fn twin(&self) -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let mut copy = vec![0u8; 0x10_0000];
            self.mem.read_slice(&mut copy, GuestAddress(0)).unwrap();
            mem.write_slice(&copy, GuestAddress(0)).unwrap();
            Self { mem, start: self.start, avail_idx: self.avail_idx }
        }

        fn set_used_event(&self, event: u16) {
            self.mem.write_obj(event.to_le(), GuestAddress(AVAIL + 4 + u64::from(SIZE) * 2)).unwrap();
        }

        fn used(&self) -> (u16, Vec<u64>) {
            let idx = u16::from_le(self.mem.read_obj(GuestAddress(USED + 2)).unwrap());
            let ring =
                (0..SIZE).map(|i| self.mem.read_obj(GuestAddress(USED + 4 + u64::from(i) * 8)).unwrap()).collect();
            (idx, ring)
        }
    }

    /// Frames kept as vectors, `room` of them.
    struct Collect(Vec<Vec<u8>>, [u8; MAX_FRAME], usize);

    impl FrameSink for Collect {
        fn buffer(&mut self) -> Option<&mut [u8]> {
            (self.0.len() < self.2).then_some(&mut self.1[..])
        }
        fn commit(&mut self, len: usize) {
            self.0.push(self.1[..len].to_vec());
        }
    }

    fn drain(d: &Driver, q: &mut Queue, budget: usize) -> (Tally, Vec<Vec<u8>>) {
        let mut sink = Collect(Vec::new(), [0; MAX_FRAME], usize::MAX);
        let ring = resolve(q, &d.mem).expect("one region");
        let t = ring.drain_tx(q, &d.mem, &mut sink, budget);
        (t, sink.0)
    }

    #[test]
    fn a_pass_publishes_the_used_index_once_across_the_wrap() {
        let mut d = Driver::new(u16::MAX - 2);
        let frames: Vec<Vec<u8>> = (0..6).map(|i| d.frame(i, 60 + usize::from(i))).collect();
        let mut q = d.queue(false);
        let (t, got) = drain(&d, &mut q, 64);
        assert_eq!((t.frames, t.chains, t.malformed), (6, 6, 0));
        assert_eq!(got, frames);
        let (idx, ring) = d.used();
        assert_eq!(idx, 3, "wrapped past 65535");
        // Slots 13, 14, 15, 0, 1, 2 hold heads 0..6, length 0 (nothing written).
        for (k, slot) in [13usize, 14, 15, 0, 1, 2].into_iter().enumerate() {
            assert_eq!(ring[slot], k as u64);
        }
        assert_eq!((q.next_avail(), q.next_used()), (3, 3));
    }

    #[test]
    fn broken_chains_are_malformed_and_returned() {
        let mut d = Driver::new(0);
        // A `next` outside the table; a loop; an indirect table (not negotiated).
        d.desc(0, DATA, 12, NEXT, 99);
        d.offer(0);
        d.desc(1, DATA, 12, NEXT, 2);
        d.desc(2, DATA, 64, NEXT, 1);
        d.offer(1);
        d.desc(3, DATA, 16, DESC_F_INDIRECT, 0);
        d.offer(3);
        let good = d.frame(4, 60);
        let mut q = d.queue(false);
        let (t, got) = drain(&d, &mut q, 64);
        assert_eq!((t.frames, t.malformed, t.chains), (1, 3, 4));
        assert_eq!(got, vec![good]);
        assert_eq!(d.used().0, 4, "every chain went back");
    }

    #[test]
    fn a_driver_claiming_more_than_the_ring_gets_nothing_consumed() {
        let d = Driver::new(0);
        d.mem.write_obj(40u16.to_le(), GuestAddress(AVAIL + 2)).unwrap();
        let mut q = d.queue(false);
        let (t, _) = drain(&d, &mut q, 64);
        assert_eq!((t.chains, t.malformed), (0, 1));
        assert_eq!(q.next_avail(), 0);
    }

    #[test]
    fn heads_outside_the_table_are_consumed_without_a_used_entry() {
        let mut d = Driver::new(0);
        d.offer(200);
        let good = d.frame(1, 60);
        let mut q = d.queue(false);
        let (t, got) = drain(&d, &mut q, 64);
        assert_eq!((t.frames, t.malformed, t.chains), (1, 1, 1));
        assert_eq!(got, vec![good]);
        assert_eq!((q.next_avail(), d.used().0), (2, 1));
    }

    #[test]
    fn interrupts_follow_the_drivers_wishes() {
        // Without EVENT_IDX: unless the driver set NO_INTERRUPT.
        let mut d = Driver::new(0);
        d.frame(0, 60);
        let mut q = d.queue(false);
        assert!(drain(&d, &mut q, 64).0.notify);
        d.mem.write_obj(AVAIL_F_NO_INTERRUPT.to_le(), GuestAddress(AVAIL)).unwrap();
        d.frame(1, 60);
        assert!(!drain(&d, &mut q, 64).0.notify);
        // With it: when the pass crosses the driver's `used_event`.
        let mut d = Driver::new(0);
        let used_event = AVAIL + 4 + u64::from(SIZE) * 2;
        d.mem.write_obj(5u16.to_le(), GuestAddress(used_event)).unwrap();
        let mut q = d.queue(true);
        for i in 0..3 {
            d.frame(i, 60);
        }
        assert!(!drain(&d, &mut q, 64).0.notify, "used 0..3, event at 5");
        for i in 3..6 {
            d.frame(i, 60);
        }
        assert!(drain(&d, &mut q, 64).0.notify, "used 3..6 crosses 5");
        // An empty pass never interrupts.
        assert!(!drain(&d, &mut q, 64).0.notify);
    }

    /// A chain the differential tests post: descriptor lengths, and whether it points
    /// the wrong way for its queue (device-writable on transmit, device-readable on
    /// receive: malformed).
    #[derive(Debug, Clone)]
    struct Posted {
        parts: Vec<u32>,
        wrong_way: bool,
    }

    fn posted(longest: u32, most_parts: usize) -> impl Strategy<Value = Posted> {
        (prop::collection::vec(1u32..longest, 1..=most_parts), prop::bool::weighted(0.1))
            .prop_map(|(parts, wrong_way)| Posted { parts, wrong_way })
    }

    proptest! {
        /// Receiving: a burst through the hot path leaves guest memory, the used ring,
        /// the indices and the interrupt decision exactly as virtio-queue's path frame by
        /// frame, for any buffers, frames (too large ones included), with or without
        /// mergeable buffers.
        #[test]
        fn the_receive_hot_path_matches_virtio_queue(
            posted in prop::collection::vec(posted(900, 2), 0..8),
            frames in prop::collection::vec(0usize..2000, 1..6),
            start in any::<u16>(),
            mergeable in any::<bool>(),
            event_idx in any::<bool>(),
            used_event in any::<u16>(),
        ) {
            let mut d = Driver::new(start);
            d.post(&posted, true, 0);
            d.set_used_event(used_event);
            let twin = d.twin();
            let (mut qa, mut qb) = (d.queue(event_idx), twin.queue(event_idx));

            let frames: Vec<Vec<u8>> = frames.iter().map(|&n| (0..n).map(|i| u8::try_from(i % 253).unwrap()).collect()).collect();
            let mut burst = net::RxBurst::new(&qa, &d.mem);
            let fast: Vec<_> = frames.iter().map(|f| burst.deliver(&mut qa, &d.mem, f, mergeable)).collect();
            let notify_a = burst.finish(&mut qa, &d.mem);
            let general: Vec<_> = frames.iter().map(|f| net::deliver_rx(&mut qb, &twin.mem, f, mergeable)).collect();
            let notify_b = qb.next_used() != start && qb.needs_notification(&twin.mem).unwrap();
            prop_assert_eq!(fast, general);
            prop_assert_eq!(notify_a, notify_b);
            prop_assert_eq!(d.used(), twin.used());
            prop_assert_eq!((qa.next_avail(), qa.next_used()), (qb.next_avail(), qb.next_used()));
            let (mut a, mut b) = (vec![0u8; 0x8000], vec![0u8; 0x8000]);
            d.mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
            twin.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
            prop_assert!(a == b, "guest memory differs");
        }
    }

    proptest! {
        /// The hot path and virtio-queue's general path agree on everything a driver
        /// and the dataplane see: frames, counts, the used ring, the indices and the
        /// interrupt, for chains scattered over the table, starting anywhere in the
        /// index space, drained with any budget.
        #[test]
        fn the_hot_path_matches_virtio_queue(
            chains in prop::collection::vec(posted(400, 3), 0..8),
            start in any::<u16>(),
            budget in 1usize..10,
            used_event in any::<u16>(),
            event_idx in any::<bool>(),
            rotate in 0usize..16,
        ) {
            let mut d = Driver::new(start);
            let offered = d.post(&chains, false, rotate);
            d.set_used_event(used_event);
            let twin = d.twin();

            let (mut qa, mut qb) = (d.queue(event_idx), twin.queue(event_idx));
            let (ta, fa) = drain(&d, &mut qa, budget);
            let mut sink = Collect(Vec::new(), [0; MAX_FRAME], usize::MAX);
            let tb = net::drain_tx_general(&mut qb, &twin.mem, &mut sink, budget);
            prop_assert_eq!(ta.chains, offered.min(budget));
            prop_assert_eq!(ta, tb);
            prop_assert_eq!(fa, sink.0);
            prop_assert_eq!(d.used(), twin.used());
            prop_assert_eq!((qa.next_avail(), qa.next_used()), (qb.next_avail(), qb.next_used()));
        }
    }
}
