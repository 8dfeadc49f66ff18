//! xlane-supervise: runs xlaned where no systemd does (the DaemonSet's container, the
//! lab) the way `deploy/systemd/xlaned.service` has systemd run it: restarted when it
//! dies, and with a file-descriptor store. xlaned keeps its node's kernel objects there
//! (`sd_notify` `FDSTORE=1`, see `xlaned::fdstore`); after a crash the next xlaned gets
//! them back as `LISTEN_FDS`, so the XDP programs stay attached and the pods' sockets
//! open, and forwarding comes back without re-opening a port per pod.
//!
//! ```text
//! xlane-supervise [--restart-delay-ms 100] [--fdstore-max 4096] -- xlaned ARGS…
//! ```
//!
//! The protocol is systemd's, so xlaned cannot tell them apart: `NOTIFY_SOCKET` (a
//! socket in a private directory under `$TMPDIR`) and `FDSTORE=<max>` in its
//! environment; `FDSTORE=1` + `FDNAME=` stores (a name stored again replaces), `FDSTOREREMOVE=1` + `FDNAME=` removes,
//! `MAINPID=` follows a successor after a handover (this process is a child subreaper,
//! so the successor becomes its child); `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID` with
//! the descriptors from 3 on at each start. SIGTERM and SIGINT go to xlaned, which
//! empties the store and exits; then this exits with its status.
#![forbid(unsafe_code)]

use clap::Parser;
use crossbeam_channel::Sender;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "Run xlaned with restarts and a file-descriptor store, as its systemd unit does")]
struct Args {
    /// Wait this long before starting xlaned again after it died (systemd's RestartSec).
    #[arg(long, default_value_t = 100)]
    restart_delay_ms: u64,
    /// Descriptors the store holds at most (systemd's FileDescriptorStoreMax=).
    #[arg(long, default_value_t = 4096)]
    fdstore_max: usize,
    /// Internal: become the command with LISTEN_PID set to this process (the
    /// descriptors are already in place).
    #[arg(long, hide = true)]
    exec: bool,
    /// The command: xlaned and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug)]
enum Event {
    /// A notification: its `KEY=value` lines and the descriptors that came with it.
    Notify(String, Vec<OwnedFd>),
    Exited(Pid, WaitStatus),
    Signal(Signal),
}

fn log(msg: &str) {
    eprintln!("xlane-supervise: {msg}");
}

fn main() {
    let args = Args::parse();
    if args.exec {
        // The second step of a start: this process's PID is the one xlaned will have.
        // Should the supervisor die, so does xlaned (as a unit's processes do): nothing
        // would restart it or empty the store.
        if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            log(&format!("parent-death signal: {e}"));
        }
        let e = Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("LISTEN_PID", std::process::id().to_string())
            .exec();
        log(&format!("{}: {e}", args.command[0]));
        std::process::exit(127);
    }
    std::process::exit(match supervise(&args) {
        Ok(code) => code,
        Err(e) => {
            log(&format!("{e:#}"));
            1
        }
    });
}

