//! Packet trace and capture end to end, as root, in namespaces the tests create: the
//! two-node cluster of `common`, xlanectl against the daemons, iputils ping and
//! Debian's tcpdump reading what xlanectl wrote.

mod common;

use common::{Cluster, Xlaned, setup};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use xlane_api::{CaptureStats, Op, Reply, Table, TraceEntry, TraceHop};
use xlane_netlab::privileged_with;

const TCPDUMP: &str = "/usr/bin/tcpdump";

/// Run xlanectl against `d` with `args`; its output, checked for success.
fn xlanectl(d: &Xlaned, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xlanectl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .expect("run xlanectl");
    assert!(out.status.success(), "xlanectl {args:?}: {}{}", String::from_utf8_lossy(&out.stderr), d.log());
    out
}

/// The port id serving the endpoint with address `ip`.
fn port_of(d: &Xlaned, ip: Ipv4Addr) -> u16 {
    let Reply::Endpoints { endpoints } = d.ok(Op::Dump { table: Table::Endpoints }) else { panic!() };
    endpoints.iter().find(|p| p.ip == Some(ip)).map(|p| p.id).expect("an endpoint with that address")
}

#[test]
fn a_trace_shows_each_stage_of_a_ping_across_nodes() {
    let Some((_serial, Cluster { daemons, lab })) =
        setup("a_trace_shows_each_stage_of_a_ping_across_nodes", "xo-trace", 1, &[])
    else {
        return;
    };
    let (p0, p2) = (&lab.pods[0], &lab.pods[2]);
    let d = &daemons[0];
    let pod_port = port_of(d, p0.ip);
    // Bad requests are refused and the daemon carries on.
    for bad in [&["trace", "start", "--match", "10.0.0.0/33"][..], &["trace", "start", "--port", "999"]] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_xlanectl")).arg("--socket").arg(&d.socket).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} refused");
    }
    let port = pod_port.to_string();
    let out = xlanectl(d, &["trace", "start", "--count", "5", "--port", &port, "--match", "icmp"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("next 5"), "{out:?}");
    p0.ns.ping(&p2.ip.to_string(), 8).unwrap();

    let json = xlanectl(d, &["--json", "trace", "show"]);
    let reply: Reply = serde_json::from_slice(&json.stdout).unwrap();
    let Reply::Trace { active, count, records } = reply else { panic!("{reply:?}") };
    assert_eq!((active, count, records.len()), (false, 5, 5), "{records:#?}");
    let node1 = lab.nodes[1].ip;
    for r in &records {
        let TraceEntry { ingress, role, input, route, output, egress, drop, .. } = r;
        assert_eq!((*ingress, role.as_str(), drop.as_deref()), (pod_port, "pod", None), "{r:#?}");
        let ip = input.ipv4.unwrap();
        assert_eq!((ip.src, ip.dst, ip.proto, input.icmp), (p0.ip, p2.ip, 1, Some((8, 0))), "{r:#?}");
        assert_eq!(*route, Some(TraceHop::Remote { vtep: node1 }), "{r:#?}");
        let tunnel = output.as_ref().and_then(|o| o.outer).expect("encapsulated");
        assert_eq!((tunnel.ipv4.src, tunnel.ipv4.dst, tunnel.vni), (lab.nodes[0].ip, node1, Some(1)));
        assert_eq!(*egress, Some(0), "out on the uplink");
    }
    let text = String::from_utf8(xlanectl(d, &["trace", "show"]).stdout).unwrap();
    eprintln!("{}", text.split("\n\n").take(2).collect::<Vec<_>>().join("\n\n"));
    for want in [
        format!("in on port {pod_port} (pod {})", p0.ip),
        format!("route    {} -> remote VTEP {node1}", p2.ip),
        format!("rewrite  encap vxlan vni 1 {}:", lab.nodes[0].ip),
        "verdict  tx on port 0".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    // The other node traces the decap side: from the uplink to the pod's port.
    xlanectl(&daemons[1], &["trace", "start", "--count", "2", "--match", &format!("{}/32", p0.ip)]);
    p0.ns.ping(&p2.ip.to_string(), 2).unwrap();
    let text = String::from_utf8(xlanectl(&daemons[1], &["trace", "show"]).stdout).unwrap();
    assert!(text.contains("in on port 0 (uplink)") && text.contains("overlay frame to this VTEP"), "{text}");
    assert_eq!(
        String::from_utf8(xlanectl(d, &["trace", "stop"]).stdout).unwrap().trim(),
        "trace stopped; 5 frame(s) traced"
    );
}

/// `xlanectl capture` against `d`, running.
fn capture(d: &Xlaned, args: &[&str], stdout: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_xlanectl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("capture")
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xlanectl capture")
}

/// The capture's counts once it is running (its reader connected).
fn capture_running(d: &Xlaned) -> CaptureStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = d.counters().capture.filter(|s| s.active) {
            return s;
        }
        assert!(Instant::now() < deadline, "the capture never started\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for `child` at most `within`, else stop it (by its PID) and fail.
fn finish(mut child: Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not finish within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop `child` with SIGTERM (by its PID) and reap it.
fn terminate(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

/// Every packet of a pcapng file: (bytes, comment).
fn packets(file: &Path) -> Vec<(Vec<u8>, Option<String>)> {
    let bytes = std::fs::read(file).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).expect("a pcapng section");
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

/// What `tcpdump -n -r file` prints, one line per packet.
fn tcpdump_read(file: &Path) -> Vec<String> {
    let out = Command::new(TCPDUMP).args(["-n", "-r"]).arg(file).output().unwrap();
    assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn a_capture_of_a_1000_packet_ping_reads_back_in_tcpdump() {
    let test = "a_capture_of_a_1000_packet_ping_reads_back_in_tcpdump";
    if !privileged_with(test, &[TCPDUMP]) {
        return;
    }
    let Some((_serial, Cluster { daemons, lab })) = setup(test, "xo-cap", 1, &[]) else { return };
    let (p0, p2, d) = (&lab.pods[0], &lab.pods[2], &daemons[0]);
    let file = d.dir.join("ping.pcapng");
    let port = port_of(d, p0.ip).to_string();
    // The pod's gateway resolved first, so the capture holds the pings alone.
    p0.ns.ping(&p2.ip.to_string(), 1).unwrap();
    let cap = capture(d, &["--port", &port, "--rx", "--count", "1000", "-w", file.to_str().unwrap()], Stdio::null());
    capture_running(d);
    // 1000 echo requests 2 ms apart, their payload a pattern to find again.
    let ping = p0
        .ns
        .command("ping")
        .args(["-c", "1000", "-i", "0.002", "-w", "30", "-p", "c0ffee", &p2.ip.to_string()])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    assert!(finish(cap, Duration::from_secs(20)).success());
    let lines = tcpdump_read(&file);
    assert_eq!(lines.len(), 1000, "{:?}", &lines[..lines.len().min(5)]);
    let request = format!("{} > {}: ICMP echo request", p0.ip, p2.ip);
    assert!(lines.iter().all(|l| l.contains(&request)), "{:?}", lines.iter().find(|l| !l.contains(&request)));
    let got = packets(&file);
    assert_eq!(got.len(), 1000);
    let pattern = [0xc0, 0xff, 0xee, 0xc0, 0xff, 0xee];
    assert!(got.iter().all(|(p, c)| c.is_none() && p.windows(6).any(|w| w == pattern)), "the ping's payload");
    let s = d.counters().capture.unwrap();
    assert_eq!((s.active, s.written, s.lost), (false, 1000, 0));
}

#[test]
fn a_live_capture_pipes_into_tcpdump_and_a_stalled_one_loses_frames_not_pings() {
    let test = "a_live_capture_pipes_into_tcpdump_and_a_stalled_one_loses_frames_not_pings";
    if !privileged_with(test, &[TCPDUMP]) {
        return;
    }
    let Some((_serial, Cluster { daemons, lab })) = setup(test, "xo-live", 1, &[]) else { return };
    let (p0, p2, d) = (&lab.pods[0], &lab.pods[2], &daemons[0]);
    let port = port_of(d, p0.ip).to_string();

    // Live: tcpdump prints frames while the capture (no count) still runs.
    let mut cap = capture(d, &["--port", &port, "-w", "-"], Stdio::piped());
    let mut tcpdump = Command::new(TCPDUMP)
        .args(["-n", "-l", "-r", "-"])
        .stdin(Stdio::from(cap.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    capture_running(d);
    // tcpdump's lines as they come (read to the end, so tcpdump never meets a closed pipe).
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn({
        let out = tcpdump.stdout.take().unwrap();
        move || BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(line_tx.send(l)))
    });
    p0.ns.ping(&p2.ip.to_string(), 5).unwrap();
    let requests: Vec<String> = (0..3)
        .map(|_| line_rx.recv_timeout(Duration::from_secs(10)).expect("tcpdump shows frames while the capture runs"))
        .collect();
    assert!(cap.try_wait().unwrap().is_none(), "the capture was still running");
    assert!(requests.iter().any(|l| l.contains("ICMP echo request")), "{requests:?}");
    terminate(cap);
    reader.join().unwrap();
    assert!(finish(tcpdump, Duration::from_secs(10)).success(), "tcpdump ends with the stream");
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.counters().capture.is_some_and(|s| s.active) {
        assert!(Instant::now() < deadline, "the capture outlived its reader");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Stalled: xlanectl writes into a pipe nobody reads. Forwarding does not notice.
    let stalled = capture(d, &["--port", &port, "--rx", "--tx", "-w", "-"], Stdio::piped());
    capture_running(d);
    let stats = p0
        .ns
        .command("ping")
        .args(["-c", "3000", "-i", "0.002", "-s", "1200", "-w", "30", &p2.ip.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("3000 packets transmitted, 3000 received"), "{text}");
    let s = d.counters().capture.unwrap();
    assert!(s.active && s.lost > 0, "the capture lost frames, counted: {s:?}");
    terminate(stalled);
}

#[test]
fn a_drop_capture_shows_a_spoofed_frame_with_its_reason() {
    let test = "a_drop_capture_shows_a_spoofed_frame_with_its_reason";
    if !privileged_with(test, &[TCPDUMP]) {
        return;
    }
    let Some((_serial, Cluster { daemons, lab })) = setup(test, "xo-drop", 1, &[]) else { return };
    let (p0, p2, d) = (&lab.pods[0], &lab.pods[2], &daemons[0]);
    let file = d.dir.join("drops.pcapng");
    let port = port_of(d, p0.ip).to_string();
    let cap = capture(d, &["--port", &port, "--drops", "--count", "1", "-w", file.to_str().unwrap()], Stdio::null());
    capture_running(d);
    // Legitimate traffic is not a drop; a source the pod does not own is.
    p0.ns.ping(&p2.ip.to_string(), 2).unwrap();
    p0.ns.ip(&["addr", "add", "10.244.1.77/32", "dev", "eth0"]).unwrap();
    let spoofer = p0.ns.enter(|| UdpSocket::bind("10.244.1.77:0")).unwrap().unwrap();
    spoofer.send_to(b"spoofed", SocketAddrV4::new(p2.ip, 6001)).unwrap();
    assert!(finish(cap, Duration::from_secs(10)).success());
    let lines = tcpdump_read(&file);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("10.244.1.77.") && lines[0].contains(&format!("{}.6001: UDP", p2.ip)), "{lines:?}");
    let got = packets(&file);
    assert_eq!(got[0].1.as_deref(), Some("drop: spoofed_source"));
    assert!(got[0].0.ends_with(b"spoofed"));
}
