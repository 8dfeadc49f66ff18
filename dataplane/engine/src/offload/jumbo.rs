//! Buffers for super-packets: frames larger than a buffer of the worker's
//! [`FrameMemory`](crate::FrameMemory) (a UMEM chunk is 2 KiB), received by a port that
//! keeps the kernel's offloads.
//!
//! A [`Driver`](crate::Driver) with such a port owns one [`Jumbo`]: [`BURST`] slots of
//! [`JUMBO_HEADROOM`] + [`JUMBO_MAX`] bytes, allocated once (the allocator maps zero pages,
//! so a slot costs memory only once a super-packet has used it). The port receives into
//! the slots' data areas, records each super-packet with [`Jumbo::push`] — which slot,
//! its length and metadata, and how many ordinary frames of the burst came before it —
//! and the driver routes each once, then delivers it whole, segments it, or drops it,
//! in the order the burst arrived. The driver empties the store before every receive.

use super::OffloadMeta;
use crate::pipeline::BURST;
use arrayvec::ArrayVec;
use xlane_wire::VXLAN_OVERHEAD;

/// Room in front of a super-packet for the outer headers the pipeline pushes.
pub const JUMBO_HEADROOM: usize = 128;
/// The largest frame: an Ethernet header and the largest IPv4 packet.
pub const JUMBO_MAX: usize = 14 + 65_535;
/// A slot: headroom and data area, rounded up to a cache line.
const SLOT: usize = (JUMBO_HEADROOM + JUMBO_MAX).next_multiple_of(64);

const _: () = assert!(JUMBO_HEADROOM >= VXLAN_OVERHEAD);

/// One super-packet in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JumboFrame {
    /// Its slot.
    pub slot: u8,
    /// Ordinary frames of the burst (in the receive array) that arrived before it.
    pub before: u8,
    /// Frame length (from the slot's data area's first byte).
    pub len: u32,
    /// Its offload metadata.
    pub meta: OffloadMeta,
}

/// The super-packets of one received burst, in arrival order.
pub struct Jumbo {
    bytes: Box<[u8]>,
    frames: ArrayVec<JumboFrame, BURST>,
    /// Bit i: slot i holds a recorded frame.
    used: u64,
}

impl core::fmt::Debug for Jumbo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Jumbo").field("frames", &self.frames).finish_non_exhaustive()
    }
}

impl Default for Jumbo {
    fn default() -> Self {
        Self::new()
    }
}

impl Jumbo {
    /// An empty store of [`BURST`] slots.
    #[must_use]
    pub fn new() -> Self {
        Self { bytes: vec![0u8; SLOT * BURST].into_boxed_slice(), frames: ArrayVec::new(), used: 0 }
    }

    /// Forget every recorded frame (the driver does, before each receive).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.used = 0;
    }

    /// Recorded frames.
    #[must_use]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// No frame recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The recorded frames, in arrival order.
    #[must_use]
    pub fn frames(&self) -> &[JumboFrame] {
        &self.frames
    }

    /// Every slot's data area ([`JUMBO_MAX`] bytes after the headroom), slot 0 first: what
    /// a port receives into (one slot per message of a batch).
    pub fn data_areas(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.bytes.chunks_exact_mut(SLOT).map(|s| &mut s[JUMBO_HEADROOM..JUMBO_HEADROOM + JUMBO_MAX])
    }

    /// Slot `slot`'s data area.
    ///
    /// # Panics
    /// If `slot >= BURST`.
    pub fn data_mut(&mut self, slot: usize) -> &mut [u8] {
        &mut self.bytes[slot * SLOT + JUMBO_HEADROOM..][..JUMBO_MAX]
    }

    /// Slot `slot`'s data area, to read (what a port wrote there before recording it).
    ///
    /// # Panics
    /// If `slot >= BURST`.
    #[must_use]
    pub fn data(&self, slot: usize) -> &[u8] {
        &self.bytes[slot * SLOT + JUMBO_HEADROOM..][..JUMBO_MAX]
    }

    /// Record that slot `slot` holds a frame of `len` bytes with `meta`, which arrived
    /// after `before` ordinary frames of the burst. Frames are recorded in arrival order.
    ///
    /// # Panics
    /// If the slot is out of range or already recorded, `len` exceeds [`JUMBO_MAX`], or
    /// `before` is smaller than the previous frame's (the port's bug, not the peer's).
    pub fn push(&mut self, slot: usize, before: usize, len: usize, meta: OffloadMeta) {
        assert!(slot < BURST && self.used & (1 << slot) == 0, "slot {slot} out of range or used twice");
        assert!(len <= JUMBO_MAX, "frame of {len} bytes in a jumbo slot");
        assert!(before <= BURST && self.frames.last().is_none_or(|f| usize::from(f.before) <= before));
        self.used |= 1 << slot;
        #[expect(clippy::cast_possible_truncation, reason = "checked: below BURST = 64 and JUMBO_MAX")]
        self.frames.push(JumboFrame { slot: slot as u8, before: before as u8, len: len as u32, meta });
    }

    /// [`frame_mut`](Self::frame_mut), to read.
    ///
    /// # Panics
    /// If `i >= len()`.
    #[must_use]
    pub fn frame(&self, i: usize) -> (&[u8], JumboFrame) {
        let f = self.frames[i];
        (&self.bytes[usize::from(f.slot) * SLOT..][..SLOT], f)
    }

    /// The whole slot of recorded frame `i` (headroom, then the frame at
    /// [`JUMBO_HEADROOM`]) and the frame's record.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn frame_mut(&mut self, i: usize) -> (&mut [u8], JumboFrame) {
        let f = self.frames[i];
        (&mut self.bytes[usize::from(f.slot) * SLOT..][..SLOT], f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_a_largest_frame_behind_headroom() {
        let mut j = Jumbo::new();
        assert_eq!(j.data_areas().count(), BURST);
        assert!(j.data_areas().all(|a| a.len() == JUMBO_MAX));
        j.data_mut(3)[..4].copy_from_slice(b"abcd");
        j.push(3, 0, 4, OffloadMeta::default());
        j.push(1, 2, JUMBO_MAX, OffloadMeta::default());
        assert_eq!(j.len(), 2);
        let (slot, f) = j.frame_mut(0);
        assert_eq!((f.slot, f.before, f.len), (3, 0, 4));
        assert_eq!(&slot[JUMBO_HEADROOM..JUMBO_HEADROOM + 4], b"abcd");
        assert!(slot.len() >= JUMBO_HEADROOM + JUMBO_MAX);
        j.clear();
        assert!(j.is_empty());
        j.push(3, 0, 1, OffloadMeta::default());
    }

    #[test]
    #[should_panic(expected = "used twice")]
    fn a_slot_is_recorded_once() {
        let mut j = Jumbo::new();
        j.push(0, 0, 1, OffloadMeta::default());
        j.push(0, 1, 1, OffloadMeta::default());
    }
}
