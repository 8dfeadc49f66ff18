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

/// The uplink pinhole's rule on the frame at r2 (data) .. r3 (data end): IPv4, not
/// fragmented, UDP to the VTEP's address and VXLAN port falls through (the engine's);
/// anything else, or headers not all in the data, jumps to `host`. Clobbers r2.
fn uplink_rule(a: &mut Asm, f: &UplinkFilter, host: Label) {
    a.mov(R4, R2)
        .add_imm(R4, ETH_HLEN + IPV4_MIN)
        .jmp_reg(Cond::Gt, R4, R3, host)
        .load(Size::H, R5, R2, 12)
        .jmp32_imm(Cond::Ne, R5, ne16(0x0800), host)
        .load(Size::B, R5, R2, 23)
        .jmp32_imm(Cond::Ne, R5, 17, host)
        .load(Size::W, R5, R2, 30)
        .jmp32_imm(Cond::Ne, R5, ne32(u32::from(f.vtep_ip)), host)
        .load(Size::H, R5, R2, 20)
        .jmp32_imm(Cond::Set, R5, ne16(0x3fff), host)
        // UDP header at 14 + IHL*4: IHL is 4 bits, so the offset stays bounded.
        .load(Size::B, R5, R2, 14)
        .and_imm(R5, 0x0f)
        .lsh_imm(R5, 2)
        .jmp_imm(Cond::Lt, R5, IPV4_MIN, host)
        .add(R2, R5)
        .mov(R4, R2)
        .add_imm(R4, ETH_HLEN + UDP_HLEN)
        .jmp_reg(Cond::Gt, R4, R3, host)
        .load(Size::H, R5, R2, 16)
        .jmp32_imm(Cond::Ne, R5, ne16(f.vxlan_port), host);
}

/// The uplink pinhole program.
#[must_use]
pub fn uplink(f: &UplinkFilter, xskmap_fd: i32, miss: u32) -> Vec<u64> {
    let mut a = Asm::new();
    let pass = a.label();
    a.load(Size::W, R2, R1, MD_DATA).load(Size::W, R3, R1, MD_DATA_END);
    uplink_rule(&mut a, f, pass);
    redirect_tail(&mut a, xskmap_fd, miss);
    a.bind(pass).mov_imm(R0, XDP_PASS.cast_signed()).exit();
    a.finish()
}

