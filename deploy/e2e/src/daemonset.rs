//! `deploy/kubernetes/xlane.yaml`'s DaemonSet pod run by podman on a lab node the way
//! kubelet runs it: every setting is read from the manifest, not restated here.
//!
//! - `hostNetwork: true` → `--network ns:<the node's namespace>` (the lab node's network
//!   namespace is that node's host network);
//! - `securityContext` → `--cap-drop`/`--cap-add`, `--security-opt no-new-privileges`
//!   for `allowPrivilegeEscalation: false`, `--privileged` only if it says so; no
//!   `seccompProfile` → `seccomp=unconfined`, what kubelet gives such a container unless
//!   its `--seccomp-default` is on;
//! - `hostPath` volumes → directories under the node's own host root (`hostPath: /run/xlane`
//!   is `<host root>/run/xlane`), `configMap` volumes → the ConfigMap's keys as files;
//! - `env` → literal values, `fieldRef` (node name, pod name and namespace),
//!   `configMapKeyRef` from the ConfigMap;
//! - `command` → the container's command (the image has no entrypoint);
//! - probes: `exec` through `podman exec`, `httpGet` from inside the node's namespace.

use serde_json::{Map, Value};
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;
use xlane_netlab::podman::Podman;

/// The manifest, from the repository.
pub const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../kubernetes/xlane.yaml");

/// The DaemonSet and its ConfigMap, as read from [`MANIFEST`].
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The DaemonSet.
    pub daemonset: Value,
    /// The ConfigMap's `data`.
    pub config: Map<String, Value>,
}

impl Manifest {
    /// Read [`MANIFEST`].
    ///
    /// # Errors
    /// It cannot be read or parsed, or lacks one DaemonSet and one ConfigMap.
    pub fn read() -> io::Result<Self> {
        let text = std::fs::read_to_string(MANIFEST)?;
        let docs = serde_saphyr::from_multiple::<Value>(&text).map_err(io::Error::other)?;
        let one = |kind: &str| {
            let mut found = docs.iter().filter(|d| d["kind"] == kind);
            match (found.next(), found.next()) {
                (Some(d), None) => Ok(d.clone()),
                _ => Err(io::Error::other(format!("{MANIFEST}: not exactly one {kind}"))),
            }
        };
        let config = one("ConfigMap")?["data"].as_object().cloned().unwrap_or_default();
        Ok(Self { daemonset: one("DaemonSet")?, config })
    }

    /// The pod template's `spec`.
    #[must_use]
    pub fn pod_spec(&self) -> &Value {
        &self.daemonset["spec"]["template"]["spec"]
    }

    /// The container or init container `name`.
    ///
    /// # Errors
    /// There is none.
    pub fn container(&self, name: &str) -> io::Result<&Value> {
        ["initContainers", "containers"]
            .iter()
            .filter_map(|list| self.pod_spec()[list].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .ok_or_else(|| io::Error::other(format!("the DaemonSet has no container {name}")))
    }

    /// A ConfigMap key's text.
    #[must_use]
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(Value::as_str)
    }
}

/// The DaemonSet's pod on one lab node, its containers run by that node's podman.
#[derive(Debug)]
pub struct NodePod<'a> {
    /// What to run (the ConfigMap as the operator set it for this cluster).
    pub manifest: Manifest,
    /// The node's podman.
    pub podman: &'a Podman,
    /// The node's network namespace file (`/run/netns/<node>`): its host network.
    pub netns: PathBuf,
    /// `spec.nodeName`.
    pub node_name: String,
    /// The node's host filesystem for `hostPath` volumes; ConfigMap volumes beside it.
    pub dir: PathBuf,
}

