//! Capture sessions: a [`CaptureRing`] the workers fill, and a writer thread that streams
//! it as pcapng to one reader on a unix socket of its own.
//!
//! The capture's bytes never pass through the control loop: `capture_start` is answered
//! with the socket's path, xlanectl connects to it and copies what it reads to a file
//! or its stdout. The writer flushes whenever it has caught up with the workers, so a
//! `xlanectl capture -w - | tcpdump -r -` shows frames as they pass. A reader that does
//! not keep up blocks only the writer; workers then find no free buffer and count the
//! frame lost (reported in `counters`). The session ends after its count, when the
//! reader goes, if no reader comes within [`ACCEPT_WAIT`], or when xlaned stops; the
//! workers' taps are then removed at the control thread's next wake.

use crate::host::Host;
use crate::observe::edit_observer;
use crate::state::{Failure, Notify, State, failed, invalid};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::blocks::interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption};
use pcap_file::{DataLink, PcapError};
use std::borrow::Cow;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xlane_api::{CaptureSpec, CaptureStats, Reply};
use xlane_engine::observe::capture::{CaptureFilter, CaptureRing, CapturedFrame, Direction};
use xlane_fib::PortId;

/// How long a capture waits for its reader to connect.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(10);
/// Memory a capture's buffers take at most (their number is this over the snaplen).
const POOL_BYTES: usize = 8 << 20;
/// Most buffers a capture has.
const MAX_BUFFERS: usize = 4096;
/// How long the writer sleeps when it has caught up (and checks its reader is there).
const IDLE_WAIT_MS: i32 = 2;

/// The capture in progress, and the counts of the last one.
#[derive(Debug, Default)]
pub(crate) struct Captures {
    current: Option<Session>,
    last: Option<CaptureStats>,
    started: u64,
}

#[derive(Debug)]
struct Session {
    ring: Arc<CaptureRing>,
    /// Frames the writer has written.
    written: Arc<AtomicU64>,
    /// Set by the writer when it has ended.
    ended: Arc<AtomicBool>,
}

impl Session {
    fn stats(&self) -> CaptureStats {
        let counts = self.ring.counts();
        CaptureStats {
            port: self.ring.filter().port.0,
            active: !self.ended.load(Ordering::Acquire),
            captured: counts.iter().map(|c| c.0).sum(),
            lost: counts.iter().map(|c| c.1).sum(),
            worker_lost: counts.iter().map(|c| c.1).collect(),
            written: self.written.load(Ordering::Relaxed),
        }
    }
}

impl<H: Host> State<H> {
    pub(crate) fn capture_start(&mut self, spec: &CaptureSpec) -> Result<Reply, Failure> {
        if let Some(s) = &self.captures.current
            && !s.ended.load(Ordering::Acquire)
        {
            return Err(invalid(format!("a capture on port {} is running", s.ring.filter().port.0)));
        }
        let port = PortId(spec.port);
        let Some(p) = self.ports.get(&port) else {
            return Err(invalid(format!("no port {}", spec.port)));
        };
        if spec.snaplen == 0 || spec.snaplen > 262_144 {
            return Err(invalid(format!("snaplen {}: between 1 and 262144", spec.snaplen)));
        }
        // Nothing asked for: what tcpdump does, every frame received.
        let rx = spec.rx || !(spec.tx || spec.drops);
        let filter = CaptureFilter { port, rx, tx: spec.tx, drops: spec.drops };
        let snaplen = spec.snaplen as usize;
        let buffers = (POOL_BYTES / snaplen).min(MAX_BUFFERS);
        let ring = Arc::new(CaptureRing::new(filter, snaplen, buffers, self.workers.len()));
        self.captures.started += 1;
        let socket =
            self.cfg.runtime_dir.join(format!("capture-{}-{}.sock", std::process::id(), self.captures.started));
        let listener = bind(&socket).map_err(|e| failed(format!("capture socket {}: {e}", socket.display())))?;
        let (written, ended) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let writer = Writer {
            ring: Arc::clone(&ring),
            ifname: format!("{} (port {})", p.ifname, spec.port),
            count: spec.count,
            written: Arc::clone(&written),
            ended: Arc::clone(&ended),
            notify: Arc::clone(&self.notify),
        };
        let path = socket.clone();
        std::thread::Builder::new()
            .name("xlane-capture".into())
            .spawn(move || writer.run(&listener, &path))
            .map_err(|e| failed(format!("capture writer: {e}")))?;
        for (i, w) in self.workers.iter().enumerate() {
            let (ring, worker) = (Arc::clone(&ring), u16::try_from(i).unwrap_or(u16::MAX));
            w.run(move |d| edit_observer(d, worker, |o| o.set_capture(ring)));
        }
        tracing::info!(port = spec.port, rx, tx = spec.tx, drops = spec.drops, count = spec.count, socket = %socket.display(), "capture started");
        self.captures.current = Some(Session { ring, written, ended });
        Ok(Reply::CaptureReady { socket })
    }

    /// Once the writer has ended, take the capture off the workers (called on every wake).
    pub(crate) fn retire_finished_capture(&mut self) {
        let Some(s) = self.captures.current.take_if(|s| s.ended.load(Ordering::Acquire)) else {
            return;
        };
        for (i, w) in self.workers.iter().enumerate() {
            let (ring, worker) = (Arc::clone(&s.ring), u16::try_from(i).unwrap_or(u16::MAX));
            w.run(move |d| edit_observer(d, worker, |o| o.clear_capture(&ring)));
        }
        let stats = s.stats();
        tracing::info!(port = stats.port, written = stats.written, lost = stats.lost, "capture ended");
        self.captures.last = Some(stats);
    }

