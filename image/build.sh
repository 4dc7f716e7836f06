#!/usr/bin/env bash
# Builds the image with docker or podman: image/build.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-ghcr.io/podwall/podwall:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
engine=$(command -v docker || command -v podman || true)
[ -n "$engine" ] || { echo "image/build.sh: docker or podman is needed" >&2; exit 1; }
exec "$engine" build -t "$tag" -f Dockerfile .
