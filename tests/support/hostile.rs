//! The hostile app of the boundary and DNS tests (`tests/fixtures/hostile_app.py`), run as an
//! app container of an injected pod runs: root, with the runtime's default capabilities less
//! NET_RAW, which injection drops.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use podwall_sandbox::APP_CAPABILITIES;

/// Debian's Python: readable by any uid (a Python under /root is not).
pub(crate) const PYTHON: &str = "/usr/bin/python3";

/// Whether a test with the hostile app may run (root, the sandbox's tools, Debian's Python).
pub(crate) fn ready(test: &str) -> bool {
    super::sandbox::ready_for(test)
        && super::ready(
            test,
            &[PYTHON],
            "Debian's python3 (the hostile app is a script)",
        )
}

/// A fixture's source, passed with `-c`: an app that takes another uid may not read the
/// checkout.
pub(crate) fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The hostile app in `ns`: root, the runtime's default capabilities less NET_RAW plus
/// `extra_caps` (`",+net_raw"`), after `ids` (setpriv's `--regid 1337`, ...).
pub(crate) fn app_cmd(ns: &str, extra_caps: &str, ids: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "setpriv", "--inh-caps", "-all"])
        .arg("--bounding-set")
        .arg(format!("{APP_CAPABILITIES}{extra_caps}"))
        .args(ids)
        .args([PYTHON, "-c"])
        .arg(fixture("hostile_app.py"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the hostile app once; what it printed.
pub(crate) fn app(ns: &str, extra_caps: &str, ids: &[&str], args: &[&str]) -> String {
    let out = app_cmd(ns, extra_caps, ids, args)
        .output()
        .expect("run the hostile app");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !stdout.is_empty(),
        "hostile app {args:?} in {ns}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Starts the hostile app in the background and waits for it to say "listening".
pub(crate) fn app_listening(
    ns: &str,
    extra_caps: &str,
    args: &[&str],
) -> (Child, BufReader<ChildStdout>) {
    let mut child = app_cmd(ns, extra_caps, &[], args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the hostile app");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "listening", "{args:?}");
    (child, out)
}

pub(crate) fn last_line(mut child: Child, mut out: BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let _ = child.wait();
    line.trim().to_string()
}

/// Runs `tests/fixtures/resolver.py ARGS` in `ns` as root and waits for it to listen; it runs
/// until killed.
pub(crate) fn resolver(ns: &str, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, PYTHON, "-c"])
        .arg(fixture("resolver.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the resolver");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "listening", "resolver {args:?}");
    (child, out)
}
