//! Workers and queues (#16 item 2), as root in namespaces the tests create: every
//! worker serves its share of every port's queues and transmits on its own; a port with
//! fewer queues than workers is still reached by every worker; `--uplink-queues` serves
//! exactly the queues it names (on a PF the operator steers VXLAN there with ethtool).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::{SocketAddrV4, UdpSocket};
use std::time::Duration;
use xlane_api::{Counters, Op, Reply, Table, WorkerCounters};
use xlane_netlab::{Lab, privileged};

fn drops(c: &Counters) -> BTreeMap<String, u64> {
    c.drops.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect()
}

/// Two workers, pinned, each serving its own queue of every two-queue port; flows spread
/// over both (RSS on veth follows the sender's queue), and nothing is lost or misrouted.
#[test]
fn two_workers_share_the_queues() {
    let Some((_serial, Cluster { daemons, lab })) =
        setup("two_workers_share_the_queues", "xe-rss", 2, &["--workers", "2", "--cores", "0,1", "--uplink-rx", "xdp"])
    else {
        return;
    };
    let (p0, p1, p2) = (&lab.pods[0], &lab.pods[1], &lab.pods[2]);
    ping(&p0.ns, p2.ip).unwrap();
    ping(&p2.ns, p1.ip).unwrap();
    ping(&lab.nodes[1].ns, p0.ip).unwrap();
    let Reply::Ports { ports } = daemons[0].ok(Op::Dump { table: Table::Ports }) else { panic!() };
    assert!(ports.iter().all(|p| p.queues == 2), "{ports:?}");
    // Many TCP flows at once; each must arrive intact.
    tcp_flows(p0, p2, 5002, 8, 8);
    let per_worker = daemons[1].counters().worker_rx;
    eprintln!("frames per worker on the receiving node: {per_worker:?}");
    assert!(per_worker.len() == 2 && per_worker.iter().all(|&n| n > 0), "both workers forward: {per_worker:?}");
    for (i, d) in daemons.iter().enumerate() {
        let c = d.counters();
        assert!(conserved(&c), "node {i}: {:?} drops {:?}", c.pipeline, drops(&c));
        assert!(c.workers.iter().all(WorkerCounters::conserved), "node {i}, each worker: {:?}", c.workers);
    }
}

/// A pod veth of one queue on a node of two workers and a two-queue uplink: flows from
/// the other node arrive on both workers, and the worker without a queue of the pod's
/// veth sends to it through a socket that only transmits. Nothing is stranded or lost,
/// every worker accounts for its frames.
#[test]
fn a_pod_with_fewer_queues_than_workers_is_served_by_every_worker() {
    if !privileged("a_pod_with_fewer_queues_than_workers_is_served_by_every_worker") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lab = Lab::with_queues("xe-few", 2, 2).unwrap();
    lab.set_pod_queues(1);
    let Cluster { daemons, lab } = cluster_on(
        lab,
        "xe-few",
        &["--workers", "2", "--cores", "0,1", "--uplink-rx", "xdp"],
        xlane_api::VethIo::AfXdp,
    );
    let (p0, p2) = (&lab.pods[0], &lab.pods[2]);
    let Reply::Ports { ports } = daemons[0].ok(Op::Dump { table: Table::Ports }) else { panic!() };
    let queues = |ifname: &str| ports.iter().find(|p| p.ifname == ifname).map(|p| p.queues);
    assert_eq!((queues("eth0"), queues(&p0.host_if)), (Some(2), Some(1)), "{ports:?}");
    ping(&p2.ns, p0.ip).unwrap();
    ping(&p0.ns, p2.ip).unwrap();
    tcp_flows(p2, p0, 5003, 8, 4);
    let c = daemons[0].counters();
    eprintln!("node 0 workers: {:?}", c.workers);
    assert!(c.workers.len() == 2 && c.workers.iter().all(|w| w.rx > 0), "both workers forward: {:?}", c.workers);
    assert!(c.workers.iter().all(WorkerCounters::conserved), "each worker: {:?}", c.workers);
    assert_eq!(c.drops.values().sum::<u64>(), 0, "{:?}", drops(&c));
    let pod = c.ports.iter().find(|p| p.ifname == p0.host_if).unwrap();
    assert_eq!(pod.tx_ring_full, 0, "{pod:?}");
}

/// `--uplink-queues 1` on a node whose uplink has two: flows the fabric delivers to
/// queue 1 reach its pod through xlane, whole; flows on queue 0 are the kernel's (which
/// has no VXLAN device here, so they end there) — none is split between the two. On veth
/// the receiving queue follows the sending worker's queue, so node 0 runs two workers and
/// the pod's flows spread over them by its own hash.
#[test]
fn uplink_queues_serves_exactly_the_queues_it_names() {
    if !privileged("uplink_queues_serves_exactly_the_queues_it_names") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = Lab::with_queues("xe-uq", 2, 2).unwrap();
    let Cluster { daemons, lab } = cluster_nodes(
        lab,
        "xe-uq",
        &[&["--workers", "2", "--cores", "0,1", "--uplink-rx", "xdp"], &["--uplink-queues", "1", "--uplink-rx", "xdp"]],
        xlane_api::VethIo::AfXdp,
    );
    let (p0, p2) = (&lab.pods[0], &lab.pods[2]);
    let Reply::Ports { ports } = daemons[1].ok(Op::Dump { table: Table::Ports }) else { panic!() };
    let uplink = ports.iter().find(|p| p.role == "uplink").unwrap();
    assert_eq!(uplink.queues, 1, "{uplink:?}");
    const FLOWS: u16 = 32;
    const EACH: u16 = 20;
    let rx = p2.ns.enter(|| UdpSocket::bind(SocketAddrV4::new(p2.ip, 7100))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    for f in 0..FLOWS {
        // A socket per flow: each picks its queue of the pod's veth by its own hash.
        let tx = p0.ns.enter(|| UdpSocket::bind(SocketAddrV4::new(p0.ip, 20_000 + f))).unwrap().unwrap();
        for k in 0..EACH {
            tx.send_to(&[f.to_be_bytes(), k.to_be_bytes()].concat(), SocketAddrV4::new(p2.ip, 7100)).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let mut per_flow = vec![0u16; usize::from(FLOWS)];
    let mut buf = [0u8; 64];
    while let Ok((4, _)) = rx.recv_from(&mut buf) {
        per_flow[usize::from(u16::from_be_bytes([buf[0], buf[1]]))] += 1;
    }
    eprintln!("datagrams per flow through node 1's queue 1: {per_flow:?}");
    assert!(per_flow.iter().all(|&n| n == 0 || n == EACH), "each flow whole or not at all: {per_flow:?}");
    assert!(per_flow.contains(&0) && per_flow.contains(&EACH), "flows on both queues: {per_flow:?}");
    let c = daemons[1].counters();
    let through: u64 = per_flow.iter().map(|&n| u64::from(n)).sum();
    assert_eq!(c.pipeline["decapsulated"], through, "xlane saw only queue 1's flows");
    assert!(conserved(&c), "{:?} drops {:?}", c.pipeline, drops(&c));
}
