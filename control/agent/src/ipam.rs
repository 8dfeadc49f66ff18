//! Pod address management for the node subnet.
//!
//! Addresses come from the node's lease; the gateway is the subnet's first address (the
//! host port's). Every change is written to disk (atomically, fsync'd) before it is
//! returned, so an agent restart never hands an address out twice. Allocation is
//! idempotent per (container, interface): asking again returns the same address.

use crate::store::file::atomic_write;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use xlane_api::{Mac, VethIo};

/// One pod interface's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The container (CNI_CONTAINERID).
    pub container_id: String,
    /// Its interface (CNI_IFNAME).
    pub ifname: String,
    /// The host-side interface, once attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_if: Option<String>,
    /// The pod interface's MAC, once attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// The pod's network namespace path, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The vhost-user socket, for a VM-based pod attached through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<std::path::PathBuf>,
    /// How the host end of its veth is read and written.
    #[serde(default, skip_serializing_if = "VethIo::is_default")]
    pub veth_io: VethIo,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    subnet: Option<Ipv4Net>,
    allocations: BTreeMap<Ipv4Addr, Allocation>,
}

/// IPAM failures.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address is taken.
    #[error("subnet {0} is full")]
    Full(Ipv4Net),
    /// The state file could not be read or written.
    #[error("IPAM state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A delegated address outside what this node may use.
    #[error("{ip} is not a pod address of this node's subnet {subnet}")]
    Foreign {
        /// The address.
        ip: Ipv4Addr,
        /// The node subnet.
        subnet: Ipv4Net,
    },
    /// A delegated address already held by another interface.
    #[error("{ip} is already held by {holder}")]
    Taken {
        /// The address.
        ip: Ipv4Addr,
        /// Who has it.
        holder: String,
    },
    /// No such allocation.
    #[error("no address for container {container_id} interface {ifname}")]
    NotFound {
        /// Container.
        container_id: String,
        /// Interface.
        ifname: String,
    },
}

/// The allocator for one node subnet.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    subnet: Ipv4Net,
    state: State,
}

impl Ipam {
    /// Load the state at `path` for `subnet`. Allocations from another subnet (the node
    /// got a different lease) are dropped with a warning: they cannot be valid.
    ///
    /// # Errors
    /// An unreadable state file.
    pub fn open(path: impl Into<PathBuf>, subnet: Ipv4Net) -> Result<Self, IpamError> {
        let path = path.into();
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|e| IpamError::State { path: path.clone(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(IpamError::State { path, reason: e.to_string() }),
        };
        let mut ipam = Self { path, subnet, state };
        if ipam.state.subnet != Some(subnet) {
            if !ipam.state.allocations.is_empty() {
                tracing::warn!(old = ?ipam.state.subnet, new = %subnet, dropped = ipam.state.allocations.len(), "node subnet changed; old allocations dropped");
            }
            ipam.state = State { subnet: Some(subnet), allocations: BTreeMap::new() };
            ipam.save()?;
        }
        Ok(ipam)
    }

    /// The subnet.
    #[must_use]
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The pods' gateway: the subnet's first address.
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().expect("node subnets have hosts")
    }

