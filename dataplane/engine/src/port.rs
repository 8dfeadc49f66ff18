//! Ports and the memory their frames live in: what an I/O layer implements so the burst
//! [`Driver`](crate::Driver) can run the pipeline over it.
//!
//! As smoltcp's `phy::Device` separates the interface from the medium, a [`Port`] is a
//! medium: AF_XDP sockets, a vhost-user guest, an in-memory queue. Frames live in a
//! [`FrameMemory`] that every port of one worker shares (a UMEM, a pool of buffers), so
//! forwarding between two ports of that memory moves a buffer handle, never bytes.
//! Everything is generic and monomorphised: the driver's hot path has no virtual call.

use crate::offload::{Jumbo, OffloadMeta, PartialCsum, complete_checksum};
use crate::pipeline::BURST;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
pub use xlane_fib::PortId;

/// A packet in a frame buffer: which buffer, and where the packet lies in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Packet<B> {
    /// The buffer (a UMEM frame's base address, a pool slot).
    pub buf: B,
    /// Offset of the packet's first byte in the buffer.
    pub head: u32,
    /// Packet length.
    pub len: u32,
}

/// The frame buffers a worker's ports share.
///
/// A buffer is owned by exactly one party at a time: the memory (free), a port (in a
/// ring or queue), or the driver (between receive and transmit). Handing a buffer to
/// [`release`](Self::release) or [`Port::transmit`] gives it away.
pub trait FrameMemory {
    /// A handle naming one buffer. Small and `Copy`: bursts move handles.
    type Buf: Copy + Default + core::fmt::Debug;

    /// Bytes in each buffer.
    fn buffer_size(&self) -> usize;

    /// Take a free buffer, if any.
    fn alloc(&mut self) -> Option<Self::Buf>;

    /// Give a buffer back (a dropped frame).
    fn release(&mut self, buf: Self::Buf);

    /// Lend the buffers `bufs` (all held by the caller, none twice) as whole-buffer
    /// slices, in order, for the duration of `f`.
    fn with_buffers<R>(&mut self, bufs: &[Self::Buf], f: impl FnOnce(&mut [&mut [u8]]) -> R) -> R;
}

/// What a port can carry beyond plain, complete Ethernet frames. Every flag is a promise
/// the port makes to the driver; a port that promises nothing gets only frames that are
/// complete as they stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may arrive, and may be sent, with a partial checksum to complete
    /// (virtio-net `NEEDS_CSUM`: checksum start and offset in metadata).
    pub partial_checksum: bool,
    /// Frames may be TCP super-packets larger than the MTU, with a segment size in
    /// metadata (virtio-net GSO). Such a port receives through
    /// [`Port::receive_offloaded`] and is sent super-packets whole through
    /// [`Port::transmit_offloaded`]; it must also promise `partial_checksum`.
    pub tcp_segmentation: bool,
    /// Super-packets routed to a remote node may be sent whole, encapsulated: through
    /// [`Port::transmit_offloaded`], the outer headers the pipeline wrote (lengths
    /// meaningless) then the inner super-packet, its metadata describing the inner one.
    /// The port has them cut past the host's stack (the kernel's UDP segmentation, a
    /// NIC's). Such a port is an uplink; it need not receive super-packets.
    pub tunnel_segmentation: bool,
    /// Frames larger than a buffer may arrive (multi-buffer AF_XDP on a jumbo uplink):
    /// the port receives through [`Port::receive_offloaded`], such frames going to the
    /// jumbo store without metadata.
    pub large_frames: bool,
    /// Frames sent through [`Port::transmit_partial`] keep their partial checksums:
    /// the medium completes them where they leave (a NIC's checksum offload, the
    /// kernel's), so the engine cuts super-packets without summing their payloads.
    pub tx_checksum: bool,
}

impl Offloads {
    /// Whether the port receives through [`Port::receive_offloaded`] (into a jumbo
    /// store).
    #[must_use]
    pub fn receives_large(&self) -> bool {
        self.tcp_segmentation || self.large_frames
    }
}

/// One port's counters on one worker. Single writer (that worker): relaxed load + store.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received.
    pub rx: AtomicU64,
    /// Frames transmitted.
    pub tx: AtomicU64,
    /// Frames the pipeline sent here that the port could not take: its TX ring (or the
    /// guest's queue) full, or no buffer to copy them into.
    pub tx_dropped: AtomicU64,
    /// Frames sent here that the port first copied into its own memory (a zero-copy
    /// NIC's UMEM and the veths' are distinct: what crosses between them is copied once).
    pub tx_copied: AtomicU64,
    /// Frames sent with a partial checksum for the medium to complete
    /// ([`Port::transmit_partial`] on a port with `tx_checksum`).
    pub tx_partial_csum: AtomicU64,
}

