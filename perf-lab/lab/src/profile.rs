//! Where the time goes during one run of traffic: a contender's testbed, iperf3 or the
//! bench's 64-byte UDP flood for a while, `perf record -a -g` over its middle (every
//! CPU: the pods, the dataplane and the kernel's softirqs share them), and the hottest
//! symbols by command. The bench's rates say how fast; this says why.

use crate::bench::{Contender, Iperf3, RateRun, Testbed};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// The traffic a profile watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// iperf3 with this many streams.
    Tcp { streams: u32 },
    /// The bench's 64-byte UDP flood, again and again (frames per pass): where the
    /// packet rate's cycles go.
    Udp64 { frames: u32 },
}

/// What to profile.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whose path.
    pub contender: Contender,
    /// Underlay MTU.
    pub mtu: u16,
    /// What runs through the path.
    pub traffic: Traffic,
    /// Between two pods of one node instead of across nodes.
    pub local: bool,
    /// Seconds of traffic (the profile skips the first and last second).
    pub seconds: u32,
    /// Where perf.data and the report go.
    pub out: PathBuf,
}

/// What the traffic itself measured while it was watched.
#[derive(Debug)]
pub enum Measured {
    /// The iperf3 run.
    Tcp(Iperf3),
    /// The UDP flood's median pass by received rate, and how many passes ran.
    Udp64 { median: RateRun, passes: usize },
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(t) => write!(f, "{:.2} Gbit/s, {} retransmits", t.gbit, t.retransmits),
            Self::Udp64 { median, passes } => write!(
                f,
                "{:.0} kpps received of {:.0} kpps offered (median of {passes} passes)",
                median.received_pps / 1e3,
                median.offered_pps / 1e3
            ),
        }
    }
}

/// A profiled run.
#[derive(Debug)]
pub struct Profile {
    /// What the traffic measured.
    pub measured: Measured,
    /// `perf report`'s text (by command and symbol, self time).
    pub report: PathBuf,
}

/// Run `o`, writing `perf.data` and `perf-report.txt` under `o.out`.
///
/// # Errors
/// Setup failures, perf or iperf3 missing or failing.
pub fn run(o: &Options) -> anyhow::Result<Profile> {
    anyhow::ensure!(o.seconds >= 4, "at least 4 seconds (the profile skips the first and the last)");
    std::fs::create_dir_all(&o.out)?;
    let data = o.out.join("perf.data");
    let tb = Testbed::setup_mtu(o.contender, o.mtu)?;
    let record = {
        let data = data.clone();
        let secs = o.seconds - 2;
        std::thread::spawn(move || -> anyhow::Result<()> {
            std::thread::sleep(Duration::from_secs(1));
            let st = Command::new("perf")
                .args(["record", "-a", "-g", "-q", "-o"])
                .arg(&data)
                .args(["--", "sleep", &secs.to_string()])
                .status()
                .context("running perf (apt-get install linux-perf)")?;
            anyhow::ensure!(st.success(), "perf record: {st}");
            Ok(())
        })
    };
    let measured = match o.traffic {
        Traffic::Tcp { streams } => tb.tcp(streams, o.seconds, o.local).map(Measured::Tcp),
        Traffic::Udp64 { frames } => {
            anyhow::ensure!(!o.local, "the 64-byte flood runs across nodes only");
            udp_passes(&tb, frames, Duration::from_secs(o.seconds.into()))
        }
    };
    let recorded = record.join().map_err(|_| anyhow::anyhow!("perf thread panicked"))?;
    drop(tb);
    let measured = measured?;
    recorded?;
    let report = o.out.join("perf-report.txt");
    write_report(&data, &report)?;
    Ok(Profile { measured, report })
}

/// Flood passes of `frames` until `seconds` have gone by, so the recording never
/// watches an idle path.
fn udp_passes(tb: &Testbed, frames: u32, seconds: Duration) -> anyhow::Result<Measured> {
    let (t0, stop) = (Instant::now(), AtomicBool::new(false));
    let mut runs = Vec::new();
    while t0.elapsed() < seconds {
        runs.push(tb.packet_rate(frames, 1, &stop)?);
    }
    runs.sort_by(|a, b| a.received_pps.total_cmp(&b.received_pps));
    let passes = runs.len();
    Ok(Measured::Udp64 { median: runs.swap_remove(passes / 2), passes })
}

/// Self time by command, by process (the two nodes run the same commands), then by
/// process and symbol, the largest first.
fn write_report(data: &Path, to: &Path) -> anyhow::Result<()> {
    let mut text = Vec::new();
    for sort in ["comm", "pid", "pid,dso,sym"] {
        let out = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none", "--percent-limit", "0.3"])
            .args(["--sort", sort, "-i"])
            .arg(data)
            .output()
            .context("running perf report")?;
        anyhow::ensure!(out.status.success(), "perf report: {}", String::from_utf8_lossy(&out.stderr));
        text.extend(out.stdout);
    }
    std::fs::write(to, text)?;
    Ok(())
}
