//! `bench`: every contender on the same two-node topology, with the same traffic, in one
//! run — xlane (adaptive idle and busy-poll), flannel-style kernel VXLAN, and kernel
//! host-gw routing (a ceiling: no encapsulation). One pod per node; the sender's pod on
//! node 0, the receiver's on node 1.
//!
//! Workloads:
//! * 64-byte UDP packet rate over many flows: the lab's generator
//!   ([`traffic::udp_flood`], AF_XDP copy-mode TX out of the sender pod's interface,
//!   random source ports) sends a fixed count; the rate is what the receiver pod's
//!   interface counted over the generator's sending time; where the frames that did not
//!   arrive were lost ([`crate::losses`]: xlane's rings, its pipeline, the veths and the
//!   fabric) from the counters along the path before and after the run.
//! * UDP request/response latency: a client in the sender pod, an echo server in the
//!   receiver pod, one request in flight; p50/p99/p99.9 from hdrhistogram.
//! * TCP: iperf3, one stream and four, across nodes, and one stream between two pods of
//!   one node; then the same on a jumbo underlay (MTU 9000, [`JUMBO_MTU`]) for every
//!   contender that runs there.

use crate::kernel;
use crate::losses::{Ledger, Path};
use crate::{forward, traffic};
use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xlane_netlab::cluster::{Cluster, ClusterOptions, CniPod};
use xlane_netlab::{Lab, Netns};
use xlane_wire::Mac;
use xlane_xdp::attach::{ModePreference, Program, XdpAttachment};
use xlane_xdp::programs::UplinkFilter;

pub use crate::contender::Contender;

/// How much traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Frames the generator sends per packet-rate run.
    pub udp_frames: u32,
    /// Request/response round trips.
    pub rr_requests: u32,
    /// Seconds per iperf3 run.
    pub tcp_seconds: u32,
    /// Repetitions of the packet-rate run (the median is reported).
    pub repeats: u32,
    /// Also measure TCP on a jumbo underlay (absent in reports from before it was).
    #[serde(default)]
    pub jumbo: bool,
}

impl Workload {
    /// The full run.
    pub const FULL: Self = Self { udp_frames: 2_000_000, rr_requests: 20_000, tcp_seconds: 5, repeats: 3, jumbo: true };
    /// A short run (tests).
    pub const QUICK: Self = Self { udp_frames: 100_000, rr_requests: 500, tcp_seconds: 1, repeats: 1, jumbo: true };
}

/// The jumbo underlay's MTU (pods get 50 less under VXLAN).
pub const JUMBO_MTU: u16 = 9000;

/// TCP on a jumbo underlay ([`JUMBO_MTU`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JumboTcp {
    /// iperf3, one stream across nodes, Gbit/s.
    pub tcp1_gbit: f64,
    /// iperf3, four streams across nodes, Gbit/s.
    pub tcp4_gbit: f64,
    /// iperf3, one stream between two pods of the sending node, Gbit/s.
    pub tcp1_local_gbit: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

/// One contender's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Which.
    pub contender: Contender,
    /// Frames per second the receiver's interface counted (median of the repeats).
    pub udp_pps: f64,
    /// Frames per second the generator offered.
    pub offered_pps: f64,
    /// Fraction of the offered frames that arrived.
    pub delivered: f64,
    /// Request/response latency.
    pub latency: Latency,
    /// iperf3, one stream, Gbit/s.
    pub tcp1_gbit: f64,
    /// iperf3, four streams, Gbit/s.
    pub tcp4_gbit: f64,
    /// iperf3, one stream between two pods of the sending node, Gbit/s (absent in
    /// reports from before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp1_local_gbit: Option<f64>,
    /// xlane only: frames per second node 0 sent out of its uplink (encapsulated) during
    /// the packet-rate run — one RX and one TX per frame, comparable with the MAC-swap
    /// forwarders of [`IoResult`].
    #[serde(default)]
    pub encap_pps: Option<f64>,
    /// Where the median packet-rate run's offered frames went (delivery counted at the
    /// receiving pod's interface); absent in reports from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub losses: Option<Ledger>,
    /// TCP on a jumbo underlay, for a contender that runs there (absent in reports from
    /// before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jumbo: Option<JumboTcp>,
}

