//! The four rings of an AF_XDP socket, mapped from its descriptor: fill and TX, which
//! the application produces into, and RX and completion, which it consumes from.
//!
//! Written here rather than taken from `xdpilone` because a ring must be mappable from
//! any socket descriptor, including one another process bound (a hitless restart maps
//! the rings of sockets it inherits), and xdpilone builds rings only for sockets it
//! created itself.
//!
//! The producer and consumer indices live in the shared mapping; each side caches the
//! other's and refreshes it only when the cached view runs out (the kernel's and
//! libxdp's scheme). Reads of the other side's index are acquire loads and publishing
//! one's own is a release store, pairing with the kernel's `smp_load_acquire` /
//! `smp_store_release` on the same words.

use crate::sys::SharedMapping;
use std::io;
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `flags` word of fill and TX rings: the kernel wants a wakeup to make progress.
const XDP_RING_NEED_WAKEUP: u32 = 1;

/// An RX or TX descriptor (`struct xdp_desc`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Address in the UMEM (frame base + offset of the packet).
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// `XDP_PKT_CONTD` on RX; `XDP_TX_METADATA` on TX.
    pub options: u32,
}

/// Where a ring's words lie in its mapping (`struct xdp_ring_offset`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RingOffsets {
    pub(super) producer: u64,
    pub(super) consumer: u64,
    pub(super) desc: u64,
    pub(super) flags: u64,
}

/// A ring of `size` entries of `T` (a power of two), mapped from a socket.
struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    mask: u32,
    size: u32,
    /// Our view of the producer and consumer indices.
    prod: u32,
    cons: u32,
    _map: SharedMapping,
    _entries: PhantomData<T>,
}

// SAFETY: a ring owns its mapping; the raw pointers point into it and nowhere else, so
// the ring may move to another thread with the mapping. The kernel's side of the shared
// words is synchronised by the atomics; only one thread uses a ring at a time (`&mut`).
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Map the ring of `size` entries at page offset `pgoff` of socket `fd`, whose words
    /// lie at `off` in the mapping.
    fn map(fd: BorrowedFd<'_>, pgoff: libc::off_t, off: RingOffsets, size: u32) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "ring size must be a power of two"));
        }
        let bytes = usize::try_from(off.desc).map_err(io::Error::other)? + size as usize * size_of::<T>();
        let map = SharedMapping::map(fd, bytes, pgoff)?;
        let base = map.base();
        let at = |o: u64| -> io::Result<NonNull<u8>> {
            let o = usize::try_from(o).map_err(io::Error::other)?;
            if o + 4 > bytes {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "ring offset outside its mapping"));
            }
            // SAFETY: `o` lies inside the mapping (checked above).
            Ok(unsafe { base.add(o) })
        };
        let (producer, consumer, flags, entries) =
            (at(off.producer)?, at(off.consumer)?, at(off.flags)?, at(off.desc)?);
        if [producer, consumer, flags].iter().any(|p| !p.as_ptr().cast::<AtomicU32>().is_aligned())
            || !entries.as_ptr().cast::<T>().is_aligned()
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "misaligned ring offsets"));
        }
        let mut ring = Self {
            producer: producer.cast(),
            consumer: consumer.cast(),
            flags: flags.cast(),
            entries: entries.cast(),
            mask: size - 1,
            size,
            prod: 0,
            cons: 0,
            _map: map,
            _entries: PhantomData,
        };
        // Start from the indices as they are: a ring mapped again (a socket inherited
        // from another process) carries on where its last user stopped.
        ring.prod = ring.producer().load(Ordering::Acquire);
        ring.cons = ring.consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: an aligned u32 inside the mapping this ring owns (checked in `map`),
        // shared with the kernel, which accesses it atomically too.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & mask` < `size`, and the mapping holds `size` entries from
        // `entries` (sized in `map`).
        unsafe { self.entries.as_ptr().add((index & self.mask) as usize) }
    }
}

