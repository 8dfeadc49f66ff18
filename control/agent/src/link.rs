//! The agent's link to xlaned: one thread that owns the connection and keeps xlaned's
//! tables equal to the leases.
//!
//! The main loop hands it every batch of lease changes; the link applies them as a
//! diff against what it programmed last. A second, idle connection is held by a
//! watcher thread blocked in `read`: xlaned's exit (a crash, a restart, an upgrade)
//! closes it, so the link learns of it at once — not on its next request or a poll —
//! reconnects (every 10 ms) and replays the full state: VTEP, remote nodes, routes and
//! every endpoint. The gap after a crash is then xlaned's own start-up plus one replay.

use crate::agent::{AgentError, Shared};
use crate::ipam::Ipam;
use crate::lease::Lease;
use crate::store::Event;
use crate::sync;
use crossbeam_channel::{Receiver, Sender, select};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xlane_api::{Change, Client, EndpointSpec, Op, Reply, Table, Vtep};

/// Changes per request to xlaned.
const BATCH: usize = 1000;
/// How often the link retries connecting to xlaned while it is away.
const RECONNECT_EVERY: Duration = Duration::from_millis(10);
/// How often an unsynced link tries again (a refused request, not a lost xlaned).
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the main loop tells the link.
#[derive(Debug)]
pub(crate) enum LinkMsg {
    /// A batch of lease changes, in order.
    Events(Vec<Event>),
    /// The node's own lease changed (re-acquired after it was lost).
    Own(Lease),
}

/// What the link starts from.
pub(crate) struct LinkStart<'a> {
    pub(crate) socket: &'a Path,
    pub(crate) vtep: Vtep,
    pub(crate) vni: u32,
    pub(crate) leases: BTreeMap<Ipv4Net, Lease>,
    pub(crate) own: Lease,
    pub(crate) shared: &'a Arc<Mutex<Shared>>,
    pub(crate) stop: &'a AtomicBool,
}

pub(crate) fn xlaned_call(c: &mut Client, op: Op) -> Result<Reply, AgentError> {
    match c.call(op) {
        Ok(Reply::Error { code, message }) => Err(AgentError::Dataplane(format!("{code:?}: {message}"))),
        Ok(r) => Ok(r),
        Err(e) => Err(AgentError::Dataplane(e.to_string())),
    }
}

/// Connect to xlaned, retrying every `every` until it answers or `stop` is set.
pub(crate) fn connect(path: &Path, stop: &AtomicBool, every: Duration) -> Option<Client> {
    let mut warned = Instant::now();
    let started = warned;
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        match Client::connect(path) {
            Ok(c) => return Some(c),
            Err(e) => {
                if warned == started || warned.elapsed() >= Duration::from_secs(5) {
                    tracing::warn!(socket = %path.display(), error = %e, "waiting for xlaned");
                    warned = Instant::now();
                }
                std::thread::sleep(every);
            }
        }
    }
}

/// Hold an idle connection to xlaned on a thread of its own and report on `lost` when
/// it closes (xlaned exited) — or could not be made.
fn watch_exit(socket: PathBuf, lost: Sender<()>) {
    let spawned = std::thread::Builder::new().name("xlane-agent-watch".into()).spawn(move || {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            // xlaned never writes unasked: the read returns only at EOF or an error.
            let _ = s.read(&mut [0u8; 1]);
        }
        let _ = lost.send(());
    });
    if spawned.is_err() {
        tracing::warn!("cannot watch xlaned's connection; a restart is noticed on the next request");
    }
}

/// Run the link until `stop` is set or the main loop hangs up. `xl` is connected.
pub(crate) fn run(start: LinkStart<'_>, mut xl: Client, msgs: &Receiver<LinkMsg>) {
    let LinkStart { socket, vtep, vni, mut leases, mut own, shared, stop } = start;
    let (lost_tx, lost_rx) = crossbeam_channel::unbounded();
    watch_exit(socket.to_owned(), lost_tx.clone());
    let mut programmed = BTreeMap::new();
    let vtep_for = |own: &Lease| Vtep { subnet: Some(own.subnet), ..vtep };
    let mut in_sync = program(&mut xl, vtep_for(&own), &leases, &own, vni, shared, true, &mut programmed).is_ok();
    shared.lock().expect("not poisoned").synced = in_sync;
    while !stop.load(Ordering::Relaxed) {
        let mut lost = false;
        select! {
            recv(msgs) -> m => match m {
                Ok(LinkMsg::Events(events)) => {
                    crate::store::apply(&mut leases, events);
                    if in_sync {
                        in_sync = converge(&mut xl, &leases, &own, vni, &mut programmed, Baseline::Programmed)
                            .map_err(|e| tracing::warn!(error = %e, "applying lease changes"))
                            .is_ok();
                    }
                }
                Ok(LinkMsg::Own(l)) => {
                    own = l;
                    in_sync = false;
                }
                Err(_) => return,
            },
            recv(lost_rx) -> _ => lost = true,
            default(RETRY_EVERY) => {}
        }
        if lost {
            tracing::warn!("xlaned connection lost; reconnecting to replay the state");
            let t0 = Instant::now();
            let Some(c) = connect(socket, stop, RECONNECT_EVERY) else { return };
            xl = c;
            watch_exit(socket.to_owned(), lost_tx.clone());
            in_sync = program(&mut xl, vtep_for(&own), &leases, &own, vni, shared, true, &mut programmed).is_ok();
            tracing::info!(elapsed_ms = t0.elapsed().as_millis(), in_sync, "xlaned replayed after a restart");
        } else if !in_sync {
            in_sync = program(&mut xl, vtep_for(&own), &leases, &own, vni, shared, false, &mut programmed).is_ok();
        }
        shared.lock().expect("not poisoned").synced = in_sync;
    }
}

