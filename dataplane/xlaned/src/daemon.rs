//! The daemon: workers on their UMEMs, the control state on the real node, the
//! neighbour monitor, metrics and the control socket, wired together.

use crate::config::{self, Config};
use crate::node_lock::NodeLock;
use crate::{fdstore, handover, host, metrics, server, state, worker};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::sync::Arc;
use xlane_fib::FibHandle;
use xlane_xdp::attach::{ModePreference, XdpMode};
use xlane_xdp::xsk::{BindMode, Umem, UmemSettings, Umems};

/// Whether the uplink's driver offers AF_XDP zero-copy (netdev XDP features).
fn uplink_zero_copy(uplink: &str) -> std::io::Result<bool> {
    let ifindex = nix::net::if_::if_nametoindex(uplink).map_err(|e| std::io::Error::other(format!("{uplink}: {e}")))?;
    Ok(xlane_netlink::netdev::xdp_features(ifindex)?.zero_copy())
}

/// Run the daemon with `cfg` until SIGINT or SIGTERM.
///
/// # Errors
/// A failure to set up (workers, uplink, sockets, the control socket).
pub fn run(cfg: &Config) -> anyhow::Result<()> {
    // Termination signals are read from a signalfd by the control loop; block them
    // before any thread starts so every thread inherits the mask.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    // SIGHUP: an upgrade (see `handover::spawn_successor`).
    mask.add(Signal::SIGHUP);
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    // Decided before a handover, whose offer must say the same.
    let uplink_rx = cfg.uplink_rx.resolve(cfg.bind_mode, || uplink_zero_copy(&cfg.uplink));
    tracing::info!(uplink = %cfg.uplink, through = uplink_rx.describe(), "reading the uplink's VXLAN traffic");
    // Taking over: the old xlaned's objects and state, once it has exited (or, where it
    // could not hand over, once it has shut down: then a cold start).
    let (inherited, lock) = if cfg.takeover {
        handover::take_over(&cfg.socket, cfg.workers, uplink_rx, cfg.handover_version)
            .map_err(|e| anyhow::anyhow!("taking over from the running xlaned: {e}"))?
    } else {
        let lock = NodeLock::try_acquire(&cfg.socket)?.ok_or_else(|| {
            anyhow::anyhow!(
                "another xlaned serves {} (it holds {}); to replace it without an outage, start this one with --takeover",
                cfg.socket.display(),
                NodeLock::path(&cfg.socket).display()
            )
        })?;
        // After a crash, the service manager hands back what the dead xlaned kept in
        // its store: the same path as a handover's, on fresh UMEMs.
        let kept = fdstore::recover().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the service manager's store: starting cold");
            None
        });
        (kept, lock)
    };
    let (ops, mut handed_umems, pool, stored) = match inherited {
        Some(i) => (i.ops, i.umems.into_iter().map(Some).collect(), i.pool, i.stored),
        None => (Vec::new(), Vec::new(), handover::Pool::default(), Vec::new()),
    };
    let mut store = fdstore::available().then(|| fdstore::FdStore::new(stored));
    if store.is_some() {
        tracing::info!("keeping the node's objects in the service manager's store (crash recovery)");
    }
    let fib = FibHandle::new();
    let tx_checksum = cfg.xsk_tx_checksum.for_shared();
    let umem = UmemSettings { frames: cfg.umem_frames, tx_checksum, ..UmemSettings::default() };
    let bind = match cfg.bind_mode {
        config::BindArg::Auto => BindMode::Auto,
        config::BindArg::Copy => BindMode::Copy,
        config::BindArg::ZeroCopy => BindMode::ZeroCopy,
    };
    let mut workers = Vec::new();
    let mut joins = Vec::new();
    for i in 0..cfg.workers {
        let handed: Option<Vec<_>> = handed_umems.get_mut(i).and_then(Option::take);
        // A worker on handed-over rings waits for the tables to know its ports.
        let held = handed.is_some();
        let wc = worker::WorkerConfig { busy_poll: cfg.busy_poll, core: cfg.cores.get(i).copied(), held };
        let (h, j) = worker::spawn(i, wc, &fib, move || match handed {
            Some(set) => Umems::take_over(set).map_err(|e| format!("the UMEMs handed over: {e}")),
            None => Umem::new(umem)
                .inspect(|u| host::warn_if_refused("shared", umem.tx_checksum, u.tx_checksum()))
                .map(Umems::new)
                .map_err(|e| e.to_string()),
        })?;
        workers.push(h);
        joins.push(j);
    }
    let metric_ports: Arc<metrics::MetricPorts> = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
    let worker_shared: Vec<_> = workers.iter().map(|w| Arc::clone(&w.shared)).collect();
    let xdp = match cfg.xdp_mode {
        config::XdpModeArg::Auto => ModePreference::Auto,
        config::XdpModeArg::Native => ModePreference::Only(XdpMode::Native),
        config::XdpModeArg::Generic => ModePreference::Only(XdpMode::Generic),
    };
    let uplink_umem = match cfg.uplink_umem {
        config::UplinkUmemArg::Auto => host::Placement::OwnIfZeroCopy,
        config::UplinkUmemArg::Shared => host::Placement::Shared,
        config::UplinkUmemArg::Own => host::Placement::Own,
    };
    let control = state::ControlConfig {
        uplink: cfg.uplink.clone(),
        uplink_queues: cfg.uplink_queues.clone(),
        cluster_cidr: cfg.cluster_cidr,
        host_port: cfg.host_port.clone(),
        uplink_fill: umem.fill_ring,
        // A pod port starts with 256 frames and grows under bursts within a quarter of
        // the UMEM: a default UMEM (40960 frames) still serves ~110 pods, the
        // Kubernetes default, beside the uplink's full ring, when that quarter is used.
        pod_fill: 256,
        busy_poll: cfg.busy_poll,
        runtime_dir: cfg.socket.parent().map_or_else(|| "/run/xlane".into(), std::path::Path::to_path_buf),
        max_frame: umem.max_frame(),
        // Copy-mode sockets take a jumbo frame in several buffers; the UDP GSO sockets
        // send one; a zero-copy bind takes neither.
        max_uplink_frame: if cfg.uplink_udp_gso && cfg.bind_mode != config::BindArg::ZeroCopy {
            state::MAX_JUMBO_MTU + 14
        } else {
            umem.max_frame()
        },
        uplink_udp_gso: cfg.uplink_udp_gso,
        xsk_tx_checksum: cfg.xsk_tx_checksum,
        uplink_rx,
        uplink_umem,
    };
    // Two pods' sockets ready ahead.
    let host =
        host::System::new(xdp, bind)?.with_pool(pool).with_uplink_rx(uplink_rx).with_ready_sockets(2 * cfg.workers)?;
    let mut st = state::State::new(control, host, fib, workers, Arc::clone(&metric_ports), Arc::new(|| {}))?;
    if !ops.is_empty() {
        // Each request takes the inherited objects on its path; frames arriving
        // meanwhile wait in the rings.
        let t0 = std::time::Instant::now();
        let n = ops.len();
        for op in ops {
            if let xlane_api::Reply::Error { message, .. } = st.handle_now(op) {
                tracing::warn!(%message, "a request of the state taken over failed");
            }
        }
        handover::close_leftovers(&mut st);
        for w in &st.workers {
            w.release();
        }
        tracing::info!(requests = n, ms = t0.elapsed().as_millis(), "took over: state rebuilt, forwarding");
    }

    if let Some(addr) = cfg.metrics {
        // After a handover the old xlaned may hold the port a little longer than the
        // connection that said it has gone (its threads exit one by one).
        let patience = if cfg.takeover { std::time::Duration::from_secs(5) } else { std::time::Duration::ZERO };
        metrics::spawn(addr, worker_shared, metric_ports, patience)?;
        tracing::info!(%addr, "metrics on /metrics");
    }
    // Subscribed now, so no neighbour change is missed while the VTEP is set up.
    let mut monitor = xlane_netlink::NeighMonitor::new()?;
    if let Some(v) = cfg.vtep {
        match st.handle_now(xlane_api::Op::SetVtep(v)) {
            xlane_api::Reply::Error { message, .. } => anyhow::bail!("--vtep-ip: {message}"),
            _ => tracing::info!(vtep = %v.ip, "VTEP configured from flags"),
        }
    }
    let control = server::ControlSocket::bind(&cfg.socket)?;
    let handover_socket = handover::Listener::bind(&handover::socket_path(&cfg.socket), lock)?;
    let workers_done = control.notifier();
    st.set_notify(Arc::new(move || {
        let _ = workers_done.notify();
    }));
    // A worker that never answers a job is given up on at the next wake: wake once a
    // second so that happens without other traffic.
    let tick = control.notifier();
    std::thread::Builder::new().name("xlane-tick".into()).spawn(move || {
        while tick.notify().is_ok() {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    })?;
    let notifier = control.notifier();
    let (neigh_tx, neigh_rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new().name("xlane-neigh".into()).spawn(move || {
        loop {
            match monitor.next_batch() {
                Ok(evs) => {
                    for ev in evs {
                        if neigh_tx.send(ev).is_err() {
                            return;
                        }
                    }
                    let _ = notifier.notify();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "neighbour monitor");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    })?;
    tracing::info!(uplink = %cfg.uplink, workers = cfg.workers, busy_poll = cfg.busy_poll, "xlaned running");
    handover::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    match control.serve(&mut st, &neigh_rx, &signals, &handover_socket, store.as_mut())? {
        server::Ended::HandedOver(parked) => {
            // Destructors would detach the programs and close the sockets the new
            // xlaned now serves: exit as is (the workers stay parked until then).
            tracing::info!("xlaned handed over; exiting");
            drop(handover_socket);
            let _keep = parked;
            std::process::exit(0);
        }
        server::Ended::Exit(stream) => {
            // The new xlaned starts cold: nothing of this one may stay in the store.
            if let Some(store) = store.as_mut() {
                store.clear();
            }
            shutdown(&mut st, joins);
            // The new xlaned waits for this connection to close: at exit, with
            // everything else this process holds.
            let _keep = stream;
            std::process::exit(0);
        }
        server::Ended::Signal => {
            if let Some(store) = store.as_mut() {
                store.clear();
            }
            shutdown(&mut st, joins);
        }
    }
    Ok(())
}

/// Stop the workers (closing every port) and detach the programs.
fn shutdown(st: &mut state::State<host::System>, joins: Vec<std::thread::JoinHandle<()>>) {
    let _ = st.shutdown();
    for j in joins {
        let _ = j.join();
    }
    tracing::info!("xlaned stopped; XDP programs detached");
}
