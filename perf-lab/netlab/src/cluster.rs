//! A running xlane cluster on a [`Lab`]: every node runs `xlaned` (in its namespace, on
//! its uplink) and `xlane-agent` (in this namespace: it needs only unix sockets and the
//! datastore, a file datastore shared by all nodes as on one host, or etcd on loopback).

use crate::process::{Proc, wait_until};
use crate::runtime::{Container, Runtime};
use crate::{Lab, Netns, workspace_binary};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xlane_agent::api::{AgentClient, AgentOp, AgentReply, AllocationInfo};
use xlane_api::{Client, Op, PortInfo, Reply, Table};

/// The flannel network configuration every node reads.
pub const DEFAULT_NETCONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// One node's daemons.
#[derive(Debug)]
pub struct ClusterNode {
    /// The dataplane.
    pub xlaned: Proc,
    /// The agent.
    pub agent: Proc,
    /// xlaned's control socket.
    pub xlaned_socket: PathBuf,
    /// The agent's API socket (what the CNI plugin's `agentSocket` names).
    pub agent_socket: PathBuf,
    xlaned_args: Vec<String>,
    agent_args: Vec<String>,
}

/// Start node `i`'s xlaned in `ns` on its uplink `eth0`, socket `<dir>/xlaned<i>.sock`,
/// log `<dir>/xlaned<i>.log`, with `extra` arguments; returns once it answers.
///
/// # Errors
/// It cannot start, exits, or does not answer within 10 s (its log is in the message).
pub fn start_xlaned(ns: &Netns, dir: &Path, i: usize, extra: &[String]) -> io::Result<Proc> {
    start_xlaned_as(ns, dir, i, extra, false)
}

/// [`start_xlaned`], or with `supervised` under `xlane-supervise` (restarted when it
/// dies, with a file-descriptor store, as its systemd unit runs it); the [`Proc`] is
/// then the supervisor's, and [`supervised_pid`] finds xlaned's.
///
/// # Errors
/// As [`start_xlaned`].
pub fn start_xlaned_as(ns: &Netns, dir: &Path, i: usize, extra: &[String], supervised: bool) -> io::Result<Proc> {
    let socket = dir.join(format!("xlaned{i}.sock"));
    let mut args = vec!["--uplink".into(), "eth0".into(), "--socket".into(), socket.to_string_lossy().into_owned()];
    args.extend(extra.iter().cloned());
    let log = dir.join(format!("xlaned{i}.log"));
    let mut xlaned = if supervised {
        // Restarted at once, as the lab's crash measurements model the supervisor.
        let mut sup: Vec<String> = vec!["--restart-delay-ms".into(), "0".into(), "--".into()];
        sup.push(workspace_binary("xlaned").to_string_lossy().into_owned());
        sup.extend(args);
        Proc::spawn(ns, &workspace_binary("xlane-supervise"), &sup, log)?
    } else {
        Proc::spawn(ns, &workspace_binary("xlaned"), &args, log)?
    };
    wait_until("xlaned's socket", Duration::from_secs(10), &mut xlaned, || Client::connect(&socket).is_ok())?;
    Ok(xlaned)
}

/// The PID of the xlaned a supervisor `proc` runs now (its one child), if any.
#[must_use]
pub fn supervised_pid(proc: &Proc) -> Option<u32> {
    let pid = proc.pid()?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Where the agents keep their leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Datastore {
    /// A directory shared by every node, `<dir>/store`; the network configuration is
    /// written there.
    #[default]
    File,
    /// etcd (the caller runs it). The agents get the network configuration as
    /// `--network-config`, used while etcd holds none.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
        /// Key prefix; `None` for the agent's default (flannel's).
        prefix: Option<String>,
    },
}

/// The arguments of node `i`'s agent: the datastore (file: `<dir>/store`; etcd: its
/// endpoints, network configuration `<dir>/netconf.json`), state `<dir>/state<i>`,
/// xlaned at `<dir>/xlaned<i>.sock`, API at `<dir>/agent<i>.sock`.
#[must_use]
pub fn agent_args(dir: &Path, i: usize, lease_ttl: u32, datastore: &Datastore) -> Vec<String> {
    let path = |s: &str| dir.join(s).to_string_lossy().into_owned();
    let mut args: Vec<String> = match datastore {
        Datastore::File => vec!["--store-dir".into(), path("store")],
        Datastore::Etcd { endpoints, prefix } => {
            let mut a = vec!["--datastore".into(), "etcd".into(), "--etcd-endpoints".into(), endpoints.join(",")];
            if let Some(p) = prefix {
                a.extend(["--etcd-prefix".into(), p.clone()]);
            }
            a.extend(["--network-config".into(), path(NETCONF_FILE)]);
            a
        }
    };
    args.extend([
        "--state-dir".into(),
        path(&format!("state{i}")),
        "--xlaned-socket".into(),
        path(&format!("xlaned{i}.sock")),
        "--socket".into(),
        path(&format!("agent{i}.sock")),
        "--lease-ttl".into(),
        lease_ttl.to_string(),
    ]);
    args
}

