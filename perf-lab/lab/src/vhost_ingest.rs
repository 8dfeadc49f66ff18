//! vhost-user ingest: the same frontend — DPDK testpmd's virtio-user in `txonly`, 64-byte
//! frames — transmitting into xlane's backend (a VM pod's port of a running xlaned, the
//! frames going through the pipeline) and into DPDK's own `net_vhost` backend (testpmd
//! `rxonly`), in alternating rounds of the same run, each backend with a fresh frontend.
//! Cores as PLATFORM.md advises: the frontend's forwarding lcore on core 1, every thread
//! of the backend on core 0.

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
/// How long a frontend may take to start transmitting (EAL set-up without hugepages,
/// the vhost-user handshake).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One backend's figures over every round.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    /// Median of the frontend's per-second transmit rates, packets/s, over all rounds.
    pub frontend_tx_pps: f64,
    /// Their 90th percentile: the rate when the machine lets it run at speed.
    pub frontend_tx_p90_pps: f64,
    /// What the backend delivered per second, averaged over the rounds: for xlane,
    /// frames through the pipeline; for DPDK, testpmd's receive rate.
    pub backend_rx_pps: f64,
    /// The frontend's per-second rates, ramp-up skipped, one list per round.
    pub samples: Vec<Vec<u64>>,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    /// Seconds per backend and round.
    pub seconds: u32,
    /// Rounds: each runs both backends, in alternating order.
    pub rounds: u32,
    /// xlane's backend.
    pub xlane: Backend,
    /// DPDK's `net_vhost`.
    pub dpdk: Backend,
    /// xlane / DPDK on the 90th percentile of the frontend's rates (goal ≥ 0.8).
    pub ratio: f64,
    /// xlane / DPDK on the medians.
    pub median_ratio: f64,
    /// xlane / DPDK on the medians within each round.
    pub round_ratios: Vec<f64>,
}

/// One backend's run in one round.
struct Segment {
    /// Frontend rates, ramp-up skipped.
    samples: Vec<u64>,
    delivered_pps: f64,
}

/// The `q` quantile (0..=1, nearest rank) of `v`.
fn quantile(v: &[u64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rates and a handful of samples"
    )]
    let rank = ((v.len().saturating_sub(1)) as f64 * q).round() as usize;
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    v.get(rank).map_or(0.0, |&x| x as f64)
}

fn median(v: &[u64]) -> f64 {
    quantile(v, 0.5)
}

