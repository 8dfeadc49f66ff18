//! Packet trace on the control thread: starting and stopping it on every worker (a job
//! that installs or clears the worker's [`Observer`]), and turning the engine's
//! fixed-size records into the protocol's entries.
//!
//! Workers write records into one bounded [`TraceBuffer`]; the control thread moves them
//! into the session on `trace_show`/`trace_stop` (at most the trace's count, so bounded
//! too). A trace that has taken all its frames is removed from the workers at the next
//! wake, so a finished trace costs the workers nothing.

use crate::host::Host;
use crate::state::{Failure, State, invalid};
use std::sync::Arc;
use xlane_api::{FrameFields, Reply, TraceEntry, TraceHop, TraceSpec};
use xlane_engine::observe::Observer;
use xlane_engine::observe::headers::{Headers, Transport};
use xlane_engine::observe::trace::{
    FrameMatch, Ingress, MAX_TRACE, RouteHop, Stage, TraceBuffer, TraceFilter, TraceRecord,
};
use xlane_engine::{Driver, FrameMemory, Port, Verdict};
use xlane_fib::PortId;

/// The trace of this daemon, if one was started.
#[derive(Debug, Default)]
pub(crate) struct Observation {
    trace: Option<TraceSession>,
}

#[derive(Debug)]
struct TraceSession {
    buffer: Arc<TraceBuffer>,
    records: Vec<TraceRecord>,
    /// Installed on the workers (cleared by a stop, or once the trace is full).
    installed: bool,
}

impl TraceSession {
    fn collect(&mut self) {
        self.buffer.drain_into(&mut self.records);
    }
}

/// Change what worker `driver` observes with `edit`; an observer left observing nothing
/// is removed, so the worker is back on its unobserved path.
pub(crate) fn edit_observer<M: FrameMemory, P: Port<M>>(
    driver: &mut Driver<M, P>,
    worker: u16,
    edit: impl FnOnce(&mut Observer),
) {
    let mut o = driver.set_observer(None).unwrap_or_else(|| Box::new(Observer::new(worker)));
    edit(&mut o);
    if o.is_active() {
        driver.set_observer(Some(o));
    }
}

impl<H: Host> State<H> {
    pub(crate) fn trace_start(&mut self, spec: &TraceSpec) -> Result<Reply, Failure> {
        let count = usize::try_from(spec.count).unwrap_or(usize::MAX);
        if count == 0 || count > MAX_TRACE {
            return Err(invalid(format!("trace count {count}: between 1 and {MAX_TRACE}")));
        }
        let port = spec.port.map(PortId);
        if let Some(p) = port
            && !self.ports.contains_key(&p)
        {
            return Err(invalid(format!("no port {}", p.0)));
        }
        let frames =
            spec.frames.as_deref().map(str::parse::<FrameMatch>).transpose().map_err(|e| invalid(e.to_string()))?;
        let filter = TraceFilter { port, frames };
        let buffer = Arc::new(TraceBuffer::new(count));
        for (i, w) in self.workers.iter().enumerate() {
            let (buffer, worker) = (Arc::clone(&buffer), u16::try_from(i).unwrap_or(u16::MAX));
            w.run(move |d| edit_observer(d, worker, |o| o.set_trace(buffer, filter)));
        }
        let limit = buffer.limit();
        self.observe.trace = Some(TraceSession { buffer, records: Vec::new(), installed: true });
        tracing::info!(count = limit, port = ?spec.port, frames = ?spec.frames, "trace started");
        Ok(Reply::TraceStarted { count: limit })
    }

    pub(crate) fn trace_stop(&mut self) -> Result<Reply, Failure> {
        let Some(t) = &mut self.observe.trace else {
            return Err(invalid("no trace was started"));
        };
        t.installed = false;
        self.clear_trace_on_workers();
        let t = self.observe.trace.as_mut().expect("checked above");
        t.collect();
        Ok(Reply::TraceStopped { traced: t.records.len() as u64 })
    }

    pub(crate) fn trace_show(&mut self) -> Result<Reply, Failure> {
        let Some(t) = &mut self.observe.trace else {
            return Err(invalid("no trace was started"));
        };
        t.collect();
        Ok(Reply::Trace {
            active: t.installed && !t.buffer.full(),
            count: t.buffer.limit(),
            records: t.records.iter().map(entry).collect(),
        })
    }

    /// Once a trace has all its frames, take it off the workers (called on every wake).
    pub(crate) fn retire_finished_trace(&mut self) {
        if let Some(t) = &mut self.observe.trace
            && t.installed
            && t.buffer.full()
        {
            t.installed = false;
            self.clear_trace_on_workers();
        }
    }

    fn clear_trace_on_workers(&self) {
        for (i, w) in self.workers.iter().enumerate() {
            let worker = u16::try_from(i).unwrap_or(u16::MAX);
            w.run(move |d| edit_observer(d, worker, Observer::clear_trace));
        }
    }
}

fn fields(h: &Headers) -> FrameFields {
    let ipv4 = |ip: xlane_engine::observe::headers::Ipv4Fields| xlane_api::Ipv4Fields {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        ttl: ip.ttl,
        total_len: ip.total_len,
        checksum_ok: ip.checksum_ok,
    };
    let (src_port, dst_port, icmp) = match h.transport {
        Transport::None => (None, None, None),
        Transport::Ports { src, dst } => (Some(src), Some(dst), None),
        Transport::Icmp { kind, code } => (None, None, Some((kind, code))),
    };
    FrameFields {
        len: h.len,
        eth_src: h.eth_src,
        eth_dst: h.eth_dst,
        ethertype: h.ethertype,
        outer: h.outer.map(|t| xlane_api::TunnelFields {
            eth_src: t.eth_src,
            eth_dst: t.eth_dst,
            ipv4: ipv4(t.ip),
            src_port: t.src_port,
            dst_port: t.dst_port,
            vni: t.vni,
        }),
        ipv4: h.ipv4.map(ipv4),
        src_port,
        dst_port,
        icmp,
        arp: h.arp.map(|a| xlane_api::ArpFields {
            op: a.op,
            sender_mac: a.sender_mac,
            sender_ip: a.sender_ip,
            target_ip: a.target_ip,
        }),
    }
}

fn entry(r: &TraceRecord) -> TraceEntry {
    let (role, endpoint_ip) = match r.role {
        Ingress::Pod(ip) => ("pod", Some(ip)),
        Ingress::Host(ip) => ("host", Some(ip)),
        Ingress::Uplink => ("uplink", None),
        Ingress::Unknown => ("unknown", None),
    };
    let stage = match r.stage() {
        Stage::Classify => "classify",
        Stage::Route => "route",
        Stage::Rewrite => "rewrite",
        Stage::Egress => "egress",
    };
    let (egress, drop) = match r.verdict {
        Verdict::Tx(p) => (Some(p.0), None),
        Verdict::Drop(reason) => (None, Some(reason.name().to_owned())),
    };
    TraceEntry {
        seq: r.seq,
        time_ns: r.unix_ns,
        worker: r.worker,
        ingress: r.ingress.0,
        role: role.to_owned(),
        endpoint_ip,
        input: fields(&r.input),
        route_dst: r.route.map(|l| l.dst),
        route: r.route.map(|l| match l.hop {
            RouteHop::None => TraceHop::None,
            RouteHop::Unresolved => TraceHop::Unresolved,
            RouteHop::Local(p) => TraceHop::Local { port: p.0 },
            RouteHop::Remote(vtep) => TraceHop::Remote { vtep },
        }),
        output: r.output.as_ref().map(fields),
        stage: stage.to_owned(),
        egress,
        drop,
    }
}
