//! The image's root filesystem, built by `image/rootfs.sh` as the Dockerfile builds it, starts:
//! the binary runs as the image's non-root user, and `podwall proxy init` installs its rules in a
//! fresh network namespace with only what the image holds (its iptables, ip and libraries).

use std::path::Path;
use std::process::Command;

mod support;

const PODWALL: &str = env!("CARGO_BIN_EXE_podwall");

fn ready(test: &str) -> bool {
    support::ready(
        test,
        &["ldd", "xtables-nft-multi", "ip", "chroot", "unshare"],
        "ldd, xtables-nft-multi (iptables), ip, chroot and unshare",
    )
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_image_root_filesystem_starts_as_its_users_and_installs_the_pod_rules() {
    if !ready("the_image_root_filesystem_starts_as_its_users_and_installs_the_pod_rules") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = dir.path().join("rootfs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/rootfs.sh");
    let (ok, out) = run(Command::new(&script).arg(&rootfs).arg(PODWALL));
    assert!(ok, "{out}");
    assert!(
        !rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists(),
        "no shell in the image"
    );

    // The Dockerfile's USER (the control plane's), and the sidecar's uid.
    for user in ["65532:65532", "1337:1337"] {
        let (ok, out) = run(Command::new("chroot")
            .arg(format!("--userspec={user}"))
            .arg(&rootfs)
            .args(["/usr/local/bin/podwall", "--version"]));
        assert!(ok, "as {user}: {out}");
        assert_eq!(out.trim(), format!("podwall {}", env!("CARGO_PKG_VERSION")));
    }

    // The init container's job, with nothing from the host but /dev and /proc (as a container
    // runtime provides them), in a network namespace of its own.
    let r = rootfs.display();
    let script = format!(
        "mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev \
         && chroot {r} /usr/local/bin/podwall proxy init \
         && chroot {r} /usr/sbin/iptables-save -t nat && chroot {r} /usr/sbin/iptables-save -t mangle \
         && chroot {r} /usr/sbin/ip rule"
    );
    let (ok, out) = run(Command::new("unshare").args([
        "-n",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert!(ok, "{out}");
    assert!(out.contains("iptables rules installed"), "{out}");
    assert!(out.contains("-A OUTPUT -j PODWALL_OUTPUT"), "{out}");
    assert!(
        out.contains("-j TPROXY --on-port 15006"),
        "inbound TCP goes to the sidecar: {out}"
    );
    assert!(
        out.contains("fwmark 0x539"),
        "the TPROXY routing rule: {out}"
    );
}
