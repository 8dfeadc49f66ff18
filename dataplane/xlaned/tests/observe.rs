//! Packet trace and capture end to end, as root, in namespaces the tests create: the
//! two-node cluster of `common`, xlanectl against the daemons, iputils ping and
//! Debian's tcpdump reading what xlanectl wrote.

mod common;

use common::{Cluster, Xlaned, setup};
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use xlane_api::{Op, Reply, Table, TraceEntry, TraceHop};

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
