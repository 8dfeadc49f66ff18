//! In-memory ports: a test double for AF_XDP sockets.
//!
//! A [`MemDataplane`] owns a set of ports, each an RX and a TX queue of fixed-size frame
//! buffers with headroom, as UMEM chunks are. Forwarding moves a buffer from one port's
//! RX queue to another's TX queue, like moving a descriptor within a shared UMEM; a
//! dropped frame's buffer goes back to the pool. After warm-up nothing allocates.

use crate::counters::{CoreCounters, CounterSnapshot};
use crate::frame::Frame;
use crate::pipeline::{BURST, Pipeline, Verdict};
use arrayvec::ArrayVec;
use std::collections::VecDeque;
use std::sync::Arc;
use xlane_fib::{FibHandle, FibReader, PortId};

/// Size of a frame buffer (an AF_XDP default chunk size).
pub const FRAME_SIZE: usize = 2048;
/// Headroom left in front of received frames (room for the 50 outer bytes and more,
/// like `XDP_PACKET_HEADROOM`).
pub const HEADROOM: usize = 256;

/// A frame buffer and the packet's place in it.
#[derive(Debug)]
struct Slot {
    buf: Box<[u8; FRAME_SIZE]>,
    head: usize,
    len: usize,
}

impl Slot {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }
}

/// A frame that does not fit into a buffer after the headroom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {0} bytes exceeds the {max} bytes a buffer holds", max = FRAME_SIZE - HEADROOM)]
pub struct FrameTooLarge(pub usize);

/// The referenced port does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not exist")]
pub struct NoSuchPort(pub PortId);

/// Errors of [`MemDataplane::inject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// See [`FrameTooLarge`].
    #[error(transparent)]
    TooLarge(#[from] FrameTooLarge),
    /// See [`NoSuchPort`].
    #[error(transparent)]
    NoPort(#[from] NoSuchPort),
}

#[derive(Debug, Default)]
struct MemPort {
    rx: VecDeque<Slot>,
    tx: VecDeque<Slot>,
}

/// Frames the I/O layer could not hand on (outside the pipeline's conservation).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounters {
    /// Verdicts naming a port this dataplane does not have.
    pub tx_no_port: u64,
}

/// A worker driving in-memory ports through the pipeline.
#[derive(Debug)]
pub struct MemDataplane {
    pipeline: Pipeline,
    fib: FibReader,
    ports: Vec<MemPort>,
    #[expect(clippy::vec_box, reason = "buffers move between the pool and port queues without copying")]
    pool: Vec<Box<[u8; FRAME_SIZE]>>,
    io: IoCounters,
}

impl MemDataplane {
    /// A dataplane with `ports` ports (ids `0..ports`) reading tables from `fib`.
    #[must_use]
    pub fn new(fib: &FibHandle, ports: u16) -> Self {
        Self {
            pipeline: Pipeline::new(Arc::new(CoreCounters::default())),
            fib: fib.reader(),
            ports: (0..ports).map(|_| MemPort::default()).collect(),
            pool: Vec::new(),
            io: IoCounters::default(),
        }
    }

    /// Reserve `frames` buffers up front so later traffic allocates nothing.
    pub fn preallocate(&mut self, frames: usize) {
        for p in &mut self.ports {
            p.rx.reserve(frames);
            p.tx.reserve(frames);
        }
        self.pool.reserve(frames);
        while self.pool.len() < frames {
            self.pool.push(Box::new([0; FRAME_SIZE]));
        }
    }

    fn port(&mut self, id: PortId) -> Result<&mut MemPort, NoSuchPort> {
        self.ports.get_mut(usize::from(id.0)).ok_or(NoSuchPort(id))
    }

    /// Queue a copy of `bytes` for reception on `port`.
    ///
    /// # Errors
    /// [`InjectError`] for an unknown port or a frame larger than a buffer.
    pub fn inject(&mut self, port: PortId, bytes: &[u8]) -> Result<(), InjectError> {
        if bytes.len() > FRAME_SIZE - HEADROOM {
            return Err(FrameTooLarge(bytes.len()).into());
        }
        self.port(port)?;
        let mut buf = self.pool.pop().unwrap_or_else(|| Box::new([0; FRAME_SIZE]));
        buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        self.port(port)?.rx.push_back(Slot { buf, head: HEADROOM, len: bytes.len() });
        Ok(())
    }

    /// Process at most one burst from every port with frames waiting; returns how many
    /// frames were processed.
    pub fn poll(&mut self) -> usize {
        let mut done = 0;
        for p in 0..self.ports.len() {
            let ingress = PortId(u16::try_from(p).expect("ports are numbered by u16"));
            done += self.poll_port(ingress);
        }
        done
    }

    /// Poll until no port has frames waiting.
    pub fn run_until_idle(&mut self) -> usize {
        let mut total = 0;
        loop {
            let n = self.poll();
            if n == 0 {
                return total;
            }
            total += n;
        }
    }