/// The network configuration file agents on etcd are given, in the cluster's directory.
const NETCONF_FILE: &str = "netconf.json";

/// A lab with xlane running on every node. Dropping it stops the daemons (by PID), then
/// removes the namespaces and the working directory.
#[derive(Debug)]
pub struct Cluster {
    /// The daemons of the xlane nodes, the lab's first nodes (stopped first).
    pub nodes: Vec<ClusterNode>,
    /// The namespaces.
    pub lab: Lab,
    /// Sockets, logs, datastore and state.
    pub dir: PathBuf,
    /// The CNI config's `attach`, if set ([`ClusterOptions::attach`]).
    pub attach: Option<String>,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Where the agents keep their leases.
    pub datastore: Datastore,
    /// flannel network configuration (`<store>/config`, or for etcd the agents'
    /// `--network-config`).
    pub netconf: String,
    /// Extra `xlaned` arguments (e.g. `--busy-poll`).
    pub xlaned_args: Vec<String>,
    /// Agent lease TTL in seconds.
    pub lease_ttl: u32,
    /// How many of the lab's nodes (the first ones) run xlane; the rest are bare
    /// namespaces for another dataplane (the interop scenario, the kernel baselines).
    pub xlane_nodes: Option<u8>,
    /// The CNI config's `attach` (`veth`, `veth-xdp`, `veth-offload`, `vhost-user`);
    /// `None` leaves the plugin's default.
    pub attach: Option<String>,
    /// The underlay's MTU (`None`: 1500); pods get 50 less from xlaned.
    pub mtu: Option<u16>,
    /// Run each xlaned under `xlane-supervise` (see [`start_xlaned_as`]).
    pub supervised: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            datastore: Datastore::File,
            netconf: DEFAULT_NETCONF.into(),
            xlaned_args: Vec::new(),
            lease_ttl: 30,
            xlane_nodes: None,
            attach: None,
            mtu: None,
            supervised: false,
        }
    }
}

impl Cluster {
    /// Build a lab of `nodes` nodes named after `prefix` and start xlane on each (or on
    /// the first [`ClusterOptions::xlane_nodes`]); returns once every agent holds a lease
    /// and its dataplane is in sync. [`Cluster::nodes`] lists the xlane nodes.
    ///
    /// # Errors
    /// Lab setup failures, a daemon that does not come up (its log is in the message).
    pub fn start(prefix: &str, nodes: u8, opts: &ClusterOptions) -> io::Result<Self> {
        let mtu = opts.mtu.unwrap_or(crate::topology::UPLINK_MTU);
        let lab = Lab::with_mtu(prefix, nodes, 1, mtu)?;
        let dir = std::env::temp_dir().join(format!("xlane-{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        match opts.datastore {
            Datastore::File => {
                std::fs::create_dir_all(dir.join("store"))?;
                std::fs::write(dir.join("store/config"), &opts.netconf)?;
            }
            Datastore::Etcd { .. } => std::fs::write(dir.join(NETCONF_FILE), &opts.netconf)?,
        }
        let mut cluster = Self { nodes: Vec::new(), lab, dir, attach: opts.attach.clone() };
        for i in 0..usize::from(opts.xlane_nodes.unwrap_or(nodes).min(nodes)) {
            let node = cluster.start_node(i, opts)?;
            cluster.nodes.push(node);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_converged(i)?;
        }
        Ok(cluster)
    }

    /// Wait until node `i`'s dataplane can reach every other xlane node: each is in its
    /// node table with the next-hop MAC resolved. A lease reaches the other agents by their
    /// watch and the underlay's ARP answer comes after it; until both have, packets to that
    /// node are counted drops (`unresolved_vtep`), so a lab that starts traffic earlier
    /// loses its first packets.
    ///
    /// # Errors
    /// Not within 20 s, or xlaned exited.
    pub fn wait_converged(&mut self, i: usize) -> io::Result<()> {
        let socket = self.nodes[i].xlaned_socket.clone();
        let peers: Vec<Ipv4Addr> = (0..self.nodes.len()).filter(|&j| j != i).map(|j| self.lab.nodes[j].ip).collect();
        wait_until(
            "every other node in the dataplane, resolved",
            Duration::from_secs(20),
            &mut self.nodes[i].xlaned,
            || {
                let Ok(mut c) = Client::connect(&socket) else { return false };
                match c.call(Op::Dump { table: Table::Nodes }) {
                    Ok(Reply::Nodes { nodes }) => {
                        peers.iter().all(|p| nodes.iter().any(|n| n.underlay_ip == *p && n.next_hop_mac.is_some()))
                    }
                    _ => false,
                }
            },
        )
    }

    fn start_node(&self, i: usize, opts: &ClusterOptions) -> io::Result<ClusterNode> {
        let xlaned = start_xlaned_as(&self.lab.nodes[i].ns, &self.dir, i, &opts.xlaned_args, opts.supervised)?;
        let agent_args = agent_args(&self.dir, i, opts.lease_ttl, &opts.datastore);
        let agent = Proc::spawn_here(&workspace_binary("xlane-agent"), &agent_args, self.agent_log(i))?;
        Ok(ClusterNode {
            xlaned,
            agent,
            xlaned_socket: self.dir.join(format!("xlaned{i}.sock")),
            agent_socket: self.dir.join(format!("agent{i}.sock")),
            xlaned_args: opts.xlaned_args.clone(),
            agent_args,
        })
    }

    fn agent_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent{i}.log"))
    }

