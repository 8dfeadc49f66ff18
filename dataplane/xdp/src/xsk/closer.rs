//! Closing sockets off the worker: an AF_XDP socket's close waits out in-flight receives
//! (`synchronize_net` in `xsk_release`, tens of milliseconds), and a worker that waited
//! would stop forwarding for every other port meanwhile (a pod removed under load cost
//! the others' fill rings their frames). The worker hands the socket to one closer
//! thread per process and takes the frames its rings held back once the close is done
//! (until then the kernel may still write into them).

use super::{Owner, Umem, XskPort};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

/// A socket to drop, and the flag the closer sets once it has.
type ToClose = (XskPort, Arc<AtomicBool>);

/// The closer thread's queue.
fn closer() -> Option<&'static Sender<ToClose>> {
    static CLOSER: OnceLock<Option<Sender<ToClose>>> = OnceLock::new();
    CLOSER
        .get_or_init(|| {
            let (tx, rx) = channel::<ToClose>();
            std::thread::Builder::new()
                .name("xlane-xsk-close".into())
                .spawn(move || {
                    for (port, done) in rx {
                        drop(port);
                        done.store(true, Ordering::Release);
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// A socket being closed by the closer thread: its token and the flag it sets.
#[derive(Debug)]
pub(super) struct Closing {
    token: u32,
    done: Arc<AtomicBool>,
}

impl Umem {
    /// [`close_port`](Self::close_port) without waiting: the socket closes on the closer
    /// thread and its frames come back at a later [`reclaim_closed`](Self::reclaim_closed)
    /// (or when this UMEM is dropped). Falls back to closing here if no thread could be
    /// started.
    pub fn close_port_in_background(&mut self, port: XskPort) {
        if port.umem_socket {
            self.close_port(port);
            return;
        }
        let Some(tx) = closer() else {
            self.close_port(port);
            return;
        };
        let done = Arc::new(AtomicBool::new(false));
        let token = port.token;
        match tx.send((port, Arc::clone(&done))) {
            Ok(()) => {
                self.open_ports -= 1;
                self.closing.push(Closing { token, done });
            }
            Err(std::sync::mpsc::SendError((port, _))) => {
                self.close_port(port);
            }
        }
    }

    /// Take back the frames of sockets the closer thread has closed; returns how many.
    /// One test of an empty list when nothing is closing.
    pub fn reclaim_closed(&mut self) -> usize {
        if self.closing.is_empty() {
            return 0;
        }
        let mut n = 0;
        let mut i = 0;
        while i < self.closing.len() {
            if self.closing[i].done.load(Ordering::Acquire) {
                let c = self.closing.swap_remove(i);
                n += self.take_back(c.token);
            } else {
                i += 1;
            }
        }
        n
    }

    /// Sockets still being closed.
    #[must_use]
    pub fn closing(&self) -> usize {
        self.closing.len()
    }

    /// Wait (up to `limit`) for the closer thread to close this UMEM's sockets, then take
    /// their frames back; returns whether none is left closing.
    pub fn wait_closed(&mut self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while !self.closing.is_empty() && t0.elapsed() < limit {
            self.reclaim_closed();
            if !self.closing.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.closing.is_empty()
    }

    /// Free the frames held in fill or TX rings of the socket tagged `token` (closed).
    pub(super) fn take_back(&mut self, token: u32) -> usize {
        let mut n = 0;
        for i in 0..self.owner.len() {
            if matches!(self.owner[i], Owner::Fill | Owner::Tx) && self.holder[i] == token {
                self.owner[i] = Owner::Free;
                self.free.push((i as u64) << self.shift);
                n += 1;
            }
        }
        n
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // Its sockets close before its registration and area go, as when closed here.
        self.wait_closed(Duration::from_secs(2));
    }
}
