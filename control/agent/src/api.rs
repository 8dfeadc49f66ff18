//! The agent's local API for the CNI plugin: one JSON request per line on a unix socket
//! (root-only), versioned like xlaned's.
//!
//! ```text
//! → {"version":1,"op":"add","container_id":"c0ffee","ifname":"eth0"}
//! ← {"result":"allocated","ip":"10.244.1.2/24","gateway":"10.244.1.1","mtu":1450,"routes":["0.0.0.0/0"]}
//! → {"version":1,"op":"attach","container_id":"c0ffee","ifname":"eth0","host_if":"xl0c0ffee","mac":"0a:58:0a:f4:01:02"}
//! ← {"result":"attached","gateway_mac":"…"}
//! ```

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use xlane_api::{ErrorCode, Mac};

/// Protocol version.
pub const VERSION: u32 = 1;

/// Requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentOp {
    /// Allocate (or return) the address of a pod interface.
    Add {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
        /// CNI_NETNS, recorded with the allocation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<String>,
        /// An address a delegated IPAM plugin chose: record it instead of allocating.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<Ipv4Addr>,
    },
    /// The pod interface is set up behind `host_if`: attach it to the dataplane. Replies
    /// once xlaned forwards for it.
    Attach {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
        /// Host-side interface.
        host_if: String,
        /// Pod interface MAC.
        mac: Mac,
        /// Serve the pod through this vhost-user socket (a VM-based pod) rather than
        /// `host_if`, which then only names the port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vhost_user: Option<std::path::PathBuf>,
    },
    /// Whether the interface has its address and is attached.
    Check {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
    },
    /// Detach and release (idempotent).
    Del {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
    },
    /// Release every allocation not in `valid` (container ID, interface).
    Gc {
        /// The attachments that still exist.
        valid: Vec<(String, String)>,
    },
    /// Lease, nodes and allocations.
    Status,
}

/// Request envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// Must be [`VERSION`].
    pub version: u32,
    /// What to do.
    #[serde(flatten)]
    pub op: AgentOp,
}

/// An allocation as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationInfo {
    /// Address.
    pub ip: Ipv4Addr,
    /// Container.
    pub container_id: String,
    /// Interface.
    pub ifname: String,
    /// Host-side interface, once attached.
    pub host_if: Option<String>,
    /// The pod's network namespace, if the plugin gave it.
    #[serde(default)]
    pub netns: Option<String>,
}

/// A lease as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Holder's underlay address.
    pub public_ip: Ipv4Addr,
    /// Backend type.
    pub backend: String,
}

/// Replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AgentReply {
    /// The request failed; nothing changed.
    Error {
        /// Category (`failed` with "try again" semantics while the agent starts).
        code: ErrorCode,
        /// What went wrong.
        message: String,
    },
    /// An address for the pod interface.
    Allocated {
        /// Address with the node subnet's prefix length.
        ip: Ipv4Net,
        /// Gateway.
        gateway: Ipv4Addr,
        /// Pod MTU.
        mtu: u16,
        /// Routes to install via the gateway.
        routes: Vec<Ipv4Net>,
    },
    /// Attached and forwarding.
    Attached {
        /// The MAC that answers for the gateway.
        gateway_mac: Mac,
    },
    /// A check passed.
    Ok,
    /// Released (or was not there).
    Released {
        /// Whether it existed.
        existed: bool,
    },
    /// Garbage collected.
    Collected {
        /// Addresses released.
        released: Vec<Ipv4Addr>,
    },
    /// Status.
    Status {
        /// Our lease.
        lease: Option<LeaseInfo>,
        /// Every live lease.
        leases: Vec<LeaseInfo>,
        /// Allocations of this node.
        allocations: Vec<AllocationInfo>,
        /// Whether xlaned is connected and in sync.
        dataplane_synced: bool,
    },
}

impl AgentReply {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }
}

/// Parse a request line into the reply to send on failure.
///
/// # Errors
/// The error reply.
pub fn parse(line: &[u8]) -> Result<AgentOp, AgentReply> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| AgentReply::error(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(x) if x == u64::from(VERSION) => {}
        Some(x) => return Err(AgentReply::error(ErrorCode::UnsupportedVersion, format!("version {x} not supported"))),
        None => return Err(AgentReply::error(ErrorCode::BadRequest, "missing \"version\"")),
    }
    serde_json::from_value::<AgentRequest>(v)
        .map(|r| r.op)
        .map_err(|e| AgentReply::error(ErrorCode::BadRequest, e.to_string()))
}

/// A blocking client (the CNI plugin, tools, tests).
#[derive(Debug)]
pub struct AgentClient {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl AgentClient {
    /// Connect.
    ///
    /// # Errors
    /// Connection failure (the agent is not running).
    pub fn connect(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        Ok(Self { reader: std::io::BufReader::new(s.try_clone()?), writer: s })
    }

    /// One request, one reply.
    ///
    /// # Errors
    /// I/O or an unreadable reply.
    pub fn call(&mut self, op: AgentOp) -> std::io::Result<AgentReply> {
        let mut line = serde_json::to_vec(&AgentRequest { version: VERSION, op }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "agent closed the connection"));
        }
        serde_json::from_str(&reply).map_err(std::io::Error::other)
    }
}
