//! Passing descriptors to another process over a unix stream socket (`SCM_RIGHTS`):
//! how a hitless restart hands over UMEMs, sockets and BPF links. Here because turning
//! a received number into an owned descriptor is unsafe, and this is the crate for it.
//!
//! Descriptors travel in chunks of at most [`CHUNK`] (the kernel takes up to 253 per
//! message), each chunk riding on one byte so that the receiver, reading one byte per
//! call, never merges two chunks' descriptors or loses one.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors per message.
pub const CHUNK: usize = 250;
/// The byte each chunk rides on.
const MARK: u8 = b'F';

fn cmsg_space(n: usize) -> usize {
    let bytes = u32::try_from(n * size_of::<RawFd>()).expect("a chunk is small");
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE(bytes) as usize }
}

/// A message of the one byte `iov` points at, with `control` for its descriptors.
fn header(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = std::ptr::from_mut(iov);
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    msg
}

/// Send `fds` over the connected unix stream socket `sock`.
///
/// # Errors
/// The kernel's error (the peer gone: `EPIPE`).
pub fn send(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    for chunk in fds.chunks(CHUNK) {
        let raw: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
        let mut control = vec![0u8; cmsg_space(raw.len())];
        let mut byte = [MARK];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let msg = header(&mut iov, &mut control);
        let data_len = u32::try_from(raw.len() * size_of::<RawFd>()).expect("a chunk is small");
        // SAFETY: `msg` points at `control`, sized by CMSG_SPACE for this many
        // descriptors, so the first header exists and its data holds `raw`; the copy
        // writes exactly `data_len` bytes into it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), data_len as usize);
        }
        // SAFETY: every pointer in `msg` is live for the call.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One `recvmsg(2)` into `buf`, with room for `max_fds` descriptors: the bytes read
/// (0 at the end of the stream) and the descriptors that came with them, owned.
///
/// # Errors
/// The kernel's error, or descriptors cut short (`MSG_CTRUNC`: more than `max_fds`
/// came, or this process is out of descriptors); those that did arrive are closed.
pub fn recv_with(sock: BorrowedFd<'_>, buf: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = vec![0u8; cmsg_space(max_fds.max(1))];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg = header(&mut iov, &mut control);
    // SAFETY: every pointer in `msg` is live for the call; the kernel writes at most the
    // buffers' lengths.
    let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // Take ownership of whatever arrived before judging the message, so nothing leaks.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG macros walk
    // only within them, and every SCM_RIGHTS payload is an array of new descriptors
    // installed in this process, owned by nobody yet.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for k in 0..bytes / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(k).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors cut short (more than expected, or out of descriptors)"));
    }
    Ok((usize::try_from(r).expect("not negative"), fds))
}

/// Receive `n` descriptors sent by [`send`] on `sock` (blocking as the socket does).
///
/// # Errors
/// The kernel's error, the peer gone early, a byte that is not a chunk's, or a chunk
/// cut short (`MSG_CTRUNC`: this process is out of descriptors).
pub fn recv(sock: BorrowedFd<'_>, n: usize) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut byte = [0u8];
        let (r, fds) = recv_with(sock, &mut byte, CHUNK)?;
        out.extend(fds);
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed before every descriptor came"));
        }
        if byte[0] != MARK {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a descriptor chunk"));
        }
    }
    if out.len() != n {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} descriptors came, not {n}", out.len())));
    }
    Ok(out)
}

/// The descriptors the service manager passed this process (`LISTEN_FDS`, with their
/// `LISTEN_FDNAMES`; systemd's file-descriptor store hands back what a previous run
/// stored this way), owned. Empty when none were passed, or they were for another
/// process (`LISTEN_PID`), or this was called before: they are taken once.
///
/// # Errors
/// Malformed variables.
pub fn listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    Ok(sd_notify::listen_fds_with_names()?
        // SAFETY: the service manager installed these numbers in this process for it
        // (LISTEN_PID is ours: checked by `listen_fds_with_names`), nothing in it owns
        // them, and the guard above makes this the only place that takes them.
        .map(|(fd, name)| (name, unsafe { OwnedFd::from_raw_fd(fd) }))
        .collect())
}

/// Have `cmd`'s child start with `fds` as descriptors 3, 4, … in order (as the service
/// manager passes `LISTEN_FDS`), open across its `exec`; this process keeps its own.
pub fn hand_down(cmd: &mut std::process::Command, fds: &[BorrowedFd<'_>]) {
    use std::os::unix::process::CommandExt;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let first_free = 3 + RawFd::try_from(raw.len()).unwrap_or(RawFd::MAX - 3);
    // Allocated here: the child may not allocate (pushes stay within the capacity).
    let mut high: Vec<RawFd> = Vec::with_capacity(raw.len());
    // SAFETY: the closure runs in the child between fork and exec and calls only fcntl
    // and dup2 (async-signal-safe) on numbers captured before the fork; it allocates
    // nothing (`high` has its capacity). Moving every descriptor above the target range
    // first means no dup2 overwrites one not yet moved; those copies are close-on-exec,
    // the targets not.
    unsafe {
        cmd.pre_exec(move || {
            high.clear();
            for &fd in &raw {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
                if h < 0 {
                    return Err(io::Error::last_os_error());
                }
                high.push(h);
            }
            for (target, &h) in (3..).zip(&high) {
                if libc::dup2(h, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_cross_in_chunks_and_stay_the_same_files() {
        let (a, b) = UnixStream::pair().unwrap();
        // 600 descriptors: three chunks; each a pipe's write end, to tell them apart.
        let pipes: Vec<(std::fs::File, std::fs::File)> = (0..300)
            .map(|_| {
                let (r, w) = std::io::pipe().unwrap();
                (std::fs::File::from(OwnedFd::from(r)), std::fs::File::from(OwnedFd::from(w)))
            })
            .collect();
        let fds: Vec<BorrowedFd<'_>> = pipes.iter().flat_map(|(r, w)| [r.as_fd(), w.as_fd()]).collect();
        let sender = std::thread::scope(|s| {
            let h = s.spawn(|| send(a.as_fd(), &fds));
            let got = recv(b.as_fd(), fds.len()).unwrap();
            h.join().unwrap().unwrap();
            got
        });
        assert_eq!(sender.len(), 600);
        // Write through every received write end; read from the original read end.
        for ((k, pair), original) in (0..=u8::MAX).cycle().zip(sender.chunks(2)).zip(&pipes) {
            let mut w = std::fs::File::from(pair[1].try_clone().unwrap());
            w.write_all(&[k]).unwrap();
            let mut byte = [0u8];
            (&original.0).read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], k);
        }
    }

    #[test]
    fn a_peer_gone_early_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = std::io::pipe().unwrap();
        send(a.as_fd(), &[r.as_fd()]).unwrap();
        drop(a);
        let e = recv(b.as_fd(), 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_stray_byte_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"x").unwrap();
        assert_eq!(recv(b.as_fd(), 1).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
