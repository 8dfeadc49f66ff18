//! The virtio-net datapath on split virtqueues (virtio 1.x, VIRTIO_F_VERSION_1): the
//! 12-byte `virtio_net_hdr_v1` in front of every frame, `num_buffers` for mergeable
//! receive buffers (VIRTIO_NET_F_MRG_RXBUF). No offloads are offered, so a guest sends
//! complete frames with finished checksums and expects the same.

use virtio_queue::QueueT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address as _, Bytes as _, GuestMemory, GuestMemoryBackend};

/// `sizeof(struct virtio_net_hdr_v1)`.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;
/// Largest frame carried: Ethernet header + the 1500-byte MTU of an uplink, with room
/// for a VLAN tag (the pod MTU is 50 bytes less).
pub const MAX_FRAME: usize = 1518;
/// Smallest frame accepted from a guest (an Ethernet header).
pub const MIN_FRAME: usize = 14;
/// Most buffers one received frame may span.
pub(crate) const MAX_RX_BUFFERS: usize = 64;

/// What a pass over the transmit queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Frames moved.
    pub frames: u64,
    /// Chains the frontend got back unusable: bad addresses, too short, too long.
    pub malformed: u64,
    /// Frames dropped for want of a dataplane buffer.
    pub dropped: u64,
    /// Chains taken from the ring (the pass stopped at its budget if this equals it).
    pub chains: usize,
    /// The guest asked to be interrupted for the chains returned.
    pub notify: bool,
}

impl Tally {
    /// Count one chain taken from the ring: `read` copies its frame into a buffer of
    /// `sink` and returns the length, or `None` if the chain is not a frame.
    pub(crate) fn take(&mut self, sink: &mut impl FrameSink, read: impl FnOnce(&mut [u8]) -> Option<usize>) {
        self.chains += 1;
        match sink.buffer() {
            None => self.dropped += 1,
            Some(buf) => match read(buf) {
                Some(len) => {
                    sink.commit(len);
                    self.frames += 1;
                }
                None => self.malformed += 1,
            },
        }
    }
}

/// A frame from the guest, header skipped, into `buf`; `None` if the chain is not a
/// frame (too short or long, device-writable, outside guest memory). Walks the
/// descriptors directly: virtio-queue's `Reader` would collect them into a fresh vector
/// for every frame, an allocation per packet.
pub(crate) fn read_frame<M: GuestMemoryBackend>(
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    buf: &mut [u8],
) -> Option<usize> {
    let mut skip = HDR_LEN;
    let mut len = 0;
    let room = buf.len().min(MAX_FRAME);
    for d in chain {
        if d.is_write_only() {
            return None;
        }
        let mut n = d.len() as usize;
        let mut addr = d.addr();
        if skip > 0 {
            let s = skip.min(n);
            (skip, n) = (skip - s, n - s);
            addr = addr.checked_add(s as u64)?;
        }
        if n == 0 {
            continue;
        }
        if len + n > room {
            return None;
        }
        // One lookup and a plain copy when the range lies in one region (the usual case);
        // the general, region-crossing read otherwise.
        match mem.get_slice(addr, n) {
            Ok(slice) => {
                slice.copy_to(&mut buf[len..len + n]);
            }
            Err(_) => mem.read_slice(&mut buf[len..len + n], addr).ok()?,
        }
        len += n;
    }
    (skip == 0 && len >= MIN_FRAME).then_some(len)
}

/// Where frames from the guest go: straight into the buffers the dataplane processes,
/// so a frame is copied once, from guest memory.
pub trait FrameSink {
    /// A buffer of at least [`MAX_FRAME`] bytes for the next frame; `None` when none is
    /// free (the frame is dropped).
    fn buffer(&mut self) -> Option<&mut [u8]>;
    /// The buffer last handed out now holds a frame of `len` bytes.
    fn commit(&mut self, len: usize);
}

