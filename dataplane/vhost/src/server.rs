//! A vhost-user port's socket and the thread that serves it: one frontend after another,
//! each through a relay to a fresh `vhost-user-backend` daemon
//! around a [`NetBackend`].
//!
//! A handover ([`VhostUserPort::hand_over`], [`VhostUserPort::take_over`]) moves a port
//! to another process with its guest still connected: the serving thread stops between
//! two messages of the frontend (the library having answered every one before), the
//! backend's ring thread stops between two events, and the listening socket, the
//! frontend's connection and what defined it (memory table and ring descriptors
//! included) go to the new process, which tells its own library the same and kicks the
//! rings. The guest sees nothing: its rings, memory, kicks and interrupts are the same.

use crate::backend::{CounterValues, NetBackend, PortIo, RETRY_EVENT, WAKE_EVENT};
use crate::relay::Relay;
use crate::session::{ConnectionHandover, ConnectionState};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// How long a handover waits for the serving thread to stop between two messages.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a handover lets frames queued for the guest reach it first.
const BACKLOG_GRACE: Duration = Duration::from_millis(50);

/// A port handed over: its listening socket, its frontend's connection if one is
/// connected, and its counters.
#[derive(Debug)]
pub struct VhostHandover {
    /// The socket frontends connect to.
    pub listener: OwnedFd,
    /// The connected frontend, if any.
    pub connection: Option<ConnectionHandover>,
    /// The port's counts so far.
    pub counters: CounterValues,
}

/// A port stopped for a handover: it carries on when this is dropped (the handover
/// did not happen). After a handover that happened the process must exit without
/// dropping it, as xlaned does: the port's threads still hold the guest's rings.
#[derive(Debug)]
pub struct PausedPort {
    _resume: SyncSender<()>,
}

/// A handover's request to the serving thread.
struct PauseRequest {
    answer: SyncSender<io::Result<VhostHandover>>,
    resume: Receiver<()>,
}

/// How a handover reaches the serving thread wherever it waits (in accept, or in the
/// relay between two messages).
struct Pause {
    wake: EventFd,
    request: Mutex<Option<PauseRequest>>,
}

impl Pause {
    fn take(&self) -> Option<PauseRequest> {
        let _ = self.wake.read();
        self.request.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// A served vhost-user port: its socket, and the thread that accepts one frontend after
/// another on it (a restarted VM or testpmd reconnects). Dropping it cuts the frontend
/// off, stops the thread and removes the socket.
pub struct VhostUserPort {
    path: PathBuf,
    io: Arc<PortIo>,
    stop: Arc<AtomicBool>,
    /// The current connection's shutdown handle, to cut a frontend off on removal.
    conn: Arc<Mutex<Option<ShutdownHandle>>>,
    pause: Arc<Pause>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for VhostUserPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserPort").field("path", &self.path).finish_non_exhaustive()
    }
}

impl VhostUserPort {
    /// Create the socket at `path` (replacing a stale one) and serve it for `io`, with
    /// `mac` and `mtu` as the device's (see [`NetBackend::new`]).
    ///
    /// # Errors
    /// The socket cannot be created (missing directory, path too long, permissions, a
    /// file that is not a socket in the way).
    pub fn spawn(path: PathBuf, io: Arc<PortIo>, mac: [u8; 6], mtu: u16) -> io::Result<Self> {
        let context = |e: io::Error| io::Error::new(e.kind(), format!("vhost-user socket {}: {e}", path.display()));
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(context(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket")));
            }
            std::fs::remove_file(&path).map_err(context)?;
        }
        let public = UnixListener::bind(&path).map_err(context)?;
        Self::serve_on(path, public, io, (mac, mtu), None)
    }

    /// Serve the port another process handed over (`handover`, from
    /// [`hand_over`](Self::hand_over)) at `path` for `io`: its socket as it is, its
    /// frontend carried on (its state told to a new library, its rings kicked), its
    /// counters added to `io`'s.
    ///
    /// # Errors
    /// The serving thread cannot be started.
    pub fn take_over(
        path: PathBuf,
        io: Arc<PortIo>,
        mac: [u8; 6],
        mtu: u16,
        handover: VhostHandover,
    ) -> io::Result<Self> {
        io.counters.add(&handover.counters);
        let public = UnixListener::from(handover.listener);
        Self::serve_on(path, public, io, (mac, mtu), handover.connection)
    }

    fn serve_on(
        path: PathBuf,
        public: UnixListener,
        io: Arc<PortIo>,
        device: ([u8; 6], u16),
        inherited: Option<ConnectionHandover>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Arc::new(Mutex::new(None));
        let pause = Arc::new(Pause {
            wake: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            request: Mutex::new(None),
        });
        let thread = {
            let server = Server {
                public,
                path: path.clone(),
                io: Arc::clone(&io),
                device,
                stop: Arc::clone(&stop),
                conn: Arc::clone(&conn),
                pause: Arc::clone(&pause),
            };
            let name = format!("vhost-{}", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default());
            std::thread::Builder::new().name(name.chars().take(15).collect()).spawn(move || server.serve(inherited))?
        };
        Ok(Self { path, io, stop, conn, pause, thread: Some(thread) })
    }

