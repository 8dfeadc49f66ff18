//! xlaned end to end, as root, in namespaces the tests create and remove: two nodes on
//! a fabric bridge, pods on veths, one xlaned per node configured through its control
//! socket (as the agent would).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xlane_api::{Change, Counters, EndpointSpec, ErrorCode, Mac, Op, Reply, Table, Vtep};
use xlane_netlab::{Lab, Netns, privileged};

/// A UDP socket bound in a namespace.
fn udp(ns: &Netns, addr: SocketAddrV4) -> UdpSocket {
    ns.enter(|| UdpSocket::bind(addr)).unwrap().unwrap()
}

fn drops(c: &Counters) -> BTreeMap<String, u64> {
    c.drops.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect()
}

#[test]
fn pods_nodes_and_the_pinhole() {
    pods_nodes_and_the_pinhole_in(Layout::TapUplink, "pods_nodes_and_the_pinhole", "xe-basic");
}

#[test]
fn pods_nodes_and_the_pinhole_with_the_uplink_read_through_udp_sockets() {
    pods_nodes_and_the_pinhole_in(
        Layout::UdpUplink,
        "pods_nodes_and_the_pinhole_with_the_uplink_read_through_udp_sockets",
        "xe-budp",
    );
}

#[test]
fn pods_nodes_and_the_pinhole_with_the_uplink_read_through_af_xdp() {
    pods_nodes_and_the_pinhole_in(
        Layout::Shared,
        "pods_nodes_and_the_pinhole_with_the_uplink_read_through_af_xdp",
        "xe-bxdp",
    );
}

#[test]
fn pods_nodes_and_the_pinhole_with_the_uplink_in_its_own_umem() {
    pods_nodes_and_the_pinhole_in(
        Layout::OwnUplink,
        "pods_nodes_and_the_pinhole_with_the_uplink_in_its_own_umem",
        "xe-bown",
    );
}

