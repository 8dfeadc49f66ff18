//! The measurements: iperf3 TCP, a 64-byte UDP generator (the lab's AF_XDP copy-mode
//! generator, perf-lab/lab/src/traffic.rs `udp_flood`, copied here), UDP request/response
//! latency (as perf-lab/lab/src/bench.rs), and CPU time. Every loop is bounded.

use crate::fwd::{MAC_A, MAC_B, MAC_GW};
use crate::topo::{IP_A, IP_B, Topo};
use anyhow::{Context as _, bail};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Run `f` on a thread inside namespace `ns`.
pub fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> anyhow::Result<R> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> anyhow::Result<R> {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// iperf3 A → B: (Gbit/s received, retransmits).
pub fn iperf3(t: &Topo, streams: u32, seconds: u32) -> anyhow::Result<(f64, u64)> {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &t.b, "iperf3", "-s", "-1", "-B", IP_B, "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<(f64, u64)> {
        for _ in 0..50 {
            let o = Command::new("ip")
                .args(["netns", "exec", &t.a, "timeout", &(seconds + 20).to_string(), "iperf3", "-c", IP_B])
                .args(["-p", "5201", "-J", "-t", &seconds.to_string(), "-P", &streams.to_string()])
                .output()?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if v.get("error").and_then(|e| e.as_str()).is_some_and(|e| e.contains("unable to connect")) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let gbit = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .with_context(|| format!("iperf3: {}", v.get("error").map_or("no result".into(), ToString::to_string)))?;
            let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
            return Ok((gbit / 1e9, retr));
        }
        bail!("iperf3 never connected")
    })();
    // Our own child, by its PID.
    let _ = srv.kill();
    let _ = srv.wait();
    result
}

fn csum(b: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A 60-byte Ethernet/IPv4/UDP frame A → B:5300 (as traffic.rs `udp_template`).
fn udp_template(dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[..12].copy_from_slice(&[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip[12..16].copy_from_slice(&IP_A.parse::<Ipv4Addr>().expect("ip").octets());
    ip[16..20].copy_from_slice(&IP_B.parse::<Ipv4Addr>().expect("ip").octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x14, 0xb4, 0x00, 26, 0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    f
}

/// The lab's generator (traffic.rs `udp_flood`): copies of `template` out of `dev`
/// through an AF_XDP socket in copy mode, random source ports; returns (sent, seconds).
fn udp_flood(dev: &str, template: &[u8], frames: u64, max: Duration) -> anyhow::Result<(u64, f64)> {
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
    let drain = Instant::now();
    while port.tx_pending() > 0 && drain.elapsed() < Duration::from_millis(200) {
        port.flush_tx(8);
        umem.reap_completions(&mut port);
    }
    Ok((sent - u64::from(port.tx_pending()), t0.elapsed().as_secs_f64()))
}

/// 64-byte UDP A → B for `seconds`: (received pps at B's eth0, offered pps, frames
/// pod A's eth0 dropped on transmit).
pub fn udp_rate(t: &Topo, direct: bool, seconds: f64) -> anyhow::Result<(f64, f64, u64)> {
    let frame = udp_template(if direct { MAC_B } else { MAC_GW });
    // A bound sink keeps B from answering with port-unreachables; it never reads.
    let _sink = in_netns(&t.b, || UdpSocket::bind(SocketAddrV4::new(IP_B.parse().expect("ip"), 5300)))??;
    let before = t.rx_packets(&t.b, "eth0")?;
    let a_before = t.link_stats(&t.a, "eth0")?;
    let (sent, secs) = in_netns(&t.a, move || {
        // The generator on CPU 0, the forwarder on CPU 1.
        let mut set = nix::sched::CpuSet::new();
        let _ = set.set(0);
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        udp_flood("eth0", &frame, 20_000_000, Duration::from_secs_f64(seconds))
    })??;
    std::thread::sleep(Duration::from_millis(300));
    let got = t.rx_packets(&t.b, "eth0")? - before;
    let a_after = t.link_stats(&t.a, "eth0")?;
    let a_tx_dropped = a_after["tx"]["dropped"].as_u64().unwrap_or(0) - a_before["tx"]["dropped"].as_u64().unwrap_or(0);
    Ok((got as f64 / secs, sent as f64 / secs, a_tx_dropped))
}

/// Sequential UDP echoes A → B: (p50 µs, p99 µs, p99.9 µs, completed).
pub fn request_response(t: &Topo, requests: u32) -> anyhow::Result<(f64, f64, f64, usize)> {
    let srv = in_netns(&t.b, || UdpSocket::bind(SocketAddrV4::new(IP_B.parse().expect("ip"), 5400)))??;
    srv.set_read_timeout(Some(Duration::from_millis(100)))?;
    let done = Arc::new(AtomicBool::new(false));
    let echo = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if let Ok((n, from)) = srv.recv_from(&mut buf) {
                    let _ = srv.send_to(&buf[..n], from);
                }
            }
        })
    };
    let cli = in_netns(&t.a, || UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))??;
    cli.connect(SocketAddrV4::new(IP_B.parse()?, 5400))?;
    cli.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut lat = Vec::with_capacity(requests as usize);
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    for i in 0..requests {
        if t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        let req = i.to_le_bytes();
        let s = Instant::now();
        cli.send(&req)?;
        if let Ok(n) = cli.recv(&mut buf)
            && buf[..n] == req
        {
            lat.push(s.elapsed().as_secs_f64() * 1e6);
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = echo.join();
    if lat.len() < requests as usize / 2 {
        bail!("only {} of {requests} round trips completed", lat.len());
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Ok((q(0.5), q(0.99), q(0.999), lat.len()))
}

/// CPU ticks (utime + stime, all threads) of process `pid`.
pub fn proc_ticks(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .map(|s| {
            // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
            let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

/// (busy, softirq, total) jiffies of all CPUs from /proc/stat.
pub fn system_ticks() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else { return (0, 0, 1) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, v.get(6).copied().unwrap_or(0), total.max(1))
}

/// CPU use over a measurement.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    t: Instant,
    fwd: u64,
    sys: (u64, u64, u64),
    pid: Option<u32>,
}

impl Cpu {
    pub fn start(pid: Option<u32>) -> Self {
        Self { t: Instant::now(), fwd: pid.map_or(0, proc_ticks), sys: system_ticks(), pid }
    }

    /// (forwarder % of one CPU, machine busy % of all CPUs, softirq % of all CPUs).
    pub fn end(&self) -> (f64, f64, f64) {
        let dt = self.t.elapsed().as_secs_f64();
        let fwd = self.pid.map_or(0, proc_ticks) - self.fwd;
        let (b, si, tot) = system_ticks();
        let dtot = (tot - self.sys.2).max(1) as f64;
        (fwd as f64 / dt, (b - self.sys.0) as f64 * 100.0 / dtot, (si - self.sys.1) as f64 * 100.0 / dtot)
    }
}