/// The uplink pinhole at tcx ingress of an uplink read through a packet tap
/// ([`crate::packet::UplinkTap`]): VXLAN to the VTEP is the engine's (`TC_ACT_SHOT`:
/// the tap has already seen it), anything else goes on to the host's stack
/// (`TC_ACT_OK`), as `XDP_PASS` does in [`uplink`]. Headers outside the linear data go
/// to the host as in [`uplink`] (no driver puts a frame's headers there).
#[must_use]
pub fn tc_uplink(f: &UplinkFilter) -> Vec<u64> {
    let mut a = Asm::new();
    let pass = a.label();
    a.load(Size::W, R2, R1, SKB_DATA).load(Size::W, R3, R1, SKB_DATA_END);
    uplink_rule(&mut a, f, pass);
    a.mov_imm(R0, TC_ACT_SHOT.cast_signed()).exit();
    a.bind(pass).mov_imm(R0, TC_ACT_OK.cast_signed()).exit();
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
    use classic::{AND_K, JEQ_K, LDH_ABS, LDW_ABS, RET_K};
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

/// The uplink pinhole as a classic BPF socket filter for the uplink's packet tap:
/// accept IPv4, not fragmented, UDP to the VTEP's address and VXLAN port, whole;
/// refuse the rest (the host's, see [`tc_uplink`]).
#[must_use]
pub fn socket_uplink_filter(f: &UplinkFilter) -> Vec<ClassicInsn> {
    let i = |code, jt, jf, k| ClassicInsn { code, jt, jf, k };
    vec![
        i(classic::LDH_ABS, 0, 0, 12),
        i(classic::JEQ_K, 0, 10, 0x0800), // not IPv4 → refuse
        i(classic::LDB_ABS, 0, 0, 23),
        i(classic::JEQ_K, 0, 8, 17), // not UDP → refuse
        i(classic::LDW_ABS, 0, 0, 30),
        i(classic::JEQ_K, 0, 6, u32::from(f.vtep_ip)), // to another address → refuse
        i(classic::LDH_ABS, 0, 0, 20),
        i(classic::JSET_K, 4, 0, 0x3fff),  // a fragment → refuse
        i(classic::LDX_MSH, 0, 0, 14),     // X = the IPv4 header's length
        i(classic::LDH_IND, 0, 0, 14 + 2), // the UDP destination port
        i(classic::JEQ_K, 0, 1, u32::from(f.vxlan_port)),
        i(classic::RET_K, 0, 0, u32::MAX),
        i(classic::RET_K, 0, 0, 0),
    ]
}

/// Classic BPF opcodes (`linux/filter.h`).
mod classic {
    /// `BPF_LD | BPF_B | BPF_ABS`.
    pub(super) const LDB_ABS: u16 = 0x30;
    /// `BPF_LD | BPF_H | BPF_ABS`.
    pub(super) const LDH_ABS: u16 = 0x28;
    /// `BPF_LD | BPF_W | BPF_ABS`.
    pub(super) const LDW_ABS: u16 = 0x20;
    /// `BPF_LD | BPF_H | BPF_IND`: a half-word at X + k.
    pub(super) const LDH_IND: u16 = 0x48;
    /// `BPF_LDX | BPF_B | BPF_MSH`: X = 4 × (the byte at k & 0xf).
    pub(super) const LDX_MSH: u16 = 0xb1;
    /// `BPF_JMP | BPF_JEQ | BPF_K`.
    pub(super) const JEQ_K: u16 = 0x15;
    /// `BPF_JMP | BPF_JSET | BPF_K`.
    pub(super) const JSET_K: u16 = 0x45;
    /// `BPF_ALU | BPF_AND | BPF_K`.
    pub(super) const AND_K: u16 = 0x54;
    /// `BPF_RET | BPF_K`.
    pub(super) const RET_K: u16 = 0x06;
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
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load =
            |at: usize, n: usize| frame.get(at..at + n).map(|b| b.iter().fold(0, |v, &y| (v << 8) | u32::from(y)));
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                classic::LDB_ABS | classic::LDH_ABS | classic::LDW_ABS => {
                    let n = match i.code {
                        classic::LDB_ABS => 1,
                        classic::LDH_ABS => 2,
                        _ => 4,
                    };
                    let Some(v) = load(i.k as usize, n) else { return 0 };
                    a = v;
                }
                classic::LDH_IND => {
                    let Some(v) = load((x + i.k) as usize, 2) else { return 0 };
                    a = v;
                }
                classic::LDX_MSH => {
                    let Some(v) = load(i.k as usize, 1) else { return 0 };
                    x = 4 * (v & 0xf);
                }
                classic::AND_K => a &= i.k,
                classic::JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                classic::JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                classic::RET_K => return i.k,
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

    #[test]
    fn the_uplink_socket_filter_takes_what_the_uplink_pinhole_gives_the_engine() {
        let f = UplinkFilter { vtep_ip: Ipv4Addr::new(192, 168, 50, 1), vxlan_port: 8472 };
        let prog = socket_uplink_filter(&f);
        // Ethernet, IPv4 (IHL `ihl`) from 192.168.50.2 to `dst`, UDP to `port`.
        let frame = |ihl: u8, dst: [u8; 4], port: u16| {
            let mut v = vec![0u8; 14 + usize::from(ihl) * 4 + 8 + 50];
            v[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            v[14] = 0x40 | ihl;
            v[20] = 0x40; // DF
            v[23] = 17;
            v[26..30].copy_from_slice(&[192, 168, 50, 2]);
            v[30..34].copy_from_slice(&dst);
            let udp = 14 + usize::from(ihl) * 4;
            v[udp + 2..udp + 4].copy_from_slice(&port.to_be_bytes());
            v
        };
        // Every check refuses by jumping to the last instruction, the refusal.
        for (k, i) in prog.iter().enumerate() {
            if matches!(i.code, classic::JEQ_K | classic::JSET_K) {
                let refuse = k + 1 + usize::from(if i.code == classic::JSET_K { i.jt } else { i.jf });
                assert_eq!(refuse, prog.len() - 1, "instruction {k} refuses elsewhere");
            }
        }
        let vtep = [192, 168, 50, 1];
        assert_eq!(run(&prog, &frame(5, vtep, 8472)), u32::MAX, "VXLAN to the VTEP");
        assert_eq!(run(&prog, &frame(6, vtep, 8472)), u32::MAX, "with IPv4 options");
        assert_eq!(run(&prog, &frame(5, vtep, 4789)), 0, "another UDP port");
        assert_eq!(run(&prog, &frame(6, vtep, 4789)), 0, "another UDP port, behind options");
        assert_eq!(run(&prog, &frame(5, [192, 168, 50, 9], 8472)), 0, "another address");
        let mut tcp = frame(5, vtep, 8472);
        tcp[23] = 6;
        assert_eq!(run(&prog, &tcp), 0, "TCP");
        let mut fragment = frame(5, vtep, 8472);
        fragment[20] = 0x20;
        assert_eq!(run(&prog, &fragment), 0, "a first fragment (MF)");
        fragment[20..22].copy_from_slice(&[0, 0x10]);
        assert_eq!(run(&prog, &fragment), 0, "a later fragment");
        let mut ipv6 = frame(5, vtep, 8472);
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(run(&prog, &ipv6), 0, "IPv6");
        assert_eq!(run(&prog, &frame(5, vtep, 8472)[..36]), 0, "cut in the UDP header");
    }
}
