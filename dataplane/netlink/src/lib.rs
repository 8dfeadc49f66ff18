//! What xlane asks of the kernel over rtnetlink (`netlink-packet-route`, synchronous
//! sockets): interface facts, veth pairs, addresses and routes (the CNI plugin's pod
//! interfaces, xlaned's host port), the route to a remote VTEP, managed neighbour
//! entries, and neighbour events. A socket opened with [`Netlink::in_netns`] works in
//! that namespace (netlink sockets belong to the namespace they were created in), so a
//! pod is configured without entering it for every call.
//!
//! Next-hop MACs come from the kernel's neighbour table. For each remote VTEP xlaned
//! looks up the route to it (its gateway, or the VTEP itself when on-link) and adds a
//! *managed* neighbour entry for that next hop (`NTF_EXT_MANAGED`, Linux ≥ 5.16): the
//! kernel then resolves it with ARP on its own and keeps it fresh, and every change
//! arrives as an RTM_NEWNEIGH event that updates the encapsulation template. No traffic
//! of ours is needed to trigger resolution; until it completes, routes through that
//! node are counted drops (`unresolved_vtep`).

#![forbid(unsafe_code)]

pub mod ethtool;
mod genl;
pub mod netdev;
mod transport;
mod veth;

pub use veth::{Route, Veth, VethEnd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkFlags, LinkInfo};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use xlane_wire::Mac;

/// Facts about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub ifindex: u32,
    /// Its MAC.
    pub mac: Mac,
    /// MTU.
    pub mtu: u32,
}

/// A neighbour table change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEvent {
    /// Interface.
    pub ifindex: u32,
    /// The neighbour's address.
    pub ip: Ipv4Addr,
    /// Its MAC when the entry is usable; `None` when it was deleted or failed.
    pub mac: Option<Mac>,
}

/// A request/response rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// Decode a neighbour message into an event, if it is IPv4.
#[must_use]
pub fn neigh_event(m: &NeighbourMessage, deleted: bool) -> Option<NeighEvent> {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                mac = Some(Mac(l[..6].try_into().expect("6 bytes")))
            }
            _ => {}
        }
    }
    let mac = if deleted || !usable(m.header.state) { None } else { mac };
    Some(NeighEvent { ifindex: m.header.ifindex, ip: ip?, mac })
}

