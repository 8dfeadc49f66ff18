//! Pods whose veths keep their offloads (`veth_io: af_packet`), end to end as root in
//! namespaces: the pod's TCP stack hands xlane 64 KiB super-packets, which travel
//! whole between pods of one node and leave it through the uplink's UDP GSO sockets
//! (one buffer, cut into datagrams by the host's stack), or, with those off, cut into
//! segments by the engine (encapsulated each); the receiving node merges the segments
//! back before the pod. Every transfer is checked byte for byte, both ways, across
//! nodes and on one node.

mod common;

use common::*;
use std::collections::BTreeMap;
use xlane_api::{Op, PortInfo, Reply, Table, VethIo};

fn pod_ports(d: &Xlaned) -> Vec<PortInfo> {
    let Reply::Ports { ports } = d.ok(Op::Dump { table: Table::Ports }) else { panic!() };
    ports.into_iter().filter(|p| p.role == "pod").collect()
}

fn uplink(d: &Xlaned) -> PortInfo {
    let Reply::Ports { ports } = d.ok(Op::Dump { table: Table::Ports }) else { panic!() };
    ports.into_iter().find(|p| p.role == "uplink").expect("an uplink")
}

fn nonzero(m: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    m.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect()
}

#[test]
fn offloading_pods_move_tcp_as_super_packets_intact_both_ways() {
    let Some((_serial, Cluster { daemons, lab })) =
        setup_io("offloading_pods_move_tcp_as_super_packets_intact_both_ways", "xe-gso", 1, &[], VethIo::AfPacket)
    else {
        return;
    };
    let (p0, p1, p2) = (&lab.pods[0], &lab.pods[1], &lab.pods[2]);
    for d in &daemons {
        assert!(pod_ports(d).iter().all(|p| p.packet.is_some()), "{:?}", pod_ports(d));
    }

    // ARP (answered by the engine's proxy: the node's stack sees none of the pod's
    // frames), ICMP both ways, on one node and across nodes.
    ping(&p0.ns, p2.ip).unwrap();
    ping(&p2.ns, p0.ip).unwrap();
    ping(&p0.ns, p1.ip).unwrap();
    ping(&lab.nodes[0].ns, p0.ip).unwrap();
    // Out of the cluster: the host's (the tcx pinhole passes it, the socket filter keeps
    // it from the engine): the pod reaches the node's own address.
    ping(&p0.ns, lab.nodes[0].ip).unwrap();
    let no_route = daemons[0].counters().drops["no_route"];
    assert_eq!(no_route, 0, "the engine never saw the host's traffic");

    let gbit = |mib: u64, secs: f64| (mib << 20) as f64 * 8.0 / secs / 1e9;
    let across = tcp_transfer(&p0.ns, &p2.ns, p2.ip, 5101, 1024);
    eprintln!("1 GiB pod→pod across nodes: {:.2} Gbit/s", gbit(1024, across));
    let back = tcp_transfer(&p2.ns, &p0.ns, p0.ip, 5102, 256);
    eprintln!("256 MiB back across nodes: {:.2} Gbit/s", gbit(256, back));
    let local = tcp_transfer(&p0.ns, &p1.ns, p1.ip, 5103, 512);
    eprintln!("512 MiB pod→pod on one node: {:.2} Gbit/s", gbit(512, local));
    let local_back = tcp_transfer(&p1.ns, &p0.ns, p0.ip, 5104, 128);
    eprintln!("128 MiB back on one node: {:.2} Gbit/s", gbit(128, local_back));

    let (a, b) = (daemons[0].counters(), daemons[1].counters());
    for (i, c) in [&a, &b].into_iter().enumerate() {
        assert!(conserved(c), "node {i}: {:?} drops {:?}", c.pipeline, nonzero(&c.drops));
        assert_eq!(c.drops["super_packet"], 0, "node {i}: {:?}", nonzero(&c.offload_errors));
    }
    // Node 0's pods sent super-packets: whole between its pods, and to node 1 through
    // the uplink's UDP GSO sockets, never cut by the engine; node 1 likewise back.
    assert!(a.pipeline["gso_packets"] > 0, "{:?}", a.pipeline);
    for (i, d) in daemons.iter().enumerate() {
        let gso = uplink(d).udp_gso.unwrap_or_else(|| panic!("node {i}: no UDP GSO on the uplink\n{}", d.log()));
        assert!(gso.super_packets > 0 && gso.datagrams > 2 * gso.super_packets, "node {i}: {gso:?}");
        assert_eq!(gso.failed, 0, "node {i}");
    }
    assert_eq!(a.pipeline["gso_segments"], 0, "{:?}", a.pipeline);
    // Node 1 merged the segments it decapsulated before writing them to its pod, and
    // node 0 did the same for the way back.
    for (i, d) in daemons.iter().enumerate() {
        let merged: u64 = pod_ports(d).iter().filter_map(|p| p.packet).map(|k| k.gro_merged).sum();
        assert!(merged > 0, "node {i}: no GRO: {:?}", pod_ports(d));
        let malformed: u64 = pod_ports(d).iter().filter_map(|p| p.packet).map(|k| k.rx_malformed).sum();
        assert_eq!(malformed, 0, "node {i}");
    }
    // Removing a pod closes its sockets and lifts the block: attaching it again works.
    daemons[0].ok(Op::DelEndpoint { ip: p1.ip });
    assert!(ping(&p0.ns, p1.ip).is_err(), "detached");
    let spec = xlane_api::EndpointSpec {
        ifname: p1.host_if.clone(),
        ip: p1.ip,
        mac: mac(&p1.mac),
        vhost_user: None,
        veth_io: VethIo::AfPacket,
    };
    let r = daemons[0].ok(Op::AddEndpoint(spec));
    assert!(matches!(r, Reply::EndpointReady { .. }), "{r:?}");
    ping(&p0.ns, p1.ip).unwrap();
}

