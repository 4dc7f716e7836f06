//! What the binary's integration tests share: running `podwall`, and deciding whether a test
//! that needs root or tools may run (outside CI it skips with the reason; with `CI=true` a
//! skip is a failure).

#![allow(dead_code)] // each test binary uses part of it

pub(crate) mod cnp_conformance;
pub(crate) mod hostile;
pub(crate) mod sandbox;

use std::io::Write;
use std::process::{Child, Command, Stdio};

/// A child process, killed and reaped when dropped (however the test ends).
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `podwall ARGS` with `stdin`; exit code, stdout, stderr.
pub(crate) fn podwall(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_podwall"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podwall");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `test` may run: as root, with every one of `tools` on PATH. `needs` says what is
/// missing in people's words.
pub(crate) fn ready(test: &str, tools: &[&str], needs: &str) -> bool {
    let is_root = nix::unistd::geteuid().is_root();
    let has_tools = tools.iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if is_root && has_tools {
        return true;
    }
    let why = if is_root { needs } else { "root" };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs {why}; with CI=true it must run, not skip"
    );
    eprintln!("skipping {test}: needs {why}");
    false
}
