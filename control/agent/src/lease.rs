//! Subnet leases in flannel's schema: key `<prefix>/subnets/10.244.1.0-24`, value
//!
//! ```json
//! {"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:02:01"}}
//! ```
//! so xlane and flannel nodes read each other's leases.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
