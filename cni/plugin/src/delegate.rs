//! IPAM delegation: a standard `ipam` section names an IPAM plugin (e.g. `host-local`)
//! found on `CNI_PATH`; it is executed with the same environment and configuration, as the
//! spec prescribes, and its result's address is what the pod gets.

use crate::protocol::{CniError, Code, Env, NetConf};
use ipnet::Ipv4Net;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What the IPAM plugin chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamResult {
    /// The first IPv4 address with its prefix.
    pub ip: Ipv4Net,
    /// Its gateway, when the plugin set one.
    pub gateway: Option<Ipv4Addr>,
    /// Routes from the plugin's configuration.
    pub routes: Vec<Ipv4Net>,
}

/// The delegate named by the configuration's `ipam.type`.
#[derive(Debug, Clone)]
pub struct Delegate {
    binary: PathBuf,
}

impl Delegate {
    /// The IPAM plugin of `conf`, if it has an `ipam` section.
    ///
    /// # Errors
    /// [`Code::InvalidConfig`] when `ipam.type` is missing, not a plain name, or not on
    /// `CNI_PATH`.
    pub fn of(env: &Env, conf: &NetConf) -> Result<Option<Self>, CniError> {
        let Some(ipam) = &conf.ipam else { return Ok(None) };
        let bad = |d: String| CniError::new(Code::InvalidConfig, "invalid ipam section", d);
        let kind = ipam.get("type").and_then(serde_json::Value::as_str).ok_or_else(|| bad("no \"type\"".into()))?;
        if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
            return Err(bad(format!("{kind:?} is not a plugin name")));
        }
        let binary = env
            .path
            .iter()
            .map(|dir| PathBuf::from(dir).join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| bad(format!("IPAM plugin {kind:?} not found on CNI_PATH {:?}", env.path)))?;
        Ok(Some(Self { binary }))
    }

    /// Run the plugin for `command` with our environment and `stdin`; its stdout parsed.
    /// A failing plugin's own error (code, msg) is passed on.
    fn exec(&self, command: &str, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
        let name = self.binary.display();
        let mut child = Command::new(&self.binary)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CniError::new(Code::Io, "cannot run the IPAM plugin", format!("{name}: {e}")))?;
        // A plugin that exits without reading gives EPIPE here; its exit status tells why.
        let _ = child.stdin.take().expect("piped").write_all(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::new(Code::Io, "the IPAM plugin failed", format!("{name}: {e}")))?;
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let err = parsed.as_ref();
            let code = err.and_then(|v| v.get("code")?.as_u64()).unwrap_or(Code::Io as u64);
            let msg = err.and_then(|v| v.get("msg")?.as_str()).unwrap_or("failed");
            let code = [Code::TryAgain, Code::InvalidConfig, Code::IncompatibleVersion, Code::UnknownContainer]
                .into_iter()
                .find(|c| *c as u64 == code)
                .unwrap_or(Code::Io);
            let details = format!("{name} {command}: {}", String::from_utf8_lossy(&out.stderr).trim());
            return Err(CniError::new(code, format!("IPAM plugin: {msg}"), details));
        }
        Ok(parsed)
    }

    /// ADD: the address for the pod.
    ///
    /// # Errors
    /// The plugin's error, or [`Code::Io`] for a result without an IPv4 address.
    pub fn add(&self, stdin: &[u8]) -> Result<IpamResult, CniError> {
        let result = self.exec("ADD", stdin)?.unwrap_or_default();
        let parsed = parse_result(&result);
        if parsed.is_none() {
            // It allocated something we cannot use: give it back.
            let _ = self.del(stdin);
        }
        parsed.ok_or_else(|| CniError::new(Code::Io, "the IPAM plugin returned no IPv4 address", result.to_string()))
    }

    /// DEL (idempotent in every reference IPAM plugin).
    ///
    /// # Errors
    /// The plugin's error.
    pub fn del(&self, stdin: &[u8]) -> Result<(), CniError> {
        self.exec("DEL", stdin).map(drop)
    }

    /// CHECK.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn check(&self, stdin: &[u8]) -> Result<(), CniError> {
        self.exec("CHECK", stdin).map(drop)
    }

    /// Whether the plugin speaks `version` (STATUS and GC need 1.1.0; older IPAM plugins,
    /// such as Debian's host-local 1.1, are skipped for those).
    #[must_use]
    pub fn speaks(&self, version: &str) -> bool {
        self.exec("VERSION", br#"{"cniVersion":"0.4.0"}"#)
            .ok()
            .flatten()
            .and_then(|v| v.get("supportedVersions")?.as_array().cloned())
            .is_some_and(|vs| vs.iter().any(|v| v == version))
    }

    /// GC or STATUS, forwarded when the plugin speaks 1.1.0.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn forward_if_supported(&self, command: &str, stdin: &[u8]) -> Result<(), CniError> {
        if self.speaks("1.1.0") { self.exec(command, stdin).map(drop) } else { Ok(()) }
    }
}

/// The first IPv4 address of an IPAM result (0.4.0 or 1.x shape), with its gateway and
/// the result's IPv4 routes.
#[must_use]
pub fn parse_result(v: &serde_json::Value) -> Option<IpamResult> {
    let ips = v.get("ips")?.as_array()?;
    let (ip, gateway) = ips.iter().find_map(|e| {
        let ip: Ipv4Net = e.get("address")?.as_str()?.parse().ok()?;
        let gw = e.get("gateway").and_then(serde_json::Value::as_str).and_then(|g| g.parse().ok());
        Some((ip, gw))
    })?;
    let routes = v
        .get("routes")
        .and_then(serde_json::Value::as_array)
        .map(|rs| rs.iter().filter_map(|r| r.get("dst")?.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    Some(IpamResult { ip, gateway, routes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_results_in_both_shapes() {
        // What Debian's host-local 1.1.1 prints for cniVersion 1.0.0 and 0.4.0.
        let v10 = serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let r = parse_result(&v10).unwrap();
        assert_eq!(r.ip, "10.244.1.7/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(r.routes, vec!["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]);
        let v04 = serde_json::json!({"cniVersion":"0.4.0","ips":[{"version":"6","address":"fd00::7/64"},{"version":"4","address":"10.244.1.8/24"}],"dns":{}});
        let r = parse_result(&v04).unwrap();
        assert_eq!((r.ip.addr(), r.gateway, r.routes.len()), (Ipv4Addr::new(10, 244, 1, 8), None, 0));
        assert!(parse_result(&serde_json::json!({"ips":[{"address":"fd00::1/64"}]})).is_none());
        assert!(parse_result(&serde_json::json!({"cniVersion":"1.0.0"})).is_none());
    }

    #[test]
    fn delegate_lookup_refuses_paths_and_missing_plugins() {
        let env = Env::from_vars(|k| match k {
            "CNI_COMMAND" => Some("DEL".into()),
            "CNI_CONTAINERID" => Some("c".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_PATH" => Some("/nonexistent-cni-dir".into()),
            _ => None,
        })
        .unwrap();
        let conf = |ipam: &str| {
            NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"xlane","ipam":{ipam}}}"#).as_bytes())
                .unwrap()
        };
        for ipam in [r#"{}"#, r#"{"type":"../../bin/sh"}"#, r#"{"type":"host-local"}"#] {
            let e = Delegate::of(&env, &conf(ipam)).unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{ipam}: {e}");
        }
        let none = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"xlane"}"#).unwrap();
        assert!(Delegate::of(&env, &none).unwrap().is_none());
    }
}
