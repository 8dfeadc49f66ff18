//! The control socket: `xlane-api`'s server loop on the control thread, serving
//! xlaned's protocol with [`State`], plus neighbour events (a [`Notifier`] the neighbour
//! thread pokes) and termination signals (the signalfd, registered with the loop).
//!
//! [`State::handle`] answers synchronously today. A request that has to wait (say, an
//! endpoint attach until its port forwards) can instead keep its [`Responder`] and
//! complete it later — from another thread, or from [`Handler::on_wake`] when the event
//! it waits for arrives — and the connection's next request waits until then while
//! other connections are served.

use crate::state::State;
use crossbeam_channel::Receiver;
use nix::sys::signalfd::SignalFd;
use std::os::fd::AsFd;
use std::path::Path;
use xlane_api::server::{Control, Handler, Notifier, Responder, Server};
use xlane_api::{Op, Reply};
use xlane_netlink::NeighEvent;

/// The control socket, bound; requests queue until [`ControlSocket::serve`].
pub struct ControlSocket {
    server: Server<Op>,
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
    pub fn serve(mut self, state: &mut State, neigh: &Receiver<NeighEvent>, signals: &SignalFd) -> anyhow::Result<()> {
        self.server.register_fd(signals.as_fd())?;
        self.server.run(&mut Daemon { state, neigh, signals })?;
        Ok(())
    }
}

struct Daemon<'a> {
    state: &'a mut State,
    neigh: &'a Receiver<NeighEvent>,
    signals: &'a SignalFd,
}

impl Handler for Daemon<'_> {
    type Op = Op;

    fn handle(&mut self, op: Op, responder: Responder<Reply>) {
        responder.reply(self.state.handle(op));
    }

    fn on_wake(&mut self, _ctl: &mut Control) {
        while let Ok(ev) = self.neigh.try_recv() {
            self.state.on_neighbour(&ev);
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
