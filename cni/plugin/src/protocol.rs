//! The CNI protocol (spec 0.4.0, 1.0.0, 1.1.0): what the runtime hands the plugin
//! (environment variables and the network configuration on stdin) and what the plugin
//! answers (a result or an error, shaped for the requested version, on stdout).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Spec versions this plugin speaks, oldest first.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The spec's well-known error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in the network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    UnknownContainer = 3,
    /// Invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// I/O failure.
    Io = 5,
    /// Failed to decode content.
    Decode = 6,
    /// Invalid network config.
    InvalidConfig = 7,
    /// Try again later (a transient condition).
    TryAgain = 11,
    /// STATUS: the plugin is not available (cannot serve ADD).
    NotAvailable = 50,
    /// STATUS: limited connectivity.
    LimitedConnectivity = 51,
}

/// A CNI error: code, short message, details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    /// The spec code.
    pub code: Code,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

impl CniError {
    /// An error.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    /// The error JSON the spec prescribes, for `version`.
    #[must_use]
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        serde_json::json!({"cniVersion": version, "code": self.code as u32, "msg": self.msg, "details": self.details})
    }
}

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// 1.1.0: readiness.
    Status,
    /// 1.1.0: release what is not in the valid attachments.
    Gc,
}

/// The environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS (absent for DEL after the namespace is gone, STATUS, GC).
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS as key/value pairs (`IgnoreUnknown=1;K8S_POD_NAME=…`).
    pub args: BTreeMap<String, String>,
    /// CNI_PATH entries.
    pub path: Vec<String>,
}

impl Env {
    /// Read and validate the environment for the command it names.
    ///
    /// # Errors
    /// [`Code::InvalidEnvironment`] for a missing or malformed variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let bad = |msg: &str, details: String| CniError::new(Code::InvalidEnvironment, msg, details);
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(bad(
                    "unknown CNI_COMMAND",
                    format!("{other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ));
            }
            None => return Err(bad("CNI_COMMAND is not set", "the runtime must set CNI_COMMAND".into())),
        };
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let netns = get("CNI_NETNS").filter(|s| !s.is_empty());
        if needs_container {
            if container_id.is_empty() {
                return Err(bad("CNI_CONTAINERID is not set", format!("{command:?} needs the container ID")));
            }
            if !container_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(bad(
                    "CNI_CONTAINERID is invalid",
                    format!("{container_id:?} has characters outside [A-Za-z0-9_.-]"),
                ));
            }
            if ifname.is_empty()
                || ifname.len() > 15
                || ifname.contains(['/', ' ', ':'])
                || ifname == "."
                || ifname == ".."
            {
                return Err(bad("CNI_IFNAME is invalid", format!("{ifname:?} is not a valid interface name")));
            }
        }
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(bad("CNI_NETNS is not set", format!("{command:?} needs the network namespace")));
        }
        let mut args = BTreeMap::new();
        for kv in get("CNI_ARGS").unwrap_or_default().split(';').filter(|s| !s.is_empty()) {
            let (k, v) =
                kv.split_once('=').ok_or_else(|| bad("CNI_ARGS is malformed", format!("{kv:?} is not KEY=VALUE")))?;
            args.insert(k.to_owned(), v.to_owned());
        }
        let path =
            get("CNI_PATH").unwrap_or_default().split(':').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        Ok(Self { command, container_id, netns, ifname, args, path })
    }
}

/// The network configuration (one plugin's entry of a conflist). Unknown keys are kept
/// for `prevResult`-style passthrough and otherwise ignored (podman passes `capabilities`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Requested spec version.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin type (the binary name).
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent's socket (default /run/xlane/agent.sock).
    #[serde(default)]
    pub agent_socket: Option<String>,
    /// How pods attach: "veth" (default), "veth-xdp", "veth-offload" or "vhost-user"
    /// (VM-based pods); CNI_ARGS `XLANE_ATTACH` chooses per pod.
    #[serde(default)]
    pub attach: Option<String>,
    /// Where vhost-user sockets are created (default /run/xlane/vhost-user).
    #[serde(default)]
    pub vhost_user_dir: Option<String>,
    /// A standard IPAM section: delegate to that IPAM plugin instead of the agent.
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    /// The previous plugin's result, in a chain.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// Runtime configuration (capabilities the runtime fills).
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// GC: the attachments that still exist.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// The configuration exactly as received: what a delegated IPAM plugin is given.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface.
    pub ifname: String,
}

