//! Subnet leases in flannel's schema: key `<prefix>/subnets/10.244.1.0-24`, value
//!
//! ```json
//! {"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:02:01"}}
//! ```
//! so xlane and flannel nodes read each other's leases.

use crate::netconf::NetConfig;
use crate::store::StoreError;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use xlane_api::Mac;

/// flannel's vxlan `BackendData`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    /// VNI.
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// The node's VTEP MAC.
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: Mac,
}

/// flannel's `LeaseAttrs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// The node's underlay address.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// flannel writes it (null without IPv6); kept as given.
    #[serde(rename = "PublicIPv6", default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<String>,
    /// "vxlan" for nodes xlane can reach.
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    /// Backend data; for vxlan, [`VxlanData`].
    #[serde(rename = "BackendData", default)]
    pub backend_data: serde_json::Value,
}

impl LeaseAttrs {
    /// The attributes xlane publishes for its node.
    #[must_use]
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: Mac) -> Self {
        Self {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".to_owned(),
            backend_data: serde_json::to_value(VxlanData { vni, vtep_mac }).expect("plain struct"),
        }
    }

    /// The vxlan data, if this is a vxlan lease with readable data.
    #[must_use]
    pub fn vxlan_data(&self) -> Option<VxlanData> {
        (self.backend_type == "vxlan").then(|| serde_json::from_value(self.backend_data.clone()).ok()).flatten()
    }
}

/// flannel's key for a subnet: `10.244.1.0-24`.
#[must_use]
pub fn subnet_key(s: Ipv4Net) -> String {
    format!("{}-{}", s.network(), s.prefix_len())
}

/// Parse a subnet key back (`10.244.1.0-24`).
#[must_use]
pub fn parse_subnet_key(k: &str) -> Option<Ipv4Net> {
    let (a, l) = k.rsplit_once('-')?;
    let net = Ipv4Net::new(a.parse().ok()?, l.parse().ok()?).ok()?;
    (net.network() == net.addr()).then_some(net)
}

/// A lease: a node subnet and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The subnet.
    pub subnet: Ipv4Net,
    /// Its holder.
    pub attrs: LeaseAttrs,
}

/// The subnet a node claims, as [`choose_subnet`] picks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A lease the node already holds (same public IP): a restarted agent takes it over.
    Held(Ipv4Net),
    /// A subnet nobody holds.
    Free(Ipv4Net),
}

impl Claim {
    /// The subnet claimed.
    #[must_use]
    pub fn subnet(self) -> Ipv4Net {
        match self {
            Self::Held(s) | Self::Free(s) => s,
        }
    }
}

