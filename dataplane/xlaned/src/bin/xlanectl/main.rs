//! xlanectl: inspect and drive xlaned through its control socket.
#![forbid(unsafe_code)]

mod capture;
mod trace;

use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use xlane_api::{CaptureSpec, Change, Client, EndpointSpec, Mac, Op, PortInfo, Reply, Table, TraceSpec, VethIo, Vtep};

/// xlanectl: the command-line client of xlaned's control socket.
///
/// It shows what the dataplane holds and counts: its status, the ports with their
/// counters and the kernel's AF_XDP statistics, overlay routes, remote nodes, local
/// endpoints, and the pipeline counters with every drop reason and the burst latency.
/// It changes the tables: sets the VTEP, adds and removes nodes, routes and endpoints,
/// applies a batch of changes from JSON in one step. `--json` prints xlaned's reply as it
/// came. One command (`netdev-tx-checksum`) acts on an interface without xlaned.
#[derive(Debug, Parser)]
#[command(name = "xlanectl", version, verbatim_doc_comment)]
struct Cli {
    /// xlaned's control socket.
    #[arg(long, env = "XLANE_SOCKET", default_value = "/run/xlane/xlaned.sock", global = true)]
    socket: PathBuf,
    /// Print the daemon's JSON reply instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Daemon status.
    Status,
    /// Ports and their counters.
    Ports,
    /// Overlay routes.
    Routes,
    /// Remote nodes and their next hops.
    Nodes,
    /// Local endpoints.
    Endpoints,
    /// Pipeline counters, drop reasons, ports, latency.
    Counters {
        /// Also list drop reasons that are zero.
        #[arg(long)]
        all: bool,
    },
    /// Set the VTEP.
    SetVtep {
        /// Underlay address.
        ip: Ipv4Addr,
        /// VNI.
        #[arg(long, default_value_t = 1)]
        vni: u32,
        /// VXLAN UDP port.
        #[arg(long, default_value_t = xlane_wire::VXLAN_PORT_LINUX)]
        port: u16,
        /// VTEP MAC (default: the uplink's).
        #[arg(long)]
        mac: Option<Mac>,
        /// The node's pod subnet (configures the host port).
        #[arg(long)]
        subnet: Option<Ipv4Net>,
    },
    /// Add or update a remote node.
    AddNode {
        /// Underlay address.
        underlay_ip: Ipv4Addr,
        /// Its VTEP MAC.
        vtep_mac: Mac,
        /// Next-hop MAC (default: from the kernel's neighbour table).
        #[arg(long)]
        next_hop_mac: Option<Mac>,
    },
    /// Remove a remote node.
    DelNode {
        /// Underlay address.
        underlay_ip: Ipv4Addr,
    },
    /// Route a prefix through a remote VTEP.
    AddRoute {
        /// Prefix.
        prefix: Ipv4Net,
        /// Remote VTEP address.
        via: Ipv4Addr,
    },
    /// Withdraw a route.
    DelRoute {
        /// Prefix.
        prefix: Ipv4Net,
    },
    /// Apply a batch of changes from a JSON file ("-" for stdin): a list of changes.
    Apply {
        /// The file.
        file: PathBuf,
    },
    /// Attach a pod behind a host-side interface, or serve a VM-based pod on a
    /// vhost-user socket.
    AddEndpoint {
        /// Host-side interface (with --vhost-user: the port's name).
        ifname: String,
        /// Pod address.
        ip: Ipv4Addr,
        /// Pod MAC (with --vhost-user: the MAC the device offers the guest).
        mac: Mac,
        /// Serve the pod as a vhost-user-net backend on this socket (its VMM connects).
        #[arg(long, value_name = "SOCKET")]
        vhost_user: Option<PathBuf>,
        /// Read the veth's host end through AF_PACKET with a virtio-net header: the pod
        /// keeps its offloads (TSO/GSO), TCP travels as super-packets.
        #[arg(long, conflicts_with = "vhost_user")]
        offload: bool,
    },
    /// Detach a pod.
    DelEndpoint {
        /// Pod address.
        ip: Ipv4Addr,
    },
    /// Packet trace: record what the pipeline decides for frames, stage by stage.
    #[command(subcommand)]
    Trace(TraceCmd),
    /// Capture a port's frames as pcapng (tcpdump and Wireshark read it). Frames are
    /// copied as received (--rx, the default), as transmitted (--tx), or only those
    /// received and dropped (--drops, each with its drop reason as the packet comment).
    /// A reader too slow for the traffic loses frames (counted), never slows forwarding.
    Capture {
        /// The port (see `xlanectl ports`).
        #[arg(long)]
        port: u16,
        /// Frames received on the port.
        #[arg(long)]
        rx: bool,
        /// Frames transmitted on the port.
        #[arg(long)]
        tx: bool,
        /// Frames received on the port and dropped, with the reason.
        #[arg(long)]
        drops: bool,
        /// Stop after this many frames (default: until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Bytes kept of each frame.
        #[arg(long, default_value_t = 65_535)]
        snaplen: u32,
        /// Where to write: a file, or "-" for stdout (`| tcpdump -n -r -`).
        #[arg(short = 'w', value_name = "FILE|-")]
        write: PathBuf,
    },
    /// Turn transmit checksum offload of an interface in this namespace on or off (what
    /// `ethtool -K <dev> tx off` does). Interfaces whose traffic reaches xlane — pod
    /// interfaces, the host port — need it off: offloaded checksums reach an AF_XDP
    /// socket unfinished. Does not talk to xlaned.
    NetdevTxChecksum {
        /// Interface.
        ifname: String,
        /// "on" or "off".
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Debug, Subcommand)]
enum TraceCmd {
    /// Start tracing (replacing a trace in progress and its records).
    Start {
        /// Frames to trace in all.
        #[arg(long, default_value_t = 50)]
        count: u32,
        /// Only frames received on this port (see `xlanectl ports`).
        #[arg(long)]
        port: Option<u16>,
        /// Only frames matching: a CIDR or address (source or destination), icmp, tcp,
        /// udp, arp, or a TCP/UDP port number. Overlay frames match by their inner packet.
        #[arg(long = "match", value_name = "CIDR|PROTO|PORT")]
        frames: Option<String>,
    },
    /// Stop tracing; the records stay for `show`.
    Stop,
    /// The traced frames, one block each.
    Show,
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("xlanectl: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<bool> {
    let op = match &cli.cmd {
        Cmd::NetdevTxChecksum { ifname, state } => {
            xlane_netlink::ethtool::set_tx_checksum(ifname, state == "on")
                .map_err(|e| anyhow::anyhow!("{ifname}: {e}"))?;
            return Ok(true);
        }
        Cmd::Capture { port, rx, tx, drops, count, snaplen, write } => {
            let spec = CaptureSpec { port: *port, rx: *rx, tx: *tx, drops: *drops, count: *count, snaplen: *snaplen };
            let mut client =
                Client::connect(&cli.socket).map_err(|e| anyhow::anyhow!("{}: {e}", cli.socket.display()))?;
            return capture::run(&mut client, spec, write);
        }
        Cmd::Status => Op::Status,
        Cmd::Ports => Op::Dump { table: Table::Ports },
        Cmd::Routes => Op::Dump { table: Table::Routes },
        Cmd::Nodes => Op::Dump { table: Table::Nodes },
        Cmd::Endpoints => Op::Dump { table: Table::Endpoints },
        Cmd::Counters { .. } => Op::Counters,
        Cmd::SetVtep { ip, vni, port, mac, subnet } => {
            Op::SetVtep(Vtep { ip: *ip, mac: *mac, vni: *vni, port: *port, subnet: *subnet })
        }
        Cmd::AddNode { underlay_ip, vtep_mac, next_hop_mac } => Op::Apply {
            changes: vec![Change::AddNode {
                underlay_ip: *underlay_ip,
                vtep_mac: *vtep_mac,
                next_hop_mac: *next_hop_mac,
            }],
        },
        Cmd::DelNode { underlay_ip } => Op::Apply { changes: vec![Change::DelNode { underlay_ip: *underlay_ip }] },
        Cmd::AddRoute { prefix, via } => Op::Apply { changes: vec![Change::AddRoute { prefix: *prefix, via: *via }] },
        Cmd::DelRoute { prefix } => Op::Apply { changes: vec![Change::DelRoute { prefix: *prefix }] },
        Cmd::Apply { file } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(file)?;
            }
            Op::Apply { changes: serde_json::from_str(&text)? }
        }
        Cmd::AddEndpoint { ifname, ip, mac, vhost_user, offload } => Op::AddEndpoint(EndpointSpec {
            ifname: ifname.clone(),
            ip: *ip,
            mac: *mac,
            vhost_user: vhost_user.clone(),
            veth_io: if *offload { VethIo::AfPacket } else { VethIo::AfXdp },
        }),
        Cmd::DelEndpoint { ip } => Op::DelEndpoint { ip: *ip },
        Cmd::Trace(TraceCmd::Start { count, port, frames }) => {
            Op::TraceStart(TraceSpec { count: *count, port: *port, frames: frames.clone() })
        }
        Cmd::Trace(TraceCmd::Stop) => Op::TraceStop,
        Cmd::Trace(TraceCmd::Show) => Op::TraceShow,
    };
    let mut client = Client::connect(&cli.socket).map_err(|e| anyhow::anyhow!("{}: {e}", cli.socket.display()))?;
    let reply = client.call(op)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(!matches!(reply, Reply::Error { .. }));
    }
    let all = matches!(cli.cmd, Cmd::Counters { all: true });
    print_reply(&reply, all);
    Ok(!matches!(reply, Reply::Error { .. }))
}