fn pods_nodes_and_the_pinhole_in(layout: Layout, test: &str, prefix: &str) {
    let Some((_serial, Cluster { mut daemons, lab })) = setup(test, prefix, 1, layout.flags()) else {
        return;
    };
    let (p0, p1, p2) = (&lab.pods[0], &lab.pods[1], &lab.pods[2]);

    // Ping both ways across nodes, on one node, node to pods, pods to nodes.
    ping(&p0.ns, p2.ip).unwrap();
    ping(&p2.ns, p0.ip).unwrap();
    ping(&p0.ns, p1.ip).unwrap();
    ping(&lab.nodes[0].ns, p0.ip).unwrap();
    ping(&lab.nodes[0].ns, p2.ip).unwrap();
    ping(&p2.ns, lab.nodes[0].gateway()).unwrap();
    ping(&p0.ns, lab.nodes[0].ip).unwrap();

    // Proxy ARP: the pod's gateway resolved to the host-side veth's MAC.
    let neigh = p0.ns.ip(&["neigh", "show", &lab.nodes[0].gateway().to_string()]).unwrap();
    let host_mac = lab.nodes[0].ns.mac(&p0.host_if).unwrap();
    assert!(neigh.contains(&host_mac), "gateway entry {neigh:?} should be {host_mac}");

    // The pinhole: the node's own address still answers the fabric while xlaned runs.
    ping(&lab.fabric, lab.nodes[0].ip).unwrap();

    // 100 MB over TCP, byte-exact.
    let secs = tcp_transfer(&p0.ns, &p2.ns, p2.ip, 5001, 100);
    eprintln!("100 MB TCP pod→pod across nodes in {secs:.2} s");

    // Anti-spoofing: a pod sending as another address is dropped and counted.
    p0.ns.ip(&["addr", "add", "10.244.1.77/32", "dev", "eth0"]).unwrap();
    let before = daemons[0].counters().drops["spoofed_source"];
    let rx = udp(&p2.ns, SocketAddrV4::new(p2.ip, 6001));
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let spoofer = p0.ns.enter(|| UdpSocket::bind("10.244.1.77:0")).unwrap().unwrap();
    for _ in 0..10 {
        spoofer.send_to(b"spoofed", SocketAddrV4::new(p2.ip, 6001)).unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(rx.recv_from(&mut buf).is_err(), "a spoofed packet got through");
    let after = daemons[0].counters().drops["spoofed_source"];
    assert_eq!(after - before, 10, "every spoofed packet counted");

    for (i, d) in daemons.iter().enumerate() {
        let c = d.counters();
        assert!(conserved(&c), "node {i}: {:?} drops {:?}", c.pipeline, drops(&c));
    }
    layout.check(&daemons);

    // xlanectl shows live counters, as a table and as JSON.
    let ctl = |args: &[&str]| daemons[0].ctl(args);
    let table = ctl(&["counters"]);
    assert!(
        table.contains("spoofed_source") && table.contains(&p0.host_if) && table.contains("encapsulated"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&ctl(&["--json", "counters"])).unwrap();
    assert_eq!(json["drops"]["spoofed_source"], 10);
    assert!(json["pipeline"]["encapsulated"].as_u64().unwrap() > 70_000, "{}", json["pipeline"]);
    // Every port carries the kernel's AF_XDP statistics, in `ports` and in `counters`.
    let ports: serde_json::Value = serde_json::from_str(&ctl(&["--json", "ports"])).unwrap();
    let rx = ["rx_fill_ring_empty", "rx_ring_full", "rx_dropped", "rx_invalid_descs"];
    for p in [&ports["ports"], &json["ports"]].into_iter().flat_map(|l| l.as_array().unwrap()) {
        for key in rx.into_iter().chain(["tx_invalid_descs", "tx_ring_empty_descs"]) {
            assert!(p[key].is_u64(), "{key} missing: {p}");
        }
    }
    assert!([&ports["ports"], &json["ports"]].iter().all(|l| !l.as_array().unwrap().is_empty()));
    let table = ctl(&["ports"]);
    assert!(table.contains("RX-FULL") && table.contains("RX-DROP") && table.contains("TX-EMPTY"), "{table}");
    assert!(ctl(&["routes"]).contains("10.244.2.0/24"));
    assert!(ctl(&["nodes"]).contains("neighbor"));
    assert!(ctl(&["status"]).contains("pod MTU 1450"));

    // The Prometheus endpoint on the node's loopback.
    let metrics = lab.nodes[0]
        .ns
        .enter(|| -> io::Result<String> {
            let mut s = TcpStream::connect("127.0.0.1:9472")?;
            io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut body = String::new();
            io::Read::read_to_string(&mut s, &mut body)?;
            Ok(body)
        })
        .unwrap()
        .unwrap();
    assert!(metrics.contains("xlane_drops_total{reason=\"spoofed_source\"} 10"), "{metrics}");
    assert!(metrics.contains(&format!("ifname=\"{}\"", p0.host_if)));
    assert!(metrics.contains("xlane_burst_latency_ns{quantile=\"0.99\"}"));

    // Stop xlaned: nothing stays attached, and the node keeps its network.
    let node = &lab.nodes[0];
    assert_eq!(node.ns.has_xdp("eth0").unwrap(), layout.uplink_xdp());
    assert!(node.ns.has_xdp(&p0.host_if).unwrap());
    let st = daemons[0].stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(st.success(), "xlaned exit: {st}\n{}", daemons[0].log());
    for dev in ["eth0", "xlane0-e", &p0.host_if, &p1.host_if] {
        assert!(!node.ns.has_xdp(dev).unwrap(), "XDP left on {dev} after exit");
    }
    ping(&lab.fabric, node.ip).unwrap();
    // Even a killed xlaned leaves nothing behind (BPF links die with the process).
    let n1 = &lab.nodes[1];
    assert_eq!(n1.ns.has_xdp("eth0").unwrap(), layout.uplink_xdp());
    daemons[1].stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(!n1.ns.has_xdp("eth0").unwrap() && !n1.ns.has_xdp(&p2.host_if).unwrap(), "XDP left after SIGKILL");
}

#[test]
fn udp_flood_is_accounted_for() {
    udp_flood_is_accounted_for_in(Layout::Shared, "udp_flood_is_accounted_for", "xe-flood");
}

#[test]
fn udp_flood_is_accounted_for_with_the_uplink_in_its_own_umem() {
    udp_flood_is_accounted_for_in(
        Layout::OwnUplink,
        "udp_flood_is_accounted_for_with_the_uplink_in_its_own_umem",
        "xe-fown",
    );
}

fn udp_flood_is_accounted_for_in(layout: Layout, test: &str, prefix: &str) {
    let Some((_serial, Cluster { daemons, lab })) = setup(test, prefix, 1, layout.flags()) else {
        return;
    };
    let (p0, p2) = (&lab.pods[0], &lab.pods[2]);
    let rx = udp(&p2.ns, SocketAddrV4::new(p2.ip, 7001));
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let receiver = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = [0u8; 2048];
        while rx.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let tx = udp(&p0.ns, SocketAddrV4::new(p0.ip, 0));
    let payload = [0x5au8; 18]; // 64-byte frames on the pod link
    const MAX: u64 = 300_000;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0u64;
    while sent < MAX && Instant::now() < deadline {
        for _ in 0..16 {
            if tx.send_to(&payload, SocketAddrV4::new(p2.ip, 7001)).is_ok() {
                sent += 1;
            }
        }
    }
    let received = receiver.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let c0 = daemons[0].counters();
    let c1 = daemons[1].counters();
    eprintln!(
        "UDP flood: sent {sent}, received {received}; node0 {:?} drops {:?}; node1 {:?} drops {:?}",
        c0.pipeline,
        drops(&c0),
        c1.pipeline,
        drops(&c1)
    );
    assert!(conserved(&c0) && conserved(&c1), "frames in = frames out + counted drops");
    assert!(received > 0 && received <= sent);
    let pod_port = c0.ports.iter().find(|p| p.ifname == p0.host_if).unwrap();
    assert!(pod_port.rx >= received, "the pod port saw the flood: {pod_port:?}");
    assert!(c0.pipeline["encapsulated"] >= received && c1.pipeline["decapsulated"] >= received);
    layout.check(&daemons);
}

#[test]
fn route_churn_does_not_disturb_forwarding() {
    route_churn_does_not_disturb_forwarding_in(Layout::Shared, "route_churn_does_not_disturb_forwarding", "xe-churn");
}

#[test]
fn route_churn_does_not_disturb_forwarding_with_the_uplink_in_its_own_umem() {
    route_churn_does_not_disturb_forwarding_in(
        Layout::OwnUplink,
        "route_churn_does_not_disturb_forwarding_with_the_uplink_in_its_own_umem",
        "xe-cown",
    );
}

fn route_churn_does_not_disturb_forwarding_in(layout: Layout, test: &str, prefix: &str) {
    let Some((_serial, Cluster { daemons, lab })) = setup(test, prefix, 1, layout.flags()) else {
        return;
    };
    let (p0, p2) = (&lab.pods[0], &lab.pods[2]);
    let stream = PacedStream::start(p0, p2, 7002);
    std::thread::sleep(Duration::from_millis(300));
    // 100k route changes: 50k host routes in 10.128.0.0/9 added, then withdrawn, in
    // batches of 1000, while the stream flows.
    let via = lab.nodes[1].ip;
    let mut client = daemons[0].client();
    let t0 = Instant::now();
    for batch in 0..100u32 {
        let changes: Vec<Change> = (0..1000u32)
            .map(|i| {
                let k = (batch % 50) * 1000 + i;
                let prefix = format!("{}/30", Ipv4Addr::from(0x0a80_0000 + k * 4)).parse().unwrap();
                if batch < 50 { Change::AddRoute { prefix, via } } else { Change::DelRoute { prefix } }
            })
            .collect();
        let r = client.call(Op::Apply { changes }).unwrap();
        assert!(matches!(r, Reply::Applied { changes: 1000, .. }), "{r:?}");
    }
    let churn = t0.elapsed();
    let (sent, received) = stream.stop(&daemons[0]);
    eprintln!("100k route changes in {:.0} ms; stream: sent {sent}, received {received}", churn.as_secs_f64() * 1e3);
    let Reply::Routes { routes } = daemons[0].ok(Op::Dump { table: Table::Routes }) else { panic!() };
    assert_eq!(routes.len(), 1, "only the node route is left: {:?}", &routes[..routes.len().min(3)]);
    layout.check(&daemons);
}

#[test]
fn pods_come_and_go_under_load() {
    pods_come_and_go_under_load_in(Layout::Shared, "pods_come_and_go_under_load", "xe-pods");
}

#[test]
fn pods_come_and_go_under_load_with_the_uplink_in_its_own_umem() {
    pods_come_and_go_under_load_in(
        Layout::OwnUplink,
        "pods_come_and_go_under_load_with_the_uplink_in_its_own_umem",
        "xe-pown",
    );
}

/// Pods come and go on a node, as a Kubernetes node sees them (a new veth each time:
/// attached, answering, detached), while streams cross the node both ways: every pod
/// answers once attached, every frame is accounted for (the ports' frames, in every
/// UMEM, come back each time), and the streams lose nothing. That needs the worker never
/// held long: a pod's sockets bind off the worker (bind(2) takes the kernel 20–45 ms
/// here) and close on a thread of their own; with either on the worker, a 5000
/// packets/s stream overran its 256-frame fill ring.
fn pods_come_and_go_under_load_in(layout: Layout, test: &str, prefix: &str) {
    let Some((_serial, Cluster { daemons, mut lab })) = setup(test, prefix, 1, layout.flags()) else {
        return;
    };
    let out = PacedStream::start(&lab.pods[0], &lab.pods[2], 7003);
    let back = PacedStream::start(&lab.pods[2], &lab.pods[0], 7004);
    const CYCLES: usize = 10;
    for _ in 0..CYCLES {
        let k = lab.add_pod(0).unwrap();
        let p = &lab.pods[k];
        let spec = EndpointSpec {
            ifname: p.host_if.clone(),
            ip: p.ip,
            mac: mac(&p.mac),
            vhost_user: None,
            veth_io: Default::default(),
        };
        daemons[0].ok(Op::AddEndpoint(spec));
        lab.pods[2].ns.ping(&p.ip.to_string(), 1).unwrap();
        daemons[0].ok(Op::DelEndpoint { ip: p.ip });
    }
    let (sent, received) = out.stop(&daemons[0]);
    let (sent_back, received_back) = back.stop(&daemons[1]);
    eprintln!("{CYCLES} pod cycles; streams: {received}/{sent} out, {received_back}/{sent_back} back");
    for (i, d) in daemons.iter().enumerate() {
        let c = d.counters();
        assert!(conserved(&c), "node {i}: {:?} drops {:?}", c.pipeline, drops(&c));
    }
    layout.check(&daemons);
}

#[test]
fn bad_control_requests_get_errors_and_forwarding_continues() {
    let Some((_serial, Cluster { daemons, lab })) =
        setup("bad_control_requests_get_errors_and_forwarding_continues", "xe-bad", 1, &[])
    else {
        return;
    };
    let d = &daemons[0];
    let mut c = d.client();
    let code = |r: Reply| match r {
        Reply::Error { code, message } => {
            assert!(!message.is_empty());
            code
        }
        other => panic!("expected an error, got {other:?}"),
    };
    // Garbage, wrong version, unknown op, on one connection that stays usable.
    assert_eq!(code(c.call_raw(b"\x00\xffgarbage\n").unwrap()), ErrorCode::BadRequest);
    assert_eq!(code(c.call_raw(b"{\"version\":9,\"op\":\"status\"}\n").unwrap()), ErrorCode::UnsupportedVersion);
    assert_eq!(code(c.call_raw(b"{\"version\":1,\"op\":\"reboot\"}\n").unwrap()), ErrorCode::BadRequest);
    // Invalid CIDRs: /33 does not parse; host bits set is refused; the batch is atomic.
    let bad =
        br#"{"version":1,"op":"apply","changes":[{"kind":"add_route","prefix":"10.244.9.0/33","via":"192.168.50.2"}]}
"#;
    assert_eq!(code(c.call_raw(bad).unwrap()), ErrorCode::BadRequest);
    let r = c
        .call(Op::Apply {
            changes: vec![
                Change::AddRoute { prefix: "10.244.8.0/24".parse().unwrap(), via: lab.nodes[1].ip },
                Change::AddRoute { prefix: "10.244.9.5/24".parse().unwrap(), via: lab.nodes[1].ip },
            ],
        })
        .unwrap();
    assert_eq!(code(r), ErrorCode::Invalid);
    let Reply::Routes { routes } = d.ok(Op::Dump { table: Table::Routes }) else { panic!() };
    assert!(routes.iter().all(|r| r.prefix.to_string() != "10.244.8.0/24"), "a refused batch changed nothing");
    // Invalid VTEP and endpoints.
    let v = Vtep { ip: lab.nodes[0].ip, mac: None, vni: 1 << 24, port: 8472, subnet: None };
    assert_eq!(code(c.call(Op::SetVtep(v)).unwrap()), ErrorCode::Invalid);
    let ep = EndpointSpec {
        ifname: "nosuchif".into(),
        ip: "10.244.1.50".parse().unwrap(),
        mac: mac("02:00:00:00:00:50"),
        vhost_user: None,
        veth_io: Default::default(),
    };
    assert_eq!(code(c.call(Op::AddEndpoint(ep)).unwrap()), ErrorCode::Invalid);
    let ep = EndpointSpec {
        ifname: lab.pods[0].host_if.clone(),
        ip: "10.99.0.1".parse().unwrap(),
        mac: mac("02:00:00:00:00:50"),
        vhost_user: None,
        veth_io: Default::default(),
    };
    assert_eq!(code(c.call(Op::AddEndpoint(ep)).unwrap()), ErrorCode::Invalid);
    // An oversized line closes that connection only.
    let mut huge = vec![b'x'; xlane_api::MAX_LINE + 1024];
    huge.push(b'\n');
    let mut c2 = d.client();
    assert_eq!(code(c2.call_raw(&huge).unwrap()), ErrorCode::BadRequest);
    // Deleting what is not there is fine.
    assert_eq!(d.ok(Op::DelEndpoint { ip: "10.244.1.99".parse().unwrap() }), Reply::EndpointRemoved { existed: false });
    // The daemon is up and still forwarding.
    assert!(matches!(c.call(Op::Status).unwrap(), Reply::Status(_)));
    ping(&lab.pods[0].ns, lab.pods[2].ip).unwrap();
}

/// Adaptive idle: an idle xlaned sleeps in poll(2) and costs next to no CPU; with
/// --busy-poll its worker spins (one core busy). Measured as CPU time over 2 s of
/// silence, which tells the two apart by two orders of magnitude.
#[test]
fn idle_costs_no_cpu_unless_busy_polling() {
    let Some((_serial, Cluster { daemons, lab })) = setup("idle_costs_no_cpu_unless_busy_polling", "xe-idle", 1, &[])
    else {
        return;
    };
    ping(&lab.pods[0].ns, lab.pods[2].ip).unwrap();
    // A second daemon with an uplink of its own (a spare veth), spinning.
    let ns = &lab.nodes[0].ns;
    ns.ip(&["link", "add", "bp0", "type", "veth", "peer", "name", "bp1"]).unwrap();
    ns.ip(&["link", "set", "bp0", "up"]).unwrap();
    ns.ip(&["link", "set", "bp1", "up"]).unwrap();
    // Read through UDP sockets (no zero-copy on veth), the VTEP is one of its addresses.
    ns.ip(&["addr", "add", "192.168.99.1/32", "dev", "bp0"]).unwrap();
    let flags =
        ["--uplink", "bp0", "--vtep-ip", "192.168.99.1", "--busy-poll", "--metrics", "off", "--host-port", "none"];
    let busy = Xlaned::start_with(ns, "xe-idle-busy", &flags);
    std::thread::sleep(Duration::from_millis(500));
    let (idle0, busy0) = (daemons[0].cpu_seconds(), busy.cpu_seconds());
    std::thread::sleep(Duration::from_secs(2));
    let idle = daemons[0].cpu_seconds() - idle0;
    let spin = busy.cpu_seconds() - busy0;
    eprintln!("CPU over 2 s idle: adaptive {idle:.3} s, busy-poll {spin:.3} s");
    assert!(idle < 0.2, "an idle xlaned used {idle:.3} s of CPU in 2 s");
    assert!(spin > 0.5 && spin > 10.0 * idle, "busy-poll should spin: {spin:.3} s");
    drop(busy);
    let _ = &daemons;
}

/// A UMEM too small for another pod's fill ring refuses the pod with the remedy instead
/// of attaching a port that would receive nothing; removing a pod gives its frames back,
/// so the refused pod fits afterwards.
#[test]
fn a_full_umem_refuses_a_port_and_frames_come_back() {
    if !privileged("a_full_umem_refuses_a_port_and_frames_come_back") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lab = Lab::new("xe-umem", 1).unwrap();
    for _ in 0..6 {
        lab.add_pod(0).unwrap();
    }
    let n = &lab.nodes[0];
    // An AF_XDP uplink's fill ring takes 2048 of these; each pod needs 256 and a reserve.
    let d = Xlaned::start_with(&n.ns, "xe-umem", &["--umem-frames", "3200", "--uplink-rx", "xdp"]);
    d.ok(Op::SetVtep(Vtep { ip: n.ip, mac: None, vni: 1, port: 8472, subnet: Some(n.subnet_cidr().parse().unwrap()) }));
    let spec = |k: usize| {
        let p = &lab.pods[k];
        EndpointSpec {
            ifname: p.host_if.clone(),
            ip: p.ip,
            mac: mac(&p.mac),
            vhost_user: None,
            veth_io: Default::default(),
        }
    };
    let mut attached = Vec::new();
    let refused = loop {
        let k = attached.len();
        assert!(k < lab.pods.len(), "a 3200-frame UMEM took {k} pods");
        match d.call(Op::AddEndpoint(spec(k))) {
            Reply::EndpointReady { .. } => attached.push(k),
            Reply::Error { message, .. } => break (k, message),
            other => panic!("{other:?}"),
        }
    };
    assert!(!attached.is_empty(), "at least one pod fits");
    assert!(refused.1.contains("UMEM exhausted") && refused.1.contains("--umem-frames"), "{}", refused.1);
    // Still serving; the refused pod's interface has no socket and no leftover state.
    let Reply::Endpoints { endpoints } = d.ok(Op::Dump { table: Table::Endpoints }) else { panic!() };
    assert!(!endpoints.iter().any(|e| e.ifname == lab.pods[refused.0].host_if));
    // Remove one pod: its fill ring's frames return to the UMEM, and the refused pod fits.
    d.ok(Op::DelEndpoint { ip: lab.pods[attached[0]].ip });
    assert!(matches!(d.call(Op::AddEndpoint(spec(refused.0))), Reply::EndpointReady { .. }));
}

/// The vhost-user port of `ip` as xlaned reports it.
/// How many of `count` pings to `dst` were answered.
fn ping_received(ns: &Netns, dst: Ipv4Addr, count: u32) -> u32 {
    ns.ping_stats(&dst.to_string(), count).unwrap().received
}

#[test]
fn vhost_user_pods_talk_to_each_other_and_to_a_veth_pod_on_another_node() {
    use xlane_netlab::dpdk::{TESTPMD, Testpmd};
    let test = "vhost_user_pods_talk_to_each_other_and_to_a_veth_pod_on_another_node";
    if !xlane_netlab::privileged_with(test, &[TESTPMD]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Cluster { daemons, lab } = cluster_with("xe-vhu", 1, &[]);
    let (xl, pod) = (&daemons[0], &lab.pods[2]);
    let o = lab.nodes[0].gateway().octets();
    // Two VM pods on node 0, each on its own socket.
    let vms: Vec<(Ipv4Addr, Mac, PathBuf)> = (0..2u8)
        .map(|i| {
            let ip = Ipv4Addr::new(o[0], o[1], o[2], 250 + i);
            (ip, Mac([2, 0, 0x0a, 0xf4, 0, 250 + i]), xl.dir.join(format!("vm{i}.sock")))
        })
        .collect();
    let mut gateway = None;
    for (i, (ip, mac, sock)) in vms.iter().enumerate() {
        let spec = EndpointSpec {
            ifname: format!("vm{i}"),
            ip: *ip,
            mac: *mac,
            vhost_user: Some(sock.clone()),
            veth_io: Default::default(),
        };
        let r = xl.ok(Op::AddEndpoint(spec));
        let Reply::EndpointReady { gateway_mac, mtu: 1450, .. } = r else { panic!("{r:?}") };
        gateway = Some(gateway_mac);
        assert!(sock.exists(), "the socket waits for the VMM");
    }
    let gateway = gateway.unwrap();
    // The guests: one testpmd with a virtio-user port per VM, answering ARP and ICMP
    // echo; with `tx_first`, each port first sends a burst of 32 UDP frames from VM 0 to
    // VM 1 (testpmd has one source address for all ports: VM 1's burst is spoofed).
    let guests = |tx_first: bool| {
        let mut app = vec![
            "--forward-mode=icmpecho".to_owned(),
            "--stats-period=0".into(),
            "--total-num-mbufs=8192".into(),
            format!("--eth-peer=0,{gateway}"),
            format!("--eth-peer=1,{gateway}"),
            format!("--tx-ip={},{}", vms[0].0, vms[1].0),
            "--burst=32".into(),
        ];
        if tx_first {
            app.push("--tx-first".into());
        }
        let app: Vec<&str> = app.iter().map(String::as_str).collect();
        let vdevs: Vec<String> = vms
            .iter()
            .enumerate()
            .map(|(i, (_, mac, sock))| format!("net_virtio_user{i},path={},queues=1,mac={mac}", sock.display()))
            .collect();
        let vdevs: Vec<&str> = vdevs.iter().map(String::as_str).collect();
        let mut t = Testpmd::spawn(None, "0-1", &vdevs, &app).unwrap();
        // Connected is not ready: the guest sets its rings up, then forwards.
        t.wait_forwarding(Duration::from_secs(60)).unwrap();
        t
    };
    let spoofed_before = xl.counters().drops["spoofed_source"];
    let vm = guests(true);
    for (ip, _, _) in &vms {
        wait_connected(xl, *ip, 1);
    }
    // The veth pod on node 1 pings both VMs and sends each 500 datagrams.
    let tx = udp(&pod.ns, SocketAddrV4::new(pod.ip, 0));
    for (ip, _, _) in &vms {
        assert_eq!(ping_received(&pod.ns, *ip, 10), 10, "pings to {ip}");
        for i in 0..500 {
            tx.send_to(&[0u8; 100], SocketAddrV4::new(*ip, 9)).unwrap();
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let port = |i: usize| vhost_port(xl, vms[i].0).unwrap().vhost_user.unwrap();
    let (v0, v1) = (port(0), port(1));
    let counts = vm.finish();
    // Every frame accounted for, at the guests and at xlaned: VM 0's burst reached VM 1
    // on the same node; VM 1's spoofed burst was dropped and counted.
    assert_eq!((counts.tx, counts.rx), (32 + 32 + 10 + 10, (10 + 500) + (32 + 10 + 500)), "{v0:?} {v1:?}");
    assert_eq!((v0.from_guest, v0.to_guest, v0.malformed, v0.dropped), (42, 510, 0, 0), "{v0:?}");
    assert_eq!((v1.from_guest, v1.to_guest, v1.malformed, v1.dropped), (42, 542, 0, 0), "{v1:?}");
    assert_eq!(xl.counters().drops["spoofed_source"] - spoofed_before, 32);

    // A hostile frontend on VM 0's socket is cut off; xlaned stays up.
    let mut s = std::os::unix::net::UnixStream::connect(&vms[0].2).unwrap();
    io::Write::write_all(&mut s, &[0xff; 64]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(io::Read::read(&mut s, &mut buf), Ok(0) | Err(_)), "garbage: disconnected");
    xl.ok(Op::Status);
    // The VMs restart: their frontends reconnect and traffic flows again.
    let vm = guests(false);
    wait_connected(xl, vms[0].0, 3);
    wait_connected(xl, vms[1].0, 2);
    for (ip, _, _) in &vms {
        let answered = ping_received(&pod.ns, *ip, 5);
        assert_eq!(answered, 5, "{ip} after the reconnect: {:?}\n{:?}", vhost_port(xl, *ip), xl.counters());
    }

    // Removing VM 0 removes its socket and port; VM 1 keeps working.
    let r = xl.ok(Op::DelEndpoint { ip: vms[0].0 });
    assert!(matches!(r, Reply::EndpointRemoved { existed: true }), "{r:?}");
    assert!(!vms[0].2.exists(), "socket removed");
    assert!(vhost_port(xl, vms[0].0).is_none());
    assert_eq!(ping_received(&pod.ns, vms[1].0, 3), 3, "the other VM is unaffected");
    assert_eq!(vm.finish().rx, 5 + 5 + 3);
    let c = xl.counters();
    assert!(conserved(&c), "pipeline counters conserved: {c:?}");
}