fn supervise(args: &Args) -> anyhow::Result<i32> {
    nix::sys::prctl::set_child_subreaper(true)?;
    // A socket file, not an abstract name: not every sd_notify client takes '@'. In a
    // directory of its own, mode 0700: only this user may store descriptors here.
    let dir = std::env::temp_dir().join(format!("xlane-supervise-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let path = dir.join("notify");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path)?;
    let name = path.to_string_lossy().into_owned();
    let (tx, rx) = crossbeam_channel::unbounded();
    spawn_threads(socket, &tx)?;
    let code = run(args, &name, &rx);
    let _ = std::fs::remove_dir_all(&dir);
    code
}

fn run(args: &Args, name: &str, rx: &crossbeam_channel::Receiver<Event>) -> anyhow::Result<i32> {
    let mut store: BTreeMap<String, OwnedFd> = BTreeMap::new();
    let mut main = start(args, name, &store)?;
    let mut stopping: Option<Signal> = None;
    loop {
        match rx.recv()? {
            Event::Notify(text, fds) => apply(&text, fds, &mut store, &mut main, args.fdstore_max),
            Event::Signal(sig) => {
                stopping = Some(sig);
                let _ = kill(main, sig);
            }
            Event::Exited(pid, status) if pid == main => {
                if stopping.is_some() {
                    return Ok(match status {
                        WaitStatus::Exited(_, code) => code,
                        _ => 1,
                    });
                }
                log(&format!(
                    "xlaned (pid {pid}) ended: {status:?}; starting it again with {} kept descriptors",
                    store.len()
                ));
                // What it sent before it died is in the socket: let the reader take it.
                std::thread::sleep(Duration::from_millis(args.restart_delay_ms.max(10)));
                while let Ok(ev) = rx.try_recv() {
                    match ev {
                        Event::Notify(text, fds) => apply(&text, fds, &mut store, &mut main, args.fdstore_max),
                        Event::Signal(sig) => stopping = Some(sig),
                        Event::Exited(..) => {}
                    }
                }
                if stopping.is_some() {
                    return Ok(0);
                }
                main = start(args, name, &store)?;
            }
            // A predecessor after a handover, or a grandchild: reaped, nothing to do.
            Event::Exited(..) => {}
        }
    }
}

/// The reader of the notification socket, the reaper and the signal forwarder.
fn spawn_threads(socket: UnixDatagram, tx: &Sender<Event>) -> anyhow::Result<()> {
    let notify = tx.clone();
    std::thread::Builder::new().name("notify".into()).spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match xlane_xdp::fdpass::recv_with(socket.as_fd(), &mut buf, 253) {
                Ok((n, fds)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if notify.send(Event::Notify(text, fds)).is_err() {
                        return;
                    }
                }
                Err(e) => log(&format!("notification socket: {e}")),
            }
        }
    })?;
    let reaper = tx.clone();
    std::thread::Builder::new().name("reaper".into()).spawn(move || {
        loop {
            match waitpid(None::<Pid>, None) {
                Ok(status) => {
                    if let Some(pid) = status.pid()
                        && reaper.send(Event::Exited(pid, status)).is_err()
                    {
                        return;
                    }
                }
                // No child right now (between a death and the next start).
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })?;
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
    let forward = tx.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            let sig = Signal::try_from(sig).unwrap_or(Signal::SIGTERM);
            if forward.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Start the command with the store's descriptors as `LISTEN_FDS`, through `--exec`
/// (which sets `LISTEN_PID` to its own PID, then becomes the command).
fn start(args: &Args, notify: &str, store: &BTreeMap<String, OwnedFd>) -> anyhow::Result<Pid> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--exec").arg("--").args(&args.command);
    cmd.env("NOTIFY_SOCKET", notify).env("FDSTORE", args.fdstore_max.to_string());
    cmd.env_remove("LISTEN_PID").env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
    if !store.is_empty() {
        let names: Vec<&str> = store.keys().map(String::as_str).collect();
        let fds: Vec<BorrowedFd<'_>> = store.values().map(AsFd::as_fd).collect();
        cmd.env("LISTEN_FDS", fds.len().to_string()).env("LISTEN_FDNAMES", names.join(":"));
        xlane_xdp::fdpass::hand_down(&mut cmd, &fds);
    }
    let child = cmd.spawn()?;
    // Reaped by the reaper thread (waitpid on any child), not through `child`.
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    log(&format!("started {} (pid {pid})", args.command[0]));
    Ok(pid)
}

/// One notification: store, remove, or follow a new main process.
fn apply(text: &str, fds: Vec<OwnedFd>, store: &mut BTreeMap<String, OwnedFd>, main: &mut Pid, max: usize) {
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='));
    let name = field("FDNAME").unwrap_or("stored").to_owned();
    if field("FDSTORE") == Some("1") {
        // One descriptor per name (xlaned's way); more under one name keeps the last.
        if let Some(fd) = fds.into_iter().last() {
            if store.len() >= max && !store.contains_key(&name) {
                log(&format!("store full ({max}): {name} not kept"));
            } else {
                store.insert(name, fd);
            }
        }
    } else if field("FDSTOREREMOVE") == Some("1") {
        store.remove(&name);
    }
    if let Some(pid) = field("MAINPID").and_then(|p| p.parse::<i32>().ok()) {
        log(&format!("main process is now pid {pid}"));
        *main = Pid::from_raw(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A pipe's write end, and its read end to tell which descriptor is stored.
    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = std::io::pipe().unwrap();
        (OwnedFd::from(w), std::fs::File::from(OwnedFd::from(r)))
    }

    fn reaches(store: &BTreeMap<String, OwnedFd>, name: &str, reader: &mut std::fs::File) -> bool {
        let Some(fd) = store.get(name) else { return false };
        std::fs::File::from(fd.try_clone().unwrap()).write_all(b"x").unwrap();
        let mut b = [0u8];
        reader.read_exact(&mut b).is_ok()
    }

    #[test]
    fn notifications_store_replace_remove_and_follow_the_main_process() {
        let (mut store, mut main) = (BTreeMap::new(), Pid::from_raw(10));
        let (a, mut ra) = pipe();
        let (b, mut rb) = pipe();
        apply("FDSTORE=1\nFDNAME=xdp-4-link\n", vec![a], &mut store, &mut main, 8);
        assert!(reaches(&store, "xdp-4-link", &mut ra));
        // The same name again replaces: the newer descriptor is the one kept.
        apply("FDSTORE=1\nFDNAME=xdp-4-link\n", vec![b], &mut store, &mut main, 8);
        assert_eq!(store.len(), 1);
        assert!(reaches(&store, "xdp-4-link", &mut rb));
        // Unnamed, as sd_notify's default.
        let (c, _rc) = pipe();
        apply("FDSTORE=1\n", vec![c], &mut store, &mut main, 8);
        assert!(store.contains_key("stored"));
        apply("FDSTOREREMOVE=1\nFDNAME=xdp-4-link\n", Vec::new(), &mut store, &mut main, 8);
        assert_eq!(store.keys().collect::<Vec<_>>(), ["stored"]);
        // READY and MAINPID: a successor is followed; other lines change nothing.
        apply("READY=1\nMAINPID=4242\n", Vec::new(), &mut store, &mut main, 8);
        assert_eq!(main, Pid::from_raw(4242));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_full_store_keeps_what_it_has() {
        let (mut store, mut main) = (BTreeMap::new(), Pid::from_raw(1));
        let (a, _ra) = pipe();
        let (b, _rb) = pipe();
        let (c, mut rc) = pipe();
        apply("FDSTORE=1\nFDNAME=one\n", vec![a], &mut store, &mut main, 1);
        apply("FDSTORE=1\nFDNAME=two\n", vec![b], &mut store, &mut main, 1);
        assert_eq!(store.keys().collect::<Vec<_>>(), ["one"], "over the limit: not kept");
        apply("FDSTORE=1\nFDNAME=one\n", vec![c], &mut store, &mut main, 1);
        assert!(reaches(&store, "one", &mut rc), "a name already stored may still be replaced");
    }
}