    /// The capture in progress, else the last one.
    pub(crate) fn capture_stats(&self) -> Option<CaptureStats> {
        self.captures.current.as_ref().map(Session::stats).or_else(|| self.captures.last.clone())
    }

    /// Stop the capture in progress (its writer ends; its socket goes).
    pub(crate) fn stop_capture(&self) {
        if let Some(s) = &self.captures.current {
            s.ring.stop();
        }
    }
}

/// A socket only its owner (root, as xlaned) can connect to.
fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

struct Writer {
    ring: Arc<CaptureRing>,
    ifname: String,
    /// Frames to write before ending (0: until the reader goes).
    count: u64,
    written: Arc<AtomicU64>,
    ended: Arc<AtomicBool>,
    notify: Notify,
}

impl Writer {
    fn run(self, listener: &UnixListener, path: &Path) {
        match self.accept(listener) {
            Ok(Some(stream)) => {
                // One reader per capture: nobody else may connect, and the path is gone
                // before the reader sees the end of the stream.
                let _ = std::fs::remove_file(path);
                if let Err(e) = self.stream(stream) {
                    tracing::debug!(error = %e, "capture reader gone");
                }
            }
            Ok(None) => tracing::warn!(socket = %path.display(), "no capture reader came; capture ended"),
            Err(e) => tracing::warn!(error = %e, "capture socket"),
        }
        let _ = std::fs::remove_file(path);
        self.ring.stop();
        self.ended.store(true, Ordering::Release);
        (self.notify)();
    }

    fn accept(&self, listener: &UnixListener) -> io::Result<Option<UnixStream>> {
        let deadline = Instant::now() + ACCEPT_WAIT;
        while Instant::now() < deadline && !self.ring.stopped() {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    return Ok(Some(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn stream(&self, stream: UnixStream) -> Result<(), PcapError> {
        let mut peer = stream.try_clone().map_err(PcapError::IoError)?;
        let mut out = PcapNgWriter::new(BufWriter::new(stream))?;
        let snaplen = u32::try_from(self.ring.snaplen()).unwrap_or(u32::MAX);
        out.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(&self.ifname)),
                // pcap-file writes timestamps in nanoseconds.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
        out.get_mut().flush().map_err(PcapError::IoError)?;
        let mut comment = String::new();
        loop {
            let mut wrote = false;
            while let Some(frame) = self.ring.pop() {
                let r = write_frame(&mut out, &frame, &mut comment);
                self.ring.recycle(frame);
                r?;
                wrote = true;
                let n = self.written.fetch_add(1, Ordering::Relaxed) + 1;
                if n == self.count {
                    self.ring.stop();
                    self.finish(&mut out)?;
                    return Ok(());
                }
            }
            if wrote {
                // Caught up: what the reader has is every frame so far.
                out.get_mut().flush().map_err(PcapError::IoError)?;
            }
            if self.ring.stopped() {
                self.finish(&mut out)?;
                return Ok(());
            }
            if reader_gone(&mut peer).map_err(PcapError::IoError)? {
                return Ok(());
            }
        }
    }

    /// The interface's statistics (frames lost to a slow reader), then the end.
    fn finish<W: Write>(&self, out: &mut PcapNgWriter<W>) -> Result<(), PcapError> {
        let counts = self.ring.counts();
        let (captured, lost): (u64, u64) = (counts.iter().map(|c| c.0).sum(), counts.iter().map(|c| c.1).sum());
        out.write_pcapng_block(InterfaceStatisticsBlock {
            interface_id: 0,
            timestamp: unix_ns(),
            options: vec![
                InterfaceStatisticsOption::IsbIfRecv(captured + lost),
                InterfaceStatisticsOption::IsbIfDrop(lost),
            ],
        })?;
        out.get_mut().flush().map_err(PcapError::IoError)?;
        Ok(())
    }
}

fn unix_ns() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}

/// pcapng's EPB flags: bits 0-1 the direction (1 inbound, 2 outbound).
fn epb_flags(d: Direction) -> u32 {
    match d {
        Direction::Rx => 1,
        Direction::Tx => 2,
    }
}

fn write_frame<W: Write>(
    out: &mut PcapNgWriter<W>,
    frame: &CapturedFrame,
    comment: &mut String,
) -> Result<(), PcapError> {
    let mut options = vec![EnhancedPacketOption::Flags(epb_flags(frame.direction))];
    if let Some(reason) = frame.drop {
        comment.clear();
        comment.push_str("drop: ");
        comment.push_str(reason.name());
        options.push(EnhancedPacketOption::Comment(Cow::Borrowed(comment)));
    }
    out.write_pcapng_block(EnhancedPacketBlock {
        interface_id: 0,
        timestamp: Duration::from_nanos(frame.unix_ns),
        original_len: frame.orig_len,
        data: Cow::Borrowed(frame.bytes()),
        options,
    })?;
    Ok(())
}

/// Wait a little for the reader to hang up; true if it has.
fn reader_gone(peer: &mut UnixStream) -> io::Result<bool> {
    if !xlane_xdp::xsk::wait_readable(&[peer.as_raw_fd()], IDLE_WAIT_MS)? {
        return Ok(false);
    }
    // Readers send nothing: readable means hung up (or a stray byte, ignored).
    let mut b = [0u8; 64];
    Ok(peer.read(&mut b)? == 0)
}
