//! vhost-user rates, xlane beside DPDK with the same frontend — DPDK testpmd's
//! virtio-user, 64-byte frames — in alternating rounds of the same run, each backend with
//! a fresh frontend. Cores as PLATFORM.md advises: the frontend's forwarding lcore on
//! core 1, every thread of the backend on core 0.
//!
//! * ingest: the frontend in `txonly` into a VM pod's port of a running xlaned (frames
//!   through the pipeline, dropped there: no route) and into DPDK's `net_vhost` with
//!   testpmd `rxonly`;
//! * egress: xlane-vhost's guest-bound path, fed the way xlaned's workers feed it (a
//!   thread sending bursts of 32), and DPDK's `net_vhost` with testpmd
//!   `txonly`, both into the frontend in `rxonly`.

use anyhow::Context as _;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use xlane_api::{Client, EndpointSpec, Mac, Op, Reply, Table};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::dpdk::Testpmd;
use xlane_vhost::backend::PortIo;
use xlane_vhost::server::VhostUserPort;

/// The frontend: main lcore on core 0, forwarding lcore on core 1.
const FRONTEND_CORES: &str = "0@0,1@1";
/// DPDK's backend: forwarding lcore on core 0 (main lcore idle on core 1).
const DPDK_BACKEND_CORES: &str = "0@1,1@0";
/// How long a frontend may take to start transmitting (EAL set-up without hugepages,
/// the vhost-user handshake).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which way frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the guest (the frontend transmits).
    Ingest,
    /// To the guest (the frontend receives).
    Egress,
}

/// One backend's figures over every round.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    /// Median of the frontend's per-second rates (transmit for ingest, receive for
    /// egress), packets/s, over all rounds.
    pub frontend_pps: f64,
    /// Their 90th percentile: the rate when the machine lets it run at speed.
    pub frontend_p90_pps: f64,
    /// What the backend counted per second, averaged over the rounds: for xlane's
    /// ingest frames through the pipeline, for its egress frames into the guest's ring;
    /// for DPDK testpmd's own receive or transmit rate.
    pub backend_pps: f64,
    /// The frontend's per-second rates, ramp-up skipped, one list per round.
    pub samples: Vec<Vec<u64>>,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Which way.
    pub direction: Direction,
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
        let backend_pps = segments.iter().map(|s| s.delivered_pps).sum::<f64>() / segments.len().max(1) as f64;
        let all = samples.concat();
        Self { frontend_pps: median(&all), frontend_p90_pps: quantile(&all, 0.9), backend_pps, samples }
    }
}

/// A frontend on `sock`: in ingest `txonly` from `src` to `dst` through `peer`, in
/// egress `rxonly`.
fn frontend(direction: Direction, sock: &Path, src: Ipv4Addr, dst: Ipv4Addr, peer: Mac) -> anyhow::Result<Testpmd> {
    let (src_dst, eth_peer) = (format!("--tx-ip={src},{dst}"), format!("--eth-peer=0,{peer}"));
    let mut app = vec!["--stats-period=1", "--total-num-mbufs=16384"];
    match direction {
        Direction::Ingest => app.extend(["--forward-mode=txonly", &src_dst, &eth_peer]),
        Direction::Egress => app.push("--forward-mode=rxonly"),
    }
    Testpmd::spawn(
        None,
        FRONTEND_CORES,
        &[&format!("net_virtio_user0,path={},queues=1,mac={VM_MAC}", sock.display())],
        &app,
    )
    .context("running dpdk-testpmd (apt-get install dpdk)")
}

/// The frontend's rates for `direction`.
fn rates(t: &Testpmd, direction: Direction) -> Vec<u64> {
    match direction {
        Direction::Ingest => t.tx_pps(),
        Direction::Egress => t.rx_pps(),
    }
}

