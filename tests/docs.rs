//! Every command in docs/ and README.md, run as written, in the order a reader meets them.
//!
//! - `podwall` runs for real, in a directory holding the files the docs name
//!   (tests/fixtures/docs: `cluster-state.yaml`, `policies/`, `deploy.yaml`, ...), with a
//!   kubeconfig pointing at an in-process API server that holds the installed chart and the
//!   docs' `shop` namespace;
//! - `helm install|upgrade` renders the chart with exactly the command's `--set` and
//!   `--set-json` values (Helm's library, the values schema, every template);
//! - `kubectl` is played against those objects: what it reads, patches or labels must exist
//!   (kind, name, namespace, container, port, label key, jsonpath), what it writes must be
//!   what the API server takes; `kubectl logs | grep` must find the message in the
//!   component's own log statements;
//! - `grep`, `head`, `base64` run for real; `curl` to the port-forwarded control plane gets
//!   its metrics when scheme and port are what the chart serves.
//!
//! A program this test does not know fails it: a new command in the docs needs a way to run.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use podwall_control::testing::FakeApiServer;
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A fenced `sh` block: where it is and what it says.
struct Block {
    file: String,
    line: usize,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut files: Vec<PathBuf> = vec![Path::new(ROOT).join("README.md")];
    // The order a reader follows (docs/README.md), then anything else.
    let index = std::fs::read_to_string(Path::new(ROOT).join("docs/README.md")).expect("index");
    let linked: Vec<String> = regex::Regex::new(r"\]\(([a-z-]+\.md)\)")
        .expect("regex")
        .captures_iter(&index)
        .map(|c| c[1].to_string())
        .collect();
    for name in &linked {
        files.push(Path::new(ROOT).join("docs").join(name));
    }
    let mut rest: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter(|p| !files.contains(p) && !p.ends_with("README.md"))
        .collect();
    rest.sort();
    files.extend(rest);
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("doc");
        let mut current: Option<Block> = None;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            match &mut current {
                None if trimmed == "```sh" => {
                    current = Some(Block {
                        file: path
                            .strip_prefix(ROOT)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                        line: i + 2,
                        text: String::new(),
                    })
                }
                Some(_) if trimmed == "```" => out.extend(current.take()),
                Some(b) => {
                    b.text.push_str(trimmed);
                    b.text.push('\n');
                }
                None => {}
            }
        }
    }
    out
}

/// One stage of a pipeline: its words.
type Stage = Vec<String>;

/// A pipeline as written: stages, where its output goes, whether it runs in the background.
#[derive(Debug)]
struct Pipeline {
    stages: Vec<Stage>,
    redirect: Option<String>,
    background: bool,
}

/// Splits a script into pipelines: quotes (single and double) and backslash escapes as sh
/// reads them, `#` comments, `\` line continuations, `|`, `&&`, `;`, `&` and `>`.
fn pipelines(script: &str) -> Vec<Pipeline> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let mut words: Vec<(String, bool)> = Vec::new(); // (word, is operator)
        let mut word = String::new();
        let mut in_word = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    in_word = true;
                    for q in chars.by_ref() {
                        if q == '\'' {
                            break;
                        }
                        word.push(q);
                    }
                }
                '"' => {
                    in_word = true;
                    while let Some(q) = chars.next() {
                        match q {
                            '"' => break,
                            '\\' => word.extend(chars.next()),
                            q => word.push(q),
                        }
                    }
                }
                '\\' => {
                    in_word = true;
                    word.extend(chars.next());
                }
                '#' if !in_word => break,
                ' ' | '\t' => {
                    if in_word {
                        words.push((std::mem::take(&mut word), false));
                        in_word = false;
                    }
                }
                '|' | '&' | ';' | '>' => {
                    if in_word {
                        words.push((std::mem::take(&mut word), false));
                        in_word = false;
                    }
                    let op = if c == '&' && chars.peek() == Some(&'&') {
                        chars.next();
                        "&&".to_string()
                    } else {
                        c.to_string()
                    };
                    words.push((op, true));
                }
                c => {
                    in_word = true;
                    word.push(c);
                }
            }
        }
        if in_word {
            words.push((word, false));
        }
        let mut current = Pipeline {
            stages: vec![Vec::new()],
            redirect: None,
            background: false,
        };
        let mut iter = words.into_iter();
        while let Some((w, op)) = iter.next() {
            if !op {
                current.stages.last_mut().expect("stage").push(w);
                continue;
            }
            match w.as_str() {
                "|" => current.stages.push(Vec::new()),
                ">" => current.redirect = iter.next().map(|(w, _)| w),
                "&" => current.background = true,
                _ => {
                    // && and ;
                    out.push(std::mem::replace(
                        &mut current,
                        Pipeline {
                            stages: vec![Vec::new()],
                            redirect: None,
                            background: false,
                        },
                    ));
                }
            }
        }
        out.push(current);
    }
    out.retain(|p| p.stages.iter().any(|s| !s.is_empty()));
    out
}

