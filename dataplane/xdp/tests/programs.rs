//! The XDP programs on real frames, through BPF_PROG_TEST_RUN (needs root).
//!
//! Loaded with `miss = XDP_DROP` and an empty XSKMAP, "to the engine" shows as DROP (1)
//! and "to the kernel" as PASS (2). The production variant (`miss = XDP_PASS`) is also
//! loaded, to check the exact program xlaned attaches passes the verifier.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use xlane_engine::fixtures::{IPV4_DST, fill_ipv4_checksum, fixture, set_ipv4_addr};
use xlane_xdp::programs::{self, PodFilter, UplinkFilter, XDP_DROP, XDP_PASS};
use xlane_xdp::sys;

const ENGINE: u32 = XDP_DROP;

fn uplink_filter() -> UplinkFilter {
    UplinkFilter { vtep_ip: Ipv4Addr::new(192, 168, 50, 1), vxlan_port: 8472 }
}

fn pod_filter() -> PodFilter {
    PodFilter { cluster: Ipv4Addr::new(10, 244, 0, 0), prefix_len: 16 }
}

fn verdicts(insns_for: impl Fn(i32) -> Vec<u64>, cases: &[(&str, Vec<u8>, u32)]) {
    let map = sys::create_xskmap("xlane_test", 4).expect("XSKMAP");
    let prog = sys::load_xdp("xlane_test", &insns_for(map.as_raw_fd())).unwrap_or_else(|e| panic!("{e}"));
    for (what, frame, want) in cases {
        let got = sys::test_run_xdp(prog.as_fd(), frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, *want, "{what}");
    }
}

/// Frames on the uplink, and whether the uplink pinhole gives them to the engine.
fn uplink_cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let vxlan = fixture("decap_udp_in");
    let mutate = |f: fn(&mut Vec<u8>)| {
        let mut v = vxlan.clone();
        f(&mut v);
        v
    };
    // IPv4 options (IHL 6): the UDP header moves by 4 bytes and must still be found.
    let mut with_options = vxlan[..34].to_vec();
    with_options[14] = 0x46;
    with_options.extend_from_slice(&[0x94, 0x04, 0, 0]);
    with_options.extend_from_slice(&vxlan[34..]);
    let total = u16::from_be_bytes([with_options[16], with_options[17]]) + 4;
    with_options[16..18].copy_from_slice(&total.to_be_bytes());
    fill_ipv4_checksum(&mut with_options, 14);
    vec![
        ("VXLAN to VTEP:8472", vxlan.clone(), true),
        ("VXLAN with IPv4 options", with_options, true),
        ("wrong UDP port", mutate(|f| f[37] = 0xb5), false),
        ("other destination IP", mutate(|f| f[33] = 9), false),
        ("TCP", mutate(|f| f[23] = 6), false),
        ("fragment (MF)", mutate(|f| f[20] = 0x20), false),
        ("non-first fragment", mutate(|f| f[21] = 0x10), false),
        ("ARP (the host's own)", fixture("arp_request_in"), false),
        ("IPv6", mutate(|f| f[12..14].copy_from_slice(&[0x86, 0xdd])), false),
    ]
}

#[test]
fn uplink_pinhole_takes_only_vxlan_to_our_vtep() {
    if !xlane_netlab::privileged("uplink_pinhole_takes_only_vxlan_to_our_vtep") {
        return;
    }
    let vxlan = fixture("decap_udp_in");
    let mut cases: Vec<_> =
        uplink_cases().into_iter().map(|(w, f, engine)| (w, f, if engine { ENGINE } else { XDP_PASS })).collect();
    cases.push(("Ethernet header only", vxlan[..14].to_vec(), XDP_PASS));
    cases.push(("IPv4 without UDP header", vxlan[..40].to_vec(), XDP_PASS));
    verdicts(|fd| programs::uplink(&uplink_filter(), fd, XDP_DROP), &cases);
    // The production program (miss = PASS) loads and, with no socket, passes everything.
    let pass_all: Vec<_> = cases.into_iter().map(|(w, f, _)| (w, f, XDP_PASS)).collect();
    verdicts(|fd| programs::uplink(&uplink_filter(), fd, XDP_PASS), &pass_all);
}

/// The uplink pinhole at tcx ingress (an uplink read through a packet tap): VXLAN to
/// the VTEP is dropped for the host, the rest goes on to it.
#[test]
fn tc_uplink_pinhole_leaves_the_host_what_the_engine_does_not_take() {
    if !xlane_netlab::privileged("tc_uplink_pinhole_leaves_the_host_what_the_engine_does_not_take") {
        return;
    }
    use xlane_xdp::programs::{TC_ACT_OK, TC_ACT_SHOT};
    let prog =
        sys::load_tcx_ingress("xlane_test", &programs::tc_uplink(&uplink_filter())).unwrap_or_else(|e| panic!("{e}"));
    for (what, frame, engine) in uplink_cases() {
        let got = sys::test_run(prog.as_fd(), &frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, if engine { TC_ACT_SHOT } else { TC_ACT_OK }, "{what}");
    }
}

/// Frames a pod sends, and whether the pod pinhole gives them to the engine.
fn pod_cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let to_remote_pod = fixture("encap_udp_in");
    let to_internet = {
        let mut f = to_remote_pod.clone();
        set_ipv4_addr(&mut f, 14, IPV4_DST, [93, 184, 216, 34]);
        f
    };
    let to_next_cluster = {
        let mut f = to_remote_pod.clone();
        set_ipv4_addr(&mut f, 14, IPV4_DST, [10, 245, 0, 1]);
        f
    };
    let mut ipv6 = to_remote_pod.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    vec![
        ("ARP request", fixture("arp_request_in"), true),
        ("IPv4 to a pod on another node", to_remote_pod.clone(), true),
        ("IPv4 to a local pod", fixture("local_in"), true),
        ("IPv4 to the internet", to_internet, false),
        ("IPv4 just outside the cluster CIDR", to_next_cluster, false),
        ("IPv6", ipv6, false),
    ]
}