/// An I/O-ceiling forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarder {
    /// xlane's plain MAC-swap forward on the same socket code as xlaned.
    XlaneMacswap,
    /// DPDK testpmd, `net_af_xdp`, `--forward-mode=macswap`.
    Testpmd,
    /// xlane's path across two nodes (pod veth ⇄ node 0 ⇄ fabric ⇄ node 1 ⇄ pod veth)
    /// on the same socket code, one UMEM per node, no pipeline: MACs rewritten, frames
    /// moved by descriptor ([`forward::xlane_relay_both`]).
    XlaneTwoNode,
    /// The offload path (`veth-offload` pods, whole super-packets) across two nodes and
    /// on one, on xlaned's pod sockets, no pipeline and no encapsulation
    /// ([`crate::offload_ceiling`]).
    XlaneOffloadRelay,
}

impl Forwarder {
    /// Every one, in report order.
    pub const ALL: [Self; 4] = [Self::XlaneMacswap, Self::Testpmd, Self::XlaneTwoNode, Self::XlaneOffloadRelay];

    /// Report name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::XlaneMacswap => "xlane MAC-swap",
            Self::Testpmd => "DPDK testpmd macswap",
            Self::XlaneTwoNode => "xlane two-node relay (no pipeline)",
            Self::XlaneOffloadRelay => "xlane offload relay (veth-offload sockets, no pipeline)",
        }
    }
}

/// An I/O-ceiling result: the generator's pod sends to its node's host veth, where the
/// forwarder swaps MACs and sends each frame back, counted at the pod; or, for the
/// two-node relay, across both nodes, counted at the other node's pod.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IoResult {
    /// Which.
    pub forwarder: Forwarder,
    /// Frames per second back at the pod (median of the repeats).
    pub forwarded_pps: f64,
    /// Frames per second the generator offered.
    pub offered_pps: f64,
    /// Request/response between the pods through it (the two-node relay; absent in
    /// reports from before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// TCP, one stream, between the pods through it (the two-node relays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp1_gbit: Option<f64>,
    /// TCP, four streams (the offload relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp4_gbit: Option<f64>,
    /// TCP, one stream between two pods of one node (the offload relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp1_local_gbit: Option<f64>,
    /// The same TCP on the jumbo underlay (the offload relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jumbo: Option<JumboTcp>,
}

impl IoResult {
    /// Nothing measured yet (for struct update syntax).
    pub const NONE: Self = Self {
        forwarder: Forwarder::XlaneMacswap,
        forwarded_pps: 0.0,
        offered_pps: 0.0,
        latency: None,
        tcp1_gbit: None,
        tcp4_gbit: None,
        tcp1_local_gbit: None,
        jumbo: None,
    };
}

/// A contender's two pods, one per lab node, and what runs them.
#[derive(Debug)]
pub struct Testbed {
    // Pods before what they live on.
    cni_pods: Vec<CniPod>,
    kernel_pods: Vec<Netns>,
    /// Programs attached to the lab's uplinks (detached on drop, before the lab goes).
    _uplink_xdp: Vec<XdpAttachment>,
    cluster: Option<Cluster>,
    lab: Option<Lab>,
    receiver_ip: Ipv4Addr,
    sender_ip: Ipv4Addr,
    /// A second pod on the sender's node, and its address.
    local_ip: Ipv4Addr,
}

impl Testbed {
    fn sender(&self) -> &Netns {
        self.cni_pods.first().map_or_else(|| &self.kernel_pods[0], |p| &p.ns)
    }

    fn receiver(&self) -> &Netns {
        self.cni_pods.get(1).map_or_else(|| &self.kernel_pods[1], |p| &p.ns)
    }

    fn local(&self) -> &Netns {
        self.cni_pods.get(2).map_or_else(|| &self.kernel_pods[2], |p| &p.ns)
    }

    fn lab(&self) -> &Lab {
        self.cluster.as_ref().map_or_else(|| self.lab.as_ref().expect("a kernel testbed has its lab"), |c| &c.lab)
    }

