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
use xlane_agent::api::{AgentClient, AgentOp, AgentReply};
use xlane_api::{ErrorCode, Mac};
use xlane_netlink::Netlink;

/// Where the agent listens by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/xlane/agent.sock";

fn agent(conf: &NetConf) -> Result<AgentClient, CniError> {
    let sock = conf.agent_socket.as_deref().unwrap_or(DEFAULT_AGENT_SOCKET);
    AgentClient::connect(sock)
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
        (Ok(AgentReply::Allocated { ip, gateway, mtu, routes }), None) => Ok(Addressing { ip, gateway, mtu, routes }),
        (Ok(AgentReply::Allocated { gateway, mtu, routes, .. }), Some(d)) => Ok(Addressing {
            ip: d.ip,
            gateway: d.gateway.unwrap_or(gateway),
            mtu,
            routes: if d.routes.is_empty() { routes } else { d.routes },
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
    let delegate = Delegate::of(env, conf)?;
    let _lock = lock_container(&env.container_id)?;
    let mut c = agent(conf)?;
    let Addressing { ip: addr, gateway, mtu, routes } = allocate(&mut c, env, conf, delegate.as_ref())?;
    let host_if = crate::protocol::host_ifname(&env.container_id, &env.ifname);
    let release = |c: &mut AgentClient| {
        let _ = c.call(AgentOp::Del { container_id: env.container_id.clone(), ifname: env.ifname.clone() });
        if let Some(d) = &delegate {
            let _ = d.del(&conf.raw);
        }
    };
    let io = |what: &str, e: std::io::Error| CniError::new(Code::Io, what.to_owned(), e.to_string());
    // Netlink sockets on both sides: this node's, and one opened inside the pod's
    // namespace (it stays there), so nothing below enters the namespace but the
    // checksum ioctl.
    let mut node = Netlink::new().map_err(|e| io("netlink", e))?;
    let mut pod = match Netlink::in_netns(&netns) {
        Ok(n) => n,
        Err(e) => {
            release(&mut c);
            return Err(CniError::new(Code::UnknownContainer, "network namespace not found", format!("{netns}: {e}")));
        }
    };
    // The pod end is created in the namespace under its final name: an interface of that
    // name already there makes this fail before anything exists.
    if pod.link(&env.ifname).is_ok() {
        release(&mut c);
        return Err(CniError::new(
            Code::InvalidConfig,
            "interface already exists",
            format!("{} in {netns}", env.ifname),
        ));
    }
    let created = File::open(&netns).and_then(|ns| node.add_veth(&host_if, &env.ifname, Some(&ns), u32::from(mtu), 1));
    if let Err(e) = created {
        release(&mut c);
        return Err(io("creating the veth pair failed", e));
    }
    let undo = |c: &mut AgentClient, node: &mut Netlink| {
        let _ = node.del_link(&host_if);
        release(c);
    };
    let setup = (|| -> Result<(Mac, Mac), CniError> {
        let host = node.link(&host_if).map_err(|e| io("host side setup failed", e))?;
        node.set_up(host.ifindex, None).map_err(|e| io("host side setup failed", e))?;
        let p = pod.link(&env.ifname).map_err(|e| io("pod side setup failed", e))?;
        pod.set_up(p.ifindex, None).map_err(|e| io("pod side setup failed", e))?;
        pod.replace_addr(p.ifindex, addr.addr(), addr.prefix_len()).map_err(|e| io("pod address", e))?;
        for r in &routes {
            pod.replace_route(r.network(), r.prefix_len(), Some(gateway), p.ifindex, None)
                .map_err(|e| io(&format!("pod route {r} via {gateway}"), e))?;
        }
        // Offloaded checksums would reach the AF_XDP socket unfinished.
        xlane_netlink::in_netns(&netns, || xlane_xdp::sys::set_tx_checksum(&env.ifname, false))
            .map_err(|e| io("cannot enter the network namespace", e))?
            .map_err(|e| io("tx checksum off", e))?;
        Ok((host.mac, p.mac))
    })();
    let (host_mac, pod_mac) = match setup {
        Ok(m) => m,
        Err(e) => {
            undo(&mut c, &mut node);
            return Err(e);
        }
    };
    match call(
        &mut c,
        AgentOp::Attach {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            host_if: host_if.clone(),
            mac: pod_mac,
        },
    ) {
        Ok(AgentReply::Attached { .. }) => {}
        Ok(other) => {
            undo(&mut c, &mut node);
            return Err(CniError::new(Code::Io, "unexpected reply from xlane-agent", format!("{other:?}")));
        }
        Err(e) => {
            undo(&mut c, &mut node);
            return Err(e);
        }
    }
    Ok(Attachment {
        host_if: (host_if, host_mac.to_string()),
        pod_if: (env.ifname.clone(), pod_mac.to_string(), netns),
        ip: addr,
        gateway,
        routes,
        mtu,
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
    let netns = env.netns.clone().unwrap_or_default();
    Netlink::in_netns(&netns)
        .and_then(|mut nl| nl.link(&env.ifname))
        .map_err(|e| CniError::new(Code::UnknownContainer, "the pod interface is missing", format!("{netns}: {e}")))?;
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
