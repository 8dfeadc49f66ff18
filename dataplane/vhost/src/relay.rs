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
//!
//! The relay also records what the library was told ([`Session`]), and can stop
//! between two messages with every request answered: a handover then gives the
//! connection to another process, whose relay tells its library the same
//! ([`Relay::take_over`]) before reading on.

use crate::session::{ConnectionState, Session};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::Shutdown;
use std::os::fd::{AsFd as _, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use vhost::vhost_user::message::FrontendReq;

/// `VHOST_USER_GET_FEATURES`: asked of the library as a barrier (it answers requests in
/// order, so its answer means every earlier request is handled), and first in a replay.
pub(crate) const GET_FEATURES: u32 = FrontendReq::GET_FEATURES as u32;
/// `VHOST_USER_SET_FEATURES`.
pub(crate) const SET_FEATURES: u32 = FrontendReq::SET_FEATURES as u32;
/// `VHOST_USER_GET_PROTOCOL_FEATURES`.
pub(crate) const GET_PROTOCOL_FEATURES: u32 = FrontendReq::GET_PROTOCOL_FEATURES as u32;
/// `VHOST_USER_SET_VRING_ENABLE`.
pub(crate) const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;
/// `VHOST_USER_F_PROTOCOL_FEATURES`, a virtio feature bit.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Header: request, flags, payload size (each u32, little endian).
pub(crate) const HDR_LEN: usize = 12;
/// Flags: protocol version 1, this is a reply, a reply is wanted.
const VERSION: u32 = 1;
const FLAG_REPLY: u32 = 1 << 2;
pub(crate) const FLAG_NEED_REPLY: u32 = 1 << 3;
/// Largest payload relayed: the biggest message (a memory table of 8 regions, a config
/// space) is far smaller; anything larger is a broken or hostile frontend.
const MAX_PAYLOAD: usize = 4096;
/// File descriptors one message may carry (`VHOST_MEMORY_BASELINE_NREGIONS`).
const MAX_FDS: usize = 8;

/// One message, with the descriptors that came with it.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) hdr: [u8; HDR_LEN],
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Message {
    /// A request of `request` with no payload and no reply wanted.
    pub(crate) fn request_of(request: u32) -> Self {
        let mut hdr = [0; HDR_LEN];
        hdr[0..4].copy_from_slice(&request.to_le_bytes());
        hdr[4..8].copy_from_slice(&VERSION.to_le_bytes());
        Self { hdr, payload: Vec::new(), fds: Vec::new() }
    }

    fn field(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.hdr[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
    }

    pub(crate) fn request(&self) -> u32 {
        self.field(0)
    }

    pub(crate) fn flags(&self) -> u32 {
        self.field(1)
    }

    pub(crate) fn set_flags(&mut self, flags: u32) {
        self.hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    }

    fn is_reply_to(&self, request: u32) -> bool {
        self.request() == request && self.flags() & FLAG_REPLY != 0
    }

    /// `Ok(None)` at a clean end of stream.
    pub(crate) fn read(s: &UnixStream) -> io::Result<Option<Self>> {
        let mut m = Self { hdr: [0; HDR_LEN], payload: Vec::new(), fds: Vec::new() };
        let mut got = 0;
        // Descriptors ride on the header's bytes; a stream may split the header.
        while got < HDR_LEN {
            let (n, fds) = xlane_xdp::fdpass::recv_with(s.as_fd(), &mut m.hdr[got..], MAX_FDS)?;
            m.fds.extend(fds);
            match n {
                0 if got == 0 => return Ok(None),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => got += n,
            }
        }
        if m.fds.len() > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "more descriptors than a message carries"));
        }
        let size = m.field(2) as usize;
        if size > MAX_PAYLOAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("payload of {size} bytes")));
        }
        m.payload = vec![0; size];
        (&*s).read_exact(&mut m.payload)?;
        Ok(Some(m))
    }

    pub(crate) fn write(&self, s: &UnixStream) -> io::Result<()> {
        let iov = [IoSlice::new(&self.hdr), IoSlice::new(&self.payload)];
        let raw: Vec<RawFd> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let sent = sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        // The descriptors went with the first byte; the rest, if the socket took less.
        let (mut s, rest) = (s, sent.saturating_sub(HDR_LEN));
        s.write_all(&self.hdr[sent.min(HDR_LEN)..])?;
        s.write_all(&self.payload[rest.min(self.payload.len())..])
    }

    /// The reply "done" (a u64 zero) to this message.
    fn ack(&self) -> Self {
        let mut m = Self::request_of(self.request());
        m.set_flags(VERSION | FLAG_REPLY);
        m.hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
        m.payload = vec![0; 8];
        m
    }
}

