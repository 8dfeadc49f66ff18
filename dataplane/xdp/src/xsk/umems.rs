//! A worker's UMEMs: the shared one, where every copy-mode socket lives, and one per
//! interface whose sockets bind zero-copy (or that the operator puts apart).
//!
//! The kernel binds a UMEM in one mode, decided by its first socket: a zero-copy NIC
//! cannot share a UMEM with veth pod ports. So such a NIC's sockets get a UMEM of their
//! own, and a frame crossing between two UMEMs is copied once, in the burst, into a
//! frame of the other (what OVS does between its AF_XDP ports); frames within one UMEM
//! still move by descriptor.
//!
//! Frames are named across the set by their address in their UMEM with the UMEM's
//! index in the top byte ([`UmemId`]); the shared UMEM is index 0, so its addresses are
//! the plain ones. [`Umems`] is the engine's `FrameMemory` for a worker: allocations
//! come from the shared UMEM (every frame the engine makes goes to a copy-mode port or
//! is copied once on its way out).

use super::{Umem, XskError};
use xlane_engine::{FrameMemory, Packet};

/// Where the UMEM index sits in a frame's address.
const TAG_SHIFT: u32 = 56;
const ADDR_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// A UMEM's index in its worker's [`Umems`] (the top byte of its frames' addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UmemId(u8);

impl UmemId {
    /// The shared UMEM: copy-mode sockets (veths, the host port, a copy-mode uplink).
    pub const SHARED: Self = Self(0);

    /// The UMEM a frame address of the set belongs to.
    #[must_use]
    pub fn of(buf: u64) -> Self {
        Self(split(buf).0)
    }

    /// `addr` (an address in this UMEM) as an address of the set.
    #[must_use]
    pub fn tag(self, addr: u64) -> u64 {
        (u64::from(self.0) << TAG_SHIFT) | addr
    }

    /// A frame address of the set as an address in its UMEM.
    #[must_use]
    pub fn address(buf: u64) -> u64 {
        buf & ADDR_MASK
    }

    /// Whether this is the shared UMEM.
    #[must_use]
    pub fn is_shared(self) -> bool {
        self == Self::SHARED
    }
}

/// A frame address of the set: its UMEM's index and its address in that UMEM.
#[inline]
#[must_use]
pub(super) fn split(buf: u64) -> (u8, u64) {
    ((buf >> TAG_SHIFT) as u8, buf & ADDR_MASK)
}

/// A worker's UMEMs (see the module's documentation).
#[derive(Debug)]
pub struct Umems {
    /// Index 0 is the shared UMEM; a removed UMEM leaves its slot empty so the others'
    /// addresses keep their meaning.
    slots: Vec<Option<Umem>>,
}

impl Umems {
    /// A set of one: `shared`.
    #[must_use]
    pub fn new(shared: Umem) -> Self {
        Self { slots: vec![Some(shared)] }
    }

    /// The shared UMEM.
    #[must_use]
    pub fn shared(&self) -> &Umem {
        self.get(UmemId::SHARED)
    }

    /// UMEM `id`.
    ///
    /// # Panics
    /// If it was removed (ports hold the id of a UMEM that lives while they are open).
    #[must_use]
    pub fn get(&self, id: UmemId) -> &Umem {
        self.slots[usize::from(id.0)].as_ref().expect("a UMEM lives while its ports are open")
    }

    /// UMEM `id`, mutably.
    ///
    /// # Panics
    /// As [`get`](Self::get).
    pub fn get_mut(&mut self, id: UmemId) -> &mut Umem {
        self.slots[usize::from(id.0)].as_mut().expect("a UMEM lives while its ports are open")
    }

    /// Whether UMEM `id` is in the set.
    #[must_use]
    pub fn contains(&self, id: UmemId) -> bool {
        self.slots.get(usize::from(id.0)).is_some_and(Option::is_some)
    }

    /// Map and register a UMEM of `frames` frames asking for `tx_checksum` requests,
    /// sized as the shared one otherwise, for sockets of their own; returns its id.
    ///
    /// # Errors
    /// [`XskError`] as [`Umem::new`]; [`XskError::Settings`] when 255 UMEMs exist.
    pub fn add(&mut self, frames: u32, tx_checksum: super::TxChecksum) -> Result<UmemId, XskError> {
        let settings = super::UmemSettings { frames, tx_checksum, ..self.shared().settings() };
        let index = match self.slots.iter().skip(1).position(Option::is_none) {
            Some(i) => i + 1,
            None if self.slots.len() <= usize::from(u8::MAX) => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(XskError::Settings("at most 255 UMEMs per worker")),
        };
        self.slots[index] = Some(Umem::new(settings)?);
        Ok(UmemId(u8::try_from(index).expect("checked above")))
    }

