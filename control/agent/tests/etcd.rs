//! The etcd datastore against real etcd (Debian's etcd-server), started by the test on
//! loopback with non-default ports and a temporary data directory, stopped by PID.
#![cfg(feature = "etcd")]

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xlane_agent::lease::{Lease, LeaseAttrs};
use xlane_agent::netconf::NetConfig;
use xlane_agent::store::etcd::{DEFAULT_PREFIX, EtcdStore};
use xlane_agent::store::{Datastore, Event, StoreError};

static SERIAL: Mutex<()> = Mutex::new(());

/// etcd members on 127.0.0.1, removed (by PID, then their data) on drop.
struct Etcd {
    members: Vec<Option<Child>>,
    dir: PathBuf,
    base: u16,
    n: usize,
}

fn etcd_available(test: &str) -> bool {
    let found = Command::new("etcd").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(
        found || std::env::var("CI").as_deref() != Ok("true"),
        "{test}: etcd not installed (CI=true: not skipping)"
    );
    if !found {
        eprintln!("SKIPPED {test}: etcd not installed (apt-get install etcd-server)");
    }
    found
}

impl Etcd {
    fn start(n: usize, tag: u16) -> Self {
        // Ports from the PID and a per-test tag, away from 2379/2380 and below the
        // ephemeral range (32768–60999: a client's port there made etcd's bind fail).
        let base = 20_000 + u16::try_from(std::process::id() % 120).unwrap() * 100 + tag * 10;
        let dir = std::env::temp_dir().join(format!("xlane-etcd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = Self { members: Vec::new(), dir, base, n };
        for i in 0..n {
            let c = e.spawn(i, "new");
            e.members.push(Some(c));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while EtcdStore::connect(&e.endpoints(), DEFAULT_PREFIX).and_then(|mut s| s.network_config()).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        e
    }

    fn client_port(&self, i: usize) -> u16 {
        self.base + u16::try_from(i).unwrap() * 2
    }

    fn endpoints(&self) -> Vec<String> {
        (0..self.n).map(|i| format!("http://127.0.0.1:{}", self.client_port(i))).collect()
    }

    fn spawn(&self, i: usize, state: &str) -> Child {
        let peer = |j: usize| format!("http://127.0.0.1:{}", self.client_port(j) + 1);
        let cluster: Vec<String> = (0..self.n).map(|j| format!("m{j}={}", peer(j))).collect();
        let client = format!("http://127.0.0.1:{}", self.client_port(i));
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("xlane-etcd-{}-m{i}.log", std::process::id())))
                .unwrap();
        Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(self.dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "xlane-test", "--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        let c = self.spawn(i, "existing");
        self.members[i] = Some(c);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cfg() -> NetConfig {
    NetConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap()
}

fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 50, last), 1, xlane_api::Mac([0x0e, 0, 0, 0, last, 1]))
}

fn wait_event(s: &mut EtcdStore, rev: &mut u64, want: &Event, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (events, r) = s.watch(*rev, Duration::from_millis(500)).unwrap();
        *rev = r;
        if events.contains(want) {
            return;
        }
        assert!(Instant::now() < deadline, "no {want:?} within {within:?}");
    }
}

