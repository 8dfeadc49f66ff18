//! Capture: copies of a port's frames for a writer thread (pcapng in xlaned).
//!
//! A [`CaptureRing`] is a fixed pool of snaplen-sized buffers cycling between the
//! workers and one reader through two bounded queues: `free` (the reader returns
//! buffers) and `filled` (workers hand copies over). A worker that finds no free buffer
//! counts a loss and moves on; it never waits for the reader, so a slow reader costs
//! the capture frames, never the dataplane.
//!
//! Frames are copied as received (before the pipeline) for `rx` and `drops`, and as
//! transmitted (after it) for `tx`; a received frame the pipeline or the driver dropped
//! carries its [`DropReason`].

use crate::drop::DropReason;
use crate::pipeline::{BURST, Verdict};
use crate::port::bump;
use arrayvec::ArrayVec;
use crossbeam_queue::ArrayQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use xlane_fib::PortId;

/// The fewest buffers a ring has: two bursts' worth (one received, one transmitted).
pub const MIN_BUFFERS: usize = 2 * BURST;

/// Which frames of which port a capture takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureFilter {
    /// The port.
    pub port: PortId,
    /// Every frame received on it.
    pub rx: bool,
    /// Every frame transmitted on it.
    pub tx: bool,
    /// Frames received on it and dropped.
    pub drops: bool,
}

/// Which way a captured frame went through the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received (as it arrived).
    Rx,
    /// Transmitted (as it left).
    Tx,
}

/// One captured frame in a pool buffer.
#[derive(Debug)]
pub struct CapturedFrame {
    data: Box<[u8]>,
    len: u32,
    /// Length of the frame on the wire (`bytes()` may be shorter: the snaplen).
    pub orig_len: u32,
    /// When its burst was forwarded, nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// The worker that copied it.
    pub worker: u16,
    /// Received or transmitted.
    pub direction: Direction,
    /// Why it was dropped, for a received frame that was.
    pub drop: Option<DropReason>,
}

impl CapturedFrame {
    /// The bytes kept (at most the snaplen).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }

    fn fill(&mut self, frame: &[u8], direction: Direction) {
        let n = frame.len().min(self.data.len());
        self.data[..n].copy_from_slice(&frame[..n]);
        #[expect(clippy::cast_possible_truncation, reason = "frames are far smaller than 4 GiB")]
        {
            (self.len, self.orig_len) = (n as u32, frame.len() as u32);
        }
        (self.direction, self.drop) = (direction, None);
    }
}

/// A worker's counts for one capture. Single writer (that worker).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CaptureCounters {
    /// Frames handed to the reader.
    pub captured: AtomicU64,
    /// Frames the capture wanted but found no free buffer for.
    pub lost: AtomicU64,
}

/// One capture's buffers and queues, shared by the workers and the reader.
#[derive(Debug)]
pub struct CaptureRing {
    filter: CaptureFilter,
    snaplen: usize,
    free: ArrayQueue<CapturedFrame>,
    filled: ArrayQueue<CapturedFrame>,
    stopped: AtomicBool,
    counters: Box<[CaptureCounters]>,
}

impl CaptureRing {
    /// A ring of `buffers` buffers of `snaplen` bytes (all allocated now) for `workers`
    /// workers. At least [`MIN_BUFFERS`]: a burst holds a copy of each received frame
    /// until its verdict says whether a drop capture wants it, so a smaller pool would
    /// lose drops to frames that were forwarded.
    #[must_use]
    pub fn new(filter: CaptureFilter, snaplen: usize, buffers: usize, workers: usize) -> Self {
        let buffers = buffers.max(MIN_BUFFERS);
        let free = ArrayQueue::new(buffers);
        for _ in 0..buffers {
            let frame = CapturedFrame {
                data: vec![0; snaplen].into_boxed_slice(),
                len: 0,
                orig_len: 0,
                unix_ns: 0,
                worker: 0,
                direction: Direction::Rx,
                drop: None,
            };
            free.push(frame).expect("sized for every buffer");
        }
        let counters = (0..workers).map(|_| CaptureCounters::default()).collect();
        Self { filter, snaplen, free, filled: ArrayQueue::new(buffers), stopped: AtomicBool::new(false), counters }
    }

    /// What it captures.
    #[must_use]
    pub fn filter(&self) -> CaptureFilter {
        self.filter
    }

    /// Bytes kept per frame.
    #[must_use]
    pub fn snaplen(&self) -> usize {
        self.snaplen
    }

    /// The next captured frame, if any (give it back with [`recycle`](Self::recycle)).
    #[must_use]
    pub fn pop(&self) -> Option<CapturedFrame> {
        self.filled.pop()
    }

