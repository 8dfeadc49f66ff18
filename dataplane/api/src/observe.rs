//! The observation part of xlaned's protocol: packet trace and capture.
//!
//! ```text
//! → {"version":1,"op":"trace_start","count":5,"match":"icmp"}
//! ← {"result":"trace_started","count":5}
//! → {"version":1,"op":"trace_show"}
//! ← {"result":"trace","active":true,"count":5,"records":[{"seq":0,…}]}
//! → {"version":1,"op":"capture_start","port":2,"rx":true,"count":1000,"snaplen":65535}
//! ← {"result":"capture_ready","socket":"/run/xlane/capture-812-1.sock"}
//! ```
//!
//! These operations were added to protocol version 1 without a version change: they are
//! new operations only, so an older daemon answers them `bad_request` (unknown variant)
//! and every earlier request and reply is unchanged.

use crate::Mac;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Start tracing (replacing a trace in progress and its records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    /// Frames to trace in all (the trace stops taking frames after them).
    #[serde(default = "default_trace_count")]
    pub count: u32,
    /// Only frames received on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only frames matching: a CIDR or address (source or destination), `icmp`, `tcp`,
    /// `udp`, `arp`, or a TCP/UDP port number. Overlay frames match by their inner packet.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub frames: Option<String>,
}

fn default_trace_count() -> u32 {
    50
}

/// Start a capture; the reply names a socket that streams it as pcapng.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// The port to capture on.
    pub port: u16,
    /// Frames received on the port, as received.
    #[serde(default)]
    pub rx: bool,
    /// Frames transmitted on the port, as transmitted.
    #[serde(default)]
    pub tx: bool,
    /// Frames received on the port and dropped, as received, with the drop reason.
    #[serde(default)]
    pub drops: bool,
    /// Frames to capture before the capture ends (0: until the reader goes).
    #[serde(default)]
    pub count: u64,
    /// Bytes kept of each frame.
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
}

fn default_snaplen() -> u32 {
    65_535
}

/// A capture's counts (the one in progress, or the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStats {
    /// The port captured.
    pub port: u16,
    /// Whether it is still running.
    pub active: bool,
    /// Frames the workers copied for it.
    pub captured: u64,
    /// Frames it wanted but lost (no free buffer: the reader was slow).
    pub lost: u64,
    /// Of those, per worker.
    pub worker_lost: Vec<u64>,
    /// Frames written to the reader.
    pub written: u64,
}

/// An Ethernet/IPv4 frame's deciding header fields, as a trace records them. For an
/// overlay frame, everything but `outer` describes the inner frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameFields {
    /// Frame length.
    pub len: u32,
    /// Ethernet source (absent: shorter than an Ethernet header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eth_src: Option<Mac>,
    /// Ethernet destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eth_dst: Option<Mac>,
    /// EtherType.
    pub ethertype: u16,
    /// The VXLAN tunnel of an overlay frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<TunnelFields>,
    /// IPv4 header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Fields>,
    /// TCP/UDP source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// TCP/UDP destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// ICMP type and code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<(u8, u8)>,
    /// ARP body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp: Option<ArpFields>,
}

/// IPv4 header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Fields {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// TTL.
    pub ttl: u8,
    /// Total length.
    pub total_len: u16,
    /// Whether the header checksum verifies.
    pub checksum_ok: bool,
}

/// A VXLAN tunnel's outer headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelFields {
    /// Outer Ethernet source.
    pub eth_src: Mac,
    /// Outer Ethernet destination.
    pub eth_dst: Mac,
    /// Outer IPv4 header.
    pub ipv4: Ipv4Fields,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// VNI (absent: the I flag is clear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

/// ARP fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpFields {
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender MAC.
    pub sender_mac: Mac,
    /// Sender address.
    pub sender_ip: Ipv4Addr,
    /// Target address.
    pub target_ip: Ipv4Addr,
}

/// The route a traced frame took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "next_hop", rename_all = "snake_case")]
pub enum TraceHop {
    /// No route.
    None,
    /// The route names a remote node that is not known.
    Unresolved,
    /// A local port.
    Local {
        /// The port.
        port: u16,
    },
    /// A remote node.
    Remote {
        /// Its VTEP address.
        vtep: Ipv4Addr,
    },
}

/// One traced frame: where it came in, what each stage decided, where it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// Order in the trace.
    pub seq: u64,
    /// When it was forwarded (nanoseconds since the Unix epoch).
    pub time_ns: u64,
    /// The worker that forwarded it.
    pub worker: u16,
    /// Ingress port.
    pub ingress: u16,
    /// Its role: "pod", "host", "uplink" or "unknown".
    pub role: String,
    /// The pod's (or host port's) address, which a pod's source must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_ip: Option<Ipv4Addr>,
    /// As received.
    pub input: FrameFields,
    /// The destination looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_dst: Option<Ipv4Addr>,
    /// Where the table sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<TraceHop>,
    /// As transmitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<FrameFields>,
    /// The stage that decided: "classify", "route", "rewrite" or "egress".
    pub stage: String,
    /// Egress port, if transmitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<u16>,
    /// Drop reason, if dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<String>,
}