#[test]
fn the_shell_reader_splits_as_sh_does() {
    let p = pipelines(
        "kubectl -n x get cm a -o jsonpath='{.data.inject\\.yaml}' > inject.yaml\nhelm install p ./c \\\n  --set a=b # comment\ncurl -sk https://h/m | grep x &\n",
    );
    assert_eq!(p.len(), 3, "{p:?}");
    assert_eq!(p[0].stages[0][7], "jsonpath={.data.inject\\.yaml}");
    assert_eq!(p[0].redirect.as_deref(), Some("inject.yaml"));
    assert_eq!(
        p[1].stages[0],
        ["helm", "install", "p", "./c", "--set", "a=b"]
    );
    assert_eq!(p[2].stages.len(), 2);
    assert!(p[2].background);
}

/// The world the commands run in.
struct World {
    dir: tempfile::TempDir,
    api: FakeApiServer,
    kubeconfig: PathBuf,
    /// The objects kubectl sees: the installed chart, the docs' namespace and workloads.
    objects: Vec<Value>,
    /// The chart as last installed.
    chart: Vec<Value>,
    /// Ports forwarded with `kubectl port-forward` (local port -> the object's container).
    forwarded: BTreeMap<u16, Value>,
    /// The flow events in shop/web's sidecar log.
    log: Vec<String>,
    /// How many times a following command had them written again (an hour later each time).
    relogged: std::cell::Cell<u32>,
}

fn render(values: &Value) -> Result<Vec<Value>, String> {
    let out = Command::new("python3")
        .arg(Path::new(ROOT).join("helm/render.py"))
        .arg(Path::new(ROOT).join("helm/podwall"))
        .arg("podwall-system")
        .arg("--set-json")
        .arg(values.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    }
}

/// A kubectl resource name as written (`deploy`, `pwp`, `cm`) as a kind.
fn kind_of(resource: &str, chart: &[Value]) -> Result<String, String> {
    let r = resource.to_lowercase();
    let kind = match r.trim_end_matches('s') {
        "deploy" | "deployment" => "Deployment",
        "po" | "pod" => "Pod",
        "cm" | "configmap" => "ConfigMap",
        "secret" => "Secret",
        "n" | "namespace" | "ns" => "Namespace",
        "svc" | "service" => "Service",
        "node" => "Node",
        "certificate" => "Certificate",
        "mutatingwebhookconfiguration" => "MutatingWebhookConfiguration",
        "ciliumnetworkpolicy" | "cnp" => "CiliumNetworkPolicy",
        "networkpolicy" | "netpol" => "NetworkPolicy",
        "crd" => "CustomResourceDefinition",
        _ => {
            // A CRD's names, as the API server's discovery offers them.
            return chart
                .iter()
                .filter(|o| o["kind"] == "CustomResourceDefinition")
                .find_map(|crd| {
                    let names = &crd["spec"]["names"];
                    let all: Vec<String> = ["kind", "plural", "singular"]
                        .iter()
                        .filter_map(|k| names[k].as_str().map(str::to_lowercase))
                        .chain(
                            names["shortNames"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s.as_str().map(str::to_string)),
                        )
                        .collect();
                    all.contains(&r)
                        .then(|| names["kind"].as_str().unwrap_or_default().to_string())
                })
                .ok_or_else(|| format!("kubectl does not know the resource {resource:?}"));
        }
    };
    Ok(kind.to_string())
}

