//! A fake node for unit tests: interfaces that exist only in a table, XDP programs that
//! only record where they were attached, and ports that are channels of frames in the
//! engine's in-memory buffers. The real [`State`](crate::state::State) and real
//! workers run on it, so every request path is exercised without privileges.

use crate::host::{Bound, Hold, Host, OpenJob, OpenSpec, OpenStep, PacketSpec, Placement};
use crate::hostport::HostPortSpec;
use crossbeam_channel::{Receiver, Sender};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xlane_api::Mac;
use xlane_engine::mem::{HEADROOM, MemFrames};
use xlane_engine::{BURST, Driver, FrameMemory, Packet, Port, PortCounters};
use xlane_fib::PortId;
use xlane_netlink::Link;
use xlane_vhost::port::VhostPort;
use xlane_xdp::attach::Program;
use xlane_xdp::programs::PodFilter;

/// The two ends of a fake interface's queue as a test sees them.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    inject: Sender<Vec<u8>>,
    ready: Arc<EventFd>,
    /// Frames the port transmitted (what the pod receives).
    pub(crate) sent: Receiver<Vec<u8>>,
}

impl Wire {
    /// A frame for the port to receive (what the pod sends); wakes a sleeping worker.
    pub(crate) fn send(&self, frame: &[u8]) {
        let _ = self.inject.send(frame.to_vec());
        let _ = self.ready.write(1);
    }
}

/// What the fake node is told to do and what it saw.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Interfaces: name → (index, MAC, MTU, queues).
    pub(crate) links: HashMap<String, (Link, u32)>,
    /// Opening these interfaces fails on one worker (the last to open).
    pub(crate) fail_open: HashSet<String>,
    /// Opening these interfaces takes this long on each worker (off the worker, as
    /// binding sockets does).
    pub(crate) slow_open: HashMap<String, Duration>,
    /// Open queues: (interface, queue) → its wire.
    pub(crate) wires: HashMap<(String, u32), Wire>,
    /// Programs attached, by interface.
    pub(crate) attached: Vec<String>,
    /// Interfaces whose host stack is blocked (AF_PACKET pods), while held.
    pub(crate) blocked: HashSet<String>,
    /// Ports closed, by interface.
    pub(crate) closed: Vec<String>,
}

/// The fake node, shared by the control thread (as [`Host`]) and the workers' jobs.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeHost(pub(crate) Arc<Mutex<Node>>);

impl FakeHost {
    /// Add an interface with `queues` queues; its MAC is 02:00:00:00:00:<index>.
    pub(crate) fn add_link(&self, name: &str, ifindex: u32, queues: u32) {
        let mac = Mac([2, 0, 0, 0, 0, u8::try_from(ifindex).expect("small index")]);
        self.0.lock().unwrap().links.insert(name.to_owned(), (Link { ifindex, mac, mtu: 1500 }, queues));
    }

    /// The MAC of an interface.
    pub(crate) fn mac(&self, name: &str) -> Mac {
        self.0.lock().unwrap().links[name].0.mac
    }

    /// The wire of an open queue.
    pub(crate) fn wire(&self, ifname: &str, queue: u32) -> Wire {
        self.0.lock().unwrap().wires[&(ifname.to_owned(), queue)].clone()
    }

    /// Whether a queue is open.
    pub(crate) fn is_open(&self, ifname: &str, queue: u32) -> bool {
        self.0.lock().unwrap().wires.contains_key(&(ifname.to_owned(), queue))
    }
}

/// A fake interface queue: frames come from and go to channels.
#[derive(Debug)]
pub(crate) struct WirePort {
    id: PortId,
    ifname: String,
    queue: u32,
    rx: Receiver<Vec<u8>>,
    ready: Arc<EventFd>,
    tx: Sender<Vec<u8>>,
    counters: Arc<PortCounters>,
    node: FakeHost,
}

