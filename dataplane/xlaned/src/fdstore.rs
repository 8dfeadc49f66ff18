//! Surviving a crash: the node's kernel objects kept in the service manager's
//! file-descriptor store (systemd's `FDSTORE=1` with `FileDescriptorStoreMax=`; in a
//! container, `xlane-supervise`, which speaks the same protocol).
//!
//! What a crash costs grows with the pods: the dying process's descriptors are closed
//! one by one, each AF_PACKET socket, AF_XDP socket and BPF link costing the kernel an
//! RCU grace period, and the next xlaned opens them all again. With duplicates in the
//! store none of that happens: the objects outlive the process (programs stay
//! attached, pod sockets stay open and keep receiving), and the next xlaned, handed them
//! back as `LISTEN_FDS`, takes them as it takes a handover's: the state's requests are
//! replayed and each takes its objects from the [`Pool`].
//!
//! Kept: every port's XDP attachment (link, program, XSKMAP) and host-stack block (tcx
//! link, program), each worker's AF_PACKET sockets (veth-offload pods, the CNI's
//! default), and the state as requests (a memfd). Not kept: AF_XDP sockets and their
//! UMEMs (who holds which frame lives only in the process; the next one binds anew, into
//! the kept XSKMAPs), vhost-user connections (guests reconnect), the node lock.
//!
//! Each descriptor is stored under a name of its own (`xdp-<ifindex>-link`, …), so the
//! store is kept in step by name: what is new is added, what went is removed (which is
//! what releases it). A clean stop empties the store.

use crate::handover::{self, Inherited, Pool};
use crate::host::System;
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};
use xlane_api::Op;
use xlane_xdp::attach::{AttachmentHandover, AttachmentState};
use xlane_xdp::packet::FanoutMode;

/// The environment variable systemd (254+) sets when the service has a store: its size.
const FDSTORE: &str = "FDSTORE";
/// Prefix of the state memfd's name; its generation follows.
const STATE: &str = "state-";
/// How long a sync waits for a worker's AF_PACKET sockets.
const WORKER_WAIT: Duration = Duration::from_secs(1);
/// Syncs after a change no closer together than this (a replay's burst of requests is
/// one sync; the control loop's once-a-second tick takes what a burst left).
const SPACING: Duration = Duration::from_millis(20);

/// The state, beside the descriptors: plain data, in the `state-<generation>` memfd.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    ops: Vec<Op>,
    attachments: Vec<AttachmentState>,
    /// Per worker: its AF_PACKET sockets' interfaces and fanout.
    packets: Vec<Vec<(u32, FanoutMode)>>,
}

/// This xlaned's part of the store: the names it has stored.
#[derive(Debug)]
pub struct FdStore {
    stored: BTreeSet<String>,
    generation: u64,
    /// The state last stored (to store it again only when it changed).
    last: Vec<u8>,
    dirty: bool,
    last_sync: Option<Instant>,
}

/// Whether the service manager offers a store (systemd sets `FDSTORE` to its size).
#[must_use]
pub fn available() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        && std::env::var(FDSTORE).is_ok_and(|n| n.parse().is_ok_and(|n: u32| n > 0))
}

fn attachment_names(ifindex: u32) -> [String; 3] {
    ["link", "prog", "xskmap"].map(|k| format!("xdp-{ifindex}-{k}"))
}

fn block_names(ifindex: u32) -> [String; 2] {
    ["link", "prog"].map(|k| format!("tcx-{ifindex}-{k}"))
}

fn packet_name(worker: usize, ifindex: u32) -> String {
    format!("pkt-{worker}-{ifindex}")
}

/// What a crashed xlaned left in the store, if the service manager passed anything
/// (`LISTEN_FDS`): the requests that rebuild its state and the objects they take, with
/// no UMEM (the workers start on fresh ones), and the names stored.
///
/// # Errors
/// Descriptors without the state, or a state that does not parse.
pub fn recover() -> io::Result<Option<Inherited>> {
    let passed = xlane_xdp::fdpass::listen_fds()?;
    if passed.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = passed.iter().map(|(n, _)| n.clone()).collect();
    take(passed).inspect_err(|_| {
        // Unusable: nothing of it may stay in the store (it would keep programs
        // attached that this cold start attaches anew).
        for name in &names {
            let _ = remove(name);
        }
    })
}

