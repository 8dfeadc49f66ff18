//! An in-test API server that speaks the Kubernetes wire format for exactly the calls the
//! kube datastore makes, as the API conventions define them: GET and LIST of nodes with
//! `metadata.resourceVersion`, WATCH (`watch=true`, `allowWatchBookmarks`) streaming one
//! JSON `{"type","object"}` per line over chunked HTTP, 410 Gone for an expired
//! resourceVersion (an ERROR event carrying a `Status`, or an HTTP 410), PATCH of
//! `nodes/<name>/status` with a strategic-merge patch, and GET of a Pod. Not an API server:
//! no validation, no field selectors, no paging beyond one page.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How an expired resourceVersion is answered on a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// HTTP 200 and one `ERROR` event with a `Status` of code 410 (the apiserver's way).
    ErrorEvent,
    /// HTTP 410 with a `Status` body.
    Http,
}

/// One request as received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: BTreeMap<String, String>,
    pub(crate) content_type: Option<String>,
    pub(crate) authorization: Option<String>,
    pub(crate) body: Value,
}

impl Recorded {
    pub(crate) fn is_watch(&self) -> bool {
        self.path == "/api/v1/nodes" && matches!(self.query.get("watch").map(String::as_str), Some("true" | "1"))
    }
    pub(crate) fn is_list(&self) -> bool {
        self.method == "GET" && self.path == "/api/v1/nodes" && !self.is_watch()
    }
}

/// The server's state; tests change it through [`ApiServer::with`].
#[derive(Debug)]
pub(crate) struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    pub(crate) pods: BTreeMap<(String, String), Value>,
    /// Watch history: (resourceVersion, type, object).
    log: Vec<(u64, &'static str, Value)>,
    /// Watches from before this resourceVersion are answered 410.
    oldest: u64,
    /// Open watches end when this changes.
    generation: u64,
    pub(crate) gone: Gone,
    pub(crate) requests: Vec<Recorded>,
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Create or replace a node (ADDED or MODIFIED).
    pub(crate) fn put_node(&mut self, mut node: Value) {
        let name = node["metadata"]["name"].as_str().expect("named").to_owned();
        let rv = self.bump();
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        node["kind"] = json!("Node");
        node["apiVersion"] = json!("v1");
        let kind = if self.nodes.insert(name, node.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        self.log.push((rv, kind, node));
    }

    /// Change a node in place (MODIFIED).
    pub(crate) fn modify_node(&mut self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut node = self.nodes[name].clone();
        f(&mut node);
        self.put_node(node);
    }

    pub(crate) fn delete_node(&mut self, name: &str) {
        let mut node = self.nodes.remove(name).expect("exists");
        let rv = self.bump();
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.log.push((rv, "DELETED", node));
    }

    pub(crate) fn node(&self, name: &str) -> Value {
        self.nodes[name].clone()
    }

    /// A bookmark at a newer resourceVersion (other objects changed meanwhile).
    pub(crate) fn bookmark(&mut self) -> u64 {
        let rv = self.bump();
        let obj = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}});
        self.log.push((rv, "BOOKMARK", obj));
        rv
    }

    /// End every open watch (as the apiserver does at its timeout or a restart).
    pub(crate) fn close_watches(&mut self) {
        self.generation += 1;
    }

    /// Compact the history: what happened so far is no longer replayable, so a watch
    /// resuming from before now gets 410 Gone. Open watches end first, without seeing it.
    pub(crate) fn expire(&mut self) {
        self.oldest = self.rv;
        self.close_watches();
    }

    pub(crate) fn requests(&self, f: impl Fn(&Recorded) -> bool) -> Vec<Recorded> {
        self.requests.iter().filter(|r| f(r)).cloned().collect()
    }
}

/// The server on 127.0.0.1, stopped on drop.
pub(crate) struct ApiServer {
    pub(crate) url: String,
    shared: Arc<(Mutex<State>, Condvar)>,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.shared.1.notify_all();
        self.server.unblock();
    }
}