impl NodePod<'_> {
    /// Where `hostPath` `path` is on this node.
    #[must_use]
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.dir.join("host").join(path.trim_start_matches('/'))
    }

    /// `metadata.name` of the pod a DaemonSet controller would create on this node.
    #[must_use]
    pub fn pod_name(&self) -> String {
        format!("{}-{}", self.manifest.daemonset["metadata"]["name"].as_str().unwrap_or("xlane"), self.node_name)
    }

    /// podman's name for the pod's container `container`.
    #[must_use]
    pub fn container_name(&self, container: &str) -> String {
        format!("{}-{container}", self.pod_name())
    }

    /// `podman run` arguments (after `run`) for the manifest's container `name`, with
    /// `command` instead of the manifest's where given and `extra_mounts` (host path,
    /// container path) added.
    ///
    /// # Errors
    /// The container, a volume or a ConfigMap key it names is missing; files for the
    /// volumes cannot be written.
    pub fn run_args(
        &self,
        name: &str,
        command: Option<&[String]>,
        extra_mounts: &[(PathBuf, String)],
    ) -> io::Result<Vec<String>> {
        let spec = self.manifest.pod_spec();
        let c = self.manifest.container(name)?;
        let mut args = vec!["--name".to_owned(), self.container_name(name), "--pull".into(), "never".into()];
        if spec["hostNetwork"] == true {
            args.push(format!("--network=ns:{}", self.netns.display()));
        }
        args.extend(security_args(&c["securityContext"]));
        for e in c["env"].as_array().into_iter().flatten() {
            if let Some(value) = self.env_value(e)? {
                args.push("--env".into());
                args.push(format!("{}={value}", e["name"].as_str().unwrap_or_default()));
            }
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let source = self.volume_source(m["name"].as_str().unwrap_or_default())?;
            let ro = if m["readOnly"] == true { ":ro" } else { "" };
            args.push(format!("--volume={}:{}{ro}", source.display(), m["mountPath"].as_str().unwrap_or_default()));
        }
        for (host, path) in extra_mounts {
            args.push(format!("--volume={}:{path}", host.display()));
        }
        args.push(c["image"].as_str().unwrap_or_default().to_owned());
        // `command` replaces the image's entrypoint and `args` its CMD; the xlane image
        // has no entrypoint, so both follow the image name.
        match command {
            Some(cmd) => args.extend(cmd.iter().cloned()),
            None => args.extend(strings(&c["command"]).into_iter().chain(strings(&c["args"]))),
        }
        Ok(args)
    }

    fn env_value(&self, e: &Value) -> io::Result<Option<String>> {
        if let Some(v) = e["value"].as_str() {
            return Ok(Some(v.to_owned()));
        }
        let from = &e["valueFrom"];
        if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
            let meta = &self.manifest.daemonset["metadata"];
            return match field {
                "spec.nodeName" => Ok(Some(self.node_name.clone())),
                "metadata.name" => Ok(Some(self.pod_name())),
                "metadata.namespace" => Ok(meta["namespace"].as_str().map(str::to_owned)),
                other => Err(io::Error::other(format!("fieldRef {other} is not known to this test"))),
            };
        }
        let key_ref = &from["configMapKeyRef"];
        if let Some(key) = key_ref["key"].as_str() {
            return match self.manifest.config_value(key) {
                Some(v) => Ok(Some(v.to_owned())),
                None if key_ref["optional"] == true => Ok(None),
                None => Err(io::Error::other(format!("the ConfigMap has no key {key}"))),
            };
        }
        Err(io::Error::other(format!("env {e}: no value this test can give")))
    }

    fn volume_source(&self, volume: &str) -> io::Result<PathBuf> {
        let volumes = self.manifest.pod_spec()["volumes"].as_array().cloned().unwrap_or_default();
        let v = volumes
            .iter()
            .find(|v| v["name"] == volume)
            .ok_or_else(|| io::Error::other(format!("no volume {volume}")))?;
        if let Some(path) = v["hostPath"]["path"].as_str() {
            // DirectoryOrCreate, as every hostPath of the manifest is.
            let dir = self.host_path(path);
            std::fs::create_dir_all(&dir)?;
            return Ok(dir);
        }
        if !v["configMap"].is_null() {
            let dir = self.dir.join("configmap").join(volume);
            std::fs::create_dir_all(&dir)?;
            for (key, text) in &self.manifest.config {
                std::fs::write(dir.join(key), text.as_str().unwrap_or_default())?;
            }
            return Ok(dir);
        }
        Err(io::Error::other(format!("volume {volume}: neither hostPath nor configMap")))
    }

    /// Run init container `name` to its end, as kubelet does before the others start.
    ///
    /// # Errors
    /// It failed (its output is in the message).
    pub fn run_init(&self, name: &str) -> io::Result<()> {
        let mut args = vec!["run".to_owned(), "--rm".into()];
        args.extend(self.run_args(name, None, &[])?);
        self.podman.ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).map(drop)
    }

    /// Start container `name` in the background (see [`NodePod::run_args`]).
    ///
    /// # Errors
    /// podman failed.
    pub fn start(&self, name: &str, command: Option<&[String]>, extra_mounts: &[(PathBuf, String)]) -> io::Result<()> {
        let mut args = vec!["run".to_owned(), "--detach".into()];
        args.extend(self.run_args(name, command, extra_mounts)?);
        self.podman.ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).map(drop)
    }

    /// Container `name`'s output so far.
    #[must_use]
    pub fn logs(&self, name: &str) -> String {
        self.podman.run(&["logs", &self.container_name(name)]).map_or_else(
            |e| e.to_string(),
            |o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        )
    }

    /// Whether container `name`'s `probe` (`livenessProbe`, `readinessProbe`) passes now.
    ///
    /// # Errors
    /// The manifest has no such probe, or one of a kind this test does not run.
    pub fn probe(&self, name: &str, probe: &str) -> io::Result<bool> {
        let p = &self.manifest.container(name)?[probe];
        if let Some(cmd) = p["exec"]["command"].as_array() {
            let mut args = vec!["exec".to_owned(), self.container_name(name)];
            args.extend(cmd.iter().filter_map(Value::as_str).map(str::to_owned));
            return Ok(self.podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>())?.status.success());
        }
        let http = &p["httpGet"];
        if let (Some(port), Some(path)) = (http["port"].as_u64(), http["path"].as_str()) {
            let host = http["host"].as_str().unwrap_or("127.0.0.1").to_owned();
            return xlane_netlink::in_netns(&self.netns, || http_ok(&host, port, path))?;
        }
        Err(io::Error::other(format!("{name} {probe}: not an exec or httpGet probe")))
    }
}

