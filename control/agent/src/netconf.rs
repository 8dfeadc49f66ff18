//! The network configuration, in flannel's format (`<prefix>/config` in etcd, or a file):
//!
//! ```json
//! {"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.255.0",
//!  "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}
//! ```
//! Defaults as flannel: SubnetLen 24 (or network length + 4 when that is longer),
//! SubnetMin the second subnet, SubnetMax the last, VNI 1, port 8472. Unknown keys are
//! ignored (flannel's other backends' settings); invalid values are rejected with a
//! message that names the field.

use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::Ipv4Addr;

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON or wrong types.
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    /// A field has an unusable value.
    #[error("network config: {field}: {message}")]
    Field {
        /// The field, as flannel names it.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field { field, message: message.into() }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawBackend {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "VNI")]
    vni: Option<u32>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Raw {
    network: Option<String>,
    subnet_len: Option<u8>,
    subnet_min: Option<Ipv4Addr>,
    subnet_max: Option<Ipv4Addr>,
    backend: Option<RawBackend>,
}

/// A validated network configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The cluster CIDR.
    pub network: Ipv4Net,
    /// Length of each node's subnet.
    pub subnet_len: u8,
    /// First node subnet that may be leased.
    pub subnet_min: Ipv4Addr,
    /// Last node subnet that may be leased.
    pub subnet_max: Ipv4Addr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
}

impl NetConfig {
    /// Parse and validate flannel's JSON.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending field.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let raw: Raw = serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let network: Ipv4Net = raw
            .network
            .ok_or_else(|| field("Network", "missing"))?
            .parse()
            .map_err(|e| field("Network", format!("{e}")))?;
        if network.network() != network.addr() {
            return Err(field("Network", format!("{network} has host bits set")));
        }
        if network.prefix_len() > 28 {
            return Err(field("Network", format!("{network} is too small for node subnets")));
        }
        let default_len = if network.prefix_len() <= 20 { 24 } else { network.prefix_len() + 4 };
        let subnet_len = raw.subnet_len.unwrap_or(default_len);
        if subnet_len <= network.prefix_len() || subnet_len > 30 {
            return Err(field(
                "SubnetLen",
                format!("{subnet_len} must be longer than the network's /{} and at most 30", network.prefix_len()),
            ));
        }
        let size = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network());
        let last = u32::from(network.broadcast()) & !(size - 1);
        let aligned = |name: &'static str, a: Ipv4Addr| {
            let v = u32::from(a);
            if !network.contains(&a) {
                Err(field(name, format!("{a} is outside {network}")))
            } else if v & (size - 1) != 0 {
                Err(field(name, format!("{a} is not the start of a /{subnet_len}")))
            } else {
                Ok(a)
            }
        };
        let subnet_min = aligned("SubnetMin", raw.subnet_min.unwrap_or(Ipv4Addr::from(first + size)))?;
        let subnet_max = aligned("SubnetMax", raw.subnet_max.unwrap_or(Ipv4Addr::from(last)))?;
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return Err(field("SubnetMin", format!("{subnet_min} is after SubnetMax {subnet_max}")));
        }
        let backend = raw.backend.unwrap_or(RawBackend { kind: None, vni: None, port: None });
        match backend.kind.as_deref() {
            None | Some("vxlan") => {}
            Some(other) => {
                return Err(field("Backend.Type", format!("{other:?} is not supported (xlane speaks vxlan)")));
            }
        }
        let vni = backend.vni.unwrap_or(1);
        if vni == 0 || vni > 0x00ff_ffff {
            return Err(field("Backend.VNI", format!("{vni} is not a 24-bit VNI")));
        }
        let port = backend.port.unwrap_or(xlane_wire::VXLAN_PORT_LINUX);
        if port == 0 {
            return Err(field("Backend.Port", "0 is not a port"));
        }
        Ok(Self { network, subnet_len, subnet_min, subnet_max, vni, port })
    }

    /// Every subnet that may be leased, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u32 << (32 - self.subnet_len);
        (u32::from(self.subnet_min)..=u32::from(self.subnet_max))
            .step_by(size as usize)
            .map(move |a| Ipv4Net::new(Ipv4Addr::from(a), self.subnet_len).expect("valid length"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_default_config() {
        let c = NetConfig::parse(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!((c.vni, c.port), (1, 8472));
        assert_eq!(c.subnets().count(), 255);
    }

    #[test]
    fn explicit_values_and_unknown_keys() {
        let c = NetConfig::parse(
            r#"{"Network":"10.10.0.0/20","SubnetLen":26,"SubnetMin":"10.10.0.64","SubnetMax":"10.10.1.0",
                "EnableIPv6":false,"Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"DirectRouting":false}}"#,
        )
        .unwrap();
        assert_eq!((c.subnet_len, c.vni, c.port), (26, 4096, 4789));
        assert_eq!(
            c.subnets().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["10.10.0.64/26", "10.10.0.128/26", "10.10.0.192/26", "10.10.1.0/26"]
        );
    }

    #[test]
    fn invalid_configs_name_the_field() {
        for (json, what) in [
            ("nope", "not valid JSON"),
            (r#"{"SubnetLen": 24}"#, "Network: missing"),
            (r#"{"Network": "10.244.0.0/33"}"#, "Network"),
            (r#"{"Network": "10.244.1.0/16"}"#, "host bits"),
            (r#"{"Network": "10.244.0.0/16", "SubnetLen": 16}"#, "SubnetLen"),
            (r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}"#, "SubnetMin: 10.245.0.0 is outside"),
            (r#"{"Network": "10.244.0.0/16", "SubnetMax": "10.244.3.7"}"#, "SubnetMax: 10.244.3.7 is not the start"),
            (r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#, "Backend.Type"),
            (r#"{"Network": "10.244.0.0/16", "Backend": {"VNI": 16777216}}"#, "Backend.VNI"),
            (r#"{"Network": "10.244.0.0/16", "Backend": {"Port": 0}}"#, "Backend.Port"),
        ] {
            let e = NetConfig::parse(json).unwrap_err().to_string();
            assert!(e.contains(what), "{json}: {e}");
        }
    }
}
