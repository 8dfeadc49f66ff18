//! The receive ring of a pod port's AF_PACKET socket (`PACKET_RX_RING`, `TPACKET_V2`):
//! the kernel copies each frame into a slot of a mapping shared with the worker, in the
//! sender's softirq, and flips the slot's status word; the worker reads the slot, copies
//! the frame into its own memory and hands the slot back. No syscall, socket-queue lock
//! or skb per frame on the worker — what `recvmmsg` cost it at 64 bytes (perf: the
//! queue's lock, copy and free were most of the worker's kernel time).
//!
//! * `TPACKET_V2`, not V3: V3 hands over whole blocks, when full or when a timer of at
//!   least a millisecond retires them, which would put a millisecond into every
//!   request/response a quiet pod makes. V2 hands over every frame at once.
//! * Slots are [`FRAME_SIZE`] bytes, so an MTU-sized frame fits with its virtio-net
//!   header, which the kernel writes right before the frame (`PACKET_VNET_HDR`). A
//!   larger one (a TSO super-packet, a jumbo frame) does not: `PACKET_COPY_THRESH` makes
//!   the kernel queue the whole skb on the socket as well and mark the slot
//!   `TP_STATUS_COPY`, and the port reads it with `recvmsg` — in ring order, since the
//!   kernel queues it under the same lock that advances the ring.
//! * A socket handed over by another process (hitless restart, fd store) keeps its ring;
//!   the successor maps it again ([`RxRing::inherit`]) and finds where its predecessor
//!   stopped from the slots' status words and timestamps.

use crate::sys::{SharedMapping, setsockopt, setsockopt_int};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use xlane_engine::offload::VIRTIO_NET_HDR_LEN;

/// Bytes per slot: a 1500-byte MTU frame with the slot's header and virtio-net header
/// fits (the kernel puts the frame at offset 76 of it).
pub(super) const FRAME_SIZE: u32 = 2048;
/// Bytes per block of the ring (a block is contiguous kernel memory; frames never
/// straddle one).
const BLOCK_SIZE: u32 = 64 << 10;

/// Slots per ring, a multiple of a block's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slots(u32);

impl Slots {
    /// A pod socket's: 2 MiB of pinned kernel memory per socket, one per worker and pod.
    /// 1024 frames absorb a worker descheduled for ~2.5 ms at 400 kpps; DPDK's AF_PACKET
    /// driver defaults to 512. (4096 changed nothing on the lab.)
    pub(super) const POD: Self = Self::new(1024);
    /// An uplink tap's ([`super::UplinkTap`]): 16 MiB per worker, for a node's whole
    /// VXLAN traffic, with 8192 frames absorbing ~20 ms of a descheduled worker at
    /// 400 kpps. On the lab's 64-byte flood 1024 overflowed (290 k of 2 M frames lost
    /// at the tap) where a UDP socket's 16 MiB buffer had not; 8192 lost 13 k.
    pub(super) const UPLINK: Self = Self::new(8192);

    const fn new(frames: u32) -> Self {
        assert!(frames > 0 && frames.is_multiple_of(BLOCK_SIZE / FRAME_SIZE));
        Self(frames)
    }

    fn bytes(self) -> usize {
        FRAME_SIZE as usize * self.0 as usize
    }
}

const _: () = assert!(BLOCK_SIZE.is_multiple_of(FRAME_SIZE));

/// What a slot holds, seen by the worker.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Slot<'a> {
    /// The whole frame and its virtio-net header.
    Whole { vnet: &'a [u8], frame: &'a [u8] },
    /// The frame did not fit; the whole of it waits on the socket's queue.
    Queued,
    /// The frame did not fit and the kernel kept no copy (the socket's receive buffer
    /// was full): lost.
    Truncated,
    /// Offsets in the slot's header that point outside it (never written so by the
    /// kernel; a process sharing the mapping scribbled on it).
    Malformed,
}

