//! The control socket: `xlane-api`'s server loop on the control thread, serving
//! xlaned's protocol with [`State`], plus neighbour events (a [`Notifier`] the neighbour
//! thread pokes) and termination signals (the signalfd, registered with the loop).
//!
//! A request [`State::handle`] cannot answer at once (an endpoint attach, until the
//! workers have opened its port) keeps its [`Responder`] under the state's ticket; the
//! workers' answers wake the loop ([`Handler::on_wake`]), which completes it. That
//! connection's next request waits until then; other connections are served meanwhile.

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

    /// Serve until SIGINT/SIGTERM; the socket is removed on return.
    ///
    /// # Errors
    /// Poll failure.
    pub fn serve(
        mut self,
        state: &mut State<System>,
        neigh: &Receiver<NeighEvent>,
        signals: &SignalFd,
    ) -> anyhow::Result<()> {
        self.server.register_fd(signals.as_fd())?;
        self.server.run(&mut Daemon { state, neigh, signals, waiting: HashMap::new() })?;
        Ok(())
    }
}

struct Daemon<'a> {
    state: &'a mut State<System>,
    neigh: &'a Receiver<NeighEvent>,
    signals: &'a SignalFd,
    /// Requests the state answers later.
    waiting: HashMap<Ticket, Responder<Reply>>,
}

impl Handler for Daemon<'_> {
    type Op = Op;

    fn handle(&mut self, op: Op, responder: Responder<Reply>) {
        match self.state.handle(op) {
            Handled::Now(reply) => responder.reply(reply),
            Handled::Later(ticket) => {
                self.waiting.insert(ticket, responder);
            }
        }
    }

    /// Neighbour events, workers done with a job, or the once-a-second tick (which lets
    /// the state give up on workers that do not answer).
    fn on_wake(&mut self, _ctl: &mut Control) {
        while let Ok(ev) = self.neigh.try_recv() {
            self.state.on_neighbour(&ev);
        }
        for (ticket, reply) in self.state.on_wake() {
            if let Some(r) = self.waiting.remove(&ticket) {
                r.reply(reply);
            }
        }
    }

    /// The signalfd (the only descriptor registered).
    fn on_fd(&mut self, _key: usize, ctl: &mut Control) {
        if let Ok(Some(sig)) = self.signals.read_signal() {
            tracing::info!(signal = sig.ssi_signo, "shutting down");
            ctl.stop();
        }
    }
}
