//! xlane-lab: the perf-lab — the one-command demo and measurements.
//!
//! `demo`: see [`demo`].
//!
//! `cni-latency`: CNI ADD/DEL latency through xlane beside bridge + host-local.
//!
//! `crash-gap`: see [`crash_gap`].
//!
//! `control-plane`: the time from a lease appearing in the datastore to its route being
//! in xlaned's FIB, for N simulated remote nodes, and the agent's memory at N nodes. One
//! lab node (namespace, uplink on a fabric bridge, default route via the fabric) runs
//! xlaned; an agent feeds it; this tool writes N leases (flannel JSON, as N nodes
//! would) at a steady rate and polls xlaned's routes to see when each lands.
#![forbid(unsafe_code)]

use xlane_lab::{Store, bench, cni_latency, control_plane, crash_gap, demo, interop, profile, report, vhost_bench};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Parser)]
#[command(name = "xlane-lab", about = "perf-lab measurements")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options of the vhost-user comparisons.
#[derive(Debug, clap::Args)]
struct VhostArgs {
    /// Seconds per backend and round.
    #[arg(long, default_value_t = 6)]
    seconds: u32,
    /// Rounds, each running both backends (in alternating order).
    #[arg(long, default_value_t = 6)]
    rounds: u32,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The one-command demo: a lab in namespaces, pods through CNI, ping/TCP/UDP, summary,
    /// teardown (also on Ctrl-C; a rerun after a crash cleans up first).
    Demo {
        /// Lab nodes.
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        /// Megabytes over TCP.
        #[arg(long, default_value_t = 200)]
        tcp_mb: usize,
        /// Seconds of UDP packet-rate test.
        #[arg(long, default_value_t = 3.0)]
        udp_seconds: f64,
        /// A few seconds in all: 20 MB TCP, 0.5 s UDP (what CI runs).
        #[arg(long)]
        quick: bool,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Every contender on the same topology with the same traffic: packet rate, latency,
    /// TCP. Writes the JSON results.
    Bench {
        /// Contenders (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Contender>,
        /// A short run (seconds per contender).
        #[arg(long)]
        quick: bool,
        /// I/O-ceiling forwarders (default: all; `--no-io` skips them).
        #[arg(long, value_enum, value_delimiter = ',')]
        io: Vec<bench::Forwarder>,
        /// Skip the I/O-ceiling forwarders.
        #[arg(long)]
        no_io: bool,
        /// Skip TCP on a jumbo underlay (MTU 9000).
        #[arg(long)]
        no_jumbo: bool,
        /// Also measure CNI ADD/DEL latency with this many pods (0: skip).
        #[arg(long, default_value_t = 100)]
        cni_pods: usize,
        /// Where to write report.json, report.md and the charts.
        #[arg(long, default_value = "perf-lab/results/latest")]
        out: PathBuf,
    },
    /// Where the time goes during one run of traffic: iperf3 (or the bench's 64-byte UDP
    /// flood) through a contender's path with `perf record -a -g` over it, the hottest
    /// symbols by command.
    Profile {
        /// Whose path.
        #[arg(long, value_enum, default_value = "xlane-offload")]
        contender: bench::Contender,
        /// Underlay MTU (9000: the jumbo underlay).
        #[arg(long, default_value_t = xlane_netlab::topology::UPLINK_MTU)]
        mtu: u16,
        /// iperf3 streams.
        #[arg(long, default_value_t = 1, conflicts_with = "udp64")]
        streams: u32,
        /// The bench's 64-byte UDP flood instead of iperf3, in passes of 4M frames.
        #[arg(long)]
        udp64: bool,
        /// Between two pods of one node instead of across nodes.
        #[arg(long)]
        local: bool,
        /// Seconds of traffic (the profile covers all but the first and last).
        #[arg(long, default_value_t = 8)]
        seconds: u32,
        /// Where perf.data and perf-report.txt go.
        #[arg(long, default_value = "perf-lab/results/profile")]
        out: PathBuf,
    },
    /// Make report.md and the charts again from a report.json.
    Report {
        /// A report.json written by `bench`.
        json: PathBuf,
        /// Where to write report.md and the charts (default: beside the JSON).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// An xlane node and a flannel-style kernel VXLAN node: pods talk both ways. Runs
    /// flannel's defaults (VNI 1, port 8472) and VNI 42 on port 4789, or the one given.
    Interop {
        /// VXLAN network identifier.
        #[arg(long, requires = "port")]
        vni: Option<u32>,
        /// VXLAN UDP port.
        #[arg(long, requires = "vni")]
        port: Option<u16>,
        /// Megabytes over TCP each way.
        #[arg(long, default_value_t = 20)]
        tcp_mb: usize,
    },
    /// Lease → FIB latency (p50/p99) and agent memory with N remote nodes.
    ControlPlane {
        /// Remote nodes to simulate.
        #[arg(long, default_value_t = 5000)]
        nodes: u32,
        /// Leases written per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Datastore.
        #[arg(long, value_enum, default_value = "etcd")]
        store: Store,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// vhost-user ingest: testpmd's virtio-user (txonly) into xlane's backend (through
    /// the pipeline) and into DPDK's net_vhost, same frontend, same run.
    VhostIngest(VhostArgs),
    /// vhost-user egress: xlane-vhost's guest-bound path and DPDK's net_vhost (txonly)
    /// into testpmd's virtio-user (rxonly), same frontend, same run.
    VhostEgress(VhostArgs),
    /// The forwarding gap when xlaned crashes (SIGKILL) or stops (SIGTERM) and is started
    /// again at once while the agent runs: probes lost, blackout, where the time goes.
    CrashGap {
        /// Rounds per stop mode.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Pods on node 0, all replayed by the agent (the probe runs from the first).
        #[arg(long, default_value_t = 1)]
        pods: u8,
        /// Stop modes (default: kill, then term).
        #[arg(long, value_enum, value_delimiter = ',')]
        stop: Vec<crash_gap::Stop>,
        /// Milliseconds between probes.
        #[arg(long, default_value_t = 2.0)]
        interval_ms: f64,
        /// Seconds of clean probes before the signal.
        #[arg(long, default_value_t = 2.0)]
        warmup_s: f64,
        /// Milliseconds between the old xlaned reaped and the new one started (a
        /// supervisor's delay: systemd's RestartSec; 0 = at once).
        #[arg(long, default_value_t = 0)]
        restart_delay_ms: u64,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// CNI ADD/DEL latency (p50/p99) through xlane beside Debian's bridge + host-local.
    CniLatency {
        /// Pods per contender.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("xlane-lab: cannot handle signal {sig}: {e}");
        }
    }
    let r = match cli.cmd {
        Cmd::Demo { nodes, tcp_mb, udp_seconds, quick, json } => {
            let opts = if quick {
                demo::Options { nodes, tcp_mb: 20, udp_seconds: 0.5, json }
            } else {
                demo::Options { nodes, tcp_mb, udp_seconds, json }
            };
            demo::run(&opts, &stop)
        }
        Cmd::Bench { only, io, no_io, no_jumbo, quick, cni_pods, out } => {
            let contenders = if only.is_empty() { bench::Contender::ALL.to_vec() } else { only };
            let forwarders = match (no_io, io.is_empty()) {
                (true, _) => vec![],
                (false, true) => bench::Forwarder::ALL.to_vec(),
                (false, false) => io,
            };
            let w = if quick { bench::Workload::QUICK } else { bench::Workload::FULL };
            let w = bench::Workload { jumbo: !no_jumbo, ..w };
            bench::report(&contenders, &forwarders, w, cni_pods, &stop).and_then(|r| {
                let md = report::write(&r, &out)?;
                print!("{}", std::fs::read_to_string(&md)?);
                eprintln!("report in {}", md.display());
                Ok(())
            })
        }
        Cmd::Profile { contender, mtu, streams, udp64, local, seconds, out } => {
            let traffic =
                if udp64 { profile::Traffic::Udp64 { frames: 4_000_000 } } else { profile::Traffic::Tcp { streams } };
            let o = profile::Options { contender, mtu, traffic, local, seconds, out };
            profile::run(&o).and_then(|p| {
                print!("{}", std::fs::read_to_string(&p.report)?);
                println!("{}: {}; report in {}", contender.name(), p.measured, p.report.display());
                Ok(())
            })
        }
        Cmd::Report { json, out } => (|| {
            let r: report::Report = serde_json::from_slice(&std::fs::read(&json)?)?;
            let dir = out.unwrap_or_else(|| json.parent().map(PathBuf::from).unwrap_or_default());
            let charts = r.charts(&dir)?;
            std::fs::write(dir.join("report.md"), r.markdown(&charts))?;
            eprintln!("report in {}", dir.join("report.md").display());
            Ok(())
        })(),
        Cmd::Interop { vni, port, tcp_mb } => {
            let cases = match (vni, port) {
                (Some(v), Some(p)) => vec![(v, p)],
                _ => vec![(1, xlane_wire::VXLAN_PORT_LINUX), (42, xlane_wire::VXLAN_PORT_IANA)],
            };
            cases.into_iter().try_for_each(|(vni, port)| {
                eprintln!("interop: xlane node ↔ flannel-style kernel VXLAN node, VNI {vni}, port {port}");
                let r = interop::run(vni, port, tcp_mb, &stop)?;
                println!(
                    "VNI {vni} port {port}: ping xlane→flannel {}/{}, flannel→xlane {}/{}; TCP {} MB xlane→flannel {} ({:.2} Gbit/s), flannel→xlane {} ({:.2} Gbit/s)",
                    r.ping_to_flannel.received,
                    r.ping_to_flannel.sent,
                    r.ping_to_xlane.received,
                    r.ping_to_xlane.sent,
                    tcp_mb,
                    if r.tcp_to_flannel.intact { "intact" } else { "CORRUPTED" },
                    r.tcp_to_flannel.gbit_s(),
                    if r.tcp_to_xlane.intact { "intact" } else { "CORRUPTED" },
                    r.tcp_to_xlane.gbit_s(),
                );
                anyhow::ensure!(r.ok(), "traffic did not get through both ways");
                Ok(())
            })
        }
        Cmd::ControlPlane { nodes, rate, store, json } => control_plane::run(nodes, rate, store, json.as_deref()),
        Cmd::VhostIngest(a) => vhost(vhost_bench::Direction::Ingest, a, &stop),
        Cmd::VhostEgress(a) => vhost(vhost_bench::Direction::Egress, a, &stop),
        Cmd::CrashGap { rounds, pods, stop: modes, interval_ms, warmup_s, restart_delay_ms, json } => {
            let opts = crash_gap::Options {
                rounds,
                pods,
                modes: if modes.is_empty() { vec![crash_gap::Stop::Kill, crash_gap::Stop::Term] } else { modes },
                interval: std::time::Duration::from_secs_f64(interval_ms.max(0.1) / 1e3),
                warmup: std::time::Duration::from_secs_f64(warmup_s.max(0.1)),
                restart_delay: std::time::Duration::from_millis(restart_delay_ms),
                json,
            };
            crash_gap::run(&opts, &stop).map(drop)
        }
        Cmd::CniLatency { pods, json } => cni_latency::run(pods).and_then(|v| match json {
            Some(p) => std::fs::write(p, serde_json::to_vec_pretty(&v)?).map_err(Into::into),
            None => Ok(()),
        }),
    };
    if let Err(e) = r {
        eprintln!("xlane-lab: {e:#}");
        std::process::exit(if stop.load(Ordering::Relaxed) { 130 } else { 1 });
    }
}

/// Run a vhost-user comparison and print it (and its JSON if asked).
fn vhost(direction: vhost_bench::Direction, a: VhostArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let r = vhost_bench::run(direction, a.seconds, a.rounds, stop)?;
    let (what, goal) = match direction {
        vhost_bench::Direction::Ingest => ("ingest, 64-byte frames from testpmd txonly", " (goal >= 0.8x)"),
        vhost_bench::Direction::Egress => ("egress, 64-byte frames to testpmd rxonly", ""),
    };
    let per_round: Vec<String> = r.round_ratios.iter().map(|x| format!("{x:.2}")).collect();
    println!(
        "vhost-user {what} ({} rounds of {} s per backend):\n  \
         {:<16} {:>14} {:>14} {:>16}\n  \
         {:<16} {:>14.0} {:>14.0} {:>16.0}\n  \
         {:<16} {:>14.0} {:>14.0} {:>16.0}\n  \
         xlane / DPDK: {:.2}x on p90{goal}, {:.2}x on medians; per round (medians): {}",
        r.rounds,
        a.seconds,
        "backend",
        "frontend p90",
        "median",
        "backend",
        "xlane",
        r.xlane.frontend_p90_pps,
        r.xlane.frontend_pps,
        r.xlane.backend_pps,
        "DPDK net_vhost",
        r.dpdk.frontend_p90_pps,
        r.dpdk.frontend_pps,
        r.dpdk.backend_pps,
        r.ratio,
        r.median_ratio,
        per_round.join(", ")
    );
    match a.json {
        Some(p) => std::fs::write(p, serde_json::to_vec_pretty(&r)?).map_err(Into::into),
        None => Ok(()),
    }
}
