//! The vhost-user datapath's ring handling in memory: 256 frames of 64 bytes through a
//! split virtqueue of 256 entries, each way, on xlane's hot path and on virtio-queue's
//! accessors (the path a ring spanning two memory regions takes — here the baseline,
//! selected by placing the same ring across a region boundary). Throughput is frames
//! per second. The driver's side is reset outside the timed section.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xlane_vhost::net::{self, FrameSink, HDR_LEN, MAX_FRAME, RxBurst};

const SIZE: u16 = 256;
const FRAME: usize = 64;
/// Buffers, 2 KiB each, well away from the rings.
const DATA: u64 = 0x10_0000;

/// Guest memory with the ring at `ring` (desc table, then avail, then used, 4 KiB apart
/// enough for 256 entries) and a region boundary at 64 KiB: a ring at 60 KiB spans it.
struct Rig {
    mem: GuestMemoryMmap,
    ring: u64,
}

impl Rig {
    fn new(ring: u64) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000), (GuestAddress(0x1_0000), 0x80_0000)])
            .expect("memory");
        Self { mem, ring }
    }

    fn desc(&self) -> u64 {
        self.ring
    }
    fn avail(&self) -> u64 {
        self.ring + 16 * u64::from(SIZE)
    }
    fn used(&self) -> u64 {
        self.avail() + 0x1000
    }

    /// Post every buffer (`flags` 0 to send, 2 to receive) and return a fresh queue.
    fn post(&self, flags: u16, tx_frame: bool) -> Queue {
        for i in 0..SIZE {
            let addr = DATA + u64::from(i) * 2048;
            let len = if tx_frame { u32::try_from(HDR_LEN + FRAME).expect("small") } else { 2048 };
            let d = virtio_queue::desc::split::Descriptor::new(addr, len, flags, 0);
            self.mem.write_obj(d, GuestAddress(self.desc() + u64::from(i) * 16)).expect("desc");
            self.mem.write_obj(i.to_le(), GuestAddress(self.avail() + 4 + u64::from(i) * 2)).expect("avail");
        }
        self.mem.write_obj(SIZE.to_le(), GuestAddress(self.avail() + 2)).expect("avail idx");
        self.mem.write_obj(0u16, GuestAddress(self.used() + 2)).expect("used idx");
        let mut q = Queue::new(SIZE).expect("queue");
        q.set_size(SIZE);
        let split = |a: u64| {
            (Some(u32::try_from(a & 0xffff_ffff).expect("masked")), Some(u32::try_from(a >> 32).expect("shifted")))
        };
        let (lo, hi) = split(self.desc());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used());
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }
}

struct Sink {
    buf: [u8; MAX_FRAME],
    n: usize,
}

impl FrameSink for Sink {
    fn buffer(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.buf[..])
    }
    fn commit(&mut self, len: usize) {
        self.n += len;
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtqueue");
    g.throughput(Throughput::Elements(u64::from(SIZE)));
    for (name, ring) in [("xlane", 0x2_0000), ("virtio-queue", 0x1_0000 - 0x400)] {
        let rig = Rig::new(ring);
        g.bench_function(format!("guest_tx_256x64B/{name}"), |b| {
            b.iter_batched_ref(
                || rig.post(0, true),
                |q| {
                    let mut sink = Sink { buf: [0; MAX_FRAME], n: 0 };
                    let t = net::drain_tx(q, &rig.mem, &mut sink, usize::from(SIZE));
                    assert_eq!(t.frames, u64::from(SIZE));
                    black_box(sink.n)
                },
                BatchSize::SmallInput,
            );
        });
        let frame = [0x5au8; FRAME];
        g.bench_function(format!("guest_rx_256x64B/{name}"), |b| {
            b.iter_batched_ref(
                || rig.post(2, false),
                |q| {
                    let mut burst = RxBurst::new(q, &rig.mem);
                    for _ in 0..SIZE {
                        burst.deliver(q, &rig.mem, &frame, true).expect("a buffer per frame");
                    }
                    black_box(burst.finish(q, &rig.mem))
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
