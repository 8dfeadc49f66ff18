//! The backend with DPDK's virtio-user as the frontend (`dpdk-testpmd`, no VM, no
//! hugepages): frames the frontend transmits arrive, frames we queue reach it, and a
//! second frontend is served after the first goes away.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xlane_vhost::backend::{PortIo, serve};

const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

fn testpmd(sock: &Path, mode: &str, prefix: &str) -> Child {
    Command::new(TESTPMD)
        .args(["--no-huge", "-m", "512", "--no-pci", "--file-prefix", prefix, "-l", "0-1"])
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
    c.stdin.take().unwrap().write_all(b"\n").unwrap();
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

#[test]
fn testpmd_frontend_both_ways_and_reconnect() {
    if !xlane_netlab::privileged_with("testpmd_frontend_both_ways_and_reconnect", &[TESTPMD]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("xlane-vhost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("pod.sock");
    let io = PortIo::new(1024).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (sock, io, stop) = (sock.clone(), Arc::clone(&io), Arc::clone(&stop));
        std::thread::spawn(move || {
            serve(sock, &io, [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x09], || stop.load(Ordering::Relaxed))
        })
    };
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The guest transmits: every frame testpmd sent arrives here.
    let c = testpmd(&sock, "txonly", "xvtx");
    let mut got = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        got += io.recv_from_guest(256, |f| assert_eq!(f.len(), 64, "testpmd txonly sends 64-byte frames"));
        std::thread::sleep(Duration::from_millis(1));
    }
    let (_, sent) = finish(c);
    std::thread::sleep(Duration::from_millis(100));
    got += io.recv_from_guest(usize::MAX, |_| {});
    assert!(sent > 10_000, "testpmd sent {sent}");
    let dropped = io.counters.dropped.load(Ordering::Relaxed);
    assert_eq!(got as u64 + dropped, sent, "every frame sent arrived or was counted ({got} + {dropped})");
    assert_eq!(io.counters.malformed.load(Ordering::Relaxed), 0);

    // A second frontend after the first went away; now the guest receives.
    let c = testpmd(&sock, "rxonly", "xvrx");
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
    assert!(received > 1000, "testpmd received {received}");
    assert_eq!(received, delivered, "what we wrote into the guest is what it counted");
    stop.store(true, Ordering::Relaxed);
    // Unblock the listener with one last connection so the server thread can end.
    let _ = std::os::unix::net::UnixStream::connect(&sock);
    let _ = server.join();
    let _ = std::fs::remove_dir_all(dir);
}