fn take(passed: Vec<(String, OwnedFd)>) -> io::Result<Option<Inherited>> {
    let mut by_name: HashMap<String, OwnedFd> = HashMap::new();
    let mut newest: Option<(u64, String)> = None;
    for (name, fd) in passed {
        if let Some(g) = name.strip_prefix(STATE).and_then(|g| g.parse::<u64>().ok())
            && newest.as_ref().is_none_or(|(n, _)| g > *n)
        {
            newest = Some((g, name.clone()));
        }
        by_name.insert(name, fd);
    }
    let stored: Vec<String> = by_name.keys().cloned().collect();
    let Some((generation, state_name)) = newest else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("descriptors without a state: {stored:?}")));
    };
    let mut text = Vec::new();
    let mut file = std::fs::File::from(by_name.remove(&state_name).expect("named above"));
    file.rewind()?;
    file.read_to_end(&mut text)?;
    let kept: Kept = serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut pool = Pool::default();
    for state in kept.attachments {
        let [link, prog, xskmap] = attachment_names(state.ifindex).map(|n| by_name.remove(&n));
        if let (Some(prog), Some(xskmap)) = (prog, xskmap)
            && (link.is_some() || !state.linked)
        {
            pool.attachments.insert(state.ifindex, AttachmentHandover { link, prog, xskmap, state });
        }
    }
    let blocks: Vec<u32> =
        by_name.keys().filter_map(|n| n.strip_prefix("tcx-")?.strip_suffix("-link")?.parse().ok()).collect();
    for ifindex in blocks {
        let [link, prog] = block_names(ifindex).map(|n| by_name.remove(&n));
        if let (Some(link), Some(prog)) = (link, prog) {
            pool.blocks.insert(ifindex, (link, prog));
        }
    }
    for (w, sockets) in kept.packets.into_iter().enumerate() {
        let mut mine = HashMap::new();
        for (ifindex, fanout) in sockets {
            if let Some(fd) = by_name.remove(&packet_name(w, ifindex)) {
                mine.insert(ifindex, (fd, fanout));
            }
        }
        pool.packets.push(mine);
    }
    tracing::info!(
        generation,
        requests = kept.ops.len(),
        attachments = pool.attachments.len(),
        blocks = pool.blocks.len(),
        packet_sockets = pool.packets.iter().map(HashMap::len).sum::<usize>(),
        unknown = by_name.len(),
        "recovering after a crash: objects kept in the service manager's store"
    );
    Ok(Some(Inherited { ops: kept.ops, umems: Vec::new(), pool, stored }))
}

impl FdStore {
    /// The store as this xlaned finds it: `stored`, the names a previous xlaned left (as
    /// [`recover`] or a handover reports them).
    #[must_use]
    pub fn new(stored: Vec<String>) -> Self {
        let generation = stored.iter().filter_map(|n| n.strip_prefix(STATE)?.parse::<u64>().ok()).max().unwrap_or(0);
        Self { stored: stored.into_iter().collect(), generation, last: Vec::new(), dirty: true, last_sync: None }
    }

    /// The names stored now (for a successor).
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.stored.iter().cloned().collect()
    }

    /// Something changed: sync at the next [`sync`](Self::sync).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Bring the store in step with `state`, if something changed and it is settled (no
    /// port being attached or removed): store what is new, remove what went.
    pub fn sync(&mut self, state: &State<System>) {
        if !self.dirty || !state.attaching.is_empty() || !state.closing.is_empty() {
            return;
        }
        if self.last_sync.is_some_and(|t| t.elapsed() < SPACING) {
            return;
        }
        self.last_sync = Some(Instant::now());
        match self.try_sync(state) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!(error = %e, "keeping the node's objects in the service manager's store"),
        }
    }

    fn try_sync(&mut self, state: &State<System>) -> io::Result<()> {
        let (attachments, blocks) = handover::port_objects(state).map_err(io::Error::other)?;
        let mut objects: BTreeMap<String, OwnedFd> = BTreeMap::new();
        let mut kept = Kept { ops: state.rebuild_ops(), ..Kept::default() };
        for h in attachments {
            let [l, p, m] = attachment_names(h.state.ifindex);
            objects.extend(h.link.map(|link| (l, link)));
            objects.extend([(p, h.prog), (m, h.xskmap)]);
            kept.attachments.push(h.state);
        }
        for (ifindex, link, prog) in blocks {
            let [l, p] = block_names(ifindex);
            objects.extend([(l, link), (p, prog)]);
        }
        for (w, worker) in state.workers.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let sent = worker.run(move |d| {
                let _ = tx.send(handover::packet_sockets(d));
            });
            let sockets = if sent { rx.recv_timeout(WORKER_WAIT).ok() } else { None };
            let sockets = sockets.ok_or_else(|| io::Error::other(format!("worker {w} did not answer")))?;
            let sockets = sockets.map_err(io::Error::other)?;
            kept.packets.push(sockets.iter().map(|(i, f, _)| (*i, *f)).collect());
            objects.extend(sockets.into_iter().map(|(ifindex, _, fd)| (packet_name(w, ifindex), fd)));
        }
        for (name, fd) in &objects {
            if !self.stored.contains(name) {
                store(name, fd)?;
                self.stored.insert(name.clone());
            }
        }
        let text = serde_json::to_vec(&kept).map_err(io::Error::other)?;
        let mut current = format!("{STATE}{}", self.generation);
        if text != self.last || !self.stored.contains(&current) {
            self.generation += 1;
            current = format!("{STATE}{}", self.generation);
            let memfd = nix::sys::memfd::memfd_create(c"xlane-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
            let mut file = std::fs::File::from(memfd);
            file.write_all(&text)?;
            store(&current, &file)?;
            self.stored.insert(current.clone());
            self.last = text;
        }
        let gone: Vec<String> =
            self.stored.iter().filter(|n| !objects.contains_key(*n) && **n != current).cloned().collect();
        for name in gone {
            remove(&name)?;
            self.stored.remove(&name);
        }
        Ok(())
    }

    /// Empty the store (a clean stop: what it holds must not outlive this xlaned).
    pub fn clear(&mut self) {
        for name in std::mem::take(&mut self.stored) {
            if let Err(e) = remove(&name) {
                tracing::warn!(name, error = %e, "emptying the service manager's store");
            }
        }
    }
}

fn store(name: &str, fd: &impl AsFd) -> io::Result<()> {
    handover::notify_with(&format!("FDSTORE=1\nFDNAME={name}\n"), &[fd.as_fd()])
}

fn remove(name: &str) -> io::Result<()> {
    handover::notify_with(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])
}
