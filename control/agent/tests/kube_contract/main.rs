//! API contract tests of the kube datastore: the store against an in-test server that
//! speaks the Kubernetes wire format for exactly the calls the store makes
//! (`apiserver.rs`). They check the store's side of the contract (which requests, which
//! bytes, how it reads what comes back); they are not Kubernetes tests.
#![cfg(feature = "kube")]

mod apiserver;

use apiserver::{ApiServer, Gone, Recorded};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use xlane_agent::lease::{Lease, LeaseAttrs};
use xlane_agent::netconf::NetConfig;
use xlane_agent::store::kube::{KubeOptions, KubeStore, NodeRef, config};
use xlane_agent::store::{Datastore, Event, StoreError};

const NET_CONF: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const FLANNEL: &str = "flannel.alpha.coreos.com";

fn net_conf_file() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xlane-kube-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net-conf.json");
    std::fs::write(&path, NET_CONF).unwrap();
    path
}

fn options(node: NodeRef) -> KubeOptions {
    KubeOptions { net_conf: net_conf_file(), node, sync_timeout: Duration::from_secs(2) }
}

fn connect(api: &ApiServer, node: &str) -> KubeStore {
    let cfg = kube::Config::new(api.url.parse().unwrap());
    KubeStore::connect(cfg, options(NodeRef::Name(node.into()))).unwrap()
}

/// A Node as kubelet registers it: no flannel annotations yet.
fn bare_node(name: &str, pod_cidr: &str) -> Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/hostname": name},
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                   "addresses": [{"type": "InternalIP", "address": "192.168.50.9"}]},
    })
}

/// A Node as flanneld (vxlan, IPv4) leaves it: its annotations byte for byte.
fn flannel_node(name: &str, pod_cidr: &str, public_ip: &str, mac: &str) -> Value {
    let mut n = bare_node(name, pod_cidr);
    let ann = n["metadata"]["annotations"].as_object_mut().unwrap();
    ann.insert(format!("{FLANNEL}/backend-data"), json!(format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)));
    ann.insert(format!("{FLANNEL}/backend-type"), json!("vxlan"));
    ann.insert(format!("{FLANNEL}/kube-subnet-manager"), json!("true"));
    ann.insert(format!("{FLANNEL}/public-ip"), json!(public_ip));
    n
}

fn lease(subnet: &str, public_ip: &str, mac: &str) -> Lease {
    Lease {
        subnet: subnet.parse().unwrap(),
        attrs: LeaseAttrs::vxlan(public_ip.parse().unwrap(), 1, mac.parse().unwrap()),
    }
}

fn ours() -> LeaseAttrs {
    LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 50, 1), 1, "0e:00:00:00:01:01".parse().unwrap())
}

fn cfg() -> NetConfig {
    NetConfig::parse(NET_CONF).unwrap()
}

/// Events from `store` until `n` have arrived, then a quiet 300 ms that must bring none.
fn events(store: &mut KubeStore, rev: &mut u64, n: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {out:?} of {n} events");
        let (evs, r) = store.watch(*rev, Duration::from_millis(200)).unwrap();
        *rev = r;
        out.extend(evs);
    }
    let (more, r) = store.watch(*rev, Duration::from_millis(300)).unwrap();
    *rev = r;
    assert_eq!(more, [], "more than the smallest diff (had {out:?})");
    out
}

fn patches(api: &ApiServer) -> Vec<Recorded> {
    api.with(|s| s.requests(|r| r.method == "PATCH"))
}