impl NetConf {
    /// Parse stdin and check the version is one this plugin speaks.
    ///
    /// # Errors
    /// [`Code::Decode`] for bad JSON, [`Code::InvalidConfig`] for missing fields,
    /// [`Code::IncompatibleVersion`] for an unsupported version.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let v: serde_json::Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(Code::Decode, "network configuration is not JSON", e.to_string()))?;
        let mut conf: Self = serde_json::from_value(v)
            .map_err(|e| CniError::new(Code::InvalidConfig, "invalid network configuration", e.to_string()))?;
        conf.raw = stdin.to_vec();
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!("cniVersion {} is not one of {}", conf.cni_version, SUPPORTED.join(", ")),
            ));
        }
        Ok(conf)
    }
}

/// The VERSION answer.
#[must_use]
pub fn version_result(requested: Option<&str>) -> serde_json::Value {
    let v = requested.filter(|r| SUPPORTED.contains(r)).unwrap_or("1.1.0");
    serde_json::json!({"cniVersion": v, "supportedVersions": SUPPORTED})
}

/// What an ADD produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Host-side interface and MAC (none for vhost-user).
    pub host_if: Option<(String, String)>,
    /// Pod interface, MAC and namespace path.
    pub pod_if: (String, String, String),
    /// The vhost-user socket its VMM connects to.
    pub socket_path: Option<String>,
    /// Address with prefix.
    pub ip: Ipv4Net,
    /// Gateway.
    pub gateway: Ipv4Addr,
    /// Routes via the gateway.
    pub routes: Vec<Ipv4Net>,
    /// MTU.
    pub mtu: u16,
}

#[derive(Serialize)]
struct Interface<'a> {
    name: &'a str,
    mac: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u16>,
    #[serde(rename = "socketPath", skip_serializing_if = "Option::is_none")]
    socket_path: Option<&'a str>,
}

/// The ADD result, shaped for `version` (0.4.0 adds `"version": "4"` to IPs; 1.1.0
/// reports interface MTUs and the vhost-user socket).
#[must_use]
pub fn add_result(version: &str, a: &Attachment) -> serde_json::Value {
    let v11 = version == "1.1.0";
    let mtu = v11.then_some(a.mtu);
    let mut interfaces: Vec<Interface<'_>> =
        a.host_if.iter().map(|(name, mac)| Interface { name, mac, sandbox: None, mtu, socket_path: None }).collect();
    interfaces.push(Interface {
        name: &a.pod_if.0,
        mac: &a.pod_if.1,
        sandbox: Some(&a.pod_if.2),
        mtu,
        socket_path: a.socket_path.as_deref().filter(|_| v11),
    });
    let pod_index = interfaces.len() - 1;
    let mut ip =
        serde_json::json!({"address": a.ip.to_string(), "gateway": a.gateway.to_string(), "interface": pod_index});
    if version == "0.4.0" {
        ip["version"] = "4".into();
    }
    let routes: Vec<_> =
        a.routes.iter().map(|r| serde_json::json!({"dst": r.to_string(), "gw": a.gateway.to_string()})).collect();
    serde_json::json!({"cniVersion": version, "interfaces": interfaces, "ips": [ip], "routes": routes, "dns": {}})
}

/// Merge our ADD result into a previous plugin's (when not first in a chain): their
/// interfaces, IPs and routes come first, ours are appended with interface indices
/// shifted; `dns` is kept from the previous result when present.
#[must_use]
pub fn merge_prev(prev: &serde_json::Value, ours: serde_json::Value) -> serde_json::Value {
    let mut out = ours;
    let list =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    let prev_ifs = list(prev, "interfaces");
    let shift = prev_ifs.len() as u64;
    let mut ifs = prev_ifs;
    ifs.extend(list(&out, "interfaces"));
    let mut ips = list(prev, "ips");
    ips.extend(list(&out, "ips").into_iter().map(|mut ip| {
        if let Some(i) = ip.get("interface").and_then(serde_json::Value::as_u64) {
            ip["interface"] = (i + shift).into();
        }
        ip
    }));
    let mut routes = list(prev, "routes");
    routes.extend(list(&out, "routes"));
    out["interfaces"] = ifs.into();
    out["ips"] = ips.into();
    out["routes"] = routes.into();
    if let Some(dns) = prev.get("dns").filter(|d| d.as_object().is_some_and(|o| !o.is_empty())) {
        out["dns"] = dns.clone();
    }
    out
}

