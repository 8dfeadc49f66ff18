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
