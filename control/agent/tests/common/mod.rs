//! Test harness shared by the agent's end-to-end tests.
#![allow(dead_code, reason = "each test file uses part of the harness")]
#![allow(unreachable_pub, reason = "a module shared by test crates")]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xlane_api::{Client, Op, Reply, Table};
use xlane_netlab::{Netns, workspace_binary};

/// A process in a namespace, stopped by PID on drop.
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn start(ns: &Netns, bin: &Path, args: &[String], log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).unwrap();
        let child = ns.command(bin.to_str().unwrap()).args(args).stdout(Stdio::null()).stderr(f).spawn().unwrap();
        Self { child: Some(child), log }
    }

    /// Start in the root namespace (for processes that need only unix sockets and
    /// loopback, like an agent talking to etcd).
    pub fn start_here(bin: &Path, args: &[String], log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(f).spawn().unwrap();
        Self { child: Some(child), log }
    }

    pub fn stop(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, sig);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGTERM);
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

pub fn start_xlaned(ns: &Netns, dir: &Path, i: usize) -> Proc {
    let sock = dir.join(format!("xlaned{i}.sock"));
    let args: Vec<String> =
        vec!["--uplink".into(), "eth0".into(), "--socket".into(), sock.to_string_lossy().into_owned()];
    let p = Proc::start(ns, &workspace_binary("xlaned"), &args, dir.join(format!("xlaned{i}.log")));
    wait_for("xlaned socket", Duration::from_secs(10), || Client::connect(&sock).is_ok());
    p
}

pub fn routes(sock: &Path) -> Vec<String> {
    match Client::connect(sock).unwrap().call(Op::Dump { table: Table::Routes }).unwrap() {
        Reply::Routes { routes } => routes.iter().map(|r| format!("{} via {}", r.prefix, r.via)).collect(),
        r => panic!("{r:?}"),
    }
}

pub fn ping(ns: &Netns, dst: Ipv4Addr) -> bool {
    ns.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "2"])
        .arg(dst.to_string())
        .output()
        .expect("ping is installed")
        .status
        .success()
}

/// Do what the CNI plugin does for a pod on `node`: allocate through the agent at
/// `agent_sock`, create the pod with that address, attach it. Returns the pod's index.
pub fn attach_pod(lab: &mut xlane_netlab::Lab, agent_sock: &Path, node: usize, cid: &str) -> usize {
    use xlane_agent::api::{AgentClient, AgentOp, AgentReply};
    let mut c = AgentClient::connect(agent_sock).unwrap();
    let AgentReply::Allocated { ip, gateway, mtu, .. } =
        c.call(AgentOp::Add { container_id: cid.into(), ifname: "eth0".into() }).unwrap()
    else {
        panic!("allocation failed")
    };
    assert_eq!(mtu, 1450);
    let k = lab.add_pod_at(node, ip.addr(), ip.prefix_len(), gateway).unwrap();
    let pod = &lab.pods[k];
    let r = c
        .call(AgentOp::Attach {
            container_id: cid.into(),
            ifname: "eth0".into(),
            host_if: pod.host_if.clone(),
            mac: pod.mac.parse().unwrap(),
        })
        .unwrap();
    assert!(matches!(r, AgentReply::Attached { .. }), "{r:?}");
    k
}
