//! The control socket: a mio event loop on the control thread serving newline-delimited
//! JSON requests (see `xlane-api`), neighbour events and termination signals.

use crate::state::State;
use crossbeam_channel::Receiver;
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::signalfd::SignalFd;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use xlane_api::{ErrorCode, MAX_LINE, Reply};
use xlane_netlink::NeighEvent;

const LISTENER: Token = Token(0);
const NEIGH: Token = Token(1);
const SIGNAL: Token = Token(2);
const FIRST_CONN: usize = 16;

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    closing: bool,
}

/// A waker the neighbour thread uses to hand events to the control loop.
pub fn neigh_waker(poll: &Poll) -> io::Result<Arc<Waker>> {
    Ok(Arc::new(Waker::new(poll.registry(), NEIGH)?))
}

/// Serve until SIGINT/SIGTERM.
///
/// # Errors
/// Listener setup or poll failure.
pub fn serve(
    poll: &mut Poll,
    path: &Path,
    state: &mut State,
    neigh: &Receiver<NeighEvent>,
    signals: &SignalFd,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A stale socket from a crashed run would make bind fail.
    let _ = std::fs::remove_file(path);
    let mut listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let sigfd = signals.as_raw_fd();
    poll.registry().register(&mut SourceFd(&sigfd), SIGNAL, Interest::READABLE)?;
    tracing::info!(socket = %path.display(), "control socket listening");

    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = FIRST_CONN;
    let mut events = Events::with_capacity(64);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in &events {
            match ev.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let t = Token(next);
                            next += 1;
                            poll.registry().register(&mut stream, t, Interest::READABLE)?;
                            conns.insert(t, Conn { stream, rbuf: Vec::new(), wbuf: Vec::new(), closing: false });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            break;
                        }
                    }
                },
                NEIGH => {
                    while let Ok(ev) = neigh.try_recv() {
                        state.on_neighbour(&ev);
                    }
                }
                SIGNAL => {
                    if let Ok(Some(sig)) = signals.read_signal() {
                        tracing::info!(signal = sig.ssi_signo, "shutting down");
                    }
                    let _ = std::fs::remove_file(path);
                    return Ok(());
                }
                t => {
                    let Some(conn) = conns.get_mut(&t) else {
                        continue;
                    };
                    let mut done = false;
                    if ev.is_readable() {
                        done = read_requests(conn, state);
                    }
                    if !conn.wbuf.is_empty() {
                        match conn.stream.write(&conn.wbuf) {
                            Ok(n) => {
                                conn.wbuf.drain(..n);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => done = true,
                        }
                    }
                    let want =
                        if conn.wbuf.is_empty() { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
                    if done || (conn.closing && conn.wbuf.is_empty()) {
                        if let Some(mut c) = conns.remove(&t) {
                            let _ = poll.registry().deregister(&mut c.stream);
                        }
                    } else {
                        poll.registry().reregister(&mut conn.stream, t, want)?;
                    }
                }
            }
        }
    }
}

/// Read what is available and answer every complete line. Returns true when the peer
/// has gone.
fn read_requests(conn: &mut Conn, state: &mut State) -> bool {
    let mut buf = [0u8; 64 * 1024];
    let mut eof = false;
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => conn.rbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    while let Some(end) = conn.rbuf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = conn.rbuf.drain(..=end).collect();
        let line = &line[..line.len() - 1];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match xlane_api::parse_request(line) {
            Ok(req) => state.handle(req.op),
            Err(reply) => reply,
        };
        if let Reply::Error { code, message } = &reply {
            tracing::info!(?code, message, "request refused");
        }
        push_reply(conn, &reply);
    }
    if conn.rbuf.len() > MAX_LINE {
        push_reply(conn, &Reply::error(ErrorCode::BadRequest, format!("request longer than {MAX_LINE} bytes")));
        conn.rbuf.clear();
        conn.closing = true;
    }
    if eof {
        conn.closing = true;
    }
    eof && conn.wbuf.is_empty()
}

fn push_reply(conn: &mut Conn, reply: &Reply) {
    match serde_json::to_vec(reply) {
        Ok(mut v) => {
            v.push(b'\n');
            conn.wbuf.extend_from_slice(&v);
        }
        Err(e) => tracing::error!(error = %e, "could not encode a reply"),
    }
}
