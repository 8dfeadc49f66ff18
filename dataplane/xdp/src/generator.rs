//! The lab's packet generator: an XDP program run in the kernel's live-frames test mode
//! (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES) on a template frame, transmitting
//! each copy with XDP_TX out of a pod's interface. It reaches millions of frames per
//! second on one core where a socket sender manages a few hundred thousand (PLATFORM.md),
//! so the dataplane under test, not the generator, sets the rate. Each copy gets a random
//! UDP source port: many flows, as RSS and flow hashing should see them.

use crate::asm::{Asm, Cond, R0, R1, R2, R6, R7, Size};
use crate::sys;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};

/// `bpf_get_prandom_u32`.
const HELPER_PRANDOM_U32: i32 = 7;
const XDP_TX: i32 = 3;
const XDP_DROP: i32 = 1;
/// Ethernet + IPv4 without options: the UDP source port's offset.
const UDP_SRC_PORT: i16 = 14 + 20;

/// A 60-byte Ethernet/IPv4/UDP frame (64 on a wire with its FCS) from `src` to
/// `dst:dst_port` with an 18-byte payload and no UDP checksum (the generator rewrites the
/// source port of every copy; IPv4 allows UDP without a checksum).
#[must_use]
pub fn udp_template(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[..12].copy_from_slice(&[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    ip[10..12].copy_from_slice(&(!u16::try_from(folded).expect("folded twice")).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39]);
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&[0x00, 26, 0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    f
}

/// The generator program: loaded once, run many times.
#[derive(Debug)]
pub struct Generator {
    prog: OwnedFd,
}

/// The program: if the frame holds an Ethernet/IPv4/UDP header, write a random source
/// port and transmit it; otherwise drop it.
#[must_use]
pub fn program() -> Vec<u64> {
    let mut a = Asm::new();
    let drop = a.label();
    a.load(Size::W, R6, R1, 0) // r6 = ctx->data
        .load(Size::W, R7, R1, 4) // r7 = ctx->data_end
        .mov(R2, R6)
        .add_imm(R2, i32::from(UDP_SRC_PORT) + 8)
        .jmp_reg(Cond::Gt, R2, R7, drop)
        .call(HELPER_PRANDOM_U32)
        .store(Size::H, R6, UDP_SRC_PORT, R0)
        .mov_imm(R0, XDP_TX)
        .exit()
        .bind(drop)
        .mov_imm(R0, XDP_DROP)
        .exit();
    a.finish()
}

impl Generator {
    /// Load the program.
    ///
    /// # Errors
    /// The verifier's refusal (with its log) or missing privilege.
    pub fn new() -> io::Result<Self> {
        let prog = sys::load_xdp("xlane_gen", &program()).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { prog })
    }

    /// Send `count` copies of `frame` out of `ifindex` (in the calling thread's network
    /// namespace), each with a random UDP source port. Blocks until done; returns early
    /// with `EINTR` on a signal.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn send(&self, frame: &[u8], ifindex: u32, count: u32) -> io::Result<()> {
        sys::test_run_xdp_live(self.prog.as_fd(), frame, ifindex, count)
    }

    /// The verdict for one frame (no transmission): for tests.
    ///
    /// # Errors
    /// The kernel's error.
    pub fn verdict(&self, frame: &[u8]) -> io::Result<u32> {
        sys::test_run_xdp(self.prog.as_fd(), frame)
    }
}
