//! A short `bench` of xlane alone (`--quick`: numbers too brief to mean anything): its
//! report says where the generator's offered frames went, xlane's ring drops included,
//! and the places add up to the loss; nothing is left behind.

use xlane_lab::bench::Contender;
use xlane_lab::losses::Stage;
use xlane_lab::report::Report;
use xlane_netlab::privileged_with;

#[test]
fn quick_bench_reports_where_offered_frames_went() {
    if !privileged_with("quick_bench_reports_where_offered_frames_went", &["/usr/bin/iperf3"]) {
        return;
    }
    let out = std::env::temp_dir().join(format!("xlane-bench-{}", std::process::id()));
    let (pid, run) = xlane_netlab::run_and_pid(std::process::Command::new(env!("CARGO_BIN_EXE_xlane-lab")).args([
        "bench",
        "--quick",
        "--only",
        "xlane",
        "--no-io",
        "--cni-pods",
        "0",
        "--out",
        &out.to_string_lossy(),
    ]))
    .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: Report = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let x = report.results.iter().find(|r| r.contender == Contender::Xlane).unwrap();
    let ledger = x.losses.as_ref().expect("the packet-rate run's ledger");
    assert!(ledger.offered > 0);
    // The same run as the rates: delivered over offered is the delivered fraction.
    assert!((ledger.delivered as f64 / ledger.offered as f64 - x.delivered).abs() < 1e-9, "{ledger:?} {x:?}");
    // The receiving pod's interface counts delivery; a stray frame of other traffic
    // (an ARP refresh, IPv6 neighbour discovery) may be counted with the test's.
    assert!(ledger.unaccounted().abs() <= 10, "lost frames no counter explains: {}", ledger.summary());
    assert_eq!(ledger.at(Stage::Receiver), 0, "delivery is counted before the receiver's socket");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let row = format!(
        "| xlane | {} | {} | {} | {} | {} | {} | {} | {} |",
        ledger.offered,
        ledger.delivered,
        ledger.lost(),
        ledger.at(Stage::Sender),
        ledger.at(Stage::XlaneRings),
        ledger.at(Stage::XlanePipeline),
        ledger.at(Stage::Wire),
        ledger.unaccounted()
    );
    assert!(md.contains(&row), "{row}\n{md}");
    assert!(md.contains(&format!("- xlane: {}", ledger.summary())), "{md}");
    assert_eq!(xlane_netlab::namespaces_of("xbx", pid).unwrap(), Vec::<String>::new(), "torn down");
    std::fs::remove_dir_all(out).unwrap();
}
