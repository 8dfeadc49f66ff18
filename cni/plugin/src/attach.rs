//! Attaching a pod through a veth pair, with the address the agent allocates.
//!
//! ADD: allocate (agent) → create the pair with the pod end directly in the pod's
//! namespace under its final name → address, MTU, default route and software checksums
//! inside the namespace (all over netlink: `ip(8)` processes cost ≈ 1.6 ms each here,
//! eight per ADD) → attach (agent → xlaned; returns once the port forwards, so the
//! pod's first packet is not lost). Any failure undoes what was done: the pair is
//! deleted and the address released.

use crate::delegate::Delegate;
use crate::protocol::{Attachment, CniError, Code, Env, NetConf};
use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::net::Ipv4Addr;
use xlane_api::agent::{AgentClient, AgentOp, AgentReply};
use xlane_api::{ErrorCode, Mac, VethIo};
use xlane_netlink::{Netlink, Route, Veth, VethEnd};

/// Where the agent listens by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/xlane/agent.sock";

/// How long the plugin waits for one agent reply (an attach waits for xlaned).
const AGENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn agent(conf: &NetConf) -> Result<AgentClient, CniError> {
    let sock = conf.agent_socket.as_deref().unwrap_or(DEFAULT_AGENT_SOCKET);
    AgentClient::connect_with_timeout(sock, Some(AGENT_TIMEOUT))
        .map_err(|e| CniError::new(Code::TryAgain, "xlane-agent is not running", format!("{sock}: {e}")))
}

fn call(c: &mut AgentClient, op: AgentOp) -> Result<AgentReply, CniError> {
    let r = c.call(op).map_err(|e| CniError::new(Code::TryAgain, "xlane-agent did not answer", e.to_string()))?;
    match r {
        AgentReply::Error { code: ErrorCode::Failed, message } => {
            Err(CniError::new(Code::TryAgain, "xlane could not complete the request; try again", message))
        }
        AgentReply::Error { code, message } => {
            Err(CniError::new(Code::InvalidConfig, format!("xlane-agent refused ({code:?})"), message))
        }
        ok => Ok(ok),
    }
}

/// Calls for one container (ADD, DEL, CHECK) are serialized across plugin processes: a
/// runtime that times out an ADD and sends DEL must not interleave the two. Containers
/// hash onto a fixed set of lock files, so nothing accumulates per container.
const LOCK_DIR: &str = "/run/xlane/cni-locks";
const LOCK_BUCKETS: u64 = 64;

fn lock_container(container_id: &str) -> Result<Flock<File>, CniError> {
    let io = |e: std::io::Error| CniError::new(Code::Io, "cannot take the container lock", format!("{LOCK_DIR}: {e}"));
    std::fs::create_dir_all(LOCK_DIR).map_err(io)?;
    let bucket =
        container_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{LOCK_DIR}/{:02}", bucket % LOCK_BUCKETS))
        .map_err(io)?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io(e.into()))
}

/// Where the pod's address comes from.
struct Addressing {
    ip: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u16,
    routes: Vec<Ipv4Net>,
    /// Queues each way on a veth (xlaned's workers).
    queues: u16,
}

/// Allocate: from the agent, or from the delegated IPAM plugin and recorded by the agent
/// (which checks it lies in this node's subnet). On failure nothing stays allocated.
fn allocate(
    c: &mut AgentClient,
    env: &Env,
    conf: &NetConf,
    delegate: Option<&Delegate>,
) -> Result<Addressing, CniError> {
    let netns = env.netns.clone();
    let delegated = delegate.map(|d| d.add(&conf.raw)).transpose()?;
    let reply = call(
        c,
        AgentOp::Add {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns,
            ip: delegated.as_ref().map(|d| d.ip.addr()),
        },
    );
    match (reply, delegated) {
        (Ok(AgentReply::Allocated { ip, gateway, mtu, routes, queues }), None) => {
            Ok(Addressing { ip, gateway, mtu, routes, queues })
        }
        (Ok(AgentReply::Allocated { gateway, mtu, routes, queues, .. }), Some(d)) => Ok(Addressing {
            ip: d.ip,
            gateway: d.gateway.unwrap_or(gateway),
            mtu,
            routes: if d.routes.is_empty() { routes } else { d.routes },
            queues,
        }),
        (other, delegated) => {
            if let (Some(d), Some(_)) = (delegate, delegated) {
                let _ = d.del(&conf.raw);
            }
            Err(match other {
                Err(e) => e,
                Ok(r) => CniError::new(Code::Io, "unexpected reply from xlane-agent", format!("{r:?}")),
            })
        }
    }
}

/// How a pod is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A veth pair into the pod's namespace (containers), its host end read and
    /// written as the [`VethIo`] says.
    Veth(VethIo),
    /// A vhost-user socket its VMM connects to (VM-based pods, e.g. Kata).
    VhostUser,
}