#[test]
fn pod_port_takes_arp_and_cluster_traffic() {
    if !xlane_netlab::privileged("pod_port_takes_arp_and_cluster_traffic") {
        return;
    }
    let truncated = fixture("encap_udp_in")[..30].to_vec();
    let mut cases: Vec<_> =
        pod_cases().into_iter().map(|(w, f, engine)| (w, f, if engine { ENGINE } else { XDP_PASS })).collect();
    cases.push(("truncated IPv4", truncated, XDP_PASS));
    verdicts(|fd| programs::pod(&pod_filter(), fd, XDP_DROP), &cases);
    let pass_all: Vec<_> = cases.into_iter().map(|(w, f, _)| (w, f, XDP_PASS)).collect();
    verdicts(|fd| programs::pod(&pod_filter(), fd, XDP_PASS), &pass_all);
}

#[test]
fn attachment_detaches_on_drop() {
    if !xlane_netlab::privileged("attachment_detaches_on_drop") {
        return;
    }
    use xlane_xdp::attach::{ModePreference, Program, XdpAttachment, XdpMode};
    let ns = xlane_netlab::Netns::new("xlt-attach").unwrap();
    let peer = xlane_netlab::Netns::new("xlt-peer").unwrap();
    xlane_netlab::veth(&ns, "up0", &peer, "up1").unwrap();
    let ifindex = ns.ifindex("up0").unwrap();
    for (mode, prefer) in
        [(XdpMode::Native, ModePreference::Auto), (XdpMode::Generic, ModePreference::Only(XdpMode::Generic))]
    {
        let att = ns
            .enter(|| XdpAttachment::attach(ifindex, "xlane_uplink", 1, Program::Uplink(uplink_filter()), prefer))
            .unwrap()
            .unwrap();
        assert_eq!(att.mode(), mode);
        assert!(ns.has_xdp("up0").unwrap(), "attached in {mode:?}");
        drop(att);
        assert!(!ns.has_xdp("up0").unwrap(), "detached after drop ({mode:?})");
    }
}

/// The pod pinhole at tcx ingress (AF_PACKET pods): what the engine takes is dropped
/// for the host, the rest goes on to it.
#[test]
fn tc_pod_pinhole_leaves_the_host_what_the_engine_does_not_take() {
    if !xlane_netlab::privileged("tc_pod_pinhole_leaves_the_host_what_the_engine_does_not_take") {
        return;
    }
    use xlane_xdp::programs::{TC_ACT_OK, TC_ACT_SHOT};
    let prog = sys::load_tcx_ingress("xlane_test", &programs::tc_pod(&pod_filter())).unwrap_or_else(|e| panic!("{e}"));
    // (Headers outside the linear data, the engine's case, cannot be run: the kernel
    // refuses test frames of IPv4 shorter than its header, EINVAL.)
    for (what, frame, engine) in pod_cases() {
        let got = sys::test_run(prog.as_fd(), &frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, if engine { TC_ACT_SHOT } else { TC_ACT_OK }, "{what}");
    }
}

#[test]
fn host_block_program_drops_every_frame() {
    if !xlane_netlab::privileged("host_block_program_drops_every_frame") {
        return;
    }
    use xlane_xdp::programs::TC_ACT_SHOT;
    let prog = sys::load_tcx_ingress("xlane_test", &programs::tc_drop_all()).unwrap_or_else(|e| panic!("{e}"));
    let (big, _) = xlane_engine::offload::build::TcpSuper::new(vec![7; 1400], 1448).build();
    for (what, frame) in [
        ("ARP request", fixture("arp_request_in")),
        ("IPv4 to a pod on another node", fixture("encap_udp_in")),
        ("VXLAN", fixture("decap_udp_in")),
        ("a TCP segment (test runs take at most a page)", big),
    ] {
        let got = sys::test_run(prog.as_fd(), &frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, TC_ACT_SHOT, "{what}");
    }
}

#[test]
fn host_block_stacks_and_names_its_failure() {
    if !xlane_netlab::privileged("host_block_stacks_and_names_its_failure") {
        return;
    }
    use xlane_xdp::attach::{HostBlockError, HostStackBlock};
    let ns = xlane_netlab::Netns::new("xlt-tcx").unwrap();
    let peer = xlane_netlab::Netns::new("xlt-tcxp").unwrap();
    xlane_netlab::veth(&ns, "h0", &peer, "p0").unwrap();
    let ifindex = ns.ifindex("h0").unwrap();
    let block = ns.enter(|| HostStackBlock::attach(ifindex)).unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(block.ifindex(), ifindex);
    // tcx keeps a list: a second program (another worker's, a restart's) stacks.
    let second = ns.enter(|| HostStackBlock::attach(ifindex)).unwrap().unwrap();
    drop((second, block));
    // No such interface: the error says what was tried. (Detaching on drop is checked by
    // traffic in tests/packet_port.rs.)
    let err = ns.enter(|| HostStackBlock::attach(9999)).unwrap().unwrap_err();
    assert!(matches!(err, HostBlockError::Link { ifindex: 9999, .. }), "{err}");
    assert!(err.to_string().contains("tcx ingress"), "{err}");
}
