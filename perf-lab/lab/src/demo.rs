//! `demo`: the first thing a newcomer runs. A lab of N nodes in network namespaces (a
//! fabric namespace with a bridge as the underlay; each node a namespace with its uplink,
//! xlaned and xlane-agent), pods attached through the real CNI plugin, then ping, a TCP
//! transfer and a short UDP packet-rate test between pods on different nodes, a summary
//! that says where the datagrams that did not arrive were lost ([`crate::losses`]), and
//! a teardown that leaves nothing behind — also on Ctrl-C or failure. A rerun after a
//! crash first removes what the dead run left.

use crate::losses::{self, Ledger, Path};
use crate::traffic;
use anyhow::Context as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xlane_netlab::cluster::{Cluster, ClusterOptions, CniPod};

/// Namespace and run-directory prefix of the demo.
pub const PREFIX: &str = "xdemo";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab nodes (≥ 2).
    pub nodes: u8,
    /// Megabytes moved over TCP.
    pub tcp_mb: usize,
    /// Seconds of UDP packet-rate test (also bounded by a packet count).
    pub udp_seconds: f64,
    /// Where to write the results as JSON.
    pub json: Option<std::path::PathBuf>,
}

/// Progress on stderr, results on stdout.
fn step(n: usize, total: usize, what: &str) {
    eprintln!("[{n}/{total}] {what}");
}

/// Run the demo; `stop` is raised by SIGINT/SIGTERM.
///
/// # Errors
/// Anything that did not work (the lab is torn down either way).
pub fn run(opts: &Options, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the demo needs root (network namespaces, XDP)");
    anyhow::ensure!(opts.nodes >= 2, "the demo needs at least 2 nodes");
    let interrupted = || {
        if stop.load(Ordering::Relaxed) { Err(anyhow::anyhow!("interrupted; tearing down")) } else { Ok(()) }
    };
    let swept = xlane_netlab::sweep::sweep(PREFIX).context("cleaning up an earlier run")?;
    if swept != xlane_netlab::sweep::Swept::default() {
        eprintln!(
            "cleaned up an earlier run that did not finish: {} namespaces, {} daemons",
            swept.namespaces, swept.processes
        );
    }
    let total = 6;
    let t0 = Instant::now();
    step(
        1,
        total,
        &format!("building the lab: a fabric bridge and {} nodes, each with xlaned and xlane-agent", opts.nodes),
    );
    let cluster = Cluster::start(PREFIX, opts.nodes, &ClusterOptions::default())?;
    interrupted()?;
    step(2, total, "attaching one pod per node through the xlane CNI plugin");
    let mut pods: Vec<CniPod> = Vec::new();
    let attached = (|| -> anyhow::Result<()> {
        for i in 0..cluster.nodes.len() {
            pods.push(cluster.attach_pod(i, &format!("pod{i}"))?);
            interrupted()?;
        }
        let result = measure(&cluster, &pods, opts, stop, &interrupted, total)?;
        print_summary(&cluster, &pods, &result, t0.elapsed());
        if let Some(path) = &opts.json {
            std::fs::write(path, serde_json::to_vec_pretty(&result.to_json(&cluster, &pods))?)?;
        }
        Ok(())
    })();
    if attached.is_ok() {
        step(total, total, "tearing down: pods deleted through CNI, daemons stopped, namespaces removed");
        for p in &pods {
            cluster.detach_pod(p)?;
        }
        anyhow::ensure!(cluster.allocations(0)?.is_empty(), "CNI DEL left an address behind");
    }
    drop(pods);
    drop(cluster);
    attached?;
    let left = xlane_netlab::namespaces_of(PREFIX, std::process::id())?;
    anyhow::ensure!(left.is_empty(), "left behind: {left:?}");
    eprintln!("done in {:.1} s; nothing left behind", t0.elapsed().as_secs_f64());
    Ok(())
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Ping: sent, received, average RTT (ms).
    pub ping: traffic::PingStats,
    /// TCP: bytes, seconds, intact.
    pub tcp: traffic::TcpStats,
    /// UDP packet rate.
    pub udp: traffic::UdpStats,
    /// Where the UDP test's datagrams went.
    pub udp_losses: Ledger,
}

impl Measured {
    fn to_json(&self, cluster: &Cluster, pods: &[CniPod]) -> serde_json::Value {
        serde_json::json!({
            "nodes": cluster.lab.nodes.iter().map(|n| serde_json::json!({"ip": n.ip, "subnet": n.subnet_cidr()})).collect::<Vec<_>>(),
            "pods": pods.iter().map(|p| serde_json::json!({"node": p.node, "ip": p.ip})).collect::<Vec<_>>(),
            "ping": {"sent": self.ping.sent, "received": self.ping.received, "rtt_avg_ms": self.ping.rtt_avg_ms},
            "tcp": {"bytes": self.tcp.bytes, "seconds": self.tcp.seconds, "intact": self.tcp.intact, "gbit_s": self.tcp.gbit_s()},
            "udp": {"frame_bytes": 64, "sent": self.udp.sent, "send_errors": self.udp.send_errors, "received": self.udp.received,
                "seconds": self.udp.seconds, "pps": self.udp.pps(), "losses": self.udp_losses},
        })
    }
}