/// The CNI_ARGS key that selects the attachment per pod, over the conflist's `attach`.
pub const ATTACH_ARG: &str = "XLANE_ATTACH";
/// Where vhost-user sockets are created unless the conflist says `vhostUserDir`.
pub const DEFAULT_VHOST_USER_DIR: &str = "/run/xlane/vhost-user";

/// How `veth` reads the host end when the configuration does not say: AF_PACKET with a
/// virtio-net header, so pods keep their offloads. In the same perf-lab run
/// (perf-lab/RESULTS.md, 2026-11-29) it moved TCP 4.4× faster between pods of a node
/// and 1.7× across nodes than AF_XDP, with a lower RR p99, at 0.95× AF_XDP's 64-byte
/// rate: what a user tries first (iperf3) decides. `veth-xdp` remains for small-packet
/// workloads.
pub const DEFAULT_VETH_IO: VethIo = VethIo::AfPacket;

/// The attachment asked for: CNI_ARGS `XLANE_ATTACH`, else the conflist's `attach`, else
/// veth: `veth` (its default I/O), `veth-xdp` (AF_XDP: small packets fastest),
/// `veth-offload` (AF_PACKET with a virtio-net header: the pod keeps TSO/GSO, bulk TCP
/// fastest) or `vhost-user`.
///
/// # Errors
/// [`Code::InvalidConfig`] for any other value.
pub fn mode(env: &Env, conf: &NetConf) -> Result<Mode, CniError> {
    match env.args.get(ATTACH_ARG).map(String::as_str).or(conf.attach.as_deref()) {
        None | Some("veth") => Ok(Mode::Veth(DEFAULT_VETH_IO)),
        Some("veth-xdp") => Ok(Mode::Veth(VethIo::AfXdp)),
        Some("veth-offload") => Ok(Mode::Veth(VethIo::AfPacket)),
        Some("vhost-user") => Ok(Mode::VhostUser),
        Some(other) => Err(CniError::new(
            Code::InvalidConfig,
            "unknown attachment",
            format!(
                "{other:?}: attach (or CNI_ARGS {ATTACH_ARG}) is \"veth\", \"veth-xdp\", \"veth-offload\" or \"vhost-user\""
            ),
        )),
    }
}

/// The vhost-user socket of (container, interface): short enough for a unix socket
/// path, stable, so DEL finds it without state.
fn vhost_user_socket(env: &Env, conf: &NetConf) -> std::path::PathBuf {
    let dir = conf.vhost_user_dir.as_deref().unwrap_or(DEFAULT_VHOST_USER_DIR);
    std::path::Path::new(dir).join(format!("{}.sock", crate::protocol::host_ifname(&env.container_id, &env.ifname)))
}

/// ADD.
///
/// # Errors
/// A [`CniError`] with everything undone.
pub fn add(env: &Env, conf: &NetConf) -> Result<Attachment, CniError> {
    let netns = env
        .netns
        .clone()
        .ok_or_else(|| CniError::new(Code::InvalidEnvironment, "CNI_NETNS is not set", "ADD needs it"))?;
    if std::fs::metadata(&netns).is_err() {
        return Err(CniError::new(Code::UnknownContainer, "network namespace not found", netns));
    }
    let mode = mode(env, conf)?;
    let delegate = Delegate::of(env, conf)?;
    let _lock = lock_container(&env.container_id)?;
    let mut c = agent(conf)?;
    let addressing = allocate(&mut c, env, conf, delegate.as_ref())?;
    let attached = match mode {
        Mode::Veth(io) => attach_veth(&mut c, env, &netns, &addressing, io),
        Mode::VhostUser => attach_vhost_user(&mut c, env, conf, &netns, &addressing),
    };
    if attached.is_err() {
        let _ = c.call(AgentOp::Del { container_id: env.container_id.clone(), ifname: env.ifname.clone() });
        if let Some(d) = &delegate {
            let _ = d.del(&conf.raw);
        }
    }
    attached
}

fn io_error(what: &str, e: std::io::Error) -> CniError {
    CniError::new(Code::Io, what.to_owned(), e.to_string())
}

/// Ask the agent to attach the endpoint (it replies once xlaned forwards for it).
fn attach_endpoint(
    c: &mut AgentClient,
    env: &Env,
    host_if: &str,
    mac: Mac,
    vhost_user: Option<&std::path::Path>,
    veth_io: VethIo,
) -> Result<(), CniError> {
    let op = AgentOp::Attach {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        host_if: host_if.to_owned(),
        mac,
        vhost_user: vhost_user.map(std::path::Path::to_path_buf),
        veth_io,
    };
    match call(c, op)? {
        AgentReply::Attached { .. } => Ok(()),
        other => Err(CniError::new(Code::Io, "unexpected reply from xlane-agent", format!("{other:?}"))),
    }
}

