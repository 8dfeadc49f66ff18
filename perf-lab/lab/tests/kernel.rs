//! The bench's kernel baselines, built as the bench builds them (without measuring): pods
//! on two flannel-style kernel VXLAN nodes, then on two host-gw nodes, reach each other;
//! nothing is left.

use xlane_lab::kernel::{self, Baseline};
use xlane_netlab::{Lab, privileged};

#[test]
fn kernel_baseline_pods_reach_each_other() {
    if !privileged("kernel_baseline_pods_reach_each_other") {
        return;
    }
    for (prefix, baseline) in [("xkv", Baseline::Vxlan), ("xkh", Baseline::HostGw)] {
        let lab = Lab::new(prefix, 2).unwrap();
        let pods = kernel::two_pods(&lab, baseline).unwrap();
        let far = lab.nodes[1].subnet.pod(0).to_string();
        pods[0].ping(&far, 2).unwrap_or_else(|e| panic!("{baseline:?}: {e}"));
        drop(pods);
        drop(lab);
        assert_eq!(xlane_netlab::namespaces_of(prefix, std::process::id()).unwrap(), Vec::<String>::new(), "torn down");
    }
}
