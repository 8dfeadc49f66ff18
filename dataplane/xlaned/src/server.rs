//! The control socket: `xlane-api`'s server loop on the control thread, serving
//! xlaned's protocol with [`State`], plus neighbour events (a [`Notifier`] the neighbour
//! thread pokes) and termination signals (the signalfd, registered with the loop).
//!
//! A request [`State::handle`] cannot answer at once (an endpoint attach, until the
//! workers have opened its port) keeps its [`Responder`] under the state's ticket; the
//! workers' answers wake the loop ([`Handler::on_wake`]), which completes it. That
//! connection's next request waits until then; other connections are served meanwhile.

use crate::fdstore::FdStore;
use crate::handover::{self, Listener, Parked, Served};
use crate::host::System;
use crate::state::{Handled, State, Ticket};
use crossbeam_channel::Receiver;
use nix::sys::signalfd::SignalFd;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use xlane_api::server::{Control, Handler, Notifier, Responder, Server};
use xlane_api::{Op, Reply};
use xlane_netlink::NeighEvent;

/// The control socket, bound; requests queue until [`ControlSocket::serve`].
pub struct ControlSocket {
    server: Server<Op>,
}

impl core::fmt::Debug for ControlSocket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ControlSocket").field("path", &self.server.path()).finish()
    }
}

impl ControlSocket {
    /// Bind the socket at `path` (mode 0600, a stale socket replaced).
    ///
    /// # Errors
    /// Directory, bind or poll setup failure.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        Ok(Self { server: Server::bind(path)? })
    }

    /// What the neighbour thread pokes after queueing events.
    #[must_use]
    pub fn notifier(&self) -> Notifier {
        self.server.notifier()
    }

    /// Serve until SIGINT/SIGTERM or a handover to a new xlaned (on `handover`); the
    /// socket is removed on return.
    ///
    /// # Errors
    /// Poll failure.
    pub fn serve(
        mut self,
        state: &mut State<System>,
        neigh: &Receiver<NeighEvent>,
        signals: &SignalFd,
        handover: &Listener,
        store: Option<&mut FdStore>,
    ) -> anyhow::Result<Ended> {
        let signal_key = self.server.register_fd(signals.as_fd())?;
        let handover_key = self.server.register_fd(handover.fd())?;
        let mut d = Daemon {
            state,
            neigh,
            signals,
            signal_key,
            handover,
            handover_key,
            ended: Ended::Signal,
            waiting: HashMap::new(),
            successor: None,
            store,
        };
        self.server.run(&mut d)?;
        Ok(d.ended)
    }
}

/// Why the control loop ended.
#[derive(Debug)]
pub enum Ended {
    /// SIGINT or SIGTERM: shut down.
    Signal,
    /// Handed over to a new xlaned: exit at once, without destructors.
    HandedOver(Parked),
    /// A new xlaned that cannot take over asked this one to exit (it starts cold): shut
    /// down, keeping the connection open until exit.
    Exit(std::os::unix::net::UnixStream),
}

struct Daemon<'a> {
    state: &'a mut State<System>,
    neigh: &'a Receiver<NeighEvent>,
    signals: &'a SignalFd,
    signal_key: usize,
    handover: &'a Listener,
    handover_key: usize,
    ended: Ended,
    /// Requests the state answers later.
    waiting: HashMap<Ticket, Responder<Reply>>,
    /// The xlaned started on SIGHUP to take over, while it may still run.
    successor: Option<handover::Successor>,
    /// The service manager's store, kept in step with the ports and state.
    store: Option<&'a mut FdStore>,
}

impl Daemon<'_> {
    fn sync_store(&mut self, changed: bool) {
        if let Some(store) = self.store.as_deref_mut() {
            if changed {
                store.touch();
            }
            store.sync(self.state);
        }
    }
}

impl Handler for Daemon<'_> {
    type Op = Op;

    fn handle(&mut self, op: Op, responder: Responder<Reply>) {
        let changes = matches!(op, Op::SetVtep(_) | Op::Apply { .. } | Op::AddEndpoint(_) | Op::DelEndpoint { .. });
        match self.state.handle(op) {
            Handled::Now(reply) => responder.reply(reply),
            Handled::Later(ticket) => {
                self.waiting.insert(ticket, responder);
            }
        }
        self.sync_store(changes);
    }

    /// Neighbour events, workers done with a job, or the once-a-second tick (which lets
    /// the state give up on workers that do not answer).
    fn on_wake(&mut self, _ctl: &mut Control) {
        while let Ok(ev) = self.neigh.try_recv() {
            self.state.on_neighbour(&ev);
        }
        let mut answered = false;
        for (ticket, reply) in self.state.on_wake() {
            answered = true;
            if let Some(r) = self.waiting.remove(&ticket) {
                r.reply(reply);
            }
        }
        self.sync_store(answered);
    }

    /// The signalfd, or a new xlaned on the handover socket.
    fn on_fd(&mut self, key: usize, ctl: &mut Control) {
        if key == self.signal_key {
            if let Ok(Some(sig)) = self.signals.read_signal() {
                if sig.ssi_signo == nix::sys::signal::Signal::SIGHUP as u32 {
                    // An upgrade (`systemctl reload`): the binary now installed takes over.
                    // One at a time: a second reload while a successor takes over is
                    // already being served.
                    if let Some(s) = self.successor.as_ref().filter(|s| s.running()) {
                        tracing::warn!(pid = s.pid, "SIGHUP: a new xlaned is already taking over; ignored");
                        return;
                    }
                    match handover::spawn_successor() {
                        Ok(s) => {
                            tracing::info!(pid = s.pid, "SIGHUP: a new xlaned takes over");
                            self.successor = Some(s);
                        }
                        Err(e) => tracing::error!(error = %e, "SIGHUP: starting a new xlaned"),
                    }
                    return;
                }
                tracing::info!(signal = sig.ssi_signo, "shutting down");
                ctl.stop();
            }
            return;
        }
        if key != self.handover_key {
            return;
        }
        while let Some(stream) = self.handover.accept() {
            let stored = self.store.as_deref().map(FdStore::names).unwrap_or_default();
            match handover::serve(stream, self.state, self.handover, stored) {
                Served::Kept => {}
                Served::HandedOver(parked) => {
                    self.ended = Ended::HandedOver(parked);
                    ctl.stop();
                    return;
                }
                Served::Exit(stream) => {
                    self.ended = Ended::Exit(stream);
                    ctl.stop();
                    return;
                }
            }
        }
    }
}
