//! Network namespaces for the lab and the privileged tests.
//!
//! Everything here is created inside namespaces this code makes and removes: a [`Netns`]
//! deletes itself on drop (its interfaces go with it), so a failing test leaves nothing
//! behind. Interfaces, addresses and routes are configured over netlink
//! ([`xlane_netlink`], as the CNI plugin and xlaned do). iproute2's `ip` stays for what is
//! not a netlink object: named namespaces (`ip netns add/del/list/exec`: a namespace
//! bind-mounted under /run/netns) — and for the tests' and the lab's own ad-hoc commands
//! ([`Netns::ip`]), which read what `ip` prints.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod dpdk;
pub mod podman;
pub mod process;
pub mod runtime;
pub mod sweep;
pub mod topology;

pub use topology::{BRIDGE_NETFILTER, Lab, Node, Pod, Subnet};

use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use xlane_netlink::{Netlink, Veth, VethEnd};

/// Whether a privileged test may run: true as root. Outside CI a non-root run prints
/// that the test was skipped; in CI (`CI=true`) it panics, because a missing privilege
/// there is a failure, not a skip.
///
/// # Panics
/// In CI without root.
#[must_use]
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: needs root (CI=true: not skipping)");
    eprintln!("SKIPPED {test}: needs root (runs for real in CI)");
    false
}

/// Whether a test needing root and the files in `tools` (installed by
/// `scripts/test.sh`) may run; like [`privileged`], a skip outside CI, a failure in CI.
///
/// # Panics
/// In CI without root or a tool.
#[must_use]
pub fn privileged_with(test: &str, tools: &[&str]) -> bool {
    if !privileged(test) {
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !std::path::Path::new(t).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: missing {missing:?} (CI=true: not skipping)");
    eprintln!("SKIPPED {test}: missing {missing:?} (scripts/test.sh installs them)");
    false
}

fn check(what: &str, out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )))
    }
}

/// Path of a workspace binary (`xlaned`, `xlane-agent`, …) built beside the running
/// test: `cargo test --workspace` builds every package's binaries before it runs tests.
///
/// # Panics
/// If the binary is not there (run `cargo build --workspace --bins` first).
#[must_use]
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("own executable path");
    // A test runs from target/<profile>/deps/, a lab binary from target/<profile>/.
    let here = exe.parent().expect("target/<profile>[/deps]");
    let dir = if here.ends_with("deps") { here.parent().expect("target/<profile>") } else { here };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// Run `ip` with `args` in the current namespace.
///
/// # Errors
/// Spawn failure, or `ip`'s message on failure.
pub fn ip(args: &[&str]) -> io::Result<String> {
    check(&format!("ip {}", args.join(" ")), Command::new("ip").args(args).output()?)
}

/// The process that created a namespace named `<prefix…>-<pid>-<n>` (see
/// [`Netns::new`]).
fn owner_of(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let _seq: u32 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Namespaces named `prefix…` by [`Netns::new`], with the PID of the process that made
/// each.
///
/// # Errors
/// `ip netns list` failing.
pub fn namespaces(prefix: &str) -> io::Result<Vec<(String, u32)>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .filter_map(|n| Some((n.to_owned(), owner_of(n)?)))
        .collect())
}

/// The namespaces named `prefix…` that process `pid` made and that still exist.
///
/// # Errors
/// `ip netns list` failing.
pub fn namespaces_of(prefix: &str, pid: u32) -> io::Result<Vec<String>> {
    Ok(namespaces(prefix)?.into_iter().filter(|(_, o)| *o == pid).map(|(n, _)| n).collect())
}

/// Run `cmd` to its end with its output captured; its PID too, to look for what it
/// left behind ([`namespaces_of`]).
///
/// # Errors
/// It cannot be started or waited for.
pub fn run_and_pid(cmd: &mut Command) -> io::Result<(u32, Output)> {
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    let pid = child.id();
    Ok((pid, child.wait_with_output()?))
}

/// What a run of `ping` reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Average round trip in milliseconds (NaN without replies).
    pub rtt_avg_ms: f64,
}

