//! What defines a vhost-user connection, recorded as the relay passes it to the
//! library, so that another process can tell its own library the same and carry the
//! connection on: how a handover keeps a guest connected and its rings where they were.
//!
//! The state of a connection is what the frontend *set*: owner, features, protocol
//! features, the memory table (with its regions' descriptors) and per ring its size,
//! addresses, base, kick, call and error descriptors and whether it is enabled. Only
//! the latest of each counts, and they are replayed in the order a frontend sets a
//! device up, whatever order they came in. A ring's base is replaced by where the ring
//! stands at the handover (its next available index); the used index is in guest memory
//! (the library reads it at `SET_VRING_ADDR`).

use crate::relay::{
    FLAG_NEED_REPLY, GET_FEATURES, GET_PROTOCOL_FEATURES, HDR_LEN, Message, SET_FEATURES, SET_VRING_ENABLE,
};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use vhost::vhost_user::message::FrontendReq;

const SET_OWNER: u32 = FrontendReq::SET_OWNER as u32;
const RESET_OWNER: u32 = FrontendReq::RESET_OWNER as u32;
const SET_MEM_TABLE: u32 = FrontendReq::SET_MEM_TABLE as u32;
const SET_VRING_NUM: u32 = FrontendReq::SET_VRING_NUM as u32;
const SET_VRING_ADDR: u32 = FrontendReq::SET_VRING_ADDR as u32;
const SET_VRING_BASE: u32 = FrontendReq::SET_VRING_BASE as u32;
const GET_VRING_BASE: u32 = FrontendReq::GET_VRING_BASE as u32;
const SET_VRING_KICK: u32 = FrontendReq::SET_VRING_KICK as u32;
const SET_VRING_CALL: u32 = FrontendReq::SET_VRING_CALL as u32;
const SET_VRING_ERR: u32 = FrontendReq::SET_VRING_ERR as u32;
pub(crate) const SET_PROTOCOL_FEATURES: u32 = FrontendReq::SET_PROTOCOL_FEATURES as u32;
/// Requests that only ask (features, protocol features, queue count, config space,
/// memory slots): nothing to replay.
const QUERIES: [u32; 5] = [
    GET_FEATURES,
    GET_PROTOCOL_FEATURES,
    FrontendReq::GET_QUEUE_NUM as u32,
    FrontendReq::GET_CONFIG as u32,
    FrontendReq::GET_MAX_MEM_SLOTS as u32,
];

/// A message as it travels in a handover: its descriptors follow, `fds` of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMessage {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    fds: usize,
}

/// A connection's state in a handover, beside its descriptors: those of `held`, then
/// those of `session`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    /// The virtio features the frontend acked.
    pub(crate) acked: u64,
    /// Early `SET_VRING_ENABLE`s not yet passed on (the features not acked yet).
    held: Vec<RawMessage>,
    /// What defines the connection, in replay order.
    session: Vec<RawMessage>,
}

impl ConnectionState {
    /// How many descriptors travel with this state.
    #[must_use]
    pub fn fds(&self) -> usize {
        self.held.iter().chain(&self.session).map(|m| m.fds).sum()
    }

    /// The held and the session's messages, on `fds`.
    pub(crate) fn messages(&self, fds: Vec<OwnedFd>) -> io::Result<(Vec<Message>, Vec<Message>)> {
        if fds.len() != self.fds() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} descriptors for a connection state naming {}", fds.len(), self.fds()),
            ));
        }
        let mut fds = fds.into_iter();
        let mut build = |raw: &[RawMessage]| -> Vec<Message> {
            raw.iter()
                .map(|r| Message { hdr: r.hdr, payload: r.payload.clone(), fds: fds.by_ref().take(r.fds).collect() })
                .collect()
        };
        let held = build(&self.held);
        Ok((held, build(&self.session)))
    }
}

/// A relayed connection handed over: the frontend's socket, its state and descriptors.
#[derive(Debug)]
pub struct ConnectionHandover {
    /// The frontend's end of the connection.
    pub frontend: OwnedFd,
    /// What defines it.
    pub state: ConnectionState,
    /// The state's descriptors ([`ConnectionState::fds`] of them).
    pub fds: Vec<OwnedFd>,
}

/// Where a message goes in a replay: (group, queue, step).
type Key = (u8, u32, u8);

