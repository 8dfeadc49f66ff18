//! `crash-gap`: how long a node's pods lose forwarding when xlaned dies and is started
//! again (issue #18 item 2). The demo's lab — two nodes, each with xlaned and
//! xlane-agent, one pod per node attached through the CNI plugin — with a UDP echo probe
//! from node 0's pod to node 1's every 2 ms. After a few seconds of clean probes,
//! xlaned on node 0 is stopped (SIGKILL, or SIGTERM for comparison) and, once reaped,
//! started again at once with the same command line, as `Restart=always` or a DaemonSet's
//! container restart would (the supervisor's own delay — systemd's `RestartSec`, 100 ms
//! by default and 1 s in `deploy/systemd/xlaned.service`, kubelet's back-off — is
//! `--restart-delay-ms`, 0 by default, and adds to the gap as it is). The agent keeps
//! running and replays its state into the new xlaned.
//!
//! Measured per round: probes lost; the blackout (the last reply before the signal to
//! the first reply after it); and where the time went, in ms after the signal: the old
//! process reaped, the new one started, its first log line (workers and UMEMs up), its
//! control socket bound, the agent noticing, the VTEP set (the uplink's and host port's
//! XDP programs and AF_XDP sockets), the last endpoint attached again, the agent's replay
//! finished, the first probe answered. The daemons' steps come from the timestamps of
//! their logs (same clock). `--pods N` puts N pods on node 0 (the probe uses the first):
//! what a crash costs grows with the ports xlaned must close and the agent re-attach.
//! `--stop handover` measures the hitless upgrade instead (`xlaned --takeover`): the
//! probes are only delayed, by the pause in forwarding the "gap" shows.

use crate::traffic::UdpEcho;
use anyhow::Context as _;
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use xlane_netlab::Netns;
use xlane_netlab::cluster::{Cluster, ClusterOptions, CniPod, start_xlaned, start_xlaned_as, supervised_pid};

/// Namespace and run-directory prefix.
pub const PREFIX: &str = "xgap";
/// UDP port of the probe's echo.
const ECHO_PORT: u16 = 5400;
/// How long a round waits for forwarding to come back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Probes kept up after the first reply, to see forwarding is steady again.
const TAIL: Duration = Duration::from_millis(300);

/// How xlaned is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    /// SIGKILL: a crash (the kernel tears the sockets and XDP links down).
    Kill,
    /// SIGTERM: a plain stop (xlaned closes its sockets and detaches its programs).
    Term,
    /// SIGKILL to an xlaned run by `xlane-supervise`, which restarts it at once and
    /// hands it what the dead one kept in its file-descriptor store (programs still
    /// attached, pod sockets still open): what its systemd unit and the DaemonSet do.
    #[serde(rename = "kill-supervised")]
    KillSupervised,
    /// A hitless upgrade: a new xlaned started with `--takeover` beside the running one
    /// takes its sockets and state over, and the old one exits (#18 item 1). The "gap"
    /// is then how long forwarding paused (probes wait in the rings, none is lost).
    Handover,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "SIGKILL",
            Self::Term => "SIGTERM",
            Self::KillSupervised => "SIGKILL, fd store",
            Self::Handover => "handover",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds per stop mode.
    pub rounds: u32,
    /// Pods on node 0 (the probe runs from the first; the agent replays them all).
    pub pods: u8,
    /// Stop modes, each run for every round.
    pub modes: Vec<Stop>,
    /// Time between probes.
    pub interval: Duration,
    /// Clean probes before the signal.
    pub warmup: Duration,
    /// Between the old xlaned reaped and the new one started (the supervisor's delay).
    pub restart_delay: Duration,
    /// Where to write the results as JSON.
    pub json: Option<PathBuf>,
}

/// Where the time of one round went, in ms after the signal (`None`: not seen).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// The old xlaned reaped.
    pub old_gone: Option<f64>,
    /// The new xlaned started (after the restart delay).
    pub new_started: Option<f64>,
    /// Its first log line: today "metrics on /metrics", logged once its workers run and
    /// have registered their UMEMs.
    pub first_log: Option<f64>,
    /// Its control socket bound (its "xlaned running" line).
    pub socket_bound: Option<f64>,
    /// The agent saw its connection close ("xlaned connection lost").
    pub agent_noticed: Option<f64>,
    /// The agent's first request done: VTEP set, the uplink's XDP program and AF_XDP
    /// socket open ("VTEP set").
    pub vtep_set: Option<f64>,
    /// The pod's endpoint attached again: its veth's XDP program and socket (the last
    /// "endpoint attached").
    pub endpoint_attached: Option<f64>,
    /// The agent's replay finished ("xlaned replayed after a restart").
    pub replayed: Option<f64>,
    /// The first probe sent after the signal that was answered: when it was sent.
    pub first_answered_sent: Option<f64>,
    /// … and when its reply came.
    pub first_reply: Option<f64>,
}

