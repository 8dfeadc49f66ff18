//! Helpers the privileged end-to-end tests share: a running xlaned per node, and the
//! two-node cluster with pods that most of them start from.
#![allow(dead_code, reason = "each test binary uses its own part of the helpers")]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use xlane_api::{Change, Client, Counters, EndpointSpec, Mac, Op, Reply, Table, VethIo, Vtep};
use xlane_netlab::process::Proc;
use xlane_netlab::{Lab, Netns, Pod, privileged};

/// One lab at a time: they share two cores.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

/// A running xlaned, stopped (by PID) on drop.
pub(crate) struct Xlaned {
    pub(crate) proc: Proc,
    pub(crate) socket: PathBuf,
    pub(crate) dir: PathBuf,
    /// Its command line (a successor takes over with the same one).
    pub(crate) args: Vec<String>,
    /// Processes so far (the log of the n-th is `xlaned-<n>.log`).
    pub(crate) generation: u32,
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
        let d = Self { proc, socket, dir, args, generation: 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(&d.socket).is_err() {
            assert!(Instant::now() < deadline, "xlaned did not open its socket:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Start a successor with the same command line and `--takeover` (and `extra`) in
    /// `ns`; returns once this one has exited and the successor answers, with the
    /// predecessor's log.
    pub(crate) fn take_over(&mut self, ns: &Netns, extra: &[&str]) -> String {
        self.generation += 1;
        let log = self.dir.join(format!("xlaned-{}.log", self.generation));
        let args: Vec<String> = self
            .args
            .iter()
            .cloned()
            .chain(["--takeover".to_owned()])
            .chain(extra.iter().map(|a| (*a).to_owned()))
            .collect();
        let next = Proc::start(ns, Path::new(env!("CARGO_BIN_EXE_xlaned")), &args, log);
        let mut old = std::mem::replace(&mut self.proc, next);
        let status = old.exit_status(Duration::from_secs(15));
        let old_log = old.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "the old xlaned did not exit: {status:?}\n{old_log}\n{}",
            self.log()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        let answers = |s: &Path| Client::connect(s).ok().and_then(|mut c| c.call(Op::Status).ok()).is_some();
        while !answers(&self.socket) {
            assert!(self.proc.running(), "the new xlaned exited:\n{}\nthe old one's log:\n{old_log}", self.log());
            assert!(Instant::now() < deadline, "the new xlaned did not open its socket:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        old_log
    }

    /// Descriptors the daemon holds, and its resident memory in KiB.
    pub(crate) fn fds_and_rss(&self) -> (usize, u64) {
        let pid = self.proc.pid().expect("running");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        (fds, rss)
    }

    /// Run `xlanectl` against this daemon; its standard output (panics if it fails).
    pub(crate) fn ctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xlanectl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "xlanectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
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
    cluster_io(prefix, queues, flags, VethIo::AfXdp)
}

/// [`cluster_with`], the pods' veths read and written as `veth_io` says.
pub(crate) fn cluster_io(prefix: &str, queues: u16, flags: &[&str], veth_io: VethIo) -> Cluster {
    cluster_mtu(prefix, queues, flags, veth_io, xlane_netlab::topology::UPLINK_MTU)
}

/// [`cluster_io`] on an underlay of MTU `mtu` (pods 50 less).
pub(crate) fn cluster_mtu(prefix: &str, queues: u16, flags: &[&str], veth_io: VethIo, mtu: u16) -> Cluster {
    cluster_on(Lab::with_mtu(prefix, 2, queues, mtu).unwrap(), prefix, flags, veth_io)
}

/// The cluster on `lab` (two nodes, no pods yet): pods 0 and 1 on node 0, pod 2 on node
/// 1, a daemon per node started with `flags` and configured.
pub(crate) fn cluster_on(lab: Lab, prefix: &str, flags: &[&str], veth_io: VethIo) -> Cluster {
    cluster_nodes(lab, prefix, &[flags, flags], veth_io)
}

/// [`cluster_on`], node `i`'s daemon started with `flags[i]`.
pub(crate) fn cluster_nodes(mut lab: Lab, prefix: &str, flags: &[&[&str]; 2], veth_io: VethIo) -> Cluster {
    let mtu_of_pods = lab.uplink_mtu() - 50;
    for node in [0, 0, 1] {
        lab.add_pod_with(node, veth_io == VethIo::AfPacket).unwrap();
    }
    let daemons: Vec<Xlaned> = lab
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Xlaned::start_with(&n.ns, &format!("{prefix}-{i}"), flags[i]))
        .collect();
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
            veth_io,
        }));
        assert!(matches!(r, Reply::EndpointReady { mtu, .. } if mtu == mtu_of_pods), "{r:?}");
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
    setup_io(test, prefix, queues, flags, VethIo::AfXdp)
}

/// [`setup`], the pods' veths read and written as `veth_io` says.
pub(crate) fn setup_io(
    test: &str,
    prefix: &str,
    queues: u16,
    flags: &[&str],
    veth_io: VethIo,
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    if !privileged(test) {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((serial, cluster_io(prefix, queues, flags, veth_io)))
}

/// FNV-1a over `bytes`, continuing `h`.
pub(crate) fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// The FNV-1a offset basis.
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A MiB of deterministic, non-repeating-looking bytes.
pub(crate) fn test_chunk() -> Vec<u8> {
    (0..1u32 << 20).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect()
}

/// Send `mib` MiB over one TCP connection from `from` to `to_ip:port` (a listener in
/// `to`), and check that every byte arrived, in order (length and hash). Returns the
/// seconds it took.
pub(crate) fn tcp_transfer(from: &Netns, to: &Netns, to_ip: Ipv4Addr, port: u16, mib: u64) -> f64 {
    let listener = to.enter(|| TcpListener::bind(SocketAddrV4::new(to_ip, port))).unwrap().unwrap();
    let server = std::thread::spawn(move || -> io::Result<(u64, u64)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (mut n, mut h) = (0u64, FNV_START);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let k = io::Read::read(&mut s, &mut buf)?;
            if k == 0 {
                return Ok((n, h));
            }
            fnv1a(&mut h, &buf[..k]);
            n += k as u64;
        }
    });
    let mut stream = from.enter(|| TcpStream::connect(SocketAddrV4::new(to_ip, port))).unwrap().unwrap();
    let chunk = test_chunk();
    let mut sent_hash = FNV_START;
    let t0 = Instant::now();
    for _ in 0..mib {
        io::Write::write_all(&mut stream, &chunk).unwrap();
        fnv1a(&mut sent_hash, &chunk);
    }
    drop(stream);
    let (received, recv_hash) = server.join().unwrap().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(received, mib << 20, "bytes received");
    assert_eq!(recv_hash, sent_hash, "{mib} MiB arrived intact");
    secs
}

