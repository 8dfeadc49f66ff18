//! From leases to xlaned's tables: what the dataplane should hold, and the smallest
//! batch of changes that gets it there.
//!
//! Reconciling against what xlaned reports (instead of replaying blindly) is what makes
//! an agent restart harmless: routes that are already right are not touched, so
//! forwarding never blinks.

use crate::lease::Lease;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use xlane_api::{Change, Mac, NodeInfo, RouteInfo};

/// A remote node as the dataplane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// VTEP MAC.
    pub vtep_mac: Mac,
    /// Subnets routed to it.
    pub subnets: BTreeSet<Ipv4Net>,
}

/// The remote nodes the leases describe, keyed by underlay address: every vxlan lease
/// but our own and those on another VNI (which could not talk to us anyway).
#[must_use]
pub fn desired<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    own: Option<Ipv4Net>,
    own_ip: Ipv4Addr,
    vni: u32,
) -> BTreeMap<Ipv4Addr, Remote> {
    let mut out: BTreeMap<Ipv4Addr, Remote> = BTreeMap::new();
    for l in leases {
        if Some(l.subnet) == own || l.attrs.public_ip == own_ip {
            continue;
        }
        let Some(data) = l.attrs.vxlan_data() else {
            tracing::debug!(subnet = %l.subnet, backend = %l.attrs.backend_type, "not a vxlan lease; skipped");
            continue;
        };
        if data.vni != vni {
            tracing::warn!(subnet = %l.subnet, vni = data.vni, ours = vni, "lease on another VNI; skipped");
            continue;
        }
        let r = out
            .entry(l.attrs.public_ip)
            .or_insert_with(|| Remote { vtep_mac: data.vtep_mac, subnets: BTreeSet::new() });
        r.vtep_mac = data.vtep_mac;
        r.subnets.insert(l.subnet);
    }
    out
}

/// Routes of a desired state, by prefix.
fn routes_of(m: &BTreeMap<Ipv4Addr, Remote>) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    m.iter().flat_map(|(ip, r)| r.subnets.iter().map(move |s| (*s, *ip))).collect()
}

/// The changes from the tables `have_nodes` (underlay → VTEP MAC) and `have_routes`
/// (prefix → VTEP) to `want`: stale routes and nodes withdrawn, missing or changed ones
/// added. Routes are added after their node and withdrawn before it.
fn changes(
    have_nodes: &BTreeMap<Ipv4Addr, Mac>,
    have_routes: &BTreeMap<Ipv4Net, Ipv4Addr>,
    want: &BTreeMap<Ipv4Addr, Remote>,
) -> Vec<Change> {
    let want_routes = routes_of(want);
    let mut changes = Vec::new();
    for (prefix, via) in have_routes {
        if want_routes.get(prefix) != Some(via) {
            changes.push(Change::DelRoute { prefix: *prefix });
        }
    }
    for ip in have_nodes.keys() {
        if !want.contains_key(ip) {
            changes.push(Change::DelNode { underlay_ip: *ip });
        }
    }
    for (ip, r) in want {
        if have_nodes.get(ip) != Some(&r.vtep_mac) {
            changes.push(Change::AddNode { underlay_ip: *ip, vtep_mac: r.vtep_mac, next_hop_mac: None });
        }
    }
    for (prefix, via) in &want_routes {
        if have_routes.get(prefix) != Some(via) {
            changes.push(Change::AddRoute { prefix: *prefix, via: *via });
        }
    }
    changes
}

/// The changes that turn xlaned's `nodes` and `routes` (as it reports them) into `want`.
#[must_use]
pub fn diff(nodes: &[NodeInfo], routes: &[RouteInfo], want: &BTreeMap<Ipv4Addr, Remote>) -> Vec<Change> {
    let have_nodes = nodes.iter().map(|n| (n.underlay_ip, n.vtep_mac)).collect();
    let have_routes = routes.iter().map(|r| (r.prefix, r.via)).collect();
    changes(&have_nodes, &have_routes, want)
}

