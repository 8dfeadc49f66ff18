//! How a poll-mode worker waits for work on a CPU it shares (with pods, the kernel's
//! softirqs, other workers): it yields the CPU after each empty poll, so whatever
//! the CPU is needed for runs at once, and after [`Idle::SPINS`] empty polls in a row
//! it sleeps in poll(2) until a port has something. A busy-polling worker (cores of its
//! own) never yields, and sleeps only while it has nothing to poll.
//!
//! Yielding between empty polls rather than spinning, then sleeping: measured in
//! perf-lab (RESULTS.md "Workers that yield"): spinning workers took the CPU from the
//! traffic they waited for; sleeping at once costs a wake-up per burst.

/// A worker's idle state.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    busy_poll: bool,
    empty: u32,
}

impl Idle {
    /// Empty polls before a worker that is not busy-polling sleeps.
    pub const SPINS: u32 = 2_000;

    /// For a worker that busy-polls or not.
    #[must_use]
    pub const fn new(busy_poll: bool) -> Self {
        Self { busy_poll, empty: 0 }
    }

    /// After a poll that found `work` frames (`has_ports`: whether there was anything to
    /// poll): yields the CPU after an empty poll unless busy-polling, and says whether
    /// the worker should now sleep until a port is readable.
    pub fn after_poll(&mut self, work: usize, has_ports: bool) -> bool {
        if work > 0 {
            self.empty = 0;
            return false;
        }
        self.empty = self.empty.saturating_add(1);
        if !self.busy_poll {
            std::thread::yield_now();
        }
        // Busy-poll with nothing to poll waits instead of burning a core.
        let sleep = self.empty >= Self::SPINS && (!self.busy_poll || !has_ports);
        if sleep {
            self.empty = 0;
        }
        sleep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_after_spins_empty_polls_unless_busy_polling_ports() {
        let mut idle = Idle::new(false);
        for _ in 1..Idle::SPINS {
            assert!(!idle.after_poll(0, true));
        }
        assert!(!idle.after_poll(3, true), "work resets the count");
        assert!((1..Idle::SPINS).all(|_| !idle.after_poll(0, true)));
        assert!(idle.after_poll(0, true), "the last empty poll sleeps");
        assert!(!idle.after_poll(0, true), "and the count starts again");

        let mut busy = Idle::new(true);
        assert!((0..3 * Idle::SPINS).all(|_| !busy.after_poll(0, true)), "busy-polling ports never sleeps");
        assert!(busy.after_poll(0, false), "nothing to poll after as many empty polls: it sleeps");
        assert!((1..Idle::SPINS).all(|_| !busy.after_poll(0, false)));
        assert!(busy.after_poll(0, false), "and again after as many");
    }
}
