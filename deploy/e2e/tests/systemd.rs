//! The systemd units of `deploy/systemd/`: systemd's own checks (`systemd-analyze verify`,
//! and `security` held to the exposure they score today), and their command lines run on
//! a lab node the way the units run them — the configuration files they read, the
//! directories systemd makes for them, their capability bounding and ambient sets and no
//! new privileges (xlaned's five capabilities, the DaemonSet's, each shown needed) — until
//! xlaned forwards for a pod attached through the CNI plugin, and
//! again after xlaned alone restarts (the agent, which the units leave running, replays).
//!
//! Needs the workspace's binaries (`cargo build --bins -p xlaned -p xlane-agent -p
//! xlane-cni`; `cargo test --workspace` builds them), Debian's `systemd` for
//! `systemd-analyze` and util-linux's `setpriv`.
//!
//! What this does not check: the units under a running systemd (this machine's PID 1 is
//! not systemd), so the file-system and namespace hardening is checked by systemd-analyze
//! only; and `LimitMEMLOCK=infinity`, as raising the limit needs CAP_SYS_RESOURCE, which
//! the lab lacks — xlaned runs here under the lab's 8 MiB limit, which CAP_IPC_LOCK makes
//! moot for the UMEM.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use xlane_agent::api::{AgentClient, AgentOp, AgentReply};
use xlane_api::Client;
use xlane_deploy_e2e::daemonset::Manifest;
use xlane_deploy_e2e::systemd::{PathMap, Unit, units_dir};
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::process::{Proc, wait_for, wait_until};
use xlane_netlab::runtime::Container;
use xlane_netlab::{Netns, privileged_with, workspace_binary};

const UNITS: [&str; 2] = ["xlaned.service", "xlane-agent.service"];
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";
const SETPRIV: &str = "/usr/bin/setpriv";

/// The highest `systemd-analyze security` exposure (tenths, its `--threshold` unit) each
/// unit may score: what it scores today, so that losing a hardening setting fails.
/// (xlaned's 4.4 includes AF_PACKET, which veth-offload pods, the CNI default, need.)
const EXPOSURE_LIMITS: [(&str, u32); 2] = [("xlaned.service", 44), ("xlane-agent.service", 35)];

/// Whether `tool` is installed; as [`privileged_with`], a skip outside CI and a failure in
/// CI (these checks need no root).
fn has_tool(test: &str, tool: &str) -> bool {
    if Path::new(tool).exists() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: missing {tool} (CI=true: not skipping)");
    eprintln!("SKIPPED {test}: missing {tool} (Debian: systemd)");
    false
}

/// The directory the built binaries are in (what `/usr/local/bin` maps to).
fn bin_dir() -> PathBuf {
    workspace_binary("xlaned").parent().expect("target/<profile>").to_path_buf()
}

/// Copies of the units in `dir` with their `ExecStart` binaries mapped to the built ones
/// (systemd-analyze verify checks that they are executable); their paths.
fn units_with_built_binaries(dir: &Path, edit: impl Fn(&str, String) -> String) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let paths = PathMap::new(&bin_dir(), dir, &[]);
    UNITS
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(units_dir().join(name)).unwrap();
            let copy = dir.join(name);
            std::fs::write(&copy, edit(name, paths.apply(&text))).unwrap();
            copy
        })
        .collect()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// `systemd-analyze verify` of `units`: Ok, or what it printed. A warning is a failure
/// too (systemd ignores an unknown key or a bad value with a warning, and starts).
fn verify(units: &[PathBuf]) -> Result<(), String> {
    let mut args = vec!["verify"];
    args.extend(units.iter().map(|u| u.to_str().unwrap()));
    let out = run(SYSTEMD_ANALYZE, &args);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && printed.trim().is_empty() { Ok(()) } else { Err(printed) }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlane-systemd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    if !has_tool("the_units_pass_systemd_analyze_verify", SYSTEMD_ANALYZE) {
        return;
    }
    let dir = scratch("verify");
    let units = units_with_built_binaries(&dir, |_, text| text);
    let verified = verify(&units);
    // The check can fail: the same units with a misspelled setting do not pass.
    let broken = units_with_built_binaries(&dir.join("broken"), |_, text| text.replace("Restart=", "Restrat="));
    let rejected = verify(&broken);
    let _ = std::fs::remove_dir_all(&dir);
    verified.unwrap_or_else(|printed| panic!("systemd-analyze verify:\n{printed}"));
    assert!(rejected.is_err(), "a misspelled key passed verify");
}

