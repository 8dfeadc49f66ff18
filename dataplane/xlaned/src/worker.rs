//! A worker: one pinned thread that owns a UMEM and the sockets of the port queues it
//! serves, and runs RX burst → pipeline → TX until told to stop.
//!
//! Ports are added and removed by commands from the control thread (the worker owns
//! the UMEM, so only it may touch the sockets); an eventfd wakes a sleeping worker.
//!
//! A vhost-user port (a VM-based pod) has no socket: the workers use the guest's rings
//! themselves. One worker reads the guest's frames straight into UMEM frames and runs
//! them through the pipeline; every worker may write frames into the guest's receive
//! ring (one copy out of the UMEM, as guest memory is not the UMEM). When
//! idle for a run of empty polls a worker sleeps in poll(2) on its sockets (need_wakeup
//! mode), so an idle node costs ~0 CPU; with busy-poll it keeps spinning.

use arc_swap::ArcSwap;
use arrayvec::ArrayVec;
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use nix::sys::eventfd::EventFd;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use xlane_engine::{BURST, CoreCounters, Frame, Pipeline, Verdict};
use xlane_fib::{FibHandle, PortId};
use xlane_vhost::backend::PortIo;
use xlane_xdp::attach::XdpAttachment;
use xlane_xdp::xsk::{BindMode, RxFrame, SocketStats, Umem, UmemSettings, XskPort, wait_readable};

/// Empty polls before a non-busy worker sleeps.
const IDLE_SPINS: u32 = 2_000;
/// Longest sleep (also the period of statistics refresh while idle).
const SLEEP_MS: i32 = 200;
/// Wakeups per TX flush: copy mode sends 32 descriptors per wakeup, so 8 cover a
/// burst of 64 with room for backlog.
const TX_FLUSH_WAKEUPS: u32 = 8;

/// Per-port counters, written by one worker (relaxed load + store), read by control.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames received.
    pub rx: AtomicU64,
    /// Frames transmitted.
    pub tx: AtomicU64,
    /// Frames dropped on the way out: TX ring (or the guest's queue) full, or no free
    /// UMEM frame to copy a guest's frame into.
    pub tx_ring_full: AtomicU64,
    /// Kernel socket statistics, refreshed about once a second.
    pub kernel: ArcSwap<SocketStats>,
}

fn bump(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.store(c.load(Relaxed) + n, Relaxed);
    }
}

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

fn new_latency() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("static bounds")
}

fn new_burst() -> Histogram<u64> {
    Histogram::new_with_bounds(1, BURST as u64, 2).expect("static bounds")
}

impl WorkerShared {
    fn new() -> Self {
        Self {
            counters: Arc::new(CoreCounters::default()),
            latency: ArcSwap::from_pointee(new_latency()),
            burst: ArcSwap::from_pointee(new_burst()),
        }
    }
}

/// What a port serves, as the worker needs it.
#[derive(Debug)]
pub struct PortSpec {
    /// Pipeline port id.
    pub id: PortId,
    /// Interface.
    pub ifname: String,
    /// Queues this worker binds.
    pub queues: Vec<u32>,
    /// The interface's XDP program (its XSKMAP receives our sockets).
    pub attach: Arc<XdpAttachment>,
    /// Frames to keep in each queue's fill ring.
    pub fill_target: u32,
    /// Counters.
    pub stats: Arc<PortStats>,
}

/// A vhost-user port, as a worker needs it.
#[derive(Debug)]
pub struct VhostSpec {
    /// Pipeline port id.
    pub id: PortId,
    /// The queues shared with the port's backend.
    pub io: Arc<PortIo>,
    /// Whether this worker takes the guest's frames (exactly one worker does).
    pub poll_rx: bool,
    /// Counters.
    pub stats: Arc<PortStats>,
}

/// Commands from the control thread.
#[derive(Debug)]
pub enum Command {
    /// Bind sockets on a port's queues; replies whether they are zero-copy.
    AddPort(PortSpec, Sender<Result<bool, String>>),
    /// Serve a vhost-user port.
    AddVhost(VhostSpec, Sender<()>),
    /// Close a port's sockets (its traffic falls back to the kernel).
    RemovePort(PortId, Sender<()>),
    /// Exit the loop.
    Stop,
}

