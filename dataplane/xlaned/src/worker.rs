//! A worker: one pinned thread that owns a frame memory (a UMEM) and the ports it
//! serves, and runs the engine's burst [`Driver`] over them until told to stop.
//!
//! The worker is generic over its memory and port type, so the same loop runs AF_XDP
//! sockets and vhost-user guests in the daemon ([`NodePort`] over [`Umems`]) and
//! in-memory ports in tests. Ports are added and removed by closures the control thread
//! sends ([`Command::Run`]): only the worker may touch its memory and sockets. An
//! eventfd wakes a sleeping worker. When idle for a run of empty polls a worker sleeps
//! in poll(2) on its ports' descriptors (need_wakeup mode), so an idle node costs ~0
//! CPU; with busy-poll it keeps spinning. Between the empty polls of that run a
//! non-busy worker yields its CPU: it shares the CPU with the pods it serves and the
//! kernel's softirq work, and a spin that keeps them waiting slows what it waits for
//! (bulk TCP on two vCPUs: +13% at MTU 1500, +25–35% at MTU 9000, RR p99 0.9 ms → 0.12
//! ms, though RR p50 rose from ~25 to 30–80 µs: perf-lab/RESULTS.md); on an idle CPU the
//! yield returns at once.

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use nix::sys::eventfd::EventFd;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xlane_engine::{BURST, CoreCounters, Driver, FrameMemory, Packet, Port};
use xlane_fib::{FibHandle, FibReader};
use xlane_vhost::port::VhostPort;
use xlane_xdp::packet::PacketPort;
use xlane_xdp::port::XdpPort;
use xlane_xdp::xsk::{Umems, wait_readable};

/// Longest sleep (also the period of statistics refresh while idle).
const SLEEP_MS: i32 = 200;

/// Histograms a worker publishes about once a second.
#[derive(Debug)]
pub struct WorkerShared {
    /// Pipeline counters.
    pub counters: Arc<CoreCounters>,
    /// Burst forwarding latency (RX to TX flush), nanoseconds.
    pub latency: ArcSwap<Histogram<u64>>,
    /// Frames per RX burst.
    pub burst: ArcSwap<Histogram<u64>>,
}

/// An empty burst-latency histogram (nanoseconds).
#[must_use]
pub fn new_latency() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("static bounds")
}

/// An empty burst-size histogram.
#[must_use]
pub fn new_burst() -> Histogram<u64> {
    Histogram::new_with_bounds(1, BURST as u64, 2).expect("static bounds")
}

impl WorkerShared {
    /// Burst latency and burst size summed over `workers`, as last published.
    #[must_use]
    pub fn merged<'a>(workers: impl IntoIterator<Item = &'a Self>) -> (Histogram<u64>, Histogram<u64>) {
        let (mut latency, mut burst) = (new_latency(), new_burst());
        for w in workers {
            let _ = latency.add(&**w.latency.load());
            let _ = burst.add(&**w.burst.load());
        }
        (latency, burst)
    }

    fn new() -> Self {
        Self {
            counters: Arc::new(CoreCounters::default()),
            latency: ArcSwap::from_pointee(new_latency()),
            burst: ArcSwap::from_pointee(new_burst()),
        }
    }
}

/// A port of the daemon: an AF_XDP socket, a vhost-user guest or an AF_PACKET socket,
/// over the worker's UMEMs.
#[derive(Debug)]
pub enum NodePort {
    /// One queue of an interface.
    Xdp(XdpPort),
    /// A VM-based pod.
    Vhost(VhostPort),
    /// A pod whose veth keeps its offloads: an AF_PACKET socket on the host end.
    Packet(PacketPort<u64>),
}

// Every kind by static dispatch: one match per call, no virtual call.
xlane_engine::port_enum!(NodePort<Umems> { Xdp, Vhost, Packet });

/// Work the control thread runs on a worker, with its driver (open or close ports).
pub type Job<M, P> = Box<dyn FnOnce(&mut Driver<M, P>) + Send>;

