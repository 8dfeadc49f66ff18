//! The benchmark report: the JSON a `bench` run writes (machine, date, versions, workload,
//! every contender's results), and what is made from it — a Markdown report with every
//! ratio against the goals in DESIGN.md, and SVG charts.

use crate::bench::{Contender, Forwarder, IoResult, Results, Workload};
use crate::losses::{Ledger, Stage};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the numbers were taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
}

impl Machine {
    /// This machine.
    #[must_use]
    pub fn here() -> Self {
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find(|l| l.starts_with("model name"))?.split(':').nth(1).map(|m| m.trim().to_owned())
            })
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self { kernel, cpus, cpu_model }
    }
}

/// A full benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Machine.
    pub machine: Machine,
    /// UTC date and time of the run (RFC 3339).
    pub date: String,
    /// Versions of what was measured (xlane, iperf3, …).
    pub versions: std::collections::BTreeMap<String, String>,
    /// The traffic.
    pub workload: Workload,
    /// Per contender.
    pub results: Vec<Results>,
    /// The I/O-ceiling forwarders.
    #[serde(default)]
    pub io: Vec<IoResult>,
    /// CNI ADD/DEL latency (from `cni-latency`), if measured.
    #[serde(default)]
    pub cni: Option<serde_json::Value>,
}

/// One goal of DESIGN.md and how the run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    /// What.
    pub what: &'static str,
    /// The target, as written.
    pub target: &'static str,
    /// The measured ratio or value, if the run had what it needs.
    pub measured: Option<f64>,
    /// Met or missed (None: not measured).
    pub met: Option<bool>,
}

