//! The kube datastore: flannel's `--kube-subnet-mgr` model, so an xlane node joins a
//! cluster whose flannel nodes keep no etcd of their own.
//!
//! * **Lease**: the Node's `spec.podCIDR` (first IPv4 entry of `spec.podCIDRs`),
//!   assigned by kube-controller-manager, never allocated here. A podCIDR outside the
//!   network config is refused with the reason ([`StoreError::Refused`]).
//! * **Publication**: one strategic-merge PATCH on `nodes/<name>/status` sets flannel's
//!   annotations (`flannel.alpha.coreos.com/backend-type: vxlan`, `backend-data:
//!   {"VNI":1,"VtepMAC":"…"}`, `public-ip`, `kube-subnet-manager: "true"`, byte for byte
//!   as flanneld writes them) and the `NetworkUnavailable=False` condition. Renewal
//!   re-reads the Node: a podCIDR that changed is a lost lease, annotations someone
//!   removed are written again. Release does nothing: the podCIDR is the Node's.
//! * **Peers**: a Node watcher (kube-runtime: list, then watch from the list's
//!   resourceVersion with bookmarks, backoff on errors) on a one-worker tokio runtime
//!   owned by the store. Each Node maps to a lease as flannel's `nodeToLease` does
//!   ([`nodes::lease`]); a change reaches the agent only when the lease changed, as the
//!   smallest diff ([`nodes::node_diff`]); after a re-list, the diff of the two views
//!   ([`nodes::view_diff`]). A 410 Gone (an ERROR event, or HTTP 410 on the watch, which
//!   kube-runtime alone would retry forever with the expired resourceVersion) restarts
//!   the watcher, i.e. re-lists.
//! * **Network config**: flannel's `net-conf.json` (its ConfigMap key), mounted as a file.
//! * **Node name**: given (`NODE_NAME`), or read from the agent's own Pod
//!   (`POD_NAMESPACE`/`POD_NAME`, `spec.nodeName`) as flannel does.
//! * **API access**: a kubeconfig file, or the in-cluster service account (token + CA).
//!
//! RBAC, as flannel's ClusterRole: `nodes`: get, list, watch; `nodes/status`: patch;
//! `pods`: get (only to find the node name from the agent's Pod).

pub mod nodes;

use super::{Datastore, Event, Revision, StoreError};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::NetConfig;
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Which Node this agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    /// Its name (`NODE_NAME`, from the downward API).
    Name(String),
    /// The agent's own Pod, whose `spec.nodeName` names it.
    Pod {
        /// `POD_NAMESPACE`.
        namespace: String,
        /// `POD_NAME`.
        name: String,
    },
}

/// How the store reaches the API server and finds its node.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// flannel's `net-conf.json`.
    pub net_conf: PathBuf,
    /// This node.
    pub node: NodeRef,
    /// How long to wait for the first Node list, and for a podCIDR to be assigned.
    pub sync_timeout: Duration,
}

/// The API server, from a kubeconfig file or else the in-cluster service account (or
/// `KUBECONFIG` / `~/.kube/config` outside a cluster).
///
/// # Errors
/// No usable configuration.
pub fn config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, StoreError> {
    let rt = runtime()?;
    rt.block_on(async {
        match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| io(format!("kubeconfig {}", path.display()), e))?;
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| io(format!("kubeconfig {}", path.display()), e))
            }
            None => kube::Config::infer().await.map_err(|e| io("in-cluster or default kubeconfig".into(), e)),
        }
    })
}

fn io(what: String, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io { what, source: std::io::Error::other(e.to_string()) }
}

fn api_err(what: &str) -> impl FnOnce(kube::Error) -> StoreError + '_ {
    move |e| io(format!("kube {what}"), e)
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("xlane-agent-kube")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Io { what: "tokio runtime".into(), source: e })
}

/// What the watcher has seen and not yet handed to the agent.
#[derive(Debug, Default)]
struct View {
    /// Every peer's lease, by node name (our own node included).
    peers: BTreeMap<String, Lease>,
    /// Changes since the agent last looked.
    pending: Vec<Event>,
    /// Bumped with each change; the agent's watch cursor.
    seq: Revision,
    /// The first list is complete.
    synced: bool,
}

