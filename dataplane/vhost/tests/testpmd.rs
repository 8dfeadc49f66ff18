//! The backend with DPDK's virtio-user as the frontend (`dpdk-testpmd`, no VM, no
//! hugepages): frames the frontend transmits arrive, frames we queue reach it, and a
//! second frontend is served after the first goes away.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xlane_vhost::backend::{PortIo, serve};

const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// One testpmd at a time: each pins a busy-polling core.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn testpmd(sock: &Path, mode: &str, prefix: &str) -> Child {
    // DPDK's runtime files are keyed by the prefix: unique per test process.
    let prefix = format!("{prefix}{}", std::process::id());
    Command::new(TESTPMD)
        .args(["--no-huge", "-m", "512", "--no-pci", "--file-prefix", &prefix, "-l", "0-1"])
        .arg(format!("--vdev=net_virtio_user0,path={},queues=1", sock.display()))
        .args(["--", &format!("--forward-mode={mode}"), "--stats-period=0", "--total-num-mbufs=8192"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Stop testpmd (Enter) and read its accumulated `RX-packets` and `TX-packets`.
fn finish(mut c: Child) -> (u64, u64) {
    // It may have exited already (then its output says why, and the counts are zero).
    let _ = c.stdin.take().unwrap().write_all(b"\n");
    let out = BufReader::new(c.stdout.take().unwrap());
    let (mut rx, mut tx) = (0, 0);
    let mut accumulated = false;
    for line in out.lines().map_while(Result::ok) {
        accumulated |= line.contains("Accumulated forward statistics");
        let num = |key: &str| line.split(key).nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok());
        if accumulated {
            rx = num("RX-packets:").unwrap_or(rx);
            tx = num("TX-packets:").unwrap_or(tx);
        }
    }
    c.wait().unwrap();
    (rx, tx)
}

/// A backend serving a socket in its own directory, on its own thread; stopped and
/// cleaned up on drop.
struct Backend {
    sock: PathBuf,
    io: Arc<PortIo>,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Backend {
    fn start(name: &str, mac: [u8; 6]) -> Self {
        let dir = std::env::temp_dir().join(format!("xlane-vhost-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("pod.sock");
        let io = PortIo::new(1024).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (sock, io, stop) = (sock.clone(), Arc::clone(&io), Arc::clone(&stop));
            std::thread::spawn(move || serve(sock, &io, mac, || stop.load(Ordering::Relaxed)))
        };
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { sock, io, dir, stop, server: Some(server) }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock the listener with one last connection so the server thread can end.
        let _ = std::os::unix::net::UnixStream::connect(&self.sock);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn testpmd_frontend_both_ways_and_reconnect() {
    if !xlane_netlab::privileged_with("testpmd_frontend_both_ways_and_reconnect", &[TESTPMD]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let b = Backend::start("both", [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x09]);
    let (sock, io) = (&b.sock, &b.io);
    // The guest transmits: every frame testpmd sent arrives here.
    let c = testpmd(sock, "txonly", "xvtx");
    let mut got = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        got += io.recv_from_guest(256, |f| assert_eq!(f.len(), 64, "testpmd txonly sends 64-byte frames"));
        std::thread::sleep(Duration::from_millis(1));
    }
    let (_, sent) = finish(c);
    std::thread::sleep(Duration::from_millis(100));
    got += io.recv_from_guest(usize::MAX, |_| {});
    assert!(sent > 0, "testpmd sent nothing");
    let dropped = io.counters.dropped.load(Ordering::Relaxed);
    assert_eq!(got as u64 + dropped, sent, "every frame sent arrived or was counted ({got} + {dropped})");
    assert_eq!(io.counters.malformed.load(Ordering::Relaxed), 0);

    // A second frontend after the first went away; now the guest receives.
    let c = testpmd(sock, "rxonly", "xvrx");
    std::thread::sleep(Duration::from_millis(1500));
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
    let (received, _) = finish(c);
    let delivered = io.counters.to_guest.load(Ordering::Relaxed);
    assert!(received > 0, "testpmd received nothing");
    assert_eq!(received, delivered, "what we wrote into the guest is what it counted");
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
    if !xlane_netlab::privileged_with("hostile_frontends_are_cut_off_and_service_goes_on", &[TESTPMD]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let b = Backend::start("hostile", [0x0a, 0x58, 0, 0, 0, 1]);
    let (sock, io) = (&b.sock, &b.io);
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
    let c = testpmd(sock, "txonly", "xvho");
    std::thread::sleep(Duration::from_millis(1000));
    let (_, sent) = finish(c);
    std::thread::sleep(Duration::from_millis(100));
    let got = io.recv_from_guest(usize::MAX, |_| {}) as u64 + io.counters.dropped.load(Ordering::Relaxed);
    assert!(sent > 0 && got == sent, "sent {sent}, arrived or counted {got}");
}
