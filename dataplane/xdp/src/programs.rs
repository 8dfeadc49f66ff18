//! The XDP programs, emitted as BPF instructions (no clang at build time).
//!
//! Both are "pinholes": they redirect to the AF_XDP socket of the receive queue only the
//! traffic the engine handles, and hand everything else to the kernel (`XDP_PASS`), so
//! the host keeps its NIC (SSH, kubelet, its own ARP) and pods keep a path to the world
//! through the host's routing and NAT.
//!
//! * Uplink: IPv4, not fragmented, UDP to the local VTEP address and VXLAN port.
//!   Fragments pass: the engine never reassembles VXLAN.
//! * Pod (and host) port: ARP, and IPv4 to the cluster CIDR.
//!
//! A redirect to a queue without a socket falls back to `miss` (XDP_PASS in
//! production, so a restarting xlaned does not black-hole the host; XDP_DROP in tests,
//! to tell "redirect" from "pass" under BPF_PROG_TEST_RUN without a socket).
//!
//! A pod read through AF_PACKET ([`crate::packet`]) has no XDP program (one would take
//! the pod's offloads away); its host-side veth end gets [`tc_drop_all`] at tcx ingress
//! instead, so the host's stack does not see the frames the engine forwards.

use crate::asm::{Asm, Cond, R0, R1, R2, R3, R4, R5, Size, ne16, ne32};
use std::net::Ipv4Addr;

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;
/// `TC_ACT_OK`: a tc classifier passes the packet on.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: a tc classifier drops the packet.
pub const TC_ACT_SHOT: u32 = 2;

const HELPER_REDIRECT_MAP: i32 = 51;
const ETH_HLEN: i32 = 14;
const IPV4_MIN: i32 = 20;
const UDP_HLEN: i32 = 8;
// struct xdp_md field offsets.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;
const MD_RX_QUEUE: i16 = 16;

/// What the uplink program lets through to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkFilter {
    /// The local VTEP address.
    pub vtep_ip: Ipv4Addr,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
}

/// What a pod or host port program lets through to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodFilter {
    /// Cluster CIDR network address.
    pub cluster: Ipv4Addr,
    /// Cluster CIDR length.
    pub prefix_len: u8,
}

/// Emit `return bpf_redirect_map(map, ctx->rx_queue_index, miss)`. Expects the context
/// in r1.
fn redirect_tail(a: &mut Asm, xskmap_fd: i32, miss: u32) {
    a.load(Size::W, R2, R1, MD_RX_QUEUE)
        .load_map_fd(R1, xskmap_fd)
        .mov_imm(R3, i32::try_from(miss).expect("an XDP action"))
        .call(HELPER_REDIRECT_MAP)
        .exit();
}

/// The uplink pinhole program.
#[must_use]
pub fn uplink(f: &UplinkFilter, xskmap_fd: i32, miss: u32) -> Vec<u64> {
    let mut a = Asm::new();
    let pass = a.label();
    a.load(Size::W, R2, R1, MD_DATA)
        .load(Size::W, R3, R1, MD_DATA_END)
        .mov(R4, R2)
        .add_imm(R4, ETH_HLEN + IPV4_MIN)
        .jmp_reg(Cond::Gt, R4, R3, pass)
        .load(Size::H, R5, R2, 12)
        .jmp32_imm(Cond::Ne, R5, ne16(0x0800), pass)
        .load(Size::B, R5, R2, 23)
        .jmp32_imm(Cond::Ne, R5, 17, pass)
        .load(Size::W, R5, R2, 30)
        .jmp32_imm(Cond::Ne, R5, ne32(u32::from(f.vtep_ip)), pass)
        .load(Size::H, R5, R2, 20)
        .jmp32_imm(Cond::Set, R5, ne16(0x3fff), pass)
        // UDP header at 14 + IHL*4: IHL is 4 bits, so the offset stays bounded.
        .load(Size::B, R5, R2, 14)
        .and_imm(R5, 0x0f)
        .lsh_imm(R5, 2)
        .jmp_imm(Cond::Lt, R5, IPV4_MIN, pass)
        .add(R2, R5)
        .mov(R4, R2)
        .add_imm(R4, ETH_HLEN + UDP_HLEN)
        .jmp_reg(Cond::Gt, R4, R3, pass)
        .load(Size::H, R5, R2, 16)
        .jmp32_imm(Cond::Ne, R5, ne16(f.vxlan_port), pass);
    redirect_tail(&mut a, xskmap_fd, miss);
    a.bind(pass).mov_imm(R0, XDP_PASS.cast_signed()).exit();
    a.finish()
}

/// The pod (and host) port program.
#[must_use]
pub fn pod(f: &PodFilter, xskmap_fd: i32, miss: u32) -> Vec<u64> {
    let mask = if f.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(f.prefix_len.min(32))) };
    let net = u32::from(f.cluster) & mask;
    let mut a = Asm::new();
    let pass = a.label();
    let redirect = a.label();
    a.load(Size::W, R2, R1, MD_DATA)
        .load(Size::W, R3, R1, MD_DATA_END)
        .mov(R4, R2)
        .add_imm(R4, ETH_HLEN)
        .jmp_reg(Cond::Gt, R4, R3, pass)
        .load(Size::H, R5, R2, 12)
        .jmp32_imm(Cond::Eq, R5, ne16(0x0806), redirect)
        .jmp32_imm(Cond::Ne, R5, ne16(0x0800), pass)
        .mov(R4, R2)
        .add_imm(R4, ETH_HLEN + IPV4_MIN)
        .jmp_reg(Cond::Gt, R4, R3, pass)
        .load(Size::W, R5, R2, 30)
        .and32_imm(R5, ne32(mask))
        .jmp32_imm(Cond::Ne, R5, ne32(net), pass);
    a.bind(redirect);
    redirect_tail(&mut a, xskmap_fd, miss);
    a.bind(pass).mov_imm(R0, XDP_PASS.cast_signed()).exit();
    a.finish()
}

/// The host-side veth end's tcx ingress program for a pod read through AF_PACKET:
/// `return TC_ACT_SHOT`. Packet taps (the port's socket) run before tc ingress and
/// still see every frame; the host's stack sees none, so it neither routes nor answers
/// what the engine forwards.
#[must_use]
pub fn tc_drop_all() -> Vec<u64> {
    let mut a = Asm::new();
    a.mov_imm(R0, TC_ACT_SHOT.cast_signed()).exit();
    a.finish()
}
