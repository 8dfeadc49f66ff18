//! The server loop both control sockets run: a mio event loop on one thread, serving a
//! unix socket (mode 0600) with one [`Handler`].
//!
//! * Each connection has at most one request outstanding: the loop hands the handler
//!   the request and a [`Responder`], and reads that connection's next request only once
//!   the reply is queued, so replies go out in request order. The handler may reply at
//!   once or keep the responder and complete it later, from any thread; meanwhile every
//!   other connection is served.
//! * A line that is not a request of the protocol's version gets an error reply and the
//!   connection stays usable; a line longer than [`MAX_LINE`] gets a `bad_request` reply
//!   naming the limit, and that connection is closed.
//! * Other events enter the same loop: a [`Notifier`] (from any thread) makes the loop
//!   call [`Handler::on_wake`]; a file descriptor registered with
//!   [`Server::register_fd`] makes it call [`Handler::on_fd`] when readable. Both get a
//!   [`Control`] through which the handler can stop the loop.

use crate::codec::{self, ErrorCode, ErrorReply, MAX_LINE, Message, ParseError};
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
const FIRST_FD: usize = 2;
const FIRST_CONN: usize = 1024;
/// A connection whose replies pile up unread is not read from until they drain.
const WBUF_HIGH: usize = 1 << 20;

/// What the server does with requests and other events.
pub trait Handler {
    /// The protocol's request operation.
    type Op: Message;

    /// A request. Reply through `responder`, now or later (from any thread); the
    /// connection's next request waits until then. Dropping the responder unanswered
    /// sends a `failed` error.
    fn handle(&mut self, op: Self::Op, responder: Responder<<Self::Op as Message>::Reply>);

    /// A [`Notifier`] was notified (once per wake-up, however many notifications).
    fn on_wake(&mut self, ctl: &mut Control) {
        let _ = ctl;
    }

    /// The descriptor registered under `key` is readable (edge-triggered: read it until
    /// it would block).
    fn on_fd(&mut self, key: usize, ctl: &mut Control) {
        let _ = (key, ctl);
    }
}

/// The loop, as the handler's event callbacks see it.
#[derive(Debug, Default)]
pub struct Control {
    stop: bool,
}

impl Control {
    /// Stop the loop after the current events: [`Server::run`] removes the socket and
    /// returns.
    pub fn stop(&mut self) {
        self.stop = true;
    }
}

#[derive(Debug)]
struct Wake {
    waker: Waker,
    notified: AtomicBool,
}

/// Replies completed and not yet queued on their connections.
type Done<R> = Arc<Mutex<Vec<(usize, R)>>>;

/// Makes the loop call [`Handler::on_wake`]; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct Notifier {
    wake: Arc<Wake>,
}

impl Notifier {
    /// Wake the loop.
    ///
    /// # Errors
    /// The wake-up could not be signalled.
    pub fn notify(&self) -> io::Result<()> {
        self.wake.notified.store(true, Ordering::Release);
        self.wake.waker.wake()
    }
}

/// The one reply owed to one request; send it with [`Responder::reply`] from any thread.
#[derive(Debug)]
pub struct Responder<R: ErrorReply> {
    conn: usize,
    done: Option<Done<R>>,
    wake: Arc<Wake>,
}

impl<R: ErrorReply> Responder<R> {
    /// Send the reply (dropped silently if the client has gone).
    pub fn reply(mut self, reply: R) {
        self.complete(reply);
    }

    fn complete(&mut self, reply: R) {
        if let Some(done) = self.done.take() {
            done.lock().unwrap_or_else(PoisonError::into_inner).push((self.conn, reply));
            if let Err(e) = self.wake.waker.wake() {
                tracing::error!(error = %e, "control loop: cannot wake for a reply");
            }
        }
    }
}

impl<R: ErrorReply> Drop for Responder<R> {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.complete(R::from_error(ErrorCode::Failed, "the request was dropped unanswered".into()));
        }
    }
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    /// Bytes of `rbuf` known to hold no newline.
    scanned: usize,
    wbuf: Vec<u8>,
    waiting: bool,
    eof: bool,
    closing: bool,
    dead: bool,
}

/// A bound control socket and its event loop.
pub struct Server<O: Message> {
    poll: Poll,
    listener: UnixListener,
    path: PathBuf,
    wake: Arc<Wake>,
    done: Done<O::Reply>,
    fds: usize,
    conns: HashMap<usize, Conn>,
    next: usize,
}

impl<O: Message> core::fmt::Debug for Server<O> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server").field("path", &self.path).field("conns", &self.conns.len()).finish_non_exhaustive()
    }
}