#[test]
fn leases_in_flannels_schema_with_ttl_and_watch() {
    if !etcd_available("leases_in_flannels_schema_with_ttl_and_watch") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let etcd = Etcd::start(1, 1);
    let mut a = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let mut b = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    a.put_network_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert!(b.network_config().unwrap().unwrap().contains("10.244.0.0/16"));
    let (_, mut rev) = b.leases().unwrap();

    let la = a.acquire(&cfg(), &attrs(1), None, Duration::from_secs(30)).unwrap();
    let lb = b.acquire(&cfg(), &attrs(2), None, Duration::from_secs(30)).unwrap();
    assert_ne!(la.subnet, lb.subnet);
    wait_event(&mut b, &mut rev, &Event::Upsert(la.clone()), Duration::from_secs(5));
    // A restart (new connection, same public IP) keeps the subnet.
    let again = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX)
        .unwrap()
        .acquire(&cfg(), &attrs(1), None, Duration::from_secs(30))
        .unwrap();
    assert_eq!(again.subnet, la.subnet);

    // A lease written by hand in flannel's exact JSON is read as a node.
    let flannel = r#"{"PublicIP":"192.168.50.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:41:9c:3e:51:0a"}}"#;
    let fl: LeaseAttrs = serde_json::from_str(flannel).unwrap();
    a.put_lease("10.244.99.0/24".parse().unwrap(), &fl, Duration::from_secs(2)).unwrap();
    let flannel_lease = Lease { subnet: "10.244.99.0/24".parse().unwrap(), attrs: fl };
    wait_event(&mut b, &mut rev, &Event::Upsert(flannel_lease.clone()), Duration::from_secs(5));
    // Nobody renews it: etcd expires it and the watcher sees it go.
    wait_event(&mut b, &mut rev, &Event::Removed(flannel_lease.subnet), Duration::from_secs(6));
    // Our own lease survives by renewal, and is flannel JSON at flannel's key.
    for _ in 0..3 {
        a.renew(&again, Duration::from_secs(30)).unwrap();
    }
    let (leases, _) = b.leases().unwrap();
    assert!(leases.iter().any(|l| l.subnet == la.subnet && l.attrs == attrs(1)));
    // Released: gone for everyone, and renewing it says so.
    let mut c = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let lc = c.acquire(&cfg(), &attrs(3), None, Duration::from_secs(30)).unwrap();
    c.release(&lc).unwrap();
    wait_event(&mut b, &mut rev, &Event::Removed(lc.subnet), Duration::from_secs(5));
    assert!(matches!(c.renew(&lc, Duration::from_secs(30)), Err(StoreError::Lost(_))));
}