impl PortCounters {
    /// Current values: (rx, tx, tx_dropped).
    #[must_use]
    pub fn get(&self) -> (u64, u64, u64) {
        (self.rx.load(Relaxed), self.tx.load(Relaxed), self.tx_dropped.load(Relaxed))
    }
}

/// Add `n` to a counter that has a single writer: a relaxed load and store, no locked
/// instruction (readers may see the old or the new value, never a torn one).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }
}

/// A medium frames are received from and transmitted to.
///
/// Several entries of one worker may carry the same [`id`](Self::id) (one per queue of
/// a multi-queue interface): the driver receives from all of them and transmits on the
/// first.
pub trait Port<M: FrameMemory> {
    /// The pipeline's name for this port (what routes point at).
    fn id(&self) -> PortId;

    /// This port's counters on this worker (the driver keeps them).
    fn counters(&self) -> &PortCounters;

    /// What the port carries beyond plain frames.
    fn offloads(&self) -> Offloads {
        Offloads::default()
    }

    /// Receive up to [`BURST`] frames into `out`; returns how many. Each received
    /// buffer now belongs to the caller.
    fn receive(&mut self, mem: &mut M, out: &mut [Packet<M::Buf>; BURST]) -> usize;

    /// [`receive`](Self::receive) for a port whose [`offloads`](Self::offloads) include TCP
    /// segmentation; the driver calls this instead, with `jumbo` empty. Frames that fit
    /// a buffer of `mem` go to `out` as usual, complete (a partial checksum completed);
    /// super-packets, and frames larger than a buffer, go to `jumbo` with their
    /// metadata, each recorded after the frames of `out` that arrived before it. Returns
    /// how many frames went to `out`.
    fn receive_offloaded(&mut self, mem: &mut M, out: &mut [Packet<M::Buf>; BURST], _jumbo: &mut Jumbo) -> usize {
        self.receive(mem, out)
    }

    /// Send one super-packet (or a frame larger than a buffer) whole, with its metadata:
    /// called only on ports whose offloads include TCP segmentation, or, for an
    /// encapsulated one, tunnel segmentation. `frame` is the driver's; the port copies
    /// what it keeps. Returns whether it was sent (the driver
    /// counts a refusal in `tx_dropped`).
    fn transmit_offloaded(&mut self, _mem: &mut M, _frame: &[u8], _meta: &OffloadMeta) -> bool {
        false
    }

    /// [`transmit_offloaded`](Self::transmit_offloaded) of several whole frames, in
    /// order, on a port whose offloads include TCP segmentation (not an uplink): the
    /// super-packets and large frames of one burst routed here, so the port may merge
    /// in-order segments of a flow ([`offload::coalesce_whole`](crate::offload::coalesce_whole))
    /// and send them in one call. A jumbo uplink's 9000-byte frames then reach a pod as
    /// 64 KiB super-packets, as the kernel's GRO would hand them over. Returns the frames
    /// sent (a merged super-packet counts its segments); the driver counts the rest
    /// dropped. This default sends them one by one.
    fn transmit_offloaded_burst(&mut self, mem: &mut M, frames: &[&[u8]], metas: &[OffloadMeta]) -> usize {
        let mut sent = 0;
        for (f, m) in frames.iter().zip(metas) {
            sent += usize::from(self.transmit_offloaded(mem, f, m));
        }
        sent
    }

    /// Transmit `pkts` in order. The port takes every buffer: those it queues it gives
    /// back when the medium is done with them, the rest it releases at once. Returns
    /// how many it queued (sent); the driver counts the rest as dropped.
    fn transmit(&mut self, mem: &mut M, pkts: &[Packet<M::Buf>]) -> usize;

    /// [`transmit`](Self::transmit) for frames whose checksum at `csum` (from each
    /// frame's first byte) is partial: the driver sends such frames only to a port
    /// whose [`offloads`](Self::offloads) include `tx_checksum`. This default completes
    /// them first, so a port that promises nothing still sends only complete frames.
    fn transmit_partial(&mut self, mem: &mut M, pkts: &[Packet<M::Buf>], csum: PartialCsum) -> usize {
        complete_partial(mem, pkts, csum);
        self.transmit(mem, pkts)
    }

    /// Between polling passes: take back completed buffers, restock receive rings.
    fn service(&mut self, _mem: &mut M) {}