fn print_ports(ports: &[PortInfo]) {
    // After TX-FULL (xlane's own count), the kernel's AF_XDP statistics summed over the
    // port's sockets.
    println!(
        "{:>4}  {:<7} {:<16} {:<15} {:>2} {:<7} {:>12} {:>12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "PORT",
        "ROLE",
        "IFNAME",
        "IP",
        "Q",
        "XDP",
        "RX",
        "TX",
        "TX-FULL",
        "FILL-EMPTY",
        "RX-FULL",
        "RX-DROP",
        "RX-INVAL",
        "TX-INVAL",
        "TX-EMPTY"
    );
    for p in ports {
        let ip = p.ip.map(|i| i.to_string()).unwrap_or_default();
        let mode = if p.vhost_user.is_some() {
            "vhost".to_owned()
        } else if p.packet.is_some() {
            "packet".to_owned()
        } else if let Some(r) = &p.udp_rx {
            // Read through packet taps or UDP sockets; its AF_XDP sockets only transmit.
            if r.tap { "tap" } else { "udp" }.to_owned()
        } else if p.zero_copy {
            format!("{}/zc", p.xdp_mode)
        } else {
            p.xdp_mode.clone()
        };
        println!(
            "{:>4}  {:<7} {:<16} {:<15} {:>2} {:<7} {:>12} {:>12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            p.id,
            p.role,
            p.ifname,
            ip,
            p.queues,
            mode,
            p.rx,
            p.tx,
            p.tx_ring_full,
            p.rx_fill_ring_empty,
            p.rx_ring_full,
            p.rx_dropped,
            p.rx_invalid_descs,
            p.tx_invalid_descs,
            p.tx_ring_empty_descs
        );
    }
    for p in ports {
        if let Some(v) = &p.vhost_user {
            println!(
                "port {} vhost-user {} ({}, {} connection(s)): from guest {}, to guest {}, malformed {}, dropped {}",
                p.id,
                v.socket.display(),
                if v.connected { "connected" } else { "waiting for its VMM" },
                v.connections,
                v.from_guest,
                v.to_guest,
                v.malformed,
                v.dropped
            );
        }
        if let Some(k) = &p.packet {
            println!(
                "port {} AF_PACKET: merged {} super-packets of {} segments; malformed {}, truncated {}, kernel dropped {}, no buffer {}, send errors {}",
                p.id,
                k.gro_merged,
                k.gro_segments,
                k.rx_malformed,
                k.rx_truncated,
                k.rx_kernel_dropped,
                k.rx_no_buffer,
                k.tx_errors
            );
        }
        if let Some(g) = &p.udp_gso {
            println!(
                "port {} UDP GSO: {} super-packets sent as {} datagrams; refused {}",
                p.id, g.super_packets, g.datagrams, g.failed
            );
        }
        if let Some(r) = &p.udp_rx {
            println!(
                "port {} {} receive: {} datagrams in {} messages ({} uncopied); dropped {}, by the kernel {}",
                p.id,
                if r.tap { "packet tap" } else { "UDP GRO" },
                r.datagrams,
                r.messages,
                r.in_place,
                r.dropped,
                r.kernel_dropped
            );
        }
        if let Some(u) = p.umem.as_ref().filter(|u| u.own || u.copied_in > 0) {
            println!(
                "port {} UMEM: {} ({}); {} frames copied in from another UMEM",
                p.id,
                if u.own { "its own" } else { "shared" },
                if p.zero_copy { "zero-copy" } else { "copy mode" },
                u.copied_in
            );
        }
        if let Some(u) = &p.umem
            && let Some(by) = &u.tx_checksum
        {
            println!(
                "port {} TX checksum requests ({by} completes them): {} frames sent with a partial checksum",
                p.id, u.partial_csum
            );
        }
    }
}

