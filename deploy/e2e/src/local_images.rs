//! The pod images of the CRI test, built here from local files (nothing is pulled): a
//! pause image (`images/pause.c`, compiled static) and a busybox image (Debian's
//! busybox-static). Each is built `FROM scratch` with buildah into a test's podman and
//! saved as a docker archive, the format `ctr images import` reads with its tag.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use xlane_netlab::podman::Podman;

/// The pause image's tag (containerd's `sandbox_image`).
pub const PAUSE: &str = "localhost/xlane-test/pause:1.0";
/// The busybox image's tag.
pub const BUSYBOX: &str = "localhost/xlane-test/busybox:1.0";

/// The busybox applets the pods use.
const APPLETS: &[&str] =
    &["sh", "cat", "echo", "head", "ls", "mkdir", "ping", "seq", "sha256sum", "sleep", "httpd", "wget", "ip", "true"];

fn check(what: &str, out: Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )))
}

/// Build both images in `dir` and return their archives (pause, busybox).
///
/// # Errors
/// gcc, buildah or podman failed.
pub fn build(podman: &Podman, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let pause_root = dir.join("pause/rootfs");
    std::fs::create_dir_all(&pause_root)?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/pause.c");
    let out = Command::new("gcc").args(["-static", "-Os", "-o"]).arg(pause_root.join("pause")).arg(&source).output()?;
    check("gcc -static images/pause.c", out)?;
    let pause = dir.join("pause.tar");
    from_rootfs(podman, PAUSE, &pause_root, "/pause", &pause)?;

    let busybox_root = dir.join("busybox/rootfs");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(busybox_root.join(d))?;
    }
    std::fs::copy("/bin/busybox", busybox_root.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", busybox_root.join("bin").join(applet))?;
    }
    std::fs::write(busybox_root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    let busybox = dir.join("busybox.tar");
    from_rootfs(podman, BUSYBOX, &busybox_root, "/bin/sh", &busybox)?;
    Ok((pause, busybox))
}

/// `FROM scratch`, `rootfs` as `/`, `cmd` as the command; saved to `archive`.
fn from_rootfs(podman: &Podman, tag: &str, rootfs: &Path, cmd: &str, archive: &Path) -> io::Result<()> {
    let ctx = rootfs.parent().ok_or_else(|| io::Error::other("rootfs has no parent"))?;
    std::fs::write(
        ctx.join("Containerfile"),
        format!("FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD [\"{cmd}\"]\n"),
    )?;
    let out = Command::new("buildah")
        .args(["bud", "--quiet", "-f"])
        .arg(ctx.join("Containerfile"))
        .args(["-t", tag])
        .arg(ctx)
        .envs(podman.env())
        .output()?;
    check(&format!("buildah bud {tag}"), out)?;
    podman.ok(&["save", "--format", "docker-archive", "-o", &archive.to_string_lossy(), tag]).map(drop)
}
