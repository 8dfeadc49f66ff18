//! The documented install step (`cni/install.sh`) into a scratch prefix: the plugin lands
//! under its type name and answers VERSION; the conflist is one the plugin accepts.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn install_script_puts_plugin_and_conflist_in_place() {
    let root = std::env::temp_dir().join(format!("xlane-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../install.sh");
    let out = Command::new(script)
        .args(["--bin-dir", &root.join("bin").to_string_lossy(), "--conf-dir", &root.join("net.d").to_string_lossy()])
        .args(["--agent-socket", "/run/xlane/test.sock", "--binary", env!("CARGO_BIN_EXE_xlane")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("net.d/10-xlane.conflist")).unwrap()).unwrap();
    assert_eq!(list["plugins"][0]["agentSocket"], "/run/xlane/test.sock");
    // The entry as a runtime hands it to the plugin parses.
    let mut entry = list["plugins"][0].clone();
    entry["cniVersion"] = list["cniVersion"].clone();
    entry["name"] = list["name"].clone();
    xlane_cni::protocol::NetConf::parse(entry.to_string().as_bytes()).unwrap();
    let mut child = Command::new(root.join("bin/xlane"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(br#"{"cniVersion":"1.0.0"}"#).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(v["supportedVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
    // A bad version is refused, nothing half-written.
    let bad = Command::new(script)
        .args(["--conf-dir", &root.join("bad").to_string_lossy(), "--cni-version", "0.3.1"])
        .args(["--binary", env!("CARGO_BIN_EXE_xlane")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(!root.join("bad").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// The DaemonSet's init step: one binary into several bin directories (`/opt/cni/bin`
/// and the runtime's own, e.g. Debian containerd's `/usr/lib/cni`), and a given conflist
/// (the ConfigMap's) installed as is.
#[test]
fn install_script_takes_several_bin_dirs_and_a_given_conflist() {
    let root = std::env::temp_dir().join(format!("xlane-install-conflist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let given = r#"{"cniVersion":"1.0.0","name":"xlane","plugins":[{"type":"xlane","agentSocket":"/run/xlane/agent.sock"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    std::fs::write(root.join("given.conflist"), given).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../install.sh");
    let dir = |d: &str| root.join(d).to_string_lossy().into_owned();
    let out = Command::new(script)
        .args(["--bin-dir", &dir("opt-cni-bin"), "--bin-dir", &dir("usr-lib-cni"), "--conf-dir", &dir("net.d")])
        .args(["--conflist", &dir("given.conflist"), "--binary", env!("CARGO_BIN_EXE_xlane")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for d in ["opt-cni-bin", "usr-lib-cni"] {
        let installed = std::fs::read(root.join(d).join("xlane")).unwrap();
        assert_eq!(installed, std::fs::read(env!("CARGO_BIN_EXE_xlane")).unwrap(), "{d}");
        assert!(!root.join(d).join("xlane.tmp").exists());
    }
    assert_eq!(std::fs::read_to_string(root.join("net.d/10-xlane.conflist")).unwrap(), given);
    // A conflist that cannot be read is refused before anything is installed.
    let bad = Command::new(script)
        .args(["--bin-dir", &dir("bad-bin"), "--conf-dir", &dir("bad-net.d")])
        .args(["--conflist", &dir("missing.conflist"), "--binary", env!("CARGO_BIN_EXE_xlane")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(!root.join("bad-bin").exists() && !root.join("bad-net.d").exists());
    std::fs::remove_dir_all(&root).unwrap();
}