impl Port<MemFrames> for WirePort {
    fn id(&self) -> PortId {
        self.id
    }

    fn counters(&self) -> &PortCounters {
        &self.counters
    }

    fn receive(&mut self, mem: &mut MemFrames, out: &mut [Packet<u32>; BURST]) -> usize {
        let mut n = 0;
        while n < BURST
            && let Ok(bytes) = self.rx.try_recv()
        {
            let buf = mem.alloc().expect("the in-memory pool grows");
            mem.with_buffers(&[buf], |b| b[0][HEADROOM..HEADROOM + bytes.len()].copy_from_slice(&bytes));
            let (head, len) = (u32::try_from(HEADROOM).unwrap(), u32::try_from(bytes.len()).unwrap());
            out[n] = Packet { buf, head, len };
            n += 1;
        }
        n
    }

    fn transmit(&mut self, mem: &mut MemFrames, pkts: &[Packet<u32>]) -> usize {
        for p in pkts {
            let _ = self.tx.send(mem.bytes(p).to_vec());
            mem.release(p.buf);
        }
        pkts.len()
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.ready.as_raw_fd())
    }

    fn after_sleep(&mut self) {
        let _ = self.ready.read();
    }

    fn close(self, _mem: &mut MemFrames) {
        let mut node = self.node.0.lock().unwrap();
        node.wires.remove(&(self.ifname.clone(), self.queue));
        node.closed.push(self.ifname);
    }
}

/// The fake node's worker ports.
#[derive(Debug)]
pub(crate) enum FakePort {
    /// An interface queue.
    Wire(WirePort),
    /// A vhost-user guest.
    Vhost(VhostPort),
}

xlane_engine::port_enum!(FakePort<MemFrames> { Wire, Vhost });

/// A fake host-stack block: unblocks its interface when dropped.
#[derive(Debug)]
struct Blocked {
    node: FakeHost,
    ifname: String,
}

impl Drop for Blocked {
    fn drop(&mut self) {
        self.node.0.lock().unwrap().blocked.remove(&self.ifname);
    }
}

/// A fake XDP program (the node records where it was attached).
#[derive(Debug)]
pub(crate) struct FakeAttachment;

impl Host for FakeHost {
    type Mem = MemFrames;
    type Port = FakePort;
    type Attachment = FakeAttachment;

    fn link(&mut self, ifname: &str) -> io::Result<Link> {
        let node = self.0.lock().unwrap();
        node.links.get(ifname).map(|(l, _)| l.clone()).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn rx_queues(&mut self, ifname: &str) -> io::Result<u32> {
        let node = self.0.lock().unwrap();
        node.links.get(ifname).map(|(_, q)| *q).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn attach(&mut self, link: &Link, _name: &str, _queues: u32, _program: Program) -> Result<FakeAttachment, String> {
        let mut node = self.0.lock().unwrap();
        let ifname = node.links.iter().find(|(_, (l, _))| l.ifindex == link.ifindex).map(|(n, _)| n.clone());
        let ifname = ifname.ok_or("no such interface")?;
        node.attached.push(ifname);
        Ok(FakeAttachment)
    }

    fn detach(_: &FakeAttachment) {}

    fn xdp_mode(_: &FakeAttachment) -> &'static str {
        "fake"
    }

    fn opener(&self, spec: OpenSpec<FakeAttachment>) -> OpenJob<MemFrames, FakePort> {
        let node = self.clone();
        Box::new(move |d| {
            let delay = node.0.lock().unwrap().slow_open.get(&spec.ifname).copied();
            match delay {
                // As the kernel's bind(2) is what takes long, the wait runs off the worker.
                Some(t) => OpenStep::Off(Box::new(move || {
                    std::thread::sleep(t);
                    Box::new(move |d| OpenStep::Done(open_wires(&node, &spec, d)))
                })),
                None => OpenStep::Done(open_wires(&node, &spec, d)),
            }
        })
    }

    fn vhost(port: VhostPort) -> FakePort {
        FakePort::Vhost(port)
    }

    fn block_host_stack(&mut self, link: &Link, _filter: PodFilter) -> Result<Hold, String> {
        let mut node = self.0.lock().unwrap();
        let ifname = node.links.iter().find(|(_, (l, _))| l.ifindex == link.ifindex).map(|(n, _)| n.clone());
        let ifname = ifname.ok_or("no such interface")?;
        node.blocked.insert(ifname.clone());
        Ok(Box::new(Blocked { node: self.clone(), ifname }))
    }

    /// A wire per worker (queue number = worker index), as the fanout group's sockets.
    fn packet_opener(&self, spec: PacketSpec) -> OpenJob<MemFrames, FakePort> {
        let node = self.clone();
        Box::new(move |d| {
            let (inject, rx) = crossbeam_channel::unbounded();
            let (tx, sent) = crossbeam_channel::unbounded();
            let ready = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("an eventfd"));
            let queue = u32::try_from(spec.worker).unwrap();
            let wire = Wire { inject, ready: Arc::clone(&ready), sent };
            node.0.lock().unwrap().wires.insert((spec.ifname.clone(), queue), wire);
            let _ = spec.stats;
            d.add_port(FakePort::Wire(WirePort {
                id: spec.id,
                ifname: spec.ifname,
                queue,
                rx,
                ready,
                tx,
                counters: spec.counters,
                node,
            }));
            OpenStep::Done(Ok(Bound::default()))
        })
    }

