//! A [`UdpReceiver`] reading a packet tap ([`UplinkTap`](crate::packet::UplinkTap)):
//! frames off its ring staged as a socket's messages are, or, on a jumbo underlay, read
//! scattered into the jumbo store's slots.

use super::outer::{frame_packet, record_in_place, write_datagram};
use super::{FRAME_HEAD, MESSAGES, Message, OUTER, STAGE, Source, TRAIN_BATCH, UdpReceiver};
use crate::packet::{Scattered, TapDrop};
use arrayvec::ArrayVec;
use xlane_engine::offload::Jumbo;
use xlane_engine::port::bump;
use xlane_engine::{BURST, FrameMemory, Packet};

impl UdpReceiver {
    /// [`receive_scattered`](Self::receive_scattered) off the tap: frames while a burst
    /// has room, each one too large for a ring slot read with its payload across the
    /// next free slots of `jumbo` (empty; as many as the largest message needs at the
    /// uplink's datagram size), each datagram recorded where it lies if whole in its
    /// slot; a lone datagram small enough for a frame copied into one at once; a
    /// message of another segment size staged for the next calls.
    pub(super) fn receive_tap_scattered<M: FrameMemory>(
        &mut self,
        mem: &mut M,
        out: &mut [Packet<M::Buf>; BURST],
        jumbo: &mut Jumbo,
        room: usize,
    ) -> usize {
        self.read.clear();
        self.next = (0, 0);
        let (size, per) = (self.datagram, STAGE.div_ceil(self.datagram));
        let Source::Tap { tap, .. } = &mut self.source else { return 0 };
        let (mut n, mut in_place, mut frames) = (0, 0u64, 0u64);
        // The first slot not holding a datagram yet: a frame read in place takes as many
        // as it has datagrams, others none.
        let mut first = 0;
        for _ in 0..MESSAGES {
            if first + per > BURST || n == BURST {
                break;
            }
            let area = &mut self.staging[self.read.len() * STAGE..][..STAGE];
            // Behind room for the outer header; OUTER + size ≤ JUMBO_MAX (a datagram
            // is below 64 KiB).
            let read = {
                let mut parts: ArrayVec<&mut [u8], BURST> =
                    jumbo.data_areas().skip(first).take(per).map(|a| &mut a[OUTER..]).collect();
                tap.read_scattered(area, &mut parts, size)
            };
            let Some(got) = read else { break };
            frames += 1;
            match got {
                Ok(Scattered::InPlace(msg)) => {
                    let slots = record_in_place(jumbo, first, n, &msg, size, (self.vtep, self.port));
                    first += slots;
                    in_place += slots as u64;
                }
                Ok(Scattered::Staged(msg)) if msg.single() && msg.len <= room => {
                    let Some(buf) = mem.alloc() else {
                        bump(&self.stats.no_buffer, 1);
                        continue;
                    };
                    out[n] = frame_packet(buf, msg.len);
                    let payload = &area[msg.start..msg.start + msg.len];
                    let (vtep, port) = (self.vtep, self.port);
                    mem.with_buffers(&[buf], |s| {
                        write_datagram(&mut s[0][FRAME_HEAD..FRAME_HEAD + OUTER + msg.len], &msg, vtep, port, payload);
                    });
                    n += 1;
                }
                Ok(Scattered::Staged(msg)) => self.read.push(msg),
                Err(TapDrop::Truncated) => bump(&self.stats.truncated, 1),
                Err(TapDrop::Malformed) => bump(&self.stats.malformed, 1),
            }
        }
        bump(&self.stats.messages, frames);
        bump(&self.stats.in_place, in_place);
        bump(&self.stats.datagrams, n as u64 + in_place);
        n
    }

    /// Up to `batch` frames off the tap into the staging areas (dropped ones counted).
    pub(super) fn read_tap(&mut self) {
        self.read.clear();
        self.next = (0, 0);
        let Source::Tap { tap, .. } = &mut self.source else { return };
        let mut frames = 0u64;
        // Bounded by the batch, dropped frames included: a ring full of bad frames
        // must not keep the worker here.
        for _ in 0..self.batch {
            let area = &mut self.staging[self.read.len() * STAGE..][..STAGE];
            match tap.read(area) {
                None => break,
                Some(Ok(msg)) => self.read.push(msg),
                Some(Err(TapDrop::Truncated)) => bump(&self.stats.truncated, 1),
                Some(Err(TapDrop::Malformed)) => bump(&self.stats.malformed, 1),
            }
            frames += 1;
        }
        bump(&self.stats.messages, frames);
        if frames > 0 {
            self.batch = if self.read.iter().all(Message::single) { MESSAGES } else { TRAIN_BATCH };
        }
    }
}
