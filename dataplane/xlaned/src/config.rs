//! Configuration: command-line flags, each with an environment fallback, over an
//! optional TOML file, over defaults that work in the lab (layered by `xlane-config`, as
//! the agent's are: the file's keys are the flags' names, read into [`Args`] itself).

use clap::{Parser, ValueEnum};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpModeArg {
    /// Native, falling back to generic.
    Auto,
    /// Native (driver) only.
    Native,
    /// Generic (SKB) only.
    Generic,
}

/// AF_XDP bind mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindArg {
    /// Zero-copy where the driver supports it, copy otherwise.
    Auto,
    /// Copy only.
    Copy,
    /// Zero-copy only.
    ZeroCopy,
}

/// Which UMEM the uplink's sockets live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UplinkUmemArg {
    /// Its own when the NIC binds zero-copy (the veths' cannot), else the shared one.
    Auto,
    /// The shared one, in copy mode: frames move to and from pods by descriptor.
    Shared,
    /// Its own, whatever the mode (frames to and from pods copied once).
    Own,
}

/// How the uplink's VXLAN traffic reaches the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UplinkRxArg {
    /// `xdp` where the uplink's driver offers AF_XDP zero-copy (and `--bind-mode` allows
    /// it), `packet` everywhere else: decided at start-up from the driver's XDP features.
    Auto,
    /// The pinhole XDP program steers it to AF_XDP sockets (zero-copy where the NIC
    /// offers it).
    Xdp,
    /// No XDP program on the uplink: a UDP socket per worker with `UDP_GRO` reads it,
    /// a peer's GSO send arriving whole (veth and virtio-net underlays, where any XDP
    /// program makes the kernel cut GSO packets first, and copy-mode AF_XDP pays a
    /// copy per datagram).
    Udp,
    /// No XDP program on the uplink: a packet tap per worker reads it (AF_PACKET with a
    /// receive ring, a peer's GSO send arriving whole, as with `udp`), and a tcx program
    /// keeps it from the host's stack, which `udp` runs every datagram through.
    Packet,
}

/// How the uplink's VXLAN traffic is received, as decided at start-up
/// ([`UplinkRxArg::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UplinkRx {
    /// The pinhole XDP program and AF_XDP sockets.
    #[default]
    Xdp,
    /// UDP GRO sockets.
    Udp,
    /// Packet taps.
    Packet,
}

impl UplinkRx {
    /// No XDP program on the uplink: a datagram receiver per worker reads its VXLAN
    /// (the uplink's AF_XDP sockets only transmit).
    #[must_use]
    pub fn without_program(self) -> bool {
        self != Self::Xdp
    }

    /// What reads the uplink, for a log line or an error.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Xdp => "its XDP program and AF_XDP sockets",
            Self::Udp => "UDP GRO sockets",
            Self::Packet => "packet taps",
        }
    }
}

/// AF_XDP transmit checksum requests (`XDP_TXMD_FLAGS_CHECKSUM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XskTxChecksumArg {
    /// Where the uplink's driver offers them to its zero-copy sockets (netdev
    /// xsk-features tx-checksum): that UMEM's frames leave their checksums to the NIC.
    Auto,
    /// Nowhere: the engine completes every checksum itself.
    Off,
    /// On every UMEM, completed by the kernel in software as it copies each frame
    /// (copy mode; for veth labs and tests of the path).
    Software,
}

impl XskTxChecksumArg {
    /// What the shared UMEM asks for: it serves the veths, for which no driver
    /// completes requests, so only the kernel's software completion, where asked.
    #[must_use]
    pub fn for_shared(self) -> xlane_xdp::xsk::TxChecksum {
        match self {
            Self::Software => xlane_xdp::xsk::TxChecksum::Software,
            Self::Auto | Self::Off => xlane_xdp::xsk::TxChecksum::Off,
        }
    }

    /// What a UMEM of an interface's own asks for, its driver offering requests to
    /// zero-copy sockets or not (netdev xsk-features tx-checksum).
    #[must_use]
    pub fn for_own(self, driver_offers: bool) -> xlane_xdp::xsk::TxChecksum {
        match self {
            Self::Software => xlane_xdp::xsk::TxChecksum::Software,
            Self::Auto if driver_offers => xlane_xdp::xsk::TxChecksum::Device,
            Self::Auto | Self::Off => xlane_xdp::xsk::TxChecksum::Off,
        }
    }
}