impl Netlink {
    /// Open a socket.
    ///
    /// # Errors
    /// Socket creation.
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { sock, seq: 1 })
    }

    /// Open a socket in the network namespace at `path` (e.g. `/run/netns/x`, a pod's
    /// `CNI_NETNS`); the calling thread returns to its own namespace before this returns.
    ///
    /// # Errors
    /// `NotFound` for a missing namespace; setns or socket errors.
    pub fn in_netns(path: &str) -> io::Result<Self> {
        in_netns(path, Self::new)?
    }

    /// Create a veth pair: `name` here and `peer` — in the namespace of `peer_netns` (an
    /// open namespace file) when given, directly under its final name — both with `mtu`
    /// and `queues` queues each way, down.
    ///
    /// # Errors
    /// `AlreadyExists` if either name is taken; the netlink error.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<&File>,
        mtu: u32,
        queues: u32,
    ) -> io::Result<()> {
        let common = |m: &mut LinkMessage, n: &str| {
            m.attributes.push(LinkAttribute::IfName(n.to_owned()));
            m.attributes.push(LinkAttribute::Mtu(mtu));
            m.attributes.push(LinkAttribute::NumTxQueues(queues));
            m.attributes.push(LinkAttribute::NumRxQueues(queues));
        };
        let mut p = LinkMessage::default();
        common(&mut p, peer);
        if let Some(ns) = peer_netns {
            p.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        let mut m = LinkMessage::default();
        common(&mut m, name);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewLink(m)).map(drop)
    }

    /// Create a bridge named `name`, down.
    ///
    /// # Errors
    /// `AlreadyExists` if the name is taken; the netlink error.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        self.request(NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewLink(m)).map(drop)
    }

    /// Enslave interface `ifindex` to the bridge `master` (an ifindex).
    ///
    /// # Errors
    /// The netlink error.
    pub fn set_master(&mut self, ifindex: u32, master: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        m.attributes.push(LinkAttribute::Controller(master));
        self.request(NLM_F_ACK, RouteNetlinkMessage::SetLink(m)).map(drop)
    }

    /// Set an interface's MTU (when given) and bring it up.
    ///
    /// # Errors
    /// The netlink error.
    pub fn set_up(&mut self, ifindex: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(NLM_F_ACK, RouteNetlinkMessage::SetLink(m)).map(drop)
    }

    /// Delete an interface (a veth takes its peer along); whether it existed.
    ///
    /// # Errors
    /// The netlink error.
    pub fn del_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(NLM_F_ACK, RouteNetlinkMessage::DelLink(m)) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Add `addr/prefix_len` to an interface, or keep it if it is there.
    ///
    /// # Errors
    /// The netlink error.
    pub fn replace_addr(&mut self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix_len;
        m.header.index = ifindex;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(addr)));
        self.request(NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, RouteNetlinkMessage::NewAddress(m)).map(drop)
    }

    /// Add or replace the main-table route `dst/prefix_len` out of `oif`, through `via`
    /// (a gateway) or on-link, with preferred source `src`.
    ///
    /// # Errors
    /// The netlink error.
    pub fn replace_route(
        &mut self,
        dst: Ipv4Addr,
        prefix_len: u8,
        via: Option<Ipv4Addr>,
        oif: u32,
        src: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = prefix_len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = if via.is_some() { RouteScope::Universe } else { RouteScope::Link };
        m.header.kind = RouteType::Unicast;
        if prefix_len > 0 {
            m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(g) = via {
            m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
        }
        if let Some(s) = src {
            m.attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet(s)));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, RouteNetlinkMessage::NewRoute(m)).map(drop)
    }

    /// Send a request and collect the replies (all parts of a dump, or the ACK).
    fn request(&mut self, flags: u16, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        transport::transact(&self.sock, &mut self.seq, msg, flags)
    }

    /// Look an interface up by name.
    ///
    /// # Errors
    /// `NotFound` if there is none, or the netlink error.
    pub fn link(&mut self, name: &str) -> io::Result<Link> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let replies = self.request(0, RouteNetlinkMessage::GetLink(m)).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODEV) {
                io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))
            } else {
                e
            }
        })?;
        let Some(RouteNetlinkMessage::NewLink(l)) = replies.into_iter().next() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")));
        };
        let mut link = Link { ifindex: l.header.index, mac: Mac([0; 6]), mtu: 1500 };
        for a in l.attributes {
            match a {
                LinkAttribute::Address(a) if a.len() == 6 => link.mac = Mac(a[..6].try_into().expect("6 bytes")),
                LinkAttribute::Mtu(m) => link.mtu = m,
                _ => {}
            }
        }
        Ok(link)
    }

    /// The next hop towards `dst` and the interface it leaves by: the gateway of the
    /// route, or `dst` itself when it is on-link.
    ///
    /// # Errors
    /// No route, or the netlink error.
    pub fn next_hop(&mut self, dst: Ipv4Addr) -> io::Result<(Ipv4Addr, u32)> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let replies = self.request(0, RouteNetlinkMessage::GetRoute(m))?;
        let Some(RouteNetlinkMessage::NewRoute(r)) = replies.into_iter().next() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no route to {dst}")));
        };
        let mut via = dst;
        let mut oif = 0;
        for a in r.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = g,
                RouteAttribute::Oif(i) => oif = i,
                _ => {}
            }
        }
        Ok((via, oif))
    }

    /// The usable MAC of `ip` on `ifindex`, if the kernel has one.
    ///
    /// # Errors
    /// The netlink error.
    pub fn neighbour(&mut self, ip: Ipv4Addr, ifindex: u32) -> io::Result<Option<Mac>> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        let replies = self.request(NLM_F_DUMP, RouteNetlinkMessage::GetNeighbour(m))?;
        Ok(replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewNeighbour(n) => {
                neigh_event(n, false).filter(|e| e.ip == ip && e.ifindex == ifindex).and_then(|e| e.mac)
            }
            _ => None,
        }))
    }

    /// Ask the kernel to resolve `ip` on `ifindex` and keep it resolved (a managed
    /// neighbour entry). An existing entry (static or learned) is left as it is.
    ///
    /// # Errors
    /// The netlink error.
    pub fn manage_neighbour(&mut self, ip: Ipv4Addr, ifindex: u32) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::None;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        match self.request(NLM_F_ACK | NLM_F_CREATE, RouteNetlinkMessage::NewNeighbour(m)) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Run `f` with the calling thread in the network namespace at `path`, then return to
/// the thread's own namespace. Threads `f` spawns stay in the namespace.
///
/// # Errors
/// `NotFound` for a missing namespace; opening or entering either namespace.
pub fn in_netns<R>(path: impl AsRef<std::path::Path>, f: impl FnOnce() -> R) -> io::Result<R> {
    use nix::sched::{CloneFlags, setns};
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(path)?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let r = f();
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    Ok(r)
}

/// A socket subscribed to neighbour events (RTNLGRP_NEIGH).
#[derive(Debug)]
pub struct NeighMonitor {
    sock: Socket,
}

const RTNLGRP_NEIGH: u32 = 3;

impl NeighMonitor {
    /// Subscribe.
    ///
    /// # Errors
    /// Socket creation or subscription.
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.add_membership(RTNLGRP_NEIGH)?;
        Ok(Self { sock })
    }

    /// Block until the next batch of events.
    ///
    /// # Errors
    /// Socket errors (ENOBUFS means events were lost: re-read the table).
    pub fn next_batch(&mut self) -> io::Result<Vec<NeighEvent>> {
        let (data, _) = self.sock.recv_from_full()?;
        let mut out = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]) else {
                break;
            };
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                    out.extend(neigh_event(&n, false))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => out.extend(neigh_event(&n, true)),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len.next_multiple_of(4);
        }
        Ok(out)
    }
}
