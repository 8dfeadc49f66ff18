//! What every forwarder shares: the fixed MAC rewrite, the stop condition, counters of
//! what the virtio-net headers said, and the idle wait.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Pod A's MAC (set on its interface by the orchestrator).
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// Pod B's MAC.
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
/// The "gateway" MAC both pods have a static neighbour entry for.
pub const MAC_GW: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Rewrite a frame for delivery to the pod whose MAC is `dst`.
#[inline]
pub fn rewrite(frame: &mut [u8], dst: &[u8; 6]) {
    if frame.len() >= 12 {
        frame[..6].copy_from_slice(dst);
        frame[6..12].copy_from_slice(&MAC_GW);
    }
}

/// virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// One direction's counters.
#[derive(Debug, Default, Clone)]
pub struct DirStats {
    pub frames: u64,
    pub bytes: u64,
    pub gso_frames: u64,
    pub needs_csum: u64,
    pub data_valid: u64,
    pub max_len: u32,
    pub gso_types: [u64; 8],
    pub gso_size_last: u16,
    pub dropped: u64,
    /// Bursts (receive calls that returned frames), to see the batching.
    pub bursts: u64,
}

impl DirStats {
    /// Count a frame without a virtio-net header.
    #[inline]
    pub fn frame(&mut self, len: usize) {
        self.frames += 1;
        self.bytes += len as u64;
        self.max_len = self.max_len.max(u32::try_from(len).unwrap_or(u32::MAX));
    }

    /// Count a frame that came with the virtio-net header `hdr` (first 10 bytes used).
    #[inline]
    pub fn vnet(&mut self, hdr: &[u8], frame_len: usize) {
        self.frame(frame_len);
        let (flags, gso_type) = (hdr[0], hdr[1]);
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            self.needs_csum += 1;
        }
        if flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
            self.data_valid += 1;
        }
        let t = gso_type & 0x7f;
        self.gso_types[usize::from(t.min(7))] += 1;
        if t != 0 {
            self.gso_frames += 1;
            self.gso_size_last = u16::from_le_bytes([hdr[4], hdr[5]]);
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "frames": self.frames, "bytes": self.bytes, "gso_frames": self.gso_frames,
            "needs_csum": self.needs_csum, "data_valid": self.data_valid, "max_len": self.max_len,
            "gso_types": self.gso_types, "gso_size_last": self.gso_size_last, "dropped": self.dropped,
            "bursts": self.bursts,
        })
    }
}

/// When to stop: stdin closed (the orchestrator went away or is done), or a deadline.
#[derive(Debug, Clone)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Instant,
}

impl Stop {
    /// Stop when stdin reaches EOF or after `max`.
    pub fn new(max: Duration) -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            f.store(true, Ordering::Relaxed);
        });
        Self { flag, deadline: Instant::now() + max }
    }

    /// Whether to stop now (cheap enough for every idle pass).
    pub fn now(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Wait until one of `fds` is readable, at most `ms` milliseconds.
pub fn wait(fds: &[RawFd], ms: i32) {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd structures for the whole call.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
}

/// Print the forwarder's counters as one JSON line on stderr.
pub fn report(kind: &str, a_to_b: &DirStats, b_to_a: &DirStats, extra: serde_json::Value) {
    eprintln!(
        "{}",
        serde_json::json!({"kind": kind, "a_to_b": a_to_b.json(), "b_to_a": b_to_a.json(), "extra": extra})
    );
}