impl Report {
    /// The offload path's ceiling beside the contenders that take it (TCP only).
    fn offload_ceiling(&self, m: &mut String) {
        let Some(c) = self.io.iter().find(|r| r.forwarder == Forwarder::XlaneOffloadRelay) else { return };
        let _ = writeln!(
            m,
            "\nOffload ceiling (`veth-offload` pods: a relay per node on xlaned's pod sockets — AF_PACKET, \
             virtio-net header, receive ring — between the pod's host veth and the uplink, or between two \
             pods' host veths; super-packets moved whole, MACs rewritten, no pipeline, no encapsulation, so no \
             segmentation and no coalescing); TCP Gbit/s, ratios to the ceiling:\n"
        );
        let _ = writeln!(
            m,
            "| path | ×1 | vs ceiling | ×4 | vs ceiling | one node | vs ceiling | MTU 9000 ×1 | vs ceiling | \
             MTU 9000 one node | vs ceiling |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let cell = |v, c| ratio_cells(v, c, 2);
        let (cj1, cjl) = (c.jumbo.map(|j| j.tcp1_gbit), c.jumbo.map(|j| j.tcp1_local_gbit));
        let row = |m: &mut String, name: &str, t1, t4, local, j1, jl| {
            let _ = writeln!(
                m,
                "| {name} | {} | {} | {} | {} | {} |",
                cell(t1, c.tcp1_gbit),
                cell(t4, c.tcp4_gbit),
                cell(local, c.tcp1_local_gbit),
                cell(j1, cj1),
                cell(jl, cjl)
            );
        };
        row(m, c.forwarder.name(), c.tcp1_gbit, c.tcp4_gbit, c.tcp1_local_gbit, cj1, cjl);
        for r in self.results.iter().filter(|r| r.contender.takes_jumbo()) {
            let (j1, jl) = (r.jumbo.map(|j| j.tcp1_gbit), r.jumbo.map(|j| j.tcp1_local_gbit));
            row(m, r.contender.name(), Some(r.tcp1_gbit), Some(r.tcp4_gbit), r.tcp1_local_gbit, j1, jl);
        }
    }

    fn get(&self, c: Contender) -> Option<&Results> {
        self.results.iter().find(|r| r.contender == c)
    }

    fn io_pps(&self, f: Forwarder) -> Option<f64> {
        self.io.iter().find(|r| r.forwarder == f).map(|r| r.forwarded_pps)
    }

    /// The goals of DESIGN.md that a bench run speaks to.
    #[must_use]
    pub fn goals(&self) -> Vec<Goal> {
        let x = self.get(Contender::Xlane);
        let best_x = self
            .results
            .iter()
            .filter(|r| matches!(r.contender, Contender::Xlane | Contender::XlaneBusyPoll))
            .max_by(|a, b| a.udp_pps.total_cmp(&b.udp_pps));
        // TCP: the better xlane attachment (veth-offload is for bulk TCP).
        let xlane = || self.results.iter().filter(|r| r.contender.is_xlane());
        let best_tcp1 = xlane().map(|r| r.tcp1_gbit).reduce(f64::max);
        let best_tcp1_local = xlane().filter_map(|r| r.tcp1_local_gbit).reduce(f64::max);
        let best_encap = self.results.iter().filter_map(|r| r.encap_pps).reduce(f64::max);
        let kv = self.get(Contender::KernelVxlan);
        let hg = self.get(Contender::HostGw);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let goal = |what, target, measured: Option<f64>, ok: fn(f64) -> bool| Goal {
            what,
            target,
            measured,
            met: measured.map(ok),
        };
        let jumbo_tcp1 = xlane().filter_map(|r| r.jumbo.map(|j| j.tcp1_gbit)).reduce(f64::max);
        let cni_add_p50_ms =
            self.cni.as_ref().and_then(|c| c["contenders"]["xlane"]["add_us"]["p50"].as_f64()).map(|us| us / 1000.0);
        vec![
            goal(
                "64-byte packets/s vs kernel VXLAN",
                "≥ 3×",
                ratio(best_x.map(|r| r.udp_pps), kv.map(|r| r.udp_pps)),
                |v| v >= 3.0,
            ),
            goal(
                "request/response p50 vs kernel VXLAN",
                "≤ 1×",
                ratio(x.map(|r| r.latency.p50_us), kv.map(|r| r.latency.p50_us)),
                |v| v <= 1.0,
            ),
            goal(
                "request/response p99 vs kernel VXLAN",
                "≤ 1×",
                ratio(x.map(|r| r.latency.p99_us), kv.map(|r| r.latency.p99_us)),
                |v| v <= 1.0,
            ),
            goal(
                "request/response p50 vs host-gw (moonshot)",
                "≤ 1×",
                ratio(x.map(|r| r.latency.p50_us), hg.map(|r| r.latency.p50_us)),
                |v| v <= 1.0,
            ),
            goal("TCP, one stream, vs kernel VXLAN", "≥ 0.5×", ratio(best_tcp1, kv.map(|r| r.tcp1_gbit)), |v| {
                v >= 0.5
            }),
            goal(
                "TCP, one stream, vs kernel VXLAN, both at MTU 9000",
                "≥ 0.8×",
                ratio(jumbo_tcp1, kv.and_then(|r| r.jumbo.map(|j| j.tcp1_gbit))),
                |v| v >= 0.8,
            ),
            goal(
                "TCP, one stream, two pods of one node, vs kernel veth + bridge",
                "≥ 1×",
                ratio(best_tcp1_local, kv.and_then(|r| r.tcp1_local_gbit)),
                |v| v >= 1.0,
            ),
            goal("CNI ADD p50 (ms)", "≤ 30 ms", cni_add_p50_ms, |v| v <= 30.0),
            goal(
                "64-byte packets/s with the uplink in its own UMEM vs the shared one (idle-sleeping workers both)",
                "≥ 0.95×",
                ratio(self.get(Contender::XlaneOwnUmem).map(|r| r.udp_pps), x.map(|r| r.udp_pps)),
                |v| v >= 0.95,
            ),
            goal(
                "64-byte packets/s across nodes vs the two-node ceiling (the same path and sockets, no pipeline)",
                "≥ 0.9×",
                ratio(best_x.map(|r| r.udp_pps), self.io_pps(Forwarder::XlaneTwoNode)),
                |v| v >= 0.9,
            ),
            goal(
                "encap forwarding vs plain MAC-swap on the same sockets",
                "≥ 0.9×",
                ratio(best_encap, self.io_pps(Forwarder::XlaneMacswap)),
                |v| v >= 0.9,
            ),
            goal(
                "encap forwarding vs DPDK testpmd (net_af_xdp, macswap)",
                "≥ 1.0×",
                ratio(best_encap, self.io_pps(Forwarder::Testpmd)),
                |v| v >= 1.0,
            ),
        ]
    }

    /// The Markdown report.
    #[must_use]
    pub fn markdown(&self, charts: &[PathBuf]) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# xlane perf-lab report\n");
        let versions: Vec<String> = self.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            m,
            "{} · Linux {} · {} CPUs ({}) · {}\n",
            self.date,
            self.machine.kernel,
            self.machine.cpus,
            self.machine.cpu_model,
            versions.join(" · ")
        );
        let w = self.workload;
        let _ = writeln!(
            m,
            "Two lab nodes in network namespaces, one pod each; every contender on the same topology with \
             the same traffic, in this one run: {} 64-byte frames from the lab's AF_XDP generator (random \
             source ports, counted at the receiving pod) × {} (median), {} UDP round trips, iperf3 {} s \
             per run.\n",
            w.udp_frames, w.repeats, w.rr_requests, w.tcp_seconds
        );
        let _ = writeln!(m, "## Results\n");
        let _ = writeln!(
            m,
            "| contender | 64 B kpps | offered kpps | delivered | RR p50 µs | RR p99 µs | RR p99.9 µs | TCP ×1 Gbit/s | TCP ×4 Gbit/s | TCP ×1 one node Gbit/s |"
        );
        let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.results {
            let local = r.tcp1_local_gbit.map_or_else(|| "—".to_owned(), |g| format!("{g:.2}"));
            let _ = writeln!(
                m,
                "| {} | {:.0} | {:.0} | {:.1}% | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {local} |",
                r.contender.name(),
                r.udp_pps / 1e3,
                r.offered_pps / 1e3,
                r.delivered * 100.0,
                r.latency.p50_us,
                r.latency.p99_us,
                r.latency.p999_us,
                r.tcp1_gbit,
                r.tcp4_gbit
            );
        }
        if self.results.iter().any(|r| r.jumbo.is_some()) {
            let _ = writeln!(
                m,
                "\nTCP on a jumbo underlay (MTU {}; pods 50 less under VXLAN; xlane's veth-xdp pods take only \
                 one-buffer frames and do not run there):\n",
                crate::bench::JUMBO_MTU
            );
            let _ = writeln!(
                m,
                "| contender | TCP ×1 Gbit/s | TCP ×4 Gbit/s | TCP ×1 one node Gbit/s |\n|---|---:|---:|---:|"
            );
            for r in &self.results {
                if let Some(j) = r.jumbo {
                    let _ = writeln!(
                        m,
                        "| {} | {:.2} | {:.2} | {:.2} |",
                        r.contender.name(),
                        j.tcp1_gbit,
                        j.tcp4_gbit,
                        j.tcp1_local_gbit
                    );
                }
            }
        }
        self.where_frames_went(&mut m);
        if !self.io.is_empty() {
            let _ = writeln!(
                m,
                "\nI/O ceiling (one node: the generator's pod sends to its node's host veth, the forwarder \
                 swaps MACs and sends each frame back; one RX and one TX per frame):\n"
            );
            let _ = writeln!(m, "| forwarder | kpps back | offered kpps |\n|---|---:|---:|");
            for r in self.io.iter().filter(|r| matches!(r.forwarder, Forwarder::XlaneMacswap | Forwarder::Testpmd)) {
                let _ = writeln!(
                    m,
                    "| {} | {:.0} | {:.0} |",
                    r.forwarder.name(),
                    r.forwarded_pps / 1e3,
                    r.offered_pps / 1e3
                );
            }
            for r in self.results.iter().filter(|r| r.encap_pps.is_some()) {
                let _ = writeln!(
                    m,
                    "| {} encap (node 0's uplink) | {:.0} | {:.0} |",
                    r.contender.name(),
                    r.encap_pps.unwrap_or_default() / 1e3,
                    r.offered_pps / 1e3
                );
            }
        }
        if let Some(ceiling) = self.io.iter().find(|r| r.forwarder == Forwarder::XlaneTwoNode) {
            let _ = writeln!(
                m,
                "\nTwo-node ceiling (node 0's pod ⇄ its host veth ⇄ node 0's uplink ⇄ fabric ⇄ node 1's uplink ⇄ \
                 the pod's host veth ⇄ the pod; a relay per node on xlaned's socket code, one UMEM each, MACs \
                 rewritten, no pipeline and no encapsulation), measured as the results above; ratios are \
                 to the ceiling (for latency, lower is better):\n"
            );
            let _ = writeln!(
                m,
                "| path | 64 B kpps | vs ceiling | RR p50 µs | vs ceiling | RR p99 µs | vs ceiling | TCP ×1 Gbit/s | vs ceiling |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let cell = ratio_cells;
            let (c_p50, c_p99) = (ceiling.latency.map(|l| l.p50_us), ceiling.latency.map(|l| l.p99_us));
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} |",
                ceiling.forwarder.name(),
                cell(Some(ceiling.forwarded_pps / 1e3), Some(ceiling.forwarded_pps / 1e3), 0),
                cell(c_p50, c_p50, 1),
                cell(c_p99, c_p99, 1),
                cell(ceiling.tcp1_gbit, ceiling.tcp1_gbit, 2)
            );
            for r in self.results.iter().filter(|r| r.contender.is_xlane()) {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} |",
                    r.contender.name(),
                    cell(Some(r.udp_pps / 1e3), Some(ceiling.forwarded_pps / 1e3), 0),
                    cell(Some(r.latency.p50_us), c_p50, 1),
                    cell(Some(r.latency.p99_us), c_p99, 1),
                    cell(Some(r.tcp1_gbit), ceiling.tcp1_gbit, 2)
                );
            }
        }
        self.offload_ceiling(&mut m);
        if let Some(c) = &self.cni {
            let _ = writeln!(m, "\nCNI (ms, {} pods each):\n", c["pods"]);
            let _ = writeln!(m, "| plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 |\n|---|---:|---:|---:|---:|");
            if let Some(cs) = c["contenders"].as_object() {
                for (name, v) in cs {
                    let ms = |k: &str, q: &str| v[k][q].as_f64().unwrap_or(f64::NAN) / 1000.0;
                    let _ = writeln!(
                        m,
                        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
                        ms("add_us", "p50"),
                        ms("add_us", "p99"),
                        ms("del_us", "p50"),
                        ms("del_us", "p99")
                    );
                }
            }
        }
        let _ = writeln!(m, "\n## Goals (DESIGN.md)\n");
        let _ = writeln!(m, "| goal | target | measured | |\n|---|---|---:|---|");
        for g in self.goals() {
            let (measured, verdict) = match (g.measured, g.met) {
                (Some(v), Some(true)) => (format!("{v:.2}"), "met"),
                (Some(v), _) => (format!("{v:.2}"), "**missed**"),
                (None, _) => ("—".into(), "not measured in this run"),
            };
            let _ = writeln!(m, "| {} | {} | {measured} | {verdict} |", g.what, g.target);
        }
        if !charts.is_empty() {
            let _ = writeln!(m, "\n## Charts\n");
            for c in charts {
                let name = c.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let _ = writeln!(m, "![{name}]({name})");
            }
        }
        m
    }

    /// The table of where each contender's offered frames went, for the runs that
    /// recorded it, and each run's ledger in words.
    fn where_frames_went(&self, m: &mut String) {
        let ledgers: Vec<(Contender, &Ledger)> =
            self.results.iter().filter_map(|r| Some((r.contender, r.losses.as_ref()?))).collect();
        if ledgers.is_empty() {
            return;
        }
        // `bench` counts delivery at the receiving pod's interface, so its socket is no
        // place of loss there: a column only if a run did count it.
        let stages: Vec<Stage> = Stage::ALL
            .into_iter()
            .filter(|s| *s != Stage::Receiver || ledgers.iter().any(|(_, l)| l.at(*s) > 0))
            .collect();
        let _ = writeln!(
            m,
            "\nWhere the offered 64-byte frames went (the median run; delivered: counted at the receiving \
             pod's interface). xlane rings: the kernel's AF_XDP statistics of xlane's sockets (RX ring full, \
             RX dropped) and xlane's own TX-ring refusals; wire: the kernel's drops sending out of a veth \
             (node uplinks, pod veths, the fabric bridge's ports); unaccounted: lost frames no counter explains \
             (negative: other traffic counted with the test's).\n"
        );
        let titles: Vec<&str> = stages.iter().map(|s| s.title()).collect();
        let _ = writeln!(m, "| contender | offered | delivered | lost | {} | unaccounted |", titles.join(" | "));
        let _ = writeln!(m, "|---|---:|---:|---:|{}---:|", "---:|".repeat(stages.len()));
        for (c, l) in &ledgers {
            let at: Vec<String> = stages.iter().map(|s| l.at(*s).to_string()).collect();
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                c.name(),
                l.offered,
                l.delivered,
                l.lost(),
                at.join(" | "),
                l.unaccounted()
            );
        }
        let _ = writeln!(m);
        for (c, l) in &ledgers {
            let _ = writeln!(m, "- {}: {}", c.name(), l.summary());
        }
    }

    /// SVG bar charts (packet rate, latency, TCP) into `dir`; their paths.
    ///
    /// # Errors
    /// Drawing or writing failures.
    pub fn charts(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let names: Vec<&str> = self.results.iter().map(|r| r.contender.name()).collect();
        let charts: [(&str, &str, Vec<f64>); 4] = [
            (
                "packet_rate.svg",
                "64-byte UDP, kpps received (higher is better)",
                self.results.iter().map(|r| r.udp_pps / 1e3).collect(),
            ),
            (
                "latency_p50.svg",
                "UDP request/response p50, µs (lower is better)",
                self.results.iter().map(|r| r.latency.p50_us).collect(),
            ),
            (
                "latency_p99.svg",
                "UDP request/response p99, µs (lower is better)",
                self.results.iter().map(|r| r.latency.p99_us).collect(),
            ),
            (
                "tcp.svg",
                "iperf3 one stream, Gbit/s (higher is better)",
                self.results.iter().map(|r| r.tcp1_gbit).collect(),
            ),
        ];
        let mut out = Vec::new();
        for (file, title, values) in charts {
            let path = dir.join(file);
            bar_chart(&path, title, &names, &values)?;
            out.push(path);
        }
        Ok(out)
    }
}

fn bar_chart(path: &Path, title: &str, names: &[&str], values: &[f64]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let top = values.iter().copied().filter(|v| v.is_finite()).fold(0.0_f64, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0..names.len()).into_segmented(), 0.0..top)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).map(|s| (*s).to_owned()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let colors = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x4a, 0x9f, 0xd8),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    for (i, v) in values.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(Histogram::vertical(&chart).style(color.filled()).margin(24).data(std::iter::once((i, *v))))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Write `report.json`, `report.md` and the charts into `dir`.
///
/// # Errors
/// Writing failures.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    let charts = report.charts(dir)?;
    let md = dir.join("report.md");
    std::fs::write(&md, report.markdown(&charts))?;
    Ok(md)
}

/// Two table cells: `v` with `digits` decimals and its ratio to the ceiling `c` (dashes
/// for what is missing).
fn ratio_cells(v: Option<f64>, c: Option<f64>, digits: usize) -> String {
    match (v, c) {
        (Some(v), Some(c)) if c > 0.0 => format!("{v:.digits$} | {:.2}", v / c),
        (Some(v), _) => format!("{v:.digits$} | —"),
        _ => "— | —".to_owned(),
    }
}
