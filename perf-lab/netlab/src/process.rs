//! Processes the lab starts (daemons in namespaces), stopped by PID on drop, and a
//! polling helper.

use crate::Netns;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process in a namespace, stopped by PID on drop. It runs in its own process group, so
/// a Ctrl-C at the terminal reaches only the lab, which then stops it in order.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Start `bin` in `ns`, stderr to `log`.
    ///
    /// # Errors
    /// The log cannot be created or the program not started.
    pub fn spawn(ns: &Netns, bin: &Path, args: &[String], log: PathBuf) -> std::io::Result<Self> {
        let f = std::fs::File::create(&log)?;
        let child =
            ns.command(&bin.to_string_lossy()).args(args).stdout(Stdio::null()).stderr(f).process_group(0).spawn()?;
        Self::record(child, log)
    }

    /// Start in the root namespace (for processes that need only unix sockets and
    /// loopback, like an agent talking to its datastore).
    ///
    /// # Errors
    /// As [`Proc::spawn`].
    pub fn spawn_here(bin: &Path, args: &[String], log: PathBuf) -> std::io::Result<Self> {
        let f = std::fs::File::create(&log)?;
        let child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(f).process_group(0).spawn()?;
        Self::record(child, log)
    }

    /// Keep the PID beside the log, so a later run can stop it if this one dies
    /// without dropping it ([`crate::sweep`]).
    fn record(child: Child, log: PathBuf) -> std::io::Result<Self> {
        let proc = Self { child: Some(child), log };
        std::fs::write(proc.log.with_extension("pid"), proc.pid().unwrap_or_default().to_string())?;
        Ok(proc)
    }

    /// [`Proc::spawn`] for tests.
    ///
    /// # Panics
    /// If it cannot start.
    #[must_use]
    pub fn start(ns: &Netns, bin: &Path, args: &[String], log: PathBuf) -> Self {
        Self::spawn(ns, bin, args, log).unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    /// [`Proc::spawn_here`] for tests.
    ///
    /// # Panics
    /// If it cannot start.
    #[must_use]
    pub fn start_here(bin: &Path, args: &[String], log: PathBuf) -> Self {
        Self::spawn_here(bin, args, log).unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The process ID, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send `sig` (by PID) and wait up to 10 s, then kill; the exit status, or `None`
    /// if it was not running.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = std::fs::remove_file(self.log.with_extension("pid"));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, sig);
        let t0 = Instant::now();
        loop {
            match c.try_wait() {
                Ok(Some(st)) => return Some(st),
                // Finely at first: a restart measured after it (the crash gap) should
                // not wait for this loop.
                Ok(None) if t0.elapsed() < Duration::from_millis(200) => std::thread::sleep(Duration::from_millis(1)),
                Ok(None) if t0.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = c.kill();
                    return c.wait().ok();
                }
            }
        }
    }

    pub fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGTERM);
    }
}

/// Poll `f` every 50 ms until it holds; returns how long that took.
///
/// # Panics
/// After `timeout`, naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// Poll `f` every 50 ms until it holds, while `proc` keeps running.
///
/// # Errors
/// `proc` exited, or `timeout` passed; the message names `what` and ends with the log.
pub fn wait_until(what: &str, timeout: Duration, proc: &mut Proc, mut f: impl FnMut() -> bool) -> std::io::Result<()> {
    let t0 = Instant::now();
    while !f() {
        let why = if !proc.running() {
            "the process exited"
        } else if t0.elapsed() > timeout {
            "timed out"
        } else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        return Err(std::io::Error::other(format!(
            "waiting for {what}: {why}; log {}:\n{}",
            proc.log.display(),
            proc.log()
        )));
    }
    Ok(())
}
