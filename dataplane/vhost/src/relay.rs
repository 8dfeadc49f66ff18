//! A relay between a frontend and the vhost-user library, for a handshake the library
//! refuses.
//!
//! QEMU 7.2 sends `SET_VRING_ENABLE` as soon as the backend *offers*
//! `VHOST_USER_F_PROTOCOL_FEATURES`, before its guest has acked that bit with
//! `SET_FEATURES`. The vhost-user spec ties the message to the acked bit, and rust-vmm's
//! `vhost` enforces that inside its request handler — before any backend code runs, in
//! a type no backend can wrap — and drops the connection. So the frontend's messages
//! reach the library through this relay: every message passes unchanged (file
//! descriptors included), except an early `SET_VRING_ENABLE`, which the relay answers
//! itself (when a reply was asked for) and hands to the library right after the
//! `SET_FEATURES` that acks the bit, i.e. in the order the spec prescribes. Only control
//! messages cross the relay; the rings, kicks and calls go directly between the two.

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::net::Shutdown;
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// `VHOST_USER_F_PROTOCOL_FEATURES`, a virtio feature bit.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Header: request, flags, payload size (each u32, little endian).
const HDR_LEN: usize = 12;
/// Flags: protocol version 1, this is a reply, a reply is wanted.
const VERSION: u32 = 1;
const FLAG_REPLY: u32 = 1 << 2;
const FLAG_NEED_REPLY: u32 = 1 << 3;
/// Largest payload relayed: the biggest message (a memory table of 8 regions, a config
/// space) is far smaller; anything larger is a broken or hostile frontend.
const MAX_PAYLOAD: usize = 4096;
/// File descriptors one message may carry (`VHOST_MEMORY_BASELINE_NREGIONS`).
const MAX_FDS: usize = 8;

/// One message, with the descriptors that came with it (closed on drop).
struct Message {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    fds: Vec<RawFd>,
}

impl Drop for Message {
    fn drop(&mut self) {
        for fd in self.fds.drain(..) {
            let _ = nix::unistd::close(fd);
        }
    }
}

impl Message {
    fn field(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.hdr[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
    }

    fn request(&self) -> u32 {
        self.field(0)
    }

    fn flags(&self) -> u32 {
        self.field(1)
    }

    fn set_flags(&mut self, flags: u32) {
        self.hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    }

    /// `Ok(None)` at a clean end of stream.
    fn read(s: &UnixStream) -> io::Result<Option<Self>> {
        let mut m = Self { hdr: [0; HDR_LEN], payload: Vec::new(), fds: Vec::new() };
        let mut got = 0;
        // Descriptors ride on the header's bytes; a stream may split the header.
        while got < HDR_LEN {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut m.hdr[got..])];
            let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
            let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    m.fds.extend(fds);
                }
            }
            if truncated {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "more descriptors than a message carries"));
            }
            match msg.bytes {
                0 if got == 0 => return Ok(None),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => got += n,
            }
        }
        let size = m.field(2) as usize;
        if size > MAX_PAYLOAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("payload of {size} bytes")));
        }
        m.payload = vec![0; size];
        (&*s).read_exact(&mut m.payload)?;
        Ok(Some(m))
    }

    fn write(&self, s: &UnixStream) -> io::Result<()> {
        let iov = [IoSlice::new(&self.hdr), IoSlice::new(&self.payload)];
        let rights = [ControlMessage::ScmRights(&self.fds)];
        let cmsgs: &[ControlMessage<'_>] = if self.fds.is_empty() { &[] } else { &rights };
        let sent = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        // The descriptors went with the first byte; the rest, if the socket took less.
        let (mut s, rest) = (s, sent.saturating_sub(HDR_LEN));
        s.write_all(&self.hdr[sent.min(HDR_LEN)..])?;
        s.write_all(&self.payload[rest.min(self.payload.len())..])
    }

    /// The reply "done" (a u64 zero) to this message.
    fn ack(&self) -> Self {
        let mut hdr = [0; HDR_LEN];
        hdr[0..4].copy_from_slice(&self.request().to_le_bytes());
        hdr[4..8].copy_from_slice(&(VERSION | FLAG_REPLY).to_le_bytes());
        hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
        Self { hdr, payload: vec![0; 8], fds: Vec::new() }
    }
}