impl Timeline {
    /// The columns of the summary, with their titles.
    fn columns(&self) -> [(&'static str, Option<f64>); 10] {
        [
            ("gone", self.old_gone),
            ("started", self.new_started),
            ("1st log", self.first_log),
            ("socket", self.socket_bound),
            ("noticed", self.agent_noticed),
            ("VTEP", self.vtep_set),
            ("endpoint", self.endpoint_attached),
            ("replayed", self.replayed),
            ("sent", self.first_answered_sent),
            ("reply", self.first_reply),
        ]
    }
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// How xlaned was stopped.
    pub stop: Stop,
    /// Round number within its mode, from 1.
    pub round: u32,
    /// Probes sent.
    pub sent: u64,
    /// Probes answered.
    pub answered: u64,
    /// Probes never answered.
    pub lost: u64,
    /// Of them, lost outside the blackout (noise: should be 0).
    pub lost_outside_gap: u64,
    /// Probes sent after the signal that were answered.
    pub answered_after: u64,
    /// Last reply before the signal to the first reply after it, ms.
    pub gap_ms: Option<f64>,
    /// The longest round trip of a probe sent after the signal, ms: in a handover,
    /// where no probe is lost, the pause in forwarding (probes wait in the rings).
    pub max_rtt_ms: Option<f64>,
    /// The agent's own replay time (`elapsed_ms` of its log line: from noticing the
    /// closed connection to the replay's end, reconnecting included).
    pub agent_replay_ms: Option<f64>,
    /// Replays the agent logged after the signal (more than one: it reached the dying
    /// xlaned's listening socket first, or a request failed, and it tried again).
    pub replay_attempts: u64,
    /// Where the time went.
    pub timeline: Timeline,
    /// The old and the new xlaned's PIDs.
    pub xlaned_pids: (Option<u32>, Option<u32>),
}

/// Median and maximum of one quantity over a mode's rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) };
        Some(Self { median, max: v[n - 1] })
    }
}

/// The results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub setup: serde_json::Value,
    /// `/proc/loadavg` before and after (the machine is shared).
    pub load_before: String,
    /// …
    pub load_after: String,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Per stop mode: median and max of the gap and of lost probes.
    pub summary: serde_json::Value,
    /// Every daemon the run started (all stopped at its end).
    pub daemon_pids: Vec<u32>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// Run it; `stop` is raised by SIGINT/SIGTERM.
