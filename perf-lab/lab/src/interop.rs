//! `interop`: an xlane node and a flannel-style kernel VXLAN node in one cluster. Node 0
//! runs xlaned and xlane-agent with a pod attached through the CNI plugin; node 1 is set up
//! as flanneld does it (see [`crate::kernel`]), its lease written to the shared datastore
//! in flannel's format, and xlane's lease read back from it to program node 1 — what two
//! flannel-schema agents do for each other. Pods on the two talk both ways (ping, TCP).

use crate::kernel;
use crate::traffic;
use anyhow::Context as _;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use xlane_agent::lease::LeaseAttrs;
use xlane_agent::store::Datastore as _;
use xlane_agent::store::file::FileStore;
use xlane_api::{Client, Op, Reply, Table};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::topology::POD_MTU;

/// What the scenario saw, per direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Interop {
    /// VNI and UDP port used.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// xlane pod → flannel pod: ping.
    pub ping_to_flannel: traffic::PingStats,
    /// flannel pod → xlane pod: ping.
    pub ping_to_xlane: traffic::PingStats,
    /// xlane pod → flannel pod: TCP.
    pub tcp_to_flannel: traffic::TcpStats,
    /// flannel pod → xlane pod: TCP.
    pub tcp_to_xlane: traffic::TcpStats,
}

impl Interop {
    /// Whether everything went through: every ping answered, TCP intact both ways.
    #[must_use]
    pub fn ok(&self) -> bool {
        let ping = |p: &traffic::PingStats| p.sent > 0 && p.received == p.sent;
        ping(&self.ping_to_flannel)
            && ping(&self.ping_to_xlane)
            && self.tcp_to_flannel.intact
            && self.tcp_to_xlane.intact
    }
}

/// Run the scenario with `vni` and `port` on both sides.
///
/// # Errors
/// Setup failures, or traffic that does not get through.
pub fn run(vni: u32, port: u16, tcp_mb: usize, stop: &AtomicBool) -> anyhow::Result<Interop> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, XDP)");
    let netconf = format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"vxlan","VNI":{vni},"Port":{port}}}}}"#);
    let opts = ClusterOptions { netconf, xlane_nodes: Some(1), ..ClusterOptions::default() };
    let cluster = Cluster::start(&format!("xiop{port}"), 2, &opts)?;
    let xpod = cluster.attach_pod(0, "xpod")?;
    let (xnode, fnode) = (&cluster.lab.nodes[0], &cluster.lab.nodes[1]);
    let fsubnet = fnode.subnet;

    // Node 1, as flanneld and flannel's bridge CNI set it up.
    let fmac = kernel::flannel_vtep(fnode, fsubnet, vni, port, POD_MTU)?;
    // The kernel's VXLAN device fills in outer UDP checksums (flannel leaves udpcsum at
    // the kernel's default, on) and leaves them to the NIC; a veth uplink hands them on
    // unfinished. A real NIC computes them, so the lab's uplink must too.
    fnode.ns.enter(|| xlane_netlink::ethtool::set_tx_checksum(&fnode.uplink, false))??;
    kernel::cni0(fnode, fsubnet, POD_MTU)?;
    let fpod = kernel::bridge_pod(fnode, fsubnet, 0, POD_MTU)?;
    // Its lease, in flannel's format, where xlane's agent watches.
    let store = FileStore::open(cluster.dir.join("store"))?;
    let attrs = LeaseAttrs::vxlan(fnode.ip, vni, fmac);
    store.put_lease(fsubnet.cidr().parse()?, &attrs, Duration::from_secs(600))?;
    // xlane's lease, read back as flanneld on node 1 would, programs node 1.
    let mut reader = FileStore::open(cluster.dir.join("store"))?;
    let (leases, _) = reader.leases()?;
    let xlease = leases.iter().find(|l| l.attrs.public_ip == xnode.ip).context("xlane's lease is not in the store")?;
    let xmac = xlease.attrs.vxlan_data().context("xlane's lease has no vxlan data")?.vtep_mac;
    anyhow::ensure!(
        xlease.subnet.network() == xnode.subnet.0,
        "xlane node leased {} (expected {})",
        xlease.subnet,
        xnode.subnet.0
    );
    kernel::flannel_remote(fnode, xnode.subnet, xnode.ip, xmac)?;

    // xlane picks the flannel lease up from its watch and resolves the next hop.
    let t0 = Instant::now();
    loop {
        let mut c = Client::connect(&cluster.nodes[0].xlaned_socket)?;
        if let Reply::Routes { routes } = c.call(Op::Dump { table: Table::Routes })?
            && routes.iter().any(|r| r.prefix.to_string() == fsubnet.cidr() && r.resolved)
        {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(15), "xlane never routed the flannel node's subnet");
        std::thread::sleep(Duration::from_millis(50));
    }

    let fpod_ip = fsubnet.pod(0);
    let ping_to_flannel = traffic::ping(&xpod.ns, fpod_ip, 3)?;
    let ping_to_xlane = traffic::ping(&fpod, xpod.ip, 3)?;
    let bytes = tcp_mb * 1_000_000;
    let tcp_to_flannel = traffic::tcp_transfer(&xpod.ns, &fpod, fpod_ip, bytes, stop)?;
    let tcp_to_xlane = traffic::tcp_transfer(&fpod, &xpod.ns, xpod.ip, bytes, stop)?;
    cluster.detach_pod(&xpod)?;
    Ok(Interop { vni, port, ping_to_flannel, ping_to_xlane, tcp_to_flannel, tcp_to_xlane })
}
