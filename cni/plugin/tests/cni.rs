//! The plugin driven exactly as a runtime drives it (environment + stdin, conflist
//! chains), on lab nodes each running xlaned and xlane-agent (as root, in namespaces the
//! test creates).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::runtime::{Container, Outcome, Runtime};
use xlane_netlab::{Netns, privileged, privileged_with};

/// Debian's containernetworking-plugins (host-local, tuning, portmap, bridge).
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn runtime() -> Runtime {
    let ours = Path::new(env!("CARGO_BIN_EXE_xlane")).parent().unwrap().to_path_buf();
    Runtime::new(vec![ours, PathBuf::from(REFERENCE_PLUGINS)])
}

fn conf(version: &str, agent: &Path) -> serde_json::Value {
    serde_json::json!({"cniVersion": version, "name": "xlane", "type": "xlane", "agentSocket": agent, "capabilities": {"portMappings": true}})
}

fn cni(s: &Cluster, node: usize, command: &str, c: &Container, conf: &serde_json::Value) -> Outcome {
    runtime().exec(&s.lab.nodes[node].ns, command, c, conf).unwrap()
}

fn ip_of(result: &serde_json::Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

fn failed_with(o: &Outcome) -> u64 {
    assert!(!o.success, "expected failure: {}", o.output);
    assert!(o.output["msg"].as_str().is_some_and(|m| !m.is_empty()), "{}", o.output);
    o.code().unwrap()
}

/// Send `bytes` bytes over TCP from `from` to a listener on `dst` in `to` and check
/// they arrived intact.
fn tcp_intact(from: &Netns, to: &Netns, dst: std::net::Ipv4Addr, bytes: u32) {
    let listener = to.enter(|| std::net::TcpListener::bind((dst, 5001))).unwrap().unwrap();
    let receiver = std::thread::spawn(move || {
        use std::io::Read;
        let (mut c, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        all
    });
    let data: Vec<u8> = (0..bytes).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[0]).collect();
    let mut out = from.enter(|| std::net::TcpStream::connect((dst, 5001))).unwrap().unwrap();
    std::io::Write::write_all(&mut out, &data).unwrap();
    drop(out);
    assert!(receiver.join().unwrap() == data, "{bytes} bytes arrived intact");
}

/// Nothing of any pod left on node `i`: no address, no veth, no dataplane port.
fn assert_clean(s: &Cluster, i: usize) {
    assert_eq!(s.allocations(i).unwrap(), vec![], "no address left");
    assert_eq!(s.pod_veths(i).unwrap(), Vec::<String>::new(), "no veth left");
    assert_eq!(s.endpoints(i).unwrap(), vec![], "no dataplane port left");
}

#[test]
fn add_check_del_across_versions_and_nodes() {
    if !privileged("add_check_del_across_versions_and_nodes") {
        return;
    }
    let s = Cluster::start("xc-add", 2, &ClusterOptions::default()).unwrap();
    let sock = |i: usize| s.nodes[i].agent_socket.clone();
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("xc-pod{i}")).unwrap()).collect();
    let ca = Container::in_netns("cid-a", &pods[0]);
    let a = cni(&s, 0, "ADD", &ca, &conf("1.0.0", &sock(0))).result().unwrap();
    assert_eq!(a["cniVersion"], "1.0.0");
    assert_eq!(a["interfaces"][1]["sandbox"], ca.netns.clone().unwrap());
    let b = cni(&s, 1, "ADD", &Container::in_netns("cid-b", &pods[1]), &conf("0.4.0", &sock(1))).result().unwrap();
    assert_eq!(b["ips"][0]["version"], "4");
    let c = cni(&s, 0, "ADD", &Container::in_netns("cid-c", &pods[2]), &conf("1.1.0", &sock(0))).result().unwrap();
    assert_eq!(c["interfaces"][1]["mtu"], 1450);
    // The first packet after ADD goes through: ADD returned only once the port was ready.
    pods[0].ping(&ip_of(&b), 2).expect("pod to pod across nodes");
    pods[0].ping(&ip_of(&c), 2).expect("pod to pod on one node");
    // 20 MB over TCP across nodes, byte-exact.
    tcp_intact(&pods[0], &pods[1], ip_of(&b).parse().unwrap(), 20_000_000);
    let alloc = s.allocations(0).unwrap();
    let rec = alloc.iter().find(|a| a.container_id == "cid-a").expect("cid-a allocated");
    assert_eq!(rec.netns, ca.netns, "the agent records the pod's namespace");
    assert!(cni(&s, 0, "CHECK", &ca, &conf("1.0.0", &sock(0))).success);
    assert!(
        cni(
            &s,
            0,
            "STATUS",
            &Container { id: String::new(), netns: None, ifname: String::new() },
            &conf("1.1.0", &sock(0))
        )
        .success
    );
    // GC keeping only a: c's address is released.
    let mut gc = conf("1.1.0", &sock(0));
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "cid-a", "ifname": "eth0"}]);
    let none = Container { id: String::new(), netns: None, ifname: String::new() };
    assert!(cni(&s, 0, "GC", &none, &gc).success);
    assert_eq!(s.allocations(0).unwrap().len(), 1);
    // DEL: twice, and after the namespace is gone, and for a container never seen.
    for _ in 0..2 {
        let o = cni(&s, 0, "DEL", &ca, &conf("1.0.0", &sock(0)));
        assert!(o.success, "{}", o.output);
    }
    assert!(!s.pod_veths(0).unwrap().contains(&xlane_cni::protocol::host_ifname("cid-a", "eth0")), "veth removed");
    let gone = Netns::new("xc-gone").unwrap();
    let cg = Container::in_netns("cid-g", &gone);
    assert!(cni(&s, 1, "ADD", &cg, &conf("1.0.0", &sock(1))).success);
    drop(gone);
    let o = cni(&s, 1, "DEL", &cg, &conf("1.0.0", &sock(1)));
    assert!(o.success, "DEL after the namespace is gone: {}", o.output);
    let o = cni(
        &s,
        1,
        "DEL",
        &Container { id: "never-seen".into(), netns: None, ifname: "eth0".into() },
        &conf("1.0.0", &sock(1)),
    );
    assert!(o.success, "{}", o.output);
    let cb = Container::in_netns("cid-b", &pods[1]);
    assert!(cni(&s, 1, "DEL", &cb, &conf("0.4.0", &sock(1))).success);
    assert_clean(&s, 1);
}