    /// Build `c`'s two nodes with a pod each and check that the pods reach each other
    /// (the ping also resolves the sender's gateway, which the generator addresses).
    ///
    /// # Errors
    /// Setup failures, pods that do not reach each other.
    pub fn setup(c: Contender) -> anyhow::Result<Self> {
        Self::setup_mtu(c, xlane_netlab::topology::UPLINK_MTU)
    }

    /// [`Testbed::setup`] on an underlay of MTU `mtu`.
    ///
    /// # Errors
    /// As [`Testbed::setup`].
    pub fn setup_mtu(c: Contender, mtu: u16) -> anyhow::Result<Self> {
        let tb = build(c, mtu)?;
        let ping = traffic::ping(tb.sender(), tb.receiver_ip, 3)?;
        anyhow::ensure!(ping.received == ping.sent, "{}: pods cannot reach each other ({ping:?})", c.name());
        if mtu != xlane_netlab::topology::UPLINK_MTU {
            // Packets of the pods' full MTU cross unfragmented (DF): the run measures
            // the jumbo path, not a fallback.
            let pod_mtu = tb.sender().mtu("eth0")?;
            if let Err(e) = tb.sender().ping_unfragmented(&tb.receiver_ip.to_string(), pod_mtu - 28, 2) {
                anyhow::bail!("{}: {pod_mtu}-byte packets do not cross the MTU {mtu} underlay: {e}", c.name());
            }
        }
        Ok(tb)
    }

    /// iperf3 from the sending pod, `streams` streams for `seconds`, to the pod on the
    /// other node or (`local`) to the second pod of the sender's node.
    ///
    /// # Errors
    /// iperf3 missing, never connecting, or reporting no result.
    pub fn tcp(&self, streams: u32, seconds: u32, local: bool) -> anyhow::Result<Iperf3> {
        let (server, ip) = if local { (self.local(), self.local_ip) } else { (self.receiver(), self.receiver_ip) };
        iperf3(self.sender(), server, ip, streams, seconds)
    }

    /// The sending pod's interface MTU.
    ///
    /// # Errors
    /// The interface cannot be read.
    pub fn sender_mtu(&self) -> anyhow::Result<u32> {
        Ok(self.sender().mtu("eth0")?)
    }

    /// The 64-byte packet-rate run, `repeats` times with `frames` each: the median run
    /// by received rate.
    ///
    /// # Errors
    /// Generator or counter failures, `stop`.
    pub fn packet_rate(&self, frames: u32, repeats: u32, stop: &AtomicBool) -> anyhow::Result<RateRun> {
        let mut rates = Vec::new();
        for _ in 0..repeats.max(1) {
            rates.push(udp_rate(self, frames)?);
            anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        }
        rates.sort_by(|a, b| a.received_pps.total_cmp(&b.received_pps));
        Ok(rates.swap_remove(rates.len() / 2))
    }
}

