//! `xlane-lab profile`, briefly: iperf3 through a contender's path under `perf record`
//! gives a rate, and a report that names the commands that ran (the pods' iperf3) with
//! their share of the samples; nothing is left behind.

use std::path::PathBuf;
use xlane_lab::bench::Contender;
use xlane_lab::profile::{Options, run};
use xlane_netlab::privileged;

#[test]
fn a_profile_says_which_commands_took_the_time() {
    if !privileged("a_profile_says_which_commands_took_the_time") {
        return;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("profile");
    let o = Options { contender: Contender::KernelVxlan, mtu: 1500, streams: 1, local: false, seconds: 4, out };
    let p = run(&o).unwrap();
    assert!(p.tcp.gbit > 0.01, "{:?}", p.tcp);
    let report = std::fs::read_to_string(&p.report).unwrap();
    let iperf3 = report
        .lines()
        .find_map(|l| l.trim().strip_suffix("iperf3")?.trim().strip_suffix('%')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no share for iperf3 in:\n{report}"));
    assert!(iperf3 > 1.0 && iperf3 <= 100.0, "iperf3's share {iperf3}%");
    assert!(report.contains("[k] "), "no kernel symbols:\n{report}");
    assert_eq!(xlane_netlab::namespaces_of("xbv", std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
}
