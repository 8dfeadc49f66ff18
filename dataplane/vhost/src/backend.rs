//! The vhost-user-net backend: one per VM-based pod, serving its unix socket.
//!
//! The dataplane and a backend share a [`PortIo`]. From the guest, the dataplane thread
//! reads the guest's transmit ring itself (shared on the guest's first kick), one copy
//! into its own buffers; the backend's thread only turns the guest's kicks into a
//! wake-up while that thread sleeps. To the guest, a dataplane thread writes its frames
//! straight into the guest's receive ring (shared once the guest has posted buffers),
//! under the ring's lock; only frames that find no buffer, or arrive behind such frames,
//! go through a lock-free bounded queue of preallocated buffers (no allocation per
//! packet) to the backend's thread, which writes them when the guest posts more. Guest
//! memory is not the dataplane's UMEM, so one copy each way is inherent to vhost-user.

use crate::net::{self, FrameSink, MAX_FRAME, RxError};
use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT as _;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend as _, GuestMemoryMmap, GuestMemoryRegion as _,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Receive queue (to the guest).
const RX_QUEUE: u16 = 0;
/// Transmit queue (from the guest).
const TX_QUEUE: u16 = 1;
/// The event id of [`PortIo::wake`]: ids up to the queue count are the library's.
pub(crate) const WAKE_EVENT: u16 = 3;
/// The event id of the retry timer, armed while a frame waits for guest buffers.
pub(crate) const RETRY_EVENT: u16 = 4;
/// How often to look for guest buffers while a frame waits: a kick the guest sent
/// before its ring was enabled is lost, and a driver that posted all its buffers at
/// start may not kick again until one is used.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(1);
/// Ring size offered.
const QUEUE_SIZE: usize = 1024;

/// One frame on its way to the guest.
#[derive(Debug)]
pub struct Frame {
    len: usize,
    data: Box<[u8; MAX_FRAME]>,
}

impl Frame {
    fn new() -> Self {
        Self { len: 0, data: Box::new([0; MAX_FRAME]) }
    }

    /// The frame's bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// Counters of one vhost-user port.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames from the guest handed to the dataplane.
    pub from_guest: AtomicU64,
    /// Frames written into the guest.
    pub to_guest: AtomicU64,
    /// Chains the frontend got back unusable.
    pub malformed: AtomicU64,
    /// Frames dropped: the guest had no receive buffers, the queue to it was full, or
    /// the dataplane had no buffer for a frame from it.
    pub dropped: AtomicU64,
    /// Frontend connections accepted.
    pub connections: AtomicU64,
    /// Whether a frontend is connected now.
    pub connected: AtomicBool,
}

/// A port's counters as values: what a handover carries to the next process.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterValues {
    /// [`PortCounters::from_guest`].
    pub from_guest: u64,
    /// [`PortCounters::to_guest`].
    pub to_guest: u64,
    /// [`PortCounters::malformed`].
    pub malformed: u64,
    /// [`PortCounters::dropped`].
    pub dropped: u64,
    /// [`PortCounters::connections`].
    pub connections: u64,
}

impl PortCounters {
    /// The counts now.
    #[must_use]
    pub fn values(&self) -> CounterValues {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterValues {
            from_guest: get(&self.from_guest),
            to_guest: get(&self.to_guest),
            malformed: get(&self.malformed),
            dropped: get(&self.dropped),
            connections: get(&self.connections),
        }
    }

    /// Add `v` (counted by the process this port was taken over from).
    pub fn add(&self, v: &CounterValues) {
        let add = |c: &AtomicU64, n| c.fetch_add(n, Ordering::Relaxed);
        add(&self.from_guest, v.from_guest);
        add(&self.to_guest, v.to_guest);
        add(&self.malformed, v.malformed);
        add(&self.dropped, v.dropped);
        add(&self.connections, v.connections);
    }
}

