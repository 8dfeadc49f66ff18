//! Where a UDP test's offered frames went: one accounting for `demo` and `bench`.
//!
//! A frame the sender offered is delivered or lost at one place on its path, and each
//! place keeps its own count:
//! * the sender's own send errors;
//! * a veth whose peer's receive queue (the CPU's backlog, or the XDP ring of a peer
//!   running XDP) was full: the kernel counts the drop as the sending end's `tx_dropped`
//!   — the sender pod's veth, a node's uplink or pod veth, the fabric bridge's ports;
//! * xlane's AF_XDP sockets, as the kernel counts them (`XDP_STATISTICS`: RX ring full,
//!   RX dropped — mostly a fill ring that was empty), its own TX-ring refusals and the
//!   TX descriptors the kernel refused, per port as `xlaned` reports them;
//! * xlane's pipeline, by drop reason;
//! * the receiving pod's IP and UDP layers (`/proc/net/snmp` in its namespace: socket
//!   buffer full, other UDP errors, no socket on the port, IP discards) when delivery is
//!   counted by the receiving application.
//!
//! A [`Snapshot`] reads them all; [`Ledger::from_snapshots`] turns the differences over a
//! test into [`Loss`]es, and what they do not explain is shown as unaccounted, never
//! hidden. Each drop is counted once: the receiving end of a veth also counts a backlog
//! drop (`rx_dropped`), and a veth running xlane's XDP program counts a frame its socket
//! refused (a failed redirect), so interfaces are read for `tx_dropped` only.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use xlane_api::{Counters, PortInfo};
use xlane_netlab::cluster::Cluster;
use xlane_netlab::{Lab, Netns};

/// Where on the path a frame was lost (report columns, in path order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The sending pod: its send errors and its veth.
    Sender,
    /// xlane's sockets and rings (the kernel's AF_XDP statistics, xlane's TX rings).
    XlaneRings,
    /// xlane's pipeline, by drop reason.
    XlanePipeline,
    /// The kernel links between the pods: node uplinks and pod veths, the fabric bridge.
    Wire,
    /// The receiving pod's IP and UDP layers and its socket.
    Receiver,
}

impl Stage {
    /// Every stage, in path order.
    pub const ALL: [Self; 5] = [Self::Sender, Self::XlaneRings, Self::XlanePipeline, Self::Wire, Self::Receiver];

    /// Column title.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Self::Sender => "sender",
            Self::XlaneRings => "xlane rings",
            Self::XlanePipeline => "xlane pipeline",
            Self::Wire => "wire",
            Self::Receiver => "receiver",
        }
    }
}

/// Frames lost at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    /// Which part of the path.
    pub stage: Stage,
    /// The place and why, for people ("xlane RX ring full on node 1 eth0 (uplink)").
    pub place: String,
    /// Frames.
    pub frames: u64,
}

/// A UDP test's offered frames: delivered, or lost at a counted place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Frames the sender offered (sent or refused by its own socket).
    pub offered: u64,
    /// Frames counted where the test counts delivery.
    pub delivered: u64,
    /// Every place that counted a loss during the test (none with zero frames).
    pub losses: Vec<Loss>,
}