fn build(c: Contender, mtu: u16) -> anyhow::Result<Testbed> {
    let prefix = match c {
        Contender::Xlane => "xbx",
        Contender::XlaneBusyPoll => "xbb",
        Contender::XlaneOwnUmem => "xbu",
        Contender::XlaneOffload => "xbo",
        Contender::XlaneUdpUplink => "xbr",
        Contender::XlaneTapUplink => "xbt",
        Contender::KernelVxlan => "xbv",
        Contender::KernelVxlanXdp => "xbw",
        Contender::HostGw => "xbh",
    };
    match c {
        c if c.is_xlane() => {
            // The uplink's receive named explicitly too (xlaned's default on veth is
            // packet taps): the contenders before the UDP and tap uplinks keep the
            // AF_XDP uplink they were built on.
            let uplink_rx = match c {
                Contender::XlaneUdpUplink => "udp",
                Contender::XlaneTapUplink => "packet",
                _ => "xdp",
            };
            let mut xlaned_args: Vec<String> = vec!["--uplink-rx".into(), uplink_rx.into()];
            match c {
                Contender::XlaneBusyPoll => xlaned_args.push("--busy-poll".into()),
                Contender::XlaneOwnUmem => xlaned_args.extend(["--uplink-umem".into(), "own".into()]),
                _ => {}
            }
            // Named explicitly: the CNI default may change, the contenders must not.
            let offload = matches!(c, Contender::XlaneOffload | Contender::XlaneUdpUplink | Contender::XlaneTapUplink);
            let attach = Some(if offload { "veth-offload" } else { "veth-xdp" }.to_owned());
            let opts = ClusterOptions { xlaned_args, attach, mtu: Some(mtu), ..ClusterOptions::default() };
            let cluster = Cluster::start(prefix, 2, &opts)?;
            let pods =
                vec![cluster.attach_pod(0, "snd")?, cluster.attach_pod(1, "rcv")?, cluster.attach_pod(0, "loc")?];
            let (sender_ip, receiver_ip, local_ip) = (pods[0].ip, pods[1].ip, pods[2].ip);
            Ok(Testbed {
                cni_pods: pods,
                kernel_pods: vec![],
                _uplink_xdp: vec![],
                cluster: Some(cluster),
                lab: None,
                receiver_ip,
                sender_ip,
                local_ip,
            })
        }
        _ => {
            let lab = Lab::with_mtu(prefix, 2, 1, mtu)?;
            let baseline = if c == Contender::HostGw { kernel::Baseline::HostGw } else { kernel::Baseline::Vxlan };
            let mut pods: Vec<Netns> = kernel::two_pods(&lab, baseline)?.into();
            // The one-node baseline: a second pod on node 0's bridge (veth + bridge).
            pods.push(kernel::bridge_pod(&lab.nodes[0], lab.nodes[0].subnet, 1, kernel::pod_mtu(baseline, mtu))?);
            let (sender_ip, receiver_ip) = (lab.nodes[0].subnet.pod(0), lab.nodes[1].subnet.pod(0));
            let local_ip = lab.nodes[0].subnet.pod(1);
            let uplink_xdp = if c == Contender::KernelVxlanXdp {
                lab.nodes.iter().map(uplink_program).collect::<anyhow::Result<_>>()?
            } else {
                vec![]
            };
            Ok(Testbed {
                cni_pods: vec![],
                kernel_pods: pods,
                _uplink_xdp: uplink_xdp,
                cluster: None,
                lab: Some(lab),
                receiver_ip,
                sender_ip,
                local_ip,
            })
        }
    }
}

/// xlane's uplink program on `node`'s uplink, as xlaned attaches it (multi-buffer, VXLAN
/// to the node's address), with no socket: every frame goes on to the kernel.
fn uplink_program(node: &xlane_netlab::topology::Node) -> anyhow::Result<XdpAttachment> {
    let ifindex = node.ns.ifindex(&node.uplink)?;
    let filter = UplinkFilter { vtep_ip: node.ip, vxlan_port: xlane_wire::VXLAN_PORT_LINUX };
    let program = Program::Uplink(filter);
    let attached =
        node.ns.enter(|| XdpAttachment::attach(ifindex, "xlane_uplink", 1, program, ModePreference::Auto))?;
    attached.with_context(|| format!("XDP on {}'s {}", node.ns.name(), node.uplink))
}