/// Set up a receive ring on packet socket `fd`, which must have its virtio-net header
/// option set and must not be bound yet (frames queued before the ring existed would be
/// taken for the copies of slots marked `TP_STATUS_COPY`).
///
/// # Errors
/// The failing option's name and the kernel's error.
pub(super) fn configure(fd: BorrowedFd<'_>, slots: Slots) -> Result<(), (&'static str, io::Error)> {
    let s = fd.as_raw_fd();
    let v2 = libc::c_int::try_from(libc::tpacket_versions::TPACKET_V2 as u32).expect("1");
    setsockopt_int(s, libc::SOL_PACKET, libc::PACKET_VERSION, v2).map_err(|e| ("PACKET_VERSION", e))?;
    setsockopt_int(s, libc::SOL_PACKET, libc::PACKET_COPY_THRESH, 1).map_err(|e| ("PACKET_COPY_THRESH", e))?;
    let req = libc::tpacket_req {
        tp_block_size: BLOCK_SIZE,
        tp_block_nr: slots.0 / (BLOCK_SIZE / FRAME_SIZE),
        tp_frame_size: FRAME_SIZE,
        tp_frame_nr: slots.0,
    };
    setsockopt(s, libc::SOL_PACKET, libc::PACKET_RX_RING, &req).map_err(|e| ("PACKET_RX_RING", e))
}

/// A socket's receive ring, mapped; the worker's read position in it.
pub(super) struct RxRing {
    map: SharedMapping,
    /// The slot to read next.
    next: u32,
    /// Slots in the ring.
    frames: u32,
}

// SAFETY: the ring owns its mapping and points nowhere else; it moves to another thread
// with the mapping. The slots shared with the kernel are synchronised by their status
// words (acquire on read, release on hand-back); one thread uses a ring at a time.
unsafe impl Send for RxRing {}

impl core::fmt::Debug for RxRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RxRing").field("next", &self.next).finish_non_exhaustive()
    }
}

impl RxRing {
    /// Map the ring [`configure`] set up on `fd`.
    ///
    /// # Errors
    /// The kernel's error.
    pub(super) fn map(fd: BorrowedFd<'_>, slots: Slots) -> io::Result<Self> {
        Ok(Self { map: SharedMapping::map(fd, slots.bytes(), 0)?, next: 0, frames: slots.0 })
    }

