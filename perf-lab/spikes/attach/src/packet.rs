//! (b) AF_PACKET with PACKET_VNET_HDR on the host ends of the pod veths: no XDP on the
//! veths, so the pods keep TSO/GSO and their super-packets arrive whole with a 10-byte
//! virtio_net_hdr in front. recvmmsg/sendmmsg batches, PACKET_QDISC_BYPASS,
//! PACKET_IGNORE_OUTGOING. The host stack is kept off these frames by a tc ingress drop
//! on each host end (set up by the orchestrator; packet taps run before tc ingress).

use crate::fwd::{DirStats, MAC_A, MAC_B, Stop, report, rewrite, wait};
use anyhow::{Context as _, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BATCH: usize = 32;
const VNET: usize = 10;
/// 64 KiB super-packet + Ethernet header + virtio_net_hdr, rounded up.
const SLOT: usize = 68 * 1024;

fn setopt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: `val` is a live c_int and its size is passed; the kernel copies it in.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw const val).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        bail!("setsockopt({level}, {opt}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A packet socket on `ifname` with the options of this attach kind.
fn open(ifname: &str) -> anyhow::Result<OwnedFd> {
    let ifindex = nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no interface {ifname}"))?;
    // Protocol 0: no frames until bound (so none from other interfaces queue up).
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setopt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
    setopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
    setopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
    setopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20)?;
    setopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20)?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = i32::try_from(ifindex)?;
    // SAFETY: `sll` is a live sockaddr_ll and its exact size is passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        bail!("bind AF_PACKET to {ifname}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// One direction's batch buffers and message headers.
struct Batch {
    buf: Vec<u8>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Self> {
        let mut b = Box::new(Self { buf: vec![0u8; SLOT * BATCH], iov: Vec::new(), msgs: Vec::new() });
        let base = b.buf.as_mut_ptr();
        // SAFETY (pointer arithmetic): i * SLOT < BATCH * SLOT = buf.len().
        b.iov = (0..BATCH).map(|i| libc::iovec { iov_base: unsafe { base.add(i * SLOT) }.cast(), iov_len: SLOT }).collect();
        let iovp = b.iov.as_mut_ptr();
        b.msgs = (0..BATCH)
            .map(|i| {
                // SAFETY: mmsghdr is plain data; zero is a valid value to fill in.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY (pointer arithmetic): i < BATCH = iov.len().
                m.msg_hdr.msg_iov = unsafe { iovp.add(i) };
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        b
    }
}

/// Move one batch from `src` to `dst`; returns frames received.
fn pass(src: &OwnedFd, dst: &OwnedFd, b: &mut Batch, mac: &[u8; 6], st: &mut DirStats) -> usize {
    for (m, iov) in b.msgs.iter_mut().zip(&mut b.iov) {
        iov.iov_len = SLOT;
        m.msg_len = 0;
        m.msg_hdr.msg_flags = 0;
    }
    // SAFETY: msgs[..BATCH] each point at one live iovec into `b.buf` (set up in
    // Batch::new; the Box keeps every address stable); the kernel writes at most iov_len
    // bytes into each.
    let n = unsafe {
        libc::recvmmsg(src.as_raw_fd(), b.msgs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
    };
    if n <= 0 {
        return 0;
    }
    let n = n as usize;
    st.bursts += 1;
    for i in 0..n {
        let len = b.msgs[i].msg_len as usize;
        if b.msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len < VNET + 14 {
            st.dropped += 1;
            b.iov[i].iov_len = 0;
            continue;
        }
        let slot = &mut b.buf[i * SLOT..i * SLOT + len];
        st.vnet(&slot[..VNET], len - VNET);
        rewrite(&mut slot[VNET..], mac);
        b.iov[i].iov_len = len;
    }
    // Send them all, in order; a full socket buffer gets a few short retries.
    let mut sent = 0usize;
    let mut tries = 0;
    while sent < n && tries < 1000 {
        // SAFETY: as for recvmmsg; iov_len now holds each message's length.
        let r = unsafe {
            libc::sendmmsg(dst.as_raw_fd(), b.msgs[sent..].as_mut_ptr(), (n - sent) as u32, libc::MSG_DONTWAIT)
        };
        if r > 0 {
            sent += r as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::ENOBUFS) {
                // A frame the device refused: skip it.
                st.dropped += 1;
                sent += 1;
            }
            tries += 1;
        }
    }
    st.dropped += (n - sent) as u64;
    n
}

/// PACKET_STATISTICS: (frames queued to the socket, frames dropped at it) since open.
fn stats(fd: &OwnedFd) -> serde_json::Value {
    let mut st = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `st` and `len` are live and `len` holds st's size; the kernel writes at most that.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_STATISTICS, (&raw mut st).cast(), &raw mut len) };
    if r < 0 {
        return serde_json::Value::Null;
    }
    serde_json::json!({"tp_packets": st.tp_packets, "tp_drops": st.tp_drops})
}

pub fn run(a: &str, b: &str, stop: &Stop) -> anyhow::Result<()> {
    let (fa, fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (Batch::new(), Batch::new());
    let (mut ab, mut ba_st) = (DirStats::default(), DirStats::default());
    println!("ready");
    while !stop.now() {
        let mut moved = 0;
        for _ in 0..64 {
            let k = pass(&fa, &fb, &mut ba, &MAC_B, &mut ab) + pass(&fb, &fa, &mut bb, &MAC_A, &mut ba_st);
            moved += k;
            if k == 0 {
                break;
            }
        }
        if moved == 0 {
            wait(&[fa.as_raw_fd(), fb.as_raw_fd()], 10);
        }
    }
    report("packet", &ab, &ba_st, serde_json::json!({"a": stats(&fa), "b": stats(&fb)}));
    Ok(())
}