/// The control thread's handle on a worker.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    tx: Sender<Command>,
    wake: Arc<EventFd>,
    /// Shared counters and histograms.
    pub shared: Arc<WorkerShared>,
}

impl WorkerHandle {
    /// Send a command and wake the worker.
    pub fn send(&self, cmd: Command) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

struct VPort {
    spec: VhostSpec,
    /// Frames from other ports to copy into the guest's queue after the current burst.
    pending: ArrayVec<(RxFrame, u32, u32), BURST>,
}

/// Where a port id's frames go.
#[derive(Debug, Clone, Copy)]
enum Dest {
    /// Index into the worker's sockets.
    Xsk(usize),
    /// Index into the worker's vhost-user ports.
    Vhost(usize),
}

struct WPort {
    id: PortId,
    xsk: XskPort,
    stats: Arc<PortStats>,
    fill_target: u32,
    _attach: Arc<XdpAttachment>,
}

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// UMEM geometry.
    pub umem: UmemSettings,
    /// Socket bind mode.
    pub bind: BindMode,
    /// Spin instead of sleeping when idle.
    pub busy_poll: bool,
    /// Core to pin to.
    pub core: Option<usize>,
}

/// Start a worker thread.
///
/// # Errors
/// UMEM creation or thread spawn failure.
pub fn spawn(
    index: usize,
    cfg: WorkerConfig,
    fib: &FibHandle,
) -> anyhow::Result<(WorkerHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    // The UMEM holds raw pointers into its mapping and is not Send: the worker creates
    // it on its own thread and reports whether that worked.
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
        let umem = match Umem::new(cfg.umem) {
            Ok(u) => {
                let _ = ready_tx.send(Ok(()));
                u
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        let mut w = Worker {
            index,
            umem,
            ports: Vec::new(),
            vports: Vec::new(),
            by_id: Vec::new(),
            pending: Vec::new(),
            pipeline: Pipeline::new(Arc::clone(&shared.counters)),
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

struct Worker {
    index: usize,
    // Ports before the UMEM: their sockets must close before it is unregistered.
    ports: Vec<WPort>,
    umem: Umem,
    vports: Vec<VPort>,
    /// PortId → where frames for that port go (for a socket: the one this worker
    /// transmits on).
    by_id: Vec<Option<Dest>>,
    /// Per local port: frames to transmit after the current burst.
    pending: Vec<ArrayVec<(RxFrame, u32, u32), BURST>>,
    pipeline: Pipeline,
    reader: xlane_fib::FibReader,
    cmds: Receiver<Command>,
    wake: Arc<EventFd>,
    cfg: WorkerConfig,
    shared: Arc<WorkerShared>,
    latency: Histogram<u64>,
    burst: Histogram<u64>,
}

impl Worker {
    fn run(&mut self) {
        let mut idle = 0u32;
        let mut last_publish = Instant::now();
        loop {
            while let Ok(cmd) = self.cmds.try_recv() {
                if !self.command(cmd) {
                    self.publish();
                    return;
                }
            }
            let work = self.poll_once();
            if work > 0 {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
            }
            if last_publish.elapsed() >= Duration::from_secs(1) {
                self.publish();
                last_publish = Instant::now();
            }
            if idle >= IDLE_SPINS && !self.cfg.busy_poll {
                self.sleep();
                idle = 0;
            } else if idle >= IDLE_SPINS && self.ports.is_empty() && self.vports.is_empty() {
                // Busy-poll with nothing to poll: wait for a command instead of burning a core.
                self.sleep();
                idle = 0;
            }
        }
    }

    fn sleep(&mut self) {
        // Guests kick their rings only when asked; if one queued frames meanwhile, poll on.
        let mut armed = false;
        for v in self.vports.iter().filter(|v| v.spec.poll_rx) {
            armed |= v.spec.io.arm_guest_kick();
        }
        if armed {
            self.disarm_guests();
            return;
        }
        let mut fds: Vec<RawFd> = self.ports.iter().map(|p| p.xsk.poll_fd()).collect();
        fds.extend(self.vports.iter().filter(|v| v.spec.poll_rx).map(|v| v.spec.io.ready_fd()));
        fds.push(self.wake.as_raw_fd());
        // Before sleeping, make sure the kernel has frames to receive into and knows it.
        for p in &mut self.ports {
            if p.xsk.fill_needs_wakeup() {
                p.xsk.kick_tx();
            }
        }
        if let Err(e) = wait_readable(&fds, SLEEP_MS) {
            tracing::warn!(worker = self.index, error = %e, "poll failed");
        }
        let _ = self.wake.read();
        self.disarm_guests();
    }

    /// Polling again: guests need not kick.
    fn disarm_guests(&self) {
        for v in self.vports.iter().filter(|v| v.spec.poll_rx) {
            v.spec.io.clear_ready();
            v.spec.io.disarm_guest_kick();
        }
    }

    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::AddPort(spec, reply) => {
                let r = self.add_port(spec);
                let _ = reply.send(r);
            }
            Command::AddVhost(spec, reply) => {
                tracing::debug!(worker = self.index, port = %spec.id, poll_rx = spec.poll_rx, "vhost-user port added");
                self.vports.push(VPort { spec, pending: ArrayVec::new() });
                self.reindex();
                let _ = reply.send(());
            }
            Command::RemovePort(id, reply) => {
                self.remove_port(id);
                let _ = reply.send(());
            }
            Command::Stop => return false,
        }
        true
    }

    fn add_port(&mut self, spec: PortSpec) -> Result<bool, String> {
        // A port whose fill ring cannot be stocked would attach and silently receive
        // nothing: refuse it with the remedy instead.
        let queues = u32::try_from(spec.queues.len()).unwrap_or(u32::MAX);
        let needed = spec.fill_target.saturating_mul(queues) as usize + free_reserve(self.ports.len() + 1);
        let free = self.umem.free_frames();
        if free < needed {
            return Err(format!(
                "UMEM exhausted: {free} free frames, port {} needs {needed}; start xlaned with a larger --umem-frames",
                spec.ifname
            ));
        }
        let mut opened = Vec::new();
        for &q in &spec.queues {
            let mut xsk = self.umem.open_port(&spec.ifname, q, self.cfg.bind).map_err(|e| e.to_string())?;
            self.umem.refill(&mut xsk, spec.fill_target, 0);
            spec.attach
                .insert_socket(q, xsk.fd())
                .map_err(|e| format!("XSKMAP insert for {} queue {q}: {e}", spec.ifname))?;
            opened.push(xsk);
        }
        let zero_copy = opened.first().is_some_and(XskPort::zero_copy);
        for xsk in opened {
            self.ports.push(WPort {
                id: spec.id,
                xsk,
                stats: Arc::clone(&spec.stats),
                fill_target: spec.fill_target,
                _attach: Arc::clone(&spec.attach),
            });
            self.pending.push(ArrayVec::new());
        }
        self.reindex();
        tracing::debug!(worker = self.index, port = %spec.id, ifname = %spec.ifname, "port added");
        Ok(zero_copy)
    }

    fn remove_port(&mut self, id: PortId) {
        let mut i = 0;
        while i < self.ports.len() {
            if self.ports[i].id == id {
                let p = self.ports.remove(i);
                self.pending.remove(i);
                let _ = p._attach.remove_socket(p.xsk.queue());
                self.umem.close_port(p.xsk);
            } else {
                i += 1;
            }
        }
        self.vports.retain(|v| v.spec.id != id);
        self.reindex();
    }

    fn reindex(&mut self) {
        self.by_id.clear();
        let xsk = self.ports.iter().enumerate().map(|(i, p)| (p.id, Dest::Xsk(i)));
        let vhost = self.vports.iter().enumerate().map(|(i, v)| (v.spec.id, Dest::Vhost(i)));
        for (id, dest) in xsk.chain(vhost) {
            let k = usize::from(id.0);
            if self.by_id.len() <= k {
                self.by_id.resize(k + 1, None);
            }
            if self.by_id[k].is_none() {
                self.by_id[k] = Some(dest);
            }
        }
    }

    /// One pass over every port; returns frames received.
    fn poll_once(&mut self) -> usize {
        let Self { ports, vports, umem, by_id, pending, pipeline, reader, latency, burst, .. } = self;
        let fib = reader.current();
        let mut work = 0;
        let mut rx = [RxFrame { addr: 0, len: 0 }; BURST];
        for pi in 0..ports.len() {
            umem.reap_completions(&mut ports[pi].xsk);
            let n = umem.receive(&mut ports[pi].xsk, &mut rx);
            if n == 0 {
                continue;
            }
            // Give the kernel new frames at once: a fill ring left short while other
            // ports are processed is where frames get dropped under load.
            let (level, target) = (Umem::fill_level(&ports[pi].xsk), ports[pi].fill_target);
            if level < target {
                umem.refill(&mut ports[pi].xsk, target - level, BURST);
            }
            work += n;
            let t0 = Instant::now();
            bump(&ports[pi].stats.rx, n as u64);
            let ingress = ports[pi].id;
            Out { ports, vports, umem, by_id, pending }.forward(pipeline, fib, ingress, &rx[..n]);
            let _ = latency.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1));
            let _ = burst.record(n as u64);
        }
        for vi in 0..vports.len() {
            if !vports[vi].spec.poll_rx {
                continue;
            }
            // The guest's frames: one copy out of guest memory straight into UMEM frames
            // (headroom kept for encapsulation), then the path of a socket's frames.
            // Buffers only for what the guest queued: an idle guest costs a ring read.
            let io = Arc::clone(&vports[vi].spec.io);
            let waiting = io.guest_frames_waiting().min(BURST);
            if waiting == 0 {
                continue;
            }
            let mut fresh = [RxFrame { addr: 0, len: 0 }; BURST];
            let mut k = 0;
            while k < waiting
                && let Some(f) = umem.alloc_with(GUEST_HEADROOM, &[])
            {
                fresh[k] = f;
                k += 1;
            }
            let (n, lens) = umem.frames_mut(&fresh[..k], |bufs| {
                let mut sink = UmemSink { bufs, next: 0, lens: [0; BURST] };
                let _ = io.drain_from_guest(&mut sink, k);
                (sink.next, sink.lens)
            });
            for f in &fresh[n..k] {
                umem.release(*f);
            }
            if n == 0 {
                continue;
            }
            work += n;
            let t0 = Instant::now();
            for i in 0..n {
                rx[i] = RxFrame { addr: fresh[i].addr, len: lens[i] };
            }
            bump(&vports[vi].spec.stats.rx, n as u64);
            let ingress = vports[vi].spec.id;
            Out { ports, vports, umem, by_id, pending }.forward(pipeline, fib, ingress, &rx[..n]);
            let _ = latency.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1));
            let _ = burst.record(n as u64);
        }
        // Keep every fill ring stocked; leave a reserve so TX completions lag safely.
        let reserve = free_reserve(ports.len());
        for p in ports.iter_mut() {
            let level = Umem::fill_level(&p.xsk);
            if level < p.fill_target {
                umem.refill(&mut p.xsk, p.fill_target - level, reserve);
            }
        }
        work
    }

    fn publish(&mut self) {
        self.shared.latency.store(Arc::new(self.latency.clone()));
        self.shared.burst.store(Arc::new(self.burst.clone()));
        for p in &self.ports {
            if let Ok(s) = p.xsk.stats() {
                p.stats.kernel.store(Arc::new(s));
            }
        }
    }
}

