//! One lab node's containerd (Debian's, CRI plugin on): its own root, state, sockets,
//! runc state and CNI directories under one directory, run inside the node's network
//! namespace, since it runs the CNI plugins there and they create the pod's host-side
//! veth in their own namespace. Through `nsenter --net`, not `ip netns exec`, which
//! remounts /sys and hides the cgroups from runc (PLATFORM.md).
//!
//! Stopped by PID when dropped; the processes it started (shims and containers, which
//! outlive a containerd restart by design) are then stopped by the PIDs recorded in its
//! state, and whatever the shims left mounted is unmounted.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use xlane_netlab::Netns;
use xlane_netlab::process::{Proc, wait_until};

/// The containerd namespace of the CRI plugin.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// A node's containerd.
#[derive(Debug)]
pub struct Containerd {
    /// Everything of this instance.
    pub dir: PathBuf,
    /// The CRI (and containerd) gRPC socket.
    pub socket: PathBuf,
    netns: String,
    proc: Option<Proc>,
    starts: u32,
}

impl Containerd {
    /// Set up in `dir` for the node `netns`: CNI plugins `plugins` (name, binary) in its
    /// bin dir, `conflist` in its conf dir, `sandbox_image` as the pause image. Not
    /// started yet.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn new(
        dir: &Path,
        netns: &Netns,
        plugins: &[(&str, PathBuf)],
        conflist: &serde_json::Value,
        sandbox_image: &str,
    ) -> io::Result<Self> {
        let path = |p: &str| dir.join(p).to_string_lossy().into_owned();
        for d in ["cni-bin", "net.d", "root", "state", "runc", "logs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        for (name, binary) in plugins {
            std::fs::copy(binary, dir.join("cni-bin").join(name))?;
        }
        std::fs::write(dir.join("net.d/10-xlane.conflist"), serde_json::to_string_pretty(conflist)?)?;
        let socket = dir.join("containerd.sock");
        // Version 2 configuration of containerd 1.6. The native snapshotter (plain
        // copies): nothing is left mounted by an image's layers.
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  # The sandbox asks for oom_score_adj -998, which this machine's root may not set
  # (runc: "failed to update /proc/self/oom_score_adj: Permission denied"): clamp to
  # containerd's own, as for a rootless containerd.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = path("root"),
            state = path("state"),
            socket = socket.display(),
            runc = path("runc"),
            bin = path("cni-bin"),
            conf = path("net.d"),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        Ok(Self { dir: dir.to_path_buf(), socket, netns: netns.path(), proc: None, starts: 0 })
    }

    /// Start it and wait until it answers (`ctr version`).
    ///
    /// # Errors
    /// It cannot start, exits, or does not answer within 20 s (its log is in the message).
    pub fn start(&mut self) -> io::Result<()> {
        self.starts += 1;
        let args = vec![
            format!("--net={}", self.netns),
            "containerd".into(),
            "--config".into(),
            self.dir.join("config.toml").to_string_lossy().into_owned(),
        ];
        // nsenter execs containerd: the PID is containerd's.
        let log = self.dir.join(format!("containerd.{}.log", self.starts));
        let mut proc = Proc::spawn_here(Path::new("/usr/bin/nsenter"), &args, log)?;
        let result =
            wait_until("containerd's socket", Duration::from_secs(20), &mut proc, || self.ctr(&["version"]).is_ok());
        self.proc = Some(proc);
        result
    }

    /// Kill it by PID (SIGKILL: no chance to tidy up), leaving its shims and pods
    /// running, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// What the running containerd has logged.
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// `ctr --address <socket> -n k8s.io args…`; its stdout.
    ///
    /// # Errors
    /// ctr failed (its stderr).
    pub fn ctr(&self, args: &[&str]) -> io::Result<String> {
        let out =
            Command::new("ctr").arg("--address").arg(&self.socket).args(["-n", K8S_NAMESPACE]).args(args).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Import an image archive (`ctr images import`).
    ///
    /// # Errors
    /// ctr failed.
    pub fn import(&self, archive: &Path) -> io::Result<()> {
        self.ctr(&["images", "import", &archive.to_string_lossy()]).map(drop)
    }

    /// The PIDs recorded in the runtime's task state (`init.pid` of each container,
    /// `shim.pid` of each shim), containers first: empty once every task is deleted.
    #[must_use]
    pub fn task_pids(&self) -> Vec<i32> {
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task").join(K8S_NAMESPACE);
        let read = |file: &str| -> Vec<i32> {
            std::fs::read_dir(&tasks)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join(file)).ok()?.trim().parse().ok())
                .collect()
        };
        let mut pids = read("init.pid");
        pids.extend(read("shim.pid"));
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(nix::sys::signal::Signal::SIGTERM);
        }
        // What a test that removed its pods leaves is nothing; after a failure, the
        // pods' processes and their shims.
        for pid in self.task_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        for m in ours.iter().rev() {
            let _ = Command::new("umount").args(["--lazy", m]).status();
        }
    }
}