/// `flows` TCP connections at once from `from` to `to`'s `port`, `mib` MiB each; every
/// one must arrive intact (length and hash).
pub(crate) fn tcp_flows(from: &Pod, to: &Pod, port: u16, flows: usize, mib: u64) {
    let listener = to.ns.enter(|| TcpListener::bind(SocketAddrV4::new(to.ip, port))).unwrap().unwrap();
    let server = std::thread::spawn(move || {
        let mut sums = Vec::new();
        for _ in 0..flows {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let (mut n, mut h) = (0u64, FNV_START);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = io::Read::read(&mut s, &mut buf).unwrap();
                if k == 0 {
                    break;
                }
                fnv1a(&mut h, &buf[..k]);
                n += k as u64;
            }
            sums.push((n, h));
        }
        sums
    });
    let chunk = test_chunk();
    let mut expect = FNV_START;
    for _ in 0..mib {
        fnv1a(&mut expect, &chunk);
    }
    let clients: Vec<_> = (0..flows)
        .map(|_| {
            let mut s = from.ns.enter(|| TcpStream::connect(SocketAddrV4::new(to.ip, port))).unwrap().unwrap();
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                for _ in 0..mib {
                    io::Write::write_all(&mut s, &chunk).unwrap();
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let sums = server.join().unwrap();
    assert!(sums.iter().all(|&(n, h)| n == mib << 20 && h == expect), "{flows} flows of {mib} MiB: {sums:?}");
}

/// Every frame in was forwarded or counted as a drop (ICMP errors made count as
/// frames in).
pub(crate) fn conserved(c: &Counters) -> bool {
    c.pipeline["rx"] + c.pipeline["icmp_errors"] == c.pipeline["tx"] + c.drops.values().sum::<u64>()
}

/// How the uplink is served. Read through UDP GRO sockets, no XDP program on it (the
/// default on a NIC without zero-copy, as veth); or through its XDP program and AF_XDP
/// sockets (#16) in the UMEM the veths share, or in one of their own, which a
/// zero-copy NIC needs and `--uplink-umem own` forces in copy mode, so the lab runs
/// that code path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The default on a veth uplink: packet taps.
    TapUplink,
    UdpUplink,
    Shared,
    OwnUplink,
}

impl Layout {
    pub(crate) fn flags(self) -> &'static [&'static str] {
        match self {
            Self::TapUplink => &[],
            Self::UdpUplink => &["--uplink-rx", "udp"],
            Self::Shared => &["--uplink-rx", "xdp"],
            Self::OwnUplink => &["--uplink-rx", "xdp", "--uplink-umem", "own"],
        }
    }

    /// Whether the uplink carries xlaned's XDP program.
    pub(crate) fn uplink_xdp(self) -> bool {
        !matches!(self, Self::TapUplink | Self::UdpUplink)
    }

    /// After traffic across the nodes: each uplink is where the layout puts it, and
    /// frames were copied between UMEMs exactly when there are two, both ways (into the
    /// uplinks' from pods, into the shared ones for pods).
    pub(crate) fn check(self, daemons: &[Xlaned]) {
        let (mut to_uplinks, mut to_pods) = (0, 0);
        for d in daemons {
            let Reply::Ports { ports } = d.ok(Op::Dump { table: Table::Ports }) else { panic!() };
            let umem = |role: &str| -> Vec<xlane_api::UmemInfo> {
                ports
                    .iter()
                    .filter(|p| p.role == role && p.packet.is_none() && p.vhost_user.is_none())
                    .map(|p| p.umem.clone().expect("AF_XDP ports report their UMEM"))
                    .collect()
            };
            let (uplink, pods) = (umem("uplink"), umem("pod"));
            assert_eq!(uplink.len(), 1, "{ports:?}");
            assert_eq!(uplink[0].own, self == Self::OwnUplink, "{ports:?}");
            assert!(pods.iter().all(|u| !u.own), "pods share the veths' UMEM: {ports:?}");
            to_uplinks += uplink[0].copied_in;
            to_pods += pods.iter().map(|u| u.copied_in).sum::<u64>();
        }
        match self {
            Self::TapUplink | Self::UdpUplink => {
                for d in daemons {
                    let Reply::Ports { ports } = d.ok(Op::Dump { table: Table::Ports }) else { panic!() };
                    let uplink = ports.iter().find(|p| p.role == "uplink").expect("an uplink");
                    let rx = uplink.udp_rx.expect("an uplink read without XDP reports its receivers");
                    assert!(rx.datagrams > 0 && rx.dropped == 0, "{rx:?}");
                    assert_eq!(rx.tap, self == Self::TapUplink, "{rx:?}");
                }
            }
            Self::Shared => assert_eq!((to_uplinks, to_pods), (0, 0), "one UMEM, nothing copied"),
            Self::OwnUplink => {
                assert!(to_uplinks > 0 && to_pods > 0, "copied both ways: {to_uplinks} to uplinks, {to_pods} to pods");
            }
        }
    }
}

