//! The engine's ICMP errors end to end, as root, in namespaces the tests create and
//! remove: two nodes with xlaned on a fabric bridge, a pod on each (as `e2e.rs`), and the
//! real tools. traceroute from the pod on node 0 to the pod on node 1 must list node 0's
//! gateway, node 1's gateway and the pod; tracepath from an interface larger than the pod
//! MTU (a pod's, the host port's) must learn the pod MTU from the engine.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xlane_api::{Change, Client, Counters, EndpointSpec, Op, Reply, Table, Vtep};
use xlane_netlab::cluster::start_xlaned;
use xlane_netlab::process::Proc;
use xlane_netlab::{Lab, Netns, privileged_with};

const TRACEROUTE: &str = "/usr/sbin/traceroute";
const TRACEPATH: &str = "/usr/bin/tracepath";
const POD_MTU: u16 = 1450;

/// One lab at a time: they share two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Two nodes with a pod each, both daemons configured as the agent would.
struct TwoNodes {
    daemons: Vec<Proc>,
    sockets: Vec<PathBuf>,
    lab: Lab,
    dir: PathBuf,
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        // Daemons stop (by PID) before their namespaces go with the lab.
        self.daemons.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TwoNodes {
    fn start(prefix: &str) -> Self {
        let mut lab = Lab::new(prefix, 2).unwrap();
        lab.add_pod(0).unwrap();
        lab.add_pod(1).unwrap();
        let dir = std::env::temp_dir().join(format!("xlane-{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let daemons: Vec<Proc> =
            lab.nodes.iter().enumerate().map(|(i, n)| start_xlaned(&n.ns, &dir, i, &[]).unwrap()).collect();
        let sockets = (0..2).map(|i| dir.join(format!("xlaned{i}.sock"))).collect();
        let nodes = Self { daemons, sockets, lab, dir };
        nodes.configure();
        nodes
    }

    fn configure(&self) {
        let mac = |ns: &Netns, dev: &str| ns.mac(dev).unwrap().parse().unwrap();
        for (i, n) in self.lab.nodes.iter().enumerate() {
            let subnet = Some(n.subnet_cidr().parse().unwrap());
            self.ok(i, Op::SetVtep(Vtep { ip: n.ip, mac: None, vni: 1, port: 8472, subnet }));
            let other = &self.lab.nodes[1 - i];
            let changes = vec![
                Change::AddNode { underlay_ip: other.ip, vtep_mac: mac(&other.ns, "eth0"), next_hop_mac: None },
                Change::AddRoute { prefix: other.subnet_cidr().parse().unwrap(), via: other.ip },
            ];
            self.ok(i, Op::Apply { changes });
        }
        for p in &self.lab.pods {
            let spec = EndpointSpec {
                ifname: p.host_if.clone(),
                ip: p.ip,
                mac: p.mac.parse().unwrap(),
                vhost_user: None,
                veth_io: Default::default(),
            };
            let r = self.ok(p.node, Op::AddEndpoint(spec));
            assert!(matches!(r, Reply::EndpointReady { mtu: POD_MTU, .. }), "{r:?}");
        }
        // The kernel resolves each remote VTEP's MAC (managed neighbour entries).
        for i in 0..2 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let Reply::Nodes { nodes } = self.ok(i, Op::Dump { table: Table::Nodes }) else { panic!() };
                if nodes.iter().all(|n| n.next_hop_mac.is_some()) {
                    break;
                }
                assert!(Instant::now() < deadline, "next hops never resolved: {nodes:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn ok(&self, node: usize, op: Op) -> Reply {
        let r = Client::connect(&self.sockets[node]).and_then(|mut c| c.call(op.clone())).expect("control socket");
        assert!(!matches!(r, Reply::Error { .. }), "node {node}: {op:?} → {r:?}\n{}", self.daemons[node].log());
        r
    }

    fn counters(&self, node: usize) -> Counters {
        match self.ok(node, Op::Counters) {
            Reply::Counters(c) => *c,
            r => panic!("{r:?}"),
        }
    }
}

/// Root, the tools, one lab at a time, and the two nodes.
fn setup(test: &str, prefix: &str) -> Option<(std::sync::MutexGuard<'static, ()>, TwoNodes)> {
    if !privileged_with(test, &[TRACEROUTE, TRACEPATH]) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((serial, TwoNodes::start(prefix)))
}

/// Run `program args` in `ns`, at most 60 s; what it printed.
fn run(ns: &Netns, program: &str, args: &[&str]) -> String {
    let out = ns.command("timeout").arg("60").arg(program).args(args).output().expect("run in the namespace");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?}: {}\n{text}", out.status);
    eprintln!("{program} {args:?}:\n{text}");
    text
}

/// traceroute's hops: per numbered line, the addresses that answered.
fn hops(traceroute: &str) -> Vec<Vec<Ipv4Addr>> {
    traceroute
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|n| n.parse::<u8>().is_ok()))
        .map(|l| {
            let mut addrs: Vec<Ipv4Addr> = l.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect();
            addrs.dedup();
            addrs
        })
        .collect()
}

/// The address on tracepath's hop line that reports the pod MTU (" 2:  10.244.1.1
/// 0.017ms pmtu 1450"): who sent "fragmentation needed".
fn learnt_from(tracepath: &str) -> Option<Ipv4Addr> {
    let pmtu = format!("pmtu {POD_MTU}");
    let line = tracepath.lines().map(str::trim_start).find(|l| l.contains(&pmtu) && !l.starts_with("Resume"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Pipeline conservation with the errors the nodes made: rx + errors = tx + drops.
fn conserved(c: &Counters) -> bool {
    c.pipeline["rx"] + c.pipeline["icmp_errors"] == c.pipeline["tx"] + c.drops.values().sum::<u64>()
}

#[test]
fn traceroute_lists_both_nodes_and_the_pod() {
    let Some((_serial, nodes)) = setup("traceroute_lists_both_nodes_and_the_pod", "xi-trace") else {
        return;
    };
    let (pod, peer) = (&nodes.lab.pods[0], &nodes.lab.pods[1]);
    let want = vec![vec![nodes.lab.nodes[0].gateway()], vec![nodes.lab.nodes[1].gateway()], vec![peer.ip]];
    let dst = peer.ip.to_string();
    // UDP probes (the default), then ICMP echo (-I); three a hop, at most three hops.
    for mode in [&[][..], &["-I"][..]] {
        let mut args = vec!["-n", "-q", "3", "-w", "2", "-m", "3"];
        args.extend_from_slice(mode);
        args.push(&dst);
        let out = run(&pod.ns, TRACEROUTE, &args);
        assert_eq!(hops(&out), want, "traceroute {args:?}:\n{out}");
    }
    // Each node answered its hop's six probes (three per mode) and counted them.
    for i in 0..2 {
        let c = nodes.counters(i);
        assert_eq!((c.pipeline["icmp_errors"], c.drops["ttl_expired"]), (6, 6), "node {i}: {c:?}");
        assert_eq!(c.pipeline["icmp_rate_limited"], 0, "node {i}");
        assert!(conserved(&c), "node {i}: {c:?}");
    }
}

#[test]
fn tracepath_learns_the_pod_mtu_from_the_engine() {
    let Some((_serial, nodes)) = setup("tracepath_learns_the_pod_mtu_from_the_engine", "xi-pmtu") else {
        return;
    };
    let (node, pod, peer) = (&nodes.lab.nodes[0], &nodes.lab.pods[0], &nodes.lab.pods[1]);
    let dst = peer.ip.to_string();
    let resume = format!("Resume: pmtu {POD_MTU} hops 3 back 3");
    // A pod whose veth pair is larger than the pod MTU (a misconfigured one): its DF
    // probes reach the engine, which answers "fragmentation needed" with the pod MTU.
    pod.ns.ip(&["link", "set", "eth0", "mtu", "1500"]).unwrap();
    node.ns.ip(&["link", "set", &pod.host_if, "mtu", "1500"]).unwrap();
    let out = run(&pod.ns, TRACEPATH, &["-n", "-m", "4", &dst]);
    assert_eq!(learnt_from(&out), Some(node.gateway()), "tracepath from the pod:\n{out}");
    assert!(out.contains(&resume), "tracepath from the pod:\n{out}");
    let mtu_errors = |c: &Counters| c.drops["mtu_exceeded"];
    assert!(mtu_errors(&nodes.counters(0)) >= 1, "{:?}", nodes.counters(0));

    // The host, through the host port made as large: the same, learnt from the error
    // the engine sends it (from the destination's address: the gateway is its own).
    let before = mtu_errors(&nodes.counters(0));
    for dev in ["xlane0", "xlane0-e"] {
        node.ns.ip(&["link", "set", dev, "mtu", "1500"]).unwrap();
    }
    let out = run(&node.ns, TRACEPATH, &["-n", "-m", "4", &dst]);
    assert_eq!(learnt_from(&out), Some(peer.ip), "tracepath from the host:\n{out}");
    assert!(out.contains(&resume), "tracepath from the host:\n{out}");
    let c = nodes.counters(0);
    assert!(mtu_errors(&c) > before, "{c:?}");
    assert!(conserved(&c), "{c:?}");
}
