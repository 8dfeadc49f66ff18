//! The control state and real workers on a fake node (in-memory ports): attach and
//! detach under traffic, route swaps, failing and exited workers, and a control loop
//! that keeps answering while a port attaches.

use crate::fake::{FakeHost, Wire};
use crate::state::{ControlConfig, Handled, State, Ticket};
use crate::worker::{self, WorkerConfig};
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xlane_api::{
    CaptureSpec, Change, EndpointSpec, ErrorCode, Mac, Op, Reply, Table, TraceHop, TraceSpec, VethIo, Vtep,
};
use xlane_engine::DropReason;
use xlane_engine::fixtures;
use xlane_engine::mem::MemFrames;
use xlane_fib::FibHandle;

const VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);

struct Rig {
    state: State<FakeHost>,
    host: FakeHost,
    woken: Receiver<()>,
    joins: Vec<std::thread::JoinHandle<()>>,
    /// Replies that fell due while waiting for another.
    due: HashMap<Ticket, Reply>,
    /// This rig's runtime directory (capture sockets): one per rig, as tests run in
    /// parallel in one process and would otherwise share socket paths.
    runtime_dir: std::path::PathBuf,
}

impl Rig {
    /// A node with `workers` workers, its uplink `up0` (one queue per worker) and the
    /// VTEP set.
    fn new(workers: usize) -> Self {
        Self::with_uplink_mtu(workers, None)
    }

    /// [`Rig::new`] with the uplink at `mtu` (and, if given, xlaned taking jumbo frames
    /// on it, as copy-mode sockets with UDP GSO do).
    fn with_uplink_mtu(workers: usize, mtu: Option<u32>) -> Self {
        let host = FakeHost::default();
        host.add_link("up0", 1, u32::try_from(workers).unwrap());
        if let Some(mtu) = mtu {
            host.0.lock().unwrap().links.get_mut("up0").unwrap().0.mtu = mtu;
        }
        let fib = FibHandle::new();
        let mut handles = Vec::new();
        let mut joins = Vec::new();
        for i in 0..workers {
            let cfg = WorkerConfig { busy_poll: false, core: None, held: false };
            let (h, j) = worker::spawn(i, cfg, &fib, || Ok(MemFrames::default())).unwrap();
            handles.push(h);
            joins.push(j);
        }
        let (wake_tx, woken) = crossbeam_channel::unbounded();
        static RIGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let rig_no = RIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let runtime_dir = std::env::temp_dir().join(format!("xlaned-rig-{}-{rig_no}", std::process::id()));
        std::fs::create_dir_all(&runtime_dir).unwrap();
        let mut cfg = control_config(&runtime_dir);
        if mtu.is_some() {
            cfg.max_uplink_frame = crate::state::MAX_JUMBO_MTU + 14;
        }
        let metrics = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
        let notify = Arc::new(move || {
            let _ = wake_tx.send(());
        });
        let state = State::new(cfg, host.clone(), fib, handles, metrics, notify).unwrap();
        let mut rig = Self { state, host, woken, joins, due: HashMap::new(), runtime_dir };
        let vtep = Vtep { ip: VTEP, mac: None, vni: 1, port: 8472, subnet: None };
        assert!(matches!(rig.state.handle_now(Op::SetVtep(vtep)), Reply::Applied { .. }));
        rig
    }

    fn pod(&self, n: u8) -> EndpointSpec {
        let ifname = format!("veth{n}");
        EndpointSpec { ip: pod_ip(n), ifname, mac: pod_mac(n), vhost_user: None, veth_io: Default::default() }
    }

    /// Add interface `veth<n>` (one queue per worker).
    fn add_veth(&self, n: u8) {
        self.host.add_link(&format!("veth{n}"), 10 + u32::from(n), u32::try_from(self.joins.len()).unwrap());
    }