#[test]
fn the_lease_is_the_pod_cidr_and_flannels_annotations_are_published() {
    let api = ApiServer::start();
    api.with(|s| s.put_node(bare_node("n1", "10.244.3.0/24")));
    let mut store = connect(&api, "n1");
    assert_eq!(store.network_config().unwrap().as_deref(), Some(NET_CONF));
    // The preference (a previous lease) does not matter: the podCIDR is the lease.
    let l = store.acquire(&cfg(), &ours(), Some("10.244.9.0/24".parse().unwrap()), Duration::from_secs(60)).unwrap();
    assert_eq!(l, Lease { subnet: "10.244.3.0/24".parse().unwrap(), attrs: ours() });

    let p = patches(&api);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "/api/v1/nodes/n1/status");
    assert_eq!(p[0].content_type.as_deref(), Some("application/strategic-merge-patch+json"));
    let want: BTreeMap<String, String> = [
        ("backend-data", r#"{"VNI":1,"VtepMAC":"0e:00:00:00:01:01"}"#),
        ("backend-type", "vxlan"),
        ("kube-subnet-manager", "true"),
        ("public-ip", "192.168.50.1"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{FLANNEL}/{k}"), v.to_owned()))
    .collect();
    let sent: BTreeMap<String, String> = serde_json::from_value(p[0].body["metadata"]["annotations"].clone()).unwrap();
    assert_eq!(sent, want);
    let conds = p[0].body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 1);
    assert_eq!((conds[0]["type"].as_str(), conds[0]["status"].as_str()), (Some("NetworkUnavailable"), Some("False")));
    assert!(conds[0]["reason"].is_string() && conds[0]["message"].is_string());
    for t in ["lastTransitionTime", "lastHeartbeatTime"] {
        let ts = conds[0][t].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{t}: {ts}");
    }
    // The patch touched only what it names: kubelet's annotation and Ready stay.
    let node = api.with(|s| s.node("n1"));
    assert_eq!(node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"], "0");
    assert_eq!(node["status"]["conditions"].as_array().unwrap().len(), 2);
    // Our own node, as the watcher now sees it, is that lease.
    let (leases, _) = store.leases().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut leases = leases;
    while leases.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        leases = store.leases().unwrap().0;
    }
    assert_eq!(leases, [l]);
}

#[test]
fn a_pod_cidr_outside_the_network_is_refused_with_the_reason() {
    let api = ApiServer::start();
    api.with(|s| s.put_node(bare_node("n1", "10.99.3.0/24")));
    let mut store = connect(&api, "n1");
    let e = store.acquire(&cfg(), &ours(), None, Duration::from_secs(60)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Refused { .. }), "{e:?}");
    assert!(msg.contains("10.99.3.0/24") && msg.contains("outside") && msg.contains("10.244.0.0/16"), "{msg}");
    assert_eq!(patches(&api).len(), 0, "nothing published for a refused lease");

    // No podCIDR at all: waited for (sync timeout), then refused with the reason.
    api.with(|s| s.put_node(json!({"metadata": {"name": "n2"}, "spec": {}})));
    let mut store = connect(&api, "n2");
    let e = store.acquire(&cfg(), &ours(), None, Duration::from_secs(60)).unwrap_err();
    assert!(e.to_string().contains("no podCIDR"), "{e}");
}

