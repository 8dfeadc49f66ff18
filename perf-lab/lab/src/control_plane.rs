//! `control-plane`: the time from a lease appearing in the datastore to its route being
//! in xlaned's FIB, for N simulated remote nodes, and the agent's memory at N nodes. One
//! lab node (namespace, uplink on a fabric bridge, default route via the fabric) runs
//! xlaned; an agent feeds it; this tool writes N leases (flannel JSON, as N nodes
//! would) at a steady rate and polls xlaned's routes to see when each lands.

use crate::Store;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xlane_agent::lease::LeaseAttrs;
use xlane_api::{Client, Mac, Op, Reply, Table};
use xlane_netlab::process::Proc;

/// Writes one lease (subnet, attributes) into the datastore under test.
type Writer = Box<dyn FnMut(&str, &LeaseAttrs) -> anyhow::Result<()>>;

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().map(|d| d.join(name)).ok_or_else(|| anyhow::anyhow!("no directory for {name}"))?;
    anyhow::ensure!(
        p.exists(),
        "{} not built (cargo build --release --workspace --bins --features xlane-agent/etcd)",
        p.display()
    );
    Ok(p)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn routes(sock: &Path) -> anyhow::Result<Vec<String>> {
    match Client::connect(sock)?.call(Op::Dump { table: Table::Routes })? {
        Reply::Routes { routes } => Ok(routes.into_iter().map(|r| r.prefix.to_string()).collect()),
        r => anyhow::bail!("unexpected {r:?}"),
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while !f() {
        anyhow::ensure!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Remote node `i`: subnet 10.x.y.0/24 from 10.1.0.0 on, underlay 172.16.x.y (behind the
/// fabric router).
fn remote(i: u32) -> (String, LeaseAttrs) {
    let subnet = Ipv4Addr::from(0x0a01_0000 + (i << 8));
    let ip = Ipv4Addr::from(0xac10_0000 + i + 1);
    let o = ip.octets();
    (format!("{subnet}/24"), LeaseAttrs::vxlan(ip, 1, Mac([0x0e, 0xaa, o[1], o[2], o[3], 1])))
}

#[allow(clippy::too_many_lines, reason = "one linear procedure: set up, measure, report")]
pub fn run(nodes: u32, rate: u32, store: Store, json: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, XDP)");
    let dir = std::env::temp_dir().join(format!("xlane-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let lab = xlane_netlab::Lab::new("xperf", 1)?;
    let node = &lab.nodes[0];
    node.ns.ip(&["route", "add", "default", "via", "192.168.50.254"])?;
    let xl_sock = dir.join("xlaned.sock");
    let xlaned_args: Vec<String> =
        ["--uplink", "eth0", "--metrics", "off", "--socket", &xl_sock.to_string_lossy()].map(str::to_owned).to_vec();
    let _xlaned = Proc::spawn(&node.ns, &sibling("xlaned")?, &xlaned_args, dir.join("xlaned.log"))?;
    wait_until("xlaned", Duration::from_secs(10), || Client::connect(&xl_sock).is_ok())?;
    let network = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
    let agent_sock = dir.join("agent.sock");
    let mut agent_args: Vec<String> = vec![
        "--state-dir".into(),
        dir.join("state").to_string_lossy().into_owned(),
        "--xlaned-socket".into(),
        xl_sock.to_string_lossy().into_owned(),
        "--socket".into(),
        agent_sock.to_string_lossy().into_owned(),
        "--lease-ttl".into(),
        "600".into(),
    ];
    let mut _etcd = None;
    let mut writer: Writer = match store {
        Store::File => {
            let store_dir = dir.join("store");
            let fs = xlane_agent::store::file::FileStore::open(&store_dir)?;
            fs.put_network_config(network)?;
            agent_args.extend(["--store-dir".into(), store_dir.to_string_lossy().into_owned()]);
            Box::new(move |s, a| Ok(fs.put_lease(s.parse()?, a, Duration::from_secs(600))?))
        }
        Store::Etcd => etcd_writer(&dir, network, &mut agent_args, &mut _etcd)?,
    };
    let agent = Proc::spawn_here(&sibling("xlane-agent")?, &agent_args, dir.join("agent.log"))?;
    let agent_pid = agent.pid().unwrap_or_default();
    wait_until("agent lease", Duration::from_secs(15), || {
        xlane_agent::api::AgentClient::connect(&agent_sock)
            .and_then(|mut c| c.call(xlane_agent::api::AgentOp::Status))
            .is_ok_and(|r| matches!(r, xlane_agent::api::AgentReply::Status { dataplane_synced: true, .. }))
    })?;
    let rss_before = rss_kib(agent_pid);

    eprintln!("writing {nodes} leases at {rate}/s ({:?})", store);
    let mut written: HashMap<String, Instant> = HashMap::new();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let t0 = Instant::now();
    let per = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut last_poll = Instant::now();
    for i in 0..nodes {
        let (subnet, attrs) = remote(i);
        let due = t0 + per * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        writer(&subnet, &attrs)?;
        written.insert(subnet, Instant::now());
        if last_poll.elapsed() > Duration::from_millis(20) {
            for r in routes(&xl_sock)? {
                seen.entry(r).or_insert_with(Instant::now);
            }
            last_poll = Instant::now();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < written.len() && Instant::now() < deadline {
        for r in routes(&xl_sock)? {
            seen.entry(r).or_insert_with(Instant::now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for (s, w) in &written {
        if let Some(t) = seen.get(s) {
            h.record(u64::try_from(t.saturating_duration_since(*w).as_micros()).unwrap_or(u64::MAX).max(1))?;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(agent_pid);
    let result = serde_json::json!({
        "measurement": "lease_to_fib",
        "store": format!("{store:?}").to_lowercase(),
        "nodes": nodes,
        "rate_per_s": rate,
        "routed": seen.len(),
        "latency_ms": {
            "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        },
        "agent_rss_kib": {"idle": rss_before, "at_nodes": rss_after},
        "note": "latency includes this tool's 20 ms route polling",
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_vec_pretty(&result)?)?;
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        seen.len() == written.len(),
        "{} of {} routes never appeared",
        written.len() - seen.len(),
        written.len()
    );
    Ok(())
}

#[cfg(feature = "etcd")]
fn etcd_writer(
    dir: &Path,
    network: &str,
    agent_args: &mut Vec<String>,
    keep: &mut Option<Proc>,
) -> anyhow::Result<Writer> {
    use xlane_agent::store::Datastore as _;
    use xlane_agent::store::etcd::{DEFAULT_PREFIX, EtcdStore};
    let url = "http://127.0.0.1:32379";
    let data_dir = dir.join("etcd").to_string_lossy().into_owned();
    let args: Vec<String> = [
        "--name",
        "perf",
        "--data-dir",
        &data_dir,
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        "http://127.0.0.1:32380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:32380",
        "--initial-cluster",
        "perf=http://127.0.0.1:32380",
    ]
    .map(str::to_owned)
    .to_vec();
    *keep = Some(
        Proc::spawn_here(Path::new("etcd"), &args, dir.join("etcd.log"))
            .map_err(|e| anyhow::anyhow!("starting etcd (apt-get install etcd-server): {e}"))?,
    );
    let eps = vec![url.to_owned()];
    wait_until("etcd", Duration::from_secs(15), || {
        EtcdStore::connect(&eps, DEFAULT_PREFIX).and_then(|mut s| s.network_config()).is_ok()
    })?;
    let mut es = EtcdStore::connect(&eps, DEFAULT_PREFIX)?;
    es.put_network_config(network)?;
    agent_args.extend(["--datastore".into(), "etcd".into(), "--etcd-endpoints".into(), url.into()]);
    Ok(Box::new(move |s, a| Ok(es.put_lease(s.parse()?, a, Duration::from_secs(600))?)))
}

#[cfg(not(feature = "etcd"))]
fn etcd_writer(_: &Path, _: &str, _: &mut Vec<String>, _: &mut Option<Proc>) -> anyhow::Result<Writer> {
    anyhow::bail!(
        "built without etcd: cargo build --release -p xlane-lab --features etcd (needs protoc), or --store file"
    )
}
