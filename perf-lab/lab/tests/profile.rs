//! `xlane-lab profile`, briefly: iperf3 through a contender's path under `perf record`
//! gives a rate, and a report that names the commands that ran (the pods' iperf3) with
//! their share of the samples; nothing is left behind.

use std::path::PathBuf;
use xlane_lab::bench::Contender;
use xlane_lab::profile::{Measured, Options, Traffic, run};
use xlane_netlab::privileged;

#[test]
fn a_profile_says_which_commands_took_the_time() {
    if !privileged("a_profile_says_which_commands_took_the_time") {
        return;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("profile");
    let traffic = Traffic::Tcp { streams: 1 };
    let o = Options { contender: Contender::KernelVxlan, mtu: 1500, traffic, local: false, seconds: 4, out };
    let p = run(&o).unwrap();
    let Measured::Tcp(tcp) = &p.measured else { panic!("{:?}", p.measured) };
    assert!(tcp.gbit > 0.01, "{tcp:?}");
    let report = std::fs::read_to_string(&p.report).unwrap();
    let iperf3 = report
        .lines()
        .find_map(|l| l.trim().strip_suffix("iperf3")?.trim().strip_suffix('%')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no share for iperf3 in:\n{report}"));
    assert!(iperf3 > 1.0 && iperf3 <= 100.0, "iperf3's share {iperf3}%");
    assert!(report.contains("[k] "), "no kernel symbols:\n{report}");
    assert_eq!(xlane_netlab::namespaces_of("xbv", std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
}

#[test]
fn a_packet_rate_profile_shows_the_dataplane_working() {
    if !privileged("a_packet_rate_profile_shows_the_dataplane_working") {
        return;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("profile-udp64");
    let traffic = Traffic::Udp64 { frames: 200_000 };
    let o = Options { contender: Contender::XlaneTapUplink, mtu: 1500, traffic, local: false, seconds: 4, out };
    let p = run(&o).unwrap();
    let Measured::Udp64 { median, passes } = &p.measured else { panic!("{:?}", p.measured) };
    assert!(*passes >= 1 && median.received_pps > 1000.0, "{:?}", p.measured);
    let report = std::fs::read_to_string(&p.report).unwrap();
    // perf names threads by their own names: the workers are `xlane-worker<N>`.
    assert!(report.contains("xlane-worker"), "no dataplane worker in:\n{report}");
    assert_eq!(xlane_netlab::namespaces_of("xbt", std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
}
