//! A tcx ingress program that drops everything (`return TC_ACT_SHOT`), linked to the host
//! end of each pod veth for the AF_PACKET kind: packet taps (ETH_P_ALL sockets) see a
//! frame in `__netif_receive_skb_core` before tc ingress runs, so the forwarder's socket
//! still gets every frame while the node's stack gets none. The link goes away with the
//! process. (This kernel has neither cls_matchall nor act_gact, so
//! `tc filter ... matchall action drop` is not available here.)

use anyhow::bail;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> anyhow::Result<OwnedFd> {
    // SAFETY: every caller passes the attr struct of `cmd` (a prefix of union bpf_attr;
    // the kernel zero-fills the rest) whose pointers point at buffers live for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr).cast::<libc::c_void>(), size_of::<T>()) };
    if r < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Link a drop-everything program to `ifname`'s tcx ingress; keep the returned fds.
pub fn drop_ingress(ifname: &str) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    // mov64 r0, 2 (TC_ACT_SHOT); exit
    let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x95];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"spk_drop");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_TCX_INGRESS,
        ..Default::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load)?;
    let ifindex = nix::net::if_::if_nametoindex(ifname)?;
    let mut link = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        flags: 0,
    };
    let link = bpf(BPF_LINK_CREATE, &mut link)?;
    Ok((prog, link))
}
