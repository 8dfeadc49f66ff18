//! xlane-agent: the per-node control process.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xlane_agent::agent::{self, Shared};
use xlane_agent::api::{AgentClient, AgentOp, AgentReply};
use xlane_agent::store::file::FileStore;
use xlane_api::Mac;

#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    /// A directory on this host (single host, the lab, tests).
    File,
    /// etcd v3 in flannel's schema (clusters).
    Etcd,
    /// Kubernetes Node objects, as flannel's --kube-subnet-mgr: the lease is the Node's
    /// podCIDR, peers publish flannel's Node annotations.
    Kube,
}

/// xlane-agent: leases the node's pod subnet, mirrors every other node's lease into
/// xlaned, and allocates pod addresses for the CNI plugin.
///
/// Works with no flags on a single host (file datastore under /var/lib/xlane). Every flag
/// has an XLANE_AGENT_* environment fallback.
#[derive(Debug, Parser)]
#[command(name = "xlane-agent", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    settings: Settings,
}

// The settings, flags and file keys alike (layered by `xlane-config`, as xlaned's are).
#[derive(Debug, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    /// TOML file with any of these settings (keys as the flag names, e.g.
    /// `store-dir = "/srv/xlane"`); flags and environment variables beat it.
    #[arg(long, env = "XLANE_AGENT_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Datastore engine.
    #[arg(long, env = "XLANE_AGENT_DATASTORE", value_enum, default_value = "file")]
    datastore: StoreKind,
    /// etcd endpoints, comma-separated (with --datastore etcd).
    #[arg(long, env = "XLANE_AGENT_ETCD_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// etcd key prefix (flannel's default, so both share one network).
    #[arg(long, env = "XLANE_AGENT_ETCD_PREFIX", default_value = "/coreos.com/network")]
    etcd_prefix: String,
    /// This node's name (with --datastore kube; from the downward API). Without it the
    /// node is read from the agent's own Pod (POD_NAMESPACE, POD_NAME).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// kubeconfig file (with --datastore kube); default: the in-cluster service account,
    /// else KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "XLANE_AGENT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// File datastore directory (shared by the agents of one host).
    #[arg(long, env = "XLANE_AGENT_STORE_DIR", default_value = "/var/lib/xlane/store")]
    store_dir: PathBuf,
    /// This node's state (IPAM, last lease).
    #[arg(long, env = "XLANE_AGENT_STATE_DIR", default_value = "/var/lib/xlane/node")]
    state_dir: PathBuf,
    /// xlaned's control socket.
    #[arg(long, env = "XLANE_SOCKET", default_value = "/run/xlane/xlaned.sock")]
    xlaned_socket: PathBuf,
    /// The socket the CNI plugin uses.
    #[arg(long, env = "XLANE_AGENT_SOCKET", default_value = "/run/xlane/agent.sock")]
    socket: PathBuf,
    /// Network config file (flannel JSON), used when the datastore has none. With
    /// --datastore kube it is flannel's mounted net-conf.json (default
    /// /etc/kube-flannel/net-conf.json).
    #[arg(long, env = "XLANE_AGENT_NETWORK_CONFIG")]
    network_config: Option<PathBuf>,
    /// Underlay address to publish (default: the uplink's first IPv4 address).
    #[arg(long, env = "XLANE_AGENT_PUBLIC_IP")]
    public_ip: Option<Ipv4Addr>,
    /// VTEP MAC to publish (default: the uplink's MAC).
    #[arg(long, env = "XLANE_AGENT_VTEP_MAC")]
    vtep_mac: Option<Mac>,
    /// Lease time to live in seconds (flannel: 86400); renewed every third of it.
    #[arg(long, env = "XLANE_AGENT_LEASE_TTL", default_value_t = 86_400)]
    lease_ttl: u64,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the lease, every node's lease and this node's allocations (asks a running agent).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    xlane_config::init_logging();
    let code = match parse_cli().and_then(run) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    };
    std::process::exit(code);
}

impl xlane_config::Layered for Settings {
    fn config_file(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }
}

/// Parse flags and environment, then fill what neither set from `--config`.
fn parse_cli() -> anyhow::Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Cli { settings: xlane_config::layer(cli.settings, Some(&matches))?, ..cli })
}

