//! Hitless restart: a new xlaned (`--takeover`) takes over from the running one the
//! things that carry traffic, so an upgrade costs no frame.
//!
//! The running xlaned listens on a socket beside its control socket
//! (`xlaned.handover.sock`, mode 0600, root's). The new one connects and says which protocol version it speaks; on a
//! mismatch (or anything else the old one cannot hand over, said in the refusal) the
//! new one asks it to exit as on SIGTERM and starts cold: a normal restart, logged with
//! the reason, the agent replaying its state. Otherwise the old one parks every worker
//! between two bursts (a job that blocks on the worker: nothing touches a ring any
//! more) and sends:
//!
//! * the requests that rebuild its control state ([`State::rebuild_ops`]);
//! * per interface its XDP program's link, program and XSKMAP, per AF_PACKET pod its
//!   tcx block's link and program;
//! * per worker its UMEMs (memory memfd, registration socket, who holds which frame),
//!   its AF_XDP sockets and its AF_PACKET sockets;
//! * per vhost-user port, stopped after the workers (they read and write the guests'
//!   rings), its listening socket and, with a guest connected, the frontend's
//!   connection and what defines it — memory table, ring addresses, where each ring
//!   stands, kick and call descriptors ([`xlane_vhost::server`]): the guest stays
//!   connected and never notices;
//!
//! as JSON beside the descriptors (`SCM_RIGHTS`, [`xlane_xdp::fdpass`]). The new one
//! answers `Taken` as soon as it holds everything, before touching a ring; the old one
//! then exits without running a destructor (which would detach programs and close
//! sockets the new one serves). If the new one goes away before `Taken`, the old one
//! resumes its workers and carries on. The new one rebuilds its state by replaying the
//! requests through the usual paths, each of which takes the inherited object instead
//! of making a new one ([`Pool`]); frames queued in the rings meanwhile wait there.

mod on_worker;

pub(crate) use on_worker::packet_sockets;

use crate::config::UplinkRx;
use crate::host::System;
use crate::node_lock::NodeLock;
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use xlane_api::Op;
use xlane_vhost::server::{PausedPort, VhostHandover, VhostHandoverState};
use xlane_xdp::attach::{AttachmentHandover, AttachmentState};
use xlane_xdp::packet::FanoutMode;
use xlane_xdp::port::PortHandover;
use xlane_xdp::xsk::handover::{SocketHandover, SocketState, UmemHandover, UmemState};

/// The protocol's version: both sides must speak the same (2: vhost-user ports).
pub const VERSION: u32 = 2;
/// The handover socket of the xlaned whose control socket is `control`: beside it,
/// named after it (`xlaned.sock` → `xlaned.handover.sock`), so two xlaneds sharing a
/// directory (a lab's nodes) never meet the wrong one.
#[must_use]
pub fn socket_path(control: &Path) -> PathBuf {
    control.with_extension("handover.sock")
}
/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message taken (a UMEM's bookkeeping is ~40 bytes per held frame).
const MAX_MESSAGE: usize = 256 << 20;

/// What the two processes say to each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// New → old: the version it speaks, and its network namespace (the inode of
    /// `/proc/self/ns/net`: only an xlaned of the same node may take over).
    Hello {
        version: u32,
        #[serde(default)]
        netns: u64,
    },
    /// Old → new: no handover, and why.
    Refuse { reason: String },
    /// Old → new: everything, the descriptors following.
    Offer(Box<Offer>),
    /// New → old: everything received; exit now.
    Taken,
    /// New → old: exit as on SIGTERM (after a refusal, or an offer the new one cannot take).
    Exit { reason: String },
}