/// Measure `contenders` with `w`, reporting progress on stderr.
///
/// # Errors
/// Setup failures, a contender that does not pass traffic, `stop`.
pub fn run(contenders: &[Contender], w: Workload, stop: &AtomicBool) -> anyhow::Result<Vec<Results>> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, XDP)");
    let mut out = Vec::new();
    for (k, &c) in contenders.iter().enumerate() {
        eprintln!("[{}/{}] {}: setting up", k + 1, contenders.len(), c.name());
        let tb = Testbed::setup(c)?;
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        eprintln!("      64-byte UDP rate, {} frames × {}", w.udp_frames, w.repeats);
        let median = tb.packet_rate(w.udp_frames, w.repeats, stop)?;
        let (udp_pps, offered_pps) = (median.received_pps, median.offered_pps);
        eprintln!("      {:.0} kpps received of {:.0} kpps offered", udp_pps / 1e3, offered_pps / 1e3);
        eprintln!("      {}", median.ledger.summary());
        eprintln!("      UDP request/response, {} round trips", w.rr_requests);
        let latency = request_response(tb.sender(), tb.receiver(), tb.receiver_ip, w.rr_requests, stop)?;
        eprintln!("      p50 {:.1} µs, p99 {:.1} µs", latency.p50_us, latency.p99_us);
        eprintln!("      iperf3, 1 and 4 streams, {} s each", w.tcp_seconds);
        let tcp1_gbit = tb.tcp(1, w.tcp_seconds, false)?.gbit;
        let tcp4_gbit = tb.tcp(4, w.tcp_seconds, false)?.gbit;
        eprintln!("      {tcp1_gbit:.2} / {tcp4_gbit:.2} Gbit/s");
        let tcp1_local = tb.tcp(1, w.tcp_seconds, true)?.gbit;
        eprintln!("      iperf3 between two pods of node 0: {tcp1_local:.2} Gbit/s");
        drop(tb);
        let jumbo = if w.jumbo && c.takes_jumbo() {
            anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
            eprintln!("      jumbo underlay (MTU {JUMBO_MTU}): iperf3, 1 and 4 streams, one node");
            let tb = Testbed::setup_mtu(c, JUMBO_MTU)?;
            let j = JumboTcp {
                tcp1_gbit: tb.tcp(1, w.tcp_seconds, false)?.gbit,
                tcp4_gbit: tb.tcp(4, w.tcp_seconds, false)?.gbit,
                tcp1_local_gbit: tb.tcp(1, w.tcp_seconds, true)?.gbit,
            };
            eprintln!("      {:.2} / {:.2} Gbit/s, one node {:.2}", j.tcp1_gbit, j.tcp4_gbit, j.tcp1_local_gbit);
            Some(j)
        } else {
            None
        };
        out.push(Results {
            contender: c,
            udp_pps,
            offered_pps,
            delivered: udp_pps / offered_pps,
            latency,
            tcp1_gbit,
            tcp4_gbit,
            tcp1_local_gbit: Some(tcp1_local),
            encap_pps: median.encap_pps,
            losses: Some(median.ledger),
            jumbo,
        });
    }
    Ok(out)
}

fn rx_packets(ns: &Netns, dev: &str) -> anyhow::Result<u64> {
    let links = crate::losses::link_counters(ns)?;
    Ok(links.get(dev).with_context(|| format!("no {dev} in {}", ns.name()))?.rx_packets)
}

/// One packet-rate run: the lab's generator in the sender pod, counted at the receiving
/// pod's interface.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRun {
    /// Frames per second the receiving pod's interface counted.
    pub received_pps: f64,
    /// Frames per second the generator offered.
    pub offered_pps: f64,
    /// xlane: frames per second node 0 sent out of its uplink.
    pub encap_pps: Option<f64>,
    /// Where the offered frames went.
    pub ledger: Ledger,
}

fn udp_rate(tb: &Testbed, frames: u32) -> anyhow::Result<RateRun> {
    let (snd, rcv) = (tb.sender(), tb.receiver());
    // The sender's gateway MAC, as the pod resolved it (the ping of `Testbed::setup`).
    let route = snd.ip(&["-4", "route", "show", "default"])?;
    let gw =
        route.split_whitespace().skip_while(|w| *w != "via").nth(1).context("the sender pod has no default route")?;
    let neigh = snd.ip(&["-4", "neigh", "show", gw, "dev", "eth0"])?;
    let gw_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .with_context(|| format!("the sender pod has no neighbour entry for its gateway {gw}"))?;
    let frame = traffic::udp_template(gw_mac.parse()?, snd.mac("eth0")?.parse()?, tb.sender_ip, tb.receiver_ip, 5300);
    // A bound socket keeps the receiver from answering with port-unreachables.
    let _sink = rcv.enter(|| UdpSocket::bind(SocketAddrV4::new(tb.receiver_ip, 5300)))??;
    // Delivery is counted at the receiving pod's interface (the sink never reads), so
    // the receiver's socket is no place of loss here.
    let path = Path { lab: tb.lab(), xlane: tb.cluster.as_ref(), sender: snd, receiving_app: None };
    let counters_before = path.snapshot()?;
    let before = rx_packets(rcv, "eth0")?;
    // Node 0's uplink as the fabric sees it.
    let uplink = tb.cluster.as_ref().map(|c| (&c.lab.fabric, "n0"));
    let uplink_before = uplink.map(|(ns, dev)| rx_packets(ns, dev)).transpose()?;
    let flood = snd.enter(|| traffic::udp_flood("eth0", &frame, u64::from(frames), Duration::from_secs(20)))??;
    // Let the last frames drain through both nodes.
    std::thread::sleep(Duration::from_millis(300));
    let got = rx_packets(rcv, "eth0")? - before;
    let encap = match (uplink, uplink_before) {
        (Some((ns, dev)), Some(b)) => Some((rx_packets(ns, dev)? - b) as f64 / flood.seconds),
        _ => None,
    };
    let ledger = Ledger::from_snapshots(flood.sent, got, 0, &counters_before, &path.snapshot()?);
    Ok(RateRun {
        received_pps: got as f64 / flood.seconds,
        offered_pps: flood.sent as f64 / flood.seconds,
        encap_pps: encap,
        ledger,
    })
}

