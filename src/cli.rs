//! Subcommand glue: turn parsed arguments into calls on the crates, print, pick the exit code.

pub(crate) mod advise;
pub(crate) mod analyze;
pub(crate) mod control;
pub(crate) mod inject;
pub(crate) mod logging;
pub(crate) mod observe;
pub(crate) mod proxy;
pub(crate) mod sandbox;
pub(crate) mod status;

/// A listen address as operators write it: `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every IPv4
/// address (as Go servers take it).
pub(crate) fn listen_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    let full = match value.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => value.to_string(),
    };
    full.parse()
        .map_err(|_| format!("{value:?} is not HOST:PORT, [V6]:PORT or :PORT"))
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listen_address_may_leave_out_the_host() {
        assert_eq!(
            super::listen_addr(":15017").expect("port only"),
            "0.0.0.0:15017".parse().expect("addr")
        );
        assert_eq!(
            super::listen_addr("127.0.0.1:80").expect("full"),
            "127.0.0.1:80".parse().expect("addr")
        );
        assert_eq!(
            super::listen_addr("[::]:80").expect("v6"),
            "[::]:80".parse().expect("addr")
        );
        let e = super::listen_addr("15017").expect_err("a bare port");
        assert!(e.contains(":PORT"), "{e}");
    }
}