/// The guest's transmit ring and memory, shared with the dataplane once the guest has
/// kicked it: the dataplane thread reads frames straight out of the ring (one copy, into
/// its own buffers), with no thread or queue in between — as DPDK's vhost does.
struct GuestTx {
    vring: VringRwLock,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

/// The guest's receive ring and memory, shared with the dataplane once the guest has
/// posted buffers: a worker writes its frames straight in (one copy, out of its own
/// buffers), under the ring's lock, which the backend thread also takes.
struct GuestRx {
    vring: VringRwLock,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    mergeable: bool,
}

/// What the dataplane and a backend share.
pub struct PortIo {
    guest_tx: ArcSwapOption<GuestTx>,
    guest_rx: ArcSwapOption<GuestRx>,
    /// Frames queued for the backend thread and not yet written or dropped: while any
    /// wait, later frames queue behind them (a flow's frames stay in order).
    pub(crate) backlog: AtomicUsize,
    to_guest: ArrayQueue<Frame>,
    pool: ArrayQueue<Frame>,
    /// Written by the dataplane when frames for the guest are queued.
    pub(crate) wake: EventFd,
    /// Written by the backend when the guest kicked its transmit ring.
    ready: EventFd,
    /// Counters.
    pub counters: PortCounters,
}

impl PortIo {
    /// A queue of `capacity` frames to the guest, its buffers allocated now: twice as
    /// many, since frames also sit outside the queue (the one the backend keeps while
    /// the guest has no buffer for it, one per worker in the middle of a push).
    ///
    /// # Errors
    /// The eventfds cannot be created.
    pub fn new(capacity: usize) -> io::Result<Arc<Self>> {
        let pool = ArrayQueue::new(capacity * 2);
        for _ in 0..capacity * 2 {
            let _ = pool.push(Frame::new());
        }
        Ok(Arc::new(Self {
            guest_tx: ArcSwapOption::empty(),
            guest_rx: ArcSwapOption::empty(),
            backlog: AtomicUsize::new(0),
            to_guest: ArrayQueue::new(capacity),
            pool,
            wake: EventFd::new(EFD_NONBLOCK)?,
            ready: EventFd::new(EFD_NONBLOCK)?,
            counters: PortCounters::default(),
        }))
    }

    fn count_drop(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Queue a copy of `bytes` for the backend thread, without waking it; false if it
    /// was dropped.
    fn push_to_guest(&self, bytes: &[u8]) -> bool {
        let Some(mut f) = self.pool.pop() else {
            self.count_drop();
            return false;
        };
        let n = bytes.len().min(MAX_FRAME);
        f.data[..n].copy_from_slice(&bytes[..n]);
        f.len = n;
        self.backlog.fetch_add(1, Ordering::AcqRel);
        match self.to_guest.push(f) {
            Ok(()) => true,
            Err(f) => {
                self.backlog.fetch_sub(1, Ordering::AcqRel);
                let _ = self.pool.push(f);
                self.count_drop();
                false
            }
        }
    }

    /// Copy a burst of frames to the guest; how many were taken (written, or queued
    /// behind earlier ones); the rest are counted drops. Once the guest has posted
    /// receive buffers they are written straight into its ring, one used-index update
    /// for the burst, and what finds no buffer is dropped, as by a NIC whose receive
    /// ring is full (queueing it would hand the dataplane's overload to the backend
    /// thread, on the same core). Before that, and while frames queued then still wait,
    /// frames queue for the backend thread, which writes them when the guest posts
    /// buffers. Any thread may call this.
    pub fn send_burst_to_guest<'a>(&self, frames: impl IntoIterator<Item = &'a [u8]>) -> u64 {
        let mut frames = frames.into_iter().peekable();
        let mut written = 0u64;
        if let Some(rx) = self.guest_rx.load().as_ref() {
            let mem = rx.mem.memory();
            let (mut malformed, mut starved) = (0u64, false);
            let notify = {
                // The backend thread writes queued frames under this lock too: with the
                // backlog empty under it, nothing older can still be written after these.
                let mut state = rx.vring.get_mut();
                let q = state.get_queue_mut();
                // One look suffices: frames this thread queued earlier are all written
                // once it reads zero here (a flow comes through one thread).
                let mut burst = net::RxBurst::new(q, &*mem);
                if self.backlog.load(Ordering::Acquire) == 0 {
                    while let Some(f) = frames.peek() {
                        match burst.deliver(q, &*mem, f, rx.mergeable) {
                            Ok(()) => written += 1,
                            Err(RxError::NoBuffers) => {
                                starved = true;
                                break;
                            }
                            Err(RxError::Malformed | RxError::TooLarge) => malformed += 1,
                        }
                        frames.next();
                    }
                }
                burst.finish(q, &*mem)
            };
            self.counters.to_guest.fetch_add(written, Ordering::Relaxed);
            self.counters.malformed.fetch_add(malformed, Ordering::Relaxed);
            if notify {
                let _ = rx.vring.signal_used_queue();
            }
            if starved {
                self.counters.dropped.fetch_add(frames.count() as u64, Ordering::Relaxed);
                return written;
            }
        }
        let mut queued = 0u64;
        for f in frames {
            queued += u64::from(self.push_to_guest(f));
        }
        if queued > 0 {
            let _ = self.wake.write(1);
        }
        written + queued
    }

