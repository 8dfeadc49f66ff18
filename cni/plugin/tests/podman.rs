//! podman (Debian's, CNI network backend) attaching containers through xlane on two lab
//! nodes — node 0's through the default attachment, node 1's `veth-offload` (its pods
//! keep their offloads): containers on different nodes ping each other and move data
//! over TCP, and `podman rm` gives everything back. The settings this machine needs are in PLATFORM.md.

use std::path::{Path, PathBuf};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::podman::{Cni, Podman};
use xlane_netlab::privileged_with;

/// One node's podman (netlab's: its own storage, configuration and containers), run
/// inside the node's network namespace with the xlane conflist, and a busybox root
/// filesystem for its containers.
struct NodePodman {
    podman: Podman,
    rootfs: PathBuf,
}

impl NodePodman {
    fn new(cluster: &Cluster, i: usize, attach: Option<&str>) -> Self {
        let dir = cluster.dir.join(format!("podman{i}"));
        let net_d = dir.join("net.d");
        std::fs::create_dir_all(&net_d).unwrap();
        let ours = Path::new(env!("CARGO_BIN_EXE_xlane")).parent().unwrap();
        let mut xlane = serde_json::json!({"type": "xlane", "agentSocket": cluster.nodes[i].agent_socket});
        if let Some(a) = attach {
            xlane["attach"] = a.into();
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "xlane",
            "plugins": [xlane, {"type": "tuning", "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"}}]
        });
        std::fs::write(net_d.join("10-xlane.conflist"), conflist.to_string()).unwrap();
        let cni = Cni { plugin_dirs: &[ours, Path::new("/usr/lib/cni")], config_dir: &net_d };
        let podman = Podman::with_network(&dir, Some(cni))
            .unwrap()
            .in_netns(format!("/run/netns/{}", cluster.lab.nodes[i].ns.name()));
        // A busybox root filesystem: no images, no registry.
        let rootfs = dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for tool in ["sh", "ping", "seq", "md5sum", "mkdir", "httpd", "wget"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        Self { podman, rootfs }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.podman.ok(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rootfs(&self) -> String {
        self.rootfs.to_string_lossy().into_owned()
    }
}

#[test]
fn podman_containers_on_two_nodes() {
    if !privileged_with("podman_containers_on_two_nodes", &["/usr/bin/podman", "/usr/sbin/runc", "/bin/busybox"]) {
        return;
    }
    let s = Cluster::start("xc-pm", 2, &ClusterOptions::default()).unwrap();
    let (p0, p1) = (NodePodman::new(&s, 0, None), NodePodman::new(&s, 1, Some("veth-offload")));
    // An HTTP server with a 6.9 MB file (busybox nc ends a transfer early when its stdin
    // closes; wget reads exactly the content length).
    let server = "mkdir -p /www && seq 1 1000000 > /www/data && httpd -f -p 80 -h /www";
    let r1 = p1.rootfs();
    p1.ok(&["run", "-d", "--name", "srv", "--network", "xlane", "--rootfs", &r1, "/bin/sh", "-c", server]);
    let ip = p1.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.xlane.IPAddress}}", "srv"]);
    assert!(ip.starts_with("10.244.2."), "node 1's subnet: {ip}");
    let alloc = s.allocations(1).unwrap();
    assert_eq!(alloc.len(), 1, "{alloc:?}");
    assert_eq!(alloc[0].ip.to_string(), ip);
    let ports = s.endpoints(1).unwrap();
    assert!(ports.len() == 1 && ports[0].packet.is_some(), "node 1's pod read through AF_PACKET: {ports:?}");
    // From a container on node 0: ping, then the download, checked end to end.
    let r0 = p0.rootfs();
    let client = format!("ping -c 3 -W 2 {ip} && wget -q -O - http://{ip}/data | md5sum && seq 1 1000000 | md5sum");
    let out = p0.ok(&["run", "--rm", "--network", "xlane", "--rootfs", &r0, "/bin/sh", "-c", &client]);
    assert!(out.contains(" 0% packet loss"), "{out}");
    let sums: Vec<&str> = out.lines().rev().take(2).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(sums[0], sums[1], "6.9 MB arrived intact: {out}");
    assert_eq!(s.allocations(0).unwrap(), vec![], "the --rm container released its address");
    assert_eq!(s.pod_veths(0).unwrap(), Vec::<String>::new());
    // podman rm: address, veth and dataplane port gone.
    p1.ok(&["rm", "-f", "-t", "0", "srv"]);
    assert_eq!(s.allocations(1).unwrap(), vec![]);
    assert_eq!(s.pod_veths(1).unwrap(), Vec::<String>::new());
    assert_eq!(s.endpoints(1).unwrap(), vec![]);
}