/// With the uplink's UDP GSO sockets off, the engine cuts each super-packet into
/// encapsulated AF_XDP frames itself; the byte stream arrives as intact.
#[test]
fn without_udp_gso_the_engine_cuts_super_packets_for_the_uplink() {
    let Some((_serial, Cluster { daemons, lab })) = setup_io(
        "without_udp_gso_the_engine_cuts_super_packets_for_the_uplink",
        "xe-cut",
        1,
        &["--uplink-udp-gso", "false"],
        VethIo::AfPacket,
    ) else {
        return;
    };
    let (p0, p2) = (&lab.pods[0], &lab.pods[2]);
    tcp_transfer(&p0.ns, &p2.ns, p2.ip, 5111, 256);
    tcp_transfer(&p2.ns, &p0.ns, p0.ip, 5112, 64);
    for (i, d) in daemons.iter().enumerate() {
        let up = uplink(d);
        assert_eq!(up.udp_gso, None, "node {i}");
        // veth offers no checksum requests (--xsk-tx-checksum auto): every segment
        // leaves complete, summed by the engine.
        let umem = up.umem.expect("an AF_XDP port");
        assert_eq!((umem.tx_checksum, umem.partial_csum), (None, 0), "node {i}");
        let c = d.counters();
        assert!(conserved(&c), "node {i}: {:?} drops {:?}", c.pipeline, nonzero(&c.drops));
        assert_eq!(c.drops["super_packet"], 0, "node {i}: {:?}", nonzero(&c.offload_errors));
        assert!(c.pipeline["gso_segments"] > c.pipeline["gso_packets"], "node {i}: {:?}", c.pipeline);
    }
}

/// With checksum requests on the uplink's UMEM (`--xsk-tx-checksum software`: the
/// kernel completes them as it copies each frame, the one mode whose result veth can
/// show), the engine cuts super-packets without summing their payloads and every
/// segment leaves with its TCP checksum partial; the byte stream arrives intact.
#[test]
fn with_checksum_requests_segments_leave_partial_and_arrive_complete() {
    let Some((_serial, Cluster { daemons, lab })) = setup_io(
        "with_checksum_requests_segments_leave_partial_and_arrive_complete",
        "xe-csum",
        1,
        &["--uplink-udp-gso", "false", "--xsk-tx-checksum", "software"],
        VethIo::AfPacket,
    ) else {
        return;
    };
    let (p0, p2) = (&lab.pods[0], &lab.pods[2]);
    tcp_transfer(&p0.ns, &p2.ns, p2.ip, 5121, 256);
    tcp_transfer(&p2.ns, &p0.ns, p0.ip, 5122, 64);
    for (i, d) in daemons.iter().enumerate() {
        let up = uplink(d);
        let umem = up.umem.expect("an AF_XDP port");
        assert_eq!(umem.tx_checksum.as_deref(), Some("software"), "node {i}");
        let c = d.counters();
        assert!(conserved(&c), "node {i}: {:?} drops {:?}", c.pipeline, nonzero(&c.drops));
        assert_eq!(c.drops["super_packet"], 0, "node {i}: {:?}", nonzero(&c.offload_errors));
        assert!(c.pipeline["gso_segments"] > c.pipeline["gso_packets"], "node {i}: {:?}", c.pipeline);
        // Every segment the engine cut for the uplink went with a request.
        assert_eq!(umem.partial_csum, c.pipeline["gso_segments"], "node {i}");
    }
    let out = daemons[0].ctl(&["ports"]);
    assert!(out.contains("TX checksum requests (software completes them)"), "{out}");
}

/// Ping of `size` bytes of payload, DF set (never fragmented), three times.
fn ping_size(ns: &xlane_netlab::Netns, dst: std::net::Ipv4Addr, size: u32) {
    ns.ping_unfragmented(&dst.to_string(), size, 3).unwrap_or_else(|e| panic!("{e}"));
}