/// Headroom in front of a guest's frame in its UMEM frame: room to encapsulate.
const GUEST_HEADROOM: u32 = 256;

/// A guest's frames read straight into lent UMEM frames.
struct UmemSink<'a, 'b> {
    bufs: &'a mut [(&'b mut [u8], usize)],
    next: usize,
    lens: [u32; BURST],
}

impl xlane_vhost::net::FrameSink for UmemSink<'_, '_> {
    fn buffer(&mut self) -> Option<&mut [u8]> {
        let (buf, off) = self.bufs.get_mut(self.next)?;
        Some(&mut buf[*off..])
    }

    fn commit(&mut self, len: usize) {
        self.lens[self.next] = u32::try_from(len).expect("a frame fits a UMEM frame");
        self.next += 1;
    }
}

/// Where a burst's frames go: the worker's sockets and vhost-user ports.
struct Out<'a> {
    ports: &'a mut [WPort],
    vports: &'a mut [VPort],
    umem: &'a mut Umem,
    by_id: &'a [Option<Dest>],
    pending: &'a mut [ArrayVec<(RxFrame, u32, u32), BURST>],
}

impl Out<'_> {
    /// Run application-owned frames `rx` from `ingress` through the pipeline and send
    /// each where its verdict says (dropped frames go back to the free list).
    fn forward(&mut self, pipeline: &mut Pipeline, fib: &xlane_fib::Fib, ingress: PortId, rx: &[RxFrame]) {
        let n = rx.len();
        let mut verdicts = [Verdict::Drop(xlane_engine::DropReason::UnknownPort); BURST];
        let mut placed = [(0u32, 0u32); BURST];
        self.umem.frames_mut(rx, |bufs| {
            let mut frames: ArrayVec<Frame<'_>, BURST> = ArrayVec::new();
            for ((buf, off), fr) in bufs.iter_mut().zip(rx) {
                frames.push(Frame::new(buf, *off, fr.len as usize).expect("frames lie inside their buffers"));
            }
            pipeline.process(fib, ingress, &mut frames, &mut verdicts[..n]);
            for (p, f) in placed.iter_mut().zip(&frames) {
                *p = span(f);
            }
        });
        for i in 0..n {
            let out = (rx[i], placed[i].0, placed[i].1);
            match verdicts[i] {
                Verdict::Tx(dst) => match self.by_id.get(usize::from(dst.0)).copied().flatten() {
                    Some(Dest::Xsk(k)) => self.pending[k].push(out),
                    Some(Dest::Vhost(v)) => self.vports[v].pending.push(out),
                    None => self.umem.release(rx[i]),
                },
                Verdict::Drop(_) => self.umem.release(rx[i]),
            }
        }
        transmit_pending(self.ports, self.umem, self.pending);
        copy_to_guests(self.vports, self.umem);
    }
}

