//! The plugin driven exactly as a runtime drives it (environment + stdin), on two lab
//! nodes each running xlaned and xlane-agent (as root, in namespaces the test creates).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use xlane_netlab::process::{Proc, wait_for};
use xlane_netlab::{Lab, Netns, privileged, workspace_binary};

struct Node {
    _xlaned: Proc,
    agent: Proc,
    agent_sock: PathBuf,
}

struct Setup {
    nodes: Vec<Node>,
    lab: Lab,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(prefix: &str) -> Setup {
    let lab = Lab::new(prefix, 2).unwrap();
    let dir = std::env::temp_dir().join(format!("xlane-cni-{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join("store/config"), r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    let mut nodes = Vec::new();
    for (i, n) in lab.nodes.iter().enumerate() {
        let xs = dir.join(format!("xlaned{i}.sock"));
        let args: Vec<String> = vec!["--uplink".into(), "eth0".into(), "--socket".into(), xs.to_string_lossy().into()];
        let xlaned = Proc::start(&n.ns, &workspace_binary("xlaned"), &args, dir.join(format!("xlaned{i}.log")));
        wait_for("xlaned", Duration::from_secs(10), || xs.exists());
        let agent_sock = dir.join(format!("agent{i}.sock"));
        let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
        let args: Vec<String> = vec![
            "--store-dir".into(),
            p("store"),
            "--state-dir".into(),
            p(&format!("state{i}")),
            "--xlaned-socket".into(),
            xs.to_string_lossy().into(),
            "--socket".into(),
            agent_sock.to_string_lossy().into(),
            "--lease-ttl".into(),
            "30".into(),
        ];
        let agent = Proc::start_here(&workspace_binary("xlane-agent"), &args, dir.join(format!("agent{i}.log")));
        wait_for("agent", Duration::from_secs(15), || {
            xlane_agent::api::AgentClient::connect(&agent_sock)
                .and_then(|mut c| c.call(xlane_agent::api::AgentOp::Status))
                .is_ok_and(|r| {
                    matches!(r, xlane_agent::api::AgentReply::Status { lease: Some(_), dataplane_synced: true, .. })
                })
        });
        nodes.push(Node { _xlaned: xlaned, agent, agent_sock });
    }
    Setup { nodes, lab, dir }
}

/// Run the plugin in `ns` (the node) as a runtime would.
fn cni(
    ns: &Netns,
    command: &str,
    cid: &str,
    netns: Option<&str>,
    conf: &serde_json::Value,
) -> (bool, serde_json::Value) {
    let mut c = ns.command(env!("CARGO_BIN_EXE_xlane"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default");
    if let Some(n) = netns {
        c.env("CNI_NETNS", n);
    }
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (out.status.success(), v)
}

fn conf(version: &str, agent: &Path) -> serde_json::Value {
    serde_json::json!({"cniVersion": version, "name": "xlane", "type": "xlane", "agentSocket": agent, "capabilities": {"portMappings": true}})
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.command("ping").args(["-c", "2", "-i", "0.2", "-W", "2", dst]).output().expect("ping").status.success()
}

fn ip_of(result: &serde_json::Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

#[test]
fn add_check_del_across_versions_and_nodes() {
    if !privileged("add_check_del_across_versions_and_nodes") {
        return;
    }
    let s = setup("xc-add");
    let (n0, n1) = (&s.lab.nodes[0].ns, &s.lab.nodes[1].ns);
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("xc-pod{i}")).unwrap()).collect();
    let path = |p: &Netns| format!("/run/netns/{}", p.name());
    let (ok, a) = cni(n0, "ADD", "cid-a", Some(&path(&pods[0])), &conf("1.0.0", &s.nodes[0].agent_sock));
    assert!(ok, "{a}");
    assert_eq!(a["cniVersion"], "1.0.0");
    assert_eq!(a["interfaces"][1]["sandbox"], path(&pods[0]));
    let (ok, b) = cni(n1, "ADD", "cid-b", Some(&path(&pods[1])), &conf("0.4.0", &s.nodes[1].agent_sock));
    assert!(ok, "{b}");
    assert_eq!(b["ips"][0]["version"], "4");
    let (ok, c) = cni(n0, "ADD", "cid-c", Some(&path(&pods[2])), &conf("1.1.0", &s.nodes[0].agent_sock));
    assert!(ok, "{c}");
    assert_eq!(c["interfaces"][1]["mtu"], 1450);
    // The first packet after ADD goes through: ADD returned only once the port was ready.
    assert!(ping(&pods[0], &ip_of(&b)), "pod to pod across nodes");
    assert!(ping(&pods[0], &ip_of(&c)), "pod to pod on one node");
    match xlane_agent::api::AgentClient::connect(&s.nodes[0].agent_sock)
        .unwrap()
        .call(xlane_agent::api::AgentOp::Status)
        .unwrap()
    {
        xlane_agent::api::AgentReply::Status { allocations, .. } => {
            let a = allocations.iter().find(|a| a.container_id == "cid-a").expect("cid-a allocated");
            assert_eq!(a.netns.as_deref(), Some(path(&pods[0]).as_str()), "the agent records the pod's namespace");
        }
        r => panic!("{r:?}"),
    }
    let (ok, v) = cni(n0, "CHECK", "cid-a", Some(&path(&pods[0])), &conf("1.0.0", &s.nodes[0].agent_sock));
    assert!(ok, "{v}");
    let (ok, v) = cni(n0, "STATUS", "", None, &conf("1.1.0", &s.nodes[0].agent_sock));
    assert!(ok, "{v}");
    // GC keeping only a: c's address is released and can be handed out again.
    let mut gc = conf("1.1.0", &s.nodes[0].agent_sock);
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "cid-a", "ifname": "eth0"}]);
    let (ok, v) = cni(n0, "GC", "", None, &gc);
    assert!(ok, "{v}");
    // DEL: twice, and after the namespace is gone, and for a container never seen.
    for _ in 0..2 {
        let (ok, v) = cni(n0, "DEL", "cid-a", Some(&path(&pods[0])), &conf("1.0.0", &s.nodes[0].agent_sock));
        assert!(ok, "{v}");
    }
    assert!(
        n0.ip(&["link", "show", "dev", &xlane_cni::protocol::host_ifname("cid-a", "eth0")]).is_err(),
        "veth removed"
    );
    let gone = Netns::new("xc-gone").unwrap();
    let gone_path = path(&gone);
    let (ok, _) = cni(n1, "ADD", "cid-g", Some(&gone_path), &conf("1.0.0", &s.nodes[1].agent_sock));
    assert!(ok);
    drop(gone);
    let (ok, v) = cni(n1, "DEL", "cid-g", Some(&gone_path), &conf("1.0.0", &s.nodes[1].agent_sock));
    assert!(ok, "DEL after the namespace is gone: {v}");
    let (ok, v) = cni(n1, "DEL", "never-seen", None, &conf("1.0.0", &s.nodes[1].agent_sock));
    assert!(ok, "{v}");
    let _ = &s.nodes[1].agent;
}

#[test]
fn failures_are_spec_errors_and_leave_nothing() {
    if !privileged("failures_are_spec_errors_and_leave_nothing") {
        return;
    }
    let mut s = setup("xc-fail");
    let n0 = &s.lab.nodes[0].ns;
    let sock = s.nodes[0].agent_sock.clone();
    let code = |r: (bool, serde_json::Value)| {
        assert!(!r.0, "expected failure: {}", r.1);
        assert!(r.1["msg"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.1);
        r.1["code"].as_u64().unwrap()
    };
    let allocations = |sock: &Path| match xlane_agent::api::AgentClient::connect(sock)
        .unwrap()
        .call(xlane_agent::api::AgentOp::Status)
        .unwrap()
    {
        xlane_agent::api::AgentReply::Status { allocations, .. } => allocations.len(),
        r => panic!("{r:?}"),
    };
    // A missing namespace.
    assert_eq!(code(cni(n0, "ADD", "cid-x", Some("/run/netns/does-not-exist"), &conf("1.0.0", &sock))), 3);
    // An interface that already exists in the pod.
    let pod = Netns::new("xc-busy").unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]).unwrap();
    let p = format!("/run/netns/{}", pod.name());
    assert_eq!(code(cni(n0, "ADD", "cid-busy", Some(&p), &conf("1.0.0", &sock))), 7);
    assert!(
        n0.ip(&["link", "show", "dev", &xlane_cni::protocol::host_ifname("cid-busy", "eth0")]).is_err(),
        "no veth left"
    );
    assert_eq!(allocations(&sock), 0, "no address left");
    // Protocol errors.
    assert_eq!(code(cni(n0, "ADD", "cid-v", Some(&p), &conf("0.3.1", &sock))), 1);
    assert_eq!(code(cni(n0, "ADD", "bad/id", Some(&p), &conf("1.0.0", &sock))), 4);
    assert_eq!(code(cni(n0, "STATUS", "", None, &conf("1.0.0", &sock))), 1);
    let (ok, v) = cni(n0, "VERSION", "", None, &serde_json::json!({"cniVersion": "1.0.0"}));
    assert!(ok && v["supportedVersions"].as_array().unwrap().len() == 3, "{v}");
    // The agent not running: try again later; STATUS says not available.
    s.nodes[0].agent.stop(nix::sys::signal::Signal::SIGTERM);
    let fresh = Netns::new("xc-noagent").unwrap();
    let fp = format!("/run/netns/{}", fresh.name());
    assert_eq!(code(cni(n0, "ADD", "cid-n", Some(&fp), &conf("1.0.0", &sock))), 11);
    assert!(n0.ip(&["link", "show", "dev", &xlane_cni::protocol::host_ifname("cid-n", "eth0")]).is_err());
    assert_eq!(code(cni(n0, "STATUS", "", None, &conf("1.1.0", &sock))), 50);
    let _ = Ipv4Addr::LOCALHOST;
}