/// `{.a.b\.c}` and `{.items[0].x}` against a value.
fn jsonpath(v: &Value, expr: &str) -> Result<String, String> {
    let inner = expr
        .strip_prefix('{')
        .and_then(|e| e.strip_suffix('}'))
        .ok_or_else(|| format!("jsonpath {expr:?}"))?;
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.trim_start_matches('.').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            '.' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    let mut at = v.clone();
    for p in parts {
        let (key, index) = match p.split_once('[') {
            Some((k, i)) => (
                k.to_string(),
                Some(
                    i.trim_end_matches(']')
                        .parse::<usize>()
                        .map_err(|e| e.to_string())?,
                ),
            ),
            None => (p.clone(), None),
        };
        at = at
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("no {key:?} in {expr}"))?;
        if let Some(i) = index {
            at = at
                .get(i)
                .cloned()
                .ok_or_else(|| format!("no [{i}] in {expr}"))?;
        }
    }
    Ok(match at {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The message (last string literal) of every `tracing::` call under `dirs`.
fn log_messages(dirs: &[&str]) -> Vec<String> {
    let call = regex::Regex::new(r"tracing::(?:info|warn|error|debug)!\(").expect("regex");
    let literal = regex::Regex::new(r#""((?:[^"\\]|\\.)*)""#).expect("regex");
    let mut out = Vec::new();
    for dir in dirs {
        let path = Path::new(ROOT).join(dir);
        let files: Vec<PathBuf> = if path.is_dir() {
            walk(&path)
        } else {
            vec![path]
        };
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            for m in call.find_iter(&text) {
                // The call's arguments: up to the parenthesis that closes it.
                let mut depth = 1;
                let mut end = m.end();
                for (i, c) in text[m.end()..].char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = m.end() + i;
                        break;
                    }
                }
                if let Some(last) = literal.captures_iter(&text[m.end()..end]).last() {
                    out.push(last[1].to_string());
                }
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    if let Some(t) = target.as_object_mut() {
                        t.remove(k);
                    }
                } else {
                    merge(&mut target[k], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// `--set a.b=c` and `--set-json 'a.b={...}'` as values.
fn set_value(values: &mut Value, path: &str, v: Value) {
    let mut at = values;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        if !at[*p].is_object() {
            at[*p] = json!({});
        }
        at = &mut at[*p];
    }
    at[parts[parts.len() - 1]] = v;
}

impl World {
    fn find(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<Value, String> {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"] == name
                    && namespace.is_none_or(|n| o["metadata"]["namespace"] == n)
            })
            .cloned()
            .ok_or_else(|| format!("no {kind} {}/{name}", namespace.unwrap_or("")))
    }

    fn inject_config(&self) -> podwall_control::inject::InjectConfig {
        let cm = self
            .chart
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["data"]["inject.yaml"].is_string())
            .expect("the chart's injection config");
        serde_saphyr::from_str(cm["data"]["inject.yaml"].as_str().expect("yaml")).expect("config")
    }

    /// Pods of a Deployment as the webhook creates them.
    fn pods_of(&self, deployment: &Value) -> Result<Vec<Value>, String> {
        let mut template = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": deployment["spec"]["template"]["metadata"].clone(),
            "spec": deployment["spec"]["template"]["spec"].clone()});
        let asks = template["metadata"]["annotations"]["podwall.io/inject"] == "enabled";
        if asks {
            let mut cfg = self.inject_config();
            cfg.control_plane_ca = Some("CA".into());
            podwall_control::inject::inject_object(&mut template, &cfg).map_err(|e| {
                format!(
                    "the webhook refuses the pods of {}: {e}",
                    deployment["metadata"]["name"]
                )
            })?;
        }
        let name = deployment["metadata"]["name"].as_str().unwrap_or("x");
        Ok((0..deployment["spec"]["replicas"].as_u64().unwrap_or(1))
            .map(|i| {
                let mut p = template.clone();
                p["metadata"]["name"] = json!(format!("{name}-7d9c-{i}"));
                p["metadata"]["namespace"] = deployment["metadata"]["namespace"].clone();
                p
            })
            .collect())
    }

    fn install(&mut self, values: &Value) -> Result<(), String> {
        let chart = render(values)?;
        self.objects
            .retain(|o| o["metadata"]["namespace"] != "podwall-system");
        self.objects.retain(|o| {
            o["kind"] != "CustomResourceDefinition" && o["kind"] != "MutatingWebhookConfiguration"
        });
        for o in &chart {
            let mut o = o.clone();
            if o["kind"] == "Deployment" {
                o["status"]["readyReplicas"] = o["spec"]["replicas"].clone();
            }
            self.objects.push(o);
        }
        // cert-manager's part: the Secrets the Certificates name, with the CA injected
        // sidecars get.
        let ca = std::fs::read(Path::new(ROOT).join("tests/fixtures/inject/ca.crt")).expect("ca");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&ca);
        for cert in chart.iter().filter(|o| o["kind"] == "Certificate") {
            self.objects
                .push(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": cert["spec"]["secretName"], "namespace": "podwall-system"},
                "data": {"ca.crt": b64, "tls.crt": b64, "tls.key": ""}}));
        }
        for o in &chart {
            serve(&self.api, o);
            self.api.apply(o.clone());
        }
        self.chart = chart;
        Ok(())
    }

    fn run(&mut self, pipeline: &Pipeline) -> Result<(), String> {
        let mut input: Vec<u8> = Vec::new();
        let last = pipeline.stages.len() - 1;
        for (i, stage) in pipeline.stages.iter().enumerate() {
            let (code, out) = self.stage(stage, &input)?;
            // Only a pipeline's last status counts in sh; a grep in the middle finding nothing
            // would still starve the rest.
            let tolerated = match stage[0].as_str() {
                "podwall" => {
                    matches!(
                        (
                            stage.get(1).map(String::as_str),
                            stage.get(2).map(String::as_str)
                        ),
                        (Some("analyze"), Some("check" | "lint")) | (Some("check"), _)
                    ) && code == 1
                }
                _ => false,
            };
            if code != 0 && !tolerated {
                return Err(format!(
                    "{stage:?} exited {code}: {}",
                    String::from_utf8_lossy(&out)
                ));
            }
            if i == last
                && let Some(file) = &pipeline.redirect
            {
                std::fs::write(self.dir.path().join(file), &out).map_err(|e| e.to_string())?;
            }
            input = out;
        }
        Ok(())
    }

    /// Runs one command; its status and output.
    fn stage(&mut self, words: &[String], input: &[u8]) -> Result<(i32, Vec<u8>), String> {
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        match args[0] {
            "podwall" => Ok(self.podwall(&args[1..], input)),
            "grep" | "head" | "base64" => Ok(real(&args, input, self.dir.path())),
            "helm" => self.helm(&args[1..]).map(|()| (0, Vec::new())),
            "kubectl" => self.kubectl(&args[1..], input),
            "curl" => self.curl(&args[1..]),
            // The image: built by tests/image.rs; here, the script the docs call exists.
            "image/build.sh" => {
                let script = Path::new(ROOT).join("image/build.sh");
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&script)
                        .map_err(|e| e.to_string())?
                        .permissions(),
                );
                if mode & 0o111 == 0 {
                    return Err("image/build.sh is not executable".into());
                }
                Ok((0, Vec::new()))
            }
            // Registries are outside this machine.
            "docker" if args.get(1) == Some(&"push") => Ok((0, Vec::new())),
            // README's test command: what .ci/run runs, as written.
            "tools/test" => {
                let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).expect(".ci/run");
                if !ci.lines().any(|l| l.trim() == args.join(" ")) {
                    return Err(format!(
                        "README's test command {args:?} is not what .ci/run runs"
                    ));
                }
                Ok((0, Vec::new()))
            }
            // README's demo command is run by the sandbox's tests; a test command elsewhere
            // is what .ci/run runs.
            "cargo" => {
                let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).expect(".ci/run");
                match args.get(1) {
                    Some(&"test") => {
                        if !ci.contains(&args.join(" ")) {
                            return Err(format!(
                                "README's test command {args:?} is not what .ci/run runs"
                            ));
                        }
                    }
                    Some(&"run") => {
                        let dir = args.last().expect("dir");
                        if !Path::new(ROOT).join(dir).is_dir() {
                            return Err(format!("{dir} does not exist"));
                        }
                    }
                    _ => return Err(format!("unknown cargo command {args:?}")),
                }
                Ok((0, Vec::new()))
            }
            other => Err(format!(
                "no way to run {other:?} (add one to tests/docs.rs)"
            )),
        }
    }

    fn podwall(&self, args: &[&str], input: &[u8]) -> (i32, Vec<u8>) {
        if args.first() == Some(&"check")
            && args.contains(&"--node")
            && !support::ready("docs: podwall check --node", &["iptables"], "iptables")
        {
            return (0, Vec::new());
        }
        let follows = args.contains(&"--follow") || args.contains(&"-F");
        if follows {
            return self.podwall_following(args);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_podwall"))
            .args(args)
            .current_dir(self.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podwall");
        let _ = child.stdin.take().expect("stdin").write_all(input);
        let out = child.wait_with_output().expect("podwall");
        let mut text = out.stdout;
        if !out.status.success() {
            text.extend_from_slice(&out.stderr);
        }
        (out.status.code().unwrap_or(-1), text)
    }

    /// A command that follows (`--follow`) runs until stopped: it must print what the same
    /// command without `--follow` prints, keep running, and print the events the sidecar's log
    /// gets while it runs (the docs' events written again, an hour later) as the command
    /// without `--follow` and `--last` prints them.
    fn podwall_following(&self, args: &[&str]) -> (i32, Vec<u8>) {
        let without = |drop_last: bool| -> Vec<&str> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < args.len() {
                match args[i] {
                    "--follow" | "-F" => {}
                    "--last" if drop_last => i += 1,
                    a => out.push(a),
                }
                i += 1;
            }
            out
        };
        let (code, backlog) = self.podwall(&without(false), &[]);
        if code != 0 {
            return (code, backlog);
        }
        let (_, all) = self.podwall(&without(true), &[]);
        if all.is_empty() {
            return (
                1,
                b"the command prints nothing for the docs' flows: what it follows cannot be checked"
                    .to_vec(),
            );
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_podwall"))
            .args(args)
            .current_dir(self.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podwall");
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let printed = printed.clone();
            let mut stdout = child.stdout.take().expect("stdout");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                    printed.lock().expect("lock").extend_from_slice(&buf[..n]);
                }
            })
        };
        let seen = || printed.lock().expect("lock").clone();
        let wait = |want: &dyn Fn(&[u8]) -> bool| {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(5) {
                if want(&seen()) {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            false
        };
        let mut failure = None;
        if !wait(&|out| out.len() >= backlog.len()) || seen()[..backlog.len()] != backlog[..] {
            failure = Some("with --follow it did not first print what it prints without");
        } else {
            let n = self.relogged.get() + 1;
            self.relogged.set(n);
            for line in &self.log {
                let later = line.replace("T10:", &format!("T{:02}:", 10 + n));
                self.api
                    .container_log("shop", "web", "podwall-proxy", &later);
            }
            let (_, now) = self.podwall(&without(true), &[]);
            let fresh = now.strip_prefix(&all[..]).unwrap_or_default();
            let want = [&backlog[..], fresh].concat();
            if fresh.is_empty() {
                failure = Some("the events written while it followed match nothing");
            } else if !wait(&|out| out.len() >= want.len()) || seen() != want {
                failure = Some(
                    "events the sidecar's log got while it followed were not printed as the command prints them",
                );
            }
        }
        let exited = child.try_wait().ok().flatten();
        let _ = child.kill();
        let out = child.wait_with_output().expect("podwall");
        let _ = reader.join();
        let mut text = seen();
        match (failure, exited) {
            (_, Some(status)) => {
                text.extend_from_slice(&out.stderr);
                (status.code().unwrap_or(-1).max(1), text)
            }
            (Some(why), None) => {
                text.extend_from_slice(format!("\n{why}\n").as_bytes());
                text.extend_from_slice(&out.stderr);
                (1, text)
            }
            (None, None) => (0, text),
        }
    }

    fn helm(&mut self, args: &[&str]) -> Result<(), String> {
        let verb = args.first().copied().unwrap_or_default();
        if !matches!(verb, "install" | "upgrade") {
            return Err(format!("helm {verb}: not played"));
        }
        let (release, chart) = (args.get(1).copied(), args.get(2).copied());
        if release != Some("podwall") || chart != Some("./helm/podwall") {
            return Err(format!(
                "helm {verb} {release:?} {chart:?}: the docs install release podwall from ./helm/podwall"
            ));
        }
        let mut values = json!({});
        let mut i = 3;
        while i < args.len() {
            match args[i] {
                "-n" | "--namespace" => {
                    if args.get(i + 1) != Some(&"podwall-system") {
                        return Err("the docs' namespace is podwall-system".into());
                    }
                    i += 1;
                }
                "--create-namespace" | "--reuse-values" => {}
                "--set" => {
                    let (k, v) = args[i + 1].split_once('=').ok_or("--set k=v")?;
                    let v = match v {
                        "true" => json!(true),
                        "false" => json!(false),
                        v => v.parse::<i64>().map(Value::from).unwrap_or(json!(v)),
                    };
                    set_value(&mut values, k, v);
                    i += 1;
                }
                "--set-json" => {
                    let (k, v) = args[i + 1].split_once('=').ok_or("--set-json k=json")?;
                    let v: Value =
                        serde_json::from_str(v).map_err(|e| format!("--set-json {k}: {e}"))?;
                    set_value(&mut values, k, v);
                    i += 1;
                }
                other => return Err(format!("helm flag {other:?} not played")),
            }
            i += 1;
        }
        self.install(&values)
    }

    fn curl(&self, args: &[&str]) -> Result<(i32, Vec<u8>), String> {
        let url = args
            .iter()
            .find(|a| a.starts_with("http"))
            .ok_or("curl without a URL")?;
        let port: u16 = url
            .split("localhost:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("{url}: only the port-forwarded control plane is played"))?;
        let target = self
            .forwarded
            .get(&port)
            .ok_or_else(|| format!("{url}: nothing forwarded on {port}"))?;
        let args_of = target["args"].to_string();
        let tls = args_of.contains("--feed-cert");
        if url.starts_with("https") != tls {
            return Err(format!(
                "{url}: the control plane serves {} there",
                if tls { "HTTPS" } else { "HTTP" }
            ));
        }
        let insecure = args.iter().any(|a| {
            *a == "--insecure"
                || *a == "--cacert"
                || (a.starts_with('-') && !a.starts_with("--") && a.contains('k'))
        });
        if !insecure {
            return Err(format!(
                "{url}: its certificate is the chart's CA's; curl needs -k or --cacert"
            ));
        }
        let metrics = podwall_control::metrics::ServerMetrics::new();
        metrics
            .lists
            .get_or_create(&podwall_control::metrics::KindLabel { kind: "Pod".into() })
            .inc();
        Ok((0, metrics.encode().into_bytes()))
    }

    fn kubectl(&mut self, args: &[&str], input: &[u8]) -> Result<(i32, Vec<u8>), String> {
        let mut namespace: Option<String> = None;
        let mut all_namespaces = false;
        let mut output: Option<String> = None;
        let mut container: Option<String> = None;
        let mut selector: Option<String> = None;
        let mut patch: Option<String> = None;
        let mut file: Option<String> = None;
        let mut positional: Vec<&str> = Vec::new();
        let mut after_dashes: Vec<&str> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i];
            let mut value = || {
                i += 1;
                args.get(i)
                    .map(|s| s.to_string())
                    .ok_or(format!("{a} needs a value"))
            };
            match a {
                "--" => {
                    after_dashes = args[i + 1..].to_vec();
                    break;
                }
                "-n" | "--namespace" => namespace = Some(value()?),
                "-A" | "--all-namespaces" => all_namespaces = true,
                "-o" => output = Some(value()?),
                "-c" => container = Some(value()?),
                "-l" => selector = Some(value()?),
                "-p" => patch = Some(value()?),
                "-f" => file = Some(value()?),
                "--type" => {
                    if value()? != "merge" {
                        return Err("only --type merge patches are played".into());
                    }
                }
                "-it" | "-i" | "-t" => {}
                a if a.starts_with("--profile=") || a.starts_with("--image=") => {}
                a if a.starts_with('-') => return Err(format!("kubectl flag {a} not played")),
                a => positional.push(a),
            }
            i += 1;
        }
        let ns = namespace.clone();
        // `deploy/web` or `deployment web`.
        let target = |positional: &[&str], at: usize| -> Result<(String, Option<String>), String> {
            let r = positional.get(at).ok_or("no resource")?;
            match r.split_once('/') {
                Some((kind, name)) => Ok((kind_of(kind, &self.chart)?, Some(name.to_string()))),
                None => Ok((
                    kind_of(r, &self.chart)?,
                    positional.get(at + 1).map(|s| s.to_string()),
                )),
            }
        };
        match positional.first().copied() {
            Some("get") => {
                let (kind, name) = target(&positional, 1)?;
                let mut found: Vec<Value> = if kind == "Pod" {
                    let mut pods = Vec::new();
                    for d in self.objects.iter().filter(|o| o["kind"] == "Deployment") {
                        pods.extend(self.pods_of(d)?);
                    }
                    pods
                } else {
                    self.objects
                        .iter()
                        .filter(|o| o["kind"] == kind.as_str())
                        .cloned()
                        .collect()
                };
                if !all_namespaces && kind != "Namespace" && !kind.starts_with("Mutating") {
                    let n = ns.clone().unwrap_or_else(|| "default".into());
                    found.retain(|o| o["metadata"]["namespace"] == n.as_str());
                }
                if let Some(sel) = &selector {
                    for term in sel.split(',') {
                        let (k, v) = term.split_once('=').ok_or("selector k=v")?;
                        found.retain(|o| o["metadata"]["labels"][k] == v);
                    }
                }
                if let Some(n) = &name {
                    found.retain(|o| o["metadata"]["name"] == n.as_str());
                    if found.is_empty() {
                        return Err(format!("no {kind} {}/{n}", ns.unwrap_or_default()));
                    }
                } else if found.is_empty() && kind != "PodwallPolicy" {
                    return Err(format!("no {kind} matches {args:?}"));
                }
                let subject = match &name {
                    Some(_) => found[0].clone(),
                    None => json!({"kind": "List", "items": found}),
                };
                let text = match output.as_deref() {
                    Some(o) if o.starts_with("jsonpath=") => {
                        jsonpath(&subject, &o["jsonpath=".len()..])?
                    }
                    Some("yaml") | Some("json") => subject.to_string(),
                    _ => String::new(),
                };
                Ok((0, text.into_bytes()))
            }
            Some("describe") => {
                let (kind, name) = target(&positional, 1)?;
                let name = name.ok_or("describe what")?;
                let mut world_objects = self.objects.clone();
                world_objects.extend(policies());
                world_objects
                    .iter()
                    .find(|o| {
                        o["kind"] == kind.as_str()
                            && o["metadata"]["name"] == name.as_str()
                            && ns
                                .as_deref()
                                .is_none_or(|n| o["metadata"]["namespace"] == n)
                    })
                    .ok_or_else(|| format!("no {kind} {name}"))?;
                Ok((0, Vec::new()))
            }
            Some("patch") => {
                let (kind, name) = target(&positional, 1)?;
                let name = name.ok_or("patch what")?;
                let patch: Value = serde_json::from_str(patch.as_deref().ok_or("-p")?)
                    .map_err(|e| e.to_string())?;
                let ns = ns.ok_or("-n")?;
                let obj = self
                    .objects
                    .iter_mut()
                    .find(|o| {
                        o["kind"] == kind.as_str()
                            && o["metadata"]["name"] == name.as_str()
                            && o["metadata"]["namespace"] == ns.as_str()
                    })
                    .ok_or_else(|| format!("no {kind} {ns}/{name}"))?;
                merge(obj, &patch);
                let patched = obj.clone();
                // What the patch asks of podwall, the webhook accepts.
                if kind == "Deployment" {
                    let mut cfg = self.inject_config();
                    cfg.control_plane_ca = Some("CA".into());
                    let mut d = patched.clone();
                    podwall_control::inject::inject_object(&mut d, &cfg)
                        .map_err(|e| format!("the webhook would refuse the patched {name}: {e}"))?;
                }
                Ok((0, Vec::new()))
            }
            Some("annotate") => {
                // Pods, by name or selector: each update must be one the webhook admits.
                let (kind, name) = match &selector {
                    Some(_) => (
                        kind_of(positional.get(1).ok_or("annotate what")?, &self.chart)?,
                        None,
                    ),
                    None => target(&positional, 1)?,
                };
                if kind != "Pod" {
                    return Err(format!("kubectl annotate {kind} not played"));
                }
                let first = if name.is_some() { 3 } else { 2 };
                let pairs: Vec<(&str, &str)> = positional[first.min(positional.len())..]
                    .iter()
                    .map(|a| {
                        a.split_once('=')
                            .ok_or(format!("annotation {a:?} is not k=v"))
                    })
                    .collect::<Result<_, _>>()?;
                if pairs.is_empty() {
                    return Err("which annotation".into());
                }
                let n = ns.clone().unwrap_or_else(|| "default".into());
                let mut pods = Vec::new();
                for d in self.objects.iter().filter(|o| o["kind"] == "Deployment") {
                    pods.extend(self.pods_of(d)?);
                }
                pods.retain(|p| p["metadata"]["namespace"] == n.as_str());
                if let Some(sel) = &selector {
                    for term in sel.split(',') {
                        let (k, v) = term.split_once('=').ok_or("selector k=v")?;
                        pods.retain(|o| o["metadata"]["labels"][k] == v);
                    }
                }
                if let Some(name) = &name {
                    pods.retain(|o| o["metadata"]["name"] == name.as_str());
                }
                if pods.is_empty() {
                    return Err(format!("no pod matches {args:?}"));
                }
                let cfg = self.inject_config();
                for old in pods {
                    let mut new = old.clone();
                    for (k, v) in &pairs {
                        new["metadata"]["annotations"][*k] = json!(v);
                    }
                    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "request": {"uid": "1", "operation": "UPDATE",
                            "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "namespace": n, "name": new["metadata"]["name"],
                            "object": new, "oldObject": old}});
                    let (resp, _) =
                        podwall_control::webhook::review(review.to_string().as_bytes(), &cfg)
                            .map_err(|e| e.to_string())?;
                    if resp["response"]["allowed"] != true {
                        return Err(format!(
                            "the webhook refuses the annotation: {}",
                            resp["response"]["status"]["message"]
                        ));
                    }
                }
                Ok((0, Vec::new()))
            }
            Some("label") => {
                let (kind, name) = target(&positional, 1)?;
                let name = name.ok_or("label what")?;
                let label = positional.get(3).ok_or("which label")?;
                self.find(&kind, None, &name)?;
                let key = label
                    .split('=')
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches('-');
                if kind == "Namespace" {
                    let webhook = self
                        .chart
                        .iter()
                        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
                        .ok_or("no webhook")?;
                    if !webhook.to_string().contains(&format!("\"key\":\"{key}\"")) {
                        return Err(format!("no webhook entry selects namespaces by {key}"));
                    }
                }
                Ok((0, Vec::new()))
            }
            Some("rollout") => {
                let (kind, name) = target(&positional, 2)?;
                let n = ns.ok_or("-n")?;
                let any = self.objects.iter().any(|o| {
                    o["kind"] == kind.as_str()
                        && o["metadata"]["namespace"] == n.as_str()
                        && name.as_deref().is_none_or(|x| o["metadata"]["name"] == x)
                });
                if !any || !matches!(positional.get(1), Some(&"restart" | &"status")) {
                    return Err(format!("rollout of no {kind} in {n}"));
                }
                Ok((0, Vec::new()))
            }
            Some("logs") => {
                let (kind, name) = target(&positional, 1)?;
                let d = self.find(&kind, ns.as_deref(), name.as_deref().ok_or("logs of what")?)?;
                let pod = self.pods_of(&d)?.into_iter().next().ok_or("no pod")?;
                let containers: Vec<&Value> = ["containers", "initContainers"]
                    .iter()
                    .filter_map(|l| pod["spec"][l].as_array())
                    .flatten()
                    .collect();
                let c = match &container {
                    Some(c) => containers
                        .iter()
                        .find(|x| x["name"] == c.as_str())
                        .ok_or_else(|| format!("no container {c}"))?,
                    None => containers.first().ok_or("no container")?,
                };
                let sources: &[&str] = if c["args"].to_string().contains("\"control\"") {
                    &["control/src", "src/cli/control.rs"]
                } else if c["name"] == "podwall-proxy" {
                    &["proxy/src", "src/cli/proxy.rs"]
                } else {
                    return Err(format!("whose logs are {}?", c["name"]));
                };
                Ok((0, log_messages(sources).join("\n").into_bytes()))
            }
            Some("port-forward") => {
                let (kind, name) = target(&positional, 1)?;
                let d = self.find(&kind, ns.as_deref(), name.as_deref().ok_or("forward what")?)?;
                let port: u16 = positional
                    .get(2)
                    .and_then(|p| p.parse().ok())
                    .ok_or("a port")?;
                let c = d["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c["ports"]
                                .as_array()
                                .is_some_and(|ps| ps.iter().any(|p| p["containerPort"] == port))
                        })
                    })
                    .ok_or_else(|| format!("no container port {port}"))?;
                self.forwarded.insert(port, c.clone());
                Ok((0, Vec::new()))
            }
            Some("apply") => {
                if file.as_deref() != Some("-") {
                    return Err("apply -f - only".into());
                }
                let text = String::from_utf8_lossy(input).into_owned();
                let docs = podwall_policy::documents("stdin", &text).map_err(|e| e.to_string())?;
                let objects: Vec<Value> = docs
                    .into_iter()
                    .map(|(_, v)| v)
                    .filter(|v| !v.is_null())
                    .collect();
                if objects.is_empty()
                    || objects
                        .iter()
                        .any(|o| !o["kind"].is_string() || !o["apiVersion"].is_string())
                {
                    return Err(format!("kubectl apply would refuse: {text}"));
                }
                Ok((0, Vec::new()))
            }
            Some("debug") => {
                let node = positional.get(1).ok_or("debug what")?;
                if !node.starts_with("node/") {
                    return Err("only node debugging is played".into());
                }
                match after_dashes.first() {
                    Some(&"podwall") => Ok(self.podwall(&after_dashes[1..], &[])),
                    other => Err(format!("debug runs {other:?}")),
                }
            }
            other => Err(format!("kubectl {other:?} not played")),
        }
    }
}