    /// Unmap UMEM `id` once its last socket has closed (the shared one stays).
    pub fn remove_if_unused(&mut self, id: UmemId) {
        if !id.is_shared() && self.slots[usize::from(id.0)].as_ref().is_some_and(|u| u.open_ports() == 0) {
            self.slots[usize::from(id.0)] = None;
            while self.slots.len() > 1 && self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
        }
    }

    /// UMEMs in the set (the shared one included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Never: the shared UMEM is always there.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copy application-owned packet `p` (an address of the set, in another UMEM than
    /// `to`) into a free frame of `to` at the same offset, and release its frame. Returns
    /// the copy (an address of the set, application-owned), or `None` when `to` has no
    /// free frame (the original is released all the same: the frame is dropped).
    ///
    /// # Panics
    /// If `p` is already in `to`, or names a UMEM or frame the set does not lend.
    pub fn copy_into(&mut self, p: Packet<u64>, to: UmemId) -> Option<Packet<u64>> {
        let (from, addr) = split(p.buf);
        let (from, to_index) = (usize::from(from), usize::from(to.0));
        assert_ne!(from, to_index, "a frame is copied only into another UMEM");
        let (src, dst) = if from < to_index {
            let (low, high) = self.slots.split_at_mut(to_index);
            (&mut low[from], &mut high[0])
        } else {
            let (low, high) = self.slots.split_at_mut(from);
            (&mut high[0], &mut low[to_index])
        };
        let (src, dst) = (src.as_mut().expect("source UMEM"), dst.as_mut().expect("target UMEM"));
        let Some(copy) = dst.alloc() else {
            src.release(addr);
            return None;
        };
        let (head, end) = (p.head as usize, (p.head + p.len) as usize);
        let mut from_slice: [&mut [u8]; 1] = [&mut []];
        let mut to_slice: [&mut [u8]; 1] = [&mut []];
        src.lend(&[addr], 0, &mut from_slice);
        dst.lend(&[copy], 0, &mut to_slice);
        to_slice[0][head..end].copy_from_slice(&from_slice[0][head..end]);
        src.release(addr);
        Some(Packet { buf: to.tag(copy), ..p })
    }
}

impl FrameMemory for Umems {
    type Buf = u64;

    fn buffer_size(&self) -> usize {
        self.shared().frame_size() as usize
    }

    fn alloc(&mut self) -> Option<u64> {
        self.get_mut(UmemId::SHARED).alloc()
    }

    fn release(&mut self, buf: u64) {
        let (id, addr) = split(buf);
        if let Some(Some(u)) = self.slots.get_mut(usize::from(id)) {
            u.release(addr);
        }
    }

    fn with_buffers<R>(&mut self, bufs: &[u64], f: impl FnOnce(&mut [&mut [u8]]) -> R) -> R {
        assert!(bufs.len() <= 64, "bursts are at most 64 frames");
        let mut lent: [&mut [u8]; 64] = std::array::from_fn(|_| &mut [][..]);
        let mut n = 0;
        for (tag, umem) in self.slots.iter_mut().enumerate() {
            if let Some(umem) = umem {
                n += umem.lend(bufs, u8::try_from(tag).expect("at most 256 slots"), &mut lent);
            }
        }
        assert_eq!(n, bufs.len(), "every frame lent belongs to a UMEM of the set");
        f(&mut lent[..bufs.len()])
    }
}

impl UmemId {
    /// Its index in the set (0: the shared UMEM), to name it across a handover.
    #[must_use]
    pub fn index(self) -> u8 {
        self.0
    }

    /// The id of index `i`.
    #[must_use]
    pub fn from_index(i: u8) -> Self {
        Self(i)
    }
}

impl Umems {
    /// Hand every UMEM of the set over (see [`Umem::hand_over`]): by index, `None` for
    /// an empty slot.
    ///
    /// # Errors
    /// The first UMEM's failure.
    pub fn hand_over(&mut self) -> Result<Vec<Option<super::handover::UmemHandover>>, XskError> {
        self.slots.iter_mut().map(|u| u.as_mut().map(Umem::hand_over).transpose()).collect()
    }

    /// The set another process handed over, each UMEM at its index (frames keep their
    /// addresses).
    ///
    /// # Errors
    /// No shared UMEM (index 0), more than 256, or a UMEM's [`Umem::take_over`] error.
    pub fn take_over(umems: Vec<Option<super::handover::UmemHandover>>) -> Result<Self, XskError> {
        if umems.len() > 256 || !umems.first().is_some_and(Option::is_some) {
            return Err(XskError::Settings("a UMEM set needs its shared UMEM and at most 256"));
        }
        let slots = umems.into_iter().map(|u| u.map(Umem::take_over).transpose()).collect::<Result<_, _>>()?;
        Ok(Self { slots })
    }
}