/// The relay of one frontend's connection.
#[derive(Debug)]
pub(crate) struct Relay {
    frontend: UnixStream,
    library: UnixStream,
    /// The virtio features the frontend acked (`SET_FEATURES`).
    acked: u64,
    /// Early `SET_VRING_ENABLE`s, held until the features are acked.
    held: Vec<Message>,
    /// What the library was told that defines the connection's state, to replay it to
    /// another library (a handover).
    session: Session,
    /// The frontend's `GET_FEATURES` whose answer has not come back: the library's
    /// answer to the barrier's is the one after these.
    features_asked: u64,
}

impl Relay {
    /// A relay between a new `frontend` and `library` (the library's end).
    pub(crate) fn new(frontend: UnixStream, library: UnixStream) -> Self {
        Self { frontend, library, acked: 0, held: Vec::new(), session: Session::default(), features_asked: 0 }
    }

    /// A relay taking over a connection another process relayed: the library is told
    /// everything that defined the connection (`state`'s session, `fds` its and the
    /// held messages' descriptors), answers dropped, before any message of the
    /// frontend's is read.
    ///
    /// # Errors
    /// The library refused the replay or went away.
    pub(crate) fn take_over(
        frontend: UnixStream,
        library: UnixStream,
        state: ConnectionState,
        fds: Vec<OwnedFd>,
    ) -> io::Result<Self> {
        let (held, session) = state.messages(fds)?;
        let mut relay = Self::new(frontend, library);
        relay.acked = state.acked;
        relay.held = held;
        // The library's view of the frontend's offer and of the protocol features
        // (REPLY_ACK) comes from answers it gave: ask again first.
        relay.ask(GET_FEATURES)?;
        for mut m in session {
            if m.request() == crate::session::SET_PROTOCOL_FEATURES {
                relay.ask(GET_PROTOCOL_FEATURES)?;
            }
            m.set_flags(m.flags() & !FLAG_NEED_REPLY);
            m.write(&relay.library)?;
            relay.session.record(m);
        }
        // Handled, all of it, once this is answered.
        relay.ask(GET_FEATURES)?;
        Ok(relay)
    }

    /// Send `request` to the library and drop its answer (nothing else is in flight).
    fn ask(&self, request: u32) -> io::Result<()> {
        Message::request_of(request).write(&self.library)?;
        match Message::read(&self.library)? {
            Some(m) if m.is_reply_to(request) => Ok(()),
            Some(m) => Err(io::Error::other(format!("the library answered {} to {request}", m.request()))),
            None => Err(io::Error::other("the library refused the connection's state")),
        }
    }

