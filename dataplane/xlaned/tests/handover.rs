//! Hitless restart (#18): a node's xlaned handed over to a successor again and again
//! while pods talk across nodes — a ping every 2 ms, a TCP stream and a numbered UDP
//! stream — loses nothing, keeps the same XDP program on the uplink, and leaks neither
//! descriptors nor memory; a successor speaking another protocol version gets a normal
//! restart instead, said in the log (needs root).

mod common;

use common::{FNV_START, PacedStream, fnv1a, setup, setup_io};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use xlane_api::{Op, Reply, VethIo};
use xlane_netlab::{Netns, PingStats};

/// The id of the XDP program on `ifname` in `ns`.
fn xdp_prog_id(ns: &Netns, ifname: &str) -> Option<u64> {
    let out = ns.command("ip").args(["-j", "-d", "link", "show", "dev", ifname]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// A TCP stream paced at ~100 Mbit/s until told to stop; the bytes and their hash each
/// way.
struct TcpStreamCheck {
    done: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<(u64, u64)>,
    reader: std::thread::JoinHandle<std::io::Result<(u64, u64)>>,
}

impl TcpStreamCheck {
    fn start(from: &xlane_netlab::Pod, to: &xlane_netlab::Pod, port: u16) -> Self {
        let addr = SocketAddrV4::new(to.ip, port);
        let listener = to.ns.enter(|| TcpListener::bind(addr)).unwrap().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let (mut n, mut h) = (0u64, FNV_START);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    return Ok((n, h));
                }
                fnv1a(&mut h, &buf[..k]);
                n += k as u64;
            }
        });
        let mut s = from.ns.enter(|| TcpStream::connect(addr)).unwrap().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let writer = std::thread::spawn(move || {
            let chunk: Vec<u8> = (0..1u32 << 16).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect();
            let (mut n, mut h) = (0u64, FNV_START);
            let t0 = Instant::now();
            while !stop.load(Relaxed) && t0.elapsed() < Duration::from_secs(300) {
                s.write_all(&chunk).expect("the TCP stream broke");
                fnv1a(&mut h, &chunk);
                n += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(5));
            }
            (n, h)
        });
        Self { done, writer, reader }
    }

    fn stop(self) -> u64 {
        self.done.store(true, Relaxed);
        let sent = self.writer.join().unwrap();
        let received = self.reader.join().unwrap().expect("the TCP stream broke");
        assert_eq!(received, sent, "every byte of the TCP stream arrived, in order");
        sent.0
    }
}

