//! Prometheus text exposition on loopback (`GET /metrics`).

use crate::worker::WorkerShared;
use arc_swap::ArcSwap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use xlane_engine::{CounterSnapshot, DropReason, OffloadError, PortCounters};
use xlane_xdp::port::KernelStats;

/// A port as the metrics endpoint labels it.
#[derive(Debug)]
pub struct MetricPort {
    /// Port id.
    pub id: u16,
    /// Role name.
    pub role: &'static str,
    /// Interface.
    pub ifname: String,
    /// One per worker.
    pub counters: Vec<Arc<PortCounters>>,
    /// The kernel's socket statistics, one per worker (AF_XDP ports only).
    pub kernel: Vec<Arc<KernelStats>>,
}

impl MetricPort {
    fn sum(&self, f: fn((u64, u64, u64)) -> u64) -> u64 {
        self.counters.iter().map(|c| f(c.get())).sum()
    }

    fn kernel(&self, f: fn(&xlane_xdp::xsk::SocketStats) -> u64) -> u64 {
        self.kernel.iter().map(|k| f(&k.get())).sum()
    }
}

/// The current port list, replaced by the control thread when ports change.
pub type MetricPorts = ArcSwap<Vec<MetricPort>>;

/// Render every metric.
#[must_use]
pub fn render(workers: &[Arc<WorkerShared>], ports: &MetricPorts) -> String {
    let mut out = String::new();
    let c = CounterSnapshot::sum(workers.iter().map(|w| w.counters.as_ref()));
    for (name, help, v) in c.named() {
        let _ = writeln!(
            out,
            "# HELP xlane_pipeline_{name}_total {help}\n# TYPE xlane_pipeline_{name}_total counter\nxlane_pipeline_{name}_total {v}"
        );
    }
    let _ = writeln!(out, "# HELP xlane_drops_total Frames dropped, by reason.\n# TYPE xlane_drops_total counter");
    for r in DropReason::ALL {
        let _ = writeln!(out, "xlane_drops_total{{reason=\"{}\"}} {}", r.name(), c.drop_count(*r));
    }
    let _ = writeln!(
        out,
        "# HELP xlane_offload_errors_total Super-packets refused, by reason (each also a super_packet drop).\n# TYPE xlane_offload_errors_total counter"
    );
    for e in OffloadError::ALL {
        let _ = writeln!(out, "xlane_offload_errors_total{{reason=\"{}\"}} {}", e.name(), c.offload[e.index()]);
    }
    let ports = ports.load();
    type Get = fn(&MetricPort) -> u64;
    let metrics: [(&str, &str, Get); 9] = [
        ("rx_frames", "Frames received on the port.", |p| p.sum(|c| c.0)),
        ("tx_frames", "Frames transmitted on the port.", |p| p.sum(|c| c.1)),
        ("tx_ring_full", "Frames dropped because the TX ring was full.", |p| p.sum(|c| c.2)),
        ("rx_fill_ring_empty", "Kernel: receive found the fill ring empty.", |p| {
            p.kernel(|k| k.rx_fill_ring_empty_descs)
        }),
        ("rx_ring_full", "Kernel: frames dropped because the RX ring was full.", |p| p.kernel(|k| k.rx_ring_full)),
        ("rx_dropped", "Kernel: frames dropped for reasons other than a full RX ring.", |p| p.kernel(|k| k.rx_dropped)),
        ("rx_invalid_descs", "Kernel: invalid RX descriptors.", |p| p.kernel(|k| k.rx_invalid_descs)),
        ("tx_invalid_descs", "Kernel: invalid TX descriptors.", |p| p.kernel(|k| k.tx_invalid_descs)),
        ("tx_ring_empty_descs", "Kernel: times the TX ring was empty when the kernel looked.", |p| {
            p.kernel(|k| k.tx_ring_empty_descs)
        }),
    ];
    for (metric, help, get) in metrics {
        let _ = writeln!(out, "# HELP xlane_port_{metric}_total {help}\n# TYPE xlane_port_{metric}_total counter");
        for p in ports.iter() {
            let v = get(p);
            let _ = writeln!(
                out,
                "xlane_port_{metric}_total{{port=\"{}\",role=\"{}\",ifname=\"{}\"}} {v}",
                p.id, p.role, p.ifname
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP xlane_burst_latency_ns Burst forwarding latency (RX to TX flush).\n# TYPE xlane_burst_latency_ns summary"
    );
    let (lat, _) = WorkerShared::merged(workers.iter().map(AsRef::as_ref));
    for q in [0.5, 0.99, 0.999] {
        let _ = writeln!(
            out,
            "xlane_burst_latency_ns{{quantile=\"{q}\"}} {}",
            if lat.is_empty() { 0 } else { lat.value_at_quantile(q) }
        );
    }
    let _ = writeln!(out, "xlane_burst_latency_ns_count {}", lat.len());
    out
}

/// Serve metrics on `addr` from a background thread; a port in use is retried for up to
/// `patience`.
///
/// # Errors
/// Bind failure.
pub fn spawn(
    addr: SocketAddr,
    workers: Vec<Arc<WorkerShared>>,
    ports: Arc<MetricPorts>,
    patience: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + patience;
    let server = loop {
        match tiny_http::Server::http(addr) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => anyhow::bail!("metrics on {addr}: {e}"),
        }
    };
    std::thread::Builder::new().name("xlane-metrics".into()).spawn(move || {
        for req in server.incoming_requests() {
            let resp = if req.url() == "/metrics" {
                let header =
                    tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4").expect("static header");
                tiny_http::Response::from_string(render(&workers, &ports)).with_header(header)
            } else {
                tiny_http::Response::from_string("try /metrics\n").with_status_code(404)
            };
            let _ = req.respond(resp);
        }
    })?;
    Ok(())
}