/// A paced stream of numbered datagrams (~5k/s) from one pod to another, to show that
/// something done meanwhile (route churn, pods coming and going) loses none of it.
pub(crate) struct PacedStream {
    /// The receiving pod's `/proc/net/snmp` (its UDP counters explain a loss there).
    snmp: Option<std::fs::File>,
    done: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u32>,
    receiver: std::thread::JoinHandle<Vec<u32>>,
}

impl PacedStream {
    /// Start it from `from` to `to`'s `port`, and let it settle.
    pub(crate) fn start(from: &Pod, to: &Pod, port: u16) -> Self {
        let dst = SocketAddrV4::new(to.ip, port);
        let rx = to.ns.enter(|| UdpSocket::bind(dst)).unwrap().unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // Room for a second of the stream: the receiving thread shares two cores with
        // the lab, and a loss here would not be the dataplane's.
        nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20)).unwrap();
        let tx = from.ns.enter(|| UdpSocket::bind(SocketAddrV4::new(from.ip, 0))).unwrap().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let sender = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut seq = 0u32;
                while !done.load(Relaxed) && seq < 200_000 {
                    for _ in 0..25 {
                        tx.send_to(&seq.to_be_bytes(), dst).unwrap();
                        seq += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                seq
            })
        };
        let receiver = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok((n, _)) = rx.recv_from(&mut buf) {
                if n == 4 {
                    got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                }
            }
            got
        });
        std::thread::sleep(Duration::from_millis(300));
        let snmp = to.ns.enter(|| std::fs::File::open("/proc/thread-self/net/snmp")).ok().and_then(Result::ok);
        Self { snmp, done, sender, receiver }
    }

    /// Stop it and assert that every datagram arrived (`d`'s drops in the message if
    /// not); returns (sent, received).
    pub(crate) fn stop(self, d: &Xlaned) -> (u32, usize) {
        std::thread::sleep(Duration::from_millis(300));
        self.done.store(true, Relaxed);
        let sent = self.sender.join().unwrap();
        let mut got = self.receiver.join().unwrap();
        got.sort_unstable();
        got.dedup();
        // Runs of missing sequence numbers: a blackout or scattered drops.
        let mut missing: Vec<std::ops::Range<u32>> = Vec::new();
        for s in (0..sent).filter(|s| got.binary_search(s).is_err()) {
            match missing.last_mut() {
                Some(r) if r.end == s => r.end += 1,
                _ => missing.push(s..s + 1),
            }
        }
        let runs = missing.len();
        missing.truncate(10);
        let lost = sent as usize - got.len();
        assert!(
            lost == 0,
            "lost {lost} of {sent} in-flight packets in {runs} runs, e.g. {missing:?}; drops {:?}; receiver's UDP {}; {}",
            d.counters().drops.iter().filter(|(_, v)| **v > 0).collect::<Vec<_>>(),
            udp_counters(self.snmp),
            d.log().lines().filter(|l| l.contains("held the worker")).collect::<Vec<_>>().join("\n")
        );
        (sent, got.len())
    }
}

