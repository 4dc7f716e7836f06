//! Logs for long-running commands: `tracing` to stderr, filtered by `RUST_LOG` (default info),
//! as text, or as JSON lines with `PODWALL_LOG_FORMAT=json` (what the injected sidecar and the
//! chart's control plane use, for log collectors).

use std::io::IsTerminal;

pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("PODWALL_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