#[test]
fn peers_reach_the_store_as_the_smallest_diff() {
    let api = ApiServer::start();
    api.with(|s| {
        s.put_node(bare_node("n1", "10.244.1.0/24"));
        s.put_node(flannel_node("n2", "10.244.2.0/24", "192.168.50.2", "0e:00:00:00:02:01"));
    });
    let mut store = connect(&api, "n1");
    let (leases, mut rev) = store.leases().unwrap();
    assert_eq!(leases, [lease("10.244.2.0/24", "192.168.50.2", "0e:00:00:00:02:01")]);
    api.wait_for("a watch", |r| r.iter().any(Recorded::is_watch));
    let (list, watch) = api.with(|s| (s.requests(Recorded::is_list), s.requests(Recorded::is_watch)));
    assert_eq!(list.len(), 1);
    // The watch resumes at the list's resourceVersion and asks for bookmarks.
    assert_eq!(watch[0].query.get("resourceVersion").map(String::as_str), Some("102"));
    assert_eq!(watch[0].query.get("allowWatchBookmarks").map(String::as_str), Some("true"));

    api.with(|s| s.put_node(flannel_node("n3", "10.244.3.0/24", "192.168.50.3", "0e:00:00:00:03:01")));
    let n3 = lease("10.244.3.0/24", "192.168.50.3", "0e:00:00:00:03:01");
    assert_eq!(events(&mut store, &mut rev, 1), [Event::Upsert(n3)]);

    // kubelet's status updates and label changes are not lease changes.
    api.with(|s| {
        s.modify_node("n3", |n| n["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-01-01T00:00:10Z"));
        s.modify_node("n3", |n| n["metadata"]["labels"]["role"] = json!("edge"));
        s.put_node(bare_node("n4", "10.244.4.0/24")); // no flannel annotations: not a peer
    });
    assert_eq!(events(&mut store, &mut rev, 0), []);

    // A new VTEP MAC (flanneld restarted with a new device): one upsert.
    api.with(|s| {
        s.modify_node("n3", |n| {
            n["metadata"]["annotations"][format!("{FLANNEL}/backend-data")] =
                json!(r#"{"VNI":1,"VtepMAC":"0e:00:00:00:03:02"}"#);
        });
    });
    let n3b = lease("10.244.3.0/24", "192.168.50.3", "0e:00:00:00:03:02");
    assert_eq!(events(&mut store, &mut rev, 1), [Event::Upsert(n3b)]);

    api.with(|s| s.delete_node("n2"));
    assert_eq!(events(&mut store, &mut rev, 1), [Event::Removed("10.244.2.0/24".parse().unwrap())]);
    assert_eq!(api.with(|s| s.requests(Recorded::is_list).len()), 1, "no re-list without a 410");
}

fn gone_relists_and_converges(gone: Gone) {
    let api = ApiServer::start();
    api.with(|s| {
        s.gone = gone;
        s.put_node(bare_node("n1", "10.244.1.0/24"));
        s.put_node(flannel_node("n2", "10.244.2.0/24", "192.168.50.2", "0e:00:00:00:02:01"));
        s.put_node(flannel_node("n4", "10.244.4.0/24", "192.168.50.4", "0e:00:00:00:04:01"));
        s.put_node(flannel_node("n5", "10.244.5.0/24", "192.168.50.5", "0e:00:00:00:05:01"));
    });
    let mut store = connect(&api, "n1");
    let (_, mut rev) = store.leases().unwrap();
    api.wait_for("a watch", |r| r.iter().any(Recorded::is_watch));
    // While the watch is down the history is compacted: these changes are never streamed.
    api.with(|s| {
        s.delete_node("n2");
        s.put_node(flannel_node("n3", "10.244.3.0/24", "192.168.50.3", "0e:00:00:00:03:01"));
        s.modify_node("n4", |n| n["metadata"]["annotations"][format!("{FLANNEL}/public-ip")] = json!("192.168.50.44"));
        s.modify_node("n5", |n| n["metadata"]["labels"]["x"] = json!("y"));
        s.expire();
    });
    let got = events(&mut store, &mut rev, 3);
    assert_eq!(
        got,
        [
            Event::Removed("10.244.2.0/24".parse().unwrap()),
            Event::Upsert(lease("10.244.3.0/24", "192.168.50.3", "0e:00:00:00:03:01")),
            Event::Upsert(lease("10.244.4.0/24", "192.168.50.44", "0e:00:00:00:04:01")),
        ]
    );
    assert_eq!(api.with(|s| s.requests(Recorded::is_list).len()), 2, "one re-list");
    // And the watch goes on from the new list.
    api.with(|s| s.delete_node("n5"));
    assert_eq!(events(&mut store, &mut rev, 1), [Event::Removed("10.244.5.0/24".parse().unwrap())]);
}

#[test]
fn a_410_error_event_makes_it_relist_and_converge() {
    gone_relists_and_converges(Gone::ErrorEvent);
}

#[test]
fn an_http_410_on_the_watch_makes_it_relist_and_converge() {
    gone_relists_and_converges(Gone::Http);
}

#[test]
fn a_bookmark_moves_the_resume_point_without_events() {
    let api = ApiServer::start();
    api.with(|s| s.put_node(bare_node("n1", "10.244.1.0/24")));
    let mut store = connect(&api, "n1");
    let (_, mut rev) = store.leases().unwrap();
    api.wait_for("a watch", |r| r.iter().any(Recorded::is_watch));
    let mark = api.with(|s| s.bookmark());
    std::thread::sleep(Duration::from_millis(300)); // streamed
    api.with(|s| s.close_watches());
    api.wait_for("a second watch", |r| r.iter().filter(|r| r.is_watch()).count() >= 2);
    let watches = api.with(|s| s.requests(Recorded::is_watch));
    assert_eq!(watches[1].query.get("resourceVersion"), Some(&mark.to_string()));
    assert_eq!(events(&mut store, &mut rev, 0), []);
    assert_eq!(api.with(|s| s.requests(Recorded::is_list).len()), 1);
}

#[test]
fn a_node_written_by_flanneld_is_a_peer() {
    let api = ApiServer::start();
    api.with(|s| {
        s.put_node(bare_node("n1", "10.244.1.0/24"));
        // flanneld's node, as `kubectl get node -o json` shows one (dual-stack podCIDRs,
        // flannel's other annotations included).
        let mut n = flannel_node("flannel-7", "10.244.7.0/24", "192.168.50.7", "b2:41:9c:3e:51:0a");
        n["spec"]["podCIDRs"] = json!(["10.244.7.0/24", "fd00:10:244:7::/64"]);
        n["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-v6-data"] = json!("null");
        n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ipv6"] = json!("");
        s.put_node(n);
    });
    let mut store = connect(&api, "n1");
    let (leases, _) = store.leases().unwrap();
    assert_eq!(leases, [lease("10.244.7.0/24", "192.168.50.7", "b2:41:9c:3e:51:0a")]);
    let d = leases[0].attrs.vxlan_data().unwrap();
    assert_eq!((d.vni, d.vtep_mac.to_string().as_str()), (1, "b2:41:9c:3e:51:0a"));
}

#[test]
fn renewal_republishes_removed_annotations_and_a_moved_pod_cidr_is_lost() {
    let api = ApiServer::start();
    api.with(|s| s.put_node(bare_node("n1", "10.244.3.0/24")));
    let mut store = connect(&api, "n1");
    let l = store.acquire(&cfg(), &ours(), None, Duration::from_secs(60)).unwrap();
    store.renew(&l, Duration::from_secs(60)).unwrap();
    assert_eq!(patches(&api).len(), 1, "nothing to do");
    api.with(|s| {
        s.modify_node("n1", |n| {
            n["metadata"]["annotations"].as_object_mut().unwrap().remove(&format!("{FLANNEL}/backend-data"));
        });
    });
    store.renew(&l, Duration::from_secs(60)).unwrap();
    assert_eq!(patches(&api).len(), 2, "published again");
    api.with(|s| s.modify_node("n1", |n| n["spec"] = json!({"podCIDR": "10.244.8.0/24"})));
    assert!(matches!(store.renew(&l, Duration::from_secs(60)), Err(StoreError::Lost(s)) if s == l.subnet));
}

#[test]
fn kubeconfig_token_and_the_node_name_from_the_agents_own_pod() {
    let api = ApiServer::start();
    api.with(|s| {
        s.put_node(bare_node("worker-3", "10.244.3.0/24"));
        s.pods.insert(
            ("kube-system".into(), "xlane-ds-abcde".into()),
            json!({"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": "xlane-ds-abcde", "namespace": "kube-system"},
                   "spec": {"nodeName": "worker-3", "containers": []}}),
        );
    });
    let dir = net_conf_file().parent().unwrap().join("kubeconfig");
    std::fs::write(
        &dir,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\nusers:\n- name: u\n  user:\n    token: s3cret\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            api.url
        ),
    )
    .unwrap();
    let cfg = config(Some(&dir)).unwrap();
    let node = NodeRef::Pod { namespace: "kube-system".into(), name: "xlane-ds-abcde".into() };
    let mut store = KubeStore::connect(cfg, options(node)).unwrap();
    assert_eq!(store.node_name(), "worker-3");
    store.acquire(&self::cfg(), &ours(), None, Duration::from_secs(60)).unwrap();
    let reqs = api.with(|s| s.requests(|_| true));
    assert!(reqs.iter().any(|r| r.path == "/api/v1/namespaces/kube-system/pods/xlane-ds-abcde"));
    assert!(reqs.iter().all(|r| r.authorization.as_deref() == Some("Bearer s3cret")), "{reqs:?}");
}
