//! The vhost-user ingest benchmark as a user runs it, briefly: both backends carry the
//! frontend's frames in every round, xlane's through its pipeline, and the report is
//! complete. (Rates are this machine's; the comparison is BENCHMARKS.md's, not a test's.)

use std::process::{Command, Stdio};
use xlane_netlab::dpdk::TESTPMD;
use xlane_netlab::privileged_with;

#[test]
fn both_backends_carry_the_frontends_frames_every_round() {
    if !privileged_with("both_backends_carry_the_frontends_frames_every_round", &[TESTPMD]) {
        return;
    }
    let json = std::env::temp_dir().join(format!("vhost-ingest-test-{}.json", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_xlane-lab"))
        .args(["vhost-ingest", "--seconds", "5", "--rounds", "2", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "vhost-ingest failed: {}", String::from_utf8_lossy(&out.stderr));
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
        assert!(r[backend]["backend_rx_pps"].as_f64().unwrap() > 0.0, "{backend} delivered nothing");
    }
    assert_eq!(r["round_ratios"].as_array().unwrap().len(), 2);
    assert!(r["ratio"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("xlane / DPDK:"), "the summary: {stdout}");
    let left = xlane_netlab::namespaces_of("xvi", pid).unwrap();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