    /// The socket's path.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The queues and counters shared with the dataplane.
    #[must_use]
    pub fn io(&self) -> &Arc<PortIo> {
        &self.io
    }

    /// Stop the port for a handover and say what the next process needs
    /// ([`take_over`](Self::take_over)); the port carries on when the [`PausedPort`] is
    /// dropped. Call it with the dataplane's workers stopped: they read and write the
    /// guest's rings themselves. Frames still queued for the guest after a short grace
    /// are dropped, counted.
    ///
    /// # Errors
    /// The serving thread did not stop in time (a frontend's message half sent), the
    /// frontend used a request a replay cannot repeat, or out of descriptors.
    pub fn hand_over(&self) -> io::Result<(VhostHandover, PausedPort)> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let (resume_tx, resume) = std::sync::mpsc::sync_channel(0);
        *self.pause.request.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(PauseRequest { answer, resume });
        self.pause.wake.write(1)?;
        match answered.recv_timeout(PAUSE_TIMEOUT) {
            Ok(Ok(h)) => Ok((h, PausedPort { _resume: resume_tx })),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                // Withdrawn; if the thread takes it after all, its answer finds no one
                // and it carries on.
                let _ = self.pause.take();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("vhost-user port {} did not stop", self.path.display()),
                ))
            }
        }
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Cut the current frontend off; a connection accepted after this sees `stop`
        // under the same lock and cuts itself off.
        if let Some(h) = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            h.shutdown();
        }
        // Unblock a thread waiting in accept(2) with one last connection.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the library accepts its end of a relayed connection: a socket in a directory
/// only this process's user may enter, so nothing else can reach the backend around
/// the relay. Removed on drop, as soon as the library has accepted: nothing of it is
/// left behind by a process that exits without destructors (a handover).
struct PrivateListener {
    listener: Listener,
    path: PathBuf,
    dir: PathBuf,
}

impl PrivateListener {
    fn new() -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xlane-vhost-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("backend.sock");
        let listener = Listener::new(&path, true).map_err(io::Error::other)?;
        Ok(Self { listener, path, dir })
    }
}

impl Drop for PrivateListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

type Daemon = VhostUserDaemon<Arc<RwLock<NetBackend>>>;

/// What the serving thread works with.
struct Server {
    public: UnixListener,
    path: PathBuf,
    io: Arc<PortIo>,
    device: ([u8; 6], u16),
    stop: Arc<AtomicBool>,
    conn: Arc<Mutex<Option<ShutdownHandle>>>,
    pause: Arc<Pause>,
}