    /// [`send_burst_to_guest`](Self::send_burst_to_guest) for one frame: whether it
    /// was taken.
    pub fn send_to_guest(&self, bytes: &[u8]) -> bool {
        self.send_burst_to_guest([bytes]) == 1
    }

    /// Read up to `budget` frames the guest transmitted into `sink` (the one copy out of
    /// guest memory) and give the guest its buffers back. Only one thread may call this
    /// for a port (the one that owns its receive side).
    pub fn drain_from_guest(&self, sink: &mut impl FrameSink, budget: usize) -> net::Tally {
        let guard = self.guest_tx.load();
        let Some(tx) = guard.as_ref() else { return net::Tally::default() };
        let mem = tx.mem.memory();
        let tally = {
            let mut state = tx.vring.get_mut();
            // Stopped by the frontend (GET_VRING_BASE) since this thread last looked.
            if !state.get_queue().ready() {
                return net::Tally::default();
            }
            net::drain_tx(state.get_queue_mut(), &*mem, sink, budget)
        };
        let c = &self.counters;
        c.from_guest.fetch_add(tally.frames, Ordering::Relaxed);
        c.malformed.fetch_add(tally.malformed, Ordering::Relaxed);
        c.dropped.fetch_add(tally.dropped, Ordering::Relaxed);
        // An interrupt only if the guest asked for one (a polling guest does not).
        if tally.notify {
            let _ = tx.vring.signal_used_queue();
        }
        tally
    }

    /// Frames the guest has queued on its transmit ring and the dataplane has not read
    /// yet (0 before the guest's first kick, or for a ring not set up): lets the
    /// dataplane take buffers for exactly that many.
    #[must_use]
    pub fn guest_frames_waiting(&self) -> usize {
        let guard = self.guest_tx.load();
        let Some(tx) = guard.as_ref() else { return 0 };
        let mem = tx.mem.memory();
        let state = tx.vring.get_ref();
        let q = state.get_queue();
        if !q.ready() {
            return 0;
        }
        q.avail_idx(&*mem, Ordering::Acquire).map_or(0, |avail| usize::from((avail - Wrapping(q.next_avail())).0))
    }

    /// Before the dataplane thread sleeps: ask the guest to kick on its next frame (the
    /// kick makes [`ready_fd`](Self::ready_fd) readable). True if frames arrived
    /// meanwhile: do not sleep.
    #[must_use]
    pub fn arm_guest_kick(&self) -> bool {
        self.guest_tx.load().as_ref().is_some_and(|tx| tx.vring.enable_notification().unwrap_or(true))
    }

    /// The dataplane thread polls again: the guest need not kick.
    pub fn disarm_guest_kick(&self) {
        if let Some(tx) = self.guest_tx.load().as_ref() {
            let _ = tx.vring.disable_notification();
        }
    }

    /// Hand up to `max` frames from the guest to `f`; how many (for tests and tools:
    /// the dataplane uses [`drain_from_guest`](Self::drain_from_guest)).
    pub fn recv_from_guest(&self, max: usize, f: impl FnMut(&[u8])) -> usize {
        struct Each<F> {
            buf: Box<[u8; MAX_FRAME]>,
            f: F,
        }
        impl<F: FnMut(&[u8])> FrameSink for Each<F> {
            fn buffer(&mut self) -> Option<&mut [u8]> {
                Some(&mut self.buf[..])
            }
            fn commit(&mut self, len: usize) {
                (self.f)(&self.buf[..len]);
            }
        }
        let mut sink = Each { buf: Box::new([0; MAX_FRAME]), f };
        let mut n = 0;
        while n < max {
            let t = self.drain_from_guest(&mut sink, (max - n).min(256));
            if t.chains == 0 {
                break;
            }
            n += usize::try_from(t.frames).unwrap_or(usize::MAX);
        }
        n
    }