impl<O: Message> Server<O> {
    /// Bind the socket at `path` (its directory created, a stale socket replaced, mode
    /// 0600). Connections queue until [`Server::run`].
    ///
    /// # Errors
    /// Directory, bind, permission or poll setup failure.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // A stale socket from a crashed run would make bind fail.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let wake = Arc::new(Wake { waker: Waker::new(poll.registry(), WAKE)?, notified: AtomicBool::new(false) });
        Ok(Self { poll, listener, path, wake, done: Arc::default(), fds: 0, conns: HashMap::new(), next: FIRST_CONN })
    }

    /// The socket's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that makes the loop call [`Handler::on_wake`].
    #[must_use]
    pub fn notifier(&self) -> Notifier {
        Notifier { wake: Arc::clone(&self.wake) }
    }

    /// Watch `fd` for reading (e.g. a signalfd); returns the key [`Handler::on_fd`] gets.
    /// The descriptor must stay open while the loop runs.
    ///
    /// # Errors
    /// Too many descriptors, or the registration failed.
    pub fn register_fd(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let key = self.fds;
        if FIRST_FD + key >= FIRST_CONN {
            return Err(io::Error::other("too many descriptors registered"));
        }
        self.poll.registry().register(&mut SourceFd(&fd.as_raw_fd()), Token(FIRST_FD + key), Interest::READABLE)?;
        self.fds += 1;
        Ok(key)
    }

    /// Serve until the handler stops the loop; the socket is removed on return.
    ///
    /// # Errors
    /// Poll failure.
    pub fn run<H: Handler<Op = O>>(mut self, handler: &mut H) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut ctl = Control::default();
        tracing::info!(socket = %self.path.display(), "control socket listening");
        while !ctl.stop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events {
                match ev.token() {
                    LISTENER => self.accept(handler)?,
                    WAKE => {
                        if self.wake.notified.swap(false, Ordering::AcqRel) {
                            handler.on_wake(&mut ctl);
                        }
                    }
                    Token(t) if t < FIRST_CONN => handler.on_fd(t - FIRST_FD, &mut ctl),
                    Token(t) => self.service(t, handler),
                }
            }
            self.deliver(handler);
        }
        let _ = std::fs::remove_file(&self.path);
        Ok(())
    }

    fn accept<H: Handler<Op = O>>(&mut self, handler: &mut H) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let id = self.next;
                    self.next += 1;
                    self.poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE)?;
                    let conn = Conn {
                        stream,
                        rbuf: Vec::new(),
                        scanned: 0,
                        wbuf: Vec::new(),
                        waiting: false,
                        eof: false,
                        closing: false,
                        dead: false,
                    };
                    self.conns.insert(id, conn);
                    self.service(id, handler);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    return Ok(());
                }
            }
        }
    }

    /// Write what is pending, read and handle what can be, write again.
    fn service<H: Handler<Op = O>>(&mut self, id: usize, handler: &mut H) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.flush();
        let responder = || Responder { conn: id, done: Some(Arc::clone(&self.done)), wake: Arc::clone(&self.wake) };
        conn.pump(handler, responder);
        conn.flush();
        if (conn.dead || (conn.closing && conn.wbuf.is_empty()))
            && let Some(mut c) = self.conns.remove(&id)
        {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Queue completed replies on their connections and resume those connections.
    fn deliver<H: Handler<Op = O>>(&mut self, handler: &mut H) {
        loop {
            let batch = std::mem::take(&mut *self.done.lock().unwrap_or_else(PoisonError::into_inner));
            if batch.is_empty() {
                return;
            }
            for (id, reply) in batch {
                let Some(conn) = self.conns.get_mut(&id) else { continue };
                conn.push(&reply);
                conn.waiting = false;
                self.service(id, handler);
            }
        }
    }
}

impl Conn {
    /// Handle complete lines and read more, until a request is outstanding, the
    /// connection closes, or the socket has nothing more.
    fn pump<H: Handler>(&mut self, handler: &mut H, responder: impl Fn() -> Responder<<H::Op as Message>::Reply>) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if self.waiting || self.closing || self.dead || self.wbuf.len() > WBUF_HIGH {
                return;
            }
            if let Some(pos) = self.rbuf[self.scanned..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=self.scanned + pos).collect();
                self.scanned = 0;
                self.request(&line[..line.len() - 1], handler, &responder);
                continue;
            }
            self.scanned = self.rbuf.len();
            if self.rbuf.len() > MAX_LINE {
                self.too_long::<<H::Op as Message>::Reply>();
                return;
            }
            if self.eof {
                // A last request without its newline is still a request.
                let line = std::mem::take(&mut self.rbuf);
                self.scanned = 0;
                if line.is_empty() {
                    self.closing = true;
                } else {
                    self.request(&line, handler, &responder);
                }
                continue;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
    }

    /// Refuse an over-long line and close the connection once the refusal is written.
    fn too_long<R: ErrorReply>(&mut self) {
        self.refuse::<R>(&ParseError::TooLong { limit: MAX_LINE });
        self.rbuf = Vec::new();
        self.scanned = 0;
        self.closing = true;
    }

    /// One request line, without its newline.
    fn request<H: Handler>(
        &mut self,
        line: &[u8],
        handler: &mut H,
        responder: &impl Fn() -> Responder<<H::Op as Message>::Reply>,
    ) {
        if line.len() > MAX_LINE {
            self.too_long::<<H::Op as Message>::Reply>();
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match codec::parse::<H::Op>(line) {
            Ok(op) => {
                self.waiting = true;
                handler.handle(op, responder());
            }
            Err(e) => self.refuse::<<H::Op as Message>::Reply>(&e),
        }
    }

    fn refuse<R: ErrorReply>(&mut self, e: &ParseError) {
        self.push(&e.reply::<R>());
    }

    fn push<R: ErrorReply>(&mut self, reply: &R) {
        if let Some((code, message)) = reply.as_error() {
            tracing::info!(?code, message, "request refused");
        }
        match codec::encode(reply) {
            Ok(v) => self.wbuf.extend_from_slice(&v),
            Err(e) => tracing::error!(error = %e, "could not encode a reply"),
        }
    }

    fn flush(&mut self) {
        while !self.wbuf.is_empty() && !self.dead {
            match self.stream.write(&self.wbuf) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
    }
}

#[cfg(test)]
mod tests;
