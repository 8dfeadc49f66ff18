//! xlaned's control protocol: its operations and replies.
//!
//! ```text
//! → {"version":1,"op":"apply","changes":[{"kind":"add_node","underlay_ip":"192.168.50.2","vtep_mac":"0e:00:00:00:02:01"},
//!                                        {"kind":"add_route","prefix":"10.244.2.0/24","via":"192.168.50.2"}]}
//! ← {"result":"applied","generation":7,"changes":2}
//! ```

use crate::Mac;
use crate::codec::{self, Envelope, ErrorCode};
pub use crate::observe::*;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The protocol version xlaned speaks.
pub const VERSION: u32 = 1;

/// A request to xlaned.
pub type Request = Envelope<Op>;

/// A client of xlaned.
pub type Client = crate::client::Client<Op>;

/// The node's VTEP settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vtep {
    /// Our underlay address (must be on the uplink).
    pub ip: Ipv4Addr,
    /// Our VTEP MAC (flannel's `VtepMAC`); the uplink's MAC if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// VXLAN network identifier (flannel default 1).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// VXLAN UDP port (flannel default [`xlane_wire::VXLAN_PORT_LINUX`], 8472).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The node's pod subnet. Its first address becomes the host port's address (the
    /// pods' gateway), through which the node reaches every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
}

fn default_vni() -> u32 {
    1
}

fn default_port() -> u16 {
    xlane_wire::VXLAN_PORT_LINUX
}

/// One table change of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Route a prefix through a remote node's VTEP.
    AddRoute {
        /// The prefix (a node subnet).
        prefix: Ipv4Net,
        /// The remote VTEP address.
        via: Ipv4Addr,
    },
    /// Withdraw a route.
    DelRoute {
        /// The prefix.
        prefix: Ipv4Net,
    },
    /// Add or update a remote node.
    AddNode {
        /// Its underlay (VTEP) address.
        underlay_ip: Ipv4Addr,
        /// Its VTEP MAC.
        vtep_mac: Mac,
        /// The underlay next hop's MAC; resolved from the kernel's neighbor table if
        /// absent (the usual case).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_hop_mac: Option<Mac>,
    },
    /// Remove a remote node (its routes stay, unresolved, until withdrawn).
    DelNode {
        /// Its underlay address.
        underlay_ip: Ipv4Addr,
    },
}

/// A local endpoint: a pod (or VM) behind a host-side interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Host-side interface (the veth end in the host namespace); for a vhost-user port,
    /// the port's name.
    pub ifname: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The pod interface's MAC (for a vhost-user port: the MAC the device offers the
    /// guest).
    pub mac: Mac,
    /// Serve the pod as a vhost-user-net backend on this unix socket (a VM-based pod:
    /// its VMM connects) instead of attaching the interface `ifname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<std::path::PathBuf>,
    /// How the host end of the pod's veth is read and written.
    #[serde(default, skip_serializing_if = "VethIo::is_default")]
    pub veth_io: VethIo,
}

/// How the dataplane reads and writes the host end of a pod's veth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VethIo {
    /// AF_XDP sockets behind an XDP program: the fastest for small packets; the XDP
    /// program turns the pod's segmentation offloads off, so TCP travels in MTU-sized
    /// frames.
    #[default]
    AfXdp,
    /// An AF_PACKET socket with a virtio-net header: the pod keeps its offloads, TCP
    /// travels as 64 KiB super-packets (segmented in software where it leaves the
    /// node).
    AfPacket,
}

impl VethIo {
    /// The default (for `skip_serializing_if`).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Which table to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Overlay routes.
    Routes,
    /// Remote nodes.
    Nodes,
    /// Local endpoints.
    Endpoints,
    /// Ports (uplink, host, pods).
    Ports,
}

/// Operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Set or change the VTEP.
    SetVtep(Vtep),
    /// Apply a batch of changes atomically (all or nothing, one table swap).
    Apply {
        /// The changes, applied in order.
        changes: Vec<Change>,
    },
    /// Attach a local endpoint; replies when its port forwards.
    AddEndpoint(EndpointSpec),
    /// Detach the endpoint with this address (idempotent).
    DelEndpoint {
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// Dump a table.
    Dump {
        /// Which one.
        table: Table,
    },
    /// Counters of every port and drop reason.
    Counters,
    /// Daemon status.
    Status,
    /// Start a packet trace (replacing one in progress and its records).
    TraceStart(TraceSpec),
    /// Stop tracing (the records stay until the next start).
    TraceStop,
    /// The trace's records so far.
    TraceShow,
    /// Start a capture: the reply names the socket to read its pcapng from.
    CaptureStart(CaptureSpec),
}

/// A route as dumped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Prefix.
    pub prefix: Ipv4Net,
    /// Remote VTEP.
    pub via: Ipv4Addr,
    /// Whether the VTEP is a known node.
    pub resolved: bool,
}

/// A remote node as dumped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// VTEP MAC.
    pub vtep_mac: Mac,
    /// Next-hop MAC in use (absent while unresolved).
    pub next_hop_mac: Option<Mac>,
    /// Where the next-hop MAC came from: "request", "neighbor" or "unresolved".
    pub source: String,
}

/// A port as dumped, with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Port id.
    pub id: u16,
    /// "uplink", "host" or "pod".
    pub role: String,
    /// Interface.
    pub ifname: String,
    /// Pod or host address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Queues served.
    pub queues: u32,
    /// "native" or "generic".
    pub xdp_mode: String,
    /// Whether the sockets are zero-copy.
    pub zero_copy: bool,
    /// Frames received.
    pub rx: u64,
    /// Frames transmitted.
    pub tx: u64,
    /// Frames dropped because the TX ring was full.
    pub tx_ring_full: u64,
    /// Kernel: times the fill ring was empty.
    pub rx_fill_ring_empty: u64,
    /// Kernel: frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Kernel: frames dropped for reasons other than a full RX ring.
    #[serde(default)]
    pub rx_dropped: u64,
    /// Kernel: invalid RX descriptors.
    #[serde(default)]
    pub rx_invalid_descs: u64,
    /// Kernel: invalid TX descriptors (frames xlane handed over that the kernel refused).
    #[serde(default)]
    pub tx_invalid_descs: u64,
    /// Kernel: times the kernel found the TX ring empty when it looked for work.
    #[serde(default)]
    pub tx_ring_empty_descs: u64,
    /// For a vhost-user port: its socket, frontend and guest-side counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<VhostUserInfo>,
    /// For a pod read through AF_PACKET (`veth_io: af_packet`): its socket's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<PacketInfo>,
    /// For an uplink that sends super-packets through UDP GSO sockets: their counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_gso: Option<UdpGsoInfo>,
    /// For an uplink that receives through UDP GRO sockets (`--uplink-rx udp`): their
    /// counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_rx: Option<UdpRxInfo>,
    /// For an AF_XDP port: the UMEM its sockets live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umem: Option<UmemInfo>,
}

/// The UMEM of an AF_XDP port's sockets, per worker: the one the veths share (frames
/// move between its ports by descriptor) or one of its own (a zero-copy NIC's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UmemInfo {
    /// A UMEM of its own.
    pub own: bool,
    /// Frames sent to the port that were first copied into its UMEM from another.
    pub copied_in: u64,
    /// Checksum requests on transmit its UMEM carries: "device" (the NIC completes
    /// them) or "software" (the kernel does); absent: none, the engine completes all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_checksum: Option<String>,
    /// Frames sent with their checksum left partial for the NIC or kernel to complete.
    #[serde(default)]
    pub partial_csum: u64,
}

/// An uplink's UDP GSO sockets: encapsulated super-packets sent through the host's
/// stack as one buffer each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpGsoInfo {
    /// Super-packets handed to the kernel.
    pub super_packets: u64,
    /// Datagrams (segments) they made.
    pub datagrams: u64,
    /// Super-packets refused (laid out wrong, or a full send buffer, no route).
    pub failed: u64,
}