    /// Give every buffer the port holds back to `mem` and close it.
    fn close(self, mem: &mut M)
    where
        Self: Sized;

    /// A descriptor that becomes readable when the port has frames to receive (the
    /// worker sleeps in poll(2) on these).
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }

    /// About to sleep: ask the medium to signal new frames on [`wait_fd`](Self::wait_fd).
    /// Returns true if frames are already waiting (do not sleep).
    fn prepare_sleep(&mut self) -> bool {
        false
    }

    /// Polling again after a sleep (or a cancelled one): stop asking for signals.
    fn after_sleep(&mut self) {}

    /// Refresh statistics the medium keeps itself (about once a second).
    fn refresh_stats(&self) {}
}

/// Complete the partial checksum at `csum` of each of `pkts` (held by the caller) in
/// place. A frame too short for it is left alone (the receiver drops it as corrupt;
/// the driver never makes one).
pub fn complete_partial<M: FrameMemory>(mem: &mut M, pkts: &[Packet<M::Buf>], csum: PartialCsum) {
    let meta = OffloadMeta { csum: Some(csum), ..OffloadMeta::default() };
    for p in pkts {
        mem.with_buffers(&[p.buf], |b| {
            let _ = complete_checksum(&mut b[0][p.head as usize..(p.head + p.len) as usize], &meta);
        });
    }
}

/// Implement [`Port`] for an enum whose every variant holds one port kind over the same
/// memory, by static dispatch: one `match` per call, no virtual call, and every method
/// (defaults included) forwarded, so a capability a kind adds (its offloads, its sleep
/// protocol) cannot be lost in a hand-written delegation.
///
/// ```text
/// xlane_engine::port_enum!(NodePort<Umem> { Xdp, Vhost });
/// ```
#[macro_export]
macro_rules! port_enum {
    ($name:ident < $mem:ty > { $($variant:ident),+ $(,)? }) => {
        impl $crate::Port<$mem> for $name {
            fn id(&self) -> $crate::port::PortId {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::id(p),)+ }
            }

            fn counters(&self) -> &$crate::PortCounters {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::counters(p),)+ }
            }

            fn offloads(&self) -> $crate::Offloads {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::offloads(p),)+ }
            }

            fn receive(
                &mut self,
                mem: &mut $mem,
                out: &mut [$crate::Packet<<$mem as $crate::FrameMemory>::Buf>; $crate::BURST],
            ) -> usize {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::receive(p, mem, out),)+ }
            }

            fn transmit(
                &mut self,
                mem: &mut $mem,
                pkts: &[$crate::Packet<<$mem as $crate::FrameMemory>::Buf>],
            ) -> usize {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::transmit(p, mem, pkts),)+ }
            }

            fn transmit_partial(
                &mut self,
                mem: &mut $mem,
                pkts: &[$crate::Packet<<$mem as $crate::FrameMemory>::Buf>],
                csum: $crate::offload::PartialCsum,
            ) -> usize {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::transmit_partial(p, mem, pkts, csum),)+ }
            }

            fn receive_offloaded(
                &mut self,
                mem: &mut $mem,
                out: &mut [$crate::Packet<<$mem as $crate::FrameMemory>::Buf>; $crate::BURST],
                jumbo: &mut $crate::offload::Jumbo,
            ) -> usize {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::receive_offloaded(p, mem, out, jumbo),)+ }
            }

            fn transmit_offloaded(
                &mut self,
                mem: &mut $mem,
                frame: &[u8],
                meta: &$crate::OffloadMeta,
            ) -> bool {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::transmit_offloaded(p, mem, frame, meta),)+ }
            }

            fn transmit_offloaded_burst(
                &mut self,
                mem: &mut $mem,
                frames: &[&[u8]],
                metas: &[$crate::OffloadMeta],
            ) -> usize {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::transmit_offloaded_burst(p, mem, frames, metas),)+ }
            }

            fn service(&mut self, mem: &mut $mem) {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::service(p, mem),)+ }
            }

            fn close(self, mem: &mut $mem) {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::close(p, mem),)+ }
            }

            fn wait_fd(&self) -> Option<::std::os::fd::RawFd> {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::wait_fd(p),)+ }
            }

            fn prepare_sleep(&mut self) -> bool {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::prepare_sleep(p),)+ }
            }

            fn after_sleep(&mut self) {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::after_sleep(p),)+ }
            }

            fn refresh_stats(&self) {
                match self { $(Self::$variant(p) => $crate::Port::<$mem>::refresh_stats(p),)+ }
            }
        }
    };
}
