//! What a container runtime does with CNI: run a plugin with the environment and
//! configuration the spec prescribes, and run a conflist as a chain (ADD in order with
//! each result passed on as `prevResult`, DEL and CHECK with the cached result, DEL in
//! reverse order). Used by the tests, the demo and the CNI latency benchmark.

use crate::Netns;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::Stdio;

/// CNI_ARGS as Kubernetes runtimes pass them.
pub const K8S_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default";

/// One container's attachment point.
#[derive(Debug, Clone)]
pub struct Container {
    /// CNI_CONTAINERID.
    pub id: String,
    /// CNI_NETNS (absent: the namespace is gone).
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl Container {
    /// `id` with `eth0` in the named namespace `ns`.
    #[must_use]
    pub fn in_netns(id: &str, ns: &Netns) -> Self {
        Self { id: id.into(), netns: Some(format!("/run/netns/{}", ns.name())), ifname: "eth0".into() }
    }
}

/// A plugin's answer.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status 0.
    pub success: bool,
    /// Its stdout as JSON (`Null` when empty).
    pub output: serde_json::Value,
    /// Its stderr.
    pub stderr: String,
}

impl Outcome {
    /// The spec error code, on failure.
    #[must_use]
    pub fn code(&self) -> Option<u64> {
        if self.success { None } else { self.output.get("code").and_then(serde_json::Value::as_u64) }
    }

    /// The result, or the error as an `io::Error`.
    ///
    /// # Errors
    /// The plugin failed.
    pub fn result(self) -> io::Result<serde_json::Value> {
        if self.success {
            Ok(self.output)
        } else {
            Err(io::Error::other(format!("CNI error {}: {}", self.output, self.stderr.trim())))
        }
    }
}

/// Where plugins are found and what the runtime passes besides the container.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// CNI_PATH, searched in order for a plugin named as its `type`.
    pub cni_path: Vec<PathBuf>,
    /// CNI_ARGS.
    pub args: String,
}

impl Runtime {
    /// A runtime searching `cni_path`.
    #[must_use]
    pub fn new(cni_path: Vec<PathBuf>) -> Self {
        Self { cni_path, args: K8S_ARGS.into() }
    }

    /// The plugin binary for `kind`.
    ///
    /// # Errors
    /// Not on the path.
    pub fn plugin(&self, kind: &str) -> io::Result<PathBuf> {
        self.cni_path
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| io::Error::other(format!("CNI plugin {kind:?} not found on {:?}", self.cni_path)))
    }

    /// Run one plugin (its `type` names it) in `node` for `command`.
    ///
    /// # Errors
    /// The plugin cannot be found or run; a plugin's own failure is an [`Outcome`].
    pub fn exec(&self, node: &Netns, command: &str, c: &Container, conf: &serde_json::Value) -> io::Result<Outcome> {
        let kind = conf.get("type").and_then(serde_json::Value::as_str).unwrap_or_default();
        let bin = self.plugin(kind)?;
        let path = self.cni_path.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join(":");
        let mut cmd = node.command(&bin.to_string_lossy());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &c.id)
            .env("CNI_IFNAME", &c.ifname)
            .env("CNI_PATH", path)
            .env("CNI_ARGS", &self.args);
        if let Some(n) = &c.netns {
            cmd.env("CNI_NETNS", n);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let output = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|e| io::Error::other(format!("{kind} printed non-JSON ({e}): {text}")))?
        };
        Ok(Outcome { success: out.status.success(), output, stderr: String::from_utf8_lossy(&out.stderr).into() })
    }

    /// One entry of `list` as the plugin sees it: its own keys plus the list's
    /// `cniVersion` and `name`, and `prevResult` when given.
    fn entry(
        list: &serde_json::Value,
        plugin: &serde_json::Value,
        prev: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if let Some(p) = prev.filter(|p| !p.is_null()) {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn plugins(list: &serde_json::Value) -> io::Result<&Vec<serde_json::Value>> {
        list.get("plugins").and_then(serde_json::Value::as_array).ok_or_else(|| io::Error::other("no \"plugins\""))
    }

    /// ADD through the chain; the final result. A failing plugin makes the runtime DEL
    /// the whole chain, as libcni does.
    ///
    /// # Errors
    /// The first failure.
    pub fn add(&self, node: &Netns, list: &serde_json::Value, c: &Container) -> io::Result<serde_json::Value> {
        let mut prev: Option<serde_json::Value> = None;
        for p in Self::plugins(list)? {
            match self.exec(node, "ADD", c, &Self::entry(list, p, prev.as_ref()))?.result() {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    let _ = self.del(node, list, c, prev.as_ref());
                    return Err(e);
                }
            }
        }
        Ok(prev.unwrap_or_default())
    }

    /// DEL through the chain in reverse order, with the cached result if any. Every plugin
    /// is called even after a failure; the first failure is returned.
    ///
    /// # Errors
    /// A plugin's failure.
    pub fn del(
        &self,
        node: &Netns,
        list: &serde_json::Value,
        c: &Container,
        cached: Option<&serde_json::Value>,
    ) -> io::Result<()> {
        let mut first = Ok(());
        for p in Self::plugins(list)?.iter().rev() {
            let r = self.exec(node, "DEL", c, &Self::entry(list, p, cached)).and_then(|o| o.result().map(drop));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// CHECK through the chain with the cached result.
    ///
    /// # Errors
    /// The first failure.
    pub fn check(
        &self,
        node: &Netns,
        list: &serde_json::Value,
        c: &Container,
        cached: &serde_json::Value,
    ) -> io::Result<()> {
        for p in Self::plugins(list)? {
            self.exec(node, "CHECK", c, &Self::entry(list, p, Some(cached)))?.result()?;
        }
        Ok(())
    }
}
