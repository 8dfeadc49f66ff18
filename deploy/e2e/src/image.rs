//! The xlane image, built offline by `deploy/build-image.sh` from the workspace's own
//! binaries (the ones `cargo test` built beside this test), into a test's podman.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use xlane_netlab::podman::Podman;

/// The repository's root.
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build `tag` with `deploy/build-image.sh --bin-dir <target>/<profile>` into `podman`'s
/// storage; with `save`, also write it as an OCI archive there (for `ctr images import`).
///
/// # Errors
/// The script failed (its output is in the message).
///
/// # Panics
/// The workspace's binaries are not built (`cargo build --workspace --bins`).
pub fn build(podman: &Podman, tag: &str, save: Option<&Path>) -> io::Result<()> {
    let bin_dir = xlane_netlab::workspace_binary("xlaned").parent().expect("target/<profile>").to_path_buf();
    for bin in ["xlane-supervise", "xlane-agent", "xlanectl", "xlane"] {
        let _ = xlane_netlab::workspace_binary(bin);
    }
    let mut cmd = Command::new(repo_root().join("deploy/build-image.sh"));
    cmd.args(["--tag", tag]).arg("--bin-dir").arg(&bin_dir).envs(podman.env());
    if let Some(path) = save {
        cmd.arg("--save").arg(path);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "deploy/build-image.sh: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(())
}