fn handovers_under_load(test: &str, prefix: &str, veth_io: VethIo, rounds: usize, flags: &[&str]) {
    let Some((_serial, mut c)) = setup_io(test, prefix, 1, flags, veth_io) else { return };
    let (a, b, far) = (&c.lab.pods[0], &c.lab.pods[1], &c.lab.pods[2]);
    let node0 = &c.lab.nodes[0].ns;
    // A veth uplink has no zero-copy: read through packet taps unless told otherwise.
    let rx_flag = flags.windows(2).find(|f| f[0] == "--uplink-rx").map_or("packet", |f| f[1]);
    let taken_over = match rx_flag {
        "packet" => Some("packet tap taken over"),
        "udp" => Some("UDP receive socket taken over"),
        _ => None,
    };
    let prog = xdp_prog_id(node0, "eth0");
    assert_eq!(prog.is_some(), taken_over.is_none(), "an XDP program on the uplink unless it is read without");

    // Pings 2 ms apart for longer than the handovers take (checked below); ping waits
    // for the last replies.
    let pings = u32::try_from(rounds).unwrap() * 100 + 1000;
    let mut ping =
        a.ns.command("ping")
            .args(["-c", &pings.to_string(), "-i", "0.002", "-W", "2", &far.ip.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("iputils ping");
    let udp = PacedStream::start(b, far, 9100);
    let tcp = TcpStreamCheck::start(a, far, 9200);
    std::thread::sleep(Duration::from_millis(300));

    let d = &mut c.daemons[0];
    let mut footprint = Vec::new();
    let t0 = Instant::now();
    for round in 0..rounds {
        let old_log = d.take_over(node0, &[]);
        assert!(old_log.contains("handed over to the new xlaned"), "round {round}:\n{old_log}");
        if let Some(what) = taken_over {
            assert!(d.log().contains(what), "round {round}:\n{}", d.log());
        }
        footprint.push(d.fds_and_rss());
    }
    let took = t0.elapsed();
    assert!(ping.try_wait().unwrap().is_none(), "the pings ended before the handovers ({took:?})");
    let bytes = tcp.stop();
    let (sent, _) = udp.stop(d);
    let out = ping.wait_with_output().unwrap();
    let stats = PingStats::parse(&String::from_utf8_lossy(&out.stdout)).expect("ping statistics");
    assert_eq!(stats.received, stats.sent, "no ping lost over {rounds} handovers ({took:?})\n{}", d.log());
    assert!(bytes > 0 && sent > 0);
    assert_eq!(xdp_prog_id(node0, "eth0"), prog, "the uplink kept its XDP program (or none)");
    // The successors' footprints are flat (the first two settle the allocator).
    let (fds, rss): (Vec<usize>, Vec<u64>) = footprint.iter().skip(2).copied().unzip();
    let (fd_min, fd_max) = (fds.iter().min().unwrap(), fds.iter().max().unwrap());
    assert!(fd_max - fd_min <= 2, "descriptors grew over the handovers: {fds:?}");
    let (rss_min, rss_max) = (rss.iter().min().unwrap(), rss.iter().max().unwrap());
    assert!(rss_max - rss_min < 16 << 10, "memory grew over the handovers (KiB): {rss:?}");
    // The node still serves requests and forwards: a new pod-to-pod ping.
    let Reply::Endpoints { endpoints } = d.ok(Op::Dump { table: xlane_api::Table::Endpoints }) else { panic!() };
    assert_eq!(endpoints.iter().filter(|p| p.role == "pod").count(), 2, "{endpoints:?}");
    common::ping(&a.ns, far.ip).unwrap();
    if taken_over.is_some() {
        let Reply::Ports { ports } = d.ok(Op::Dump { table: xlane_api::Table::Ports }) else { panic!() };
        let rx = ports.iter().find(|p| p.role == "uplink").and_then(|p| p.udp_rx).expect("receive counters");
        assert!(rx.datagrams > 0 && rx.dropped == 0, "the last successor reads the uplink: {rx:?}");
    }
    eprintln!(
        "{rounds} handovers in {took:?}: {} pings, {sent} datagrams, {bytes} TCP bytes, none lost; fds {fds:?}",
        stats.sent
    );
}

#[test]
fn af_xdp_pods_lose_nothing_over_a_hundred_handovers() {
    handovers_under_load(
        "af_xdp_pods_lose_nothing_over_a_hundred_handovers",
        "xlho",
        VethIo::AfXdp,
        100,
        &["--uplink-rx", "xdp"],
    );
}

#[test]
fn af_packet_pods_lose_nothing_over_handovers() {
    handovers_under_load(
        "af_packet_pods_lose_nothing_over_handovers",
        "xlhp",
        VethIo::AfPacket,
        30,
        &["--uplink-rx", "xdp"],
    );
}

/// The uplink read through packet taps (no XDP program on it; the default on a veth
/// uplink): each successor inherits the taps, with what waits in their rings, and puts
/// its own tcx block beside its predecessor's before that one exits.
#[test]
fn an_uplink_read_through_packet_taps_loses_nothing_over_handovers() {
    let test = "an_uplink_read_through_packet_taps_loses_nothing_over_handovers";
    handovers_under_load(test, "xlht", VethIo::AfPacket, 30, &[]);
}

/// The uplink read through UDP GRO sockets (`--uplink-rx udp`): each successor
/// inherits the sockets, with what waits in them.
#[test]
fn an_uplink_read_through_udp_sockets_loses_nothing_over_handovers() {
    let test = "an_uplink_read_through_udp_sockets_loses_nothing_over_handovers";
    handovers_under_load(test, "xlhu", VethIo::AfPacket, 30, &["--uplink-rx", "udp"]);
}

/// A successor that reads the uplink another way (XDP, where the running one reads
/// UDP sockets) starts cold, saying why; it then forwards.
#[test]
fn a_successor_reading_the_uplink_the_other_way_starts_cold() {
    let test = "a_successor_reading_the_uplink_the_other_way_starts_cold";
    let Some((_serial, mut c)) = setup_io(test, "xlhm", 1, &["--uplink-rx", "udp"], VethIo::AfPacket) else { return };
    let node0 = &c.lab.nodes[0].ns;
    let d = &mut c.daemons[0];
    let flag = d.args.iter().position(|a| a == "--uplink-rx").expect("the flag given");
    d.args[flag + 1] = "xdp".into();
    let old_log = d.take_over(node0, &[]);
    assert!(old_log.contains("through UDP GRO sockets, this one through its XDP program"), "{old_log}");
    assert!(d.log().contains("normal restart"), "{}", d.log());
}

/// A successor speaking another protocol version cannot take over: the running xlaned
/// refuses, saying why, and exits as on SIGTERM (its programs detached); the successor
/// starts cold, saying so, and forwards once its state is given again (the agent's
/// replay, here the test's requests).
#[test]
fn another_protocol_version_gets_a_normal_restart_said_in_the_log() {
    let test = "another_protocol_version_gets_a_normal_restart_said_in_the_log";
    let Some((_serial, mut c)) = setup(test, "xlhv", 1, &[]) else { return };
    let node0 = &c.lab.nodes[0].ns;
    let d = &mut c.daemons[0];
    let old_log = d.take_over(node0, &["--handover-version", "999"]);
    assert!(old_log.contains("handover refused") && old_log.contains("protocol 999"), "{old_log}");
    assert!(old_log.contains("XDP programs detached"), "a normal shutdown: {old_log}");
    // A veth uplink: its driver offers AF_XDP neither zero-copy nor TX checksum metadata.
    assert!(
        old_log.contains("uplink driver's AF_XDP features")
            && old_log.contains("zero_copy=false")
            && old_log.contains("tx_checksum_offload=false"),
        "{old_log}"
    );
    assert!(d.log().contains("normal restart"), "{}", d.log());
    assert_eq!(xdp_prog_id(node0, "eth0"), None, "cold: no program until the VTEP is set");
    let Reply::Endpoints { endpoints } = d.ok(Op::Dump { table: xlane_api::Table::Endpoints }) else { panic!() };
    assert!(endpoints.is_empty(), "cold: {endpoints:?}");
}

/// The upgrade path through systemd (`systemctl reload xlaned` sends SIGHUP): the
/// running xlaned starts the installed binary with its own arguments and
/// `--takeover`, and before it exits tells the service manager the successor's PID
/// (`MAINPID=`); the successor says `READY=1` once it forwards, so the unit follows it.
/// Played here with a notify socket of the test's own.
#[test]
fn sighup_hands_over_to_a_successor_the_service_manager_follows() {
    let test = "sighup_hands_over_to_a_successor_the_service_manager_follows";
    let Some((_serial, mut c)) = setup(test, "xlhs", 1, &[]) else { return };
    let (a, far) = (&c.lab.pods[0], &c.lab.pods[2]);
    let node0 = &c.lab.nodes[0].ns;
    let d = &mut c.daemons[0];
    let notify_path = d.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let next = |what: &str| -> String {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).unwrap_or_else(|e| panic!("no {what} from the service notification: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    // A first successor under the "service manager" (the test's xlaned has none).
    let args: Vec<String> = d.args.iter().cloned().chain(["--takeover".to_owned()]).collect();
    let log = std::fs::File::create(d.dir.join("gen1.log")).unwrap();
    let gen1 = node0
        .command(env!("CARGO_BIN_EXE_xlaned"))
        .args(&args)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let gen1_pid = gen1.id();
    assert_eq!(d.proc.exit_status(Duration::from_secs(10)).map(|s| s.success()), Some(true));
    assert_eq!(next("READY"), format!("READY=1\nMAINPID={gen1_pid}"));

    let ping =
        a.ns.command("ping")
            .args(["-c", "1500", "-i", "0.002", "-W", "2", &far.ip.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let gen1_nix = nix::unistd::Pid::from_raw(i32::try_from(gen1_pid).unwrap());
    nix::sys::signal::kill(gen1_nix, nix::sys::signal::Signal::SIGHUP).unwrap();
    let said = next("the successor's MAINPID, from the old xlaned");
    let gen2_pid: i32 = said.strip_prefix("MAINPID=").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{said}"));
    assert_ne!(u32::try_from(gen2_pid).unwrap(), gen1_pid);
    assert_eq!(next("READY"), format!("READY=1\nMAINPID={gen2_pid}"));
    let mut gen1 = gen1;
    assert!(gen1.wait().unwrap().success(), "the old xlaned exited cleanly");
    let out = ping.wait_with_output().unwrap();
    let stats = PingStats::parse(&String::from_utf8_lossy(&out.stdout)).expect("ping statistics");
    // Stop the successor (not this test's child: by the PID it announced) before the lab goes.
    let gen2 = nix::unistd::Pid::from_raw(gen2_pid);
    nix::sys::signal::kill(gen2, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{gen2_pid}/exe")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let gen1_log = std::fs::read_to_string(d.dir.join("gen1.log")).unwrap_or_default();
    assert!(gen1_log.contains("SIGHUP: a new xlaned takes over"), "{gen1_log}");
    assert!(gen1_log.contains("handed over to the new xlaned"), "{gen1_log}");
    assert_eq!(stats.received, stats.sent, "no ping lost over the SIGHUP handover\n{gen1_log}");
}

/// A handover while a vhost-user guest is connected keeps it forwarding (#18): testpmd's
/// virtio-user port as the VM, answering ARP and pings, is pinged every 2 ms from a pod
/// on the other node across 20 handovers of its node's xlaned: no ping lost, the guest
/// never reconnects (its socket and connection pass from one xlaned to the next), and
/// its port's counters carry on.
#[test]
fn a_connected_vhost_user_guest_keeps_forwarding_across_handovers() {
    use xlane_netlab::dpdk::{TESTPMD, Testpmd};
    let test = "a_connected_vhost_user_guest_keeps_forwarding_across_handovers";
    if !xlane_netlab::privileged_with(test, &[TESTPMD]) {
        return;
    }
    let Some((_serial, mut c)) = setup(test, "xlhu", 1, &[]) else { return };
    let far = &c.lab.pods[2];
    let node0 = &c.lab.nodes[0].ns;
    let o = c.lab.nodes[0].gateway().octets();
    let vm = std::net::Ipv4Addr::new(o[0], o[1], o[2], 250);
    let d = &mut c.daemons[0];
    let sock = d.dir.join("vm.sock");
    let spec = xlane_api::EndpointSpec {
        ifname: "vm0".into(),
        ip: vm,
        mac: xlane_api::Mac([2, 0, 0x0a, 0xf4, 0, 250]),
        vhost_user: Some(sock.clone()),
        veth_io: VethIo::default(),
    };
    let Reply::EndpointReady { gateway_mac, .. } = d.ok(Op::AddEndpoint(spec)) else { panic!("endpoint") };
    let vdev = format!("net_virtio_user0,path={},queues=1,mac=02:00:0a:f4:00:fa", sock.display());
    let app = [
        "--forward-mode=icmpecho",
        "--stats-period=0",
        "--total-num-mbufs=8192",
        &format!("--eth-peer=0,{gateway_mac}"),
    ];
    let mut guest = Testpmd::spawn(None, "0-1", &[&vdev], &app).unwrap();
    guest.wait_forwarding(Duration::from_secs(60)).unwrap();
    common::wait_connected(d, vm, 1);
    assert_eq!(far.ns.ping_stats(&vm.to_string(), 5).unwrap().received, 5, "the guest answers before any handover");

    let rounds = 20u32;
    let mut ping = far
        .ns
        .command("ping")
        .args(["-c", &(rounds * 100 + 1000).to_string(), "-i", "0.002", "-W", "2", &vm.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("iputils ping");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut fds = Vec::new();
    for round in 0..rounds {
        let old_log = d.take_over(node0, &[]);
        assert!(old_log.contains("handed over to the new xlaned"), "round {round}:\n{old_log}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.log().contains("vhost-user frontend taken over") {
            assert!(Instant::now() < deadline, "round {round}: the guest's connection not taken over\n{}", d.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        fds.push(d.fds_and_rss().0);
    }
    let took = t0.elapsed();
    assert!(ping.try_wait().unwrap().is_none(), "the pings ended before the handovers ({took:?})");
    // The guest's connection's descriptors (memory, kicks, calls) pass on, none piles up.
    let (fd_min, fd_max) = (fds.iter().skip(1).min().unwrap(), fds.iter().skip(1).max().unwrap());
    assert!(fd_max - fd_min <= 2, "descriptors grew over the handovers: {fds:?}");
    let out = ping.wait_with_output().unwrap();
    let stats = PingStats::parse(&String::from_utf8_lossy(&out.stdout)).expect("ping statistics");
    assert_eq!(stats.received, stats.sent, "no ping to the guest lost over {rounds} handovers ({took:?})\n{}", d.log());
    let v = common::vhost_port(d, vm).and_then(|p| p.vhost_user).expect("the port is listed");
    assert!(v.connected && v.connections == 1, "the guest never reconnected: {v:?}");
    let echoed = u64::from(stats.sent) + 5;
    assert!(v.from_guest >= echoed && v.to_guest >= echoed, "the counters carried on: {v:?}");
    assert_eq!((v.malformed, v.dropped), (0, 0), "{v:?}");
    let counts = guest.finish();
    assert!(counts.rx >= echoed && counts.tx >= echoed, "the guest answered every ping: {counts:?}");
    eprintln!(
        "{rounds} handovers with a vhost-user guest in {took:?}: {} pings, none lost; {v:?}; fds {fds:?}",
        stats.sent
    );
}

/// Two successors started at once (two reloads in a row): one takes over from the
/// running xlaned, then the other from it — neither starts cold beside a running one —
/// and no ping is lost. An xlaned started without `--takeover` beside a running one is
/// refused (the node's lock), saying how to replace it, and the running one carries on.
#[test]
fn successors_started_together_take_over_in_turn_and_a_cold_start_beside_is_refused() {
    let test = "successors_started_together_take_over_in_turn_and_a_cold_start_beside_is_refused";
    let Some((_serial, mut c)) = setup(test, "xlh2", 1, &[]) else { return };
    let (a, far) = (&c.lab.pods[0], &c.lab.pods[2]);
    let node0 = &c.lab.nodes[0].ns;
    let d = &mut c.daemons[0];
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_xlaned"));

    let cold = xlane_netlab::process::Proc::start(node0, bin, &d.args, d.dir.join("cold.log"));
    let mut cold = cold;
    let status = cold.exit_status(Duration::from_secs(10)).expect("the cold start gave up");
    assert!(!status.success(), "refused: {}", cold.log());
    assert!(cold.log().contains("another xlaned serves") && cold.log().contains("--takeover"), "{}", cold.log());
    assert!(d.client().call(Op::Status).is_ok(), "the running xlaned carries on");

    let ping =
        a.ns.command("ping")
            .args(["-c", "1000", "-i", "0.002", "-W", "2", &far.ip.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let args: Vec<String> = d.args.iter().cloned().chain(["--takeover".to_owned()]).collect();
    let mut b = xlane_netlab::process::Proc::start(node0, bin, &args, d.dir.join("b.log"));
    let mut c2 = xlane_netlab::process::Proc::start(node0, bin, &args, d.dir.join("c.log"));
    let first = d.proc.exit_status(Duration::from_secs(15));
    assert!(first.is_some_and(|s| s.success()), "the running xlaned handed over:\n{}", d.proc.log());
    // One of the two hands over to the other and exits; the other serves on.
    let deadline = Instant::now() + Duration::from_secs(15);
    let survivor = loop {
        match (b.running(), c2.running()) {
            (false, true) => break c2,
            (true, false) => break b,
            (true, true) => assert!(Instant::now() < deadline, "both still run:\n{}\n{}", b.log(), c2.log()),
            (false, false) => panic!("both exited:\n{}\n{}", b.log(), c2.log()),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let logs = format!("{}\n{}", b_or_c_log(&d.dir, "b"), b_or_c_log(&d.dir, "c"));
    assert!(!logs.contains("starting cold") && !logs.contains("normal restart"), "no cold start:\n{logs}");
    assert_eq!(logs.matches("handed over to the new xlaned").count(), 1, "{logs}");
    d.proc = survivor;
    let out = ping.wait_with_output().unwrap();
    let stats = PingStats::parse(&String::from_utf8_lossy(&out.stdout)).expect("ping statistics");
    assert_eq!(stats.received, stats.sent, "no ping lost over both handovers\n{logs}");
    assert!(d.client().call(Op::Status).is_ok(), "the survivor serves the control socket");
    common::ping(&a.ns, far.ip).unwrap();
    let said = |l: &&str| ["took over", "went away", "handed over to", "no xlaned"].iter().any(|k| l.contains(k));
    eprintln!(
        "{} pings, none lost; the successors said:\n{}",
        stats.sent,
        logs.lines().filter(said).collect::<Vec<_>>().join("\n")
    );
}

fn b_or_c_log(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}
