//! `crash-gap` as a user runs it, one round of each stop mode: xlaned on node 0 crashes
//! (and stops) and comes back, the agent replays its state, the pods talk again, and the
//! run leaves nothing behind; a handover (`--takeover`) loses no probe. No time bound is
//! asserted: the perf-lab reports the gap.

use std::process::Command;
use xlane_netlab::privileged;

#[test]
fn traffic_comes_back_after_a_crash_and_nothing_is_left() {
    if !privileged("traffic_comes_back_after_a_crash_and_nothing_is_left") {
        return;
    }
    let json = std::env::temp_dir().join(format!("xlane-crash-gap-{}.json", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xlane-lab"));
    cmd.args(["crash-gap", "--rounds", "1", "--warmup-s", "1", "--stop", "kill,term,handover,kill-supervised"]);
    cmd.args(["--json", &json.to_string_lossy()]);
    let (pid, out) = xlane_netlab::run_and_pid(&mut cmd).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rounds = r["rounds"].as_array().unwrap();
    let stops: Vec<&str> = rounds.iter().map(|x| x["stop"].as_str().unwrap()).collect();
    assert_eq!(stops, ["kill", "term", "handover", "kill-supervised"], "{r}");
    for x in rounds {
        // Probes went through before the signal and again after it, from a new xlaned.
        assert!(x["answered"].as_u64().unwrap() > x["answered_after"].as_u64().unwrap(), "{x}");
        assert!(x["answered_after"].as_u64().unwrap() > 0, "no probe answered after the restart: {x}");
        assert!(x["gap_ms"].as_f64().is_some(), "{x}");
        let pids = x["xlaned_pids"].as_array().unwrap();
        assert!(pids[0].is_u64() && pids[1].is_u64() && pids[0] != pids[1], "{x}");
        // The agent replayed its state into it (its log line was found, in sync).
        assert!(x["timeline"]["replayed"].as_f64().is_some(), "no replay in the agent's log: {x}");
        assert!(x["agent_replay_ms"].as_f64().is_some(), "{x}");
        if x["stop"] == "handover" {
            assert_eq!(x["lost"].as_u64(), Some(0), "a handover loses no probe: {x}");
            assert!(x["max_rtt_ms"].as_f64().is_some(), "{x}");
        }
    }
    // The summary table names both modes.
    assert!(stdout.contains("SIGKILL") && stdout.contains("SIGTERM") && stdout.contains("handover"), "{stdout}");
    assert!(stdout.contains("SIGKILL, fd store"), "{stdout}");
    // Nothing left: its namespaces, its run directory, every daemon it started.
    assert_eq!(xlane_netlab::namespaces_of("xgap", pid).unwrap(), Vec::<String>::new());
    assert!(!std::env::temp_dir().join(format!("xlane-xgap-{pid}")).exists(), "the run directory is gone");
    let daemons = r["daemon_pids"].as_array().unwrap();
    assert_eq!(
        daemons.len(),
        9,
        "xlaned and agent on two nodes, three restarted xlaned, a supervisor and the xlaned it restarted: {r}"
    );
    for d in daemons {
        let d = d.as_u64().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{d}")).exists(), "daemon {d} still running");
    }
    std::fs::remove_file(json).unwrap();
}