    /// Readable when the guest kicked its transmit ring (after
    /// [`arm_guest_kick`](Self::arm_guest_kick)): a sleeping dataplane thread polls it.
    #[must_use]
    pub fn ready_fd(&self) -> std::os::fd::RawFd {
        self.ready.as_raw_fd()
    }

    /// Reset [`ready_fd`](Self::ready_fd) before polling the ring again.
    pub fn clear_ready(&self) {
        let _ = self.ready.read();
    }
}

impl std::fmt::Debug for PortIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortIo").field("counters", &self.counters).finish_non_exhaustive()
    }
}

/// The vhost-user-net device of one pod.
pub struct NetBackend {
    io: Arc<PortIo>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    mac: [u8; 6],
    mtu: u16,
    event_idx: bool,
    mergeable: bool,
    /// A frame that found no guest buffer, delivered first on the next RX kick.
    pending: Option<Frame>,
    pub(crate) retry: TimerFd,
    /// The rings, once an event has shown them (a handover reads where they stand).
    vrings: Vec<VringRwLock>,
}

impl std::fmt::Debug for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("mac", &self.mac)
            .field("event_idx", &self.event_idx)
            .field("mergeable", &self.mergeable)
            .finish_non_exhaustive()
    }
}

impl NetBackend {
    /// A device with `mac` (what the guest should use; the pod's address is its) and
    /// `mtu` (the pod MTU: the overlay's 50 bytes less than the uplink's).
    ///
    /// # Errors
    /// The retry timer cannot be created.
    pub fn new(io: Arc<PortIo>, mac: [u8; 6], mtu: u16) -> io::Result<Self> {
        Ok(Self {
            io,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            mac,
            mtu: mtu.min(u16::try_from(MAX_FRAME - 18).expect("small")),
            event_idx: false,
            mergeable: false,
            pending: None,
            // Non-blocking: a frame delivered on the wake-up that came in the same epoll
            // batch disarms the timer and zeroes its count, and a blocking read of it
            // would then never return (with the backend locked, the frontend's next
            // request waits forever).
            retry: TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)
                .map_err(io::Error::from)?,
            vrings: Vec::new(),
        })
    }

    /// Keep the rings at first sight (this connection's first event): a handover reads
    /// where they stand. (Their used index needs nothing: the library takes it from
    /// guest memory at `SET_VRING_ADDR`, where the last writer left it.)
    fn adopt_rings(&mut self, vrings: &[VringRwLock]) {
        if self.vrings.is_empty() {
            self.vrings = vrings.to_vec();
        }
    }

    /// Where each ring the backend has seen stands: (queue, next available index),
    /// for its `SET_VRING_BASE` in a handover.
    pub(crate) fn bases(&self) -> Vec<(u32, u16)> {
        (0u32..).zip(&self.vrings).map(|(q, v)| (q, v.get_ref().get_queue().next_avail())).collect()
    }

    /// Drop the frames still waiting for the backend thread (a handover: this thread
    /// delivers nothing more), counted; how many.
    pub(crate) fn drop_waiting(&mut self) -> u64 {
        let mut n = 0;
        while let Some(f) = self.pending.take().or_else(|| self.io.to_guest.pop()) {
            self.io.count_drop();
            self.io.backlog.fetch_sub(1, Ordering::AcqRel);
            let _ = self.io.pool.push(f);
            n += 1;
        }
        n
    }

    /// The guest kicked its transmit ring: share the ring with the dataplane (once per
    /// connection) and wake it; it reads the frames itself.
    fn on_tx_kick(&self, vring: &VringRwLock) {
        if self.io.guest_tx.load().is_none() {
            self.io.guest_tx.store(Some(Arc::new(GuestTx { vring: vring.clone(), mem: self.mem.clone() })));
        }
        let _ = self.io.ready.write(1);
    }

    /// The guest posted receive buffers: share the ring with the dataplane (once per
    /// connection), which from then on writes its frames in itself.
    fn on_rx_kick(&self, vring: &VringRwLock) {
        if self.io.guest_rx.load().is_none() {
            let rx = GuestRx { vring: vring.clone(), mem: self.mem.clone(), mergeable: self.mergeable };
            self.io.guest_rx.store(Some(Arc::new(rx)));
        }
    }

    fn process_rx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let _ = self.io.wake.read();
        let mem = self.mem.memory();
        let mut delivered = 0u64;
        let mut notify = false;
        // One pass (and one used-index update) per round; a new round only when the
        // guest posted buffers while we asked it to kick.
        loop {
            let mut state = vring.get_mut();
            let q = state.get_queue_mut();
            let mut burst = net::RxBurst::new(q, &*mem);
            let mut starved = false;
            while let Some(frame) = self.pending.take().or_else(|| self.io.to_guest.pop()) {
                match burst.deliver(q, &*mem, frame.bytes(), self.mergeable) {
                    Ok(()) => {
                        delivered += 1;
                        self.io.backlog.fetch_sub(1, Ordering::AcqRel);
                        let _ = self.io.pool.push(frame);
                    }
                    Err(RxError::NoBuffers) => {
                        self.pending = Some(frame);
                        starved = true;
                        break;
                    }
                    Err(RxError::Malformed | RxError::TooLarge) => {
                        self.io.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        self.io.backlog.fetch_sub(1, Ordering::AcqRel);
                        let _ = self.io.pool.push(frame);
                    }
                }
            }
            notify |= burst.finish(q, &*mem);
            drop(state);
            // Out of buffers: ask for a kick when the guest posts some (with EVENT_IDX
            // this moves avail_event; without it, notifications are already on). If
            // buffers arrived meanwhile, go on at once.
            if !(starved && self.event_idx && vring.enable_notification().map_err(io::Error::other)?) {
                break;
            }
        }
        self.io.counters.to_guest.fetch_add(delivered, Ordering::Relaxed);
        // Look again soon while a frame waits; stop looking once none does.
        if self.pending.is_some() {
            self.retry.set(Expiration::Interval(RETRY_EVERY.into()), TimerSetTimeFlags::empty())?;
        } else {
            self.retry.unset()?;
        }
        if notify {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        // A frame still waiting for guest buffers when the frontend left: its buffer
        // goes back to the pool (the frame is a counted drop).
        if let Some(f) = self.pending.take() {
            self.io.count_drop();
            self.io.backlog.fetch_sub(1, Ordering::AcqRel);
            let _ = self.io.pool.push(f);
        }
        // The frontend is gone: the dataplane stops using its rings.
        self.io.guest_tx.store(None);
        self.io.guest_rx.store(None);
    }
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_MTU)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_net_config: mac[6], status (u16), max_virtqueue_pairs (u16), mtu.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&1u16.to_le_bytes()); // VIRTIO_NET_S_LINK_UP
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // A region larger than the file behind it maps fine, but touching its tail would
        // kill this process with SIGBUS: refuse such a table (the frontend is cut off).
        for region in mem.memory().iter() {
            if let Some(fo) = region.file_offset() {
                let file_len = fo.file().metadata()?.len();
                if fo.start().saturating_add(region.len()) > file_len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "memory region of {} bytes at offset {} of a {file_len}-byte file",
                            region.len(),
                            fo.start()
                        ),
                    ));
                }
            }
        }
        self.mem = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![0b11]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the library cannot stop the vring thread, and dropping the daemon
        // after a frontend leaves would wait for it forever (no reconnect).
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        self.adopt_rings(vrings);
        match device_event {
            TX_QUEUE => {
                self.on_tx_kick(&vrings[usize::from(TX_QUEUE)]);
                Ok(())
            }
            RX_QUEUE => {
                self.on_rx_kick(&vrings[usize::from(RX_QUEUE)]);
                self.process_rx(&vrings[usize::from(RX_QUEUE)])
            }
            WAKE_EVENT => self.process_rx(&vrings[usize::from(RX_QUEUE)]),
            RETRY_EVENT => {
                // Consume the expirations (none if a delivery just disarmed it), then
                // try again.
                let _ = self.retry.wait();
                self.process_rx(&vrings[usize::from(RX_QUEUE)])
            }
            other => Err(io::Error::other(format!("unknown event {other}"))),
        }
    }
}