impl Ledger {
    /// Frames offered and not delivered.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.offered.saturating_sub(self.delivered)
    }

    /// Frames the counted places explain.
    #[must_use]
    pub fn accounted(&self) -> u64 {
        self.losses.iter().map(|l| l.frames).sum()
    }

    /// Lost frames no counter explains; negative when the places counted more than went
    /// missing (other traffic dropped there, or counted where delivery is counted).
    #[must_use]
    pub fn unaccounted(&self) -> i64 {
        i64::try_from(self.lost()).unwrap_or(i64::MAX) - i64::try_from(self.accounted()).unwrap_or(i64::MAX)
    }

    /// Frames lost at `stage`.
    #[must_use]
    pub fn at(&self, stage: Stage) -> u64 {
        self.losses.iter().filter(|l| l.stage == stage).map(|l| l.frames).sum()
    }

    /// One line: "lost 4400 of 10000: 3900 xlane RX ring full on node 1 eth0 (uplink),
    /// 500 receiver socket buffer full", the largest first, and what no counter explains.
    #[must_use]
    pub fn summary(&self) -> String {
        if self.lost() == 0 && self.losses.is_empty() {
            return format!("nothing lost of {}", self.offered);
        }
        let mut places: Vec<&Loss> = self.losses.iter().collect();
        places.sort_by_key(|l| std::cmp::Reverse(l.frames));
        let mut parts: Vec<String> = places.iter().map(|l| format!("{} {}", l.frames, l.place)).collect();
        match self.unaccounted() {
            0 => {}
            n if n > 0 => parts.push(format!("unaccounted {n}")),
            n => parts.push(format!("over-counted {} (other traffic counted with the test's)", -n)),
        }
        format!("lost {} of {}: {}", self.lost(), self.offered, parts.join(", "))
    }

    /// The ledger of a test that offered `offered` frames (`send_errors` of them refused
    /// by the sender's socket) and delivered `delivered`, from the counters `before` and
    /// `after` it.
    #[must_use]
    pub fn from_snapshots(offered: u64, delivered: u64, send_errors: u64, before: &Snapshot, after: &Snapshot) -> Self {
        let mut losses = Vec::new();
        let mut lose = |stage, place: String, frames: u64| {
            if frames > 0 {
                losses.push(Loss { stage, place, frames });
            }
        };
        lose(Stage::Sender, "send errors at the sender".into(), send_errors);
        for (i, node) in after.xlane.iter().enumerate() {
            let earlier = before.xlane.get(i);
            for p in &node.ports {
                let was = earlier.and_then(|c| c.ports.iter().find(|q| q.id == p.id && q.ifname == p.ifname));
                let d = |f: fn(&PortInfo) -> u64| f(p).saturating_sub(was.map_or(0, f));
                let at = format!("on node {i} {} ({})", p.ifname, p.role);
                lose(Stage::XlaneRings, format!("xlane RX ring full {at}"), d(|p| p.rx_ring_full));
                // The kernel counts a frame it had no fill-ring buffer for twice: as
                // dropped and as a fill ring found empty; name the cause when it is that.
                let (dropped, fill_empty) = (d(|p| p.rx_dropped), d(|p| p.rx_fill_ring_empty));
                let place = match fill_empty {
                    0 => format!("xlane RX dropped {at}"),
                    n if n >= dropped => format!("xlane fill ring empty {at}"),
                    n => format!("xlane RX dropped {at}, fill ring empty {n}×"),
                };
                lose(Stage::XlaneRings, place, dropped);
                lose(Stage::XlaneRings, format!("xlane TX ring full {at}"), d(|p| p.tx_ring_full));
                lose(
                    Stage::XlaneRings,
                    format!("xlane TX descriptors refused by the kernel {at}"),
                    d(|p| p.tx_invalid_descs),
                );
                // A pod read through AF_PACKET: the socket's own counters.
                lose(
                    Stage::XlaneRings,
                    format!("xlane AF_PACKET receive ring full {at}"),
                    d(|p| p.packet.map_or(0, |k| k.rx_kernel_dropped)),
                );
                lose(
                    Stage::XlaneRings,
                    format!("xlane AF_PACKET no free buffer {at}"),
                    d(|p| p.packet.map_or(0, |k| k.rx_no_buffer)),
                );
                lose(
                    Stage::XlaneRings,
                    format!("xlane AF_PACKET sends refused {at}"),
                    d(|p| p.packet.map_or(0, |k| k.tx_errors)),
                );
                lose(
                    Stage::XlaneRings,
                    format!("xlane AF_PACKET frames malformed or truncated {at}"),
                    d(|p| p.packet.map_or(0, |k| k.rx_malformed + k.rx_truncated)),
                );
                // An uplink read through UDP sockets or packet taps: the kernel's drops
                // at them.
                let full = if p.udp_rx.is_some_and(|r| r.tap) {
                    "xlane packet tap ring full"
                } else {
                    "xlane UDP socket buffer full"
                };
                lose(Stage::XlaneRings, format!("{full} {at}"), d(|p| p.udp_rx.map_or(0, |r| r.kernel_dropped)));
            }
            for (reason, n) in &node.drops {
                let was = earlier.and_then(|c| c.drops.get(reason)).copied().unwrap_or(0);
                lose(Stage::XlanePipeline, format!("xlane pipeline on node {i}: {reason}"), n.saturating_sub(was));
            }
        }
        for (hop, links) in &after.links {
            let earlier = before.links.iter().find(|(h, _)| h == hop).map(|(_, l)| l);
            for (ifname, c) in links {
                let was = earlier.and_then(|l| l.get(ifname)).map_or(0, |w| w.tx_dropped);
                let stage = if *hop == Hop::SenderPod { Stage::Sender } else { Stage::Wire };
                let place = format!("kernel dropped sending out of {}", hop.describe(ifname, &after.xlane));
                lose(stage, place, c.tx_dropped.saturating_sub(was));
            }
        }
        if let (Some(b), Some(a)) = (before.receiver, after.receiver) {
            let rcvbuf = a.rcvbuf_errors.saturating_sub(b.rcvbuf_errors);
            lose(Stage::Receiver, "receiver socket buffer full".into(), rcvbuf);
            // InErrors counts the full socket buffers too.
            let errors = a.in_errors.saturating_sub(b.in_errors).saturating_sub(rcvbuf);
            lose(Stage::Receiver, "receiver UDP errors (checksum, memory)".into(), errors);
            lose(Stage::Receiver, "receiver had no socket on the port".into(), a.no_ports.saturating_sub(b.no_ports));
            lose(Stage::Receiver, "receiver IP layer discards".into(), a.ip_discards.saturating_sub(b.ip_discards));
        }
        Self { offered, delivered, losses }
    }
}

