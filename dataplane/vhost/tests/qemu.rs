//! QEMU as the frontend. QEMU 7.2 (Debian 12) performs the vhost-user handshake when its
//! netdev starts, before any guest runs, and sends SET_VRING_ENABLE before the guest
//! acked VHOST_USER_F_PROTOCOL_FEATURES; without the relay the library cut it off right
//! there. No guest kernel is needed (or booted: `-S` keeps the CPUs stopped).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use xlane_vhost::backend::PortIo;
use xlane_vhost::server::VhostUserPort;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// QEMU with one virtio-net device on `sock`, its output in `log`.
fn qemu(sock: &std::path::Path, log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(QEMU)
        .args(["-machine", "q35,accel=kvm:tcg", "-m", "256", "-S", "-nodefaults", "-display", "none"])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem"])
        .args(["-chardev", &format!("socket,id=chr0,path={}", sock.display())])
        .args(["-netdev", "vhost-user,id=net0,chardev=chr0"])
        .args(["-device", "virtio-net-pci,netdev=net0,mac=02:00:0a:f4:01:fa"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn wait(what: &str, log: &std::path::Path, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        let out = std::fs::read_to_string(log).unwrap_or_default();
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}; QEMU said:\n{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn qemu_7_2_handshake_is_served_and_survives_a_restart() {
    if !xlane_netlab::privileged_with("qemu_7_2_handshake_is_served_and_survives_a_restart", &[QEMU]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("xlane-vhost-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (sock, log) = (dir.join("vm.sock"), dir.join("qemu.log"));
    let port =
        VhostUserPort::spawn(sock.clone(), PortIo::new(256).unwrap(), [2, 0, 0x0a, 0xf4, 1, 0xfa], 1450).unwrap();
    let io = Arc::clone(port.io());
    let c = &io.counters;
    for restart in 1..=2 {
        let mut vm = qemu(&sock, &log);
        wait("QEMU to connect", &log, || c.connections.load(Ordering::Relaxed) == restart);
        // The handshake went through: QEMU is still up and still connected a moment
        // later (the library used to drop it at its first SET_VRING_ENABLE, and QEMU
        // then reported the backend gone).
        std::thread::sleep(Duration::from_secs(2));
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(matches!(vm.try_wait(), Ok(None)), "QEMU exited:\n{said}");
        assert!(c.connected.load(Ordering::Relaxed), "QEMU was cut off:\n{said}");
        assert!(!said.contains("Failed to") && !said.contains("disconnected"), "QEMU complained:\n{said}");
        assert_eq!(c.connections.load(Ordering::Relaxed), restart, "one connection per QEMU");
        // The VM goes away (killed by PID): the port waits for the next one.
        vm.kill().unwrap();
        vm.wait().unwrap();
        wait("the disconnect", &log, || !c.connected.load(Ordering::Relaxed));
    }
    drop(port);
    assert!(!sock.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
