//! The agent's loops: keep the lease, mirror every other lease into xlaned, serve the
//! CNI plugin.
//!
//! The main loop acquires the node's lease, renews it on time and hands each batch of
//! watch events to the link ([`crate::link`]), which sets xlaned's VTEP (with the node
//! subnet, so the host port gets the gateway address), reconciles the remote nodes and
//! routes, and applies each batch as a diff. The link learns of an xlaned restart the
//! moment its connection closes and replays the full state (VTEP, nodes, routes,
//! endpoints). When the agent itself restarts, xlaned keeps forwarding with what it has
//! and the agent only sends the difference.

use crate::api::{AgentOp, AgentReply, AllocationInfo, LeaseInfo};
use crate::ipam::Ipam;
use crate::lease::{Lease, LeaseAttrs};
use crate::link::{self, LinkMsg};
use crate::netconf::NetConfig;
use crate::store::{Datastore, StoreError};

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xlane_api::server::{Handler, Responder, Server};
use xlane_api::{Client, EndpointSpec, ErrorCode, Mac, Op, Reply, Vtep};

/// flannel's default network, used when neither the store nor a flag provides one.
pub const DEFAULT_NETWORK: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where IPAM and the last lease are kept.
    pub state_dir: PathBuf,
    /// xlaned's control socket.
    pub xlaned_socket: PathBuf,
    /// The socket the CNI plugin talks to.
    pub api_socket: PathBuf,
    /// Network config JSON if the store has none.
    pub network_config: Option<String>,
    /// Underlay address to publish (default: the uplink's first address).
    pub public_ip: Option<Ipv4Addr>,
    /// VTEP MAC to publish (default: the uplink's).
    pub vtep_mac: Option<Mac>,
    /// Lease time to live.
    pub ttl: Duration,
}

/// State shared with the API thread.
#[derive(Debug, Default)]
pub struct Shared {
    pub(crate) ipam: Option<Ipam>,
    mtu: u16,
    /// xlaned's workers: the queues a pod veth gets.
    workers: u16,
    lease: Option<Lease>,
    leases: Vec<Lease>,
    pub(crate) synced: bool,
}