    fn save(&self) -> Result<(), IpamError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| IpamError::State { path: self.path.clone(), reason: e.to_string() })?;
        }
        let bytes = serde_json::to_vec_pretty(&self.state).expect("plain data");
        atomic_write(&self.path, &bytes)
            .map_err(|e| IpamError::State { path: self.path.clone(), reason: e.to_string() })
    }

    /// The address of (container, interface), if allocated.
    #[must_use]
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<(Ipv4Addr, &Allocation)> {
        self.state
            .allocations
            .iter()
            .find(|(_, a)| a.container_id == container_id && a.ifname == ifname)
            .map(|(ip, a)| (*ip, a))
    }

    /// Allocate (or return the existing) address for (container, interface).
    ///
    /// # Errors
    /// [`IpamError::Full`], or the state cannot be saved (nothing is handed out then).
    pub fn allocate(&mut self, container_id: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some((ip, _)) = self.find(container_id, ifname) {
            return Ok(ip);
        }
        let gw = self.gateway();
        let ip = self
            .subnet
            .hosts()
            .find(|ip| *ip != gw && !self.state.allocations.contains_key(ip))
            .ok_or(IpamError::Full(self.subnet))?;
        self.insert_saved(ip, container_id, ifname)?;
        Ok(ip)
    }

    /// Record `ip`, chosen by a delegated IPAM plugin, as the address of (container,
    /// interface). Idempotent for the same holder; the address must lie in the node subnet
    /// (other nodes route the subnet here) and not be the gateway or someone else's.
    ///
    /// # Errors
    /// [`IpamError::Foreign`], [`IpamError::Taken`], or the state cannot be saved.
    pub fn reserve(&mut self, container_id: &str, ifname: &str, ip: Ipv4Addr) -> Result<(), IpamError> {
        if !self.subnet.contains(&ip) || ip == self.gateway() || ip == self.subnet.broadcast() {
            return Err(IpamError::Foreign { ip, subnet: self.subnet });
        }
        match self.state.allocations.get(&ip) {
            Some(a) if a.container_id == container_id && a.ifname == ifname => return Ok(()),
            Some(a) => return Err(IpamError::Taken { ip, holder: format!("{}/{}", a.container_id, a.ifname) }),
            None => {}
        }
        if let Some((old, _)) = self.find(container_id, ifname) {
            return Err(IpamError::Taken { ip: old, holder: format!("{container_id}/{ifname} (already has it)") });
        }
        self.insert_saved(ip, container_id, ifname)
    }

    /// Record a new allocation and persist it; on a failed save nothing is recorded.
    fn insert_saved(&mut self, ip: Ipv4Addr, container_id: &str, ifname: &str) -> Result<(), IpamError> {
        let a = Allocation {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            host_if: None,
            mac: None,
            netns: None,
            vhost_user: None,
            veth_io: VethIo::default(),
        };
        self.state.allocations.insert(ip, a);
        if let Err(e) = self.save() {
            self.state.allocations.remove(&ip);
            return Err(e);
        }
        Ok(())
    }

    /// Record the pod's namespace path for an allocation.
    ///
    /// # Errors
    /// [`IpamError::NotFound`], or the state cannot be saved.
    pub fn set_netns(&mut self, container_id: &str, ifname: &str, netns: &str) -> Result<(), IpamError> {
        let ip = self
            .find(container_id, ifname)
            .map(|(ip, _)| ip)
            .ok_or_else(|| IpamError::NotFound { container_id: container_id.to_owned(), ifname: ifname.to_owned() })?;
        let a = self.state.allocations.get_mut(&ip).expect("found above");
        if a.netns.as_deref() != Some(netns) {
            a.netns = Some(netns.to_owned());
            self.save()?;
        }
        Ok(())
    }

    /// Record where an allocated address is attached.
    ///
    /// # Errors
    /// [`IpamError::NotFound`], or the state cannot be saved.
    pub fn attach(
        &mut self,
        container_id: &str,
        ifname: &str,
        host_if: &str,
        mac: Mac,
        vhost_user: Option<&std::path::Path>,
        veth_io: VethIo,
    ) -> Result<Ipv4Addr, IpamError> {
        let ip = self
            .find(container_id, ifname)
            .map(|(ip, _)| ip)
            .ok_or_else(|| IpamError::NotFound { container_id: container_id.to_owned(), ifname: ifname.to_owned() })?;
        let a = self.state.allocations.get_mut(&ip).expect("found above");
        a.host_if = Some(host_if.to_owned());
        a.mac = Some(mac);
        a.vhost_user = vhost_user.map(std::path::Path::to_path_buf);
        a.veth_io = veth_io;
        self.save()?;
        Ok(ip)
    }

    /// Release the address of (container, interface); returns what it was. Releasing
    /// twice, or something never allocated, is fine (`None`).
    ///
    /// # Errors
    /// The state cannot be saved.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Result<Option<(Ipv4Addr, Allocation)>, IpamError> {
        let Some((ip, _)) = self.find(container_id, ifname) else { return Ok(None) };
        let a = self.state.allocations.remove(&ip).expect("found above");
        self.save()?;
        Ok(Some((ip, a)))
    }

    /// Release every allocation whose (container, interface) is not in `valid`; returns
    /// what was released.
    ///
    /// # Errors
    /// The state cannot be saved.
    pub fn gc(&mut self, valid: &[(String, String)]) -> Result<Vec<(Ipv4Addr, Allocation)>, IpamError> {
        let stale: Vec<Ipv4Addr> = self
            .state
            .allocations
            .iter()
            .filter(|(_, a)| !valid.iter().any(|(c, i)| *c == a.container_id && *i == a.ifname))
            .map(|(ip, _)| *ip)
            .collect();
        let released: Vec<_> =
            stale.iter().map(|ip| (*ip, self.state.allocations.remove(ip).expect("listed"))).collect();
        if !released.is_empty() {
            self.save()?;
        }
        Ok(released)
    }

    /// Every allocation.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &Allocation)> + '_ {
        self.state.allocations.iter().map(|(ip, a)| (*ip, a))
    }

    /// The state file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xlane-ipam-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d.join("ipam.json")
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_free_skipping_gateway_and_is_idempotent() {
        let path = tmp("basic");
        let mut ipam = Ipam::open(&path, net("10.244.1.0/24")).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(ipam.allocate("c1", "eth0").unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("c1", "eth0").unwrap(), Ipv4Addr::new(10, 244, 1, 2), "same request, same address");
        assert_eq!(ipam.allocate("c1", "net1").unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ipam.release("c1", "eth0").unwrap().unwrap().0, Ipv4Addr::new(10, 244, 1, 2));
        assert!(ipam.release("c1", "eth0").unwrap().is_none(), "double release is fine");
        assert_eq!(ipam.allocate("c2", "eth0").unwrap(), Ipv4Addr::new(10, 244, 1, 2), "freed address reused");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn small_subnet_fills_up_and_gc_frees() {
        let path = tmp("full");
        let mut ipam = Ipam::open(&path, net("10.244.1.0/29")).unwrap();
        for i in 0..5 {
            ipam.allocate(&format!("c{i}"), "eth0").unwrap();
        }
        assert!(matches!(ipam.allocate("c9", "eth0"), Err(IpamError::Full(_))));
        let released = ipam.gc(&[("c0".into(), "eth0".into()), ("c4".into(), "eth0".into())]).unwrap();
        assert_eq!(released.len(), 3);
        assert_eq!(ipam.allocations().count(), 2);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn delegated_addresses_are_reserved_in_the_subnet_only() {
        let path = tmp("reserve");
        let mut ipam = Ipam::open(&path, net("10.244.1.0/24")).unwrap();
        let ip = Ipv4Addr::new(10, 244, 1, 50);
        ipam.reserve("c1", "eth0", ip).unwrap();
        ipam.reserve("c1", "eth0", ip).unwrap();
        assert!(matches!(ipam.reserve("c2", "eth0", ip), Err(IpamError::Taken { .. })));
        assert!(matches!(ipam.reserve("c1", "eth0", Ipv4Addr::new(10, 244, 1, 51)), Err(IpamError::Taken { .. })));
        for bad in [Ipv4Addr::new(10, 244, 2, 5), Ipv4Addr::new(10, 244, 1, 1), Ipv4Addr::new(10, 244, 1, 255)] {
            assert!(matches!(ipam.reserve("c3", "eth0", bad), Err(IpamError::Foreign { .. })), "{bad}");
        }
        // Our own allocator steps around it, and it survives a restart.
        let mut ipam = Ipam::open(&path, net("10.244.1.0/24")).unwrap();
        assert_eq!(ipam.find("c1", "eth0").unwrap().0, ip);
        for i in 0..60 {
            assert_ne!(ipam.allocate(&format!("x{i}"), "eth0").unwrap(), ip);
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_new_subnet_starts_empty_and_bad_state_is_an_error() {
        let path = tmp("resubnet");
        Ipam::open(&path, net("10.244.1.0/24")).unwrap().allocate("c1", "eth0").unwrap();
        let ipam = Ipam::open(&path, net("10.244.7.0/24")).unwrap();
        assert_eq!(ipam.allocations().count(), 0);
        std::fs::write(&path, "{garbage").unwrap();
        assert!(matches!(Ipam::open(&path, net("10.244.7.0/24")), Err(IpamError::State { .. })));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// 1000 allocate/release operations with restarts (reloading from disk) in
        /// between: no address is ever handed to two holders, none leaks, and the state
        /// on disk always equals the model.
        #[test]
        fn thousand_cycles_with_restarts(ops in prop::collection::vec((0u8..40, any::<bool>(), 0u8..20), 1000)) {
            let path = tmp("cycles");
            let subnet = net("10.244.3.0/26");
            let mut ipam = Ipam::open(&path, subnet).unwrap();
            let mut model: HashMap<String, Ipv4Addr> = HashMap::new();
            for (cid, alloc, restart) in ops {
                let cid = format!("c{cid}");
                if alloc {
                    match ipam.allocate(&cid, "eth0") {
                        Ok(ip) => {
                            if let Some(prev) = model.get(&cid) {
                                prop_assert_eq!(*prev, ip);
                            }
                            prop_assert!(model.iter().all(|(c, a)| *a != ip || *c == cid), "{} handed out twice", ip);
                            model.insert(cid, ip);
                        }
                        Err(IpamError::Full(_)) => prop_assert_eq!(model.len(), 61),
                        Err(e) => panic!("{e}"),
                    }
                } else {
                    let r = ipam.release(&cid, "eth0").unwrap().map(|(ip, _)| ip);
                    prop_assert_eq!(r, model.remove(&cid));
                }
                if restart == 0 {
                    ipam = Ipam::open(&path, subnet).unwrap();
                }
                prop_assert_eq!(ipam.allocations().count(), model.len(), "no leak");
            }
            let reloaded = Ipam::open(&path, subnet).unwrap();
            let on_disk: HashMap<String, Ipv4Addr> = reloaded.allocations().map(|(ip, a)| (a.container_id.clone(), ip)).collect();
            prop_assert_eq!(on_disk, model);
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }
}
