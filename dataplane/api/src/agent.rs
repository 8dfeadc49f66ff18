//! The agent's protocol for the CNI plugin: its operations and replies, versioned like
//! xlaned's.
//!
//! ```text
//! → {"version":1,"op":"add","container_id":"c0ffee","ifname":"eth0"}
//! ← {"result":"allocated","ip":"10.244.1.2/24","gateway":"10.244.1.1","mtu":1450,"routes":["0.0.0.0/0"]}
//! → {"version":1,"op":"attach","container_id":"c0ffee","ifname":"eth0","host_if":"xl0c0ffee","mac":"0a:58:0a:f4:01:02"}
//! ← {"result":"attached","gateway_mac":"…"}
//! ```

use crate::codec::{self, Envelope, ErrorCode};
use crate::{Mac, VethIo};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The protocol version the agent speaks.
pub const VERSION: u32 = 1;

/// A request to the agent.
pub type AgentRequest = Envelope<AgentOp>;

/// A client of the agent.
pub type AgentClient = crate::client::Client<AgentOp>;

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
        /// How the host end of the veth is read and written.
        #[serde(default, skip_serializing_if = "VethIo::is_default")]
        veth_io: VethIo,
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

fn one_queue() -> u16 {
    1
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
        /// Queues to give a veth, each way: xlaned's workers, so that each serves a
        /// queue of it and RSS spreads the pod's flows over them (1 from older agents).
        #[serde(default = "one_queue")]
        queues: u16,
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

codec::protocol!(pub AgentOp => AgentReply, version VERSION);

/// Parse a request line into the reply to send on failure.
///
/// # Errors
/// The error reply.
pub fn parse(line: &[u8]) -> Result<AgentOp, AgentReply> {
    codec::parse(line).map_err(|e| e.reply())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_and_wire_format() {
        let line = br#"{"version":1,"op":"add","container_id":"c0ffee","ifname":"eth0"}"#;
        let op = parse(line).unwrap();
        assert_eq!(op, AgentOp::Add { container_id: "c0ffee".into(), ifname: "eth0".into(), netns: None, ip: None });
        assert_eq!(codec::encode_request(op).unwrap(), [&line[..], b"\n"].concat());
        let reply = AgentReply::Allocated {
            ip: "10.244.1.2/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            mtu: 1450,
            routes: vec!["0.0.0.0/0".parse().unwrap()],
            queues: 2,
        };
        assert_eq!(
            codec::encode(&reply).unwrap(),
            b"{\"result\":\"allocated\",\"ip\":\"10.244.1.2/24\",\"gateway\":\"10.244.1.1\",\"mtu\":1450,\"routes\":[\"0.0.0.0/0\"],\"queues\":2}\n"
        );
    }

    #[test]
    fn bad_requests_get_error_replies() {
        let code = |line: &[u8]| codec::tests::error_code(parse(line));
        assert_eq!(code(b"nonsense"), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":7,"op":"status"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(br#"{"version":1,"op":"add"}"#), ErrorCode::BadRequest);
    }
}
