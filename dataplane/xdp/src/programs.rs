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
//! the pod's offloads away). Its host-side veth end gets the same pinhole at tcx ingress
//! ([`tc_pod`]: what the engine forwards is dropped there, after the port's packet
//! socket has seen it; the rest goes on to the host's stack), and the socket a classic
//! BPF filter of the same rule ([`socket_pod_filter`]), so the engine never sees what
//! the host handles.

use crate::asm::{Asm, Cond, Label, R0, R1, R2, R3, R4, R5, Size, ne16, ne32};
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
// struct __sk_buff field offsets (direct packet access in tc programs).
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
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

impl PodFilter {
    /// The cluster CIDR as (mask, network), host order.
    fn mask_net(&self) -> (u32, u32) {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len.min(32))) };
        (mask, u32::from(self.cluster) & mask)
    }
}

/// The pod pinhole's rule on the frame at r2 (data) .. r3 (data end): ARP and IPv4 to
/// the cluster CIDR fall through (the engine's), anything else jumps to `host`, and a
/// frame whose headers are not all in the data jumps to `short`.
fn pod_rule(a: &mut Asm, f: &PodFilter, host: Label, short: Label) {
    let (mask, net) = f.mask_net();
    let engine = a.label();
    a.mov(R4, R2)
        .add_imm(R4, ETH_HLEN)
        .jmp_reg(Cond::Gt, R4, R3, short)
        .load(Size::H, R5, R2, 12)
        .jmp32_imm(Cond::Eq, R5, ne16(0x0806), engine)
        .jmp32_imm(Cond::Ne, R5, ne16(0x0800), host)
        .mov(R4, R2)
        .add_imm(R4, ETH_HLEN + IPV4_MIN)
        .jmp_reg(Cond::Gt, R4, R3, short)
        .load(Size::W, R5, R2, 30)
        .and32_imm(R5, ne32(mask))
        .jmp32_imm(Cond::Ne, R5, ne32(net), host);
    a.bind(engine);
}

/// The pod (and host) port program.
#[must_use]
pub fn pod(f: &PodFilter, xskmap_fd: i32, miss: u32) -> Vec<u64> {
    let mut a = Asm::new();
    let pass = a.label();
    a.load(Size::W, R2, R1, MD_DATA).load(Size::W, R3, R1, MD_DATA_END);
    pod_rule(&mut a, f, pass, pass);
    redirect_tail(&mut a, xskmap_fd, miss);
    a.bind(pass).mov_imm(R0, XDP_PASS.cast_signed()).exit();
    a.finish()
}

/// The pod pinhole at tcx ingress of the host-side veth end of a pod read through
/// AF_PACKET: ARP and IPv4 to the cluster CIDR are the engine's (`TC_ACT_SHOT`: the
/// port's socket, a packet tap, has already seen them); anything else goes on to the
/// host's routing and NAT (`TC_ACT_OK`), as `XDP_PASS` does in [`pod`]. A frame whose
/// headers are not in the linear data is the engine's too: the socket sees every byte
/// and the engine decides, rather than the host routing a copy.
#[must_use]
pub fn tc_pod(f: &PodFilter) -> Vec<u64> {
    let mut a = Asm::new();
    let pass = a.label();
    let drop = a.label();
    a.load(Size::W, R2, R1, SKB_DATA).load(Size::W, R3, R1, SKB_DATA_END);
    pod_rule(&mut a, f, pass, drop);
    a.bind(drop).mov_imm(R0, TC_ACT_SHOT.cast_signed()).exit();
    a.bind(pass).mov_imm(R0, TC_ACT_OK.cast_signed()).exit();
    a.finish()
}

/// A classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassicInsn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// The pod pinhole as a classic BPF socket filter for the port's packet socket (frames
/// from the Ethernet header): accept ARP and IPv4 to the cluster CIDR whole, refuse the
/// rest (the host's stack handles it, see [`tc_pod`]). A read past the frame's end
/// refuses it, as classic BPF does.
#[must_use]
pub fn socket_pod_filter(f: &PodFilter) -> Vec<ClassicInsn> {
    const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LDW_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let (mask, net) = f.mask_net();
    let i = |code, jt, jf, k| ClassicInsn { code, jt, jf, k };
    vec![
        i(LDH_ABS, 0, 0, 12),
        i(JEQ_K, 4, 0, 0x0806), // ARP → accept
        i(JEQ_K, 0, 4, 0x0800), // not IPv4 → refuse
        i(LDW_ABS, 0, 0, 30),
        i(AND_K, 0, 0, mask),
        i(JEQ_K, 0, 1, net), // outside the cluster → refuse
        i(RET_K, 0, 0, u32::MAX),
        i(RET_K, 0, 0, 0),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a classic filter the way the kernel does for the opcodes it uses; a load past
    /// the frame refuses it.
    fn run(prog: &[ClassicInsn], frame: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                0x28 | 0x20 => {
                    let (at, n) = (i.k as usize, if i.code == 0x28 { 2 } else { 4 });
                    let Some(b) = frame.get(at..at + n) else { return 0 };
                    a = b.iter().fold(0, |v, &x| (v << 8) | u32::from(x));
                }
                0x54 => a &= i.k,
                0x15 => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                0x06 => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn the_socket_filter_takes_what_the_pod_pinhole_gives_the_engine() {
        let f = PodFilter { cluster: Ipv4Addr::new(10, 244, 0, 0), prefix_len: 16 };
        let prog = socket_pod_filter(&f);
        let frame = |ethertype: u16, dst: [u8; 4]| {
            let mut v = vec![0u8; 60];
            v[12..14].copy_from_slice(&ethertype.to_be_bytes());
            v[30..34].copy_from_slice(&dst);
            v
        };
        assert_eq!(run(&prog, &frame(0x0806, [0; 4])), u32::MAX, "ARP");
        assert_eq!(run(&prog, &frame(0x0800, [10, 244, 2, 3])), u32::MAX, "a pod");
        assert_eq!(run(&prog, &frame(0x0800, [10, 244, 255, 255])), u32::MAX, "the CIDR's last address");
        assert_eq!(run(&prog, &frame(0x0800, [10, 245, 0, 1])), 0, "just outside");
        assert_eq!(run(&prog, &frame(0x0800, [93, 184, 216, 34])), 0, "the internet");
        assert_eq!(run(&prog, &frame(0x86dd, [10, 244, 2, 3])), 0, "IPv6");
        assert_eq!(run(&prog, &frame(0x0800, [10, 244, 2, 3])[..30]), 0, "truncated");
    }
}
