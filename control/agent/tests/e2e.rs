//! xlane-agent end to end (as root, in namespaces): agents on three lab nodes share a
//! file datastore, each feeding its node's xlaned; pods get addresses and attachment
//! through the agent's API, as the CNI plugin will.

mod common;

use common::{attach_pod, ping, routes, wait_for};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use xlane_agent::api::{AgentOp, AgentReply};
use xlane_agent::lease::LeaseAttrs;
use xlane_agent::store::file::FileStore;
use xlane_api::{Client, Op, Reply};
use xlane_netlab::cluster::{Cluster, ClusterOptions, Datastore, agent_args};
use xlane_netlab::process::Proc;
use xlane_netlab::{privileged, workspace_binary};

static SERIAL: Mutex<()> = Mutex::new(());
const TTL: u32 = 4;

fn cluster(prefix: &str, nodes: u8) -> Cluster {
    let opts = ClusterOptions { lease_ttl: TTL, ..ClusterOptions::default() };
    Cluster::start(prefix, nodes, &opts).unwrap()
}

fn leases(c: &Cluster, i: usize) -> Vec<String> {
    match c.agent(i).unwrap().call(AgentOp::Status).unwrap() {
        AgentReply::Status { leases, .. } => leases.iter().map(|l| format!("{}={}", l.subnet, l.public_ip)).collect(),
        r => panic!("{r:?}"),
    }
}

#[test]
fn three_agents_leases_routes_expiry_and_flannel_leases() {
    if !privileged("three_agents_leases_routes_expiry_and_flannel_leases") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut c = cluster("xa-three", 3);
    // Every agent sees all three leases; every xlaned has a route to the two others.
    wait_for("three leases everywhere", Duration::from_secs(5), || (0..3).all(|i| leases(&c, i).len() == 3));
    for n in &c.nodes {
        wait_for("two routes", Duration::from_secs(5), || routes(&n.xlaned_socket).len() == 2);
    }
    let p0 = attach_pod(&mut c, 0, "pod-a");
    let p1 = attach_pod(&mut c, 1, "pod-b");
    assert!(ping(&c.lab.pods[p0].ns, c.lab.pods[p1].ip), "pod to pod across nodes, set up by the agents");

    // A lease written by hand in flannel's exact JSON is a remote node like any other.
    let flannel = r#"{"PublicIP":"192.168.50.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:41:9c:3e:51:0a"}}"#;
    let attrs: LeaseAttrs = serde_json::from_str(flannel).unwrap();
    let store = FileStore::open(c.dir.join("store")).unwrap();
    store.put_lease("10.244.200.0/24".parse().unwrap(), &attrs, Duration::from_secs(60)).unwrap();
    wait_for("the flannel lease routed", Duration::from_secs(3), || {
        routes(&c.nodes[0].xlaned_socket).iter().any(|r| r == "10.244.200.0/24 via 192.168.50.3")
    });

    // Node 2's agent dies without cleanup: its lease expires and its routes go away
    // everywhere within TTL + 2 s.
    let gone = match c.agent(2).unwrap().call(AgentOp::Status).unwrap() {
        AgentReply::Status { lease: Some(l), .. } => l.subnet.to_string(),
        r => panic!("{r:?}"),
    };
    c.nodes[2].agent.stop(nix::sys::signal::Signal::SIGKILL);
    let took = wait_for("routes withdrawn after expiry", Duration::from_secs(u64::from(TTL) + 2), || {
        (0..2).all(|i| !routes(&c.nodes[i].xlaned_socket).iter().any(|r| r.starts_with(&gone)))
    });
    eprintln!("lease of {gone} expired and withdrawn after {took:?} (TTL {TTL} s)");
    assert!(ping(&c.lab.pods[p0].ns, c.lab.pods[p1].ip), "unaffected traffic flows on");
}