/// The changes from one desired state to another, without asking xlaned: used for watch
/// events once the dataplane is known to match `old`.
#[must_use]
pub fn diff_desired(old: &BTreeMap<Ipv4Addr, Remote>, new: &BTreeMap<Ipv4Addr, Remote>) -> Vec<Change> {
    let have_nodes = old.iter().map(|(ip, r)| (*ip, r.vtep_mac)).collect();
    changes(&have_nodes, &routes_of(old), new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, last: u8, vni: u32) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            attrs: LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 50, last), vni, Mac([0x0e, 0, 0, 0, last, 1])),
        }
    }

    fn node(last: u8) -> NodeInfo {
        NodeInfo {
            underlay_ip: Ipv4Addr::new(192, 168, 50, last),
            vtep_mac: Mac([0x0e, 0, 0, 0, last, 1]),
            next_hop_mac: None,
            source: "unresolved".into(),
        }
    }

    fn route(p: &str, last: u8) -> RouteInfo {
        RouteInfo { prefix: p.parse().unwrap(), via: Ipv4Addr::new(192, 168, 50, last), resolved: true }
    }

    #[test]
    fn desired_skips_self_other_vnis_and_other_backends() {
        let mut other_backend = lease("10.244.5.0/24", 5, 1);
        other_backend.attrs.backend_type = "host-gw".into();
        let leases =
            [lease("10.244.1.0/24", 1, 1), lease("10.244.2.0/24", 2, 1), lease("10.244.3.0/24", 3, 7), other_backend];
        let d = desired(&leases, Some("10.244.1.0/24".parse().unwrap()), Ipv4Addr::new(192, 168, 50, 1), 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d[&Ipv4Addr::new(192, 168, 50, 2)].subnets.len(), 1);
    }

    #[test]
    fn diff_from_empty_adds_nodes_before_routes() {
        let d = desired(&[lease("10.244.2.0/24", 2, 1)], None, Ipv4Addr::new(192, 168, 50, 1), 1);
        let c = diff(&[], &[], &d);
        assert!(
            matches!(c[0], Change::AddNode { .. }) && matches!(c[1], Change::AddRoute { .. }) && c.len() == 2,
            "{c:?}"
        );
    }

    #[test]
    fn diff_of_a_matching_dataplane_is_empty() {
        let d = desired(&[lease("10.244.2.0/24", 2, 1)], None, Ipv4Addr::new(192, 168, 50, 1), 1);
        assert!(diff(&[node(2)], &[route("10.244.2.0/24", 2)], &d).is_empty());
    }

    /// Diffing two desired states gives what diffing xlaned's tables would.
    #[test]
    fn diff_desired_matches_diff_against_the_dataplane() {
        let me = Ipv4Addr::new(192, 168, 50, 1);
        let before = desired(
            &[lease("10.244.2.0/24", 2, 1), lease("10.244.3.0/24", 3, 1), lease("10.244.4.0/24", 3, 1)],
            None,
            me,
            1,
        );
        let mut moved = lease("10.244.3.0/24", 4, 1);
        moved.attrs.backend_data["VtepMAC"] = "0e:00:00:00:04:01".into();
        let after = desired(&[lease("10.244.2.0/24", 2, 1), moved, lease("10.244.5.0/24", 5, 1)], None, me, 1);
        let nodes: Vec<NodeInfo> = before
            .iter()
            .map(|(ip, r)| NodeInfo {
                underlay_ip: *ip,
                vtep_mac: r.vtep_mac,
                next_hop_mac: None,
                source: String::new(),
            })
            .collect();
        let routes: Vec<RouteInfo> = before
            .iter()
            .flat_map(|(ip, r)| r.subnets.iter().map(|s| RouteInfo { prefix: *s, via: *ip, resolved: true }))
            .collect();
        assert_eq!(diff_desired(&before, &after), diff(&nodes, &routes, &after));
        assert!(diff_desired(&after, &after).is_empty());
    }

    #[test]
    fn diff_withdraws_stale_and_moves_changed() {
        // 10.244.3.0/24 moved from node 3 to node 4; node 3 left.
        let d = desired(
            &[lease("10.244.2.0/24", 2, 1), lease("10.244.3.0/24", 4, 1)],
            None,
            Ipv4Addr::new(192, 168, 50, 1),
            1,
        );
        let c = diff(&[node(2), node(3)], &[route("10.244.2.0/24", 2), route("10.244.3.0/24", 3)], &d);
        assert_eq!(
            c,
            vec![
                Change::DelRoute { prefix: "10.244.3.0/24".parse().unwrap() },
                Change::DelNode { underlay_ip: Ipv4Addr::new(192, 168, 50, 3) },
                Change::AddNode {
                    underlay_ip: Ipv4Addr::new(192, 168, 50, 4),
                    vtep_mac: Mac([0x0e, 0, 0, 0, 4, 1]),
                    next_hop_mac: None
                },
                Change::AddRoute { prefix: "10.244.3.0/24".parse().unwrap(), via: Ipv4Addr::new(192, 168, 50, 4) },
            ]
        );
    }
}