#[test]
fn failures_are_spec_errors_and_leave_nothing() {
    if !privileged("failures_are_spec_errors_and_leave_nothing") {
        return;
    }
    let mut s = Cluster::start("xc-fail", 1, &ClusterOptions::default()).unwrap();
    let sock = s.nodes[0].agent_socket.clone();
    let missing =
        Container { id: "cid-x".into(), netns: Some("/run/netns/does-not-exist".into()), ifname: "eth0".into() };
    assert_eq!(failed_with(&cni(&s, 0, "ADD", &missing, &conf("1.0.0", &sock))), 3, "a missing netns");
    let pod = Netns::new("xc-busy").unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]).unwrap();
    let busy = Container::in_netns("cid-busy", &pod);
    assert_eq!(failed_with(&cni(&s, 0, "ADD", &busy, &conf("1.0.0", &sock))), 7, "an interface that exists");
    assert_clean(&s, 0);
    // Protocol errors.
    assert_eq!(failed_with(&cni(&s, 0, "ADD", &busy, &conf("0.3.1", &sock))), 1);
    let bad_id = Container { id: "bad/id".into(), ..busy.clone() };
    assert_eq!(failed_with(&cni(&s, 0, "ADD", &bad_id, &conf("1.0.0", &sock))), 4);
    let none = Container { id: String::new(), netns: None, ifname: String::new() };
    assert_eq!(failed_with(&cni(&s, 0, "STATUS", &none, &conf("1.0.0", &sock))), 1, "STATUS needs 1.1.0");
    let v = cni(&s, 0, "VERSION", &none, &serde_json::json!({"cniVersion": "1.0.0", "type": "xlane"}));
    assert!(v.success && v.output["supportedVersions"].as_array().unwrap().len() == 3, "{}", v.output);
    let mut bad_ipam = conf("1.0.0", &sock);
    bad_ipam["ipam"] = serde_json::json!({"type": "no-such-ipam"});
    assert_eq!(failed_with(&cni(&s, 0, "ADD", &busy, &bad_ipam)), 7, "an IPAM plugin not on CNI_PATH");
    // The agent not running: try again later; STATUS says not available.
    s.stop_agent(0);
    let fresh = Netns::new("xc-noagent").unwrap();
    let cn = Container::in_netns("cid-n", &fresh);
    assert_eq!(failed_with(&cni(&s, 0, "ADD", &cn, &conf("1.0.0", &sock))), 11);
    assert_eq!(s.pod_veths(0).unwrap(), Vec::<String>::new());
    assert_eq!(failed_with(&cni(&s, 0, "STATUS", &none, &conf("1.1.0", &sock))), 50);
    assert_eq!(failed_with(&cni(&s, 0, "DEL", &cn, &conf("1.0.0", &sock))), 11, "DEL must be retried");
}

