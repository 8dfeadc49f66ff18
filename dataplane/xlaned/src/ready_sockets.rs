//! Pod sockets made ready ahead of the pods: a `veth-offload` pod gets one AF_PACKET
//! socket per worker, and setting up a socket's receive ring waits for an RCU grace
//! period (~20 ms here; [`ReadySocket`]). A thread keeps a stock of them, so a pod's
//! attachment (its CNI ADD) and the workers (which bind the sockets) never wait for
//! one. The thread makes what is missing all at once, on one thread each: their grace
//! periods overlap, so a stock of any size refills in about one.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use xlane_xdp::packet::{ReadySocket, RxPath};

/// The stock and its refilling thread; stopped on drop.
#[derive(Debug)]
pub(crate) struct ReadySockets {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a socket is taken, and on stop.
    changed: Condvar,
    target: usize,
}

#[derive(Debug, Default)]
struct State {
    stock: Vec<ReadySocket>,
    stop: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadySockets {
    /// Keep `target` sockets ready, made in the calling thread's network namespace
    /// (the sockets' own: an AF_PACKET socket binds interfaces of the namespace it was
    /// made in).
    ///
    /// # Errors
    /// The thread could not be started.
    pub(crate) fn start(target: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { state: Mutex::default(), changed: Condvar::new(), target });
        let refill = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("xlane-sockets".into()).spawn(move || refill_loop(&refill))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// A ready socket, if the stock has one; the thread makes another.
    pub(crate) fn take(&self) -> Option<ReadySocket> {
        let taken = self.shared.state().stock.pop();
        self.shared.changed.notify_all();
        taken
    }

    /// Sockets in stock.
    #[cfg(test)]
    fn stocked(&self) -> usize {
        self.shared.state().stock.len()
    }
}

impl Drop for ReadySockets {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait until the stock is short, make what is missing concurrently, add it; until
/// stopped. A failure (no memory for a ring, too many open files) is logged once per
/// run of failures and retried a second later.
fn refill_loop(shared: &Shared) {
    let mut failing = false;
    loop {
        let missing = {
            let mut state = shared.state();
            while !state.stop && state.stock.len() >= shared.target {
                state = shared.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop {
                return;
            }
            shared.target - state.stock.len()
        };
        let made: Vec<_> = std::thread::scope(|s| {
            let makers: Vec<_> = (0..missing).map(|_| s.spawn(|| ReadySocket::new(RxPath::Ring))).collect();
            makers.into_iter().filter_map(|m| m.join().ok()).collect()
        });
        let mut error = None;
        let mut state = shared.state();
        for m in made {
            match m {
                Ok(socket) => state.stock.push(socket),
                Err(e) => error = Some(e),
            }
        }
        drop(state);
        match error {
            Some(e) => {
                if !failing {
                    tracing::warn!("making pod sockets ahead: {e}; pods' sockets are made as they come");
                }
                failing = true;
                let state = shared.state();
                let _ = shared.changed.wait_timeout_while(state, Duration::from_secs(1), |s| !s.stop);
            }
            None => failing = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_stock_is_kept_full() {
        if !xlane_netlab::privileged("the_stock_is_kept_full") {
            return;
        }
        let ready = ReadySockets::start(3).unwrap();
        let full = |n| {
            let t0 = Instant::now();
            while ready.stocked() < n {
                assert!(t0.elapsed() < Duration::from_secs(10), "{} of {n} ready", ready.stocked());
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        full(3);
        let taken: Vec<_> = (0..3).map(|_| ready.take().expect("a ready socket")).collect();
        assert!(taken.iter().all(|s| s.rx_path() == RxPath::Ring), "every one with its ring");
        full(3);
        assert_eq!(ready.stocked(), 3, "no more than the target");
        drop(ready);
    }
}