    /// The ring of a socket another process set up and read: `None` if it has none (a
    /// process from before rings, which read the socket's queue), else the ring read
    /// from where the other process stopped ([`read_position`](Self::read_position)).
    ///
    /// # Errors
    /// The socket's version could not be read, or its ring is not the shape this build
    /// makes (EINVAL from the mapping).
    pub(super) fn inherit(fd: BorrowedFd<'_>, slots: Slots) -> io::Result<Option<Self>> {
        let version: libc::c_int = crate::sys::getsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_VERSION)?;
        if version != libc::tpacket_versions::TPACKET_V2 as libc::c_int {
            return Ok(None);
        }
        let mut ring = Self::map(fd, slots)?;
        ring.next = ring.read_position();
        Ok(Some(ring))
    }

    fn status(&self, slot: u32) -> &AtomicU32 {
        // SAFETY: the slot starts on a page-aligned block plus a multiple of FRAME_SIZE,
        // so its first word (`tp_status`) is an aligned u32 inside the mapping, shared
        // with the kernel, which accesses it only with single-word loads and stores.
        unsafe { &*self.slot_ptr(slot).cast::<AtomicU32>() }
    }

    fn is_user(&self, slot: u32) -> bool {
        self.status(slot).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Where to read an inherited ring from. The kernel fills slots in order and stops
    /// at one not handed back, so the slots it handed over and nobody read are one run
    /// starting where the previous reader stopped: its first slot. With no such slot the
    /// previous reader had caught up with the kernel, whose next slot follows the one
    /// written last (a slot keeps its header, timestamp included, after it is handed
    /// back). A frame landing during the scan may be missed by it; it is then read one
    /// lap late, once.
    fn read_position(&self) -> u32 {
        let user: Vec<bool> = (0..self.frames).map(|i| self.is_user(i)).collect();
        if user.iter().all(|&u| u) {
            // A full ring: every slot waits, reading from any loses nothing.
            return 0;
        }
        if let Some(i) =
            (0..self.frames).find(|&i| user[i as usize] && !user[((i + self.frames - 1) % self.frames) as usize])
        {
            return i;
        }
        let newest = (0..self.frames).max_by_key(|&i| self.timestamp(i));
        newest.filter(|&i| self.timestamp(i) != (0, 0)).map_or(0, |i| (i + 1) % self.frames)
    }

    /// Slot `slot`'s `tp_sec`, `tp_nsec`.
    fn timestamp(&self, slot: u32) -> (u32, u32) {
        let at = self.slot_ptr(slot);
        // SAFETY: the slot's header words lie inside the mapping; they are read as plain
        // integers once (a slot the kernel writes meanwhile gives a torn value, which at
        // worst misplaces the start by that one slot, as the doc above says).
        unsafe { (at.add(16).cast::<u32>().read_volatile(), at.add(20).cast::<u32>().read_volatile()) }
    }

    fn slot_ptr(&self, slot: u32) -> *const u8 {
        debug_assert!(slot < self.frames);
        // SAFETY: slot `slot` < frames starts inside the mapping of `frames` slots.
        unsafe { self.map.base().as_ptr().add(slot as usize * FRAME_SIZE as usize) }
    }

    /// The next slot the kernel handed over, if any; [`release`](Self::release) gives
    /// it back.
    pub(super) fn peek(&mut self) -> Option<Slot<'_>> {
        let status = self.status(self.next).load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        if status & libc::TP_STATUS_COPY != 0 {
            return Some(Slot::Queued);
        }
        // SAFETY: the slot lies inside the mapping and the kernel handed it to us (its
        // status, read with acquire, says so): it writes none of it until `release`.
        // `&mut self` keeps a second view of it from being made meanwhile.
        let slot = unsafe { std::slice::from_raw_parts(self.slot_ptr(self.next), FRAME_SIZE as usize) };
        let word = |at: usize| u32::from_ne_bytes(slot[at..at + 4].try_into().expect("4 bytes"));
        let half = |at: usize| u16::from_ne_bytes(slot[at..at + 2].try_into().expect("2 bytes"));
        // struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac (u16) ...
        let (len, snap, mac) = (word(4) as usize, word(8) as usize, usize::from(half(12)));
        let hdr_end = size_of::<libc::tpacket2_hdr>();
        if mac < hdr_end + VIRTIO_NET_HDR_LEN || mac + snap > slot.len() {
            return Some(Slot::Malformed);
        }
        if snap < len {
            return Some(Slot::Truncated);
        }
        Some(Slot::Whole { vnet: &slot[mac - VIRTIO_NET_HDR_LEN..mac], frame: &slot[mac..mac + snap] })
    }

    /// Give the slot [`peek`](Self::peek) showed back to the kernel and move on.
    pub(super) fn release(&mut self) {
        self.status(self.next).store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.next = (self.next + 1) % self.frames;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAMES: u32 = Slots::POD.0;
    use std::os::fd::{AsFd, OwnedFd};

    /// A ring's memory played by a memfd: the test writes slots as the kernel would
    /// through a second mapping.
    struct FakeKernel {
        _fd: OwnedFd,
        map: SharedMapping,
        ring: RxRing,
    }

    impl FakeKernel {
        fn new() -> Self {
            let fd = crate::sys::memfd(c"rx-ring", Slots::POD.bytes()).unwrap();
            let map = SharedMapping::map(fd.as_fd(), Slots::POD.bytes(), 0).unwrap();
            let ring = RxRing::map(fd.as_fd(), Slots::POD).unwrap();
            Self { _fd: fd, map, ring }
        }

        fn slot(&mut self, i: u32) -> &mut [u8] {
            // SAFETY: slot i of the test's own mapping; the ring under test reads it only
            // through `peek`, never while this borrow lives.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.map.base().as_ptr().add(i as usize * FRAME_SIZE as usize),
                    FRAME_SIZE as usize,
                )
            }
        }

        /// Write slot `i` as `tpacket_rcv` does: header, virtio-net header, frame;
        /// `len` is the frame's length before any truncation.
        fn fill(&mut self, i: u32, status: u32, frame: &[u8], len: u32, sec: u32) {
            let mac = 76usize;
            let s = self.slot(i);
            s[4..8].copy_from_slice(&len.to_ne_bytes());
            s[8..12].copy_from_slice(&u32::try_from(frame.len()).unwrap().to_ne_bytes());
            s[12..14].copy_from_slice(&u16::try_from(mac).unwrap().to_ne_bytes());
            s[16..20].copy_from_slice(&sec.to_ne_bytes());
            s[mac - VIRTIO_NET_HDR_LEN..mac].copy_from_slice(&[1, 0, 0, 0, 0, 0, 34, 0, 16, 0]);
            s[mac..mac + frame.len()].copy_from_slice(frame);
            s[..4].copy_from_slice(&status.to_ne_bytes());
        }

        fn status(&mut self, i: u32) -> u32 {
            u32::from_ne_bytes(self.slot(i)[..4].try_into().unwrap())
        }
    }

    const USER: u32 = libc::TP_STATUS_USER;

    #[test]
    fn slots_are_read_in_order_and_handed_back() {
        let mut k = FakeKernel::new();
        assert_eq!(k.ring.peek(), None, "nothing handed over");
        k.fill(0, USER, &[0xaa; 60], 60, 1);
        k.fill(1, USER | libc::TP_STATUS_COPY, &[0xbb; 1972], 64_000, 1);
        k.fill(2, USER, &[0xcc; 1972], 3000, 1);
        k.fill(3, USER, &[0xdd; 60], 60, 1);
        k.slot(3)[12..14].copy_from_slice(&2000u16.to_ne_bytes());
        match k.ring.peek() {
            Some(Slot::Whole { vnet, frame }) => {
                assert_eq!((vnet, frame), (&[1, 0, 0, 0, 0, 0, 34, 0, 16, 0][..], &[0xaa; 60][..]));
            }
            other => panic!("slot 0: {other:?}"),
        }
        assert_eq!(k.ring.peek().map(|s| matches!(s, Slot::Whole { .. })), Some(true), "peek does not move on");
        k.ring.release();
        assert_eq!(k.status(0), libc::TP_STATUS_KERNEL, "handed back");
        assert_eq!(k.ring.peek(), Some(Slot::Queued), "too large: the whole frame is on the queue");
        k.ring.release();
        assert_eq!(k.ring.peek(), Some(Slot::Truncated), "cut to the slot, no copy kept");
        k.ring.release();
        assert_eq!(k.ring.peek(), Some(Slot::Malformed), "a frame offset beyond the slot");
        k.ring.release();
        assert_eq!(k.ring.peek(), None);
    }

    #[test]
    fn the_ring_wraps() {
        let mut k = FakeKernel::new();
        for i in 0..FRAMES + 3 {
            let slot = i % FRAMES;
            k.fill(slot, USER, &[u8::try_from(i % 251).unwrap(); 60], 60, i + 1);
            match k.ring.peek() {
                Some(Slot::Whole { frame, .. }) => assert_eq!(frame[0], u8::try_from(i % 251).unwrap()),
                other => panic!("frame {i}: {other:?}"),
            }
            k.ring.release();
        }
        assert_eq!(k.ring.next, 3);
    }

    /// An inherited ring is read from where the last reader stopped.
    fn position(k: &FakeKernel) -> u32 {
        k.ring.read_position()
    }

    #[test]
    fn an_inherited_ring_is_read_from_the_oldest_waiting_slot() {
        let mut k = FakeKernel::new();
        assert_eq!(position(&k), 0, "a ring never written: from its start");
        // Read up to slot 9 (handed back, timestamps 1..=10); 10..=14 wait.
        for i in 0..10 {
            k.fill(i, libc::TP_STATUS_KERNEL, &[0; 60], 60, i + 1);
        }
        assert_eq!(position(&k), 10, "caught up: after the slot written last");
        for i in 10..15 {
            k.fill(i, USER, &[0; 60], 60, i + 1);
        }
        assert_eq!(position(&k), 10, "the first waiting slot");
        // A waiting run across the ring's end: 1020..=1023, 0..=3.
        let mut k = FakeKernel::new();
        for i in 0..FRAMES {
            let waiting = !(4..1020).contains(&i);
            let time = if i < 4 { FRAMES + i } else { i };
            k.fill(i, if waiting { USER } else { libc::TP_STATUS_KERNEL }, &[0; 60], 60, time);
        }
        assert_eq!(position(&k), 1020, "the run's start, not slot 0");
        // Caught up across the end: the newest slot is 5, read on from 6.
        let mut k = FakeKernel::new();
        for i in 0..FRAMES {
            let time = if i <= 5 { FRAMES + i } else { i };
            k.fill(i, libc::TP_STATUS_KERNEL, &[0; 60], 60, time);
        }
        assert_eq!(position(&k), 6);
        // Every slot waiting: any start loses nothing.
        let mut k = FakeKernel::new();
        for i in 0..FRAMES {
            k.fill(i, USER, &[0; 60], 60, i + 1);
        }
        assert!(position(&k) < FRAMES);
    }
}