    /// The reply for `t`, waiting for the workers (at most 5 s).
    fn wait(&mut self, t: Ticket) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self.due.remove(&t) {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(self.woken.recv_timeout(left).is_ok(), "no reply for {t:?} within 5 s");
            self.due.extend(self.state.on_wake());
        }
    }

    /// Handle a request and wait for its reply.
    fn call(&mut self, op: Op) -> Reply {
        match self.state.handle(op) {
            Handled::Now(r) => r,
            Handled::Later(t) => self.wait(t),
        }
    }

    /// Let the workers finish closing ports.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.state.busy() {
            assert!(Instant::now() < deadline, "workers did not finish");
            if self.woken.recv_timeout(Duration::from_millis(100)).is_ok() {
                self.due.extend(self.state.on_wake());
            }
        }
    }

    fn attach(&mut self, n: u8) -> Wire {
        self.add_veth(n);
        let spec = self.pod(n);
        let r = self.call(Op::AddEndpoint(spec));
        assert!(matches!(r, Reply::EndpointReady { .. }), "{r:?}");
        self.host.wire(&format!("veth{n}"), 0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.state.shutdown();
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// The control settings of a rig on uplink `up0` (the in-memory buffers' geometry).
fn control_config(runtime_dir: &std::path::Path) -> ControlConfig {
    ControlConfig {
        uplink: "up0".into(),
        uplink_queues: Vec::new(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        host_port: None,
        uplink_fill: 64,
        pod_fill: 64,
        uplink_udp_gso: true,
        xsk_tx_checksum: crate::config::XskTxChecksumArg::Auto,
        uplink_rx: crate::config::UplinkRx::Xdp,
        uplink_umem: crate::host::Placement::OwnIfZeroCopy,
        busy_poll: false,
        runtime_dir: runtime_dir.to_owned(),
        max_frame: u32::try_from(xlane_engine::mem::FRAME_SIZE - xlane_engine::mem::HEADROOM).unwrap(),
        max_uplink_frame: u32::try_from(xlane_engine::mem::FRAME_SIZE - xlane_engine::mem::HEADROOM).unwrap(),
    }
}

fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, n)
}

fn pod_mac(n: u8) -> Mac {
    Mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, n])
}

/// A UDP frame from pod `n` (behind `gateway`) to `dst`, its payload `tag`.
fn udp(n: u8, gateway: Mac, dst: Ipv4Addr, tag: u32) -> Vec<u8> {
    let ip = fixtures::Ipv4::new(pod_ip(n), dst);
    fixtures::udp(pod_mac(n).0, gateway.0, ip, 12345, 12345, &tag.to_be_bytes())
}

fn tag(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[frame.len() - 4..].try_into().unwrap())
}

