//! Measurement spike for issue 14 item 1: how fast can a userspace forwarder move pod
//! traffic through each attach kind, beside a kernel bridge? Not part of xlane; see
//! README.md.

mod fwd;
mod measure;
mod packet;
mod tap;
mod tcx;
mod topo;
mod vhost_probe;
mod xdp;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use topo::Topo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Baseline: veths on a kernel bridge, no forwarder.
    Bridge,
    /// (a) veth, native XDP redirect on the host end, AF_XDP copy mode (xlane today).
    Xdp,
    /// (b) veth, AF_PACKET + PACKET_VNET_HDR on the host end, tcx ingress drop.
    Packet,
    /// (c') tap with vnet header and offloads in the pod, read/write per packet.
    Tap,
    /// (b) without the tcx ingress drop: what does the node's stack do with the frames?
    PacketNodrop,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bridge => "bridge",
            Kind::Xdp => "xdp",
            Kind::Packet => "packet",
            Kind::Tap => "tap",
            Kind::PacketNodrop => "packet-nodrop",
        }
    }
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The forwarder (run in the node namespace by `bench`): A ↔ B with a fixed MAC
    /// rewrite. Prints "ready", runs until stdin closes or --max-seconds pass, prints its
    /// counters as JSON on stderr.
    Forward {
        #[arg(long, value_enum)]
        kind: Kind,
        /// Pin to this CPU (sched_setaffinity, what taskset does).
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long, default_value_t = 900)]
        max_seconds: u64,
        /// AF_PACKET: leave out the tcx ingress drop (to see what the node stack does).
        #[arg(long)]
        no_drop: bool,
    },
    /// Whether /dev/vhost-net can be opened here (kind (c)).
    ProbeVhost,
    /// Alternating rounds over the kinds; results as JSON lines and a summary.
    Bench {
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Bridge, Kind::Xdp, Kind::Packet, Kind::Tap])]
        kinds: Vec<Kind>,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10)]
        tcp_seconds: u32,
        /// Seconds of 64-byte UDP.
        #[arg(long, default_value_t = 5.0)]
        udp_seconds: f64,
        #[arg(long, default_value_t = 20_000)]
        rr: u32,
        /// Forwarder CPU.
        #[arg(long, default_value_t = 1)]
        cpu: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