type Shared = Arc<(Mutex<View>, Condvar)>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, View> {
    shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn publish(shared: &Shared, update: impl FnOnce(&mut View) -> Vec<Event>) {
    let mut v = lock(shared);
    let events = update(&mut v);
    if !events.is_empty() {
        v.pending.extend(events);
        v.seq += 1;
    }
    drop(v);
    shared.1.notify_all();
}

/// Leases in Node objects.
pub struct KubeStore {
    rt: tokio::runtime::Runtime,
    nodes: Api<Node>,
    node: String,
    net_conf: PathBuf,
    sync_timeout: Duration,
    shared: Shared,
    watcher: tokio::task::JoinHandle<()>,
    /// The revision last handed to the agent.
    delivered: Revision,
}

impl core::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KubeStore")
            .field("node", &self.node)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl KubeStore {
    /// Connect with `config`, find the node, and start watching Nodes.
    ///
    /// # Errors
    /// Client creation, or the agent's Pod cannot be read or names no node.
    pub fn connect(config: kube::Config, opts: KubeOptions) -> Result<Self, StoreError> {
        let rt = runtime()?;
        let client = {
            let _in_rt = rt.enter();
            kube::Client::try_from(config).map_err(api_err("client"))?
        };
        let node = match opts.node {
            NodeRef::Name(n) => n,
            NodeRef::Pod { namespace, name } => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let pod = rt.block_on(pods.get(&name)).map_err(api_err("get own pod"))?;
                pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()).ok_or_else(|| StoreError::Refused {
                    what: format!("pod {namespace}/{name}"),
                    reason: "its spec.nodeName is empty; set NODE_NAME".into(),
                })?
            }
        };
        let nodes: Api<Node> = Api::all(client);
        let shared: Shared = Arc::default();
        let watcher = rt.spawn(watch_nodes(nodes.clone(), Arc::clone(&shared)));
        tracing::info!(node, "kube store: watching nodes");
        Ok(Self {
            rt,
            nodes,
            node,
            net_conf: opts.net_conf,
            sync_timeout: opts.sync_timeout,
            shared,
            watcher,
            delivered: 0,
        })
    }

    /// The node this store publishes for.
    #[must_use]
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Our Node, waiting (up to the sync timeout) for kube-controller-manager to assign
    /// its podCIDR; the subnet it holds.
    fn own_subnet(&mut self) -> Result<(Node, Ipv4Net), StoreError> {
        let deadline = Instant::now() + self.sync_timeout;
        loop {
            let node = self.rt.block_on(self.nodes.get(&self.node)).map_err(api_err("get node"))?;
            match nodes::pod_cidr(&node) {
                Ok(s) => return Ok((node, s)),
                Err(reason) if Instant::now() >= deadline => {
                    return Err(StoreError::Refused { what: format!("node {}", self.node), reason });
                }
                Err(reason) => tracing::info!(node = self.node, reason, "kube store: waiting for a podCIDR"),
            }
            std::thread::sleep(Duration::from_millis(500).min(self.sync_timeout));
        }
    }

    /// flannel's annotations and `NetworkUnavailable=False`, in one strategic-merge patch
    /// of the status subresource.
    fn publish(&mut self, attrs: &LeaseAttrs) -> Result<(), StoreError> {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        let patch = serde_json::json!({
            "metadata": {"annotations": nodes::annotations(attrs)},
            "status": {"conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "XlaneIsUp",
                "message": "xlane is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]},
        });
        self.rt
            .block_on(self.nodes.patch_status(&self.node, &PatchParams::default(), &Patch::Strategic(patch)))
            .map_err(api_err("patch node status"))?;
        Ok(())
    }
}