/// Wait until frames flow (a nonzero rate); how many rates the frontend had printed by
/// then: the ones after are whole seconds at speed.
fn flowing(t: &mut Testpmd, direction: Direction, stop: &AtomicBool) -> anyhow::Result<usize> {
    let t0 = std::time::Instant::now();
    loop {
        let rates = rates(t, direction);
        if rates.iter().any(|&r| r > 0) {
            return Ok(rates.len());
        }
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        anyhow::ensure!(t.running(), "the frontend exited before frames flowed");
        anyhow::ensure!(t0.elapsed() < START_TIMEOUT, "no frames within {START_TIMEOUT:?}: {rates:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Let the frontend run `seconds` (interruptible); the rates it printed after the first
/// `from`.
fn run_for(
    t: &Testpmd,
    direction: Direction,
    from: usize,
    seconds: u32,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<u64>> {
    for _ in 0..seconds * 10 {
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let samples = rates(t, direction).split_off(from);
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

/// Frames of the VM pod's port that went through the pipeline.
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
/// The frontend's (the guest's) MAC.
const VM_MAC: Mac = Mac([2, 0, 0x0a, 0xf4, 1, 0xfa]);
/// Where a frontend sends when the backend does not route (DPDK's).
const ANY_PEER: Mac = Mac([2, 0, 0, 0, 0, 1]);
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
            mac: VM_MAC,
            vhost_user: Some(sock.clone()),
            veth_io: Default::default(),
        };
        let gateway = match Client::connect(&xlaned)?.call(Op::AddEndpoint(spec))? {
            Reply::EndpointReady { gateway_mac, .. } => gateway_mac,
            other => anyhow::bail!("xlaned refused the vhost-user port: {other:?}"),
        };
        pin_process(cluster.nodes[0].xlaned.pid().context("xlaned exited")?, 0)?;
        Ok(Self { _cluster: cluster, sock, xlaned, gateway })
    }
}

/// xlane's side of a comparison, whichever the direction.
trait XlaneSide {
    /// The socket a frontend connects to.
    fn sock(&self) -> &Path;
    /// Where the frontend sends (ingest).
    fn peer(&self) -> Mac;
    /// Frames xlane has handled so far: through the pipeline, or into the guest.
    fn handled(&self) -> anyhow::Result<u64>;
}

impl XlaneSide for XlaneTarget {
    fn sock(&self) -> &Path {
        &self.sock
    }
    fn peer(&self) -> Mac {
        self.gateway
    }
    fn handled(&self) -> anyhow::Result<u64> {
        processed(&self.xlaned)
    }
}

/// One round of xlane's side with a fresh frontend.
fn xlane_segment(
    side: &dyn XlaneSide,
    direction: Direction,
    seconds: u32,
    stop: &AtomicBool,
) -> anyhow::Result<Segment> {
    let mut t = frontend(direction, side.sock(), VM_IP, NOWHERE, side.peer())?;
    let from = flowing(&mut t, direction, stop)?;
    let before = (side.handled()?, std::time::Instant::now());
    let samples = run_for(&t, direction, from, seconds, stop)?;
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    let delivered_pps = (side.handled()? - before.0) as f64 / before.1.elapsed().as_secs_f64();
    Ok(Segment { samples, delivered_pps })
}

fn dpdk_segment(direction: Direction, seconds: u32, dir: &Path, stop: &AtomicBool) -> anyhow::Result<Segment> {
    let sock = dir.join("dpdk-vm.sock");
    let _ = std::fs::remove_file(&sock);
    let mode = match direction {
        Direction::Ingest => "--forward-mode=rxonly",
        Direction::Egress => "--forward-mode=txonly",
    };
    let backend = Testpmd::spawn(
        None,
        DPDK_BACKEND_CORES,
        &[&format!("net_vhost0,iface={},queues=1", sock.display())],
        &[mode, "--stats-period=1", "--total-num-mbufs=16384"],
    )?;
    let t0 = std::time::Instant::now();
    while !sock.exists() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "DPDK's net_vhost did not create {}", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut t = frontend(direction, &sock, VM_IP, NOWHERE, ANY_PEER)?;
    let from = flowing(&mut t, direction, stop)?;
    let samples = run_for(&t, direction, from, seconds, stop)?;
    let backend_rates = match direction {
        Direction::Ingest => backend.rx_pps(),
        Direction::Egress => backend.tx_pps(),
    };
    let delivered_pps = median(steady(&backend_rates));
    drop(t);
    drop(backend);
    Ok(Segment { samples, delivered_pps })
}

/// xlane-vhost's guest-bound path on its own: a port whose dataplane side is a thread
/// sending bursts of 32 frames, as a worker does.
struct EgressTarget {
    port: Option<xlane_vhost::server::VhostUserPort>,
    io: Arc<PortIo>,
    sock: std::path::PathBuf,
    done: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl EgressTarget {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let sock = dir.join("xlane-egress.sock");
        let io = PortIo::new(1024)?;
        let port = VhostUserPort::spawn(sock.clone(), Arc::clone(&io), VM_MAC.0, 1450)?;
        let done = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (io, done) = (Arc::clone(&io), Arc::clone(&done));
            std::thread::Builder::new().name("egress-feeder".into()).spawn(move || {
                // A 64-byte frame to the guest; its bytes do not matter to rxonly.
                let mut frame = [0u8; 64];
                frame[..6].copy_from_slice(&VM_MAC.0);
                frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                while !done.load(Ordering::Relaxed) {
                    if io.send_burst_to_guest(std::iter::repeat_n(&frame[..], 32)) == 0 {
                        // The guest's ring is full (or, before the guest, the queue to
                        // it): let the backend thread run.
                        std::thread::yield_now();
                    }
                }
            })?
        };
        // The port's threads and the feeder share core 0, as a worker and its backends do
        // in xlaned pinned to one core.
        pin_process(std::process::id(), 0)?;
        Ok(Self { port: Some(port), io, sock, done, feeder: Some(feeder) })
    }
}

impl XlaneSide for EgressTarget {
    fn sock(&self) -> &Path {
        &self.sock
    }
    fn peer(&self) -> Mac {
        ANY_PEER
    }
    fn handled(&self) -> anyhow::Result<u64> {
        Ok(self.io.counters.to_guest.load(Ordering::Relaxed))
    }
}

impl Drop for EgressTarget {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        drop(self.port.take());
        // Later work of this process (the next benchmark) is not confined to core 0.
        let mut all = nix::sched::CpuSet::new();
        for core in 0..nix::sched::CpuSet::count() {
            let _ = all.set(core);
        }
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all);
    }
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
pub fn run(direction: Direction, seconds: u32, rounds: u32, stop: &AtomicBool) -> anyhow::Result<Comparison> {
    let dir = std::env::temp_dir().join(format!("xlane-vhost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = (|| {
        let side: Box<dyn XlaneSide> = match direction {
            Direction::Ingest => Box::new(XlaneTarget::start(&dir)?),
            Direction::Egress => Box::new(EgressTarget::start(&dir)?),
        };
        let xlane_segment = || xlane_segment(&*side, direction, seconds, stop);
        let (mut xlane, mut dpdk, mut round_ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            let (x, d) = if round % 2 == 0 {
                let x = xlane_segment()?;
                (x, dpdk_segment(direction, seconds, &dir, stop)?)
            } else {
                let d = dpdk_segment(direction, seconds, &dir, stop)?;
                (xlane_segment()?, d)
            };
            round_ratios.push(ratio(median(&x.samples), median(&d.samples)));
            xlane.push(x);
            dpdk.push(d);
        }
        let (xlane, dpdk) = (Backend::from_segments(&xlane), Backend::from_segments(&dpdk));
        let median_ratio = ratio(xlane.frontend_pps, dpdk.frontend_pps);
        let ratio = ratio(xlane.frontend_p90_pps, dpdk.frontend_p90_pps);
        Ok(Comparison { direction, seconds, rounds: rounds.max(1), xlane, dpdk, ratio, median_ratio, round_ratios })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