/// The UDP counters in a namespace's `/proc/net/snmp`, opened there (read afresh).
fn udp_counters(snmp: Option<std::fs::File>) -> String {
    let mut text = String::new();
    if let Some(mut f) = snmp {
        let _ = io::Seek::seek(&mut f, io::SeekFrom::Start(0));
        let _ = io::Read::read_to_string(&mut f, &mut text);
    }
    text.lines().filter(|l| l.starts_with("Udp:")).collect::<Vec<_>>().join(" / ")
}

/// Three pings from `ns` to `dst`.
pub(crate) fn ping(ns: &Netns, dst: Ipv4Addr) -> Result<(), String> {
    ns.ping(&dst.to_string(), 3)
}

/// The vhost-user port of the endpoint at `ip`, as `xlanectl ports` lists it.
pub(crate) fn vhost_port(d: &Xlaned, ip: Ipv4Addr) -> Option<xlane_api::PortInfo> {
    let Reply::Ports { ports } = d.ok(Op::Dump { table: Table::Ports }) else { panic!() };
    ports.into_iter().find(|p| p.ip == Some(ip) && p.vhost_user.is_some())
}

/// Wait until the port has had `n` frontend connections and one is connected.
pub(crate) fn wait_connected(d: &Xlaned, ip: Ipv4Addr, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = vhost_port(d, ip).and_then(|p| p.vhost_user).expect("port listed");
        if v.connected && v.connections == n {
            return;
        }
        assert!(Instant::now() < deadline, "frontend {n} never connected: {v:?}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
