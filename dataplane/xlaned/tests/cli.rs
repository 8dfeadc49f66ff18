//! The binaries as a user meets them, unprivileged: xlaned's log lines when stderr is
//! not a terminal, xlanectl's help.

use std::process::{Command, Stdio};

#[test]
fn xlaned_logs_plain_lines_to_a_pipe() {
    let out = Command::new(env!("CARGO_BIN_EXE_xlaned"))
        .env_remove("XLANE_UPLINK")
        .env_remove("XLANE_CONFIG")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success(), "no uplink: xlaned must refuse to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERROR") && err.contains("--uplink"), "{err}");
    assert!(!err.contains('\x1b'), "escape bytes in a piped log: {err:?}");
}

#[test]
fn xlanectl_help_introduces_xlanectl() {
    for flag in ["--help", "-h"] {
        let out = Command::new(env!("CARGO_BIN_EXE_xlanectl")).arg(flag).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        let first = help.lines().next().unwrap_or_default();
        assert!(first.contains("xlanectl") && first.contains("control socket"), "{flag}: {help}");
        assert!(!first.contains("daemon"), "{flag}: {help}");
    }
}