impl UplinkRxArg {
    /// How the uplink is read. For `auto`, `zero_copy` asks the uplink's driver (netdev
    /// XDP features); where it cannot say, through packet taps, which work on every
    /// driver.
    pub fn resolve(self, bind: BindArg, zero_copy: impl FnOnce() -> std::io::Result<bool>) -> UplinkRx {
        match (self, bind) {
            (Self::Udp, _) => UplinkRx::Udp,
            (Self::Packet, _) => UplinkRx::Packet,
            (Self::Xdp, _) | (Self::Auto, BindArg::ZeroCopy) => UplinkRx::Xdp,
            // Copy mode pays a copy per datagram in AF_XDP too, and the program
            // on the uplink costs its GSO packets: nothing left to win.
            (Self::Auto, BindArg::Copy) => UplinkRx::Packet,
            (Self::Auto, BindArg::Auto) => match zero_copy() {
                Ok(true) => UplinkRx::Xdp,
                Ok(false) => UplinkRx::Packet,
                Err(e) => {
                    tracing::warn!(error = %e, "the uplink's XDP features: reading it through packet taps");
                    UplinkRx::Packet
                }
            },
        }
    }
}

/// xlaned: the xlane dataplane daemon.
///
/// Serves the uplink (VXLAN to the local VTEP, through an XDP pinhole: everything else
/// stays with the kernel), the host port and pod ports with AF_XDP workers, and takes
/// its tables from a control socket (xlane-agent, xlanectl). Every flag can also come
/// from the environment (XLANE_*) or a TOML file (--config, keys as the flag names).
#[derive(Debug, Parser, Default, Serialize, Deserialize)]
#[command(name = "xlaned", version, about, long_about)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Args {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "XLANE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Uplink interface (a NIC, an SR-IOV VF, or a PF with --uplink-queues).
    #[arg(long, env = "XLANE_UPLINK")]
    pub uplink: Option<String>,
    /// Uplink queue ids to serve, e.g. "0,1" (default: all receive queues).
    #[arg(long, env = "XLANE_UPLINK_QUEUES", value_delimiter = ',')]
    pub uplink_queues: Option<Vec<u32>>,
    /// Cluster CIDR: what pod ports steer to the engine [default: 10.244.0.0/16].
    #[arg(long, env = "XLANE_CLUSTER_CIDR")]
    pub cluster_cidr: Option<Ipv4Net>,
    /// Control socket path [default: /run/xlane/xlaned.sock].
    #[arg(long, env = "XLANE_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Prometheus endpoint address, or "off" [default: 127.0.0.1:9472].
    #[arg(long, env = "XLANE_METRICS")]
    pub metrics: Option<String>,
    /// Worker threads [default: 1].
    #[arg(long, env = "XLANE_WORKERS")]
    pub workers: Option<usize>,
    /// Cores to pin workers to, e.g. "1,2" (default: not pinned).
    #[arg(long, env = "XLANE_CORES", value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// Keep workers spinning when idle (lowest latency, one core each at 100%).
    #[arg(long, env = "XLANE_BUSY_POLL", num_args = 0..=1, default_missing_value = "true")]
    pub busy_poll: Option<bool>,
    /// XDP attach mode [default: auto].
    #[arg(long, env = "XLANE_XDP_MODE", value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// AF_XDP bind mode of the uplink [default: auto]; veths and the host port always
    /// bind copy mode.
    #[arg(long, env = "XLANE_BIND_MODE", value_enum)]
    pub bind_mode: Option<BindArg>,
    /// The UMEM of the uplink's sockets [default: auto]: a zero-copy NIC cannot share
    /// one with the veths' copy-mode sockets, so it gets its own (frames between it and
    /// pods are copied once); "own" forces that layout in copy mode too.
    #[arg(long, env = "XLANE_UPLINK_UMEM", value_enum)]
    pub uplink_umem: Option<UplinkUmemArg>,
    /// Host port interface name, or "none" [default: xlane0].
    #[arg(long, env = "XLANE_HOST_PORT")]
    pub host_port: Option<String>,
    /// UMEM frames per worker [default: 40960, 80 MiB]; each pod port keeps 256 in its
    /// fill ring, more (up to 2048) under bursts, within a quarter of the UMEM.
    #[arg(long, env = "XLANE_UMEM_FRAMES")]
    pub umem_frames: Option<u32>,
    /// VTEP address to configure at start (else the agent sets it).
    #[arg(long, env = "XLANE_VTEP_IP")]
    pub vtep_ip: Option<Ipv4Addr>,
    /// VNI for --vtep-ip [default: 1].
    #[arg(long, env = "XLANE_VNI")]
    pub vni: Option<u32>,
    /// VXLAN UDP port for --vtep-ip [default: 8472].
    #[arg(long, env = "XLANE_VXLAN_PORT")]
    pub vxlan_port: Option<u16>,
    /// This node's pod subnet for --vtep-ip (enables the host port).
    #[arg(long, env = "XLANE_NODE_SUBNET")]
    pub node_subnet: Option<Ipv4Net>,
    /// Send pods' TCP super-packets to other nodes through UDP GSO sockets on the
    /// uplink, one buffer each, rather than cut into AF_XDP frames [default: true].
    #[arg(long, env = "XLANE_UPLINK_UDP_GSO", num_args = 0..=1, default_missing_value = "true")]
    pub uplink_udp_gso: Option<bool>,
    /// AF_XDP transmit checksum requests: "auto" where the uplink's driver completes
    /// them (its zero-copy UMEM), "software" on every UMEM with the kernel completing
    /// them (veth labs), "off" [default: auto]. Frames the engine segments for such a
    /// port leave their TCP checksums partial.
    #[arg(long, env = "XLANE_XSK_TX_CHECKSUM", value_enum)]
    pub xsk_tx_checksum: Option<XskTxChecksumArg>,
    /// How the uplink's VXLAN traffic is received: "xdp" (the pinhole program and
    /// AF_XDP), "packet" (packet taps and a tcx pinhole, no XDP program on the uplink),
    /// "udp" (UDP GRO sockets, no XDP program) or "auto" (xdp where the uplink's driver
    /// offers AF_XDP zero-copy, packet elsewhere) [default: auto].
    #[arg(long, env = "XLANE_UPLINK_RX", value_enum)]
    pub uplink_rx: Option<UplinkRxArg>,
    /// Take over from the xlaned running with the same runtime directory without
    /// losing a frame (a hitless upgrade): its sockets, UMEMs, XDP programs and state
    /// (vhost-user guests stay connected) pass to this process, and it exits. Where it
    /// cannot hand over (another protocol version or worker count), it exits and this
    /// one starts cold, saying why.
    #[arg(long)]
    #[serde(skip)]
    pub takeover: bool,
    /// The handover protocol version to speak (tests of the fallback).
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub handover_version: Option<u32>,
}

