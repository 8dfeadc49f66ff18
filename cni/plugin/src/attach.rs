//! Attaching a pod through a veth pair, with the address the agent allocates.
//!
//! ADD: allocate (agent) → create the pair with the pod end directly in the pod's
//! namespace under its final name → address, MTU, default route and software checksums
//! inside the namespace → attach (agent → xlaned; returns once the port forwards, so the
//! pod's first packet is not lost). Any failure undoes what was done: the pair is
//! deleted and the address released.

use crate::protocol::{Attachment, CniError, Code, Env, NetConf};
use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::process::Command;
use xlane_agent::api::{AgentClient, AgentOp, AgentReply};
use xlane_api::ErrorCode;

/// Where the agent listens by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/xlane/agent.sock";

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn mac_of(dev: &str) -> Result<String, String> {
    let out = ip(&["-o", "link", "show", "dev", dev])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| format!("no MAC on {dev}"))
}

/// Run `f` inside the namespace at `path`, then come back.
fn in_netns<T>(path: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, CniError> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::new(Code::Io, "cannot open own namespace", e.to_string()))?;
    let target = File::open(path)
        .map_err(|e| CniError::new(Code::UnknownContainer, "network namespace not found", format!("{path}: {e}")))?;
    setns(&target, CloneFlags::CLONE_NEWNET)
        .map_err(|e| CniError::new(Code::Io, "cannot enter the network namespace", format!("{path}: {e}")))?;
    let r = f();
    setns(&home, CloneFlags::CLONE_NEWNET)
        .map_err(|e| CniError::new(Code::Io, "cannot leave the network namespace", e.to_string()))?;
    r.map_err(|e| CniError::new(Code::Io, "configuring the pod interface failed", e))
}

fn agent(conf: &NetConf) -> Result<AgentClient, CniError> {
    let sock = conf.agent_socket.as_deref().unwrap_or(DEFAULT_AGENT_SOCKET);
    AgentClient::connect(sock)
        .map_err(|e| CniError::new(Code::TryAgain, "xlane-agent is not running", format!("{sock}: {e}")))
}