/// Where a processed frame lies in its buffer: (offset, length).
fn span(f: &Frame<'_>) -> (u32, u32) {
    (u32::try_from(f.head()).expect("< frame size"), u32::try_from(f.len()).expect("< frame size"))
}

/// Queue each port's pending frames on its TX ring and kick the kernel; frames that do
/// not fit are dropped (counted).
fn transmit_pending(ports: &mut [WPort], umem: &mut Umem, pending: &mut [ArrayVec<(RxFrame, u32, u32), BURST>]) {
    for (k, q) in pending.iter_mut().enumerate() {
        if q.is_empty() {
            continue;
        }
        let mut sent = umem.transmit(&mut ports[k].xsk, q);
        if sent < q.len() {
            // Ring full: let the kernel drain it, take back completed frames, retry.
            ports[k].xsk.flush_tx(TX_FLUSH_WAKEUPS);
            umem.reap_completions(&mut ports[k].xsk);
            sent += umem.transmit(&mut ports[k].xsk, &q[sent..]);
        }
        for &(fr, _, _) in &q[sent..] {
            umem.release(fr);
        }
        bump(&ports[k].stats.tx, sent as u64);
        bump(&ports[k].stats.tx_ring_full, (q.len() - sent) as u64);
        q.clear();
        ports[k].xsk.flush_tx(TX_FLUSH_WAKEUPS);
    }
}

/// Copy each vhost-user port's pending frames to its guest (straight into the guest's
/// receive ring once it has posted buffers) and free the UMEM frames.
fn copy_to_guests(vports: &mut [VPort], umem: &mut Umem) {
    for v in vports.iter_mut().filter(|v| !v.pending.is_empty()) {
        let frames: ArrayVec<RxFrame, BURST> = v.pending.iter().map(|&(fr, _, _)| fr).collect();
        let io = &v.spec.io;
        let taken = umem.frames_mut(&frames, |bufs| {
            io.send_burst_to_guest(
                bufs.iter()
                    .zip(&v.pending)
                    .map(|((buf, _), &(_, head, len))| &buf[head as usize..(head + len) as usize]),
            )
        });
        for fr in frames {
            umem.release(fr);
        }
        bump(&v.spec.stats.tx, taken);
        bump(&v.spec.stats.tx_ring_full, v.pending.len() as u64 - taken);
        v.pending.clear();
    }
}

/// Frames kept off the fill rings so completions can lag: a burst per port, capped so a
/// node with a hundred pods does not park thousands of frames.
fn free_reserve(ports: usize) -> usize {
    BURST * ports.clamp(1, 16)
}
