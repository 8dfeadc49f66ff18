//! The vhost-user-net backend: one per VM-based pod, serving its unix socket.
//!
//! Frames cross between the backend's thread and the dataplane through a [`PortIo`]:
//! lock-free bounded queues of preallocated frame buffers (no allocation per packet),
//! plus an eventfd that wakes the backend when frames for the guest are waiting. The
//! backend thread copies between guest memory and those buffers (guest memory is not
//! the dataplane's UMEM, so one copy each way is inherent to vhost-user).

use crate::net::{self, MAX_FRAME, RxError};
use crossbeam_queue::ArrayQueue;
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vhost::vhost_user::Listener;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend as _, GuestMemoryMmap, GuestMemoryRegion as _,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

/// Receive queue (to the guest).
const RX_QUEUE: u16 = 0;
/// Transmit queue (from the guest).
const TX_QUEUE: u16 = 1;
/// The event id of [`PortIo::wake`]: ids up to the queue count are the library's.
const WAKE_EVENT: u16 = 3;
/// The event id of the retry timer, armed while a frame waits for guest buffers.
const RETRY_EVENT: u16 = 4;
/// How often to look for guest buffers while a frame waits: a kick the guest sent
/// before its ring was enabled is lost, and a driver that posted all its buffers at
/// start may not kick again until one is used.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(1);
/// Ring size offered.
const QUEUE_SIZE: usize = 1024;

/// One frame buffer.
#[derive(Debug)]
pub struct Frame {
    len: usize,
    data: Box<[u8; MAX_FRAME]>,
}

impl Frame {
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
    /// Frames dropped: the guest had no receive buffers, or a queue was full.
    pub dropped: AtomicU64,
}

/// What the dataplane and a backend share.
#[derive(Debug)]
pub struct PortIo {
    from_guest: ArrayQueue<Frame>,
    to_guest: ArrayQueue<Frame>,
    pool: ArrayQueue<Frame>,
    wake: EventFd,
    /// Counters.
    pub counters: PortCounters,
}

impl PortIo {
    /// Queues of `capacity` frames each way, all buffers allocated now.
    ///
    /// # Errors
    /// The eventfd cannot be created.
    pub fn new(capacity: usize) -> io::Result<Arc<Self>> {
        let pool = ArrayQueue::new(capacity * 2);
        for _ in 0..capacity * 2 {
            let _ = pool.push(Frame { len: 0, data: Box::new([0; MAX_FRAME]) });
        }
        Ok(Arc::new(Self {
            from_guest: ArrayQueue::new(capacity),
            to_guest: ArrayQueue::new(capacity),
            pool,
            wake: EventFd::new(EFD_NONBLOCK)?,
            counters: PortCounters::default(),
        }))
    }

    fn fill(&self, bytes: &[u8]) -> Option<Frame> {
        let mut f = self.pool.pop()?;
        let n = bytes.len().min(MAX_FRAME);
        f.data[..n].copy_from_slice(&bytes[..n]);
        f.len = n;
        Some(f)
    }

    /// Queue a frame for the guest (copied); false if it was dropped (queue full).
    pub fn send_to_guest(&self, bytes: &[u8]) -> bool {
        let queued = self.fill(bytes).is_some_and(|f| match self.to_guest.push(f) {
            Ok(()) => true,
            Err(f) => {
                let _ = self.pool.push(f);
                false
            }
        });
        if queued {
            let _ = self.wake.write(1);
        } else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Hand up to `max` frames from the guest to `f`; how many.
    pub fn recv_from_guest(&self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(frame) = self.from_guest.pop() else { break };
            f(frame.bytes());
            let _ = self.pool.push(frame);
            n += 1;
        }
        n
    }
}

/// The vhost-user-net device of one pod.
pub struct NetBackend {
    io: Arc<PortIo>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    mac: [u8; 6],
    event_idx: bool,
    mergeable: bool,
    /// A frame that found no guest buffer, delivered first on the next RX kick.
    pending: Option<Frame>,
    retry: TimerFd,
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
    /// A device with `mac` (what the guest should use; the pod's address is its).
    ///
    /// # Errors
    /// The retry timer cannot be created.
    pub fn new(io: Arc<PortIo>, mac: [u8; 6]) -> io::Result<Self> {
        Ok(Self {
            io,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            mac,
            event_idx: false,
            mergeable: false,
            pending: None,
            retry: TimerFd::new()?,
        })
    }