/// Whether `GET http://host:port/path` answers 2xx or 3xx, as kubelet's HTTP probe.
fn http_ok(host: &str, port: u64, path: &str) -> io::Result<bool> {
    let Ok(mut s) = TcpStream::connect(format!("{host}:{port}")) else { return Ok(false) };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(matches!(&head[9..10], b"2" | b"3"))
}

/// podman options for a container's `securityContext`.
fn security_args(sc: &Value) -> Vec<String> {
    let mut args = Vec::new();
    if sc["privileged"] == true {
        args.push("--privileged".into());
    }
    for cap in strings(&sc["capabilities"]["drop"]) {
        args.push(format!("--cap-drop={cap}"));
    }
    for cap in strings(&sc["capabilities"]["add"]) {
        args.push(format!("--cap-add={cap}"));
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".into());
    }
    let seccomp = &sc["seccompProfile"]["type"];
    if seccomp.is_null() || seccomp == "Unconfined" {
        args.push("--security-opt=seccomp=unconfined".into());
    }
    args
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest as run on node `n1` (netns `/run/netns/n1`), files under `dir`.
    fn translated(dir: &std::path::Path, edit: impl FnOnce(&mut Manifest), container: &str) -> Vec<String> {
        let podman = Podman::new(&dir.join("podman")).unwrap();
        let mut manifest = Manifest::read().unwrap();
        edit(&mut manifest);
        let pod = NodePod {
            manifest,
            podman: &podman,
            netns: "/run/netns/n1".into(),
            node_name: "n1".into(),
            dir: dir.into(),
        };
        pod.run_args(container, None, &[]).unwrap()
    }

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xlane-daemonset-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn xlaned_runs_on_the_node_network_with_the_manifests_capabilities_and_mounts() {
        let dir = scratch("xlaned");
        let args = translated(&dir, |m| drop(m.config.insert("uplink".into(), "eth9".into())), "xlaned");
        let run_xlane = format!("--volume={}:/run/xlane", dir.join("host/run/xlane").display());
        for expected in [
            "--network=ns:/run/netns/n1",
            "--cap-drop=ALL",
            "--cap-add=NET_ADMIN",
            "--cap-add=NET_RAW",
            "--cap-add=BPF",
            "--cap-add=PERFMON",
            "--cap-add=IPC_LOCK",
            "--security-opt=no-new-privileges",
            "--security-opt=seccomp=unconfined",
            "XLANE_UPLINK=eth9",
            "XLANE_SOCKET=/run/xlane/xlaned.sock",
            &run_xlane,
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(!args.iter().any(|a| a == "--privileged"), "{args:?}");
        assert!(dir.join("host/run/xlane").is_dir(), "hostPath DirectoryOrCreate");
        let image = args.iter().position(|a| a == "localhost/xlane:0.1.0").unwrap();
        assert_eq!(args[image + 1..image + 3], ["/bin/sh", "-c"], "the manifest's command follows the image");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_agent_gets_its_pod_fields_and_the_config_map_as_files() {
        let dir = scratch("agent");
        let args = translated(&dir, |_| {}, "xlane-agent");
        let config = format!("--volume={}:/etc/kube-flannel:ro", dir.join("configmap/xlane-cfg").display());
        for expected in ["NODE_NAME=n1", "POD_NAME=xlane-n1", "POD_NAMESPACE=kube-xlane", "--cap-drop=ALL", &config] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--cap-add")), "{args:?}");
        let written = std::fs::read_to_string(dir.join("configmap/xlane-cfg/net-conf.json")).unwrap();
        assert_eq!(Some(written.as_str()), Manifest::read().unwrap().config_value("net-conf.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_absent_optional_config_map_key_sets_no_variable() {
        let dir = scratch("optional");
        let args = translated(&dir, |m| drop(m.config.remove("uplink")), "xlaned");
        assert!(!args.iter().any(|a| a.starts_with("XLANE_UPLINK=")), "{args:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
