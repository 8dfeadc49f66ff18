//! `Veth::create` in namespaces this test makes and always removes (needs root; skipped
//! without it outside CI, a failure in CI).

use std::net::Ipv4Addr;
use std::process::Command;
use xlane_netlink::{Netlink, Route, Veth, VethEnd};

/// A named namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!("xnl-{tag}-{}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Self(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: needs root (CI=true: not skipping)");
    eprintln!("SKIPPED {test}: needs root");
    false
}

#[test]
fn a_pair_across_namespaces_addressed_routed_and_reusable() {
    if !root("a_pair_across_namespaces_addressed_routed_and_reusable") {
        return;
    }
    let (node, pod) = (Ns::new("node"), Ns::new("pod"));
    let (node_path, pod_path) = (node.path(), pod.path());
    let gw = Ipv4Addr::new(10, 244, 1, 1);
    let pair = Veth {
        local: VethEnd { name: "vp0", netns: Some(&node_path), ..VethEnd::default() },
        peer: VethEnd {
            name: "eth0",
            netns: Some(&pod_path),
            addrs: &[(Ipv4Addr::new(10, 244, 1, 2), 24)],
            routes: &[Route::default_via(gw)],
        },
        mtu: Some(1450),
        queues: 2,
        reuse: false,
    };
    let (host, p) = pair.create().unwrap();
    assert_eq!((host.mtu, p.mtu), (1450, 1450));
    let mut in_pod = Netlink::in_netns(&pod_path).unwrap();
    assert_eq!(in_pod.link("eth0").unwrap(), p);
    assert_eq!(in_pod.next_hop(Ipv4Addr::new(8, 8, 8, 8)).unwrap(), (gw, p.ifindex));
    assert_eq!(in_pod.next_hop(Ipv4Addr::new(10, 244, 1, 9)).unwrap(), (Ipv4Addr::new(10, 244, 1, 9), p.ifindex));
    // Again: taken names are an error, unless the pair is reused (then it is kept).
    assert_eq!(pair.create().unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(Veth { reuse: true, ..pair }.create().unwrap(), (host, p));
    // A step failing after creation removes the new pair.
    let bad = Veth {
        local: VethEnd { name: "vp1", netns: Some(&node_path), ..VethEnd::default() },
        peer: VethEnd { name: "eth1", netns: Some(&pod_path), routes: &[Route::default_via(gw)], addrs: &[] },
        ..pair
    };
    assert!(bad.create().is_err(), "a gateway not on any link");
    assert_eq!(Netlink::in_netns(&node_path).unwrap().link("vp1").unwrap_err().kind(), std::io::ErrorKind::NotFound);
}

/// The netdev family's view of a veth, asked in its namespace: XDP with redirect and
/// multi-buffer receive, no zero-copy, no AF_XDP TX checksum offload (so xlane computes
/// checksums itself); an unknown interface is an error, not a device without features.
#[test]
fn a_veth_offers_xdp_but_neither_zero_copy_nor_tx_checksum_metadata() {
    if !root("a_veth_offers_xdp_but_neither_zero_copy_nor_tx_checksum_metadata") {
        return;
    }
    let (node, pod) = (Ns::new("feat"), Ns::new("featp"));
    let (node_path, pod_path) = (node.path(), pod.path());
    let pair = Veth {
        local: VethEnd { name: "vf0", netns: Some(&node_path), ..VethEnd::default() },
        peer: VethEnd { name: "eth0", netns: Some(&pod_path), ..VethEnd::default() },
        mtu: None,
        queues: 1,
        reuse: false,
    };
    let (host, _) = pair.create().unwrap();
    let f = xlane_netlink::in_netns(&node_path, || xlane_netlink::netdev::xdp_features(host.ifindex)).unwrap().unwrap();
    use xlane_netlink::netdev::XdpFeatures;
    assert_eq!(
        f.xdp & (XdpFeatures::BASIC | XdpFeatures::REDIRECT),
        XdpFeatures::BASIC | XdpFeatures::REDIRECT,
        "{f:?}"
    );
    assert!(!f.zero_copy() && !f.tx_checksum(), "{f:?}");
    let missing = xlane_netlink::in_netns(&node_path, || xlane_netlink::netdev::xdp_features(99_999)).unwrap();
    assert!(missing.is_err(), "{missing:?}");
}