fn real(args: &[&str], input: &[u8], dir: &Path) -> (i32, Vec<u8>) {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect(args[0]);
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect(args[0]);
    let _ = writer.join();
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// The docs' policies, as objects.
fn policies() -> Vec<Value> {
    let dir = Path::new(ROOT).join("tests/fixtures/docs/policies");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("policies").flatten() {
        let text = std::fs::read_to_string(e.path()).expect("policy");
        out.extend(
            podwall_policy::objects("p", &text)
                .expect("yaml")
                .into_iter()
                .map(|(_, v)| v),
        );
    }
    out
}

fn serve(api: &FakeApiServer, o: &Value) {
    if let (Some(av), Some(kind)) = (o["apiVersion"].as_str(), o["kind"].as_str()) {
        api.serve(av, kind, &plural(kind));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_the_docs_runs_as_written() {
    // helm/render.py needs Helm's library.
    let probe = Command::new("python3")
        .args(["-c", "import helm_sdkpy"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "helm-sdkpy is required in CI"
        );
        eprintln!("skipped: helm-sdkpy is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(ROOT).join("tests/fixtures/docs"), dir.path());
    for link in ["examples", "helm", "image"] {
        std::os::unix::fs::symlink(Path::new(ROOT).join(link), dir.path().join(link))
            .expect("symlink");
    }
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    api.serve("apps/v1", "Deployment", "deployments");
    api.serve("v1", "ConfigMap", "configmaps");
    api.serve("cert-manager.io/v1", "Certificate", "certificates");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster: {{server: '{}'}}\nusers:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n", api.url()),
    )
    .expect("kubeconfig");
    let mut objects = Vec::new();
    let state = std::fs::read_to_string(dir.path().join("cluster-state.yaml")).expect("state");
    for (_, o) in podwall_policy::objects("state", &state).expect("yaml") {
        if o["kind"] == "Namespace" {
            objects.push(o.clone());
            api.apply(o);
        }
    }
    // The docs' pods run the sidecar, whose log holds the docs' flows (podwall observe reads
    // them through the API server).
    for (_, mut o) in podwall_policy::objects("state", &state).expect("yaml") {
        if o["kind"] == "Pod" {
            o["spec"]["initContainers"] = json!([{"name": "podwall-init"}, {"name": "podwall-proxy", "restartPolicy": "Always"}]);
            api.apply(o);
        }
    }
    let flows = recent(&std::fs::read_to_string(dir.path().join("flows.jsonl")).expect("flows"));
    for line in flows.lines() {
        api.container_log("shop", "web", "podwall-proxy", line);
    }
    let deploy = std::fs::read_to_string(dir.path().join("deploy.yaml")).expect("deploy");
    objects.extend(
        podwall_policy::objects("deploy", &deploy)
            .expect("yaml")
            .into_iter()
            .map(|(_, v)| v),
    );
    // (`flows` is the fixture moved to the last day: the docs ask for `--since 24h`.)
    let mut world = World {
        dir,
        api,
        kubeconfig,
        objects,
        chart: Vec::new(),
        forwarded: BTreeMap::new(),
        log: flows.lines().map(String::from).collect(),
        relogged: std::cell::Cell::new(0),
    };
    // Installed as docs/install.md says, before the other pages' commands run.
    world.install(&json!({})).expect("the chart renders");
    // What `podwall uninject` is given: a workload injected offline.
    let (code, injected, err) = {
        let ca = Path::new(ROOT).join("tests/fixtures/inject/ca.crt");
        let out = Command::new(env!("CARGO_BIN_EXE_podwall"))
            .args(["inject", "--control-plane-ca"])
            .arg(ca)
            .args(["-f", "deploy.yaml"])
            .current_dir(world.dir.path())
            .output()
            .expect("inject");
        (out.status.code(), out.stdout, out.stderr)
    };
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    std::fs::write(world.dir.path().join("deploy.injected.yaml"), injected).expect("write");

    let mut ran = 0;
    let mut failures = Vec::new();
    for block in blocks() {
        for pipeline in pipelines(&block.text) {
            ran += 1;
            if let Err(e) = world.run(&pipeline) {
                failures.push(format!(
                    "{}:{}: {:?}: {e}",
                    block.file, block.line, pipeline.stages
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran > 40, "only {ran} commands found");
}

/// The docs' flow events (written at 10:00 on 2026-12-05, and relogged later by the hour) on
/// the last day that had a 10:00 already: what the docs' `podwall observe --since 24h` finds
/// whenever the test runs.
fn recent(flows: &str) -> String {
    let now = std::time::SystemTime::now();
    let stamp = |t| humantime::format_rfc3339(t).to_string();
    let today = stamp(now);
    let day = if today[11..13] >= *"10" {
        today[..10].to_string()
    } else {
        stamp(now - std::time::Duration::from_secs(86_400))[..10].to_string()
    };
    flows.replace("\"2026-12-05T", &format!("\"{day}T"))
}
