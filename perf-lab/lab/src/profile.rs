//! Where the time goes during one TCP run: a contender's testbed, iperf3 for a while,
//! `perf record -a -g` over its middle (every CPU: the pods, the dataplane and the
//! kernel's softirqs share them), and the hottest symbols by command. The bench's
//! rates say how fast; this says why.

use crate::bench::{Contender, Iperf3, Testbed};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What to profile.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whose path.
    pub contender: Contender,
    /// Underlay MTU.
    pub mtu: u16,
    /// iperf3 streams.
    pub streams: u32,
    /// Between two pods of one node instead of across nodes.
    pub local: bool,
    /// Seconds of iperf3 (the profile skips the first and last second).
    pub seconds: u32,
    /// Where perf.data and the report go.
    pub out: PathBuf,
}

/// A profiled run.
#[derive(Debug)]
pub struct Profile {
    /// The TCP run itself.
    pub tcp: Iperf3,
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
    let tcp = tb.tcp(o.streams, o.seconds, o.local);
    let recorded = record.join().map_err(|_| anyhow::anyhow!("perf thread panicked"))?;
    drop(tb);
    let tcp = tcp?;
    recorded?;
    let report = o.out.join("perf-report.txt");
    write_report(&data, &report)?;
    Ok(Profile { tcp, report })
}

/// Self time by command, then by command and symbol, the largest first.
fn write_report(data: &Path, to: &Path) -> anyhow::Result<()> {
    let mut text = Vec::new();
    for sort in ["comm", "comm,dso,sym"] {
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