/// A ring the application fills and the kernel drains: fill (frame addresses) and TX
/// (descriptors).
pub(super) struct Producer<T>(Ring<T>);

impl<T: Copy> Producer<T> {
    /// See [`Ring::map`].
    pub(super) fn map(fd: BorrowedFd<'_>, pgoff: libc::off_t, off: RingOffsets, size: u32) -> io::Result<Self> {
        Ring::map(fd, pgoff, off, size).map(Self)
    }

    /// Free slots, up to `want` (the kernel's consumer index is read again only if the
    /// cached view has fewer).
    pub(super) fn free(&mut self, want: u32) -> u32 {
        let r = &mut self.0;
        let mut free = r.size - r.prod.wrapping_sub(r.cons);
        if free < want {
            r.cons = r.consumer().load(Ordering::Acquire);
            free = r.size - r.prod.wrapping_sub(r.cons);
        }
        free.min(want)
    }

    /// Write the `i`-th entry after the ones submitted; `i` < what [`free`](Self::free)
    /// granted.
    pub(super) fn write(&mut self, i: u32, entry: T) {
        let slot = self.0.slot(self.0.prod.wrapping_add(i));
        // SAFETY: the slot is inside the ring and free (granted by `free`): the kernel
        // does not read it until the producer index passes it in `submit`.
        unsafe { slot.write(entry) };
    }

    /// Hand the first `n` written entries to the kernel.
    pub(super) fn submit(&mut self, n: u32) {
        self.0.prod = self.0.prod.wrapping_add(n);
        self.0.producer().store(self.0.prod, Ordering::Release);
    }

    /// Entries submitted that the kernel has not taken yet.
    pub(super) fn pending(&self) -> u32 {
        self.0.prod.wrapping_sub(self.0.consumer().load(Ordering::Acquire))
    }

    /// Whether the kernel wants a wakeup (need_wakeup mode) to take them.
    pub(super) fn needs_wakeup(&self) -> bool {
        self.0.needs_wakeup()
    }
}

/// A ring the kernel fills and the application drains: RX (descriptors) and completion
/// (frame addresses).
pub(super) struct Consumer<T>(Ring<T>);

impl<T: Copy> Consumer<T> {
    /// See [`Ring::map`].
    pub(super) fn map(fd: BorrowedFd<'_>, pgoff: libc::off_t, off: RingOffsets, size: u32) -> io::Result<Self> {
        Ring::map(fd, pgoff, off, size).map(Self)
    }

    /// Entries ready, up to `max` (the kernel's producer index is read again only if the
    /// cached view has none).
    pub(super) fn ready(&mut self, max: u32) -> u32 {
        let r = &mut self.0;
        let mut ready = r.prod.wrapping_sub(r.cons);
        if ready == 0 {
            r.prod = r.producer().load(Ordering::Acquire);
            ready = r.prod.wrapping_sub(r.cons);
        }
        ready.min(max)
    }

    /// The `i`-th ready entry; `i` < what [`ready`](Self::ready) granted.
    pub(super) fn read(&self, i: u32) -> T {
        let slot = self.0.slot(self.0.cons.wrapping_add(i));
        // SAFETY: the slot is inside the ring and was published by the kernel (before its
        // producer index, read with acquire in `ready`); it is ours until `release`.
        unsafe { slot.read() }
    }

    /// Give the first `n` read entries back to the kernel.
    pub(super) fn release(&mut self, n: u32) {
        self.0.cons = self.0.cons.wrapping_add(n);
        self.0.consumer().store(self.0.cons, Ordering::Release);
    }

