//! The offload path's ceilings: xlane's default pod attachment (`veth-offload`: the
//! pods keep TSO/GSO) with the engine doing nothing but forwarding. A relay per node
//! ([`forward::packet_relay`]) on xlaned's own pod sockets (AF_PACKET, virtio-net
//! header, receive ring, the pod pinhole) moves frames and whole super-packets between
//! a pod's host veth and the uplink, MACs rewritten: no lookup, no encapsulation, so no
//! segmentation to the wire MTU and no coalescing either. TCP across two nodes (one
//! and four streams) and between two pods of one node (one stream), on the standard
//! underlay and, if asked, the jumbo one. What xlane's defaults reach beside this is
//! what its own work costs; what this reaches beside the kernel's paths is what the
//! sockets cost. No packet rate: small frames leave xlane's nodes through AF_XDP and
//! taps, not these sockets, so a 64-byte rate here would bound nothing of xlane's (the
//! two-node relay, [`forward::xlane_relay_both`], is that path's ceiling).

use crate::bench::{self, Forwarder, IoResult, JUMBO_MTU, JumboTcp, Workload};
use crate::forward;
use std::sync::atomic::AtomicBool;
use xlane_netlab::topology::{Lab, UPLINK_MTU};
use xlane_netlab::{Netns, topology::Pod};
use xlane_wire::Mac;

/// Measure the offload ceilings with `w` (the jumbo underlay too if `w.jumbo`).
///
/// # Errors
/// Setup failures, a relay failing, nothing arriving, `stop`.
pub fn measure(w: Workload, stop: &AtomicBool) -> anyhow::Result<IoResult> {
    let standard = on_underlay(UPLINK_MTU, w, stop)?;
    let jumbo = if w.jumbo { Some(on_underlay(JUMBO_MTU, w, stop)?) } else { None };
    Ok(IoResult {
        forwarder: Forwarder::XlaneOffloadRelay,
        tcp1_gbit: Some(standard.tcp1_gbit),
        tcp4_gbit: Some(standard.tcp4_gbit),
        tcp1_local_gbit: Some(standard.tcp1_local_gbit),
        jumbo,
        ..IoResult::NONE
    })
}

/// TCP through the relays on an underlay of MTU `mtu`.
fn on_underlay(mtu: u16, w: Workload, stop: &AtomicBool) -> anyhow::Result<JumboTcp> {
    let mut lab = Lab::with_mtu("xbq", 2, 1, mtu)?;
    let (a, b, c) = (lab.add_pod_with(0, true)?, lab.add_pod_with(1, true)?, lab.add_pod_with(0, true)?);
    let (n0, n1) = (&lab.nodes[0], &lab.nodes[1]);
    let (pa, pb, pc) = (&lab.pods[a], &lab.pods[b], &lab.pods[c]);
    let mac = |ns: &Netns, dev: &str| -> anyhow::Result<Mac> { Ok(ns.mac(dev)?.parse()?) };
    for (pod, node) in [(pa, n0), (pb, n1), (pc, n0)] {
        forward::pin_neighbour(&pod.ns, node.gateway(), &node.ns.mac(&pod.host_if)?)?;
    }
    // The two pods of node 0 share a subnet: each reaches the other through its own host
    // veth too.
    for (from, to) in [(pa, pc), (pc, pa)] {
        forward::pin_neighbour(&from.ns, to.ip, &n0.ns.mac(&from.host_if)?)?;
    }
    let (up0, up1) = (mac(&n0.ns, "eth0")?, mac(&n1.ns, "eth0")?);
    let to_pod =
        |pod: &Pod, ns: &Netns| -> anyhow::Result<(Mac, Mac)> { Ok((pod.mac.parse()?, mac(ns, &pod.host_if)?)) };
    let across = [
        (&n0.ns, [pa.host_if.as_str(), "eth0"], [to_pod(pa, &n0.ns)?, (up1, up0)]),
        (&n1.ns, [pb.host_if.as_str(), "eth0"], [to_pod(pb, &n1.ns)?, (up0, up1)]),
    ];
    let one_node = [(&n0.ns, [pa.host_if.as_str(), pc.host_if.as_str()], [to_pod(pa, &n0.ns)?, to_pod(pc, &n0.ns)?])];
    let (tcp1, tcp4) = relayed(&across, stop, || {
        let tcp1 = bench::iperf3(&pa.ns, &pb.ns, pb.ip, 1, w.tcp_seconds)?.gbit;
        let tcp4 = bench::iperf3(&pa.ns, &pb.ns, pb.ip, 4, w.tcp_seconds)?.gbit;
        eprintln!("      MTU {mtu}: iperf3 1 and 4 streams across nodes {tcp1:.2} / {tcp4:.2} Gbit/s");
        Ok((tcp1, tcp4))
    })?;
    let local = relayed(&one_node, stop, || {
        let local = bench::iperf3(&pa.ns, &pc.ns, pc.ip, 1, w.tcp_seconds)?.gbit;
        eprintln!("      MTU {mtu}: iperf3 between two pods of node 0 {local:.2} Gbit/s");
        Ok(local)
    })?;
    anyhow::ensure!(tcp1 > 0.0 && local > 0.0, "the offload relay: no TCP crossed ({tcp1}, {local} Gbit/s)");
    Ok(JumboTcp { tcp1_gbit: tcp1, tcp4_gbit: tcp4, tcp1_local_gbit: local })
}

/// Where a relay runs: a namespace, its two interfaces, the MACs for frames leaving each.
type Leg<'a> = (&'a Netns, [&'a str; 2], [(Mac, Mac); 2]);

/// Run `measure` while [`forward::packet_relay`] serves each of `legs`.
fn relayed<T>(legs: &[Leg<'_>], stop: &AtomicBool, measure: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    forward::while_relaying(legs, |&(ns, ifs, macs), s| forward::packet_relay(ns, ifs, macs, s), stop, measure)
}