/// Relay between `frontend` and `backend` (the library's end) until either side ends;
/// then both are shut down. Returns why the frontend's side ended, if not cleanly.
///
/// # Errors
/// The frontend sent something that is not a vhost-user message stream.
pub(crate) fn run(frontend: &UnixStream, backend: &UnixStream) -> io::Result<()> {
    let to_frontend = Mutex::new(frontend.try_clone()?);
    let send_frontend = |m: &Message| m.write(&to_frontend.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let end = || {
        let _ = frontend.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // The library's replies (and anything else it sends) go back unchanged.
            while let Ok(Some(m)) = Message::read(backend) {
                if send_frontend(&m).is_err() {
                    break;
                }
            }
            end();
        });
        let r = forward_requests(frontend, backend, &send_frontend);
        end();
        r
    })
}

fn forward_requests(
    frontend: &UnixStream,
    backend: &UnixStream,
    send_frontend: &impl Fn(&Message) -> io::Result<()>,
) -> io::Result<()> {
    let mut acked = 0u64;
    let mut held: Vec<Message> = Vec::new();
    while let Some(mut m) = Message::read(frontend)? {
        let request = m.request();
        if request == SET_VRING_ENABLE && acked & PROTOCOL_FEATURES == 0 {
            if m.flags() & FLAG_NEED_REPLY != 0 {
                send_frontend(&m.ack())?;
            }
            // Replayed without asking for a reply: the frontend has had its answer.
            m.set_flags(m.flags() & !FLAG_NEED_REPLY);
            held.push(m);
            continue;
        }
        if request == SET_FEATURES
            && let Ok(bytes) = <[u8; 8]>::try_from(m.payload.as_slice())
        {
            acked = u64::from_le_bytes(bytes);
        }
        m.write(backend)?;
        if request == SET_FEATURES && acked & PROTOCOL_FEATURES != 0 {
            for h in held.drain(..) {
                h.write(backend)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [request, flags, u32::try_from(payload.len()).unwrap()] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(payload);
        m
    }

    fn read_all(s: &mut UnixStream) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = Message::read(s) {
            out.push((m.request(), m.flags(), m.payload.clone()));
        }
        out
    }

    /// The QEMU 7.2 order: an early SET_VRING_ENABLE is answered by the relay and
    /// reaches the backend after the SET_FEATURES that acks PROTOCOL_FEATURES; the rest
    /// passes unchanged, in order.
    #[test]
    fn early_vring_enable_is_answered_and_reordered() {
        let (mut vmm, frontend) = UnixStream::pair().unwrap();
        let (backend, mut library) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || run(&frontend, &backend));
        let enable0 = [0u8, 0, 0, 0, 0, 0, 0, 0];
        vmm.write_all(&message(1, VERSION, &[])).unwrap(); // GET_FEATURES
        vmm.write_all(&message(SET_VRING_ENABLE, VERSION | FLAG_NEED_REPLY, &enable0)).unwrap();
        // The relay answers it: "done".
        let reply = Message::read(&vmm).unwrap().unwrap();
        assert_eq!((reply.request(), reply.flags(), reply.payload.as_slice()), (SET_VRING_ENABLE, 5, &[0u8; 8][..]));
        vmm.write_all(&message(SET_FEATURES, VERSION, &(PROTOCOL_FEATURES | 1).to_le_bytes())).unwrap();
        vmm.write_all(&message(SET_VRING_ENABLE, VERSION, &[0, 0, 0, 0, 1, 0, 0, 0])).unwrap();
        drop(vmm);
        relay.join().unwrap().unwrap();
        let seen = read_all(&mut library);
        let order: Vec<u32> = seen.iter().map(|m| m.0).collect();
        assert_eq!(order, [1, SET_FEATURES, SET_VRING_ENABLE, SET_VRING_ENABLE]);
        assert_eq!(seen[2], (SET_VRING_ENABLE, VERSION, enable0.to_vec()), "replayed without NEED_REPLY");
    }

    #[test]
    fn descriptors_pass_through_and_garbage_ends_the_relay() {
        let (vmm, frontend) = UnixStream::pair().unwrap();
        let (backend, library) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || run(&frontend, &backend));
        let memfd = nix::sys::memfd::memfd_create(c"ring", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(memfd);
        let kick = Message { hdr: message(12, VERSION, &[])[..12].try_into().unwrap(), payload: vec![], fds: vec![fd] };
        kick.write(&vmm).unwrap();
        let got = Message::read(&library).unwrap().unwrap();
        assert_eq!(got.fds.len(), 1, "the descriptor arrived");
        let target = std::fs::read_link(format!("/proc/self/fd/{}", got.fds[0])).unwrap();
        assert!(target.to_string_lossy().contains("memfd:ring"), "the same file: {}", target.display());
        // A payload size no message has: the relay ends and shuts both sides.
        (&vmm).write_all(&message(5, VERSION, &[])[..8]).unwrap();
        (&vmm).write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(relay.join().unwrap().is_err());
        assert!(Message::read(&library).unwrap().is_none(), "library side closed");
    }
}