/// Sequential UDP echoes from `client` to `server_ip:5400` in `server`.
fn request_response(
    client: &Netns,
    server: &Netns,
    server_ip: Ipv4Addr,
    requests: u32,
    stop: &AtomicBool,
) -> anyhow::Result<Latency> {
    let echo = traffic::UdpEcho::start(server, server_ip, 5400, Duration::from_millis(200))?;
    let cli = client.enter(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))??;
    cli.connect(SocketAddrV4::new(server_ip, 5400))?;
    cli.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    for i in 0..requests {
        if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        let req = i.to_le_bytes();
        let t = Instant::now();
        cli.send(&req)?;
        // A lost request or reply is retried by the next one; it is not a latency.
        if let Ok(n) = cli.recv(&mut buf)
            && buf[..n] == req
        {
            h.record(u64::try_from(t.elapsed().as_nanos() / 1000)?.max(1))?;
        }
    }
    drop(echo);
    anyhow::ensure!(h.len() > u64::from(requests) / 2, "only {} of {requests} round trips completed", h.len());
    let q = |p| h.value_at_quantile(p) as f64;
    Ok(Latency { p50_us: q(0.5), p99_us: q(0.99), p999_us: q(0.999) })
}

/// What one iperf3 run moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf3 {
    /// Received, Gbit/s.
    pub gbit: f64,
    /// Segments the sender retransmitted.
    pub retransmits: u64,
}

/// iperf3 from `client` to a server in `server` on `server_ip`, `streams` streams for
/// `seconds`: iperf3 missing, never connecting, or reporting no result is an error.
pub(crate) fn iperf3(
    client: &Netns,
    server: &Netns,
    server_ip: Ipv4Addr,
    streams: u32,
    seconds: u32,
) -> anyhow::Result<Iperf3> {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-1", "-B", &server_ip.to_string(), "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running iperf3 (apt-get install iperf3)")?;
    let out = (|| -> anyhow::Result<std::process::Output> {
        // The server needs a moment to listen.
        for _ in 0..50 {
            let o = client
                .command("iperf3")
                .args(["-c", &server_ip.to_string(), "-p", "5201", "-J"])
                .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
                .output()?;
            // iperf3 -J exits 0 even when it could not connect; the JSON says so.
            let refused = serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(|e| e.contains("unable to connect")))
                .unwrap_or(false);
            if o.status.success() && !refused {
                return Ok(o);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("iperf3 client never connected")
    })();
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out?.stdout)?;
    let gbit = v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).with_context(|| {
        format!("iperf3 with {streams} streams: {}", v.get("error").map_or("no result", |e| e.as_str().unwrap_or("?")))
    })?;
    Ok(Iperf3 { gbit, retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0) })
}

