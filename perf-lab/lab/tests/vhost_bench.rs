//! The vhost-user comparisons as a user runs them, briefly: in every round both backends
//! carry frames (xlane's ingest through its pipeline, its egress into the guest's ring)
//! and the report is complete. (Rates are this machine's; the comparison is
//! BENCHMARKS.md's, not a test's.)

use std::process::Command;
use xlane_netlab::dpdk::TESTPMD;
use xlane_netlab::privileged_with;

/// One benchmark at a time: each pins busy pollers on both cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn both_backends_carry_frames_every_round(test: &str, command: &str) {
    if !privileged_with(test, &[TESTPMD]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let json = std::env::temp_dir().join(format!("{command}-test-{}.json", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xlane-lab"));
    cmd.args([command, "--seconds", "5", "--rounds", "2", "--json"]).arg(&json);
    let (pid, out) = xlane_netlab::run_and_pid(&mut cmd).unwrap();
    assert!(out.status.success(), "{command} failed: {}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    for backend in ["xlane", "dpdk"] {
        let rounds = r[backend]["samples"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{backend}: a list of rates per round");
        for (i, samples) in rounds.iter().enumerate() {
            let samples = samples.as_array().unwrap();
            assert!(!samples.is_empty(), "{backend}, round {i}: no rates");
            assert!(
                samples.iter().all(|s| s.as_u64().unwrap() > 0),
                "{backend}, round {i}: a second without frames: {samples:?}"
            );
        }
        assert!(r[backend]["backend_pps"].as_f64().unwrap() > 0.0, "{backend}'s own count is zero");
    }
    assert_eq!(r["round_ratios"].as_array().unwrap().len(), 2);
    assert!(r["ratio"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("xlane / DPDK:"), "the summary: {stdout}");
    let left = xlane_netlab::namespaces_of("xvi", pid).unwrap();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn ingest_both_backends_carry_frames_every_round() {
    both_backends_carry_frames_every_round("ingest_both_backends_carry_frames_every_round", "vhost-ingest");
}

#[test]
fn egress_both_backends_carry_frames_every_round() {
    both_backends_carry_frames_every_round("egress_both_backends_carry_frames_every_round", "vhost-egress");
}
