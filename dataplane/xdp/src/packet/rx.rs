//! A pod port's receive: off the socket's ring ([`super::ring`]) or, for a socket
//! without one, its queue (`recvmmsg`), into the worker's buffers and the driver's
//! jumbo store.

use super::ring::Slot;
use super::{MIN_ARMED, PacketPort, PacketStats, RX_HEADROOM};
use std::os::fd::{AsRawFd, RawFd};
use xlane_engine::offload::{self, JUMBO_MAX, Jumbo, OffloadMeta, VIRTIO_NET_HDR_LEN};
use xlane_engine::{BURST, FrameMemory, Packet, bump};

/// What became of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// A complete frame (after its partial checksum is completed) in the buffer.
    Plain(usize, OffloadMeta),
    /// A super-packet, or a frame larger than the buffer: to the jumbo store.
    Super(usize, OffloadMeta),
    /// Dropped, counted in the named counter.
    Malformed,
    Truncated,
    Oversize,
}

/// Classify a received message: `total` bytes (header included), `flags` its
/// `msg_flags`, `cap` the bytes the buffer holds, `jumbo` whether a jumbo slot was there.
fn classify(hdr: &[u8], total: usize, flags: libc::c_int, cap: usize, jumbo: bool) -> Arrival {
    if flags & libc::MSG_TRUNC != 0 {
        return if jumbo { Arrival::Truncated } else { Arrival::Oversize };
    }
    let Some(len) = total.checked_sub(VIRTIO_NET_HDR_LEN) else { return Arrival::Malformed };
    let Ok(meta) = OffloadMeta::from_virtio(hdr) else { return Arrival::Malformed };
    if meta.check(len).is_err() {
        return Arrival::Malformed;
    }
    match (len <= cap && meta.gso.is_none(), jumbo) {
        (true, _) => Arrival::Plain(len, meta),
        (false, true) => Arrival::Super(len, meta),
        (false, false) => Arrival::Oversize,
    }
}

