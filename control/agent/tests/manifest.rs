//! `deploy/kubernetes/xlane.yaml`, read the way an operator would check it: valid against
//! the Kubernetes schemas (PyPI `kubernetes-validate --strict`, offline), flannel's RBAC,
//! a `net-conf.json` this agent accepts, a conflist for the plugin on the agent's socket,
//! and a DaemonSet whose containers meet on one socket directory.

use serde_json::{Value, json};
use std::process::Command;
use xlane_agent::netconf::NetConfig;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes/xlane.yaml");

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

fn one(kind: &str) -> Value {
    let mut found: Vec<Value> = documents().into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found.remove(0)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{list} {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("env {name}"))
}

fn mount_path(c: &Value, volume: &str) -> Option<String> {
    c["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
}

#[test]
fn the_manifest_is_valid_against_the_kubernetes_schemas() {
    let found = Command::new("kubernetes-validate").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "kubernetes-validate missing (CI=true: not skipping)");
        eprintln!("SKIPPED: kubernetes-validate missing (scripts/test.sh installs it with pip)");
        return;
    }
    // The newest schemas it ships, and an older release still in support.
    for version in [None, Some("1.30.0")] {
        let mut cmd = Command::new("kubernetes-validate");
        cmd.args(["--strict", "--quiet"]);
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd.arg(MANIFEST).output().unwrap();
        assert!(
            out.status.success(),
            "{version:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_resource_is_there_in_one_namespace() {
    let kinds: Vec<String> = documents().iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]);
    let ns = one("Namespace")["metadata"]["name"].clone();
    for kind in ["ServiceAccount", "ConfigMap", "DaemonSet"] {
        assert_eq!(one(kind)["metadata"]["namespace"], ns, "{kind}");
    }
    let binding = one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], one("ClusterRole")["metadata"]["name"]);
    let sa = one("ServiceAccount");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}])
    );
    assert_eq!(one("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"], sa["metadata"]["name"]);
}

#[test]
fn the_cluster_role_is_flannels() {
    // kube-flannel.yml's ClusterRole (and nothing more): what store/kube.rs calls.
    let mut rules: Vec<(String, String, Vec<String>)> = Vec::new();
    for rule in one("ClusterRole")["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                let mut verbs: Vec<String> =
                    rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
                verbs.sort();
                rules.push((group.as_str().unwrap().into(), resource.as_str().unwrap().into(), verbs));
            }
        }
    }
    rules.sort();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            (String::new(), "nodes".into(), s(&["get", "list", "watch"])),
            (String::new(), "nodes/status".into(), s(&["patch"])),
            (String::new(), "pods".into(), s(&["get"])),
        ]
    );
}

#[test]
fn the_config_map_holds_a_network_config_the_agent_accepts_and_the_plugins_conflist() {
    let cm = one("ConfigMap");
    let net = NetConfig::parse(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    // flannel's keys with flannel's defaults, so flannel nodes share the overlay.
    assert_eq!(net.network, "10.244.0.0/16".parse().unwrap());
    assert_eq!((net.subnet_len, net.vni, net.port), (24, 1, 8472));
    let raw: Value = serde_json::from_str(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(raw["Backend"]["Type"], "vxlan");

    // xlaned steers the same cluster CIDR to the engine.
    let ds = one("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(env(container(pod, "containers", "xlaned"), "XLANE_CLUSTER_CIDR")["value"], net.network.to_string());

    let list: Value = serde_json::from_str(cm["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(list["cniVersion"], "1.0.0", "containerd 1.6 and podman 4 refuse 1.1.0");
    assert_eq!(list["plugins"][0]["type"], "xlane");
    // The plugin's agent socket is the one the agent serves.
    let agent = container(pod, "containers", "xlane-agent");
    assert_eq!(list["plugins"][0]["agentSocket"], env(agent, "XLANE_AGENT_SOCKET")["value"]);
}

#[test]
fn the_daemon_set_runs_both_daemons_on_one_socket_dir_of_the_host() {
    let ds = one("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(pod["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists"));
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0, "two xlaned cannot share a node");

    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    assert_eq!(volume("run-xlane")["hostPath"]["path"], "/run/xlane");
    let xlaned = container(pod, "containers", "xlaned");
    let agent = container(pod, "containers", "xlane-agent");
    for c in [xlaned, agent] {
        assert_eq!(mount_path(c, "run-xlane").as_deref(), Some("/run/xlane"), "{}", c["name"]);
        assert_eq!(env(c, "XLANE_SOCKET")["value"], "/run/xlane/xlaned.sock", "{}", c["name"]);
    }
    // The agent's IPAM outlives its container.
    assert_eq!(volume("var-lib-xlane")["hostPath"]["path"], "/var/lib/xlane");
    assert!(env(agent, "XLANE_AGENT_STATE_DIR")["value"].as_str().unwrap().starts_with("/var/lib/xlane/"));

    // The kube datastore, this node from the downward API, net-conf.json where the
    // agent looks for it by default.
    assert_eq!(agent["command"], json!(["xlane-agent", "--datastore", "kube"]));
    assert_eq!(env(agent, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(env(agent, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env(agent, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    let conf = env(agent, "XLANE_AGENT_NETWORK_CONFIG")["value"].as_str().unwrap();
    assert_eq!(conf, "/etc/kube-flannel/net-conf.json");
    assert_eq!(mount_path(agent, "xlane-cfg").as_deref(), Some("/etc/kube-flannel"));
    assert_eq!(volume("xlane-cfg")["configMap"]["name"], one("ConfigMap")["metadata"]["name"]);

    // Exactly AF_XDP's capabilities for xlaned, none for the agent, neither privileged.
    let caps = |c: &Value| c["securityContext"]["capabilities"].clone();
    assert_eq!(caps(xlaned), json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "IPC_LOCK"]}));
    assert_eq!(caps(agent), json!({"drop": ["ALL"]}));
    for c in [xlaned, agent] {
        assert_ne!(c["securityContext"]["privileged"], true);
        assert!(c["livenessProbe"].is_object() && c["readinessProbe"].is_object(), "{}", c["name"]);
    }
    // Probes on what the daemons really serve.
    assert_eq!(xlaned["readinessProbe"]["httpGet"]["port"], 9472);
    assert_eq!(env(xlaned, "XLANE_METRICS")["value"], "127.0.0.1:9472");
    let live = xlaned["livenessProbe"]["exec"]["command"].to_string();
    assert!(live.contains("xlanectl") && live.contains("/run/xlane/xlaned.sock"), "{live}");

    // The init container installs the plugin into both bin dirs and the conflist from
    // the ConfigMap.
    let init = container(pod, "initContainers", "install-cni");
    let args: Vec<&str> = init["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args[0].ends_with("install.sh"));
    for (dir, volume_name) in
        [("/opt/cni/bin", "cni-bin"), ("/usr/lib/cni", "cni-bin-debian"), ("/etc/cni/net.d", "cni-conf")]
    {
        assert_eq!(volume(volume_name)["hostPath"]["path"], dir);
        let at = mount_path(init, volume_name).unwrap();
        assert!(args.contains(&at.as_str()), "{at} not given to install.sh");
    }
    let cfg = mount_path(init, "xlane-cfg").unwrap();
    assert!(args.contains(&format!("{cfg}/cni-conf.json").as_str()));
}