/// What the old process hands over, beside its descriptors (in the order of the fields:
/// 3 per attachment (2 without a link), 2 per block, then per worker 2 per UMEM, 1 per
/// socket with one and 1 more with a UDP receive socket, 1 per packet socket, then per
/// vhost-user port its listener and, with a guest connected, the connection's; last the
/// node's lock).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Offer {
    ops: Vec<Op>,
    attachments: Vec<AttachmentState>,
    blocks: Vec<u32>,
    workers: Vec<WorkerOffer>,
    vhost: Vec<VhostOffer>,
    fds: usize,
    /// The names the old one keeps in the service manager's store (the objects are the
    /// same: the new one keeps them in step from there).
    #[serde(default)]
    store: Vec<String>,
    /// The uplink is read without XDP (UDP sockets or packet taps): a successor that
    /// reads it another way starts cold.
    #[serde(default)]
    uplink_rx_udp: bool,
    /// ... through packet taps (with `uplink_rx_udp`; absent from an xlaned before
    /// taps, which read UDP sockets then).
    #[serde(default)]
    uplink_rx_tap: bool,
}

impl Offer {
    /// How the offering xlaned reads the uplink.
    fn uplink_rx(&self) -> UplinkRx {
        match (self.uplink_rx_udp, self.uplink_rx_tap) {
            (false, _) => UplinkRx::Xdp,
            (true, false) => UplinkRx::Udp,
            (true, true) => UplinkRx::Packet,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct VhostOffer {
    socket: PathBuf,
    state: VhostHandoverState,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerOffer {
    umems: Vec<Option<UmemState>>,
    sockets: Vec<SocketOffer>,
    packets: Vec<PacketOffer>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SocketOffer {
    umem: u8,
    /// Its descriptor follows unless it is the UMEM's own (`state.umem_socket`).
    state: SocketState,
    fill_target: u32,
    fill_base: u32,
    /// The UDP GRO socket it receives through follows (an uplink without XDP).
    #[serde(default)]
    udp_rx: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct PacketOffer {
    ifindex: u32,
    fanout: FanoutMode,
}

/// What the new process inherited and has not taken yet: the [`System`] takes each
/// object as the replayed requests come to it; what is left is closed.
#[derive(Debug, Default)]
pub struct Pool {
    pub(crate) attachments: HashMap<u32, AttachmentHandover>,
    pub(crate) blocks: HashMap<u32, (OwnedFd, OwnedFd)>,
    /// Per worker, by (ifindex, queue).
    sockets: Vec<HashMap<(u32, u32), PortHandover>>,
    /// Per worker, by ifindex.
    pub(crate) packets: Vec<HashMap<u32, (OwnedFd, FanoutMode)>>,
    /// By socket path.
    vhost: HashMap<PathBuf, VhostHandover>,
}

impl Pool {
    /// The XDP attachment inherited for `ifindex`.
    pub(crate) fn attachment(&mut self, ifindex: u32) -> Option<AttachmentHandover> {
        self.attachments.remove(&ifindex)
    }

    /// The tcx block inherited for `ifindex`.
    pub(crate) fn block(&mut self, ifindex: u32) -> Option<(OwnedFd, OwnedFd)> {
        self.blocks.remove(&ifindex)
    }

    /// Worker `worker`'s sockets inherited for `queues` of `ifindex`: all of them, or
    /// none (then any left stay in the pool, to be closed).
    pub(crate) fn sockets(&mut self, worker: usize, ifindex: u32, queues: &[u32]) -> Option<Vec<PortHandover>> {
        let mine = self.sockets.get_mut(worker)?;
        if queues.is_empty() || !queues.iter().all(|q| mine.contains_key(&(ifindex, *q))) {
            return None;
        }
        Some(queues.iter().filter_map(|q| mine.remove(&(ifindex, *q))).collect())
    }

    /// Worker `worker`'s AF_PACKET socket inherited for `ifindex`.
    pub(crate) fn packet(&mut self, worker: usize, ifindex: u32) -> Option<(OwnedFd, FanoutMode)> {
        self.packets.get_mut(worker)?.remove(&ifindex)
    }

    /// The vhost-user port inherited for the socket at `path`.
    pub(crate) fn vhost(&mut self, path: &Path) -> Option<VhostHandover> {
        self.vhost.remove(path)
    }

    /// What no request took, per worker (its sockets hold frames of the worker's UMEMs,
    /// to take back), and how many objects that is in all.
    pub(crate) fn leftovers(&mut self) -> (Vec<Vec<PortHandover>>, usize) {
        let sockets: Vec<Vec<PortHandover>> =
            self.sockets.iter_mut().map(|m| m.drain().map(|(_, h)| h).collect()).collect();
        let n = sockets.iter().map(Vec::len).sum::<usize>()
            + self.packets.iter().map(HashMap::len).sum::<usize>()
            + self.attachments.len()
            + self.blocks.len()
            + self.vhost.len();
        self.vhost.clear();
        self.packets.clear();
        self.attachments.clear();
        self.blocks.clear();
        (sockets, n)
    }
}

/// What a new xlaned takes over.
#[derive(Debug)]
pub struct Inherited {
    /// The requests that rebuild the old one's state.
    pub ops: Vec<Op>,
    /// Per worker, its UMEM set (for [`Umems::take_over`]).
    pub umems: Vec<Vec<Option<UmemHandover>>>,
    /// The rest, taken as the requests are replayed.
    pub pool: Pool,
    /// The names kept in the service manager's store ([`crate::fdstore`]).
    pub stored: Vec<String>,
}

fn write_message(stream: &mut UnixStream, m: &Message) -> io::Result<()> {
    let body = serde_json::to_vec(m).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("message too large"))?;
    stream.write_all(&len.to_le_bytes())?;
    stream.write_all(&body)
}

fn read_message(stream: &mut UnixStream) -> io::Result<Message> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a {len}-byte message")));
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Wait for the peer to close (the old process exiting), at most `limit`.
fn wait_closed(stream: &mut UnixStream, limit: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(limit))?;
    let mut byte = [0u8];
    match stream.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "the old xlaned said more after Taken")),
    }
}

// ---- the running (old) xlaned ----

/// The running xlaned's handover socket, with the node's lock it passes on.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    lock: NodeLock,
}

