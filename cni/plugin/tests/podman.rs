//! podman (Debian's, CNI network backend) attaching containers through xlane on two lab
//! nodes: containers on different nodes ping each other and move data over TCP, and
//! `podman rm` gives everything back. The settings this machine needs are in PLATFORM.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::privileged_with;

/// One node's podman: its own storage, configuration and containers, run inside the
/// node's network namespace.
struct Podman {
    node_netns: String,
    dir: PathBuf,
}

impl Podman {
    fn new(cluster: &Cluster, i: usize) -> Self {
        let dir = cluster.dir.join(format!("podman{i}"));
        std::fs::create_dir_all(dir.join("net.d")).unwrap();
        let ours = Path::new(env!("CARGO_BIN_EXE_xlane")).parent().unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "xlane",
            "plugins": [
                {"type": "xlane", "agentSocket": cluster.nodes[i].agent_socket},
                {"type": "tuning", "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"}}
            ]
        });
        std::fs::write(dir.join("net.d/10-xlane.conflist"), conflist.to_string()).unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{}", "/usr/lib/cni"]
network_config_dir = "{}"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"#,
                ours.display(),
                dir.join("net.d").display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                dir.join("runroot").display(),
                dir.join("root").display()
            ),
        )
        .unwrap();
        // A busybox root filesystem: no images, no registry.
        let rootfs = dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for tool in ["sh", "ping", "seq", "md5sum", "mkdir", "httpd", "wget"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        Self { node_netns: format!("/run/netns/{}", cluster.lab.nodes[i].ns.name()), dir }
    }

    /// `podman args…` in the node's namespace. Through `nsenter --net` rather than
    /// `ip netns exec`, which remounts /sys and hides the cgroups from runc.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.node_netns))
            .arg("podman")
            .args(["--root", &self.dir.join("root").to_string_lossy()])
            .args(["--runroot", &self.dir.join("runroot").to_string_lossy()])
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn rootfs(&self) -> String {
        self.dir.join("rootfs").to_string_lossy().into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-a", "-t", "0"]);
    }
}

#[test]
fn podman_containers_on_two_nodes() {
    if !privileged_with("podman_containers_on_two_nodes", &["/usr/bin/podman", "/usr/sbin/runc", "/bin/busybox"]) {
        return;
    }
    let s = Cluster::start("xc-pm", 2, &ClusterOptions::default()).unwrap();
    let (p0, p1) = (Podman::new(&s, 0), Podman::new(&s, 1));
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