///
/// # Errors
/// Lab failures, forwarding that did not come back (the lab is torn down either way).
pub fn run(opts: &Options, stop: &Arc<AtomicBool>) -> anyhow::Result<Report> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "crash-gap needs root (network namespaces, XDP)");
    anyhow::ensure!(opts.rounds > 0 && !opts.modes.is_empty(), "nothing to run");
    let swept = xlane_netlab::sweep::sweep(PREFIX).context("cleaning up an earlier run")?;
    if swept != xlane_netlab::sweep::Swept::default() {
        eprintln!("cleaned up an earlier run: {} namespaces, {} daemons", swept.namespaces, swept.processes);
    }
    let load_before = loadavg();
    eprintln!("building the lab: 2 nodes with xlaned and xlane-agent, one pod each through the CNI plugin");
    let mut cluster = Cluster::start(PREFIX, 2, &ClusterOptions::default())?;
    let mut pids: Vec<u32> = cluster.nodes.iter().flat_map(|n| [n.xlaned.pid(), n.agent.pid()]).flatten().collect();
    let mut pods: Vec<CniPod> = Vec::new();
    let measured = (|| -> anyhow::Result<Vec<Round>> {
        for i in 0..opts.pods.max(1) {
            pods.push(cluster.attach_pod(0, &format!("pod0-{i}"))?);
        }
        pods.push(cluster.attach_pod(1, "pod1")?);
        let mut rounds = Vec::new();
        for &mode in &opts.modes {
            for r in 1..=opts.rounds {
                anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted; tearing down");
                eprintln!("{} round {r}/{}", mode.name(), opts.rounds);
                let round = one_round(&mut cluster, &pods, mode, r, opts)?;
                // The new xlaned, and the supervisor a supervised round started.
                pids.extend(round.xlaned_pids.1);
                pids.extend(cluster.nodes[0].xlaned.pid());
                pids.sort_unstable();
                pids.dedup();
                rounds.push(round);
            }
        }
        Ok(rounds)
    })();
    let setup = serde_json::json!({
        "nodes": 2,
        "pods_on_node0": opts.pods.max(1),
        "pods": pods.iter().map(|p| serde_json::json!({"node": p.node, "ip": p.ip})).collect::<Vec<_>>(),
        "probe": "UDP echo, node 0's pod to node 1's",
        "interval_ms": opts.interval.as_secs_f64() * 1e3,
        "warmup_s": opts.warmup.as_secs_f64(),
        "restart_delay_ms": opts.restart_delay.as_secs_f64() * 1e3,
        "restarted": "xlaned on node 0, same command line, once the old one is reaped",
        "netns_exec_ms": netns_exec_ms(&cluster.lab.nodes[0].ns),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    if measured.is_ok() {
        for p in &pods {
            cluster.detach_pod(p)?;
        }
    }
    drop(pods);
    drop(cluster);
    let rounds = measured?;
    let left = xlane_netlab::namespaces_of(PREFIX, std::process::id())?;
    anyhow::ensure!(left.is_empty(), "left behind: {left:?}");
    let summary = summarize(&rounds, &opts.modes);
    let report = Report { setup, load_before, load_after: loadavg(), rounds, summary, daemon_pids: pids };
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    print_summary(&report, opts);
    let lost: Vec<String> = report
        .rounds
        .iter()
        .filter(|r| r.gap_ms.is_none())
        .map(|r| format!("{} round {}", r.stop.name(), r.round))
        .collect();
    anyhow::ensure!(lost.is_empty(), "forwarding did not come back within {RECOVERY_TIMEOUT:?}: {}", lost.join(", "));
    Ok(report)
}

/// What `ip netns exec` costs before the daemon runs (the lab starts xlaned through it;
/// a supervisor would not): the median of 3, ms.
fn netns_exec_ms(ns: &Netns) -> Option<f64> {
    let mut v: Vec<f64> = (0..3)
        .filter_map(|_| {
            let t0 = Instant::now();
            ns.command("true").status().ok()?.success().then(|| t0.elapsed().as_secs_f64() * 1e3)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Whether node 0's xlaned runs under `xlane-supervise`.
fn supervised(cluster: &Cluster) -> bool {
    cluster.nodes[0].xlaned.pid().is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "xlane-supervise")
    })
}

/// Node 0's xlaned, supervised or not as `mode` needs (the same command line otherwise).
fn xlaned_for(cluster: &mut Cluster, mode: Stop) -> anyhow::Result<()> {
    let want = mode == Stop::KillSupervised;
    if supervised(cluster) != want {
        cluster.nodes[0].xlaned.stop(nix::sys::signal::Signal::SIGTERM);
        cluster.nodes[0].xlaned = start_xlaned_as(&cluster.lab.nodes[0].ns, &cluster.dir, 0, &[], want)?;
    }
    Ok(())
}

fn one_round(cluster: &mut Cluster, pods: &[CniPod], mode: Stop, round: u32, opts: &Options) -> anyhow::Result<Round> {
    xlaned_for(cluster, mode)?;
    cluster.wait_ready(0)?;
    let (a, b) = (&pods[0], pods.last().context("no pods")?);
    let bound = opts.warmup + RECOVERY_TIMEOUT + opts.restart_delay + TAIL + Duration::from_secs(2);
    let probe = Probe::start(&a.ns, &b.ns, b.ip, opts.interval, bound)?;
    std::thread::sleep(opts.warmup);
    let xlaned_pid = |c: &Cluster| {
        if mode == Stop::KillSupervised { supervised_pid(&c.nodes[0].xlaned) } else { c.nodes[0].xlaned.pid() }
    };
    let old_pid = xlaned_pid(cluster);
    let (sig_at, sig_wall) = (Instant::now(), SystemTime::now());
    let sent_before = probe.sent.load(Ordering::Relaxed);
    let ms = |t: Instant| t.saturating_duration_since(sig_at).as_secs_f64() * 1e3;
    let (restarted, old_gone, new_started) = match mode {
        Stop::Kill | Stop::Term => {
            let signal =
                if mode == Stop::Kill { nix::sys::signal::Signal::SIGKILL } else { nix::sys::signal::Signal::SIGTERM };
            cluster.nodes[0].xlaned.stop(signal);
            let old_gone = ms(Instant::now());
            std::thread::sleep(opts.restart_delay);
            let new_started = ms(Instant::now());
            // The same command line as the cluster's own start (default options: no extras).
            (start_xlaned(&cluster.lab.nodes[0].ns, &cluster.dir, 0, &[]).map(Some), old_gone, new_started)
        }
        Stop::KillSupervised => {
            // The supervisor reaps it and starts the next one (no delay: as the lab
            // starts the others); both seen in its children.
            let old = old_pid.context("no xlaned under the supervisor")?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(old)?), nix::sys::signal::Signal::SIGKILL)?;
            let sup = &cluster.nodes[0].xlaned;
            let t0 = Instant::now();
            let mut gone = None;
            let started = loop {
                let now = supervised_pid(sup);
                if gone.is_none() && now != Some(old) {
                    gone = Some(ms(Instant::now()));
                }
                if now.is_some_and(|p| p != old) {
                    break ms(Instant::now());
                }
                anyhow::ensure!(t0.elapsed() < RECOVERY_TIMEOUT, "the supervisor did not start xlaned again");
                std::thread::sleep(Duration::from_millis(1));
            };
            (Ok(None), gone.unwrap_or(started), started)
        }
        Stop::Handover => {
            // The same command line with --takeover, beside the running one.
            let next = start_xlaned(&cluster.lab.nodes[0].ns, &cluster.dir, 0, &["--takeover".to_owned()]);
            let new_started = ms(Instant::now());
            let exited = cluster.nodes[0].xlaned.exit_status(RECOVERY_TIMEOUT);
            anyhow::ensure!(exited.is_some_and(|s| s.success()), "the old xlaned did not hand over: {exited:?}");
            (next.map(Some), ms(Instant::now()), new_started)
        }
    };
    let waited = match restarted {
        Ok(p) => {
            if let Some(p) = p {
                cluster.nodes[0].xlaned = p;
            }
            let t0 = Instant::now();
            while probe.answered_from(sent_before) == 0 && t0.elapsed() < RECOVERY_TIMEOUT {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    std::thread::sleep(TAIL);
    let (sends, replies) = probe.finish()?;
    waited?;
    let new_pid = xlaned_pid(cluster);
    // The agent logs its replay right after the last request; give it a moment. Only a
    // replay in sync brought traffic back: the agent may first reconnect into the dying
    // xlaned's listening backlog, fail, and try again.
    const REPLAYED: &str = "xlaned replayed after a restart";
    let synced = |log: &str| after(log, REPLAYED, sig_wall).any(|(_, l)| l.contains("in_sync=true"));
    let t0 = Instant::now();
    while !synced(&cluster.nodes[0].agent.log()) && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (agent_log, xlaned_log) = (cluster.nodes[0].agent.log(), cluster.nodes[0].xlaned.log());
    let replay = after(&agent_log, REPLAYED, sig_wall).find(|(_, l)| l.contains("in_sync=true"));
    let replay_attempts = after(&agent_log, REPLAYED, sig_wall).count() as u64;
    let stats = ProbeStats::of(&sends, &replies, sig_at);
    Ok(Round {
        stop: mode,
        round,
        sent: sends.len() as u64,
        answered: stats.answered,
        lost: stats.lost,
        lost_outside_gap: stats.lost_outside_gap,
        answered_after: stats.answered_after,
        gap_ms: stats.gap_ms,
        max_rtt_ms: stats.max_rtt_ms,
        agent_replay_ms: replay.and_then(|(_, l)| field(l, "elapsed_ms")),
        replay_attempts,
        timeline: Timeline {
            old_gone: Some(old_gone),
            new_started: Some(new_started),
            first_log: after(&xlaned_log, "", sig_wall).next().map(|(t, _)| t),
            socket_bound: after(&xlaned_log, "xlaned running", sig_wall).next().map(|(t, _)| t),
            agent_noticed: after(&agent_log, "xlaned connection lost", sig_wall).next().map(|(t, _)| t),
            vtep_set: after(&xlaned_log, "VTEP set", sig_wall).next().map(|(t, _)| t),
            endpoint_attached: after(&xlaned_log, "endpoint attached", sig_wall).last().map(|(t, _)| t),
            replayed: replay.map(|(t, _)| t),
            first_answered_sent: stats.first_answered_sent,
            first_reply: stats.first_reply,
        },
        xlaned_pids: (old_pid, new_pid),
    })
}

/// The lines of a daemon's log containing `what`, logged after `since`, with their time
/// in ms after it (tracing's RFC 3339 timestamps, the same clock).
fn after<'a>(log: &'a str, what: &'a str, since: SystemTime) -> impl Iterator<Item = (f64, &'a str)> + 'a {
    log.lines().filter(move |l| l.contains(what)).filter_map(move |l| {
        let t = humantime::parse_rfc3339(l.split_whitespace().next()?).ok()?;
        Some((t.duration_since(since).ok()?.as_secs_f64() * 1e3, l))
    })
}

