//! DPDK's `dpdk-testpmd` as a traffic peer: a vhost-user frontend (`net_virtio_user`), a
//! vhost-user backend (`net_vhost`) or an AF_XDP application (`net_af_xdp`), without
//! hugepages or PCI devices. Stopped (Enter, then SIGTERM by PID) when dropped.

use crate::Netns;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where Debian's `dpdk` package installs it.
pub const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// One running testpmd.
#[derive(Debug)]
pub struct Testpmd {
    child: Option<Child>,
}

/// Packets testpmd counted on its port over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `RX-packets` (over all ports).
    pub rx: u64,
    /// `TX-packets`.
    pub tx: u64,
}

impl Testpmd {
    /// Start testpmd on `cores` (an EAL `-l` list, or an `--lcores` map when it contains
    /// `@`) with the virtual devices `vdevs` (its ports, in order) and the application
    /// arguments `app` (after `--`), inside `ns` if given.
    ///
    /// # Errors
    /// testpmd cannot be run (`apt-get install dpdk`).
    pub fn spawn(ns: Option<&Netns>, cores: &str, vdevs: &[&str], app: &[&str]) -> std::io::Result<Self> {
        // DPDK's runtime files are keyed by the file prefix: unique per instance.
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("xlane{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut cmd = ns.map_or_else(|| Command::new(TESTPMD), |ns| ns.command(TESTPMD));
        let core_arg = if cores.contains('@') { "--lcores" } else { "-l" };
        let child = cmd
            .args(["--no-huge", "-m", "512", "--no-pci", "--file-prefix", &prefix, core_arg, cores])
            .args(vdevs.iter().map(|v| format!("--vdev={v}")))
            .arg("--")
            .args(app)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self { child: Some(child) })
    }

    /// Whether it is still running (it exits early on a bad device or a refused
    /// connection).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stop it (Enter) and read the totals it prints on the way out; zero if it had
    /// already exited without them.
    #[must_use]
    pub fn finish(mut self) -> Counts {
        let Some(mut c) = self.child.take() else { return Counts::default() };
        let _ = c.stdin.take().map(|mut s| s.write_all(b"\n"));
        let mut counts = Counts::default();
        if let Some(out) = c.stdout.take() {
            let mut accumulated = false;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                accumulated |= line.contains("Accumulated forward statistics");
                let num =
                    |key: &str| line.split(key).nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok());
                if accumulated {
                    counts.rx = num("RX-packets:").unwrap_or(counts.rx);
                    counts.tx = num("TX-packets:").unwrap_or(counts.tx);
                }
            }
        }
        let _ = c.wait();
        counts
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // testpmd without -i exits on Enter; SIGTERM by PID if it does not.
            let _ = c.stdin.take().map(|mut s| s.write_all(b"\n"));
            drop(c.stdout.take());
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}