/// Commands from the control thread.
pub enum Command<M: FrameMemory, P: Port<M>> {
    /// Run a job on the worker's driver (it replies through whatever it captured).
    Run(Job<M, P>),
    /// Start polling the ports (a worker started [held](WorkerConfig::held)).
    Release,
    /// Exit the loop (the driver closes every port).
    Stop,
}

impl<M: FrameMemory, P: Port<M>> core::fmt::Debug for Command<M, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Run(_) => "Run",
            Self::Release => "Release",
            Self::Stop => "Stop",
        })
    }
}

/// The control thread's handle on a worker.
pub struct WorkerHandle<M: FrameMemory, P: Port<M>> {
    tx: Sender<Command<M, P>>,
    wake: Arc<EventFd>,
    /// Shared counters and histograms.
    pub shared: Arc<WorkerShared>,
}

impl<M: FrameMemory, P: Port<M>> Clone for WorkerHandle<M, P> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), wake: Arc::clone(&self.wake), shared: Arc::clone(&self.shared) }
    }
}

impl<M: FrameMemory, P: Port<M>> core::fmt::Debug for WorkerHandle<M, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WorkerHandle").finish_non_exhaustive()
    }
}

impl<M: FrameMemory, P: Port<M>> WorkerHandle<M, P> {
    /// Send a command and wake the worker; false if the worker has exited.
    pub fn send(&self, cmd: Command<M, P>) -> bool {
        let sent = self.tx.send(cmd).is_ok();
        if sent {
            let _ = self.wake.write(1);
        }
        sent
    }

    /// Let a worker started held ([`WorkerConfig::held`]) poll its ports.
    pub fn release(&self) {
        self.send(Command::Release);
    }

    /// Run `job` on the worker's driver; false if the worker has exited.
    pub fn run(&self, job: impl FnOnce(&mut Driver<M, P>) + Send + 'static) -> bool {
        self.send(Command::Run(Box::new(job)))
    }
}

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Spin instead of sleeping when idle.
    pub busy_poll: bool,
    /// Core to pin to.
    pub core: Option<usize>,
    /// Start held: run jobs, poll no port until [`WorkerHandle::release`] (a new
    /// xlaned taking over holds its workers until its tables know every port: a frame
    /// waiting in a ring would otherwise be read before its port is routed, and
    /// dropped).
    pub held: bool,
}

/// Start a worker thread whose memory `make_mem` creates on that thread (a UMEM holds
/// raw pointers into its mapping and is not `Send`).
///
/// # Errors
/// The memory's creation error, or a failed thread spawn.
pub fn spawn<M, P>(
    index: usize,
    cfg: WorkerConfig,
    fib: &FibHandle,
    make_mem: impl FnOnce() -> Result<M, String> + Send + 'static,
) -> anyhow::Result<(WorkerHandle<M, P>, std::thread::JoinHandle<()>)>
where
    M: FrameMemory + 'static,
    P: Port<M> + 'static,
{
    let (tx, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let wake = Arc::new(EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_NONBLOCK)?);
    let shared = Arc::new(WorkerShared::new());
    let handle = WorkerHandle { tx, wake: Arc::clone(&wake), shared: Arc::clone(&shared) };
    let reader = fib.reader();
    let join = std::thread::Builder::new().name(format!("xlane-worker{index}")).spawn(move || {
        if let Some(core) = cfg.core {
            if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                tracing::info!(worker = index, core, "worker pinned");
            } else {
                tracing::warn!(worker = index, core, "could not pin worker");
            }
        }
        let mem = match make_mem() {
            Ok(m) => {
                let _ = ready_tx.send(Ok(()));
                m
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mut w = Worker {
            index,
            driver: Driver::new(mem, Arc::clone(&shared.counters)),
            reader,
            cmds: rx,
            wake,
            cfg,
            shared,
            latency: new_latency(),
            burst: new_burst(),
        };
        w.run();
    })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("worker {index} exited during start"))?
        .map_err(|e| anyhow::anyhow!("worker {index}: {e}"))?;
    Ok((handle, join))
}

