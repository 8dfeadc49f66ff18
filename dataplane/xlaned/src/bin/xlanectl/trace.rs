//! `xlanectl trace show`: one block per traced frame, as VPP's `show trace` prints one
//! per packet: where it came in, each stage's decision with the fields that decided it,
//! where it went.

use xlane_api::{FrameFields, TraceEntry, TraceHop};
use xlane_engine::DropReason;

/// Print a trace's records.
pub(crate) fn print(active: bool, count: u64, records: &[TraceEntry]) {
    let state = if active { "tracing" } else { "stopped" };
    println!("trace: {} of {count} frame(s), {state}", records.len());
    for r in records {
        println!();
        print_entry(r);
    }
}

fn proto(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        p => format!("proto {p}"),
    }
}

/// The frame's inner headers in one line: addresses, protocol, ports, TTL.
fn describe(f: &FrameFields) -> String {
    if let Some(a) = &f.arp {
        let op = match a.op {
            1 => "request".to_owned(),
            2 => "reply".to_owned(),
            op => format!("op {op}"),
        };
        return format!("arp {op} who-has {} tell {} ({})", a.target_ip, a.sender_ip, a.sender_mac);
    }
    let Some(ip) = &f.ipv4 else {
        return format!("ethertype 0x{:04x}, {} bytes", f.ethertype, f.len);
    };
    let l4 = match (f.src_port, f.dst_port, f.icmp) {
        (Some(s), Some(d), _) => format!(" {s} -> {d}"),
        (_, _, Some((t, c))) => format!(" type {t} code {c}"),
        _ => String::new(),
    };
    let csum = if ip.checksum_ok { "" } else { " BAD-CHECKSUM" };
    format!("{} -> {} {}{l4} ttl {} len {}{csum}", ip.src, ip.dst, proto(ip.proto), ip.ttl, ip.total_len)
}

fn macs(f: &FrameFields) -> String {
    match (f.eth_src, f.eth_dst) {
        (Some(s), Some(d)) => format!("{s} -> {d}"),
        _ => "(no ethernet header)".into(),
    }
}

fn tunnel(f: &FrameFields) -> Option<String> {
    let t = f.outer.as_ref()?;
    let vni = t.vni.map_or_else(|| "no-vni".to_owned(), |v| format!("vni {v}"));
    Some(format!(
        "vxlan {vni} {}:{} -> {}:{} ttl {} (outer {} -> {})",
        t.ipv4.src, t.src_port, t.ipv4.dst, t.dst_port, t.ipv4.ttl, t.eth_src, t.eth_dst
    ))
}

/// Wall-clock time of day (UTC) with nanoseconds.
fn time_of_day(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:09} UTC", ns % 1_000_000_000)
}

fn print_entry(r: &TraceEntry) {
    let who = r.endpoint_ip.map(|ip| format!(" {ip}")).unwrap_or_default();
    println!(
        "frame {} (worker {}, {}): in on port {} ({}{who}), {} bytes",
        r.seq,
        r.worker,
        time_of_day(r.time_ns),
        r.ingress,
        r.role,
        r.input.len
    );
    let input = &r.input;
    println!("  ethernet {}", macs(input));
    if let Some(t) = tunnel(input) {
        println!("  outer    {t}");
    }
    println!("  packet   {}", describe(input));
    let dropped_here = |stage: &str| r.drop.is_some() && r.stage == stage;
    // Classification: why the frame was accepted (or not).
    let classified = match (r.role.as_str(), &input.outer) {
        ("uplink", Some(_)) => "overlay frame to this VTEP, decapsulated".to_owned(),
        ("pod", _) if input.arp.is_some() => "ARP from the pod, answered by the proxy".to_owned(),
        ("pod", _) => format!("from the pod, source {}", r.endpoint_ip.map(|i| i.to_string()).unwrap_or_default()),
        ("host", _) => "from the host port (source not checked)".to_owned(),
        (role, _) => format!("from the {role} port"),
    };
    if dropped_here("classify") {
        println!("  classify DROP");
    } else {
        println!("  classify {classified}");
    }
    if let (Some(dst), Some(hop)) = (r.route_dst, r.route) {
        let to = match hop {
            TraceHop::None => "no route".to_owned(),
            TraceHop::Unresolved => "a remote node that is not known (unresolved)".to_owned(),
            TraceHop::Local { port } => format!("local port {port}"),
            TraceHop::Remote { vtep } => format!("remote VTEP {vtep}"),
        };
        println!("  route    {dst} -> {to}");
    }
    if let Some(out) = &r.output {
        match tunnel(out) {
            Some(t) => println!("  rewrite  encap {t}; inner {}", macs(out)),
            None => println!("  rewrite  {}", macs(out)),
        }
        println!("  out      {}", describe(out));
    }
    match (&r.drop, r.egress) {
        (Some(reason), _) => {
            let why = DropReason::from_name(reason).map_or("", DropReason::description);
            println!("  verdict  DROP {reason} at {}: {why}", r.stage);
        }
        (None, Some(port)) => println!("  verdict  tx on port {port}"),
        (None, None) => println!("  verdict  ?"),
    }
}