/// The ring a message is about: the first u32 of a ring state or address, the low
/// byte of a ring descriptor request's u64.
fn queue(m: &Message) -> u32 {
    let word = m.payload.get(..4).map_or(u32::MAX, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    match m.request() {
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => word & 0xff,
        _ => word,
    }
}

/// The replay position of a state-setting request; `None` for anything else.
fn key(m: &Message) -> Option<Key> {
    let ring = |step| Some((4, queue(m), step));
    match m.request() {
        SET_OWNER => Some((0, 0, 0)),
        SET_FEATURES => Some((1, 0, 0)),
        SET_PROTOCOL_FEATURES => Some((2, 0, 0)),
        SET_MEM_TABLE => Some((3, 0, 0)),
        SET_VRING_NUM => ring(0),
        SET_VRING_ADDR => ring(1),
        SET_VRING_BASE => ring(2),
        SET_VRING_CALL => ring(3),
        SET_VRING_ERR => ring(4),
        // Last of a ring's: the ring starts once it has its kick.
        SET_VRING_KICK => ring(5),
        SET_VRING_ENABLE => Some((5, queue(m), 0)),
        _ => None,
    }
}

/// The latest state-setting message of each kind, in replay order.
#[derive(Debug, Default)]
pub(crate) struct Session {
    messages: Vec<(Key, Message)>,
    /// A request passed to the library that a replay could not repeat.
    unreplayable: Option<u32>,
}

impl Session {
    /// Take in `m`, just passed to the library.
    pub(crate) fn record(&mut self, m: Message) {
        let request = m.request();
        if let Some(k) = key(&m) {
            match self.messages.binary_search_by_key(&k, |(k, _)| *k) {
                Ok(i) => self.messages[i] = (k, m),
                Err(i) => self.messages.insert(i, (k, m)),
            }
        } else if request == RESET_OWNER {
            self.messages.clear();
        } else if request == GET_VRING_BASE {
            // The ring stopped: the library dropped its kick and call.
            let q = queue(&m);
            self.messages.retain(|((g, mq, step), _)| !(*g == 4 && *mq == q && (*step == 3 || *step == 5)));
        } else if !QUERIES.contains(&request) {
            self.unreplayable.get_or_insert(request);
        }
    }

    /// The kick descriptors the frontend gave.
    pub(crate) fn kicks(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.messages
            .iter()
            .filter(|(_, m)| m.request() == SET_VRING_KICK)
            .filter_map(|(_, m)| Some(m.fds.first()?.as_fd()))
    }

    /// The state to hand over: `held` and the session, each ring's base replaced by
    /// `bases` (queue, next available index) where given; descriptors duplicated.
    pub(crate) fn hand_over(
        &self,
        acked: u64,
        held: &[Message],
        bases: &[(u32, u16)],
    ) -> io::Result<(ConnectionState, Vec<OwnedFd>)> {
        if let Some(r) = self.unreplayable {
            return Err(io::Error::other(format!(
                "the frontend sent vhost-user request {r}, which cannot be replayed"
            )));
        }
        let mut fds = Vec::new();
        let mut raw = |m: &Message| -> io::Result<RawMessage> {
            for fd in &m.fds {
                fds.push(fd.try_clone()?);
            }
            let mut hdr = m.hdr;
            let flags = m.flags() & !FLAG_NEED_REPLY;
            hdr[4..8].copy_from_slice(&flags.to_le_bytes());
            let mut payload = m.payload.clone();
            if m.request() == SET_VRING_BASE
                && let Some(&(_, base)) = bases.iter().find(|(q, _)| *q == queue(m))
                && payload.len() >= 8
            {
                payload[4..8].copy_from_slice(&u32::from(base).to_le_bytes());
            }
            Ok(RawMessage { hdr, payload, fds: m.fds.len() })
        };
        let held = held.iter().map(&mut raw).collect::<io::Result<_>>()?;
        let session = self.messages.iter().map(|(_, m)| raw(m)).collect::<io::Result<_>>()?;
        Ok((ConnectionState { acked, held, session }, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, payload: &[u8], fds: usize) -> Message {
        let mut m = Message::request_of(request);
        m.hdr[8..12].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        m.payload = payload.to_vec();
        for _ in 0..fds {
            m.fds.push(nix::sys::eventfd::EventFd::new().unwrap().into());
        }
        m
    }

    fn ring_state(request: u32, queue: u32, num: u32) -> Message {
        let mut p = queue.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        msg(request, &p, 0)
    }

    fn ring_fd(request: u32, queue: u64) -> Message {
        msg(request, &queue.to_le_bytes(), 1)
    }

    fn order(s: &ConnectionState) -> Vec<(u32, u32)> {
        s.session
            .iter()
            .map(|r| {
                let m = Message { hdr: r.hdr, payload: r.payload.clone(), fds: Vec::new() };
                let ring = key(&m).is_some_and(|(g, _, _)| g >= 4);
                (m.request(), if ring { queue(&m) } else { 0 })
            })
            .collect()
    }

    /// Recorded in whatever order a frontend sends them (QEMU interleaves rings), the
    /// latest of each is replayed in set-up order; queries leave no trace; the bases
    /// are where the rings stand; the descriptors are duplicates, in order.
    #[test]
    fn the_latest_state_replays_in_set_up_order() {
        let mut s = Session::default();
        s.record(msg(GET_FEATURES, &[], 0));
        s.record(msg(SET_OWNER, &[], 0));
        s.record(msg(SET_FEATURES, &(1u64 << 30).to_le_bytes(), 0));
        s.record(msg(SET_MEM_TABLE, &[0; 40], 2));
        for q in [1, 0] {
            s.record(ring_state(SET_VRING_NUM, q, 256));
            s.record(ring_fd(SET_VRING_KICK, u64::from(q)));
            s.record(ring_state(SET_VRING_BASE, q, 0));
            s.record(msg(SET_VRING_ADDR, &u64::from(q).to_le_bytes(), 0));
            s.record(ring_fd(SET_VRING_CALL, u64::from(q)));
        }
        s.record(ring_state(SET_VRING_ENABLE, 1, 1));
        s.record(ring_state(SET_VRING_ENABLE, 0, 1));
        // A newer memory table replaces the old one.
        s.record(msg(SET_MEM_TABLE, &[1; 40], 3));
        let (state, fds) = s.hand_over(1 << 30, &[], &[(0, 700), (1, 9)]).unwrap();
        let ring = |q| {
            [(SET_VRING_NUM, q), (SET_VRING_ADDR, q), (SET_VRING_BASE, q), (SET_VRING_CALL, q), (SET_VRING_KICK, q)]
        };
        let mut want = vec![(SET_OWNER, 0), (SET_FEATURES, 0), (SET_MEM_TABLE, 0)];
        want.extend(ring(0));
        want.extend(ring(1));
        want.extend([(SET_VRING_ENABLE, 0), (SET_VRING_ENABLE, 1)]);
        assert_eq!(order(&state), want);
        assert_eq!(state.session[2].payload, [1; 40], "the latest memory table");
        let base = |q: usize| state.session[3 + q * 5 + 2].payload.clone();
        assert_eq!((base(0), base(1)), ([0, 0, 0, 0, 188, 2, 0, 0].to_vec(), [1, 0, 0, 0, 9, 0, 0, 0].to_vec()));
        assert_eq!((state.fds(), fds.len()), (3 + 4, 7));
        // Rebuilt on the other side: the same messages, each with its descriptors.
        let (held, session) = state.messages(fds).unwrap();
        assert!(held.is_empty());
        assert_eq!(
            session.iter().map(|m| m.fds.len()).collect::<Vec<_>>(),
            [0, 0, 3, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0]
        );
        assert!(state.messages(Vec::new()).is_err(), "descriptors missing");
    }

    /// A ring the frontend stopped (`GET_VRING_BASE`) is not restarted by a replay; a
    /// reset forgets everything; a request a replay cannot repeat refuses the handover;
    /// a reply wanted is not asked for again.
    #[test]
    fn stopped_rings_resets_and_unknown_requests() {
        let mut s = Session::default();
        let mut owner = msg(SET_OWNER, &[], 0);
        owner.set_flags(owner.flags() | FLAG_NEED_REPLY);
        s.record(owner);
        s.record(ring_fd(SET_VRING_KICK, 0));
        s.record(ring_fd(SET_VRING_CALL, 0));
        s.record(ring_fd(SET_VRING_KICK, 1));
        s.record(ring_state(GET_VRING_BASE, 0, 0));
        assert_eq!(s.kicks().count(), 1);
        let (state, _) = s.hand_over(0, &[], &[]).unwrap();
        assert_eq!(order(&state), [(SET_OWNER, 0), (SET_VRING_KICK, 1)]);
        assert_eq!(state.session[0].hdr[4..8], 1u32.to_le_bytes(), "no reply asked for");
        s.record(msg(RESET_OWNER, &[], 0));
        assert!(s.hand_over(0, &[], &[]).unwrap().0.session.is_empty());
        s.record(msg(FrontendReq::SET_LOG_BASE as u32, &[0; 16], 1));
        assert!(s.hand_over(0, &[], &[]).unwrap_err().to_string().contains("request 6"));
    }
}
