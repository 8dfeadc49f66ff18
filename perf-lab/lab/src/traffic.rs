//! The lab's own traffic: ping, a checked TCP transfer and a bounded UDP packet-rate
//! generator, each run from inside pod namespaces. Every loop is bounded in count and in
//! time.

use anyhow::Context as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xlane_netlab::Netns;
use xlane_wire::Mac;

pub use xlane_netlab::PingStats;

/// Ping `dst` `count` times from `from` (iputils ping, 200 ms apart).
///
/// # Errors
/// ping cannot be run or printed no statistics.
pub fn ping(from: &Netns, dst: Ipv4Addr, count: u32) -> anyhow::Result<PingStats> {
    from.ping_stats(&dst.to_string(), count).context("ping (apt-get install iputils-ping)")
}

/// TCP transfer results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpStats {
    /// Bytes moved.
    pub bytes: usize,
    /// Seconds from connect to the receiver's end of stream.
    pub seconds: f64,
    /// Whether every byte arrived as sent.
    pub intact: bool,
}

impl TcpStats {
    /// Goodput in Gbit/s.
    #[must_use]
    pub fn gbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

/// A byte pattern both ends can produce without storing it.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]
}

/// Move `bytes` from `from` to `to_ip:5201` in `to`, checked byte for byte; at most 60 s,
/// and cut short when `stop` is raised.
///
/// # Errors
/// Socket failures, timeouts, `stop`.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    bytes: usize,
    stop: &AtomicBool,
) -> anyhow::Result<TcpStats> {
    let listener = to.enter(|| TcpListener::bind(SocketAddrV4::new(to_ip, 5201)))??;
    let receiver = std::thread::spawn(move || -> anyhow::Result<(usize, bool)> {
        let (mut c, _) = listener.accept()?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 256 * 1024];
        let (mut n, mut intact) = (0usize, true);
        loop {
            let k = c.read(&mut buf)?;
            if k == 0 {
                return Ok((n, intact));
            }
            intact &= buf[..k].iter().enumerate().all(|(j, b)| *b == pattern(n + j));
            n += k;
        }
    });
    let t0 = Instant::now();
    let mut s =
        from.enter(|| TcpStream::connect_timeout(&SocketAddrV4::new(to_ip, 5201).into(), Duration::from_secs(5)))??;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut sent = 0;
    while sent < bytes {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "TCP transfer took over 60 s");
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        let k = chunk.len().min(bytes - sent);
        for (j, b) in chunk[..k].iter_mut().enumerate() {
            *b = pattern(sent + j);
        }
        s.write_all(&chunk[..k])?;
        sent += k;
    }
    drop(s);
    let (got, intact) = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(TcpStats { bytes: got, seconds: t0.elapsed().as_secs_f64(), intact: intact && got == bytes })
}

/// UDP packet-rate results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpStats {
    /// Packets sent.
    pub sent: u64,
    /// Sends the sender's sockets refused (ENOBUFS and friends under overload).
    pub send_errors: u64,
    /// Packets received.
    pub received: u64,
    /// Seconds the sender ran.
    pub seconds: f64,
}

impl UdpStats {
    /// Packets the sender tried to send.
    #[must_use]
    pub fn offered(&self) -> u64 {
        self.sent + self.send_errors
    }

    /// Received packets per second.
    #[must_use]
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.seconds
    }
}