    /// Kick every ring the frontend gave a kick descriptor: after a handover, a kick the
    /// previous process read and never acted on is not lost (a spurious kick is
    /// harmless: the ring is simply looked at).
    pub(crate) fn kick_rings(&self) {
        for fd in self.session.kicks() {
            let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// Relay until either side ends; then both are shut down. When `pause` turns
    /// readable, between two messages, every request relayed so far is answered first,
    /// then `on_pause` runs (nothing is relayed meanwhile; it reads `pause`). Returns why
    /// the frontend's side ended, if not cleanly.
    ///
    /// # Errors
    /// The frontend sent something that is not a vhost-user message stream.
    pub(crate) fn run(&mut self, pause: BorrowedFd<'_>, on_pause: &mut dyn FnMut(&mut Self)) -> io::Result<()> {
        let r = self.relay(pause, on_pause);
        let _ = self.frontend.shutdown(Shutdown::Both);
        let _ = self.library.shutdown(Shutdown::Both);
        r
    }

    fn relay(&mut self, pause: BorrowedFd<'_>, on_pause: &mut dyn FnMut(&mut Self)) -> io::Result<()> {
        loop {
            let [from_frontend, from_library, paused] = {
                let mut fds = [
                    PollFd::new(self.frontend.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.library.as_fd(), PollFlags::POLLIN),
                    PollFd::new(pause, PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => r?,
                };
                fds.map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            };
            // The library's answers first: they belong to requests already relayed.
            if from_library {
                match Message::read(&self.library)? {
                    Some(m) => self.answer(&m)?,
                    None => return Ok(()),
                }
            }
            if from_frontend {
                match Message::read(&self.frontend)? {
                    Some(m) => self.request(m)?,
                    None => return Ok(()),
                }
            }
            if paused {
                self.barrier()?;
                on_pause(self);
            }
        }
    }

    /// An answer of the library's, to the frontend.
    fn answer(&mut self, m: &Message) -> io::Result<()> {
        if m.is_reply_to(GET_FEATURES) {
            self.features_asked = self.features_asked.saturating_sub(1);
        }
        m.write(&self.frontend)
    }

    /// A request of the frontend's, to the library (an early `SET_VRING_ENABLE` held).
    fn request(&mut self, mut m: Message) -> io::Result<()> {
        let request = m.request();
        if request == SET_VRING_ENABLE && self.acked & PROTOCOL_FEATURES == 0 {
            if m.flags() & FLAG_NEED_REPLY != 0 {
                m.ack().write(&self.frontend)?;
            }
            // Replayed without asking for a reply: the frontend has had its answer.
            m.set_flags(m.flags() & !FLAG_NEED_REPLY);
            self.held.push(m);
            return Ok(());
        }
        if request == SET_FEATURES
            && let Ok(bytes) = <[u8; 8]>::try_from(m.payload.as_slice())
        {
            self.acked = u64::from_le_bytes(bytes);
        }
        if request == GET_FEATURES {
            self.features_asked += 1;
        }
        m.write(&self.library)?;
        self.session.record(m);
        if request == SET_FEATURES && self.acked & PROTOCOL_FEATURES != 0 {
            for h in std::mem::take(&mut self.held) {
                h.write(&self.library)?;
                self.session.record(h);
            }
        }
        Ok(())
    }

    /// Wait until the library has answered every request relayed so far (passing the
    /// answers on): it answers in order, so the answer to one more `GET_FEATURES`,
    /// dropped here, comes after all of them.
    fn barrier(&mut self) -> io::Result<()> {
        Message::request_of(GET_FEATURES).write(&self.library)?;
        loop {
            let m = Message::read(&self.library)?.ok_or_else(|| io::Error::other("the library went away"))?;
            if m.is_reply_to(GET_FEATURES) && self.features_asked == 0 {
                return Ok(());
            }
            self.answer(&m)?;
        }
    }

    /// The connection's state for another process ([`Relay::take_over`]): what defined
    /// it, each ring's `SET_VRING_BASE` at `bases` (queue, next available index) where
    /// given, with the frontend's socket and every descriptor duplicated.
    ///
    /// # Errors
    /// The frontend used a request a replay cannot repeat, or out of descriptors.
    pub(crate) fn hand_over(&self, bases: &[(u32, u16)]) -> io::Result<crate::session::ConnectionHandover> {
        let frontend = OwnedFd::from(self.frontend.try_clone()?);
        let (state, fds) = self.session.hand_over(self.acked, &self.held, bases)?;
        Ok(crate::session::ConnectionHandover { frontend, state, fds })
    }
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

    /// Relay with a pause descriptor never written.
    fn relay(frontend: UnixStream, library: UnixStream) -> io::Result<()> {
        let pause = nix::sys::eventfd::EventFd::new().unwrap();
        Relay::new(frontend, library).run(pause.as_fd(), &mut |_| unreachable!("no pause"))
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
        let relay = std::thread::spawn(move || relay(frontend, backend));
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
        let relay = std::thread::spawn(move || relay(frontend, backend));
        let memfd = nix::sys::memfd::memfd_create(c"ring", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let kick =
            Message { hdr: message(12, VERSION, &[])[..12].try_into().unwrap(), payload: vec![], fds: vec![memfd] };
        kick.write(&vmm).unwrap();
        let got = Message::read(&library).unwrap().unwrap();
        assert_eq!(got.fds.len(), 1, "the descriptor arrived");
        let target = std::fs::read_link(format!("/proc/self/fd/{}", got.fds[0].as_raw_fd())).unwrap();
        assert!(target.to_string_lossy().contains("memfd:ring"), "the same file: {}", target.display());
        // A payload size no message has: the relay ends and shuts both sides.
        (&vmm).write_all(&message(5, VERSION, &[])[..8]).unwrap();
        (&vmm).write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(relay.join().unwrap().is_err());
        assert!(Message::read(&library).unwrap().is_none(), "library side closed");
    }
}