/// Frames lost at a port's sockets and rings: the kernel's RX ring full and RX dropped,
/// xlane's TX-ring refusals, the TX descriptors the kernel refused, the AF_PACKET and
/// UDP sockets' drops — what a ledger counts as [`Stage::XlaneRings`].
#[must_use]
pub fn ring_drops(p: &PortInfo) -> u64 {
    let packet =
        p.packet.map_or(0, |k| k.rx_kernel_dropped + k.rx_no_buffer + k.tx_errors + k.rx_malformed + k.rx_truncated);
    let udp = p.udp_rx.map_or(0, |r| r.kernel_dropped);
    p.rx_ring_full + p.rx_dropped + p.tx_ring_full + p.tx_invalid_descs + packet + udp
}

/// An interface's counters that the accounting reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames dropped on transmission (for a veth: its peer's receive queue was full).
    pub tx_dropped: u64,
}

/// The receiving namespace's IP and UDP counters (`/proc/net/snmp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams dropped because the socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// Datagrams dropped by UDP for any reason (including a full buffer).
    pub in_errors: u64,
    /// Datagrams to a port nobody listened on.
    pub no_ports: u64,
    /// IP packets dropped before UDP (header and address errors, discards).
    pub ip_discards: u64,
}

/// A namespace on the test's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The sending pod.
    SenderPod,
    /// Lab node `i`.
    Node(usize),
    /// The underlay bridge's namespace.
    Fabric,
}