struct Worker<M: FrameMemory, P: Port<M>> {
    index: usize,
    driver: Driver<M, P>,
    reader: FibReader,
    cmds: Receiver<Command<M, P>>,
    wake: Arc<EventFd>,
    cfg: WorkerConfig,
    shared: Arc<WorkerShared>,
    latency: Histogram<u64>,
    burst: Histogram<u64>,
}

impl<M: FrameMemory, P: Port<M>> Worker<M, P> {
    fn run(&mut self) {
        let mut idle = xlane_engine::Idle::new(self.cfg.busy_poll);
        let mut held = self.cfg.held;
        let mut last_publish = Instant::now();
        let mut last_refresh = Instant::now();
        loop {
            while let Ok(cmd) = self.cmds.try_recv() {
                match cmd {
                    Command::Run(job) => {
                        let t0 = Instant::now();
                        job(&mut self.driver);
                        // Forwarding stops while a job runs: say so when that is long
                        // enough to cost frames (slow kernel work such as binding or
                        // closing a socket belongs off the worker).
                        let took = t0.elapsed();
                        if took > Duration::from_millis(5) {
                            tracing::info!(worker = self.index, ms = took.as_millis(), "a port job held the worker");
                        }
                    }
                    Command::Release => held = false,
                    Command::Stop => {
                        self.publish();
                        self.driver.close_all();
                        return;
                    }
                }
            }
            if held {
                // Jobs only: wait for the next command (or the release) on the eventfd.
                let _ = wait_readable(&[self.wake.as_raw_fd()], SLEEP_MS);
                let _ = self.wake.read();
                continue;
            }
            let work = self.poll_once();
            let sleep = idle.after_poll(work, !self.driver.ports().is_empty());
            // One clock read per pass for both periods.
            let now = Instant::now();
            if now - last_publish >= Duration::from_secs(1) {
                self.publish();
                (last_publish, last_refresh) = (now, now);
            } else if now - last_refresh >= Duration::from_millis(100) {
                // The kernel's own drop counters every 100 ms (a getsockopt per port): a
                // reader just after a burst sees its drops, not those of a second ago.
                self.refresh_stats();
                last_refresh = now;
            }
            if sleep {
                self.sleep();
            }
        }
    }

    /// One burst from every port, then each port's service; returns frames received.
    fn poll_once(&mut self) -> usize {
        let fib = self.reader.current();
        let mut work = 0;
        let mut rx = [Packet::default(); BURST];
        for i in 0..self.driver.ports().len() {
            let r = self.driver.receive(i, &mut rx);
            if r.is_empty() {
                continue;
            }
            let n = r.frames + r.supers;
            work += n;
            let t0 = Instant::now();
            self.driver.forward(fib, r.ingress, &rx[..r.frames]);
            let _ = self.latency.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1));
            let _ = self.burst.record(n as u64);
        }
        self.driver.service();
        work
    }

    fn sleep(&mut self) {
        let mut waiting = false;
        for p in self.driver.ports_mut() {
            waiting |= p.prepare_sleep();
        }
        if !waiting {
            let mut fds: Vec<RawFd> = self.driver.ports().iter().filter_map(Port::wait_fd).collect();
            fds.push(self.wake.as_raw_fd());
            if let Err(e) = wait_readable(&fds, SLEEP_MS) {
                tracing::warn!(worker = self.index, error = %e, "poll failed");
            }
            let _ = self.wake.read();
        }
        for p in self.driver.ports_mut() {
            p.after_sleep();
        }
    }

    fn publish(&mut self) {
        self.shared.latency.store(Arc::new(self.latency.clone()));
        self.shared.burst.store(Arc::new(self.burst.clone()));
        self.refresh_stats();
    }

    fn refresh_stats(&self) {
        for p in self.driver.ports() {
            p.refresh_stats();
        }
    }
}
