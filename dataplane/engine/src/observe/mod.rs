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

pub mod headers;
pub mod trace;

use crate::pipeline::Verdict;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use trace::{TraceBuffer, TraceFilter, Tracer};
use xlane_fib::{Fib, PortId};

/// The driver's calls around the pipeline, per burst. The driver is generic over it so
/// that the [`Unobserved`] case compiles to the plain forwarding loop.
pub(crate) trait BurstHook {
    fn begin(&mut self, fib: &Fib, ingress: PortId);
    fn received(&mut self, i: usize, frame: &[u8]);
    fn processed(&mut self, i: usize, frame: &[u8], verdict: Verdict);
    fn unplaced(&mut self, i: usize);
    fn end(&mut self, fib: &Fib);
}

/// Observation off: every call is empty and inlines away.
pub(crate) struct Unobserved;

impl BurstHook for Unobserved {
    #[inline(always)]
    fn begin(&mut self, _: &Fib, _: PortId) {}
    #[inline(always)]
    fn received(&mut self, _: usize, _: &[u8]) {}
    #[inline(always)]
    fn processed(&mut self, _: usize, _: &[u8], _: Verdict) {}
    #[inline(always)]
    fn unplaced(&mut self, _: usize) {}
    #[inline(always)]
    fn end(&mut self, _: &Fib) {}
}

/// What one worker observes: a trace, a capture, or both.
#[derive(Debug)]
pub struct Observer {
    worker: u16,
    trace: Option<Tracer>,
    /// Whether the trace wants this burst's frames.
    tracing: bool,
}

impl Observer {
    /// An observer for worker `worker` that observes nothing yet.
    #[must_use]
    pub fn new(worker: u16) -> Self {
        Self { worker, trace: None, tracing: false }
    }

    /// Trace frames that pass `filter` into `buffer` (replacing a trace in progress).
    pub fn set_trace(&mut self, buffer: Arc<TraceBuffer>, filter: TraceFilter) {
        self.trace = Some(Tracer::new(buffer, filter));
    }

    /// Stop tracing.
    pub fn clear_trace(&mut self) {
        self.trace = None;
    }

    /// Whether it observes anything (an observer that does not is better removed).
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.trace.is_some()
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl BurstHook for Observer {
    fn begin(&mut self, fib: &Fib, ingress: PortId) {
        self.tracing = self.trace.as_mut().is_some_and(|t| t.begin(fib, ingress));
    }

    fn received(&mut self, i: usize, frame: &[u8]) {
        if self.tracing
            && let Some(t) = &mut self.trace
        {
            t.received(self.worker, i, frame);
        }
    }

    fn processed(&mut self, i: usize, frame: &[u8], verdict: Verdict) {
        if self.tracing
            && let Some(t) = &mut self.trace
        {
            t.processed(i, frame, verdict);
        }
    }

    fn unplaced(&mut self, i: usize) {
        if self.tracing
            && let Some(t) = &mut self.trace
        {
            t.unplaced(i);
        }
    }

    fn end(&mut self, fib: &Fib) {
        if self.tracing
            && let Some(t) = &mut self.trace
            && t.has_pending()
        {
            t.end(fib, unix_ns());
        }
    }
}

#[cfg(test)]
mod tests;