impl Hop {
    /// "node 1 eth0 (uplink)": the interface, with its role when xlaned serves it.
    fn describe(self, ifname: &str, xlane: &[Counters]) -> String {
        match self {
            Self::SenderPod => format!("the sender pod's {ifname}"),
            Self::Fabric => format!("fabric {ifname}"),
            Self::Node(i) => {
                let role = xlane.get(i).and_then(|c| c.ports.iter().find(|p| p.ifname == ifname)).map(|p| &p.role);
                role.map_or_else(|| format!("node {i} {ifname}"), |r| format!("node {i} {ifname} ({r})"))
            }
        }
    }
}

/// The counters along a test's path at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Interfaces of each namespace on the path (loopback left out).
    pub links: Vec<(Hop, BTreeMap<String, LinkCounters>)>,
    /// Each xlane node's counters, by node index (empty for a kernel dataplane).
    pub xlane: Vec<Counters>,
    /// The receiving pod's IP/UDP counters, when the test counts delivery there.
    pub receiver: Option<UdpCounters>,
}

/// xlaned's workers publish the kernel's socket statistics about once a second, each
/// after up to 200 ms asleep: wait that long, and some slack for a busy machine's
/// scheduler, before reading, so a snapshot holds every drop that happened before it.
const XLANE_STATS_PERIOD: Duration = Duration::from_millis(1500);

/// What a test's frames cross, and where it counts delivery.
#[derive(Debug, Clone, Copy)]
pub struct Path<'a> {
    /// The lab: its nodes and fabric.
    pub lab: &'a Lab,
    /// The xlane daemons on the lab's nodes, if xlane is the dataplane.
    pub xlane: Option<&'a Cluster>,
    /// The sending pod.
    pub sender: &'a Netns,
    /// The receiving pod when delivery is counted by its application (its IP/UDP
    /// counters join the ledger); `None` when delivery is counted at its interface.
    pub receiving_app: Option<&'a Netns>,
}

impl Path<'_> {
    /// Read every counter on the path (for xlane, once its statistics are current).
    ///
    /// # Errors
    /// `ip` or xlaned not answering, /proc not readable in a namespace.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let xlane = match self.xlane {
            Some(cluster) => {
                std::thread::sleep(XLANE_STATS_PERIOD);
                (0..cluster.nodes.len()).map(|i| cluster.counters(i)).collect::<std::io::Result<Vec<_>>>()?
            }
            None => Vec::new(),
        };
        let mut links = vec![(Hop::SenderPod, link_counters(self.sender)?)];
        for (i, n) in self.lab.nodes.iter().enumerate() {
            links.push((Hop::Node(i), link_counters(&n.ns)?));
        }
        links.push((Hop::Fabric, link_counters(&self.lab.fabric)?));
        let receiver = self.receiving_app.map(udp_counters).transpose()?;
        Ok(Snapshot { links, xlane, receiver })
    }
}

/// The interfaces of `ns` and their counters.
///
/// # Errors
/// `ip` failing or printing something else than its JSON.
pub fn link_counters(ns: &Netns) -> anyhow::Result<BTreeMap<String, LinkCounters>> {
    // Through `ip -s -j`: sysfs shows the namespace it was mounted in, not the thread's.
    parse_links(&ns.ip(&["-s", "-j", "link", "show"])?)
}

fn parse_links(json: &str) -> anyhow::Result<BTreeMap<String, LinkCounters>> {
    let links: Vec<serde_json::Value> = serde_json::from_str(json).context("ip -s -j link show")?;
    let mut out = BTreeMap::new();
    for l in links {
        let name = l["ifname"].as_str().context("an interface without a name in ip -s -j")?;
        if name == "lo" {
            continue;
        }
        let stats = &l["stats64"];
        let count = |dir: &str, what: &str| {
            stats[dir][what].as_u64().with_context(|| format!("no {dir} {what} for {name} in ip -s -j"))
        };
        out.insert(
            name.to_owned(),
            LinkCounters { rx_packets: count("rx", "packets")?, tx_dropped: count("tx", "dropped")? },
        );
    }
    Ok(out)
}