/// Set the VTEP, reconcile nodes and routes, and (after an xlaned restart) re-attach
/// every known endpoint, taking the restarted xlaned's pod MTU and workers for the pods
/// to come (it may have restarted with other settings).
#[allow(clippy::too_many_arguments, reason = "the link's state, passed explicitly")]
fn program(
    xl: &mut Client,
    vtep: Vtep,
    leases: &BTreeMap<Ipv4Net, Lease>,
    own: &Lease,
    vni: u32,
    shared: &Arc<Mutex<Shared>>,
    endpoints: bool,
    programmed: &mut BTreeMap<Ipv4Addr, sync::Remote>,
) -> Result<(), AgentError> {
    let r = (|| {
        xlaned_call(xl, Op::SetVtep(vtep))?;
        converge(xl, leases, own, vni, programmed, Baseline::Dataplane)?;
        if endpoints {
            let Reply::Status(status) = xlaned_call(xl, Op::Status)? else {
                return Err(AgentError::Dataplane("unexpected status reply".into()));
            };
            shared.lock().expect("not poisoned").dataplane(&status);
            let list = shared.lock().expect("not poisoned").ipam.as_ref().map(endpoints_of).unwrap_or_default();
            for spec in list {
                let (ip, host_if) = (spec.ip, spec.ifname.clone());
                if let Err(e) = xlaned_call(xl, Op::AddEndpoint(spec)) {
                    tracing::warn!(%ip, %host_if, error = %e, "could not re-attach endpoint");
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = &r {
        tracing::warn!(error = %e, "programming xlaned failed; will retry");
    } else {
        tracing::info!(leases = leases.len(), "xlaned in sync");
    }
    r
}

/// Every attached endpoint the IPAM knows, as xlaned takes it.
fn endpoints_of(ipam: &Ipam) -> Vec<EndpointSpec> {
    ipam.allocations()
        .filter_map(|(ip, a)| {
            Some(EndpointSpec {
                ifname: a.host_if.clone()?,
                ip,
                mac: a.mac?,
                vhost_user: a.vhost_user.clone(),
                veth_io: a.veth_io,
            })
        })
        .collect()
}

/// Where the diff for bringing xlaned to the leases' state starts from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Baseline {
    /// Ask xlaned for its tables (startup, xlaned restart).
    Dataplane,
    /// What we programmed last (watch events): no dumps, only the changes.
    Programmed,
}

/// Bring xlaned's remote nodes and routes to what the leases say.
fn converge(
    xl: &mut Client,
    leases: &BTreeMap<Ipv4Net, Lease>,
    own: &Lease,
    vni: u32,
    programmed: &mut BTreeMap<Ipv4Addr, sync::Remote>,
    from: Baseline,
) -> Result<(), AgentError> {
    let want = sync::desired(leases.values(), Some(own.subnet), own.attrs.public_ip, vni);
    let changes = match from {
        Baseline::Programmed => sync::diff_desired(programmed, &want),
        Baseline::Dataplane => {
            let Reply::Nodes { nodes } = xlaned_call(xl, Op::Dump { table: Table::Nodes })? else {
                return Err(AgentError::Dataplane("unexpected nodes reply".into()));
            };
            let Reply::Routes { routes } = xlaned_call(xl, Op::Dump { table: Table::Routes })? else {
                return Err(AgentError::Dataplane("unexpected routes reply".into()));
            };
            sync::diff(&nodes, &routes, &want)
        }
    };
    send(xl, &changes)?;
    *programmed = want;
    Ok(())
}

fn send(xl: &mut Client, changes: &[Change]) -> Result<(), AgentError> {
    for batch in changes.chunks(BATCH) {
        xlaned_call(xl, Op::Apply { changes: batch.to_vec() })?;
    }
    if !changes.is_empty() {
        tracing::info!(changes = changes.len(), "dataplane updated");
    }
    Ok(())
}