impl xlane_config::Layered for Args {
    fn config_file(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Uplink interface.
    pub uplink: String,
    /// Uplink queues (empty: all).
    pub uplink_queues: Vec<u32>,
    /// Cluster CIDR.
    pub cluster_cidr: Ipv4Net,
    /// Control socket.
    pub socket: PathBuf,
    /// Metrics address.
    pub metrics: Option<SocketAddr>,
    /// Workers.
    pub workers: usize,
    /// Pinning.
    pub cores: Vec<usize>,
    /// Busy poll.
    pub busy_poll: bool,
    /// XDP mode.
    pub xdp_mode: XdpModeArg,
    /// Bind mode.
    pub bind_mode: BindArg,
    /// The uplink's UMEM.
    pub uplink_umem: UplinkUmemArg,
    /// Host port name.
    pub host_port: Option<String>,
    /// UMEM frames per worker.
    pub umem_frames: u32,
    /// VTEP to set at start.
    pub vtep: Option<xlane_api::Vtep>,
    /// Super-packets to other nodes through UDP GSO sockets.
    pub uplink_udp_gso: bool,
    /// AF_XDP transmit checksum requests.
    pub xsk_tx_checksum: XskTxChecksumArg,
    /// How the uplink receives.
    pub uplink_rx: UplinkRxArg,
    /// Take over from a running xlaned.
    pub takeover: bool,
    /// The handover protocol version spoken.
    pub handover_version: u32,
}

impl Config {
    /// Merge flags/env over the file over defaults, and validate.
    ///
    /// # Errors
    /// Unreadable or invalid file, missing uplink, invalid values.
    pub fn resolve(args: Args) -> anyhow::Result<Self> {
        // Per invocation, never from a file (layering drops them).
        let (takeover, handover_version) = (args.takeover, args.handover_version);
        let args = xlane_config::layer(args, None)?;
        let uplink =
            args.uplink.ok_or_else(|| anyhow::anyhow!("no uplink: pass --uplink <interface> (or XLANE_UPLINK)"))?;
        let cluster_cidr = args.cluster_cidr.unwrap_or_else(|| "10.244.0.0/16".parse().expect("valid"));
        anyhow::ensure!(cluster_cidr.network() == cluster_cidr.addr(), "cluster CIDR {cluster_cidr} has host bits set");
        let metrics = match args.metrics.as_deref() {
            Some("off") => None,
            Some(a) => Some(a.parse().map_err(|e| anyhow::anyhow!("--metrics {a}: {e}"))?),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9472))),
        };
        let workers = args.workers.unwrap_or(1);
        anyhow::ensure!((1..=64).contains(&workers), "--workers must be 1 to 64");
        let cores = args.cores.unwrap_or_default();
        anyhow::ensure!(
            cores.is_empty() || cores.len() >= workers,
            "--cores lists {} cores for {workers} workers",
            cores.len()
        );
        let host_port = match args.host_port {
            Some(h) if h == "none" => None,
            Some(h) => Some(h),
            None => Some("xlane0".to_owned()),
        };
        if let Some(h) = &host_port {
            anyhow::ensure!(!h.is_empty() && h.len() <= 13, "host port name {h:?} must be 1 to 13 characters");
        }
        let bind_mode = args.bind_mode.unwrap_or(BindArg::Auto);
        let uplink_umem = args.uplink_umem.unwrap_or(UplinkUmemArg::Auto);
        anyhow::ensure!(
            !(bind_mode == BindArg::ZeroCopy && uplink_umem == UplinkUmemArg::Shared),
            "--bind-mode zero-copy needs the uplink in a UMEM of its own (--uplink-umem auto or own): \
             the shared UMEM serves the veths, which bind copy mode only"
        );
        let vtep_ip = args.vtep_ip;
        let vtep = vtep_ip.map(|ip| xlane_api::Vtep {
            ip,
            mac: None,
            vni: args.vni.unwrap_or(1),
            port: args.vxlan_port.unwrap_or(xlane_wire::VXLAN_PORT_LINUX),
            subnet: args.node_subnet,
        });
        Ok(Self {
            uplink,
            uplink_queues: args.uplink_queues.unwrap_or_default(),
            cluster_cidr,
            socket: args.socket.unwrap_or_else(|| "/run/xlane/xlaned.sock".into()),
            metrics,
            workers,
            cores,
            busy_poll: args.busy_poll.unwrap_or(false),
            xdp_mode: args.xdp_mode.unwrap_or(XdpModeArg::Auto),
            bind_mode,
            uplink_umem,
            host_port,
            umem_frames: args.umem_frames.unwrap_or(40_960),
            vtep,
            uplink_udp_gso: args.uplink_udp_gso.unwrap_or(true),
            xsk_tx_checksum: args.xsk_tx_checksum.unwrap_or(XskTxChecksumArg::Auto),
            uplink_rx: args.uplink_rx.unwrap_or(UplinkRxArg::Auto),
            takeover,
            handover_version: handover_version.unwrap_or(crate::handover::VERSION),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = std::env::temp_dir().join(format!("xlaned-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xlaned.toml");
        std::fs::write(
            &path,
            "uplink = \"eth9\"\nworkers = 2\nmetrics = \"off\"\nvtep-ip = \"192.168.50.1\"\nvni = 7\n",
        )
        .unwrap();
        let args = Args { config: Some(path.clone()), workers: Some(1), ..Args::default() };
        let c = Config::resolve(args).unwrap();
        assert_eq!((c.uplink.as_str(), c.workers, c.metrics), ("eth9", 1, None));
        assert_eq!(c.vtep.unwrap().vni, 7);
        assert_eq!(c.vtep.unwrap().port, 8472);
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.host_port.as_deref(), Some("xlane0"));
        std::fs::write(&path, "uplnk = \"eth9\"\n").unwrap();
        let e = Config::resolve(Args { config: Some(path), ..Args::default() }).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalid_values_are_explained() {
        let e = Config::resolve(Args::default()).unwrap_err();
        assert!(e.to_string().contains("--uplink"), "{e}");
        let e = Config::resolve(Args {
            uplink: Some("x".into()),
            cluster_cidr: Some("10.244.1.0/16".parse().unwrap()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
    }

    #[test]
    fn the_uplink_is_read_through_taps_unless_its_driver_offers_zero_copy() {
        use UplinkRxArg::{Auto, Packet, Udp, Xdp};
        let c = |rx: UplinkRxArg, bind, zc: std::io::Result<bool>| rx.resolve(bind, || zc);
        assert_eq!(c(Auto, BindArg::Auto, Ok(false)), UplinkRx::Packet, "veth, virtio-net");
        assert_eq!(c(Auto, BindArg::Auto, Ok(true)), UplinkRx::Xdp, "a zero-copy NIC");
        assert_eq!(c(Auto, BindArg::Auto, Err(std::io::Error::other("no netdev family"))), UplinkRx::Packet);
        assert_eq!(c(Auto, BindArg::Copy, Ok(true)), UplinkRx::Packet, "copy mode asked for");
        assert_eq!(c(Auto, BindArg::ZeroCopy, Ok(false)), UplinkRx::Xdp, "zero-copy asked for");
        assert_eq!(c(Xdp, BindArg::Auto, Ok(false)), UplinkRx::Xdp, "asked for");
        assert_eq!(c(Udp, BindArg::Auto, Ok(true)), UplinkRx::Udp, "asked for");
        assert_eq!(c(Packet, BindArg::ZeroCopy, Ok(true)), UplinkRx::Packet, "asked for");
        let args = Args { uplink: Some("eth0".into()), ..Args::default() };
        assert_eq!(Config::resolve(args).unwrap().uplink_rx, Auto, "the default");
    }
}