/// Take up to `budget` available chains of the transmit queue `q`: each valid frame is
/// read into a buffer of `sink`, every chain is returned to the guest as used. Returns
/// what happened; the caller signals the guest if [`Tally::notify`] says so. The budget
/// bounds a pass: a guest that keeps its ring full would otherwise keep one pass going
/// forever, and the dataplane would hear of its frames only at the end.
pub fn drain_tx<Q: QueueT, M: GuestMemoryBackend>(
    q: &mut Q,
    mem: &M,
    sink: &mut impl FrameSink,
    budget: usize,
) -> Tally {
    match crate::ring::resolve(q, mem) {
        Some(ring) => ring.drain_tx(q, mem, sink, budget),
        None => drain_tx_general(q, mem, sink, budget),
    }
}

/// [`drain_tx`] through virtio-queue's accessors: for rings that span memory regions.
pub(crate) fn drain_tx_general<Q: QueueT, M: GuestMemoryBackend>(
    q: &mut Q,
    mem: &M,
    sink: &mut impl FrameSink,
    budget: usize,
) -> Tally {
    let mut tally = Tally::default();
    while tally.chains < budget
        && let Some(chain) = q.pop_descriptor_chain(mem)
    {
        let head = chain.head_index();
        tally.take(sink, |buf| read_frame(chain, mem, buf));
        if q.add_used(mem, head, 0).is_err() {
            // The used ring itself is unusable: stop; the frontend's problem is reported
            // by the caller through the error counters.
            tally.malformed += 1;
            break;
        }
    }
    tally.notify = tally.chains > 0 && q.needs_notification(mem).unwrap_or(true);
    tally
}

/// The header in front of a received frame: no offloads, `num_buffers` buffers.
pub(crate) fn header(num_buffers: u16) -> [u8; HDR_LEN] {
    let mut hdr = [0u8; HDR_LEN];
    hdr[NUM_BUFFERS..].copy_from_slice(&num_buffers.to_le_bytes());
    hdr
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// The guest has not posted enough receive buffers (try again after its next kick).
    #[error("no receive buffers")]
    NoBuffers,
    /// A buffer chain is unusable (bad addresses or not writable).
    #[error("malformed receive buffer")]
    Malformed,
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame too large")]
    TooLarge,
}

/// Deliver `frame` into the receive queue `q`: the header (`num_buffers` filled in) then
/// the bytes, in one buffer or — with `mergeable` — across as many as it takes. On
/// [`RxError::NoBuffers`] nothing was consumed; the caller keeps the frame.
///
/// # Errors
/// [`RxError`].
pub fn deliver_rx<Q: QueueT, M: GuestMemoryBackend>(
    q: &mut Q,
    mem: &M,
    frame: &[u8],
    mergeable: bool,
) -> Result<(), RxError> {
    if frame.len() > MAX_FRAME {
        return Err(RxError::TooLarge);
    }
    let start = q.next_avail();
    let need = HDR_LEN + frame.len();
    let most = if mergeable { MAX_RX_BUFFERS } else { 1 };
    // Count the buffers it takes without consuming them: pop, measure, rewind.
    let mut n = 0;
    let mut room = 0;
    while room < need && n < most {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            q.set_next_avail(start);
            return Err(RxError::NoBuffers);
        };
        let head = chain.head_index();
        match writable(chain, mem) {
            Some(cap) if n > 0 || cap >= HDR_LEN => {
                room += cap;
                n += 1;
            }
            _ => {
                // Unusable (outside guest memory, read-only, shorter than a header): give
                // back whatever was measured so far, and this one, as used and empty.
                q.set_next_avail(start);
                for _ in 0..n {
                    let _ = q.pop_descriptor_chain(mem).map(|c| q.add_used(mem, c.head_index(), 0));
                }
                let _ = q.pop_descriptor_chain(mem);
                let _ = q.add_used(mem, head, 0);
                return Err(RxError::Malformed);
            }
        }
    }
    q.set_next_avail(start);
    if room < need {
        // One buffer too small without mergeable buffers, or more than 64 of them.
        let _ = q.pop_descriptor_chain(mem).map(|c| q.add_used(mem, c.head_index(), 0));
        return Err(RxError::Malformed);
    }
    let hdr = header(u16::try_from(n).expect("at most 64"));
    // The header, then the frame, poured across the buffers in order.
    let mut parts = [&hdr[..], frame];
    for _ in 0..n {
        let chain = q.pop_descriptor_chain(mem).ok_or(RxError::Malformed)?;
        let head = chain.head_index();
        let used = fill(chain, mem, &mut parts).ok_or(RxError::Malformed)?;
        q.add_used(mem, head, u32::try_from(used).expect("a frame is small")).map_err(|_| RxError::Malformed)?;
    }
    Ok(())
}

