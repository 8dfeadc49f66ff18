//! Pods created the way kubelet creates them, through containerd's CRI (Debian's
//! containerd 1.6, CRI plugin on), on two lab nodes that each run their own containerd
//! (own root, state, sockets and CNI directories, the DaemonSet's conflist pointed at the
//! node's agent) beside xlaned and xlane-agent. The pause and busybox images are built
//! here and imported with `ctr`; nothing is pulled. The xlane image's archive from
//! `deploy/build-image.sh --save` imports under the tag the DaemonSet names.
//!
//! Pods on both nodes ping each other and move 6.9 MB over TCP, checked with sha256 on
//! both ends; after a containerd crash and restart, and after an agent restart, the
//! running pods still do; `StopPodSandbox` + `RemovePodSandbox` leave no address, veth,
//! dataplane port, pod namespace, shim or shim socket behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use xlane_deploy_e2e::containerd::Containerd;
use xlane_deploy_e2e::cri::{Cri, Sandbox};
use xlane_deploy_e2e::daemonset::Manifest;
use xlane_deploy_e2e::image;
use xlane_deploy_e2e::local_images::{self, BUSYBOX, PAUSE};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::podman::Podman;
use xlane_netlab::{privileged_with, workspace_binary};

const TOOLS: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/bin/ctr",
    "/usr/sbin/runc",
    "/usr/bin/buildah",
    "/usr/bin/podman",
    "/usr/bin/gcc",
    "/bin/busybox",
    "/usr/lib/cni/loopback",
    "/usr/lib/cni/portmap",
    "/usr/sbin/iptables",
];

/// One node's containerd and a CRI client of it. Dropping it removes every sandbox
/// through the CRI (as kubelet would), then stops containerd.
struct CriNode {
    cri: Cri,
    containerd: Containerd,
}

impl CriNode {
    /// containerd for node `i` with the DaemonSet's conflist pointed at the node's
    /// agent, the workspace's plugin, and both images imported.
    fn start(cluster: &Cluster, i: usize, manifest: &Manifest, images: &[PathBuf]) -> Self {
        let mut conflist: serde_json::Value =
            serde_json::from_str(manifest.config_value("cni-conf.json").unwrap()).unwrap();
        conflist["plugins"][0]["agentSocket"] = cluster.nodes[i].agent_socket.to_string_lossy().into_owned().into();
        // containerd 1.6 takes one bin_dir: xlane, and from Debian's plugins portmap
        // (chained in the conflist) and loopback (containerd brings up the pod's lo).
        let plugins = [
            ("xlane", workspace_binary("xlane")),
            ("portmap", PathBuf::from("/usr/lib/cni/portmap")),
            ("loopback", PathBuf::from("/usr/lib/cni/loopback")),
        ];
        let dir = cluster.dir.join(format!("containerd{i}"));
        let mut containerd = Containerd::new(&dir, &cluster.lab.nodes[i].ns, &plugins, &conflist, PAUSE).unwrap();
        containerd.start().unwrap();
        for image in images {
            containerd.import(image).unwrap();
        }
        let mut cri = Cri::connect(&containerd.socket, &dir.join("logs")).unwrap();
        cri.wait_ready(Duration::from_secs(20)).unwrap();
        Self { cri, containerd }
    }

    /// Kill containerd by PID and start it again; its pods keep running meanwhile.
    fn crash_and_restart_containerd(&mut self) {
        self.containerd.kill();
        self.containerd.start().unwrap();
        self.cri = Cri::connect(&self.containerd.socket, &self.containerd.dir.join("logs")).unwrap();
        self.cri.wait_ready(Duration::from_secs(20)).unwrap();
    }

    fn exec(&mut self, container: &str, cmd: &[&str], timeout: Duration) -> String {
        let (code, out, err) = self.cri.exec(container, cmd, timeout).unwrap();
        assert_eq!(code, 0, "{cmd:?} exited {code}: {out}{err}");
        out
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        for id in self.cri.pod_ids().unwrap_or_default() {
            if let Err(e) = self.cri.remove_pod(&id) {
                eprintln!("removing sandbox {id}: {e}");
            }
        }
    }
}

/// A pod with one busybox container.
struct Pod {
    sandbox: Sandbox,
    container: String,
    ip: String,
}

/// The call's value; its failure with containerd's log.
fn or_log<T>(r: std::io::Result<T>, containerd: &Containerd) -> T {
    r.unwrap_or_else(|e| panic!("{e}\ncontainerd's log:\n{}", containerd.log()))
}

fn run_pod(node: &mut CriNode, name: &str, command: &[&str]) -> Pod {
    let sandbox = or_log(node.cri.run_pod(name), &node.containerd);
    let container = or_log(node.cri.start_container(&sandbox, name, BUSYBOX, command), &node.containerd);
    let (ip, ready) = node.cri.pod_status(&sandbox).unwrap();
    assert!(ready, "{name}: sandbox ready");
    Pod { sandbox, container, ip }
}

fn ping(ip: &str) -> [&str; 6] {
    ["ping", "-c", "3", "-W", "2", ip]
}

