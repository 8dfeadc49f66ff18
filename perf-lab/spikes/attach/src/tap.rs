//! (c') A tap per pod (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte virtio-net header,
//! TUNSETOFFLOAD CSUM + TSO4 + TSO6), created here in the node namespace and moved into
//! the pod's namespace by the orchestrator; served with one read(2) and one write(2) per
//! packet (super-packets included).
//!
//! (c), the same taps served through vhost-net, could not be run: this machine's kernel
//! is built without CONFIG_VHOST_NET (and without module support), so /dev/vhost-net does
//! not exist. See the README.

use crate::fwd::{DirStats, MAC_A, MAC_B, Stop, report, rewrite, wait};
use anyhow::{Context as _, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Header size set with TUNSETVNETHDRSZ (virtio_net_hdr_mrg_rxbuf, what a VERSION_1
/// virtio-net device and vhost-net use).
pub const VNET: usize = 12;
const SLOT: usize = 68 * 1024;
const BATCH: usize = 32;

/// Create tap `name` in the calling thread's namespace with a vnet header and offloads.
pub fn create(name: &str) -> anyhow::Result<OwnedFd> {
    // SAFETY: open(2) of a NUL-terminated path; the result is checked.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if raw < 0 {
        bail!("open /dev/net/tun: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    anyhow::ensure!(name.len() < libc::IFNAMSIZ, "tap name {name} too long");
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `ifr` is, live for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut ifr) } < 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    let hdr: libc::c_int = VNET as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, live for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &raw const hdr) } < 0 {
        bail!("TUNSETVNETHDRSZ: {}", std::io::Error::last_os_error());
    }
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), no pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(offloads)) } < 0 {
        bail!("TUNSETOFFLOAD: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn pass(src: &OwnedFd, dst: &OwnedFd, buf: &mut [u8], mac: &[u8; 6], st: &mut DirStats) -> usize {
    let mut n = 0;
    while n < BATCH {
        // SAFETY: `buf` is a live, writable buffer of buf.len() bytes.
        let r = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            break;
        }
        let len = r as usize;
        n += 1;
        if len < VNET + 14 {
            st.dropped += 1;
            continue;
        }
        st.vnet(&buf[..VNET], len - VNET);
        rewrite(&mut buf[VNET..len], mac);
        // SAFETY: the first `len` bytes of `buf` are initialised and live for the call.
        let w = unsafe { libc::write(dst.as_raw_fd(), buf.as_ptr().cast(), len) };
        if w != r {
            st.dropped += 1;
        }
    }
    if n > 0 {
        st.bursts += 1;
    }
    n
}

pub fn run(a: &str, b: &str, stop: &Stop) -> anyhow::Result<()> {
    let fa = create(a).context("tap A")?;
    let fb = create(b).context("tap B")?;
    let mut buf = vec![0u8; SLOT];
    let (mut ab, mut ba) = (DirStats::default(), DirStats::default());
    println!("ready");
    while !stop.now() {
        let mut moved = 0;
        for _ in 0..64 {
            let k = pass(&fa, &fb, &mut buf, &MAC_B, &mut ab) + pass(&fb, &fa, &mut buf, &MAC_A, &mut ba);
            moved += k;
            if k == 0 {
                break;
            }
        }
        if moved == 0 {
            wait(&[fa.as_raw_fd(), fb.as_raw_fd()], 10);
        }
    }
    report("tap", &ab, &ba, serde_json::json!({}));
    Ok(())
}
