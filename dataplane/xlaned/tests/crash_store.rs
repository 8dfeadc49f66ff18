//! Crash recovery through the service manager's file-descriptor store (#18): xlaned run
//! by `xlane-supervise` (as its systemd unit and the DaemonSet run it) keeps its node's
//! objects in the store; killed (SIGKILL), the next one gets them back, takes every pod
//! port from them, and forwarding comes back with the programs never detached. A clean
//! stop empties the store and detaches everything (needs root).

use std::time::Duration;
use xlane_netlab::cluster::{Cluster, ClusterOptions, supervised_pid};
use xlane_netlab::process::wait_for;
use xlane_netlab::{Netns, privileged};

/// Pods on node 0 (the CNI plugin's default attachment: veth-offload).
const PODS: usize = 6;

/// The id of the XDP program on `ifname` in `ns`.
fn xdp_prog_id(ns: &Netns, ifname: &str) -> Option<u64> {
    let out = ns.command("ip").args(["-j", "-d", "link", "show", "dev", ifname]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// A numeric `key=value` field of the last log line containing `what`.
fn logged(log: &str, what: &str, key: &str) -> Option<u64> {
    let line = log.lines().rfind(|l| l.contains(what))?;
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[test]
fn a_crash_under_the_supervisor_keeps_the_pods_objects_and_forwarding_comes_back() {
    // A veth uplink is read through packet taps by default: its program is kept
    // loaded, not linked.
    crash_and_recover(
        "a_crash_under_the_supervisor_keeps_the_pods_objects_and_forwarding_comes_back",
        "xc-fds",
        "auto",
    );
}

#[test]
fn a_crash_keeps_the_uplinks_xdp_program_attached() {
    crash_and_recover("a_crash_keeps_the_uplinks_xdp_program_attached", "xc-fdx", "xdp");
}

/// One cluster at a time: two at once on the lab's two vCPUs would time each other out.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn crash_and_recover(test: &str, prefix: &str, uplink_rx: &str) {
    if !privileged(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let xlaned_args = vec!["--uplink-rx".into(), uplink_rx.into()];
    let opts = ClusterOptions { supervised: true, xlaned_args, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(prefix, 2, &opts).unwrap();
    let pods: Vec<_> = (0..PODS).map(|i| cluster.attach_pod(0, &format!("p{i}")).unwrap()).collect();
    let far = cluster.attach_pod(1, "far").unwrap();
    let far_ip = far.ip.to_string();
    for p in &pods {
        p.ns.ping(&far_ip, 1).unwrap();
    }
    let node0 = cluster.lab.nodes[0].ns.name().to_owned();
    let uplink_prog = xdp_prog_id(&cluster.lab.nodes[0].ns, "eth0");
    assert_eq!(uplink_prog.is_some(), uplink_rx == "xdp", "xlaned's program on the uplink only if it reads it");
    let recovering = "recovering after a crash";

    for round in 1..=2u64 {
        // The store is synced within a tick of the last change.
        std::thread::sleep(Duration::from_millis(1500));
        let old = supervised_pid(&cluster.nodes[0].xlaned).expect("xlaned under the supervisor");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_for("the supervisor's next xlaned", Duration::from_secs(10), || {
            supervised_pid(&cluster.nodes[0].xlaned).is_some_and(|p| p != old)
        });
        wait_for("every pod forwarding again", Duration::from_secs(15), || {
            pods.iter().all(|p| p.ns.ping(&far_ip, 1).is_ok())
        });
        far.ns.ping(&pods[PODS - 1].ip.to_string(), 2).unwrap();
        let log = cluster.nodes[0].xlaned.log();
        assert_eq!(log.matches(recovering).count() as u64, round, "{node0}: one recovery per crash:\n{log}");
        // Every pod's host-stack block and AF_PACKET socket came back from the store;
        // the uplink's and the host port's XDP attachments too; nothing unknown.
        assert_eq!(logged(&log, recovering, "blocks"), Some(PODS as u64), "{log}");
        assert_eq!(logged(&log, recovering, "packet_sockets"), Some(PODS as u64), "one worker: {log}");
        assert_eq!(logged(&log, recovering, "attachments"), Some(2), "uplink and host port: {log}");
        assert_eq!(logged(&log, recovering, "unknown"), Some(0), "{log}");
        // Replayed from the store's state, and none of its objects left over.
        assert!(logged(&log, "took over: state rebuilt", "requests").is_some_and(|n| n > PODS as u64), "{log}");
        assert!(!log.contains("inherited objects no request took"), "{log}");
        // The program never left the uplink (or never came): the store held it through
        // the crash.
        assert_eq!(xdp_prog_id(&cluster.lab.nodes[0].ns, "eth0"), uplink_prog, "round {round}");
    }

    // A clean stop (SIGTERM to the supervisor, passed on) empties the store: xlaned
    // detaches its programs and the supervisor exits with its status.
    let status = cluster.nodes[0].xlaned.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(status.is_some_and(|s| s.success()), "the supervisor's exit: {status:?}");
    assert_eq!(xdp_prog_id(&cluster.lab.nodes[0].ns, "eth0"), None, "the uplink's program detached");
    let log = cluster.nodes[0].xlaned.log();
    assert!(log.contains("xlaned stopped; XDP programs detached"), "{log}");
    for p in pods.iter().chain([&far]) {
        let _ = cluster.detach_pod(p);
    }
}
