//! A podman (and buildah) of the test's own: storage, configuration and containers under
//! one directory, with the settings this machine needs (PLATFORM.md, "CNI clients"):
//! runc, cgroupfs, the vfs storage driver and explicit ulimits; optionally CNI networking
//! from given plugin and configuration directories, and run inside a lab node's network
//! namespace.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// podman with its storage and configuration in `dir`; every container is removed on drop.
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
    /// Network namespace (a `/run/netns` path) podman runs in, if not the caller's.
    netns: Option<PathBuf>,
}

/// CNI networking for containers: where the plugins and the network configurations are.
#[derive(Debug, Clone, Copy)]
pub struct Cni<'a> {
    /// Directories searched for plugin binaries, in order.
    pub plugin_dirs: &'a [&'a Path],
    /// The directory of `.conflist` files.
    pub config_dir: &'a Path,
}

impl Podman {
    /// Write the configuration into `dir` (created).
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn new(dir: &Path) -> io::Result<Self> {
        Self::with_network(dir, None)
    }

    /// As [`new`](Self::new), with containers networked through `cni` (podman's CNI
    /// backend) when given.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn with_network(dir: &Path, cni: Option<Cni<'_>>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut conf = String::from(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        );
        if let Some(cni) = cni {
            let dirs: Vec<String> = cni.plugin_dirs.iter().map(|d| format!("{:?}", d.display().to_string())).collect();
            let _ = write!(
                conf,
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {:?}\n",
                dirs.join(", "),
                cni.config_dir.display().to_string()
            );
        }
        std::fs::write(dir.join("containers.conf"), conf)?;
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                dir.join("runroot").display(),
                dir.join("root").display()
            ),
        )?;
        Ok(Self { dir: dir.to_path_buf(), netns: None })
    }

    /// Run podman in the network namespace at `path` (a lab node's `/run/netns/…`): its
    /// containers' host side lives there. Through `nsenter --net` rather than `ip netns
    /// exec`, which remounts /sys and hides the cgroups from runc.
    #[must_use]
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// The environment that points podman and buildah (also when run by a script such
    /// as `deploy/build-image.sh`) at this instance.
    #[must_use]
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("CONTAINERS_CONF", self.dir.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf")),
        ]
    }

    /// `podman args…`, to its end.
    ///
    /// # Errors
    /// podman cannot be started.
    pub fn run(&self, args: &[&str]) -> io::Result<Output> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        cmd.args(args).envs(self.env()).output()
    }

    /// `podman args…`; its trimmed stdout.
    ///
    /// # Errors
    /// podman failed: its stderr and stdout.
    pub fn ok(&self, args: &[&str]) -> io::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "podman {args:?}: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if !self.dir.join("root").exists() {
            return; // podman never ran: nothing to remove
        }
        // Containers (conmon and runc stop their processes) before the images; the
        // directory itself is its owner's to remove.
        let _ = self.run(&["rm", "--force", "--all", "--time", "5"]);
        let _ = self.run(&["rmi", "--force", "--all"]);
    }
}
