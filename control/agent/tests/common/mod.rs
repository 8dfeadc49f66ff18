//! Test harness shared by the agent's end-to-end tests.
#![allow(dead_code, reason = "each test file uses part of the harness")]
#![allow(unreachable_pub, reason = "a module shared by test crates")]

use std::net::Ipv4Addr;
use std::path::Path;
use xlane_api::{Client, Op, Reply, Table};
use xlane_netlab::Netns;
use xlane_netlab::cluster::Cluster;
pub use xlane_netlab::process::wait_for;

pub fn routes(sock: &Path) -> Vec<String> {
    match Client::connect(sock).unwrap().call(Op::Dump { table: Table::Routes }).unwrap() {
        Reply::Routes { routes } => routes.iter().map(|r| format!("{} via {}", r.prefix, r.via)).collect(),
        r => panic!("{r:?}"),
    }
}

pub fn ping(ns: &Netns, dst: Ipv4Addr) -> bool {
    ns.ping(&dst.to_string(), 2).is_ok()
}

/// Do what the CNI plugin does for a pod on `node`: allocate through its agent, create
/// the pod in the lab with that address, attach it. Returns the pod's index in
/// `cluster.lab.pods`.
pub fn attach_pod(cluster: &mut Cluster, node: usize, cid: &str) -> usize {
    use xlane_agent::api::{AgentOp, AgentReply};
    let mut c = cluster.agent(node).unwrap();
    let AgentReply::Allocated { ip, gateway, mtu, .. } =
        c.call(AgentOp::Add { container_id: cid.into(), ifname: "eth0".into(), netns: None, ip: None }).unwrap()
    else {
        panic!("allocation failed")
    };
    assert_eq!(mtu, 1450);
    let k = cluster.lab.add_pod_at(node, ip.addr(), ip.prefix_len(), gateway).unwrap();
    let pod = &cluster.lab.pods[k];
    let r = c
        .call(AgentOp::Attach {
            container_id: cid.into(),
            ifname: "eth0".into(),
            host_if: pod.host_if.clone(),
            mac: pod.mac.parse().unwrap(),
            vhost_user: None,
            veth_io: Default::default(),
        })
        .unwrap();
    assert!(matches!(r, AgentReply::Attached { .. }), "{r:?}");
    k
}
