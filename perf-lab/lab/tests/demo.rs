//! The demo as a newcomer runs it, briefly: it works, reports (saying where every lost
//! UDP datagram went), and leaves nothing behind — after a normal run, after Ctrl-C, and (on the next run) after a crash.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xlane_lab::losses::Ledger;
use xlane_netlab::privileged;

/// One demo at a time: they share two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn demo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlane-lab"));
    c.arg("demo").args(args);
    c
}

/// Namespaces owned by the demo process `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    xlane_netlab::namespaces_of("xdemo", pid).unwrap()
}

/// Start the demo with a long UDP phase and wait until it is in it.
fn start_in_udp_phase() -> Child {
    let mut child =
        demo(&["--tcp-mb", "5", "--udp-seconds", "60"]).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let t0 = Instant::now();
    let mut line = String::new();
    let mut said = String::new();
    while !line.starts_with("[5/6]") {
        line.clear();
        let n = err.read_line(&mut line).unwrap();
        said.push_str(&line);
        assert!(n > 0, "the demo ended before its UDP phase; it said:\n{said}");
        assert!(t0.elapsed() < Duration::from_secs(60), "no UDP phase within 60 s; the demo said:\n{said}");
    }
    // Keep draining stderr so the demo never blocks on it.
    std::thread::spawn(move || for _ in err.lines() {});
    child
}

#[test]
fn quick_demo_reports_and_leaves_nothing() {
    if !privileged("quick_demo_reports_and_leaves_nothing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let json = std::env::temp_dir().join(format!("xlane-demo-{}.json", std::process::id()));
    let (pid, out) = xlane_netlab::run_and_pid(&mut demo(&["--quick", "--json", &json.to_string_lossy()])).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ping   5/5 answered"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["ping"]["received"], 5);
    assert_eq!(r["tcp"]["intact"], true);
    assert_eq!(r["tcp"]["bytes"], 20_000_000);
    assert!(r["udp"]["received"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["pods"].as_array().unwrap().len(), 2);
    // Every datagram that did not arrive is attributed to a place, in the summary and
    // the JSON alike, and the places add up to the loss.
    let ledger: Ledger = serde_json::from_value(r["udp"]["losses"].clone()).unwrap();
    let count = |k: &str| r["udp"][k].as_u64().unwrap();
    assert_eq!((ledger.offered, ledger.delivered), (count("sent") + count("send_errors"), count("received")));
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("lost ") || l.starts_with("nothing lost "))
        .unwrap_or_else(|| panic!("no UDP attribution line in\n{stdout}"));
    assert_eq!(line, ledger.summary());
    assert_eq!(stated_places(line), ledger.lost(), "{line}");
    // Every lost datagram is counted somewhere; the same places may also drop a stray
    // frame of other traffic (an ARP refresh, IPv6 neighbour discovery) meanwhile.
    assert!(ledger.unaccounted().abs() <= 10, "lost datagrams no counter explains: {line}");
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
    std::fs::remove_file(json).unwrap();
}

/// The frames the places of an attribution line ("lost 80 of 100: 70 xlane RX ring full
/// on node 1 eth0 (uplink), 10 receiver socket buffer full, unaccounted 0") add up to.
fn stated_places(line: &str) -> u64 {
    let Some((_, places)) = line.split_once(": ") else { return 0 };
    let mut total: i64 = 0;
    // A place's own text may hold ", " ("… (pod), fill ring empty 3×"): every place
    // starts with its count.
    for part in places.split(", ") {
        let number = |s: &str| s.split_whitespace().next().and_then(|n| n.parse::<i64>().ok());
        if let Some(n) = part.strip_prefix("unaccounted ").and_then(number) {
            total += n;
        } else if let Some(n) = part.strip_prefix("over-counted ").and_then(number) {
            total -= n;
        } else if let Some(n) = number(part) {
            total += n;
        }
    }
    u64::try_from(total).unwrap()
}

#[test]
fn ctrl_c_tears_down() {
    if !privileged("ctrl_c_tears_down") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut child = start_in_udp_phase();
    let pid = child.id();
    assert!(!namespaces_of(pid).is_empty());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted exit");
    assert!(t0.elapsed() < Duration::from_secs(20), "teardown took {:?}", t0.elapsed());
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
    let run_dir = std::env::temp_dir().join(format!("xlane-xdemo-{pid}"));
    assert!(!run_dir.exists(), "the run directory (sockets, logs) is gone");
}

#[test]
fn a_rerun_after_a_crash_cleans_up_first() {
    if !privileged("a_rerun_after_a_crash_cleans_up_first") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut child = start_in_udp_phase();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    // The crashed run's daemons and namespaces are still there.
    let run_dir = std::env::temp_dir().join(format!("xlane-xdemo-{pid}"));
    let daemons: Vec<u32> = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "pid"))
        .map(|f| std::fs::read_to_string(f.path()).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(daemons.len(), 4, "xlaned and agent on two nodes");
    assert!(daemons.iter().all(|d| std::path::Path::new(&format!("/proc/{d}")).exists()));
    assert!(!namespaces_of(pid).is_empty());
    let out = demo(&["--quick"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cleaned up an earlier run"), "{stderr}");
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
    assert!(!run_dir.exists());
    for d in daemons {
        assert!(!std::path::Path::new(&format!("/proc/{d}")).exists(), "daemon {d} of the crashed run stopped");
    }
}