/// The host-side interface name for a container's interface: deterministic, ≤ 15 bytes,
/// and distinct per (container, interface).
#[must_use]
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a 64 over "container/ifname": stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("xl{:012x}", h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Env::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn environment_as_podman_sets_it() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "3f9c0a"),
            ("CNI_NETNS", "/run/netns/cni-1234"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.args["K8S_POD_NAME"], "web");
        assert_eq!(e.path, ["/opt/cni/bin", "/usr/lib/cni"]);
    }

    #[test]
    fn bad_environment_is_code_4() {
        for (vars, what) in [
            (vec![], "CNI_COMMAND is not set"),
            (vec![("CNI_COMMAND", "PING")], "unknown CNI_COMMAND"),
            (vec![("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")], "CNI_CONTAINERID is not set"),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a/b"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")],
                "CNI_CONTAINERID is invalid",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "much-too-long-name"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME",
            ),
            (vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")], "CNI_NETNS is not set"),
            (
                vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "oops")],
                "CNI_ARGS",
            ),
        ] {
            let e = env(&vars).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment);
            assert!(e.msg.contains(what), "{vars:?}: {e}");
        }
        // DEL without a namespace (already gone) is fine.
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]).is_ok());
    }

    #[test]
    fn config_versions_and_unknown_fields() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"xlane","type":"xlane","capabilities":{"portMappings":true}}"#,
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.kind.as_str()), ("xlane", "xlane"));
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, Code::Decode);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, Code::InvalidConfig);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"xlane"}"#).unwrap_err().code,
            Code::IncompatibleVersion
        );
        let gc = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"xlane","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#).unwrap();
        assert_eq!(gc.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn results_are_shaped_per_version() {
        let a = Attachment {
            host_if: Some(("xl0123456789ab".into(), "ee:ee:00:00:01:02".into())),
            pod_if: ("eth0".into(), "0a:58:0a:f4:01:02".into(), "/run/netns/p".into()),
            socket_path: None,
            ip: "10.244.1.2/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            routes: vec!["0.0.0.0/0".parse().unwrap()],
            mtu: 1450,
        };
        let r04 = add_result("0.4.0", &a);
        assert_eq!(r04["ips"][0]["version"], "4");
        assert_eq!(r04["interfaces"][1]["sandbox"], "/run/netns/p");
        assert!(r04["interfaces"][0].get("mtu").is_none());
        let r10 = add_result("1.0.0", &a);
        assert!(r10["ips"][0].get("version").is_none());
        assert_eq!(r10["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(add_result("1.1.0", &a)["interfaces"][1]["mtu"], 1450);
        let e = CniError::new(Code::TryAgain, "agent not ready", "try again").to_json("1.0.0");
        assert_eq!((e["code"].as_u64(), e["cniVersion"].as_str()), (Some(11), Some("1.0.0")));
        assert_eq!(version_result(Some("0.4.0"))["supportedVersions"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn vhost_user_results_name_the_socket_from_1_1_0() {
        let a = Attachment {
            host_if: None,
            pod_if: ("eth0".into(), "0a:58:0a:f4:01:fa".into(), "/run/netns/vm".into()),
            socket_path: Some("/run/xlane/vhost-user/xl0123456789ab.sock".into()),
            ip: "10.244.1.250/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            routes: vec!["0.0.0.0/0".parse().unwrap()],
            mtu: 1450,
        };
        let r11 = add_result("1.1.0", &a);
        assert_eq!(r11["interfaces"].as_array().unwrap().len(), 1, "no host-side interface");
        assert_eq!(r11["interfaces"][0]["socketPath"], "/run/xlane/vhost-user/xl0123456789ab.sock");
        assert_eq!(r11["ips"][0]["interface"], 0);
        for older in ["0.4.0", "1.0.0"] {
            let r = add_result(older, &a);
            assert!(r["interfaces"][0].get("socketPath").is_none(), "{older} has no socketPath");
            assert_eq!(r["ips"][0]["interface"], 0);
        }
    }

    #[test]
    fn prev_result_is_merged_not_lost() {
        let prev = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "macvlan0", "mac": "02:00:00:00:00:09", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "192.0.2.5/24", "interface": 0}],
            "routes": [{"dst": "192.0.2.0/24"}],
            "dns": {"nameservers": ["192.0.2.53"]}
        });
        let ours = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "xlhost", "mac": "ee:ee:00:00:01:02"}, {"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {}
        });
        let m = merge_prev(&prev, ours);
        assert_eq!(m["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(m["ips"][0]["address"], "192.0.2.5/24");
        assert_eq!(m["ips"][1]["interface"], 2, "our pod interface, shifted past theirs");
        assert_eq!(m["routes"].as_array().unwrap().len(), 2);
        assert_eq!(m["dns"]["nameservers"][0], "192.0.2.53");
    }

    #[test]
    fn host_names_are_short_stable_and_distinct() {
        let a = host_ifname("3f9c0a1b2c3d", "eth0");
        assert!(a.len() <= 15 && a.starts_with("xl"), "{a}");
        assert_eq!(a, host_ifname("3f9c0a1b2c3d", "eth0"));
        assert_ne!(a, host_ifname("3f9c0a1b2c3d", "net1"));
        assert_ne!(a, host_ifname("3f9c0a1b2c3e", "eth0"));
    }
}
