//! vhost-user ingest: the same frontend — DPDK testpmd's virtio-user in `txonly`, 64-byte
//! frames — transmitting into xlane's backend (a VM pod's port of a running xlaned, the
//! frames going through the pipeline) and into DPDK's own `net_vhost` backend (testpmd
//! `rxonly`), one after the other in the same run. Cores as PLATFORM.md advises: the
//! frontend's forwarding lcore on core 1, every thread of the backend on core 0.

use anyhow::Context as _;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use xlane_api::{Client, EndpointSpec, Mac, Op, Reply, Table};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::dpdk::Testpmd;

/// The frontend: main lcore on core 0, forwarding lcore on core 1.
const FRONTEND_CORES: &str = "0@0,1@1";
/// DPDK's backend: forwarding lcore on core 0 (main lcore idle on core 1).
const DPDK_BACKEND_CORES: &str = "0@1,1@0";
/// Rate samples (one a second) skipped while the frontend ramps up.
const WARMUP_SAMPLES: usize = 2;

/// One backend's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    /// Median of the frontend's per-second transmit rate, packets/s.
    pub frontend_tx_pps: f64,
    /// What the backend delivered per second over the same window: for xlane, frames
    /// through the pipeline; for DPDK, testpmd's receive rate.
    pub backend_rx_pps: f64,
    /// Per-second samples of the frontend's rate.
    pub samples: Vec<u64>,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    /// Seconds per backend.
    pub seconds: u32,
    /// xlane's backend.
    pub xlane: Backend,
    /// DPDK's `net_vhost`.
    pub dpdk: Backend,
    /// xlane / DPDK on the frontend's rate (goal ≥ 0.8).
    pub ratio: f64,
}

fn median(v: &[u64]) -> f64 {
    let mut v: Vec<u64> = v.iter().skip(WARMUP_SAMPLES).copied().collect();
    v.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    v.get(v.len() / 2).map_or(0.0, |&x| x as f64)
}

fn frontend(sock: &Path, src: Ipv4Addr, dst: Ipv4Addr, peer: Mac) -> anyhow::Result<Testpmd> {
    Testpmd::spawn(
        None,
        FRONTEND_CORES,
        &[&format!("net_virtio_user0,path={},queues=1,mac=02:00:0a:f4:01:fa", sock.display())],
        &[
            "--forward-mode=txonly",
            "--stats-period=1",
            "--total-num-mbufs=16384",
            &format!("--tx-ip={src},{dst}"),
            &format!("--eth-peer=0,{peer}"),
        ],
    )
    .context("running dpdk-testpmd (apt-get install dpdk)")
}

/// Let the frontend run `seconds` (interruptible), then its rates.
fn run_for(t: &Testpmd, seconds: u32, stop: &AtomicBool) -> anyhow::Result<Vec<u64>> {
    for _ in 0..seconds * 10 {
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let samples = t.tx_pps();
    anyhow::ensure!(samples.len() > WARMUP_SAMPLES, "testpmd printed no rates: did it start? ({samples:?})");
    Ok(samples)
}

/// Pin every thread of `pid` to `core`.
fn pin_process(pid: u32, core: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)?;
    }
    Ok(())
}

/// Frames of the VM pod's port that went through the pipeline (not merely read from the
/// ring: frames the backend could not queue for a worker are drops, not throughput).
fn processed(xlaned: &Path) -> anyhow::Result<u64> {
    match Client::connect(xlaned)?.call(Op::Dump { table: Table::Ports })? {
        Reply::Ports { ports } => Ok(ports.iter().filter(|p| p.vhost_user.is_some()).map(|p| p.rx).sum()),
        other => anyhow::bail!("xlaned: {other:?}"),
    }
}

fn xlane(seconds: u32, dir: &Path, stop: &AtomicBool) -> anyhow::Result<Backend> {
    let c = Cluster::start("xvi", 1, &ClusterOptions::default())?;
    let sock = dir.join("xlane-vm.sock");
    let vm_ip = Ipv4Addr::new(10, 244, 1, 250);
    let xl = c.nodes[0].xlaned_socket.clone();
    let spec = EndpointSpec {
        ifname: "vm0".into(),
        ip: vm_ip,
        mac: Mac([2, 0, 0x0a, 0xf4, 1, 0xfa]),
        vhost_user: Some(sock.clone()),
    };
    let gateway = match Client::connect(&xl)?.call(Op::AddEndpoint(spec))? {
        Reply::EndpointReady { gateway_mac, .. } => gateway_mac,
        other => anyhow::bail!("xlaned refused the vhost-user port: {other:?}"),
    };
    pin_process(c.nodes[0].xlaned.pid().context("xlaned exited")?, 0)?;
    // To an address in the cluster no node leases: the pipeline drops it (no route),
    // as testpmd rxonly frees what it receives.
    let t = frontend(&sock, vm_ip, Ipv4Addr::new(10, 244, 250, 1), gateway)?;
    std::thread::sleep(Duration::from_secs(1));
    let before = (processed(&xl)?, std::time::Instant::now());
    let samples = run_for(&t, seconds, stop)?;
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    let backend_rx_pps = (processed(&xl)? - before.0) as f64 / before.1.elapsed().as_secs_f64();
    drop(t);
    Ok(Backend { frontend_tx_pps: median(&samples), backend_rx_pps, samples })
}

fn dpdk(seconds: u32, dir: &Path, stop: &AtomicBool) -> anyhow::Result<Backend> {
    let sock = dir.join("dpdk-vm.sock");
    let backend = Testpmd::spawn(
        None,
        DPDK_BACKEND_CORES,
        &[&format!("net_vhost0,iface={},queues=1", sock.display())],
        &["--forward-mode=rxonly", "--stats-period=1", "--total-num-mbufs=16384"],
    )?;
    let t0 = std::time::Instant::now();
    while !sock.exists() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "DPDK's net_vhost did not create {}", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = frontend(&sock, Ipv4Addr::new(10, 244, 1, 250), Ipv4Addr::new(10, 244, 250, 1), Mac([2, 0, 0, 0, 0, 1]))?;
    let samples = run_for(&t, seconds, stop)?;
    let backend_rx_pps = median(&backend.rx_pps());
    drop(t);
    drop(backend);
    Ok(Backend { frontend_tx_pps: median(&samples), backend_rx_pps, samples })
}

/// Run both backends for `seconds` each.
///
/// # Errors
/// Setup failures, `stop`.
pub fn run(seconds: u32, stop: &AtomicBool) -> anyhow::Result<Ingest> {
    let dir = std::env::temp_dir().join(format!("xlane-vhost-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = (|| {
        let xlane = xlane(seconds, &dir, stop)?;
        let dpdk = dpdk(seconds, &dir, stop)?;
        let ratio = if dpdk.frontend_tx_pps > 0.0 { xlane.frontend_tx_pps / dpdk.frontend_tx_pps } else { 0.0 };
        Ok(Ingest { seconds, xlane, dpdk, ratio })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}