/// An uplink's datagram receivers: VXLAN datagrams received through the host's UDP GRO
/// sockets, or off packet taps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpRxInfo {
    /// Messages read (one datagram each, or a GRO'd train of them).
    pub messages: u64,
    /// Datagrams handed to the engine.
    pub datagrams: u64,
    /// ... of which where the kernel wrote them, uncopied (jumbo underlays; 0 from an
    /// older xlaned).
    #[serde(default)]
    pub in_place: u64,
    /// Datagrams dropped: a message truncated, no free buffer, too large, or a receive
    /// error.
    pub dropped: u64,
    /// Datagrams the kernel dropped at the sockets, their receive buffers full (since
    /// each socket was made; 0 from an older xlaned).
    #[serde(default)]
    pub kernel_dropped: u64,
    /// Read off packet taps (`--uplink-rx packet`), not UDP sockets (false from an
    /// older xlaned).
    #[serde(default)]
    pub tap: bool,
}

/// The AF_PACKET side of a port (a pod whose veth keeps its offloads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketInfo {
    /// Received frames whose virtio-net header (or partial checksum) was refused.
    pub rx_malformed: u64,
    /// Received frames larger than a buffer and a super-packet slot together.
    pub rx_truncated: u64,
    /// Frames the kernel dropped before the socket (its receive ring, or buffer, full).
    pub rx_kernel_dropped: u64,
    /// Frames discarded for want of a free buffer in the worker's memory.
    #[serde(default)]
    pub rx_no_buffer: u64,
    /// Sends the kernel refused (each a frame or super-packet dropped).
    pub tx_errors: u64,
    /// Super-packets made by coalescing (GRO) before writing to the pod.
    pub gro_merged: u64,
    /// Segments that went into them.
    pub gro_segments: u64,
}

/// The vhost-user side of a port (a VM-based pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserInfo {
    /// The socket the VMM connects to.
    pub socket: std::path::PathBuf,
    /// Whether a frontend is connected.
    pub connected: bool,
    /// Frontend connections accepted so far.
    pub connections: u64,
    /// Frames read from the guest's transmit queue.
    pub from_guest: u64,
    /// Frames written into the guest's receive buffers.
    pub to_guest: u64,
    /// Descriptor chains the guest handed over unusable (counted, returned).
    pub malformed: u64,
    /// Frames dropped: no guest receive buffer, or a queue between backend and dataplane full.
    pub dropped: u64,
}

/// Counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Counters {
    /// Pipeline counters by name (rx, tx, encapsulated, …).
    pub pipeline: BTreeMap<String, u64>,
    /// Drops by reason name (every reason, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// Why super-packets were refused (each also a `super_packet` drop), by name
    /// (every reason, zero or not).
    #[serde(default)]
    pub offload_errors: BTreeMap<String, u64>,
    /// Per-port counters.
    pub ports: Vec<PortInfo>,
    /// Burst forwarding latency percentiles in nanoseconds (p50, p99, p99.9, max).
    pub latency_ns: BTreeMap<String, u64>,
    /// Burst size percentiles.
    pub burst_size: BTreeMap<String, u64>,
    /// Frames each worker took from its queues (how RSS spreads the load).
    #[serde(default)]
    pub worker_rx: Vec<u64>,
    /// Each worker's own account: a worker forwards what it receives to the end, so
    /// `rx + icmp_errors = tx + dropped` holds on each.
    #[serde(default)]
    pub workers: Vec<WorkerCounters>,
    /// The capture in progress, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureStats>,
}

/// One worker's pipeline totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Frames received.
    pub rx: u64,
    /// ICMP errors the worker made (frames in, as received ones are).
    pub icmp_errors: u64,
    /// Frames transmitted.
    pub tx: u64,
    /// Frames dropped, every reason.
    pub dropped: u64,
}

impl WorkerCounters {
    /// Every frame in was sent or counted as a drop.
    #[must_use]
    pub fn conserved(&self) -> bool {
        self.rx + self.icmp_errors == self.tx + self.dropped
    }
}

/// Daemon status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Protocol version.
    pub protocol: u32,
    /// Table generation.
    pub generation: u64,
    /// VTEP, if set.
    pub vtep: Option<Vtep>,
    /// Uplink interface.
    pub uplink: String,
    /// Uplink MAC (the VTEP MAC unless one is set).
    pub uplink_mac: Mac,
    /// The uplink's IPv4 addresses.
    #[serde(default)]
    pub uplink_ips: Vec<Ipv4Addr>,
    /// Uplink MTU.
    pub uplink_mtu: u16,
    /// Pod MTU (uplink MTU − 50).
    pub pod_mtu: u16,
    /// Cluster CIDR steered to the engine on pod ports.
    pub cluster_cidr: Ipv4Net,
    /// Worker threads.
    pub workers: usize,
    /// Whether workers spin instead of sleeping when idle.
    pub busy_poll: bool,
}

/// Replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    /// The request failed; nothing changed.
    Error {
        /// Category.
        code: ErrorCode,
        /// What went wrong.
        message: String,
    },
    /// A VTEP or batch was applied.
    Applied {
        /// Table generation now published.
        generation: u64,
        /// Changes applied.
        changes: usize,
    },
    /// An endpoint is attached and forwarding.
    EndpointReady {
        /// Its port.
        port: u16,
        /// The host-side MAC that answers the pod's ARP (its gateway MAC).
        gateway_mac: Mac,
        /// The pod MTU.
        mtu: u16,
    },
    /// An endpoint was removed (or was not there).
    EndpointRemoved {
        /// Whether it existed.
        existed: bool,
    },
    /// Routes.
    Routes {
        /// The routes.
        routes: Vec<RouteInfo>,
    },
    /// Nodes.
    Nodes {
        /// The nodes.
        nodes: Vec<NodeInfo>,
    },
    /// Endpoints (as ports).
    Endpoints {
        /// The endpoints.
        endpoints: Vec<PortInfo>,
    },
    /// Ports.
    Ports {
        /// The ports.
        ports: Vec<PortInfo>,
    },
    /// Counters.
    Counters(Box<Counters>),
    /// Status.
    Status(Box<Status>),
    /// A trace started.
    TraceStarted {
        /// Frames it takes in all.
        count: u64,
    },
    /// A trace stopped.
    TraceStopped {
        /// Frames it took.
        traced: u64,
    },
    /// A trace's records.
    Trace {
        /// Whether it is still taking frames.
        active: bool,
        /// Frames it takes in all.
        count: u64,
        /// The records, in order.
        records: Vec<TraceEntry>,
    },
    /// A capture is ready: connect to `socket` to read it as pcapng (one reader).
    CaptureReady {
        /// The capture's socket.
        socket: std::path::PathBuf,
    },
}

codec::protocol!(pub Op => Reply, version VERSION);