/// The veth pair, configured, then attached; on failure the pair is deleted.
fn attach_veth(
    c: &mut AgentClient,
    env: &Env,
    netns: &str,
    a: &Addressing,
    io: VethIo,
) -> Result<Attachment, CniError> {
    let Addressing { ip: addr, gateway, mtu, ref routes, queues } = *a;
    let host_if = crate::protocol::host_ifname(&env.container_id, &env.ifname);
    // The pair is set up over netlink sockets on both sides (one opened inside the pod's
    // namespace), so nothing below enters the namespace but the checksum ioctl.
    let mut pod = Netlink::in_netns(netns)
        .map_err(|e| CniError::new(Code::UnknownContainer, "network namespace not found", format!("{netns}: {e}")))?;
    // The pod end is created in the namespace under its final name: an interface of that
    // name already there makes this fail before anything exists.
    if pod.link(&env.ifname).is_ok() {
        return Err(CniError::new(
            Code::InvalidConfig,
            "interface already exists",
            format!("{} in {netns}", env.ifname),
        ));
    }
    let addrs = [(addr.addr(), addr.prefix_len())];
    let pod_routes: Vec<Route> = routes
        .iter()
        .map(|r| Route { dst: r.network(), prefix_len: r.prefix_len(), via: Some(gateway), src: None })
        .collect();
    let (host, p) = Veth {
        local: VethEnd { name: &host_if, ..VethEnd::default() },
        peer: VethEnd { name: &env.ifname, netns: Some(netns), addrs: &addrs, routes: &pod_routes },
        mtu: Some(u32::from(mtu)),
        // One per worker: each serves a queue of the pod, RSS spreads its flows.
        queues: u32::from(queues.clamp(1, 64)),
        reuse: false,
    }
    .create()
    .map_err(|e| io_error("setting up the veth pair failed", e))?;
    let setup = (|| -> Result<(Mac, Mac), CniError> {
        // Offloaded checksums would reach an AF_XDP socket unfinished. Through
        // AF_PACKET they come with a virtio-net header saying what to finish, and the
        // checksum offload must stay on: TSO depends on it.
        if io == VethIo::AfXdp {
            xlane_netlink::in_netns(netns, || xlane_netlink::ethtool::set_tx_checksum(&env.ifname, false))
                .map_err(|e| io_error("cannot enter the network namespace", e))?
                .map_err(|e| io_error("tx checksum off", e))?;
        }
        attach_endpoint(c, env, &host_if, p.mac, None, io)?;
        Ok((host.mac, p.mac))
    })();
    match setup {
        Ok((host_mac, pod_mac)) => Ok(Attachment {
            host_if: Some((host_if, host_mac.to_string())),
            pod_if: (env.ifname.clone(), pod_mac.to_string(), netns.to_owned()),
            socket_path: None,
            ip: addr,
            gateway,
            routes: routes.clone(),
            mtu,
        }),
        Err(e) => {
            let _ = Netlink::new().and_then(|mut node| node.del_link(&host_if));
            Err(e)
        }
    }
}

/// A vhost-user socket for the pod's VMM: nothing is created in the namespace (the
/// VM's guest configures its interface from the result); xlaned listens on the socket
/// from now on and serves the VMM whenever it connects.
fn attach_vhost_user(
    c: &mut AgentClient,
    env: &Env,
    conf: &NetConf,
    netns: &str,
    a: &Addressing,
) -> Result<Attachment, CniError> {
    let socket = vhost_user_socket(env, conf);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("creating {}", dir.display()), e))?;
    }
    // The guest's MAC follows from its address (0a:58 + IPv4, as Kubernetes' bridge
    // plugins do), so a VM restarted on the same address keeps it.
    let o = a.ip.addr().octets();
    let mac = Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]]);
    let port = crate::protocol::host_ifname(&env.container_id, &env.ifname);
    attach_endpoint(c, env, &port, mac, Some(&socket), VethIo::default())?;
    Ok(Attachment {
        host_if: None,
        pod_if: (env.ifname.clone(), mac.to_string(), netns.to_owned()),
        socket_path: Some(socket.to_string_lossy().into_owned()),
        ip: a.ip,
        gateway: a.gateway,
        routes: a.routes.clone(),
        mtu: a.mtu,
    })
}