impl Listener {
    /// Listen on `path` ([`socket_path`]; mode 0600, a stale socket replaced), for
    /// the xlaned holding `lock`.
    ///
    /// # Errors
    /// The directory or the bind failed.
    pub fn bind(path: &Path, lock: NodeLock) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let path = path.to_path_buf();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path, lock })
    }

    /// For the control loop's poll.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// A waiting connection, if any.
    pub fn accept(&self) -> Option<UnixStream> {
        match self.listener.accept() {
            Ok((s, _)) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                tracing::warn!(error = %e, "handover socket");
                None
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How a handover request ended on the old side.
#[derive(Debug)]
pub enum Served {
    /// The new xlaned holds everything: exit now, without destructors, keeping the
    /// connection and the parked workers as they are until then.
    HandedOver(Parked),
    /// The new xlaned asked for a normal exit (it starts cold); the connection is kept
    /// open until this process is gone, which tells it so.
    Exit(UnixStream),
    /// Nothing handed over; this xlaned carries on.
    Kept,
}

/// What resumes parked workers when dropped: one sender per worker, each parked job
/// waiting on its receiver.
type Resume = Vec<crossbeam_channel::Sender<()>>;

/// Workers parked between bursts and vhost-user ports stopped: they carry on when
/// this is dropped (the ports first: the workers must not touch a guest's ring before).
#[derive(Debug)]
struct Stopped {
    _vhost: Vec<PausedPort>,
    _workers: Resume,
}

/// What stays stopped until this process exits, after a handover.
#[derive(Debug)]
pub struct Parked {
    _stopped: Stopped,
    _stream: UnixStream,
}

/// Serve one connection on the old side, where the handover socket is `listener`.
pub fn serve(mut stream: UnixStream, state: &mut State<System>, listener: &Listener, stored: Vec<String>) -> Served {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let (version, netns) = match read_message(&mut stream) {
        Ok(Message::Hello { version, netns }) => (version, netns),
        Ok(other) => {
            tracing::warn!(?other, "handover: expected a hello");
            return Served::Kept;
        }
        Err(e) => {
            tracing::warn!(error = %e, "handover: no hello");
            return Served::Kept;
        }
    };
    let refusal = if version != VERSION {
        Some(format!("the new xlaned speaks handover protocol {version}, this one {VERSION}"))
    } else if netns != own_netns() {
        Some("the new xlaned runs in another network namespace".to_owned())
    } else {
        refusal(state)
    };
    if let Some(reason) = refusal {
        return refuse(stream, reason);
    }
    let lock = match listener.lock.share() {
        Ok(fd) => fd,
        Err(e) => return refuse(stream, format!("sharing the node's lock: {e}")),
    };
    let t0 = std::time::Instant::now();
    let (stopped, mut offer, mut fds) = match park_and_collect(state) {
        Ok(x) => x,
        Err(reason) => return refuse(stream, reason),
    };
    fds.push(lock);
    offer.fds = fds.len();
    offer.store = stored;
    let sent = write_message(&mut stream, &Message::Offer(Box::new(offer))).and_then(|()| {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        xlane_xdp::fdpass::send(stream.as_fd(), &borrowed)
    });
    drop(fds);
    let answer = sent.and_then(|()| read_message(&mut stream));
    match answer {
        Ok(Message::Taken) => {
            // The service manager follows the new process from now on (only the main
            // process may say so under the unit's default NotifyAccess=main).
            match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
                Ok(peer) => notify(&format!("MAINPID={}", peer.pid())),
                Err(e) => tracing::warn!(error = %e, "the new xlaned's PID"),
            }
            tracing::info!(parked_ms = t0.elapsed().as_millis(), "handed over to the new xlaned; exiting");
            Served::HandedOver(Parked { _stopped: stopped, _stream: stream })
        }
        Ok(Message::Exit { reason }) => {
            tracing::warn!(%reason, "the new xlaned cannot take over; exiting for a normal restart");
            drop(stopped);
            Served::Exit(stream)
        }
        other => {
            tracing::warn!(answer = ?other.map(|_| ()), "handover not taken; carrying on");
            drop(stopped);
            Served::Kept
        }
    }
}

/// Say why there is no handover; the new xlaned then asks for a normal exit.
fn refuse(mut stream: UnixStream, reason: String) -> Served {
    tracing::warn!(%reason, "handover refused");
    if write_message(&mut stream, &Message::Refuse { reason }).is_err() {
        return Served::Kept;
    }
    match read_message(&mut stream) {
        Ok(Message::Exit { reason }) => {
            tracing::warn!(%reason, "the new xlaned restarts cold; exiting");
            Served::Exit(stream)
        }
        _ => Served::Kept,
    }
}

/// This process's network namespace (0 if unknown).
fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// Why this state cannot be handed over, if it cannot.
fn refusal(state: &State<System>) -> Option<String> {
    (!state.attaching.is_empty() || !state.closing.is_empty())
        .then(|| "ports are being attached or removed; retry".into())
}

/// Park every worker, then stop every vhost-user port, and collect what they hand over,
/// with the control state's part.
fn park_and_collect(state: &mut State<System>) -> Result<(Stopped, Offer, Vec<OwnedFd>), String> {
    let (attachments, blocks) = port_objects(state)?;
    let rx = state.cfg.uplink_rx;
    let mut offer = Offer {
        ops: state.rebuild_ops(),
        uplink_rx_udp: rx.without_program(),
        uplink_rx_tap: rx == UplinkRx::Packet,
        ..Offer::default()
    };
    let mut fds = Vec::new();
    for h in attachments {
        offer.attachments.push(h.state);
        fds.extend(h.link);
        fds.extend([h.prog, h.xskmap]);
    }
    for (ifindex, link, prog) in blocks {
        offer.blocks.push(ifindex);
        fds.extend([link, prog]);
    }
    let mut resume = Vec::new();
    let mut answers = Vec::new();
    for w in &state.workers {
        let (answer_tx, answer_rx) = crossbeam_channel::bounded(1);
        let (resume_tx, resume_rx) = crossbeam_channel::bounded::<()>(0);
        let mut fib = state.fib.reader();
        let sent = w.run(move |d| {
            let _ = answer_tx.send(on_worker::offer_worker(d, &mut fib));
            // Parked: forward nothing until the handover ends (resumed when the
            // sender drops; never, if this process exits first).
            let _ = resume_rx.recv();
            on_worker::hold_udp_reads(d, false);
        });
        if !sent {
            return Err("a worker has exited".into());
        }
        resume.push(resume_tx);
        answers.push(answer_rx);
    }
    for rx in answers {
        let (w, wfds) = rx.recv_timeout(TIMEOUT).map_err(|_| "a worker did not park".to_owned())??;
        offer.workers.push(w);
        fds.extend(wfds);
    }
    // The workers no longer touch the guests' rings: stop the ports' own threads.
    let mut paused = Vec::new();
    for p in state.ports.values() {
        if let crate::ports::PortKind::VhostUser(v) = &p.kind {
            let (h, pause) = v.hand_over().map_err(|e| format!("{}: {e}", v.path().display()))?;
            let (vstate, vfds) = h.into_parts();
            offer.vhost.push(VhostOffer { socket: v.path().to_owned(), state: vstate });
            fds.extend(vfds);
            paused.push(pause);
        }
    }
    Ok((Stopped { _vhost: paused, _workers: resume }, offer, fds))
}

/// Duplicates of the ports' XDP attachments and host-stack blocks (by interface index):
/// what keeps the programs attached while another process holds them.
pub(crate) type Blocks = Vec<(u32, OwnedFd, OwnedFd)>;

/// The XDP attachments and tcx blocks of `state`'s ports, duplicated (vhost-user ports
/// have neither).
pub(crate) fn port_objects(state: &State<System>) -> Result<(Vec<AttachmentHandover>, Blocks), String> {
    let (mut attachments, mut blocks) = (Vec::new(), Vec::new());
    for p in state.ports.values() {
        match &p.kind {
            crate::ports::PortKind::Xdp { attach, .. } => {
                attachments.push(attach.hand_over().map_err(|e| format!("{}: {e}", p.ifname))?);
            }
            crate::ports::PortKind::Packet { _block, .. } => {
                let any: &dyn std::any::Any = _block.as_ref();
                let block = any
                    .downcast_ref::<xlane_xdp::attach::HostStackBlock>()
                    .ok_or_else(|| format!("{}: an unknown host-stack block", p.ifname))?;
                let (link, prog) = block.hand_over().map_err(|e| format!("{}: {e}", p.ifname))?;
                blocks.push((block.ifindex(), link, prog));
            }
            crate::ports::PortKind::VhostUser(_) => {}
        }
    }
    Ok((attachments, blocks))
}

/// In the new xlaned, once the requests are replayed: close what none of them took.
/// Sockets go through their worker's UMEM so the frames their rings held come back.
pub fn close_leftovers(state: &mut State<System>) {
    let (sockets, n) = state.host.pool().leftovers();
    if n == 0 {
        return;
    }
    tracing::warn!(objects = n, "inherited objects no request took: closed");
    for (w, handed) in state.workers.iter().zip(sockets) {
        if handed.is_empty() {
            continue;
        }
        w.run(move |d| {
            for h in handed {
                let id = xlane_xdp::xsk::UmemId::from_index(h.umem);
                if !d.mem().contains(id) {
                    continue;
                }
                let umem = d.mem_mut().get_mut(id);
                match umem.take_over_port(h.socket) {
                    Ok(port) => umem.close_port_in_background(port),
                    Err(e) => tracing::warn!(error = %e, "an inherited socket no request took"),
                }
            }
        });
    }
}

// ---- the new xlaned ----

/// Take over from the xlaned serving the control socket `control` (through its
/// [`socket_path`]), speaking protocol `version` (tests speak another to check the
/// fallback), for a node of `workers` workers; with the node's lock, whichever way.
/// `None`: a normal restart (the old one refused, or none runs), after the old one
/// has exited; the reason is logged.
///
/// # Errors
/// The exchange broke after the old one parked its workers and the state could not be
/// received whole: then nothing is inherited and the old one resumes (if it still can).
/// Or another xlaned holds the node's lock but offers no handover (it is not taking
/// over, else it would within the wait).
pub fn take_over(
    control: &Path,
    workers: usize,
    uplink_rx: UplinkRx,
    version: u32,
) -> io::Result<(Option<Inherited>, NodeLock)> {
    let path = socket_path(control);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let (mut stream, offer) = loop {
        // No handover socket yet while another xlaned holds the lock: it is taking
        // over itself (between its predecessor's exit and its bind). Wait for it.
        let mut stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                if let Some(lock) = NodeLock::try_acquire(control)? {
                    tracing::warn!(socket = %path.display(), error = %e, "no xlaned to take over; starting cold");
                    return Ok((None, lock));
                }
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::other(format!(
                        "another xlaned holds {} but offers no handover on {}",
                        NodeLock::path(control).display(),
                        path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let answer = write_message(&mut stream, &Message::Hello { version, netns: own_netns() })
            .and_then(|()| read_message(&mut stream));
        match answer {
            Ok(Message::Offer(o)) => break (stream, o),
            Ok(Message::Refuse { reason }) => {
                tracing::warn!(%reason, "the running xlaned refused the handover: normal restart");
                exit_old(stream, &reason)?;
                return Ok((None, lock_after_exit(control)?));
            }
            Ok(other) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected an offer, got {other:?}")));
            }
            // It handed over to another successor meanwhile and exited: take over from
            // that one.
            Err(e) if std::time::Instant::now() < deadline && gone(&e) => {
                tracing::info!(error = %e, "the running xlaned went away before answering; trying its successor");
            }
            Err(e) => return Err(e),
        }
    };
    let mismatch = if offer.workers.len() != workers {
        Some(format!("the running xlaned has {} workers, this one {workers}", offer.workers.len()))
    } else if offer.uplink_rx() != uplink_rx {
        Some(format!(
            "the running xlaned reads the uplink through {}, this one through {}",
            offer.uplink_rx().describe(),
            uplink_rx.describe()
        ))
    } else {
        None
    };
    // The descriptors follow the offer: read them either way (closing the duplicates
    // unused), so that all the stream says next is that the old one exited.
    let fds = xlane_xdp::fdpass::recv(stream.as_fd(), offer.fds)?;
    if let Some(reason) = mismatch {
        tracing::warn!(%reason, "cannot take over: normal restart");
        drop(fds);
        exit_old(stream, &reason)?;
        return Ok((None, lock_after_exit(control)?));
    }
    write_message(&mut stream, &Message::Taken)?;
    let (inherited, lock) = inherit(*offer, fds)?;
    // The old one exits now; its control and metrics sockets are free once it has.
    wait_closed(&mut stream, TIMEOUT)?;
    tracing::info!("taken over; the old xlaned has exited");
    Ok((Some(inherited), lock))
}

/// Whether `e` says the peer went away (closed or reset) rather than misbehaved.
fn gone(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

/// The node's lock, once the old xlaned (gone: its connection closed) has let go.
fn lock_after_exit(control: &Path) -> io::Result<NodeLock> {
    NodeLock::acquire_within(control, Duration::from_secs(2))?.ok_or_else(|| {
        io::Error::other(format!("{} still held after the old xlaned exited", NodeLock::path(control).display()))
    })
}

/// Ask the old xlaned to exit as on SIGTERM and wait until it has.
fn exit_old(mut stream: UnixStream, reason: &str) -> io::Result<()> {
    write_message(&mut stream, &Message::Exit { reason: reason.to_owned() })?;
    wait_closed(&mut stream, TIMEOUT)
}

/// The offer's objects on their descriptors.
fn inherit(offer: Offer, fds: Vec<OwnedFd>) -> io::Result<(Inherited, NodeLock)> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "fewer descriptors than the offer names");
    let mut fds = fds.into_iter();
    let mut next = || fds.next().ok_or_else(short);
    let mut pool = Pool::default();
    for state in offer.attachments {
        let link = if state.linked { Some(next()?) } else { None };
        let (prog, xskmap) = (next()?, next()?);
        pool.attachments.insert(state.ifindex, AttachmentHandover { link, prog, xskmap, state });
    }
    for ifindex in offer.blocks {
        let (link, prog) = (next()?, next()?);
        pool.blocks.insert(ifindex, (link, prog));
    }
    let mut umems = Vec::new();
    for w in offer.workers {
        let mut set = Vec::new();
        for u in w.umems {
            set.push(match u {
                Some(state) => Some(UmemHandover { memory: next()?, registration: next()?, state }),
                None => None,
            });
        }
        umems.push(set);
        let mut sockets = HashMap::new();
        for s in w.sockets {
            let fd = if s.state.umem_socket { None } else { Some(next()?) };
            let udp_rx = if s.udp_rx { Some(next()?) } else { None };
            let key = (s.state.ifindex, s.state.queue);
            let socket = SocketHandover { fd, state: s.state };
            let (umem, fill_target, fill_base) = (s.umem, s.fill_target, s.fill_base);
            sockets.insert(key, PortHandover { umem, socket, fill_target, fill_base, udp_rx });
        }
        pool.sockets.push(sockets);
        let mut packets = HashMap::new();
        for p in w.packets {
            packets.insert(p.ifindex, (next()?, p.fanout));
        }
        pool.packets.push(packets);
    }
    for v in offer.vhost {
        let h = VhostHandover::from_parts(v.state, &mut next)?;
        pool.vhost.insert(v.socket, h);
    }
    let lock = NodeLock::inherit(next()?);
    Ok((Inherited { ops: offer.ops, umems, pool, stored: offer.store }, lock))
}

/// A new xlaned started to take over from this one.
#[derive(Debug)]
pub struct Successor {
    /// Its PID.
    pub pid: u32,
    /// The thread that reaps it, done once it has exited.
    reaper: std::thread::JoinHandle<()>,
}

impl Successor {
    /// Whether it still runs (it exits only if it could not take over).
    #[must_use]
    pub fn running(&self) -> bool {
        !self.reaper.is_finished()
    }
}

/// Start a successor to take over from this xlaned (on SIGHUP: `systemctl reload`):
/// the binary at the path this one was started as (the upgraded one, after an
/// install over it), with this one's arguments and `--takeover`; its output goes where
/// this one's does.
///
/// # Errors
/// It could not be started.
pub fn spawn_successor() -> io::Result<Successor> {
    let mut args = std::env::args();
    let program = args.next().ok_or_else(|| io::Error::other("no argv[0]"))?;
    let rest: Vec<String> = args.filter(|a| a != "--takeover").collect();
    let mut child = std::process::Command::new(&program).args(&rest).arg("--takeover").spawn()?;
    let pid = child.id();
    // Reaped here if it exits while this xlaned still runs: it could not take over.
    let reaper = std::thread::Builder::new().name("xlane-successor".into()).spawn(move || {
        if let Ok(status) = child.wait() {
            tracing::error!(pid, %status, "the new xlaned exited; this one carries on");
        }
    })?;
    Ok(Successor { pid, reaper })
}

/// Tell the service manager (systemd's `NOTIFY_SOCKET`, if set) `state`, e.g.
/// `READY=1`; a no-op without one. An xlaned handing over says `MAINPID=` of its
/// successor before it exits, so the unit follows the successor instead of restarting.
pub fn notify(state: &str) {
    if let Err(e) = notify_with(state, &[]) {
        tracing::warn!(error = %e, "notifying the service manager");
    }
}

/// Send `state` with `fds` (`SCM_RIGHTS`, e.g. `FDSTORE=1`) to the service manager's
/// `NOTIFY_SOCKET`: a socket path, or with a leading `@` an abstract name. Nothing to do
/// without one.
///
/// # Errors
/// The address is not a unix socket's, or the kernel refused the datagram.
pub fn notify_with(state: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    use std::os::fd::{AsRawFd, RawFd};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(path.as_os_str())?,
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs = if raw.is_empty() { &rights[..0] } else { &rights[..] };
    sendmsg(sock.as_raw_fd(), &[io::IoSlice::new(state.as_bytes())], cmsgs, MsgFlags::empty(), Some(&addr))?;
    Ok(())
}