/// Frames into the receive queue, several per pass: [`RxBurst::deliver`] each, then
/// [`RxBurst::finish`], which publishes the used index once (the general path, for a
/// ring that spans memory regions, publishes per buffer).
pub struct RxBurst<'m, M: GuestMemoryBackend>(Burst<'m, M>);

enum Burst<'m, M: GuestMemoryBackend> {
    /// The ring's areas resolved once ([`crate::ring`]).
    Fast(crate::ring::RxPass<'m, vm_memory::bitmap::MS<'m, M>>),
    /// virtio-queue's accessors; the used index the pass started at.
    General(u16),
}

impl<M: GuestMemoryBackend> std::fmt::Debug for RxBurst<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Burst::Fast(_) => "RxBurst(fast)",
            Burst::General(_) => "RxBurst(general)",
        })
    }
}

impl<'m, M: GuestMemoryBackend> RxBurst<'m, M> {
    /// Start a pass over `q`.
    pub fn new<Q: QueueT>(q: &Q, mem: &'m M) -> Self {
        Self(crate::ring::resolve(q, mem).map_or(Burst::General(q.next_used()), |ring| Burst::Fast(ring.rx_pass(q))))
    }

    /// Deliver `frame`, as [`deliver_rx`] does (on [`RxError::NoBuffers`] nothing was
    /// consumed). `q` and `mem` are the ones the pass started with.
    ///
    /// # Errors
    /// [`RxError`].
    pub fn deliver<Q: QueueT>(&mut self, q: &mut Q, mem: &M, frame: &[u8], mergeable: bool) -> Result<(), RxError> {
        match &mut self.0 {
            Burst::Fast(pass) => pass.deliver(mem, frame, mergeable),
            Burst::General(_) => deliver_rx(q, mem, frame, mergeable),
        }
    }

    /// End the pass: the used index published; whether the guest wants an interrupt.
    pub fn finish<Q: QueueT>(self, q: &mut Q, mem: &M) -> bool {
        match self.0 {
            Burst::Fast(pass) => pass.finish(q),
            // Buffers went back (filled, or returned unusable): the guest may want to know.
            Burst::General(start) => q.next_used() != start && q.needs_notification(mem).unwrap_or(true),
        }
    }
}

/// Bytes the device may write into `chain`; `None` if a descriptor is device-readable or
/// lies outside guest memory.
pub(crate) fn writable<M: GuestMemory>(chain: impl Iterator<Item = Descriptor>, mem: &M) -> Option<usize> {
    let mut cap = 0usize;
    for d in chain {
        if !d.is_write_only() || !mem.check_range(d.addr(), d.len() as usize, vm_memory::Permissions::Write) {
            return None;
        }
        cap = cap.checked_add(d.len() as usize)?;
    }
    Some(cap)
}

