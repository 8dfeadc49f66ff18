//! Multi-buffer receive: a packet larger than a UMEM frame, which the kernel splits over
//! several RX descriptors on a socket bound with `XDP_USE_SG` (jumbo uplinks).

use super::ring::Desc;
use super::{Umem, XskPort};
use xlane_engine::offload::{JUMBO_MAX, Jumbo, OffloadMeta};
use xlane_engine::{BURST, Packet};

/// In a descriptor's `options`: the packet continues in the next descriptor.
const XDP_PKT_CONTD: u32 = 1;

impl Umem {
    /// [`receive`](Self::receive) on a socket bound with `XDP_USE_SG`: a packet the
    /// kernel split over several descriptors (each but the last marked
    /// `XDP_PKT_CONTD`) is copied into the next slot of `large`, recorded after the
    /// frames of `out` that arrived before it, and its frames go back to the free list;
    /// packets of one descriptor go to `out` as usual. Returns the frames in `out`.
    pub fn receive_large(&mut self, port: &mut XskPort, out: &mut [Packet<u64>], large: &mut Jumbo) -> usize {
        let mut n = 0;
        // The packet being assembled: its length so far, and whether it is kept.
        let mut chain: Option<(usize, bool)> = None;
        loop {
            // Never read more single-descriptor packets than `out` can hold.
            let room = u32::try_from(out.len() - n).unwrap_or(u32::MAX);
            if room == 0 && chain.is_none() {
                break;
            }
            let read = port.rings.rx.ready(room.max(1));
            for k in 0..read {
                let Desc { addr, len, options } = port.rings.rx.read(k);
                let contd = options & XDP_PKT_CONTD != 0;
                let Some(p) = self.take_received(&mut port.in_fill, addr, len) else {
                    // A piece lost: the packet it belongs to is not kept.
                    chain = chain.map(|(l, _)| (l, false));
                    continue;
                };
                if chain.is_none() && !contd {
                    out[n] = p;
                    n += 1;
                } else {
                    let (at, keep) = chain.unwrap_or((0, large.len() < BURST));
                    let end = at + len as usize;
                    let keep = keep && end <= JUMBO_MAX;
                    if keep {
                        let slot = large.len();
                        // Descriptor addresses are offsets into the area.
                        let from = usize::try_from(addr).expect("inside the area");
                        // SAFETY: the descriptor lies inside its frame (`take_received`
                        // checked), which the kernel just handed back to the application,
                        // so nothing else reads or writes it until it is released below.
                        let bytes =
                            unsafe { std::slice::from_raw_parts(self.area.ptr().as_ptr().add(from), len as usize) };
                        large.data_mut(slot)[at..end].copy_from_slice(bytes);
                    }
                    self.release(p.buf);
                    chain = if contd {
                        Some((end, keep))
                    } else {
                        if keep {
                            large.push(large.len(), n, end, OffloadMeta::default());
                        } else {
                            self.large_dropped += 1;
                        }
                        None
                    };
                }
            }
            port.rings.rx.release(read);
            // The kernel publishes whole packets: a chain open here ends in the ring.
            if chain.is_none() || read == 0 {
                break;
            }
        }
        if chain.is_some() {
            self.large_dropped += 1;
        }
        n
    }
}
