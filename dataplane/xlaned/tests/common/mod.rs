//! Helpers the privileged end-to-end tests share: a running xlaned per node, and the
//! two-node cluster with pods that most of them start from.
#![allow(dead_code, reason = "each test binary uses its own part of the helpers")]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xlane_api::{Change, Client, Counters, EndpointSpec, Mac, Op, Reply, Table, Vtep};
use xlane_netlab::process::Proc;
use xlane_netlab::{Lab, Netns, privileged};

/// One lab at a time: they share two cores.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

/// A running xlaned, stopped (by PID) on drop.
pub(crate) struct Xlaned {
    pub(crate) proc: Proc,
    pub(crate) socket: PathBuf,
    pub(crate) dir: PathBuf,
}

impl Xlaned {
    pub(crate) fn start_with(ns: &Netns, name: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("xlane-e2e-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("xlaned.sock");
        let uplink: &[&str] = if extra.contains(&"--uplink") { &[] } else { &["--uplink", "eth0"] };
        let args: Vec<String> = uplink
            .iter()
            .chain(&["--socket", &socket.to_string_lossy()])
            .chain(extra)
            .map(|a| (*a).to_owned())
            .collect();
        let proc = Proc::start(ns, Path::new(env!("CARGO_BIN_EXE_xlaned")), &args, dir.join("xlaned.log"));
        let d = Self { proc, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(&d.socket).is_err() {
            assert!(Instant::now() < deadline, "xlaned did not open its socket:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub(crate) fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    pub(crate) fn call(&self, op: Op) -> Reply {
        self.client().call(op).expect("call")
    }

    pub(crate) fn ok(&self, op: Op) -> Reply {
        let r = self.call(op.clone());
        assert!(!matches!(r, Reply::Error { .. }), "{op:?} → {r:?}\n{}", self.log());
        r
    }

    pub(crate) fn counters(&self) -> Counters {
        match self.ok(Op::Counters) {
            Reply::Counters(c) => *c,
            r => panic!("{r:?}"),
        }
    }

    /// CPU seconds (user + system) the daemon has used so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let pid = self.proc.pid().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may contain spaces): utime is 14th, stime 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).map(|x| x.parse().unwrap()).collect();
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap();
        #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
        let secs = (f[0] + f[1]) as f64 / ticks as f64;
        secs
    }

    pub(crate) fn log(&self) -> String {
        self.proc.log()
    }

    /// Stop with `sig` and wait; returns the exit status.
    pub(crate) fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        self.proc.stop(sig).expect("running")
    }
}

impl Drop for Xlaned {
    fn drop(&mut self) {
        self.proc.stop(nix::sys::signal::Signal::SIGTERM);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

/// Two nodes, pods 0 and 1 on node 0, pod 2 on node 1, both daemons configured.
pub(crate) struct Cluster {
    // Daemons before the lab: they stop before their namespaces go.
    pub(crate) daemons: Vec<Xlaned>,
    pub(crate) lab: Lab,
}

pub(crate) fn cluster_with(prefix: &str, queues: u16, flags: &[&str]) -> Cluster {
    let mut lab = Lab::with_queues(prefix, 2, queues).unwrap();
    for node in [0, 0, 1] {
        lab.add_pod(node).unwrap();
    }
    let daemons: Vec<Xlaned> =
        lab.nodes.iter().enumerate().map(|(i, n)| Xlaned::start_with(&n.ns, &format!("{prefix}-{i}"), flags)).collect();
    for (i, n) in lab.nodes.iter().enumerate() {
        let d = &daemons[i];
        d.ok(Op::SetVtep(Vtep {
            ip: n.ip,
            mac: None,
            vni: 1,
            port: 8472,
            subnet: Some(n.subnet_cidr().parse().unwrap()),
        }));
        let mut changes = Vec::new();
        for (j, other) in lab.nodes.iter().enumerate() {
            if j != i {
                changes.push(Change::AddNode {
                    underlay_ip: other.ip,
                    vtep_mac: mac(&other.ns.mac("eth0").unwrap()),
                    next_hop_mac: None,
                });
                changes.push(Change::AddRoute { prefix: other.subnet_cidr().parse().unwrap(), via: other.ip });
            }
        }
        d.ok(Op::Apply { changes });
    }
    for p in &lab.pods {
        let r = daemons[p.node].ok(Op::AddEndpoint(EndpointSpec {
            ifname: p.host_if.clone(),
            ip: p.ip,
            mac: mac(&p.mac),
            vhost_user: None,
            veth_io: Default::default(),
        }));
        assert!(matches!(r, Reply::EndpointReady { mtu: 1450, .. }), "{r:?}");
    }
    // Wait for the kernel to resolve each remote VTEP's MAC (managed neighbour entries).
    for d in &daemons {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Reply::Nodes { nodes } = d.ok(Op::Dump { table: Table::Nodes }) else { panic!() };
            if nodes.iter().all(|n| n.next_hop_mac.is_some()) {
                assert!(nodes.iter().all(|n| n.source == "neighbor"), "{nodes:?}");
                break;
            }
            assert!(Instant::now() < deadline, "next hops never resolved: {nodes:?}\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Cluster { daemons, lab }
}

/// Root check, one lab at a time, and the cluster for this test.
pub(crate) fn setup(
    test: &str,
    prefix: &str,
    queues: u16,
    flags: &[&str],
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    if !privileged(test) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((serial, cluster_with(prefix, queues, flags)))
}

/// Three pings from `ns` to `dst`.
pub(crate) fn ping(ns: &Netns, dst: Ipv4Addr) -> Result<(), String> {
    ns.ping(&dst.to_string(), 3)
}
