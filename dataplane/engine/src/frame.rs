//! A frame in a buffer with headroom: the unit the pipeline works on.
//!
//! The buffer is the whole frame slot (a UMEM chunk, or an in-memory port's buffer);
//! `head..head + len` is the packet. Encapsulation moves `head` back into the headroom,
//! decapsulation moves it forward: no byte of the payload is copied.

/// A packet view over a caller-owned buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    head: usize,
    len: usize,
}

impl<'a> Frame<'a> {
    /// A frame of `len` bytes at offset `head` of `buf`; `None` if it does not fit.
    #[must_use]
    pub fn new(buf: &'a mut [u8], head: usize, len: usize) -> Option<Self> {
        (head.checked_add(len)? <= buf.len()).then_some(Self { buf, head, len })
    }

    /// The packet bytes.
    #[inline]
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }

    /// The packet bytes, mutably.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
    }

    /// Offset of the packet in the buffer (its headroom).
    #[inline]
    #[must_use]
    pub fn head(&self) -> usize {
        self.head
    }

    /// Packet length.
    #[inline]
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the packet is empty.
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grow the packet by `n` bytes at the front; `false` (and no change) without room.
    #[inline]
    pub fn push_head(&mut self, n: usize) -> bool {
        if n > self.head {
            return false;
        }
        self.head -= n;
        self.len += n;
        true
    }

    /// Remove `n` bytes from the front; `false` (and no change) if shorter.
    #[inline]
    pub fn pull_head(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Shorten the packet to `len` bytes (drops trailing padding); longer is a no-op.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_moves() {
        let mut buf = [0u8; 32];
        buf[8..12].copy_from_slice(b"abcd");
        let mut f = Frame::new(&mut buf, 8, 4).unwrap();
        assert_eq!(f.data(), b"abcd");
        assert!(!f.push_head(9));
        assert!(f.push_head(8));
        assert_eq!((f.head(), f.len()), (0, 12));
        assert!(f.pull_head(10));
        assert_eq!(f.data(), b"cd");
        assert!(!f.pull_head(3));
        f.truncate(1);
        assert_eq!(f.data(), b"c");
        assert!(Frame::new(&mut [0u8; 4], 2, 3).is_none());
        assert!(Frame::new(&mut [0u8; 4], usize::MAX, 3).is_none());
    }
}
