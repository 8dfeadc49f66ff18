//! The spike's namespaces: a node namespace (the forwarder, the host ends of the pod
//! veths or the bridge) and two pod namespaces. Everything is created inside namespaces
//! made here and removed on drop; nothing touches the root namespace.

use crate::fwd::{MAC_A, MAC_B, MAC_GW};
use anyhow::{Context as _, bail};
use std::process::Command;

pub const IP_A: &str = "10.77.0.1";
pub const IP_B: &str = "10.77.0.2";

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// The three namespaces of one measurement.
#[derive(Debug)]
pub struct Topo {
    pub node: String,
    pub a: String,
    pub b: String,
}

impl Topo {
    /// Create the namespaces (IPv6 off, loopback up).
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let p = format!("spk{}{tag}", std::process::id());
        let t = Self { node: format!("{p}-n"), a: format!("{p}-a"), b: format!("{p}-b") };
        for ns in [&t.node, &t.a, &t.b] {
            ip(&["netns", "add", ns])?;
            t.exec(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(t)
    }

    pub fn exec(&self, ns: &str, argv: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(argv))
    }

    /// Pod veths: `eth0` in each pod, `va`/`vb` in the node.
    pub fn veths(&self) -> anyhow::Result<()> {
        for (host, pod) in [("va", &self.a), ("vb", &self.b)] {
            ip(&["-n", &self.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod])?;
            ip(&["-n", &self.node, "link", "set", host, "up"])?;
        }
        Ok(())
    }

    /// A kernel bridge joining `va` and `vb`.
    pub fn bridge(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.node, "link", "add", "br0", "type", "bridge"])?;
        for d in ["va", "vb"] {
            ip(&["-n", &self.node, "link", "set", d, "master", "br0"])?;
        }
        ip(&["-n", &self.node, "link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Move taps `ta`/`tb` from the node into the pods as `eth0`.
    pub fn adopt_taps(&self) -> anyhow::Result<()> {
        for (tap, pod) in [("ta", &self.a), ("tb", &self.b)] {
            ip(&["-n", &self.node, "link", "set", tap, "netns", pod])?;
            ip(&["-n", pod, "link", "set", tap, "name", "eth0"])?;
        }
        Ok(())
    }

    /// Address both pods' `eth0`; `direct`: the peer's neighbour entry is its own MAC
    /// (bridge), otherwise the forwarder's gateway MAC.
    pub fn pods(&self, direct: bool) -> anyhow::Result<()> {
        for (pod, me, my_ip, peer_ip, peer_mac) in
            [(&self.a, MAC_A, IP_A, IP_B, MAC_B), (&self.b, MAC_B, IP_B, IP_A, MAC_A)]
        {
            let nb = if direct { mac(&peer_mac) } else { mac(&MAC_GW) };
            ip(&["-n", pod, "link", "set", "eth0", "address", &mac(&me), "mtu", "1500", "up"])?;
            ip(&["-n", pod, "addr", "add", &format!("{my_ip}/24"), "dev", "eth0"])?;
            ip(&["-n", pod, "neigh", "replace", peer_ip, "lladdr", &nb, "dev", "eth0", "nud", "permanent"])?;
        }
        Ok(())
    }

    /// `ethtool -k eth0` lines of interest in pod `ns`.
    pub fn offloads(&self, ns: &str) -> String {
        self.exec(ns, &["ethtool", "-k", "eth0"])
            .map(|s| {
                s.lines()
                    .filter(|l| {
                        ["tx-checksumming:", "tcp-segmentation-offload:", "generic-segmentation-offload:", "generic-receive-offload:"]
                            .iter()
                            .any(|k| l.trim_start().starts_with(k))
                    })
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|e| format!("ethtool: {e}"))
    }

    /// `stats64` of `dev` in `ns` (ip -j).
    pub fn link_stats(&self, ns: &str, dev: &str) -> anyhow::Result<serde_json::Value> {
        let j: serde_json::Value = serde_json::from_str(&ip(&["-n", ns, "-s", "-j", "link", "show", dev])?)?;
        Ok(j[0]["stats64"].clone())
    }

    /// rx_packets of `dev` in `ns`.
    pub fn rx_packets(&self, ns: &str, dev: &str) -> anyhow::Result<u64> {
        let j: serde_json::Value = serde_json::from_str(&ip(&["-n", ns, "-s", "-j", "link", "show", dev])?)?;
        j[0]["stats64"]["rx"]["packets"].as_u64().context("no rx packets in ip -j output")
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.node] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