impl PingStats {
    /// From ping's summary (iputils or busybox):
    /// "5 packets transmitted, 5 received, 0% packet loss, time 803ms" and
    /// "rtt min/avg/max/mdev = 0.061/0.083/0.120/0.021 ms".
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let stats = text.lines().find(|l| l.contains("packets transmitted"))?;
        let num = |i: usize| -> Option<u32> { stats.split(',').nth(i)?.split_whitespace().next()?.parse().ok() };
        let rtt_avg_ms = text
            .lines()
            .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
            .and_then(|l| l.split('=').nth(1)?.split('/').nth(1)?.trim().parse().ok())
            .unwrap_or(f64::NAN);
        Some(Self { sent: num(0)?, received: num(1)?, rtt_avg_ms })
    }
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Create a namespace named `<prefix>-<pid>-<n>` with loopback up.
    ///
    /// # Errors
    /// `ip netns add` failing.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let name = format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        let mut nl = Netlink::in_netns(&ns.path())?;
        let lo = nl.link("lo")?;
        nl.set_up(lo.ifindex, None)?;
        Ok(ns)
    }

    /// Namespace name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file (`/run/netns/<name>`).
    #[must_use]
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Run `ip -n <ns> args`.
    ///
    /// # Errors
    /// As [`ip`].
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run `f` with the calling thread inside the namespace, then return to the
    /// original one. Threads `f` spawns stay in the namespace.
    ///
    /// # Errors
    /// Opening or entering either namespace.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        xlane_netlink::in_netns(self.path(), f)
    }

    /// Interface index of `dev` in this namespace.
    ///
    /// # Errors
    /// Missing interface.
    pub fn ifindex(&self, dev: &str) -> io::Result<u32> {
        Ok(Netlink::in_netns(&self.path())?.link(dev)?.ifindex)
    }

    /// MAC address of `dev` in this namespace.
    ///
    /// # Errors
    /// Missing interface.
    pub fn mac(&self, dev: &str) -> io::Result<String> {
        Ok(Netlink::in_netns(&self.path())?.link(dev)?.mac.to_string())
    }

    /// MTU of `dev` in this namespace.
    ///
    /// # Errors
    /// No such interface, or netlink failures.
    pub fn mtu(&self, dev: &str) -> io::Result<u32> {
        Ok(Netlink::in_netns(&self.path())?.link(dev)?.mtu)
    }

    /// Send `count` pings to `dst` from inside this namespace (200 ms apart, 2 s
    /// deadline each, iputils `ping`).
    ///
    /// # Errors
    /// No ping was answered (ping's exit status): ping's output, for the test's
    /// message. [`ping_stats`](Self::ping_stats) counts the answers.
    pub fn ping(&self, dst: &str, count: u32) -> Result<(), String> {
        let out = self.ping_output(dst, count).map_err(|e| format!("running ping (iputils-ping): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ping {dst}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Send `count` pings to `dst` from inside this namespace and count the answers.
    ///
    /// # Errors
    /// ping cannot be run or printed no statistics (its output is in the message).
    pub fn ping_stats(&self, dst: &str, count: u32) -> io::Result<PingStats> {
        let out = self.ping_output(dst, count)?;
        let text = String::from_utf8_lossy(&out.stdout);
        PingStats::parse(&text).ok_or_else(|| {
            io::Error::other(format!(
                "ping {dst} printed no statistics: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }

    /// Run `ping -c count` to `dst` from inside this namespace (200 ms apart, 2 s
    /// deadline each) and return what it printed.
    ///
    /// # Errors
    /// ping cannot be run.
    pub fn ping_output(&self, dst: &str, count: u32) -> io::Result<Output> {
        self.command("ping").args(["-c", &count.to_string(), "-i", "0.2", "-W", "2", dst]).output()
    }

    /// Send `count` pings of `payload` bytes to `dst` with DF set (never fragmented:
    /// each must cross whole), as [`ping`](Self::ping) does otherwise.
    ///
    /// # Errors
    /// No ping was answered: ping's output.
    pub fn ping_unfragmented(&self, dst: &str, payload: u32, count: u32) -> Result<(), String> {
        let out = self
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "2", "-M", "do", "-s", &payload.to_string(), dst])
            .output()
            .map_err(|e| format!("running ping (iputils-ping): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ping -M do -s {payload} {dst}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Whether an XDP program is attached to `dev`.
    ///
    /// # Errors
    /// Missing interface.
    pub fn has_xdp(&self, dev: &str) -> io::Result<bool> {
        let out = self.ip(&["-d", "link", "show", "dev", dev])?;
        Ok(out.contains("prog/xdp"))
    }

    /// How many UDP sockets listen on `port` (any address).
    ///
    /// # Errors
    /// `ss` failed to run.
    pub fn udp_listeners(&self, port: u16) -> io::Result<usize> {
        let out = self.command("ss").args(["-Hnlu", &format!("sport = :{port}")]).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("ss: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("netlab: removing namespace {}: {e}", self.name);
        }
    }
}

/// Create a veth pair `a` (in `ns_a`) ↔ `b` (in `ns_b`), both up.
///
/// # Errors
/// Netlink failures.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> io::Result<()> {
    Veth {
        local: VethEnd { name: a, netns: Some(&ns_a.path()), ..VethEnd::default() },
        peer: VethEnd { name: b, netns: Some(&ns_b.path()), ..VethEnd::default() },
        mtu: None,
        queues: 1,
        reuse: false,
    }
    .create()
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_of_iputils_and_busybox() {
        let iputils = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.120 ms\n\n--- 10.244.2.2 ping statistics ---\n5 packets transmitted, 4 received, 20% packet loss, time 803ms\nrtt min/avg/max/mdev = 0.061/0.083/0.120/0.021 ms\n";
        assert_eq!(PingStats::parse(iputils).unwrap(), PingStats { sent: 5, received: 4, rtt_avg_ms: 0.083 });
        let busybox = "--- 10.244.2.2 ping statistics ---\n3 packets transmitted, 3 packets received, 0% packet loss\nround-trip min/avg/max = 0.549/1.167/1.524 ms\n";
        assert_eq!(PingStats::parse(busybox).unwrap(), PingStats { sent: 3, received: 3, rtt_avg_ms: 1.167 });
        assert!(PingStats::parse("ping: connect: Network is unreachable").is_none());
    }

    #[test]
    fn owners_are_read_from_namespace_names() {
        assert_eq!(owner_of("xdemo-n0-4242-3"), Some(4242));
        assert_eq!(owner_of("xdemo-fab-17-0"), Some(17));
        assert_eq!(owner_of("xdemo"), None);
        assert_eq!(owner_of("foreign-ns"), None);
    }
}
