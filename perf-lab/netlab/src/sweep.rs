//! Cleaning up after a lab run that died without its `Drop`s (SIGKILL, a crash): the
//! namespaces and daemons of runs whose process is gone. Namespaces are recognized by
//! name (`<prefix>…-<pid>-<n>`, see [`crate::Netns::new`]), daemons by the PID files
//! [`crate::process::Proc`] writes beside their logs in the run's directory
//! (`$TMPDIR/xlane-<prefix>-<pid>/`). Only processes a lab run started are signalled,
//! and only when their run is dead.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Daemons stopped.
    pub processes: usize,
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove what dead runs with names starting `prefix` left behind.
///
/// # Errors
/// `ip netns` failures.
pub fn sweep(prefix: &str) -> io::Result<Swept> {
    let mut swept = Swept::default();
    // Daemons first: a namespace cannot be reclaimed while they hold it.
    let tmp = std::env::temp_dir();
    let runs = std::fs::read_dir(&tmp)?;
    for run in runs.flatten() {
        let name = run.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("xlane-{prefix}")) else { continue };
        let Some(owner) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if alive(owner) {
            continue;
        }
        for f in std::fs::read_dir(run.path())?.flatten() {
            if f.path().extension().is_some_and(|e| e == "pid")
                && let Some(pid) = std::fs::read_to_string(f.path()).ok().and_then(|s| s.trim().parse::<u32>().ok())
                && started_by_run(pid, &name)
                && stop(pid)
            {
                swept.processes += 1;
            }
        }
        let _ = std::fs::remove_dir_all(run.path());
    }
    for (name, owner) in crate::namespaces(prefix)? {
        if !alive(owner) {
            crate::ip(&["netns", "del", &name])?;
            swept.namespaces += 1;
        }
    }
    Ok(swept)
}

/// Whether `pid` is still the daemon the run started: its command line names the run's
/// directory (sockets, state), so a recycled PID is left alone.
fn started_by_run(pid: u32, run_dir: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(run_dir))
}

/// SIGTERM `pid`, then SIGKILL after 5 s; whether it was running.
fn stop(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    let pid_t = nix::unistd::Pid::from_raw(raw);
    if nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGTERM).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL);
    }
    true
}