fn print_reply(reply: &Reply, all_drops: bool) {
    match reply {
        Reply::Error { code, message } => eprintln!("error ({code:?}): {message}"),
        Reply::Applied { generation, changes } => {
            println!("applied {changes} change(s); tables at generation {generation}")
        }
        Reply::EndpointReady { port, gateway_mac, mtu } => {
            println!("endpoint ready on port {port}; gateway MAC {gateway_mac}; MTU {mtu}")
        }
        Reply::EndpointRemoved { existed } => {
            println!("{}", if *existed { "endpoint removed" } else { "no such endpoint (nothing to do)" })
        }
        Reply::Routes { routes } => {
            println!("{:<20} {:<16} STATE", "PREFIX", "VIA");
            for r in routes {
                println!(
                    "{:<20} {:<16} {}",
                    r.prefix.to_string(),
                    r.via.to_string(),
                    if r.resolved { "resolved" } else { "unresolved" }
                );
            }
        }
        Reply::Nodes { nodes } => {
            println!("{:<16} {:<18} {:<18} SOURCE", "UNDERLAY", "VTEP-MAC", "NEXT-HOP-MAC");
            for n in nodes {
                let nh = n.next_hop_mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
                println!("{:<16} {:<18} {:<18} {}", n.underlay_ip.to_string(), n.vtep_mac.to_string(), nh, n.source);
            }
        }
        Reply::Endpoints { endpoints: ports } | Reply::Ports { ports } => print_ports(ports),
        Reply::Counters(c) => {
            println!("pipeline:");
            for (k, v) in &c.pipeline {
                println!("  {k:<14} {v:>14}");
            }
            println!("drops:");
            for (k, v) in &c.drops {
                if *v > 0 || all_drops {
                    let desc = xlane_engine::DropReason::from_name(k).map_or("", xlane_engine::DropReason::description);
                    println!("  {k:<16} {v:>12}  {desc}");
                }
            }
            if c.offload_errors.values().any(|v| *v > 0) || all_drops {
                println!("super-packets refused:");
                for (k, v) in c.offload_errors.iter().filter(|(_, v)| **v > 0 || all_drops) {
                    let desc =
                        xlane_engine::OffloadError::from_name(k).map_or("", xlane_engine::OffloadError::description);
                    println!("  {k:<22} {v:>8}  {desc}");
                }
            }
            if !c.latency_ns.is_empty() {
                let l = &c.latency_ns;
                println!("burst latency ns: p50 {} p99 {} p99.9 {} max {}", l["p50"], l["p99"], l["p99.9"], l["max"]);
            }
            if !c.burst_size.is_empty() {
                println!(
                    "burst size: p50 {} p99 {} max {}",
                    c.burst_size["p50"], c.burst_size["p99"], c.burst_size["max"]
                );
            }
            if let Some(s) = &c.capture {
                let state = if s.active { "running" } else { "ended" };
                println!(
                    "capture on port {} ({state}): {} captured, {} written, {} lost",
                    s.port, s.captured, s.written, s.lost
                );
            }
            println!("ports:");
            print_ports(&c.ports);
        }
        Reply::TraceStarted { count } => println!("tracing the next {count} matching frame(s)"),
        Reply::TraceStopped { traced } => println!("trace stopped; {traced} frame(s) traced"),
        Reply::Trace { active, count, records } => trace::print(*active, *count, records),
        Reply::CaptureReady { socket } => println!("capture ready: read it from {}", socket.display()),
        Reply::Status(s) => {
            println!("xlaned {} (protocol {}), tables at generation {}", s.version, s.protocol, s.generation);
            match &s.vtep {
                Some(v) => println!(
                    "VTEP {} VNI {} port {}{}",
                    v.ip,
                    v.vni,
                    v.port,
                    v.subnet.map(|s| format!(" subnet {s}")).unwrap_or_default()
                ),
                None => println!("VTEP not set"),
            }
            println!("uplink {} MTU {} (pod MTU {}), cluster {}", s.uplink, s.uplink_mtu, s.pod_mtu, s.cluster_cidr);
            println!("{} worker(s), {}", s.workers, if s.busy_poll { "busy-poll" } else { "adaptive idle" });
        }
    }
}