/// Parse one request line, mapping every failure to the reply the daemon sends.
///
/// # Errors
/// The [`Reply::Error`] to send back.
pub fn parse_request(line: &[u8]) -> Result<Request, Reply> {
    codec::parse::<Op>(line).map(Envelope::new).map_err(|e| e.reply())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let line = br#"{"version":1,"op":"apply","changes":[{"kind":"add_node","underlay_ip":"192.168.50.2","vtep_mac":"0e:00:00:00:02:01"},{"kind":"add_route","prefix":"10.244.2.0/24","via":"192.168.50.2"}]}"#;
        let r = parse_request(line).unwrap();
        let Op::Apply { changes } = r.op else { panic!("{r:?}") };
        assert_eq!(changes.len(), 2);
        assert_eq!(
            changes[1],
            Change::AddRoute { prefix: "10.244.2.0/24".parse().unwrap(), via: Ipv4Addr::new(192, 168, 50, 2) }
        );
    }

    #[test]
    fn bad_requests_get_precise_errors() {
        let code = |line: &[u8]| codec::tests::error_code(parse_request(line));
        assert_eq!(code(b"garbage"), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"op":"status"}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":2,"op":"status"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(br#"{"version":1,"op":"explode"}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":1,"op":"apply","changes":[{"kind":"add_route","prefix":"10.244.2.0/33","via":"1.2.3.4"}]}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":1,"op":"set_vtep","ip":"192.168.50.1","mac":"nope"}"#), ErrorCode::BadRequest);
    }

    #[test]
    fn observation_requests_as_documented() {
        let r = parse_request(br#"{"version":1,"op":"trace_start","count":5,"match":"icmp"}"#).unwrap();
        assert_eq!(r.op, Op::TraceStart(TraceSpec { count: 5, port: None, frames: Some("icmp".into()) }));
        let r = parse_request(br#"{"version":1,"op":"trace_start"}"#).unwrap();
        assert_eq!(r.op, Op::TraceStart(TraceSpec { count: 50, port: None, frames: None }));
        let r = parse_request(br#"{"version":1,"op":"capture_start","port":2,"rx":true}"#).unwrap();
        let Op::CaptureStart(c) = r.op else { panic!("{r:?}") };
        assert_eq!((c.port, c.rx, c.tx, c.drops, c.count, c.snaplen), (2, true, false, false, 0, 65_535));
        let code = |line: &[u8]| codec::tests::error_code(parse_request(line));
        assert_eq!(code(br#"{"version":1,"op":"trace_start","count":-1}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":1,"op":"capture_start","rx":true}"#), ErrorCode::BadRequest);
    }

    fn port_info() -> PortInfo {
        PortInfo {
            id: 1,
            role: "uplink".into(),
            ifname: "eth0".into(),
            ip: None,
            queues: 2,
            xdp_mode: "native".into(),
            zero_copy: false,
            rx: 10,
            tx: 9,
            tx_ring_full: 1,
            rx_fill_ring_empty: 2,
            rx_ring_full: 3,
            rx_dropped: 4,
            rx_invalid_descs: 5,
            tx_invalid_descs: 6,
            tx_ring_empty_descs: 7,
            vhost_user: None,
            packet: None,
            udp_gso: None,
            udp_rx: None,
            umem: None,
        }
    }

    #[test]
    fn port_info_bytes_and_round_trip() {
        let p = port_info();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"id":1,"role":"uplink","ifname":"eth0","queues":2,"xdp_mode":"native","zero_copy":false,"rx":10,"tx":9,"tx_ring_full":1,"rx_fill_ring_empty":2,"rx_ring_full":3,"rx_dropped":4,"rx_invalid_descs":5,"tx_invalid_descs":6,"tx_ring_empty_descs":7}"#
        );
        assert_eq!(serde_json::from_str::<PortInfo>(&json).unwrap(), p);
        let reply = Reply::Ports { ports: vec![p.clone()] };
        let line = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), reply);
    }

    #[test]
    fn port_info_from_an_older_daemon_parses() {
        // Before the kernel's other four AF_XDP statistics were reported.
        let old = r#"{"id":1,"role":"uplink","ifname":"eth0","queues":2,"xdp_mode":"native","zero_copy":false,"rx":10,"tx":9,"tx_ring_full":1,"rx_fill_ring_empty":2,"rx_ring_full":3}"#;
        let p = serde_json::from_str::<PortInfo>(old).unwrap();
        let zeroed =
            PortInfo { rx_dropped: 0, rx_invalid_descs: 0, tx_invalid_descs: 0, tx_ring_empty_descs: 0, ..port_info() };
        assert_eq!(p, zeroed);
    }

    #[test]
    fn requests_round_trip() {
        let ops = [
            Op::SetVtep(Vtep {
                ip: Ipv4Addr::new(192, 168, 50, 1),
                mac: None,
                vni: 1,
                port: 8472,
                subnet: Some("10.244.1.0/24".parse().unwrap()),
            }),
            Op::Apply { changes: vec![Change::DelNode { underlay_ip: Ipv4Addr::new(1, 2, 3, 4) }] },
            Op::AddEndpoint(EndpointSpec {
                ifname: "veth1".into(),
                ip: Ipv4Addr::new(10, 244, 1, 2),
                mac: Mac([2, 0, 0, 0, 0, 1]),
                vhost_user: None,
                veth_io: Default::default(),
            }),
            Op::Dump { table: Table::Routes },
            Op::Counters,
            Op::TraceStart(TraceSpec { count: 5, port: Some(2), frames: Some("icmp".into()) }),
            Op::TraceStop,
            Op::TraceShow,
            Op::CaptureStart(CaptureSpec { port: 2, rx: true, tx: false, drops: true, count: 1000, snaplen: 128 }),
        ];
        for op in ops {
            let line = serde_json::to_vec(&Request::new(op.clone())).unwrap();
            assert_eq!(parse_request(&line).unwrap().op, op);
        }
    }
}