    /// Wait until node `i`'s agent holds a lease and its dataplane is in sync.
    ///
    /// # Errors
    /// Not within 20 s, or the agent exited.
    pub fn wait_ready(&mut self, i: usize) -> io::Result<()> {
        let sock = self.nodes[i].agent_socket.clone();
        wait_until("the agent's lease and dataplane sync", Duration::from_secs(20), &mut self.nodes[i].agent, || {
            agent_ready(&sock)
        })
    }

    /// Stop node `i`'s agent (SIGTERM, by PID).
    pub fn stop_agent(&mut self, i: usize) {
        self.nodes[i].agent.stop(nix::sys::signal::Signal::SIGTERM);
    }

    /// Restart node `i`'s agent and wait until it is ready again.
    ///
    /// # Errors
    /// As [`Cluster::wait_ready`].
    pub fn restart_agent(&mut self, i: usize) -> io::Result<()> {
        self.stop_agent(i);
        let log = self.agent_log(i).with_extension("restarted.log");
        self.nodes[i].agent = Proc::spawn_here(&workspace_binary("xlane-agent"), &self.nodes[i].agent_args, log)?;
        self.wait_ready(i)
    }

    /// Restart node `i`'s xlaned (after the test stopped or killed it), on the same
    /// socket; returns once it answers there.
    ///
    /// # Errors
    /// As [`start_xlaned`].
    pub fn restart_xlaned(&mut self, i: usize) -> io::Result<()> {
        self.restart_xlaned_with(i, &[])
    }

    /// [`restart_xlaned`](Self::restart_xlaned) with `more` arguments after the ones it
    /// had (kept for later restarts): a node upgraded to other settings.
    ///
    /// # Errors
    /// As [`start_xlaned`].
    pub fn restart_xlaned_with(&mut self, i: usize, more: &[&str]) -> io::Result<()> {
        self.nodes[i].xlaned_args.extend(more.iter().map(|&a| a.to_owned()));
        self.nodes[i].xlaned.stop(nix::sys::signal::Signal::SIGTERM);
        let args = self.nodes[i].xlaned_args.clone();
        self.nodes[i].xlaned = start_xlaned(&self.lab.nodes[i].ns, &self.dir, i, &args)?;
        Ok(())
    }

    /// A client of node `i`'s agent.
    ///
    /// # Errors
    /// The agent is not listening.
    pub fn agent(&self, i: usize) -> io::Result<AgentClient> {
        AgentClient::connect(&self.nodes[i].agent_socket).map_err(io::Error::from)
    }
}

impl Cluster {
    /// Node `i`'s pod address allocations, as its agent reports them.
    ///
    /// # Errors
    /// The agent does not answer.
    pub fn allocations(&self, i: usize) -> io::Result<Vec<AllocationInfo>> {
        match self.agent(i)?.call(AgentOp::Status)? {
            AgentReply::Status { allocations, .. } => Ok(allocations),
            other => Err(io::Error::other(format!("agent status: {other:?}"))),
        }
    }

