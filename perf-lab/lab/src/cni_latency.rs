//! `cni-latency`: CNI ADD and DEL latency for N pods through xlane, beside Debian's
//! `bridge` + `host-local` (what most single-node setups use) on the same node in the
//! same run. The two are interleaved pod by pod, so machine noise hits both alike.

use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::Instant;
use xlane_netlab::Netns;
use xlane_netlab::cluster::{Cluster, ClusterOptions};
use xlane_netlab::runtime::{Container, Runtime};

/// Where Debian's containernetworking-plugins live.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

struct Contender {
    name: &'static str,
    conflist: serde_json::Value,
    add: Histogram<u64>,
    del: Histogram<u64>,
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Measure `pods` ADDs then DELs per contender; print a table and return the JSON.
///
/// # Errors
/// Lab setup, a plugin failure.
pub fn run(pods: usize) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, XDP)");
    anyhow::ensure!(
        std::path::Path::new(REFERENCE_PLUGINS).join("bridge").exists(),
        "Debian's CNI plugins are missing: apt-get install containernetworking-plugins"
    );
    let cluster = Cluster::start("xcnilat", 1, &ClusterOptions::default())?;
    let node = &cluster.lab.nodes[0].ns;
    let ours = xlane_netlab::workspace_binary("xlane").parent().map(PathBuf::from).unwrap_or_default();
    let rt = Runtime::new(vec![ours, PathBuf::from(REFERENCE_PLUGINS)]);
    let new_hist = || Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds");
    let mut contenders = [
        Contender {
            name: "xlane",
            conflist: serde_json::json!({"cniVersion": "1.0.0", "name": "xlane",
                "plugins": [{"type": "xlane", "agentSocket": cluster.nodes[0].agent_socket}]}),
            add: new_hist(),
            del: new_hist(),
        },
        Contender {
            name: "bridge+host-local",
            conflist: serde_json::json!({"cniVersion": "1.0.0", "name": "kbridge",
                "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "mtu": 1450,
                    "ipam": {"type": "host-local", "dataDir": cluster.dir.join("host-local"),
                             "ranges": [[{"subnet": "10.99.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}),
            add: new_hist(),
            del: new_hist(),
        },
    ];
    let namespaces: Vec<Vec<Netns>> = (0..contenders.len())
        .map(|k| (0..pods).map(|i| Netns::new(&format!("xcl{k}-{i}"))).collect::<std::io::Result<_>>())
        .collect::<std::io::Result<_>>()?;
    let container = |k: usize, i: usize| Container::in_netns(&format!("lat{k}x{i}"), &namespaces[k][i]);
    let mut results: Vec<Vec<serde_json::Value>> = vec![Vec::new(); contenders.len()];
    eprintln!("cni-latency: {pods} pods per contender, ADD then DEL, interleaved");
    for i in 0..pods {
        for (k, c) in contenders.iter_mut().enumerate() {
            let t0 = Instant::now();
            let r = rt.add(node, &c.conflist, &container(k, i))?;
            c.add.record(u64::try_from(t0.elapsed().as_nanos())?.max(1))?;
            results[k].push(r);
        }
    }
    for i in 0..pods {
        for (k, (c, cached)) in contenders.iter_mut().zip(&results).enumerate() {
            let t0 = Instant::now();
            rt.del(node, &c.conflist, &container(k, i), Some(&cached[i]))?;
            c.del.record(u64::try_from(t0.elapsed().as_nanos())?.max(1))?;
        }
    }
    println!("{:<20} {:>10} {:>10} {:>10} {:>10}", "CNI (ms)", "ADD p50", "ADD p99", "DEL p50", "DEL p99");
    let mut out = serde_json::Map::new();
    for c in &contenders {
        let ms = |h: &Histogram<u64>, q| micros(h, q) / 1000.0;
        println!(
            "{:<20} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            c.name,
            ms(&c.add, 0.5),
            ms(&c.add, 0.99),
            ms(&c.del, 0.5),
            ms(&c.del, 0.99)
        );
        out.insert(
            c.name.into(),
            serde_json::json!({
                "add_us": {"p50": micros(&c.add, 0.5), "p99": micros(&c.add, 0.99)},
                "del_us": {"p50": micros(&c.del, 0.5), "p99": micros(&c.del, 0.99)},
            }),
        );
    }
    let ratio = |q| micros(&contenders[0].add, q) / micros(&contenders[1].add, q);
    println!("xlane ADD / bridge ADD: p50 {:.2}×, p99 {:.2}×", ratio(0.5), ratio(0.99));
    Ok(serde_json::json!({"pods": pods, "contenders": out}))
}