fn run(Cli { cmd, settings: cli }: Cli) -> anyhow::Result<()> {
    if let Some(Cmd::Status { json }) = cmd {
        let reply = AgentClient::connect(&cli.socket)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cli.socket.display()))?
            .call(AgentOp::Status)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&reply)?);
        } else if let AgentReply::Status { lease, leases, allocations, dataplane_synced } = reply {
            match lease {
                Some(l) => println!(
                    "lease {} for {} ({})",
                    l.subnet,
                    l.public_ip,
                    if dataplane_synced { "dataplane in sync" } else { "dataplane NOT in sync" }
                ),
                None => println!("no lease yet"),
            }
            println!("{:<20} {:<16} BACKEND", "SUBNET", "NODE");
            for l in leases {
                println!("{:<20} {:<16} {}", l.subnet.to_string(), l.public_ip.to_string(), l.backend);
            }
            println!("{:<16} {:<20} {:<8} HOST-IF", "ADDRESS", "CONTAINER", "IFNAME");
            for a in allocations {
                println!(
                    "{:<16} {:<20} {:<8} {}",
                    a.ip.to_string(),
                    a.container_id,
                    a.ifname,
                    a.host_if.unwrap_or_default()
                );
            }
        } else {
            println!("{reply:?}");
        }
        return Ok(());
    }
    let mut store: Box<dyn xlane_agent::store::Datastore> = match cli.datastore {
        StoreKind::File => Box::new(FileStore::open(&cli.store_dir)?),
        #[cfg(feature = "kube")]
        StoreKind::Kube => Box::new(kube_store(&cli)?),
        #[cfg(not(feature = "kube"))]
        StoreKind::Kube => anyhow::bail!(
            "this xlane-agent was built without kube support: cargo build -p xlane-agent --features kube (node {:?})",
            cli.node_name
        ),
        #[cfg(feature = "etcd")]
        StoreKind::Etcd => {
            Box::new(xlane_agent::store::etcd::EtcdStore::connect(&cli.etcd_endpoints, &cli.etcd_prefix)?)
        }
        #[cfg(not(feature = "etcd"))]
        StoreKind::Etcd => anyhow::bail!(
            "this xlane-agent was built without etcd support: cargo build -p xlane-agent --features etcd (needs protoc); endpoints {:?}, prefix {}",
            cli.etcd_endpoints,
            cli.etcd_prefix
        ),
    };
    anyhow::ensure!(cli.lease_ttl >= 3, "--lease-ttl must be at least 3 seconds");
    let network_config = match &cli.network_config {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?),
        None => None,
    };
    let settings = agent::Settings {
        state_dir: cli.state_dir,
        xlaned_socket: cli.xlaned_socket,
        api_socket: cli.socket,
        network_config,
        public_ip: cli.public_ip,
        vtep_mac: cli.vtep_mac,
        ttl: Duration::from_secs(cli.lease_ttl),
    };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new().name("xlane-agent-signals".into()).spawn(move || {
            loop {
                if let Ok(Some(_)) = signals.read_signal() {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })?;
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    agent::serve_api(settings.api_socket.clone(), settings.xlaned_socket.clone(), Arc::clone(&shared))?;
    agent::run(&settings, store.as_mut(), &shared, &stop)?;
    let _ = std::fs::remove_file(&settings.api_socket);
    Ok(())
}

/// The kube datastore from the flags: kubeconfig or in-cluster, the node by name or from
/// the agent's own Pod, flannel's mounted net-conf.json.
#[cfg(feature = "kube")]
fn kube_store(cli: &Settings) -> anyhow::Result<xlane_agent::store::kube::KubeStore> {
    use xlane_agent::store::kube::{KubeOptions, KubeStore, NodeRef, config};
    let node = match (&cli.node_name, std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
        (Some(n), _, _) => NodeRef::Name(n.clone()),
        (None, Ok(namespace), Ok(name)) => NodeRef::Pod { namespace, name },
        _ => anyhow::bail!(
            "--datastore kube needs the node name: --node-name / NODE_NAME, or POD_NAMESPACE and POD_NAME"
        ),
    };
    let net_conf = cli.network_config.clone().unwrap_or_else(|| "/etc/kube-flannel/net-conf.json".into());
    let opts = KubeOptions { net_conf, node, sync_timeout: Duration::from_secs(600) };
    Ok(KubeStore::connect(config(cli.kubeconfig.as_deref())?, opts)?)
}