    /// Node `i`'s pod ports (not the host port), as xlaned reports them.
    ///
    /// # Errors
    /// xlaned does not answer.
    pub fn endpoints(&self, i: usize) -> io::Result<Vec<PortInfo>> {
        let mut c = Client::connect(&self.nodes[i].xlaned_socket).map_err(io::Error::other)?;
        match c.call(Op::Dump { table: Table::Endpoints }).map_err(io::Error::other)? {
            Reply::Endpoints { endpoints } => Ok(endpoints.into_iter().filter(|e| e.role == "pod").collect()),
            other => Err(io::Error::other(format!("xlaned dump: {other:?}"))),
        }
    }

    /// Node `i`'s dataplane counters.
    ///
    /// # Errors
    /// xlaned does not answer.
    pub fn counters(&self, i: usize) -> io::Result<xlane_api::Counters> {
        let mut c = Client::connect(&self.nodes[i].xlaned_socket).map_err(io::Error::other)?;
        match c.call(Op::Counters).map_err(io::Error::other)? {
            Reply::Counters(c) => Ok(*c),
            other => Err(io::Error::other(format!("xlaned counters: {other:?}"))),
        }
    }

    /// The host-side pod interfaces (`xl…`) in node `i`.
    ///
    /// # Errors
    /// `ip` failures.
    pub fn pod_veths(&self, i: usize) -> io::Result<Vec<String>> {
        let out = self.lab.nodes[i].ns.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
            .filter(|n| n.starts_with("xl") && n != "xlane0" && n != "xlane0-e")
            .collect())
    }
}

/// A pod attached through the `xlane` CNI plugin, as a runtime would.
#[derive(Debug)]
pub struct CniPod {
    /// The pod's namespace.
    pub ns: Netns,
    /// Its node.
    pub node: usize,
    /// What the runtime passed.
    pub container: Container,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The ADD result (cached for DEL, as runtimes do).
    pub result: serde_json::Value,
}

impl Cluster {
    /// A runtime finding the `xlane` plugin beside the workspace's binaries and Debian's
    /// reference plugins in /usr/lib/cni.
    #[must_use]
    pub fn runtime() -> Runtime {
        let ours = workspace_binary("xlane").parent().map(Path::to_path_buf).unwrap_or_default();
        Runtime::new(vec![ours, PathBuf::from("/usr/lib/cni")])
    }

    /// The conflist a node's runtime uses: `xlane` talking to that node's agent.
    #[must_use]
    pub fn conflist(&self, i: usize) -> serde_json::Value {
        let mut plugin = serde_json::json!({"type": "xlane", "agentSocket": self.nodes[i].agent_socket});
        if let Some(a) = &self.attach {
            plugin["attach"] = a.as_str().into();
        }
        serde_json::json!({"cniVersion": "1.0.0", "name": "xlane", "plugins": [plugin]})
    }

    /// Create a pod namespace on node `i` and ADD it through the CNI plugin.
    ///
    /// # Errors
    /// Namespace creation, the plugin's error.
    pub fn attach_pod(&self, i: usize, name: &str) -> io::Result<CniPod> {
        let ns = Netns::new(&format!("{}-{name}", self.lab.nodes[i].ns.name().split('-').next().unwrap_or("xl")))?;
        let container = Container::in_netns(&format!("{name}-{}", std::process::id()), &ns);
        let result = Self::runtime().add(&self.lab.nodes[i].ns, &self.conflist(i), &container)?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next()?.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no address in the ADD result {result}")))?;
        Ok(CniPod { ns, node: i, container, ip, result })
    }

    /// DEL a pod through the CNI plugin (its namespace goes when it is dropped).
    ///
    /// # Errors
    /// The plugin's error.
    pub fn detach_pod(&self, pod: &CniPod) -> io::Result<()> {
        Self::runtime().del(&self.lab.nodes[pod.node].ns, &self.conflist(pod.node), &pod.container, Some(&pod.result))
    }
}

fn agent_ready(sock: &Path) -> bool {
    AgentClient::connect(sock)
        .and_then(|mut c| c.call(AgentOp::Status))
        .is_ok_and(|r| matches!(r, AgentReply::Status { lease: Some(_), dataplane_synced: true, .. }))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Daemons before namespaces: xlaned detaches its XDP programs on the way out.
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