/// 64-byte frames (18-byte UDP payload) from `from` to `to_ip:5300` over `flows` source
/// ports, for `duration` or `max_packets`, whichever ends first (or until `stop`).
///
/// # Errors
/// Socket failures.
pub fn udp_rate(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    duration: Duration,
    max_packets: u64,
    flows: u16,
    stop: &AtomicBool,
) -> anyhow::Result<UdpStats> {
    let rx = to.enter(|| UdpSocket::bind(SocketAddrV4::new(to_ip, 5300)))??;
    rx.set_read_timeout(Some(Duration::from_millis(300)))?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (received, done) = (Arc::clone(&received), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            // Drain until the sender is done and the socket has been quiet for 300 ms.
            loop {
                match rx.recv(&mut buf) {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if done.load(Ordering::Relaxed) => return,
                    Err(_) => {}
                }
            }
        })
    };
    let sockets: Vec<UdpSocket> = from.enter(|| {
        (0..flows.max(1))
            .map(|_| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let dst = SocketAddrV4::new(to_ip, 5300);
    let payload = [0x5au8; 18];
    let t0 = Instant::now();
    let (mut sent, mut send_errors) = (0u64, 0u64);
    'send: while sent + send_errors < max_packets {
        for s in &sockets {
            // ENOBUFS and friends under overload are losses at the sender, not errors.
            if s.send_to(&payload, dst).is_ok() {
                sent += 1;
            } else {
                send_errors += 1;
            }
        }
        if t0.elapsed() >= duration || stop.load(Ordering::Relaxed) {
            break 'send;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    Ok(UdpStats { sent, send_errors, received: received.load(Ordering::Relaxed), seconds })
}

/// A 60-byte Ethernet/IPv4/UDP frame (64 on a wire with its FCS) from `src` to
/// `dst:dst_port` with an 18-byte payload and no UDP checksum (the generator rewrites the
/// source port of every copy; IPv4 allows UDP without a checksum).
#[must_use]
pub fn udp_template(dst_mac: Mac, src_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[..12].copy_from_slice(&[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = !xlane_wire::checksum::sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39]);
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&[0x00, 26, 0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    f
}

/// What [`udp_flood`] sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flood {
    /// Frames the kernel took for transmission (not those still in the TX ring when
    /// the socket closed).
    pub sent: u64,
    /// Seconds spent sending.
    pub seconds: f64,
}

/// The lab's bounded packet generator: `frames` copies of `template` (an Ethernet/IPv4/UDP
/// frame) out of `dev` in the calling thread's namespace through an AF_XDP socket in copy
/// mode, each with a random UDP source port (many flows); at most `max` long.
///
/// Copy-mode transmission goes through the interface's ordinary transmit path, so every
/// receiver — an XDP program or the kernel's stack — sees the same skbs, and each wakeup
/// sends what the peer accepts: the generator is paced by the receiving side the way a
/// NIC's ring would pace it. (An XDP live-frames generator — BPF_PROG_TEST_RUN with
/// XDP_TX — was tried: it is faster, but its frames reach a veth peer without an XDP
/// program only through GRO, which delivered a quarter of them: not a fair source for
/// the kernel baselines.)
///
/// # Errors
/// Socket setup failures.
pub fn udp_flood(dev: &str, template: &[u8], frames: u64, max: Duration) -> anyhow::Result<Flood> {
    use xlane_xdp::xsk::{BindMode, Umem, UmemSettings};
    let settings = UmemSettings { frames: 4096, fill_ring: 2048, rx_tx_ring: 2048, ..UmemSettings::default() };
    let mut umem = Umem::new(settings)?;
    let mut port = umem.open_port(dev, 0, BindMode::Copy)?;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut frame = template.to_vec();
    let mut batch: Vec<xlane_engine::Packet<u64>> = Vec::with_capacity(64);
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < frames && t0.elapsed() < max {
        umem.reap_completions(&mut port);
        batch.clear();
        for _ in 0..64 {
            // xorshift: a different source port per frame.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            frame[34..36].copy_from_slice(&rng.to_le_bytes()[..2]);
            let Some(fr) = umem.alloc_with(0, &frame) else { break };
            batch.push(fr);
        }
        let queued = umem.transmit(&mut port, &batch);
        for p in &batch[queued..] {
            umem.release(p.buf);
        }
        port.flush_tx(8);
        sent += queued as u64;
    }
    // Let the last descriptors go out before the socket closes.
    let drain = Instant::now();
    while port.tx_pending() > 0 && drain.elapsed() < Duration::from_millis(200) {
        port.flush_tx(8);
        umem.reap_completions(&mut port);
    }
    // What the kernel never took was never sent.
    Ok(Flood { sent: sent - u64::from(port.tx_pending()), seconds: t0.elapsed().as_secs_f64() })
}

/// A UDP echo server on `ip:port` in a namespace, answering every datagram to its
/// sender until dropped (stopped within `poll` of the drop).
#[derive(Debug)]
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    /// Bind in `ns` and start answering.
    ///
    /// # Errors
    /// Entering the namespace or binding the socket.
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16, poll: Duration) -> anyhow::Result<Self> {
        let sock = ns.enter(|| UdpSocket::bind(SocketAddrV4::new(ip, port)))??;
        sock.set_read_timeout(Some(poll))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new().name("udp-echo".into()).spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], peer);
                    }
                }
            })?
        };
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
