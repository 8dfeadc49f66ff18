//! xlane and flannel-style kernel VXLAN nodes in one cluster: pods talk both ways, at
//! flannel's defaults (VNI 1, port 8472) and at VNI 42 on port 4789; nothing is left.

use std::sync::atomic::AtomicBool;
use xlane_netlab::privileged;

#[test]
fn xlane_and_flannel_nodes_talk_both_ways() {
    if !privileged("xlane_and_flannel_nodes_talk_both_ways") {
        return;
    }
    for (vni, port) in [(1, 8472), (42, 4789)] {
        let r = xlane_lab::interop::run(vni, port, 5, &AtomicBool::new(false)).unwrap();
        assert!(r.ok(), "VNI {vni} port {port}: {r:?}");
        assert_eq!(r.tcp_to_xlane.bytes, 5_000_000);
        assert_eq!(xlane_netlab::namespaces_of("xiop", std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
    }
}
