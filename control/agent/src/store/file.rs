//! The file datastore: one directory, a file per lease.
//!
//! ```text
//! <dir>/config                      network config (flannel JSON), optional
//! <dir>/subnets/10.244.1.0-24       {"attrs": <flannel LeaseAttrs>, "expires_ms": <unix ms>}
//! <dir>/.lock                       flock(2) serializing every mutation
//! ```
//! Watching polls the directory (every 100 ms) and reports the difference from the last
//! view; a lease past its expiry counts as removed even before anyone deletes its file.

use super::{Datastore, Event, Revision, StoreError};
use crate::lease::{Lease, LeaseAttrs, choose_subnet, parse_subnet_key, subnet_key};
use crate::netconf::NetConfig;
use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    attrs: LeaseAttrs,
    expires_ms: u64,
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over the target.
///
/// # Errors
/// The failing step.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("x"), std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Leases in a directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    view: BTreeMap<Ipv4Net, Stored>,
    revision: Revision,
}

impl FileStore {
    /// Open (creating) the store at `dir`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("subnets")).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Self { dir, view: BTreeMap::new(), revision: 0 })
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let path = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| StoreError::Io { what: format!("locking {}", path.display()), source: e.into() })
    }

    fn lease_path(&self, s: Ipv4Net) -> PathBuf {
        self.dir.join("subnets").join(subnet_key(s))
    }

    /// Every lease file, live or expired; unreadable files are skipped with a warning
    /// (one bad file must not stop the cluster).
    fn read_all(&self) -> Result<BTreeMap<Ipv4Net, Stored>, StoreError> {
        let dir = self.dir.join("subnets");
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io(format!("reading {}", dir.display())))? {
            let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
            let name = entry.file_name();
            let Some(subnet) = name.to_str().and_then(parse_subnet_key) else { continue };
            let text = match fs::read_to_string(entry.path()) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("reading {}", entry.path().display()))(e)),
            };
            match serde_json::from_str::<Stored>(&text) {
                Ok(s) => {
                    out.insert(subnet, s);
                }
                Err(e) => tracing::warn!(file = %entry.path().display(), error = %e, "skipping unreadable lease"),
            }
        }
        Ok(out)
    }

    fn live(&self) -> Result<BTreeMap<Ipv4Net, Stored>, StoreError> {
        let now = now_ms();
        Ok(self.read_all()?.into_iter().filter(|(_, s)| s.expires_ms > now).collect())
    }

    fn write(&self, subnet: Ipv4Net, stored: &Stored) -> Result<(), StoreError> {
        let path = self.lease_path(subnet);
        let bytes = serde_json::to_vec(stored).expect("plain data");
        atomic_write(&path, &bytes).map_err(io(format!("writing {}", path.display())))
    }

    /// Write the network config file (tests, lab setup).
    ///
    /// # Errors
    /// I/O failure.
    pub fn put_network_config(&self, json: &str) -> Result<(), StoreError> {
        let path = self.dir.join("config");
        atomic_write(&path, json.as_bytes()).map_err(io(format!("writing {}", path.display())))
    }

    /// Write a lease as another node would (tests, and flannel interop in the lab).
    ///
    /// # Errors
    /// I/O failure.
    pub fn put_lease(&self, subnet: Ipv4Net, attrs: &LeaseAttrs, ttl: Duration) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let expires_ms = now_ms() + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
        self.write(subnet, &Stored { attrs: attrs.clone(), expires_ms })
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2)
}