fn call(c: &mut AgentClient, op: AgentOp) -> Result<AgentReply, CniError> {
    let r = c.call(op).map_err(|e| CniError::new(Code::TryAgain, "xlane-agent did not answer", e.to_string()))?;
    match r {
        AgentReply::Error { code: ErrorCode::Failed, message } => {
            Err(CniError::new(Code::TryAgain, "xlane-agent is not ready", message))
        }
        AgentReply::Error { code, message } => {
            Err(CniError::new(Code::InvalidConfig, format!("xlane-agent refused ({code:?})"), message))
        }
        ok => Ok(ok),
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
    let mut c = agent(conf)?;
    let AgentReply::Allocated { ip: addr, gateway, mtu, routes } = call(
        &mut c,
        AgentOp::Add { container_id: env.container_id.clone(), ifname: env.ifname.clone(), netns: Some(netns.clone()) },
    )?
    else {
        return Err(CniError::new(Code::Io, "unexpected reply from xlane-agent", "to add"));
    };
    let host_if = crate::protocol::host_ifname(&env.container_id, &env.ifname);
    let release = |c: &mut AgentClient| {
        let _ = c.call(AgentOp::Del { container_id: env.container_id.clone(), ifname: env.ifname.clone() });
    };
    // The pod end is created in the namespace under its final name: an interface of that
    // name already there makes this fail before anything exists.
    let exists = in_netns(&netns, || Ok(ip(&["link", "show", "dev", &env.ifname]).is_ok()))?;
    if exists {
        release(&mut c);
        return Err(CniError::new(
            Code::InvalidConfig,
            "interface already exists",
            format!("{} in {netns}", env.ifname),
        ));
    }
    let created = ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &env.ifname, "netns", &netns]);
    if let Err(e) = created {
        release(&mut c);
        return Err(CniError::new(Code::Io, "creating the veth pair failed", e));
    }
    let undo = |c: &mut AgentClient| {
        let _ = ip(&["link", "del", &host_if]);
        release(c);
    };
    let setup = (|| -> Result<(String, String), CniError> {
        let mtu_s = mtu.to_string();
        ip(&["link", "set", &host_if, "mtu", &mtu_s, "up"])
            .map_err(|e| CniError::new(Code::Io, "host side setup failed", e))?;
        let host_mac = mac_of(&host_if).map_err(|e| CniError::new(Code::Io, "host side setup failed", e))?;
        let pod_mac = in_netns(&netns, || {
            ip(&["link", "set", "dev", &env.ifname, "mtu", &mtu_s, "up"])?;
            ip(&["addr", "add", &addr.to_string(), "dev", &env.ifname])?;
            for r in &routes {
                ip(&["route", "replace", &r.to_string(), "via", &gateway.to_string(), "dev", &env.ifname])?;
            }
            // Offloaded checksums would reach the AF_XDP socket unfinished.
            xlane_xdp::sys::set_tx_checksum(&env.ifname, false).map_err(|e| format!("tx checksum off: {e}"))?;
            mac_of(&env.ifname)
        })?;
        Ok((host_mac, pod_mac))
    })();
    let (host_mac, pod_mac) = match setup {
        Ok(m) => m,
        Err(e) => {
            undo(&mut c);
            return Err(e);
        }
    };
    let mac = pod_mac.parse().map_err(|e| CniError::new(Code::Io, "bad MAC", format!("{e}")))?;
    match call(
        &mut c,
        AgentOp::Attach {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            host_if: host_if.clone(),
            mac,
        },
    ) {
        Ok(AgentReply::Attached { .. }) => {}
        Ok(other) => {
            undo(&mut c);
            return Err(CniError::new(Code::Io, "unexpected reply from xlane-agent", format!("{other:?}")));
        }
        Err(e) => {
            undo(&mut c);
            return Err(e);
        }
    }
    Ok(Attachment {
        host_if: (host_if, host_mac),
        pod_if: (env.ifname.clone(), pod_mac, netns),
        ip: addr,
        gateway,
        routes,
        mtu,
    })
}

/// DEL: idempotent — repeated, after the namespace is gone, for an unknown container,
/// after a failed ADD.
///
/// # Errors
/// [`Code::TryAgain`] when the agent cannot be reached (the address must be released).
pub fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let mut c = agent(conf)?;
    call(&mut c, AgentOp::Del { container_id: env.container_id.clone(), ifname: env.ifname.clone() })?;
    // Deleting the host end removes the pair; it may already be gone with the namespace.
    let _ = ip(&["link", "del", &crate::protocol::host_ifname(&env.container_id, &env.ifname)]);
    Ok(())
}

/// CHECK: the agent has the attachment and the pod interface is there.
///
/// # Errors
/// A [`CniError`] saying what is missing.
pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let mut c = agent(conf)?;
    call(&mut c, AgentOp::Check { container_id: env.container_id.clone(), ifname: env.ifname.clone() })?;
    let netns = env.netns.clone().unwrap_or_default();
    in_netns(&netns, || ip(&["link", "show", "dev", &env.ifname]).map(drop))
}

/// STATUS: whether ADD can work now.
///
/// # Errors
/// [`Code::NotAvailable`] when the agent is down or has no lease.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let not = |d: String| CniError::new(Code::NotAvailable, "xlane is not ready", d);
    let mut c = agent(conf).map_err(|e| not(e.details))?;
    match c.call(AgentOp::Status) {
        Ok(AgentReply::Status { lease: Some(_), dataplane_synced: true, .. }) => Ok(()),
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
pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid =
        conf.valid_attachments.clone().unwrap_or_default().into_iter().map(|a| (a.container_id, a.ifname)).collect();
    let mut c = agent(conf)?;
    call(&mut c, AgentOp::Gc { valid })?;
    Ok(())
}
