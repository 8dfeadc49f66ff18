//! A lab's set-up (as root): it removes what a killed earlier run of its prefix left,
//! and its fabric is a plain switch.

use xlane_netlab::{Lab, privileged};

#[test]
fn a_new_lab_sweeps_namespaces_of_dead_runs() {
    if !privileged("a_new_lab_sweeps_namespaces_of_dead_runs") {
        return;
    }
    // A PID no process has: the owner of a run that died without its drops.
    let dead = (100_000..4_000_000u32).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap();
    let leftover = format!("xsw-n0-{dead}-7");
    xlane_netlab::ip(&["netns", "add", &leftover]).unwrap();
    let lab = Lab::new("xsw", 1).unwrap();
    let names: Vec<String> = xlane_netlab::namespaces("xsw").unwrap().into_iter().map(|(n, _)| n).collect();
    let _ = xlane_netlab::ip(&["netns", "del", &leftover]);
    assert!(!names.contains(&leftover), "the dead run's namespace is gone: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("xsw-fab")), "the new lab is there: {names:?}");
    drop(lab);
}

#[test]
fn the_fabric_bridges_without_netfilter() {
    if !privileged("the_fabric_bridges_without_netfilter") {
        return;
    }
    let lab = Lab::new("xbn", 1).unwrap();
    for name in xlane_netlab::BRIDGE_NETFILTER {
        let value = lab.fabric.enter(|| std::fs::read_to_string(format!("/proc/sys/net/bridge/{name}"))).unwrap();
        match value {
            Ok(v) => assert_eq!(v.trim(), "0", "{name} in the fabric"),
            // br_netfilter not loaded: bridges never call netfilter.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{name}: {e}"),
        }
    }
}