impl Backend {
    fn from_segments(segments: &[Segment]) -> Self {
        let samples: Vec<Vec<u64>> = segments.iter().map(|s| s.samples.clone()).collect();
        #[expect(clippy::cast_precision_loss, reason = "a handful of rounds")]
        let backend_rx_pps = segments.iter().map(|s| s.delivered_pps).sum::<f64>() / segments.len().max(1) as f64;
        let all = samples.concat();
        Self { frontend_tx_pps: median(&all), frontend_tx_p90_pps: quantile(&all, 0.9), backend_rx_pps, samples }
    }
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

/// Wait until the frontend transmits (a nonzero rate); how many rates it had printed
/// by then: the ones after are whole seconds at speed.
fn transmitting(t: &mut Testpmd, stop: &AtomicBool) -> anyhow::Result<usize> {
    let t0 = std::time::Instant::now();
    loop {
        let rates = t.tx_pps();
        if rates.iter().any(|&r| r > 0) {
            return Ok(rates.len());
        }
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        anyhow::ensure!(t.running(), "the frontend exited before transmitting");
        anyhow::ensure!(
            t0.elapsed() < START_TIMEOUT,
            "the frontend did not transmit within {START_TIMEOUT:?}: {rates:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Let the frontend run `seconds` (interruptible); the rates it printed after the first
/// `from`.
fn run_for(t: &Testpmd, from: usize, seconds: u32, stop: &AtomicBool) -> anyhow::Result<Vec<u64>> {
    for _ in 0..seconds * 10 {
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let samples = t.tx_pps().split_off(from);
    anyhow::ensure!(!samples.is_empty(), "testpmd printed no rates in {seconds} s");
    Ok(samples)
}

/// Rates once at speed: from the one after the first nonzero (which covers the start).
fn steady(rates: &[u64]) -> &[u64] {
    rates.iter().position(|&r| r > 0).map_or(&[], |i| &rates[i + 1..])
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

/// A running xlaned with a VM pod's port, fed by a fresh frontend each round.
struct XlaneTarget {
    _cluster: Cluster,
    sock: std::path::PathBuf,
    xlaned: std::path::PathBuf,
    gateway: Mac,
}

const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 250);
/// An address in the cluster no node leases: xlane's pipeline drops it (no route), as
/// testpmd rxonly frees what it receives.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(10, 244, 250, 1);

impl XlaneTarget {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let cluster = Cluster::start("xvi", 1, &ClusterOptions::default())?;
        let sock = dir.join("xlane-vm.sock");
        let xlaned = cluster.nodes[0].xlaned_socket.clone();
        let spec = EndpointSpec {
            ifname: "vm0".into(),
            ip: VM_IP,
            mac: Mac([2, 0, 0x0a, 0xf4, 1, 0xfa]),
            vhost_user: Some(sock.clone()),
        };
        let gateway = match Client::connect(&xlaned)?.call(Op::AddEndpoint(spec))? {
            Reply::EndpointReady { gateway_mac, .. } => gateway_mac,
            other => anyhow::bail!("xlaned refused the vhost-user port: {other:?}"),
        };
        pin_process(cluster.nodes[0].xlaned.pid().context("xlaned exited")?, 0)?;
        Ok(Self { _cluster: cluster, sock, xlaned, gateway })
    }

    fn segment(&self, seconds: u32, stop: &AtomicBool) -> anyhow::Result<Segment> {
        let mut t = frontend(&self.sock, VM_IP, NOWHERE, self.gateway)?;
        let from = transmitting(&mut t, stop)?;
        let before = (processed(&self.xlaned)?, std::time::Instant::now());
        let samples = run_for(&t, from, seconds, stop)?;
        #[expect(clippy::cast_precision_loss, reason = "rates")]
        let delivered_pps = (processed(&self.xlaned)? - before.0) as f64 / before.1.elapsed().as_secs_f64();
        Ok(Segment { samples, delivered_pps })
    }
}

fn dpdk_segment(seconds: u32, dir: &Path, stop: &AtomicBool) -> anyhow::Result<Segment> {
    let sock = dir.join("dpdk-vm.sock");
    let _ = std::fs::remove_file(&sock);
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
    let mut t = frontend(&sock, VM_IP, NOWHERE, Mac([2, 0, 0, 0, 0, 1]))?;
    let from = transmitting(&mut t, stop)?;
    let samples = run_for(&t, from, seconds, stop)?;
    let delivered_pps = median(steady(&backend.rx_pps()));
    drop(t);
    drop(backend);
    Ok(Segment { samples, delivered_pps })
}

/// Run both backends for `seconds` each, `rounds` times, alternating which goes first.
/// On this machine the rate is bimodal: the same frontend and backend run at ~17 Mpps
/// or at ~5 Mpps for tens of seconds, DPDK on both sides included — likely the host
/// placing the two vCPUs near or far apart (cache-line transfers between them are the
/// workload). Interleaving gives both backends the same chances, and the headline
/// compares their 90th percentiles: noise only ever slows a run down, so the upper
/// rates are each backend's own speed; the medians are reported beside them.
///
/// # Errors
/// Setup failures, `stop`.
pub fn run(seconds: u32, rounds: u32, stop: &AtomicBool) -> anyhow::Result<Ingest> {
    let dir = std::env::temp_dir().join(format!("xlane-vhost-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = (|| {
        let target = XlaneTarget::start(&dir)?;
        let (mut xlane, mut dpdk, mut round_ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            let (x, d) = if round % 2 == 0 {
                let x = target.segment(seconds, stop)?;
                (x, dpdk_segment(seconds, &dir, stop)?)
            } else {
                let d = dpdk_segment(seconds, &dir, stop)?;
                (target.segment(seconds, stop)?, d)
            };
            round_ratios.push(ratio(median(&x.samples), median(&d.samples)));
            xlane.push(x);
            dpdk.push(d);
        }
        let (xlane, dpdk) = (Backend::from_segments(&xlane), Backend::from_segments(&dpdk));
        let median_ratio = ratio(xlane.frontend_tx_pps, dpdk.frontend_tx_pps);
        let ratio = ratio(xlane.frontend_tx_p90_pps, dpdk.frontend_tx_p90_pps);
        Ok(Ingest { seconds, rounds: rounds.max(1), xlane, dpdk, ratio, median_ratio, round_ratios })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
