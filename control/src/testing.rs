//! Test support (feature `testing`): an in-process API server speaking the real list/watch
//! protocol over HTTP with real
//! Kubernetes JSON: lists with `resourceVersion` and `limit`/`continue` pages, watches from a
//! resourceVersion as chunked JSON lines (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when the
//! client allows them, `ERROR` with a `410 Expired` Status once the history it asks for is
//! compacted), `404` with a Status for resources it does not serve (an absent CRD). Tests drive
//! it: create, replace, delete, send bookmarks, compact history, cut every watch.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// `/version`'s answer.
const VERSION: &str =
    r#"{"major":"1","minor":"31","gitVersion":"v1.31.2","platform":"linux/amd64"}"#;

/// A resource the server serves.
#[derive(Clone, Debug)]
struct Resource {
    api_version: String,
    kind: String,
}

#[derive(Clone, Debug)]
struct StoredEvent {
    rv: u64,
    path: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// By collection path, then (namespace, name).
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    resources: BTreeMap<String, Resource>,
    events: Vec<StoredEvent>,
    /// Watches from a resourceVersion below this get 410.
    compacted_below: u64,
    /// Requests served, as `list PATH` / `watch PATH rv=N`.
    log: Vec<String>,
    /// TokenReview answers: token -> (username, bound pod name, audiences).
    /// Token → (username, bound pod, audiences, authenticated whatever audience is asked).
    tokens: BTreeMap<String, (String, Option<String>, Vec<String>, bool)>,
    /// Pods' container logs: (namespace, pod, container) -> lines.
    logs: BTreeMap<(String, String, String), Vec<String>>,
}

/// The server; cheap to clone.
#[derive(Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, bookmark request or cut.
    tick: Arc<watch::Sender<Tick>>,
    /// Where it listens.
    pub addr: SocketAddr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tick {
    seq: u64,
    cut: u64,
    bookmark: u64,
}

