# syntax=docker/dockerfile:1
# The podwall image: one binary for the init container (podwall proxy init), the sidecar
# (podwall proxy run) and the control plane (podwall control run). Build: image/build.sh.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin podwall \
 && image/rootfs.sh /rootfs target/release/podwall

# Distroless-style: the binary, iptables and ip, the libraries they link; no shell.
FROM scratch
COPY --from=build /rootfs /
# The control plane's user; the webhook runs the init container as root (NET_ADMIN, NET_RAW)
# and the sidecar as root in group 1337, the group its own iptables rules exempt.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/podwall"]
CMD ["--help"]