    fn poll_port(&mut self, ingress: PortId) -> usize {
        let rx = &mut self.ports[usize::from(ingress.0)].rx;
        let mut burst: ArrayVec<Slot, BURST> = ArrayVec::new();
        while burst.len() < BURST {
            match rx.pop_front() {
                Some(s) => burst.push(s),
                None => break,
            }
        }
        if burst.is_empty() {
            return 0;
        }
        let mut verdicts = [Verdict::Drop(crate::DropReason::UnknownPort); BURST];
        let mut placed = [(0usize, 0usize); BURST];
        {
            let mut frames: ArrayVec<Frame<'_>, BURST> = burst
                .iter_mut()
                .map(|s| Frame::new(&mut s.buf[..], s.head, s.len).expect("slot bounds hold"))
                .collect();
            let fib = self.fib.current();
            self.pipeline.process(fib, ingress, &mut frames, &mut verdicts);
            for (p, f) in placed.iter_mut().zip(&frames) {
                *p = (f.head(), f.len());
            }
        }
        let n = burst.len();
        for ((mut slot, v), (head, len)) in burst.into_iter().zip(verdicts).zip(placed) {
            (slot.head, slot.len) = (head, len);
            match v {
                Verdict::Tx(out) => match self.ports.get_mut(usize::from(out.0)) {
                    Some(port) => port.tx.push_back(slot),
                    None => {
                        self.io.tx_no_port += 1;
                        self.pool.push(slot.buf);
                    }
                },
                Verdict::Drop(_) => self.pool.push(slot.buf),
            }
        }
        n
    }

    /// Hand every frame transmitted on `port` to `f`, then recycle its buffer.
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn drain_tx(&mut self, port: PortId, mut f: impl FnMut(&[u8])) -> Result<usize, NoSuchPort> {
        let mut n = 0;
        while let Some(slot) = self.port(port)?.tx.pop_front() {
            f(slot.bytes());
            self.pool.push(slot.buf);
            n += 1;
        }
        Ok(n)
    }

    /// Copies of every frame transmitted on `port` (a convenience for tests).
    ///
    /// # Errors
    /// [`NoSuchPort`] for an unknown port.
    pub fn take_tx(&mut self, port: PortId) -> Result<Vec<Vec<u8>>, NoSuchPort> {
        let mut out = Vec::new();
        self.drain_tx(port, |b| out.push(b.to_vec()))?;
        Ok(out)
    }

    /// Move every frame transmitted on `from` of this dataplane into the RX queue of
    /// `to` on `peer` (a wire between two nodes' uplinks). Buffers move, bytes do not.
    ///
    /// # Errors
    /// [`NoSuchPort`] if either port does not exist.
    pub fn wire_to(&mut self, from: PortId, peer: &mut Self, to: PortId) -> Result<usize, NoSuchPort> {
        peer.port(to)?;
        let mut n = 0;
        while let Some(mut slot) = self.port(from)?.tx.pop_front() {
            // Received frames start at the receiver's headroom, as on a real port.
            if slot.head != HEADROOM {
                slot.buf.copy_within(slot.head..slot.head + slot.len, HEADROOM);
                slot.head = HEADROOM;
            }
            peer.port(to)?.rx.push_back(slot);
            // The receiver pays with a buffer of its own, so neither pool drains or grows.
            if let Some(spare) = peer.pool.pop() {
                self.pool.push(spare);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Buffers this dataplane owns (free, queued for RX, queued for TX).
    #[must_use]
    pub fn buffers_owned(&self) -> usize {
        self.pool.len() + self.ports.iter().map(|p| p.rx.len() + p.tx.len()).sum::<usize>()
    }

    /// Pipeline counters of this dataplane.
    #[must_use]
    pub fn counters(&self) -> CounterSnapshot {
        self.pipeline.counters().snapshot()
    }

    /// I/O counters of this dataplane.
    #[must_use]
    pub fn io_counters(&self) -> IoCounters {
        self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed;

    fn udp_to_b(pod: &xlane_fib::Endpoint) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(pod.gateway_mac.as_bytes());
        f.extend_from_slice(pod.mac.as_bytes());
        f.extend_from_slice(&[0x08, 0, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&pod.ip.octets());
        f.extend_from_slice(&testbed::b_pod().ip.octets());
        f.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        let c = !xlane_wire::checksum::sum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn buffers_stay_with_their_owner_across_the_wire() {
        let (ha, hb) = (FibHandle::new(), FibHandle::new());
        testbed::tables(1, 1).publish(&ha);
        testbed::tables_b().publish(&hb);
        let (mut a, mut b) = (MemDataplane::new(&ha, 2), MemDataplane::new(&hb, 2));
        a.preallocate(128);
        b.preallocate(128);
        let frame = udp_to_b(&testbed::pod(1));
        for _ in 0..50 {
            for _ in 0..64 {
                a.inject(PortId(1), &frame).unwrap();
            }
            a.run_until_idle();
            assert_eq!(a.wire_to(testbed::UPLINK, &mut b, testbed::UPLINK).unwrap(), 64);
            b.run_until_idle();
            assert_eq!(b.drain_tx(PortId(1), |_| {}).unwrap(), 64);
            assert_eq!((a.buffers_owned(), b.buffers_owned()), (128, 128));
        }
        assert!(a.counters().conserved() && b.counters().conserved());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let h = FibHandle::new();
        let mut dp = MemDataplane::new(&h, 1);
        assert_eq!(dp.inject(PortId(1), &[0; 60]), Err(InjectError::NoPort(NoSuchPort(PortId(1)))));
        assert_eq!(dp.inject(PortId(0), &[0; FRAME_SIZE]), Err(InjectError::TooLarge(FrameTooLarge(FRAME_SIZE))));
        // Tables not configured: the frame is a counted drop, not an error.
        dp.inject(PortId(0), &[0; 60]).unwrap();
        dp.run_until_idle();
        assert_eq!(dp.counters().drop_count(crate::DropReason::UnknownPort), 1);
    }
}
