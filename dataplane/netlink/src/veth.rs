//! A veth pair set up the way every xlane attachment wants it: created with its queues
//! and MTU, the peer directly in its namespace under its final name, both ends up, then
//! addresses and routes on either end. The CNI plugin (host ↔ pod), xlaned's host port
//! (`xlane0` ↔ `xlane0-e`) and the lab (node ↔ pod, fabric ↔ node) all go through
//! [`Veth::create`].

use crate::{Link, Netlink};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;

/// A main-table IPv4 route out of a veth end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: Ipv4Addr,
    /// Its prefix length (0: the default route).
    pub prefix_len: u8,
    /// Gateway; `None`: on-link.
    pub via: Option<Ipv4Addr>,
    /// Preferred source address.
    pub src: Option<Ipv4Addr>,
}

impl Route {
    /// The default route through `gateway`.
    #[must_use]
    pub const fn default_via(gateway: Ipv4Addr) -> Self {
        Self { dst: Ipv4Addr::UNSPECIFIED, prefix_len: 0, via: Some(gateway), src: None }
    }
}

/// One end of a veth pair: its name, its namespace, and what it is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct VethEnd<'a> {
    /// Interface name.
    pub name: &'a str,
    /// Its network namespace (`/run/netns/x`, a pod's `CNI_NETNS`); `None`: the calling
    /// thread's.
    pub netns: Option<&'a str>,
    /// Addresses (address, prefix length), added or kept.
    pub addrs: &'a [(Ipv4Addr, u8)],
    /// Routes out of this end, added or replaced.
    pub routes: &'a [Route],
}

/// A veth pair to set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Veth<'a> {
    /// The end created first.
    pub local: VethEnd<'a>,
    /// The other end, created directly in its namespace.
    pub peer: VethEnd<'a>,
    /// MTU of both ends; `None` keeps the kernel's (1500).
    pub mtu: Option<u32>,
    /// Queues each way on both ends (at least 1).
    pub queues: u32,
    /// Whether a pair already there (EEXIST) is reused and brought to this state, rather
    /// than an error.
    pub reuse: bool,
}

fn socket(netns: Option<&str>) -> io::Result<Netlink> {
    match netns {
        Some(ns) => Netlink::in_netns(ns).map_err(|e| io::Error::new(e.kind(), format!("namespace {ns}: {e}"))),
        None => Netlink::new(),
    }
}

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Veth<'_> {
    /// Create the pair, bring both ends up (with the MTU), then add each end's addresses
    /// and routes; the facts of (local, peer) once done. If a step after creating a new
    /// pair fails, the pair is deleted again (a reused one is left as it is).
    ///
    /// # Errors
    /// `AlreadyExists` when either name is taken and `reuse` is off; otherwise the
    /// failing request, named in the message.
    pub fn create(&self) -> io::Result<(Link, Link)> {
        let (l, p) = (&self.local, &self.peer);
        let mut here = socket(l.netns)?;
        let mut there = socket(p.netns)?;
        let peer_ns = p.netns.map(File::open).transpose().map_err(context(format!("namespace of {}", p.name)))?;
        let mtu = self.mtu.unwrap_or(1500);
        let created = match here.add_veth(l.name, p.name, peer_ns.as_ref(), mtu, self.queues.max(1)) {
            Ok(()) => true,
            Err(e) if self.reuse && e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(context(format!("creating veth {}/{}", l.name, p.name))(e)),
        };
        let configured = (|| {
            let local = up(&mut here, l.name, self.mtu)?;
            let peer = up(&mut there, p.name, self.mtu)?;
            address(&mut here, l, local.ifindex)?;
            address(&mut there, p, peer.ifindex)?;
            Ok((local, peer))
        })();
        if configured.is_err() && created {
            let _ = here.del_link(l.name);
        }
        configured
    }
}

/// Bring an end up, with the MTU when given.
fn up(nl: &mut Netlink, name: &str, mtu: Option<u32>) -> io::Result<Link> {
    let link = nl.link(name)?;
    nl.set_up(link.ifindex, mtu).map_err(context(format!("bringing {name} up")))?;
    Ok(link)
}

/// Give an end its addresses, then its routes.
fn address(nl: &mut Netlink, end: &VethEnd<'_>, ifindex: u32) -> io::Result<()> {
    for &(addr, len) in end.addrs {
        nl.replace_addr(ifindex, addr, len).map_err(context(format!("address {addr}/{len} on {}", end.name)))?;
    }
    for r in end.routes {
        nl.replace_route(r.dst, r.prefix_len, r.via, ifindex, r.src)
            .map_err(context(format!("route {}/{} via {:?} on {}", r.dst, r.prefix_len, r.via, end.name)))?;
    }
    Ok(())
}
