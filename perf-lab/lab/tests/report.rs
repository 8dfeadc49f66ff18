//! The report generator on a recorded run (`fixtures/report.json`, a full `bench` on this
//! machine): every contender in the table, every goal with its ratio and verdict, and
//! charts a browser can show; and where the offered frames went, once a run records it
//! (the recorded run predates that: it stays as the check that old reports still load).

use xlane_lab::bench::{Contender, Forwarder};
use xlane_lab::losses::{Ledger, Loss, Stage};
use xlane_lab::report::Report;

fn recorded() -> Report {
    serde_json::from_str(include_str!("fixtures/report.json")).unwrap()
}

#[test]
fn markdown_has_every_result_and_goal() {
    let r = recorded();
    let dir = std::env::temp_dir().join(format!("xlane-report-{}", std::process::id()));
    let md_path = xlane_lab::report::write(&r, &dir).unwrap();
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(md.contains(&r.date) && md.contains(&r.machine.kernel), "machine and date");
    for c in r.results.iter().map(|x| x.contender) {
        assert!(md.contains(&format!("| {} |", c.name())), "a row for {}", c.name());
    }
    // The packet-rate goal: the better xlane mode against kernel VXLAN.
    let pps = |c| r.results.iter().find(|x| x.contender == c).unwrap().udp_pps;
    let ratio = pps(Contender::Xlane).max(pps(Contender::XlaneBusyPoll)) / pps(Contender::KernelVxlan);
    let verdict = if ratio >= 3.0 { "met" } else { "**missed**" };
    let row = format!("| 64-byte packets/s vs kernel VXLAN | ≥ 3× | {ratio:.2} | {verdict} |");
    assert!(md.contains(&row), "{row}\n{md}");
    // The I/O ceiling: both forwarders in their table, and the encap goals computed
    // from node 0's uplink count against them.
    let encap = r.results.iter().filter_map(|x| x.encap_pps).fold(0.0, f64::max);
    for io in &r.io {
        let f = io.forwarder;
        assert!(md.contains(&format!("| {} | {:.0} |", f.name(), io.forwarded_pps / 1e3)), "{}", f.name());
    }
    let testpmd = r.io.iter().find(|x| x.forwarder == Forwarder::Testpmd).unwrap().forwarded_pps;
    let ratio = encap / testpmd;
    let verdict = if ratio >= 1.0 { "met" } else { "**missed**" };
    let row = format!("| encap forwarding vs DPDK testpmd (net_af_xdp, macswap) | ≥ 1.0× | {ratio:.2} | {verdict} |");
    assert!(md.contains(&row), "{row}");
    // A run without a contender says so instead of inventing a ratio.
    let mut partial = r.clone();
    partial.io.clear();
    assert!(partial.markdown(&[]).contains(
        "| encap forwarding vs DPDK testpmd (net_af_xdp, macswap) | ≥ 1.0× | — | not measured in this run |"
    ));
    assert!(md.contains("| xlane | ") && md.contains("| bridge+host-local | "), "the CNI table");
    // The one-node TCP goal: the recorded run predates it.
    assert!(md.contains(
        "| TCP, one stream, two pods of one node, vs kernel veth + bridge | ≥ 1× | — | not measured in this run |"
    ));
    for chart in ["packet_rate.svg", "latency_p50.svg", "latency_p99.svg", "tcp.svg"] {
        assert!(md.contains(&format!("![{chart}]({chart})")));
        let svg = std::fs::read_to_string(dir.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{chart} is SVG");
        for c in r.results.iter().map(|x| x.contender) {
            assert!(svg.contains(c.name()), "{chart} labels {}", c.name());
        }
    }
    // The JSON round-trips unchanged.
    let again: Report = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(again, r);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn where_the_offered_frames_went() {
    let mut r = recorded();
    assert!(r.results.iter().all(|x| x.losses.is_none()), "the recorded run predates ledgers");
    assert!(!r.markdown(&[]).contains("Where the offered"), "no ledger, no table");
    let loss = |stage, place: &str, frames| Loss { stage, place: place.into(), frames };
    let mut ledger = |c, l| r.results.iter_mut().find(|x| x.contender == c).unwrap().losses = Some(l);
    // What a run records: xlane's sockets lost most of what the generator offered.
    ledger(
        Contender::Xlane,
        Ledger {
            offered: 100_000,
            delivered: 25_000,
            losses: vec![
                loss(Stage::XlaneRings, "xlane RX ring full on node 1 eth0 (uplink)", 70_000),
                loss(Stage::XlanePipeline, "xlane pipeline on node 0: no_route", 3),
                loss(Stage::Wire, "kernel dropped sending out of fabric n1", 4_000),
            ],
        },
    );
    ledger(
        Contender::KernelVxlan,
        Ledger {
            offered: 100_000,
            delivered: 60_000,
            losses: vec![loss(Stage::Wire, "kernel dropped sending out of node 1 veth0", 40_000)],
        },
    );
    let md = r.markdown(&[]);
    let header =
        "| contender | offered | delivered | lost | sender | xlane rings | xlane pipeline | wire | unaccounted |";
    assert!(md.contains(header), "{md}");
    assert!(md.contains("| xlane | 100000 | 25000 | 75000 | 0 | 70000 | 3 | 4000 | 997 |"), "{md}");
    assert!(md.contains("| kernel VXLAN | 100000 | 60000 | 40000 | 0 | 0 | 0 | 40000 | 0 |"), "{md}");
    assert!(md.contains(
        "- xlane: lost 75000 of 100000: 70000 xlane RX ring full on node 1 eth0 (uplink), 4000 kernel dropped \
         sending out of fabric n1, 3 xlane pipeline on node 0: no_route, unaccounted 997"
    ));
    // Contenders without a ledger have no row.
    assert!(!md.contains("| kernel host-gw | 100000"));
    let again: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(again, r);
}

/// The two-node ceiling's table: every xlane contender against the relay on rate,
/// latency and TCP, as ratios a reader checks by hand.
#[test]
fn the_two_node_ceiling_table_compares_every_xlane_mode() {
    let mut r = recorded();
    r.io.retain(|x| x.forwarder != Forwarder::XlaneTwoNode);
    r.io.push(xlane_lab::bench::IoResult {
        forwarder: Forwarder::XlaneTwoNode,
        forwarded_pps: 400_000.0,
        offered_pps: 500_000.0,
        latency: Some(xlane_lab::bench::Latency { p50_us: 20.0, p99_us: 50.0, p999_us: 90.0 }),
        tcp1_gbit: Some(4.0),
        ..xlane_lab::bench::IoResult::NONE
    });
    let x = r.results.iter().find(|x| x.contender == Contender::Xlane).unwrap().clone();
    let md = r.markdown(&[]);
    let row = format!(
        "| xlane | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} |",
        x.udp_pps / 1e3,
        x.udp_pps / 400_000.0,
        x.latency.p50_us,
        x.latency.p50_us / 20.0,
        x.latency.p99_us,
        x.latency.p99_us / 50.0,
        x.tcp1_gbit,
        x.tcp1_gbit / 4.0
    );
    assert!(md.contains(&row), "{row}\n{md}");
    assert!(
        md.contains("| xlane two-node relay (no pipeline) | 400 | 1.00 | 20.0 | 1.00 | 50.0 | 1.00 | 4.00 | 1.00 |"),
        "{md}"
    );
}

/// The offload ceiling's table: the relay's TCP and each contender that runs on a jumbo
/// underlay beside it, ratios to the relay (a contender without a jumbo run shows
/// dashes there).
#[test]
fn the_offload_ceiling_table_compares_tcp_to_the_relay() {
    let mut r = recorded();
    r.io.push(xlane_lab::bench::IoResult {
        forwarder: Forwarder::XlaneOffloadRelay,
        tcp1_gbit: Some(8.0),
        tcp4_gbit: Some(10.0),
        tcp1_local_gbit: Some(12.0),
        jumbo: Some(xlane_lab::bench::JumboTcp { tcp1_gbit: 9.0, tcp4_gbit: 11.0, tcp1_local_gbit: 13.0 }),
        ..xlane_lab::bench::IoResult::NONE
    });
    let md = r.markdown(&[]);
    assert!(
        md.contains(
            "| xlane offload relay (veth-offload sockets, no pipeline) | 8.00 | 1.00 | 10.00 | 1.00 | 12.00 | 1.00 \
             | 9.00 | 1.00 | 13.00 | 1.00 |"
        ),
        "{md}"
    );
    let k = r.results.iter().find(|x| x.contender == Contender::KernelVxlan).unwrap().clone();
    let row = format!("| kernel VXLAN | {:.2} | {:.2} |", k.tcp1_gbit, k.tcp1_gbit / 8.0);
    assert!(md.contains(&row), "{row}\n{md}");
    // `veth-xdp` xlane takes no offloads: no row in this table.
    let table = md.split("Offload ceiling").nth(1).and_then(|t| t.split("\n\n").nth(1)).unwrap();
    assert!(table.contains("| kernel VXLAN |") && !table.contains("\n| xlane |"), "{table}");
    let again: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(again, r);
}