impl Datastore for FileStore {
    fn network_config(&mut self) -> Result<Option<String>, StoreError> {
        match fs::read_to_string(self.dir.join("config")) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading the network config")(e)),
        }
    }

    fn leases(&mut self) -> Result<(Vec<Lease>, Revision), StoreError> {
        let live = self.live()?;
        let leases = live.iter().map(|(s, st)| Lease { subnet: *s, attrs: st.attrs.clone() }).collect();
        if live != self.view {
            self.view = live;
            self.revision += 1;
        }
        Ok((leases, self.revision))
    }

    fn acquire(
        &mut self,
        cfg: &NetConfig,
        attrs: &LeaseAttrs,
        preferred: Option<Ipv4Net>,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let _lock = self.lock()?;
        let now = now_ms();
        let all = self.read_all()?;
        // Expired leases are garbage: remove them so their subnets can be reused.
        for (s, st) in &all {
            if st.expires_ms <= now {
                let _ = fs::remove_file(self.lease_path(*s));
            }
        }
        let live: BTreeMap<Ipv4Net, Stored> = all.into_iter().filter(|(_, s)| s.expires_ms > now).collect();
        let subnet =
            choose_subnet(cfg, live.iter().map(|(s, st)| (*s, st.attrs.public_ip)), attrs.public_ip, preferred)?
                .subnet();
        self.write(subnet, &Stored { attrs: attrs.clone(), expires_ms: now + ttl_ms(ttl) })?;
        Ok(Lease { subnet, attrs: attrs.clone() })
    }

    fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let path = self.lease_path(lease.subnet);
        let current: Option<Stored> = fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
        // An expired lease is gone even if its file is not yet collected (as in etcd).
        match current {
            Some(st) if st.attrs.public_ip == lease.attrs.public_ip && st.expires_ms > now_ms() => {
                self.write(lease.subnet, &Stored { attrs: lease.attrs.clone(), expires_ms: now_ms() + ttl_ms(ttl) })
            }
            _ => Err(StoreError::Lost(lease.subnet)),
        }
    }

    fn release(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let path = self.lease_path(lease.subnet);
        let current: Option<Stored> = fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
        if current.is_some_and(|st| st.attrs.public_ip == lease.attrs.public_ip) {
            fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
        }
        Ok(())
    }

    fn watch(&mut self, since: Revision, timeout: Duration) -> Result<(Vec<Event>, Revision), StoreError> {
        // Our cursor is our own view: a stale `since` gets the full state as upserts.
        if since != self.revision {
            let (leases, rev) = self.leases()?;
            return Ok((leases.into_iter().map(Event::Upsert).collect(), rev));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.live()?;
            let mut events = Vec::new();
            for (s, st) in &live {
                if self.view.get(s).is_none_or(|old| old.attrs != st.attrs) {
                    events.push(Event::Upsert(Lease { subnet: *s, attrs: st.attrs.clone() }));
                }
            }
            for s in self.view.keys() {
                if !live.contains_key(s) {
                    events.push(Event::Removed(*s));
                }
            }
            if live != self.view {
                self.view = live;
                self.revision += 1;
            }
            if !events.is_empty() || Instant::now() >= deadline {
                return Ok((events, self.revision));
            }
            std::thread::sleep(Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg() -> NetConfig {
        NetConfig::parse(r#"{"Network":"10.244.0.0/22","SubnetLen":24}"#).unwrap()
    }

    fn attrs(last: u8) -> LeaseAttrs {
        LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 50, last), 1, xlane_api::Mac([0x0e, 0, 0, 0, last, 1]))
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xlane-filestore-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn agents_sharing_a_directory_get_distinct_subnets_and_see_each_other() {
        let dir = tmp("share");
        let ttl = Duration::from_secs(30);
        let mut a = FileStore::open(&dir).unwrap();
        let mut b = FileStore::open(&dir).unwrap();
        let la = a.acquire(&cfg(), &attrs(1), None, ttl).unwrap();
        let lb = b.acquire(&cfg(), &attrs(2), None, ttl).unwrap();
        assert_eq!(la.subnet.to_string(), "10.244.1.0/24", "SubnetMin skips the first subnet");
        assert_eq!(lb.subnet.to_string(), "10.244.2.0/24");
        let (leases, _) = a.leases().unwrap();
        assert_eq!(leases.len(), 2);
        // A restarted agent (same public IP) keeps its subnet.
        let again = FileStore::open(&dir).unwrap().acquire(&cfg(), &attrs(1), None, ttl).unwrap();
        assert_eq!(again.subnet, la.subnet);
        // The range has three subnets: the fourth node finds it full.
        FileStore::open(&dir).unwrap().acquire(&cfg(), &attrs(3), None, ttl).unwrap();
        let full = FileStore::open(&dir).unwrap().acquire(&cfg(), &attrs(4), None, ttl).unwrap_err();
        assert!(matches!(full, StoreError::Full(_)), "{full}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn expiry_is_seen_by_watchers_and_frees_the_subnet() {
        let dir = tmp("expiry");
        let mut a = FileStore::open(&dir).unwrap();
        let mut watcher = FileStore::open(&dir).unwrap();
        let (_, rev) = watcher.leases().unwrap();
        let la = a.acquire(&cfg(), &attrs(1), None, Duration::from_millis(400)).unwrap();
        let (ev, rev) = watcher.watch(rev, Duration::from_secs(2)).unwrap();
        assert_eq!(ev, vec![Event::Upsert(la.clone())]);
        // Nobody renews: the watcher sees the lease go within its TTL (plus a poll).
        let t0 = Instant::now();
        let (ev, _) = watcher.watch(rev, Duration::from_secs(3)).unwrap();
        assert_eq!(ev, vec![Event::Removed(la.subnet)]);
        // TTL 0.4 s plus a 0.1 s poll; the rest is slack for a loaded machine.
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // Renewing an expired lease says it is lost; the subnet is free for others.
        assert!(matches!(a.renew(&la, Duration::from_secs(5)), Err(StoreError::Lost(s)) if s == la.subnet));
        let lb = FileStore::open(&dir).unwrap().acquire(&cfg(), &attrs(2), None, Duration::from_secs(5)).unwrap();
        assert_eq!(lb.subnet, la.subnet);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn renew_extends_and_release_removes() {
        let dir = tmp("renew");
        let mut a = FileStore::open(&dir).unwrap();
        // Renewed every 0.5 s with a 2 s TTL, for twice the TTL: 1.5 s of slack for a
        // loaded machine (a 150 ms / 300 ms version failed under load).
        let la = a.acquire(&cfg(), &attrs(1), None, Duration::from_secs(2)).unwrap();
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(500));
            a.renew(&la, Duration::from_secs(2)).unwrap();
        }
        assert_eq!(a.leases().unwrap().0.len(), 1, "kept alive past its first TTL");
        // Someone else's lease cannot be renewed or released by us.
        let other = Lease { subnet: la.subnet, attrs: attrs(9) };
        assert!(matches!(a.renew(&other, Duration::from_secs(1)), Err(StoreError::Lost(_))));
        a.release(&other).unwrap();
        assert_eq!(a.leases().unwrap().0.len(), 1);
        a.release(&la).unwrap();
        assert!(a.leases().unwrap().0.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unreadable_files_are_skipped_not_fatal() {
        let dir = tmp("corrupt");
        let mut a = FileStore::open(&dir).unwrap();
        fs::write(dir.join("subnets").join("10.244.3.0-24"), "{not json").unwrap();
        fs::write(dir.join("subnets").join("stray-name"), "{}").unwrap();
        let la = a.acquire(&cfg(), &attrs(1), None, Duration::from_secs(5)).unwrap();
        assert_eq!(a.leases().unwrap().0, vec![la]);
        fs::remove_dir_all(dir).unwrap();
    }
}