/// A numeric `key=value` field of a log line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// A UDP echo probe: a sender and a receiver on one socket in the sending pod, an echo
/// in the receiving pod. Each probe carries its sequence number; bounded in time.
struct Probe {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// The highest sequence number answered, plus one (0: none).
    answered_top: Arc<AtomicU64>,
    sender: JoinHandle<Vec<Instant>>,
    receiver: JoinHandle<Replies>,
    echo: UdpEcho,
}

/// Replies by sequence number, as they came (duplicates too).
type Replies = Vec<(u64, Instant)>;

/// Marks the probe's datagrams (anything else is ignored).
const MAGIC: u64 = 0x7861_6e65_6761_7021;

impl Probe {
    fn start(from: &Netns, to: &Netns, to_ip: Ipv4Addr, interval: Duration, bound: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let echo = UdpEcho::start(to, to_ip, ECHO_PORT, Duration::from_millis(50))?;
        let sock = from.enter(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))??;
        sock.connect(SocketAddrV4::new(to_ip, ECHO_PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let rx = sock.try_clone()?;
        let (sent, answered_top) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let sender = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::spawn(move || {
                let max = u64::try_from(bound.as_nanos() / interval.as_nanos().max(1)).unwrap_or(u64::MAX);
                let t0 = Instant::now();
                let mut sends = Vec::with_capacity(usize::try_from(max).unwrap_or(0));
                let mut next = t0;
                while !stop.load(Ordering::Relaxed) && (sends.len() as u64) < max && t0.elapsed() < bound {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                    }
                    let mut msg = [0u8; 16];
                    msg[..8].copy_from_slice(&(sends.len() as u64).to_be_bytes());
                    msg[8..].copy_from_slice(&MAGIC.to_be_bytes());
                    sends.push(Instant::now());
                    // A refused send is a lost probe like any other.
                    let _ = sock.send(&msg);
                    sent.store(sends.len() as u64, Ordering::Relaxed);
                    // After a stall (a busy machine), carry on from now rather than burst.
                    next = (next + interval).max(Instant::now());
                }
                sends
            })
        };
        let receiver = {
            let (stop, top) = (Arc::clone(&stop), Arc::clone(&answered_top));
            std::thread::spawn(move || {
                let mut replies = Vec::new();
                let mut buf = [0u8; 64];
                loop {
                    match rx.recv(&mut buf) {
                        Ok(16) if buf[8..16] == MAGIC.to_be_bytes() => {
                            let mut seq = [0u8; 8];
                            seq.copy_from_slice(&buf[..8]);
                            let seq = u64::from_be_bytes(seq);
                            replies.push((seq, Instant::now()));
                            top.fetch_max(seq + 1, Ordering::Relaxed);
                        }
                        // A timeout after the stop: every reply that was coming came.
                        Err(e) if stop.load(Ordering::Relaxed) && is_timeout(&e) => return replies,
                        // Refused (ICMP port unreachable while xlaned is away) and the rest.
                        _ => {}
                    }
                }
            })
        };
        Ok(Self { stop, sent, answered_top, sender, receiver, echo })
    }

    /// Whether a probe numbered `seq` or later was answered (1) or not (0).
    fn answered_from(&self, seq: u64) -> u64 {
        u64::from(self.answered_top.load(Ordering::Relaxed) > seq)
    }

    /// Stop; every probe's send time (by sequence number) and every reply.
    fn finish(self) -> anyhow::Result<(Vec<Instant>, Replies)> {
        self.stop.store(true, Ordering::Relaxed);
        let sends = self.sender.join().map_err(|_| anyhow::anyhow!("probe sender panicked"))?;
        let replies = self.receiver.join().map_err(|_| anyhow::anyhow!("probe receiver panicked"))?;
        drop(self.echo);
        Ok((sends, replies))
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// What the probe saw around the signal.
#[derive(Debug, Clone, Default, PartialEq)]
struct ProbeStats {
    answered: u64,
    lost: u64,
    lost_outside_gap: u64,
    answered_after: u64,
    gap_ms: Option<f64>,
    max_rtt_ms: Option<f64>,
    first_answered_sent: Option<f64>,
    first_reply: Option<f64>,
}

impl ProbeStats {
    /// From the probes' send times (index: sequence number) and replies, around the
    /// signal at `sig`.
    fn of(sends: &[Instant], replies: &[(u64, Instant)], sig: Instant) -> Self {
        let mut reply: Vec<Option<Instant>> = vec![None; sends.len()];
        for &(seq, t) in replies {
            if let Some(r) = usize::try_from(seq).ok().and_then(|s| reply.get_mut(s)) {
                *r = Some(r.map_or(t, |was| was.min(t)));
            }
        }
        let ms = |t: Instant| {
            if t >= sig { (t - sig).as_secs_f64() * 1e3 } else { -((sig - t).as_secs_f64() * 1e3) }
        };
        let answered = reply.iter().flatten().count() as u64;
        // The last reply that came before the signal, and the first probe sent after it
        // that was answered.
        let last_before = reply.iter().flatten().filter(|&&t| t <= sig).max().copied();
        let first_after = (0..sends.len()).filter(|&s| sends[s] > sig).find_map(|s| reply[s].map(|r| (s, sends[s], r)));
        let last_answered_before =
            (0..sends.len()).rev().find(|&s| reply[s].is_some_and(|r| r <= sig)).map_or(0, |s| s + 1);
        let blackout_end = first_after.map_or(sends.len(), |(s, _, _)| s);
        let lost_in_gap = (last_answered_before..blackout_end).filter(|&s| reply[s].is_none()).count() as u64;
        let lost = sends.len() as u64 - answered;
        Self {
            answered,
            lost,
            lost_outside_gap: lost - lost_in_gap,
            answered_after: (0..sends.len()).filter(|&s| sends[s] > sig && reply[s].is_some()).count() as u64,
            gap_ms: last_before.zip(first_after).map(|(b, (_, _, a))| (a - b).as_secs_f64() * 1e3),
            max_rtt_ms: (0..sends.len())
                .filter(|&s| sends[s] > sig)
                .filter_map(|s| reply[s].map(|r| (r - sends[s]).as_secs_f64() * 1e3))
                .max_by(f64::total_cmp),
            first_answered_sent: first_after.map(|(_, s, _)| ms(s)),
            first_reply: first_after.map(|(_, _, r)| ms(r)),
        }
    }
}

fn summarize(rounds: &[Round], modes: &[Stop]) -> serde_json::Value {
    let per_mode: serde_json::Map<String, serde_json::Value> = modes
        .iter()
        .map(|&m| {
            let of =
                |f: &dyn Fn(&Round) -> Option<f64>| Spread::of(rounds.iter().filter(|r| r.stop == m).filter_map(f));
            // The mode's JSON name, as in each round's `stop`.
            let key = serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            (
                key,
                serde_json::json!({
                    "rounds": rounds.iter().filter(|r| r.stop == m).count(),
                    "gap_ms": of(&|r| r.gap_ms),
                    "max_rtt_ms": of(&|r| r.max_rtt_ms),
                    "lost": of(&|r| Some(r.lost as f64)),
                    "socket_bound_ms": of(&|r| r.timeline.socket_bound),
                    "replayed_ms": of(&|r| r.timeline.replayed),
                    "agent_replay_ms": of(&|r| r.agent_replay_ms),
                    "first_reply_ms": of(&|r| r.timeline.first_reply),
                }),
            )
        })
        .collect();
    serde_json::Value::Object(per_mode)
}

fn print_summary(r: &Report, opts: &Options) {
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"));
    println!();
    println!(
        "crash gap: xlaned on node 0 stopped, reaped and started again after {} ms with the same command line; \
         xlane-agent keeps running",
        opts.restart_delay.as_millis()
    );
    println!(
        "probe: UDP echo from node 0's pod to node 1's every {} ms, pods on node 0: {}; load average before {} / \
         after {}",
        opts.interval.as_secs_f64() * 1e3,
        opts.pods.max(1),
        r.load_before,
        r.load_after
    );
    println!(
        "times in ms after the signal (gap: last reply before it → first reply after; max rtt: the slowest probe \
         after it, a handover's pause)"
    );
    let cols = Timeline::default().columns().map(|(t, _)| t);
    print!("  {:<8} {:>6} {:>5} {:>8} {:>8}", "stop", "round", "lost", "gap", "max rtt");
    for c in cols {
        print!(" {c:>8}");
    }
    println!();
    for &m in &opts.modes {
        let mine: Vec<&Round> = r.rounds.iter().filter(|x| x.stop == m).collect();
        for x in &mine {
            print!("  {:<8} {:>6} {:>5} {:>8} {:>8}", m.name(), x.round, x.lost, cell(x.gap_ms), cell(x.max_rtt_ms));
            for (_, v) in x.timeline.columns() {
                print!(" {:>8}", cell(v));
            }
            println!();
        }
        for (label, pick) in [("median", true), ("max", false)] {
            let stat = |f: &dyn Fn(&Round) -> Option<f64>| {
                Spread::of(mine.iter().filter_map(|x| f(x))).map(|s| if pick { s.median } else { s.max })
            };
            let lost = stat(&|x| Some(x.lost as f64)).map_or_else(|| "-".into(), |v| format!("{v:.0}"));
            print!(
                "  {:<8} {:>6} {:>5} {:>8} {:>8}",
                m.name(),
                label,
                lost,
                cell(stat(&|x| x.gap_ms)),
                cell(stat(&|x| x.max_rtt_ms))
            );
            for i in 0..cols.len() {
                print!(" {:>8}", cell(stat(&|x| x.timeline.columns()[i].1)));
            }
            println!();
        }
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_runs_from_the_last_reply_before_the_signal_to_the_first_after() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Probes every 2 ms from 0; the signal at 9 ms; probes 5..=9 (sent 10..18) lost,
        // probe 2 lost before (noise); the reply to probe 4 (sent 8) came at 8.5.
        let sends: Vec<Instant> = (0..12).map(|i| at(2 * i)).collect();
        let replies: Vec<(u64, Instant)> = [0, 1, 3, 4, 10, 11]
            .iter()
            .map(|&s| (s, at(2 * s) + Duration::from_micros(500)))
            .chain([(10, at(30))]) // a duplicate, later
            .collect();
        let s = ProbeStats::of(&sends, &replies, at(9));
        assert_eq!((s.answered, s.lost, s.lost_outside_gap, s.answered_after), (6, 6, 1, 2));
        assert!((s.gap_ms.unwrap() - 12.0).abs() < 1e-6, "{s:?}"); // 8.5 → 20.5
        assert!((s.first_answered_sent.unwrap() - 11.0).abs() < 1e-6);
        assert!((s.first_reply.unwrap() - 11.5).abs() < 1e-6);
        // Nothing after the signal: no gap.
        let s = ProbeStats::of(&sends, &replies[..4], at(9));
        assert_eq!((s.gap_ms, s.answered_after, s.lost_outside_gap), (None, 0, 1));
    }

    #[test]
    fn log_lines_are_timed_from_the_signal() {
        let since = humantime::parse_rfc3339("2026-11-29T15:00:00.000000Z").unwrap();
        let log = "2026-11-29T14:59:59.990000Z  INFO xlane_agent::link: xlaned replayed after a restart elapsed_ms=3 in_sync=true\n\
                   2026-11-29T15:00:00.042500Z  INFO xlane_agent::link: xlaned replayed after a restart elapsed_ms=37 in_sync=true\n";
        let (t, line) = after(log, "xlaned replayed", since).next().unwrap();
        assert!((t - 42.5).abs() < 1e-6);
        assert_eq!(field(line, "elapsed_ms"), Some(37.0));
        assert_eq!(field(line, "in_sync"), None);
        let s = Spread::of([3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.max), (2.5, 10.0));
    }
}