/// DEL: idempotent — repeated, after the namespace is gone, for an unknown container,
/// after a failed ADD. The agent forgets the address before a delegated IPAM plugin frees
/// it, so the address is never held by two pods.
///
/// # Errors
/// [`Code::TryAgain`] when the agent cannot be reached (the address must be released).
pub fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let delegate = Delegate::of(env, conf)?;
    let _lock = lock_container(&env.container_id)?;
    let mut c = agent(conf)?;
    call(&mut c, AgentOp::Del { container_id: env.container_id.clone(), ifname: env.ifname.clone() })?;
    // Deleting the host end removes the pair; it may already be gone with the namespace.
    let host_if = crate::protocol::host_ifname(&env.container_id, &env.ifname);
    Netlink::new()
        .and_then(|mut nl| nl.del_link(&host_if))
        .map_err(|e| CniError::new(Code::Io, "removing the veth pair failed", format!("{host_if}: {e}")))?;
    // xlaned removed a vhost-user socket with its port; one left by a crash goes here.
    let socket = vhost_user_socket(env, conf);
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(&format!("removing {}", socket.display()), e));
        }
        _ => {}
    }
    match delegate {
        Some(d) => d.del(&conf.raw),
        None => Ok(()),
    }
}

/// CHECK: the agent has the attachment, the pod interface is there, and a delegated IPAM
/// plugin agrees.
///
/// # Errors
/// A [`CniError`] saying what is missing.
pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let delegate = Delegate::of(env, conf)?;
    let _lock = lock_container(&env.container_id)?;
    let mut c = agent(conf)?;
    call(&mut c, AgentOp::Check { container_id: env.container_id.clone(), ifname: env.ifname.clone() })?;
    if mode(env, conf)? == Mode::VhostUser {
        let socket = vhost_user_socket(env, conf);
        if !socket.exists() {
            return Err(CniError::new(Code::Io, "the vhost-user socket is missing", socket.display().to_string()));
        }
    } else {
        let netns = env.netns.clone().unwrap_or_default();
        Netlink::in_netns(&netns).and_then(|mut nl| nl.link(&env.ifname)).map_err(|e| {
            CniError::new(Code::UnknownContainer, "the pod interface is missing", format!("{netns}: {e}"))
        })?;
    }
    match delegate {
        Some(d) => d.check(&conf.raw),
        None => Ok(()),
    }
}

/// STATUS: whether ADD can work now.
///
/// # Errors
/// [`Code::NotAvailable`] when the agent is down or has no lease.
pub fn status(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let not = |d: String| CniError::new(Code::NotAvailable, "xlane is not ready", d);
    let delegate = Delegate::of(env, conf)?;
    let mut c = agent(conf).map_err(|e| not(e.details))?;
    match c.call(AgentOp::Status) {
        Ok(AgentReply::Status { lease: Some(_), dataplane_synced: true, .. }) => match delegate {
            Some(d) => d.forward_if_supported("STATUS", &conf.raw),
            None => Ok(()),
        },
        Ok(AgentReply::Status { lease: Some(_), .. }) => Err(CniError::new(
            Code::LimitedConnectivity,
            "xlane dataplane not in sync",
            "xlaned is restarting or unreachable",
        )),
        Ok(other) => Err(not(format!("{other:?}"))),
        Err(e) => Err(not(e.to_string())),
    }
}

/// GC: release every address not among the valid attachments.
///
/// # Errors
/// [`Code::TryAgain`] when the agent cannot be reached.
pub fn gc(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let valid =
        conf.valid_attachments.clone().unwrap_or_default().into_iter().map(|a| (a.container_id, a.ifname)).collect();
    let delegate = Delegate::of(env, conf)?;
    let mut c = agent(conf)?;
    call(&mut c, AgentOp::Gc { valid })?;
    match delegate {
        Some(d) => d.forward_if_supported("GC", &conf.raw),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(args: &str) -> Env {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", args),
        ];
        Env::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())).unwrap()
    }

    fn conf(attach: Option<&str>) -> NetConf {
        let mut j = serde_json::json!({"cniVersion": "1.1.0", "name": "xlane", "type": "xlane"});
        if let Some(a) = attach {
            j["attach"] = a.into();
        }
        NetConf::parse(j.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn attachment_names_choose_the_veth_io_and_cni_args_win() {
        assert_eq!(mode(&env(""), &conf(None)).unwrap(), Mode::Veth(DEFAULT_VETH_IO));
        assert_eq!(mode(&env(""), &conf(Some("veth"))).unwrap(), Mode::Veth(DEFAULT_VETH_IO));
        assert_eq!(mode(&env(""), &conf(Some("veth-xdp"))).unwrap(), Mode::Veth(VethIo::AfXdp));
        assert_eq!(mode(&env(""), &conf(Some("veth-offload"))).unwrap(), Mode::Veth(VethIo::AfPacket));
        assert_eq!(mode(&env(""), &conf(Some("vhost-user"))).unwrap(), Mode::VhostUser);
        let per_pod = env("IgnoreUnknown=1;XLANE_ATTACH=veth-offload");
        assert_eq!(mode(&per_pod, &conf(Some("veth-xdp"))).unwrap(), Mode::Veth(VethIo::AfPacket));
        let e = mode(&env(""), &conf(Some("macvtap"))).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
    }
}