    /// Return a buffer to the pool.
    pub fn recycle(&self, frame: CapturedFrame) {
        // The pool has room for every buffer it ever held.
        let _ = self.free.push(frame);
    }

    /// Stop capturing: workers take no more frames (the reader may still drain).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether [`stop`](Self::stop) was called.
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Per worker: (captured, lost).
    #[must_use]
    pub fn counts(&self) -> Vec<(u64, u64)> {
        self.counters.iter().map(|c| (c.captured.load(Ordering::Relaxed), c.lost.load(Ordering::Relaxed))).collect()
    }
}

/// A frame of the current burst the capture is holding.
#[derive(Debug)]
struct Held {
    /// Index in the burst.
    index: u8,
    direction: Direction,
    drop: Option<DropReason>,
    /// `None`: wanted, but no buffer was free.
    frame: Option<CapturedFrame>,
}

/// A worker's side of a capture.
#[derive(Debug)]
pub(crate) struct Tap {
    ring: Arc<CaptureRing>,
    worker: u16,
    /// This burst came in on the captured port and rx or drops are wanted.
    inbound: bool,
    held: ArrayVec<Held, { 2 * BURST }>,
}

impl Tap {
    pub(crate) fn new(ring: Arc<CaptureRing>, worker: u16) -> Self {
        Self { ring, worker, inbound: false, held: ArrayVec::new() }
    }

    pub(crate) fn ring(&self) -> &Arc<CaptureRing> {
        &self.ring
    }

    /// A burst from `ingress` starts; false if the capture wants nothing of it.
    pub(crate) fn begin(&mut self, ingress: PortId) -> bool {
        let f = self.ring.filter;
        self.held.clear();
        if self.ring.stopped() {
            return false;
        }
        self.inbound = ingress == f.port && (f.rx || f.drops);
        self.inbound || f.tx
    }

    fn hold(&mut self, i: usize, frame: &[u8], direction: Direction) {
        let mut copy = self.ring.free.pop();
        if let Some(c) = &mut copy {
            c.fill(frame, direction);
        }
        #[expect(clippy::cast_possible_truncation, reason = "i < BURST = 64")]
        let index = i as u8;
        self.held.push(Held { index, direction, drop: None, frame: copy });
    }

    fn held_mut(&mut self, i: usize, direction: Direction) -> Option<&mut Held> {
        self.held.iter_mut().find(|h| usize::from(h.index) == i && h.direction == direction)
    }

    pub(crate) fn received(&mut self, i: usize, frame: &[u8]) {
        if self.inbound {
            self.hold(i, frame, Direction::Rx);
        }
    }

    pub(crate) fn processed(&mut self, i: usize, frame: &[u8], verdict: Verdict) {
        match verdict {
            Verdict::Drop(reason) => {
                if let Some(h) = self.held_mut(i, Direction::Rx) {
                    h.drop = Some(reason);
                }
            }
            Verdict::Tx(port) if port == self.ring.filter.port && self.ring.filter.tx => {
                self.hold(i, frame, Direction::Tx);
            }
            Verdict::Tx(_) => {}
        }
    }

    /// Frame `i` found no port to leave by: it was not transmitted, it was dropped.
    pub(crate) fn unplaced(&mut self, i: usize, reason: DropReason) {
        if let Some(h) = self.held_mut(i, Direction::Rx) {
            h.drop = Some(reason);
        }
        if let Some(h) = self.held_mut(i, Direction::Tx) {
            h.drop = Some(reason);
        }
    }

    pub(crate) fn end(&mut self, unix_ns: u64) {
        let f = self.ring.filter;
        let counters = &self.ring.counters[usize::from(self.worker).min(self.ring.counters.len() - 1)];
        let (mut captured, mut lost) = (0, 0);
        for h in self.held.drain(..) {
            let wanted = match h.direction {
                Direction::Rx => f.rx || (f.drops && h.drop.is_some()),
                Direction::Tx => h.drop.is_none(),
            };
            match (wanted, h.frame) {
                (true, Some(mut c)) => {
                    (c.unix_ns, c.worker, c.drop) = (unix_ns, self.worker, h.drop);
                    // `filled` has room for every buffer of the pool.
                    let _ = self.ring.filled.push(c);
                    captured += 1;
                }
                (true, None) => lost += 1,
                (false, Some(c)) => self.ring.recycle(c),
                (false, None) => {}
            }
        }
        bump(&counters.captured, captured);
        bump(&counters.lost, lost);
    }

    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }
}