/// Take one frame off socket `fd`'s queue and drop it; false if none waits.
fn discard_one(fd: RawFd) -> bool {
    // Room for the virtio-net header, which the kernel insists on writing (a smaller
    // buffer is EINVAL); the frame's bytes are truncated away.
    let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
    // SAFETY: `hdr` is a live local of exactly the length passed, the whole buffer the
    // kernel may write; MSG_TRUNC only makes it report and discard the rest.
    let got = unsafe { libc::recv(fd, hdr.as_mut_ptr().cast(), hdr.len(), libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
    got >= 0
}

/// The frames a receive hands the caller: `pkts[..n]`.
struct Received<'a, B> {
    pkts: &'a mut [Packet<B>; BURST],
    n: usize,
}

/// Land message `slot` of a burst, received into buffer `b` (`buf`: its bytes after
/// [`RX_HEADROOM`]) and beyond it into the jumbo store's slot `slot`, as `arrival`
/// says: a plain frame (its checksum completed) to `out`; a super-packet's first part
/// moved in front of the rest in the store and the frame recorded there; the rest
/// counted. Returns whether the buffer went to `out`.
fn land<B: Copy>(
    arrival: Arrival,
    buf: &mut [u8],
    b: B,
    slot: usize,
    jumbo: Option<&mut Jumbo>,
    stats: &PacketStats,
    out: &mut Received<'_, B>,
) -> bool {
    match arrival {
        Arrival::Plain(len, meta) => {
            if offload::complete_checksum(&mut buf[..len], &meta).is_err() {
                bump(&stats.rx_malformed, 1);
                return false;
            }
            #[expect(clippy::cast_possible_truncation, reason = "within a buffer")]
            let p = Packet { buf: b, head: RX_HEADROOM as u32, len: len as u32 };
            out.pkts[out.n] = p;
            out.n += 1;
            return true;
        }
        Arrival::Super(whole, meta) => {
            let j = jumbo.expect("classified with a jumbo store");
            let in_buf = whole.min(buf.len());
            j.data_mut(slot)[..in_buf].copy_from_slice(&buf[..in_buf]);
            j.push(slot, out.n, whole, meta);
        }
        Arrival::Malformed => bump(&stats.rx_malformed, 1),
        Arrival::Truncated => bump(&stats.rx_truncated, 1),
        Arrival::Oversize => bump(&stats.rx_oversize, 1),
    }
    false
}

impl<B: Copy> PacketPort<B> {
    /// No buffer to receive into: take up to a burst of frames off the ring or socket
    /// and count them dropped, so the socket does not stay readable (a sleeping worker
    /// would wake for it over and over) and stale frames do not fill it.
    #[cold]
    fn discard_burst(&mut self) {
        let fd = self.fd.as_raw_fd();
        let mut n = 0;
        while n < BURST {
            let gone = match self.ring.as_mut() {
                None => discard_one(fd),
                Some(r) => {
                    let Some(slot) = r.peek() else { break };
                    if slot == Slot::Queued {
                        discard_one(fd);
                    }
                    r.release();
                    true
                }
            };
            if !gone {
                break;
            }
            n += 1;
        }
        bump(&self.stats.rx_no_buffer, n as u64);
    }

    /// One burst: plain frames to `out`, the rest to `jumbo` if given.
    pub(super) fn receive_burst<M: FrameMemory<Buf = B>>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<B>; BURST],
        jumbo: Option<&mut Jumbo>,
    ) -> usize {
        while !self.rx_bufs.is_full() {
            match mem.alloc() {
                Some(b) => self.rx_bufs.push(b),
                None => break,
            }
        }
        let Some(cap) = mem.buffer_size().checked_sub(RX_HEADROOM).filter(|&c| c > 0 && c <= JUMBO_MAX) else {
            return 0;
        };
        if self.rx_bufs.is_empty() {
            self.discard_burst();
            return 0;
        }
        let (n, taken) = if self.ring.is_some() {
            self.receive_ring(mem, out, jumbo, cap)
        } else {
            self.receive_queue(mem, out, jumbo, cap)
        };
        // The buffers of plain frames now belong to the caller; keep the rest.
        if taken != 0 {
            let mut keep = 0;
            for i in 0..self.rx_bufs.len() {
                if taken & (1 << i) == 0 {
                    self.rx_bufs[keep] = self.rx_bufs[i];
                    keep += 1;
                }
            }
            self.rx_bufs.truncate(keep);
        }
        n
    }

    /// Up to a burst of frames off the receive ring. Returns the frames put in `out`
    /// and which of the kept buffers they took (bit i: `rx_bufs[i]`).
    fn receive_ring<M: FrameMemory<Buf = B>>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<B>; BURST],
        mut jumbo: Option<&mut Jumbo>,
        cap: usize,
    ) -> (usize, u64) {
        let Self { fd, ring, batch, rx_bufs, stats, .. } = self;
        let ring = ring.as_mut().expect("called with a ring");
        let fd = fd.as_raw_fd();
        let bufs: &[B] = rx_bufs;
        mem.with_buffers(bufs, |slices| {
            // Buffers are taken in order: `slices[out.n]` is the next free one.
            let mut out = Received { pkts: out, n: 0 };
            for k in 0..BURST {
                let n = out.n;
                if n == slices.len() {
                    break;
                }
                let Some(slot) = ring.peek() else { break };
                let buf = &mut slices[n][RX_HEADROOM..];
                match slot {
                    Slot::Whole { vnet, frame } => {
                        let total = VIRTIO_NET_HDR_LEN + frame.len();
                        match classify(vnet, total, 0, cap, jumbo.is_some()) {
                            Arrival::Plain(len, meta) => {
                                buf[..len].copy_from_slice(frame);
                                land(Arrival::Plain(len, meta), buf, bufs[n], k, None, stats, &mut out);
                            }
                            Arrival::Super(len, meta) => {
                                // Whole in the slot: straight to the store.
                                let j = jumbo.as_deref_mut().expect("classified with a jumbo store");
                                j.data_mut(k)[..len].copy_from_slice(frame);
                                j.push(k, n, len, meta);
                            }
                            other => {
                                land(other, buf, bufs[n], k, None, stats, &mut out);
                            }
                        }
                    }
                    Slot::Queued => {
                        batch.clear();
                        batch.push_rx(buf, jumbo.as_deref_mut().map(|j| &mut j.data_mut(k)[cap..]));
                        // SAFETY: the message points at a buffer lent for this closure
                        // and at a slot of `jumbo`, borrowed mutably by this function;
                        // neither is touched until the call returns.
                        let arrival = match unsafe { batch.recv(fd) } {
                            Ok(1) => {
                                let (total, flags) = batch.received(0);
                                classify(&batch.hdrs[0], total, flags, cap, jumbo.is_some())
                            }
                            // The kernel marks the slot only once the copy is queued.
                            _ => Arrival::Truncated,
                        };
                        let buf = &mut slices[n][RX_HEADROOM..];
                        land(arrival, buf, bufs[n], k, jumbo.as_deref_mut(), stats, &mut out);
                    }
                    Slot::Truncated => bump(&stats.rx_truncated, 1),
                    Slot::Malformed => bump(&stats.rx_malformed, 1),
                }
                ring.release();
            }
            // The first `n` buffers went to `out`.
            let n = out.n;
            (n, u64::MAX.checked_shr(u32::try_from(BURST - n).expect("at most BURST")).unwrap_or(0))
        })
    }

    /// One `recvmmsg` burst off the socket's queue (no ring). Returns as
    /// [`receive_ring`](Self::receive_ring) does.
    fn receive_queue<M: FrameMemory<Buf = B>>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<B>; BURST],
        mut jumbo: Option<&mut Jumbo>,
        cap: usize,
    ) -> (usize, u64) {
        let Self { fd, batch, rx_bufs, stats, rx_armed, .. } = self;
        let armed = (*rx_armed).min(rx_bufs.len());
        let (fd, bufs): (RawFd, &[B]) = (fd.as_raw_fd(), &rx_bufs[..armed]);
        let mut taken = 0u64;
        let n = mem.with_buffers(bufs, |slices| {
            batch.clear();
            match jumbo.as_deref_mut() {
                Some(j) => {
                    for (s, area) in slices.iter_mut().zip(j.data_areas()) {
                        batch.push_rx(&mut s[RX_HEADROOM..], Some(&mut area[cap..]));
                    }
                }
                None => {
                    for s in slices.iter_mut() {
                        batch.push_rx(&mut s[RX_HEADROOM..], None);
                    }
                }
            }
            // SAFETY: every message points at a buffer lent for this closure or at a slot
            // of `jumbo`, borrowed mutably by this function; neither is touched until the
            // call returns.
            let Ok(got) = (unsafe { batch.recv(fd) }) else {
                *rx_armed = (*rx_armed / 2).max(MIN_ARMED);
                return 0;
            };
            *rx_armed = if got >= armed {
                (armed * 2).min(BURST)
            } else if got * 4 < armed {
                (*rx_armed / 2).max(MIN_ARMED)
            } else {
                *rx_armed
            };
            let mut out = Received { pkts: out, n: 0 };
            for (i, s) in slices.iter_mut().enumerate().take(got) {
                let (total, flags) = batch.received(i);
                let arrival = classify(&batch.hdrs[i], total, flags, cap, jumbo.is_some());
                if land(arrival, &mut s[RX_HEADROOM..], bufs[i], i, jumbo.as_deref_mut(), stats, &mut out) {
                    taken |= 1 << i;
                }
            }
            out.n
        });
        (n, taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSO: [u8; 10] = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];

    #[test]
    fn messages_are_classified() {
        let plain = [0u8; 10];
        assert_eq!(classify(&plain, 10 + 60, 0, 1792, true), Arrival::Plain(60, OffloadMeta::default()));
        assert_eq!(classify(&plain, 10 + 1792, 0, 1792, true), Arrival::Plain(1792, OffloadMeta::default()));
        assert!(matches!(classify(&plain, 10 + 1793, 0, 1792, true), Arrival::Super(1793, _)));
        assert_eq!(classify(&plain, 10 + 1793, 0, 1792, false), Arrival::Oversize);
        let tso = OffloadMeta::from_virtio(&TSO).unwrap();
        assert_eq!(classify(&TSO, 10 + 600, 0, 1792, true), Arrival::Super(600, tso), "GSO always to the store");
        assert_eq!(classify(&TSO, 10 + 65_000, 0, 1792, true), Arrival::Super(65_000, tso));
        assert_eq!(classify(&TSO, 10 + 65_000, 0, 1792, false), Arrival::Oversize);
        assert_eq!(classify(&TSO, 10 + 65_000, libc::MSG_TRUNC, 1792, true), Arrival::Truncated);
        assert_eq!(classify(&TSO, 10 + 40, 0, 1792, true), Arrival::Malformed, "checksum beyond the frame");
        assert_eq!(classify(&TSO, 9, 0, 1792, true), Arrival::Malformed, "shorter than the header");
        let mut bad = TSO;
        bad[0] = 0x08;
        assert_eq!(classify(&bad, 10 + 600, 0, 1792, true), Arrival::Malformed, "unknown flag");
        bad = TSO;
        bad[4..6].fill(0);
        assert_eq!(classify(&bad, 10 + 600, 0, 1792, true), Arrival::Malformed, "GSO size 0");
    }
}