#[test]
fn a_full_subnet_is_an_error_that_leaves_nothing() {
    if !privileged("a_full_subnet_is_an_error_that_leaves_nothing") {
        return;
    }
    // /29 node subnets: 6 hosts, one the gateway → 5 pods.
    let opts = ClusterOptions {
        netconf: r#"{"Network":"10.244.0.0/16","SubnetLen":29,"Backend":{"Type":"vxlan"}}"#.into(),
        ..ClusterOptions::default()
    };
    let s = Cluster::start("xc-full", 1, &opts).unwrap();
    let sock = s.nodes[0].agent_socket.clone();
    let pods: Vec<Netns> = (0..6).map(|i| Netns::new(&format!("xc-f{i}")).unwrap()).collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        assert!(cni(&s, 0, "ADD", &Container::in_netns(&format!("f{i}"), p), &conf("1.0.0", &sock)).success);
    }
    let o = cni(&s, 0, "ADD", &Container::in_netns("f5", &pods[5]), &conf("1.0.0", &sock));
    assert_eq!(failed_with(&o), 7);
    assert!(o.output["details"].as_str().unwrap().contains("full"), "{}", o.output);
    assert_eq!(s.allocations(0).unwrap().len(), 5);
    assert_eq!(s.pod_veths(0).unwrap().len(), 5, "no veth for the refused pod");
    assert!(pods[5].ip(&["link", "show", "eth0"]).is_err());
    for (i, p) in pods.iter().take(5).enumerate() {
        assert!(cni(&s, 0, "DEL", &Container::in_netns(&format!("f{i}"), p), &conf("1.0.0", &sock)).success);
    }
    assert_clean(&s, 0);
}