fn pin(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

fn forward(kind: Kind, cpu: Option<usize>, max: u64, no_drop: bool) -> anyhow::Result<()> {
    if let Some(c) = cpu {
        pin(c)?;
    }
    let stop = fwd::Stop::new(Duration::from_secs(max));
    match kind {
        Kind::Bridge => bail!("the bridge has no forwarder"),
        Kind::Xdp => xdp::run("va", "vb", &stop),
        Kind::Packet | Kind::PacketNodrop => {
            let no_drop = no_drop || kind == Kind::PacketNodrop;
            let _drops = if no_drop { None } else { Some((tcx::drop_ingress("va")?, tcx::drop_ingress("vb")?)) };
            packet::run("va", "vb", &stop)
        }
        Kind::Tap => tap::run("ta", "tb", &stop),
    }
}

/// A running forwarder: our child, ended by closing its stdin, then by its PID.
struct Forwarder {
    child: Child,
    report: std::sync::mpsc::Receiver<String>,
}

impl Forwarder {
    fn start(t: &Topo, kind: Kind, cpu: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &t.node])
            .arg(exe)
            .args(["forward", "--kind", kind.name(), "--cpu", &cpu.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().context("stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            let errs: Vec<String> = rx.try_iter().collect();
            bail!("forwarder {} did not start: {}", kind.name(), errs.join("\n"));
        }
        Ok(Self { child, report: rx })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.report.try_iter().collect::<Vec<_>>().join("\n")
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[allow(clippy::too_many_arguments)]
fn one(kind: Kind, round: u32, tcp_s: u32, udp_s: f64, rr: u32, cpu: usize) -> anyhow::Result<serde_json::Value> {
    let t = Topo::new(&format!("{}{round}", &kind.name()[..1]))?;
    let direct = kind == Kind::Bridge;
    let fwd = match kind {
        Kind::Bridge => {
            t.veths()?;
            t.bridge()?;
            None
        }
        Kind::Xdp | Kind::Packet | Kind::PacketNodrop => {
            t.veths()?;
            Some(Forwarder::start(&t, kind, cpu)?)
        }
        Kind::Tap => {
            let f = Forwarder::start(&t, kind, cpu)?;
            t.adopt_taps()?;
            Some(f)
        }
    };
    t.pods(direct)?;
    if kind == Kind::Xdp {
        // AF_XDP carries no checksum metadata: pods behind it send full checksums
        // (what `xlanectl netdev-tx-checksum` does for xlane's pods).
        for ns in [&t.a, &t.b] {
            t.exec(ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }
    }
    let offloads = t.offloads(&t.a);
    let pid = fwd.as_ref().map(Forwarder::pid);
    let load_at = load();
    // Connectivity first (and warms ARP-free paths, caches).
    measure::request_response(&t, 200).context("warm-up round trips")?;
    let mut r = serde_json::json!({"kind": kind.name(), "round": round, "load": load_at, "pod_offloads": offloads});
    let c = measure::Cpu::start(pid);
    let (g1, re1) = measure::iperf3(&t, 1, tcp_s)?;
    let (f1, s1, si1) = c.end();
    let c = measure::Cpu::start(pid);
    let (g4, re4) = measure::iperf3(&t, 4, tcp_s)?;
    let (f4, s4, si4) = c.end();
    let c = measure::Cpu::start(pid);
    let (pps, offered, a_tx_dropped) = measure::udp_rate(&t, direct, udp_s)?;
    let (fu, su, siu) = c.end();
    let c = measure::Cpu::start(pid);
    let (p50, p99, p999, n) = measure::request_response(&t, rr)?;
    let (fr, sr, sir) = c.end();
    r["tcp1_gbit"] = g1.into();
    r["tcp1_retr"] = re1.into();
    r["tcp4_gbit"] = g4.into();
    r["tcp4_retr"] = re4.into();
    r["udp_kpps"] = (pps / 1e3).into();
    r["udp_offered_kpps"] = (offered / 1e3).into();
    r["rr_p50_us"] = p50.into();
    r["rr_p99_us"] = p99.into();
    r["rr_p999_us"] = p999.into();
    r["rr_n"] = n.into();
    r["udp_a_tx_dropped"] = a_tx_dropped.into();
    r["cpu"] = serde_json::json!({
        "tcp1": {"fwd": f1, "sys": s1, "softirq": si1},
        "tcp4": {"fwd": f4, "sys": s4, "softirq": si4},
        "udp": {"fwd": fu, "sys": su, "softirq": siu},
        "rr": {"fwd": fr, "sys": sr, "softirq": sir},
    });
    if kind != Kind::Tap && kind != Kind::Bridge {
        // What the node's stack saw on the host end (rx_otherhost_dropped and friends).
        r["node_va_stats"] = t.link_stats(&t.node, "va").unwrap_or_default();
        r["node_snmp_ip"] = t.exec(&t.node, &["sh", "-c", "grep '^Ip:' /proc/net/snmp"]).unwrap_or_default().into();
    }
    if let Some(f) = fwd {
        let rep = f.stop();
        r["forwarder"] = rep
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| rep.clone().into());
    }
    Ok(r)
}

fn bench(kinds: &[Kind], rounds: u32, tcp_s: u32, udp_s: f64, rr: u32, cpu: usize, out: &PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join("results.jsonl");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    for round in 0..rounds {
        for &k in kinds {
            eprintln!("round {round} {} (load {})", k.name(), load());
            match one(k, round, tcp_s, udp_s, rr, cpu) {
                Ok(r) => {
                    eprintln!(
                        "  tcp1 {:.2} tcp4 {:.2} Gbit/s, udp {:.0} kpps, rr p50 {:.1} p99 {:.1} µs",
                        r["tcp1_gbit"].as_f64().unwrap_or(0.0),
                        r["tcp4_gbit"].as_f64().unwrap_or(0.0),
                        r["udp_kpps"].as_f64().unwrap_or(0.0),
                        r["rr_p50_us"].as_f64().unwrap_or(0.0),
                        r["rr_p99_us"].as_f64().unwrap_or(0.0)
                    );
                    writeln!(file, "{r}")?;
                }
                Err(e) => {
                    eprintln!("  failed: {e:#}");
                    writeln!(file, "{}", serde_json::json!({"kind": k.name(), "round": round, "error": format!("{e:#}")}))?;
                }
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Forward { kind, cpu, max_seconds, no_drop } => forward(kind, cpu, max_seconds, no_drop),
        Cmd::ProbeVhost => vhost_probe::probe(),
        Cmd::Bench { kinds, rounds, tcp_seconds, udp_seconds, rr, cpu, out } => {
            bench(&kinds, rounds, tcp_seconds, udp_seconds, rr, cpu, &out)
        }
    }
}
