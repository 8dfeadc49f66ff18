//! The etcd datastore (v3 API), in flannel's key schema, so xlane and flannel nodes
//! share one network:
//!
//! ```text
//! <prefix>/config                       the network config (flannel JSON)
//! <prefix>/subnets/10.244.1.0-24        flannel LeaseAttrs JSON, attached to an etcd lease (TTL)
//! ```
//! `<prefix>` defaults to flannel's `/coreos.com/network`. A subnet is claimed with a
//! transaction that succeeds only if its key does not exist, so two agents never hold
//! the same subnet; the key dies with the etcd lease when its node stops renewing.
//! Watches resume from the last revision seen; when etcd has compacted that revision away
//! the store lists everything again and reports the difference.
//!
//! The etcd client is async; the agent is not, so this store owns a single-threaded
//! tokio runtime and blocks on each call (control plane, not hot path).

use super::{Datastore, Event, Revision, StoreError};
use crate::lease::{Claim, Lease, LeaseAttrs, choose_subnet, parse_subnet_key, subnet_key};
use crate::netconf::NetConfig;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::time::Duration;

/// A TTL as etcd takes it: whole seconds, at least one.
fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// Leases by subnet, with the etcd revision that last modified each.
type Listing = BTreeMap<Ipv4Net, (LeaseAttrs, i64)>;

/// flannel's default key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

fn etcd_err(what: &str) -> impl FnOnce(etcd_client::Error) -> StoreError + '_ {
    move |e| StoreError::Io { what: format!("etcd {what}"), source: std::io::Error::other(e.to_string()) }
}

/// Leases in etcd.
pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    /// Our etcd lease and its keep-alive stream.
    lease: Option<(i64, etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    watch: Option<WatchStream>,
    view: BTreeMap<Ipv4Net, LeaseAttrs>,
    revision: i64,
}

impl core::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect to `endpoints` (any member; the client balances and fails over).
    ///
    /// # Errors
    /// Runtime creation or connection failure.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io { what: "tokio runtime".into(), source: e })?;
        let client = rt.block_on(Client::connect(endpoints, Some(Self::options()))).map_err(etcd_err("connect"))?;
        Ok(Self {
            rt,
            client,
            endpoints: endpoints.to_vec(),
            prefix: prefix.trim_end_matches('/').to_owned(),
            lease: None,
            watch: None,
            view: BTreeMap::new(),
            revision: 0,
        })
    }

    fn options() -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
    }

    /// Reconnect to the members that accept connections now. The client's balancer keeps
    /// sending to a dead member ("connection refused") instead of failing over, so after
    /// a transport error the store rebuilds its channel from the live ones.
    fn reconnect(&mut self) {
        let live: Vec<String> = self
            .endpoints
            .iter()
            .filter(|e| {
                let hostport = e.trim_start_matches("http://").trim_start_matches("https://");
                std::net::ToSocketAddrs::to_socket_addrs(hostport)
                    .ok()
                    .and_then(|mut a| a.next())
                    .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
            })
            .cloned()
            .collect();
        let use_eps = if live.is_empty() { self.endpoints.clone() } else { live };
        if let Ok(c) = self.rt.block_on(Client::connect(&use_eps, Some(Self::options()))) {
            self.client = c;
            self.watch = None;
            tracing::info!(endpoints = ?use_eps, "reconnected to etcd");
        }
    }

    /// Run `op`; after a transport failure reconnect to the live members and try again.
    fn retry<T>(&mut self, mut op: impl FnMut(&mut Self) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut last = None;
        for attempt in 0..3 {
            match op(self) {
                Err(StoreError::Io { what, source }) => {
                    tracing::debug!(attempt, %what, error = %source, "etcd call failed; reconnecting");
                    last = Some(StoreError::Io { what, source });
                    // Back off a little: a member that just died or a leader election
                    // settles within the cluster's election timeout.
                    std::thread::sleep(Duration::from_millis(100 << attempt));
                    self.reconnect();
                }
                other => return other,
            }
        }
        Err(last.expect("three attempts"))
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn key(&self, s: Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(s))
    }

    /// Write the network config (tests, cluster setup).
    ///
    /// # Errors
    /// etcd failure.
    pub fn put_network_config(&mut self, json: &str) -> Result<(), StoreError> {
        let key = format!("{}/config", self.prefix);
        self.rt.block_on(self.client.put(key, json, None)).map_err(etcd_err("put config"))?;
        Ok(())
    }

    /// Write a lease as another node (or flannel) would, with its own TTL.
    ///
    /// # Errors
    /// etcd failure.
    pub fn put_lease(&mut self, subnet: Ipv4Net, attrs: &LeaseAttrs, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key(subnet);
        let value = serde_json::to_string(attrs).expect("plain data");
        let secs = ttl_secs(ttl);
        let Self { rt, client, .. } = self;
        rt.block_on(async {
            let l = client.lease_grant(secs, None).await?;
            client.put(key, value, Some(PutOptions::new().with_lease(l.id()))).await
        })
        .map_err(etcd_err("put lease"))?;
        Ok(())
    }

    /// All leases with their etcd revision.
    fn list(&mut self) -> Result<(Listing, i64), StoreError> {
        let prefix = self.subnets_prefix();
        let resp = self
            .rt
            .block_on(self.client.get(prefix.clone(), Some(GetOptions::new().with_prefix())))
            .map_err(etcd_err("get"))?;
        let revision = resp.header().map_or(0, etcd_client::ResponseHeader::revision);
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let Some(subnet) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)).and_then(parse_subnet_key)
            else {
                continue;
            };
            match serde_json::from_slice::<LeaseAttrs>(kv.value()) {
                Ok(a) => {
                    out.insert(subnet, (a, kv.mod_revision()));
                }
                Err(e) => tracing::warn!(key = ?kv.key_str(), error = %e, "skipping unreadable lease"),
            }
        }
        Ok((out, revision))
    }

    fn rev(r: i64) -> Revision {
        u64::try_from(r).unwrap_or(0)
    }
}