#[test]
fn restarts_of_agent_and_xlaned_lose_nothing() {
    if !privileged("restarts_of_agent_and_xlaned_lose_nothing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut c = cluster("xa-restart", 2);
    let p0 = attach_pod(&mut c, 0, "pod-a");
    let p1 = attach_pod(&mut c, 1, "pod-b");
    wait_for("routes", Duration::from_secs(5), || routes(&c.nodes[0].xlaned_socket).len() == 1);
    assert!(ping(&c.lab.pods[p0].ns, c.lab.pods[p1].ip));
    let subnet_before = leases(&c, 0);

    // The agent restarts: xlaned keeps forwarding meanwhile; the agent keeps its subnet
    // and its pods' addresses, and changes nothing that was right.
    c.nodes[0].agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(ping(&c.lab.pods[p0].ns, c.lab.pods[p1].ip), "forwarding without the agent");
    let generation = |sock: &Path| match Client::connect(sock).unwrap().call(Op::Status).unwrap() {
        Reply::Status(s) => s.generation,
        r => panic!("{r:?}"),
    };
    let g0 = generation(&c.nodes[0].xlaned_socket);
    c.restart_agent(0).unwrap();
    assert_eq!(leases(&c, 0), subnet_before);
    assert!(ping(&c.lab.pods[p0].ns, c.lab.pods[p1].ip));
    let g1 = generation(&c.nodes[0].xlaned_socket);
    assert!(g1 - g0 <= 1, "a restarted agent re-sent only the VTEP (generation {g0} → {g1})");
    let AgentReply::Allocated { ip, .. } = c
        .agent(0)
        .unwrap()
        .call(AgentOp::Add { container_id: "pod-a".into(), ifname: "eth0".into(), netns: None, ip: None })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(ip.addr(), c.lab.pods[p0].ip, "the pod keeps its address across the restart");

    // xlaned restarts (with two workers now): the agent replays VTEP, nodes, routes and
    // endpoints, and gives pods from then on a veth queue per worker.
    let queues = |c: &Cluster, cid: &str| match c
        .agent(0)
        .unwrap()
        .call(AgentOp::Add { container_id: cid.into(), ifname: "eth0".into(), netns: None, ip: None })
        .unwrap()
    {
        AgentReply::Allocated { queues, .. } => queues,
        r => panic!("{r:?}"),
    };
    assert_eq!(queues(&c, "pod-a"), 1);
    c.nodes[0].xlaned.stop(nix::sys::signal::Signal::SIGKILL);
    c.restart_xlaned_with(0, &["--workers", "2", "--cores", "0,1"]).unwrap();
    let took = wait_for("pod reachable after xlaned restart", Duration::from_secs(15), || {
        ping(&c.lab.pods[p0].ns, c.lab.pods[p1].ip)
    });
    eprintln!("traffic back {took:?} after xlaned restarted");
    assert_eq!(routes(&c.nodes[0].xlaned_socket).len(), 1);
    // Noticed by the closed connection (the link's watcher), not on a request or poll.
    let log = c.nodes[0].agent.log();
    assert!(log.contains("xlaned connection lost") && log.contains("xlaned replayed after a restart"), "{log}");
    assert_eq!(queues(&c, "pod-new"), 2, "the restarted xlaned's workers");
    let r = c.agent(0).unwrap().call(AgentOp::Del { container_id: "pod-new".into(), ifname: "eth0".into() }).unwrap();
    assert!(matches!(r, AgentReply::Released { .. }), "{r:?}");

    // Delete is idempotent and frees the address.
    for _ in 0..2 {
        let r = c.agent(0).unwrap().call(AgentOp::Del { container_id: "pod-a".into(), ifname: "eth0".into() }).unwrap();
        assert!(matches!(r, AgentReply::Released { .. }), "{r:?}");
    }
    match c.agent(0).unwrap().call(AgentOp::Status).unwrap() {
        AgentReply::Status { allocations, .. } => assert!(allocations.is_empty(), "{allocations:?}"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn bad_config_and_bad_requests_are_explained() {
    if !privileged("bad_config_and_bad_requests_are_explained") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = cluster("xa-bad", 1);
    // An agent given an invalid network config refuses to start, saying why.
    let dir = c.dir.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    FileStore::open(dir.join("store"))
        .unwrap()
        .put_network_config(r#"{"Network":"10.244.0.0/16","SubnetLen":8}"#)
        .unwrap();
    let mut args = agent_args(&dir, 0, TTL, &Datastore::File);
    args[5] = c.nodes[0].xlaned_socket.to_string_lossy().into_owned();
    let mut bad = Proc::start(&c.lab.nodes[0].ns, &workspace_binary("xlane-agent"), &args, dir.join("agent.log"));
    let st = bad.exit_status(Duration::from_secs(10)).expect("the agent exits");
    assert!(!st.success());
    assert!(bad.log().contains("SubnetLen"), "{}", bad.log());

    // Bad API requests get errors; the agent stays up.
    let sock = &c.nodes[0].agent_socket;
    let raw = |line: &[u8]| {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.write_all(line).unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(s).read_line(&mut reply).unwrap();
        serde_json::from_str::<AgentReply>(&reply).unwrap()
    };
    for line in [&b"nonsense\n"[..], b"{\"version\":7,\"op\":\"status\"}\n", b"{\"version\":1,\"op\":\"add\"}\n"] {
        assert!(matches!(raw(line), AgentReply::Error { .. }), "{}", String::from_utf8_lossy(line));
    }
    let r = c
        .agent(0)
        .unwrap()
        .call(AgentOp::Attach {
            container_id: "nope".into(),
            ifname: "eth0".into(),
            host_if: "x".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            vhost_user: None,
            veth_io: Default::default(),
        })
        .unwrap();
    assert!(matches!(r, AgentReply::Error { .. }), "{r:?}");
    assert!(matches!(c.agent(0).unwrap().call(AgentOp::Status).unwrap(), AgentReply::Status { lease: Some(_), .. }));
}
