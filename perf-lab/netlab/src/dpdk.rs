//! DPDK's `dpdk-testpmd` as a traffic peer: a vhost-user frontend (`net_virtio_user`), a
//! vhost-user backend (`net_vhost`) or an AF_XDP application (`net_af_xdp`), without
//! hugepages or PCI devices. Stopped (Enter, then SIGTERM by PID) when dropped.

use crate::Netns;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where Debian's `dpdk` package installs it.
pub const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// One running testpmd.
#[derive(Debug)]
pub struct Testpmd {
    child: Option<Child>,
    /// What its output said so far (read on a thread: it must never block on a full pipe).
    seen: Arc<Mutex<Seen>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What testpmd printed: the periodic rates (`--stats-period`) and the final totals.
#[derive(Debug, Default, Clone)]
struct Seen {
    tx_pps: Vec<u64>,
    rx_pps: Vec<u64>,
    totals: Counts,
    /// It said its ports are started and it forwards ("Press enter to exit").
    forwarding: bool,
}

impl Seen {
    fn read(&mut self, line: &str, accumulated: &mut bool) {
        let num = |key: &str| line.split(key).nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok());
        *accumulated |= line.contains("Accumulated forward statistics");
        self.forwarding |= line.contains("Press enter to exit");
        if *accumulated {
            self.totals.rx = num("RX-packets:").unwrap_or(self.totals.rx);
            self.totals.tx = num("TX-packets:").unwrap_or(self.totals.tx);
        } else {
            self.tx_pps.extend(num("Tx-pps:"));
            self.rx_pps.extend(num("Rx-pps:"));
        }
    }
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
        // Line-buffered output (stdbuf), so periodic statistics arrive as they are printed.
        let mut cmd = ns.map_or_else(|| Command::new("stdbuf"), |ns| ns.command("stdbuf"));
        let core_arg = if cores.contains('@') { "--lcores" } else { "-l" };
        let mut child = cmd
            .args(["-oL", TESTPMD])
            .args(["--no-huge", "-m", "512", "--no-pci", "--file-prefix", &prefix, core_arg, cores])
            .args(vdevs.iter().map(|v| format!("--vdev={v}")))
            .arg("--")
            .args(app)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let out = child.stdout.take().expect("piped");
        let reader = {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut accumulated = false;
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).read(&line, &mut accumulated);
                }
            })
        };
        Ok(Self { child: Some(child), seen, reader: Some(reader) })
    }

    /// Wait until it forwards: its ports are set up (for a virtio-user port: the rings
    /// are in place and filled) and its forwarding loop runs.
    ///
    /// # Errors
    /// It exited, or `timeout` passed.
    pub fn wait_forwarding(&mut self, timeout: Duration) -> std::io::Result<()> {
        let t0 = std::time::Instant::now();
        loop {
            if self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).forwarding {
                return Ok(());
            }
            if !self.running() {
                return Err(std::io::Error::other("dpdk-testpmd exited before forwarding"));
            }
            if t0.elapsed() > timeout {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "dpdk-testpmd is not forwarding"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The transmit rates (packets/s, summed over ports) it printed so far, one per
    /// `--stats-period` and port.
    #[must_use]
    pub fn tx_pps(&self) -> Vec<u64> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tx_pps.clone()
    }

    /// The receive rates it printed so far, like [`tx_pps`](Self::tx_pps).
    #[must_use]
    pub fn rx_pps(&self) -> Vec<u64> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).rx_pps.clone()
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
        if let Some(mut c) = self.child.take() {
            let _ = c.stdin.take().map(|mut s| s.write_all(b"\n"));
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).totals
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // testpmd without -i exits on Enter; SIGTERM by PID if it does not.
            let _ = c.stdin.take().map(|mut s| s.write_all(b"\n"));
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