impl EtcdStore {
    fn network_config_once(&mut self) -> Result<Option<String>, StoreError> {
        let key = format!("{}/config", self.prefix);
        let resp = self.rt.block_on(self.client.get(key, None)).map_err(etcd_err("get config"))?;
        Ok(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    fn leases_once(&mut self) -> Result<(Vec<Lease>, Revision), StoreError> {
        let (all, revision) = self.list()?;
        self.view = all.iter().map(|(s, (a, _))| (*s, a.clone())).collect();
        self.revision = revision;
        Ok((all.into_iter().map(|(subnet, (attrs, _))| Lease { subnet, attrs }).collect(), Self::rev(revision)))
    }

    fn acquire_once(
        &mut self,
        cfg: &NetConfig,
        attrs: &LeaseAttrs,
        preferred: Option<Ipv4Net>,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let secs = ttl_secs(ttl);
        let value = serde_json::to_string(attrs).expect("plain data");
        for _attempt in 0..16 {
            let (all, _) = self.list()?;
            let holders = all.iter().map(|(s, (a, _))| (*s, a.public_ip));
            let (subnet, compare) = match choose_subnet(cfg, holders, attrs.public_ip, preferred)? {
                // Ours already (a restart): take it over with a new etcd lease, if unchanged.
                Claim::Held(s) => {
                    let modrev = all.get(&s).map_or(0, |(_, r)| *r);
                    (s, Compare::mod_revision(self.key(s), CompareOp::Equal, modrev))
                }
                Claim::Free(s) => (s, Compare::create_revision(self.key(s), CompareOp::Equal, 0)),
            };
            let key = self.key(subnet);
            let Self { rt, client, .. } = self;
            let (won, id) = rt
                .block_on(async {
                    let l = client.lease_grant(secs, None).await?;
                    let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                        key,
                        value.clone(),
                        Some(PutOptions::new().with_lease(l.id())),
                    )]);
                    let r = client.txn(txn).await?;
                    if !r.succeeded() {
                        client.lease_revoke(l.id()).await?;
                    }
                    Ok::<_, etcd_client::Error>((r.succeeded(), l.id()))
                })
                .map_err(etcd_err("claim"))?;
            if won {
                let (keeper, stream) =
                    self.rt.block_on(self.client.lease_keep_alive(id)).map_err(etcd_err("keep-alive"))?;
                self.lease = Some((id, keeper, stream));
                return Ok(Lease { subnet, attrs: attrs.clone() });
            }
            // Someone claimed it between our read and our write: look again.
        }
        Err(StoreError::Io {
            what: "etcd claim".into(),
            source: std::io::Error::other("too much contention for subnets"),
        })
    }

    fn renew_once(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let Some((id, keeper, stream)) = self.lease.as_mut() else { return Err(StoreError::Lost(lease.subnet)) };
        let id = *id;
        let r = self.rt.block_on(async {
            keeper.keep_alive().await?;
            stream.message().await
        });
        match r {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(()),
            Ok(_) => {
                // TTL 0: the lease expired (the key is gone with it).
                self.lease = None;
                Err(StoreError::Lost(lease.subnet))
            }
            Err(e) => {
                // The stream broke (member lost?): open a new one; the lease itself may live.
                if let Ok((k, s)) = self.rt.block_on(self.client.lease_keep_alive(id)) {
                    self.lease = Some((id, k, s));
                }
                Err(etcd_err("keep-alive")(e))
            }
        }
    }

    fn release_once(&mut self, lease: &Lease) -> Result<(), StoreError> {
        if let Some((id, _, _)) = self.lease.take() {
            self.rt.block_on(self.client.lease_revoke(id)).map_err(etcd_err("revoke"))?;
        }
        let _ = lease;
        Ok(())
    }

    fn watch_once(&mut self, since: Revision, timeout: Duration) -> Result<(Vec<Event>, Revision), StoreError> {
        if since != Self::rev(self.revision) || self.watch.is_none() {
            if since != Self::rev(self.revision) {
                let (leases, rev) = self.leases()?;
                return Ok((leases.into_iter().map(Event::Upsert).collect(), rev));
            }
            let opts = WatchOptions::new().with_prefix().with_start_revision(self.revision + 1);
            let prefix = self.subnets_prefix();
            self.watch = Some(self.rt.block_on(self.client.watch(prefix, Some(opts))).map_err(etcd_err("watch"))?);
        }
        let prefix = self.subnets_prefix();
        let stream = self.watch.as_mut().expect("created above");
        // Skip responses that carry nothing (the "created" acknowledgement, progress
        // notifications) until events, a cancellation, or the timeout.
        let msg = self.rt.block_on(async {
            tokio::time::timeout(timeout, async {
                loop {
                    match stream.message().await {
                        Ok(Some(r)) if r.events().is_empty() && !r.canceled() && r.compact_revision() == 0 => {}
                        other => return other,
                    }
                }
            })
            .await
        });
        let resp = match msg {
            Err(_) => return Ok((Vec::new(), Self::rev(self.revision))), // nothing within the timeout
            Ok(Err(e)) => {
                self.watch = None;
                return Err(etcd_err("watch")(e));
            }
            Ok(Ok(None)) => {
                self.watch = None;
                return Ok((Vec::new(), Self::rev(self.revision)));
            }
            Ok(Ok(Some(r))) => r,
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            // Our revision was compacted away: list again and report the difference.
            self.watch = None;
            let old = std::mem::take(&mut self.view);
            let (leases, rev) = self.leases()?;
            let mut events: Vec<Event> =
                old.keys().filter(|s| !self.view.contains_key(s)).map(|s| Event::Removed(*s)).collect();
            events.extend(leases.into_iter().filter(|l| old.get(&l.subnet) != Some(&l.attrs)).map(Event::Upsert));
            return Ok((events, rev));
        }
        let mut events = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(subnet) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)).and_then(parse_subnet_key)
            else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => match serde_json::from_slice::<LeaseAttrs>(kv.value()) {
                    Ok(attrs) => {
                        self.view.insert(subnet, attrs.clone());
                        events.push(Event::Upsert(Lease { subnet, attrs }));
                    }
                    Err(e) => tracing::warn!(%subnet, error = %e, "skipping unreadable lease"),
                },
                EventType::Delete => {
                    self.view.remove(&subnet);
                    events.push(Event::Removed(subnet));
                }
            }
            self.revision = self.revision.max(kv.mod_revision());
        }
        if let Some(h) = resp.header() {
            self.revision = self.revision.max(h.revision());
        }
        Ok((events, Self::rev(self.revision)))
    }
}

impl Datastore for EtcdStore {
    fn network_config(&mut self) -> Result<Option<String>, StoreError> {
        self.retry(Self::network_config_once)
    }

    fn leases(&mut self) -> Result<(Vec<Lease>, Revision), StoreError> {
        self.retry(Self::leases_once)
    }

    fn acquire(
        &mut self,
        cfg: &NetConfig,
        attrs: &LeaseAttrs,
        preferred: Option<Ipv4Net>,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.retry(|s| s.acquire_once(cfg, attrs, preferred, ttl))
    }

    fn renew(&mut self, lease: &Lease, _ttl: Duration) -> Result<(), StoreError> {
        self.retry(|s| s.renew_once(lease))
    }

    fn release(&mut self, lease: &Lease) -> Result<(), StoreError> {
        self.retry(|s| s.release_once(lease))
    }

    fn watch(&mut self, since: Revision, timeout: Duration) -> Result<(Vec<Event>, Revision), StoreError> {
        self.retry(|s| s.watch_once(since, timeout))
    }
}
