//! Observation of the forwarding path: packet trace and capture.
//!
//! A worker's [`Driver`](crate::Driver) holds an optional [`Observer`], installed and
//! removed by the control thread (a job on the worker). With none installed, forwarding
//! a burst costs one test of that option; with one, the driver calls the
//! observer around the pipeline, per burst:
//! `begin` → `received` (each frame, before the pipeline) → `processed` (each frame,
//! after, with its verdict) → `unplaced` (frames no port of this worker serves) → `end`.
//! Observers read frames and copy what they keep into memory allocated when they were
//! installed: no allocation, no lock, no logging per frame.

pub mod capture;
pub mod headers;
pub mod trace;

use crate::drop::DropReason;
use crate::frame::Frame;
use crate::pipeline::Verdict;
use capture::{CaptureRing, Tap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use trace::{TraceBuffer, TraceFilter, Tracer};
use xlane_fib::{Fib, PortId};

/// The driver's calls around the pipeline, per burst. The driver is generic over it so
/// that the [`Unobserved`] case compiles to the plain forwarding loop.
///
/// Frames are passed as [`Frame`]s, not slices: slicing one is a bounds check the
/// compiler must keep, so the unobserved loop would not vanish.
pub(crate) trait BurstHook {
    /// False only for [`Unobserved`]: the driver skips the calls (and their loops).
    const ACTIVE: bool;
    fn begin(&mut self, fib: &Fib, ingress: PortId);
    fn received(&mut self, i: usize, frame: &Frame<'_>);
    fn processed(&mut self, i: usize, frame: &Frame<'_>, verdict: Verdict);
    fn unplaced(&mut self, i: usize, reason: DropReason);
    fn end(&mut self, fib: &Fib);
}

/// Observation off: every call is empty and inlines away.
pub(crate) struct Unobserved;

impl BurstHook for Unobserved {
    const ACTIVE: bool = false;
    #[inline(always)]
    fn begin(&mut self, _: &Fib, _: PortId) {}
    #[inline(always)]
    fn received(&mut self, _: usize, _: &Frame<'_>) {}
    #[inline(always)]
    fn processed(&mut self, _: usize, _: &Frame<'_>, _: Verdict) {}
    #[inline(always)]
    fn unplaced(&mut self, _: usize, _: DropReason) {}
    #[inline(always)]
    fn end(&mut self, _: &Fib) {}
}

/// What one worker observes: a trace, a capture, or both.
#[derive(Debug)]
pub struct Observer {
    worker: u16,
    trace: Option<Tracer>,
    capture: Option<Tap>,
    /// Whether the trace wants this burst's frames.
    tracing: bool,
    /// Whether the capture wants this burst's frames.
    capturing: bool,
}

impl Observer {
    /// An observer for worker `worker` that observes nothing yet.
    #[must_use]
    pub fn new(worker: u16) -> Self {
        Self { worker, trace: None, capture: None, tracing: false, capturing: false }
    }

    /// Trace frames that pass `filter` into `buffer` (replacing a trace in progress).
    pub fn set_trace(&mut self, buffer: Arc<TraceBuffer>, filter: TraceFilter) {
        self.trace = Some(Tracer::new(buffer, filter));
    }

    /// Stop tracing.
    pub fn clear_trace(&mut self) {
        self.trace = None;
    }

    /// Capture into `ring` (replacing a capture in progress).
    pub fn set_capture(&mut self, ring: Arc<CaptureRing>) {
        self.capture = Some(Tap::new(ring, self.worker));
    }

    /// Stop capturing into `ring` (a newer capture stays).
    pub fn clear_capture(&mut self, ring: &Arc<CaptureRing>) {
        if self.capture.as_ref().is_some_and(|t| Arc::ptr_eq(t.ring(), ring)) {
            self.capture = None;
        }
    }

    /// Whether it observes anything (an observer that does not is better removed).
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.trace.is_some() || self.capture.is_some()
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl BurstHook for Observer {
    const ACTIVE: bool = true;
    fn begin(&mut self, fib: &Fib, ingress: PortId) {
        self.tracing = self.trace.as_mut().is_some_and(|t| t.begin(fib, ingress));
        self.capturing = self.capture.as_mut().is_some_and(|c| c.begin(ingress));
    }

    fn received(&mut self, i: usize, frame: &Frame<'_>) {
        let frame = frame.data();
        if self.tracing
            && let Some(t) = &mut self.trace
        {
            t.received(self.worker, i, frame);
        }
        if self.capturing
            && let Some(c) = &mut self.capture
        {
            c.received(i, frame);
        }
    }

    fn processed(&mut self, i: usize, frame: &Frame<'_>, verdict: Verdict) {
        let frame = frame.data();
        if self.tracing
            && let Some(t) = &mut self.trace
        {
            t.processed(i, frame, verdict);
        }
        if self.capturing
            && let Some(c) = &mut self.capture
        {
            c.processed(i, frame, verdict);
        }
    }

    fn unplaced(&mut self, i: usize, reason: DropReason) {
        if self.tracing
            && let Some(t) = &mut self.trace
        {
            t.unplaced(i, reason);
        }
        if self.capturing
            && let Some(c) = &mut self.capture
        {
            c.unplaced(i, reason);
        }
    }

    fn end(&mut self, fib: &Fib) {
        let trace = self.trace.as_mut().filter(|t| self.tracing && t.has_pending());
        let capture = self.capture.as_mut().filter(|c| self.capturing && c.has_held());
        if trace.is_none() && capture.is_none() {
            return;
        }
        // One clock read per burst, for every record and copy of it.
        let now = unix_ns();
        if let Some(t) = trace {
            t.end(fib, now);
        }
        if let Some(c) = capture {
            c.end(now);
        }
    }
}

#[cfg(test)]
mod capture_tests;
#[cfg(test)]
mod tests;
