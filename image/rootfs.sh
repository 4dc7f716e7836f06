#!/usr/bin/env bash
# Builds the podwall image's root filesystem in OUT from BINARY: the one podwall binary (init,
# sidecar and control plane), the tools `podwall proxy init` runs (iptables and ip6tables as
# xtables-nft-multi, iproute2's ip), every shared library they link and the loader, the xtables
# extensions, and the users (root for init, root in group 1337 for the sidecar, 65532 for the
# control plane).
# Nothing else: no shell, no package manager.
#
# The Dockerfile runs this in its build stage and copies OUT into an empty image; CI runs it too
# and starts the result under chroot (tests/image.rs), so the Dockerfile's assumptions are tested.
#
# usage: image/rootfs.sh OUT BINARY
set -euo pipefail
out=${1:?usage: image/rootfs.sh OUT BINARY}
bin=${2:?usage: image/rootfs.sh OUT BINARY}

for tool in ldd xtables-nft-multi ip; do
    command -v "$tool" >/dev/null || { echo "rootfs.sh: $tool is needed (apt-get install iptables iproute2 libc-bin)" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/usr/sbin" "$out/usr/lib" "$out/etc" "$out/tmp" "$out/proc" "$out/dev" "$out/run"
chmod 1777 "$out/tmp"
# The same merged-/usr layout as the build system, so every library and the xtables
# extensions are where the binaries were built to look for them.
for d in lib lib64 bin sbin; do
    if [ -L "/$d" ]; then
        target=$(readlink "/$d")
        mkdir -p "$out/${target#/}"
        ln -s "$target" "$out/$d"
    fi
done

install -m 0755 "$bin" "$out/usr/local/bin/podwall"
# Debug information stays out of the image (symbols stay, so backtraces keep function names).
if command -v strip >/dev/null; then
    strip --strip-debug "$out/usr/local/bin/podwall"
fi
xt=$(readlink -f "$(command -v xtables-nft-multi)")
install -m 0755 "$xt" "$out/usr/sbin/xtables-nft-multi"
for t in iptables ip6tables iptables-restore ip6tables-restore iptables-save ip6tables-save; do
    ln -sf xtables-nft-multi "$out/usr/sbin/$t"
done
install -m 0755 "$(readlink -f "$(command -v ip)")" "$out/usr/sbin/ip"

# Every library a file links (ldd's "=> /path" lines, and the loader's own absolute path).
copy_libs() {
    ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}' | while read -r lib; do
        [ -e "$out$lib" ] && continue
        mkdir -p "$out$(dirname "$lib")"
        cp -L "$lib" "$out$lib"
    done
}
copy_libs "$out/usr/local/bin/podwall"
copy_libs "$out/usr/sbin/xtables-nft-multi"
copy_libs "$out/usr/sbin/ip"

# The match and target extensions iptables loads at run time (-m owner, -j TPROXY, ...).
xtdir="$(dirname "$(ldd "$xt" | awk '/libxtables/{print $3}')")/xtables"
mkdir -p "$out$xtdir"
cp -L "$xtdir"/*.so "$out$xtdir/"
for ext in "$out$xtdir"/*.so; do copy_libs "$ext"; done

# Names iptables resolves (-p tcp).
for f in /etc/protocols /etc/services; do
    [ -e "$f" ] && cp -L "$f" "$out$f"
done
printf 'root:x:0:0:root:/:/nonexistent\npodwall-proxy:x:1337:1337:podwall sidecar:/:/nonexistent\npodwall:x:65532:65532:podwall control plane:/:/nonexistent\n' >"$out/etc/passwd"
printf 'root:x:0:\npodwall-proxy:x:1337:\npodwall:x:65532:\n' >"$out/etc/group"
echo "rootfs.sh: $out: $(du -sh "$out" | cut -f1)"
