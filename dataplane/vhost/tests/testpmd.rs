//! The backend with DPDK's virtio-user as the frontend (`dpdk-testpmd`, no VM, no
//! hugepages): frames the frontend transmits arrive, frames we queue reach it, and a
//! second frontend is served after the first goes away.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use xlane_netlab::dpdk::{TESTPMD, Testpmd};
use xlane_vhost::backend::PortIo;
use xlane_vhost::server::VhostUserPort;

/// One testpmd at a time: each pins a busy-polling core.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn testpmd(sock: &Path, mode: &str) -> Testpmd {
    testpmd_with(sock, &[&format!("--forward-mode={mode}")])
}

fn testpmd_with(sock: &Path, app: &[&str]) -> Testpmd {
    let mut args = vec!["--stats-period=0", "--total-num-mbufs=8192"];
    args.extend_from_slice(app);
    Testpmd::spawn(None, "0-1", &[&format!("net_virtio_user0,path={},queues=1", sock.display())], &args).unwrap()
}

/// The guest sends exactly one burst of 32 frames (`--tx-first`, then it only
/// receives); they are read from its ring while it runs. Returns (sent, read).
fn guest_sends(sock: &Path, io: &PortIo) -> (u64, u64) {
    let mut c = testpmd_with(sock, &["--forward-mode=rxonly", "--tx-first", "--burst=32"]);
    c.wait_forwarding(Duration::from_secs(30)).unwrap();
    let mut got = 0u64;
    let t0 = Instant::now();
    while got < 32 && t0.elapsed() < Duration::from_secs(5) {
        got += io.recv_from_guest(256, |f| assert_eq!(f.len(), 64, "testpmd sends 64-byte frames")) as u64;
        std::thread::sleep(Duration::from_millis(1));
    }
    (c.finish().tx, got)
}

/// A port served from its own directory; stopped and cleaned up on drop.
struct Backend {
    port: Option<VhostUserPort>,
    dir: PathBuf,
}