fn measure(
    cluster: &Cluster,
    pods: &[CniPod],
    opts: &Options,
    stop: &AtomicBool,
    interrupted: &dyn Fn() -> anyhow::Result<()>,
    total: usize,
) -> anyhow::Result<Measured> {
    let (a, b) = (&pods[0], &pods[1]);
    step(3, total, &format!("ping {} (node 0) → {} (node 1)", a.ip, b.ip));
    let ping = traffic::ping(&a.ns, b.ip, 5)?;
    anyhow::ensure!(ping.received == ping.sent, "ping lost {} of {}", ping.sent - ping.received, ping.sent);
    interrupted()?;
    step(4, total, &format!("TCP: {} MB from node 0's pod to node 1's, checked byte for byte", opts.tcp_mb));
    let tcp = traffic::tcp_transfer(&a.ns, &b.ns, b.ip, opts.tcp_mb * 1_000_000, stop)?;
    anyhow::ensure!(tcp.intact, "the TCP transfer arrived corrupted");
    interrupted()?;
    // Every counter on the way, before and after, to say where the datagrams that did
    // not arrive were lost.
    let path = Path { lab: &cluster.lab, xlane: Some(cluster), sender: &a.ns, receiving_app: Some(&b.ns) };
    let before = path.snapshot()?;
    step(5, total, &format!("UDP: 64-byte packets for {:.1} s (at most 5 M), 16 flows", opts.udp_seconds));
    let udp = traffic::udp_rate(&a.ns, &b.ns, b.ip, Duration::from_secs_f64(opts.udp_seconds), 5_000_000, 16, stop)?;
    anyhow::ensure!(udp.received > 0, "no UDP packet arrived");
    interrupted()?;
    let udp_losses = Ledger::from_snapshots(udp.offered(), udp.received, udp.send_errors, &before, &path.snapshot()?);
    interrupted()?;
    Ok(Measured { ping, tcp, udp, udp_losses })
}

fn print_summary(cluster: &Cluster, pods: &[CniPod], m: &Measured, elapsed: Duration) {
    println!();
    println!("xlane demo: {} nodes in network namespaces, pods attached by the CNI plugin", cluster.lab.nodes.len());
    for (i, n) in cluster.lab.nodes.iter().enumerate() {
        let pod = pods.iter().find(|p| p.node == i).map_or_else(String::new, |p| p.ip.to_string());
        println!("  node {i}  underlay {:<14} pod subnet {:<15} pod {pod}", n.ip, n.subnet_cidr());
    }
    println!();
    println!("  ping   {}/{} answered, rtt avg {:.3} ms", m.ping.received, m.ping.sent, m.ping.rtt_avg_ms);
    println!(
        "  TCP    {:.1} MB in {:.2} s = {:.2} Gbit/s, {}",
        m.tcp.bytes as f64 / 1e6,
        m.tcp.seconds,
        m.tcp.gbit_s(),
        if m.tcp.intact { "intact" } else { "CORRUPTED" }
    );
    println!(
        "  UDP    {} sent, {} received ({:.1}%) in {:.2} s = {:.0} kpps received",
        m.udp.sent,
        m.udp.received,
        100.0 * m.udp.received as f64 / m.udp.sent.max(1) as f64,
        m.udp.seconds,
        m.udp.pps() / 1000.0
    );
    println!("         {}", m.udp_losses.summary());
    for i in 0..cluster.nodes.len() {
        if let Ok(c) = cluster.counters(i) {
            let drops: u64 = c.drops.values().sum();
            let ring_drops: u64 = c.ports.iter().map(losses::ring_drops).sum();
            println!(
                "  node {i} dataplane: {} frames in, {} out, {} encapsulated, {} decapsulated, {} dropped in the \
                 pipeline, {} at its sockets and rings",
                c.pipeline.get("rx").copied().unwrap_or(0),
                c.pipeline.get("tx").copied().unwrap_or(0),
                c.pipeline.get("encapsulated").copied().unwrap_or(0),
                c.pipeline.get("decapsulated").copied().unwrap_or(0),
                drops,
                ring_drops
            );
        }
    }
    println!(
        "  (lab up and measured in {:.1} s; the packet rate of veth on a shared VM is no NIC's)",
        elapsed.as_secs_f64()
    );
    println!();
}