/// The subnet the node at `public_ip` claims, given the live leases (subnet, holder's
/// public IP): the one it already holds in the network, else `preferred` when it is free
/// and in the range SubnetMin..=SubnetMax, else the first free subnet of that range.
/// Both datastores choose with this; each then claims the subnet its own way.
///
/// # Errors
/// [`StoreError::Full`] when every subnet of the range is leased.
pub fn choose_subnet(
    cfg: &NetConfig,
    leased: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>,
    public_ip: Ipv4Addr,
    preferred: Option<Ipv4Net>,
) -> Result<Claim, StoreError> {
    let leased: BTreeMap<Ipv4Net, Ipv4Addr> = leased.into_iter().collect();
    let in_network = |s: &Ipv4Net| cfg.network.contains(s) && s.prefix_len() == cfg.subnet_len;
    if let Some((s, _)) = leased.iter().find(|(s, holder)| **holder == public_ip && in_network(s)) {
        return Ok(Claim::Held(*s));
    }
    let free = |s: &Ipv4Net| !leased.contains_key(s);
    preferred
        .filter(|p| in_network(p) && free(p) && cfg.subnets().any(|s| s == *p))
        .or_else(|| cfg.subnets().find(|s| free(s)))
        .map(Claim::Free)
        .ok_or(StoreError::Full(cfg.network))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A lease exactly as flannel 0.2x writes it.
    const FLANNEL: &str = r#"{"PublicIP":"192.168.50.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b2:41:9c:3e:51:0a"}}"#;

    #[test]
    fn reads_flannels_lease() {
        let a: LeaseAttrs = serde_json::from_str(FLANNEL).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(192, 168, 50, 3));
        let d = a.vxlan_data().unwrap();
        assert_eq!((d.vni, d.vtep_mac.to_string().as_str()), (1, "b2:41:9c:3e:51:0a"));
    }

    #[test]
    fn writes_what_flannel_reads() {
        let a = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 50, 1), 1, "0e:00:00:00:01:01".parse().unwrap());
        let v: serde_json::Value = serde_json::to_value(&a).unwrap();
        assert_eq!(v["PublicIP"], "192.168.50.1");
        assert_eq!(v["BackendType"], "vxlan");
        assert_eq!(v["BackendData"]["VNI"], 1);
        assert_eq!(v["BackendData"]["VtepMAC"], "0e:00:00:00:01:01");
        assert_eq!(serde_json::from_value::<LeaseAttrs>(v).unwrap(), a);
    }

    #[test]
    fn other_backends_have_no_vxlan_data() {
        let a: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"192.168.50.9","BackendType":"host-gw"}"#).unwrap();
        assert_eq!(a.vxlan_data(), None);
    }

    #[test]
    fn subnet_keys() {
        let s: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(subnet_key(s), "10.244.1.0-24");
        assert_eq!(parse_subnet_key("10.244.1.0-24"), Some(s));
        for bad in ["10.244.1.0/24", "10.244.1.5-24", "x-24", "10.244.1.0-33", "10.244.1.0"] {
            assert_eq!(parse_subnet_key(bad), None, "{bad}");
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn held_then_preferred_then_first_free() {
        let cfg = NetConfig::parse(r#"{"Network":"10.244.0.0/22","SubnetLen":24}"#).unwrap();
        let (me, other) = (Ipv4Addr::new(192, 168, 50, 1), Ipv4Addr::new(192, 168, 50, 2));
        let leased = [(net("10.244.1.0/24"), other), (net("10.244.3.0/24"), me)];
        assert_eq!(choose_subnet(&cfg, leased, me, None).unwrap(), Claim::Held(net("10.244.3.0/24")));
        let leased = [(net("10.244.1.0/24"), other)];
        assert_eq!(choose_subnet(&cfg, leased, me, None).unwrap(), Claim::Free(net("10.244.2.0/24")));
        let prefer = Some(net("10.244.3.0/24"));
        assert_eq!(choose_subnet(&cfg, leased, me, prefer).unwrap(), Claim::Free(net("10.244.3.0/24")));
        // Taken, below SubnetMin, or of another length: not honoured.
        for p in ["10.244.1.0/24", "10.244.0.0/24", "10.244.3.0/25"] {
            assert_eq!(choose_subnet(&cfg, leased, me, Some(net(p))).unwrap(), Claim::Free(net("10.244.2.0/24")));
        }
        let full = [(net("10.244.1.0/24"), other), (net("10.244.2.0/24"), other), (net("10.244.3.0/24"), other)];
        assert!(matches!(choose_subnet(&cfg, full, me, None), Err(StoreError::Full(n)) if n == cfg.network));
    }

    /// A network config with a small range, leases on some of its subnets (and a few
    /// outside it), a node, and a preference.
    fn scenario() -> impl Strategy<Value = (NetConfig, Vec<(Ipv4Net, Ipv4Addr)>, Ipv4Addr, Option<Ipv4Net>)> {
        (24u8..=28, 0u32..8, 0u32..8)
            .prop_flat_map(|(len, lo, hi)| {
                let size = 1u32 << (32 - len);
                let count = 1u32 << (len - 22);
                let min = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (lo % count) * size);
                let max = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (count - 1 - hi % count) * size);
                let json = format!(
                    r#"{{"Network":"10.244.0.0/22","SubnetLen":{len},"SubnetMin":"{min}","SubnetMax":"{max}"}}"#
                );
                let subnet = (0..count + 4, 0u8..=2).prop_map(move |(i, extra)| {
                    let l = if extra == 2 { len + 1 } else { len };
                    Ipv4Net::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i * size), l).unwrap()
                });
                let holder = (1u8..6).prop_map(|h| Ipv4Addr::new(192, 168, 50, h));
                (
                    Just(json),
                    proptest::collection::vec((subnet.clone(), holder.clone()), 0..40),
                    holder,
                    proptest::option::of(subnet),
                )
            })
            .prop_filter_map("SubnetMin after SubnetMax", |(json, leased, me, p)| {
                Some((NetConfig::parse(&json).ok()?, leased, me, p))
            })
    }

    proptest! {
        #[test]
        fn never_a_taken_subnet_always_in_range_full_only_when_full((cfg, leased, me, preferred) in scenario()) {
            let holders: BTreeMap<Ipv4Net, Ipv4Addr> = leased.iter().copied().collect();
            match choose_subnet(&cfg, leased.iter().copied(), me, preferred) {
                Ok(Claim::Held(s)) => {
                    prop_assert_eq!(holders.get(&s), Some(&me));
                    prop_assert!(cfg.network.contains(&s) && s.prefix_len() == cfg.subnet_len);
                }
                Ok(Claim::Free(s)) => {
                    prop_assert!(!holders.contains_key(&s), "{} is taken", s);
                    prop_assert!(cfg.subnets().any(|r| r == s), "{} is outside SubnetMin..=SubnetMax", s);
                    prop_assert!(u32::from(s.network()) >= u32::from(cfg.subnet_min));
                    prop_assert!(u32::from(s.network()) <= u32::from(cfg.subnet_max));
                    if let Some(p) = preferred.filter(|p| !holders.contains_key(p) && cfg.subnets().any(|r| r == *p)) {
                        prop_assert_eq!(s, p);
                    }
                }
                Err(StoreError::Full(n)) => {
                    prop_assert_eq!(n, cfg.network);
                    prop_assert!(cfg.subnets().all(|s| holders.contains_key(&s)));
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }
    }
}
