//! Nodes as leases, in flannel's annotations, and the smallest diff between two views.
//!
//! Pure functions over k8s-openapi's `Node`: what the watcher sees becomes the agent's
//! [`Event`]s here, with no HTTP involved.

use crate::lease::{Lease, LeaseAttrs};
use crate::store::Event;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// flannel's annotation prefix (its `--kube-annotation-prefix` default).
pub const PREFIX: &str = "flannel.alpha.coreos.com";
/// The backend type (`vxlan`).
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
/// The backend data, JSON in a string: `{"VNI":1,"VtepMAC":"…"}` for vxlan.
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// The node's underlay address.
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// `"true"` on nodes whose lease is published by a kube subnet manager.
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// The node's IPv4 pod subnet: the first IPv4 entry of `spec.podCIDRs`, else
/// `spec.podCIDR` (as flannel reads it). `Err` says why there is none.
///
/// # Errors
/// A missing, unparseable or non-canonical podCIDR, as a sentence.
pub fn pod_cidr(node: &Node) -> Result<Ipv4Net, String> {
    let spec = node.spec.as_ref();
    let cidrs: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_deref()) {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_deref()).into_iter().collect(),
    };
    if cidrs.is_empty() || cidrs.iter().all(|c| c.is_empty()) {
        return Err("no podCIDR assigned (is kube-controller-manager run with --allocate-node-cidrs?)".into());
    }
    let Some(v4) = cidrs.iter().find(|c| !c.contains(':')) else {
        return Err(format!("no IPv4 podCIDR among {cidrs:?} (xlane is IPv4 only)"));
    };
    let net: Ipv4Net = v4.parse().map_err(|e| format!("podCIDR {v4:?} is not an IPv4 CIDR: {e}"))?;
    if net.network() != net.addr() {
        return Err(format!("podCIDR {net} has host bits set"));
    }
    Ok(net)
}

/// The node's name (empty if the object has none).
#[must_use]
pub fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// The lease a node publishes, read as flannel's `nodeToLease` reads it: only nodes
/// annotated `kube-subnet-manager: "true"` with a public IP and an IPv4 podCIDR; the
/// backend type and data as given (sync skips other backends). `None` for anything else.
#[must_use]
pub fn lease(node: &Node) -> Option<Lease> {
    let ann = node.metadata.annotations.as_ref()?;
    if ann.get(KUBE_SUBNET_MANAGER).map(String::as_str) != Some("true") {
        return None;
    }
    let peer = name(node);
    let public_ip: Ipv4Addr = match ann.get(PUBLIC_IP).map(|s| s.parse()) {
        Some(Ok(ip)) => ip,
        _ => {
            tracing::debug!(node = peer, "kube store: node has no readable public-ip annotation; not a peer");
            return None;
        }
    };
    let subnet = pod_cidr(node).map_err(|why| tracing::debug!(node = peer, why, "kube store: not a peer")).ok()?;
    let backend_data = match ann.get(BACKEND_DATA).map(|s| serde_json::from_str(s)) {
        Some(Ok(v)) => v,
        None => serde_json::Value::Null,
        Some(Err(e)) => {
            tracing::warn!(node = peer, error = %e, "kube store: backend-data is not JSON; not a peer");
            return None;
        }
    };
    let backend_type = ann.get(BACKEND_TYPE).cloned().unwrap_or_default();
    Some(Lease { subnet, attrs: LeaseAttrs { public_ip, public_ipv6: None, backend_type, backend_data } })
}

/// The annotations xlane publishes for `attrs`, exactly as flanneld writes them.
#[must_use]
pub fn annotations(attrs: &LeaseAttrs) -> BTreeMap<String, String> {
    // flannel marshals its vxlanLeaseAttrs{VNI, VtepMAC} struct: this field order.
    let data = attrs
        .vxlan_data()
        .map_or_else(|| attrs.backend_data.to_string(), |d| serde_json::to_string(&d).expect("plain struct"));
    BTreeMap::from([
        (BACKEND_TYPE.to_owned(), attrs.backend_type.clone()),
        (BACKEND_DATA.to_owned(), data),
        (PUBLIC_IP.to_owned(), attrs.public_ip.to_string()),
        (KUBE_SUBNET_MANAGER.to_owned(), "true".to_owned()),
    ])
}

/// What one node's change means for the agent, keyed by subnet: nothing when its lease
/// is unchanged (a status heartbeat, a label), `Upsert` when it appears or changes,
/// `Removed` when it goes, and both when its podCIDR moved.
#[must_use]
pub fn node_diff(old: Option<&Lease>, new: Option<&Lease>) -> Vec<Event> {
    match (old, new) {
        (None, None) => Vec::new(),
        (Some(o), Some(n)) if o == n => Vec::new(),
        (None, Some(n)) => vec![Event::Upsert(n.clone())],
        (Some(o), None) => vec![Event::Removed(o.subnet)],
        (Some(o), Some(n)) if o.subnet == n.subnet => vec![Event::Upsert(n.clone())],
        (Some(o), Some(n)) => vec![Event::Removed(o.subnet), Event::Upsert(n.clone())],
    }
}

