//! A podman (and buildah) of the test's own: storage, configuration and containers under
//! one directory, with the settings this machine needs (PLATFORM.md, "CNI clients"):
//! runc, cgroupfs, the vfs storage driver and explicit ulimits.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// podman with its storage and configuration in `dir`; every container is removed on drop.
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Write the configuration into `dir` (created).
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )?;
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                dir.join("runroot").display(),
                dir.join("root").display()
            ),
        )?;
        Ok(Self { dir: dir.to_path_buf() })
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
        Command::new("podman").args(args).envs(self.env()).output()
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