/// Frames that arrive on `wire` within `wait`, stopping early at `want`.
fn collect(wire: &Wire, want: usize, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < want {
        match wire.sent.recv_deadline(deadline) {
            Ok(f) => got.push(f),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn local_pods_talk_through_the_workers() {
    let mut rig = Rig::new(1);
    let (a, b) = (rig.attach(2), rig.attach(3));
    let gw = rig.host.mac("veth2");
    for i in 0..100 {
        a.send(&udp(2, gw, pod_ip(3), i));
    }
    let got = collect(&b, 100, Duration::from_secs(5));
    assert_eq!(got.iter().map(|f| tag(f)).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>(), "all, in order");
    assert_eq!(got[0][..6], pod_mac(3).0, "to pod 3's MAC");
    assert_eq!(got[0][6..12], rig.host.mac("veth3").0, "from its gateway (host-side) MAC");
    let c = rig.state.pipeline_counters();
    assert_eq!((c.rx, c.local), (100, 100));
    let Reply::Ports { ports } = rig.call(Op::Dump { table: Table::Ports }) else { panic!() };
    let p2 = ports.iter().find(|p| p.ifname == "veth2").unwrap();
    assert_eq!((p2.rx, p2.xdp_mode.as_str()), (100, "fake"));
}

/// With the node subnet set (SetVtep), the engine knows the pods' gateway and answers a
/// packet whose TTL runs out with an ICMP time exceeded from it; before, only a drop.
#[test]
fn an_expired_ttl_is_answered_from_the_gateway_once_the_subnet_is_set() {
    let mut rig = Rig::new(1);
    let (a, _b) = (rig.attach(2), rig.attach(3));
    let gw = rig.host.mac("veth2");
    let mut probe = udp(2, gw, pod_ip(3), 7);
    probe[22] = 1;
    fixtures::fill_ipv4_checksum(&mut probe, 14);
    a.send(&probe);
    assert!(collect(&a, 1, Duration::from_millis(300)).is_empty(), "no subnet, no gateway: a drop");
    let subnet = Some("10.244.1.0/24".parse().unwrap());
    assert!(matches!(
        rig.call(Op::SetVtep(Vtep { ip: VTEP, mac: None, vni: 1, port: 8472, subnet })),
        Reply::Applied { .. }
    ));
    a.send(&probe);
    let got = collect(&a, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "{:?}", rig.state.pipeline_counters());
    let err = &got[0];
    assert_eq!((&err[..6], &err[6..12]), (&pod_mac(2).0[..], &gw.0[..]), "to the pod, from its gateway MAC");
    assert_eq!(&err[26..34], &[10, 244, 1, 1, 10, 244, 1, 2], "from the gateway address to the pod");
    assert_eq!((err[23], err[34], err[35]), (1, 11, 0), "ICMP time exceeded");
    assert_eq!(&err[42..], &probe[14..42], "quoting the probe's header and 8 bytes");
    let c = rig.state.pipeline_counters();
    assert_eq!((c.icmp_errors, c.drop_count(DropReason::TtlExpired)), (1, 2));
    assert!(c.conserved(), "{c:?}");
}

#[test]
fn a_request_is_answered_while_another_port_attaches() {
    let mut rig = Rig::new(2);
    rig.add_veth(2);
    rig.host.0.lock().unwrap().slow_open.insert("veth2".into(), Duration::from_millis(800));
    let t0 = Instant::now();
    let Handled::Later(attach) = rig.state.handle(Op::AddEndpoint(rig.pod(2))) else {
        panic!("an attach waits for the workers");
    };
    // The control loop is free: status, counters and a route batch are answered now.
    let Handled::Now(Reply::Status(s)) = rig.state.handle(Op::Status) else { panic!("status answered at once") };
    assert_eq!(s.workers, 2);
    let routes =
        vec![Change::AddRoute { prefix: "10.244.9.0/24".parse().unwrap(), via: Ipv4Addr::new(192, 168, 50, 9) }];
    assert!(matches!(rig.state.handle(Op::Apply { changes: routes }), Handled::Now(Reply::Applied { .. })));
    assert!(t0.elapsed() < Duration::from_millis(500), "answered while the port was still opening");
    // The same attach again joins the one in progress; a conflicting one is refused,
    // and so is a delete before the attach is done.
    let Handled::Later(again) = rig.state.handle(Op::AddEndpoint(rig.pod(2))) else { panic!() };
    let mut other = rig.pod(2);
    other.ip = pod_ip(9);
    assert!(matches!(
        rig.state.handle(Op::AddEndpoint(other)),
        Handled::Now(Reply::Error { code: ErrorCode::Invalid, .. })
    ));
    assert!(matches!(
        rig.state.handle(Op::DelEndpoint { ip: pod_ip(2) }),
        Handled::Now(Reply::Error { code: ErrorCode::Failed, .. })
    ));
    for t in [attach, again] {
        assert!(matches!(rig.wait(t), Reply::EndpointReady { .. }));
    }
    assert!(t0.elapsed() >= Duration::from_millis(800));
}

#[test]
fn endpoints_come_and_go_under_traffic_and_every_frame_is_accounted_for() {
    let mut rig = Rig::new(2);
    let (a, b) = (rig.attach(2), rig.attach(3));
    let gw = rig.host.mac("veth2");
    let mut sent = 0u32;
    for round in 0..20u8 {
        // Pod 4 comes and goes while pod 2 streams to pod 3 and, half the time, to pod 4.
        let c = rig.attach(4);
        for _ in 0..50 {
            a.send(&udp(2, gw, pod_ip(3), sent));
            a.send(&udp(2, gw, pod_ip(4), sent));
            sent += 1;
        }
        let r = rig.call(Op::DelEndpoint { ip: pod_ip(4) });
        assert_eq!(r, Reply::EndpointRemoved { existed: true }, "round {round}");
        rig.settle();
        assert!(
            !rig.host.is_open("veth4", 0) && !rig.host.is_open("veth4", 1),
            "round {round}: closed on both workers"
        );
        drop(c);
    }
    let to_b = collect(&b, sent as usize, Duration::from_secs(10));
    assert_eq!(to_b.len(), sent as usize, "nothing to pod 3 was lost");
    // Every frame in was forwarded or counted: what pod 4 missed is a counted drop.
    std::thread::sleep(Duration::from_millis(300));
    let c = rig.state.pipeline_counters();
    assert_eq!(c.rx, u64::from(2 * sent));
    assert!(c.conserved(), "{c:?}");
    let late = c.drop_count(DropReason::NoRoute) + c.drop_count(DropReason::NoEgressPort);
    assert_eq!(c.tx + late, c.rx, "only frames to a detached pod 4 were dropped: {c:?}");
    let Reply::Endpoints { endpoints } = rig.call(Op::Dump { table: Table::Endpoints }) else { panic!() };
    assert_eq!(endpoints.len(), 2);
}

#[test]
fn a_route_swap_moves_traffic_to_the_new_node_at_once() {
    let mut rig = Rig::new(1);
    let a = rig.attach(2);
    let up = rig.host.wire("up0", 0);
    let gw = rig.host.mac("veth2");
    let subnet = "10.244.2.0/24".parse().unwrap();
    let node = |last: u8| Change::AddNode {
        underlay_ip: Ipv4Addr::new(192, 168, 50, last),
        vtep_mac: Mac([0x0e, 0, 0, 0, 0, last]),
        next_hop_mac: None,
    };
    let route = |last: u8| Change::AddRoute { prefix: subnet, via: Ipv4Addr::new(192, 168, 50, last) };
    assert!(matches!(rig.call(Op::Apply { changes: vec![node(2), node(3), route(2)] }), Reply::Applied { .. }));
    let outer_dst = |f: &Vec<u8>| Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    for i in 0..10 {
        a.send(&udp(2, gw, Ipv4Addr::new(10, 244, 2, 7), i));
    }
    let first = collect(&up, 10, Duration::from_secs(5));
    assert_eq!(first.len(), 10);
    assert!(first.iter().all(|f| outer_dst(f) == Ipv4Addr::new(192, 168, 50, 2)));
    assert_eq!(first[0][..6], [2, 0, 0, 0, 0xff, 2], "to the next hop the kernel resolved");
    assert!(matches!(rig.call(Op::Apply { changes: vec![route(3)] }), Reply::Applied { .. }));
    for i in 0..10 {
        a.send(&udp(2, gw, Ipv4Addr::new(10, 244, 2, 7), 100 + i));
    }
    let second = collect(&up, 10, Duration::from_secs(5));
    assert!(second.iter().all(|f| outer_dst(f) == Ipv4Addr::new(192, 168, 50, 3)), "every frame after the swap");
    let inner: Vec<u32> = second.iter().map(|f| tag(f)).collect();
    assert_eq!(inner, (100..110).collect::<Vec<_>>());
}

#[test]
fn a_worker_that_cannot_open_its_queues_fails_the_attach_and_nothing_stays_open() {
    let mut rig = Rig::new(2);
    rig.add_veth(2);
    rig.host.0.lock().unwrap().fail_open.insert("veth2".into());
    let r = rig.call(Op::AddEndpoint(rig.pod(2)));
    let Reply::Error { code: ErrorCode::Failed, message } = r else { panic!("{r:?}") };
    assert!(message.contains("injected failure"), "{message}");
    rig.settle();
    assert!(!rig.host.is_open("veth2", 0), "the other worker's queue was closed again");
    let Reply::Endpoints { endpoints } = rig.call(Op::Dump { table: Table::Endpoints }) else { panic!() };
    assert!(endpoints.is_empty());
    // The daemon carries on: the pod attaches once the interface opens.
    rig.host.0.lock().unwrap().fail_open.clear();
    assert!(matches!(rig.call(Op::AddEndpoint(rig.pod(2))), Reply::EndpointReady { port: 1, .. }), "port id reused");
}

/// Binding a pod's sockets (tens of milliseconds in the kernel) runs off the workers:
/// pods already attached keep talking while another one binds.
#[test]
fn pods_keep_talking_while_another_pod_binds() {
    let mut rig = Rig::new(1);
    let (a, b) = (rig.attach(2), rig.attach(3));
    let gw = rig.host.mac("veth2");
    rig.add_veth(4);
    rig.host.0.lock().unwrap().slow_open.insert("veth4".into(), Duration::from_secs(2));
    let Handled::Later(attach) = rig.state.handle(Op::AddEndpoint(rig.pod(4))) else { panic!("an attach waits") };
    // The worker takes the job (and hands the bind off) before the frames come.
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..100 {
        a.send(&udp(2, gw, pod_ip(3), i));
    }
    let got = collect(&b, 100, Duration::from_secs(5));
    assert_eq!(got.len(), 100, "forwarded");
    assert!(!rig.host.is_open("veth4", 0), "before the binding pod's socket opened");
    assert!(matches!(rig.wait(attach), Reply::EndpointReady { .. }));
    assert!(rig.host.is_open("veth4", 0));
}

/// An attach given up (out of time) while its sockets still bind off the workers: the
/// steps left are dropped, nothing stays open, and the port id is free again.
#[test]
fn an_attach_given_up_while_its_sockets_bind_leaves_nothing_open() {
    let mut rig = Rig::new(2);
    rig.add_veth(2);
    rig.host.0.lock().unwrap().slow_open.insert("veth2".into(), Duration::from_millis(600));
    let Handled::Later(attach) = rig.state.handle(Op::AddEndpoint(rig.pod(2))) else { panic!("an attach waits") };
    std::thread::sleep(Duration::from_millis(100));
    let due = rig.state.expire_attaches_for_test();
    let [(t, Reply::Error { code: ErrorCode::Failed, message })] = &due[..] else { panic!("{due:?}") };
    assert_eq!(*t, attach);
    assert!(message.contains("did not answer in time"), "{message}");
    // The binds finish; what would have opened the queues is dropped.
    std::thread::sleep(Duration::from_millis(800));
    rig.settle();
    assert!(!rig.host.is_open("veth2", 0) && !rig.host.is_open("veth2", 1), "no queue opened late");
    rig.host.0.lock().unwrap().slow_open.clear();
    assert!(matches!(rig.call(Op::AddEndpoint(rig.pod(2))), Reply::EndpointReady { port: 1, .. }), "port id reused");
    assert!(rig.host.is_open("veth2", 0) && rig.host.is_open("veth2", 1));
}

#[test]
fn an_exited_worker_gets_an_error_reply_not_a_hang() {
    let mut rig = Rig::new(2);
    rig.add_veth(2);
    // Stop worker 1 behind the state's back, as a crashed thread would be.
    rig.state.stop_worker_for_test(1);
    std::thread::sleep(Duration::from_millis(100));
    let r = rig.call(Op::AddEndpoint(rig.pod(2)));
    let Reply::Error { message, .. } = r else { panic!("{r:?}") };
    assert!(message.contains("worker 1 has exited"), "{message}");
    assert!(matches!(rig.call(Op::Status), Reply::Status(_)), "still answering");
}

#[test]
fn a_trace_records_frames_through_the_workers_and_bad_requests_are_refused() {
    let mut rig = Rig::new(2);
    let (a, b) = (rig.attach(2), rig.attach(3));
    let invalid = |r: Reply| matches!(r, Reply::Error { code: ErrorCode::Invalid, .. });
    assert!(invalid(rig.call(Op::TraceShow)), "nothing to show before a start");
    let spec = |count, port, frames: &str| TraceSpec { count, port, frames: Some(frames.to_owned()) };
    for bad in [spec(5, None, "10.244.1.0/33"), spec(5, None, "gre"), spec(5, Some(9), "udp"), spec(0, None, "udp")] {
        assert!(invalid(rig.call(Op::TraceStart(bad.clone()))), "{bad:?}");
    }
    let r = rig.call(Op::TraceStart(spec(3, Some(1), "udp")));
    assert_eq!(r, Reply::TraceStarted { count: 3 });
    let gw = rig.host.mac("veth2");
    for i in 0..5 {
        a.send(&udp(2, gw, pod_ip(3), i));
    }
    assert_eq!(collect(&b, 5, Duration::from_secs(5)).len(), 5);
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let Reply::Trace { records, .. } = rig.call(Op::TraceShow) else { panic!() };
        if records.len() == 3 || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
    for r in &records {
        assert_eq!((r.ingress, r.role.as_str(), r.endpoint_ip), (1, "pod", Some(pod_ip(2))));
        assert_eq!((r.route_dst, r.route), (Some(pod_ip(3)), Some(TraceHop::Local { port: 2 })));
        assert_eq!((r.egress, r.drop.as_deref(), r.stage.as_str()), (Some(2), None, "rewrite"));
        assert_eq!(r.output.as_ref().unwrap().eth_dst, Some(pod_mac(3)));
    }
    // A full trace leaves the workers at the next wake; its records stay.
    let _ = rig.state.on_wake();
    let Reply::Trace { active, records, .. } = rig.call(Op::TraceShow) else { panic!() };
    assert!(!active && records.len() == 3);
    assert_eq!(rig.call(Op::TraceStop), Reply::TraceStopped { traced: 3 });
}

/// Every EPB of a pcapng stream: (data, comment).
fn packets(stream: &[u8]) -> Vec<(Vec<u8>, Option<String>)> {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let mut r = PcapNgReader::new(stream).expect("a section header");
    let mut out = Vec::new();
    while let Some(b) = r.next_block() {
        if let Block::EnhancedPacket(p) = b.expect("well formed") {
            let comment = p.options.iter().find_map(|o| match o {
                EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                _ => None,
            });
            out.push((p.data.to_vec(), comment));
        }
    }
    out
}

fn capture_socket(r: &Reply) -> std::path::PathBuf {
    match r {
        Reply::CaptureReady { socket } => socket.clone(),
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_capture_streams_pcapng_with_drop_reasons_and_refuses_bad_requests() {
    let mut rig = Rig::new(2);
    let (a, b) = (rig.attach(2), rig.attach(3));
    let spec = |port, snaplen| CaptureSpec { port, rx: true, tx: false, drops: true, count: 6, snaplen };
    let invalid = |r: Reply| matches!(r, Reply::Error { code: ErrorCode::Invalid, .. });
    assert!(invalid(rig.call(Op::CaptureStart(spec(9, 100)))), "no port 9");
    assert!(invalid(rig.call(Op::CaptureStart(spec(1, 0)))), "snaplen 0");
    let socket = capture_socket(&rig.call(Op::CaptureStart(spec(1, 100))));
    assert!(invalid(rig.call(Op::CaptureStart(spec(2, 100)))), "one capture at a time");
    let mut reader = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let gw = rig.host.mac("veth2");
    let mut spoofed = udp(2, gw, pod_ip(3), 99);
    fixtures::set_ipv4_addr(&mut spoofed, 14, fixtures::IPV4_SRC, pod_ip(7));
    // Wait for both workers to have the capture before sending.
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..5 {
        a.send(&udp(2, gw, pod_ip(3), i));
    }
    a.send(&spoofed);
    assert_eq!(collect(&b, 5, Duration::from_secs(5)).len(), 5);
    let mut stream = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut stream).unwrap();
    let got = packets(&stream);
    assert_eq!(got.iter().filter(|p| p.1.is_none()).map(|p| tag(&p.0)).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(got.iter().filter_map(|p| p.1.as_deref()).collect::<Vec<_>>(), ["drop: spoofed_source"]);
    assert!(!socket.exists(), "the socket goes with the capture");
    // The writer ends the capture just after closing the stream: wait for its wake-up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let _ = rig.woken.recv_timeout(Duration::from_millis(100));
        let _ = rig.state.on_wake();
        let Reply::Counters(c) = rig.call(Op::Counters) else { panic!() };
        let s = c.capture.unwrap();
        if !s.active || Instant::now() > deadline {
            break s;
        }
    };
    assert_eq!((s.active, s.written, s.lost), (false, 6, 0));
    // The next capture may start.
    let _ = capture_socket(&rig.call(Op::CaptureStart(spec(1, 100))));
}

#[test]
fn a_stalled_capture_reader_loses_frames_not_forwarding() {
    let mut rig = Rig::new(1);
    let (a, b) = (rig.attach(2), rig.attach(3));
    let spec = CaptureSpec { port: 1, rx: true, tx: true, drops: false, count: 0, snaplen: 2048 };
    let socket = capture_socket(&rig.call(Op::CaptureStart(spec)));
    // Connected, never reading: the writer blocks once the socket's buffer is full.
    let reader = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let gw = rig.host.mac("veth2");
    let n = 20_000;
    for i in 0..n {
        a.send(&udp(2, gw, pod_ip(3), i));
    }
    assert_eq!(collect(&b, n as usize, Duration::from_secs(20)).len(), n as usize, "every frame forwarded");
    let Reply::Counters(c) = rig.call(Op::Counters) else { panic!() };
    let s = c.capture.unwrap();
    assert!(s.active && s.lost > 0 && s.captured + s.lost == u64::from(n), "{s:?}");
    // The reader going ends the capture.
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() || rig.state.capture_stats().is_some_and(|s| s.active) {
        assert!(Instant::now() < deadline, "the capture did not end");
        std::thread::sleep(Duration::from_millis(20));
        let _ = rig.state.on_wake();
    }
}

/// A pod whose veth keeps its offloads: the node's stack is blocked on its host end
/// while it is attached, each worker opens a socket of the fanout group, traffic flows
/// to and from an AF_XDP pod, the same pod under the other I/O is refused, and removing
/// it lifts the block.
#[test]
fn an_af_packet_pod_blocks_the_host_stack_while_attached_and_talks_to_an_af_xdp_pod() {
    let mut rig = Rig::new(2);
    rig.add_veth(2);
    let spec = EndpointSpec { veth_io: VethIo::AfPacket, ..rig.pod(2) };
    let r = rig.call(Op::AddEndpoint(spec.clone()));
    assert!(matches!(r, Reply::EndpointReady { .. }), "{r:?}");
    assert!(rig.host.0.lock().unwrap().blocked.contains("veth2"));
    assert!(rig.host.is_open("veth2", 0) && rig.host.is_open("veth2", 1), "a socket per worker");
    assert!(matches!(rig.call(Op::AddEndpoint(spec.clone())), Reply::EndpointReady { .. }), "idempotent");
    let r = rig.call(Op::AddEndpoint(rig.pod(2)));
    assert!(matches!(r, Reply::Error { code: ErrorCode::Invalid, .. }), "the same pod as AF_XDP: {r:?}");

    let b = rig.attach(3);
    let gw = rig.host.mac("veth2");
    let a = rig.host.wire("veth2", 0);
    for i in 0..20 {
        a.send(&udp(2, gw, pod_ip(3), i));
    }
    assert_eq!(collect(&b, 20, Duration::from_secs(5)).len(), 20);
    let Reply::Ports { ports } = rig.call(Op::Dump { table: Table::Ports }) else { panic!() };
    let p2 = ports.iter().find(|p| p.ifname == "veth2").unwrap();
    assert_eq!((p2.queues, p2.packet.map(|k| k.gro_merged)), (2, Some(0)));

    rig.call(Op::DelEndpoint { ip: pod_ip(2) });
    rig.settle();
    assert!(!rig.host.0.lock().unwrap().blocked.contains("veth2"), "block lifted");
    assert!(!rig.host.is_open("veth2", 0) && !rig.host.is_open("veth2", 1));
}

/// An uplink whose frames do not fit a buffer (MTU 9000 here), where xlaned cannot take
/// them in several (a zero-copy bind, no UDP GSO sockets), would have every large frame
/// dropped by the kernel: xlaned refuses to start and says what to do. Where it can, it
/// takes jumbo frames up to MTU 9216, pods get 50 less, and a pod whose frames must fit
/// one AF_XDP buffer (veth-xdp) is refused with the kinds that take them.
#[test]
fn an_uplink_mtu_beyond_a_buffer_is_refused_at_start_with_the_remedy() {
    let host = FakeHost::default();
    host.add_link("up0", 1, 1);
    host.0.lock().unwrap().links.get_mut("up0").unwrap().0.mtu = 9000;
    let cfg = control_config(&std::env::temp_dir());
    let metrics = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
    let Err(e) = State::new(cfg, host.clone(), FibHandle::new(), Vec::new(), metrics, Arc::new(|| {})) else {
        panic!("started with an uplink MTU of 9000")
    };
    let msg = e.to_string();
    assert!(
        msg.contains("MTU 9000")
            && msg.contains("at most 1778")
            && msg.contains("ip link set up0 mtu 1778")
            && msg.contains("--uplink-udp-gso"),
        "{msg}"
    );
    host.0.lock().unwrap().links.get_mut("up0").unwrap().0.mtu = 1778;
    let cfg = control_config(&std::env::temp_dir());
    let metrics = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
    assert!(State::new(cfg, host.clone(), FibHandle::new(), Vec::new(), metrics, Arc::new(|| {})).is_ok());
    // Taking jumbo frames: beyond 9216 still refused.
    host.0.lock().unwrap().links.get_mut("up0").unwrap().0.mtu = 9500;
    let mut cfg = control_config(&std::env::temp_dir());
    cfg.max_uplink_frame = crate::state::MAX_JUMBO_MTU + 14;
    let metrics = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
    let Err(e) = State::new(cfg, host, FibHandle::new(), Vec::new(), metrics, Arc::new(|| {})) else {
        panic!("started with an uplink MTU of 9500")
    };
    assert!(e.to_string().contains("up to MTU 9216"), "{e}");

    let mut rig = Rig::with_uplink_mtu(1, Some(9000));
    rig.add_veth(1);
    let Reply::Error { message, .. } = rig.call(Op::AddEndpoint(rig.pod(1))) else {
        panic!("a veth-xdp pod at MTU 8950")
    };
    assert!(message.contains("MTU 8950") && message.contains("veth-offload"), "{message}");
    let spec = EndpointSpec { veth_io: VethIo::AfPacket, ..rig.pod(1) };
    let r = rig.call(Op::AddEndpoint(spec));
    assert!(matches!(r, Reply::EndpointReady { mtu: 8950, .. }), "{r:?}");
}

/// What a hitless restart replays in the new xlaned: the requests rebuilt from a state
/// make an equal one (VTEP, nodes with their given next-hop MACs, routes, endpoints of
/// both veth kinds), and replaying them onto that state again changes nothing.
#[test]
fn the_requests_rebuilt_from_a_state_make_the_same_state() {
    let mut old = Rig::new(2);
    old.attach(2);
    old.add_veth(3);
    let offload = EndpointSpec { veth_io: VethIo::AfPacket, ..old.pod(3) };
    assert!(matches!(old.call(Op::AddEndpoint(offload)), Reply::EndpointReady { .. }));
    let node = Ipv4Addr::new(192, 168, 50, 2);
    let changes = vec![
        Change::AddNode {
            underlay_ip: node,
            vtep_mac: Mac([2, 0, 0, 0, 0, 2]),
            next_hop_mac: Some(Mac([2, 0, 0, 0, 0, 9])),
        },
        Change::AddRoute { prefix: "10.244.2.0/24".parse().unwrap(), via: node },
        Change::AddRoute { prefix: "10.244.3.0/24".parse().unwrap(), via: Ipv4Addr::new(192, 168, 50, 3) },
    ];
    assert!(matches!(old.call(Op::Apply { changes }), Reply::Applied { .. }));

    let mut new = Rig::new(2);
    new.add_veth(2);
    new.add_veth(3);
    let ops = old.state.rebuild_ops();
    for op in ops.iter().cloned().chain(ops.iter().cloned()) {
        let r = new.call(op);
        assert!(!matches!(r, Reply::Error { .. }), "{r:?}");
    }
    for table in [Table::Routes, Table::Nodes] {
        assert_eq!(old.call(Op::Dump { table }), new.call(Op::Dump { table }), "{table:?}");
    }
    let endpoints = |rig: &mut Rig| {
        let Reply::Endpoints { endpoints } = rig.call(Op::Dump { table: Table::Endpoints }) else { panic!() };
        endpoints.into_iter().map(|p| (p.ifname, p.ip, p.queues, p.packet.is_some())).collect::<Vec<_>>()
    };
    assert_eq!(endpoints(&mut old), endpoints(&mut new));
    assert_eq!(endpoints(&mut new).len(), 2, "both pods");
}