impl Server {
    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Option<ShutdownHandle>> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serve frontends one after another until `stop`, each relayed to a fresh daemon;
    /// `inherited` first, if a handover brought one.
    fn serve(&self, mut inherited: Option<ConnectionHandover>) {
        let socket = self.path.display();
        loop {
            let (frontend, state) = match inherited.take() {
                Some(c) => (UnixStream::from(c.frontend), Some((c.state, c.fds))),
                None => match self.accept() {
                    Some(s) => (s, None),
                    None => continue,
                },
            };
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let (mut daemon, backend, library_end) = match self.daemon() {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(%socket, error = %e, "vhost-user port cannot serve");
                    return;
                }
            };
            {
                let mut slot = self.lock_conn();
                *slot = daemon.shutdown_handle();
                if self.stop.load(Ordering::SeqCst)
                    && let Some(h) = slot.as_ref()
                {
                    h.shutdown();
                }
            }
            let relay = match state {
                None => {
                    self.io.counters.connections.fetch_add(1, Ordering::Relaxed);
                    Ok(Relay::new(frontend, library_end))
                }
                Some((state, fds)) => Relay::take_over(frontend, library_end, state, fds).inspect(|r| {
                    tracing::info!(%socket, "vhost-user frontend taken over");
                    r.kick_rings();
                }),
            };
            self.io.counters.connected.store(true, Ordering::Relaxed);
            // Until the frontend disconnects, misbehaves, or the port is removed.
            let relayed =
                relay.and_then(|mut r| r.run(self.pause.wake.as_fd(), &mut |r| self.pause_relay(r, &backend)));
            let handled = daemon.wait();
            match (relayed, handled) {
                (Ok(()), Ok(())) => tracing::info!(%socket, "vhost-user frontend disconnected"),
                (Err(e), _) => tracing::warn!(%socket, error = %e, "vhost-user frontend cut off"),
                (_, Err(e)) => tracing::warn!(%socket, error = %e, "vhost-user frontend cut off"),
            }
            self.io.counters.connected.store(false, Ordering::Relaxed);
            *self.lock_conn() = None;
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// The next frontend; `None` after a failed accept or a handover that paused the
    /// port with none connected.
    fn accept(&self) -> Option<UnixStream> {
        let (incoming, paused) = {
            let mut fds = [
                PollFd::new(self.public.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.pause.wake.as_fd(), PollFlags::POLLIN),
            ];
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                return None;
            }
            let ready = fds.map(|f| f.revents().is_some_and(|r| !r.is_empty()));
            (ready[0], ready[1])
        };
        if paused && let Some(request) = self.pause.take() {
            let handover = self.listener_handover(None);
            Self::answer(request, handover.map(|h| (h, ())));
        }
        if !incoming {
            return None;
        }
        match self.public.accept() {
            Ok((s, _)) => Some(s),
            Err(e) => {
                tracing::warn!(socket = %self.path.display(), error = %e, "vhost-user accept failed");
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        }
    }

    fn listener_handover(&self, connection: Option<ConnectionHandover>) -> io::Result<VhostHandover> {
        Ok(VhostHandover {
            listener: OwnedFd::from(self.public.try_clone()?),
            connection,
            counters: self.io.counters.values(),
        })
    }

    /// Give a handover its answer; if it was taken, stay here (holding `hold`) until
    /// the port is to carry on.
    fn answer<T>(request: PauseRequest, handover: io::Result<(VhostHandover, T)>) {
        match handover {
            Ok((h, hold)) => {
                if request.answer.send(Ok(h)).is_ok() {
                    let _ = request.resume.recv();
                }
                drop(hold);
            }
            Err(e) => {
                let _ = request.answer.send(Err(e));
            }
        }
    }

    /// In the relay, between two messages, every earlier one answered: hand the
    /// connection over, the backend's ring thread stopped until the port carries on.
    fn pause_relay(&self, relay: &mut Relay, backend: &RwLock<NetBackend>) {
        let Some(request) = self.pause.take() else { return };
        // The backend's thread writes frames queued for the guest as it posts buffers.
        let t0 = Instant::now();
        while self.io.backlog.load(Ordering::Acquire) > 0 && t0.elapsed() < BACKLOG_GRACE {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The ring thread stops at its next event, before touching a ring.
        let mut stopped = backend.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dropped = stopped.drop_waiting();
        if dropped > 0 {
            tracing::warn!(socket = %self.path.display(), dropped, "frames for the guest dropped at the handover");
        }
        let handover =
            relay.hand_over(&stopped.bases()).and_then(|c| self.listener_handover(Some(c))).map(|h| (h, stopped));
        Self::answer(request, handover);
    }

    /// A daemon for the next frontend, with the dataplane's wake-up and the retry timer
    /// registered beside the vring events, and the relay's end of its connection.
    fn daemon(&self) -> io::Result<(Daemon, Arc<RwLock<NetBackend>>, UnixStream)> {
        let (mac, mtu) = self.device;
        let backend = NetBackend::new(Arc::clone(&self.io), mac, mtu)?;
        let retry_fd = backend.retry.as_fd().as_raw_fd();
        let backend = Arc::new(RwLock::new(backend));
        let name = self.path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
        let mut daemon = VhostUserDaemon::new(
            format!("xlane-vhost-{name}"),
            Arc::clone(&backend),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        for h in daemon.get_epoll_handlers() {
            h.register_listener(self.io.wake.as_raw_fd(), EventSet::IN, u64::from(WAKE_EVENT))?;
            h.register_listener(retry_fd, EventSet::IN, u64::from(RETRY_EVENT))?;
        }
        // Our end first (it waits in the backlog), then the library accepts it.
        let mut private = PrivateListener::new()?;
        let library_end = UnixStream::connect(&private.path)?;
        daemon.start(&mut private.listener).map_err(|e| io::Error::other(e.to_string()))?;
        Ok((daemon, backend, library_end))
    }
}

/// A [`VhostHandover`]'s state, which travels beside its descriptors
/// ([`VhostHandover::into_parts`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VhostHandoverState {
    /// The connected frontend's state, if one is connected.
    pub connection: Option<ConnectionState>,
    /// The port's counts so far.
    pub counters: CounterValues,
}

impl VhostHandover {
    /// Its state and descriptors: the listener, then with a connection the frontend's
    /// socket and its state's descriptors.
    #[must_use]
    pub fn into_parts(self) -> (VhostHandoverState, Vec<OwnedFd>) {
        let mut fds = vec![self.listener];
        let connection = self.connection.map(|c| {
            fds.push(c.frontend);
            fds.extend(c.fds);
            c.state
        });
        (VhostHandoverState { connection, counters: self.counters }, fds)
    }

    /// Back from [`into_parts`](Self::into_parts), its descriptors taken from `next`.
    ///
    /// # Errors
    /// `next`'s: descriptors missing.
    pub fn from_parts(state: VhostHandoverState, next: &mut dyn FnMut() -> io::Result<OwnedFd>) -> io::Result<Self> {
        let listener = next()?;
        let connection = match state.connection {
            None => None,
            Some(s) => {
                let frontend = next()?;
                let fds = (0..s.fds()).map(|_| next()).collect::<io::Result<_>>()?;
                Some(ConnectionHandover { frontend, state: s, fds })
            }
        };
        Ok(Self { listener, connection, counters: state.counters })
    }
}