/// `xlane` first in a chain with Debian's `tuning` and `portmap`, its addresses from
/// Debian's `host-local` through the `ipam` section; the pod is reachable through the
/// mapped host port from the other node.
#[test]
fn delegated_ipam_in_a_chain_with_tuning_and_portmap() {
    let plugins = ["host-local", "tuning", "portmap"].map(|p| format!("{REFERENCE_PLUGINS}/{p}"));
    if !privileged_with(
        "delegated_ipam_in_a_chain_with_tuning_and_portmap",
        &[&plugins[0], &plugins[1], &plugins[2], "/usr/sbin/iptables", "/bin/busybox"],
    ) {
        return;
    }
    let s = Cluster::start("xc-chain", 2, &ClusterOptions::default()).unwrap();
    let subnet = s.lab.nodes[0].subnet_cidr();
    let data_dir = s.dir.join("host-local");
    let net = subnet.rsplit_once('.').unwrap().0.to_owned();
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "xlane",
        "plugins": [
            {"type": "xlane", "agentSocket": s.nodes[0].agent_socket,
             "ipam": {"type": "host-local", "dataDir": data_dir,
                      "ranges": [[{"subnet": subnet, "rangeStart": format!("{net}.100"), "rangeEnd": format!("{net}.120")}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
            {"type": "portmap", "capabilities": {"portMappings": true},
             "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
        ]
    });
    let rt = runtime();
    let node = &s.lab.nodes[0].ns;
    let pod = Netns::new("xc-chained").unwrap();
    let c = Container::in_netns("chained", &pod);
    let result = rt.add(node, &list, &c).unwrap();
    let ip = ip_of(&result);
    assert_eq!(ip, format!("{net}.100"), "host-local's first address: {result}");
    assert!(data_dir.join("xlane").join(&ip).exists(), "host-local recorded it");
    assert_eq!(s.allocations(0).unwrap()[0].ip.to_string(), ip, "the agent recorded the delegated address");
    let somaxconn = pod.command("cat").arg("/proc/sys/net/core/somaxconn").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&somaxconn.stdout).trim(), "512", "tuning ran after xlane, inside the pod");
    let nat = node.command("iptables").args(["-t", "nat", "-S"]).output().unwrap();
    assert!(String::from_utf8_lossy(&nat.stdout).contains(&format!("{ip}:80")), "portmap's DNAT rule");
    // CHECK through xlane (and host-local) and tuning; portmap 1.1.1's CHECK fails on
    // hosts without ip6tables NAT chains, whatever the plugin before it did.
    let mut checkable = list.clone();
    checkable["plugins"].as_array_mut().unwrap().truncate(2);
    rt.check(node, &checkable, &c, &result).unwrap();
    // Through the mapped port from the other node: node1 → node0:8080 → DNAT → pod:80.
    // A Kubernetes node forwards (kubeadm's preflight insists on it).
    node.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).unwrap().unwrap();
    let mut server = pod
        .command("busybox")
        .args(["nc", "-l", "-p", "80", "-e", "echo", "hello-from-pod"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let got = s.lab.nodes[1]
        .ns
        .command("busybox")
        .args(["nc", "-w", "3", &s.lab.nodes[0].ip.to_string(), "8080"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello-from-pod", "{got:?}");
    // A second pod gets the next address; a node-foreign delegated range is refused.
    rt.del(node, &list, &c, Some(&result)).unwrap();
    assert!(!data_dir.join("xlane").join(&ip).exists(), "host-local released it");
    assert!(
        !String::from_utf8_lossy(&node.command("iptables").args(["-t", "nat", "-S"]).output().unwrap().stdout)
            .contains(&format!("{ip}:80"))
    );
    assert_clean(&s, 0);
    let mut foreign = list.clone();
    foreign["plugins"][0]["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.99.0.0/24"}]]);
    let e = rt.add(node, &foreign, &c).unwrap_err().to_string();
    assert!(e.contains("not a pod address of this node"), "{e}");
    assert_clean(&s, 0);
    assert_eq!(
        std::fs::read_dir(data_dir.join("xlane"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("10."))
            .count(),
        0,
        "host-local got its address back"
    );
}

#[test]
fn parallel_calls_for_different_containers() {
    if !privileged("parallel_calls_for_different_containers") {
        return;
    }
    let s = Cluster::start("xc-par", 1, &ClusterOptions::default()).unwrap();
    let conf = conf("1.0.0", &s.nodes[0].agent_socket);
    let pods: Vec<Netns> = (0..16).map(|i| Netns::new(&format!("xc-par{i}")).unwrap()).collect();
    let containers: Vec<Container> =
        pods.iter().enumerate().map(|(i, p)| Container::in_netns(&format!("par{i}"), p)).collect();
    let results: Vec<Outcome> = std::thread::scope(|sc| {
        let hs: Vec<_> = containers.iter().map(|c| sc.spawn(|| cni(&s, 0, "ADD", c, &conf))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = results.iter().map(|r| ip_of(&r.clone().result().unwrap())).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 16, "16 distinct addresses");
    assert_eq!(s.endpoints(0).unwrap().len(), 16);
    let unreachable: Vec<&String> =
        pods.iter().zip(ips.iter().rev()).filter(|(p, ip)| p.ping(ip, 1).is_err()).map(|(_, ip)| ip).collect();
    assert_eq!(unreachable, Vec::<&String>::new(), "every pod attached and forwarding");
    // DELs in parallel, each container twice at once (the per-container lock).
    std::thread::scope(|sc| {
        for c in containers.iter().chain(containers.iter()) {
            let conf = &conf;
            let s = &s;
            sc.spawn(move || assert!(cni(s, 0, "DEL", c, conf).success));
        }
    });
    assert_clean(&s, 0);
}

/// 200 ADD/DEL cycles over 12 pods in a random interleaving, half of them attached
/// `veth-offload` (AF_PACKET) and half `veth-xdp`, the agent restarted in the middle
/// (replaying both kinds): every ADD works, and at the end nothing leaked.
#[test]
fn two_hundred_cycles_with_an_agent_restart() {
    if !privileged("two_hundred_cycles_with_an_agent_restart") {
        return;
    }
    let mut s = Cluster::start("xc-cyc", 1, &ClusterOptions::default()).unwrap();
    let xdp = {
        let mut c = conf("1.0.0", &s.nodes[0].agent_socket);
        c["attach"] = "veth-xdp".into();
        c
    };
    let offload = {
        let mut c = xdp.clone();
        c["attach"] = "veth-offload".into();
        c
    };
    let conf = |k: usize| if k.is_multiple_of(2) { &offload } else { &xdp };
    let pods: Vec<Netns> = (0..12).map(|i| Netns::new(&format!("xc-cy{i}")).unwrap()).collect();
    let containers: Vec<Container> =
        pods.iter().enumerate().map(|(i, p)| Container::in_netns(&format!("cyc{i}"), p)).collect();
    let mut attached: BTreeMap<usize, String> = BTreeMap::new();
    // xorshift: a fixed, reproducible interleaving.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut adds, mut restarted) = (0, false);
    while adds < 200 || !attached.is_empty() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = usize::try_from(x % 12).unwrap();
        if adds >= 100 && !restarted {
            s.restart_agent(0).unwrap();
            restarted = true;
        }
        if let Some(ip) = attached.remove(&k) {
            let o = cni(&s, 0, "DEL", &containers[k], conf(k));
            assert!(o.success, "DEL {k}: {}", o.output);
            assert!(!s.allocations(0).unwrap().iter().any(|a| a.ip.to_string() == ip));
        } else if adds < 200 {
            let r = cni(&s, 0, "ADD", &containers[k], conf(k)).result().unwrap_or_else(|e| panic!("ADD {k}: {e}"));
            let ip = ip_of(&r);
            assert!(!attached.values().any(|v| *v == ip), "{ip} handed out twice");
            attached.insert(k, ip);
            adds += 1;
        }
        assert_eq!(s.allocations(0).unwrap().len(), attached.len(), "allocations track the pods");
    }
    assert_clean(&s, 0);
}

#[test]
fn vm_pods_attach_through_vhost_user() {
    use xlane_netlab::dpdk::{TESTPMD, Testpmd};
    if !privileged_with("vm_pods_attach_through_vhost_user", &[TESTPMD]) {
        return;
    }
    let s = Cluster::start("xc-vhu", 2, &ClusterOptions::default()).unwrap();
    let node0 = &s.lab.nodes[0].ns;
    let dir = std::env::temp_dir().join(format!("xc-vhu-{}", std::process::id()));
    let mut conf = conf("1.1.0", &s.nodes[0].agent_socket);
    conf["vhostUserDir"] = dir.to_string_lossy().into();
    // The sandbox namespace a VM runtime (Kata) creates; nothing is put in it.
    let sandbox = Netns::new("xc-vm").unwrap();
    let vm = Container::in_netns("cid-vm", &sandbox);
    let mut rt = runtime();
    rt.args = format!("{};XLANE_ATTACH=vhost-user", xlane_netlab::runtime::K8S_ARGS);
    let r = rt.exec(node0, "ADD", &vm, &conf).unwrap().result().unwrap();
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 1, "one interface, no host side: {r}");
    let socket = PathBuf::from(ifs[0]["socketPath"].as_str().expect("socketPath in a 1.1.0 result"));
    assert!(socket.starts_with(&dir) && socket.exists(), "{}", socket.display());
    assert_eq!(r["ips"][0]["interface"], 0);
    let (ip, mac) = (ip_of(&r), ifs[0]["mac"].as_str().unwrap().to_owned());
    assert_eq!(sandbox.ip(&["-o", "link"]).unwrap().lines().count(), 1, "only lo in the sandbox");
    let port = |s: &Cluster| s.endpoints(0).unwrap().into_iter().find(|p| p.vhost_user.is_some());
    assert_eq!(port(&s).and_then(|p| p.vhost_user).map(|v| v.socket), Some(socket.clone()));
    assert!(rt.exec(node0, "CHECK", &vm, &conf).unwrap().success);

    // The VM's frontend connects; a pod on the other node reaches the guest.
    let mut guest = Testpmd::spawn(
        None,
        "0-1",
        &[&format!("net_virtio_user0,path={},queues=1,mac={mac}", socket.display())],
        &["--forward-mode=icmpecho", "--stats-period=0", "--total-num-mbufs=8192"],
    )
    .unwrap();
    guest.wait_forwarding(std::time::Duration::from_secs(60)).unwrap();
    assert!(port(&s).and_then(|p| p.vhost_user).is_some_and(|v| v.connected), "the guest's frontend is connected");
    let pod = s.attach_pod(1, "web").unwrap();
    pod.ns.ping(&ip, 5).expect("veth pod to VM pod across nodes");

    // DEL while the VMM is connected: it is cut off, the socket and port are gone.
    let o = rt.exec(node0, "DEL", &vm, &conf).unwrap();
    assert!(o.success, "{}", o.output);
    assert!(!socket.exists(), "socket removed");
    assert_eq!(guest.finish().rx, 5, "the guest saw the five pings");
    assert_clean(&s, 0);

    // The conflist can choose vhost-user for every pod; before 1.1.0 the result has no
    // socketPath, and the socket is where the directory says.
    let mut conf10 = serde_json::json!({"cniVersion": "1.0.0", "name": "xlane", "type": "xlane",
        "agentSocket": s.nodes[0].agent_socket, "attach": "vhost-user", "vhostUserDir": dir});
    let r = cni(&s, 0, "ADD", &vm, &conf10).result().unwrap();
    assert!(r["interfaces"][0].get("socketPath").is_none(), "{r}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "one socket");
    assert!(cni(&s, 0, "DEL", &vm, &conf10).success);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_clean(&s, 0);
    // An unknown attachment is the spec's invalid-configuration error, nothing left.
    conf10["attach"] = "macvtap".into();
    assert_eq!(failed_with(&cni(&s, 0, "ADD", &vm, &conf10)), 7);
    assert_clean(&s, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pods attached `veth-offload` keep their checksum and segmentation offloads (no XDP
/// on the veth, checksum offload left on), reach each other across nodes and on one
/// node through super-packets, survive an agent restart (the attachment is replayed as
/// it was) and leave nothing behind.
#[test]
fn veth_offload_pods_keep_their_offloads() {
    if !privileged("veth_offload_pods_keep_their_offloads") {
        return;
    }
    let mut s = Cluster::start("xc-gso", 2, &ClusterOptions::default()).unwrap();
    let sockets: Vec<PathBuf> = s.nodes.iter().map(|n| n.agent_socket.clone()).collect();
    let offload = |i: usize| {
        let mut c = conf("1.1.0", &sockets[i]);
        c["attach"] = "veth-offload".into();
        c
    };
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("xc-gso{i}")).unwrap()).collect();
    let cs: Vec<Container> = (0..3).map(|i| Container::in_netns(&format!("cid-gso{i}"), &pods[i])).collect();
    let node = [0, 1, 0];
    let ips: Vec<String> =
        (0..3).map(|i| ip_of(&cni(&s, node[i], "ADD", &cs[i], &offload(node[i])).result().unwrap())).collect();
    let ports = s.endpoints(0).unwrap();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert!(ports.iter().all(|p| p.packet.is_some() && p.xdp_mode == "none"), "read through AF_PACKET: {ports:?}");
    pods[0].ping(&ips[1], 2).expect("across nodes");
    pods[0].ping(&ips[2], 2).expect("on one node");
    // 8 MB across nodes, byte-exact (the xlaned tests move a GiB; this is the CNI path).
    tcp_intact(&pods[0], &pods[1], ips[1].parse().unwrap(), 8_000_000);
    // Only a pod with checksum and segmentation offload on sends super-packets.
    let counters = s.counters(0).unwrap();
    assert!(counters.pipeline["gso_packets"] > 0, "the pod sent super-packets: {:?}", counters.pipeline);

    // The agent restarts: the pods stay attached the same way.
    s.restart_agent(0).unwrap();
    pods[0].ping(&ips[2], 2).expect("on one node after an agent restart");

    for i in 0..3 {
        assert!(cni(&s, node[i], "DEL", &cs[i], &offload(node[i])).success);
    }
    assert_clean(&s, 0);
    assert_clean(&s, 1);
}

/// With two xlaned workers, a `veth-xdp` pod's veth gets two queues (the agent passes
/// xlaned's worker count), one per worker; the lab's uplinks keep one queue, which the
/// second worker reaches through a socket that only transmits. Pods talk across nodes
/// and on one node, byte-exact, and DEL leaves nothing.
#[test]
fn veth_xdp_pods_get_a_queue_per_worker() {
    if !privileged("veth_xdp_pods_get_a_queue_per_worker") {
        return;
    }
    let opts = ClusterOptions {
        xlaned_args: vec!["--workers".into(), "2".into(), "--cores".into(), "0,1".into()],
        ..ClusterOptions::default()
    };
    let s = Cluster::start("xc-mq", 2, &opts).unwrap();
    let sockets: Vec<PathBuf> = s.nodes.iter().map(|n| n.agent_socket.clone()).collect();
    let xdp = |i: usize| {
        let mut c = conf("1.1.0", &sockets[i]);
        c["attach"] = "veth-xdp".into();
        c
    };
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("xc-mq{i}")).unwrap()).collect();
    let cs: Vec<Container> = (0..3).map(|i| Container::in_netns(&format!("cid-mq{i}"), &pods[i])).collect();
    let node = [0, 1, 0];
    let ips: Vec<String> =
        (0..3).map(|i| ip_of(&cni(&s, node[i], "ADD", &cs[i], &xdp(node[i])).result().unwrap())).collect();
    let ports = s.endpoints(0).unwrap();
    assert!(ports.len() == 2 && ports.iter().all(|p| p.queues == 2 && p.packet.is_none()), "{ports:?}");
    pods[0].ping(&ips[1], 2).expect("across nodes");
    pods[1].ping(&ips[2], 2).expect("across nodes, back");
    pods[0].ping(&ips[2], 2).expect("on one node");
    tcp_intact(&pods[1], &pods[0], ips[0].parse().unwrap(), 8_000_000);
    let c = s.counters(0).unwrap();
    assert!(c.workers.len() == 2 && c.workers.iter().all(xlane_api::WorkerCounters::conserved), "{:?}", c.workers);
    for i in 0..3 {
        assert!(cni(&s, node[i], "DEL", &cs[i], &xdp(node[i])).success);
    }
    assert_clean(&s, 0);
    assert_clean(&s, 1);
}