impl Backend {
    fn start(name: &str, mac: [u8; 6]) -> Self {
        let dir = std::env::temp_dir().join(format!("xlane-vhost-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = VhostUserPort::spawn(dir.join("pod.sock"), PortIo::new(1024).unwrap(), mac, 1450).unwrap();
        Self { port: Some(port), dir }
    }

    fn sock(&self) -> &Path {
        self.port.as_ref().unwrap().path()
    }

    fn io(&self) -> &Arc<PortIo> {
        self.port.as_ref().unwrap().io()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        drop(self.port.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Root and testpmd (a skip outside CI without them), one test at a time, and a port
/// named `name` offering `mac`.
fn setup(test: &str, name: &str, mac: [u8; 6]) -> Option<(std::sync::MutexGuard<'static, ()>, Backend)> {
    if !xlane_netlab::privileged_with(test, &[TESTPMD]) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((serial, Backend::start(name, mac)))
}

#[test]
fn testpmd_frontend_both_ways_and_reconnect() {
    let Some((_serial, b)) =
        setup("testpmd_frontend_both_ways_and_reconnect", "both", [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x09])
    else {
        return;
    };
    let (sock, io) = (b.sock(), b.io());
    // The guest transmits: every frame testpmd sent is read from its ring.
    let (sent, got) = guest_sends(sock, io);
    assert_eq!((sent, got), (32, 32), "every frame the guest sent arrived");
    assert_eq!(io.counters.from_guest.load(Ordering::Relaxed), 32);
    assert_eq!(io.counters.malformed.load(Ordering::Relaxed), 0);

    // A second frontend after the first went away; now the guest receives.
    let mut c = testpmd(sock, "rxonly");
    c.wait_forwarding(Duration::from_secs(30)).unwrap();
    let frame: Vec<u8> = (0..60u8).collect();
    let mut queued = 0u64;
    let t0 = Instant::now();
    while queued < 100_000 && t0.elapsed() < Duration::from_secs(3) {
        if io.send_to_guest(&frame) {
            queued += 1;
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let received = c.finish().rx;
    let delivered = io.counters.to_guest.load(Ordering::Relaxed);
    assert!(received > 0, "testpmd received nothing");
    assert_eq!(received, delivered, "what we wrote into the guest is what it counted");
}

#[test]
fn frames_sent_before_the_guest_is_ready_wait_then_go_straight_in() {
    let Some((_serial, b)) = setup(
        "frames_sent_before_the_guest_is_ready_wait_then_go_straight_in",
        "early",
        [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x0b],
    ) else {
        return;
    };
    let (sock, io) = (b.sock(), b.io());
    let frame: Vec<u8> = (0..60u8).collect();
    // No guest yet: the frames wait for it.
    assert_eq!(io.send_burst_to_guest(std::iter::repeat_n(&frame[..], 100)), 100);
    assert_eq!(io.counters.to_guest.load(Ordering::Relaxed), 0);
    let mut c = testpmd(sock, "rxonly");
    c.wait_forwarding(Duration::from_secs(30)).unwrap();
    let t0 = Instant::now();
    while io.counters.to_guest.load(Ordering::Relaxed) < 100 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(io.counters.to_guest.load(Ordering::Relaxed), 100, "the waiting frames reached the guest");
    // Now straight into its ring: what is not taken (ring full) is a counted drop.
    let dropped_before = io.counters.dropped.load(Ordering::Relaxed);
    let mut taken = 0;
    for _ in 0..200 {
        taken += io.send_burst_to_guest(std::iter::repeat_n(&frame[..], 32));
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let received = c.finish().rx;
    let dropped = io.counters.dropped.load(Ordering::Relaxed) - dropped_before;
    assert_eq!(taken + dropped, 200 * 32, "every frame taken or counted");
    assert_eq!(io.counters.to_guest.load(Ordering::Relaxed), 100 + taken);
    // testpmd's virtio driver empties its receive ring when the port starts, so the
    // early frames (written at its first kick, before that) may be discarded by it.
    assert!(received == taken || received == 100 + taken, "the guest counted {received} of {taken} (+100 early)");
}

/// One vhost-user message: header (request, flags = version 1, size) and body.
fn message(request: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Whether the backend hung up on `s` within 2 s.
fn cut_off(s: &mut std::os::unix::net::UnixStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn hostile_frontends_are_cut_off_and_service_goes_on() {
    use std::os::fd::AsRawFd;
    let Some((_serial, b)) =
        setup("hostile_frontends_are_cut_off_and_service_goes_on", "hostile", [0x0a, 0x58, 0, 0, 0, 1])
    else {
        return;
    };
    let (sock, io) = (b.sock(), b.io());
    // Garbage instead of a message.
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(&[0xff; 64]).unwrap();
    assert!(cut_off(&mut s), "garbage: disconnected");
    // A memory table whose region lies past the end of the file it maps (a guest
    // touching it would fault the backend with SIGBUS): refused, disconnected.
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(&message(3, &[])).unwrap(); // SET_OWNER
    let memfd = nix::sys::memfd::memfd_create(c"guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(&memfd, 4096).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes()); // one region
    body.extend_from_slice(&0u32.to_le_bytes()); // padding
    for v in [0u64, 1 << 30, 0x7f00_0000_0000, 0] {
        body.extend_from_slice(&v.to_le_bytes()); // guest address, size 1 GiB, user address, offset
    }
    let msg = message(5, &body); // SET_MEM_TABLE
    let fds = [memfd.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        s.as_raw_fd(),
        &[std::io::IoSlice::new(&msg)],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert!(cut_off(&mut s), "bad memory table: disconnected");
    // A vring address before any memory table: refused.
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(&message(3, &[])).unwrap();
    let mut addr = Vec::new();
    addr.extend_from_slice(&0u32.to_le_bytes()); // index
    addr.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [0xdead_0000u64, 0xdead_1000, 0xdead_2000, 0] {
        addr.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&message(9, &addr)).unwrap(); // SET_VRING_ADDR
    assert!(cut_off(&mut s), "ring addresses outside guest memory: disconnected");
    // And the port still serves a real frontend.
    let (sent, got) = guest_sends(sock, io);
    assert_eq!((sent, got), (32, 32), "the next frontend is served");
}

#[test]
fn removing_a_port_cuts_its_frontend_off_and_removes_the_socket() {
    let Some((_serial, mut b)) =
        setup("removing_a_port_cuts_its_frontend_off_and_removes_the_socket", "remove", [0x0a, 0x58, 0, 0, 0, 2])
    else {
        return;
    };
    let sock = b.sock().to_owned();
    let c = testpmd(&sock, "rxonly");
    let io = Arc::clone(b.io());
    let t0 = Instant::now();
    while !io.counters.connected.load(Ordering::Relaxed) {
        assert!(t0.elapsed() < Duration::from_secs(10), "testpmd never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Dropping the port returns (the connection is cut, the thread joined) …
    drop(b.port.take());
    assert!(!io.counters.connected.load(Ordering::Relaxed));
    // … and leaves nothing to connect to.
    assert!(!sock.exists(), "socket removed");
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_err());
    drop(c);
}

/// A 64-byte frame (local experimental EtherType) carrying `n`.
fn numbered(n: u32) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..18].copy_from_slice(&n.to_be_bytes());
    f
}

/// A handover with the guest connected and forwarding (testpmd echoing every frame
/// back, `macswap`): the port is stopped between two messages, its socket, connection
/// and state go to a new port (here in the same process, the old one left stopped as
/// an exiting process would leave it), which carries the guest's rings on where they
/// stood. Frames numbered 0..N sent through the old port and then the new one all come
/// back, exactly once each — none lost or doubled in either ring — the guest never
/// reconnects, and the counters carry on.
#[test]
fn a_handover_carries_a_connected_guest_on() {
    let Some((_serial, mut old)) =
        setup("a_handover_carries_a_connected_guest_on", "handover", [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x0d])
    else {
        return;
    };
    let sock = old.sock().to_path_buf();
    let mut c = testpmd_with(&sock, &["--forward-mode=macswap", "--port-topology=loop", "--burst=32"]);
    c.wait_forwarding(Duration::from_secs(30)).unwrap();
    const N: u32 = 20_000;
    let mut seen = vec![0u8; N as usize];
    // Send frames `from..to` through `io` at most 128 ahead of what came back.
    let echo = |io: &PortIo, from: u32, to: u32, seen: &mut [u8]| {
        let (mut next, mut back) = (from, 0u32);
        let t0 = Instant::now();
        while back < to - from && t0.elapsed() < Duration::from_secs(20) {
            while next < to && next - from < back + 128 {
                assert!(io.send_to_guest(&numbered(next)), "frame {next} taken");
                next += 1;
            }
            let got = io.recv_from_guest(256, |f| {
                let n = u32::from_be_bytes(f[14..18].try_into().unwrap());
                seen[n as usize] += 1;
            });
            back += u32::try_from(got).unwrap();
        }
        back
    };
    let io_old = Arc::clone(old.io());
    assert_eq!(echo(&io_old, 0, N / 2, &mut seen), N / 2, "the guest echoes through the old port");
    // In flight at the handover: frames the guest has yet to echo.
    for n in N / 2..N / 2 + 64 {
        assert!(io_old.send_to_guest(&numbered(n)));
    }
    let (handover, paused) = old.port.as_ref().unwrap().hand_over().unwrap();
    assert!(handover.connection.is_some(), "a connection to carry on");
    let (state, fds) = handover.into_parts();
    let mut fds = fds.into_iter();
    let handover = xlane_vhost::server::VhostHandover::from_parts(state, &mut || {
        fds.next().ok_or_else(|| std::io::Error::other("short"))
    })
    .unwrap();
    // The old port stays stopped for good, as in a process that exits now.
    std::mem::forget(paused);
    std::mem::forget(old.port.take());
    let io_new = PortIo::new(1024).unwrap();
    let new = VhostUserPort::take_over(
        sock.clone(),
        Arc::clone(&io_new),
        [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x0d],
        1450,
        handover,
    )
    .unwrap();
    // The 64 in flight come back through the new port, then the rest.
    let mut back = 0;
    let t0 = Instant::now();
    while back < 64 && t0.elapsed() < Duration::from_secs(10) {
        back += io_new.recv_from_guest(256, |f| seen[u32::from_be_bytes(f[14..18].try_into().unwrap()) as usize] += 1);
    }
    assert_eq!(back, 64, "the frames in flight at the handover came back");
    assert_eq!(echo(&io_new, N / 2 + 64, N, &mut seen), N / 2 - 64, "the guest echoes through the new port");
    let wrong: Vec<(usize, u8)> = seen.iter().copied().enumerate().filter(|&(_, k)| k != 1).take(10).collect();
    assert!(wrong.is_empty(), "every frame back exactly once; (frame, times): {wrong:?}");
    let v = io_new.counters.values();
    assert_eq!(
        (v.to_guest, v.from_guest, v.dropped, v.malformed, v.connections),
        (u64::from(N), u64::from(N), 0, 0, 1)
    );
    assert!(io_new.counters.connected.load(Ordering::Relaxed));
    let counts = c.finish();
    assert_eq!((counts.rx, counts.tx), (u64::from(N), u64::from(N)), "the guest saw every frame once");
    drop(new);
    assert!(!sock.exists(), "the new port removes the socket");
    eprintln!("{N} frames echoed across a handover, each once; counters {v:?}");
}