    fn process_tx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let mem = self.mem.memory();
        loop {
            if self.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let tally = {
                let mut state = vring.get_mut();
                let io = &self.io;
                net::drain_tx(state.get_queue_mut(), &*mem, |bytes| {
                    match io.fill(bytes).map(|f| io.from_guest.push(f)) {
                        Some(Ok(())) => {}
                        Some(Err(f)) => {
                            let _ = io.pool.push(f);
                            io.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            io.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            };
            self.io.counters.from_guest.fetch_add(tally.frames, Ordering::Relaxed);
            self.io.counters.malformed.fetch_add(tally.malformed, Ordering::Relaxed);
            if tally.frames + tally.malformed > 0 && vring.needs_notification().map_err(io::Error::other)? {
                vring.signal_used_queue()?;
            }
            if !self.event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }

    fn process_rx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let _ = self.io.wake.read();
        let mem = self.mem.memory();
        let mut delivered = 0u64;
        while let Some(frame) = self.pending.take().or_else(|| self.io.to_guest.pop()) {
            let r = {
                let mut state = vring.get_mut();
                net::deliver_rx(state.get_queue_mut(), &*mem, frame.bytes(), self.mergeable)
            };
            match r {
                Ok(()) => {
                    delivered += 1;
                    let _ = self.io.pool.push(frame);
                }
                Err(RxError::NoBuffers) => {
                    self.pending = Some(frame);
                    // Ask for a kick when the guest posts buffers (with EVENT_IDX this
                    // moves avail_event; without it, notifications are already on). If
                    // buffers arrived meanwhile, go on at once.
                    if self.event_idx && vring.enable_notification().map_err(io::Error::other)? {
                        continue;
                    }
                    break;
                }
                Err(RxError::Malformed | RxError::TooLarge) => {
                    self.io.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    let _ = self.io.pool.push(frame);
                }
            }
        }
        self.io.counters.to_guest.fetch_add(delivered, Ordering::Relaxed);
        // Look again soon while a frame waits; stop looking once none does.
        if self.pending.is_some() {
            self.retry.reset(RETRY_EVERY, Some(RETRY_EVERY))?;
        } else {
            self.retry.clear()?;
        }
        if delivered > 0 && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
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
        config[10..12].copy_from_slice(&1500u16.to_le_bytes());
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
        match device_event {
            TX_QUEUE => self.process_tx(&vrings[usize::from(TX_QUEUE)]),
            RX_QUEUE | WAKE_EVENT => self.process_rx(&vrings[usize::from(RX_QUEUE)]),
            RETRY_EVENT => {
                // Consume the expirations, then try again.
                let _ = self.retry.wait();
                self.process_rx(&vrings[usize::from(RX_QUEUE)])
            }
            other => Err(io::Error::other(format!("unknown event {other}"))),
        }
    }
}

/// Serve the vhost-user socket at `path` for `io`, accepting a new frontend each time
/// the previous one goes away, until `stop` returns true between connections. Runs on
/// the calling thread.
///
/// # Errors
/// The socket cannot be created, or the daemon cannot start.
pub fn serve(path: PathBuf, io: &Arc<PortIo>, mac: [u8; 6], stop: impl Fn() -> bool) -> io::Result<()> {
    let mut listener = Listener::new(&path, true).map_err(io::Error::other)?;
    while !stop() {
        let backend = NetBackend::new(Arc::clone(io), mac)?;
        let retry_fd = backend.retry.as_raw_fd();
        let backend = Arc::new(std::sync::RwLock::new(backend));
        let mut daemon = VhostUserDaemon::new(
            format!("xlane-vhost-{}", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        for h in daemon.get_epoll_handlers() {
            h.register_listener(io.wake.as_raw_fd(), EventSet::IN, u64::from(WAKE_EVENT))?;
            h.register_listener(retry_fd, EventSet::IN, u64::from(RETRY_EVENT))?;
        }
        let started = daemon.start(&mut listener);
        started.map_err(|e| io::Error::other(e.to_string()))?;
        // Returns when the frontend disconnects (or misbehaves and is cut off).
        let _ = daemon.wait();
    }
    Ok(())
}