/// The IP/UDP counters of `ns`.
///
/// # Errors
/// Entering the namespace or reading its /proc/net/snmp.
pub fn udp_counters(ns: &Netns) -> anyhow::Result<UdpCounters> {
    // thread-self: /proc/self/net is the namespace of the process's main thread, not of
    // the thread that entered `ns`.
    let text = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    parse_snmp(&text)
}

fn parse_snmp(text: &str) -> anyhow::Result<UdpCounters> {
    // Each protocol is a header line of names and a line of values, both "Proto: ...".
    let table = |proto: &str| -> anyhow::Result<BTreeMap<&str, u64>> {
        let mut lines = text.lines().filter_map(|l| l.strip_prefix(proto)?.strip_prefix(": "));
        let (names, values) = lines.next().zip(lines.next()).with_context(|| format!("no {proto} in snmp"))?;
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .map(|(n, v)| Ok((n, v.parse().with_context(|| format!("{proto} {n}: {v}"))?)))
            .collect()
    };
    let (ip, udp) = (table("Ip")?, table("Udp")?);
    let get = |t: &BTreeMap<&str, u64>, k: &str| t.get(k).copied().with_context(|| format!("no {k} in snmp"));
    Ok(UdpCounters {
        rcvbuf_errors: get(&udp, "RcvbufErrors")?,
        in_errors: get(&udp, "InErrors")?,
        no_ports: get(&udp, "NoPorts")?,
        ip_discards: get(&ip, "InHdrErrors")? + get(&ip, "InAddrErrors")? + get(&ip, "InDiscards")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: u16, role: &str, ifname: &str) -> PortInfo {
        PortInfo {
            id,
            role: role.into(),
            ifname: ifname.into(),
            ip: None,
            queues: 1,
            xdp_mode: "native".into(),
            zero_copy: false,
            rx: 0,
            tx: 0,
            tx_ring_full: 0,
            rx_fill_ring_empty: 0,
            rx_ring_full: 0,
            rx_dropped: 0,
            rx_invalid_descs: 0,
            tx_invalid_descs: 0,
            tx_ring_empty_descs: 0,
            vhost_user: None,
            packet: None,
            udp_gso: None,
            udp_rx: None,
            umem: None,
        }
    }

    fn links(entries: &[(&str, u64)]) -> BTreeMap<String, LinkCounters> {
        entries.iter().map(|(n, d)| ((*n).to_owned(), LinkCounters { rx_packets: 0, tx_dropped: *d })).collect()
    }

    /// A two-node xlane path at rest: every counter at what earlier traffic left.
    fn at_rest() -> Snapshot {
        let node = |pod: &str| Counters {
            drops: [("no_route".to_owned(), 2), ("ttl_expired".to_owned(), 0)].into(),
            ports: vec![port(0, "uplink", "eth0"), port(2, "pod", pod)],
            ..Counters::default()
        };
        let mut s = Snapshot {
            links: vec![
                (Hop::SenderPod, links(&[("eth0", 1)])),
                (Hop::Node(0), links(&[("eth0", 0), ("xl0a", 0)])),
                (Hop::Node(1), links(&[("eth0", 0), ("xl1b", 3)])),
                (Hop::Fabric, links(&[("br0", 0), ("n0", 0), ("n1", 0)])),
            ],
            xlane: vec![node("xl0a"), node("xl1b")],
            receiver: Some(UdpCounters { rcvbuf_errors: 5, in_errors: 6, no_ports: 1, ip_discards: 0 }),
        };
        s.xlane[1].ports[0].rx_ring_full = 100;
        s
    }

    #[test]
    fn af_packet_and_udp_sockets_count_their_own_losses() {
        let mut before = at_rest();
        before.xlane[1].ports[1].packet = Some(xlane_api::PacketInfo { rx_kernel_dropped: 3, ..Default::default() });
        let mut after = before.clone();
        after.xlane[1].ports[1].packet =
            Some(xlane_api::PacketInfo { rx_kernel_dropped: 903, tx_errors: 2, rx_malformed: 1, ..Default::default() });
        before.xlane[1].ports[0].udp_rx = Some(xlane_api::UdpRxInfo { kernel_dropped: 4, ..Default::default() });
        after.xlane[1].ports[0].udp_rx = Some(xlane_api::UdpRxInfo { kernel_dropped: 54, ..Default::default() });
        let l = Ledger::from_snapshots(1_000, 47, 0, &before, &after);
        let got: Vec<(&str, u64)> = l.losses.iter().map(|x| (x.place.as_str(), x.frames)).collect();
        assert_eq!(
            got,
            [
                ("xlane UDP socket buffer full on node 1 eth0 (uplink)", 50),
                ("xlane AF_PACKET receive ring full on node 1 xl1b (pod)", 900),
                ("xlane AF_PACKET sends refused on node 1 xl1b (pod)", 2),
                ("xlane AF_PACKET frames malformed or truncated on node 1 xl1b (pod)", 1),
            ]
        );
        assert_eq!(l.unaccounted(), 0);
        let rings = |s: &Snapshot| s.xlane.iter().flat_map(|c| &c.ports).map(ring_drops).sum::<u64>();
        assert_eq!(rings(&after) - rings(&before), 953);
    }

    #[test]
    fn every_place_counts_its_own_frames_once() {
        let before = at_rest();
        let mut after = before.clone();
        after.xlane[1].ports[0].rx_ring_full += 3900;
        after.xlane[1].ports[0].rx_dropped += 40;
        after.xlane[1].ports[0].rx_fill_ring_empty += 40;
        after.xlane[1].ports[1].rx_dropped += 8;
        after.xlane[1].ports[1].rx_fill_ring_empty += 1;
        after.xlane[0].ports[1].rx_invalid_descs += 7; // not a lost frame
        after.xlane[0].ports[0].tx_ring_empty_descs += 9; // not a lost frame
        after.xlane[0].drops.insert("no_route".into(), 12);
        after.links[3].1.get_mut("n1").unwrap().tx_dropped += 50;
        after.links[0].1.get_mut("eth0").unwrap().tx_dropped += 4;
        after.receiver = Some(UdpCounters { rcvbuf_errors: 505, in_errors: 508, no_ports: 1, ip_discards: 0 });
        let l = Ledger::from_snapshots(10_000, 5_486, 0, &before, &after);
        let got: Vec<(Stage, &str, u64)> = l.losses.iter().map(|x| (x.stage, x.place.as_str(), x.frames)).collect();
        assert_eq!(
            got,
            [
                (Stage::XlanePipeline, "xlane pipeline on node 0: no_route", 10),
                (Stage::XlaneRings, "xlane RX ring full on node 1 eth0 (uplink)", 3900),
                (Stage::XlaneRings, "xlane fill ring empty on node 1 eth0 (uplink)", 40),
                (Stage::XlaneRings, "xlane RX dropped on node 1 xl1b (pod), fill ring empty 1×", 8),
                (Stage::Sender, "kernel dropped sending out of the sender pod's eth0", 4),
                (Stage::Wire, "kernel dropped sending out of fabric n1", 50),
                (Stage::Receiver, "receiver socket buffer full", 500),
                (Stage::Receiver, "receiver UDP errors (checksum, memory)", 2),
            ]
        );
        assert_eq!((l.lost(), l.accounted(), l.unaccounted()), (4_514, 4_514, 0));
        assert_eq!((l.at(Stage::XlaneRings), l.at(Stage::Wire), l.at(Stage::Receiver)), (3_948, 50, 502));
        let rings = |s: &Snapshot| s.xlane.iter().flat_map(|c| &c.ports).map(ring_drops).sum::<u64>();
        assert_eq!(rings(&after) - rings(&before), l.at(Stage::XlaneRings), "the demo's per-node totals agree");
        assert_eq!(
            l.summary(),
            "lost 4514 of 10000: 3900 xlane RX ring full on node 1 eth0 (uplink), 500 receiver socket buffer full, \
             50 kernel dropped sending out of fabric n1, 40 xlane fill ring empty on node 1 eth0 (uplink), 10 xlane \
             pipeline on node 0: no_route, 8 xlane RX dropped on node 1 xl1b (pod), fill ring empty 1×, 4 kernel \
             dropped sending out of the sender pod's eth0, 2 receiver UDP errors (checksum, memory)"
        );
    }

    #[test]
    fn what_no_counter_explains_is_said() {
        let s = at_rest();
        let mut after = s.clone();
        after.links[2].1.get_mut("xl1b").unwrap().tx_dropped += 30;
        let l = Ledger::from_snapshots(1_000, 900, 20, &s, &after);
        assert_eq!(l.unaccounted(), 50);
        assert_eq!(
            l.summary(),
            "lost 100 of 1000: 30 kernel dropped sending out of node 1 xl1b (pod), 20 send errors at the sender, \
             unaccounted 50"
        );
        // More drops than missing frames: other traffic was dropped at the same places.
        let l = Ledger::from_snapshots(1_000, 990, 20, &s, &after);
        assert_eq!(l.unaccounted(), -40);
        assert!(l.summary().ends_with(", over-counted 40 (other traffic counted with the test's)"), "{}", l.summary());
        // Nothing lost, nothing counted.
        let l = Ledger::from_snapshots(1_000, 1_000, 0, &s, &s);
        assert_eq!(l.summary(), "nothing lost of 1000");
        // A loss nothing counted is all unaccounted.
        assert_eq!(Ledger::from_snapshots(10, 7, 0, &s, &s).summary(), "lost 3 of 10: unaccounted 3");
    }

    #[test]
    fn a_kernel_dataplane_has_links_only_and_a_port_that_appeared_counts_from_zero() {
        let mut before = at_rest();
        before.xlane.clear();
        before.receiver = None;
        let mut after = before.clone();
        after.links[1].1.insert("veth0".into(), LinkCounters { rx_packets: 9, tx_dropped: 6 });
        let l = Ledger::from_snapshots(100, 94, 0, &before, &after);
        assert_eq!(
            l.losses,
            [Loss { stage: Stage::Wire, place: "kernel dropped sending out of node 0 veth0".into(), frames: 6 }]
        );
        assert_eq!(l.unaccounted(), 0);
    }

    #[test]
    fn ip_json_and_proc_snmp_are_read() {
        let json = r#"[{"ifindex":1,"ifname":"lo","stats64":{"rx":{"packets":5,"dropped":0},"tx":{"packets":5,"dropped":0}}},
            {"ifindex":7,"ifname":"eth0","stats64":{"rx":{"bytes":1,"packets":1234,"dropped":9},"tx":{"packets":99,"dropped":17}}}]"#;
        let eth0 = LinkCounters { rx_packets: 1234, tx_dropped: 17 };
        assert_eq!(parse_links(json).unwrap(), BTreeMap::from([("eth0".to_owned(), eth0)]));
        assert!(parse_links(r#"[{"ifname":"eth0"}]"#).is_err(), "no statistics is an error, not zero");
        let snmp = "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests\n\
                    Ip: 2 64 171427 1 2 0 0 3 171427 167137\n\
                    Icmp: InMsgs InErrors\nIcmp: 4 0\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 120 4 11 122 10 0 1 0 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    UdpLite: 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(
            parse_snmp(snmp).unwrap(),
            UdpCounters { rcvbuf_errors: 10, in_errors: 11, no_ports: 4, ip_discards: 6 }
        );
        assert!(parse_snmp("Ip: Forwarding\nIp: 2\n").is_err());
    }
}