#[test]
fn three_members_survive_a_member_loss_and_wait_out_a_quorum_loss() {
    if !etcd_available("three_members_survive_a_member_loss_and_wait_out_a_quorum_loss") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut etcd = Etcd::start(3, 2);
    let mut a = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let mut watcher = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let (_, mut rev) = watcher.leases().unwrap();
    let la = a.acquire(&cfg(), &attrs(1), None, Duration::from_secs(10)).unwrap();
    wait_event(&mut watcher, &mut rev, &Event::Upsert(la.clone()), Duration::from_secs(5));

    // One member down: nothing changes for the agents.
    etcd.kill(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.renew(&la, Duration::from_secs(10)).is_err() {
        assert!(Instant::now() < deadline, "renewal keeps failing with one member down");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A new agent joins: like the agent's own loop, it retries a failed call while the
    // client's balancer learns that a member is gone (on a loaded machine one call can
    // time out first).
    let mut b = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let lb = loop {
        match b.acquire(&cfg(), &attrs(2), None, Duration::from_secs(10)) {
            Ok(l) => break l,
            Err(e) => assert!(Instant::now() < deadline, "a new agent cannot join with one member down: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    wait_event(&mut watcher, &mut rev, &Event::Upsert(lb.clone()), Duration::from_secs(10));

    // Quorum lost: calls fail (not "lost": the agent keeps its last known routes) ...
    etcd.kill(1);
    std::thread::sleep(Duration::from_secs(1));
    match a.renew(&la, Duration::from_secs(10)) {
        Err(StoreError::Io { .. }) => {}
        other => panic!("renewal without quorum should fail, not {other:?}"),
    }
    // ... and recover when quorum returns, with the lease still ours.
    etcd.restart(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match a.renew(&la, Duration::from_secs(10)) {
            Ok(()) => break,
            Err(StoreError::Lost(s)) => panic!("lease on {s} lost across a quorum outage"),
            Err(_) => assert!(Instant::now() < deadline, "no recovery after quorum returned"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (leases, _) = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap().leases().unwrap();
    assert!(leases.iter().any(|l| l.subnet == la.subnet) && leases.iter().any(|l| l.subnet == lb.subnet), "{leases:?}");
}

/// Agents on a three-member etcd cluster feed their nodes' xlaned: pods talk across nodes;
/// a member loss changes nothing; a killed agent's routes go within TTL + 2 s; during a
/// quorum loss every node keeps its last known routes and traffic flows; when quorum
/// returns the agents carry on.
#[test]
fn agents_on_etcd_through_member_and_quorum_loss() {
    if !etcd_available("agents_on_etcd_through_member_and_quorum_loss")
        || !xlane_netlab::privileged("agents_on_etcd_through_member_and_quorum_loss")
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    use common::{attach_pod, ping, routes, wait_for};
    use xlane_netlab::cluster::{Cluster, ClusterOptions, Datastore};
    const TTL: u32 = 4;
    let mut etcd = Etcd::start(3, 3);
    EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX)
        .unwrap()
        .put_network_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
        .unwrap();
    let opts = ClusterOptions {
        datastore: Datastore::Etcd { endpoints: etcd.endpoints(), prefix: None },
        lease_ttl: TTL,
        ..ClusterOptions::default()
    };
    // Declared after `etcd`, so dropped before it: the agents stop while etcd still runs.
    let mut c = Cluster::start("xa-etcd", 3, &opts).unwrap();
    for i in 0..3 {
        wait_for("routes to the two other nodes", Duration::from_secs(10), || {
            routes(&c.nodes[i].xlaned_socket).len() == 2
        });
    }
    let p0 = attach_pod(&mut c, 0, "a");
    let p1 = attach_pod(&mut c, 1, "b");
    let a_pings_b = |c: &Cluster| ping(&c.lab.pods[p0].ns, c.lab.pods[p1].ip);
    assert!(a_pings_b(&c));

    // A member down: nothing changes.
    etcd.kill(0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(routes(&c.nodes[0].xlaned_socket).len(), 2);
    assert!(a_pings_b(&c));

    // Agent 2 dies without cleanup: its routes go within TTL + 2 s (two members still up).
    let gone = routes(&c.nodes[0].xlaned_socket)
        .into_iter()
        .find(|r| r.ends_with("via 192.168.50.3"))
        .expect("a route to node 2");
    c.nodes[2].agent.stop(nix::sys::signal::Signal::SIGKILL);
    let took = wait_for("node 2's routes withdrawn", Duration::from_secs(u64::from(TTL) + 2), || {
        (0..2).all(|i| !routes(&c.nodes[i].xlaned_socket).contains(&gone))
    });
    eprintln!("lease expired and withdrawn after {took:?} (TTL {TTL} s) with one etcd member down");

    // Quorum lost: every node keeps its last known routes; traffic flows.
    etcd.kill(1);
    std::thread::sleep(Duration::from_secs(u64::from(TTL)));
    assert_eq!(routes(&c.nodes[0].xlaned_socket).len(), 1, "routes kept without quorum");
    assert!(a_pings_b(&c), "traffic flows without quorum");
    // Quorum back: the agents carry on (agent 2 comes back and is routed again).
    etcd.restart(1);
    c.restart_agent(2).unwrap();
    wait_for("node 2 routed again", Duration::from_secs(15), || {
        routes(&c.nodes[0].xlaned_socket).len() == 2 && routes(&c.nodes[1].xlaned_socket).len() == 2
    });
    assert!(a_pings_b(&c));
}

/// POST a JSON body to etcd's gRPC gateway and return the response body.
fn gateway(port: u16, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// A watcher whose revision etcd compacted away lists again and reports exactly what
/// changed meanwhile.
#[test]
fn watch_recovers_from_compaction() {
    if !etcd_available("watch_recovers_from_compaction") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let etcd = Etcd::start(1, 4);
    let mut a = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let la = a.acquire(&cfg(), &attrs(1), None, Duration::from_secs(30)).unwrap();
    let mut w = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let (_, rev) = w.leases().unwrap();
    // Meanwhile: two nodes join, one leaves; then history is compacted.
    let mut b = EtcdStore::connect(&etcd.endpoints(), DEFAULT_PREFIX).unwrap();
    let lb = b.acquire(&cfg(), &attrs(2), None, Duration::from_secs(30)).unwrap();
    let lc = b.put_lease("10.244.50.0/24".parse().unwrap(), &attrs(3), Duration::from_secs(30));
    lc.unwrap();
    a.release(&la).unwrap();
    let range = gateway(etcd.client_port(0), "/v3/kv/range", r#"{"key":"Lw=="}"#);
    let v: serde_json::Value = serde_json::from_str(&range).unwrap();
    let now: i64 = v["header"]["revision"].as_str().unwrap().parse().unwrap();
    let r = gateway(etcd.client_port(0), "/v3/kv/compaction", &format!(r#"{{"revision":"{now}","physical":true}}"#));
    assert!(r.contains("header"), "compaction: {r}");
    let (events, _) = w.watch(rev, Duration::from_secs(3)).unwrap();
    assert!(events.contains(&Event::Removed(la.subnet)), "{events:?}");
    assert!(events.contains(&Event::Upsert(lb)), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, Event::Upsert(l) if l.subnet.to_string() == "10.244.50.0/24")),
        "{events:?}"
    );
}