/// Run the bench and assemble the report (machine, date, versions, results, CNI).
///
/// # Errors
/// As [`run`] and [`crate::cni_latency::run`].
pub fn report(
    contenders: &[Contender],
    forwarders: &[Forwarder],
    w: Workload,
    cni_pods: usize,
    stop: &AtomicBool,
) -> anyhow::Result<crate::report::Report> {
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let results = run(contenders, w, stop)?;
    let mut io = Vec::new();
    for (k, f) in forwarders.iter().enumerate() {
        let path = match f {
            Forwarder::XlaneTwoNode => "node 0's pod → uplink → fabric → node 1's uplink → its pod",
            Forwarder::XlaneOffloadRelay => "TCP, pod → uplink → fabric → uplink → pod, and pod → pod on one node",
            Forwarder::XlaneMacswap | Forwarder::Testpmd => "generator pod → its node's host veth → MAC swap → back",
        };
        eprintln!("[io {}/{}] {}: {path}", k + 1, forwarders.len(), f.name());
        let r = io_ceiling(*f, w, stop)?;
        if r.offered_pps > 0.0 {
            eprintln!("      {:.0} kpps forwarded of {:.0} kpps offered", r.forwarded_pps / 1e3, r.offered_pps / 1e3);
        }
        io.push(r);
    }
    let cni = if cni_pods > 0 {
        eprintln!("CNI ADD/DEL latency, {cni_pods} pods: xlane and bridge + host-local");
        Some(crate::cni_latency::run(cni_pods)?)
    } else {
        None
    };
    let mut versions = std::collections::BTreeMap::new();
    versions.insert("xlane".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    if let Ok(o) = std::process::Command::new("iperf3").arg("--version").output() {
        let v = String::from_utf8_lossy(&o.stdout);
        versions.insert("iperf3".to_owned(), v.split_whitespace().nth(1).unwrap_or("?").to_owned());
    }
    if !forwarders.is_empty()
        && let Ok(o) = std::process::Command::new("dpdk-testpmd").arg("--version").output()
    {
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        if let Some(v) = text.split_whitespace().skip_while(|w| *w != "DPDK").nth(1) {
            versions.insert("DPDK".to_owned(), v.to_owned());
        }
    }
    Ok(crate::report::Report { machine: crate::report::Machine::here(), date, versions, workload: w, results, io, cni })
}

/// Measure an I/O-ceiling forwarder: median of `w.repeats` runs of `w.udp_frames`.
///
/// # Errors
/// Setup failures, `stop`.
pub fn io_ceiling(f: Forwarder, w: Workload, stop: &AtomicBool) -> anyhow::Result<IoResult> {
    match f {
        Forwarder::XlaneTwoNode => return two_node_ceiling(w, stop),
        Forwarder::XlaneOffloadRelay => return crate::offload_ceiling::measure(w, stop),
        Forwarder::XlaneMacswap | Forwarder::Testpmd => {}
    }
    let mut lab = Lab::new(if f == Forwarder::Testpmd { "xbt" } else { "xbm" }, 1)?;
    let k = lab.add_pod(0)?;
    let (node, pod) = (&lab.nodes[0], &lab.pods[k]);
    let frame = traffic::udp_template(
        node.ns.mac(&pod.host_if)?.parse()?,
        pod.mac.parse()?,
        pod.ip,
        Ipv4Addr::new(10, 244, 2, 2),
        5300,
    );
    let fwd_stop = AtomicBool::new(false);
    std::thread::scope(|sc| -> anyhow::Result<IoResult> {
        let _testpmd;
        let xlane = if f == Forwarder::XlaneMacswap {
            Some(sc.spawn(|| forward::xlane_macswap(&node.ns, &pod.host_if, &fwd_stop)))
        } else {
            _testpmd = forward::testpmd_macswap(&node.ns, &pod.host_if)?;
            None
        };
        std::thread::sleep(Duration::from_millis(500));
        let result = flood_runs(w, stop, &pod.ns, &frame, &pod.ns);
        fwd_stop.store(true, Ordering::Relaxed);
        if let Some(h) = xlane {
            h.join().map_err(|_| anyhow::anyhow!("the forwarder panicked"))??;
        }
        let (forwarded_pps, offered_pps) = result?;
        anyhow::ensure!(forwarded_pps > 0.0, "{}: nothing came back", f.name());
        Ok(IoResult { forwarder: f, forwarded_pps, offered_pps, ..IoResult::NONE })
    })
}

/// The two-node ceiling: a pod per node, a relay on each node on xlaned's path, both
/// ways; the generator in node 0's pod floods node 1's pod, counted at its interface;
/// then request/response and one TCP stream between the pods.
fn two_node_ceiling(w: Workload, stop: &AtomicBool) -> anyhow::Result<IoResult> {
    let mut lab = Lab::new("xbr", 2)?;
    let (a, b) = (lab.add_pod(0)?, lab.add_pod(1)?);
    let (n0, n1, pa, pb) = (&lab.nodes[0], &lab.nodes[1], &lab.pods[a], &lab.pods[b]);
    let mac = |ns: &Netns, dev: &str| -> anyhow::Result<Mac> { Ok(ns.mac(dev)?.parse()?) };
    let (up0, up1) = (mac(&n0.ns, "eth0")?, mac(&n1.ns, "eth0")?);
    for (pod, node) in [(pa, n0), (pb, n1)] {
        forward::pin_neighbour(&pod.ns, node.gateway(), &node.ns.mac(&pod.host_if)?)?;
    }
    let legs = [
        (&n0.ns, &pa.host_if, (up1, up0), (pa.mac.parse()?, mac(&n0.ns, &pa.host_if)?)),
        (&n1.ns, &pb.host_if, (up0, up1), (pb.mac.parse()?, mac(&n1.ns, &pb.host_if)?)),
    ];
    let frame = traffic::udp_template(mac(&n0.ns, &pa.host_if)?, pa.mac.parse()?, pa.ip, pb.ip, 5300);
    // A bound socket keeps the receiver from answering with port-unreachables.
    let _sink = pb.ns.enter(|| UdpSocket::bind(SocketAddrV4::new(pb.ip, 5300)))??;
    let relay = |&(ns, pod_if, to_uplink, to_pod): &(&Netns, &String, (Mac, Mac), (Mac, Mac)), s: &AtomicBool| {
        forward::xlane_relay_both(ns, pod_if, "eth0", to_uplink, to_pod, s)
    };
    let (forwarded_pps, offered_pps, latency, tcp1) = forward::while_relaying(&legs, relay, stop, || {
        let (forwarded_pps, offered_pps) = flood_runs(w, stop, &pa.ns, &frame, &pb.ns)?;
        eprintln!("      {:.0} kpps; UDP request/response, {} round trips", forwarded_pps / 1e3, w.rr_requests);
        let latency = request_response(&pa.ns, &pb.ns, pb.ip, w.rr_requests, stop)?;
        eprintln!(
            "      p50 {:.1} µs, p99 {:.1} µs; iperf3, 1 stream, {} s",
            latency.p50_us, latency.p99_us, w.tcp_seconds
        );
        let tcp1 = iperf3(&pa.ns, &pb.ns, pb.ip, 1, w.tcp_seconds)?.gbit;
        eprintln!("      {tcp1:.2} Gbit/s");
        Ok((forwarded_pps, offered_pps, latency, tcp1))
    })?;
    anyhow::ensure!(forwarded_pps > 0.0, "the two-node relay: nothing arrived");
    Ok(IoResult {
        forwarder: Forwarder::XlaneTwoNode,
        forwarded_pps,
        offered_pps,
        latency: Some(latency),
        tcp1_gbit: Some(tcp1),
        ..IoResult::NONE
    })
}

/// `w.repeats` floods of `w.udp_frames` copies of `frame` from `sender`'s eth0, counted
/// at `receiver`'s eth0: the median run's (received, offered) frames per second.
fn flood_runs(
    w: Workload,
    stop: &AtomicBool,
    sender: &Netns,
    frame: &[u8],
    receiver: &Netns,
) -> anyhow::Result<(f64, f64)> {
    let mut runs = Vec::new();
    for _ in 0..w.repeats.max(1) {
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        let before = rx_packets(receiver, "eth0")?;
        let flood =
            sender.enter(|| traffic::udp_flood("eth0", frame, u64::from(w.udp_frames), Duration::from_secs(20)))??;
        std::thread::sleep(Duration::from_millis(200));
        let got = rx_packets(receiver, "eth0")? - before;
        runs.push((got as f64 / flood.seconds, flood.sent as f64 / flood.seconds));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs[runs.len() / 2])
}