#[test]
fn the_units_keep_their_hardening() {
    if !has_tool("the_units_keep_their_hardening", SYSTEMD_ANALYZE) {
        return;
    }
    let dir = scratch("security");
    let units = units_with_built_binaries(&dir, |_, text| text);
    for ((name, limit), unit) in EXPOSURE_LIMITS.iter().zip(&units) {
        assert!(unit.ends_with(name));
        let threshold = format!("--threshold={limit}");
        let out = run(SYSTEMD_ANALYZE, &["security", "--offline=true", &threshold, unit.to_str().unwrap()]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: exposure above {limit} tenths:\n{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_units_grant_the_daemonsets_capabilities() {
    let manifest = Manifest::read().unwrap();
    for (unit, container) in [("xlaned.service", "xlaned"), ("xlane-agent.service", "xlane-agent")] {
        let unit = Unit::read(unit).unwrap();
        let security = &manifest.container(container).unwrap()["securityContext"]["capabilities"];
        assert_eq!(security["drop"], serde_json::json!(["ALL"]), "{container}");
        let mut granted: Vec<String> = security["add"]
            .as_array()
            .map(|a| a.iter().map(|c| c.as_str().unwrap().to_lowercase()).collect())
            .unwrap_or_default();
        granted.sort();
        for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
            let mut caps = unit.capabilities(key);
            caps.sort();
            assert_eq!(caps, granted, "{} {key} vs the DaemonSet's {container}", unit.name);
        }
    }
}

/// linux/capability.h's number of a capability (setpriv's lower-case name).
fn capability_bit(name: &str) -> u32 {
    match name {
        "net_admin" => 12,
        "net_raw" => 13,
        "ipc_lock" => 14,
        "sys_admin" => 21,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other}: add its number here"),
    }
}

/// setpriv's arguments that give a program what `unit` gives its `ExecStart` (as root):
/// the capability bounding set, the ambient set (inheritable too, which ambient needs)
/// and no new privileges.
fn confinement(unit: &Unit) -> Vec<String> {
    let set = |caps: &[String]| {
        std::iter::once("-all".to_owned()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>().join(",")
    };
    let ambient = unit.capabilities("AmbientCapabilities");
    let mut args = vec![
        format!("--bounding-set={}", set(&unit.capabilities("CapabilityBoundingSet"))),
        format!("--inh-caps={}", set(&ambient)),
        format!("--ambient-caps={}", set(&ambient)),
    ];
    if unit.value("NoNewPrivileges") == "yes" {
        args.push("--no-new-privs".into());
    }
    args
}

/// `unit` with capability `cap` (setpriv's name) taken from its bounding and ambient sets.
fn without_capability(unit: &Unit, cap: &str) -> Unit {
    let full = format!("CAP_{}", cap.to_uppercase());
    let text = std::fs::read_to_string(units_dir().join(&unit.name)).unwrap();
    let edited: String = text
        .lines()
        .map(|l| match l.split_once('=') {
            Some((key @ ("CapabilityBoundingSet" | "AmbientCapabilities"), caps)) => {
                format!("{key}={}\n", caps.split_whitespace().filter(|c| *c != full).collect::<Vec<_>>().join(" "))
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let edited = Unit::parse(&unit.name, &edited);
    assert!(!edited.capabilities("CapabilityBoundingSet").iter().any(|c| c == cap), "{cap} taken out");
    edited
}

/// What systemd does for `unit` before its `ExecStart`, on the test's paths: make its
/// runtime and state directories.
fn prepare_directories(unit: &Unit, paths: &PathMap) {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    for (key, base) in [("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")] {
        for name in unit.values(key) {
            let mode = u32::from_str_radix(unit.value(&format!("{key}Mode")), 8).unwrap();
            let dir = paths.path(&format!("{base}/{name}"));
            std::fs::DirBuilder::new().recursive(true).mode(mode).create(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// Start `unit`'s `ExecStart` (paths mapped, `extra` arguments appended) under its
/// confinement, in `ns` or here.
fn start(unit: &Unit, paths: &PathMap, ns: Option<&Netns>, extra: &[String], log: PathBuf) -> Proc {
    assert!(
        unit.values("Environment").is_empty() && unit.values("EnvironmentFile").is_empty(),
        "{}: pass its environment",
        unit.name
    );
    // Starting the process models `exec`, and `notify` too: without NOTIFY_SOCKET
    // xlaned notifies nobody, and readiness is waited for on its socket.
    assert!(matches!(unit.value("Type"), "exec" | "notify"), "{}: {}", unit.name, unit.value("Type"));
    let mut args = confinement(unit);
    args.extend(unit.exec_start().iter().map(|a| paths.apply(a)));
    args.extend(extra.iter().cloned());
    match ns {
        Some(ns) => Proc::start(ns, Path::new(SETPRIV), &args, log),
        None => Proc::start_here(Path::new(SETPRIV), &args, log),
    }
}

/// A field of `/proc/<pid>/status`.
const AF_PACKET: &str = "AF_PACKET";

/// The address families of the sockets `pid` holds, as `ss` lists them in `ns`.
fn socket_families(ns: &Netns, pid: u32) -> std::collections::BTreeSet<&'static str> {
    let out = ns.command("ss").args(["-a", "-n", "-p", "-A", "inet,unix,packet,netlink,xdp"]).output().unwrap();
    assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    let mine = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&mine))
        .map(|l| {
            let (netid, local) = {
                let mut w = l.split_whitespace();
                (w.next().unwrap_or_default(), w.nth(3).unwrap_or_default())
            };
            match netid {
                "u_str" | "u_dgr" | "u_seq" => "AF_UNIX",
                "p_raw" | "p_dgr" => AF_PACKET,
                "nl" => "AF_NETLINK",
                "xdp" => "AF_XDP",
                "udp" | "tcp" | "raw" if local.starts_with(['[', '*']) => "AF_INET6",
                "udp" | "tcp" | "raw" => "AF_INET",
                other => panic!("xlaned holds a socket ss calls {other:?}: {l}"),
            }
        })
        .collect()
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{name} in {status}"))
}

fn agent_ready(socket: &Path) -> bool {
    AgentClient::connect(socket)
        .and_then(|mut c| c.call(AgentOp::Status))
        .is_ok_and(|r| matches!(r, AgentReply::Status { lease: Some(_), dataplane_synced: true, .. }))
}

#[test]
fn the_units_command_lines_run_a_node_that_forwards() {
    let test = "the_units_command_lines_run_a_node_that_forwards";
    if !privileged_with(test, &[SETPRIV]) {
        return;
    }
    let xlaned_unit = Unit::read("xlaned.service").unwrap();
    let agent_unit = Unit::read("xlane-agent.service").unwrap();
    // Node 0 runs the lab's own xlane; node 1 is bare, for the units.
    let opts = ClusterOptions { xlane_nodes: Some(1), ..ClusterOptions::default() };
    let cluster = Cluster::start("xi-sd", 2, &opts).unwrap();
    let node1 = &cluster.lab.nodes[1].ns;
    // Node 1's /etc/xlane, /run/xlane, /var/lib/xlane under its own root; the file
    // datastore is the one node 0's agent uses (one host, as agent.toml says).
    let root = cluster.dir.join("node1");
    let store = cluster.dir.join("store");
    let paths = PathMap::new(&bin_dir(), &root, &[("/var/lib/xlane/store", &store)]);
    // README's install step: the configuration files into /etc/xlane.
    for file in ["xlaned.toml", "agent.toml"] {
        let installed = paths.path(&format!("/etc/xlane/{file}"));
        std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
        std::fs::write(&installed, paths.apply(&std::fs::read_to_string(units_dir().join(file)).unwrap())).unwrap();
    }
    prepare_directories(&xlaned_unit, &paths);
    prepare_directories(&agent_unit, &paths);
    let xlaned_socket = paths.path("/run/xlane/xlaned.sock");
    let agent_socket = paths.path("/run/xlane/agent.sock");

    let start_xlaned = || {
        let mut xlaned = start(&xlaned_unit, &paths, Some(node1), &[], root.join("xlaned.log"));
        wait_until("xlaned's socket", Duration::from_secs(10), &mut xlaned, || Client::connect(&xlaned_socket).is_ok())
            .unwrap();
        xlaned
    };
    // Each capability of the unit is needed: without any one, xlaned exits once it opens
    // its ports (given its VTEP here, as the agent gives it).
    let lab_node = &cluster.lab.nodes[1];
    let vtep = ["--vtep-ip".into(), lab_node.ip.to_string(), "--node-subnet".into(), lab_node.subnet_cidr()];
    for missing in xlaned_unit.capabilities("CapabilityBoundingSet") {
        let without = without_capability(&xlaned_unit, &missing);
        let mut xlaned = start(&without, &paths, Some(node1), &vtep, root.join(format!("xlaned-no-{missing}.log")));
        let exit = xlaned.exit_status(Duration::from_secs(10));
        assert!(exit.is_some_and(|s| !s.success()), "xlaned without {missing}: {exit:?}; its log:\n{}", xlaned.log());
        // Refused by the kernel (EPERM, EACCES, or ENOBUFS: the UMEM over the memlock
        // limit), not failing for another reason.
        let log = xlaned.log();
        let refused = ["(os error 1)", "(os error 13)", "(os error 105)"].iter().any(|e| log.contains(e));
        assert!(refused, "xlaned without {missing} failed for another reason:\n{log}");
    }
    let mut xlaned = start_xlaned();
    let mut agent = start(&agent_unit, &paths, None, &[], root.join("agent.log"));
    wait_until("the agent's lease and dataplane sync", Duration::from_secs(20), &mut agent, || {
        agent_ready(&agent_socket)
    })
    .unwrap();

    // Each daemon holds exactly its unit's capabilities, bounded so, and cannot gain more
    // (setpriv exec'd the daemon: the PID is its own).
    for (unit, proc) in [(&xlaned_unit, &xlaned), (&agent_unit, &agent)] {
        let pid = proc.pid().unwrap();
        let program = unit.exec_start()[0].rsplit('/').next().unwrap().to_owned();
        // The kernel's comm is at most 15 bytes.
        assert!(program.starts_with(&status_field(pid, "Name:")), "{}: pid {pid} is not {program}", unit.name);
        let mask: u64 = unit.capabilities("CapabilityBoundingSet").iter().map(|c| 1u64 << capability_bit(c)).sum();
        for field in ["CapEff:", "CapBnd:"] {
            assert_eq!(u64::from_str_radix(&status_field(pid, field), 16).unwrap(), mask, "{} {field}", unit.name);
        }
        assert_eq!(status_field(pid, "NoNewPrivs:"), "1", "{}", unit.name);
    }
    // A veth uplink has no AF_XDP zero-copy: xlaned reads its VXLAN traffic through UDP
    // sockets and attaches no program to it.
    assert!(!node1.has_xdp("eth0").unwrap(), "no XDP program on a veth uplink");
    assert!(node1.udp_listeners(8472).unwrap() > 0, "xlaned reads xlaned.toml's uplink through UDP sockets");
    let xlanectl = workspace_binary("xlanectl");
    let status = Command::new(&xlanectl).arg("--socket").arg(&xlaned_socket).arg("status").output().unwrap();
    assert!(status.status.success(), "xlanectl status: {}", String::from_utf8_lossy(&status.stderr));

    // A pod on node 1 through the CNI plugin and the agent's socket talks to one on node 0.
    let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "xlane",
        "plugins": [{"type": "xlane", "agentSocket": agent_socket}]});
    let pod_ns = Netns::new("xi-sd-pod").unwrap();
    let container = Container::in_netns(&format!("sd-{}", std::process::id()), &pod_ns);
    let runtime = Cluster::runtime();
    let result = runtime.add(node1, &conflist, &container).unwrap();
    let ip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    let other = cluster.attach_pod(0, "p0").unwrap();
    pod_ns.ping(&other.ip.to_string(), 3).unwrap();
    other.ns.ping(&ip, 3).unwrap();
    // Every socket family xlaned holds now (uplink, host port, a pod of the CNI's default
    // attachment) is one the unit lets it open: systemd would refuse the others.
    let allowed: Vec<&str> = xlaned_unit.value("RestrictAddressFamilies").split_whitespace().collect();
    // (ss lists no AF_XDP socket without the kernel's xsk_diag, which this one lacks.)
    let held = socket_families(node1, xlaned.pid().unwrap());
    assert!(held.contains(&AF_PACKET), "the pod's AF_PACKET socket: {held:?}");
    for family in &held {
        assert!(allowed.contains(family), "xlaned holds an {family} socket; the unit allows {allowed:?}");
    }

    // `systemctl restart xlaned` (the upgrade path today) leaves the agent running (Wants=,
    // not Requires=): it replays the pod into the new xlaned, which forwards again.
    assert!(agent_unit.value("Wants").split_whitespace().any(|u| u == "xlaned.service"));
    assert!(agent_unit.values("Requires").is_empty() && agent_unit.values("BindsTo").is_empty());
    xlaned.stop(nix::sys::signal::Signal::SIGTERM);
    xlaned = start_xlaned();
    wait_for("forwarding after xlaned's restart", Duration::from_secs(30), || {
        pod_ns.ping(&other.ip.to_string(), 1).is_ok()
    });
    assert!(agent.running(), "the agent kept running through xlaned's restart");
    other.ns.ping(&ip, 3).unwrap();

    runtime.del(node1, &conflist, &container, Some(&result)).unwrap();
    cluster.detach_pod(&other).unwrap();
    // Daemons by PID (their guards), before the cluster removes the namespaces.
    drop(agent);
    drop(xlaned);
}