/// The smallest diff from one view of the nodes to another (after a re-list), keyed by
/// subnet: removals first, then the leases that are new or differ.
#[must_use]
pub fn view_diff(old: &BTreeMap<String, Lease>, new: &BTreeMap<String, Lease>) -> Vec<Event> {
    let by_subnet = |v: &BTreeMap<String, Lease>| -> BTreeMap<Ipv4Net, Lease> {
        v.values().map(|l| (l.subnet, l.clone())).collect()
    };
    let (old, new) = (by_subnet(old), by_subnet(new));
    let mut events: Vec<Event> = old.keys().filter(|s| !new.contains_key(s)).map(|s| Event::Removed(*s)).collect();
    events.extend(new.into_values().filter(|l| old.get(&l.subnet) != Some(l)).map(Event::Upsert));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node as the API returns it, with flannel's annotations as flanneld writes them.
    fn node(name: &str, cidr: &str, mac: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "resourceVersion": "7", "annotations": {
                BACKEND_DATA: format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
                BACKEND_TYPE: "vxlan",
                KUBE_SUBNET_MANAGER: "true",
                PUBLIC_IP: "192.168.50.3",
                "node.alpha.kubernetes.io/ttl": "0",
            }},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        }))
        .unwrap()
    }

    #[test]
    fn a_flannel_node_is_a_vxlan_lease() {
        let l = lease(&node("n3", "10.244.3.0/24", "b2:41:9c:3e:51:0a")).unwrap();
        assert_eq!(l.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(l.attrs.public_ip, Ipv4Addr::new(192, 168, 50, 3));
        let d = l.attrs.vxlan_data().unwrap();
        assert_eq!((d.vni, d.vtep_mac.to_string().as_str()), (1, "b2:41:9c:3e:51:0a"));
    }

    #[test]
    fn what_we_write_reads_back_and_matches_flannels_bytes() {
        let l = lease(&node("n3", "10.244.3.0/24", "b2:41:9c:3e:51:0a")).unwrap();
        let a = annotations(&l.attrs);
        assert_eq!(a[BACKEND_DATA], r#"{"VNI":1,"VtepMAC":"b2:41:9c:3e:51:0a"}"#);
        assert_eq!((a[BACKEND_TYPE].as_str(), a[PUBLIC_IP].as_str()), ("vxlan", "192.168.50.3"));
        assert_eq!(a[KUBE_SUBNET_MANAGER], "true");
    }

    #[test]
    fn not_peers() {
        let mut n = node("n3", "10.244.3.0/24", "b2:41:9c:3e:51:0a");
        n.metadata.annotations.as_mut().unwrap().remove(KUBE_SUBNET_MANAGER);
        assert_eq!(lease(&n), None, "no kube-subnet-manager annotation");
        let mut n = node("n3", "10.244.3.0/24", "b2:41:9c:3e:51:0a");
        n.metadata.annotations.as_mut().unwrap().insert(PUBLIC_IP.into(), "x".into());
        assert_eq!(lease(&n), None, "unreadable public-ip");
        let mut n = node("n3", "10.244.3.0/24", "b2:41:9c:3e:51:0a");
        n.metadata.annotations.as_mut().unwrap().insert(BACKEND_DATA.into(), "{".into());
        assert_eq!(lease(&n), None, "backend-data not JSON");
        assert_eq!(lease(&node("n3", "", "b2:41:9c:3e:51:0a")), None, "no podCIDR");
    }

    #[test]
    fn pod_cidrs_first_ipv4_then_pod_cidr() {
        let mut n = node("n", "10.244.3.0/24", "b2:41:9c:3e:51:0a");
        n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["fd00:1::/64".into(), "10.244.9.0/24".into()]);
        assert_eq!(pod_cidr(&n).unwrap().to_string(), "10.244.9.0/24");
        n.spec.as_mut().unwrap().pod_cidrs = None;
        assert_eq!(pod_cidr(&n).unwrap().to_string(), "10.244.3.0/24");
        for (bad, why) in
            [("10.244.3.1/24", "host bits"), ("", "no podCIDR"), ("fd00::/64", "no IPv4"), ("x", "not an IPv4")]
        {
            n.spec.as_mut().unwrap().pod_cidr = Some(bad.into());
            assert!(pod_cidr(&n).unwrap_err().contains(why), "{bad}");
        }
    }

    #[test]
    fn diffs_are_smallest() {
        let a = lease(&node("a", "10.244.1.0/24", "0e:00:00:00:00:01")).unwrap();
        let a2 = lease(&node("a", "10.244.1.0/24", "0e:00:00:00:00:02")).unwrap();
        let moved = lease(&node("a", "10.244.7.0/24", "0e:00:00:00:00:01")).unwrap();
        assert_eq!(node_diff(Some(&a), Some(&a)), []);
        assert_eq!(node_diff(None, Some(&a)), [Event::Upsert(a.clone())]);
        assert_eq!(node_diff(Some(&a), Some(&a2)), [Event::Upsert(a2.clone())]);
        assert_eq!(node_diff(Some(&a), None), [Event::Removed(a.subnet)]);
        assert_eq!(node_diff(Some(&a), Some(&moved)), [Event::Removed(a.subnet), Event::Upsert(moved.clone())]);
        let b = lease(&node("b", "10.244.2.0/24", "0e:00:00:00:00:03")).unwrap();
        let c = lease(&node("c", "10.244.3.0/24", "0e:00:00:00:00:04")).unwrap();
        let old = BTreeMap::from([("a".to_owned(), a.clone()), ("b".to_owned(), b.clone())]);
        let new = BTreeMap::from([("a".to_owned(), a2.clone()), ("c".to_owned(), c.clone())]);
        assert_eq!(view_diff(&old, &new), [Event::Removed(b.subnet), Event::Upsert(a2), Event::Upsert(c)]);
        assert_eq!(view_diff(&new, &new), []);
    }
}