/// Write the front of `parts` into `chain`'s buffers, consuming what was written;
/// returns how many bytes.
pub(crate) fn fill<M: GuestMemoryBackend>(
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    parts: &mut [&[u8]; 2],
) -> Option<usize> {
    let mut used = 0;
    for d in chain {
        let want = (parts[0].len() + parts[1].len()).min(d.len() as usize);
        if want == 0 {
            break;
        }
        // One lookup for the buffer when it lies in one region (the usual case); the
        // general, region-crossing write otherwise.
        let slice = mem.get_slice(d.addr(), want).ok();
        let mut off = 0;
        for part in parts.iter_mut() {
            let k = (want - off).min(part.len());
            if k == 0 {
                continue;
            }
            match &slice {
                Some(slice) => slice.subslice(off, k).ok()?.copy_from(&part[..k]),
                None => mem.write_slice(&part[..k], d.addr().checked_add(off as u64)?).ok()?,
            }
            *part = &part[k..];
            off += k;
        }
        used += want;
    }
    Some(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_queue::Queue;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Guest memory in two adjacent 64 KiB regions: the boundary at 0x1_0000.
    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000), (GuestAddress(0x1_0000), 0x1_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// A frame of `len` recognisable bytes.
    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect()
    }

    fn used_idx(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
        vq.used().idx().load()
    }

    /// Frames kept as vectors; `room` buffers before it runs dry.
    struct Collect {
        buf: [u8; MAX_FRAME],
        got: Vec<Vec<u8>>,
        room: usize,
    }

    impl Collect {
        fn new(room: usize) -> Self {
            Self { buf: [0; MAX_FRAME], got: Vec::new(), room }
        }
    }

    impl FrameSink for Collect {
        fn buffer(&mut self) -> Option<&mut [u8]> {
            (self.got.len() < self.room).then_some(&mut self.buf[..])
        }
        fn commit(&mut self, len: usize) {
            self.got.push(self.buf[..len].to_vec());
        }
    }

    #[test]
    fn tx_strips_the_header_across_descriptors() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let f = frame(60);
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(0x1_0000)).unwrap();
        mem.write_slice(&f[..20], GuestAddress(0x2_0000)).unwrap();
        mem.write_slice(&f[20..], GuestAddress(0x3_0000)).unwrap();
        // Header alone, then the frame in two pieces: guests split chains freely.
        vq.add_desc_chains(&[desc(0x1_0000, 12, NEXT, 1), desc(0x2_0000, 20, NEXT, 2), desc(0x3_0000, 40, 0, 0)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut sink = Collect::new(8);
        let t = drain_tx(&mut q, &mem, &mut sink, 64);
        assert_eq!(t, Tally { frames: 1, malformed: 0, dropped: 0, chains: 1, notify: true });
        assert_eq!(sink.got, vec![f]);
        assert_eq!(used_idx(&vq), 1, "the chain went back to the guest");
    }

    #[test]
    fn tx_reads_a_buffer_that_spans_two_memory_regions() {
        // Guest memory in two adjacent regions, a frame straddling the boundary: the
        // one-region fast path does not apply, the general read does.
        let mem = two_regions();
        let vq = MockSplitQueue::new(&mem, 16);
        let f = frame(100);
        let at = 0x1_0000 - 40;
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(at)).unwrap();
        mem.write_slice(&f, GuestAddress(at + 12)).unwrap();
        vq.add_desc_chains(&[desc(at, 112, 0, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut sink = Collect::new(8);
        let t = drain_tx(&mut q, &mem, &mut sink, 64);
        assert_eq!((t.frames, t.malformed), (1, 0));
        assert_eq!(sink.got, vec![f]);
    }

    #[test]
    fn tx_serves_a_ring_that_spans_two_memory_regions() {
        // The descriptor table straddles the boundary: no one-region view of it, so the
        // pass takes virtio-queue's general path.
        let mem = two_regions();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000 - 0x80), 16);
        let f = frame(60);
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(0x1_8000)).unwrap();
        mem.write_slice(&f, GuestAddress(0x1_8000 + 12)).unwrap();
        vq.add_desc_chains(&[desc(0x1_8000, 72, 0, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(crate::ring::resolve(&q, &mem).is_none());
        let mut sink = Collect::new(8);
        let t = drain_tx(&mut q, &mem, &mut sink, 64);
        assert_eq!((t.frames, t.malformed, t.notify), (1, 0, true));
        assert_eq!(sink.got, vec![f]);
        assert_eq!(used_idx(&vq), 1);
    }

    #[test]
    fn tx_bad_chains_are_counted_and_returned() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(
            &[
                // Outside guest memory.
                desc(0x4000_0000, 72, 0, 0),
                // Shorter than a header and an Ethernet header.
                desc(0x1_0000, 20, 0, 0),
                // Longer than any frame.
                desc(0x1_0000, 4000, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut sink = Collect::new(8);
        let t = drain_tx(&mut q, &mem, &mut sink, 64);
        assert_eq!((t.frames, t.malformed), (0, 3));
        assert!(sink.got.is_empty());
        assert_eq!(used_idx(&vq), 3);
    }

    #[test]
    fn tx_without_dataplane_buffers_drops_and_returns_the_chain() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(0x1_0000)).unwrap();
        mem.write_slice(&frame(60), GuestAddress(0x1_0000 + 12)).unwrap();
        vq.add_desc_chains(&[desc(0x1_0000, 72, 0, 0), desc(0x1_0000, 72, 0, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut sink = Collect::new(1);
        let t = drain_tx(&mut q, &mem, &mut sink, 64);
        assert_eq!(t, Tally { frames: 1, malformed: 0, dropped: 1, chains: 2, notify: true });
        assert_eq!(used_idx(&vq), 2, "the guest gets both buffers back");
    }

    #[test]
    fn rx_merges_buffers_and_counts_them() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[desc(0x1_0000, 1000, WRITE, 0), desc(0x2_0000, 1000, WRITE, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let f = frame(1514);
        deliver_rx(&mut q, &mem, &f, true).unwrap();
        assert_eq!(used_idx(&vq), 2);
        let mut hdr = [0u8; HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
        let mut a = vec![0u8; 988];
        let mut b = vec![0u8; 1514 - 988];
        mem.read_slice(&mut a, GuestAddress(0x1_0000 + 12)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x2_0000)).unwrap();
        assert_eq!([a, b].concat(), f);
    }

    #[test]
    fn rx_writes_a_buffer_that_spans_two_memory_regions() {
        let mem = two_regions();
        let vq = MockSplitQueue::new(&mem, 16);
        let at = 0x1_0000 - 40;
        vq.add_desc_chains(&[desc(at, 2048, WRITE, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let f = frame(100);
        deliver_rx(&mut q, &mem, &f, true).unwrap();
        let mut got = vec![0u8; HDR_LEN + 100];
        mem.read_slice(&mut got, GuestAddress(at)).unwrap();
        assert_eq!(&got[HDR_LEN..], &f[..]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    }

    #[test]
    fn rx_without_buffers_consumes_nothing() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[desc(0x1_0000, 1000, WRITE, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(deliver_rx(&mut q, &mem, &frame(1514), true), Err(RxError::NoBuffers));
        assert_eq!((q.next_avail(), used_idx(&vq)), (0, 0), "the buffer is still the guest's");
        // Without mergeable buffers one small buffer is the guest's mistake: returned.
        assert_eq!(deliver_rx(&mut q, &mem, &frame(1514), false), Err(RxError::Malformed));
        assert_eq!(used_idx(&vq), 1);
        assert_eq!(deliver_rx(&mut q, &mem, &frame(2000), true), Err(RxError::TooLarge));
    }

    #[test]
    fn rx_read_only_or_wild_buffers_are_malformed() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[desc(0x1_0000, 2048, 0, 0), desc(0x4000_0000, 2048, WRITE, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(deliver_rx(&mut q, &mem, &frame(64), true), Err(RxError::Malformed));
        assert_eq!(deliver_rx(&mut q, &mem, &frame(64), true), Err(RxError::Malformed));
        assert_eq!(used_idx(&vq), 2, "both returned, nothing written");
    }

    proptest! {
        /// Whatever a hostile frontend puts in the rings — addresses, lengths, flags,
        /// next indices — both directions return without panicking, and every chain
        /// they take is returned.
        #[test]
        fn hostile_rings_never_panic(
            descs in prop::collection::vec((any::<u64>(), 0u32..5000, any::<u16>(), 0u16..20), 1..16),
            frame_len in 0usize..1600,
            mergeable in any::<bool>(),
        ) {
            let mem = memory();
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .map(|&(a, l, f, n)| desc(if a % 2 == 0 { 0x1_0000 + (a % 0xf_0000) } else { a }, l, f & 7, n))
                .collect();
            for dir in 0..2 {
                let vq = MockSplitQueue::new(&mem, 16);
                vq.add_desc_chains(&raw, 0).unwrap();
                let mut q: Queue = vq.create_queue().unwrap();
                if dir == 0 {
                    let _ = drain_tx(&mut q, &mem, &mut Collect::new(16), 64);
                } else {
                    for _ in 0..4 {
                        let _ = deliver_rx(&mut q, &mem, &frame(frame_len.max(14)), mergeable);
                    }
                }
                prop_assert!(used_idx(&vq) <= 16);
            }
        }
    }
}