impl ApiServer {
    pub(crate) fn start() -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind loopback"));
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip listener"));
        let state = State {
            rv: 100,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            log: Vec::new(),
            oldest: 0,
            generation: 0,
            gone: Gone::ErrorEvent,
            requests: Vec::new(),
        };
        let shared = Arc::new((Mutex::new(state), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (srv, sh, st) = (Arc::clone(&server), Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                let (sh, st) = (Arc::clone(&sh), Arc::clone(&st));
                std::thread::spawn(move || handle(req, &sh, &st));
            }
        });
        Self { url, shared, server, stop }
    }

    /// Change the state; open watches see what was logged.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.shared.1.notify_all();
        out
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait until `f` holds of the recorded requests.
    pub(crate) fn wait_for(&self, what: &str, f: impl Fn(&[Recorded]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f(&self.lock().requests) {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(req: tiny_http::Request, code: u16, body: &Value) {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("valid");
    let _ = req.respond(tiny_http::Response::from_string(body.to_string()).with_status_code(code).with_header(header));
}

fn handle(mut req: tiny_http::Request, shared: &Arc<(Mutex<State>, Condvar)>, stop: &AtomicBool) {
    let mut body = String::new();
    let _ = req.as_reader().read_to_string(&mut body);
    let (path, query) = req.url().split_once('?').unwrap_or((req.url(), ""));
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/")))
        .collect();
    let header = |name: &str| {
        req.headers().iter().find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name)).map(|h| h.value.to_string())
    };
    let rec = Recorded {
        method: req.method().to_string(),
        path: path.to_owned(),
        query,
        content_type: header("Content-Type"),
        authorization: header("Authorization"),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    };
    let lock = || shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    lock().requests.push(rec.clone());
    let segments: Vec<&str> = rec.path.trim_start_matches('/').split('/').collect();
    match (rec.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "nodes"]) if rec.is_watch() => watch(req, &rec, shared, stop),
        ("GET", ["api", "v1", "nodes"]) => {
            let s = lock();
            let items: Vec<Value> = s.nodes.values().cloned().collect();
            let list = json!({"kind": "NodeList", "apiVersion": "v1",
                              "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
            drop(s);
            respond(req, 200, &list);
        }
        ("GET", ["api", "v1", "nodes", name]) => match lock().nodes.get(*name).cloned() {
            Some(n) => respond(req, 200, &n),
            None => respond(req, 404, &status(404, "NotFound", &format!("nodes \"{name}\" not found"))),
        },
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            match lock().pods.get(&((*ns).to_owned(), (*name).to_owned())).cloned() {
                Some(p) => respond(req, 200, &p),
                None => respond(req, 404, &status(404, "NotFound", &format!("pods \"{name}\" not found"))),
            }
        }
        ("PATCH", ["api", "v1", "nodes", name, "status"]) => {
            if rec.content_type.as_deref() != Some("application/strategic-merge-patch+json") {
                let msg = format!("the body of the request was in an unknown format: {:?}", rec.content_type);
                return respond(req, 415, &status(415, "UnsupportedMediaType", &msg));
            }
            let mut s = lock();
            if !s.nodes.contains_key(*name) {
                drop(s);
                return respond(req, 404, &status(404, "NotFound", &format!("nodes \"{name}\" not found")));
            }
            s.modify_node(name, |n| strategic_merge(n, &rec.body));
            let node = s.node(name);
            drop(s);
            shared.1.notify_all();
            respond(req, 200, &node);
        }
        _ => respond(req, 404, &status(404, "NotFound", "the server could not find the requested resource")),
    }
}

/// The part of a strategic merge a Node status patch uses: maps merge (null deletes),
/// `status.conditions` merge by `type`.
fn strategic_merge(node: &mut Value, patch: &Value) {
    if let Some(ann) = patch["metadata"]["annotations"].as_object() {
        let target = &mut node["metadata"]["annotations"];
        if !target.is_object() {
            *target = json!({});
        }
        for (k, v) in ann {
            let map = target.as_object_mut().expect("object");
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    for c in patch["status"]["conditions"].as_array().into_iter().flatten() {
        let list = &mut node["status"]["conditions"];
        if !list.is_array() {
            *list = json!([]);
        }
        let list = list.as_array_mut().expect("array");
        match list.iter_mut().find(|o| o["type"] == c["type"]) {
            Some(o) => o.as_object_mut().expect("object").extend(c.as_object().expect("object").clone()),
            None => list.push(c.clone()),
        }
    }
}

fn watch(req: tiny_http::Request, rec: &Recorded, shared: &Arc<(Mutex<State>, Condvar)>, stop: &AtomicBool) {
    let from: u64 = rec.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = rec.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let expired = from < s.oldest;
    let message = format!("too old resource version: {from} ({})", s.oldest);
    if expired && s.gone == Gone::Http {
        drop(s);
        return respond(req, 410, &status(410, "Expired", &message));
    }
    let generation = s.generation;
    drop(s);
    let mut w = req.into_writer();
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let send = |w: &mut Box<dyn Write + Send>, line: &Value| -> std::io::Result<()> {
        let line = format!("{line}\n");
        write!(w, "{:x}\r\n{line}\r\n", line.len())?;
        w.flush()
    };
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    if expired {
        let _ = send(&mut w, &json!({"type": "ERROR", "object": status(410, "Expired", &message)}));
        let _ = w.write_all(b"0\r\n\r\n");
        return;
    }
    let mut cursor = from;
    loop {
        let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if stop.load(Ordering::Relaxed) || s.generation != generation {
            break;
        }
        let out: Vec<Value> = s
            .log
            .iter()
            .filter(|(rv, kind, _)| *rv > cursor && (bookmarks || *kind != "BOOKMARK"))
            .map(|(_, kind, obj)| json!({"type": kind, "object": obj}))
            .collect();
        cursor = s.rv;
        if out.is_empty() {
            let _ = shared.1.wait_timeout(s, Duration::from_millis(200));
            continue;
        }
        drop(s);
        if out.iter().any(|line| send(&mut w, line).is_err()) {
            return;
        }
    }
    let _ = w.write_all(b"0\r\n\r\n");
    let _ = w.flush();
}