fn collection_path(api_version: &str, plural: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

type Body = BoxBody<Bytes, Infallible>;

/// Where a request below a collection goes.
struct Route {
    collection: String,
    resource: Resource,
    /// Empty for cluster-scoped kinds.
    namespace: String,
    name: Option<String>,
    status: bool,
    /// `log` for a pod's log.
    log: bool,
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// `%XX` decoded (label selectors arrive encoded).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an object's labels satisfy a selector of `key=value`, `key!=value` and `key`
/// terms (all the fake needs).
fn matches_labels(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim().trim_start_matches('='))
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

impl FakeApiServer {
    /// Starts serving on 127.0.0.1.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = FakeApiServer {
            state: Arc::new(Mutex::new(State {
                rv: 100,
                ..State::default()
            })),
            tick: Arc::new(watch::channel(Tick::default()).0),
            addr,
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    /// The URL a kube client uses.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, f: impl FnOnce(&mut Tick)) {
        self.tick.send_modify(|t| {
            t.seq += 1;
            f(t)
        });
    }

    /// Serves a resource (a built-in kind, or a CRD once "installed").
    pub fn serve(&self, api_version: &str, kind: &str, plural: &str) {
        let path = collection_path(api_version, plural);
        let mut st = self.lock();
        st.resources.insert(
            path.clone(),
            Resource {
                api_version: api_version.into(),
                kind: kind.into(),
            },
        );
        st.objects.entry(path).or_default();
    }

    /// The built-in kinds podwall watches.
    pub fn serve_builtins(&self) {
        self.serve("v1", "Namespace", "namespaces");
        self.serve("v1", "Pod", "pods");
        self.serve("v1", "Service", "services");
        self.serve("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies");
        self.serve("discovery.k8s.io/v1", "EndpointSlice", "endpointslices");
    }

    fn path_of(st: &State, object: &Value) -> String {
        let av = object["apiVersion"].as_str().expect("apiVersion");
        let kind = object["kind"].as_str().expect("kind");
        st.resources
            .iter()
            .find(|(_, r)| r.api_version == av && r.kind == kind)
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| panic!("{av} {kind} is not served"))
    }

    /// Creates or replaces an object (as `kubectl apply` would); returns its resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let rv = {
            let mut st = self.lock();
            let path = Self::path_of(&st, &object);
            st.rv += 1;
            let rv = st.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let key = (
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                object["metadata"]["name"]
                    .as_str()
                    .expect("name")
                    .to_string(),
            );
            let existed = st
                .objects
                .get_mut(&path)
                .expect("served")
                .insert(key, object.clone())
                .is_some();
            st.events.push(StoredEvent {
                rv,
                path,
                kind: if existed { "MODIFIED" } else { "ADDED" },
                object,
            });
            rv
        };
        self.bump(|_| {});
        rv
    }

    /// Takes an object out; its path, the new resourceVersion and the object.
    fn take(
        st: &mut State,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> (String, u64, Value) {
        let path = Self::path_of(st, &json!({"apiVersion": api_version, "kind": kind}));
        st.rv += 1;
        let object = st
            .objects
            .get_mut(&path)
            .expect("served")
            .remove(&(namespace.to_string(), name.to_string()))
            .expect("the object exists");
        (path, st.rv, object)
    }

    /// Deletes an object.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        {
            let mut st = self.lock();
            let (path, rv, mut object) = Self::take(&mut st, api_version, kind, namespace, name);
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.events.push(StoredEvent {
                rv,
                path,
                kind: "DELETED",
                object,
            });
        }
        self.bump(|_| {});
    }

    /// Deletes an object while no watch sees it, and the history with it (a control plane that
    /// was disconnected past the API server's compaction): only a relist can tell.
    pub fn delete_unseen(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        {
            let mut st = self.lock();
            Self::take(&mut st, api_version, kind, namespace, name);
            Self::forget_history(&mut st);
        }
        self.cut_watches();
    }

    fn forget_history(st: &mut State) {
        st.compacted_below = st.rv + 1;
        st.events.clear();
    }

    /// Forgets the change history: a watch resuming from before now gets `410 Gone`.
    pub fn compact(&self) {
        Self::forget_history(&mut self.lock());
    }

    /// The events of `path` after `rv`, and the current resourceVersion, read together.
    fn events_after(&self, path: &str, rv: u64) -> (Vec<StoredEvent>, u64) {
        let st = self.lock();
        let events = st
            .events
            .iter()
            .filter(|e| e.rv > rv && e.path == path)
            .cloned()
            .collect();
        (events, st.rv)
    }

    /// Ends every open watch (as an API server restart or a watch timeout would).
    pub fn cut_watches(&self) {
        self.bump(|t| t.cut += 1);
    }

    /// Sends a bookmark with the current resourceVersion on every watch that allows them.
    pub fn bookmark(&self) {
        self.bump(|t| t.bookmark += 1);
    }

    /// The requests served so far.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Makes TokenReview accept `token` as `username` (bound to `pod`) for `audiences`.
    pub fn token(&self, token: &str, username: &str, pod: Option<&str>, audiences: &[&str]) {
        self.insert_token(token, username, pod, audiences, false);
    }

    /// Makes TokenReview accept `token` whatever audience is asked, answering with the token's
    /// own `audiences`, as an authenticator that ignores audiences does: the reviewer must
    /// check them itself.
    pub fn token_for_any_audience(
        &self,
        token: &str,
        username: &str,
        pod: Option<&str>,
        audiences: &[&str],
    ) {
        self.insert_token(token, username, pod, audiences, true);
    }

    fn insert_token(
        &self,
        token: &str,
        username: &str,
        pod: Option<&str>,
        audiences: &[&str],
        any_audience: bool,
    ) {
        self.lock().tokens.insert(
            token.into(),
            (
                username.into(),
                pod.map(str::to_string),
                audiences.iter().map(|a| a.to_string()).collect(),
                any_audience,
            ),
        );
    }

    /// A TokenReview create, answered as the API server does.
    async fn token_review(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json_response(400, &status(400, "BadRequest", "unreadable body")),
        };
        let review: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return json_response(400, &status(400, "BadRequest", &e.to_string())),
        };
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut st = self.lock();
        st.log.push("create tokenreviews".into());
        let status = match st.tokens.get(token) {
            Some((user, pod, audiences, any))
                if *any || asked.iter().any(|a| audiences.contains(a)) =>
            {
                let mut extra = json!({});
                if let Some(p) = pod {
                    extra["authentication.kubernetes.io/pod-name"] = json!([p]);
                }
                let granted = if *any { audiences } else { &asked };
                json!({"authenticated": true, "audiences": granted,
                    "user": {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts"], "extra": extra}})
            }
            Some(_) => {
                json!({"authenticated": false, "error": "token audiences is invalid for the target audiences"})
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut out = review.clone();
        out["status"] = status;
        json_response(201, &out)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if req.method() == hyper::Method::POST
            && path == "/apis/authentication.k8s.io/v1/tokenreviews"
        {
            return self.token_review(req).await;
        }
        if path == "/version" {
            return json_response(200, &serde_json::from_str(VERSION).unwrap_or_default());
        }
        if path == "/apis" {
            // Discovery: the groups of the served kinds.
            let st = self.lock();
            let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for r in st.resources.values() {
                if let Some((group, version)) = r.api_version.split_once('/') {
                    let versions = groups.entry(group.to_string()).or_default();
                    if !versions.contains(&version.to_string()) {
                        versions.push(version.to_string());
                    }
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(name, versions)| {
                    let vs: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                        .collect();
                    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
                })
                .collect();
            return json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(route) = self.route(&path) {
            return self.object_request(req, route, &query).await;
        }
        let st = self.lock();
        let Some(resource) = st.resources.get(&path).cloned() else {
            drop(st);
            self.lock().log.push(format!("404 {path}"));
            return json_response(
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        };
        drop(st);
        if query.get("watch").map(String::as_str) == Some("true") {
            self.watch(path, &resource, &query)
        } else {
            self.list(path, &resource, &query)
        }
    }

    /// A path below a served collection: a namespace's collection, an object, or its status.
    fn route(&self, path: &str) -> Option<Route> {
        let st = self.lock();
        // `/api/v1/namespaces/NS/PLURAL[/NAME[/status]]` first: the Namespace collection's own
        // object paths (`/api/v1/namespaces/NAME`) would also match below.
        for (collection, resource) in &st.resources {
            let (prefix, plural) = collection.rsplit_once('/')?;
            if let Some(rest) = path.strip_prefix(&format!("{prefix}/namespaces/")) {
                let parts: Vec<&str> = rest.split('/').collect();
                if parts.len() >= 2 && parts[1] == plural && parts.len() <= 4 {
                    return Some(Route {
                        collection: collection.clone(),
                        resource: resource.clone(),
                        namespace: parts[0].to_string(),
                        name: parts.get(2).map(|n| n.to_string()),
                        status: parts.get(3) == Some(&"status"),
                        log: parts.get(3) == Some(&"log"),
                    });
                }
            }
        }
        for (collection, resource) in &st.resources {
            if let Some(rest) = path.strip_prefix(&format!("{collection}/")) {
                let parts: Vec<&str> = rest.split('/').collect();
                if parts.len() <= 2 {
                    return Some(Route {
                        collection: collection.clone(),
                        resource: resource.clone(),
                        namespace: String::new(),
                        name: Some(parts[0].to_string()),
                        status: parts.get(1) == Some(&"status"),
                        log: false,
                    });
                }
            }
        }
        None
    }

    /// GET, POST (create), PUT (replace, with optimistic concurrency), PATCH (merge patch, of
    /// the object or its status) and DELETE, as the API server answers them.
    async fn object_request(
        &self,
        req: Request<Incoming>,
        route: Route,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let method = req.method().clone();
        let is_put = method == hyper::Method::PUT;
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return json_response(400, &status(400, "BadRequest", "unreadable body")),
        };
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let verb = method.as_str().to_lowercase();
        let what = match &route.name {
            Some(n) => format!("{} {}/{n}", route.resource.kind, route.namespace),
            None => format!("{} {}", route.resource.kind, route.namespace),
        };
        self.lock().log.push(format!(
            "{verb} {what}{}",
            if route.status { " status" } else { "" }
        ));
        let not_found =
            || json_response(404, &status(404, "NotFound", &format!("{what} not found")));
        match (method, route.name.clone()) {
            (hyper::Method::GET, Some(name)) if route.log => {
                self.log_response(&route.namespace, &name, query)
            }
            (hyper::Method::GET, None) => {
                let selector = query.get("labelSelector").map(|s| percent_decode(s));
                let st = self.lock();
                let items: Vec<Value> = st.objects[&route.collection]
                    .iter()
                    .filter(|((ns, _), _)| *ns == route.namespace)
                    .map(|(_, o)| o.clone())
                    .filter(|o| selector.as_deref().is_none_or(|s| matches_labels(o, s)))
                    .collect();
                json_response(
                    200,
                    &json!({"kind": format!("{}List", route.resource.kind),
                        "apiVersion": route.resource.api_version,
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            (hyper::Method::GET, Some(name)) => {
                let st = self.lock();
                match st.objects[&route.collection].get(&(route.namespace.clone(), name)) {
                    Some(o) => json_response(200, o),
                    None => not_found(),
                }
            }
            (hyper::Method::POST, None) => {
                let Some(mut object) = parsed else {
                    return json_response(400, &status(400, "BadRequest", "not JSON"));
                };
                let name = match object["metadata"]["name"].as_str() {
                    Some(n) => n.to_string(),
                    None => match object["metadata"]["generateName"].as_str() {
                        Some(prefix) => format!("{prefix}{}", self.resource_version() + 1),
                        None => {
                            return json_response(
                                422,
                                &status(422, "Invalid", "metadata.name: Required value"),
                            );
                        }
                    },
                };
                object["metadata"]["name"] = json!(name);
                if !route.namespace.is_empty() {
                    object["metadata"]["namespace"] = json!(route.namespace);
                }
                object["apiVersion"] = json!(route.resource.api_version);
                object["kind"] = json!(route.resource.kind);
                let exists = self.lock().objects[&route.collection]
                    .contains_key(&(route.namespace.clone(), name.clone()));
                if exists {
                    return json_response(
                        409,
                        &status(
                            409,
                            "AlreadyExists",
                            &format!("{what} {name} already exists"),
                        ),
                    );
                }
                object["metadata"]["uid"] = json!(format!("uid-{name}"));
                object["metadata"]["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
                let rv = self.apply(object.clone());
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                json_response(201, &object)
            }
            (hyper::Method::PUT | hyper::Method::PATCH, Some(name)) => {
                let Some(sent) = parsed else {
                    return json_response(400, &status(400, "BadRequest", "not JSON"));
                };
                let Some(current) = self.lock().objects[&route.collection]
                    .get(&(route.namespace.clone(), name.clone()))
                    .cloned()
                else {
                    return not_found();
                };
                let mut object = current.clone();
                if is_put {
                    if let Some(rv) = sent["metadata"]["resourceVersion"].as_str()
                        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
                    {
                        return json_response(
                            409,
                            &status(
                                409,
                                "Conflict",
                                &format!(
                                    "Operation cannot be fulfilled on {what}: the object has been modified; please apply your changes to the latest version and try again"
                                ),
                            ),
                        );
                    }
                    if route.status {
                        object["status"] = sent["status"].clone();
                    } else {
                        object = sent;
                        object["status"] = current["status"].clone();
                    }
                } else if route.status {
                    merge(&mut object["status"], &sent["status"]);
                } else {
                    merge(&mut object, &sent);
                    object["status"] = current["status"].clone();
                }
                object["metadata"]["uid"] = current["metadata"]["uid"].clone();
                let rv = self.apply(object.clone());
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                json_response(200, &object)
            }
            (hyper::Method::DELETE, Some(name)) => {
                let exists = self.lock().objects[&route.collection]
                    .contains_key(&(route.namespace.clone(), name.clone()));
                if !exists {
                    return not_found();
                }
                self.delete(
                    &route.resource.api_version,
                    &route.resource.kind,
                    &route.namespace,
                    &name,
                );
                json_response(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            _ => json_response(405, &status(405, "MethodNotAllowed", "not served")),
        }
    }

    /// Appends a line to a pod container's log (what `GET .../pods/NAME/log` serves, and
    /// streams to followers).
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str, line: &str) {
        self.lock()
            .logs
            .entry((namespace.into(), pod.into(), container.into()))
            .or_default()
            .push(line.to_string());
        self.bump(|_| {});
    }

    /// A pod's log: the lines so far, and with `follow=true` the lines appended later, until
    /// the watches are cut.
    fn log_response(
        &self,
        namespace: &str,
        pod: &str,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let exists = {
            let st = self.lock();
            st.objects
                .get("/api/v1/pods")
                .is_some_and(|o| o.contains_key(&(namespace.to_string(), pod.to_string())))
        };
        if !exists {
            return json_response(
                404,
                &status(404, "NotFound", &format!("pods \"{pod}\" not found")),
            );
        }
        let container = query.get("container").cloned().unwrap_or_default();
        let key = (namespace.to_string(), pod.to_string(), container);
        let follow = query.get("follow").map(String::as_str) == Some("true");
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let server = self.clone();
        tokio::spawn(async move {
            let mut ticks = server.tick.subscribe();
            let start = *ticks.borrow_and_update();
            let mut sent = 0;
            loop {
                let lines: Vec<String> = server
                    .lock()
                    .logs
                    .get(&key)
                    .map(|l| l[sent.min(l.len())..].to_vec())
                    .unwrap_or_default();
                for line in lines {
                    sent += 1;
                    if tx
                        .send(Ok(Frame::data(Bytes::from(format!("{line}\n")))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if !follow || ticks.changed().await.is_err() {
                    return;
                }
                if ticks.borrow_and_update().cut != start.cut {
                    return;
                }
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("response")
    }

    /// Objects of a kind, for assertions.
    pub fn objects(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let st = self.lock();
        let path = Self::path_of(&st, &json!({"apiVersion": api_version, "kind": kind}));
        st.objects[&path].values().cloned().collect()
    }

    fn list(
        &self,
        path: String,
        resource: &Resource,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let mut st = self.lock();
        st.log.push(format!("list {path}"));
        let selector = query.get("labelSelector").map(|s| percent_decode(s));
        let all: Vec<Value> = st.objects[&path]
            .values()
            .filter(|o| selector.as_deref().is_none_or(|s| matches_labels(o, s)))
            .cloned()
            .collect();
        let start: usize = query
            .get("continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(all.len());
        let mut meta = json!({"resourceVersion": st.rv.to_string()});
        if end < all.len() {
            meta["continue"] = json!(end.to_string());
        }
        // Real lists leave kind and apiVersion off their items.
        let items: Vec<Value> = all[start..end]
            .iter()
            .map(|o| {
                let mut o = o.clone();
                if let Some(m) = o.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        json_response(
            200,
            &json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version,
                "metadata": meta, "items": items}),
        )
    }

    fn watch(
        &self,
        path: String,
        resource: &Resource,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
        let expired = {
            let mut st = self.lock();
            st.log.push(format!("watch {path} rv={from}"));
            from < st.compacted_below
        };
        let server = self.clone();
        let kind = resource.kind.clone();
        let api_version = resource.api_version.clone();
        tokio::spawn(async move {
            if expired {
                let _ = tx
                    .send(line(json!({"type": "ERROR",
                        "object": status(410, "Expired", &format!("too old resource version: {from}"))})))
                    .await;
                return;
            }
            let mut ticks = server.tick.subscribe();
            let start = *ticks.borrow_and_update();
            let mut sent = from;
            let mut seen_bookmark = start.bookmark;
            let mut bookmark_due = false;
            let mut cut = false;
            loop {
                // Events first, so that a bookmark never overtakes one.
                let (pending, rv) = server.events_after(&path, sent);
                for e in pending {
                    sent = e.rv;
                    if tx
                        .send(line(json!({"type": e.kind, "object": e.object})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if bookmark_due {
                    bookmark_due = false;
                    sent = sent.max(rv);
                    let _ = tx
                        .send(line(json!({"type": "BOOKMARK", "object": {"kind": kind,
                            "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}})))
                        .await;
                }
                if cut || ticks.changed().await.is_err() {
                    return;
                }
                let now = *ticks.borrow_and_update();
                if bookmarks && now.bookmark != seen_bookmark {
                    seen_bookmark = now.bookmark;
                    bookmark_due = true;
                }
                // A cut ends the stream after what was asked for before it (events, a
                // bookmark), as a server closes a stream it has written.
                cut = now.cut != start.cut;
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("response")
    }
}