/// The watcher task: feeds [`View`] until the store is dropped.
async fn watch_nodes(nodes: Api<Node>, shared: Shared) {
    loop {
        let mut stream = watcher(nodes.clone(), watcher::Config::default()).default_backoff().boxed();
        let mut listing: Option<BTreeMap<String, Lease>> = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(n)) => {
                    if let (Some(list), Some(l)) = (listing.as_mut(), nodes::lease(&n)) {
                        list.insert(nodes::name(&n).to_owned(), l);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let new = listing.take().unwrap_or_default();
                    publish(&shared, |v| {
                        v.synced = true;
                        let events = nodes::view_diff(&v.peers, &new);
                        v.peers = new;
                        events
                    });
                }
                Ok(watcher::Event::Apply(n)) => {
                    let lease = nodes::lease(&n);
                    publish(&shared, |v| {
                        let name = nodes::name(&n);
                        let events = nodes::node_diff(v.peers.get(name), lease.as_ref());
                        match lease {
                            Some(l) => v.peers.insert(name.to_owned(), l),
                            None => v.peers.remove(name),
                        };
                        events
                    });
                }
                Ok(watcher::Event::Delete(n)) => publish(&shared, |v| {
                    let old = v.peers.remove(nodes::name(&n));
                    nodes::node_diff(old.as_ref(), None)
                }),
                Err(e) if gone(&e) => {
                    tracing::info!(error = %e, "kube store: resourceVersion expired (410 Gone); listing nodes again");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "kube store: node watch failed; retrying with backoff"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 410 Gone in any form the watcher reports it.
fn gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::WatchFailed(kube::Error::Api(s)) | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            s.code == 410
        }
        _ => false,
    }
}

impl Datastore for KubeStore {
    fn network_config(&mut self) -> Result<Option<String>, StoreError> {
        std::fs::read_to_string(&self.net_conf)
            .map(Some)
            .map_err(|e| StoreError::Io { what: format!("net-conf.json {}", self.net_conf.display()), source: e })
    }

    fn leases(&mut self) -> Result<(Vec<Lease>, Revision), StoreError> {
        let (view, _) = self
            .shared
            .1
            .wait_timeout_while(lock(&self.shared), self.sync_timeout, |v| !v.synced)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut view = view;
        if !view.synced {
            return Err(io("kube node list".into(), format!("not complete after {:?}", self.sync_timeout)));
        }
        // Everything pending is in this snapshot already.
        view.pending.clear();
        self.delivered = view.seq;
        Ok((view.peers.values().cloned().collect(), view.seq))
    }

    fn acquire(
        &mut self,
        cfg: &NetConfig,
        attrs: &LeaseAttrs,
        _preferred: Option<Ipv4Net>,
        _ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let (_, subnet) = self.own_subnet()?;
        if !cfg.network.contains(&subnet) {
            return Err(StoreError::Refused {
                what: format!("node {} podCIDR {subnet}", self.node),
                reason: format!("outside the network config's Network {}", cfg.network),
            });
        }
        if subnet.prefix_len() != cfg.subnet_len {
            tracing::info!(%subnet, subnet_len = cfg.subnet_len, "kube store: podCIDR length differs from SubnetLen; using the podCIDR");
        }
        self.publish(attrs)?;
        Ok(Lease { subnet, attrs: attrs.clone() })
    }

    fn renew(&mut self, lease: &Lease, _ttl: Duration) -> Result<(), StoreError> {
        let node = self.rt.block_on(self.nodes.get(&self.node)).map_err(api_err("get node"))?;
        if nodes::pod_cidr(&node).ok() != Some(lease.subnet) {
            return Err(StoreError::Lost(lease.subnet));
        }
        if nodes::lease(&node).as_ref() != Some(lease) {
            tracing::warn!(node = self.node, "kube store: our annotations changed; publishing them again");
            self.publish(&lease.attrs)?;
        }
        Ok(())
    }

    fn release(&mut self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }

    fn watch(&mut self, since: Revision, timeout: Duration) -> Result<(Vec<Event>, Revision), StoreError> {
        if since != self.delivered {
            let (leases, rev) = self.leases()?;
            return Ok((leases.into_iter().map(Event::Upsert).collect(), rev));
        }
        let (mut view, _) = self
            .shared
            .1
            .wait_timeout_while(lock(&self.shared), timeout, |v| v.pending.is_empty())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let events = std::mem::take(&mut view.pending);
        self.delivered = view.seq;
        Ok((events, view.seq))
    }
}