impl Shared {
    /// Take what pods get from xlaned's status: their MTU and a veth queue per worker.
    pub(crate) fn dataplane(&mut self, status: &xlane_api::Status) {
        self.mtu = status.pod_mtu;
        self.workers = u16::try_from(status.workers).unwrap_or(u16::MAX);
    }
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad network config.
    #[error(transparent)]
    Config(#[from] crate::netconf::ConfigError),
    /// Datastore failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// IPAM failure.
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    /// xlaned refused our setup.
    #[error("xlaned: {0}")]
    Dataplane(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The main loop. Returns when `stop` is set.
///
/// # Errors
/// Unusable configuration, or a datastore/xlaned failure during setup.
pub fn run(
    settings: &Settings,
    store: &mut dyn Datastore,
    shared: &Arc<Mutex<Shared>>,
    stop: &AtomicBool,
) -> Result<(), AgentError> {
    let text = match store.network_config()? {
        Some(t) => t,
        None => settings.network_config.clone().unwrap_or_else(|| DEFAULT_NETWORK.to_owned()),
    };
    let net = NetConfig::parse(&text)?;
    tracing::info!(network = %net.network, subnet_len = net.subnet_len, vni = net.vni, port = net.port, "network config");
    let Some(mut xl) = link::connect(&settings.xlaned_socket, stop, Duration::from_millis(250)) else { return Ok(()) };
    let Reply::Status(status) = link::xlaned_call(&mut xl, Op::Status)? else {
        return Err(AgentError::Dataplane("unexpected status reply".into()));
    };
    let public_ip = settings
        .public_ip
        .or_else(|| status.uplink_ips.first().copied())
        .ok_or_else(|| AgentError::Other(format!("uplink {} has no IPv4 address; pass --public-ip", status.uplink)))?;
    let vtep_mac = settings.vtep_mac.unwrap_or(status.uplink_mac);
    let attrs = LeaseAttrs::vxlan(public_ip, net.vni, vtep_mac);

    std::fs::create_dir_all(&settings.state_dir)
        .map_err(|e| AgentError::Other(format!("{}: {e}", settings.state_dir.display())))?;
    let lease_file = settings.state_dir.join("lease.json");
    let preferred: Option<Ipv4Net> = std::fs::read(&lease_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut lease = store.acquire(&net, &attrs, preferred, settings.ttl)?;
    let _ = crate::store::file::atomic_write(&lease_file, &serde_json::to_vec(&lease.subnet).expect("plain"));
    tracing::info!(subnet = %lease.subnet, public_ip = %public_ip, vtep_mac = %vtep_mac, "lease acquired");
    {
        let mut s = shared.lock().expect("not poisoned");
        s.ipam = Some(Ipam::open(settings.state_dir.join("ipam.json"), lease.subnet)?);
        s.dataplane(&status);
        s.lease = Some(lease.clone());
    }

    let vtep = Vtep { ip: public_ip, mac: settings.vtep_mac, vni: net.vni, port: net.port, subnet: Some(lease.subnet) };
    let (listed, mut rev) = store.leases()?;
    let leases: BTreeMap<Ipv4Net, Lease> = listed.into_iter().map(|l| (l.subnet, l)).collect();
    shared.lock().expect("not poisoned").leases = leases.values().cloned().collect();
    // What the API shows; the link keeps its own copy to diff against.
    let mut shown = leases.clone();
    let (to_link, msgs) = crossbeam_channel::unbounded();
    let start = link::LinkStart {
        socket: &settings.xlaned_socket,
        vtep,
        vni: net.vni,
        leases,
        own: lease.clone(),
        shared,
        stop,
    };
    std::thread::scope(|scope| {
        let xlaned_link = std::thread::Builder::new()
            .name("xlane-agent-link".into())
            .spawn_scoped(scope, move || link::run(start, xl, &msgs))
            .map_err(|e| AgentError::Other(format!("cannot start the xlaned link: {e}")))?;
        let r = lease_loop(settings, store, shared, stop, &net, &attrs, &mut lease, &mut rev, &mut shown, &to_link);
        // The link sees the channel close (or `stop`) and returns.
        drop(to_link);
        let _ = xlaned_link.join();
        r
    })?;
    tracing::info!(subnet = %lease.subnet, "agent stopping; lease kept for the next start");
    Ok(())
}

/// Keep the lease and hand every batch of lease changes to the link, until `stop`.
#[allow(clippy::too_many_arguments, reason = "the main loop's state, passed explicitly")]
fn lease_loop(
    settings: &Settings,
    store: &mut dyn Datastore,
    shared: &Arc<Mutex<Shared>>,
    stop: &AtomicBool,
    net: &NetConfig,
    attrs: &LeaseAttrs,
    lease: &mut Lease,
    rev: &mut u64,
    shown: &mut BTreeMap<Ipv4Net, Lease>,
    link: &crossbeam_channel::Sender<LinkMsg>,
) -> Result<(), AgentError> {
    let mut last_renew = Instant::now();
    let renew_every = settings.ttl / 3;
    while !stop.load(Ordering::Relaxed) {
        if last_renew.elapsed() >= renew_every {
            match store.renew(lease, settings.ttl) {
                Ok(()) => last_renew = Instant::now(),
                Err(StoreError::Lost(s)) => {
                    tracing::error!(subnet = %s, "lease lost (expired while unreachable?); acquiring again");
                    *lease = store.acquire(net, attrs, Some(s), settings.ttl)?;
                    last_renew = Instant::now();
                    if lease.subnet != s {
                        tracing::error!(old = %s, new = %lease.subnet, "node subnet changed: pods need new addresses");
                        let mut sh = shared.lock().expect("not poisoned");
                        sh.ipam = Some(Ipam::open(settings.state_dir.join("ipam.json"), lease.subnet)?);
                        sh.lease = Some(lease.clone());
                    }
                    let _ = link.send(LinkMsg::Own(lease.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; will retry"),
            }
        }
        match store.watch(*rev, Duration::from_millis(300)) {
            Ok((mut events, r)) => {
                *rev = r;
                // etcd delivers one response per change: take everything already
                // waiting (for at most 50 ms) and apply it as one batch.
                let drain_until = Instant::now() + Duration::from_millis(50);
                while !events.is_empty() && Instant::now() < drain_until {
                    match store.watch(*rev, Duration::ZERO) {
                        Ok((more, r)) if !more.is_empty() => {
                            *rev = r;
                            events.extend(more);
                        }
                        Ok((_, r)) => {
                            *rev = r;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !events.is_empty() {
                    tracing::debug!(events = events.len(), "lease changes");
                    crate::store::apply(shown, events.iter().cloned());
                    shared.lock().expect("not poisoned").leases = shown.values().cloned().collect();
                    let _ = link.send(LinkMsg::Events(events));
                }
            }
            Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
        }
    }
    Ok(())
}

/// Serve the CNI plugin's requests on a thread of their own until the process exits.
///
/// One event loop reads every connection (a line over `MAX_LINE` is refused and closes
/// only its connection). Requests that touch the IPAM file or xlaned run on a thread
/// each and reply when done, so a slow attach does not hold up another pod's ADD; the
/// IPAM state is behind the one mutex, held only inside `handle`.
///
/// # Errors
/// The socket cannot be created.
pub fn serve_api(path: PathBuf, xlaned: PathBuf, shared: Arc<Mutex<Shared>>) -> std::io::Result<()> {
    let server = Server::<AgentOp>::bind(&path)?;
    std::thread::Builder::new().name("xlane-agent-api".into()).spawn(move || {
        if let Err(e) = server.run(&mut Api { xlaned, shared }) {
            tracing::error!(error = %e, "agent API stopped");
        }
    })?;
    Ok(())
}

/// The agent's side of its API socket.
struct Api {
    xlaned: PathBuf,
    shared: Arc<Mutex<Shared>>,
}

impl Handler for Api {
    type Op = AgentOp;

    fn handle(&mut self, op: AgentOp, responder: Responder<AgentReply>) {
        if matches!(op, AgentOp::Status | AgentOp::Check { .. }) {
            // Read-only, in memory: answered on the loop.
            responder.reply(handle(op, &self.xlaned, &self.shared));
            return;
        }
        let (xlaned, shared) = (self.xlaned.clone(), Arc::clone(&self.shared));
        let spawned = std::thread::Builder::new()
            .name("xlane-agent-req".into())
            .spawn(move || responder.reply(handle(op, &xlaned, &shared)));
        // On failure the responder is dropped with the closure: the client gets an error.
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot serve an API request");
        }
    }
}

fn not_ready() -> AgentReply {
    AgentReply::error(ErrorCode::Failed, "the agent has no lease yet; try again")
}

fn handle(op: AgentOp, xlaned: &std::path::Path, shared: &Arc<Mutex<Shared>>) -> AgentReply {
    let mut sh = shared.lock().expect("not poisoned");
    let (mtu, queues) = (sh.mtu, sh.workers.max(1));
    match op {
        AgentOp::Add { container_id, ifname, netns, ip } => {
            let Some(ipam) = sh.ipam.as_mut() else { return not_ready() };
            let allocated = match ip {
                Some(ip) => ipam.reserve(&container_id, &ifname, ip).map(|()| ip),
                None => ipam.allocate(&container_id, &ifname),
            };
            let allocated = allocated.and_then(|ip| {
                if let Some(n) = &netns {
                    ipam.set_netns(&container_id, &ifname, n)?;
                }
                Ok(ip)
            });
            match allocated {
                Ok(ip) => AgentReply::Allocated {
                    ip: Ipv4Net::new(ip, ipam.subnet().prefix_len()).expect("valid"),
                    gateway: ipam.gateway(),
                    mtu,
                    routes: vec!["0.0.0.0/0".parse().expect("valid")],
                    queues,
                },
                Err(e) => AgentReply::error(ErrorCode::Invalid, e.to_string()),
            }
        }
        AgentOp::Attach { container_id, ifname, host_if, mac, vhost_user, veth_io } => {
            let Some(ipam) = sh.ipam.as_mut() else { return not_ready() };
            let ip = match ipam.attach(&container_id, &ifname, &host_if, mac, vhost_user.as_deref(), veth_io) {
                Ok(ip) => ip,
                Err(e) => return AgentReply::error(ErrorCode::NotFound, e.to_string()),
            };
            drop(sh);
            match Client::connect(xlaned).map_err(|e| e.to_string()).and_then(|mut c| {
                c.call(Op::AddEndpoint(EndpointSpec { ifname: host_if, ip, mac, vhost_user, veth_io }))
                    .map_err(|e| e.to_string())
            }) {
                Ok(Reply::EndpointReady { gateway_mac, .. }) => AgentReply::Attached { gateway_mac },
                Ok(Reply::Error { code, message }) => AgentReply::error(code, format!("xlaned: {message}")),
                Ok(other) => AgentReply::error(ErrorCode::Failed, format!("xlaned: unexpected {other:?}")),
                Err(e) => AgentReply::error(ErrorCode::Failed, format!("xlaned unreachable: {e}; try again")),
            }
        }
        AgentOp::Check { container_id, ifname } => {
            let Some(ipam) = sh.ipam.as_ref() else { return not_ready() };
            match ipam.find(&container_id, &ifname) {
                Some((_, a)) if a.host_if.is_some() => AgentReply::Ok,
                Some(_) => AgentReply::error(ErrorCode::Invalid, "address allocated but not attached"),
                None => AgentReply::error(ErrorCode::NotFound, format!("no address for {container_id}/{ifname}")),
            }
        }
        AgentOp::Del { container_id, ifname } => {
            let Some(ipam) = sh.ipam.as_mut() else { return not_ready() };
            match ipam.release(&container_id, &ifname) {
                Ok(Some((ip, _))) => {
                    drop(sh);
                    detach(xlaned, ip);
                    AgentReply::Released { existed: true }
                }
                Ok(None) => AgentReply::Released { existed: false },
                Err(e) => AgentReply::error(ErrorCode::Failed, e.to_string()),
            }
        }
        AgentOp::Gc { valid } => {
            let Some(ipam) = sh.ipam.as_mut() else { return not_ready() };
            match ipam.gc(&valid) {
                Ok(released) => {
                    drop(sh);
                    for (ip, _) in &released {
                        detach(xlaned, *ip);
                    }
                    AgentReply::Collected { released: released.into_iter().map(|(ip, _)| ip).collect() }
                }
                Err(e) => AgentReply::error(ErrorCode::Failed, e.to_string()),
            }
        }
        AgentOp::Status => {
            let info = |l: &Lease| LeaseInfo {
                subnet: l.subnet,
                public_ip: l.attrs.public_ip,
                backend: l.attrs.backend_type.clone(),
            };
            AgentReply::Status {
                lease: sh.lease.as_ref().map(info),
                leases: sh.leases.iter().map(info).collect(),
                allocations: sh
                    .ipam
                    .as_ref()
                    .map(|i| {
                        i.allocations()
                            .map(|(ip, a)| AllocationInfo {
                                ip,
                                container_id: a.container_id.clone(),
                                ifname: a.ifname.clone(),
                                host_if: a.host_if.clone(),
                                netns: a.netns.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                dataplane_synced: sh.synced,
            }
        }
    }
}

fn detach(xlaned: &std::path::Path, ip: Ipv4Addr) {
    match Client::connect(xlaned).map(|mut c| c.call(Op::DelEndpoint { ip })) {
        Ok(Ok(Reply::EndpointRemoved { .. })) => {}
        other => tracing::warn!(%ip, result = ?other.map(|r| r.map(|_| ())), "detaching from xlaned"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentClient;
    use std::io::Write as _;

    #[test]
    fn an_over_long_line_is_refused_and_the_api_stays_up() {
        let dir = std::env::temp_dir().join(format!("xlane-agent-api-{}", std::process::id()));
        let sock = dir.join("agent.sock");
        serve_api(sock.clone(), dir.join("xlaned.sock"), Arc::new(Mutex::new(Shared::default()))).unwrap();
        let mut c = AgentClient::connect_with_timeout(&sock, Some(Duration::from_secs(10))).unwrap();
        let mut huge = vec![b'x'; xlane_api::MAX_LINE + 1024];
        huge.push(b'\n');
        match c.call_raw(&huge).unwrap() {
            AgentReply::Error { code: ErrorCode::BadRequest, message } => {
                assert!(message.contains(&xlane_api::MAX_LINE.to_string()), "{message}");
            }
            r => panic!("{r:?}"),
        }
        // A following connection is served; requests that run off the loop answer too.
        let mut c = AgentClient::connect(&sock).unwrap();
        assert!(matches!(c.call(AgentOp::Status).unwrap(), AgentReply::Status { lease: None, .. }));
        let add = AgentOp::Add { container_id: "c".into(), ifname: "eth0".into(), netns: None, ip: None };
        assert!(matches!(c.call(add).unwrap(), AgentReply::Error { code: ErrorCode::Failed, .. }), "no lease yet");
        // Garbage on a raw connection gets an error and the connection stays usable.
        let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        raw.write_all(b"nonsense\n{\"version\":1,\"op\":\"status\"}\n").unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(raw));
        let first: AgentReply = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(matches!(first, AgentReply::Error { code: ErrorCode::BadRequest, .. }), "{first:?}");
        let second: AgentReply = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(matches!(second, AgentReply::Status { .. }), "{second:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
