#!/usr/bin/env bash
# Installs what rbuild's builds and tests need on Debian/Ubuntu (run as root): the OCI runtime, the static busybox
# the test images are made of, a registry to push to, and the independent tools the tests check output with.
set -euo pipefail
pkgs=(runc busybox-static slirp4netns gcc libc6-dev iproute2 docker-registry skopeo umoci ca-certificates curl git openssh-client openssl apache2-utils zstd buildah podman)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # docker-registry's package would start its own service on :5000; tests start their own on free ports.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The registry service from the package is not needed (and would hold port 5000).
if command -v systemctl >/dev/null 2>&1; then systemctl stop docker-registry >/dev/null 2>&1 || true; fi
pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry/config.yml' 2>/dev/null || true
if ! command -v cargo >/dev/null 2>&1; then
  echo "install Rust first: https://rustup.rs (rbuild needs Rust 1.89 or newer)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
