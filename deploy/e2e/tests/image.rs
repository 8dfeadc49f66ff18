//! The xlane image, built offline by `deploy/build-image.sh`, run by podman on a lab node
//! the way `deploy/kubernetes/xlane.yaml`'s DaemonSet runs it (host network, its mounts,
//! environment, capabilities and probes, all read from the manifest): its init step
//! installs the plugin and conflist, `xlaned` and `xlane-agent` come up under exactly the
//! manifest's capabilities, and a pod attached through the installed plugin talks to a
//! pod on another node.
//!
//! One deliberate difference: no API server can run here (PLATFORM.md), so the agent
//! runs the manifest's container with `--datastore file` on the directory the lab's other
//! node uses, instead of `--datastore kube`.

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xlane_agent::api::{AgentClient, AgentOp, AgentReply};
use xlane_api::{Client, Op, Reply, Table};
use xlane_deploy_e2e::daemonset::{Manifest, NodePod};
use xlane_deploy_e2e::image;
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::podman::Podman;
use xlane_netlab::runtime::{Container, Runtime};
use xlane_netlab::{Netns, privileged_with};

/// Wait until every probe of `probes` ((container, probe) pairs) passes.
fn wait_for_probes(pod: &NodePod<'_>, probes: &[(&str, &str)], within: Duration) {
    let t0 = Instant::now();
    for &(container, probe) in probes {
        while !pod.probe(container, probe).unwrap() {
            assert!(
                t0.elapsed() < within,
                "{container}'s {probe} still failing after {within:?}; its log:\n{}",
                pod.logs(container)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The capability bits a container's `securityContext.capabilities.add` names (its
/// only capabilities: the manifest drops ALL).
fn capability_mask(container: &Value) -> u64 {
    // linux/capability.h
    let bit = |name: &str| match name {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "IPC_LOCK" => 14,
        "SYS_ADMIN" => 21,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other}: add its number here"),
    };
    let added = container["securityContext"]["capabilities"]["add"].as_array().cloned().unwrap_or_default();
    added.iter().map(|c| 1u64 << bit(c.as_str().unwrap())).sum()
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_attaches_a_pod() {
    // portmap is chained in the manifest's conflist; it runs iptables.
    let tools = [
        "/usr/bin/podman",
        "/usr/bin/buildah",
        "/usr/sbin/runc",
        "/bin/busybox",
        "/usr/lib/cni/portmap",
        "/usr/sbin/iptables",
    ];
    if !privileged_with("the_image_runs_as_the_daemonset_runs_it_and_attaches_a_pod", &tools) {
        return;
    }
    let mut manifest = Manifest::read().unwrap();
    // A lab node has no default route: its uplink is named in the ConfigMap, as the
    // manifest tells operators to do when the default route's interface is not it.
    manifest.config.insert("uplink".into(), "eth0".into());
    let netconf = manifest.config_value("net-conf.json").unwrap().to_owned();
    // Node 0 runs the workspace's binaries (the lab's usual node), node 1 the image.
    let opts = ClusterOptions { netconf, xlane_nodes: Some(1), ..ClusterOptions::default() };
    let cluster = Cluster::start("xi-img", 2, &opts).unwrap();
    let node1 = &cluster.lab.nodes[1].ns;
    let podman = Podman::new(&cluster.dir.join("podman")).unwrap();
    let xlaned = manifest.container("xlaned").unwrap();
    image::build(&podman, xlaned["image"].as_str().unwrap(), None).unwrap();

    let pod = NodePod {
        manifest: manifest.clone(),
        podman: &podman,
        netns: node1.path().into(),
        node_name: "node1".into(),
        dir: cluster.dir.join("node1"),
    };
    pod.run_init("install-cni").unwrap();
    pod.start("xlaned", None, &[]).unwrap();
    let store = cluster.dir.join("store");
    let store_arg = store.to_string_lossy().into_owned();
    // The manifest's command with the file datastore in place of kube.
    let mut agent_command: Vec<String> = manifest.container("xlane-agent").unwrap()["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let datastore = agent_command.iter().position(|a| a == "--datastore").unwrap() + 1;
    assert_eq!(agent_command[datastore], "kube");
    agent_command[datastore] = "file".into();
    agent_command.extend(["--store-dir".into(), store_arg.clone()]);
    pod.start("xlane-agent", Some(&agent_command), &[(store.clone(), store_arg.clone())]).unwrap();
    let probes = [
        ("xlaned", "livenessProbe"),
        ("xlaned", "readinessProbe"),
        ("xlane-agent", "livenessProbe"),
        ("xlane-agent", "readinessProbe"),
    ];
    wait_for_probes(&pod, &probes, Duration::from_secs(30));
    // A veth uplink has no AF_XDP zero-copy: xlaned reads its VXLAN traffic through UDP
    // sockets and attaches no program to it.
    assert!(!node1.has_xdp("eth0").unwrap(), "no XDP program on a veth uplink");
    assert!(node1.udp_listeners(8472).unwrap() > 0, "xlaned reads the uplink through UDP sockets");
    // Each daemon holds exactly the manifest's capabilities, cannot gain more, and has no
    // seccomp filter (kubelet's default for a container without a seccompProfile): the
    // agent as PID 1 of its container, xlaned as the child of its container's PID 1,
    // xlane-supervise (xlaned's shell execs it), which holds the same.
    let supervised = podman.ok(&["exec", &pod.container_name("xlaned"), "cat", "/proc/1/task/1/children"]).unwrap();
    let xlaned_pid = supervised.split_whitespace().next().expect("xlane-supervise runs xlaned").to_owned();
    for (container, program, pid) in [
        ("xlaned", "xlane-supervise", "1"),
        ("xlaned", "xlaned", xlaned_pid.as_str()),
        ("xlane-agent", "xlane-agent", "1"),
    ] {
        let status =
            podman.ok(&["exec", &pod.container_name(container), "cat", &format!("/proc/{pid}/status")]).unwrap();
        let field =
            |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_owned();
        // The kernel's comm is at most 15 bytes.
        assert!(program.starts_with(&field("Name:")), "{status}");
        let manifest_caps = capability_mask(manifest.container(container).unwrap());
        assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), manifest_caps, "{container}: {status}");
        assert_eq!(field("NoNewPrivs:"), "1", "{container}");
        assert_eq!(field("Seccomp:"), "0", "{container}");
    }

    // What the init container installed: the image's plugin in both bin dirs, the
    // ConfigMap's conflist.
    for dir in ["/opt/cni/bin", "/usr/lib/cni"] {
        let plugin = pod.host_path(dir).join("xlane");
        assert!(plugin.is_file(), "{} installed", plugin.display());
    }
    let installed = std::fs::read_to_string(pod.host_path("/etc/cni/net.d/10-xlane.conflist")).unwrap();
    let mut conflist: Value = serde_json::from_str(&installed).unwrap();
    let configured: Value = serde_json::from_str(manifest.config_value("cni-conf.json").unwrap()).unwrap();
    assert_eq!(conflist, configured);
    // The runtime runs the plugin on the host, where the DaemonSet's hostPath /run/xlane
    // (mounted at the same path in the containers) holds the agent's socket: on this
    // node that host path is under its host root.
    let socket = conflist["plugins"][0]["agentSocket"].as_str().unwrap().to_owned();
    assert!(socket.starts_with("/run/xlane/"), "{socket}");
    let host_socket = pod.host_path(&socket);
    conflist["plugins"][0]["agentSocket"] = host_socket.to_string_lossy().into_owned().into();
    let runtime = Runtime::new(vec![pod.host_path("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);

    let pod_ns = Netns::new("xi-img-pod").unwrap();
    let container = Container::in_netns(&format!("img-{}", std::process::id()), &pod_ns);
    let result = runtime.add(node1, &conflist, &container).unwrap();
    let ip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    let other = cluster.attach_pod(0, "p0").unwrap();
    pod_ns.ping(&other.ip.to_string(), 3).unwrap();
    other.ns.ping(&ip, 3).unwrap();

    // DEL gives back the address, the veth and xlaned's port.
    runtime.del(node1, &conflist, &container, Some(&result)).unwrap();
    let mut agent = AgentClient::connect(&host_socket).unwrap();
    match agent.call(AgentOp::Status).unwrap() {
        AgentReply::Status { allocations, .. } => assert_eq!(allocations, vec![]),
        other => panic!("agent status: {other:?}"),
    }
    let mut xlaned = Client::connect(pod.host_path("/run/xlane/xlaned.sock")).unwrap();
    match xlaned.call(Op::Dump { table: Table::Endpoints }).unwrap() {
        Reply::Endpoints { endpoints } => assert!(endpoints.iter().all(|e| e.role != "pod"), "{endpoints:?}"),
        other => panic!("xlaned dump: {other:?}"),
    }
    let links = node1.ip(&["-o", "link", "show"]).unwrap();
    let pod_veths: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split('@').next())
        .filter(|n| n.starts_with("xl") && !n.starts_with("xlane0"))
        .collect();
    assert_eq!(pod_veths, Vec::<&str>::new(), "no pod veth left");
    cluster.detach_pod(&other).unwrap();
}