    /// Entries the kernel has published and we have not released.
    pub(super) fn available(&self) -> u32 {
        self.0.producer().load(Ordering::Acquire).wrapping_sub(self.0.cons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

    const OFF: RingOffsets = RingOffsets { producer: 0, consumer: 64, flags: 128, desc: 192 };

    /// A stand-in for a socket's ring memory: a memfd the test plays the kernel on
    /// through a second mapping.
    struct FakeKernel {
        fd: OwnedFd,
        map: SharedMapping,
    }

    impl FakeKernel {
        fn new(size: u32, prod: u32, cons: u32) -> Self {
            // SAFETY: memfd_create with a static name; the result is checked and owned.
            let raw = unsafe { libc::memfd_create(c"ring".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(raw >= 0);
            // SAFETY: a descriptor just returned, owned by no one else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let len = 192 + size as usize * size_of::<Desc>();
            // SAFETY: resizing the memfd this test owns.
            assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }, 0);
            let map = SharedMapping::map(fd.as_fd(), len, 0).unwrap();
            let k = Self { fd, map };
            k.word(0).store(prod, Ordering::Release);
            k.word(64).store(cons, Ordering::Release);
            k
        }

        fn word(&self, at: usize) -> &AtomicU32 {
            // SAFETY: an aligned word inside the test's mapping.
            unsafe { &*self.map.base().as_ptr().add(at).cast::<AtomicU32>() }
        }

        fn entry(&self, size: u32, index: u32) -> *mut Desc {
            // SAFETY: inside the mapping: 192 + (index mod size) entries.
            unsafe { self.map.base().as_ptr().add(192).cast::<Desc>().add((index & (size - 1)) as usize) }
        }
    }

    /// Entries cross the ring in order and in bounds across the u32 wrap of the indices,
    /// starting from indices another user left (a ring mapped again picks them up).
    #[test]
    fn a_consumer_reads_in_order_across_the_index_wrap() {
        let size = 8;
        let start = u32::MAX - 20;
        let k = FakeKernel::new(size, start, start);
        let mut rx = Consumer::<Desc>::map(k.fd.as_fd(), 0, OFF, size).unwrap();
        let (mut next, mut seen) = (start, start);
        for round in 0..20u32 {
            let n = round % 5 + 1;
            for _ in 0..n.min(size - next.wrapping_sub(seen)) {
                // SAFETY: the test plays the kernel: it writes a free slot, then publishes.
                unsafe { k.entry(size, next).write(Desc { addr: u64::from(next), len: round, options: 0 }) };
                next = next.wrapping_add(1);
            }
            k.word(0).store(next, Ordering::Release);
            assert_eq!(rx.available(), next.wrapping_sub(seen));
            let ready = rx.ready(3);
            for i in 0..ready {
                assert_eq!(rx.read(i).addr, u64::from(seen.wrapping_add(i)), "in order");
            }
            rx.release(ready);
            seen = seen.wrapping_add(ready);
            assert_eq!(k.word(64).load(Ordering::Acquire), seen, "released to the kernel");
        }
        assert!(seen.wrapping_sub(start) > 20, "wrapped past u32::MAX");
    }

    /// A producer never grants more than the free slots, sees slots the kernel freed,
    /// and publishes what it wrote.
    #[test]
    fn a_producer_grants_only_free_slots() {
        let size = 4;
        let start = u32::MAX - 1;
        let k = FakeKernel::new(size, start, start);
        let mut fill = Producer::<u64>::map(k.fd.as_fd(), 0, OFF, size).unwrap();
        assert_eq!(fill.free(10), 4);
        for i in 0..3 {
            fill.write(i, 100 + u64::from(i));
        }
        fill.submit(3);
        assert_eq!((k.word(0).load(Ordering::Acquire), fill.pending()), (start.wrapping_add(3), 3));
        assert_eq!(fill.free(10), 1, "three in the ring");
        // The kernel takes two.
        k.word(64).store(start.wrapping_add(2), Ordering::Release);
        assert_eq!((fill.free(10), fill.pending()), (3, 1));
        assert!(!fill.needs_wakeup());
        k.word(128).store(XDP_RING_NEED_WAKEUP, Ordering::Release);
        assert!(fill.needs_wakeup());
    }

    #[test]
    fn sizes_must_be_powers_of_two() {
        let k = FakeKernel::new(8, 0, 0);
        assert!(Producer::<u64>::map(k.fd.as_fd(), 0, OFF, 6).is_err());
    }
}