/// A jumbo underlay (MTU 9000): pods get 8950; frames larger than an AF_XDP buffer
/// arrive at the uplink in several (multi-buffer) and leave through the UDP GSO
/// sockets whole; TCP super-packets are cut into 8900-byte segments and merged again
/// in front of the receiving pod.
#[test]
fn a_jumbo_underlay_carries_pods_at_mtu_8950() {
    if !xlane_netlab::privileged("a_jumbo_underlay_carries_pods_at_mtu_8950") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Cluster { daemons, lab } = cluster_mtu("xe-jumbo", 1, &[], VethIo::AfPacket, 9000);
    let (p0, p1, p2) = (&lab.pods[0], &lab.pods[1], &lab.pods[2]);
    // Packets of 8950 bytes, the pod MTU (frames of 8964, 9014 on the wire), every way.
    ping_size(&p0.ns, p2.ip, 8922);
    ping_size(&p2.ns, p0.ip, 8922);
    ping_size(&p0.ns, p1.ip, 8922);
    // One byte more does not fit the pod's MTU: the pod's own stack refuses it.
    assert!(p0.ns.ping_unfragmented(&p2.ip.to_string(), 8923, 1).is_err(), "a packet beyond the pod MTU left the pod");

    tcp_transfer(&p0.ns, &p2.ns, p2.ip, 5121, 512);
    tcp_transfer(&p2.ns, &p0.ns, p0.ip, 5122, 128);
    tcp_transfer(&p0.ns, &p1.ns, p1.ip, 5123, 128);
    for (i, d) in daemons.iter().enumerate() {
        let c = d.counters();
        assert!(conserved(&c), "node {i}: {:?} drops {:?}", c.pipeline, nonzero(&c.drops));
        for reason in ["super_packet", "mtu_exceeded", "truncated"] {
            assert_eq!(c.drops[reason], 0, "node {i}: {:?} {:?}", nonzero(&c.drops), nonzero(&c.offload_errors));
        }
        let gso = uplink(d).udp_gso.expect("UDP GSO on the uplink");
        assert!(gso.super_packets > 0 && gso.failed == 0, "node {i}: {gso:?}");
    }
    // Jumbo frames of a flow that arrive in one burst reach the pod merged (GRO), as
    // the kernel would hand them over, not one send per 9000-byte frame.
    let merged: u64 = pod_ports(&daemons[1]).iter().filter_map(|p| p.packet).map(|k| k.gro_merged).sum();
    assert!(merged > 0, "no jumbo frames merged for the receiving pod: {:?}", pod_ports(&daemons[1]));
}

/// `--uplink-rx udp`: no XDP program on the uplink, its VXLAN traffic read through UDP
/// GRO sockets, so a peer's GSO sends arrive whole. On a jumbo underlay (datagrams
/// larger than a buffer go through the jumbo store) between two such nodes, and at MTU
/// 1500 beside a node that receives through XDP and AF_XDP (the two interoperate on
/// the wire): pings of every size the pods take and TCP byte for byte, both ways.
#[test]
fn an_uplink_without_xdp_receives_through_udp_gro_sockets() {
    if !xlane_netlab::privileged("an_uplink_without_xdp_receives_through_udp_gro_sockets") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let udp: &[&str] = &["--uplink-rx", "udp"];
    for (mtu, flags) in [(9000, [udp, udp]), (1500, [udp, &[][..]])] {
        let lab = xlane_netlab::Lab::with_mtu("xe-udprx", 2, 1, mtu).unwrap();
        let Cluster { daemons, lab } = cluster_nodes(lab, "xe-udprx", &flags, VethIo::AfPacket);
        let (p0, p1, p2) = (&lab.pods[0], &lab.pods[1], &lab.pods[2]);
        let largest = u32::from(mtu) - 50 - 28;
        ping_size(&p0.ns, p2.ip, largest);
        ping_size(&p2.ns, p0.ip, largest);
        ping_size(&p0.ns, p2.ip, 56);
        ping_size(&p0.ns, p1.ip, 56);
        tcp_transfer(&p0.ns, &p2.ns, p2.ip, 5131, 256);
        tcp_transfer(&p2.ns, &p0.ns, p0.ip, 5132, 128);
        for (i, d) in daemons.iter().enumerate() {
            let c = d.counters();
            assert!(conserved(&c), "MTU {mtu} node {i}: {:?} drops {:?}", c.pipeline, nonzero(&c.drops));
            for reason in ["super_packet", "mtu_exceeded", "truncated", "not_vxlan"] {
                assert_eq!(c.drops[reason], 0, "MTU {mtu} node {i}: {:?}", nonzero(&c.drops));
            }
            let up = uplink(d);
            let node = &lab.nodes[i];
            let attached = node.ns.has_xdp(&node.uplink).unwrap();
            match up.udp_rx {
                Some(rx) => {
                    assert!(!attached, "MTU {mtu} node {i}: an XDP program on the uplink");
                    assert!(rx.datagrams > rx.messages && rx.dropped == 0, "MTU {mtu} node {i}: {rx:?}");
                    // Jumbo datagrams are handed out where the kernel wrote them.
                    assert_eq!(rx.in_place > 0, mtu == 9000, "MTU {mtu} node {i}: {rx:?}");
                }
                None => assert!(attached && flags[i].is_empty(), "MTU {mtu} node {i}: no UDP receive"),
            }
        }
        let out = daemons[0].ctl(&["ports"]);
        assert!(out.contains("UDP GRO receive:"), "{out}");
    }
}