/// Ping each way, then the client downloads the server's file over TCP; both ends'
/// sha256 must match. The download is retried while httpd starts.
fn connected(nodes: &mut [CriNode], client: &Pod, server: &Pod) {
    let out = nodes[0].exec(&client.container, &ping(&server.ip), Duration::from_secs(20));
    assert!(out.contains(" 0% packet loss"), "{out}");
    let out = nodes[1].exec(&server.container, &ping(&client.ip), Duration::from_secs(20));
    assert!(out.contains(" 0% packet loss"), "{out}");
    let sent = nodes[1].exec(&server.container, &["sha256sum", "/www/data"], Duration::from_secs(20));
    let fetch = format!("set -o pipefail; wget -q -O - http://{}/data | sha256sum", server.ip);
    let t0 = Instant::now();
    let received = loop {
        let (code, out, err) =
            nodes[0].cri.exec(&client.container, &["sh", "-c", &fetch], Duration::from_secs(60)).unwrap();
        if code == 0 {
            break out;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "download from {}: {out}{err}", server.ip);
        std::thread::sleep(Duration::from_millis(500));
    };
    let hash = |s: &str| s.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(hash(&received), hash(&sent), "6.9 MB arrived intact");
}

#[test]
fn pods_through_containerds_cri_on_two_nodes() {
    if !privileged_with("pods_through_containerds_cri_on_two_nodes", TOOLS) {
        return;
    }
    let manifest = Manifest::read().unwrap();
    let netconf = manifest.config_value("net-conf.json").unwrap().to_owned();
    let mut cluster = Cluster::start("xc-cri", 2, &ClusterOptions { netconf, ..ClusterOptions::default() }).unwrap();
    let podman = Podman::new(&cluster.dir.join("podman")).unwrap();
    let (pause, busybox) = local_images::build(&podman, &cluster.dir.join("images")).unwrap();
    let mut nodes: Vec<CriNode> =
        (0..2).map(|i| CriNode::start(&cluster, i, &manifest, &[pause.clone(), busybox.clone()])).collect();
    for node in &mut nodes {
        assert!(node.cri.version().unwrap().starts_with("containerd "), "the CRI answers");
        let tags = node.cri.image_tags().unwrap();
        assert!(tags.iter().any(|t| t == PAUSE) && tags.iter().any(|t| t == BUSYBOX), "{tags:?}");
    }
    // The README's offline install of the xlane image: `build-image.sh --save`, then
    // `ctr -n k8s.io images import` gives the runtime the tag the DaemonSet names
    // (imagePullPolicy IfNotPresent: kubelet never pulls it).
    let xlane_image = manifest.container("xlaned").unwrap()["image"].as_str().unwrap().to_owned();
    let archive = cluster.dir.join("xlane.tar");
    image::build(&podman, &xlane_image, Some(&archive)).unwrap();
    nodes[0].containerd.import(&archive).unwrap();
    let tags = nodes[0].cri.image_tags().unwrap();
    assert!(tags.contains(&xlane_image), "{xlane_image} in {tags:?}");

    let server = run_pod(
        &mut nodes[1],
        "server",
        &["/bin/sh", "-c", "mkdir -p /www && seq 1 1000000 > /www/data && exec httpd -f -p 80 -h /www"],
    );
    let client = run_pod(&mut nodes[0], "client", &["/bin/sleep", "3600"]);
    for (i, pod) in [(0, &client), (1, &server)] {
        let allocations = cluster.allocations(i).unwrap();
        assert_eq!(
            allocations.iter().map(|a| a.ip.to_string()).collect::<Vec<_>>(),
            std::slice::from_ref(&pod.ip),
            "node {i}"
        );
        assert_eq!(cluster.pod_veths(i).unwrap().len(), 1, "node {i}");
        assert_eq!(cluster.endpoints(i).unwrap().len(), 1, "node {i}");
    }
    connected(&mut nodes, &client, &server);

    // containerd crashes and comes back: the pods it ran are still running and connected.
    nodes[1].crash_and_restart_containerd();
    assert!(nodes[1].cri.pod_status(&server.sandbox).unwrap().1, "the server's sandbox is ready again");
    connected(&mut nodes, &client, &server);
    // The agent restarts: it replays its pods into xlaned, nothing is lost.
    cluster.restart_agent(0).unwrap();
    connected(&mut nodes, &client, &server);

    // Deleting the pods as kubelet does gives everything back.
    let netns = [nodes[0].cri.netns_path(&client.sandbox).unwrap(), nodes[1].cri.netns_path(&server.sandbox).unwrap()];
    nodes[0].cri.remove_pod(&client.sandbox.id).unwrap();
    nodes[1].cri.remove_pod(&server.sandbox.id).unwrap();
    for i in 0..2 {
        assert_eq!(nodes[i].cri.pod_ids().unwrap(), Vec::<String>::new(), "node {i}: no sandbox");
        assert_eq!(cluster.allocations(i).unwrap(), vec![], "node {i}: no address");
        assert_eq!(cluster.pod_veths(i).unwrap(), Vec::<String>::new(), "node {i}: no veth");
        assert_eq!(cluster.endpoints(i).unwrap(), vec![], "node {i}: no dataplane port");
        assert!(!netns[i].exists(), "node {i}: the pod's namespace {} is gone", netns[i].display());
        assert_eq!(nodes[i].containerd.task_pids(), Vec::<i32>::new(), "node {i}: no shim or container process");
    }
}