    fn ensure_host_port(&mut self, spec: &HostPortSpec<'_>) -> io::Result<()> {
        let q = u32::try_from(spec.queues).unwrap();
        self.add_link(spec.host, 90, q);
        self.add_link(spec.engine, 91, q);
        Ok(())
    }

    fn next_hop(&mut self, dst: Ipv4Addr) -> io::Result<(Ipv4Addr, u32)> {
        Ok((dst, 1))
    }

    fn manage_neighbour(&mut self, _ip: Ipv4Addr, _ifindex: u32) -> io::Result<()> {
        Ok(())
    }

    /// Every next hop is resolved: 02:00:00:00:ff:<last octet>.
    fn neighbour(&mut self, ip: Ipv4Addr, _ifindex: u32) -> io::Result<Option<Mac>> {
        Ok(Some(Mac([2, 0, 0, 0, 0xff, ip.octets()[3]])))
    }

    fn addresses(&mut self, _ifname: &str) -> Vec<Ipv4Addr> {
        Vec::new()
    }
}

/// A wire per queue of `spec` as ports of the worker's driver, or the injected failure.
fn open_wires(
    node: &FakeHost,
    spec: &OpenSpec<FakeAttachment>,
    d: &mut Driver<MemFrames, FakePort>,
) -> Result<Bound, String> {
    let fail = node.0.lock().unwrap().fail_open.contains(&spec.ifname);
    if fail && spec.queues.contains(&(node.0.lock().unwrap().links[&spec.ifname].1 - 1)) {
        return Err(format!("{}: injected failure", spec.ifname));
    }
    for &q in &spec.queues {
        let (inject, rx) = crossbeam_channel::unbounded();
        let (tx, sent) = crossbeam_channel::unbounded();
        let ready = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).map_err(|e| e.to_string())?);
        let wire = Wire { inject, ready: Arc::clone(&ready), sent };
        node.0.lock().unwrap().wires.insert((spec.ifname.clone(), q), wire);
        d.add_port(FakePort::Wire(WirePort {
            id: spec.id,
            ifname: spec.ifname.clone(),
            queue: q,
            rx,
            ready,
            tx,
            counters: Arc::clone(&spec.counters),
            node: node.clone(),
        }));
    }
    Ok(Bound { zero_copy: false, own_umem: spec.placement == Placement::Own, ..Bound::default() })
}
